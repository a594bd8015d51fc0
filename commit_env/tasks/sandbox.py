"""Run untrusted Python programs (model completions) in an isolated process and judge them.

The program is never executed in the calling process. Every run starts two fresh interpreters on
the runner script :mod:`commit_env.tasks._sandbox_runner` (run by path, standard library only):

* the **worker** executes the untrusted program. With OS isolation (bubblewrap, ``bwrap``) it runs
  in new user, PID, network, mount, IPC and UTS namespaces as uid 65534 without capabilities; the
  file system is read-only system directories (``/usr``, ``/lib``..., the interpreter) plus a
  private size-limited tmpfs ``/tmp``, its only writable place: no ``/etc``, no home, no project
  files, no network, no other process visible. When the caller is not root bwrap runs as the
  caller; as root it runs as uid 65534 (nobody), so that the sandbox holds no host privilege and
  the kernel enforces ``RLIMIT_NPROC`` (it does not for root). Killing bwrap kills the whole PID
  namespace (``--die-with-parent``). Inside, the worker sets rlimits (``RLIMIT_CPU`` from
  ``timeout``, ``RLIMIT_AS``/``RLIMIT_DATA`` from ``memory_mb``, ``RLIMIT_NPROC`` from
  ``max_processes``, ``RLIMIT_FSIZE`` from ``max_file_mb``, no core files) and, as a second layer,
  replaces destructive functions of ``os``/``posix``, ``shutil`` and ``subprocess`` by ones that
  raise ``PermissionError``. The worker's interpreter starts without ``site`` (``-I -S``): programs
  get the standard library only, which is all HumanEval needs, and start in about 20 ms.
* the **judge** (trusted, outside the sandbox, never runs generated code) decides the verdict.
  With :func:`run_tests` it executes the trusted tests itself and calls ``check(candidate)``, where
  every call of ``candidate`` goes to the worker and only plain built-in values come back (an
  object with a custom ``__eq__`` cannot cross). Only after every test has returned does it write
  a per-run random token to a pipe that only it holds; the caller requires that token. The exit
  status of the worker decides nothing: ``os._exit(0)`` by any route, ``SystemExit``, patched
  builtins or a forged reply cannot produce a pass.

Isolation modes (``sandbox=`` argument, else the ``COMMIT_ENV_SANDBOX`` environment variable, else
``"auto"``): ``"auto"`` uses bubblewrap when it works here and otherwise falls back, with one
warning per process, to the in-process guards and resource limits only (macOS, no bwrap, user
namespaces disabled); ``"strict"`` raises :class:`SandboxUnavailable` instead of falling back;
``"guards"`` asks for the guards-only mode without the warning. There is no ``unshare`` tier: run by
root, ``unshare --map-root-user`` leaves the program host root inside its namespaces, which can
still write ``/proc/sys``; bwrap run as nobody cannot. The sandbox's interpreter is the first that
uid 65534 can run: the caller's own, else the system ``python3.X`` (a caller's interpreter under
``/root`` is out of reach). There is no seccomp filter: the kernel's system calls remain reachable.
The guards stop accidents, not an attacker: without OS isolation a program using ``ctypes`` can
write files, use the network and signal processes of the same user, so score adversarial code
with isolation only.

:func:`run_sandboxed` runs a whole program and passes when it ran to completion (exiting early
fails). That verdict resists exits but not forgery (the program shares a process with the code
reporting completion); scoring uses :func:`run_tests`, whose verdict the program cannot forge.

Temporary files: with bwrap nothing is written on the host (the program's files live on the
sandbox's tmpfs; stdin and stderr are unnamed temporary files). Without it each run works in
``<tmp>/commit_env_sandbox/<pid>-*``, removed afterwards; the directories of processes that died
(killed mid-run) are swept by the next run.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from commit_env.errors import CommitEnvError

__all__ = [
    "SANDBOX_MODES",
    "SandboxResult",
    "SandboxUnavailable",
    "resolve_sandbox_mode",
    "run_sandboxed",
    "run_sandboxed_many",
    "run_tests",
    "run_tests_many",
    "sandbox_backend",
    "sweep_stale_dirs",
]

RUNNER = Path(__file__).with_name("_sandbox_runner.py")
SANDBOX_MODES = ("auto", "strict", "guards")
ENV_VAR = "COMMIT_ENV_SANDBOX"
# Every process of a run carries this variable (value: a per-run tag starting with the caller's
# pid), so that tests can prove that none survives.
RUN_TAG_VAR = "COMMIT_ENV_SANDBOX_RUN"
# Copy of _sandbox_runner.SETUP_ERROR_EXIT (the runner must not import the package).
_SETUP_ERROR_EXIT = 120
_SANDBOX_UID = 65534
_STDERR_HEAD = 1024
_STDERR_TAIL = 3072
_SANDBOX_RUNNER_PATH = "/run/commit_env/runner.py"

Status = Literal["passed", "failed", "timeout", "error"]


class SandboxUnavailable(CommitEnvError, RuntimeError):
    """OS isolation was required (``sandbox="strict"``) but cannot run on this machine."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        passed: True iff ``status == "passed"``.
        status: ``"passed"`` (the judge wrote its token), ``"failed"`` (a test failed, the program
            raised, exited early or sent a value that is not plain data), ``"timeout"`` (out of
            wall-clock or CPU time) or ``"error"`` (the sandbox itself could not run it).
        returncode: Exit status of the worker (negative: killed by that signal); None when it was
            killed at the timeout, or never started. Informative only: it decides nothing.
        stderr: What the worker wrote to stderr, then the judge's reason for a failure, cut to
            about 4 KB (head and tail kept).
        wall_time: Seconds from start to verdict, interpreter start-ups included.
        isolation: ``"bwrap"`` (OS isolation) or ``"guards"`` (in-process guards only).
    """

    passed: bool
    status: Status
    returncode: int | None
    stderr: str
    wall_time: float
    isolation: str = "guards"


# ------------------------------------------------------------------------------------------------
# Modes and the isolation backend
# ------------------------------------------------------------------------------------------------


def resolve_sandbox_mode(mode: str | None = None) -> str:
    """Validate an isolation mode; None reads ``COMMIT_ENV_SANDBOX`` (default ``"auto"``).

    Args:
        mode: ``"auto"``, ``"strict"``, ``"guards"`` or None.

    Returns:
        The mode.

    Raises:
        ValueError: If the mode (or the environment variable) is not one of :data:`SANDBOX_MODES`.
    """
    if mode is None:
        mode = os.environ.get(ENV_VAR) or "auto"
        if mode not in SANDBOX_MODES:
            raise ValueError(
                f"{ENV_VAR}={mode!r} is not a sandbox mode; expected one of {list(SANDBOX_MODES)}"
            )
    if mode not in SANDBOX_MODES:
        raise ValueError(f"unknown sandbox mode {mode!r}; expected one of {list(SANDBOX_MODES)}")
    return mode


@dataclass(frozen=True)
class _Bwrap:
    bwrap: str
    interpreter: str
    binds: tuple[str, ...]
    as_nobody: bool


_probe_lock = threading.Lock()
_probe_result: list[_Bwrap | str] = []  # one entry once probed: the backend or why it failed
_warned: list[bool] = []


def _interpreter_candidates() -> list[tuple[str, tuple[str, ...]]]:
    """Interpreters to try in the sandbox, each with the directories it needs besides /usr."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    prefixes = []
    for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        path = os.path.realpath(prefix)
        if path not in prefixes and not path.startswith("/usr/") and path != "/usr":
            prefixes.append(path)
    candidates = [(sys.executable, tuple(prefixes))]
    for path in (
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
        "/usr/bin/python3",
    ):
        if os.path.isfile(path) and all(path != c[0] for c in candidates):
            candidates.append((path, ("/usr/local",) if path.startswith("/usr/local/") else ()))
    return candidates


