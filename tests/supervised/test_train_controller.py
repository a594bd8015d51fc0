import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from commit_env.supervised.policy import ControllerPolicy
from commit_env.supervised.train import TrainConfig, binary_metrics, train

from commit_env.decoding import DecodeConfig, Decoder


@pytest.fixture(scope="module")
def trained(small_collection, tmp_path_factory):
    cfg, _ = small_collection
    out = tmp_path_factory.mktemp("ctrl") / "run"
    summary = train(
        TrainConfig(
            traces=(cfg.out,),
            out=str(out),
            epochs=2,
            batch_size=64,
            rollout_n=8,
            progress=False,
            val_every_n_traces=4,
        )
    )
    return out, summary


def test_training_writes_checkpoints_and_logs(trained):
    out, summary = trained
    for sub in ("best", "last"):
        assert (out / sub / "model.safetensors").is_file()
        meta = json.loads((out / sub / "config.json").read_text())
        # the feature layout the controller reads is part of the checkpoint metadata
        assert meta["top_k"] == 3 and meta["feature_groups"] and meta["feature_names"]
    assert len(summary["history"]) == 2
    assert 0.0 <= summary["best"]["f05"] <= 1.0
    assert "rollout_score" in summary["history"][-1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/auroc", "val/ap", "val/f05", "rollout/score", "rollout/nfe"} <= tags


def test_controller_policy_commits_only_eligible(trained, tiny):
    out, _ = trained
    policy = ControllerPolicy.from_pretrained(out / "best", backbone=tiny)
    config = policy.decode_config(DecodeConfig(gen_length=16, window="block:4"))
    decoder = Decoder(tiny, config)
    state = decoder.start(["name a fruit:", "sum 2 digits to 9:"])
    for _ in range(20):
        if state.all_done:
            break
        mask = policy.select(state)
        assert mask.dtype == torch.bool and mask.shape == state.eligible.shape
        assert not (mask & ~state.eligible).any()
        assert mask.any(-1)[~state.done].all()  # top-1 fallback: never idle
        state = decoder.step(state, mask)
    assert state.all_done
    assert state.forced_commits.sum() == 0


def test_missing_hidden_features_is_a_clear_error(trained, tiny):
    out, _ = trained
    policy = ControllerPolicy.from_pretrained(out / "best")
    state = Decoder(tiny, DecodeConfig(gen_length=16)).start(["name a fruit:"])
    with pytest.raises(ValueError, match="hidden_features"):
        policy.select(state)


def test_vocabulary_mismatch_is_a_clear_error(trained, tmp_path):
    out, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(out / "best", bad)
    config = json.loads((bad / "config.json").read_text())
    config["vocab_size"] = 999
    (bad / "config.json").write_text(json.dumps(config))
    from commit_env.backbones import load_backbone

    with pytest.raises(ValueError, match="vocabulary"):
        ControllerPolicy.from_pretrained(bad, backbone=load_backbone("tiny"))


def test_feature_set_mismatch_is_a_clear_error(trained, tmp_path):
    out, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(out / "best", bad)
    config = json.loads((bad / "config.json").read_text())
    config["feature_names"] = config["feature_names"][::-1]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="features"):
        ControllerPolicy.from_pretrained(bad)


def test_resume_continues_from_last(trained, small_collection):
    out, summary = trained
    cfg, _ = small_collection
    more = train(
        TrainConfig(
            traces=(cfg.out,),
            out=str(out),
            epochs=3,
            batch_size=64,
            rollout_n=0,
            progress=False,
            resume=True,
            val_every_n_traces=4,
        )
    )
    assert [h["epoch"] for h in more["history"]] == [1, 2, 3]


def test_binary_metrics_on_known_inputs():
    perfect = binary_metrics(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0]), 0.5)
    assert perfect["auroc"] == 1.0 and perfect["ap"] == 1.0 and perfect["f05"] == 1.0
    inverted = binary_metrics(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0]), 0.5)
    assert inverted["auroc"] == 0.0 and inverted["f05"] == 0.0
    ties = binary_metrics(np.array([0.5, 0.5]), np.array([1, 0]), 0.5)
    assert ties["auroc"] == 0.5


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        TrainConfig(threshold=1.5)
    with pytest.raises(ValueError):
        dataclasses.replace(TrainConfig(), traces=())
