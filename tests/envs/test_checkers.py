"""Gymnasium's and SB3's environment checkers, on every registered commit_env id."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import commit_env  # noqa: F401

IDS = [spec_id for spec_id in gym.registry if spec_id.startswith("commit_env/")]


def test_ids_registered():
    assert "commit_env/TokenCommit-v0" in IDS


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize(
    "extra",
    [{}, {"settings": {"gen_length": [4, 8], "window": ["full", "sliding:2"]}, "temperature": 1.0}],
    ids=["default", "settings+sampled"],
)
def test_gymnasium_check_env(env_kwargs, env_id, extra):
    env = gym.make(env_id, **{**env_kwargs, **extra})
    assert env.spec.nondeterministic is False  # the determinism checks run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        gym_check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_sb3_check_env(env_kwargs, env_id):
    env = gym.make(env_id, **env_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env.unwrapped, warn=True)
    env.close()
