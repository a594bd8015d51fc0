"""EB-Sampler: the entropy-bounded prefix.

Reference: Ben-Hamu et al., "Accelerated Sampling from Masked Diffusion Models via Entropy Bounded
Unmasking", arXiv 2505.24857 (reimplemented in diffusers ``EntropyBoundScheduler``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from commit_env.decoding.state import TraceState
from commit_env.policies.base import CommitPolicy, rank_within_eligible

__all__ = ["EntropyBoundPolicy"]


@dataclass
class EntropyBoundPolicy(CommitPolicy):
    """Commit the largest entropy-bounded prefix of positions ordered by an error proxy.

    The prefix U is the largest with ``sum_{i in U} H_i - max_{i in U} H_i <= gamma`` (entropies
    in nats). The left side never decreases as U grows, so the accepted set is a prefix; it always
    holds the first position.

    Args:
        gamma: The entropy budget (diffusers' default 0.1).
        order: Error proxy that orders positions: ``confidence`` (descending), ``margin``
            (descending) or ``entropy`` (ascending).

    Raises:
        ValueError: On a negative ``gamma`` or unknown ``order``.
    """

    name: ClassVar[str] = "eb"
    gamma: float = 0.1
    order: Literal["confidence", "margin", "entropy"] = "confidence"

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        if self.order not in ("confidence", "margin", "entropy"):
            raise ValueError(f"unknown order {self.order!r}")

    def select(self, state: TraceState) -> torch.Tensor:
        """Entropy-bounded prefix; see :class:`CommitPolicy`."""
        key = {"confidence": state.confidence, "margin": state.margin, "entropy": -state.entropy}
        ranks = rank_within_eligible(key[self.order], state.eligible)  # [B, G]
        order = ranks.argsort(dim=-1)  # [B, G] positions in rank order
        nats = state.entropy * math.log(state.vocab_size)  # [B, G]
        sorted_h = nats.gather(1, order).masked_fill(~state.eligible.gather(1, order), 0.0)
        excess = sorted_h.cumsum(-1) - sorted_h.cummax(-1).values  # [B, G] by prefix length
        accept_sorted = excess <= self.gamma
        accept_sorted[:, 0] = True
        accept = torch.zeros_like(accept_sorted).scatter_(1, order, accept_sorted)
        return accept & state.eligible
