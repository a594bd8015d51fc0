"""MaskablePPO with the per-position network never samples a masked action."""

from __future__ import annotations

import numpy as np
from commit_env.agents.policy_net import PerPositionMaskablePolicy
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecMonitor

from commit_env.envs import make_sb3_vec_env


class _CheckMasks(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.checked = 0
        self.committed = 0

    def _on_step(self) -> bool:
        actions = np.asarray(self.locals["actions"]) > 0.5  # [B, G]
        masks = np.asarray(self.locals["action_masks"])  # [B, 2G]
        allowed = masks[:, 1::2]
        assert not (actions & ~allowed).any(), "a masked commit was sampled"
        self.checked += actions.shape[0]
        self.committed += int(actions.sum())
        return True


def test_maskable_ppo_never_samples_masked_action(backbone):
    venv = VecMonitor(
        make_sb3_vec_env(8, seed=0, task="qa", backbone=backbone, gen_length=8, window="block:4")
    )
    model = MaskablePPO(
        PerPositionMaskablePolicy,
        venv,
        n_steps=16,
        batch_size=64,
        n_epochs=2,
        gamma=1.0,
        seed=0,
        # Commit-happy start: without masking, ineligible commits would be sampled constantly.
        policy_kwargs={"logit_bias": 2.0, "hidden": 16},
    )
    check = _CheckMasks()
    model.learn(total_timesteps=384, callback=check)
    assert check.checked >= 384
    assert check.committed > 100
    venv.close()
