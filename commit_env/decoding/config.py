"""Decode configuration."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["DecodeConfig", "WindowKind", "parse_window"]

WindowKind = Literal["block", "sliding", "full"]


def parse_window(spec: str) -> tuple[WindowKind, int | None]:
    """Parse ``"block:B"``, ``"sliding:W"`` or ``"full"``.

    Args:
        spec: The window string.

    Returns:
        ``(kind, width)``; ``width`` is ``None`` for ``"full"``.

    Raises:
        ValueError: On an unknown kind or a missing/non-positive width.
    """
    kind, _, width = spec.partition(":")
    if kind == "full" and not width:
        return "full", None
    if kind not in ("block", "sliding") or not width.isdigit() or int(width) < 1:
        raise ValueError(
            f"bad window {spec!r}; expected 'block:B', 'sliding:W' (B, W positive ints) or 'full'"
        )
    return kind, int(width)  # type: ignore[return-value]


@dataclass(frozen=True)
class DecodeConfig:
    """How the decode engine runs.

    Attributes:
        gen_length: G, masked positions after the prompt.
        window: ``"full"``, ``"block:B"`` (fixed blocks of width B; the next block opens as soon as
            the current one is fully committed) or ``"sliding:W"`` (W positions from the first
            masked one). Only masked positions inside the window are *eligible*.
        step_budget: Maximum forward passes per row (NFE). When a row has used them all, its next
            step fills every remaining mask from the current proposals (counted in
            ``budget_fills``). ``None``: no limit (at most G forwards are ever needed).
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
    """

    gen_length: int = 16
    window: str = "full"
    step_budget: int | None = None
    eos_stop: bool = True
    temperature: float = 0.0
    seed: int = 0
    top_k: int = 3
    history: int = 2
    hidden_features: int = 0
    record_trace: bool = False
    window_kind: WindowKind = field(init=False)
    window_width: int = field(init=False)

    def __post_init__(self) -> None:
        if self.gen_length < 1:
            raise ValueError(f"gen_length must be >= 1, got {self.gen_length}")
        kind, width = parse_window(self.window)
        width = self.gen_length if width is None else width
        if kind == "block" and self.gen_length % width:
            raise ValueError(
                f"block width {width} must divide gen_length {self.gen_length} "
                f"(e.g. window='block:{_largest_divisor_at_most(self.gen_length, width)}')"
            )
        if width > self.gen_length:
            warnings.warn(
                f"window width {width} exceeds gen_length {self.gen_length}; "
                f"using {self.gen_length}",
                stacklevel=2,
            )
            width = self.gen_length
        object.__setattr__(self, "window_kind", kind)
        object.__setattr__(self, "window_width", width)
        if self.step_budget is not None and self.step_budget < 1:
            raise ValueError(f"step_budget must be >= 1 or None, got {self.step_budget}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 2:
            raise ValueError(f"top_k must be >= 2 (margin needs two), got {self.top_k}")
        if self.history < 1:
            raise ValueError(f"history must be >= 1, got {self.history}")
        if self.hidden_features < 0:
            raise ValueError(f"hidden_features must be >= 0, got {self.hidden_features}")

    @property
    def budget(self) -> int:
        """The effective step budget (``gen_length`` when unlimited: enough for one per step)."""
        return self.gen_length if self.step_budget is None else self.step_budget


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)
