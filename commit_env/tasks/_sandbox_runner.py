"""Both sides of :mod:`commit_env.tasks.sandbox`: the untrusted worker and the trusted judge.

Run by path in fresh isolated interpreters, never imported by the caller::

    python -I -S _sandbox_runner.py worker MODE ENTRY REQ RESP CPU_S MEM_B PROCS FILE_B ALIVE
    python -I -S _sandbox_runner.py judge REQ RESP VERDICT ISOLATION

It uses the standard library only, because ``-I`` keeps the package's directory off ``sys.path``.
``REQ``, ``RESP``, ``VERDICT`` and ``ALIVE`` are inherited pipe descriptors; the worker exits when
``ALIVE`` reaches end of file (the caller is gone or done).

**Worker** (untrusted; inside the OS sandbox when one is available). Reads the program from stdin,
sets its resource limits, installs the in-process guards (a second layer under the OS isolation),
executes the program, then reports on ``RESP_FD``. In ``program`` mode it reports that the program
ran to completion. In ``function`` mode it then serves calls of one function sent by the judge on
``REQ_FD``, answering with the return value encoded as plain data (see :func:`encode`): only exact
built-in types (``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``list``,
``tuple``, ``dict``, ``set``, ``frozenset``) cross, so an object with a custom ``__eq__`` cannot.

**Judge** (trusted; never runs generated code). Reads its job (a per-run random token, trusted
setup and test sources) as JSON from stdin. In ``function`` mode it executes the setup and the
tests itself and calls ``check(candidate)``, where ``candidate`` forwards each call to the worker
and rebuilds the answer with :func:`decode` (plain built-in values only). Only when every test has
returned does it write ``TOKEN {"passed": true}`` to ``VERDICT_FD``, a pipe only it holds. Whatever
the worker does (exit with status 0 by any route, print, patch builtins, forge replies), the
parent sees no token unless the judge's own tests passed on the values the worker returned.
"""

from __future__ import annotations

import builtins
import json
import os
import struct
import sys

# sandbox.py keeps its own copy of this value: the runner must not import the package.
SETUP_ERROR_EXIT = 120
MAX_MESSAGE = 16 * 2**20
MAX_DEPTH = 200

# Functions that delete, move or re-permission files, change identity, escape the process group,
# or start other processes. Patched on both ``os`` and ``posix`` (``os`` copies posix's names).
_DISABLED_OS = (
    "kill", "killpg", "system", "pidfd_open",
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
# Exceptions the worker may report by name, so that tests expecting one still work.
_EXCEPTIONS = {
    name: value
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, Exception)
}


def _traceback():
    import traceback  # only on failures: it costs start-up time on every run otherwise

    return traceback


# --------------------------------------------------------------------------------------------
# Plain-data encoding (both sides)
# --------------------------------------------------------------------------------------------

_SCALARS = (str, int, float, bool, type(None))


