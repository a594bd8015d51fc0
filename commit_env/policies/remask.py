"""Revocable commitment: WINO (draft wide, verify, remask narrow) and ReMDM-style remasking.

Both need remasking in the engine; their :meth:`decode_options` set ``remask_cap`` (the
per-position limit), so ``policy.decode_config(base)`` is the config to run them with.

References: WINO, Feng-Hong/WINO-DLLM ``LLaDA/decoding.py`` (arXiv 2507.18578); ReMDM,
kuleshov-group/remdm (arXiv 2503.00307).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from commit_env.decoding.state import CommitDecision, DraftDecision, TraceState
from commit_env.policies.base import CommitPolicy, rank_within_eligible

__all__ = ["WINOPolicy", "ReMDMPolicy"]


@dataclass
class WINOPolicy(CommitPolicy):
    """WINO: commit every draft above ``draft_threshold`` (capped), remask failed verifications.

    Wide-in: commit the eligible positions with confidence ``> draft_threshold``, at most
    ``cap = min(max(floor(cap_fraction * |M_b|), cap_min), cap_max)`` of them (``|M_b|`` = masked
    positions in the window), the top-1 when none passes. Narrow-out: when the previous step
    accepted ``a > 1`` tokens, remask the committed window tokens whose leave-one-out probability
    ``q_i = p(x_i | x_{-i})`` is ``< verify_threshold``, at most ``a - 1`` of them (lowest q first),
    so every step still gains at least one token.

    WINO computes ``q`` with a shadow block in the same forward (custom attention). The backbone
    protocol has no custom attention mask, so here ``q`` comes from leave-one-out copies verified
    in the same batched forward through the engine's draft hook: one copy per committed window
    token (the copy leaves that token masked). NFE is WINO's; ``forward_tokens`` counts every
    copy, i.e. up to ``(1 + W) L`` tokens per forward against WINO's ``L + W``.

    Args:
        draft_threshold: tau_1 (published 0.6).
        verify_threshold: tau_2 (published 0.9).
        cap_fraction: Fraction of the window's masks drafted at most (published 0.7).
        cap_min: Lower clamp of the cap (published 5).
        cap_max: Upper clamp of the cap (published 20).
        remask_cap: Engine per-position remask limit (a safety net; WINO's own rule already
            guarantees progress).

    Raises:
        ValueError: On thresholds outside ``[0, 1]`` or non-positive caps.
    """

    name: ClassVar[str] = "wino"
    draft_threshold: float = 0.6
    verify_threshold: float = 0.9
    cap_fraction: float = 0.7
    cap_min: int = 5
    cap_max: int = 20
    remask_cap: int = 8
    _q: torch.Tensor | None = field(default=None, init=False, repr=False)
    _last_accept: torch.Tensor | None = field(default=None, init=False, repr=False)
    _q_top: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for key in ("draft_threshold", "verify_threshold", "cap_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if self.cap_min < 1 or self.cap_max < self.cap_min:
            raise ValueError(
                f"need 1 <= cap_min <= cap_max, got cap_min={self.cap_min} cap_max={self.cap_max}"
            )
        if self.remask_cap < 1:
            raise ValueError(f"remask_cap must be >= 1, got {self.remask_cap}")

    def decode_options(self) -> dict[str, Any]:
        """Remasking on, with this policy's per-position cap."""
        return {"remask_cap": self.remask_cap}

    def reset(self, state: TraceState) -> None:
        """Forget the previous decode's verification results."""
        self._q, self._q_top, self._last_accept = None, None, None

    def draft(self, state: TraceState) -> torch.Tensor:
        """Wide-in: bool ``[B, G]`` drafts (the top-1 is added where this is empty).

        Eligible positions with confidence ``> draft_threshold``, at most the cap per row. A
        subclass may draft otherwise and keep WINO's verification.
        """
        eligible, conf = state.eligible, state.confidence
        ranks = rank_within_eligible(conf, eligible)  # [B, G]
        cap = (eligible.sum(-1).float() * self.cap_fraction).floor().long()
        cap = cap.clamp(min=self.cap_min, max=self.cap_max)  # [B]
        return eligible & (conf > self.draft_threshold) & (ranks < cap[:, None])

    def failed_verification(
        self, state: TraceState, remaskable: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which committed tokens failed the last verification, and which to remask first.

        WINO's rule: a remaskable token whose leave-one-out probability ``q`` is below
        ``verify_threshold`` fails; the lowest ``q`` goes first. A subclass may judge otherwise
        (a learned remask head); :meth:`select` keeps the ``accepted - 1`` limit either way.

        Args:
            state: The state after the verified step.
            remaskable: bool ``[B, G]`` positions a remask may hit now.

        Returns:
            ``(fail, priority)``: bool ``[B, G]`` and float ``[B, G]`` (higher = remasked first).
        """
        q = self.verify_probs.to(state.canvas.device)
        fail = remaskable & torch.isfinite(q) & (q < self.verify_threshold)
        return fail, -q.nan_to_num(1.0)

    @property
    def verify_probs(self) -> torch.Tensor:
        """Leave-one-out probabilities of the last verification.

        Float ``[B, G]``: the probability of each committed token with it masked (NaN where it was
        not verified). Valid inside :meth:`select` after a verification.
        """
        assert self._q is not None, "no verification yet"
        return self._q

    @property
    def verify_top(self) -> torch.Tensor | None:
        """Top leave-one-out probabilities of the last verification.

        Float ``[B, G]`` per position (NaN where not verified); ``None`` before the first one.
        """
        return self._q_top

    def select(self, state: TraceState) -> CommitDecision | DraftDecision:
        """Wide-in commits, narrow-out remasks, and leave-one-out copies for the next step."""
        B, G = state.batch_size, state.gen_length
        dev = state.canvas.device
        eligible = state.eligible
        wide = self.draft(state)
        none = ~wide.any(-1)
        wide |= eligible & (rank_within_eligible(state.confidence, eligible) == 0) & none[:, None]

        remask = torch.zeros_like(wide)
        remaskable = state.remaskable if state.remaskable is not None else remask
        if self._q is not None and self._q.shape == (B, G):
            assert self._last_accept is not None
            fail, priority = self.failed_verification(state, remaskable)
            limit = (self._last_accept.to(dev) - 1).clamp(min=0)  # [B] only when a > 1
            remask = fail & (rank_within_eligible(priority, fail) < limit[:, None])

        # Leave-one-out copies for the next narrow-out: the window's committed tokens after this
        # step, needed only where more than one token is accepted and the window stays open.
        accepted = wide.sum(-1)  # [B]
        stays = (eligible & ~wide).any(-1) | remask.any(-1)  # the window still has masks
        verify = ((remaskable & ~remask) | wide) & ((accepted > 1) & stays)[:, None]  # [B, G]
        n_verify = verify.sum(-1)  # [B]
        self._last_accept = accepted
        K = 1 + int(n_verify.max()) if B else 1
        if K == 1:
            self._q = self._q_top = None
            return CommitDecision(wide, remask=remask)
        # Copy j (1..n_verify) leaves the j-th verified position masked.
        order = rank_within_eligible(-torch.arange(G, device=dev).float().expand(B, G), verify)
        slot = torch.arange(1, K, device=dev)  # [K-1]
        target = (order[:, None, :] == (slot - 1)[None, :, None]) & verify[:, None, :]  # [B,K-1,G]
        commits = wide[:, None, :].expand(B, K, G).clone()
        remasks = remask[:, None, :].expand(B, K, G).clone()
        commits[:, 1:] &= ~target
        remasks[:, 1:] |= target & ~wide[:, None, :]
        used = torch.ones((B, K), dtype=torch.bool, device=dev)
        used[:, 1:] = slot[None, :] <= n_verify[:, None]
        held = torch.where(wide, state.proposal, state.gen_tokens)  # [B, G] token after the step

        def accept(before: TraceState, drafted: TraceState) -> torch.Tensor:
            q = torch.full((B, G), math.nan, device=dev)
            top = q.clone()
            if drafted.prev_logp.shape[-1] == before.vocab_size:
                logp = drafted.prev_logp.view(B, K, G, -1)[:, 1:]  # [B, K-1, G, V]
                tok = held[:, None, :, None].expand(B, K - 1, G, 1)
                loo = logp.gather(-1, tok).squeeze(-1).exp()  # [B, K-1, G]
                mine = target & used[:, 1:, None]
                hit = mine.any(1)
                q = torch.where(hit, (loo * mine).sum(1), q)
                top = torch.where(hit, (logp.amax(-1).exp() * mine).sum(1), top)
            self._q, self._q_top = q, top
            return torch.zeros(B, dtype=torch.long, device=dev)

        return DraftDecision(commits, accept, remask=remasks, used=used)


@dataclass
class ReMDMPolicy(CommitPolicy):
    """ReMDM-style remasking: an MDLM schedule over ``steps`` that also remasks committed tokens.

    With ``alpha_t = 1 - t`` on a linear time grid of S steps (step n of the row goes from
    ``t = 1 - (n - 1)/S`` to ``s = 1 - n/S``), every committed token in the window is remasked with
    probability sigma_t and ``ceil(|M| * (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t))`` of
    the most confident eligible positions are committed (the whole window on the last step).
    Schedules: ``cap`` sigma = min(eta, sigma_max); ``rescale`` sigma = eta * sigma_max; ``conf``
    spreads ``cap``'s total remask mass over the committed tokens by softmax(-psi), psi = the
    token's confidence when it was committed; ``sigma_max = clamp((1 - alpha_s) / alpha_t, 0, 1)``.
    Remask draws come from a seeded generator (reseeded per decode).

    Args:
        steps: S, the schedule's length (``None``: the row's step budget).
        eta: Remasking strength (the official script's 0.008 is tuned for 1000-step MDLM runs;
            short canvases need larger values).
        schedule: ``cap``, ``rescale`` or ``conf``.
        remask_cap: Engine per-position remask limit.
        seed: Seed of the remask draws.

    Raises:
        ValueError: On an unknown schedule, ``eta`` outside ``[0, 1]`` or bad counts.
    """

    name: ClassVar[str] = "remdm"
    steps: int | None = None
    eta: float = 0.1
    schedule: Literal["cap", "rescale", "conf"] = "cap"
    remask_cap: int = 2
    seed: int = 0
    _generator: torch.Generator | None = field(default=None, init=False, repr=False)
    _psi: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.schedule not in ("cap", "rescale", "conf"):
            raise ValueError(f"unknown schedule {self.schedule!r}; expected cap, rescale or conf")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 or None, got {self.steps}")
        if self.remask_cap < 1:
            raise ValueError(f"remask_cap must be >= 1, got {self.remask_cap}")

    def decode_options(self) -> dict[str, Any]:
        """Remasking on, with this policy's per-position cap."""
        return {"remask_cap": self.remask_cap}

    def reset(self, state: TraceState) -> None:
        """Reseed the remask draws."""
        self._generator = torch.Generator(device=state.canvas.device).manual_seed(self.seed)
        self._psi = None

    def select(self, state: TraceState) -> CommitDecision:
        """Schedule commits plus random remasks; see the class docstring."""
        if self._generator is None:
            self.reset(state)
        B, G = state.batch_size, state.gen_length
        if self._psi is None or self._psi.shape != (B, G):
            self._psi = torch.ones((B, G), device=state.canvas.device)
        S = state.budget if self.steps is None else torch.full_like(state.budget, self.steps)
        n = state.nfe.clamp(min=1).float()
        alpha_t = ((n - 1) / S).clamp(0.0, 1.0)  # [B]
        alpha_s = (n / S).clamp(0.0, 1.0)
        sigma_max = torch.where(
            alpha_t > 0, ((1 - alpha_s) / alpha_t.clamp(min=1e-9)).clamp(0.0, 1.0), 0.0
        )
        sigma = (
            sigma_max * self.eta if self.schedule == "rescale" else sigma_max.clamp(max=self.eta)
        )
        remaskable = state.remaskable if state.remaskable is not None else state.committed & False
        if self.schedule == "conf":
            weights = (-self._psi).masked_fill(~remaskable, -math.inf).softmax(-1).nan_to_num(0.0)
            prob = (sigma * remaskable.sum(-1))[:, None] * weights
        else:
            prob = sigma[:, None].expand(B, G)
        draws = torch.rand((B, G), generator=self._generator, device=state.canvas.device)
        remask = remaskable & (draws < prob)
        unmask = ((alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t).clamp(min=1e-9)).clamp(0, 1)
        count = (state.masked.sum(-1).float() * unmask).ceil().long().clamp(min=1)  # [B]
        count = torch.where(alpha_s >= 1, state.gen_len, count)  # last step: everything
        commit = state.eligible & (
            rank_within_eligible(state.confidence, state.eligible) < count[:, None]
        )
        self._psi = torch.where(commit, state.confidence, self._psi)
        return CommitDecision(commit, remask=remask)
