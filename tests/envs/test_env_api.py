"""Single-env API: make, spaces, seeding, rewards, infos, render, validation, close."""

from __future__ import annotations

import gc

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence

import commit_env  # noqa: F401
from commit_env.envs import ENV_ID, CommitEnv, CommitVectorEnv, EnvConfig

FINAL_KEYS = {"is_success", "task_score", "nfe", "forced_commits", "steps"}


def rollout(env, seed, policy="zeros", max_steps=100):
    obs, info = env.reset(seed=seed)
    trace = [obs]
    rewards, infos = [], []
    for _ in range(max_steps):
        if policy == "zeros":
            action = np.zeros(env.action_space.n, dtype=np.int8)
        else:
            action = (obs["eligible"] > 0.5) & (obs["conf"] >= policy)
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append(obs)
        rewards.append(reward)
        infos.append(info)
        assert truncated is False
        if terminated:
            return trace, rewards, infos
    raise AssertionError("episode did not terminate")


def test_make_builds_the_single_env(env_kwargs):
    env = gym.make(ENV_ID, **env_kwargs)
    assert isinstance(env.unwrapped, CommitEnv)
    assert env.action_space == gym.spaces.MultiBinary(8)
    space = env.observation_space
    assert isinstance(space, gym.spaces.Dict)
    assert all(isinstance(s, gym.spaces.Box) and len(s.shape) == 1 for s in space.values())
    assert space["proposal"].dtype == np.int32
    assert space["topk"].shape == (8 * 3,)
    assert space["progress"].shape == (1,)
    assert {"valid", "eligible"} <= set(space.spaces)
    env.close()


def test_make_vec_uses_the_vector_entry_point(env_kwargs):
    venv = gym.make_vec(ENV_ID, num_envs=3, **env_kwargs)
    assert isinstance(venv, CommitVectorEnv)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    obs, _ = venv.reset(seed=0)
    assert obs["conf"].shape == (3, 8)
    assert obs in venv.observation_space
    venv.close()


def test_reset_seed_reproduces_episode_exactly(env_kwargs):
    env = gym.make(ENV_ID, **env_kwargs)
    a = rollout(env, seed=7, policy=0.5)
    b = rollout(env, seed=7, policy=0.5)
    assert data_equivalence(a, b, exact=True)
    other = [rollout(env, seed=s)[0][0]["proposal"] for s in range(6)]
    assert len({o.tobytes() for o in other}) > 1  # different seeds draw different prompts
    env.close()


def test_final_info_and_reward_accounting(env_kwargs):
    env = gym.make(ENV_ID, step_cost=0.05, **env_kwargs)
    for seed in range(3):
        _, rewards, infos = rollout(env, seed=seed, policy=0.3)
        final = infos[-1]
        assert FINAL_KEYS <= set(final)
        assert all(not i for i in infos[:-1])  # non-final infos are empty
        assert final["steps"] == len(rewards) <= final["budget"]
        assert final["nfe"] == final["steps"]
        assert isinstance(final["is_success"], bool)
        assert final["is_success"] == (final["task_score"] >= 1.0)
        assert sum(rewards) == pytest.approx(final["task_score"] - 0.05 * final["steps"])
        assert all(r == pytest.approx(-0.05) for r in rewards[:-1])
    env.close()


def test_score_x_efficiency_reward(env_kwargs):
    env = gym.make(ENV_ID, reward="score_x_efficiency", step_cost=0.0, **env_kwargs)
    for seed in range(3):
        _, rewards, infos = rollout(env, seed=seed, policy=0.0)
        f = infos[-1]
        expected = f["task_score"] * (1 - (f["nfe"] - 1) / f["budget"])
        assert rewards[-1] == pytest.approx(expected)
    env.close()


def test_budget_terminates_episode(env_kwargs):
    env = gym.make(ENV_ID, **{**env_kwargs, "step_budget": 3})
    for seed in range(4):
        _, rewards, infos = rollout(env, seed=seed)
        assert len(rewards) <= 3
        assert infos[-1]["steps"] <= 3
    env.close()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(7, dtype=np.int8),  # wrong shape
        np.zeros((1, 8), dtype=np.int8),  # wrong rank
        np.full(8, 2, dtype=np.int64),  # value outside {0, 1}
        np.full(8, 0.5),  # fractional value
        np.array(["1"] * 8),  # non-numeric dtype
        np.full(8, np.nan),
        [[0, 1], [1]],  # ragged list
    ],
)
def test_invalid_actions_raise_value_error(env_kwargs, bad):
    env = gym.make(ENV_ID, disable_env_checker=True, **env_kwargs)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action"):
        env.step(bad)
    env.step([0] * 8)  # a list of ints is fine and the env still works
    env.close()


