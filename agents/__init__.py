"""Reinforcement-learning agents (SB3 PPO / MaskablePPO) on the token-commitment environment.

* :mod:`commit_env.agents.policy_net`: the per-position actor-critic (``PerPositionPolicy`` for PPO, the main
  path; ``PerPositionMaskablePolicy`` for sb3-contrib MaskablePPO, slower per step).
* :mod:`commit_env.agents.train_ppo`: ``PPOConfig``, ``train_ppo`` and the ``train-ppo`` CLI helpers.
* :mod:`commit_env.agents.policy`: ``PPOPolicy``, a trained agent behind the ``CommitPolicy`` protocol.
* :mod:`commit_env.agents.bc`: ``bc_warm_start``, behaviour cloning from any ``CommitPolicy``.
* :mod:`commit_env.agents.callbacks`: rollout decode statistics, periodic evaluation, wall-clock limit.
* :mod:`commit_env.agents.sweep`: the step-cost sweep against tuned confidence thresholds.
"""

import importlib
from typing import Any

__all__ = [
    "PPOConfig",
    "PPOPolicy",
    "PerPositionMaskablePolicy",
    "PerPositionPolicy",
    "add_cli",
    "bc_warm_start",
    "run_cli",
    "train_ppo",
]

_LAZY = {
    "PPOConfig": "commit_env.agents.train_ppo",
    "PPOPolicy": "commit_env.agents.policy",
    "PerPositionMaskablePolicy": "commit_env.agents.policy_net",
    "PerPositionPolicy": "commit_env.agents.policy_net",
    "add_cli": "commit_env.agents.train_ppo",
    "bc_warm_start": "commit_env.agents.bc",
    "run_cli": "commit_env.agents.train_ppo",
    "train_ppo": "commit_env.agents.train_ppo",
}


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m commit_env.agents.train_ppo` does not import the module twice.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
