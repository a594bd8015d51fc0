"""``bench`` run keys: a resume with other settings is refused, or with ``force`` starts over."""

from __future__ import annotations

import json

import pytest
from commit_env.evaluation.bench import BenchConfig, _check_resume, bench_key
from commit_env.evaluation.io import append_jsonl_atomic

from commit_env.errors import ResumeMismatch


def _cfg(out, **kw):
    return BenchConfig.preset("quick", out=str(out), progress=False, **kw)


def test_key_holds_every_setting_that_changes_a_result(tmp_path):
    key = bench_key(_cfg(tmp_path))
    for field in ("n", "seed", "tasks", "setting", "collect_n", "controller_epochs", "remask_n"):
        assert field in key
    assert key["backbone"]["name"] == "tiny-testbed" and "device" not in key["backbone"]
    assert bench_key(_cfg(tmp_path, device="cpu", batch_size=7)) == key  # no result changes
    assert bench_key(_cfg(tmp_path, n=5)) != key


def test_resume_with_other_n_or_seed_is_refused_and_force_starts_over(tmp_path):
    _check_resume(_cfg(tmp_path, n=8), tmp_path, force=False)
    append_jsonl_atomic(tmp_path / "results.jsonl", {"n": 8, "seed": 0, "score": 1.0})
    (tmp_path / "controller").mkdir()
    _check_resume(_cfg(tmp_path, n=8), tmp_path, force=False)  # same settings: resume
    assert (tmp_path / "results.jsonl").is_file()
    for other in ({"n": 4}, {"seed": 1}, {"backbone": "hf:other"}):
        with pytest.raises(ResumeMismatch) as info:
            _check_resume(_cfg(tmp_path, **{"n": 8, **other}), tmp_path, force=False)
        assert "\n" not in str(info.value) and "--force" in str(info.value)
        assert next(iter(other)) in str(info.value)
    _check_resume(_cfg(tmp_path, n=4), tmp_path, force=True)
    assert not (tmp_path / "results.jsonl").exists() and not (tmp_path / "controller").exists()
    assert json.loads((tmp_path / "run_key.json").read_text())["n"] == 4


def test_a_bench_from_before_run_keys_is_checked_by_its_records(tmp_path):
    append_jsonl_atomic(tmp_path / "results.jsonl", {"n": 8, "seed": 0, "score": 1.0})
    with pytest.raises(ResumeMismatch, match="n=4"):
        _check_resume(_cfg(tmp_path, n=4), tmp_path, force=False)
    _check_resume(_cfg(tmp_path, n=8), tmp_path, force=False)  # adopted: records kept
    assert (tmp_path / "results.jsonl").is_file() and (tmp_path / "run_key.json").is_file()