def _bwrap_args(backend: _Bwrap, tmp_bytes: int, runner_fd: int) -> list[str]:
    args = [
        backend.bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in backend.binds:
        args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    args += ["--size", str(tmp_bytes), "--tmpfs", "/tmp", "--chdir", "/tmp"]
    args += ["--ro-bind-data", str(runner_fd), _SANDBOX_RUNNER_PATH, "--remount-ro", "/"]
    return args


def _spawn_bwrap(backend: _Bwrap, tail: list[str], tmp_bytes: int, **popen: Any) -> Any:
    runner_fd = os.open(RUNNER, os.O_RDONLY)
    try:
        args = _bwrap_args(backend, tmp_bytes, runner_fd)
        extra: dict[str, Any] = {}
        if backend.as_nobody:
            extra = {"user": _SANDBOX_UID, "group": _SANDBOX_UID, "extra_groups": []}
        pass_fds = tuple(popen.pop("pass_fds", ())) + (runner_fd,)
        return subprocess.Popen(
            args + [backend.interpreter, "-I", "-S", _SANDBOX_RUNNER_PATH, *tail],
            pass_fds=pass_fds,
            **extra,
            **popen,
        )
    finally:
        os.close(runner_fd)


def _probe() -> _Bwrap | str:
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux (this is {sys.platform})"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed; on Debian/Ubuntu: apt-get install bubblewrap"
    as_nobody = os.geteuid() == 0
    reasons = []
    for interpreter, binds in _interpreter_candidates():
        backend = _Bwrap(bwrap, interpreter, binds, as_nobody)
        try:
            proc = _spawn_bwrap(
                backend,
                ["probe"],
                2**20,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_minimal_env("/tmp", "probe"),
            )
            out, err = proc.communicate(timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            reasons.append(f"{interpreter}: {exc}")
            continue
        if b"unknown role 'probe'" in err:
            return backend
        reasons.append(f"{interpreter}: {err.decode(errors='replace').strip()[:200]}")
    return "bubblewrap cannot start a sandbox here (" + "; ".join(reasons) + ")"


def sandbox_backend(mode: str | None = None) -> str:
    """Return the isolation that runs use in ``mode``: ``"bwrap"`` or ``"guards"``.

    The first call probes bubblewrap once (about 50 ms); in ``"auto"`` mode a fallback to the
    guards warns once per process.

    Args:
        mode: An isolation mode (see :func:`resolve_sandbox_mode`).

    Returns:
        ``"bwrap"`` or ``"guards"``.

    Raises:
        SandboxUnavailable: In ``"strict"`` mode when bubblewrap cannot run here.
        ValueError: If ``mode`` is not a sandbox mode.
    """
    return "bwrap" if isinstance(_backend(resolve_sandbox_mode(mode)), _Bwrap) else "guards"


def _backend(mode: str) -> _Bwrap | None:
    if mode == "guards":
        return None
    with _probe_lock:
        if not _probe_result:
            _probe_result.append(_probe())
        found = _probe_result[0]
        if isinstance(found, _Bwrap):
            return found
        if mode == "strict":
            raise SandboxUnavailable(f"sandbox='strict' needs OS isolation: {found}")
        if not _warned:
            _warned.append(True)
            warnings.warn(
                f"commit_env sandbox: no OS isolation ({found}); running generated code with "
                "in-process guards and resource limits only. Use sandbox='strict' "
                f"({ENV_VAR}=strict) to refuse instead.",
                RuntimeWarning,
                stacklevel=4,
            )
        return None


# ------------------------------------------------------------------------------------------------
# Temporary directories (guards mode only)
# ------------------------------------------------------------------------------------------------

_swept: list[bool] = []


def _sandbox_root() -> Path:
    return Path(tempfile.gettempdir()) / "commit_env_sandbox"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_LEGACY_MAX_AGE = 3600.0


def sweep_stale_dirs() -> int:
    """Remove run directories left by processes that died mid-run (killed); return how many.

    Also removes ``<tmp>/commit_env_sandbox_*`` directories of earlier versions (which had no
    owner pid in their name) once they are an hour old.
    """
    root = _sandbox_root()
    removed = 0
    for legacy in Path(tempfile.gettempdir()).glob("commit_env_sandbox_*"):
        try:
            old = time.time() - legacy.stat().st_mtime > _LEGACY_MAX_AGE
        except OSError:
            continue
        if old and legacy.is_dir() and not legacy.is_symlink():
            shutil.rmtree(legacy, ignore_errors=True)
            removed += 1
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name.partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def _make_workdir() -> str:
    root = _sandbox_root()
    if not _swept:
        _swept.append(True)
        sweep_stale_dirs()
    root.mkdir(mode=0o1777, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root)


# ------------------------------------------------------------------------------------------------
# Running one job
# ------------------------------------------------------------------------------------------------


def _check_limits(timeout: float, memory_mb: int, max_processes: int, max_file_mb: int) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout!r}")
    if not timeout > 0 or not math.isfinite(timeout):
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout!r}")
    for name, value in (
        ("memory_mb", memory_mb),
        ("max_processes", max_processes),
        ("max_file_mb", max_file_mb),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _minimal_env(workdir: str, tag: str) -> dict[str, str]:
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
        RUN_TAG_VAR: tag,
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


def _kill_namespace(bwrap_pid: int, patience: float = 2.0) -> None:
    """Kill the PID namespace under a running bwrap and wait until every process in it is gone.

    The namespace's init is bwrap's child. Killing it makes the kernel kill every process of the
    namespace, and init only finishes exiting once they all have, so waiting on init (through a
    pidfd, which also guards against pid reuse) makes the teardown synchronous.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    send = getattr(signal, "pidfd_send_signal", None)
    try:
        children = Path(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children").read_text().split()
    except OSError:
        return  # bwrap has exited, and its namespace with it; --die-with-parent covers the rest
    if pidfd_open is None or send is None:
        return
    pidfds = []
    for child in children:
        try:
            pidfds.append(pidfd_open(int(child)))
        except OSError:
            continue
    try:
        poller = select.poll()
        for pidfd in pidfds:
            try:
                send(pidfd, signal.SIGKILL)
            except OSError:
                pass
            poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + patience
        pending = len(pidfds)
        while pending and time.monotonic() < deadline:
            ready = poller.poll(max(deadline - time.monotonic(), 0.0) * 1000)
            for fd, _ in ready:
                poller.unregister(fd)
                pending -= 1
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``proc`` to exit without reaping it; True if it exited."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            pidfd = pidfd_open(proc.pid)
        except OSError:
            pidfd = None
        if pidfd is not None:
            try:
                # Readable when the child exits; it stays an unreaped zombie, which keeps its
                # process-group id reserved until the group has been killed.
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                return bool(poller.poll(max(timeout, 0.0) * 1000))
            finally:
                os.close(pidfd)
    try:
        proc.wait(max(timeout, 0.0))
        return True
    except subprocess.TimeoutExpired:
        return False


_run_counter = [0]
_counter_lock = threading.Lock()


def _run_tag() -> str:
    with _counter_lock:
        _run_counter[0] += 1
        return f"{os.getpid()}-{_run_counter[0]}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class _Pipes:
    """The four pipes of one run, as file descriptors (``_r`` read end, ``_w`` write end).

    Requests go from the judge to the worker (``req``), responses back (``resp``), the judge writes
    its verdict to ``verdict``, and only this process holds ``alive_w``: the worker exits when it
    closes (this process was killed, or is done).
    """

    req_r: int
    req_w: int
    resp_r: int
    resp_w: int
    verdict_r: int
    verdict_w: int
    alive_r: int
    alive_w: int

    @classmethod
    def open(cls) -> _Pipes:
        """Open the four pipes."""
        pipes = [os.pipe() for _ in range(4)]
        (req_r, req_w), (resp_r, resp_w), (verdict_r, verdict_w), (alive_r, alive_w) = pipes
        return cls(req_r, req_w, resp_r, resp_w, verdict_r, verdict_w, alive_r, alive_w)

    def close_child_ends(self) -> None:
        """Close the ends the worker and judge inherited (once they run, or failed to start)."""
        for fd in (self.req_r, self.resp_w, self.req_w, self.resp_r, self.verdict_w, self.alive_r):
            os.close(fd)

    def close_own_ends(self) -> None:
        """Close the ends this process keeps; closing ``alive_w`` tells the worker to exit."""
        os.close(self.verdict_r)
        os.close(self.alive_w)


@dataclass(frozen=True)
class _Outcome:
    """What a finished run left behind, read before its pipes and temporary files were closed.

    Attributes:
        finished: The judge exited within the timeout.
        wall_time: Seconds from start until both processes were reaped.
        verdict_text: What the judge wrote to its verdict pipe.
        worker_stderr: The worker's stderr (head and tail kept).
        judge_stderr: The judge's stderr (head and tail kept).
        worker_returncode: Exit status of the worker.
        judge_returncode: Exit status of the judge.
    """

    finished: bool
    wall_time: float
    verdict_text: bytes
    worker_stderr: str
    judge_stderr: str
    worker_returncode: int | None
    judge_returncode: int | None


def _limit_args(timeout: float, memory_mb: int, max_processes: int, max_file_mb: int) -> list[str]:
    """The worker's rlimits as runner arguments: CPU s, address-space B, processes, file B."""
    return [
        str(max(1, math.ceil(timeout))),
        str(memory_mb * 2**20),
        str(max_processes),
        str(max_file_mb * 2**20),
    ]


class _RunFiles(NamedTuple):
    """Unnamed temporary files of one run (closing one deletes it)."""

    stdin: Any  # the program's source, read by the worker
    stderr: Any  # the worker's stderr
    job: Any  # the judge's job (token, tests), read by the judge
    judge_err: Any  # the judge's stderr


@contextlib.contextmanager
def _run_files() -> Iterator[_RunFiles]:
    """Open the temporary files of one run; closed when the block exits."""
    with (
        tempfile.TemporaryFile() as stdin,
        tempfile.TemporaryFile() as stderr,
        tempfile.TemporaryFile() as job,
        tempfile.TemporaryFile() as judge_err,
    ):
        yield _RunFiles(stdin, stderr, job, judge_err)


def _write_input(stream: Any, text: str) -> None:
    """Write ``text`` (lone surrogates kept) to a temporary file and rewind it for a child."""
    stream.write(text.encode("utf-8", errors="surrogatepass"))
    stream.seek(0)


def _spawn_worker(
    backend: _Bwrap | None,
    args: list[str],
    *,
    workdir: str | None,
    tag: str,
    max_file_mb: int,
    pipes: _Pipes,
    files: _RunFiles,
) -> Any:
    """Start the worker: under bwrap with a private tmpfs, else in ``workdir`` with guards only."""
    pass_fds = (pipes.req_r, pipes.resp_w, pipes.alive_r)
    common = {"stdin": files.stdin, "stdout": subprocess.DEVNULL, "stderr": files.stderr}
    if backend is not None:
        size = max(4 * max_file_mb, 16) * 2**20  # the tmpfs holds 4x the largest file
        return _spawn_bwrap(
            backend,
            args,
            size,
            pass_fds=pass_fds,
            env=_minimal_env("/tmp", tag),
            start_new_session=True,
            **common,
        )
    assert workdir is not None
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(RUNNER), *args],
        pass_fds=pass_fds,
        cwd=workdir,
        env=_minimal_env(workdir, tag),
        start_new_session=True,
        **common,
    )


