"""Prophet: early all-in commit on the top-2 logit gap.

Reference: pixeli99/Prophet ``generate_earlyexit.py``; arXiv 2508.19982. Prophet measures the mean
top-1 minus top-2 *raw logit* gap over an answer span and, once it clears a threshold that falls
with progress (7.5 / 5.0 / 2.5 below 33% / 67% / above), fills every remaining mask in the same
step.
Without answer-format constraints the span here is the first ``span`` still-masked positions
(Prophet's span length, 5, by default; ``None`` = every masked position). Averaging over every
masked position instead lets a confident EOS tail trigger the exit on the first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from commit_env.decoding.state import CommitDecision, TraceState
from commit_env.policies.base import CommitPolicy, top_k_mask
from commit_env.policies.topk import even_schedule_k

__all__ = ["ProphetPolicy"]


@dataclass
class ProphetPolicy(CommitPolicy):
    """Top-k low-confidence schedule with an early all-in exit.

    Args:
        high: Gap threshold while progress < ``early``.
        mid: Gap threshold while progress < ``late``.
        low: Gap threshold afterwards.
        early: First progress boundary (progress = NFE / step budget).
        late: Second progress boundary.
        span: Masked positions (leftmost first) whose gaps are averaged (Prophet: 5); ``None`` =
            all masked positions.
        k: Positions per step before the exit (``0`` = LLaDA's even schedule over the budget).

    Raises:
        ValueError: On inconsistent thresholds or boundaries.
    """

    name: ClassVar[str] = "prophet"
    high: float = 7.5
    mid: float = 5.0
    low: float = 2.5
    early: float = 0.33
    late: float = 0.67
    span: int | None = 5
    k: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.early <= self.late <= 1.0:
            raise ValueError(f"need 0 <= early <= late <= 1, got {self.early}, {self.late}")
        if self.span is not None and self.span < 1:
            raise ValueError(f"span must be >= 1 or None, got {self.span}")
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")

    def select(self, state: TraceState) -> CommitDecision:
        """Base schedule plus all-in rows; see :class:`CommitPolicy`."""
        masked = state.masked  # [B, G]
        if self.span is not None:
            order = masked.long().cumsum(-1)  # [B, G] 1-based index among masked positions
            masked = masked & (order <= self.span)
        count = masked.sum(-1).clamp(min=1)  # [B]
        gap = (state.logit_gap * masked).sum(-1) / count  # [B] mean top-2 logit gap
        progress = state.nfe.float() / state.budget  # [B]
        threshold = torch.where(
            progress < self.early,
            torch.full_like(progress, self.high),
            torch.where(progress < self.late, self.mid, self.low),
        )
        exit_rows = (gap >= threshold) & masked.any(-1)
        k = even_schedule_k(state) if self.k == 0 else self.k
        return CommitDecision(top_k_mask(state.confidence, state.eligible, k), exit_rows)
