"""Trade-off metrics on synthetic records; expected values are worked out by hand here."""

import math

import pytest
from commit_env.evaluation.grid import (
    FULL_GRID,
    bench_grid,
    budget_for,
    default_setting,
    grid_settings,
    window_fits,
)
from commit_env.evaluation.metrics import (
    aup,
    aup_table,
    aup_weight,
    cell_best,
    family_speedups,
    frontier_cells,
    frontier_counts,
    heuristic_yardstick,
    iso_quality_speedups,
    missed_bar,
    oracle_gap_closed,
    setting_label,
)
from commit_env.evaluation.sweeps import Setting

from commit_env.tasks.registry import TESTBED_TASKS


def rec(task, family, score, nfe, *, label=None, tpf=None, g=16, window="full", budget=None, **kw):
    return {
        "task": task,
        "family": family,
        "policy": family,
        "params_label": label or f"{family}()",
        "score": score,
        "nfe": nfe,
        "tokens_per_forward": g / nfe if tpf is None else tpf,
        "gen_length": g,
        "window": window,
        "step_budget": budget,
        **kw,
    }


# ------------------------------------------------------------------------------------ AUP


def test_aup_weight_is_one_at_the_best_and_capped_above_it():
    assert aup_weight(0.9, 0.9) == 1.0
    assert aup_weight(1.0, 0.9) == 1.0
    assert aup_weight(0.0, 0.8) == pytest.approx(math.exp(-3.0))
    assert aup_weight(0.5, 1.0, alpha=2.0) == pytest.approx(math.exp(-1.0))
    with pytest.raises(ValueError, match="y_max"):
        aup_weight(0.5, 0.0)


def test_aup_one_point_curve_at_the_best_is_its_parallelism():
    assert aup([(2.0, 0.9)]) == pytest.approx(2.0 * 0.9)
    # one point below the cell's best but within 5 points: weighted rectangle
    assert aup([(4.0, 0.96)], y_max=1.0) == pytest.approx(4.0 * 0.96 * math.exp(-3 * 0.04))


def test_aup_trapezoid_matches_hand_computation_and_ignores_order():
    pts = [(3.0, 0.98), (1.0, 1.0)]
    # 1*1*1 + 0.5*(3-1)*(1*1 + 0.98*exp(-3*0.02))
    expected = 1.0 + 1.0 * (1.0 + 0.98 * math.exp(-0.06))
    assert aup(pts) == pytest.approx(expected)
    assert aup(list(reversed(pts))) == pytest.approx(expected)


def test_aup_drops_points_more_than_five_points_below_the_best():
    pts = [(1.0, 1.0), (2.0, 0.96), (4.0, 0.90)]
    expected = 1.0 + 0.5 * (2.0 - 1.0) * (1.0 + 0.96 * math.exp(-3 * 0.04))
    assert aup(pts, y_max=1.0) == pytest.approx(expected)
    # a dropped middle point: the curve joins its neighbours
    assert aup([(1.0, 1.0), (2.0, 0.5), (3.0, 1.0)]) == pytest.approx(1.0 + 0.5 * 2 * 2.0)
    # exactly 5 points below is kept
    assert aup([(2.0, 0.95)], y_max=1.0) == pytest.approx(2.0 * 0.95 * math.exp(-0.15))


def test_aup_collapse_scores_zero_not_its_parallelism():
    # all-at-once at 16 tokens per forward and score 0.39, while the cell's best is 0.95
    assert aup([(16.0, 0.39)], y_max=0.95) == 0.0
    # without the cut, the weight still shrinks it far below 16 * 0.39
    kept = aup([(16.0, 0.39)], y_max=0.95, drop=1.0)
    assert kept == pytest.approx(16 * 0.39 * math.exp(-3 * (1 - 0.39 / 0.95)))
    assert kept < 0.2 * 16 * 0.39


def test_aup_empty_and_degenerate_inputs():
    assert aup([]) == 0.0
    assert aup([(2.0, 0.0)]) == 0.0  # y_max 0: no accuracy, no area
    with pytest.raises(ValueError, match="tokens per forward"):
        aup([(0.0, 0.5)])


