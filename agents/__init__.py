"""Reinforcement-learning agents (SB3 PPO / MaskablePPO) on the token-commitment environment.

* :mod:`agents.policy_net`: the per-position actor-critic (``PerPositionPolicy`` for PPO, the main
  path; ``PerPositionMaskablePolicy`` for sb3-contrib MaskablePPO, slower per step).
* :mod:`agents.train_ppo`: ``PPOConfig``, ``train_ppo`` and the ``train-ppo`` CLI helpers.
* :mod:`agents.policy`: ``PPOPolicy``, a trained agent behind the ``CommitPolicy`` protocol.
* :mod:`agents.bc`: ``bc_warm_start``, behaviour cloning from any ``CommitPolicy``.
* :mod:`agents.callbacks`: rollout decode statistics, periodic evaluation, wall-clock limit.
* :mod:`agents.sweep`: the step-cost sweep against tuned confidence thresholds.
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
    "PPOConfig": "agents.train_ppo",
    "PPOPolicy": "agents.policy",
    "PerPositionMaskablePolicy": "agents.policy_net",
    "PerPositionPolicy": "agents.policy_net",
    "add_cli": "agents.train_ppo",
    "bc_warm_start": "agents.bc",
    "run_cli": "agents.train_ppo",
    "train_ppo": "agents.train_ppo",
}


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m agents.train_ppo` does not import the module twice.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
