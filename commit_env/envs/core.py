"""The batched slots engine behind every environment front end.

:class:`CommitSlots` owns one :class:`~commit_env.decoding.Decoder` and one batched
:class:`~commit_env.decoding.TraceState` with B rows ("slots"), and coordinates small pieces:
:class:`~commit_env.envs.observation.ObservationLayout` (observation keys, columns, bounds,
snapshots), :func:`draw_episode` (per-episode settings and examples), :func:`final_reward`,
task scoring through :func:`~commit_env.evaluate.score_completions` and
:func:`~commit_env.envs.render.render_row`. The single env (:class:`CommitEnv`, B = 1), the native
vector env (:class:`CommitVectorEnv`, B = ``num_envs``) and the SB3 adapter
(:class:`CommitSB3VecEnv`) differ only in *when* they reset slots and how they package the results,
so none of them decodes or scores anything by itself.

One :meth:`CommitSlots.step` is one :meth:`Decoder.step` (one backbone forward over the unfinished
slots) plus one device-to-host copy: observation features, accounting and generated tokens are
packed by the layout into a single float32 ``[B, W]`` tensor on the device ("snapshot") and copied
once.

Dimensions follow :mod:`commit_env.decoding`: B slots, G canvas generation length (the largest
generation length of any setting), K top-k columns, D hidden-projection width.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

from commit_env.backbones.base import Backbone
from commit_env.backbones.spec import BackboneSpec, resolve_backbone
from commit_env.decoding import DecodeConfig, Decoder, parse_window, validate_setting
from commit_env.decoding.batching import replace_rows
from commit_env.decoding.config import DEFAULT_TOP_K, validate_engine_options
from commit_env.decoding.run import completion_text
from commit_env.decoding.state import CommitDecision, TraceState
from commit_env.envs.actions import action_space, actions_to_mask, check_action_mode
from commit_env.envs.observation import (
    ACCOUNTS,
    DEFAULT_FEATURES,
    OBSERVATION_GROUPS,
    ObservationLayout,
)
from commit_env.envs.render import render_row
from commit_env.envs.threads import configure_threads
from commit_env.evaluate import score_completions
from commit_env.tasks.base import Example, Task
from commit_env.tasks.registry import get_task

__all__ = [
    "DEFAULT_FEATURES",
    "RewardKind",
    "EnvConfig",
    "Episode",
    "CommitSlots",
    "draw_episode",
    "final_reward",
    "resolve_config",
    "validate_actions",
    "validate_remask_actions",
]

RewardKind = Literal["score", "score_x_efficiency"]
_SETTING_KEYS = ("gen_length", "window", "step_budget")


@dataclass(frozen=True)
class EnvConfig:
    """Settings shared by :class:`CommitEnv`, :class:`CommitVectorEnv` and the SB3 adapter.

    Attributes:
        task: Task name for :func:`commit_env.tasks.get_task` (``"qa"``, ``"math:hard"``, ...) or
            a :class:`~commit_env.tasks.Task` instance.
        backbone: Backbone spec string or :class:`~commit_env.backbones.spec.BackboneSpec`
            (loaded through the shared cache while alive) or a loaded backbone (then the caller
            owns it).
        gen_length: Generation length G; ``None`` uses the task's ``default_gen_length``.
        window: ``"full"``, ``"block:B"`` or ``"sliding:W"``.
        step_budget: Maximum forwards (= steps) per episode; ``None`` means the row's G.
        step_cost: lambda, the reward subtracted at every step.
        reward: ``"score"`` (final bonus = task score) or ``"score_x_efficiency"`` (final bonus =
            score * (1 - (nfe - 1) / budget)).
        features: Feature groups of :class:`~commit_env.decoding.FeatureBuilder` in the
            observation (``"hidden"`` adds the projected hidden state of width ``hidden_dim``).
        settings: Optional per-episode lists ``{"gen_length": [...], "window": [...],
            "step_budget": [...]}``; each episode draws one value of every list uniformly from the
            env's generator. A listed key replaces the scalar argument of the same name.
        hidden_dim: D, width of the hidden-state projection (used with the ``"hidden"`` group).
        top_k: K, top-k probabilities per position (``topk`` has G * K entries).
        temperature: 0 for greedy proposals; > 0 samples them (seeded per episode).
        success_threshold: ``is_success`` is ``task_score >= success_threshold``.
        eos_stop: Finish a row once a committed EOS has every earlier position committed.
        device: Backbone device (default CUDA when available) when ``backbone`` is a spec.
        action_mode: ``"mask"`` (``MultiBinary(G)``, the default), ``"threshold"``
            (``Box(-1, 1, (1,))`` mapped to a confidence threshold) or ``"count"``
            (``Discrete(G)``); see :mod:`commit_env.envs.actions`.
        shaping: c >= 0, weight of the potential-based shaping term (0 = off, the default).
            With potential ``Phi(s) = c * committed fraction`` (``Phi = 0`` at terminal states)
            every step adds ``F = shaping_gamma * Phi(s') - Phi(s)``. Ng, Harada & Russell (1999)
            show such terms leave the optimal policies unchanged; with ``shaping_gamma = 1`` the
            terms of an episode sum to exactly 0, so every episode's return is unchanged and only
            the credit of intermediate steps moves (progress is paid when it is made).
        shaping_gamma: The discount of the shaping term (set it to the learner's gamma).
        num_threads: Torch threads (``None``: ``COMMIT_ENV_NUM_THREADS`` or 1 for a small CPU
            backbone; 0: leave torch alone); see :mod:`commit_env.envs.threads`.
        remask_cap: Per-position remask limit of the engine; ``> 0`` makes the action
            ``MultiDiscrete([3] * G)`` (0 keep, 1 commit, 2 remask) and adds the ``remaskable``
            observation key. ``None`` = 0 for ``TokenCommit-v0`` and 2 for ``TokenCommit-v1``.
    """

    task: str | Task = "qa"
    backbone: str | BackboneSpec | Backbone = "tiny"
    gen_length: int | None = None
    window: str = "full"
    step_budget: int | None = None
    step_cost: float = 0.01
    reward: RewardKind = "score"
    features: Sequence[str] = DEFAULT_FEATURES
    settings: Mapping[str, Sequence[Any]] | None = None
    hidden_dim: int = 8
    top_k: int = DEFAULT_TOP_K
    temperature: float = 0.0
    success_threshold: float = 1.0
    eos_stop: bool = True
    device: str | None = None
    action_mode: str = "mask"
    shaping: float = 0.0
    shaping_gamma: float = 1.0
    num_threads: int | None = None
    remask_cap: int | None = None
    _lists: dict[str, tuple[Any, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        unknown = sorted(set(self.features) - set(OBSERVATION_GROUPS))
        if unknown:
            raise ValueError(
                f"unknown feature groups {unknown}; expected {list(OBSERVATION_GROUPS)}"
            )
        check_action_mode(self.action_mode)
        if not (math.isfinite(self.shaping) and self.shaping >= 0):
            raise ValueError(f"shaping must be a finite number >= 0, got {self.shaping}")
        if not 0 < self.shaping_gamma <= 1:
            raise ValueError(f"shaping_gamma must be in (0, 1], got {self.shaping_gamma}")
        if self.reward not in ("score", "score_x_efficiency"):
            raise ValueError(f"reward must be 'score' or 'score_x_efficiency', got {self.reward!r}")
        if not (math.isfinite(self.step_cost) and self.step_cost >= 0):
            raise ValueError(f"step_cost must be a finite number >= 0, got {self.step_cost}")
        if "hidden" in self.features and self.hidden_dim < 1:
            raise ValueError("the 'hidden' feature group needs hidden_dim >= 1")
        validate_engine_options(temperature=self.temperature, top_k=self.top_k)
        cap = self.remask_cap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ValueError(f"remask_cap must be None or an int >= 0, got {cap!r}")
        if cap and self.action_mode != "mask":
            raise ValueError(
                f"action_mode {self.action_mode!r} cannot remask (remask_cap={cap}); "
                "use action_mode='mask' with TokenCommit-v1"
            )
        settings = dict(self.settings or {})
        extra = sorted(set(settings) - set(_SETTING_KEYS))
        if extra:
            raise ValueError(f"unknown settings keys {extra}; expected a subset of {_SETTING_KEYS}")
        lists: dict[str, tuple[Any, ...]] = {}
        for key in _SETTING_KEYS:
            values = settings.get(key, [getattr(self, key)])
            if isinstance(values, str | int) or values is None or len(values) == 0:
                raise ValueError(f"settings[{key!r}] must be a non-empty list, got {values!r}")
            lists[key] = tuple(values)
        for g in lists["gen_length"]:
            if g is not None:
                validate_setting(g, "full")
        for b in lists["step_budget"]:
            validate_setting(1, "full", b)
        for w in lists["window"]:
            parse_window(w)  # raises ValueError with the accepted forms
        object.__setattr__(self, "_lists", lists)

    def decode_config(self, gen_length: int, **setting: Any) -> DecodeConfig:
        """The engine config of this env's decoder (or of a decode that mirrors it).

        Args:
            gen_length: G, the canvas width.
            **setting: ``window`` / ``step_budget`` (default: the engine's defaults, since the
                env passes them per row).

        Returns:
            The decode config with the env's engine options and hidden width.
        """
        return DecodeConfig(
            gen_length=gen_length,
            eos_stop=self.eos_stop,
            temperature=self.temperature,
            top_k=self.top_k,
            hidden_features=self.hidden_dim if "hidden" in self.features else 0,
            remask_cap=self.remask_cap or 0,
            **setting,
        )

    def setting_lists(self, default_gen_length: int) -> dict[str, tuple[Any, ...]]:
        """The per-episode choices, with ``gen_length=None`` resolved to the task's default.

        Args:
            default_gen_length: The task's ``default_gen_length``.

        Returns:
            ``{"gen_length": (...), "window": (...), "step_budget": (...)}``.

        Raises:
            ValueError: If a block window does not divide some generation length.
        """
        lists = dict(self._lists)
        lists["gen_length"] = tuple(
            default_gen_length if g is None else int(g) for g in lists["gen_length"]
        )
        for g in lists["gen_length"]:
            for w in lists["window"]:
                try:
                    validate_setting(g, w)
                except ValueError as err:
                    raise ValueError(
                        f"window {w!r} does not divide gen_length {g}; every combination of "
                        f"settings must be valid ({err})"
                    ) from None
        return lists


@dataclass(frozen=True)
class Episode:
    """What one episode of one slot decodes (drawn by :meth:`CommitSlots.draw_episode`).

    Attributes:
        example: The task example (prompt, reference, scorer data).
        gen_length: The row's generation length (<= G).
        window: The row's window spec.
        step_budget: The row's step budget, ``None`` for unlimited.
        seed: Seed of the row's proposal sampler (used when ``temperature > 0``).
    """

    example: Example
    gen_length: int
    window: str
    step_budget: int | None
    seed: int

    @property
    def budget(self) -> int:
        """The most steps the episode can take (the generation length when unlimited)."""
        return self.gen_length if self.step_budget is None else self.step_budget


def draw_episode(
    settings: Mapping[str, Sequence[Any]], task: Task, rng: np.random.Generator
) -> Episode:
    """Draw the settings, example and sampler seed of one episode, in that order.

    The draw order is fixed so that a slot of the vector env and a single env seeded alike
    see the same episodes.

    Args:
        settings: The per-episode choices (:meth:`EnvConfig.setting_lists`).
        task: The task examples are sampled from.
        rng: The slot's generator (``env.np_random`` for the single env).

    Returns:
        The episode.
    """
    gen_length = int(settings["gen_length"][int(rng.integers(len(settings["gen_length"])))])
    window = str(settings["window"][int(rng.integers(len(settings["window"])))])
    budget = settings["step_budget"][int(rng.integers(len(settings["step_budget"])))]
    example = task.sample(rng)
    seed = int(rng.integers(2**31 - 1))
    return Episode(
        example=example,
        gen_length=gen_length,
        window=window,
        step_budget=None if budget is None else int(budget),
        seed=seed,
    )


def final_reward(kind: RewardKind, score: float, nfe: int, budget: int) -> float:
    """The bonus of a finished episode.

    Args:
        kind: ``"score"`` (the task score) or ``"score_x_efficiency"``
            (``score * (1 - (nfe - 1) / budget)``).
        score: The task score.
        nfe: Forwards the episode used.
        budget: Its step budget.

    Returns:
        The final reward (before the last step's cost).
    """
    if kind == "score_x_efficiency":
        return score * (1.0 - (nfe - 1) / budget)
    return score


def resolve_config(config: EnvConfig | None, overrides: Mapping[str, Any]) -> EnvConfig:
    """Build the config of an env from a ready config and/or keyword arguments.

    ``gym.make`` passes plain keyword arguments; a ready :class:`EnvConfig` plus overrides
    (applied with :func:`dataclasses.replace`) is the typed path.

    Args:
        config: A ready config, or ``None``.
        overrides: :class:`EnvConfig` fields.

    Returns:
        The config.

    Raises:
        TypeError: On an unknown field name.
        ValueError: On invalid settings.
    """
    if config is None:
        return EnvConfig(**overrides)
    return dataclasses.replace(config, **overrides) if overrides else config


def validate_actions(actions: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Check a commit mask and return it as a bool array.

    Accepted: a numpy array or nested list of the given shape, of bool, integer or float dtype,
    whose values are exactly 0 or 1. Floats are accepted because SB3's Bernoulli distribution
    samples MultiBinary actions as float tensors.

    Args:
        actions: The action.
        shape: The expected shape, ``(G,)`` or ``(B, G)``.

    Returns:
        bool array of ``shape``.

    Raises:
        ValueError: On a wrong shape, a non-numeric dtype or a value other than 0 or 1.
    """
    try:
        arr = np.asarray(actions)
    except (ValueError, TypeError) as e:
        raise ValueError(f"action must be an array of shape {shape} with 0/1 values: {e}") from e
    if arr.shape != shape:
        raise ValueError(
            f"action has shape {arr.shape}; expected {shape} (a MultiBinary commit mask)"
        )
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "iuf":
        raise ValueError(
            f"action has dtype {arr.dtype}; expected bool, integer or float values in {{0, 1}}"
        )
    if not np.all((arr == 0) | (arr == 1)):
        bad = arr[(arr != 0) & (arr != 1)].ravel()[:3]
        raise ValueError(f"action values must be 0 or 1, got {bad.tolist()} (shape {shape})")
    return arr != 0


def validate_remask_actions(actions: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Check a keep / commit / remask action and return it as an int8 array.

    Accepted: an array or nested list of the given shape, of integer or float dtype (or bool,
    which can only say keep/commit), with values exactly 0 (keep), 1 (commit) or 2 (remask).

    Args:
        actions: The action.
        shape: The expected shape, ``(G,)`` or ``(B, G)``.

    Returns:
        int8 array of ``shape``.

    Raises:
        ValueError: On a wrong shape, a non-numeric dtype or a value outside {0, 1, 2}.
    """
    try:
        arr = np.asarray(actions)
    except (ValueError, TypeError) as e:
        raise ValueError(f"action must be an array of shape {shape} with 0/1/2 values: {e}") from e
    if arr.shape != shape:
        raise ValueError(
            f"action has shape {arr.shape}; expected {shape} (MultiDiscrete: 0 keep, 1 commit, "
            "2 remask)"
        )
    if arr.dtype == np.bool_:
        return arr.astype(np.int8)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"action has dtype {arr.dtype}; expected integer values in {{0, 1, 2}}")
    ok = (arr == 0) | (arr == 1) | (arr == 2)
    if not np.all(ok):
        bad = arr[~ok].ravel()[:3]
        raise ValueError(f"action values must be 0, 1 or 2, got {bad.tolist()} (shape {shape})")
    return arr.astype(np.int8)


class CommitSlots:
    """B decode slots in one batched trace state, with observation and reward code.

    Args:
        config: The environment settings.
        num_slots: B.

    Raises:
        ValueError: On invalid settings (see :class:`EnvConfig`) or ``num_slots < 1``.
    """

    def __init__(self, config: EnvConfig, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.config = config
        self.num_slots = num_slots
        self.task: Task = get_task(config.task) if isinstance(config.task, str) else config.task
        self.settings = config.setting_lists(self.task.default_gen_length)
        self.gen_length = G = max(self.settings["gen_length"])
        self.revocable = bool(config.remask_cap)
        self.backbone: Backbone | None = resolve_backbone(config.backbone, device=config.device)
        self.decoder: Decoder | None = Decoder(self.backbone, config.decode_config(G))
        self.device = self.decoder.device
        self.num_threads = configure_threads(config.num_threads, self.backbone, self.device)
        self.layout = ObservationLayout(
            config.features,
            top_k=config.top_k,
            hidden_dim=config.hidden_dim,
            gen_length=G,
            vocab_size=self.backbone.vocab_size,
            device=self.device,
            remask=self.revocable,
        )
        self.obs_keys = self.layout.keys
        self.state: TraceState | None = None
        self.episodes: list[Episode | None] = [None] * num_slots
        self.single_observation_space = self.layout.space()
        self.action_mode = config.action_mode
        self.single_action_space: gym.spaces.Space[Any] = (
            gym.spaces.MultiDiscrete([3] * G)
            if self.revocable
            else action_space(config.action_mode, G)
        )
        self._snap: np.ndarray | None = None  # float32 [B, W], latest host snapshot

    # ----------------------------------------------------------------------------- actions
    def set_gen_lengths(self, lengths: Sequence[int]) -> None:
        """Change the generation lengths later episodes draw from (a length curriculum).

        Args:
            lengths: Non-empty lengths, each <= the padded width G and valid with every window.

        Raises:
            ValueError: On an empty list, a length above G or one a block window does not divide.
        """
        lengths = tuple(int(g) for g in lengths)
        if not lengths or any(g < 1 or g > self.gen_length for g in lengths):
            raise ValueError(
                f"curriculum lengths must be a non-empty list of ints in [1, {self.gen_length}], "
                f"got {list(lengths)}"
            )
        for g in lengths:
            for w in self.settings["window"]:
                try:
                    validate_setting(g, w)
                except ValueError as err:
                    raise ValueError(f"length {g} does not fit window {w!r}: {err}") from None
        self.settings = {**self.settings, "gen_length": lengths}

    def _potential(self) -> np.ndarray:
        """``Phi = shaping * committed fraction`` of every slot (0 for finished slots)."""
        st = self.state
        assert st is not None
        frac = (st.committed & st.valid).sum(-1).float() / st.gen_len.clamp(min=1).float()
        phi = self.config.shaping * frac.masked_fill(st.done, 0.0)  # terminal potential 0
        return phi.cpu().numpy().astype(np.float64)

    # ----------------------------------------------------------------------------- episodes
    def draw_episode(self, rng: np.random.Generator) -> Episode:
        """Draw one episode from the slot's generator (see :func:`draw_episode`)."""
        return draw_episode(self.settings, self.task, rng)

    def start(
        self, rows: Sequence[int], episodes: Sequence[Episode], *, forward: bool = True
    ) -> None:
        """Start ``episodes`` in slots ``rows`` with one :meth:`Decoder.start` (one forward).

        Args:
            rows: Distinct slot indices.
            episodes: One episode per row.
            forward: Run the new rows' first forward now. ``False`` admits them without it: the
                next :meth:`step` runs it inside its single batched forward (and gives them
                reward 0); their observation is valid only after that step.

        Raises:
            ValueError: If a prompt does not fit the backbone's maximum length.
        """
        decoder = self._require_open()
        rows = [int(r) for r in rows]
        fresh = decoder.start(
            [ep.example.prompt for ep in episodes],
            seeds=[ep.seed for ep in episodes],
            row_ids=rows,
            gen_lengths=[ep.gen_length for ep in episodes],
            windows=[ep.window for ep in episodes],
            # Revocable episodes always get a budget (G when unlimited): remasking could otherwise
            # take up to G * (1 + remask_cap) steps, and the env promises at most the budget.
            budgets=[ep.budget if self.revocable else ep.step_budget for ep in episodes],
            forward=forward,
        )
        fresh_snap = self._snapshot(fresh)
        if rows == list(range(self.num_slots)):
            # A full reset takes the fresh state as is (its prompt width may also shrink).
            self.state, self._snap = fresh, fresh_snap
        elif self.state is None:
            raise ValueError(f"the first start must fill slots 0..{self.num_slots - 1} in order")
        else:
            replace_rows(self.state, rows, fresh, pad_token_id=self.backbone.pad_token_id)
            # A copy, not an in-place patch: earlier observations are views of the old snapshot.
            snap = self._snap.copy()
            snap[rows] = fresh_snap
            self._snap = snap
        for r, ep in zip(rows, episodes, strict=True):
            self.episodes[r] = ep

    # ----------------------------------------------------------------------------- step
    def parse_actions(self, actions: Any, *, single: bool = False) -> np.ndarray:
        """Validate a batch of actions in any action mode; the one entry point of every front end.

        Args:
            actions: ``"mask"`` mode: ``[B, G]`` 0/1 commit masks (``MultiBinary``), or
                keep/commit/remask codes 0/1/2 when revocable (``MultiDiscrete([3] * G)``);
                ``"threshold"`` / ``"count"`` mode: ``B`` thresholds / counts.
            single: The actions of a one-slot env without the batch axis (``[G]`` or one value).

        Returns:
            ``[B, G]`` bool commit masks, or int8 codes (revocable).

        Raises:
            ValueError: On a wrong shape, dtype or value.
        """
        B, G = self.num_slots, self.gen_length
        if single and B != 1:
            raise ValueError(f"single=True needs one slot, this engine has {B}")
        if self.action_mode != "mask":
            assert self.state is not None, "start() before step()"
            mask = actions_to_mask(
                self.action_mode, actions, self.state.confidence, self.state.eligible
            )
            return mask.cpu().numpy()
        shape = (G,) if single else (B, G)
        if self.revocable:
            parsed = validate_remask_actions(actions, shape)
        else:
            parsed = validate_actions(actions, shape)
        return parsed[None, :] if single else parsed

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, dict[str, Any]]]:
        """Commit ``actions`` in every unfinished slot with one :meth:`Decoder.step`.

        Slots that were already finished before the call are left alone (reward 0).

        Args:
            actions: bool array ``[B, G]``, or int8 codes (0 keep, 1 commit, 2 remask) when
                revocable (already validated by :meth:`parse_actions`).

        Returns:
            ``(rewards, finished, final_infos)``: float64 ``[B]`` rewards, bool ``[B]`` slots
            whose episode ended in this step, and the final info dict of each of those slots.
        """
        decoder = self._require_open()
        assert self.state is not None and self._snap is not None, "start() before step()"
        was_done = self.column("done")[:, 0] > 0.5  # [B]
        admitted = self.column("nfe")[:, 0] < 0.5  # [B] started with forward=False: no reward yet
        shaping = self.config.shaping > 0
        phi_before = self._potential() if shaping else None
        codes = torch.from_numpy(np.ascontiguousarray(actions)).to(self.device, non_blocking=True)
        if self.revocable:
            decoder.step(self.state, CommitDecision(codes == 1, remask=codes == 2))
        else:
            decoder.step(self.state, codes)
        self._snap = self._snapshot(self.state)
        done = self.column("done")[:, 0] > 0.5
        finished = done & ~was_done
        rewards = np.where(was_done | admitted, 0.0, -self.config.step_cost)
        if shaping:
            # F = gamma * Phi(s') - Phi(s); admitted rows have no previous state
            shaped = self.config.shaping_gamma * self._potential() - phi_before
            rewards = rewards + np.where(was_done | admitted, 0.0, shaped)
        infos: dict[int, dict[str, Any]] = {}
        if finished.any():
            rows = np.flatnonzero(finished)
            finals, infos = self._finish(rows)
            rewards[rows] += finals
        return rewards, finished, infos

    def _finish(self, rows: np.ndarray) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
        """Score finished slots (batched) and build their final rewards and infos."""
        tokens = torch.from_numpy(self.column("tokens")[rows].astype(np.int64))  # [b, G]
        texts = completion_text(self.backbone, tokens)
        examples = [self.episodes[r].example for r in rows]
        scores = score_completions(self.task, examples, texts)
        acc = {name: self.column(name)[rows, 0].astype(np.int64) for name in ACCOUNTS[1:]}
        finals = np.empty(len(rows))
        infos: dict[int, dict[str, Any]] = {}
        for j, r in enumerate(rows.tolist()):
            score, nfe, budget = float(scores[j]), int(acc["nfe"][j]), int(acc["budget"][j])
            finals[j] = final_reward(self.config.reward, score, nfe, budget)
            infos[r] = {
                "is_success": bool(score >= self.config.success_threshold),
                "task_score": score,
                "nfe": nfe,
                "forced_commits": int(acc["forced_commits"][j]),
                "steps": int(acc["step"][j]),
                "budget": budget,
                "budget_fills": int(acc["budget_fills"][j]),
                "gen_length": int(acc["gen_len"][j]),
                "completion": texts[j],
            }
            if self.revocable:
                infos[r]["remasks"] = int(acc["remasks"][j])
                infos[r]["remask_ignored"] = int(acc["remask_ignored"][j])
        return finals, infos

    # ----------------------------------------------------------------------------- observations
    def _snapshot(self, state: TraceState) -> np.ndarray:
        """Pack observations, accounting and tokens of every row into float32 ``[B, W]`` (host)."""
        return self.layout.pack(state)

    def column(self, name: str) -> np.ndarray:
        """Columns of the latest snapshot for key or accounting field ``name`` (``[B, n]``)."""
        assert self._snap is not None, "no snapshot yet"
        return self.layout.column(self._snap, name)

    def observations(self) -> dict[str, np.ndarray]:
        """The observation of every slot, batched: key -> ``[B, ...]`` (fresh arrays per step).

        Returns:
            float32 arrays (``proposal`` int32), views of the latest snapshot.
        """
        assert self._snap is not None, "no snapshot yet"
        return self.layout.observation(self._snap)

    def action_masks(self) -> np.ndarray:
        """MaskablePPO masks of every slot: bool ``[B, 2G]``, ``[allow 0, allow 1]`` per position.

        Committing is allowed only at eligible positions; not committing is always allowed.
        Revocable: ``[B, 3G]``, ``[allow keep, allow commit, allow remask]`` per position
        (remask only at ``remaskable`` positions).
        """
        eligible = self.column("eligible") > 0.5  # [B, G]
        if self.revocable:
            masks = np.ones((self.num_slots, 3 * self.gen_length), dtype=bool)
            masks[:, 1::3] = eligible
            masks[:, 2::3] = self.column("remaskable") > 0.5
            return masks
        masks = np.ones((self.num_slots, 2 * self.gen_length), dtype=bool)
        masks[:, 1::2] = eligible
        return masks

    # ----------------------------------------------------------------------------- render
    def render_row(self, row: int) -> str:
        """Text picture of slot ``row`` (see :func:`commit_env.envs.render.render_row`).

        Args:
            row: Slot index.

        Returns:
            A multi-line string.
        """
        self._require_open()
        assert self.state is not None, "start() before render"
        ep = self.episodes[row]
        prompt = ep.example.prompt if ep is not None else ""
        return render_row(self.state, row, self.backbone, prompt)

    # ----------------------------------------------------------------------------- lifecycle
    def _require_open(self) -> Decoder:
        if self.decoder is None:
            raise gym.error.ClosedEnvironmentError("the environment is closed")
        return self.decoder

    def close(self) -> None:
        """Drop the decoder, state and backbone references (the backbone cache is weak)."""
        self.decoder = None
        self.backbone = None
        self.state = None
