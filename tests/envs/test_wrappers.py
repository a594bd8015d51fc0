"""Threshold / count action wrappers and the feature-ablation wrapper."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from commit_env.envs import (
    ENV_ID,
    CountActionWrapper,
    FeatureAblationWrapper,
    ThresholdActionWrapper,
)


def run(env, action_fn, seed=0):
    obs, _ = env.reset(seed=seed)
    steps = 0
    while True:
        obs, reward, terminated, truncated, info = env.step(action_fn(obs))
        steps += 1
        if terminated:
            return steps, info


def test_threshold_wrapper(env_kwargs):
    env = ThresholdActionWrapper(gym.make(ENV_ID, **env_kwargs))
    assert env.action_space == gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    obs, _ = env.reset(seed=1)
    mask = env.action(np.array([0.0], dtype=np.float32))
    np.testing.assert_array_equal(mask.astype(bool), obs["eligible"] > 0.5)
    # Threshold 0 commits everything eligible: one step. Threshold 1 commits (almost) nothing.
    assert run(env, lambda o: np.array([0.0], np.float32))[0] == 1
    steps, info = run(env, lambda o: np.array([1.0], np.float32))
    assert info["forced_commits"] >= steps - 1
    with pytest.raises(ValueError, match="threshold"):
        env.step(np.array([1.5]))
    env.close()


def test_count_wrapper_discrete_and_continuous(env_kwargs):
    env = CountActionWrapper(gym.make(ENV_ID, **env_kwargs), k_max=4)
    assert env.action_space == gym.spaces.Discrete(4)
    obs, _ = env.reset(seed=2)
    mask = env.action(np.int64(2))
    assert mask.sum() == 3 and (obs["eligible"][mask.astype(bool)] > 0.5).all()
    top = np.argsort(-np.where(obs["eligible"] > 0.5, obs["conf"], -1))[:3]
    assert set(np.flatnonzero(mask)) == set(top)
    steps, info = run(env, lambda o: 3)  # 4 per step over G = 8 positions
    assert steps <= 2 and info["forced_commits"] == 0
    with pytest.raises(ValueError):
        env.step(7)
    cont = CountActionWrapper(gym.make(ENV_ID, **env_kwargs), continuous=True)
    cont.reset(seed=0)
    assert cont.action(np.array([1.0])).sum() == 8
    assert cont.action(np.array([0.0])).sum() == 1
    env.close()
    cont.close()


def test_feature_ablation(env_kwargs):
    base = gym.make(ENV_ID, **env_kwargs)
    env = FeatureAblationWrapper(base, drop=["history", "topk"])
    obs, _ = env.reset(seed=0)
    assert not {"stable", "prev_conf", "kl", "topk"} & set(obs)
    assert {"conf", "eligible", "valid", "proposal"} <= set(obs)
    assert obs in env.observation_space
    assert set(env.observation_space.spaces) == set(obs)
    pos = FeatureAblationWrapper(gym.make(ENV_ID, **env_kwargs), drop="position")
    assert "eligible" in pos.observation_space.spaces  # kept unless named as a key
    assert "gen_pos" not in pos.observation_space.spaces
    with pytest.raises(ValueError, match="cannot drop"):
        FeatureAblationWrapper(base, drop=["nonsense"])
    env.close()
    pos.close()


def test_wrappers_need_conf(env_kwargs):
    env = gym.make(ENV_ID, **{**env_kwargs, "features": ["position"]})
    with pytest.raises(ValueError, match="conf"):
        ThresholdActionWrapper(env)
    env.close()
