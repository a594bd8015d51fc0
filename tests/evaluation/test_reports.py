"""The bench report and figures rendered from synthetic records (nothing decodes here)."""

import math

import pytest
from commit_env.evaluation import plots
from commit_env.evaluation.metrics import aup_table, heuristic_yardstick
from commit_env.evaluation.reports import (
    cross_setting_cells,
    default_records,
    relative_setting_label,
    render_report,
    rescore,
    resolution_note,
)
from commit_env.evaluation.sweeps import Setting

CFG = {"backbone": "tiny", "tasks": ["code", "latin"], "n": 4, "seed": 0, "mode": "quick"}


def rec(task, family, score, nfe, *, label=None, g=16, window="full", budget=None, scores=None):
    r = {
        "task": task,
        "family": family,
        "policy": family,
        "params_label": label or f"{family}()",
        "score": score,
        "score_ci_low": max(0.0, score - 0.05),
        "score_ci_high": min(1.0, score + 0.05),
        "nfe": nfe,
        "tokens_per_forward": g / nfe,
        "forced_commit_rate": 0.0,
        "gen_length": g,
        "window": window,
        "step_budget": budget,
    }
    if scores is not None:
        r["scores"] = scores
    return r


def cell(task, g, learned, *, window="full", budget=None):
    kw = {"g": g, "window": window, "budget": budget}
    return [
        rec(task, "sequential", 0.95, float(g), scores=[1, 1, 1, 0.8], **kw),
        rec(task, "threshold", 0.95, g / 4, label="threshold(threshold=0.9)", **kw),
        rec(task, "threshold", 0.70, g / 8, label="threshold(threshold=0.5)", **kw),
        rec(task, "all-at-once", 0.0, 1.0, label=f"topk(k={g})", **kw),
        rec(task, "oracle", 1.0, 2.0, **kw),
        rec(task, "controller", learned[0], learned[1], scores=[1, 0, 0, 0.56], **kw),
    ]


@pytest.fixture
def records():
    return (
        cell("code", 16, (0.39, 3.0))  # the collapse: cheap and wrong
        + cell("code", 16, (0.95, 2.0), budget=4)
        + cell("latin", 24, (0.95, 5.0))
        + cell("latin", 24, (0.95, 5.0), window="block:8")
    )


DEFAULT = {"code": Setting(16, "full", None), "latin": (24, "full")}


def test_default_records_follow_each_tasks_default_length(records):
    base = default_records(records, DEFAULT)
    assert {(r["task"], r["gen_length"], r["window"], r["step_budget"]) for r in base} == {
        ("code", 16, "full", None),
        ("latin", 24, "full", None),
    }
    assert len(default_records(records, (16, "full"))) == 6  # one default for every task


def test_cross_setting_cells_and_means(records):
    cells = cross_setting_cells(
        records, ["controller"], trained_settings={"controller": list(DEFAULT.values())}
    )
    per = {(c["setting"], c["task"]): c for c in cells if c["task"] != "mean"}
    assert per["G=16 full S=-", "code"]["verdict"] == "below best"
    assert per["G=16 full S=4", "code"]["win"] and per["G=16 full S=4", "code"]["seen"] is False
    assert per["G=24 full S=-", "latin"]["seen"] is True
    means = {c["setting"]: c for c in cells if c["task"] == "mean"}
    assert means["G=16 full S=-"]["win_rate"] == 0.0 and means["G=16 full S=-"]["n"] == 1
    assert means["G=24 block:8 S=-"]["wins"] == 1


