"""Copy rows out of a trace state and stack states: snapshots that can be decoded further.

The supervised controller's on-policy rounds relabel every state a policy visited by completing it
with the reference policy; these helpers make such snapshots without a second decode loop: a
snapshot is an ordinary :class:`TraceState` that :func:`~commit_env.decoding.run_to_completion`
continues.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from commit_env.decoding.state import TraceState

__all__ = ["select_rows", "concat_states"]

# Per-row engine state that a snapshot does not carry (greedy continuation, no trace).
_DROPPED = ("generators", "trace")


def select_rows(state: TraceState, rows: torch.Tensor) -> TraceState:
    """Clone the given rows of ``state`` into a new, independent state.

    Args:
        state: The source state.
        rows: int64 tensor ``[b]`` of row indices (or a bool mask ``[B]``).

    Returns:
        A state with ``b`` rows whose tensors share no memory with ``state``. Sampler generators
        are dropped (snapshots are meant for greedy continuation).
    """
    if rows.dtype == torch.bool:
        rows = rows.nonzero().squeeze(1)
    rows = rows.to(state.canvas.device)
    values = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor):
            values[f.name] = value.index_select(0, rows) if value.dim() > 0 else value.clone()
        elif f.name in _DROPPED:
            values[f.name] = None
        else:
            values[f.name] = value
    return TraceState(**values)


def concat_states(states: Sequence[TraceState]) -> TraceState:
    """Stack states with the same canvas width and generation length along the batch.

    Args:
        states: States from one decoder (same ``L``, ``G``, ``V``).

    Returns:
        One state with all rows, in order.

    Raises:
        ValueError: On an empty sequence or mismatched shapes.
    """
    if not states:
        raise ValueError("concat_states needs at least one state")
    first = states[0]
    for s in states[1:]:
        if s.canvas.shape[1] != first.canvas.shape[1] or s.gen_length != first.gen_length:
            raise ValueError(
                f"cannot stack states with canvas {tuple(s.canvas.shape)} and "
                f"{tuple(first.canvas.shape)}"
            )
    values = {}
    for f in dataclasses.fields(first):
        value = getattr(first, f.name)
        if isinstance(value, torch.Tensor):
            parts = [getattr(s, f.name) for s in states]
            widths = {p.shape[1:] for p in parts}
            if len(widths) > 1:  # prev_logp is [B, G, 1] before any second forward
                parts = [p.expand(-1, -1, max(w[-1] for w in widths)) for p in parts]
            values[f.name] = torch.cat(parts, dim=0)
        elif f.name in _DROPPED:
            values[f.name] = None
        else:
            values[f.name] = value
    return TraceState(**values)
