import json

import pytest
from commit_env.evaluation.bench import REMASK_THRESHOLDS, BenchConfig, run_bench
from commit_env.evaluation.io import read_jsonl

from commit_env.decoding import DecodeSetting

REQUIRED = {
    "task",
    "policy",
    "family",
    "params",
    "gen_length",
    "window",
    "step_budget",
    "score",
    "score_ci_low",
    "score_ci_high",
    "nfe",
    "tokens_per_forward",
    "forced_commit_rate",
    "wall_time",
    "device",
    "n",
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig.preset(
        "quick",
        out=str(out),
        tasks=("qa", "math"),
        n=4,
        collect_n=16,
        controller_epochs=1,
        ppo_timesteps=256,
        remask_n=8,
        window="block:4",
        setting=DecodeSetting(16, "block:4"),
        grid=((1, "block:4", None), (1, "block:4", 2)),
        progress=False,
    )
    summary = run_bench(cfg)
    return cfg, out, summary


def test_outputs_exist_and_parse(bench):
    cfg, out, summary = bench
    records = json.loads((out / "results.json").read_text())
    assert records and all(REQUIRED <= set(r) for r in records)
    families = {r["family"] for r in records}
    assert {"sequential", "threshold", "oracle", "controller", "ppo"} <= families
    assert "controller-remask" in families  # the learned remask head's sweep
    assert (out / "controller" / "remask-head" / "remask_head.json").is_file()
    budgets = {r["step_budget"] for r in records}
    assert None in budgets and 8 in budgets
    for r in records:
        assert 0.0 <= r["score"] <= 1.0 and r["nfe"] >= 1
        if r["step_budget"] is not None:
            assert r["nfe"] <= r["step_budget"]
    report = (out / "report.md").read_text()
    assert "| policy | score |" in report and "Pareto frontier" in report
    assert "Cross-setting grid" in report and "What wins where" in report
    assert "Paired comparisons" in report


def test_remask_member_is_judged_on_the_whole_grid(bench):
    cfg, out, _ = bench
    records = json.loads((out / "results.json").read_text())
    remask = [r for r in records if r["family"] == "controller-remask"]
    off_default = {r["params_label"] for r in remask if r["step_budget"] is not None}
    assert len(off_default) == 1  # the calibrated member, not the threshold sweep
    swept = {r["params"]["threshold"] for r in remask if r["step_budget"] is None}
    assert set(REMASK_THRESHOLDS) <= swept  # the head rides the controller's whole curve
    (label,) = off_default
    settings = {
        (r["task"], r["gen_length"], r["window"], r["step_budget"])
        for r in records
        if r["family"] == "sequential"
    }
    mine = {
        (r["task"], r["gen_length"], r["window"], r["step_budget"])
        for r in remask
        if r["params_label"] == label
    }
    assert mine == settings  # every task at every grid setting, the default included
    report = (out / "report.md").read_text()
    grid = report[report.index("## Cross-setting grid") : report.index("## What wins where")]
    assert "**controller-remask**: wins" in grid and f"/{len(settings)} cells" in grid
    head = json.loads((out / "summary.json").read_text())["headline"]
    mine = head["learned"]["controller-remask"]
    assert mine["grid_cells"] == len(settings)
    assert f"**controller-remask**: wins {mine['grid_wins']}/{len(settings)} cells" in grid
    assert set(head["aup"]) == set(cfg.tasks) and "controller" in head["learned"]


def test_rescore_reproduces_the_bench_report(bench):
    from commit_env.evaluation.reports import rescore

    _, out, _ = bench
    judging = json.loads((out / "summary.json").read_text())["judging"]
    assert "controller-remask" in judging["learned_families"]
    assert set(judging["deployed"]) <= set(judging["learned_families"])
    assert all(isinstance(s, str) for ss in judging["trained_settings"].values() for s in ss)
    assert rescore(out, write=False) == (out / "report.md").read_text()
    # without the bench's judging inputs every member of a learned family is judged
    every = rescore(out, write=False, deployed={})
    assert every != (out / "report.md").read_text()


def test_images_open(bench):
    _, out, _ = bench
    import matplotlib.image as mpimg

    for name in ("pareto.png", "cross_setting.png", "traces.png"):
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_tensorboard_logs_written(bench):
    _, out, _ = bench
    assert list((out / "controller").rglob("events.out.tfevents.*"))  # one per round
    assert list((out / "ppo").rglob("events.out.tfevents.*"))


def test_interrupted_bench_resumes_without_duplicates(bench):
    cfg, out, _ = bench
    before = read_jsonl(out / "results.jsonl")
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-3]) + "\n")  # lose the last records
    run_bench(cfg)
    after = read_jsonl(out / "results.jsonl")
    assert len(after) == len(before)
    keys = [
        (r["task"], r["params_label"], r["gen_length"], r["window"], r["step_budget"])
        for r in after
    ]
    assert len(keys) == len(set(keys))


