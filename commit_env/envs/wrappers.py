"""Wrappers: low-dimensional actions mapped to commit masks, and feature ablations.

The action wrappers turn a threshold or a count into the ``MultiBinary(G)`` commit mask from the
latest observation's ``conf`` and ``eligible`` keys, so the engine's rules (ineligible bits
ignored, top-1 forced when nothing is committed) still apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from commit_env.decoding.features import FEATURE_GROUPS, FEATURES

__all__ = ["ThresholdActionWrapper", "CountActionWrapper", "FeatureAblationWrapper"]

_GROUP_KEYS = {g: {f.name for f in FEATURES if f.group == g} for g in FEATURE_GROUPS}


class _ObservedActionWrapper(gym.ActionWrapper):
    """Keep the latest observation so that :meth:`action` can read ``conf`` and ``eligible``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        keys = set(env.observation_space.spaces)
        if not {"conf", "eligible"} <= keys:
            raise ValueError(
                f"{type(self).__name__} needs the 'conf' and 'eligible' observation keys "
                "(keep the 'confidence' feature group)"
            )
        self._obs: dict[str, np.ndarray] | None = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(self.action(action))
        self._obs = obs
        return obs, reward, terminated, truncated, info

    def _conf_eligible(self) -> tuple[np.ndarray, np.ndarray]:
        if self._obs is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        return self._obs["conf"], self._obs["eligible"] > 0.5


class ThresholdActionWrapper(_ObservedActionWrapper):
    """Action ``Box(0, 1, (1,))``: commit every eligible position with ``conf >= threshold``.

    If no position passes, nothing is committed by the agent and the engine commits the single
    most confident eligible position (counted as a forced commit).

    Args:
        env: A token-commitment env with ``conf`` and ``eligible`` observation keys.

    Raises:
        ValueError: If the observation lacks ``conf`` or ``eligible``.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)

    def action(self, action: Any) -> np.ndarray:
        """Map a threshold to a commit mask.

        Args:
            action: Threshold in ``[0, 1]``, shape ``(1,)`` (or a scalar).

        Returns:
            int8 commit mask ``(G,)``.

        Raises:
            ValueError: If the threshold is not a finite number in ``[0, 1]``.
        """
        threshold = np.asarray(action, dtype=np.float64).reshape(-1)
        if threshold.size != 1 or not np.isfinite(threshold[0]) or not 0 <= threshold[0] <= 1:
            raise ValueError(f"threshold action must be one number in [0, 1], got {action!r}")
        conf, eligible = self._conf_eligible()
        return (eligible & (conf >= threshold[0])).astype(np.int8)


class CountActionWrapper(_ObservedActionWrapper):
    """Action ``Discrete(k_max)`` (or ``Box(0, 1, (1,))``): commit the n + 1 most confident.

    With the discrete space, action ``n`` commits the ``n + 1`` eligible positions of highest
    confidence (fewer if fewer are eligible). With ``continuous=True`` the action ``a`` in
    ``[0, 1]`` maps to ``n = round(a * (k_max - 1))``.

    Args:
        env: A token-commitment env with ``conf`` and ``eligible`` observation keys.
        k_max: Largest count (default G, the generation length).
        continuous: Use ``Box(0, 1, (1,))`` instead of ``Discrete(k_max)``.

    Raises:
        ValueError: If ``k_max < 1`` or the observation lacks ``conf`` or ``eligible``.
    """

    def __init__(self, env: gym.Env, k_max: int | None = None, *, continuous: bool = False) -> None:
        super().__init__(env)
        G = int(env.action_space.n)
        self.k_max = G if k_max is None else int(k_max)
        if self.k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {k_max}")
        self.continuous = continuous
        self.action_space = (
            gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
            if continuous
            else gym.spaces.Discrete(self.k_max)
        )

    def action(self, action: Any) -> np.ndarray:
        """Map a count to a commit mask.

        Args:
            action: An int in ``[0, k_max)`` (discrete) or a number in ``[0, 1]`` (continuous).

        Returns:
            int8 commit mask ``(G,)``.

        Raises:
            ValueError: If the action is outside the action space.
        """
        value = np.asarray(action).reshape(-1)
        if value.size != 1 or not np.isfinite(value.astype(np.float64)[0]):
            raise ValueError(f"count action must be one number, got {action!r}")
        if self.continuous:
            a = float(value[0])
            if not 0 <= a <= 1:
                raise ValueError(f"continuous count action must be in [0, 1], got {a}")
            n = round(a * (self.k_max - 1))
        else:
            if value.dtype.kind not in "iu" or not 0 <= int(value[0]) < self.k_max:
                raise ValueError(
                    f"count action must be an int in [0, {self.k_max}), got {action!r}"
                )
            n = int(value[0])
        conf, eligible = self._conf_eligible()
        score = np.where(eligible, conf, -1.0)
        top = np.argsort(-score, kind="stable")[: n + 1]
        mask = np.zeros(conf.shape, dtype=np.int8)
        mask[top[eligible[top]]] = 1
        return mask


class FeatureAblationWrapper(gym.ObservationWrapper):
    """Remove observation keys, named directly or by feature group.

    A group name (``confidence``, ``history``, ``position``, ``global``, ``hidden``) drops the
    keys of that group that the observation has, except ``eligible``, which the env always
    provides alongside ``valid`` and ``proposal``; name those keys explicitly to drop them.

    Args:
        env: A token-commitment env (flat ``Dict`` observation).
        drop: Group names and/or observation keys.

    Raises:
        ValueError: If a name is neither a group nor a key, or nothing would be left.
    """

    def __init__(self, env: gym.Env, drop: Sequence[str]) -> None:
        super().__init__(env)
        keys = set(env.observation_space.spaces)
        if isinstance(drop, str):
            drop = [drop]
        removed: set[str] = set()
        for name in drop:
            if name in _GROUP_KEYS:
                removed |= (_GROUP_KEYS[name] & keys) - {"eligible"}
            elif name in keys:
                removed.add(name)
            else:
                raise ValueError(
                    f"cannot drop {name!r}: not a feature group {list(FEATURE_GROUPS)} "
                    f"nor an observation key {sorted(keys)}"
                )
        kept = [k for k in env.observation_space.spaces if k not in removed]
        if not kept:
            raise ValueError("FeatureAblationWrapper would remove every observation key")
        self.dropped = tuple(sorted(removed))
        self.observation_space = gym.spaces.Dict({k: env.observation_space.spaces[k] for k in kept})

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return ``observation`` without the dropped keys.

        Args:
            observation: The wrapped env's observation.

        Returns:
            A new dict with the remaining keys.
        """
        return {k: v for k, v in observation.items() if k not in self.dropped}
