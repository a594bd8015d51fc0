"""Controller inputs, built the same way from a live trace state and from stored records.

A controller input batch holds, per state: the prompt (ids, right-padded), the generation region's
tokens (committed tokens, mask id elsewhere), the proposals, the shared features
(:class:`~commit_env.decoding.FeatureBuilder`), eligibility, ``visible_end`` (positions at or
right of it are hidden from the controller: the window's right edge; training crops it at random),
and two input families a confidence heuristic cannot see:

* **setting features** (:data:`SETTING_FEATURES`, one vector per row): window kind and width, G,
  step budget and steps left, so one checkpoint serves every setting;
* **structure features** (:data:`STRUCTURE_FEATURES`, per position): conflicts between proposals
  (the same token proposed at several masked positions, a proposal repeating an already committed
  token or its neighbour), how often the proposal occurs in the prompt versus how often it is
  already used (a permutation/copy has a fixed multiset of tokens), and end-of-answer cues.

Setting features are computed by :func:`setting_features` from the same tensors on both paths
(live state and stored records); structure features by :func:`structure_features` inside the
model's forward (so they always match the visible window, also after a training crop).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from commit_env.decoding import FeatureBuilder, TraceState
from commit_env.decoding.config import parse_window
from commit_env.decoding.state import WINDOW_CODES

__all__ = [
    "ControllerBatch",
    "SETTING_FEATURES",
    "SEPARATORS",
    "STRUCTURE_FEATURES",
    "batch_from_state",
    "batch_from_records",
    "setting_features",
    "separator_token_ids",
    "structure_features",
]

#: Per-row setting features (columns of ``ControllerBatch.setting``).
SETTING_FEATURES: tuple[str, ...] = (
    "window_full",  # one-hot window kind
    "window_block",
    "window_sliding",
    "window_frac",  # window width / G
    "log_gen_len",  # log2(G) / 8
    "budget_frac",  # step budget / G (1 when unlimited)
    "budget_limited",  # 1 if a budget was set
    "steps_left_frac",  # (budget - NFE) / G, clamped to [0, 1]
    "need_per_step",  # log1p(masked / max(steps left, 1)) / log(1 + G)
)

#: Per-position structure features (:func:`structure_features`, computed in the forward).
STRUCTURE_FEATURES: tuple[str, ...] = (
    "dup_proposals",  # other visible masked positions proposing the same token (min(n, 4) / 4)
    "dup_committed",  # the proposal already occurs among the row's committed tokens
    "same_as_left",  # equals the left neighbour's token (committed) or proposal
    "same_as_right",  # equals the right neighbour's token or proposal
    "in_prompt",  # the proposal occurs in the prompt
    "prompt_surplus",  # clamp(count in prompt - count committed, -2, 2) / 2
    "is_eos",  # the proposal is an end-of-answer token
    "eos_left",  # a committed or proposed EOS lies left of the position
    # Segments are the runs between separator tokens (``;``, ``,``, newline): the rows of a grid,
    # the items of a list. A grid row must not repeat a symbol, nor may a column (the same offset
    # in another segment); a list must not repeat an item (offset 0 of another segment).
    "row_committed",  # the proposal equals a committed token in the same segment
    "row_proposed",  # ... another masked position's proposal in the same segment (min(n, 2) / 2)
    "column_committed",  # ... a committed token at the same offset in another segment
    "column_proposed",  # ... a proposal at the same offset in another segment (min(n, 2) / 2)
    # Whole items: the position's segment, read as committed tokens and proposals, spells the same
    # item as another segment (a list of words must not repeat one; a character-level tokenizer
    # makes "pear,pear" no token-level conflict).
    "item_committed",  # ... the same item as a fully committed segment
    "item_proposed",  # ... the same item as a segment that still holds proposals
)

#: Strings whose token (when it is a single one) separates segments (:func:`separator_token_ids`).
SEPARATORS: tuple[str, ...] = (";", ",", "\n")


@dataclass
class ControllerBatch:
    """One batch of controller inputs (B states, G positions, P prompt width, F features).

    Attributes:
        prompt: int64 ``[B, P]`` prompt ids, right-padded with 0.
        prompt_mask: bool ``[B, P]`` real prompt tokens.
        tokens: int64 ``[B, G]`` generation region (committed tokens / mask id).
        proposal: int64 ``[B, G]`` proposals.
        features: float32 ``[B, G, F]``.
        eligible: bool ``[B, G]``.
        visible_end: int64 ``[B]`` generation positions ``>= visible_end`` are hidden.
        window_start: int64 ``[B]`` first generation index of the window.
        committed: bool ``[B, G]`` committed positions (padding counts as committed).
        setting: float32 ``[B, S]`` (:data:`SETTING_FEATURES`).
        labels: float32 ``[B, G]`` 1 stable / 0 unstable, or ``None`` at deployment.
        eos_labels: float32 ``[B, G]`` 1 where the final token is an EOS, or ``None``.
    """

    prompt: torch.Tensor
    prompt_mask: torch.Tensor
    tokens: torch.Tensor
    proposal: torch.Tensor
    features: torch.Tensor
    eligible: torch.Tensor
    visible_end: torch.Tensor
    window_start: torch.Tensor
    committed: torch.Tensor
    setting: torch.Tensor
    labels: torch.Tensor | None = None
    eos_labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> ControllerBatch:
        """Move every tensor to ``device``."""
        moved = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v)
            for k, v in self.__dict__.items()
        }
        return ControllerBatch(**moved)

    def right_crop(self, generator: torch.Generator) -> ControllerBatch:
        """Hide a random suffix of each visible window (training augmentation).

        The new right edge is drawn uniformly between one past the first eligible position and the
        current edge, so the policy sees windows of every width it may be deployed with.
        """
        B, G = self.eligible.shape
        pos = torch.arange(G, device=self.eligible.device)
        first = torch.where(
            self.eligible.any(-1), self.eligible.long().argmax(-1), self.visible_end - 1
        )
        low = (first + 1).clamp(max=self.visible_end)  # [B]
        span = (self.visible_end - low + 1).clamp(min=1)
        u = torch.rand(B, generator=generator, device="cpu").to(self.eligible.device)
        end = low + (u * span).long().clamp(max=span - 1)  # [B] in [low, visible_end]
        visible = pos[None, :] < end[:, None]
        return replace(self, visible_end=end, eligible=self.eligible & visible)


def setting_features(
    *,
    window_kind: torch.Tensor,
    window_width: torch.Tensor,
    gen_len: torch.Tensor,
    budget: torch.Tensor,
    budget_limited: torch.Tensor,
    nfe: torch.Tensor,
    masked: torch.Tensor,
) -> torch.Tensor:
    """Per-row setting features (:data:`SETTING_FEATURES`).

    Args:
        window_kind: int64 ``[B]`` window codes (``WINDOW_CODES``).
        window_width: int64 ``[B]`` effective window widths.
        gen_len: int64 ``[B]`` row generation lengths.
        budget: int64 ``[B]`` step budgets (G when unlimited).
        budget_limited: bool ``[B]``.
        nfe: int64 ``[B]`` forwards so far.
        masked: int64 ``[B]`` positions still masked.

    Returns:
        float32 ``[B, S]``, every value in ``[0, 1]`` (``log_gen_len`` reaches 1 at G = 256).
    """
    g = gen_len.float().clamp(min=1.0)
    kind = torch.stack([window_kind == WINDOW_CODES[k] for k in ("full", "block", "sliding")], -1)
    limited = budget_limited.float()
    left = (budget - nfe).float().clamp(min=0.0)
    cols = [
        kind.float(),
        (window_width.float() / g).clamp(0.0, 1.0)[:, None],
        (torch.log2(g) / 8.0).clamp(0.0, 1.5)[:, None],
        torch.where(budget_limited, (budget.float() / g).clamp(0.0, 1.0), 1.0)[:, None],
        limited[:, None],
        (left / g).clamp(0.0, 1.0)[:, None],
        (torch.log1p(masked.float() / left.clamp(min=1.0)) / torch.log1p(g))[:, None],
    ]
    return torch.cat(cols, dim=-1)


def structure_features(
    tokens: torch.Tensor,
    proposal: torch.Tensor,
    committed: torch.Tensor,
    visible: torch.Tensor,
    prompt: torch.Tensor,
    prompt_mask: torch.Tensor,
    eos_ids: Sequence[int],
    separator_ids: Sequence[int] = (),
) -> torch.Tensor:
    """Per-position conflict and end-of-answer features (:data:`STRUCTURE_FEATURES`).

    Args:
        tokens: int64 ``[B, G]`` generation region.
        proposal: int64 ``[B, G]`` proposals.
        committed: bool ``[B, G]`` committed positions (padding beyond a row's length counts as
            committed but is excluded through ``visible``).
        visible: bool ``[B, G]`` positions the controller may see.
        prompt: int64 ``[B, P]`` prompt ids.
        prompt_mask: bool ``[B, P]`` real prompt tokens.
        eos_ids: End-of-answer token ids.
        separator_ids: Tokens that end a segment (:func:`separator_token_ids`); none: the whole
            answer is one segment (the column features are then zero).

    Returns:
        float32 ``[B, G, C]``; zero at hidden positions.
    """
    B, G = tokens.shape
    dev = tokens.device
    masked_vis = ~committed & visible  # [B, G]
    comm_vis = committed & visible
    # current token per position: committed token, else the proposal
    current = torch.where(committed, tokens, proposal)  # [B, G]
    same = proposal[:, :, None] == proposal[:, None, :]  # [B, G, G]
    eye = torch.eye(G, dtype=torch.bool, device=dev)[None]
    dup_prop = (same & masked_vis[:, None, :] & ~eye).sum(-1).clamp(max=4).float() / 4.0
    dup_prop = dup_prop * masked_vis  # only masked positions compete for a token
    hits_committed = proposal[:, :, None] == tokens[:, None, :]  # [B, G, G]
    used = (hits_committed & comm_vis[:, None, :]).sum(-1)  # [B, G] committed copies
    dup_comm = (used > 0).float()
    left = torch.cat([torch.full_like(current[:, :1], -1), current[:, :-1]], dim=1)
    right = torch.cat([current[:, 1:], torch.full_like(current[:, :1], -1)], dim=1)
    right_visible = torch.cat([visible[:, 1:], torch.zeros_like(visible[:, :1])], dim=1)
    same_left = (proposal == left).float()
    same_right = ((proposal == right) & right_visible).float()
    in_prompt_count = ((proposal[:, :, None] == prompt[:, None, :]) & prompt_mask[:, None, :]).sum(
        -1
    )  # [B, G]
    in_prompt = (in_prompt_count > 0).float()
    surplus = (in_prompt_count - used).clamp(-2, 2).float() / 2.0
    eos = torch.tensor(list(eos_ids) or [-1], device=dev)
    is_eos = torch.isin(proposal, eos)
    any_eos = torch.isin(current, eos) & visible  # [B, G]
    eos_left = (any_eos.long().cumsum(-1) - any_eos.long()) > 0
    cols = [dup_prop, dup_comm, same_left, same_right, in_prompt, surplus, is_eos.float()]
    cols.append(eos_left.float())
    cols += _segment_conflicts(current, proposal, committed, visible, eos, separator_ids)
    cols += _item_repeats(current, committed, visible, eos, separator_ids)
    out = torch.stack(cols, dim=-1)  # [B, G, C]
    return out * visible[..., None]


def _segment_conflicts(
    current: torch.Tensor,
    proposal: torch.Tensor,
    committed: torch.Tensor,
    visible: torch.Tensor,
    eos: torch.Tensor,
    separator_ids: Sequence[int],
) -> list[torch.Tensor]:
    """Row and column conflicts of each masked position's proposal (four ``[B, G]`` columns)."""
    G = current.shape[1]
    dev = current.device
    sep = torch.tensor(list(separator_ids) or [-1], device=dev)
    is_sep = torch.isin(current, sep)
    idx = torch.arange(G, device=dev).expand_as(current)
    segment = is_sep.long().cumsum(-1)  # a separator opens the next segment
    last_sep = torch.where(is_sep, idx, torch.full_like(idx, -1)).cummax(-1).values
    offset = idx - last_sep - 1
    # content: visible positions holding neither a separator nor an end-of-answer token
    content = visible & ~is_sep & ~torch.isin(current, eos)  # [B, G]
    asks = ~committed & visible & ~torch.isin(proposal, sep) & ~torch.isin(proposal, eos)
    eye = torch.eye(G, dtype=torch.bool, device=dev)[None]
    pair = (proposal[:, :, None] == current[:, None, :]) & content[:, None, :] & ~eye
    pair &= asks[:, :, None]  # [B, G(i), G(j)]: j holds what i proposes
    same_row = segment[:, :, None] == segment[:, None, :]
    same_col = (offset[:, :, None] == offset[:, None, :]) & ~same_row
    by_commit, by_proposal = committed[:, None, :], ~committed[:, None, :]
    return [
        (pair & same_row & by_commit).any(-1).float(),
        (pair & same_row & by_proposal).sum(-1).clamp(max=2).float() / 2.0,
        (pair & same_col & by_commit).any(-1).float(),
        (pair & same_col & by_proposal).sum(-1).clamp(max=2).float() / 2.0,
    ]


