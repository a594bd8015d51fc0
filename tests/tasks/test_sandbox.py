"""The sandbox runs programs in isolated subprocesses, judges them, and never harms the caller.

Behaviour common to both isolation levels runs under each of them (``guards`` always; ``bwrap``
when bubblewrap works here). The hostile-completion suite is in ``test_sandbox_hostile.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from commit_env.tasks import sandbox as sandbox_module
from commit_env.tasks.sandbox import (
    SandboxResult,
    SandboxUnavailable,
    resolve_sandbox_mode,
    run_sandboxed,
    run_sandboxed_many,
    run_tests,
    run_tests_many,
    sandbox_backend,
    sweep_stale_dirs,
)


def _has_bwrap() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sandbox_backend("auto") == "bwrap"


MODES = [
    "guards",
    pytest.param(
        "strict", marks=pytest.mark.skipif(not _has_bwrap(), reason="bubblewrap unavailable")
    ),
]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def _state(pid: int) -> str:
    """One-letter state of ``pid`` from /proc, or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


ADD_TESTS = (
    "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
)


def test_passing_program_passes(mode: str) -> None:
    result = run_sandboxed("def f(x):\n    return 2 * x\n\nassert f(3) == 6\n", sandbox=mode)
    assert isinstance(result, SandboxResult)
    assert result.passed and result.status == "passed"
    assert result.isolation == ("bwrap" if mode == "strict" else "guards")
    assert 0 < result.wall_time < 5


def test_result_is_frozen() -> None:
    result = run_sandboxed("pass", sandbox="guards")
    with pytest.raises(AttributeError):
        result.passed = False  # type: ignore[misc]


@pytest.mark.parametrize(
    "program",
    [
        "assert 1 + 1 == 3\n",
        "def f(:\n    pass\n",
        "raise ValueError('no')\n",
        "import sys\nsys.exit(0)\n",
        "raise SystemExit(0)\n",
    ],
    ids=["failed-assert", "syntax-error", "exception", "sys-exit", "raise-systemexit"],
)
def test_failing_programs_fail(program: str, mode: str) -> None:
    result = run_sandboxed(program, sandbox=mode)
    assert not result.passed
    assert result.status == "failed"


def test_failure_reports_stderr_truncated() -> None:
    program = "import sys\nsys.stderr.write('x' * 100_000)\nassert False, 'boom'\n"
    result = run_sandboxed(program, sandbox="guards")
    assert result.status == "failed"
    assert "AssertionError: boom" in result.stderr
    assert len(result.stderr) < 5000


def test_infinite_loop_times_out(mode: str) -> None:
    start = time.monotonic()
    result = run_sandboxed("while True:\n    pass\n", timeout=1.0, sandbox=mode)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 1.0 + 2.0


def test_sleeping_program_times_out(mode: str) -> None:
    # No CPU used: only the wall-clock timeout can stop it.
    result = run_sandboxed("import time\ntime.sleep(60)\n", timeout=1.0, sandbox=mode)
    assert result.status == "timeout"


def test_huge_allocation_fails(mode: str) -> None:
    result = run_sandboxed("x = bytearray(10**11)\n", sandbox=mode)
    assert result.status == "failed"
    assert "MemoryError" in result.stderr


def test_growing_list_fails() -> None:
    program = "x = []\nwhile True:\n    x.append([0] * 10**6)\n"
    result = run_sandboxed(program, memory_mb=256, timeout=20.0, sandbox="guards")
    assert result.status == "failed"
    assert "MemoryError" in result.stderr


def test_fork_is_disabled(mode: str) -> None:
    result = run_sandboxed("import os\nwhile True:\n    os.fork()\n", timeout=3.0, sandbox=mode)
    assert not result.passed
    assert "os.fork is disabled" in result.stderr


def test_other_process_starters_are_disabled() -> None:
    programs = [
        "import subprocess\nsubprocess.run(['true'])\n",
        "import os\nos.system('true')\n",
        "import os\nos.execv('/bin/true', ['true'])\n",
        "import os\nos.setsid()\n",
        "import resource\n",
    ]
    results = run_sandboxed_many(programs, sandbox="guards")
    assert [r.status for r in results] == ["failed"] * len(programs)