def test_unknown_task_fails_fast(tmp_path):
    with pytest.raises(ValueError, match="expected one of"):
        run_bench(BenchConfig.preset("quick", out=str(tmp_path), tasks=("nope",)))


def test_backbone_options_reach_the_ppo_stage(monkeypatch, tmp_path):
    import types

    import torch
    from commit_env.agents import train_ppo as train_ppo_module
    from commit_env.evaluation import bench as bench_module
    from commit_env.evaluation import cli

    from commit_env.backbones.spec import BackboneSpec

    captured = {}

    def fake_bench(cfg):
        captured["cfg"] = cfg
        return {"out": str(tmp_path)}

    monkeypatch.setattr(bench_module, "run_bench", fake_bench)
    argv = ["bench", "--out", str(tmp_path), "--backbone", "hf:some/model", "--kind", "llada"]
    argv += ["--dtype", "bfloat16", "--trust-remote-code", "--gen-length", "8"]
    assert cli.main(argv) == 0
    cfg = captured["cfg"]
    expected = BackboneSpec("hf:some/model", kind="llada", dtype="bfloat16", trust_remote_code=True)
    assert cfg.backbone_spec == expected
    assert cfg.setting is None  # PPO trains on the first task's default setting
    assert cfg.training_setting.gen_length == 8 and cfg.training_setting.window == "full"
    assert cfg.gen_length == 8 and cfg.default_for("qa").gen_length == 8

    seen = {}

    def fake_train(ppo_cfg, teacher=None, *, backbone=None):
        seen.update(cfg=ppo_cfg, backbone=backbone)
        raise RuntimeError("stop after the call")

    monkeypatch.setattr(train_ppo_module, "train_ppo", fake_train)
    loaded = types.SimpleNamespace(device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="stop after the call"):
        bench_module._train_ppo(cfg, tmp_path, loaded, teacher=None)
    assert seen["backbone"] is loaded  # the loaded backbone itself, not a re-load of the name
    assert seen["cfg"].backbone == expected  # and the full spec is recorded in config.json
    assert seen["cfg"].setting == cfg.training_setting


def test_bench_passes_the_controller_label_kind_to_its_rounds(tmp_path):
    from commit_env.evaluation.bench import _rounds_config

    cfg = BenchConfig.preset(
        "quick", controller_labels="nearest", controller_nearest_margin=1, tasks=("remove:any",)
    )
    rounds = _rounds_config(cfg, tmp_path)
    collect = rounds.collect_config(0)
    assert (collect.labels, collect.nearest_margin) == ("nearest", 1)
    assert BenchConfig.preset("quick").controller_labels == "final"
    full = BenchConfig.preset("full")
    assert (full.controller_labels, full.collect_n) == ("nearest", 1024)
    assert _rounds_config(full, tmp_path).collect_config(0).labels == "nearest"
    assert BenchConfig.preset("full", controller_labels="final").controller_labels == "final"
    with pytest.raises(ValueError, match="controller_labels must be one of"):
        BenchConfig.preset("quick", controller_labels="gold")
    with pytest.raises(ValueError, match="controller_nearest_margin must be >= 0"):
        BenchConfig.preset("quick", controller_nearest_margin=-2)
