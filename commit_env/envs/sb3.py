"""Stable-Baselines3 ``VecEnv`` adapter over the batched slots engine.

SB3 does not consume Gymnasium vector envs, and its ``DummyVecEnv``/``SubprocVecEnv`` would mean N
single envs: N forwards per step (or N model copies). :class:`CommitSB3VecEnv` instead drives the
same :class:`~commit_env.envs.core.CommitSlots` as :class:`CommitVectorEnv`, with SB3's
conventions: ``reset()`` returns only observations, ``step_wait`` returns 4 values, and finished
slots reset in the same step with ``infos[i]["terminal_observation"]``. Wrap it in ``VecMonitor``
for ``rollout/ep_rew_mean``; MaskablePPO reads ``env_method("action_masks")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding

from commit_env.envs.core import CommitSlots, EnvConfig, resolve_config
from commit_env.errors import DependencyNotInstalled

try:
    from stable_baselines3.common.vec_env import VecEnv
except ImportError as e:  # pragma: no cover - SB3 is a core dependency; keep the hint anyway
    raise DependencyNotInstalled(
        'the SB3 adapter needs stable-baselines3: pip install "stable-baselines3>=2.4"'
    ) from e

__all__ = ["CommitSB3VecEnv", "batched_vec_env", "make_sb3_vec_env"]

VecEnvIndices = int | Sequence[int] | None


class CommitSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` of ``num_envs`` token-commitment slots sharing one batched decoder.

    Observations, rewards and final infos are those of :class:`commit_env.envs.CommitEnv`. A
    slot's seed for the next ``reset()`` comes from :meth:`seed` (``seed + i``, SB3's rule);
    without one, each slot keeps its own generator.

    Args:
        num_envs: B, number of slots.
        config: A ready :class:`EnvConfig`; keyword arguments override its fields.
        **kwargs: :class:`EnvConfig` fields.

    Raises:
        ValueError: On invalid settings or ``num_envs < 1``.
    """

    def __init__(self, num_envs: int = 8, config: EnvConfig | None = None, **kwargs: Any) -> None:
        self.config = config = resolve_config(config, kwargs)
        self.render_mode = None  # read through get_attr by VecEnv.__init__
        self._core: CommitSlots | None = CommitSlots(config, num_envs)
        self.gen_length = self._core.gen_length
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._actions: np.ndarray | None = None
        super().__init__(
            num_envs, self._core.single_observation_space, self._core.single_action_space
        )

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every slot (seeds from the last :meth:`seed` call, if any).

        Returns:
            Batched observations, key -> ``[num_envs, ...]``.
        """
        for i, s in enumerate(self._seeds):
            if s is not None or self._rngs[i] is None:
                self._rngs[i] = seeding.np_random(s)[0]
        core = self._open()
        rows = list(range(self.num_envs))
        core.start(rows, [core.draw_episode(self._rngs[i]) for i in rows])
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in rows]
        return core.observations()

    def step_async(self, actions: np.ndarray) -> None:
        """Store (and validate) the commit masks for :meth:`step_wait`.

        Args:
            actions: ``(num_envs, G)`` values in {0, 1} (``action_mode="mask"``), or one
                threshold / count per slot.

        Raises:
            ValueError: On a wrong shape, dtype or value.
        """
        self._actions = self._open().parse_actions(actions)

    def step_wait(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict]]:
        """Step all slots with one forward; reset finished slots in the same step.

        Returns:
            ``(observations, rewards, dones, infos)``; a finished slot's info holds its final
            stats, ``terminal_observation`` and ``TimeLimit.truncated = False``.

        Raises:
            RuntimeError: If :meth:`step_async` was not called first.
        """
        if self._actions is None:
            raise RuntimeError("step_async() must be called before step_wait()")
        core = self._open()
        actions, self._actions = self._actions, None
        rewards, dones, finals = core.step(actions)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            terminal = core.observations()  # views of this step's snapshot; start() copies it
            rows = np.flatnonzero(dones)
            for i in rows.tolist():
                infos[i] = finals[i]
                infos[i]["terminal_observation"] = {k: v[i] for k, v in terminal.items()}
                infos[i]["TimeLimit.truncated"] = False
            core.start(rows, [core.draw_episode(self._rngs[i]) for i in rows])
        return core.observations(), rewards.astype(np.float32), dones, infos

    def set_gen_lengths(self, lengths: Sequence[int]) -> None:
        """Generation lengths that later episodes draw from (see ``CommitSlots.set_gen_lengths``).

        Args:
            lengths: Lengths <= G.

        Raises:
            ValueError: On a length above G or one the window does not divide.
        """
        self._open().set_gen_lengths(lengths)

    def action_masks(self) -> np.ndarray:
        """MaskablePPO masks: bool ``(num_envs, 2 * G)``."""
        return self._open().action_masks()

    def close(self) -> None:
        """Release the decoder and the backbone reference (safe to call twice)."""
        if self._core is not None:
            self._core.close()
            self._core = None

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Return ``attr_name`` once per selected slot (slots share one adapter object).

        Args:
            attr_name: Attribute name.
            indices: Slots (default all).

        Returns:
            One value per slot.

        Raises:
            AttributeError: If the attribute does not exist.
        """
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the adapter (shared by every slot).

        Args:
            attr_name: Attribute name.
            value: New value.
            indices: Must select every slot (attributes are not per slot).

        Raises:
            ValueError: If ``indices`` selects only some slots.
        """
        if len(self._get_indices(indices)) != self.num_envs:
            raise ValueError("slots share one adapter; set_attr must target every slot")
        setattr(self, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Call a per-slot method.

        ``"action_masks"`` returns each slot's ``(2 * G,)`` mask; ``"render"`` each slot's text
        canvas; any other adapter method is called once and its result repeated per slot.

        Args:
            method_name: Method name.
            *method_args: Positional arguments.
            indices: Slots (default all).
            **method_kwargs: Keyword arguments.

        Returns:
            One result per selected slot.
        """
        index = self._get_indices(indices)
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in index]
        if method_name == "render":
            core = self._open()
            return [core.render_row(i) for i in index]
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result for _ in index]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """No slot is a wrapped ``gym.Env`` (the adapter has no per-slot envs).

        Args:
            wrapper_class: Ignored.
            indices: Slots (default all).

        Returns:
            ``False`` per selected slot.
        """
        return [False for _ in self._get_indices(indices)]

    def _open(self) -> CommitSlots:
        if self._core is None:
            raise gym.error.ClosedEnvironmentError("the environment is closed")
        return self._core


