"""Gymnasium environments for token commitment, the SB3 adapter and wrappers.

Importing this package registers ``commit_env/TokenCommit-v0`` (``gym.make`` builds
:class:`CommitEnv`, ``gym.make_vec`` builds :class:`CommitVectorEnv` through its
``vector_entry_point``) and ``commit_env/TokenCommit-v1`` (:class:`RevocableCommitEnv` /
:class:`RevocableCommitVectorEnv`: the action can also remask committed positions). The
classes themselves load lazily, so registration imports nothing but
Gymnasium.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

import gymnasium as gym

if TYPE_CHECKING:
    from commit_env.envs.commit_env import (
        CommitEnv,
        CommitVectorEnv,
        RevocableCommitEnv,
        RevocableCommitVectorEnv,
    )
    from commit_env.envs.core import CommitSlots, EnvConfig, Episode
    from commit_env.envs.observation import ObservationLayout
    from commit_env.envs.sb3 import CommitSB3VecEnv, make_sb3_vec_env
    from commit_env.envs.wrappers import (
        CountActionWrapper,
        FeatureAblationWrapper,
        ThresholdActionWrapper,
    )

__all__ = [
    "ENV_ID",
    "ENV_ID_V1",
    "CommitEnv",
    "CommitSB3VecEnv",
    "CommitSlots",
    "CommitVectorEnv",
    "CountActionWrapper",
    "EnvConfig",
    "Episode",
    "FeatureAblationWrapper",
    "ObservationLayout",
    "RevocableCommitEnv",
    "RevocableCommitVectorEnv",
    "ThresholdActionWrapper",
    "make_sb3_vec_env",
    "register_envs",
]

ENV_ID = "commit_env/TokenCommit-v0"
ENV_ID_V1 = "commit_env/TokenCommit-v1"

_LAZY = {
    "CommitEnv": "commit_env.envs.commit_env",
    "CommitVectorEnv": "commit_env.envs.commit_env",
    "RevocableCommitEnv": "commit_env.envs.commit_env",
    "RevocableCommitVectorEnv": "commit_env.envs.commit_env",
    "CommitSlots": "commit_env.envs.core",
    "EnvConfig": "commit_env.envs.core",
    "Episode": "commit_env.envs.core",
    "ObservationLayout": "commit_env.envs.observation",
    "CommitSB3VecEnv": "commit_env.envs.sb3",
    "make_sb3_vec_env": "commit_env.envs.sb3",
    "CountActionWrapper": "commit_env.envs.wrappers",
    "FeatureAblationWrapper": "commit_env.envs.wrappers",
    "ThresholdActionWrapper": "commit_env.envs.wrappers",
}


def __getattr__(name: str) -> Any:
    # The env modules import torch and the decoder; keep `import commit_env` cheap.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_envs() -> None:
    """Register ``commit_env/TokenCommit-v0`` and ``-v1`` with Gymnasium (idempotent)."""
    if ENV_ID not in gym.registry:  # re-registering would warn about overriding
        gym.register(
            id=ENV_ID,
            entry_point="commit_env.envs.commit_env:CommitEnv",
            vector_entry_point="commit_env.envs.commit_env:CommitVectorEnv",
        )
    # v1 is a variant next to v0 (another action space), not its successor: silence Gymnasium's
    # "v0 is out of date, upgrade to v1" deprecation notice for this id only.
    warnings.filterwarnings("ignore", message=r".*commit_env/TokenCommit-v0 is out of date")
    if ENV_ID_V1 not in gym.registry:
        gym.register(
            id=ENV_ID_V1,
            entry_point="commit_env.envs.commit_env:RevocableCommitEnv",
            vector_entry_point="commit_env.envs.commit_env:RevocableCommitVectorEnv",
        )


register_envs()