def test_aup_table_per_family_task_and_setting_oracle_never_sets_the_best():
    records = [
        rec("t", "sequential", 0.98, 16, tpf=1.0),
        rec("t", "threshold", 0.98, 8, label="threshold(threshold=0.9)", tpf=2.0),
        rec("t", "threshold", 0.95, 4, label="threshold(threshold=0.5)", tpf=4.0),
        rec("t", "all-at-once", 0.0, 1, tpf=16.0),
        rec("t", "oracle", 1.0, 3, tpf=5.0),
        rec("t", "sequential", 0.5, 16, tpf=1.0, window="block:8"),
    ]
    rows = {(r["family"], r["setting"]): r for r in aup_table(records)}
    full, block = "G=16 full S=-", "G=16 block:8 S=-"
    assert rows["threshold", full]["y_max"] == 0.98
    w = math.exp(-3 * (1 - 0.95 / 0.98))
    assert rows["threshold", full]["aup"] == pytest.approx(2 * 0.98 + 0.5 * 2 * (0.98 + 0.95 * w))
    assert rows["threshold", full]["points"] == 2 and rows["threshold", full]["kept"] == 2
    assert rows["threshold", full]["max_tpf"] == 4.0
    assert rows["sequential", full]["aup"] == pytest.approx(0.98)
    assert rows["all-at-once", full]["aup"] == 0.0
    assert rows["all-at-once", full]["kept"] == 0 and rows["all-at-once", full]["max_tpf"] is None
    assert rows["oracle", full]["aup"] == pytest.approx(5.0)  # above y_max: weight capped at 1
    assert rows["sequential", block]["aup"] == pytest.approx(0.5)  # its own cell
    assert aup_table([]) == []


# --------------------------------------------------------------------- iso-quality speed-up


def test_iso_quality_speedup_counts_only_within_one_point_of_the_best():
    records = [
        rec("t", "sequential", 0.98, 24.0),
        rec("t", "threshold", 0.97, 8.0, label="threshold(threshold=0.9)"),  # exactly 1 point
        rec("t", "threshold", 0.90, 4.0, label="threshold(threshold=0.5)"),
        rec("t", "all-at-once", 0.10, 1.0),
        rec("t", "oracle", 1.0, 3.0),
    ]
    rows = {r["params_label"]: r for r in iso_quality_speedups(records)}
    assert all(r["best"] == 0.98 for r in rows.values())  # the oracle does not set the bar
    assert rows["sequential()"]["speedup"] == 1.0
    assert rows["threshold(threshold=0.9)"]["speedup"] == pytest.approx(24 / 8)
    assert rows["threshold(threshold=0.5)"]["speedup"] is None
    assert not rows["all-at-once()"]["qualified"]
    assert rows["oracle()"]["speedup"] == pytest.approx(8.0)
    fam = {r["family"]: r for r in family_speedups(iso_quality_speedups(records))}
    assert fam["threshold"]["speedup"] == pytest.approx(3.0)
    assert fam["threshold"]["params_label"] == "threshold(threshold=0.9)"
    assert fam["all-at-once"]["speedup"] is None and fam["all-at-once"]["params_label"] is None
    strict = {r["params_label"]: r for r in iso_quality_speedups(records, tolerance=0.0)}
    assert strict["threshold(threshold=0.9)"]["speedup"] is None


def test_iso_quality_speedup_needs_a_sequential_record_in_the_cell():
    assert iso_quality_speedups([rec("t", "threshold", 0.9, 4.0)]) == []
    assert iso_quality_speedups([]) == []


# ---------------------------------------------------------------------- frontier count


def _cell(learned_score, learned_nfe, task="code", window="full", budget=None):
    heur = [
        rec(task, "sequential", 0.95, 16.0, window=window, budget=budget),
        rec(task, "threshold", 0.94, 7.0, window=window, budget=budget),
        rec(task, "all-at-once", 0.0, 1.0, window=window, budget=budget),
        rec(task, "oracle", 1.0, 2.0, window=window, budget=budget),
    ]
    return heur + [
        rec(task, "controller", learned_score, learned_nfe, window=window, budget=budget)
    ]


