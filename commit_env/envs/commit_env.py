"""Token commitment as a Gymnasium environment: the single env and the native vector env.

Both classes are thin front ends of :class:`commit_env.envs.core.CommitSlots` (B = 1 and
B = ``num_envs``), which drives the one batched :class:`~commit_env.decoding.Decoder`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from commit_env.envs.core import CommitSlots, EnvConfig, resolve_config

__all__ = ["CommitEnv", "CommitVectorEnv", "RevocableCommitEnv", "RevocableCommitVectorEnv"]

#: The per-position remask limit ``TokenCommit-v1`` uses unless ``remask_cap`` is given.
DEFAULT_REMASK_CAP = 2

_RENDER_MODES = ["ansi"]


class CommitEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    r"""Decide which proposed tokens a frozen masked diffusion LM commits at each step.

    An episode decodes one task prompt. After every backbone forward the canvas holds a proposal
    for each still-masked generation position; the agent picks which of them to lock. The
    episode ends when every position is committed (or a committed EOS closes the answer); the
    completion is then scored by the task's own verifier.

    ## Action Space

    ``MultiBinary(G)``: bit ``i`` = 1 commits the current proposal at generation position ``i``.
    Bits at positions that are not *eligible* (already committed, outside the decode window, or
    padding beyond the episode's generation length) are ignored. If no eligible bit is set, the
    engine commits the single most confident eligible position (counted in ``forced_commits``),
    so every step makes progress. Accepted values: bool/int/float arrays of shape ``(G,)`` with
    values exactly 0 or 1; anything else raises ``ValueError``. :meth:`action_masks` gives the
    ``2 * G`` booleans ``[allow 0, allow 1]`` per position that sb3-contrib's MaskablePPO expects.

    ## Observation Space

    A flat ``Dict`` of 1-D ``Box`` es (keys sorted). G is the largest generation length of any
    setting; positions beyond the episode's own length are padding and read 0. K = ``top_k``,
    D = ``hidden_dim``. Groups in brackets appear only when selected in ``features``.

    | Key | Shape | Dtype | Range | Meaning |
    |-----|-------|-------|-------|---------|
    | conf | (G,) | float32 | [0, 1] | probability of the proposal [confidence] |
    | margin | (G,) | float32 | [0, 1] | top-1 minus top-2 probability [confidence] |
    | entropy_norm | (G,) | float32 | [0, 1] | entropy / log V [confidence] |
    | topk | (G*K,) | float32 | [0, 1] | K largest probabilities, position-major [confidence] |
    | stable | (G,) | float32 | [0, 1] | forwards with an unchanged proposal / 8 [history] |
    | prev_conf | (G,) | float32 | [0, 1] | previous step's confidence [history] |
    | kl | (G,) | float32 | [0, 1] | 1 - exp(-KL(p_t, p_t-1)) [history] |
    | masked | (G,) | float32 | [0, 1] | 1 if not committed yet [position] |
    | gen_pos | (G,) | float32 | [0, 1] | index / (generation length - 1) [position] |
    | window_pos | (G,) | float32 | [-1, 2] | (index - window start) / window width [position] |
    | progress | (1,) | float32 | [0, 1] | NFE / step budget [global] |
    | masked_frac | (1,) | float32 | [0, 1] | fraction of positions still masked [global] |
    | window_frac | (1,) | float32 | [0, 1] | window width / generation length [global] |
    | hidden | (G*D,) | float32 | [-5, 5] | projected last hidden state [hidden] |
    | eligible | (G,) | float32 | {0, 1} | masked, inside the window (always present) |
    | valid | (G,) | float32 | {0, 1} | inside the episode's generation length (always) |
    | proposal | (G,) | int32 | [0, V-1] | proposed token id (always present) |

    ## Rewards

    ``-step_cost`` at every step, plus a final bonus on the last step: the task score in
    ``[0, 1]`` (``reward="score"``), or ``score * (1 - (nfe - 1) / budget)``
    (``reward="score_x_efficiency"``: full credit for a one-forward decode, 1/budget less for
    each further forward). So the return is ``bonus - step_cost * steps``.

    ## Starting State

    ``reset`` draws the episode's generation length, window and budget (from ``settings``), then
    a task example, then the proposal-sampler seed, all from ``self.np_random``; it builds the
    masked canvas after the prompt and runs the first backbone forward (NFE 1).

    ## Episode End

    * Termination: every generation position is committed (or a committed EOS has every earlier
      position committed). The step budget is enforced inside the env: the step after the
      budget's last forward fills all remaining masks from the current proposals, so an episode
      terminates after at most ``step_budget`` steps.
    * Truncation: never (``truncated`` is always ``False``).

    The final ``info`` holds ``is_success``, ``task_score``, ``nfe``, ``forced_commits``,
    ``steps``, ``budget``, ``budget_fills``, ``gen_length`` and ``completion``.

    ## Arguments

    | Argument | Default | Meaning |
    |----------|---------|---------|
    | task | ``"qa"`` | task name (``get_task``) or a ``Task`` |
    | backbone | ``"tiny"`` | backbone spec (shared while alive) or a loaded backbone |
    | gen_length | ``None`` | G; ``None`` = the task's default |
    | window | ``"full"`` | ``"full"``, ``"block:B"`` or ``"sliding:W"`` |
    | step_budget | ``None`` | max steps (forwards); ``None`` = the generation length |
    | step_cost | ``0.01`` | lambda, reward subtracted per step |
    | reward | ``"score"`` | ``"score"`` or ``"score_x_efficiency"`` |
    | features | confidence, history, position, global | + ``"hidden"``, ``"conflict"`` |
    | settings | ``None`` | per-episode lists of ``gen_length`` / ``window`` / ``step_budget`` |
    | hidden_dim | ``8`` | D, hidden projection width (with ``"hidden"``) |
    | top_k | ``3`` | K, top-k probabilities per position |
    | temperature | ``0.0`` | 0 = greedy proposals, > 0 = sampled (seeded per episode) |
    | success_threshold | ``1.0`` | ``is_success = task_score >= threshold`` |
    | eos_stop | ``True`` | finish at a committed EOS |
    | device | ``None`` | backbone device (default CUDA when available) |
    | action_mode | ``"mask"`` | ``"mask"``, or (v0 only) ``"threshold"`` (Box) or ``"count"`` |
    | shaping | ``0.0`` | weight of the potential-based shaping term (0 = off) |
    | shaping_gamma | ``1.0`` | discount of the shaping term (the learner's gamma) |
    | num_threads | ``None`` | torch threads (``None``: 1 for a small CPU backbone) |
    | render_mode | ``None`` | ``None`` or ``"ansi"`` |

    ## Version History

    * v0: initial version.

    Example:
        >>> import gymnasium as gym
        >>> import commit_env
        >>> env = gym.make("commit_env/TokenCommit-v0", task="qa", backbone="tiny", gen_length=8)
        >>> obs, info = env.reset(seed=0)
        >>> obs["conf"].shape, obs["proposal"].dtype, env.action_space
        ((8,), dtype('int32'), MultiBinary(8))
        >>> terminated = False
        >>> while not terminated:
        ...     obs, reward, terminated, truncated, info = env.step(obs["eligible"] > 0.5)
        >>> sorted(info)[:3], truncated
        (['budget', 'budget_fills', 'completion'], False)
        >>> env.close()

    Args:
        config: A ready :class:`EnvConfig`; keyword arguments override its fields.
        render_mode: ``None`` or ``"ansi"``.
        **kwargs: :class:`EnvConfig` fields (the table above).

    Raises:
        ValueError: On invalid settings.
        TypeError: On an unknown keyword argument.
    """

    metadata = {"render_modes": _RENDER_MODES, "render_fps": 4}
    _REVOCABLE = False

    def __init__(
        self, config: EnvConfig | None = None, *, render_mode: str | None = None, **kwargs: Any
    ) -> None:
        if render_mode is not None and render_mode not in _RENDER_MODES:
            raise ValueError(
                f"render_mode must be None or one of {_RENDER_MODES}, got {render_mode!r}"
            )
        self.config = _revocable_config(resolve_config(config, kwargs), self._REVOCABLE)
        self.render_mode = render_mode
        self._core: CommitSlots | None = CommitSlots(self.config, 1)
        self.gen_length = self._core.gen_length
        self.observation_space = self._core.single_observation_space
        self.action_space = self._core.single_action_space
        self._needs_reset = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a new episode.

        Args:
            seed: Seeds ``self.np_random`` (Gymnasium rules: the same seed gives the same episode).
            options: Unused.

        Returns:
            The first observation and an empty info dict.
        """
        super().reset(seed=seed)
        core = self._open()
        core.start([0], [core.draw_episode(self.np_random)])
        self._needs_reset = False
        return _row(core.observations(), 0), {}

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Commit the masked positions selected by ``action`` and run one backbone forward.

        Args:
            action: Commit mask of shape ``(G,)`` with values in {0, 1}.

        Returns:
            ``(observation, reward, terminated, truncated, info)``; ``truncated`` is always False.

        Raises:
            ValueError: If ``action`` has the wrong shape, dtype or values.
            gymnasium.error.ResetNeeded: If the episode has terminated (or never started).
        """
        core = self._open()
        if self._needs_reset:
            raise gym.error.ResetNeeded("call reset() before step() (the episode has ended)")
        mask = core.parse_actions(action, single=True)  # [1, G], any action mode
        rewards, finished, infos = core.step(mask)
        terminated = bool(finished[0])
        self._needs_reset = terminated
        return _row(core.observations(), 0), float(rewards[0]), terminated, False, infos.get(0, {})

    def action_masks(self) -> np.ndarray:
        """MaskablePPO action mask: bool ``(2 * G,)``, ``[allow 0, allow 1]`` per position."""
        return self._open().action_masks()[0]

    def render(self) -> str | None:
        """Return the canvas as text when ``render_mode == "ansi"`` (else ``None``).

        ``?`` marks eligible masked positions, ``_`` masked ones outside the window, ``[x]`` the
        tokens committed by the latest step and ``.`` padding.
        """
        if self.render_mode != "ansi":
            return None
        return self._open().render_row(0)

    def close(self) -> None:
        """Release the decoder and the backbone reference (safe to call twice)."""
        if self._core is not None:
            self._core.close()
            self._core = None
        super().close()

    def _open(self) -> CommitSlots:
        if self._core is None:
            raise gym.error.ClosedEnvironmentError("the environment is closed")
        return self._core


def _revocable_config(config: EnvConfig, revocable: bool) -> EnvConfig:
    """Resolve ``remask_cap``: v0 must not remask, v1 must (default :data:`DEFAULT_REMASK_CAP`)."""
    cap = config.remask_cap
    if not revocable:
        if cap:
            raise ValueError(
                f"TokenCommit-v0 cannot remask (remask_cap={cap}); use commit_env/TokenCommit-v1"
            )
        return config
    if cap is None:
        return dataclasses.replace(config, remask_cap=DEFAULT_REMASK_CAP)
    if cap < 1:
        raise ValueError(f"TokenCommit-v1 needs remask_cap >= 1, got {cap}")
    return config


class RevocableCommitEnv(CommitEnv):
    """``commit_env/TokenCommit-v1``: :class:`CommitEnv` whose action can also take commits back.

    ## Action Space
    ``MultiDiscrete([3] * G)``, one code per generation position: ``0`` keep (do nothing), ``1``
    commit the current proposal (as v0's bit), ``2`` remask: a committed position turns back into
    ``[MASK]`` in the same step and is proposed again by the step's forward. A remask code takes
    effect only at *remaskable* positions (committed before this step, inside the decode window,
    remasked fewer than ``remask_cap`` times, not during the budget's final fill); anywhere else
    (a masked, out-of-window or padding position) it is ignored and counted, never an error. The
    progress guarantee still commits one position when no commit code is eligible, the step
    budget still ends every episode within ``step_budget`` steps, and without a budget the cap
    bounds an episode to ``G * (1 + remask_cap)`` steps. Values other than 0/1/2 or a wrong shape
    raise ``ValueError``. :meth:`action_masks` gives ``3 * G`` booleans
    ``[allow keep, allow commit, allow remask]`` per position.

    ## Observation Space
    v0's keys plus ``remaskable`` ``(G,)`` float32 in {0, 1}.

    ## Info
    The final ``info`` adds ``remasks`` (positions remasked = tokens re-decoded) and
    ``remask_ignored`` (remask codes that took no effect).

    ## Arguments
    v0's, plus ``remask_cap`` (default 2): how many times one position may be remasked.
    """

    _REVOCABLE = True


def _row(batch: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {key: value[i] for key, value in batch.items()}


class CommitVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` token-commitment slots stepped with one batched backbone forward.

    Slot ``i`` behaves exactly like a :class:`CommitEnv` reset with ``seed + i`` (its own
    generator draws its episodes), but every slot lives in one batched trace state, so one step
    is one :meth:`Decoder.step` over all unfinished slots, and slots that reset together share
    one :meth:`Decoder.start`. Spaces are ``batch_space`` of the single env's spaces: the action
    is ``MultiBinary((num_envs, G))``.

    Autoreset follows Gymnasium's default ``NEXT_STEP`` mode: the step after a slot terminates
    ignores its action, resets it and returns its first observation with reward 0.

    Args:
        num_envs: B, number of slots.
        config: A ready :class:`EnvConfig`; keyword arguments override its fields.
        render_mode: ``None`` or ``"ansi"`` (``render`` returns one string per slot).
        **kwargs: :class:`EnvConfig` fields (see :class:`CommitEnv`).

    Raises:
        ValueError: On invalid settings or ``num_envs < 1``.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": _RENDER_MODES}
    _REVOCABLE = False

    def __init__(
        self,
        num_envs: int = 8,
        config: EnvConfig | None = None,
        *,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        if render_mode is not None and render_mode not in _RENDER_MODES:
            raise ValueError(
                f"render_mode must be None or one of {_RENDER_MODES}, got {render_mode!r}"
            )
        self.config = _revocable_config(resolve_config(config, kwargs), self._REVOCABLE)
        self.render_mode = render_mode
        self.num_envs = num_envs
        self._core: CommitSlots | None = CommitSlots(self.config, num_envs)
        self.gen_length = self._core.gen_length
        self.single_observation_space = self._core.single_observation_space
        self.single_action_space = self._core.single_action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._started = False

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every slot.

        Args:
            seed: An int seeds slot ``i`` with ``seed + i``; a list gives one seed (or ``None``)
                per slot; ``None`` keeps the slots' generators (fresh entropy the first time).
            options: Unused.

        Returns:
            Batched observations and an empty info dict.

        Raises:
            ValueError: If a seed list does not have ``num_envs`` entries.
        """
        if isinstance(seed, int | np.integer):
            super().reset(seed=int(seed))
            seeds: list[int | None] = [int(seed) + i for i in range(self.num_envs)]
        elif seed is None:
            seeds = [None] * self.num_envs
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} environments")
        for i, s in enumerate(seeds):
            if s is not None or self._rngs[i] is None:
                self._rngs[i] = seeding.np_random(s)[0]
        core = self._open()
        rows = list(range(self.num_envs))
        core.start(rows, [core.draw_episode(self._rngs[i]) for i in rows])
        self._autoreset[:] = False
        self._started = True
        return core.observations(), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every slot with one backbone forward (slots that ended last step reset instead).

        Args:
            actions: Commit masks of shape ``(num_envs, G)`` with values in {0, 1}.

        Returns:
            ``(observations, rewards, terminations, truncations, infos)``; final infos use
            Gymnasium's vector convention (``infos[key]`` arrays with ``infos["_" + key]`` masks).

        Raises:
            ValueError: If ``actions`` has the wrong shape, dtype or values.
            gymnasium.error.ResetNeeded: If ``reset`` was never called.
        """
        core = self._open()
        if not self._started:
            raise gym.error.ResetNeeded("call reset() before step()")
        # before admitting resets: their actions are ignored
        mask = core.parse_actions(actions)
        resetting = np.flatnonzero(self._autoreset)
        if resetting.size:
            # Admit the new episodes without a forward: the step's one batched forward serves
            # the running slots and the resetting ones together.
            episodes = [core.draw_episode(self._rngs[i]) for i in resetting]
            core.start(resetting, episodes, forward=False)
        rewards, finished, finals = core.step(mask)  # finished slots are skipped by the engine
        infos: dict[str, Any] = {}
        for i, info in finals.items():
            infos = self._add_info(infos, info, i)
        self._autoreset = finished.copy()
        truncated = np.zeros(self.num_envs, dtype=bool)
        return core.observations(), rewards, finished, truncated, infos

    def action_masks(self) -> np.ndarray:
        """MaskablePPO masks of every slot: bool ``(num_envs, 2 * G)``."""
        return self._open().action_masks()

    def render(self) -> tuple[str, ...] | None:
        """One text canvas per slot when ``render_mode == "ansi"`` (see ``CommitEnv.render``)."""
        if self.render_mode != "ansi":
            return None
        core = self._open()
        return tuple(core.render_row(i) for i in range(self.num_envs))

    def close_extras(self, **kwargs: Any) -> None:
        """Release the decoder and the backbone reference."""
        if self._core is not None:
            self._core.close()
            self._core = None

    def _open(self) -> CommitSlots:
        if self._core is None:
            raise gym.error.ClosedEnvironmentError("the environment is closed")
        return self._core


class RevocableCommitVectorEnv(CommitVectorEnv):
    """Vector env of ``commit_env/TokenCommit-v1`` (see :class:`RevocableCommitEnv`).

    Actions are ``MultiDiscrete`` codes of shape ``(num_envs, G)``: 0 keep, 1 commit, 2 remask.
    """

    _REVOCABLE = True
