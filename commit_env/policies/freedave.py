"""FreeDave: lossless draft-and-verify for the one-token-per-step greedy decode.

Reference: cychomatica/FreeDave (``generation/core.py``, batch mode); arXiv 2510.00294.

From the current forward the policy drafts the next K steps of the sequential top-1 decode
(:class:`~commit_env.policies.TopKPolicy` with ``k=1``): draft k commits the k+1 most confident
positions in the order the sequential decode would take them (window rules included), each with
its current proposal. The engine's draft hook (:class:`~commit_env.decoding.DraftDecision`) runs
**one** batched forward over the K drafted copies. Draft k is verified when, for every j < k, the
forward on draft j picks exactly draft j+1's next position and token; the longest verified draft
is kept, together with the features of its own forward, so the next step drafts from it. The
output therefore equals the sequential decode's token for token, while NFE drops to one per
verified chain; every forward processes K copies of the row (``forward_tokens`` counts them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from commit_env.decoding.engine import window_eligible
from commit_env.decoding.state import DraftDecision, TraceState
from commit_env.policies.base import CommitPolicy, rank_within_eligible

__all__ = ["FreeDavePolicy", "sequential_next"]


def sequential_next(confidence: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """The position the sequential top-1 decode commits next (-1 where nothing is eligible).

    Args:
        confidence: float ``[N, G]``.
        eligible: bool ``[N, G]``.

    Returns:
        int64 ``[N]``; ties go to the lowest position, as in :func:`top_k_mask`.
    """
    pick = (rank_within_eligible(confidence, eligible) == 0) & eligible  # [N, G]
    return torch.where(pick.any(-1), pick.long().argmax(-1), -1)


@dataclass
class FreeDavePolicy(CommitPolicy):
    """Draft K sequential steps, verify them in one batched forward, keep the longest valid chain.

    Args:
        draft_steps: K, drafted future steps per forward (FreeDave's ``draft_steps``); the
            forward processes K copies of each row.

    Raises:
        ValueError: If ``draft_steps < 1``.
    """

    name: ClassVar[str] = "freedave"
    draft_steps: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.draft_steps, int) or self.draft_steps < 1:
            raise ValueError(f"draft_steps must be an int >= 1, got {self.draft_steps!r}")

    def select(self, state: TraceState) -> DraftDecision:
        """Draft K steps ahead; see the module docstring."""
        committed = state.committed.clone()
        order, drafts = [], []
        for _ in range(self.draft_steps):
            pos = sequential_next(state.confidence, window_eligible(state, committed))  # [B]
            has = pos >= 0
            committed[has, pos[has]] = True
            order.append(pos)
            drafts.append(committed & ~state.committed)
        positions = torch.stack(order, dim=1)  # [B, K] the draft's commit order
        commits = torch.stack(drafts, dim=1)  # [B, K, G] copy k commits order[:k+1]
        used = positions >= 0
        used[:, 0] = True  # copy 0 is the sequential step itself (the engine's progress rule)

        def accept(before: TraceState, drafted: TraceState) -> torch.Tensor:
            B, K = positions.shape
            nxt = sequential_next(drafted.confidence, drafted.eligible).view(B, K)  # [B, K]
            token = drafted.proposal.gather(1, nxt.clamp(min=0).reshape(-1, 1)).view(B, K)
            want = positions[:, 1:]  # [B, K-1] the drafted next positions
            want_token = before.proposal.gather(1, want.clamp(min=0))
            ok = (nxt[:, :-1] == want) & (want >= 0) & (token[:, :-1] == want_token)
            return ok.long().cumprod(-1).sum(-1)  # longest verified chain

        return DraftDecision(commits, accept, used=used)