def _spawn_judge(
    pipes: _Pipes, isolation: str, tag: str, files: _RunFiles
) -> subprocess.Popen[bytes]:
    """Start the trusted judge, which reads its job (token, tests) from ``files.job``."""
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(RUNNER), "judge", str(pipes.req_w), str(pipes.resp_r)]
        + [str(pipes.verdict_w), isolation],
        stdin=files.job,
        stdout=subprocess.DEVNULL,
        stderr=files.judge_err,
        pass_fds=(pipes.req_w, pipes.resp_r, pipes.verdict_w),
        env={**_minimal_env(tempfile.gettempdir(), tag)},
        start_new_session=True,
    )


def _wait_then_kill(
    worker: Any, judge: subprocess.Popen[bytes], timeout: float, *, namespace: bool
) -> bool:
    """Wait up to ``timeout`` s for the judge, then kill and reap both processes.

    Args:
        worker: The worker process (bwrap itself when ``namespace``).
        judge: The judge process.
        timeout: Seconds to wait for the judge.
        namespace: The worker runs in a PID namespace of its own, whose processes are killed too.

    Returns:
        True if the judge exited in time.
    """
    try:
        return _wait(judge, timeout)
    finally:  # also on KeyboardInterrupt: leave no program running behind us
        if namespace:
            _kill_namespace(worker.pid)
        _kill_group(worker.pid)
        _kill_group(judge.pid)
        worker.wait()
        judge.wait()