@pytest.mark.parametrize("exits", [True, False], ids=["parent-exits", "parent-hangs"])
def test_children_left_behind_are_killed_guards(tmp_path: Path, exits: bool) -> None:
    # ctypes reaches libc's fork around the runner's guard; the process-group kill must still
    # take the children down.
    pid_file = tmp_path / "pids"
    program = (
        "import ctypes, time\n"
        "libc = ctypes.CDLL(None)\n"
        "for _ in range(3):\n"
        "    if libc.fork() == 0:\n"
        f"        with open({str(pid_file)!r}, 'a') as f:\n"
        "            f.write(f'{libc.getpid()}\\n')\n"
        "        while True:\n"
        "            time.sleep(0.05)\n"
        "time.sleep(0.5)\n" + ("" if exits else "while True:\n    pass\n")
    )
    result = run_sandboxed(program, timeout=2.0, sandbox="guards")
    assert result.status == ("passed" if exits else "timeout")
    pids = [int(line) for line in pid_file.read_text().split()]
    assert len(pids) == 3
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(_state(p) not in ("gone", "Z") for p in pids):
        time.sleep(0.05)
    # Dead: reaped, or a zombie waiting for an init that does not reap.
    assert all(_state(p) in ("gone", "Z") for p in pids), [_state(p) for p in pids]


@pytest.mark.parametrize(
    "attack",
    [
        "import os\nos.remove(TARGET)\n",
        "import os\nos.unlink(TARGET)\n",
        "import pathlib\npathlib.Path(TARGET).unlink()\n",
        "import shutil, os\nshutil.rmtree(os.path.dirname(TARGET))\n",
        "import os\nos.rename(TARGET, TARGET + '.moved')\n",
        "import shutil\nshutil.move(TARGET, TARGET + '.moved')\n",
        "import os\nos.truncate(TARGET, 0)\n",
        "import os\nos.chmod(TARGET, 0)\n",
        "import os\nos.rmdir(os.path.dirname(TARGET))\n",
        "import posix\nposix.unlink(TARGET)\n",
    ],
)
def test_files_outside_are_not_deleted(tmp_path: Path, attack: str, mode: str) -> None:
    target = tmp_path / "keep" / "precious.txt"
    target.parent.mkdir()
    target.write_text("data")
    stat = target.stat()
    result = run_sandboxed(f"TARGET = {str(target)!r}\n" + attack, sandbox=mode)
    assert result.status == "failed"
    if mode == "guards":
        assert "disabled in the commit_env sandbox" in result.stderr
    assert target.read_text() == "data"
    assert target.stat().st_mode == stat.st_mode


def test_huge_file_write_is_stopped(tmp_path: Path, mode: str) -> None:
    program = (
        "chunk = b'x' * 2**20\n"
        "try:\n"
        "    with open('big.bin', 'wb') as f:\n"
        "        for _ in range(64):\n"
        "            f.write(chunk)\n"
        "except OSError as exc:\n"
        "    assert exc.errno == 27, exc  # EFBIG\n"
        "else:\n"
        "    raise SystemExit('write was not stopped')\n"
    )
    result = run_sandboxed(program, max_file_mb=4, sandbox=mode)
    assert result.passed, result.stderr


def test_working_directory_is_private_and_removed(mode: str) -> None:
    program = (
        "import os, sys\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "assert os.listdir('.') == ['scratch.txt']\n"
        "sys.stderr.write('CWD=' + os.getcwd() + '\\n')\n"
        "assert False\n"
    )
    result = run_sandboxed(program, sandbox=mode)
    cwd = result.stderr.split("CWD=", 1)[1].split()[0]
    assert "AssertionError" in result.stderr
    if mode == "guards":
        assert Path(cwd).parent == sandbox_module._sandbox_root()
        assert not Path(cwd).exists()
    else:
        assert cwd == "/tmp"  # the sandbox's own tmpfs


def test_stale_run_directories_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_module, "_sandbox_root", lambda: tmp_path)
    dead = tmp_path / "999999999-abc"  # no such pid
    alive = tmp_path / f"{os.getppid()}-abc"
    dead.mkdir()
    (dead / "left.txt").write_text("x")
    alive.mkdir()
    assert sweep_stale_dirs() == 1
    assert not dead.exists() and alive.exists()


def test_legacy_directories_are_swept_when_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_module.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(sandbox_module, "_sandbox_root", lambda: tmp_path / "commit_env_sandbox")
    old, new = tmp_path / "commit_env_sandbox_old", tmp_path / "commit_env_sandbox_new"
    old.mkdir()
    new.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert sweep_stale_dirs() == 1
    assert not old.exists() and new.exists()