def encode(value, depth: int = 0):
    """Encode a plain built-in value as JSON-ready data; raise TypeError for anything else.

    Types must match exactly (``type(x) is int``, not ``isinstance``): a subclass could override
    ``__eq__``. Lists are JSON arrays; every other container is a one-key object naming its kind.
    """
    if depth > MAX_DEPTH:
        raise TypeError("value nested too deeply")
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind is tuple:
        return {"t": [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is set:
        return {"s": [encode(v, depth + 1) for v in value]}
    if kind is frozenset:
        return {"f": [encode(v, depth + 1) for v in value]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    raise TypeError(
        f"values of type {kind.__name__} cannot leave the sandbox (plain built-ins only)"
    )


def decode(data, depth: int = 0):
    """Rebuild a value from :func:`encode` output; only built-in types can come out."""
    if depth > MAX_DEPTH:
        raise TypeError("value nested too deeply")
    kind = type(data)
    if kind in _SCALARS:
        return data
    if kind is list:
        return [decode(v, depth + 1) for v in data]
    if kind is dict and len(data) == 1:
        ((tag, body),) = data.items()
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if type(body) is not list:
            raise TypeError("malformed value")
        if tag == "t":
            return tuple(decode(v, depth + 1) for v in body)
        if tag == "d":
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise TypeError("malformed value")
                out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
            return out
        if tag == "s":
            return {decode(v, depth + 1) for v in body}
        if tag == "f":
            return frozenset(decode(v, depth + 1) for v in body)
        if tag == "c" and len(body) == 2 and all(type(v) in (int, float) for v in body):
            return complex(body[0], body[1])
    raise TypeError("malformed value")


def send(fd: int, message: dict) -> None:
    """Write one length-prefixed JSON message."""
    data = json.dumps(message).encode("utf-8")
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the channel")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def receive(fd: int) -> dict:
    """Read one length-prefixed JSON object message (EOFError when the sender is gone)."""
    (size,) = struct.unpack(">I", _read_exact(fd, 4))
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes is over the {MAX_MESSAGE}-byte limit")
    message = json.loads(_read_exact(fd, size).decode("utf-8"))
    if type(message) is not dict:
        raise ValueError("malformed message")
    return message


# --------------------------------------------------------------------------------------------
# Worker (untrusted side)
# --------------------------------------------------------------------------------------------


def _disabled(name: str):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the commit_env sandbox")

    refuse.__name__ = name.rpartition(".")[2]
    return refuse


def _ignored(*args, **kwargs) -> None:
    return None


def _set_limit(resource, which: int, value: int) -> None:
    # Soft and hard both: an unprivileged program cannot raise a lowered hard limit again.
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
        max_processes: Process limit of the user (the kernel ignores it for host root).
        max_file_bytes: Largest file the process may write.
    """
    import resource

    soft, hard = cpu_seconds, cpu_seconds + 1
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    if cpu_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, cpu_hard), cpu_hard
    # The soft limit sends SIGXCPU (fatal by default); the hard limit a second later, SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    _set_limit(resource, resource.RLIMIT_AS, memory_bytes)
    _set_limit(resource, resource.RLIMIT_DATA, memory_bytes)
    _set_limit(resource, resource.RLIMIT_NPROC, max_processes)
    _set_limit(resource, resource.RLIMIT_FSIZE, max_file_bytes)
    _set_limit(resource, resource.RLIMIT_CORE, 0)


def apply_guards() -> None:
    """Replace destructive functions by ones that raise ``PermissionError`` (``putenv``: no-op)."""
    import posix
    import shutil
    import subprocess

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


def _describe(exc: BaseException) -> dict:
    name = type(exc).__name__
    return {"type": name if _EXCEPTIONS.get(name) is type(exc) else "Exception", "text": str(exc)}


def _serve(namespace: dict, entry_point: str, req_fd: int, resp_fd: int) -> None:
    function = namespace.get(entry_point)
    if not callable(function):
        send(resp_fd, {"error": f"the program defines no function {entry_point!r}"})
        return
    send(resp_fd, {"ready": True})
    while True:
        try:
            request = receive(req_fd)
        except EOFError:
            return
        try:
            args = decode(request["args"])
            kwargs = decode(request["kwargs"])
            value = function(*args, **kwargs)
            reply = {"value": encode(value)}
        except SystemExit as exc:
            reply = {"raise": {"type": "Exception", "text": f"SystemExit({exc.code!r})"}}
        except BaseException as exc:
            reply = {"raise": _describe(exc)}
        send(resp_fd, reply)


def _watch_caller(alive_fd: int, exit_now) -> None:
    """Exit as soon as the caller goes away: it holds the only write end of ``alive_fd``.

    Killing the caller closes that pipe; this process then exits, and with bwrap its whole PID
    namespace goes with it, whatever the program started.
    """
    import threading

    def watch() -> None:
        try:
            while os.read(alive_fd, 64):
                pass
        except OSError:
            pass
        exit_now(1)

    threading.Thread(target=watch, name="caller-watch", daemon=True).start()


def worker(argv: list[str]) -> int:
    """Run the program from stdin under limits and guards; report on the response channel."""
    _exit = os._exit
    try:
        mode, entry_point = argv[0], argv[1]
        req_fd, resp_fd, cpu_seconds, memory_bytes, max_processes, max_file_bytes = (
            int(a) for a in argv[2:8]
        )
        _watch_caller(int(argv[8]), _exit)
        source = sys.stdin.buffer.read().decode("utf-8", "surrogatepass")
        apply_limits(cpu_seconds, memory_bytes, max_processes, max_file_bytes)
        apply_guards()
    except BaseException:
        _traceback().print_exc()
        return SETUP_ERROR_EXIT
    try:
        code = compile(source, "<program>", "exec")
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        exec(code, namespace)
    except SystemExit as exc:
        # Exiting early, even with status 0, would skip the tests that follow: a failure.
        print(f"program raised SystemExit({exc.code!r}); exiting early fails", file=sys.stderr)
        send(resp_fd, {"error": "SystemExit"})
        return 1
    except BaseException as exc:
        _traceback().print_exc()
        send(resp_fd, {"error": _describe(exc)["type"]})
        return 1
    if mode == "program":
        send(resp_fd, {"done": True})
        return 0
    _serve(namespace, entry_point, req_fd, resp_fd)
    _exit(0)
    return 0


# --------------------------------------------------------------------------------------------
# Judge (trusted side)
# --------------------------------------------------------------------------------------------


class CandidateError(Exception):
    """The sandboxed function could not answer (it crashed, exited or sent garbage)."""


def _make_candidate(req_fd: int, resp_fd: int, calls: list[int]):
    def candidate(*args, **kwargs):
        send(req_fd, {"args": encode(list(args)), "kwargs": encode(dict(kwargs))})
        calls[0] += 1
        try:
            reply = receive(resp_fd)
        except (EOFError, ValueError, UnicodeDecodeError) as exc:
            raise CandidateError(f"the sandboxed function did not answer: {exc}") from None
        if "value" in reply:
            try:
                return decode(reply["value"])
            except (TypeError, ValueError, RecursionError) as exc:
                raise CandidateError(f"the sandboxed function sent a bad value: {exc}") from None
        raised = reply.get("raise")
        if type(raised) is dict:
            kind = _EXCEPTIONS.get(raised.get("type"), CandidateError)
            raise kind(f"(in the sandboxed function) {str(raised.get('text'))[:500]}")
        raise CandidateError("the sandboxed function sent a malformed reply")

    return candidate


def _prctl_not_dumpable() -> None:
    # Keeps a same-user worker (fallback mode) from reading this process's memory or fds.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except Exception:
        pass


def judge(argv: list[str]) -> int:
    """Decide the verdict; write ``TOKEN VERDICT_JSON`` to the verdict fd when tests passed."""
    req_fd, resp_fd, verdict_fd = (int(a) for a in argv[:3])
    if argv[3] == "guards":  # a same-user worker could otherwise read this process's memory
        _prctl_not_dumpable()
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    token = job["token"]

    def verdict(passed: bool, detail: str = "", status: str = "") -> int:
        status = status or ("passed" if passed else "failed")
        line = json.dumps({"passed": passed, "status": status, "detail": detail[-3000:]})
        os.write(verdict_fd, f"{token} {line}\n".encode())
        return 0

    try:
        hello = receive(resp_fd)
    except (EOFError, ValueError, UnicodeDecodeError) as exc:
        return verdict(False, f"the program did not run to completion ({exc})")
    if "error" in hello or not (hello.get("done") is True or hello.get("ready") is True):
        return verdict(False, f"the program failed: {str(hello.get('error', hello))[:500]}")
    if job["mode"] == "program":
        return verdict(hello.get("done") is True)
    calls = [0]
    candidate = _make_candidate(req_fd, resp_fd, calls)
    namespace: dict = {"__name__": "__judge__", "__builtins__": builtins}
    try:
        if job["setup"]:
            try:
                exec(compile(job["setup"], "<setup>", "exec"), namespace)
            except Exception:
                pass  # a setup that does not run alone (helpers only matter if it does)
        namespace[job["entry_point"]] = candidate
        exec(compile(job["tests"], "<tests>", "exec"), namespace)
        namespace[job["entry_point"]] = candidate
        namespace["check"](candidate)
    except BaseException:
        return verdict(False, _traceback().format_exc())
    if calls[0] == 0:
        return verdict(False, "the tests never called the function")
    return verdict(True)


def main(argv: list[str]) -> int:
    """Dispatch on the role named by ``argv[1]``."""
    role = argv[1] if len(argv) > 1 else ""
    if role == "worker":
        return worker(argv[2:])
    if role == "judge":
        return judge(argv[2:])
    print(f"unknown role {role!r}; expected 'worker' or 'judge'", file=sys.stderr)
    return SETUP_ERROR_EXIT


if __name__ == "__main__":
    _exit = os._exit  # kept before the worker's guards replace it
    status = main(sys.argv)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    # Skip interpreter shutdown: atexit hooks and threads the program left behind would run code
    # after its verdict is known.
    _exit(status)