def test_collapse_reads_as_a_loss():
    # old rule: best heuristic at <= 3 NFE is all-at-once (0.0), so "+0.39 above the frontier"
    (cell,) = frontier_cells(_cell(0.39, 3.0))
    assert not cell["win"] and cell["verdict"] == "below best"
    assert cell["best"] == 0.95  # the oracle's 1.0 is not the bar
    assert cell["rival"] == "threshold()" and cell["rival_nfe"] == 7.0


def test_win_heuristic_cheaper_and_ties():
    (win,) = frontier_cells(_cell(0.95, 5.0))
    assert win["win"] and win["verdict"] == "win"
    assert win["rival"] == "sequential()"  # cheapest heuristic reaching 0.95
    # threshold reaches 0.94 with 7 < 8 NFE
    (lose,) = frontier_cells(_cell(0.94, 8.0))
    assert lose["verdict"] == "heuristic cheaper" and lose["rival"] == "threshold()"
    # a tie in score and NFE is not "fewer NFE": the learned policy keeps the cell
    (tie,) = frontier_cells(_cell(0.94, 7.0))
    assert tie["win"]
    # a heuristic slightly below the learned score does not reach it, however cheap
    (above,) = frontier_cells(_cell(0.945, 8.0))
    assert above["win"] and above["rival"] == "sequential()"
    # the quality bar is a parameter
    (strict,) = frontier_cells(_cell(0.945, 8.0), tolerance=0.0)
    assert strict["verdict"] == "below best"


def test_frontier_counts_overall_and_on_unseen_settings():
    records = (
        _cell(0.95, 5.0)  # win, trained setting
        + _cell(0.39, 3.0, budget=4)  # collapse, unseen
        + _cell(0.95, 4.0, window="block:8")  # win, unseen
        + _cell(0.94, 8.0, task="qa")  # heuristic cheaper, trained setting
    )
    cells = frontier_cells(records, trained_settings={"controller": ["G=16 full S=-"]})
    (count,) = frontier_counts(cells)
    assert count == {
        "family": "controller",
        "wins": 2,
        "cells": 4,
        "below_best": 1,
        "heuristic_cheaper": 1,
        "unseen_wins": 1,
        "unseen_cells": 2,
    }
    # the same, read from the records' own key and with Setting objects
    tagged = [
        {**r, "trained_settings": [Setting(16, "full", None)]} if r["family"] == "controller" else r
        for r in records
    ]
    assert frontier_counts(frontier_cells(tagged)) == [count]
    # unknown: no unseen count
    (plain,) = frontier_counts(frontier_cells(records))
    assert plain["unseen_wins"] is None and plain["unseen_cells"] is None


def test_only_the_deployed_member_of_a_family_is_judged():
    # The controller's deployment-threshold sweep adds members at the default setting; the count
    # judges the deployed one (its learned threshold), once per cell.
    sweep = [
        rec("code", "controller", 0.39, 2.0, label="controller(threshold=0.3)"),
        rec("code", "controller", 0.95, 5.0, label="controller(threshold=0.6)"),
    ]
    records = _cell(0.95, 6.0)[:-1] + sweep
    assert len(frontier_cells(records)) == 2  # every member, without ``deployed``
    (cell,) = frontier_cells(records, deployed={"controller": "controller(threshold=0.6)"})
    assert cell["params_label"] == "controller(threshold=0.6)" and cell["win"]
    (lost,) = frontier_cells(records, deployed={"controller": "controller(threshold=0.3)"})
    assert lost["verdict"] == "below best"


def test_frontier_edge_cases():
    assert frontier_cells([]) == [] and frontier_counts([]) == []
    only_learned = [rec("t", "controller", 0.9, 4.0)]
    assert frontier_cells(only_learned) == []  # no heuristic to compare with
    with pytest.raises(ValueError, match="bad setting"):
        frontier_cells(_cell(0.9, 4.0), trained_settings={"controller": [3.5]})


