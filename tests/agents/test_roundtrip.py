"""save -> PPOPolicy.load -> select reproduces the model's deterministic actions."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from commit_env.agents.policy import PPOPolicy
from commit_env.agents.train_ppo import PPOConfig, build_model
from stable_baselines3.common.vec_env import VecMonitor

from commit_env.decoding import DecodeConfig, Decoder, DecodeSetting
from commit_env.envs import make_sb3_vec_env
from commit_env.policies.base import CommitPolicy


@pytest.fixture(scope="module")
def saved(tmp_path_factory, backbone):
    out = tmp_path_factory.mktemp("ppo")
    cfg = PPOConfig(
        setting=DecodeSetting(8, "block:4"), num_envs=4, n_steps=8, batch_size=32, out=str(out)
    )
    venv = VecMonitor(make_sb3_vec_env(4, seed=3, config=cfg.env_config(backbone)))
    model = build_model(cfg, venv)
    torch.manual_seed(0)
    net = model.policy.mlp_extractor
    torch.nn.init.normal_(net.pi_logit.weight, std=2.0)  # varied, non-trivial decisions
    torch.nn.init.zeros_(net.pi_logit.bias)
    model.save(str(out / "final.zip"))
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    return model, venv, out, cfg


def test_load_select_matches_model_predict(saved, backbone):
    model, venv, out, _ = saved
    policy = PPOPolicy.load(out / "final.zip")
    assert isinstance(policy, CommitPolicy)
    assert policy.step_cost == pytest.approx(0.01) and policy.gen_length == 8
    assert "eligible" in policy.observation_keys
    obs = venv.reset()
    core = venv.venv._core  # the adapter's batched slots (test-only access to its state)
    committed = 0
    for _ in range(6):
        expected, _ = model.predict(obs, deterministic=True)
        mask = policy.select(core.state)
        assert mask.dtype == torch.bool and mask.shape == (4, 8)
        np.testing.assert_array_equal(mask.cpu().numpy(), expected > 0.5)
        committed += int(mask.sum())
        obs, _, _, _ = venv.step(expected)
    assert committed > 0  # the comparison covered real commit decisions


def test_select_any_batch_and_shorter_gen_length(saved, backbone):
    _, _, out, _ = saved
    policy = PPOPolicy.load(out)  # run directory works too
    decoder = Decoder(backbone, DecodeConfig(gen_length=4, window="block:4"))
    state = decoder.start(["a", "bb", "ccc"])
    mask = policy.select(state)
    assert mask.shape == (3, 4)
    assert not bool((mask & ~state.eligible).any())
    too_long = Decoder(backbone, DecodeConfig(gen_length=12, window="block:4")).start(["a"])
    with pytest.raises(ValueError, match="gen_length"):
        policy.select(too_long)


def test_load_missing_config_raises(tmp_path):
    (tmp_path / "final.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json"):
        PPOPolicy.load(tmp_path / "final.zip")
