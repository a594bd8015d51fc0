"""Deployment calibration: thresholds chosen on held-out decodes, per budget group."""

import dataclasses
import json

import pytest
import torch
from commit_env.evaluation.controller import controller_specs, deployed_params
from commit_env.evaluation.sweeps import PolicySpec, Setting, policy_for_job
from commit_env.supervised.calibrate import (
    CalibrationConfig,
    select_task_thresholds,
    select_thresholds,
    setting_group,
)
from commit_env.supervised.policy import ControllerPolicy, parse_setting_thresholds
from commit_env.supervised.rounds import (
    train_controller_rounds,
)
from commit_env.supervised.verify import VerifiedControllerPolicy

from commit_env.decoding import DecodeConfig, Decoder, decode


def _cell(group, threshold, score, nfe):
    return {"group": group, "threshold": threshold, "score": score, "nfe": nfe}


def test_select_takes_the_cheapest_threshold_within_tolerance():
    cells = [
        _cell("free", 0.5, 0.80, 3.0),
        _cell("free", 0.9, 0.955, 5.0),
        _cell("free", 0.99, 0.96, 8.0),
        _cell("full@0.25", 0.5, 0.50, 2.0),
        _cell("full@0.25", 0.9, 0.70, 3.0),
        _cell("full@0.25", 0.99, 0.60, 4.0),
    ]
    groups = select_thresholds(cells, tolerance=0.005)
    assert groups["free"]["threshold"] == 0.9 and groups["free"]["reached"]
    assert select_thresholds(cells, tolerance=0.0)["free"]["threshold"] == 0.99
    # under a budget the best candidate is the bar, not the strictest one
    assert groups["full@0.25"]["threshold"] == 0.9 and groups["full@0.25"]["target"] == 0.70


def test_a_reference_above_every_candidate_is_reported_not_reached():
    cells = [_cell("free", None, 1.0, 24.0), _cell("free", 0.9, 0.9, 5.0)]
    cells.append(_cell("free", 0.99, 0.95, 9.0))
    group = select_thresholds(cells, tolerance=0.01)["free"]
    assert group["reference_score"] == 1.0 and not group["reached"]
    assert group["threshold"] == 0.99  # the best-scoring candidate is kept