#: Rolling-hash modulus and base of :func:`_item_repeats`: a prime below 2^31, so a product of two
#: residues and a sum of up to 2^20 reduced terms stay inside int64.
_HASH_MOD, _HASH_BASE = 2_147_483_629, 1_000_003


@functools.lru_cache(maxsize=16)
def _hash_powers(length: int) -> torch.Tensor:
    """``_HASH_BASE ** k % _HASH_MOD`` for ``k < length`` (int64, CPU; cached per length)."""
    powers, value = [], 1
    for _ in range(length):
        powers.append(value)
        value = value * _HASH_BASE % _HASH_MOD
    return torch.tensor(powers, dtype=torch.long)


def _item_repeats(
    current: torch.Tensor,
    committed: torch.Tensor,
    visible: torch.Tensor,
    eos: torch.Tensor,
    separator_ids: Sequence[int],
) -> list[torch.Tensor]:
    """Whether each masked position's segment spells the same item as another segment.

    A segment's item is the sequence of its content tokens (committed token, else proposal); two
    segments match when their lengths and rolling hashes agree. Returns two ``[B, G]`` columns: a
    match with a fully committed segment, and a match with one that still holds proposals.
    """
    B, G = current.shape
    dev = current.device
    if not separator_ids:
        zero = torch.zeros(B, G, device=dev)
        return [zero, zero]
    sep = torch.tensor(list(separator_ids), device=dev)
    is_sep = torch.isin(current, sep)
    idx = torch.arange(G, device=dev).expand_as(current)
    segment = is_sep.long().cumsum(-1)  # [B, G] in 0..G
    last_sep = torch.where(is_sep, idx, torch.full_like(idx, -1)).cummax(-1).values
    offset = idx - last_sep - 1
    content = visible & ~is_sep & ~torch.isin(current, eos)
    powers = _hash_powers(G).to(dev)
    terms = ((current.clamp(min=0) + 1) % _HASH_MOD) * powers[offset.clamp(min=0)] % _HASH_MOD
    terms = terms * content
    n_seg = G + 1
    seg_hash = torch.zeros(B, n_seg, dtype=torch.long, device=dev).scatter_add_(1, segment, terms)
    seg_hash = seg_hash % _HASH_MOD
    seg_len = torch.zeros(B, n_seg, dtype=torch.long, device=dev)
    seg_len.scatter_add_(1, segment, content.long())
    open_ = torch.zeros(B, n_seg, dtype=torch.long, device=dev)
    open_.scatter_add_(1, segment, (content & ~committed).long())
    pos_hash, pos_len = seg_hash.gather(1, segment), seg_len.gather(1, segment)
    pos_open = open_.gather(1, segment) > 0  # the segment still holds a proposal
    # j stands for its segment: compare i's segment with every content position's segment
    match = (pos_hash[:, :, None] == pos_hash[:, None, :]) & (
        pos_len[:, :, None] == pos_len[:, None, :]
    )
    match &= (segment[:, :, None] != segment[:, None, :]) & content[:, None, :]
    match &= (content & ~committed)[:, :, None]  # only masked positions ask
    return [
        (match & ~pos_open[:, None, :]).any(-1).float(),
        (match & pos_open[:, None, :]).any(-1).float(),
    ]


