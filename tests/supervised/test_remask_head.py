"""The learned remask head: features, training data from counterfactual rollouts, deployment."""

import json

import numpy as np
import pytest
import torch
from commit_env.evaluation.cli import main
from commit_env.supervised.policy import ControllerPolicy
from commit_env.supervised.remask_head import (
    VERIFY_FEATURES,
    LearnedRemaskPolicy,
    RemaskHead,
    load_remask_head,
    remask_candidates,
    save_remask_head,
)
from commit_env.supervised.remask_train import (
    RemaskTrainConfig,
    collect_remask_data,
    fit_head,
)

from commit_env.decoding import DecodeConfig, decode
from commit_env.errors import CorruptCheckpointError, InputNotFound

PROMPTS = ["name a fruit:", "what is 2+3?", "name a colour:", "what is 4+4?"]


def _constant_head(value: float) -> RemaskHead:
    """A head that predicts ``tanh(value)`` for every token."""
    head = RemaskHead(8)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.net[-1].bias.fill_(value)
    return head.eval()


@pytest.fixture(scope="module")
def plain(calibrated, tiny, drafter_threshold):
    _, result = calibrated
    return ControllerPolicy.from_pretrained(
        result.final, backbone=tiny, threshold=drafter_threshold
    )


def test_candidates_need_a_low_verified_probability_and_a_multi_token_step():
    q = torch.tensor([[0.1, 0.5, float("nan"), 0.995], [0.1, 0.2, 0.3, 0.4]])
    remaskable = torch.tensor([[True, True, True, True], [True, False, True, True]])
    accepted = torch.tensor([3, 1])  # row 1's step accepted one token: nothing may be remasked
    cand = remask_candidates(q, remaskable, accepted, candidate_q=0.99)
    assert cand.tolist() == [[True, True, False, False], [False, False, False, False]]


def test_head_round_trips_and_refuses_other_features(tmp_path):
    head = _constant_head(0.3)
    save_remask_head(head, tmp_path / "h", {"backbone": "tiny", "margin": 0.1})
    loaded, meta = load_remask_head(tmp_path / "h")
    x = torch.rand(5, len(VERIFY_FEATURES))
    assert torch.allclose(loaded(x), head(x)) and meta["margin"] == 0.1
    config = json.loads((tmp_path / "h" / "remask_head.json").read_text())
    config["features"] = ["loo_prob"]
    (tmp_path / "h" / "remask_head.json").write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match="retrain the head"):
        load_remask_head(tmp_path / "h")
    with pytest.raises(InputNotFound, match="not a remask head"):
        load_remask_head(tmp_path / "missing")


def test_fit_head_learns_where_remasking_pays():
    rng = np.random.default_rng(0)
    x = rng.random((600, len(VERIFY_FEATURES))).astype(np.float32)
    gains = (x[:, 0] < 0.2).astype(np.float32)  # taking back an improbable token helps
    head, stats = fit_head(x, gains, RemaskTrainConfig(epochs=300, progress=False))
    assert stats["mse"] < 0.25 * stats["mse_zero"]
    with torch.no_grad():
        pred = head(torch.as_tensor(x)).numpy()
    assert pred[x[:, 0] < 0.1].mean() > 0.7 and pred[x[:, 0] > 0.4].mean() < 0.1


def test_a_head_that_never_pays_decodes_like_the_plain_controller(plain, tiny):
    th = plain.threshold
    never = LearnedRemaskPolicy.wrap_head(plain, _constant_head(-3.0))
    config = never.decode_config(DecodeConfig(gen_length=12))
    a = decode(tiny, PROMPTS, plain, plain.decode_config(DecodeConfig(gen_length=12)))
    b = decode(tiny, PROMPTS, never, config)
    assert torch.equal(a.tokens, b.tokens) and int(b.remasks.sum()) == 0
    always = LearnedRemaskPolicy.wrap_head(plain, _constant_head(3.0), candidate_q=1.0)
    c = decode(tiny, PROMPTS, always, config)
    assert int(c.remasks.sum()) > 0 and not (c.tokens == tiny.mask_token_id).any()
    assert always.params == {"threshold": th, "margin": 0.05}
    assert always.with_margin(0.5).margin == 0.5
    assert always.with_threshold(0.8).drafter.threshold == 0.8
    with pytest.raises(ValueError, match="wrap_head"):
        LearnedRemaskPolicy()
    with pytest.raises(ValueError, match="margin"):
        LearnedRemaskPolicy.wrap_head(plain, _constant_head(0.0), margin=1.5)


def test_rollout_data_is_deterministic_and_labels_score_changes(plain, tiny):
    cfg = RemaskTrainConfig(
        tasks=("qa",),
        n=12,
        thresholds=(plain.threshold,),
        candidate_q=1.0,
        batch_size=6,
        progress=False,
    )
    a = collect_remask_data(tiny, plain, cfg)
    b = collect_remask_data(tiny, plain, cfg)
    n = a["gains"].size
    assert n > 0 and a["features"].shape == (n, len(VERIFY_FEATURES))
    assert np.array_equal(a["gains"], b["gains"]) and np.array_equal(a["features"], b["features"])
    assert ((a["gains"] >= -1) & (a["gains"] <= 1)).all()
    assert (a["threshold"] == np.float32(plain.threshold)).all() and (a["task"] == 0).all()
    assert ((a["features"][:, 0] >= 0) & (a["features"][:, 0] < 1.0)).all()  # q of candidates


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown task"):
        RemaskTrainConfig(tasks=("nope",))
    with pytest.raises(ValueError, match="thresholds"):
        RemaskTrainConfig(thresholds=(1.0,))
    with pytest.raises(ValueError, match=">= 1"):
        RemaskTrainConfig(n=0)


def test_cli_trains_a_head_that_deploys(calibrated, tiny, drafter_threshold, tmp_path, capsys):
    _, result = calibrated
    out = tmp_path / "head"
    base = ["train-remask-head", "--controller", str(result.final), "--backbone", "tiny"]
    args = [*base, "--tasks", "qa", "--n", "12", "--thresholds", str(drafter_threshold)]
    assert main([*args, "--epochs", "5", "--out", str(out), "--no-progress"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["candidates"] > 0 and meta["helps"] + meta["hurts"] <= meta["candidates"]
    assert meta["backbone"] == tiny.name and (out / "remask_head.safetensors").is_file()
    controller = ControllerPolicy.from_pretrained(result.final, backbone=tiny)
    policy = LearnedRemaskPolicy.from_pretrained(out, controller)
    assert policy.margin == meta["margin"]
    assert main([*base, "--tasks", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_a_head_for_another_backbone_is_refused(plain, tmp_path):
    save_remask_head(_constant_head(0.0), tmp_path / "h", {"backbone": "other-model"})
    with pytest.raises(ValueError, match="other-model"):
        LearnedRemaskPolicy.from_pretrained(tmp_path / "h", plain)