def test_calibration_config_rejects_bad_values():
    with pytest.raises(ValueError, match="n must be"):
        CalibrationConfig(n=0)
    with pytest.raises(ValueError, match="thresholds"):
        CalibrationConfig(thresholds=(0.5, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        CalibrationConfig(tolerance=-0.1)


def test_final_round_is_calibrated_once_and_the_checkpoint_deploys_it(calibrated, tiny):
    cfg, result = calibrated
    ckpt = result.final
    cal = json.loads((ckpt / "calibration.json").read_text())
    meta = json.loads((ckpt / "config.json").read_text())
    assert len(cal["cells"]) == len(cfg.mixture) * 3  # one task, 3 thresholds, no reference
    groups = {setting_group(s) for s in cfg.mixture}
    assert set(cal["groups"]) == groups and any("@1" not in g for g in groups)
    assert meta["setting_thresholds"] == {g: cal["groups"][g]["threshold"] for g in groups}
    assert meta["threshold"] == meta["setting_thresholds"].get(
        "full@1", max(meta["setting_thresholds"].values())
    )
    assert "label_threshold" in meta and result.rounds[-1]["calibration"] == cal["groups"]
    policy = ControllerPolicy.from_pretrained(ckpt, backbone=tiny)
    assert policy.threshold == meta["threshold"]
    assert policy.setting_thresholds == parse_setting_thresholds(meta["setting_thresholds"])
    assert meta["task_thresholds"] == cal["task_thresholds"] == policy.task_thresholds
    assert set(meta["task_thresholds"]) == {"qa"} and set(meta["task_thresholds"]["qa"]) == groups
    stamp = (ckpt / "calibration.json").stat().st_mtime_ns
    train_controller_rounds(cfg, backbone=tiny)  # resumed: nothing recalibrated
    assert (ckpt / "calibration.json").stat().st_mtime_ns == stamp


def test_setting_groups_and_their_parse():
    assert setting_group(Setting(24, "full")) == "full@1"
    assert setting_group(Setting(24, "block:8", 6)) == "block@0.25"
    assert parse_setting_thresholds({"sliding@0.125": 0.9, "full@1": 0.99}) == (
        ("full", 1.0, 0.99),
        ("sliding", 0.125, 0.9),
    )


def test_row_thresholds_follow_window_kind_and_nearest_budget(calibrated, tiny):
    _, result = calibrated
    policy = ControllerPolicy.from_pretrained(result.final, backbone=tiny)
    policy = policy.with_threshold(0.9)
    table = (("full", 1.0, 0.99), ("full", 0.125, 0.4), ("full", 0.5, 0.8), ("block", 0.25, 0.6))
    both = dataclasses.replace(policy, setting_thresholds=table)

    def thresholds(window, budget):
        config = both.decode_config(DecodeConfig(16, window, budget))
        return both.row_thresholds(Decoder(tiny, config).start(["a", "b"])).flatten().tolist()

    assert thresholds("full", None) == pytest.approx([0.99, 0.99])
    assert thresholds("full", 2) == pytest.approx([0.4, 0.4])  # 2/16 = 0.125
    assert thresholds("full", 3) == pytest.approx([0.4, 0.4])  # 0.1875: nearer 0.125 (log)
    assert thresholds("full", 8) == pytest.approx([0.8, 0.8])
    assert thresholds("block:8", None) == pytest.approx([0.6, 0.6])  # the only block entry
    assert thresholds("sliding:4", 4) == pytest.approx([0.9, 0.9])  # no sliding entry
    tight = Decoder(tiny, both.decode_config(DecodeConfig(gen_length=16, step_budget=2)))
    again = both.with_threshold(0.7).row_thresholds(tight.start(["a"]))
    assert again.flatten().tolist() == pytest.approx([0.7])
    for bad in ((("full", 0.25, 1.5),), (("diagonal", 1.0, 0.5),)):
        with pytest.raises(ValueError, match="setting_thresholds"):
            dataclasses.replace(policy, setting_thresholds=bad)


def test_confidence_fallback_commits_the_most_confident_position(calibrated, tiny):
    _, result = calibrated
    policy = ControllerPolicy.from_pretrained(result.final, backbone=tiny, threshold=0.5)
    state = Decoder(tiny, policy.decode_config(DecodeConfig(gen_length=8))).start(["a", "b"])
    state.confidence[:] = torch.linspace(0.1, 0.8, 8)
    state.confidence[1, 2] = 0.99
    low = torch.full(state.confidence.shape, 0.1)
    policy.scores = lambda s: (low, torch.zeros_like(low))  # nothing clears the threshold
    commit = policy.select(state)
    assert commit.sum(-1).tolist() == [1, 1]
    assert commit[0].nonzero().item() == 7 and commit[1].nonzero().item() == 2


def test_pacing_commits_the_even_share_of_a_budget_by_stability(calibrated, tiny):
    _, result = calibrated
    strict = ControllerPolicy.from_pretrained(result.final, backbone=tiny, threshold=0.999)
    assert strict.pace and strict.params["pace"]
    config = strict.decode_config(DecodeConfig(gen_length=8, step_budget=2))
    state = Decoder(tiny, config).start(["a", "b"], budgets=[2, None])
    prob = torch.linspace(0.0, 0.7, 8).repeat(2, 1)  # nothing clears 0.999
    strict.scores = lambda s: (prob, torch.zeros_like(prob))
    commit = strict.select(state)
    # the budget row commits ceil(8 masks / 2 steps) = 4, its most stable first; the free row
    # keeps the confidence fallback's single position
    assert commit[0].nonzero().flatten().tolist() == [4, 5, 6, 7]
    assert commit[1].sum() == 1
    lazy = dataclasses.replace(strict, pace=False)
    lazy.scores = strict.scores
    assert lazy.select(state).sum(-1).tolist() == [1, 1]
    out = decode(tiny, ["a", "b"], strict, config)
    assert out.nfe.tolist() == [2, 2] and int(out.budget_fills.sum()) <= 4


def test_controller_specs_hold_the_deployed_member(calibrated, tiny):
    _, result = calibrated
    specs = controller_specs(result.final, tiny, thresholds=(0.5,))
    deployed = deployed_params(result.final)
    assert [s.params for s in specs].count(deployed) == 1
    (member,) = [s for s in specs if s.params == deployed]
    policy = member.factory(DecodeConfig(gen_length=8))
    meta = json.loads((result.final / "config.json").read_text())
    assert policy.threshold == meta["threshold"]
    assert policy.setting_thresholds == parse_setting_thresholds(meta["setting_thresholds"])
    assert dict(deployed)["thresholds"] == "per task and setting"


def test_select_task_thresholds_lets_each_task_pick_its_own():
    def cell(task, threshold, score, nfe):
        return {**_cell("full@1", threshold, score, nfe), "task": task}

    cells = [
        cell("copy", 0.5, 1.0, 1.0),
        cell("copy", 0.99, 1.0, 1.3),
        cell("insert", 0.5, 0.6, 3.0),
        cell("insert", 0.99, 0.9, 6.0),
    ]
    assert select_thresholds(cells, 0.01)["full@1"]["threshold"] == 0.99  # the mean needs 0.99
    assert select_task_thresholds(cells, 0.01) == {
        "copy": {"full@1": 0.5},
        "insert": {"full@1": 0.99},
    }


def test_for_task_deploys_the_task_table_and_keeps_shared_groups(calibrated, tiny):
    _, result = calibrated
    base = ControllerPolicy.from_pretrained(result.final, backbone=tiny)
    shared = (("block", 1.0, 0.6), ("full", 0.25, 0.8), ("full", 1.0, 0.9))
    policy = dataclasses.replace(
        base, setting_thresholds=shared, task_thresholds={"copy": {"full@1": 0.3}}
    )
    copy = policy.for_task("copy")
    assert copy.threshold == 0.3 and copy.task_thresholds is None
    assert copy.setting_thresholds == (("block", 1.0, 0.6), ("full", 0.25, 0.8), ("full", 1.0, 0.3))
    assert policy.for_task("sudoku") is policy  # no table: the shared one
    assert policy.with_threshold(0.7).for_task("copy").threshold == 0.7  # a fixed member stays
    spec = PolicySpec("controller", "controller", (), factory=lambda config: policy)
    built, _ = policy_for_job(
        tiny, spec, DecodeConfig(gen_length=8), ["a"], 1, {}, "k", task="copy"
    )
    assert built.threshold == 0.3 and built.model is base.model  # weights shared, not copied
    built, _ = policy_for_job(tiny, spec, DecodeConfig(gen_length=8), ["a"], 1, {}, "k")
    assert built is policy
    verified = VerifiedControllerPolicy.wrap(policy)
    assert verified.for_task("copy").drafter.threshold == 0.3
    assert verified.for_task("sudoku") is verified
    # the deployed member's label says what varies: task tables, setting tables, one threshold
    assert verified.params["thresholds"] == policy.thresholds_scope == "per task and setting"
    assert copy.thresholds_scope == "per setting"
    assert "thresholds" not in VerifiedControllerPolicy.wrap(base.with_threshold(0.7)).params


def test_verified_controller_equals_the_controller_when_nothing_fails(
    calibrated, tiny, drafter_threshold
):
    _, result = calibrated
    plain = ControllerPolicy.from_pretrained(
        result.final, backbone=tiny, threshold=drafter_threshold
    )
    never = VerifiedControllerPolicy.wrap(plain, verify_threshold=0.0)  # q < 0 never happens
    prompts = ["name a fruit:", "what is 2+3?", "name a colour:"]
    config = never.decode_config(DecodeConfig(gen_length=12))
    assert (
        config.remask_cap == never.remask_cap
        and config.hidden_features == plain.meta["hidden_features"]
    )
    a = decode(tiny, prompts, plain, plain.decode_config(DecodeConfig(gen_length=12)))
    b = decode(tiny, prompts, never, config)
    assert torch.equal(a.tokens, b.tokens) and int(b.remasks.sum()) == 0
    # leave-one-out copies of a row that then finishes by EOS stop still cost that forward
    assert bool((b.nfe >= a.nfe).all())
    always = VerifiedControllerPolicy.wrap(plain, verify_threshold=1.0)
    c = decode(tiny, prompts, always, config)
    assert int(c.remasks.sum()) > 0  # every verified token fails: something is taken back
    assert not (c.tokens == tiny.mask_token_id).any()
    assert always.params == {
        "threshold": drafter_threshold,
        "verify_threshold": 1.0,
        "remask_cap": always.remask_cap,
    }
    assert always.with_threshold(0.8).drafter.threshold == 0.8
    with pytest.raises(ValueError, match="wrap"):
        VerifiedControllerPolicy()
