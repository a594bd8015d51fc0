"""One controller for all settings: mixture collection, setting checks, rounds, ablations."""

import json
import shutil

import numpy as np
import pytest
import torch
from commit_env.evaluation.controller import (
    ablation_records,
    ablation_table,
    controller_specs,
    deployed_params,
    learned_threshold,
)
from commit_env.evaluation.metrics import aup_table
from commit_env.evaluation.sweeps import Setting, run_sweep
from commit_env.supervised.calibrate import CalibrationConfig
from commit_env.supervised.collect import draw_settings, setting_mixture
from commit_env.supervised.policy import ControllerPolicy
from commit_env.supervised.rounds import (
    RoundsConfig,
    default_training_mixture,
    train_ablations,
    train_controller_rounds,
)
from commit_env.supervised.train import TrainConfig

from commit_env.decoding import DecodeConfig, Decoder, decode
from commit_env.decoding.state import WINDOW_CODES
from commit_env.traces import TraceDataset

TASKS = ("qa", "math")


@pytest.fixture(scope="module")
def rounds(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("rounds")
    cfg = RoundsConfig(
        out=str(out),
        tasks=TASKS,
        settings=default_training_mixture(24),
        n=24,
        on_policy_n=8,
        on_policy_rounds=1,
        train=TrainConfig(epochs=1, batch_size=64, rollout_n=0, val_every_n_traces=4),
        batch_size=24,
        calibration=CalibrationConfig(n=6, thresholds=(0.5, 0.9, 0.99), progress=False),
        progress=False,
    )
    return cfg, train_controller_rounds(cfg, backbone=tiny)


def test_mixture_covers_windows_and_budgets():
    mix = setting_mixture((12, 16), ("block:8", "sliding:4", "full"), (1.0, 0.5))
    # block:8 does not divide 12, so G=12 has only sliding and full
    assert not any(s.gen_length == 12 and s.window == "block:8" for s in mix)
    assert Setting(16, "block:8", 8) in mix
    assert {s.step_budget for s in mix} == {None, 6, 8}
    draws = draw_settings(mix, 200, seed=1)
    assert draws == draw_settings(mix, 200, seed=1)  # resumable
    assert len(set(draws)) == len(mix)
    with pytest.raises(ValueError, match="no valid setting"):
        setting_mixture((6,), ("block:4",))


def test_round0_traces_record_per_row_settings(rounds):
    cfg, result = rounds
    data = TraceDataset(result.rounds[0]["traces"][0])
    assert data.meta["settings"] == [[s.gen_length, s.window, s.step_budget] for s in cfg.mixture]
    seen = set()
    for r in data.iter_records():
        seen.add((int(r["window_kind"]), int(r["window_width"]), bool(r["budget_limited"])))
        width = int(r["window_end"]) - int(r["window_start"])
        assert width <= int(r["window_width"])
        eos = np.frombuffer(r["eos_label"], np.int8)
        assert eos.shape == r["label"].shape
    kinds = {k for k, _, _ in seen}
    assert kinds == {WINDOW_CODES["block"], WINDOW_CODES["sliding"], WINDOW_CODES["full"]}
    assert {lim for _, _, lim in seen} == {True, False}


def test_rounds_leave_two_checkpoints_and_resume(rounds, tiny):
    cfg, result = rounds
    assert len(result.checkpoints) == 2
    assert [r["on_policy"] for r in result.rounds] == [False, True]
    assert len(result.rounds[1]["traces"]) == 2  # DAgger aggregates round 0 and round 1
    for ckpt in result.checkpoints:
        assert (ckpt / "model.safetensors").is_file()
    assert result.seconds > 0
    stamp = (result.final / "model.safetensors").stat().st_mtime_ns
    again = train_controller_rounds(cfg, backbone=tiny)
    assert again.checkpoints == result.checkpoints
    assert (result.final / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "config",
    [
        DecodeConfig(gen_length=48, window="full"),  # 2x the trained G
        DecodeConfig(gen_length=48, window="sliding:12", step_budget=10),  # unseen width
        DecodeConfig(gen_length=32, window="block:16"),  # unseen width and length
    ],
)
def test_one_checkpoint_serves_unseen_lengths_and_windows(rounds, tiny, config):
    _, result = rounds
    policy = ControllerPolicy.from_pretrained(result.final, backbone=tiny)
    config = policy.decode_config(config)
    decoder = Decoder(tiny, config)
    state = decoder.start(["name a fruit:", "sum 2 digits to 9:", "name a tool:"])
    while not state.all_done:
        mask = policy.select(state)
        assert not (mask & ~state.eligible).any()
        assert mask.any(-1)[~state.done].all()
        state = decoder.step(state, mask)
    assert (state.nfe <= (config.step_budget or config.gen_length)).all()


def test_setting_outside_the_trained_range_is_a_clear_error(rounds, tiny, tmp_path):
    _, result = rounds
    policy = ControllerPolicy.from_pretrained(result.final, backbone=tiny, max_extrapolation=1.5)
    state = Decoder(tiny, policy.decode_config(DecodeConfig(gen_length=40))).start(["name a:"])
    with pytest.raises(ValueError, match="gen_length 40 exceeds"):
        policy.select(state)
    bad = tmp_path / "block-only"
    shutil.copytree(result.final, bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["setting_range"]["window_kinds"] = ["block"]
    meta["setting_range"]["budget_limited"] = False
    (bad / "config.json").write_text(json.dumps(meta))
    narrow = ControllerPolicy.from_pretrained(bad, backbone=tiny)
    state = Decoder(tiny, narrow.decode_config(DecodeConfig(gen_length=24))).start(["name a:"])
    with pytest.raises(ValueError, match=r"trained on windows \['block'\].*\['full'\]"):
        narrow.select(state)
    cfg = narrow.decode_config(DecodeConfig(gen_length=24, window="block:4", step_budget=6))
    state = Decoder(tiny, cfg).start(["name a:"])
    with pytest.raises(ValueError, match="without step budgets"):
        narrow.select(state)


def test_backbone_and_version_mismatch_are_clear_errors(rounds, tiny, tmp_path):
    _, result = rounds
    bad = tmp_path / "other"
    shutil.copytree(result.final, bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["backbone"] = "hf:other/model"
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trained on backbone 'hf:other/model'"):
        ControllerPolicy.from_pretrained(bad, backbone=tiny)
    meta["backbone"] = tiny.name
    meta["hidden_size"] = tiny.hidden_size + 1
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="hidden size"):
        ControllerPolicy.from_pretrained(bad, backbone=tiny)
    meta["hidden_size"] = tiny.hidden_size
    assert meta["separator_token_ids"] == sorted(meta["controller"]["separator_token_ids"])
    meta["separator_token_ids"] = [7]
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"separator ids \[7\], this backbone's tokenizer has"):
        ControllerPolicy.from_pretrained(bad, backbone=tiny)
    # a checkpoint of the previous layout (learned position table up to max_gen_length)
    meta["controller"]["max_gen_length"] = 256
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another controller version"):
        ControllerPolicy.from_pretrained(bad)


def test_threshold_sweep_draws_a_curve_with_an_aup(rounds, tiny):
    _, result = rounds
    specs = controller_specs(result.final, tiny, thresholds=(0.3, 0.9))
    sweep = [dict(s.params)["threshold"] for s in specs if len(s.params) == 1]
    assert sweep == [0.3, 0.9]
    # plus the calibrated member (its per-setting thresholds), deployed as the checkpoint says
    (deployed,) = [s for s in specs if s.params == deployed_params(result.final)]
    assert dict(deployed.params)["threshold"] == learned_threshold(result.final)
    assert {s.family for s in specs} == {"controller"}
    policies = [s.factory(DecodeConfig(gen_length=24)) for s in specs]
    assert policies[0].model is policies[-1].model  # one model, several thresholds
    records = run_sweep(tiny, ["qa"], specs, [Setting(24, "full", None)], n=8, progress=False)
    assert len(records) == len(specs)
    rows = [r for r in aup_table(records) if r["family"] == "controller"]
    assert len(rows) == 1 and rows[0]["points"] == len(specs) and rows[0]["aup"] >= 0.0


def test_ablations_train_and_compare_paired(rounds, tiny):
    cfg, result = rounds
    names = ("no_tau", "no_structure", "no_history", "no_on_policy")
    variants = train_ablations(result, cfg, names=names, backbone=tiny)
    # round 0's copy, calibrated like every variant; round 0 itself is left as trained
    assert variants["no_on_policy"] != result.checkpoints[0]
    assert not (result.checkpoints[0] / "calibration.json").exists()
    for name in names:
        cal = json.loads((variants[name] / "calibration.json").read_text())
        assert cal["config"]["n"] == cfg.calibration.n and cal["setting_thresholds"]
    conf = {n: json.loads((variants[n] / "config.json").read_text()) for n in names[:3]}
    assert conf["no_tau"]["controller"]["use_tau"] is False
    assert conf["no_structure"]["controller"]["use_structure"] is False
    assert conf["no_history"]["drop_groups"] == ["history"]
    history = ControllerPolicy.from_pretrained(variants["no_history"], backbone=tiny)
    assert history._keep.min() == 0.0 and history._keep.max() == 1.0  # zeroed at deployment
    records = ablation_records(
        tiny,
        ["qa"],
        {"full": result.final, **variants},
        [Setting(24, "full", None)],
        n=6,
        progress=False,
    )
    assert {r["family"] for r in records} == {f"ablation:{n}" for n in ("full", *names)}
    table = ablation_table(records)
    assert table.count("\n") == 1 + len(records)
    assert "no_tau | qa | G=24 full S=- |" in table and "[" in table
    with pytest.raises(ValueError, match="unknown ablations"):
        train_ablations(result, cfg, names=("no_brain",))


def test_eos_tail_commits_only_a_confident_suffix(rounds, tiny):
    _, result = rounds
    policy = ControllerPolicy.from_pretrained(
        result.final, backbone=tiny, threshold=0.5, eos_threshold=0.5
    )
    state = Decoder(tiny, policy.decode_config(DecodeConfig(gen_length=8))).start(["name a:"])
    eos = tiny.eos_token_ids[0]
    other = next(t for t in range(tiny.vocab_size) if t not in tiny.eos_token_ids)
    state.proposal[:] = torch.tensor([other, other, other, eos, other, eos, eos, eos])
    prob = torch.tensor([[0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.2, 0.9]])
    # 0.2 at position 6 breaks the tail: only the last position remains
    assert policy._eos_tail(state, prob)[0].tolist() == [False] * 7 + [True]
    prob[0, 6] = 0.9
    assert policy._eos_tail(state, prob)[0].tolist() == [False] * 5 + [True] * 3
    # a strict deployment threshold is strict about the tail too
    strict = policy.with_threshold(0.95)
    assert not strict._eos_tail(state, prob)[0].any()
    prob[0, 5:] = 0.97
    assert strict._eos_tail(state, prob)[0].tolist() == [False] * 5 + [True] * 3


def test_decode_with_budget_mixture_matches_policy_params(rounds, tiny):
    _, result = rounds
    policy = ControllerPolicy.from_pretrained(result.final, backbone=tiny, threshold=0.7)
    assert policy.params["threshold"] == 0.7 and "eos_threshold" in policy.params
    out = decode(tiny, ["name a fruit:"], policy, policy.decode_config(DecodeConfig(24)))
    assert out.tokens.shape == (1, 24)


def test_two_rounds_in_one_sweep_have_distinct_record_keys(rounds, tiny):
    _, result = rounds
    round0 = controller_specs(
        result.checkpoints[0], tiny, thresholds=None, extra_params=(("round", 0),)
    )
    final = controller_specs(result.final, tiny, thresholds=None)
    assert len(round0) == len(final) == 1
    assert round0[0].label != final[0].label  # sweeps key records by policy and params
    assert dict(round0[0].params)["round"] == 0