def _execute(
    source: str,
    *,
    mode: str,
    tests: str,
    setup: str,
    entry_point: str,
    timeout: float,
    memory_mb: int,
    max_processes: int,
    max_file_mb: int,
    sandbox: str | None,
) -> SandboxResult:
    """Run ``source`` in a fresh worker, let a fresh judge decide, and report its verdict.

    The arguments are those of :func:`run_tests` / :func:`run_sandboxed` (already validated);
    ``mode`` is ``"function"`` or ``"program"``.
    """
    if os.name != "posix":
        raise OSError("the commit_env sandbox needs a POSIX system (resource limits, pipes)")
    backend = _backend(resolve_sandbox_mode(sandbox))
    isolation = "bwrap" if backend is not None else "guards"
    token = secrets.token_hex(32)
    tag = _run_tag()
    limits = _limit_args(timeout, memory_mb, max_processes, max_file_mb)
    job = {"token": token, "mode": mode, "tests": tests, "setup": setup, "entry_point": entry_point}
    workdir = _make_workdir() if backend is None else None
    pipes = _Pipes.open()
    worker = None  # set once started, so that a failed judge start can kill it
    start = time.monotonic()
    try:
        with _run_files() as files:
            _write_input(files.stdin, source)
            _write_input(files.job, json.dumps(job))
            fds = (str(pipes.req_r), str(pipes.resp_w))
            args = ["worker", mode, entry_point, *fds, *limits, str(pipes.alive_r)]
            try:
                worker = _spawn_worker(
                    backend,
                    args,
                    workdir=workdir,
                    tag=tag,
                    max_file_mb=max_file_mb,
                    pipes=pipes,
                    files=files,
                )
                judge = _spawn_judge(pipes, isolation, tag, files)
            except OSError as exc:
                if worker is not None:
                    _kill_group(worker.pid)
                    worker.wait()
                return SandboxResult(
                    False, "error", None, f"cannot start sandbox: {exc}", 0.0, isolation
                )
            finally:
                pipes.close_child_ends()
            finished = _wait_then_kill(worker, judge, timeout, namespace=backend is not None)
            outcome = _Outcome(
                finished=finished,
                wall_time=time.monotonic() - start,
                verdict_text=_read_all(pipes.verdict_r),
                worker_stderr=_read_stderr(files.stderr),
                judge_stderr=_read_stderr(files.judge_err),
                worker_returncode=worker.returncode,
                judge_returncode=judge.returncode,
            )
    finally:
        pipes.close_own_ends()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return _judged_result(outcome, token, isolation)