def test_heuristic_yardstick_judges_each_fixed_heuristic_member_by_the_learned_rule():
    t7, t9 = "threshold(0.7)", "threshold(0.9)"
    records = [
        # a: the controller and the oracle are dropped; eb wins, threshold 0.9 is beaten by eb
        rec("a", "threshold", 0.90, 3.0, label=t7),
        rec("a", "threshold", 1.00, 5.0, label=t9),
        rec("a", "eb", 1.00, 4.0),
        rec("a", "controller", 1.00, 2.0),
        rec("a", "oracle", 1.00, 1.0),
        # b: both threshold members reach the best (the family's own members are no rivals)
        rec("b", "threshold", 1.00, 3.0, label=t7),
        rec("b", "threshold", 1.00, 4.0, label=t9),
        rec("b", "eb", 0.80, 2.0),
        # c: eb matches threshold 0.9's score for fewer NFE
        rec("c", "threshold", 0.50, 2.0, label=t7),
        rec("c", "threshold", 0.95, 3.0, label=t9),
        rec("c", "eb", 0.95, 2.5),
    ]
    assert heuristic_yardstick(records) == [
        {"family": "eb", "params_label": "eb()", "wins": 2, "cells": 3},
        {"family": "threshold", "params_label": t7, "wins": 1, "cells": 3},
    ]
    assert heuristic_yardstick([rec("a", "controller", 1.0, 2.0)]) == []


def test_cell_best_and_setting_label():
    rows = [rec("t", "oracle", 1.0, 2.0), rec("t", "topk", 0.5, 4.0)]
    assert cell_best(rows) == 0.5
    assert cell_best(rows, exclude=()) == 1.0
    assert cell_best(rows[:1]) is None
    assert (
        setting_label(rec("t", "x", 0, 1, g=24, window="block:8", budget=6)) == "G=24 block:8 S=6"
    )
    assert setting_label(rec("t", "x", 0, 1)) == Setting(16, "full", None).label


# ------------------------------------------------------------------------------------ grid


def test_window_rule_drops_windows_as_wide_as_g_or_not_dividing_it():
    assert window_fits("full", 4)
    assert window_fits("block:8", 16) and window_fits("block:8", 24)
    assert not window_fits("block:8", 20)  # 8 does not divide 20
    assert not window_fits("block:8", 8)  # as wide as G: that is the full window
    assert not window_fits("sliding:16", 16) and window_fits("sliding:16", 24)
    with pytest.raises(ValueError, match="bad window"):
        window_fits("ring:3", 16)


def test_budgets_are_g_over_d_and_all_bind():
    assert budget_for(24, None) is None
    assert budget_for(24, 4) == 6 and budget_for(24, 8) == 3
    assert budget_for(4, 8) is None
    with pytest.raises(ValueError, match="divisor"):
        budget_for(16, 0)
    for s in grid_settings(24, "full"):
        # a budget binds when it cuts the one-token-per-forward decode (G forwards) short
        assert s.step_budget is None or s.step_budget < s.gen_length


def test_full_grid_at_old_and_new_default_lengths():
    old = grid_settings(16, "full")
    # G=16: block:8 and full (sliding:16 == full); G=32: all three windows; 3 budgets each
    assert len(old) == 2 * 3 + 3 * 3
    assert {s.label for s in old if s.gen_length == 16} == {
        "G=16 block:8 S=-",
        "G=16 block:8 S=4",
        "G=16 block:8 S=2",
        "G=16 full S=-",
        "G=16 full S=4",
        "G=16 full S=2",
    }
    new = grid_settings(24, "full")
    assert len(new) == 18 and {s.gen_length for s in new} == {24, 48}
    assert Setting(48, "sliding:16", 6) in new
    assert len(set(new)) == len(new)


