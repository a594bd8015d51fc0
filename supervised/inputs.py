"""Controller inputs, built the same way from a live trace state and from stored records.

A controller input batch holds, per state: the prompt (ids, right-padded), the generation region's
tokens (committed tokens, mask id elsewhere), the proposals, the shared features
(:class:`~commit_env.decoding.FeatureBuilder`), eligibility, and ``visible_end``: positions at or
right of it are hidden from the controller (the window's right edge; training crops it at random).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from commit_env.decoding import FeatureBuilder, TraceState

__all__ = ["ControllerBatch", "batch_from_state", "batch_from_records"]


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
        labels: float32 ``[B, G]`` 1 stable / 0 unstable, or ``None`` at deployment.
    """

    prompt: torch.Tensor
    prompt_mask: torch.Tensor
    tokens: torch.Tensor
    proposal: torch.Tensor
    features: torch.Tensor
    eligible: torch.Tensor
    visible_end: torch.Tensor
    labels: torch.Tensor | None = None

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
    return ControllerBatch(
        prompt=prompt,
        prompt_mask=prompt_mask.gather(1, order),
        tokens=state.gen_tokens,
        proposal=state.proposal,
        features=builder.stack(state),
        eligible=state.eligible,
        visible_end=state.window_end,
    )


def batch_from_records(records: Sequence[dict[str, Any]]) -> ControllerBatch:
    """Collate stored step records (see :class:`~commit_env.traces.TraceDataset`) for training.

    Args:
        records: Step records with equal generation length.

    Returns:
        The batch on the CPU with ``labels`` set (unlabelled positions are not eligible).
    """
    B = len(records)
    P = max(len(r["prompt_ids"]) for r in records)
    prompt = np.zeros((B, P), dtype=np.int64)
    prompt_mask = np.zeros((B, P), dtype=bool)
    for b, r in enumerate(records):
        prompt[b, : len(r["prompt_ids"])] = r["prompt_ids"]
        prompt_mask[b, : len(r["prompt_ids"])] = True
    label = np.stack([r["label"] for r in records]).astype(np.int64)  # [B, G]
    eligible = np.stack([r["eligible"] for r in records]) & (label >= 0)
    return ControllerBatch(
        prompt=torch.from_numpy(prompt),
        prompt_mask=torch.from_numpy(prompt_mask),
        tokens=torch.from_numpy(np.stack([r["tokens"] for r in records]).astype(np.int64)),
        proposal=torch.from_numpy(np.stack([r["proposal"] for r in records]).astype(np.int64)),
        features=torch.from_numpy(np.stack([r["features"] for r in records]).astype(np.float32)),
        eligible=torch.from_numpy(eligible),
        visible_end=torch.tensor([int(r["window_end"]) for r in records], dtype=torch.long),
        labels=torch.from_numpy((label == 1).astype(np.float32)),
    )
