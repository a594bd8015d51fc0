"""What ``commit-env bench`` prints once the run is over (the run itself is faked here)."""

from __future__ import annotations

import json

from commit_env.evaluation import bench as bench_module
from commit_env.evaluation.cli import main


def test_bench_prints_timings_then_the_headline(monkeypatch, capsys, tmp_path):
    head = {
        "aup": {"sudoku": {"families": ["controller-remask"], "aup": 11.9}},
        "learned": {
            "controller": {
                "aup_best": [],
                "oracle_gap_closed": 0.44,
                "oracle_gap_tasks": 1,
                "grid_wins": 2,
                "grid_cells": 9,
                "unseen_wins": 1,
                "unseen_cells": 3,
            }
        },
    }
    seen = {}

    def fake_run_bench(cfg, **kw):
        seen["cfg"] = cfg
        return {"out": cfg.out, "records": 3, "timings": {"total": 1.0}, "headline": head}

    monkeypatch.setattr(bench_module, "run_bench", fake_run_bench)
    assert main(["bench", "--quick", "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    summary, end = json.JSONDecoder().raw_decode(out)
    assert summary["records"] == 3 and "headline" not in summary  # the JSON stays short
    assert "sudoku: controller-remask (11.90)" in out[end:]
    assert "controller: gap 44% over 1 task(s); grid 2/9 (unseen 1/3)" in out
    assert out.rstrip().endswith("report.md (headline numbers also in summary.json)")
    assert seen["cfg"].out == str(tmp_path / "b")
