"""The trace state: everything a commitment policy may look at, batch-first on the device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

__all__ = ["TraceState", "CommitDecision", "DraftDecision", "WINDOW_CODES"]

WINDOW_CODES: dict[str, int] = {"full": 0, "block": 1, "sliding": 2}


@dataclass
class CommitDecision:
    """What a policy may return instead of a bare mask.

    Attributes:
        mask: bool tensor ``[B, G]``; bits outside ``state.eligible`` are ignored.
        fill_rows: bool tensor ``[B]`` or ``None``; rows set here commit *every* remaining masked
            position from the current proposals in this step, window or not (Prophet's early
            "all-in" exit). Counted in ``DecodeResult.early_fills``.
        tokens: int64 tensor ``[B, G]`` or ``None``; where given, the positions committed by
            ``mask`` get these tokens instead of the current proposals (the reference-consistent
            oracle's forced commit writes the reference token).
        remask: bool tensor ``[B, G]`` or ``None``; committed positions to mask again in the same
            step (after this step's commits; they are proposed and committed again later). Only
            bits at ``state.remaskable`` positions take effect (committed before this step,
            inside the window, under the per-position cap ``DecodeConfig.remask_cap``, in a row
            that is not filling or finished); other bits are ignored and counted in
            ``remask_ignored``. Needs ``remask_cap > 0``.
    """

    mask: torch.Tensor
    fill_rows: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    remask: torch.Tensor | None = None


@dataclass
class DraftDecision:
    """A draft-and-verify step: K drafted copies of every row, verified in one batched forward.

    The engine applies each copy's ``commit`` (and ``remask``) to a copy of the row (with the
    usual rules: the progress guarantee per copy, the budget fill, ``_finish_rows``), runs **one**
    backbone forward over all ``B * K`` copies (the engine's own forward, so NFE grows by one per
    row and ``forward_tokens`` by the tokens of every copy that ran), then calls ``accept`` and
    keeps the accepted copy of each row (its canvas, accounting and the features of its forward).
    Needs greedy proposals (``temperature == 0``).

    Attributes:
        commit: bool ``[B, K, G]``, the positions copy k commits from the current proposals. Any
            masked position counts (a draft may run past the current window); bits on committed
            or padding positions are ignored.
        accept: ``accept(state, drafted) -> int64 [B]``: given the state before the step and the
            drafted state (``B * K`` rows, row ``b * K + k`` is copy k of row b, after its
            forward), the copy to keep for each row.
        remask: bool ``[B, K, G]`` or ``None``; positions each copy masks again (same rules as
            :class:`CommitDecision`'s ``remask``), e.g. leave-one-out verification copies.
        used: bool ``[B, K]`` or ``None`` (all used); unused copies are neither built into the
            forward nor counted, and ``accept`` may not pick them (rows need different K).
    """

    commit: torch.Tensor
    accept: Callable[[TraceState, TraceState], torch.Tensor]
    remask: torch.Tensor | None = None
    used: torch.Tensor | None = None


@dataclass
class TraceState:
    """Batched decode state after the latest forward pass.

    All tensors live on the backbone's device. ``[B, G]`` tensors cover the generation region only;
    the canvas is ``[B, L]`` with ``L = P + G`` (prompts left-padded to width P).

    Attributes:
        canvas: int64 ``[B, L]`` token ids (prompt, committed tokens, ``[MASK]`` elsewhere).
        attention_mask: int64 ``[B, L]``, 0 on left padding.
        prompt_len: int64 ``[B]`` real prompt tokens per row.
        valid: bool ``[B, G]`` positions inside the row's own generation length (rows may use a
            shorter ``gen_len`` than the batch's G; the rest is padding, committed from the start).
        gen_len: int64 ``[B]`` the row's generation length.
        window_kind: int64 ``[B]`` 0 = full, 1 = block, 2 = sliding (see ``WINDOW_CODES``).
        window_width: int64 ``[B]`` the row's window width.
        committed: bool ``[B, G]`` positions locked so far (padding positions count as locked).
        eligible: bool ``[B, G]`` masked, inside the window and in an unfinished row.
        window_start: int64 ``[B]`` first generation index of the window.
        window_end: int64 ``[B]`` one past the window's last generation index.
        proposal: int64 ``[B, G]`` proposed token per position (argmax or sample).
        confidence: float32 ``[B, G]`` probability of the proposal.
        margin: float32 ``[B, G]`` top-1 minus top-2 probability.
        entropy: float32 ``[B, G]`` entropy divided by ``log V`` (in ``[0, 1]``).
        logit_gap: float32 ``[B, G]`` top-1 minus top-2 raw logit (Prophet's signal).
        topk_probs: float32 ``[B, G, K]`` the K largest probabilities, descending.
        prev_confidence: float32 ``[B, G]`` confidence of the previous step's proposal.
        stable_steps: int64 ``[B, G]`` consecutive forwards with an unchanged proposal.
        kl: float32 ``[B, G]`` KL(p_t || p_{t-1}) per position (0 after the first forward).
        kl_history: float32 ``[B, G, H]`` the last H values of ``kl`` (newest last; ``inf``
            before they exist).
        hidden: float32 ``[B, G, D]`` projected hidden state, or ``None``.
        step: int64 ``[B]`` commit steps taken.
        nfe: int64 ``[B]`` forward passes that included the row.
        budget: int64 ``[B]`` the row's step budget (max NFE; G when unlimited).
        budget_limited: bool ``[B]`` whether a budget was set (only then do budget fills happen).
        vocab_size: int V (for policies that need entropies in nats: ``entropy * log V``).
        done: bool ``[B]`` finished rows.
        commit_step: int64 ``[B, G]`` step at which each position was committed (-1: not yet).
        forced_commits: int64 ``[B]`` progress-guarantee commits.
        budget_fills: int64 ``[B]`` tokens filled because the budget ran out.
        early_fills: int64 ``[B]`` tokens filled by a policy's all-in exit.
        filled_without_forward: int64 ``[B]`` tail tokens filled with EOS after an early stop.
        forward_tokens: int64 ``[B]`` real tokens processed by the row's forwards.
        row_ids: int64 ``[B]`` caller's index of each row (stable across batch shrinking).
        prev_logp: float32 ``[B, G, V]`` previous log-probabilities (for KL), engine-internal.
        kv_refreshes: int64 ``[B]`` forwards that (re)filled the row's KV cache (full canvas);
            0 without a KV cache. ``None`` only in hand-built states.
        kv_cache: The backbone's cache tensor ``[B, ..., L, ...]`` (L on the second-to-last
            axis) when ``config.kv_cache`` is set, else ``None``; engine-internal.
        kv_canvas: int64 ``[B, L]`` the canvas each row's cache was computed from (``-1``: no
            cache yet), else ``None``; engine-internal.
        generators: One seeded ``torch.Generator`` per row when proposals are sampled
            (``temperature > 0``), else ``None``; engine-internal, dropped by snapshots.
        trace: Per-step records (proposals, confidences, commits) when ``record_trace`` is on,
            else ``None``; dropped by snapshots.
        remaskable: bool ``[B, G]`` committed generation positions a remask may hit now (inside
            the window, under the per-position cap, unfinished row); all False when remasking is
            off. ``None`` only in hand-built states.
        remask_count: int64 ``[B, G]`` times each position has been remasked.
        remasked_token: int64 ``[B, G]`` the token a position held before its latest remask
            (-1: never remasked, or committed again since).
        remasks: int64 ``[B]`` remask events (= tokens re-decoded, since every remasked position
            is committed again before the row finishes).
        remask_changed: int64 ``[B]`` re-decoded tokens that differ from the token remasked.
        remask_ignored: int64 ``[B]`` remask bits that took no effect (masked, out of window,
            capped, or in a row that was filling).
    """

    canvas: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: torch.Tensor
    valid: torch.Tensor
    gen_len: torch.Tensor
    window_kind: torch.Tensor
    window_width: torch.Tensor
    committed: torch.Tensor
    eligible: torch.Tensor
    window_start: torch.Tensor
    window_end: torch.Tensor
    proposal: torch.Tensor
    confidence: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor
    logit_gap: torch.Tensor
    topk_probs: torch.Tensor
    prev_confidence: torch.Tensor
    stable_steps: torch.Tensor
    kl: torch.Tensor
    kl_history: torch.Tensor
    hidden: torch.Tensor | None
    step: torch.Tensor
    nfe: torch.Tensor
    budget: torch.Tensor
    budget_limited: torch.Tensor
    vocab_size: int
    done: torch.Tensor
    commit_step: torch.Tensor
    forced_commits: torch.Tensor
    budget_fills: torch.Tensor
    early_fills: torch.Tensor
    filled_without_forward: torch.Tensor
    forward_tokens: torch.Tensor
    row_ids: torch.Tensor
    prev_logp: torch.Tensor
    kv_refreshes: torch.Tensor | None = None
    kv_cache: torch.Tensor | None = None
    kv_canvas: torch.Tensor | None = None
    generators: list[torch.Generator] | None = None
    trace: list[dict[str, torch.Tensor]] | None = None
    remaskable: torch.Tensor | None = None
    remask_count: torch.Tensor | None = None
    remasked_token: torch.Tensor | None = None
    remasks: torch.Tensor | None = None
    remask_changed: torch.Tensor | None = None
    remask_ignored: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        """B, rows in the state."""
        return int(self.canvas.shape[0])

    @property
    def gen_length(self) -> int:
        """G, generation positions per row."""
        return int(self.committed.shape[1])

    @property
    def masked(self) -> torch.Tensor:
        """Bool ``[B, G]``: positions not committed yet (never padding)."""
        return ~self.committed

    @property
    def gen_tokens(self) -> torch.Tensor:
        """int64 ``[B, G]``: the generation region of the canvas."""
        return self.canvas[:, -self.gen_length :]

    @property
    def all_done(self) -> bool:
        """Whether every row has finished."""
        return bool(self.done.all())

    def tensor_fields(self) -> list[str]:
        """Names of the per-row tensor fields (first dimension B)."""
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)]