def test_report_reads_collapse_as_a_loss_and_has_every_section(records):
    cells = cross_setting_cells(
        records, ["controller"], trained_settings={"controller": list(DEFAULT.values())}
    )
    text = render_report(records, cells, cfg=CFG, timings={"total": 3.0}, default=DEFAULT)
    for heading in (
        "## AUP (accuracy under parallelism), default setting",
        "## Iso-quality speed-up, default setting",
        "## Oracle gap closed, default setting",
        "## code: default setting (G=16, full, no budget)",
        "## latin: default setting (G=24, full, no budget)",
        "| policy | score |",
        "Pareto frontier",
        "Paired comparisons",
        "## Cross-setting grid",
        "## What wins where",
    ):
        assert heading in text, heading
    # code: 1 loss (collapse) + 1 win; latin: 2 wins (block:8 and full, seen: full only)
    counts = "**controller**: wins 3/4 cells (75%); below the best in 1, a heuristic cheaper in 0"
    assert counts in text
    assert "on settings unseen in training: 2/2" in text
    assert "| G=16 full S=- (trained) | code | 0.390 | 0.950 | 3.00 | below best |" in text
    # iso-quality: threshold(0.9) at 24/6 = 4x on latin, controller 24/5 = 4.8x
    assert "4.00x threshold(threshold=0.9)" in text and "4.80x controller()" in text
    iso = text.split("## Iso-quality")[1].split("\n## ")[0]
    iso_row = next(line for line in iso.splitlines() if line.startswith("| all-at-once |"))
    assert iso_row.count("| - ") >= 2  # collapsed: never at iso-quality
    # oracle gap on latin: threshold(0.9) 6 NFE, oracle 2, controller 5 -> 25%; code collapsed
    gap = text.split("## Oracle gap closed")[1].split("\n## ")[0]
    assert (
        "| controller | latin | threshold(threshold=0.9) 6.00 | 2.00 | controller() 5.00 | 25% "
        "| 25% |" in gap
    )
    assert "| controller | code | threshold(threshold=0.9) 4.00 | 2.00 | - | - | - |" in gap
    assert (
        "| controller | mean (1 tasks; misses the bar on code) | | | | 25% | 25% (1 tasks) |" in gap
    )
    yardstick = text.split("## Cross-setting grid")[1].split("\n## ")[0]
    first = heuristic_yardstick(records)[0]
    assert (
        f"{first['family']} {first['wins']}/{first['cells']} (`{first['params_label']}`)"
        in (yardstick.split("Yardstick:")[1])
    )


def test_aup_table_in_report_matches_the_metric(records):
    base = default_records(records, DEFAULT)
    rows = {(r["family"], r["task"]): r["aup"] for r in aup_table(base)}
    assert rows["threshold", "latin"] == pytest.approx(4.0 * 0.95)  # 0.70 is > 5 points below
    assert rows["controller", "code"] == 0.0
    w = math.exp(-3 * (1 - 0.95 / 0.95))
    assert rows["controller", "latin"] == pytest.approx(24 / 5 * 0.95 * w)
    text = render_report(
        records, cross_setting_cells(records), cfg=CFG, timings={}, default=DEFAULT
    )
    aup_lines = text.split("## AUP")[1].split("## Iso-quality")[0]
    assert "| controller | 0.00 | **4.56** |" in aup_lines


def test_report_without_learned_policies(records):
    heur = [r for r in records if r["family"] != "controller"]
    text = render_report(heur, cross_setting_cells(heur), cfg=CFG, timings={}, default=DEFAULT)
    assert "No learned policy was measured next to heuristics." in text
    assert "Yardstick" not in text


