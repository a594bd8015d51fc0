"""SB3 adapter, VecMonitor, MaskablePPO masking, PPO on gym.make and the example scripts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.vec_env import VecEnvWrapper, VecMonitor

from commit_env.envs import CommitSB3VecEnv, CommitVectorEnv, make_sb3_vec_env

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_adapter_same_step_reset_and_terminal_observation(env_kwargs):
    venv = VecMonitor(make_sb3_vec_env(4, seed=3, **env_kwargs), info_keywords=("is_success",))
    obs = venv.reset()
    assert obs["conf"].shape == (4, 8) and obs["proposal"].dtype == np.int32
    masks = venv.env_method("action_masks")
    assert len(masks) == 4 and masks[0].shape == (16,)
    assert venv.has_attr("action_masks")
    assert venv.env_is_wrapped(VecMonitor) == [False] * 4
    finished = 0
    returns = np.zeros(4)
    for _ in range(40):
        actions = np.stack([m[1::2] for m in venv.env_method("action_masks")]).astype(np.float32)
        obs, rewards, dones, infos = venv.step(actions)
        assert rewards.dtype == np.float32 and dones.dtype == bool
        returns += rewards
        for i in np.flatnonzero(dones):
            info = infos[i]
            terminal = info["terminal_observation"]
            assert terminal.keys() == obs.keys()
            assert terminal["masked_frac"][0] == 0.0  # the finished canvas
            assert obs["masked_frac"][i, 0] > 0.0  # already the next episode's first obs
            assert info["TimeLimit.truncated"] is False
            assert info["episode"]["r"] == pytest.approx(returns[i], abs=1e-5)  # VecMonitor
            assert {"is_success", "task_score", "nfe", "steps"} <= set(info)
            returns[i] = 0.0
            finished += 1
    assert finished >= 8
    venv.close()


def test_adapter_matches_vector_env_slots(env_kwargs):
    sb3 = make_sb3_vec_env(3, seed=5, **env_kwargs)
    native = CommitVectorEnv(num_envs=3, **env_kwargs)
    a = sb3.reset()
    b, _ = native.reset(seed=5)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)
    action = np.zeros((3, 8), dtype=np.int8)
    a, ra, da, _ = sb3.step(action)
    b, rb, db, _, _ = native.step(action)
    np.testing.assert_allclose(ra, rb, atol=1e-6)
    np.testing.assert_array_equal(da, db)
    sb3.close()
    native.close()


def test_adapter_attributes_and_validation(env_kwargs):
    venv = CommitSB3VecEnv(2, **env_kwargs)
    assert venv.get_attr("gen_length") == [8, 8]
    venv.set_attr("gen_length", 8)
    with pytest.raises(ValueError):
        venv.set_attr("gen_length", 8, indices=[0])
    venv.reset()
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        venv.step(np.zeros((3, 8)))
    assert isinstance(venv.env_method("render")[0], str)
    venv.close()
    venv.close()


class MaskChecker(VecEnvWrapper):
    """Fails if an action sets a bit that the current action mask forbids."""

    def __init__(self, venv):
        super().__init__(venv)
        self.checked = 0

    def reset(self):
        return self.venv.reset()

    def step_async(self, actions):
        masks = np.stack(self.venv.env_method("action_masks"))  # [B, 2G]
        allowed = masks[:, 1::2]
        assert not (np.asarray(actions, dtype=bool) & ~allowed).any(), "masked action sampled"
        self.checked += len(actions)
        self.venv.step_async(actions)

    def step_wait(self):
        return self.venv.step_wait()


def test_maskable_ppo_never_samples_masked_actions(env_kwargs):
    from sb3_contrib import MaskablePPO

    checker = MaskChecker(make_sb3_vec_env(8, seed=0, **{**env_kwargs, "window": "block:2"}))
    venv = VecMonitor(checker)
    model = MaskablePPO("MultiInputPolicy", venv, n_steps=32, batch_size=128, n_epochs=1, seed=0)
    model.learn(total_timesteps=256)
    assert checker.checked >= 256
    venv.close()


def test_example_ppo_gym_make(backbone_spec):
    model = load_example("ppo_gym_make").main(32, backbone=backbone_spec, gen_length=8)
    assert model.num_timesteps >= 32


def test_example_maskable_ppo_vec(backbone_spec):
    model = load_example("maskable_ppo_vec").main(
        64, num_envs=4, backbone=backbone_spec, gen_length=8
    )
    assert model.num_timesteps >= 64