def make_sb3_vec_env(
    num_envs: int = 8, *, seed: int | None = None, config: EnvConfig | None = None, **kwargs: Any
) -> CommitSB3VecEnv:
    """Build the SB3 ``VecEnv`` over one batched decoder.

    Args:
        num_envs: Number of slots.
        seed: Seeds slot ``i`` with ``seed + i`` at the first ``reset()``.
        config: A ready :class:`EnvConfig`; keyword arguments override its fields.
        **kwargs: :class:`EnvConfig` fields (``task``, ``backbone``, ``gen_length``, ...).

    Returns:
        The adapter (wrap it in ``VecMonitor`` for episode statistics).

    Raises:
        ValueError: On invalid settings.

    Example:
        >>> from stable_baselines3.common.vec_env import VecMonitor  # doctest: +SKIP
        >>> venv = VecMonitor(make_sb3_vec_env(8, seed=0, task="qa"))  # doctest: +SKIP
    """
    venv = CommitSB3VecEnv(num_envs, config, **kwargs)
    if seed is not None:
        venv.seed(seed)
    return venv


def batched_vec_env(venv: Any) -> Any:
    """Replace a ``DummyVecEnv`` of single token-commitment envs by one batched adapter.

    For tools that can only build ``n`` single envs (RL Baselines3 Zoo's ``make_vec_env``): the
    single envs run one backbone forward each per step, the adapter one forward for all. Use it
    as the Zoo's ``vec_env_wrapper`` (``vec_env_wrapper: commit_env.envs.sb3.batched_vec_env``
    in the hyperparameter file). The config is read from the first env, the single envs are
    closed, the seeds the caller set (``venv.seed``) carry over, and the result is wrapped in
    ``VecMonitor`` (the single envs' ``Monitor`` files are no longer written).

    Args:
        venv: A ``DummyVecEnv`` (or anything with ``envs``) of ``CommitEnv`` instances.

    Returns:
        ``VecMonitor(CommitSB3VecEnv(venv.num_envs, config))``.

    Raises:
        TypeError: If the envs are not token-commitment envs.
    """
    from stable_baselines3.common.vec_env import VecMonitor

    envs = getattr(venv, "envs", None)
    config = getattr(getattr(envs[0], "unwrapped", None), "config", None) if envs else None
    if not isinstance(config, EnvConfig):
        raise TypeError(
            f"batched_vec_env needs a DummyVecEnv of commit_env envs, got {type(venv).__name__}"
        )
    seeds = list(getattr(venv, "_seeds", []) or [])
    batched = CommitSB3VecEnv(venv.num_envs, config)
    venv.close()
    if seeds and seeds[0] is not None:
        batched.seed(int(seeds[0]))
    return VecMonitor(batched, info_keywords=("is_success",))
