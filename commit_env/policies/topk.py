"""Fixed top-k commitment (LLaDA low-confidence / random, Dream margin / entropy).

Reference: ML-GSAI/LLaDA ``generate.py`` (``low_confidence``, ``random``, even transfer schedule);
HKUNLP/Dream ``generation_utils.py`` (``maskgit_plus``, ``topk_margin``, ``entropy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from commit_env.decoding.state import TraceState
from commit_env.policies.base import CommitPolicy, top_k_mask

__all__ = ["TopKPolicy", "even_schedule_k"]


def even_schedule_k(state: TraceState) -> torch.Tensor:
    """Per-row count that spreads the remaining masks evenly over the remaining budget.

    With ``n`` masks left and ``s = budget - nfe + 1`` commit steps left (this one included), the
    step commits ``ceil(n / s)`` - LLaDA's linear schedule, computed per row so block windows that
    finish early do not leave forward passes idle.

    Args:
        state: The trace state.

    Returns:
        int64 ``[B]``.
    """
    remaining = state.masked.sum(-1)  # [B]
    steps_left = (state.budget - state.nfe + 1).clamp(min=1)  # [B]
    return torch.div(remaining + steps_left - 1, steps_left, rounding_mode="floor").clamp(min=1)


@dataclass
class TopKPolicy(CommitPolicy):
    """Commit the k best eligible positions per step.

    Args:
        score: Ranking signal: ``confidence`` (LLaDA low-confidence / Dream maskgit_plus),
            ``margin`` (Dream topk_margin), ``entropy`` (Dream, lowest entropy first) or
            ``random`` (LLaDA random remasking).
        k: Positions per step for ``schedule="fixed"``.
        schedule: ``fixed`` (k per step) or ``even`` (LLaDA's even split of the masks over the
            step budget).
        seed: Seed of the ``random`` score.

    Raises:
        ValueError: On an unknown score/schedule or ``k < 1``.
    """

    name: ClassVar[str] = "topk"
    score: Literal["confidence", "margin", "entropy", "random"] = "confidence"
    k: int = 1
    schedule: Literal["fixed", "even"] = "fixed"
    seed: int = 0
    _generator: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.score not in ("confidence", "margin", "entropy", "random"):
            raise ValueError(f"unknown score {self.score!r}")
        if self.schedule not in ("fixed", "even"):
            raise ValueError(f"unknown schedule {self.schedule!r}; expected 'fixed' or 'even'")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def reset(self, state: TraceState) -> None:
        """Reseed the ``random`` score so every decode with the same seed is identical."""
        if self.score == "random":
            self._generator = torch.Generator(device=state.canvas.device).manual_seed(self.seed)

    def _scores(self, state: TraceState) -> torch.Tensor:
        if self.score == "confidence":
            return state.confidence
        if self.score == "margin":
            return state.margin
        if self.score == "entropy":
            return -state.entropy
        if self._generator is None:
            self.reset(state)
        return torch.rand(
            state.confidence.shape, generator=self._generator, device=state.canvas.device
        )

    def select(self, state: TraceState) -> torch.Tensor:
        """Top-k eligible positions by the chosen score; see :class:`CommitPolicy`."""
        k = even_schedule_k(state) if self.schedule == "even" else self.k
        return top_k_mask(self._scores(state), state.eligible, k)