def test_vector_invalid_actions(env_kwargs):
    venv = CommitVectorEnv(num_envs=2, **env_kwargs)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        venv.step(np.zeros(8, dtype=np.int8))
    with pytest.raises(ValueError, match="0 or 1"):
        venv.step(np.full((2, 8), 3))
    venv.close()


def test_step_before_reset_and_after_end(env_kwargs):
    env = CommitEnv(**env_kwargs)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(8, dtype=np.int8))
    rollout(env, seed=0, policy=0.0)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(8, dtype=np.int8))
    env.close()
    env.close()  # closing twice is allowed
    with pytest.raises(gym.error.ClosedEnvironmentError):
        env.reset(seed=0)


def test_render_ansi_marks_masks_and_fresh_commits(env_kwargs):
    env = gym.make(ENV_ID, render_mode="ansi", **env_kwargs)
    env.reset(seed=3)
    first = env.render()
    assert isinstance(first, str)
    assert "?" in first and "[" not in first.split("canvas:")[1]
    env.step(np.zeros(8, dtype=np.int8))  # one forced commit
    text = env.render()
    canvas = text.split("canvas:")[1]
    assert canvas.count("[") == 1 and "step 1/" in text
    plain = gym.make(ENV_ID, **env_kwargs)
    plain.reset(seed=0)
    assert plain.render() is None
    env.close()


def test_action_masks_follow_eligibility(env_kwargs):
    env = gym.make(ENV_ID, **{**env_kwargs, "window": "block:4"})
    obs, _ = env.reset(seed=0)
    masks = env.unwrapped.action_masks()
    assert masks.shape == (16,) and masks.dtype == bool
    assert masks[0::2].all()
    np.testing.assert_array_equal(masks[1::2], obs["eligible"] > 0.5)
    assert not masks[1::2][4:].any()  # the second block is not open yet
    env.close()


def test_settings_sample_per_episode(env_kwargs):
    settings = {"gen_length": [4, 8], "window": ["full", "block:2"], "step_budget": [2, None]}
    env = gym.make(ENV_ID, settings=settings, **env_kwargs)
    seen = set()
    for seed in range(40):
        obs, _ = env.reset(seed=seed)
        ep = env.unwrapped._core.episodes[0]
        seen.add((ep.gen_length, ep.window, ep.budget))
        assert obs["valid"].sum() == ep.gen_length
        assert not obs["eligible"][ep.gen_length :].any()
        assert not obs["conf"][ep.gen_length :].any()  # padding reads 0
    assert {g for g, _, _ in seen} == {4, 8}
    assert {w for _, w, _ in seen} == {"full", "block:2"}
    assert {2, 4, 8} <= {b for _, _, b in seen}
    env.close()


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="settings"):
        EnvConfig(settings={"gen_length": []})
    with pytest.raises(ValueError, match="unknown settings"):
        EnvConfig(settings={"temperature": [1.0]})
    with pytest.raises(ValueError, match="reward"):
        EnvConfig(reward="accuracy")
    with pytest.raises(ValueError, match="feature groups"):
        EnvConfig(features=["confidence", "vibes"])
    with pytest.raises(ValueError, match="divide"):
        EnvConfig(settings={"gen_length": [6], "window": ["block:4"]}).setting_lists(16)


def test_hidden_features_group(env_kwargs):
    env = gym.make(
        ENV_ID,
        **{**env_kwargs, "features": ["confidence", "hidden"], "hidden_dim": 4},
    )
    obs, _ = env.reset(seed=0)
    assert obs["hidden"].shape == (8 * 4,)
    assert "stable" not in obs and "eligible" in obs
    assert obs in env.observation_space
    env.close()


def test_two_envs_share_one_backbone(env_kwargs):
    a = CommitEnv(**env_kwargs)
    b = CommitVectorEnv(num_envs=2, **env_kwargs)
    assert a._core.backbone is b._core.backbone
    a.close()
    b.close()


def test_close_releases_the_backbone(tmp_path, random_backbone_dir):
    import shutil

    from commit_env.backbones import _CACHE

    path = tmp_path / "private_bert"
    shutil.copytree(random_backbone_dir, path)  # a spec no other test holds
    spec = f"hf:{path}"
    env = CommitEnv(task="qa", backbone=spec, gen_length=8, device="cpu")
    other = CommitEnv(task="qa", backbone=spec, gen_length=8, device="cpu")
    assert env._core.backbone is other._core.backbone
    env.reset(seed=0)
    env.step(np.ones(8, dtype=np.int8))
    assert any(key[0] == spec for key in list(_CACHE.keys()))
    env.close()
    other.close()
    gc.collect()
    assert not any(key[0] == spec for key in list(_CACHE.keys()))
