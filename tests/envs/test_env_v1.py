"""commit_env/TokenCommit-v1: keep / commit / remask actions; v0 unchanged; fuzz and vector env.

The Gymnasium and SB3 checkers run on v1 through ``test_checkers.py`` (every registered id).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commit_env.envs import (
    ENV_ID,
    ENV_ID_V1,
    CommitEnv,
    RevocableCommitEnv,
    RevocableCommitVectorEnv,
    make_sb3_vec_env,
)

NUM_ENVS, G = 6, 8
SETTINGS = {
    "gen_length": [3, 5, 8],
    "window": ["full", "block:1", "sliding:2"],
    "step_budget": [1, 3, None],
}


def test_v1_spaces_and_defaults(env_kwargs):
    env = gym.make(ENV_ID_V1, **env_kwargs)
    assert isinstance(env.unwrapped, RevocableCommitEnv)
    assert env.action_space == gym.spaces.MultiDiscrete([3] * 8)
    assert env.unwrapped.config.remask_cap == 2
    obs, _ = env.reset(seed=0)
    assert "remaskable" in obs and obs["remaskable"].shape == (8,)
    assert not obs["remaskable"].any()  # nothing committed yet
    assert env.unwrapped.action_masks().shape == (24,)
    env.close()


def test_v0_is_unchanged_and_refuses_remasking(env_kwargs):
    env = gym.make(ENV_ID, **env_kwargs)
    assert env.action_space == gym.spaces.MultiBinary(8)
    obs, _ = env.reset(seed=0)
    assert "remaskable" not in obs
    env.close()
    with pytest.raises(ValueError, match="TokenCommit-v1"):
        CommitEnv(**env_kwargs, remask_cap=1)
    with pytest.raises(ValueError, match="remask_cap"):
        RevocableCommitEnv(**env_kwargs, remask_cap=0)


def test_remask_takes_a_commit_back_and_bad_codes_are_ignored_and_counted(env_kwargs):
    env = RevocableCommitEnv(**env_kwargs, step_budget=8)
    obs, _ = env.reset(seed=1)
    first = np.zeros(8, dtype=np.int64)
    first[:2] = 1  # commit positions 0 and 1
    obs, *_ = env.step(first)
    assert obs["masked"][:2].tolist() == [0.0, 0.0]
    assert obs["remaskable"][:2].tolist() == [1.0, 1.0]
    second = np.zeros(8, dtype=np.int64)
    second[0] = 2  # valid remask
    second[5] = 2  # masked position: ignored and counted
    second[2] = 1
    obs, reward, terminated, truncated, info = env.step(second)
    assert obs["masked"][0] == 1.0 and obs["eligible"][0] == 1.0  # proposed again
    state = env.unwrapped._core.state
    assert int(state.remasks[0]) == 1 and int(state.remask_ignored[0]) == 1
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(np.full(8, 2))  # remask-only spam
    assert info["remasks"] >= 1 and info["remask_ignored"] >= 1
    assert info["steps"] <= 8 and info["nfe"] <= 8
    env.close()


@pytest.mark.parametrize(
    "action, match",
    [
        (np.zeros(7, dtype=np.int64), "shape"),
        (np.full(8, 3), "0, 1 or 2"),
        (np.full(8, -1), "0, 1 or 2"),
        (np.full(8, 0.5), "0, 1 or 2"),
        (np.array(["a"] * 8), "dtype"),
    ],
)
def test_v1_bad_actions_raise_value_error(env_kwargs, action, match):
    env = RevocableCommitEnv(**env_kwargs)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)
    env.close()


def test_v1_vector_env_via_make_vec_matches_single_envs(env_kwargs):
    venv = gym.make_vec(ENV_ID_V1, num_envs=3, **env_kwargs)
    assert isinstance(venv, RevocableCommitVectorEnv)
    assert venv.action_space.shape == (3, 8)
    singles = [RevocableCommitEnv(**env_kwargs) for _ in range(3)]
    obs, _ = venv.reset(seed=5)
    single_obs = [env.reset(seed=5 + i)[0] for i, env in enumerate(singles)]
    for i, o in enumerate(single_obs):  # slot i is the single env seeded with seed + i
        assert o["proposal"].tolist() == obs["proposal"][i].tolist()
    rng = np.random.default_rng(0)
    for _ in range(4):
        action = rng.integers(0, 3, size=(3, 8))
        obs, rewards, terminated, *_ = venv.step(action)
        for i, env in enumerate(singles):
            if terminated[i]:
                continue
            o, r, *_ = env.step(action[i])
            np.testing.assert_allclose(o["conf"], obs["conf"][i], atol=1e-5)
            assert o["remaskable"].tolist() == obs["remaskable"][i].tolist()
            assert r == pytest.approx(rewards[i])
        if terminated.any():
            break
    venv.close()
    for env in singles:
        env.close()


def test_v1_sb3_adapter_steps_codes(backbone_spec):
    venv = make_sb3_vec_env(
        2, seed=0, task="qa", backbone=backbone_spec, gen_length=6, device="cpu", remask_cap=1
    )
    venv.reset()
    assert venv.action_space == gym.spaces.MultiDiscrete([3] * 6)
    for _ in range(10):
        _, _, _, infos = venv.step(np.random.default_rng(0).integers(0, 3, size=(2, 6)))
    assert venv.env_method("action_masks")[0].shape == (18,)
    venv.close()


# ----------------------------------------------------------------------------- fuzz
@pytest.fixture(scope="module")
def venv(backbone_spec):
    env = RevocableCommitVectorEnv(
        num_envs=NUM_ENVS,
        task="qa",
        backbone=backbone_spec,
        settings=SETTINGS,
        device="cpu",
        remask_cap=3,
    )
    yield env
    env.close()


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**31 - 1), p_remask=st.sampled_from([0.0, 0.3, 0.9]))
def test_v1_fuzz_every_episode_terminates_within_budget(venv, seed, p_remask):
    rng = np.random.default_rng(seed)
    obs, _ = venv.reset(seed=seed)
    core = venv._core
    budgets = np.array([ep.budget for ep in core.episodes])
    lengths = np.zeros(NUM_ENVS, dtype=int)
    ended = np.zeros(NUM_ENVS, dtype=bool)
    finished, t = 0, 0
    while finished < 15:
        u = rng.random((NUM_ENVS, G))
        action = np.where(u < p_remask, 2, (u < p_remask + 0.3).astype(np.int64))
        obs, rewards, terminated, truncated, infos = venv.step(action)
        t += 1
        assert obs in venv.observation_space
        assert np.isfinite(rewards).all() and not truncated.any()
        live = ~ended
        lengths[live] += 1
        assert (lengths[live] <= budgets[live]).all()
        for i in np.flatnonzero(terminated):
            assert infos["steps"][i] == lengths[i] <= budgets[i]
            assert infos["remasks"][i] >= 0 and infos["remask_ignored"][i] >= 0
            finished += 1
        for i in np.flatnonzero(ended):
            budgets[i] = core.episodes[i].budget
            lengths[i] = 0
        ended = terminated.copy()
        assert t < 2000


def test_v1_combines_with_shaping_and_conflict_but_not_threshold_or_count(env_kwargs):
    features = ("confidence", "history", "position", "global", "conflict")
    for mode in ("threshold", "count"):
        with pytest.raises(ValueError, match="cannot remask"):
            gym.make(ENV_ID_V1, action_mode=mode, **env_kwargs)
    env = gym.make(ENV_ID_V1, shaping=1.0, features=features, **env_kwargs)
    assert env.action_space == gym.spaces.MultiDiscrete([3] * 8)
    obs, _ = env.reset(seed=0)
    assert {"remaskable", "dup_proposal", "dup_committed", "dup_neighbor"} <= set(obs)
    rng = np.random.default_rng(0)
    rewards, done, steps = [], False, 0
    while not done:
        action = rng.integers(0, 3, size=8)
        obs, r, done, truncated, info = env.step(action)
        rewards.append(r)
        steps += 1
        assert steps <= 8 * 3 and not truncated
    assert "remasks" in info
    env.close()
