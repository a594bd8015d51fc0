import pytest
from commit_env.evaluation.headline import format_headline, headline
from commit_env.evaluation.metrics import frontier_cells


def rec(task, family, score, nfe, *, label=None, window="full", budget=None, g=16):
    return {
        "task": task,
        "family": family,
        "policy": family,
        "params_label": label or f"{family}()",
        "score": score,
        "nfe": nfe,
        "tokens_per_forward": g / nfe,
        "gen_length": g,
        "window": window,
        "step_budget": budget,
    }


def _records():
    return [
        # task a: the controller matches the heuristic's best score at half its gap to the oracle
        rec("a", "threshold", 1.0, 8.0),
        rec("a", "sequential", 1.0, 16.0),
        rec("a", "oracle", 1.0, 4.0),
        rec("a", "controller", 1.0, 6.0),
        rec("a", "ppo", 0.5, 2.0),
        # task b: ppo and the heuristic tie on AUP; the controller collapses (no gap defined)
        rec("b", "threshold", 1.0, 4.0),
        rec("b", "oracle", 1.0, 2.0),
        rec("b", "controller", 0.2, 1.0),
        rec("b", "ppo", 1.0, 4.0),
        # off the default setting: one more cell per task
        rec("a", "threshold", 0.9, 8.0, window="block:8"),
        rec("a", "controller", 0.9, 5.0, window="block:8"),
        rec("b", "threshold", 0.9, 8.0, window="block:8"),
        rec("b", "controller", 0.9, 9.0, window="block:8"),
    ]


def test_headline_reports_aup_winners_gap_and_grid_counts():
    records = _records()
    base = [r for r in records if r["window"] == "full"]
    trained = {"controller": [(16, "full")]}
    cells = frontier_cells(records, ("controller", "ppo"), trained_settings=trained)
    h = headline(base, cells, ("controller", "ppo"))
    assert h["aup"]["a"]["families"] == ["controller"]
    assert h["aup"]["b"]["families"] == ["threshold", "ppo"]  # a tie is shared
    assert h["aup"]["b"]["aup"] == pytest.approx(4.0)
    ctrl, ppo = h["learned"]["controller"], h["learned"]["ppo"]
    assert ctrl["aup_best"] == ["a"] and ppo["aup_best"] == ["b"]
    assert ctrl["oracle_gap_closed"] == pytest.approx(0.5) and ctrl["oracle_gap_tasks"] == 1
    assert ppo["oracle_gap_closed"] == pytest.approx(0.0) and ppo["oracle_gap_tasks"] == 1
    # b: the heuristic reaches the bar, no controller member does: named, not averaged away
    assert ctrl["oracle_gap_missed"] == ["b"] and ppo["oracle_gap_missed"] == ["a"]
    # a: win (default), win (block:8, cheaper); b: collapse, heuristic cheaper
    assert (ctrl["grid_wins"], ctrl["grid_cells"]) == (2, 4)
    assert (ctrl["unseen_wins"], ctrl["unseen_cells"]) == (1, 2)
    text = format_headline(h)
    assert "a: controller (" in text and "b: threshold, ppo (4.00)" in text
    assert "controller: gap 50% over 1 task(s), misses the bar on b; grid 2/4 (unseen 1/2)" in text


def test_headline_without_learned_records_is_empty_not_an_error():
    base = [rec("a", "threshold", 1.0, 8.0), rec("a", "oracle", 1.0, 4.0)]
    h = headline(base, [])
    assert h["learned"] == {} and h["aup"]["a"]["families"] == ["threshold"]
    assert "Learned families" in format_headline(h)
