"""Row surgery on a :class:`TraceState`: swap finished rows for freshly started ones.

The vector environments keep every slot in **one** batched state so that a single
:meth:`Decoder.step` (one backbone forward) serves all of them. When some slots finish, their rows
are replaced by rows of a separately started state (one :meth:`Decoder.start` call for all slots
that reset together). The two states may have different prompt widths P; because the backbone
adapter derives position ids from the attention mask's cumulative sum, extra left padding changes
no row's logits, so the narrower state is simply left-padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from commit_env.decoding.state import TraceState

__all__ = ["prompt_width", "replace_rows", "widen_prompt"]


def prompt_width(state: TraceState) -> int:
    """P, the prompt width of ``state`` (canvas length minus generation length).

    Args:
        state: A decode state.

    Returns:
        ``L - G``.
    """
    return int(state.canvas.shape[1]) - state.gen_length


def widen_prompt(state: TraceState, new_width: int, pad_token_id: int) -> TraceState:
    """Left-pad the prompt region of ``state`` to ``new_width`` columns, in place.

    Args:
        state: A decode state with prompt width P.
        new_width: The new prompt width P' (>= P).
        pad_token_id: Token written into the new canvas columns (their attention is 0).

    Returns:
        The same state object, with ``canvas`` and ``attention_mask`` of shape ``[B, P' + G]``.

    Raises:
        ValueError: If ``new_width`` is smaller than the current prompt width.
    """
    P = prompt_width(state)
    if new_width < P:
        raise ValueError(f"cannot narrow the prompt width from {P} to {new_width}")
    if new_width == P:
        return state
    B, extra = state.batch_size, new_width - P
    dev = state.canvas.device
    pad = torch.full((B, extra), pad_token_id, dtype=state.canvas.dtype, device=dev)
    state.canvas = torch.cat([pad, state.canvas], dim=1)  # [B, P' + G]
    zeros = torch.zeros((B, extra), dtype=state.attention_mask.dtype, device=dev)
    state.attention_mask = torch.cat([zeros, state.attention_mask], dim=1)  # [B, P' + G]
    if state.kv_canvas is not None:  # padded keys are masked, so the cached entries stay exact
        state.kv_canvas = torch.cat([pad.to(state.kv_canvas.dtype), state.kv_canvas], dim=1)
    if state.kv_cache is not None:  # the cache keeps L on its second-to-last axis
        cache = state.kv_cache
        shape = (*cache.shape[:-2], extra, cache.shape[-1])
        blank = torch.zeros(shape, dtype=cache.dtype, device=cache.device)
        state.kv_cache = torch.cat([blank, cache], dim=-2)
    return state


def replace_rows(
    state: TraceState,
    rows: Sequence[int] | torch.Tensor,
    fresh: TraceState,
    *,
    pad_token_id: int,
) -> TraceState:
    """Overwrite rows ``rows`` of ``state`` with the rows of ``fresh``, in place.

    Every per-row tensor field (``state.tensor_fields()``) is copied, and so are the per-row
    entries of ``generators`` (sampled proposals). Whichever state has the narrower
    prompt region is left-padded first. ``prev_logp`` is allocated lazily by the engine with a
    last dimension of 1; when the two states disagree, the narrow one is widened with zeros (a row
    only reads ``prev_logp`` after its own first forward, which rewrote it).

    Args:
        state: The batched state, B rows, generation length G.
        rows: b distinct row indices of ``state``.
        fresh: A state with b rows and the same G (usually straight from :meth:`Decoder.start`).
        pad_token_id: The backbone's padding id (for prompt widening).

    Returns:
        ``state``, with the rows replaced.

    Raises:
        ValueError: If the row count or the generation length do not match, or ``hidden`` is
            present in only one of the two states.
    """
    index = torch.as_tensor(rows, dtype=torch.long, device=state.canvas.device).reshape(-1)  # [b]
    if index.numel() != fresh.batch_size:
        raise ValueError(f"got {index.numel()} rows to replace but fresh has {fresh.batch_size}")
    if fresh.gen_length != state.gen_length:
        raise ValueError(
            f"generation lengths differ: state G={state.gen_length}, fresh G={fresh.gen_length}"
        )
    if (state.hidden is None) != (fresh.hidden is None):
        raise ValueError("hidden features are present in only one of the two states")
    P, P_fresh = prompt_width(state), prompt_width(fresh)
    if P_fresh > P:
        widen_prompt(state, P_fresh, pad_token_id)
    elif P_fresh < P:
        # Widen a shallow copy so that the caller's fresh state keeps its own shape.
        fresh = _shallow_copy(fresh)
        widen_prompt(fresh, P, pad_token_id)
    if state.prev_logp.shape[-1] != fresh.prev_logp.shape[-1]:
        if state.prev_logp.shape[-1] < fresh.prev_logp.shape[-1]:
            state.prev_logp = _zero_widen(state.prev_logp, fresh.prev_logp.shape[-1])
        else:
            fresh = _shallow_copy(fresh)
            fresh.prev_logp = _zero_widen(fresh.prev_logp, state.prev_logp.shape[-1])
    for name in state.tensor_fields():
        source = getattr(fresh, name)
        assert source is not None, f"fresh state lacks tensor field {name!r}"
        target = getattr(state, name)
        # Out of place: after a full-batch forward the engine stores some fields as views of one
        # another (``confidence`` is column 0 of ``topk_probs``), so in-place row writes into one
        # field could silently change another.
        setattr(state, name, target.index_copy(0, index, source.to(target.dtype)))
    generators = state.generators
    if generators is not None:
        fresh_generators = fresh.generators
        if fresh_generators is None:
            raise ValueError("state samples proposals (has generators) but fresh does not")
        for slot, generator in zip(index.tolist(), fresh_generators, strict=True):
            generators[slot] = generator
    return state


def _zero_widen(tensor: torch.Tensor, width: int) -> torch.Tensor:
    out = torch.zeros((*tensor.shape[:-1], width), dtype=tensor.dtype, device=tensor.device)
    out[..., : tensor.shape[-1]] = tensor
    return out


def _shallow_copy(state: TraceState) -> TraceState:
    return TraceState(**{f: getattr(state, f) for f in state.__dataclass_fields__})
