"""Text pictures of a decode row (the envs' ``render_mode="ansi"``)."""

from __future__ import annotations

from commit_env.backbones.base import Backbone
from commit_env.decoding.state import TraceState

__all__ = ["render_row"]


def render_row(state: TraceState, row: int, backbone: Backbone, prompt: str = "") -> str:
    """Text picture of one row: committed tokens, masks, and the latest step's commits.

    Legend: ``?`` masked and eligible, ``_`` masked outside the window, ``[x]`` committed in
    the latest step, ``.`` padding beyond the row's generation length.

    Args:
        state: The batched trace state.
        row: Row index.
        backbone: Decodes token ids to text.
        prompt: The row's prompt (shown as is).

    Returns:
        A multi-line string.
    """
    tokens = state.gen_tokens[row].tolist()
    committed = state.committed[row].tolist()
    eligible = state.eligible[row].tolist()
    valid = state.valid[row].tolist()
    step = int(state.step[row])
    # Positions whose commit step is the latest step were committed by the last action.
    fresh = ((state.commit_step[row] == step - 1) & state.valid[row]).tolist() if step else []
    eos = set(backbone.eos_token_ids)
    cells = []
    for i, tok in enumerate(tokens):
        if not valid[i]:
            cells.append(".")
        elif not committed[i]:
            cells.append("?" if eligible[i] else "_")
        else:
            text = "<eos>" if tok in eos else backbone.decode([tok])
            text = text if text.strip() else repr(text)
            cells.append(f"[{text}]" if fresh and fresh[i] else text)
    status = "done" if bool(state.done[row]) else "running"
    return (
        f"step {step}/{int(state.budget[row])}  nfe {int(state.nfe[row])}  {status}\n"
        f"prompt: {prompt}\n"
        f"canvas: {' '.join(cells)}\n"
    )