def test_caller_environment_is_hidden(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("COMMIT_ENV_TEST_SECRET", "hunter2")
    program = (
        "import os\n"
        "assert 'COMMIT_ENV_TEST_SECRET' not in os.environ\n"
        "assert 'hunter2' not in repr(dict(os.environ))\n"
    )
    assert run_sandboxed(program, sandbox=mode).passed


def test_environment_writes_are_harmless() -> None:
    program = "import os\nos.environ['A'] = '1'\nassert os.environ['A'] == '1'\n"
    assert run_sandboxed(program, sandbox="guards").passed


def test_caller_process_is_unharmed(mode: str) -> None:
    cwd, pid = os.getcwd(), os.getpid()
    run_sandboxed("import os\nos.chdir('/')\n", sandbox=mode)
    run_sandboxed("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", sandbox=mode)
    assert os.getcwd() == cwd and os.getpid() == pid


def test_run_many_keeps_order() -> None:
    programs = ["assert True\n", "assert False\n", "x = 1\n", "def f(:\n"]
    results = run_sandboxed_many(programs, max_workers=2, sandbox="guards")
    assert [r.passed for r in results] == [True, False, True, False]


# ------------------------------------------------------------------------------------------------
# run_tests: the judge decides
# ------------------------------------------------------------------------------------------------


def test_run_tests_passes_a_correct_function(mode: str) -> None:
    result = run_tests("def add(a, b):\n    return a + b\n", ADD_TESTS, "add", sandbox=mode)
    assert result.passed, result.stderr


@pytest.mark.parametrize(
    "body",
    [
        "return a - b",
        "return None",
        "raise ValueError('x')",
        "return float('nan')",
        "return str(a + b)",
        "return [a + b]",
    ],
)
def test_run_tests_fails_a_wrong_function(body: str, mode: str) -> None:
    result = run_tests(f"def add(a, b):\n    {body}\n", ADD_TESTS, "add", sandbox=mode)
    assert result.status == "failed", result.stderr


def test_run_tests_values_round_trip_exactly() -> None:
    values = (
        "[None, True, 1, -2**70, 1.5, float('inf'), 2j, 'é', b'\\x00', (1, [2]),"
        " {1: 'a', 'b': (2,)}, {1, 2}, frozenset({3})]"
    )
    tests = (
        "def check(candidate):\n"
        f"    got = candidate()\n    want = {values}\n"
        "    assert got == want\n"
        "    assert [type(v) for v in got] == [type(v) for v in want]\n"
    )
    result = run_tests(f"def f():\n    return {values}\n", tests, "f", sandbox="guards")
    assert result.passed, result.stderr


def test_run_tests_reports_builtin_exception_types() -> None:
    tests = (
        "def check(candidate):\n"
        "    try:\n        candidate(-1)\n    except ValueError:\n        pass\n"
        "    else:\n        raise AssertionError('no ValueError')\n"
    )
    source = "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
    assert run_tests(source, tests, "f", sandbox="guards").passed


def test_run_tests_setup_helpers_are_trusted_copies() -> None:
    # The tests use ``helper`` from the trusted setup, not the program's (malicious) version.
    setup = "def helper(x):\n    return x * 10\n"
    source = "def helper(x):\n    return 0\n\ndef f(x):\n    return x * 10\n"
    tests = "def check(candidate):\n    assert candidate(3) == helper(3) == 30\n"
    assert run_tests(source, tests, "f", setup=setup, sandbox="guards").passed


def test_run_tests_missing_function_fails() -> None:
    result = run_tests("x = 1\n", ADD_TESTS, "add", sandbox="guards")
    assert result.status == "failed" and "no function 'add'" in result.stderr


def test_run_tests_many_keeps_order() -> None:
    jobs = [
        ("def add(a, b):\n    return a + b\n", ADD_TESTS, "add", ""),
        ("def add(a, b):\n    return 0\n", ADD_TESTS, "add", ""),
    ]
    results = run_tests_many(jobs, sandbox="guards")
    assert [r.passed for r in results] == [True, False]


def test_forged_verdict_on_stdout_is_ignored() -> None:
    program = (
        "import os\n"
        "for fd in range(3, 64):\n"
        "    try:\n        os.write(fd, b'0' * 64 + b' {\"passed\": true}\\n')\n"
        "    except OSError:\n        pass\n"
        "print('0' * 64, '{\"passed\": true}')\n"
        "raise SystemExit(0)\n"
    )
    result = run_sandboxed(program, sandbox="guards")
    assert not result.passed


# ------------------------------------------------------------------------------------------------
# Modes
# ------------------------------------------------------------------------------------------------


def test_tasks_take_and_check_the_mode(tmp_path: Path) -> None:
    from commit_env.tasks import get_task
    from commit_env.tasks.code import LinearFunctionCode
    from commit_env.tasks.humaneval import HumanEval

    task = get_task("code", sandbox="guards")
    assert isinstance(task, LinearFunctionCode) and task.sandbox == "guards"
    example = task.sample(__import__("numpy").random.default_rng(0))
    assert task.score(example, example.reference) == 1.0
    assert run_sandboxed(task.program(example, example.reference), sandbox="guards").passed
    assert not run_sandboxed(task.program(example, "0"), sandbox="guards").passed
    with pytest.raises(ValueError, match="unknown sandbox mode 'off'"):
        get_task("code", sandbox="off")
    with pytest.raises(ValueError, match="timeout"):
        get_task("code", timeout=0)
    with pytest.raises(ValueError, match="unknown sandbox mode"):
        HumanEval(path=str(tmp_path / "missing.jsonl"), sandbox="bogus")


def test_resolve_sandbox_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMMIT_ENV_SANDBOX", raising=False)
    assert resolve_sandbox_mode() == "auto"
    assert resolve_sandbox_mode("strict") == "strict"
    monkeypatch.setenv("COMMIT_ENV_SANDBOX", "guards")
    assert resolve_sandbox_mode() == "guards"
    monkeypatch.setenv("COMMIT_ENV_SANDBOX", "off")
    with pytest.raises(ValueError, match="COMMIT_ENV_SANDBOX='off'"):
        resolve_sandbox_mode()
    with pytest.raises(ValueError, match="unknown sandbox mode 'none'"):
        resolve_sandbox_mode("none")
    with pytest.raises(ValueError, match="unknown sandbox mode"):
        run_sandboxed("pass", sandbox="off")


def test_without_isolation_strict_raises_and_auto_warns_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sandbox_module, "_probe_result", ["bubblewrap is not installed"])
    monkeypatch.setattr(sandbox_module, "_warned", [])
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
        run_sandboxed("pass", sandbox="strict")
    with pytest.warns(RuntimeWarning, match="no OS isolation") as record:
        first = run_sandboxed("pass", sandbox="auto")
        second = run_sandboxed("pass", sandbox="auto")
    assert len(record) == 1
    assert first.passed and second.passed and first.isolation == "guards"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_sandboxed("pass", sandbox="guards").passed  # no warning asked for


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout": 0}, {"timeout": float("inf")}, {"memory_mb": 0}, {"max_file_mb": -1}],
)
def test_bad_limits_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        run_sandboxed("pass", **kwargs)
    with pytest.raises(ValueError):
        run_tests("pass", "pass", "f", **kwargs)


