"""Child side of :mod:`commit_env.tasks.sandbox`: limit, guard, then execute one program.

Run by path in a fresh isolated interpreter, never imported by the caller::

    python -I _sandbox_runner.py CPU_SECONDS MEMORY_BYTES MAX_PROCESSES MAX_FILE_BYTES < program.py

It uses the standard library only, because ``-I`` keeps the package's directory off ``sys.path``.
Exit status: 0 when the program ran to completion, 1 when it raised (a syntax error, a failed
assert, ``MemoryError``, ``SystemExit``...), :data:`SETUP_ERROR_EXIT` when the runner itself could
not set up. The guards below stop accidents (a completion that deletes files or forks in a loop),
not an attacker: ``ctypes`` or a C extension reaches around every one of them.
"""

from __future__ import annotations

import builtins
import os
import resource
import shutil
import subprocess
import sys
import traceback

# sandbox.py keeps its own copy of this value: the runner must not import the package.
SETUP_ERROR_EXIT = 120

# Functions that delete, move or re-permission files, change identity, escape the process group,
# or start other processes. Patched on both ``os`` and ``posix`` (``os`` copies posix's names).
_DISABLED_OS = (
    "kill", "killpg", "system",
    "remove", "removedirs", "rmdir", "unlink", "rename", "renames", "replace", "truncate",
    "chdir", "fchdir", "chroot",
    "chmod", "fchmod", "lchmod", "chflags", "lchflags", "chown", "fchown", "lchown",
    "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid", "setresgid",
    "setsid", "setpgid", "setpgrp",
    "fork", "forkpty", "posix_spawn", "posix_spawnp",
    "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
    "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
    "popen", "_exit",
)  # fmt: skip
# Environment changes never reach the C environment (no child could read it anyway); no-ops rather
# than errors, because libraries such as numpy write ``os.environ`` while importing.
_SILENCED_OS = ("putenv", "unsetenv")
_DISABLED_SHUTIL = ("rmtree", "move", "chown")
_DISABLED_BUILTINS = ("help", "exit", "quit")
# Importing these afterwards raises ImportError: raising rlimits (root may), process inspection,
# spawning helpers, and interactive tools that would hang a headless child.
_BLOCKED_MODULES = ("resource", "psutil", "_posixsubprocess", "joblib", "ipdb", "tkinter")


def _disabled(name: str):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the commit_env sandbox")

    refuse.__name__ = name.rpartition(".")[2]
    return refuse


def _ignored(*args, **kwargs) -> None:
    return None


def _set_limit(which: int, value: int) -> None:
    # Soft and hard both: a non-root program cannot raise a lowered hard limit again.
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def apply_limits(
    cpu_seconds: int, memory_bytes: int, max_processes: int, max_file_bytes: int
) -> None:
    """Set the resource limits of this process (inherited by any child it manages to start).

    Args:
        cpu_seconds: CPU time before SIGXCPU.
        memory_bytes: Address-space and data-segment limit.
        max_processes: Process limit of the user (ignored by the kernel for root).
        max_file_bytes: Largest file the process may write.
    """
    soft, hard = cpu_seconds, cpu_seconds + 1
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    if cpu_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, cpu_hard), cpu_hard
    # The soft limit sends SIGXCPU (fatal by default); the hard limit a second later, SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    _set_limit(resource.RLIMIT_AS, memory_bytes)
    _set_limit(resource.RLIMIT_DATA, memory_bytes)
    # Not enforced for root (CAP_SYS_RESOURCE); the fork guard and the caller's killpg cover that.
    _set_limit(resource.RLIMIT_NPROC, max_processes)
    _set_limit(resource.RLIMIT_FSIZE, max_file_bytes)
    _set_limit(resource.RLIMIT_CORE, 0)


def apply_guards() -> None:
    """Replace destructive functions by ones that raise ``PermissionError`` (``putenv``: no-op)."""
    import posix

    for name in _DISABLED_OS:
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, _disabled(f"os.{name}"))
    for name in _SILENCED_OS:
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, _ignored)
    for name in _DISABLED_SHUTIL:
        setattr(shutil, name, _disabled(f"shutil.{name}"))
    subprocess.Popen = _disabled("subprocess.Popen")  # type: ignore[misc, assignment]
    for name in _DISABLED_BUILTINS:
        setattr(builtins, name, _disabled(name))
    for name in _BLOCKED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]


def run(source: str) -> int:
    """Compile and execute ``source`` as ``__main__``; return the exit status to report."""
    try:
        code = compile(source, "<program>", "exec")
    except (SyntaxError, ValueError):  # ValueError: null bytes, unencodable surrogates
        traceback.print_exc()
        return 1
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except SystemExit as exc:
        # Exiting early, even with status 0, would skip the tests that follow: count it as failed.
        message = f"program raised SystemExit({exc.code!r}); exiting early counts as failure"
        print(message, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Read the program from stdin, limit and guard this process, run the program."""
    try:
        cpu_seconds, memory_bytes, max_processes, max_file_bytes = (int(a) for a in argv[1:5])
        source = sys.stdin.buffer.read().decode("utf-8", "surrogatepass")
        apply_limits(cpu_seconds, memory_bytes, max_processes, max_file_bytes)
        apply_guards()
    except BaseException:
        traceback.print_exc()
        return SETUP_ERROR_EXIT
    return run(source)


if __name__ == "__main__":
    _exit = os._exit  # kept before the guards replace it
    status = main(sys.argv)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    # Skip interpreter shutdown: atexit hooks and threads the program left behind would run code
    # after its verdict is known (and could change the exit status).
    _exit(status)