def _judged_result(outcome: _Outcome, token: str, isolation: str) -> SandboxResult:
    """The :class:`SandboxResult` of a run: only a verdict carrying ``token`` can pass."""
    verdict = _parse_verdict(outcome.verdict_text, token)
    returncode, err, wall_time = outcome.worker_returncode, outcome.worker_stderr, outcome.wall_time
    if not outcome.finished:
        return SandboxResult(False, "timeout", None, err, wall_time, isolation)
    if verdict is None:
        detail = f"\n[judge] no verdict (exit status {outcome.judge_returncode}): "
        detail += outcome.judge_stderr
        return SandboxResult(False, "error", returncode, err + detail, wall_time, isolation)
    if verdict.get("passed") is True:
        return SandboxResult(True, "passed", returncode, err, wall_time, isolation)
    detail = str(verdict.get("detail", ""))
    stderr_text = _clip_stderr(err + (f"\n[judge] {detail}" if detail else ""))
    return SandboxResult(
        False, _failure_status(returncode), returncode, stderr_text, wall_time, isolation
    )


def _failure_status(returncode: int | None) -> Status:
    """Status of a run the judge failed: out of CPU time, a broken setup, or a plain failure."""
    if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timeout"
    if returncode == _SETUP_ERROR_EXIT:
        return "error"
    return "failed"