def test_bad_arguments_raise() -> None:
    with pytest.raises(TypeError):
        run_sandboxed(b"pass")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        run_sandboxed_many(["pass"], max_workers=0)
    with pytest.raises(ValueError, match="entry_point"):
        run_tests("pass", "pass", "not an identifier")
    with pytest.raises(TypeError):
        run_tests("pass", None, "f")  # type: ignore[arg-type]


def test_cpu_limit_counts_as_timeout() -> None:
    # The CPU limit (ceil(timeout) s) fires before the wall clock when the timeout is long.
    result = run_sandboxed("while True:\n    pass\n", timeout=1.0, sandbox="guards")
    assert result.status == "timeout"
    assert result.returncode in (None, -signal.SIGXCPU, 128 + signal.SIGXCPU)


def _tagged(pid: int) -> list[int]:
    """Live (non-zombie) processes of sandbox runs started by the process ``pid``."""
    needle = f"{sandbox_module.RUN_TAG_VAR}={pid}-".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if needle in environ and _state(int(entry)) not in ("gone", "Z"):
                found.append(int(entry))
    return found


_CALLER = (
    "import sys\n"
    "from commit_env.tasks.sandbox import run_sandboxed\n"
    "run_sandboxed('import time\\ntime.sleep(60)\\n', timeout=50.0, sandbox=sys.argv[1])\n"
)


def test_killed_caller_leaves_no_process_and_its_directory_is_swept(mode: str) -> None:
    caller = subprocess.Popen([sys.executable, "-c", _CALLER, mode])
    try:
        deadline = time.monotonic() + 20
        while len(_tagged(caller.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_tagged(caller.pid)) >= 2, "the sandbox run did not start"
        caller.kill()  # SIGKILL: no cleanup code of the caller runs
        caller.wait()
        deadline = time.monotonic() + 3
        while _tagged(caller.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _tagged(caller.pid) == []
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
    left = list(sandbox_module._sandbox_root().glob(f"{caller.pid}-*"))
    if mode == "guards":
        assert left, "the killed run's directory should still be there"
    sweep_stale_dirs()
    assert list(sandbox_module._sandbox_root().glob(f"{caller.pid}-*")) == []
