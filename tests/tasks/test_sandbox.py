"""The sandbox runs programs in a limited subprocess and never harms the caller."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from commit_env.tasks.sandbox import SandboxResult, run_sandboxed, run_sandboxed_many


def _state(pid: int) -> str:
    """One-letter state of ``pid`` from /proc, or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def test_passing_program_passes() -> None:
    result = run_sandboxed("def f(x):\n    return 2 * x\n\nassert f(3) == 6\n")
    assert isinstance(result, SandboxResult)
    assert result.passed and result.status == "passed" and result.returncode == 0
    assert 0 < result.wall_time < 5


def test_result_is_frozen() -> None:
    result = run_sandboxed("pass")
    with pytest.raises(AttributeError):
        result.passed = False  # type: ignore[misc]


@pytest.mark.parametrize(
    "program",
    [
        "assert 1 + 1 == 3\n",
        "def f(:\n    pass\n",
        "raise ValueError('no')\n",
        "import sys\nsys.exit(0)\n",
    ],
    ids=["failed-assert", "syntax-error", "exception", "early-exit"],
)
def test_failing_programs_fail(program: str) -> None:
    result = run_sandboxed(program)
    assert not result.passed
    assert result.status == "failed"
    assert result.returncode == 1


def test_failure_reports_stderr_truncated() -> None:
    result = run_sandboxed("import sys\nsys.stderr.write('x' * 100_000)\nassert False, 'boom'\n")
    assert result.status == "failed"
    assert "AssertionError: boom" in result.stderr
    assert len(result.stderr) < 5000


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    result = run_sandboxed("while True:\n    pass\n", timeout=1.0)
    assert result.status == "timeout" and not result.passed
    # Either the wall clock (None) or the CPU-time limit (SIGXCPU) stops it first: both time out.
    assert result.returncode in (None, -signal.SIGXCPU)
    assert time.monotonic() - start < 1.0 + 2.0


def test_sleeping_program_times_out() -> None:
    # No CPU used: only the wall-clock timeout can stop it.
    result = run_sandboxed("import time\ntime.sleep(60)\n", timeout=1.0)
    assert result.status == "timeout"


def test_huge_allocation_fails() -> None:
    result = run_sandboxed("x = bytearray(10**11)\n")
    assert result.status == "failed"
    assert "MemoryError" in result.stderr


def test_growing_list_fails() -> None:
    program = "x = []\nwhile True:\n    x.append([0] * 10**6)\n"
    result = run_sandboxed(program, memory_mb=256, timeout=20.0)
    assert result.status == "failed"
    assert "MemoryError" in result.stderr


def test_fork_bomb_fails() -> None:
    result = run_sandboxed("import os\nwhile True:\n    os.fork()\n", timeout=3.0)
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
    results = run_sandboxed_many(programs)
    assert [r.status for r in results] == ["failed"] * len(programs)


@pytest.mark.parametrize("exits", [True, False], ids=["parent-exits", "parent-hangs"])
def test_children_left_behind_are_killed(tmp_path: Path, exits: bool) -> None:
    # ctypes reaches libc's fork around the runner's guard (as a root user's program could);
    # the process-group kill must still take the children down.
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
    result = run_sandboxed(program, timeout=2.0)
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
def test_files_outside_are_not_deleted(tmp_path: Path, attack: str) -> None:
    target = tmp_path / "keep" / "precious.txt"
    target.parent.mkdir()
    target.write_text("data")
    mode = target.stat().st_mode
    result = run_sandboxed(f"TARGET = {str(target)!r}\n" + attack)
    assert result.status == "failed"
    assert "disabled in the commit_env sandbox" in result.stderr
    assert target.read_text() == "data"
    assert target.stat().st_mode == mode


def test_huge_file_write_is_stopped(tmp_path: Path) -> None:
    outside = tmp_path / "big.bin"
    program = (
        "chunk = b'x' * 2**20\n"
        "for name in ('big.bin', OUTSIDE):\n"
        "    try:\n"
        "        with open(name, 'wb') as f:\n"
        "            for _ in range(64):\n"
        "                f.write(chunk)\n"
        "    except OSError as exc:\n"
        "        assert exc.errno == 27, exc  # EFBIG\n"
        "    else:\n"
        "        raise SystemExit('write was not stopped')\n"
    )
    result = run_sandboxed(f"OUTSIDE = {str(outside)!r}\n" + program, max_file_mb=4)
    assert result.passed, result.stderr
    assert outside.stat().st_size <= 4 * 2**20


def test_working_directory_is_a_fresh_temp_dir_removed_afterwards() -> None:
    program = (
        "import os, sys\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "assert os.listdir('.') == ['scratch.txt']\n"
        "sys.stderr.write('CWD=' + os.getcwd() + '\\n')\n"
    )
    result = run_sandboxed(program)
    assert result.passed, result.stderr
    cwd = result.stderr.split("CWD=", 1)[1].strip()
    assert cwd != os.getcwd()
    assert Path(cwd).parent == Path(tempfile.gettempdir())
    assert not Path(cwd).exists()


def test_caller_environment_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMMIT_ENV_TEST_SECRET", "hunter2")
    program = (
        "import os\n"
        "assert 'COMMIT_ENV_TEST_SECRET' not in os.environ\n"
        "assert 'hunter2' not in repr(dict(os.environ))\n"
    )
    assert run_sandboxed(program).passed


def test_environment_writes_are_harmless() -> None:
    # os.putenv is disabled as a no-op: os.environ still works inside the program.
    assert run_sandboxed("import os\nos.environ['A'] = '1'\nassert os.environ['A'] == '1'\n").passed


def test_caller_process_is_unharmed() -> None:
    cwd, pid = os.getcwd(), os.getpid()
    run_sandboxed("import os\nos.chdir('/')\n")
    run_sandboxed("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    assert os.getcwd() == cwd and os.getpid() == pid


def test_run_many_keeps_order() -> None:
    programs = ["assert True\n", "assert False\n", "x = 1\n", "def f(:\n"]
    results = run_sandboxed_many(programs, max_workers=2)
    assert [r.passed for r in results] == [True, False, True, False]


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout": 0}, {"timeout": float("inf")}, {"memory_mb": 0}, {"max_file_mb": -1}],
)
def test_bad_limits_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        run_sandboxed("pass", **kwargs)


def test_bad_arguments_raise() -> None:
    with pytest.raises(TypeError):
        run_sandboxed(b"pass")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        run_sandboxed_many(["pass"], max_workers=0)