def separator_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the :data:`SEPARATORS` the tokenizer encodes as one token each (sorted, unique)."""
    ids = set()
    for text in SEPARATORS:
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1 and encoded[0] != getattr(tokenizer, "unk_token_id", None):
            ids.add(int(encoded[0]))
    return sorted(ids)


def batch_from_state(state: TraceState, builder: FeatureBuilder) -> ControllerBatch:
    """Build controller inputs from a live decode state (deployment path).

    Args:
        state: The trace state.
        builder: The feature builder the controller was trained with.

    Returns:
        The batch on the state's device.
    """
    G = state.gen_length
    P = state.canvas.shape[1] - G
    prompt_mask = state.attention_mask[:, :P].bool()  # [B, P] left-padded
    # Right-align to left-align: sort so real tokens come first (stable keeps their order).
    order = (~prompt_mask).long().argsort(dim=-1, stable=True)
    prompt = state.canvas[:, :P].gather(1, order) * prompt_mask.gather(1, order)
    prompt_mask = prompt_mask.gather(1, order)
    setting = setting_features(
        window_kind=state.window_kind,
        window_width=state.window_width,
        gen_len=state.gen_len,
        budget=state.budget,
        budget_limited=state.budget_limited,
        nfe=state.nfe,
        masked=(state.masked & state.valid).sum(-1),
    )
    return ControllerBatch(
        prompt=prompt,
        prompt_mask=prompt_mask,
        tokens=state.gen_tokens,
        proposal=state.proposal,
        features=builder.stack(state),
        eligible=state.eligible,
        visible_end=state.window_end,
        window_start=state.window_start,
        committed=state.committed,
        setting=setting,
    )


def _record_setting(record: dict[str, Any], meta: dict[str, Any]) -> tuple[int, int, bool]:
    """``(window code, width, budget_limited)`` of a step record (old traces: from the meta)."""
    if "window_kind" in record:
        return (
            int(record["window_kind"]),
            int(record["window_width"]),
            bool(record["budget_limited"]),
        )
    kind, width = parse_window(meta["window"])
    g = int(record["gen_len"])
    return (
        WINDOW_CODES[kind],
        g if width is None else min(width, g),
        meta["step_budget"] is not None,
    )


#: Per-record scalars collated by :func:`batch_from_records`, in column order.
_RECORD_SCALARS: tuple[str, ...] = (
    "window_kind",
    "window_width",
    "gen_len",
    "budget",
    "budget_limited",
    "nfe",
    "window_start",
    "window_end",
)


def _record_scalars(record: dict[str, Any], meta: dict[str, Any]) -> tuple[int, ...]:
    """The :data:`_RECORD_SCALARS` of a step record."""
    kind, width, limited = _record_setting(record, meta)
    return (
        kind,
        width,
        int(record["gen_len"]),
        int(record["budget"]),
        int(limited),
        int(record["nfe"]),
        int(record["window_start"]),
        int(record["window_end"]),
    )


def _padded_arrays(
    records: Sequence[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Stack step records into arrays right-padded to the longest prompt and widest G.

    Returns:
        ``prompt`` and ``prompt_mask`` ``[B, P]``; ``tokens``, ``proposal``, ``label`` (-1 on
        padding), ``eligible`` and ``eos_label`` ``[B, G]``; ``features`` ``[B, G, F]``;
        ``scalars`` ``[B, 8]`` (columns :data:`_RECORD_SCALARS`).
    """
    B = len(records)
    P = max(len(r["prompt_ids"]) for r in records)
    G = max(len(r["tokens"]) for r in records)
    F = records[0]["features"].shape[-1]
    out = {
        "prompt": np.zeros((B, P), dtype=np.int64),
        "prompt_mask": np.zeros((B, P), dtype=bool),
        "tokens": np.zeros((B, G), dtype=np.int64),
        "proposal": np.zeros((B, G), dtype=np.int64),
        "label": np.full((B, G), -1, dtype=np.int64),
        "eligible": np.zeros((B, G), dtype=bool),
        "eos_label": np.zeros((B, G), dtype=np.float32),
        "features": np.zeros((B, G, F), dtype=np.float32),
        "scalars": np.zeros((B, len(_RECORD_SCALARS)), dtype=np.int64),
    }
    for b, r in enumerate(records):
        n, g = len(r["prompt_ids"]), len(r["tokens"])
        out["prompt"][b, :n] = r["prompt_ids"]
        out["prompt_mask"][b, :n] = True
        for key in ("tokens", "proposal", "label", "eligible", "features"):
            out[key][b, :g] = r[key]
        if "eos_label" in r:
            out["eos_label"][b, :g] = np.frombuffer(r["eos_label"], np.int8)
        out["scalars"][b] = _record_scalars(r, meta)
    return out


