"""Fast-dLLM confidence-threshold and factor rules.

Reference: NVlabs/Fast-dLLM ``llada/generate.py`` (threshold parallel decoding; factor rule added
2025-07); arXiv 2505.22618.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from commit_env.decoding.state import TraceState
from commit_env.policies.base import CommitPolicy, rank_within_eligible

__all__ = ["ThresholdPolicy", "FactorPolicy"]


@dataclass
class ThresholdPolicy(CommitPolicy):
    """Commit every eligible position with confidence >= ``threshold``, and always the top-1.

    Args:
        threshold: tau (Fast-dLLM default 0.9).

    Raises:
        ValueError: If ``threshold`` is outside ``[0, 1]``.
    """

    name: ClassVar[str] = "threshold"
    threshold: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")

    def select(self, state: TraceState) -> torch.Tensor:
        """Threshold rule; see :class:`CommitPolicy`."""
        top1 = rank_within_eligible(state.confidence, state.eligible) == 0
        return state.eligible & ((state.confidence >= self.threshold) | top1)


@dataclass
class FactorPolicy(CommitPolicy):
    """Fast-dLLM factor rule: the longest confidence-sorted prefix with ``(r+1)(1-c_(r)) <= f``.

    With eligible confidences sorted descending ``c_(1) >= c_(2) >= ...``, rank r passes when
    ``(r + 1) * (1 - c_(r)) <= factor``; the step commits the longest prefix of passing ranks
    (rank 1 always), a union-bound argument that the product of marginals stays close to the joint.

    Args:
        factor: f (Fast-dLLM ships no default; 1.0 here).

    Raises:
        ValueError: If ``factor`` is not positive.
    """

    name: ClassVar[str] = "factor"
    factor: float = 1.0

    def __post_init__(self) -> None:
        if self.factor <= 0:
            raise ValueError(f"factor must be > 0, got {self.factor}")

    def select(self, state: TraceState) -> torch.Tensor:
        """Factor rule; see :class:`CommitPolicy`."""
        ranks = rank_within_eligible(state.confidence, state.eligible)  # [B, G] 0-based
        passes = (ranks + 2).float() * (1.0 - state.confidence) <= self.factor  # 1-based r + 1
        passes |= ranks == 0
        passes &= state.eligible
        # Longest passing prefix: the first failing rank bounds it.
        G = ranks.shape[1]
        fail_rank = torch.where(passes | ~state.eligible, G, ranks).min(-1).values  # [B]
        return state.eligible & (ranks < fail_rank[:, None])
