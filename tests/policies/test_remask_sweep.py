"""The revocable and draft-and-verify policies in the sweep grid: records carry NFE and tokens."""

from __future__ import annotations

import pytest
from commit_env.evaluation.sweeps import PolicySpec, heuristic_grid, run_sweep

from commit_env.decoding import DecodeSetting


def test_heuristic_grid_has_wino_remdm_and_freedave():
    families = {s.family for s in heuristic_grid(16)}
    assert {"wino", "remdm", "freedave"} <= families
    assert PolicySpec("wino", "wino", ()) in heuristic_grid(16)  # published settings


@pytest.fixture(scope="module")
def tiny():
    from commit_env.backbones import load_backbone

    return load_backbone("tiny")


def test_sweep_records_nfe_and_forward_tokens_side_by_side(tiny):
    specs = [
        PolicySpec("sequential", "topk", (("k", 1),)),
        PolicySpec("wino", "wino", ()),
        PolicySpec("freedave", "freedave", ()),
    ]
    records = run_sweep(tiny, ["qa"], specs, [DecodeSetting(16, "block:8")], n=6, progress=False)
    by = {r["family"]: r for r in records}
    for r in records:
        assert {"nfe", "forward_tokens", "remasks", "remask_changed"} <= set(r)
    # FreeDave: the sequential output (same scores) with fewer forwards but more tokens each.
    assert by["freedave"]["scores"] == by["sequential"]["scores"]
    assert by["freedave"]["nfe"] < by["sequential"]["nfe"]
    per_forward = {f: by[f]["forward_tokens"] / by[f]["nfe"] for f in by}
    assert per_forward["freedave"] > per_forward["sequential"]
    assert by["sequential"]["remasks"] == 0.0
