"""Hand-built trace states for the policy tests (every field filled, consistent defaults)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from commit_env.decoding.state import WINDOW_CODES, TraceState

Rows = Sequence[Sequence[float]]


def build_state(
    confidence: Rows,
    *,
    eligible: Sequence[Sequence[bool]] | None = None,
    committed: Sequence[Sequence[bool]] | None = None,
    margin: Rows | None = None,
    entropy: Rows | None = None,
    logit_gap: Rows | None = None,
    kl_history: Sequence[Rows] | None = None,
    proposal: Sequence[Sequence[int]] | None = None,
    nfe: int | Sequence[int] = 1,
    budget: int = 8,
    vocab_size: int = 100,
    row_ids: Sequence[int] | None = None,
    history: int = 2,
) -> TraceState:
    """A TraceState with every field filled: given values, and consistent defaults otherwise.

    Defaults: ``committed`` all False; ``eligible`` = not committed; ``margin`` = confidence / 2;
    ``entropy`` = 1 - confidence; ``logit_gap`` 0; ``kl_history`` all ``inf``; ``proposal``
    ``3 + position``.
    """
    conf = torch.tensor(confidence, dtype=torch.float32)
    B, G = conf.shape

    def bg(values, default: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        return default if values is None else torch.tensor(values, dtype=dtype).reshape(B, G)

    done_default = torch.zeros(B, G, dtype=torch.bool)
    comm = bg(committed, done_default, torch.bool)
    elig = bg(eligible, ~comm, torch.bool)
    nfe_t = torch.tensor([nfe] * B if isinstance(nfe, int) else list(nfe), dtype=torch.long)
    kl_hist = (
        torch.full((B, G, history), math.inf)
        if kl_history is None
        else torch.tensor(kl_history, dtype=torch.float32).reshape(B, G, -1)
    )
    prop = bg(proposal, (3 + torch.arange(G)).expand(B, G).clone(), torch.long)
    P = 2
    canvas = torch.full((B, P + G), 4, dtype=torch.long)
    canvas[:, P:] = torch.where(comm, prop, torch.ones_like(prop))
    zeros_b = torch.zeros(B, dtype=torch.long)
    top = torch.stack([conf, (1 - conf) / 2, (1 - conf) / 4], dim=-1)
    return TraceState(
        canvas=canvas,
        attention_mask=torch.ones_like(canvas),
        prompt_len=torch.full((B,), P, dtype=torch.long),
        valid=torch.ones(B, G, dtype=torch.bool),
        gen_len=torch.full((B,), G, dtype=torch.long),
        window_kind=torch.full((B,), WINDOW_CODES["full"], dtype=torch.long),
        window_width=torch.full((B,), G, dtype=torch.long),
        committed=comm,
        eligible=elig,
        window_start=zeros_b.clone(),
        window_end=torch.full((B,), G, dtype=torch.long),
        proposal=prop,
        confidence=conf,
        margin=bg(margin, conf / 2),
        entropy=bg(entropy, 1 - conf),
        logit_gap=bg(logit_gap, torch.zeros(B, G)),
        topk_probs=top,
        prev_confidence=conf.clone(),
        stable_steps=torch.zeros(B, G, dtype=torch.long),
        kl=torch.zeros(B, G),
        kl_history=kl_hist,
        hidden=None,
        step=nfe_t - 1,
        nfe=nfe_t,
        budget=torch.full((B,), budget, dtype=torch.long),
        budget_limited=torch.ones(B, dtype=torch.bool),
        vocab_size=vocab_size,
        done=~elig.any(-1) & comm.all(-1),
        commit_step=torch.where(comm, 0, -1),
        forced_commits=zeros_b.clone(),
        budget_fills=zeros_b.clone(),
        early_fills=zeros_b.clone(),
        filled_without_forward=zeros_b.clone(),
        forward_tokens=zeros_b.clone(),
        row_ids=torch.arange(B) if row_ids is None else torch.tensor(list(row_ids)),
        prev_logp=torch.zeros(B, G, 1),
    )
