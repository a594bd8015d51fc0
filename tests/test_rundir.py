"""Run directories: the lock, stale locks, leftovers, run keys, concurrent appends, strict JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from commit_env.evaluation.io import append_jsonl_atomic, read_jsonl

from commit_env.errors import ResumeMismatch, RunDirError, RunDirLocked
from commit_env.io import dumps_json, json_safe, replace_dir_atomic, write_json_atomic
from commit_env.rundir import LOCK_FILE, RunLock, check_run_key, prepare_out_dir, sweep_partial

HOLDER = textwrap.dedent(
    """
    import sys, time
    from commit_env.rundir import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def _spawn_holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_gets_one_line_naming_the_holder_pid(tmp_path):
    proc = _spawn_holder(tmp_path / "run")
    try:
        with pytest.raises(RunDirLocked) as info:
            RunLock(tmp_path / "run").acquire()
        message = str(info.value)
        assert f"process {proc.pid}" in message and "\n" not in message
    finally:
        proc.kill()
        proc.wait()
    # the holder died: the kernel dropped its lock, and the stale pid is taken over
    assert (tmp_path / "run" / LOCK_FILE).read_text().strip() == str(proc.pid)
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_stale_lock_file_with_a_dead_pid_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_FILE).write_text(f"{dead.pid}\n")
    with RunLock(run):
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    with RunLock(tmp_path / "r"), RunLock(tmp_path / "r"):
        pass
    proc = _spawn_holder(tmp_path / "r")  # free again: another process can take it
    proc.kill()
    proc.wait()


def test_out_dir_that_is_a_file_or_unwritable(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        prepare_out_dir(afile)
    with pytest.raises(RunDirError, match="parent is a file"):
        prepare_out_dir(afile / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(RunDirError, match="not writable|cannot be created"):
            prepare_out_dir(ro / "run")


def test_sweep_removes_partial_files_and_restores_a_cut_replacement(tmp_path):
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / ".results.jsonl.abc123.tmp").write_text("half")
    (run / "sub" / ".ckpt.xyz.tmp").mkdir()
    (run / ".last.old").mkdir()  # killed between the two renames: 'last' is missing
    (run / ".last.old" / "model.safetensors").write_text("w")
    (run / "keep.json").write_text("{}")
    with RunLock(run):
        pass
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE, "keep.json", "last", "sub"]
    assert (run / "last" / "model.safetensors").read_text() == "w"
    assert list((run / "sub").iterdir()) == []
    assert sweep_partial(run) == 0


def test_replace_dir_atomic_killed_mid_write_keeps_the_old_directory(tmp_path):
    target = tmp_path / "last"
    replace_dir_atomic(target, lambda d: (d / "a").write_text("old"))

    def dies(d: Path) -> None:
        (d / "a").write_text("new")
        raise KeyboardInterrupt  # a kill before the optimizer state is written

    with pytest.raises(KeyboardInterrupt):
        replace_dir_atomic(target, dies)
    assert (target / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_run_key_refuses_other_settings_in_one_line_and_force_replaces(tmp_path):
    assert check_run_key(tmp_path, {"n": 64, "seed": 0}) is False
    assert check_run_key(tmp_path, {"n": 64, "seed": 0}) is True
    with pytest.raises(ResumeMismatch) as info:
        check_run_key(tmp_path, {"n": 32, "seed": 0})
    assert "n: 64 -> 32" in str(info.value) and "\n" not in str(info.value)
    assert check_run_key(tmp_path, {"n": 32, "seed": 0}, force=True) is False
    assert json.loads((tmp_path / "run_key.json").read_text()) == {"n": 32, "seed": 0}


APPENDER = textwrap.dedent(
    """
    import sys
    from commit_env.evaluation.io import append_jsonl_atomic
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(n):
        append_jsonl_atomic(path, {"who": tag, "i": i}, key=lambda r: (r["who"], r["i"]))
        if tag == "a" and i == 0:
            append_jsonl_atomic(path, {"who": tag, "i": i}, key=lambda r: (r["who"], r["i"]))
    """
)


def test_two_processes_appending_never_lose_or_duplicate_a_record(tmp_path):
    path = tmp_path / "results.jsonl"
    n = 30
    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(path), tag, str(n)])
        for tag in ("a", "b")
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    records = read_jsonl(path)
    keys = [(r["who"], r["i"]) for r in records]
    assert len(keys) == 2 * n and set(keys) == {(w, i) for w in "ab" for i in range(n)}


def test_append_dedupes_by_key_and_writes_strict_json(tmp_path):
    path = tmp_path / "r.jsonl"
    assert append_jsonl_atomic(path, {"k": 1, "score": float("nan")}, key=lambda r: r["k"])
    assert not append_jsonl_atomic(path, {"k": 1, "score": 0.5}, key=lambda r: r["k"])
    text = path.read_text()
    assert "NaN" not in text and read_jsonl(path) == [{"k": 1, "score": None}]


def test_json_outputs_never_contain_nan_or_infinity(tmp_path):
    import numpy as np

    data = {"a": float("nan"), "b": [float("inf"), -math.inf, 1.5], "c": np.float32("nan")}
    assert json_safe(data) == {"a": None, "b": [None, None, 1.5], "c": None}
    text = dumps_json(data)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    write_json_atomic(tmp_path / "x.json", data)
    assert "NaN" not in (tmp_path / "x.json").read_text()
