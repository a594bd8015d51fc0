"""Reinforcement-learning agents (SB3 PPO / MaskablePPO) on the token-commitment environment.

* :mod:`commit_env.agents.policy_net`: the per-position actor-critic (``PerPositionPolicy`` for
  PPO, the main path; ``PerPositionMaskablePolicy`` for sb3-contrib MaskablePPO, slower).
* :mod:`commit_env.agents.train_ppo`: ``PPOConfig`` and ``train_ppo`` (CLI: ``train-ppo`` in
  ``commit_env.evaluation.cli``).
* :mod:`commit_env.agents.policy`: ``PPOPolicy``, a trained agent behind ``CommitPolicy``.
* :mod:`commit_env.agents.bc`: ``bc_warm_start``, behaviour cloning from any ``CommitPolicy``.
* :mod:`commit_env.agents.callbacks`: rollout decode statistics, periodic evaluation, time limit.
* :mod:`commit_env.agents.sweep`: the step-cost sweep against tuned confidence thresholds
  (CLI: ``ppo-sweep``).
"""

import importlib
from typing import Any

__all__ = [
    "PPOConfig",
    "PPOPolicy",
    "PerPositionMaskablePolicy",
    "PerPositionPolicy",
    "bc_warm_start",
    "train_ppo",
]

_LAZY = {
    "PPOConfig": "commit_env.agents.train_ppo",
    "PPOPolicy": "commit_env.agents.policy",
    "PerPositionMaskablePolicy": "commit_env.agents.policy_net",
    "PerPositionPolicy": "commit_env.agents.policy_net",
    "bc_warm_start": "commit_env.agents.bc",
    "train_ppo": "commit_env.agents.train_ppo",
}


def __getattr__(name: str) -> Any:
    # Lazy: importing the package does not import SB3.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
