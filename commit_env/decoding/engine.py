"""The one batched decode engine.

Every consumer (heuristic policies, the trace collector, the Gym environments, evaluation) drives
this state machine; nothing else in the project runs a decode loop of its own.

One :meth:`Decoder.step`:

1. keep only the eligible bits of the commit mask (masked and inside the window);
2. rows that have used their step budget, or that a policy sent "all-in", fill every remaining mask
   from the current proposals;
3. progress guarantee: a row that commits nothing gets its highest-confidence eligible position
   (counted in ``forced_commits``);
4. finish rows that are complete, or (``eos_stop``) whose committed EOS has every earlier position
   committed: their tail is filled with EOS without a forward;
5. run **one** batched forward over the unfinished rows only and refresh proposals and features.

Remasking (``DecodeConfig.remask_cap > 0``): a :class:`CommitDecision` may also carry a ``remask``
mask; after step 3 its bits at ``state.remaskable`` positions (committed before this step, inside
the window, under the per-position cap) turn those positions back into ``[MASK]`` before rows are
finished, so the same forward re-proposes them. Prompt positions are outside the ``[B, G]``
region and can never be remasked. Progress guarantee, budget fill and EOS stop are unchanged; a row
that fills (budget or all-in) ignores its remask bits, and the cap bounds every row to
``g * (1 + cap)`` steps without a budget.

Draft-and-verify (:class:`DraftDecision`): the step applies K drafted commit masks to K copies of
every row and verifies them with **one** forward over the ``B * K`` copies (the same forward as
above); the policy's ``accept`` picks the copy each row keeps. NFE grows by one per row,
``forward_tokens`` by the tokens of every copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from commit_env.backbones.base import Backbone, kv_cache_support
from commit_env.decoding.config import DecodeConfig, validate_setting
from commit_env.decoding.snapshot import select_rows
from commit_env.decoding.state import WINDOW_CODES, CommitDecision, DraftDecision, TraceState

__all__ = ["Decoder", "STABLE_CAP", "window_eligible"]

STABLE_CAP = 8  # stable-step counts above this are rare and uninformative; features saturate here


class Decoder:
    """Batched decode state machine over a frozen backbone.

    Args:
        backbone: The denoiser.
        config: Decode settings.

    Example:
        >>> decoder = Decoder(backbone, DecodeConfig(gen_length=16))  # doctest: +SKIP
        >>> state = decoder.start(["name a fruit:"])  # doctest: +SKIP
        >>> while not state.all_done:  # doctest: +SKIP
        ...     state = decoder.step(state, policy.select(state))
    """

    def __init__(self, backbone: Backbone, config: DecodeConfig) -> None:
        if backbone.pad_token_id == backbone.mask_token_id:
            raise ValueError("backbone pad_token_id must differ from mask_token_id")
        if not backbone.eos_token_ids and config.eos_stop:
            raise ValueError("eos_stop=True needs a backbone with at least one EOS id")
        if config.kv_cache != "none":
            supported, reason = kv_cache_support(backbone)
            if not supported:
                raise ValueError(f"kv_cache={config.kv_cache!r} is not available: {reason}")
        self.backbone = backbone
        self.config = config
        self.device = torch.device(backbone.device)
        G = config.gen_length
        self._positions = torch.arange(G, device=self.device)  # [G]
        self._eos_ids = torch.tensor(backbone.eos_token_ids or (-1,), device=self.device)
        self._fill_eos = int(backbone.eos_token_ids[0]) if backbone.eos_token_ids else -1
        self._log_vocab = math.log(backbone.vocab_size)
        self._projection = None
        if config.hidden_features:
            # Fixed seeded Gaussian projection: identical across runs, so features are comparable.
            gen = torch.Generator().manual_seed(1234)
            proj = torch.randn(backbone.hidden_size, config.hidden_features, generator=gen)
            self._projection = (proj / math.sqrt(backbone.hidden_size)).to(self.device)

    # ----------------------------------------------------------------------------- start
    def start(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        *,
        seeds: Sequence[int] | None = None,
        row_ids: Sequence[int] | None = None,
        prompt_width: int | None = None,
        gen_lengths: Sequence[int] | None = None,
        windows: Sequence[str] | None = None,
        budgets: Sequence[int | None] | None = None,
        forward: bool = True,
    ) -> TraceState:
        """Build the canvas for a batch of prompts and run the first forward.

        Args:
            prompts: B prompt strings (tokenized with the backbone's tokenizer) or id lists.
            seeds: Per-row sampler seeds (only used when ``temperature > 0``); default
                ``config.seed + row index``.
            row_ids: Caller's index of each row (kept in ``state.row_ids``); default ``0..B-1``.
            prompt_width: Left-pad prompts to this width P instead of the longest prompt (lets
                separately started states share one canvas width).
            gen_lengths: Per-row generation lengths (each <= ``config.gen_length``, which is the
                canvas width G); default ``config.gen_length``.
            windows: Per-row window specs (``"block:B"``, ...); default ``config.window``.
            budgets: Per-row step budgets (``None`` = unlimited); default ``config.step_budget``.
            forward: Run the first forward now. ``False`` returns rows with ``nfe == 0`` and no
                proposals yet, meant to be placed into a running batch
                (:func:`~commit_env.decoding.batching.replace_rows`): the batch's next
                :meth:`step` commits nothing for them and includes them in its one forward.

        Returns:
            The state after the first forward pass (``nfe == 1`` for every row), or before it
            when ``forward`` is false.

        Raises:
            ValueError: On an empty batch, an empty prompt, a canvas longer than the backbone's
                maximum length, a prompt longer than ``prompt_width``, or invalid per-row settings.
        """
        ids, P = self._encode(prompts, prompt_width)
        row_g, row_kind, row_width, row_budget = self._row_settings(
            len(ids), gen_lengths, windows, budgets
        )
        state = self._empty_state(ids, P, row_g, row_kind, row_width, row_budget, row_ids)
        if self.config.temperature > 0:
            B = len(ids)
            seeds = [self.config.seed + b for b in range(B)] if seeds is None else list(seeds)
            if len(seeds) != B:
                raise ValueError(f"got {len(seeds)} seeds for {B} prompts")
            state.generators = [
                torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds
            ]
        if self.config.record_trace:
            state.trace = []
        if forward:
            self._forward(state)
        self._update_window(state)
        return state

    def _encode(
        self, prompts: Sequence[str] | Sequence[Sequence[int]], prompt_width: int | None
    ) -> tuple[list[list[int]], int]:
        """Token ids of every prompt and the prompt width P; checks the canvas fits."""
        if len(prompts) == 0:
            raise ValueError("prompts must be a non-empty sequence")
        ids = [
            list(self.backbone.encode([p])[0]) if isinstance(p, str) else [int(t) for t in p]
            for p in prompts
        ]
        G = self.config.gen_length
        lengths = [len(x) for x in ids]
        if min(lengths) == 0:
            raise ValueError(f"prompt {lengths.index(0)} is empty after tokenization")
        P = max(lengths) if prompt_width is None else prompt_width
        if max(lengths) > P:
            raise ValueError(f"a prompt has {max(lengths)} tokens, more than prompt_width={P}")
        if P + G > self.backbone.max_length:
            row = lengths.index(max(lengths))
            raise ValueError(
                f"prompt {row} has {lengths[row]} tokens; with gen_length {G} the canvas needs "
                f"{P + G} positions but backbone {self.backbone.name!r} accepts at most "
                f"{self.backbone.max_length}"
            )
        return ids, P

    def _empty_state(
        self,
        ids: list[list[int]],
        P: int,
        row_g: list[int],
        row_kind: list[int],
        row_width: list[int],
        row_budget: list[tuple[int, bool]],
        row_ids: Sequence[int] | None,
    ) -> TraceState:
        """The state before the first forward: left-padded prompts, masked generation region.

        Long: it names every :class:`TraceState` field once (one line each); split, the list
        of fields would only be scattered.
        """
        B, G, dev = len(ids), self.config.gen_length, self.device
        canvas = torch.full((B, P + G), self.backbone.pad_token_id, dtype=torch.long)
        attention = torch.zeros((B, P + G), dtype=torch.long)
        for b, x in enumerate(ids):  # once per row at start, not per step
            canvas[b, P - len(x) : P] = torch.tensor(x, dtype=torch.long)
            attention[b, P - len(x) :] = 1
        valid = torch.arange(G)[None, :] < torch.tensor(row_g)[:, None]  # [B, G]
        canvas[:, P:] = torch.where(valid, self.backbone.mask_token_id, self.backbone.pad_token_id)
        attention[:, P:] = valid.long()
        zeros_bg = torch.zeros((B, G), device=dev)
        zeros_b = torch.zeros(B, dtype=torch.long, device=dev)
        as_long = {"dtype": torch.long, "device": dev}
        K, H, D = self.config.top_k, self.config.history, self.config.hidden_features
        return TraceState(
            canvas=canvas.to(dev),
            attention_mask=attention.to(dev),
            prompt_len=torch.tensor([len(x) for x in ids], **as_long),
            valid=valid.to(dev),
            gen_len=torch.tensor(row_g, **as_long),
            window_kind=torch.tensor(row_kind, **as_long),
            window_width=torch.tensor(row_width, **as_long),
            committed=~valid.to(dev),
            eligible=torch.zeros((B, G), dtype=torch.bool, device=dev),
            window_start=zeros_b.clone(),
            window_end=zeros_b.clone(),
            proposal=torch.zeros((B, G), dtype=torch.long, device=dev),
            confidence=zeros_bg.clone(),
            margin=zeros_bg.clone(),
            entropy=zeros_bg.clone(),
            logit_gap=zeros_bg.clone(),
            topk_probs=torch.zeros((B, G, K), device=dev),
            prev_confidence=zeros_bg.clone(),
            stable_steps=torch.zeros((B, G), dtype=torch.long, device=dev),
            kl=zeros_bg.clone(),
            kl_history=torch.full((B, G, H), math.inf, device=dev),
            hidden=torch.zeros((B, G, D), device=dev) if D else None,
            step=zeros_b.clone(),
            nfe=zeros_b.clone(),
            budget=torch.tensor([b for b, _ in row_budget], **as_long),
            budget_limited=torch.tensor([lim for _, lim in row_budget], device=dev),
            vocab_size=self.backbone.vocab_size,
            done=torch.zeros(B, dtype=torch.bool, device=dev),
            commit_step=torch.full((B, G), -1, dtype=torch.long, device=dev),
            forced_commits=zeros_b.clone(),
            budget_fills=zeros_b.clone(),
            early_fills=zeros_b.clone(),
            filled_without_forward=zeros_b.clone(),
            forward_tokens=zeros_b.clone(),
            row_ids=torch.tensor(
                list(range(B)) if row_ids is None else list(row_ids), dtype=torch.long, device=dev
            ),
            prev_logp=torch.zeros((B, G, 1), device=dev),
            kv_refreshes=zeros_b.clone(),
            **self._empty_cache(B, P + G),
            remaskable=torch.zeros((B, G), dtype=torch.bool, device=dev),
            remask_count=torch.zeros((B, G), dtype=torch.long, device=dev),
            remasked_token=torch.full((B, G), -1, dtype=torch.long, device=dev),
            remasks=zeros_b.clone(),
            remask_changed=zeros_b.clone(),
            remask_ignored=zeros_b.clone(),
        )

    def _empty_cache(self, B: int, L: int) -> dict[str, torch.Tensor | None]:
        """The KV-cache fields of a new state: an empty cache that every row must refresh."""
        if self.config.kv_cache == "none":
            return {"kv_cache": None, "kv_canvas": None}
        return {
            "kv_cache": self.backbone.new_kv_cache(B, L),  # type: ignore[attr-defined]
            "kv_canvas": torch.full((B, L), -1, dtype=torch.long, device=self.device),
        }

    def _row_settings(
        self,
        B: int,
        gen_lengths: Sequence[int] | None,
        windows: Sequence[str] | None,
        budgets: Sequence[int | None] | None,
    ) -> tuple[list[int], list[int], list[int], list[tuple[int, bool]]]:
        """Validate per-row settings; return gen lengths, window codes, widths and budgets."""
        cfg, G = self.config, self.config.gen_length
        row_g = [G] * B if gen_lengths is None else [int(g) for g in gen_lengths]
        row_w = [cfg.window] * B if windows is None else list(windows)
        row_b = [cfg.step_budget] * B if budgets is None else list(budgets)
        for name, values in (("gen_lengths", row_g), ("windows", row_w), ("budgets", row_b)):
            if len(values) != B:
                raise ValueError(f"got {len(values)} {name} for {B} prompts")
        kinds, widths, budget_out = [], [], []
        for g, w, b in zip(row_g, row_w, row_b, strict=True):
            if not 1 <= g <= G:
                raise ValueError(f"per-row gen_length {g} must be in [1, {G}] (config.gen_length)")
            kind, width = validate_setting(g, w, b)
            if kind == "sliding" and cfg.kv_cache != "none":
                raise ValueError(
                    f"kv_cache={cfg.kv_cache!r} needs block windows ('block:B', 'full'), got {w!r}"
                )
            kinds.append(WINDOW_CODES[kind])
            widths.append(width)
            budget_out.append((g, False) if b is None else (int(b), True))
        return row_g, kinds, widths, budget_out

    # ----------------------------------------------------------------------------- step
    def step(
        self, state: TraceState, decision: torch.Tensor | CommitDecision | DraftDecision
    ) -> TraceState:
        """Commit, finish rows, and run one batched forward over the unfinished rows.

        Bits of the mask at non-eligible positions (committed, outside the window, finished row)
        are ignored. The state is updated in place and returned.

        Args:
            state: The current state (from :meth:`start` or a previous :meth:`step`).
            decision: bool tensor ``[B, G]`` commit mask, a :class:`CommitDecision` (commit,
                all-in rows, tokens, remask) or a :class:`DraftDecision` (draft-and-verify).

        Returns:
            The same state object, advanced by one step.

        Raises:
            TypeError: If the mask is not a bool tensor.
            ValueError: If the mask's shape is not ``[B, G]``, or a remask is asked for while
                ``remask_cap == 0``.
        """
        if isinstance(decision, DraftDecision):
            return self._step_drafts(state, decision)
        mask, fill_rows, tokens = _unpack(decision)
        remask = decision.remask if isinstance(decision, CommitDecision) else None
        B, G = state.batch_size, state.gen_length
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"commit mask must be a torch.Tensor of shape [B, G] = [{B}, {G}]")
        if tuple(mask.shape) != (B, G):
            raise ValueError(
                f"commit mask has shape {tuple(mask.shape)}; expected [B, G] = [{B}, {G}]"
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"commit mask must have dtype torch.bool, got {mask.dtype}")
        if remask is not None:
            self._check_remask(remask, (B, G))
        # Rows admitted with start(forward=False) have no proposals yet: this step only runs
        # their first forward (together with everyone else's), committing nothing for them.
        active = ~state.done & (state.nfe > 0)  # [B] rows that commit this step
        mask = mask.to(self.device) & state.eligible & active[:, None]  # [B, G]
        out_of_budget = active & state.budget_limited & (state.nfe >= state.budget)  # [B]
        fill = out_of_budget.clone()
        if fill_rows is not None:
            if tuple(fill_rows.shape) != (B,) or fill_rows.dtype != torch.bool:
                raise ValueError(f"fill_rows must be a bool tensor of shape [B] = [{B}]")
            fill |= fill_rows.to(self.device) & active
        masked = ~state.committed  # [B, G]
        fill_mask = masked & fill[:, None]  # [B, G]

        # Progress guarantee: a row that commits nothing gets its best eligible position.
        idle = active & ~fill & ~mask.any(-1)  # [B]
        if bool(idle.any()):
            best = state.confidence.masked_fill(~state.eligible, -1.0).argmax(-1)  # [B]
            forced = torch.zeros_like(mask).scatter_(1, best[:, None], True)
            mask |= forced & idle[:, None] & state.eligible
            state.forced_commits += idle.long()
        extra = fill_mask & ~mask
        state.budget_fills += (extra & out_of_budget[:, None]).sum(-1)
        state.early_fills += (extra & ~out_of_budget[:, None]).sum(-1)
        commit = mask | fill_mask  # [B, G]

        gen = state.canvas[:, -G:]
        written = (
            state.proposal
            if tokens is None
            else torch.where(mask, tokens.to(self.device), state.proposal)
        )
        state.canvas[:, -G:] = torch.where(commit, written, gen)
        state.committed |= commit
        state.commit_step = torch.where(commit, state.step[:, None], state.commit_step)
        state.step += active.long()
        removed = None
        self._note_recommits(state, commit)
        if remask is not None:
            removed = self._remask(state, remask.to(self.device), active, active & ~fill)
        if self.config.record_trace:
            record = {"commit": commit.cpu(), "step": state.step.cpu()}
            if removed is not None:
                record["remask"] = removed.cpu()
            state.trace.append(record)
        self._finish_rows(state)
        self._forward(state)
        self._update_window(state)
        return state

    # ----------------------------------------------------------------------------- remasking
    def _check_remask(self, remask: torch.Tensor, shape: tuple[int, ...]) -> None:
        if not isinstance(remask, torch.Tensor) or remask.dtype != torch.bool:
            raise ValueError(f"remask must be a bool tensor of shape {list(shape)}")
        if tuple(remask.shape) != shape:
            raise ValueError(f"remask has shape {tuple(remask.shape)}; expected {list(shape)}")
        if self.config.remask_cap == 0 and bool(remask.any()):
            raise ValueError(
                "remasking is off (DecodeConfig.remask_cap=0); set remask_cap >= 1 to allow it"
            )

    def _note_recommits(self, state: TraceState, commit: torch.Tensor) -> None:
        """Count re-decoded tokens that changed, for positions committed again this step."""
        if self.config.remask_cap == 0 or state.remasked_token is None:
            return
        again = commit & (state.remasked_token >= 0)  # [B, G]
        changed = again & (state.gen_tokens != state.remasked_token)
        state.remask_changed += changed.sum(-1)
        state.remasked_token = state.remasked_token.masked_fill(again, -1)

    def _remask(
        self,
        state: TraceState,
        remask: torch.Tensor,
        requesting: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """Mask ``remask & remaskable`` positions of ``allowed`` rows again; return them [B, G]."""
        G = state.gen_length
        asked = remask & requesting[:, None]  # [B, G]
        hit = asked & state.remaskable & allowed[:, None]  # [B, G]
        state.remask_ignored += (asked & ~hit).sum(-1)
        if not bool(hit.any()):
            return hit
        gen = state.canvas[:, -G:]
        state.remasked_token = torch.where(hit, gen, state.remasked_token)
        state.canvas[:, -G:] = torch.where(hit, self.backbone.mask_token_id, gen)
        state.committed &= ~hit
        state.commit_step = state.commit_step.masked_fill(hit, -1)
        state.remask_count += hit.long()
        state.remasks += hit.sum(-1)
        return hit

    # ----------------------------------------------------------------------------- drafts
    def _step_drafts(self, state: TraceState, decision: DraftDecision) -> TraceState:
        """Draft-and-verify: K copies per row, one batched forward, keep the accepted copy."""
        B, G = state.batch_size, state.gen_length
        drafts, used = self._checked_drafts(state, decision)
        K = int(drafts.shape[1])
        active = ~state.done & (state.nfe > 0)  # [B]
        out_of_budget = active & state.budget_limited & (state.nfe >= state.budget)  # [B]
        drafted, index, d_active = self._draft_copies(state, used, active, K)
        d_fill = out_of_budget[index] & d_active  # [B*K]
        commit = self._commit_drafts(state, drafted, drafts, index, d_active, d_fill)
        if decision.remask is not None:
            remask = decision.remask.to(self.device).reshape(B * K, G)
            self._remask(drafted, remask, d_active, d_active & ~d_fill)
        self._finish_rows(drafted)
        self._forward(drafted)
        self._update_window(drafted)
        choice = self._accepted_copy(state, drafted, decision, used, active)
        self._keep_copies(state, drafted, choice)
        if self.config.record_trace:
            state.trace.append({"commit": commit.view(B, K, G)[torch.arange(B), choice].cpu()})
            state.trace.append(
                {"proposal": state.proposal.cpu(), "confidence": state.confidence.cpu()}
            )
        return state

    def _checked_drafts(
        self, state: TraceState, decision: DraftDecision
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate a draft decision; return its drafts ``[B, K, G]`` and used copies ``[B, K]``.

        Raises:
            ValueError: On a malformed commit, remask or used tensor, or sampled proposals.
        """
        B, G = state.batch_size, state.gen_length
        drafts = decision.commit
        if not isinstance(drafts, torch.Tensor) or drafts.dtype != torch.bool or drafts.dim() != 3:
            raise ValueError(f"DraftDecision.commit must be a bool tensor [B, K, G], G = {G}")
        K = int(drafts.shape[1])
        if tuple(drafts.shape) != (B, K, G) or K < 1:
            raise ValueError(
                f"DraftDecision.commit has shape {tuple(drafts.shape)}; expected [{B}, K >= 1, {G}]"
            )
        if decision.remask is not None:
            self._check_remask(decision.remask, (B, K, G))
        if self.config.temperature > 0:
            raise ValueError("draft-and-verify needs greedy proposals (temperature=0)")
        used = decision.used
        if used is None:
            used = torch.ones((B, K), dtype=torch.bool, device=self.device)
        elif tuple(used.shape) != (B, K) or used.dtype != torch.bool:
            raise ValueError(f"DraftDecision.used must be a bool tensor [B, K] = [{B}, {K}]")
        return drafts, used.to(self.device)

    def _draft_copies(
        self, state: TraceState, used: torch.Tensor, active: torch.Tensor, K: int
    ) -> tuple[TraceState, torch.Tensor, torch.Tensor]:
        """K copies of every row (copy ``k`` of row ``b`` is row ``b * K + k``), without trace.

        Returns:
            ``(drafted, index, d_active)``: the copies, the source row of each copy ``[B*K]``
            and the copies that commit this step ``[B*K]``.
        """
        B = state.batch_size
        index = torch.arange(B, device=self.device).repeat_interleave(K)  # [B*K]
        drafted = select_rows(state, index)
        drafted.trace = None
        # Unused copies, and every copy but the first of a row that commits nothing this step (a
        # row admitted without its first forward), are neither committed nor forwarded.
        first = torch.arange(K, device=self.device).repeat(B) == 0  # [B*K]
        live = (active[index] & used.reshape(-1)) | (~active[index] & first)
        drafted.done |= ~live
        return drafted, index, active[index] & live

    def _commit_drafts(
        self,
        state: TraceState,
        drafted: TraceState,
        drafts: torch.Tensor,
        index: torch.Tensor,
        d_active: torch.Tensor,
        d_fill: torch.Tensor,
    ) -> torch.Tensor:
        """Commit each copy's draft (plus progress and budget fills); return the commits.

        Args:
            state: The state the copies were made from.
            drafted: The copies ``[B*K]``, updated in place.
            drafts: bool ``[B, K, G]`` drafted commits.
            index: ``[B*K]`` source row of each copy.
            d_active: ``[B*K]`` copies that commit this step.
            d_fill: ``[B*K]`` active copies whose row is out of step budget (fill every mask).

        Returns:
            bool ``[B*K, G]``, the positions committed in each copy.
        """
        B, K, G = drafts.shape
        masked = ~state.committed  # [B, G]
        mask = drafts.to(self.device).reshape(B * K, G) & masked[index] & d_active[:, None]
        # Progress guarantee per copy: a copy that commits nothing gets the best eligible position.
        idle = d_active & ~d_fill & ~mask.any(-1)  # [B*K]
        best = drafted.confidence.masked_fill(~drafted.eligible, -1.0).argmax(-1)  # [B*K]
        forced = torch.zeros_like(mask).scatter_(1, best[:, None], True) & drafted.eligible
        mask |= forced & idle[:, None]
        drafted.forced_commits += idle.long()
        fill_mask = masked[index] & d_fill[:, None]
        drafted.budget_fills += (fill_mask & ~mask).sum(-1)
        commit = mask | fill_mask
        gen = drafted.canvas[:, -G:]
        drafted.canvas[:, -G:] = torch.where(commit, drafted.proposal, gen)
        drafted.committed |= commit
        drafted.commit_step = torch.where(commit, drafted.step[:, None], drafted.commit_step)
        drafted.step += d_active.long()
        self._note_recommits(drafted, commit)
        return commit

    def _accepted_copy(
        self,
        state: TraceState,
        drafted: TraceState,
        decision: DraftDecision,
        used: torch.Tensor,
        active: torch.Tensor,
    ) -> torch.Tensor:
        """The copy each row keeps ``[B]``, as chosen by ``decision.accept`` (0 for idle rows).

        Raises:
            ValueError: If the choice is not ``[B]`` in ``[0, K)`` or picks an unused copy.
        """
        B, K = used.shape
        choice = decision.accept(state, drafted)
        if (
            not isinstance(choice, torch.Tensor)
            or tuple(choice.shape) != (B,)
            or bool(((choice < 0) | (choice >= K)).any())
        ):
            raise ValueError(f"DraftDecision.accept must return int64 [B] = [{B}] in [0, {K})")
        choice = torch.where(active, choice.to(self.device).long(), 0)  # idle rows keep copy 0
        if not bool((used[torch.arange(B, device=self.device), choice] | ~active).all()):
            raise ValueError("DraftDecision.accept picked a copy marked unused")
        return choice

    def _keep_copies(self, state: TraceState, drafted: TraceState, choice: torch.Tensor) -> None:
        """Replace each row of ``state`` by its chosen copy, counting every copy's forward work.

        A row's NFE grows by one if any of its copies was forwarded (they share one batched
        forward); its ``forward_tokens`` by the tokens of all its copies.
        """
        B = state.batch_size
        K = drafted.batch_size // B
        rows = torch.arange(B, device=self.device) * K + choice  # [B]
        ran = drafted.nfe.view(B, K) > state.nfe[:, None]  # [B, K] copies that were forwarded
        tokens = (drafted.forward_tokens.view(B, K) - state.forward_tokens[:, None]).sum(-1)
        nfe, forward_tokens = state.nfe + ran.any(-1).long(), state.forward_tokens + tokens
        kept = select_rows(drafted, rows)
        for name in state.tensor_fields():
            setattr(state, name, getattr(kept, name))
        state.nfe, state.forward_tokens = nfe, forward_tokens

    # ----------------------------------------------------------------------------- internals
    def _finish_rows(self, state: TraceState) -> None:
        G = state.gen_length
        masked = ~state.committed  # [B, G]
        newly_done = ~masked.any(-1) & ~state.done  # [B]
        if self.config.eos_stop:
            gen = state.canvas[:, -G:]
            is_eos = state.committed & torch.isin(gen, self._eos_ids)  # [B, G]
            has_eos = is_eos.any(-1)  # [B]
            first_eos = torch.where(has_eos, is_eos.long().argmax(-1), G)  # [B]
            before = masked & (self._positions[None, :] < first_eos[:, None])  # [B, G]
            stop = has_eos & ~before.any(-1) & ~state.done  # [B]
            tail = masked & stop[:, None]  # [B, G] every remaining mask lies after the EOS
            if bool(tail.any()):
                state.canvas[:, -G:] = torch.where(tail, self._fill_eos, gen)
                state.committed |= tail
                state.commit_step = torch.where(tail, state.step[:, None] - 1, state.commit_step)
                state.filled_without_forward += tail.sum(-1)
            newly_done |= stop
        state.done |= newly_done

    def _forward(self, state: TraceState) -> None:
        """One backbone forward over the unfinished rows; refresh their proposals/features.

        Accounting: every unfinished row gets one NFE; ``forward_tokens`` adds the real tokens
        the forward computed for the row (the whole canvas, or with a KV cache only the
        recomputed positions; cache refreshes count the whole canvas).
        """
        active = ~state.done
        n_active = int(active.sum())
        if n_active == 0:
            return
        if self.config.kv_cache != "none":
            tokens = self._forward_cached(state, active)
        else:
            everyone = n_active == state.batch_size
            rows = None if everyone else active.nonzero().squeeze(1)  # [b]
            canvas = state.canvas if everyone else state.canvas[rows]
            attention = state.attention_mask if everyone else state.attention_mask[rows]
            out = self.backbone.forward(canvas, attention, hidden_layers=self._hidden_layers)
            G = state.gen_length
            hidden = None if out.hidden is None else out.hidden[:, -G:, :]
            self._absorb(state, rows, out.logits[:, -G:, :], hidden)
            tokens = state.attention_mask.sum(-1) * active.long()
        state.nfe += active.long()
        state.forward_tokens += tokens
        if self.config.record_trace and state.trace is not None:  # draft copies keep no trace
            state.trace.append(
                {"proposal": state.proposal.cpu(), "confidence": state.confidence.cpu()}
            )

    @property
    def _hidden_layers(self) -> tuple[int, ...] | None:
        return (-1,) if self._projection is not None else None

    def _forward_cached(self, state: TraceState, active: torch.Tensor) -> torch.Tensor:
        """The forward with a KV cache (Fast-dLLM prefix/dual); returns tokens computed per row.

        Per row, the recomputed positions are the current block and everything after it
        (``prefix``) or the current block only (``dual``); all other positions are read from the
        row's cache. A row whose cached positions hold a token that differs from the canvas its
        cache was computed from (a new block has started, or a cached token changed) refreshes
        instead: a full forward that refills its cache and serves this step too. Refreshing and
        reusing rows run as (at most) two backbone calls, each row in exactly one of them.
        """
        self._update_window(state)  # the block each row commits in next
        B, L, G = state.batch_size, int(state.canvas.shape[1]), state.gen_length
        P = L - G
        if state.kv_cache is None or state.kv_canvas is None or state.kv_cache.shape[-2] != L:
            fresh = self._empty_cache(B, L)  # e.g. after the prompt region was widened
            state.kv_cache, state.kv_canvas = fresh["kv_cache"], fresh["kv_canvas"]
        assert state.kv_cache is not None and state.kv_canvas is not None
        if state.kv_refreshes is None:
            state.kv_refreshes = torch.zeros(B, dtype=torch.long, device=self.device)
        start = P + state.window_start  # [B] canvas index of the current block
        end = (
            torch.full_like(start, L) if self.config.kv_cache == "prefix" else P + state.window_end
        )
        cols = torch.arange(L, device=self.device)[None, :]  # [1, L]
        recomputed = (cols >= start[:, None]) & (cols < end[:, None])  # [B, L]
        real = state.attention_mask.bool()  # [B, L]
        stale = ((state.kv_canvas != state.canvas) & real & ~recomputed).any(-1)  # [B]
        tokens = torch.zeros(B, dtype=torch.long, device=self.device)
        for group, refresh in ((active & stale, True), (active & ~stale, False)):
            n = int(group.sum())
            if n == 0:
                continue
            rows = None if n == B else group.nonzero().squeeze(1)  # [b]
            pick = slice(None) if rows is None else rows
            lo = torch.zeros_like(start[pick]) if refresh else start[pick]  # [b]
            hi = torch.full_like(lo, L) if refresh else end[pick]  # [b]
            width = int((hi - lo).max())
            offsets = torch.arange(width, device=self.device)[None, :]
            positions = (lo[:, None] + offsets).minimum(hi[:, None] - 1)  # [b, Q]
            out = self.backbone.forward_cached(  # type: ignore[attr-defined]
                state.canvas[pick],
                state.attention_mask[pick],
                positions,
                state.kv_cache,
                rows=rows,
                hidden_layers=self._hidden_layers,
            )
            gen_cols = P + torch.arange(G, device=self.device)[None, :]  # [1, G]
            index = (gen_cols - lo[:, None]).clamp(0, width - 1)  # [b, G] column of each position
            computed = (gen_cols >= lo[:, None]) & (gen_cols < hi[:, None])  # [b, G]
            V, H = out.logits.shape[-1], None if out.hidden is None else out.hidden.shape[-1]
            logits = out.logits.gather(1, index[..., None].expand(-1, -1, V))  # [b, G, V]
            hidden = None if H is None else out.hidden.gather(1, index[..., None].expand(-1, -1, H))
            self._absorb(state, rows, logits, hidden, None if refresh else computed)
            span = (cols >= lo[:, None]) & (cols < hi[:, None])  # [b, L]
            tokens[pick] = (span & real[pick]).sum(-1)
            if refresh:
                state.kv_canvas[pick] = state.canvas[pick]
                state.kv_refreshes[pick] += 1
        return tokens

    def _absorb(
        self,
        state: TraceState,
        rows: torch.Tensor | None,
        gen_logits: torch.Tensor,
        gen_hidden: torch.Tensor | None,
        computed: torch.Tensor | None = None,
    ) -> None:
        """Turn a forward's generation-region logits into proposals and features for ``rows``.

        ``computed`` (bool ``[b, G]``, KV-cache forwards only) marks the positions the forward
        actually recomputed; the others keep their previous proposals and features.
        """
        G = state.gen_length
        logits = gen_logits.float()  # [b, G, V]
        logp = logits.log_softmax(-1)  # [b, G, V]
        probs = logp.exp()
        top_p, top_i = probs.topk(self.config.top_k, dim=-1)  # [b, G, K]
        top_logits = logits.topk(2, dim=-1).values  # [b, G, 2]
        if self.config.temperature > 0:
            proposal = self._sample(state, rows, logits)  # [b, G]
            confidence = probs.gather(-1, proposal[..., None]).squeeze(-1)
        else:
            proposal, confidence = top_i[..., 0], top_p[..., 0]
        first = state.nfe if rows is None else state.nfe[rows]
        seen = (first > 0)[:, None]  # [b, 1] rows that had a previous forward
        prev_logp = state.prev_logp if rows is None else state.prev_logp[rows]
        if prev_logp.shape[-1] == logp.shape[-1]:
            kl = (probs * (logp - prev_logp)).sum(-1).clamp_(min=0.0)  # [b, G]
            kl = torch.where(seen, kl, torch.zeros_like(kl))
        else:
            kl = torch.zeros_like(confidence)
        old = _take(state, rows, ("proposal", "confidence", "stable_steps", "kl_history"))
        stable = torch.where(seen & (proposal == old["proposal"]), old["stable_steps"] + 1, 0)
        history = torch.cat([old["kl_history"][..., 1:], kl[..., None]], dim=-1)
        history = torch.where(seen[..., None], history, old["kl_history"])  # [b, G, H]
        updates = {
            "proposal": proposal,
            "confidence": confidence,
            "margin": top_p[..., 0] - top_p[..., 1],
            "entropy": (-(probs * logp).sum(-1) / self._log_vocab).clamp_(0.0, 1.0),
            "logit_gap": top_logits[..., 0] - top_logits[..., 1],
            "topk_probs": top_p,
            "prev_confidence": torch.where(seen, old["confidence"], confidence),
            "stable_steps": stable,
            "kl": kl,
            "kl_history": history,
        }
        if self._projection is not None:
            assert gen_hidden is not None, "backbone returned no hidden states"
            h = gen_hidden[:, -G:, :].float()  # [b, G, H_model]
            h = torch.nn.functional.layer_norm(h, h.shape[-1:])
            updates["hidden"] = (h @ self._projection).clamp_(-5.0, 5.0)  # [b, G, D]
        if computed is not None:  # positions served from the cache keep what they had
            before = _take(state, rows, (*updates, "prev_logp"))
            for name, value in updates.items():
                keep = computed.view(*computed.shape, *([1] * (value.dim() - 2)))
                updates[name] = torch.where(keep, value, before[name].to(value.dtype))
            prev = before["prev_logp"].expand_as(logp)
            logp = torch.where(computed[..., None], logp, prev)
        self._write_rows(state, rows, updates, logp)

    def _write_rows(
        self,
        state: TraceState,
        rows: torch.Tensor | None,
        updates: dict[str, torch.Tensor],
        logp: torch.Tensor,
    ) -> None:
        """Store a forward's per-row results (``rows=None``: every row) and its log-probs."""
        if rows is None:
            for name, value in updates.items():
                setattr(state, name, value)
            state.prev_logp = logp
            return
        for name, value in updates.items():
            getattr(state, name)[rows] = value
        if state.prev_logp.shape[-1] != logp.shape[-1]:
            state.prev_logp = torch.zeros(
                (state.batch_size, state.gen_length, logp.shape[-1]), device=self.device
            )
        state.prev_logp[rows] = logp

    def _sample(
        self, state: TraceState, rows: torch.Tensor | None, logits: torch.Tensor
    ) -> torch.Tensor:
        """Gumbel-max sampling with one generator per row (a row's draws ignore its batch)."""
        generators = state.generators
        assert generators is not None, "sampling needs per-row generators"
        index = range(state.batch_size) if rows is None else rows.tolist()
        noise = torch.stack(
            [  # one draw per row (not per position) keeps rows independent of batch composition
                torch.rand(
                    logits.shape[1:],
                    generator=generators[i],
                    device=self.device,
                    dtype=torch.float64,
                )
                for i in index
            ]
        )  # [b, G, V]
        gumbel = -torch.log(-torch.log(noise.clamp_(1e-20, 1.0)))
        scores = logits.double() / self.config.temperature + gumbel
        return scores.argmax(-1)

    def _update_window(self, state: TraceState) -> None:
        start, end = window_bounds(
            state.committed, state.window_kind, state.window_width, state.gen_len
        )
        pos = self._positions[None, :]
        in_window = (pos >= start[:, None]) & (pos < end[:, None])  # [B, G]
        state.window_start, state.window_end = start, end
        live = in_window & ~state.done[:, None]
        state.eligible = ~state.committed & live
        if state.remask_count is not None:
            cap = self.config.remask_cap
            state.remaskable = state.committed & state.valid & live & (state.remask_count < cap)


def window_bounds(
    committed: torch.Tensor,
    window_kind: torch.Tensor,
    window_width: torch.Tensor,
    gen_len: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window start and end of every row for a given committed mask (the engine's window rule).

    Args:
        committed: bool ``[B, G]``.
        window_kind: int64 ``[B]`` (see ``WINDOW_CODES``).
        window_width: int64 ``[B]``.
        gen_len: int64 ``[B]``.

    Returns:
        ``(start, end)``, int64 ``[B]`` each: the window is ``[start, end)``.
    """
    G = committed.shape[1]
    masked = ~committed  # [B, G]
    first = torch.where(masked.any(-1), masked.long().argmax(-1), G)  # [B] first masked
    block_start = torch.div(first, window_width, rounding_mode="floor") * window_width
    start = torch.where(
        window_kind == WINDOW_CODES["block"],
        block_start,
        torch.where(window_kind == WINDOW_CODES["sliding"], first, torch.zeros_like(first)),
    )  # [B]
    end = torch.where(
        window_kind == WINDOW_CODES["full"], gen_len, (start + window_width).minimum(gen_len)
    )  # [B]
    return start, end


def window_eligible(state: TraceState, committed: torch.Tensor) -> torch.Tensor:
    """Positions that would be eligible if ``committed`` were the committed mask (drafting).

    Args:
        state: The state whose window settings apply.
        committed: bool ``[B, G]`` hypothetical committed mask.

    Returns:
        bool ``[B, G]``: masked under ``committed``, inside its window, in an unfinished row.
    """
    start, end = window_bounds(committed, state.window_kind, state.window_width, state.gen_len)
    pos = torch.arange(committed.shape[1], device=committed.device)[None, :]
    in_window = (pos >= start[:, None]) & (pos < end[:, None])
    return ~committed & in_window & ~state.done[:, None]


def _unpack(
    decision: torch.Tensor | CommitDecision,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    if isinstance(decision, CommitDecision):
        return decision.mask, decision.fill_rows, decision.tokens
    return decision, None, None


def _take(
    state: TraceState, rows: torch.Tensor | None, names: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    if rows is None:
        return {n: getattr(state, n) for n in names}
    return {n: getattr(state, n)[rows] for n in names}
