"""Decode settings: the one setting type, its one validation function and the engine config.

:class:`DecodeSetting` (generation length G, window, step budget) is the setting every config of
the project nests or is (:class:`DecodeConfig` extends it with engine options); its
:func:`validate_setting` is the only place that checks a setting ("block width divides G" etc.).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_TOP_K",
    "TRAINING_SETTING",
    "DecodeConfig",
    "DecodeSetting",
    "KV_CACHE_MODES",
    "KVCacheMode",
    "WindowKind",
    "parse_window",
    "validate_engine_options",
    "validate_setting",
]

WindowKind = Literal["block", "sliding", "full"]
KVCacheMode = Literal["none", "prefix", "dual"]
#: The engine's KV-cache modes (see :class:`DecodeConfig`).
KV_CACHE_MODES: tuple[str, ...] = ("none", "prefix", "dual")

#: K, top-k probabilities per position kept by the features (recorded in trace/checkpoint meta).
DEFAULT_TOP_K = 3


def parse_window(spec: str) -> tuple[WindowKind, int | None]:
    """Parse ``"block:B"``, ``"sliding:W"`` or ``"full"``.

    Args:
        spec: The window string.

    Returns:
        ``(kind, width)``; ``width`` is ``None`` for ``"full"``.

    Raises:
        ValueError: On an unknown kind or a missing/non-positive width.
    """
    if not isinstance(spec, str):
        raise ValueError(f"window must be a string 'block:B', 'sliding:W' or 'full', got {spec!r}")
    kind, _, width = spec.partition(":")
    if kind == "full" and not width:
        return "full", None
    if kind not in ("block", "sliding") or not width.isdigit() or int(width) < 1:
        raise ValueError(
            f"bad window {spec!r}; expected 'block:B', 'sliding:W' (B, W positive ints) or 'full'"
        )
    return kind, int(width)  # type: ignore[return-value]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_setting(
    gen_length: Any, window: Any, step_budget: Any = None
) -> tuple[WindowKind, int]:
    """Check one decode setting; the only place these rules live.

    Args:
        gen_length: G, must be an int >= 1.
        window: ``"full"``, ``"block:B"`` or ``"sliding:W"``; a block width (clamped to G) must
            divide G.
        step_budget: ``None`` (unlimited) or an int >= 1.

    Returns:
        ``(kind, width)``: the window kind and its effective width (clamped to G).

    Raises:
        ValueError: One line naming the bad value and the valid range.
    """
    if not _is_int(gen_length) or gen_length < 1:
        raise ValueError(f"gen_length must be an int >= 1, got {gen_length!r}")
    kind, width = parse_window(window)
    G = int(gen_length)
    width = G if width is None else min(width, G)
    if kind == "block" and G % width:
        raise ValueError(
            f"block width {width} must divide gen_length {G} "
            f"(e.g. window='block:{_largest_divisor_at_most(G, width)}')"
        )
    if step_budget is not None and (not _is_int(step_budget) or step_budget < 1):
        raise ValueError(f"step_budget must be an int >= 1 or None, got {step_budget!r}")
    return kind, width


@dataclass(frozen=True)
class DecodeSetting:
    """One decode setting: generation length, window and step budget (validated on creation).

    Every config that decodes nests one (training configs default to :data:`TRAINING_SETTING`);
    :class:`DecodeConfig` *is* one, extended with engine options.

    Attributes:
        gen_length: G, masked positions after the prompt.
        window: ``"full"``, ``"block:B"`` (fixed blocks of width B; the next block opens as soon as
            the current one is fully committed) or ``"sliding:W"`` (W positions from the first
            masked one). Only masked positions inside the window are *eligible*.
        step_budget: Maximum forward passes per row (NFE). When a row has used them all, its next
            step fills every remaining mask from the current proposals (counted in
            ``budget_fills``). ``None``: no limit (at most G forwards are ever needed).
        window_kind: Parsed window kind (derived).
        window_width: Effective window width, clamped to G (derived).
    """

    gen_length: int = 16
    window: str = "full"
    step_budget: int | None = None
    window_kind: WindowKind = field(init=False, repr=False, compare=False)
    window_width: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kind, width = validate_setting(self.gen_length, self.window, self.step_budget)
        raw = parse_window(self.window)[1]
        if raw is not None and raw > self.gen_length:
            warnings.warn(
                f"window width {raw} exceeds gen_length {self.gen_length}; using {self.gen_length}",
                stacklevel=3,
            )
        object.__setattr__(self, "window_kind", kind)
        object.__setattr__(self, "window_width", width)

    @property
    def budget(self) -> int:
        """The effective step budget (``gen_length`` when unlimited: enough for one per step)."""
        return self.gen_length if self.step_budget is None else self.step_budget

    @property
    def label(self) -> str:
        """``G=16 block:4 S=8`` (``S=-`` when unlimited)."""
        return f"G={self.gen_length} {self.window} S={self.step_budget or '-'}"

    @property
    def setting(self) -> DecodeSetting:
        """The plain setting (drops the engine options of a :class:`DecodeConfig`)."""
        return DecodeSetting(self.gen_length, self.window, self.step_budget)

    def config(self, **options: Any) -> DecodeConfig:
        """A :class:`DecodeConfig` of this setting.

        Args:
            **options: Engine options (:class:`DecodeConfig` fields beyond the setting).

        Returns:
            The decode configuration.
        """
        return DecodeConfig(
            gen_length=self.gen_length,
            window=self.window,
            step_budget=self.step_budget,
            **options,
        )


#: The setting trainers and collection default to (G = 16, blocks of 4, no budget).
TRAINING_SETTING = DecodeSetting(gen_length=16, window="block:4")


@dataclass(frozen=True)
class DecodeConfig(DecodeSetting):
    """How the decode engine runs: a :class:`DecodeSetting` plus engine options.

    Attributes:
        eos_stop: Once an EOS is committed and everything before it is committed, finish the row
            and fill the tail with EOS without further forwards (counted in
            ``filled_without_forward``).
        temperature: 0 for greedy proposals; > 0 samples proposals from ``softmax(logits / T)``
            with Gumbel noise drawn from per-row generators seeded from ``seed``.
        seed: Seed of the proposal sampler (rows get ``seed + row index`` unless seeds are given).
        top_k: K, how many top probabilities the features keep per position.
        history: H, how many past KL values per position the trace state keeps.
        hidden_features: D, width of the random projection of the backbone's last hidden state
            kept as a feature (0 = no hidden features, no hidden states requested).
        record_trace: Keep per-step proposals/confidences/commits for plots (costs memory).
        kv_cache: ``"none"`` (every forward runs the whole canvas), ``"prefix"`` (Fast-dLLM
            prefix cache: keys/values of everything before the current block are cached at the
            block's first forward and reused; the block and everything after it are recomputed
            each step) or ``"dual"`` (Fast-dLLM dual cache: the suffix after the block is cached
            too, only the block is recomputed). A row refreshes its cache (one full forward) at
            each block start and whenever a cached token changed. Needs a block window
            (``"full"`` counts as one block of G) and a backbone with ``forward_cached``.
        remask_cap: How many times one generation position may be remasked (committed ->
            masked again, see :class:`~commit_env.decoding.state.CommitDecision`'s ``remask``).
            0 (the default) turns remasking off: the engine then behaves exactly as before
            remasking existed, and a decision that asks for a remask raises ``ValueError``.
            With a cap c and no step budget a row finishes within ``g * (1 + c)`` steps.
    """

    eos_stop: bool = True
    temperature: float = 0.0
    seed: int = 0
    top_k: int = DEFAULT_TOP_K
    history: int = 2
    hidden_features: int = 0
    record_trace: bool = False
    kv_cache: KVCacheMode = "none"
    remask_cap: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_engine_options(
            temperature=self.temperature,
            top_k=self.top_k,
            history=self.history,
            hidden_features=self.hidden_features,
            kv_cache=self.kv_cache,
            window=self.window,
        )
        if not _is_int(self.remask_cap) or self.remask_cap < 0:
            raise ValueError(
                f"remask_cap must be an int >= 0 (0 = remasking off), got {self.remask_cap!r}"
            )


def validate_engine_options(
    *,
    temperature: Any = 0.0,
    top_k: Any = DEFAULT_TOP_K,
    history: Any = 1,
    hidden_features: Any = 0,
    kv_cache: Any = "none",
    window: Any = None,
) -> None:
    """Check the engine options shared by :class:`DecodeConfig` and the env config.

    Args:
        temperature: Proposal temperature, finite and >= 0.
        top_k: K >= 2.
        history: H >= 1.
        hidden_features: D >= 0.
        kv_cache: One of :data:`KV_CACHE_MODES`.
        window: The window spec the options run with (a KV cache needs ``"block:B"`` or
            ``"full"``); ``None`` skips that check (per-row windows are checked by the engine).

    Raises:
        ValueError: One line naming the bad value and the valid range.
    """
    if not isinstance(temperature, numbers.Real) or not (
        math.isfinite(temperature) and temperature >= 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not _is_int(top_k) or top_k < 2:
        raise ValueError(f"top_k must be an int >= 2 (margin needs two), got {top_k!r}")
    if not _is_int(history) or history < 1:
        raise ValueError(f"history must be an int >= 1, got {history!r}")
    if not _is_int(hidden_features) or hidden_features < 0:
        raise ValueError(f"hidden_features must be an int >= 0, got {hidden_features!r}")
    if kv_cache not in KV_CACHE_MODES:
        raise ValueError(f"kv_cache must be one of {', '.join(KV_CACHE_MODES)}, got {kv_cache!r}")
    if kv_cache != "none" and window is not None and parse_window(window)[0] == "sliding":
        raise ValueError(
            f"kv_cache={kv_cache!r} needs a block window ('block:B' or 'full'), got {window!r}"
        )


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)