def batch_from_records(
    records: Sequence[dict[str, Any]], meta: dict[str, Any] | None = None
) -> ControllerBatch:
    """Collate stored step records (see :class:`~commit_env.traces.TraceDataset`) for training.

    Records of different generation widths are right-padded to the widest (padding positions are
    committed, hidden and unlabelled).

    Args:
        records: Step records.
        meta: The trace manifest's meta (the setting of traces collected before per-row
            settings were recorded).

    Returns:
        The batch on the CPU with ``labels`` (unlabelled positions are not eligible) and
        ``eos_labels`` set.
    """
    t = torch.from_numpy
    arrays = _padded_arrays(records, meta or {})
    label = arrays["label"]
    arrays["eligible"] &= label >= 0
    masked = t(label >= 0)  # labelled = masked at that step
    s = dict(zip(_RECORD_SCALARS, t(arrays["scalars"]).unbind(1), strict=True))
    setting = setting_features(
        window_kind=s["window_kind"],
        window_width=s["window_width"],
        gen_len=s["gen_len"],
        budget=s["budget"],
        budget_limited=s["budget_limited"].bool(),
        nfe=s["nfe"],
        masked=masked.sum(-1),
    )
    return ControllerBatch(
        prompt=t(arrays["prompt"]),
        prompt_mask=t(arrays["prompt_mask"]),
        tokens=t(arrays["tokens"]),
        proposal=t(arrays["proposal"]),
        features=t(arrays["features"]),
        eligible=t(arrays["eligible"]),
        visible_end=s["window_end"].clone(),
        window_start=s["window_start"].clone(),
        committed=~masked,
        setting=setting,
        labels=t((label == 1).astype(np.float32)),
        eos_labels=t(arrays["eos_label"]),
    )
