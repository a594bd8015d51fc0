"""RL Baselines3 Zoo hyperparameter files shipped with commit-env.

``ppo.yml`` trains from scratch with the threshold action (``action_mode="threshold"``,
potential-based shaping, conflict features); ``ppo_mask.yml`` uses the ``MultiBinary`` commit
mask with :class:`~commit_env.agents.policy_net.PerPositionPolicy`. Use them as (one line)::

    python -m rl_zoo3.train --algo ppo --env commit_env/TokenCommit-v0
        --gym-packages commit_env --conf-file "$(python -m commit_env.agents.zoo ppo)"
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIGS", "conf_path"]

CONFIGS: tuple[str, ...] = ("ppo", "ppo_mask")


def conf_path(name: str = "ppo") -> Path:
    """Path of a shipped hyperparameter file.

    Args:
        name: ``"ppo"`` or ``"ppo_mask"``.

    Returns:
        The ``.yml`` path inside the installed package.

    Raises:
        ValueError: On an unknown name.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown zoo config {name!r}; expected one of {list(CONFIGS)}")
    return Path(__file__).with_name(f"{name}.yml")