def _clip_stderr(text: str) -> str:
    """``text``, cut to its head and tail when it is much longer than both together."""
    if len(text) > _STDERR_HEAD + _STDERR_TAIL + 200:
        return text[:_STDERR_HEAD] + "\n[...]\n" + text[-_STDERR_TAIL:]
    return text


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        if sum(map(len, chunks)) > 2**20:
            break
    return b"".join(chunks)


def _parse_verdict(data: bytes, token: str) -> dict | None:
    """The judge's verdict, or None unless it is exactly one line that starts with the token."""
    text = data.decode("utf-8", errors="replace")
    got, _, rest = text.partition(" ")
    if not hmac.compare_digest(got.encode(), token.encode()) or text.count("\n") != 1:
        return None
    try:
        verdict = json.loads(rest)
    except json.JSONDecodeError:
        return None
    return verdict if isinstance(verdict, dict) else None


# ------------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------------


def run_tests(
    source: str,
    tests: str,
    entry_point: str,
    *,
    setup: str = "",
    timeout: float = 5.0,
    memory_mb: int = 1024,
    max_processes: int = 64,
    max_file_mb: int = 16,
    sandbox: str | None = None,
) -> SandboxResult:
    """Judge the function ``entry_point`` of an untrusted ``source`` with trusted ``tests``.

    ``source`` runs in the sandbox; ``tests`` (defining ``check(candidate)``) run in the trusted
    judge, whose ``candidate`` calls the sandboxed function and receives its return values as
    plain built-in data. Passes only when ``check`` returned without raising.

    Args:
        source: Untrusted Python source defining ``entry_point``.
        tests: Trusted Python source defining ``check(candidate)``.
        entry_point: Name of the function under test.
        setup: Trusted source executed in the judge before ``tests`` (for example a HumanEval
            prompt whose helper functions the tests use); ignored if it does not run.
        timeout: Wall-clock seconds for the whole run; the worker's CPU-time limit is
            ``ceil(timeout)`` seconds.
        memory_mb: Address-space (and data-segment) limit of the worker in MiB.
        max_processes: ``RLIMIT_NPROC`` of the worker (not enforced for root without isolation).
        max_file_mb: Largest file the program may write, in MiB (the tmpfs holds 4x that).
        sandbox: Isolation mode, see :func:`resolve_sandbox_mode`.

    Returns:
        The :class:`SandboxResult`.

    Raises:
        TypeError: If a source is not a string.
        ValueError: If a limit is not positive, or ``sandbox`` or ``entry_point`` is invalid.
        SandboxUnavailable: In ``"strict"`` mode without OS isolation.
    """
    for name, value in (("source", source), ("tests", tests), ("setup", setup)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise ValueError(f"entry_point must be a Python identifier, got {entry_point!r}")
    _check_limits(timeout, memory_mb, max_processes, max_file_mb)
    return _execute(
        source,
        mode="function",
        tests=tests,
        setup=setup,
        entry_point=entry_point,
        timeout=timeout,
        memory_mb=memory_mb,
        max_processes=max_processes,
        max_file_mb=max_file_mb,
        sandbox=sandbox,
    )


def run_sandboxed(
    program: str,
    *,
    timeout: float = 5.0,
    memory_mb: int = 1024,
    max_processes: int = 64,
    max_file_mb: int = 16,
    sandbox: str | None = None,
) -> SandboxResult:
    """Execute a whole ``program`` in the sandbox; pass when it ran to completion.

    Exiting early (``sys.exit``, ``os._exit`` by any route) fails. The program shares its process
    with the code that reports completion, so a determined program can still forge a pass: score
    with :func:`run_tests`, whose tests run outside the program's reach.

    Args:
        program: Python source, run as ``__main__``.
        timeout: Wall-clock seconds before the run is killed; the CPU-time limit is
            ``ceil(timeout)`` seconds.
        memory_mb: Address-space (and data-segment) limit in MiB.
        max_processes: ``RLIMIT_NPROC`` of the program (not enforced for root without isolation).
        max_file_mb: Largest file the program may write, in MiB.
        sandbox: Isolation mode, see :func:`resolve_sandbox_mode`.

    Returns:
        The :class:`SandboxResult`.

    Raises:
        TypeError: If ``program`` is not a string.
        ValueError: If a limit is not positive or ``sandbox`` is invalid.
        SandboxUnavailable: In ``"strict"`` mode without OS isolation.
    """
    if not isinstance(program, str):
        raise TypeError(f"program must be a str, got {type(program).__name__}")
    _check_limits(timeout, memory_mb, max_processes, max_file_mb)
    return _execute(
        program,
        mode="program",
        tests="",
        setup="",
        entry_point="main",
        timeout=timeout,
        memory_mb=memory_mb,
        max_processes=max_processes,
        max_file_mb=max_file_mb,
        sandbox=sandbox,
    )


def _pool_map(function: Any, items: list[Any], max_workers: int) -> list[SandboxResult]:
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
    # Threads only wait on their subprocesses, so the GIL is no bottleneck.
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(function, items))