def test_quick_grid_is_a_subset_of_the_full_grid():
    quick = grid_settings(24, "quick")
    assert set(quick) <= set(grid_settings(24, "full"))
    assert quick == [
        Setting(24, "full", None),
        Setting(24, "full", 6),
        Setting(24, "block:8", None),
    ]
    assert grid_settings(8, "quick") == [Setting(8, "full", None), Setting(8, "full", 2)]
    assert grid_settings(4, FULL_GRID) == [Setting(4, "full", None), Setting(4, "full", 1)] + [
        Setting(8, "full", None),
        Setting(8, "full", 2),
        Setting(8, "full", 1),
    ]
    with pytest.raises(ValueError, match="unknown grid mode"):
        grid_settings(16, "medium")


def test_bench_grid_per_task_default_length():
    grid = bench_grid(["qa", "latin"], "quick", gen_lengths={"latin": 24})
    assert [s.gen_length for s in grid["qa"]] == [16] * 3  # registry default of an old family
    assert [s.gen_length for s in grid["latin"]] == [24] * 3
    with pytest.raises(ValueError, match="unknown task"):
        bench_grid(["nope"])
    testbed = bench_grid(None, "full", gen_lengths=dict.fromkeys(TESTBED_TASKS, 24))
    assert list(testbed) == list(TESTBED_TASKS)
    assert all(len(v) == 18 for v in testbed.values())
    assert default_setting(16, "sliding:16") == Setting(16, "full", None)
    assert default_setting(24, "block:8") == Setting(24, "block:8", None)


def test_oracle_gap_closed_at_matched_score():
    records = [
        rec("t", "sequential", 1.00, 16.0, label="topk(k=1)"),
        rec("t", "threshold", 0.995, 8.0, label="threshold(0.9)"),
        rec("t", "threshold", 0.90, 3.0, label="threshold(0.5)"),  # cheaper but below the bar
        rec("t", "oracle", 1.00, 2.0),
        rec("t", "controller", 1.00, 5.0, label="controller(0.99)"),
        rec("t", "controller", 0.95, 2.5, label="controller(0.5)"),  # collapsed: not counted
        rec("t", "ppo", 0.97, 4.0),  # never within a point of the best
        rec("u", "sequential", 1.00, 16.0),
        rec("u", "oracle", 1.00, 20.0),  # an oracle slower than the heuristic: undefined
        rec("u", "controller", 1.00, 10.0),
    ]
    rows = {(r["family"], r["task"]): r for r in oracle_gap_closed(records)}
    c = rows[("controller", "t")]
    assert c["heuristic"] == "threshold(0.9)" and c["heuristic_nfe"] == 8.0
    assert c["member"] == "controller(0.99)" and c["oracle_nfe"] == 2.0
    assert c["closed"] == pytest.approx((8.0 - 5.0) / (8.0 - 2.0))
    assert rows[("ppo", "t")]["member"] is None and rows[("ppo", "t")]["closed"] is None
    assert rows[("controller", "u")]["closed"] is None
    assert ("oracle", "t") not in rows and ("threshold", "t") not in rows
    # where a heuristic sets the cell's best, the secondary reading is the same number
    assert c["heuristic_best"] == 1.0 and c["closed_at_heuristic_best"] == c["closed"]
    assert rows[("ppo", "t")]["closed_at_heuristic_best"] is None


def test_oracle_gap_at_heuristic_best_defines_cells_the_learned_family_out_scores():
    records = [
        rec("t", "sequential", 0.90, 16.0),
        rec("t", "threshold", 0.895, 8.0, label="threshold(0.9)"),
        rec("t", "threshold", 0.80, 3.0),
        rec("t", "oracle", 0.90, 2.0),
        rec("t", "controller", 0.95, 6.0),  # the cell's best: no heuristic within a point
        rec("t", "controller", 0.90, 4.0),  # matches the heuristics' best
        rec("t", "controller", 0.70, 2.5),
    ]
    (row,) = oracle_gap_closed(records)
    assert row["best"] == 0.95 and row["heuristic"] is None and row["closed"] is None
    assert not missed_bar(row)
    assert row["heuristic_best"] == 0.90
    assert row["closed_at_heuristic_best"] == pytest.approx((8.0 - 4.0) / (8.0 - 2.0))
