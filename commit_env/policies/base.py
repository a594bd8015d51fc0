"""The commitment-policy protocol and the vectorized helpers policies share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import torch

from commit_env.decoding.config import DecodeConfig
from commit_env.decoding.state import CommitDecision, TraceState

__all__ = ["CommitPolicy", "top_k_mask", "rank_within_eligible"]


@dataclass
class CommitPolicy(ABC):
    """Decides which eligible proposals to commit at each step.

    Subclasses are dataclasses whose fields are the policy's published parameters (with their
    published defaults); ``__post_init__`` validates them. ``select`` must be batched: tensor ops
    over ``[B, G]``, no Python loops over positions.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def select(self, state: TraceState) -> torch.Tensor | CommitDecision:
        """Choose positions to commit.

        Args:
            state: The current trace state (B rows, G positions).

        Returns:
            bool tensor ``[B, G]`` (bits outside ``state.eligible`` are ignored by the engine), or
            a :class:`CommitDecision` that can also send rows "all-in".
        """

    def reset(self, state: TraceState) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called once with the first state of every decode (before any :meth:`select`)."""

    def decode_options(self) -> dict[str, Any]:
        """Engine options this policy needs (e.g. the hidden width a learned policy reads).

        Returns:
            :class:`DecodeConfig` fields to force; ``{}`` for policies that read only the
            standard features (every heuristic).
        """
        return {}

    def decode_config(self, base: DecodeConfig | None = None, **overrides: Any) -> DecodeConfig:
        """The decode config to run this policy with, adapted from ``base``.

        The one default for every policy: ``base=None`` means ``DecodeConfig()``. A learned
        policy's training setting is not implied; pass it explicitly (e.g.
        ``policy.decode_config(policy.setting.config())`` for a PPO agent).

        Args:
            base: The setting and options to start from (default ``DecodeConfig()``).
            **overrides: :class:`DecodeConfig` fields to change.

        Returns:
            ``base`` with :meth:`decode_options` and ``overrides`` applied (``base`` itself when
            there is nothing to change).
        """
        base = DecodeConfig() if base is None else base
        changes = {**self.decode_options(), **overrides}
        return replace(base, **changes) if changes else base

    @property
    def params(self) -> dict[str, Any]:
        """The policy's parameters (for reports and result records)."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def describe(self) -> str:
        """``name(key=value, ...)`` for tables."""
        inner = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({inner})"


def rank_within_eligible(scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Rank eligible positions by descending score.

    Args:
        scores: float tensor ``[B, G]`` (higher = commit first).
        eligible: bool tensor ``[B, G]``.

    Returns:
        int64 ``[B, G]``: 0 for the best eligible position, 1 for the next, ...; ineligible
        positions rank after every eligible one.
    """
    keyed = scores.float().masked_fill(~eligible, float("-inf"))  # [B, G]
    order = keyed.argsort(dim=-1, descending=True, stable=True)  # [B, G] positions by score
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def top_k_mask(scores: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Mask of the ``k`` highest-scoring eligible positions per row.

    Args:
        scores: float tensor ``[B, G]``.
        eligible: bool tensor ``[B, G]``.
        k: int or int64 tensor ``[B]`` (per-row counts).

    Returns:
        bool tensor ``[B, G]``.
    """
    if not isinstance(k, torch.Tensor):
        k = torch.full((scores.shape[0],), int(k), device=scores.device)
    return (rank_within_eligible(scores, eligible) < k[:, None]) & eligible
