"""Issue-14 env options: threshold/count actions, potential-based shaping, conflict flags,
length curriculum, torch thread defaults, the RL Zoo batched vec-env wrapper."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import commit_env  # noqa: F401  (registers the env)
from commit_env.envs import CommitEnv
from commit_env.envs.actions import action_space, actions_to_mask, threshold_of
from commit_env.envs.core import EnvConfig
from commit_env.envs.observation import CONFLICT_KEYS
from commit_env.envs.threads import ENV_VAR, configure_threads, resolve_num_threads
from commit_env.policies import ThresholdPolicy

FEATURES = ("confidence", "history", "position", "global", "conflict")


def _episode(env, actions_fn, seed=0):
    obs, _ = env.reset(seed=seed)
    rewards, done, info = [], False, {}
    while not done:
        obs, r, done, _, info = env.step(actions_fn(obs))
        rewards.append(r)
    return rewards, info


def test_action_spaces_and_threshold_map():
    assert isinstance(action_space("threshold", 8), gym.spaces.Box)
    assert action_space("count", 8) == gym.spaces.Discrete(8)
    assert action_space("mask", 8) == gym.spaces.MultiBinary(8)
    t = threshold_of(np.array([-1.0, 0.0, 1.0, 5.0]))
    assert t[0] == pytest.approx(0.0) and 0.96 < t[1] < 0.97 and t[2] == t[3] > 0.998
    assert torch.all(t[1:] >= t[:-1])  # monotone
    with pytest.raises(ValueError, match="action_mode"):
        action_space("bits", 8)
    with pytest.raises(ValueError, match="action_mode"):
        EnvConfig(action_mode="bits")


def test_threshold_mode_is_the_threshold_rule(backbone_spec):
    env = CommitEnv(task="qa", backbone=backbone_spec, action_mode="threshold")
    env.reset(seed=3)
    core = env.unwrapped._core
    for a in (-0.5, 0.0, 0.6):
        st = core.state
        mask = actions_to_mask("threshold", [a], st.confidence, st.eligible)
        rule = ThresholdPolicy(float(threshold_of([a])[0])).select(st)
        assert torch.equal(mask, rule)
    _, info = _episode(env, lambda obs: np.array([0.3], dtype=np.float32))
    assert info["forced_commits"] == 0  # the top-1 is part of the action, never forced
    with pytest.raises(ValueError, match="finite"):
        env.reset(seed=0)
        env.step(np.array([np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="one per slot"):
        env.step(np.zeros(3, dtype=np.float32))
    env.close()


def test_count_mode_commits_n_plus_one(backbone_spec):
    env = CommitEnv(task="qa", backbone=backbone_spec, action_mode="count", window="full")
    obs, _ = env.reset(seed=1)
    before = int(obs["eligible"].sum())
    obs, *_ = env.step(2)
    assert before - int(obs["masked"].sum()) == 3
    with pytest.raises(ValueError, match="count actions"):
        env.step(env.gen_length)
    env.close()


def test_checker_passes_with_new_options(backbone_spec):
    env = CommitEnv(
        task="qa",
        backbone=backbone_spec,
        action_mode="threshold",
        shaping=0.5,
        features=FEATURES,
    )
    check_env(env, skip_render_check=True, skip_close_check=True)
    env.close()


def test_shaping_preserves_every_episode_return(backbone_spec):
    returns = {}
    per_step = {}
    for c in (0.0, 1.0):
        env = CommitEnv(task="qa", backbone=backbone_spec, shaping=c, action_mode="threshold")
        rng = np.random.default_rng(0)
        rewards, info = _episode(
            env, lambda obs, rng=rng: rng.uniform(-1, 1, size=1).astype(np.float32)
        )
        returns[c] = sum(rewards)
        per_step[c] = rewards
        env.close()
    assert len(per_step[0.0]) == len(per_step[1.0]) > 1
    assert returns[1.0] == pytest.approx(returns[0.0], abs=1e-9)  # sum of F telescopes to 0
    assert not np.allclose(per_step[0.0][:-1], per_step[1.0][:-1])  # credit moved earlier
    assert per_step[1.0][0] > per_step[0.0][0]  # progress is paid when made
    with pytest.raises(ValueError, match="shaping"):
        EnvConfig(shaping=-1.0)


def test_conflict_flags_match_their_definition(backbone_spec):
    env = CommitEnv(task="qa:hard", backbone=backbone_spec, features=FEATURES)
    obs, _ = env.reset(seed=2)
    seen = 0
    for _ in range(4):
        assert set(CONFLICT_KEYS) <= set(obs)
        prop, masked, valid = obs["proposal"], obs["masked"] > 0.5, obs["valid"] > 0.5
        core = env.unwrapped._core
        toks = core.column("tokens")[0].astype(np.int64)
        committed = ~masked & valid
        for i in np.flatnonzero(masked & valid):
            others = masked.copy()
            others[i] = False
            assert obs["dup_proposal"][i] == float((prop[others] == prop[i]).any())
            assert obs["dup_committed"][i] == float((toks[committed] == prop[i]).any())
        seen += int(obs["dup_proposal"].sum() + obs["dup_committed"].sum())
        assert np.all(obs["dup_neighbor"][~masked] == 0)
        obs, _, done, _, _ = env.step(np.zeros(env.gen_length, dtype=np.int8))
        if done:
            break
    env.close()


def test_curriculum_lengths(backbone_spec):
    env = CommitEnv(task="qa", backbone=backbone_spec, gen_length=16, window="block:4")
    core = env.unwrapped._core
    core.set_gen_lengths([8])
    _, _ = env.reset(seed=0)
    assert int(env.reset(seed=1)[0]["valid"].sum()) == 8
    with pytest.raises(ValueError, match="curriculum lengths"):
        core.set_gen_lengths([32])
    with pytest.raises(ValueError, match="window"):
        core.set_gen_lengths([6])
    env.close()


def test_thread_policy(monkeypatch):
    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 4)

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_num_threads(None, Small(), "cpu") == 1
    assert resolve_num_threads(None, Small(), "cuda") is None
    assert resolve_num_threads(3, Small(), "cuda") == 3
    assert resolve_num_threads(0, Small(), "cpu") is None
    monkeypatch.setenv(ENV_VAR, "2")
    assert resolve_num_threads(None, Small(), "cpu") == 2
    monkeypatch.setenv(ENV_VAR, "two")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_num_threads(None, Small(), "cpu")
    with pytest.raises(ValueError, match="num_threads"):
        resolve_num_threads(-1)
    previous = torch.get_num_threads()
    try:
        assert configure_threads(2) == 2
        monkeypatch.delenv(ENV_VAR)
        assert configure_threads(None, Small(), "cpu") == 1
    finally:
        torch.set_num_threads(previous)


def test_env_sets_one_thread_for_the_small_backbone(backbone_spec, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        env = CommitEnv(task="qa", backbone=backbone_spec, device="cpu")
        assert torch.get_num_threads() == 1
        env.close()
        env = CommitEnv(task="qa", backbone=backbone_spec, device="cpu", num_threads=2)
        assert torch.get_num_threads() == 2
        env.close()
    finally:
        torch.set_num_threads(previous)


def test_batched_vec_env_replaces_single_envs(backbone_spec):
    from stable_baselines3.common.env_util import make_vec_env

    from commit_env.envs.sb3 import CommitSB3VecEnv, batched_vec_env

    # render_mode=None: SB3's make_vec_env asks for "rgb_array" unless told otherwise
    kwargs = {
        "task": "qa",
        "backbone": backbone_spec,
        "action_mode": "threshold",
        "render_mode": None,
    }
    dummy = make_vec_env("commit_env/TokenCommit-v0", n_envs=3, seed=5, env_kwargs=kwargs)
    venv = batched_vec_env(dummy)
    assert isinstance(venv.venv, CommitSB3VecEnv) and venv.num_envs == 3
    assert venv.venv._seeds == [5, 6, 7]
    venv.reset()
    episodes = 0
    for _ in range(40):
        _, _, dones, infos = venv.step(np.zeros((3, 1), dtype=np.float32))
        episodes += sum("episode" in infos[i] for i in np.flatnonzero(dones))
    assert episodes > 0
    venv.close()
    with pytest.raises(TypeError, match="batched_vec_env"):
        batched_vec_env(object())