def test_figures_from_new_metrics(records, tmp_path):
    import matplotlib.image as mpimg

    cells = cross_setting_cells(records)
    plots.cross_setting_plot([c for c in cells if c["task"] == "mean"], tmp_path / "cross.png")
    base = default_records(records, DEFAULT)
    plots.pareto_plot(base, tmp_path / "pareto.png", aup=aup_table(base))
    for name in ("cross.png", "pareto.png"):
        img = mpimg.imread(tmp_path / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    with pytest.raises(ValueError, match="win_rate"):
        plots.cross_setting_plot([c for c in cells if c["task"] != "mean"], tmp_path / "x.png")


def test_relative_labels_put_tasks_with_different_g_in_one_column(records):
    assert relative_setting_label(rec("t", "x", 0, 1, g=48, budget=12), 24) == "2G full S=G/4"
    assert relative_setting_label(rec("t", "x", 0, 1, g=24, window="block:8"), 24) == (
        "G block:8 S=-"
    )
    assert relative_setting_label(rec("t", "x", 0, 1, g=20, budget=3), 16) == "G=20 full S=3"
    means = [c for c in cross_setting_cells(records, default=DEFAULT) if c["task"] == "mean"]
    full = next(c for c in means if c["setting"] == "G full S=-")
    assert full["n"] == 2 and full["wins"] == 1  # code collapses, latin wins
    assert {c["setting"] for c in means} == {"G full S=-", "G full S=G/4", "G block:8 S=-"}


def test_rescore_a_bench_directory_from_its_records(records, tmp_path):
    import json

    with pytest.raises(FileNotFoundError, match="results"):
        rescore(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match="default"):
        rescore(tmp_path)
    (tmp_path / "bench_config.json").write_text(
        json.dumps({**CFG, "gen_length": 16, "window": "full"})
    )
    text = rescore(tmp_path, default=DEFAULT)
    assert (tmp_path / "report.md").read_text() == text
    assert "**controller**: wins 3/4 cells" in text and "Backbone `tiny`" in text
    # a strict bar (0 points) keeps the same wins: every win here is at the best score
    assert "wins 3/4" in rescore(tmp_path, default=DEFAULT, tolerance=0.0, write=False)
    only_code = rescore(tmp_path, write=False)  # bench_config default: G=16 full for every task
    assert "## code: default setting" in only_code and "## latin: default" not in only_code
    # a bench at every task's own default G (no --gen-length) records gen_length null
    (tmp_path / "bench_config.json").write_text(
        json.dumps({**CFG, "gen_length": None, "window": "full"})
    )
    own = rescore(tmp_path, write=False)
    assert "## code: default setting (G=16" in own and "## latin: default setting (G=24" in own


def test_resolution_note_says_how_many_examples_the_tolerance_admits(records):
    assert resolution_note(records) == ""  # no record says how many examples it scored
    at = lambda n: [{**r, "n": n} for r in records]  # noqa: E731
    assert "1.6 points" in resolution_note(at(64))
    assert "a single example decides a cell" in resolution_note(at(64))
    assert "up to 2 example(s) fewer" in resolution_note(at(200))
    assert "64 to 200 examples" in resolution_note(at(64) + at(200))
    text = render_report(
        at(64), cross_setting_cells(at(64), ["controller"]), cfg=CFG, timings={}, default=DEFAULT
    )
    gap = text.split("## Oracle gap closed")[1].split("\n## ")[0]
    grid = text.split("## Cross-setting grid")[1].split("\n## ")[0]
    assert resolution_note(at(64)) in gap and resolution_note(at(64)) in grid


def test_report_carries_the_controller_ablations_of_a_full_bench(records, tmp_path):
    import json

    (tmp_path / "results.json").write_text(json.dumps(records))
    (tmp_path / "bench_config.json").write_text(
        json.dumps({**CFG, "gen_length": 16, "window": "full"})
    )
    assert "## Controller ablations" not in rescore(tmp_path, write=False)  # quick: none

    def ablation(variant, scores, nfes):
        r = rec("latin", f"ablation:{variant}", sum(scores) / 4, sum(nfes) / 4, g=24)
        return {**r, "scores": scores, "nfe_per_example": nfes}

    rows = [
        ablation("full", [1, 1, 1, 1], [5, 5, 5, 5]),
        ablation("no_tau", [0, 0, 0, 0], [9, 9, 9, 9]),  # every example worse: interval excludes 0
    ]
    (tmp_path / "controller").mkdir()
    (tmp_path / "controller" / "ablations.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )
    text = rescore(tmp_path, write=False)
    section = text.split("## Controller ablations")[1].split("\n## ")[0]
    assert "paired bootstrap" in section
    no_tau = next(line for line in section.splitlines() if line.startswith("| no_tau |"))
    assert "| latin | G=24 full S=- | 0.000 | 9.00 | -1.000" in no_tau and "*" in no_tau
    assert "| full | latin |" in section