def run_sandboxed_many(
    programs: Iterable[str], *, max_workers: int = 2, **kwargs: Any
) -> list[SandboxResult]:
    """Run several programs with :func:`run_sandboxed`, a few at a time.

    Args:
        programs: Python sources.
        max_workers: How many runs at once.
        **kwargs: Passed to :func:`run_sandboxed` (``timeout``, ``memory_mb``, ``sandbox``...).

    Returns:
        One :class:`SandboxResult` per program, in order.

    Raises:
        ValueError: If ``max_workers`` is not a positive integer, or a limit is not positive.
        TypeError: If a program is not a string.
    """
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
    resolve_sandbox_mode(kwargs.get("sandbox"))
    return _pool_map(lambda p: run_sandboxed(p, **kwargs), programs, max_workers)


def run_tests_many(
    jobs: Sequence[tuple[str, str, str, str]], *, max_workers: int = 2, **kwargs: Any
) -> list[SandboxResult]:
    """Run several :func:`run_tests` jobs, a few at a time.

    Args:
        jobs: ``(source, tests, entry_point, setup)`` tuples.
        max_workers: How many runs at once.
        **kwargs: Passed to :func:`run_tests` (``timeout``, ``memory_mb``, ``sandbox``...).

    Returns:
        One :class:`SandboxResult` per job, in order.

    Raises:
        ValueError: If ``max_workers`` is not a positive integer, or a limit is not positive.
    """
    jobs = list(jobs)
    return _pool_map(
        lambda job: run_tests(job[0], job[1], job[2], setup=job[3], **kwargs), jobs, max_workers
    )
