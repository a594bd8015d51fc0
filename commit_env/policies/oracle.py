"""The EGP oracle: commit every eligible position whose proposal already equals the reference.

Reference: Learn2PD's "Extremely Greedy Parallel" oracle (ims-kdks/Learning-to-Parallel-Decoding;
arXiv 2509.25188). The reference is normally the output of a one-token-per-step decode of the same
prompt; it is an upper bound on what a commit policy that must reproduce the reference can save.

When no eligible proposal equals the reference, the engine's progress guarantee commits the most
confident proposal, which need not be the reference token; on tasks with several valid answers that
can steer the decode to an invalid mix. ``consistent=True`` makes that forced commit
reference-consistent: the oracle itself commits the most confident eligible position and writes
the *reference* token there (through :class:`~commit_env.decoding.state.CommitDecision`'s
``tokens``), so the decode reproduces the reference exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from commit_env.decoding.state import CommitDecision, TraceState
from commit_env.policies.base import CommitPolicy

__all__ = ["OraclePolicy"]


@dataclass
class OraclePolicy(CommitPolicy):
    """Commit eligible positions whose proposal equals the reference token.

    Args:
        reference: int64 tensor ``[N, G]`` of reference generation regions, indexed by the
            state's ``row_ids`` (the caller's row numbers, so chunked decodes work).
        consistent: When nothing matches the reference, commit the reference token at the most
            confident eligible position (instead of leaving the engine to commit its proposal).

    Raises:
        ValueError: If ``reference`` is not a 2-D integer tensor.
    """

    name: ClassVar[str] = "oracle"
    reference: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0, 0))
    consistent: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.reference, torch.Tensor) or self.reference.dim() != 2:
            raise ValueError("oracle needs reference: an int64 tensor [N, G] of reference tokens")
        if self.reference.numel() == 0:
            raise ValueError("oracle needs a non-empty reference (decode the prompts first)")

    @property
    def params(self) -> dict[str, object]:
        """Only the forced-commit variant (the reference is data)."""
        return {"consistent": self.consistent} if self.consistent else {}

    def select(self, state: TraceState) -> torch.Tensor | CommitDecision:
        """Oracle rule; see :class:`CommitPolicy`."""
        ref = self.reference.to(state.canvas.device)[state.row_ids]  # [B, G]
        if ref.shape[1] != state.gen_length:
            raise ValueError(
                f"reference has {ref.shape[1]} positions but the decode has G={state.gen_length}"
            )
        mask = state.eligible & (state.proposal == ref)
        if not self.consistent:
            return mask
        idle = ~mask.any(-1) & state.eligible.any(-1)  # [B]
        best = state.confidence.masked_fill(~state.eligible, -1.0).argmax(-1)  # [B]
        forced = torch.zeros_like(mask).scatter_(1, best[:, None], True) & idle[:, None]
        return CommitDecision(mask | (forced & state.eligible), tokens=ref)
