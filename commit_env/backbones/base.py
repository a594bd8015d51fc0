"""The frozen denoiser protocol.

Every backbone returns *aligned* logits: row ``i`` of ``logits`` scores the token at canvas position
``i``. Models whose logit ``i - 1`` predicts token ``i`` (Dream, AR-initialised models) are shifted
inside their adapter, never downstream.

Dimensions: B rows, L = P + G canvas length, V vocabulary, H hidden width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Backbone", "BackboneOutput"]


@dataclass(frozen=True)
class BackboneOutput:
    """Result of one backbone forward.

    Attributes:
        logits: float tensor ``[B, L, V]`` on the backbone's device, aligned (row i scores token i).
        hidden: float tensor ``[B, L, H * n_layers]`` of the requested hidden layers concatenated on
            the last dimension, or ``None`` when no hidden states were requested.
    """

    logits: torch.Tensor
    hidden: torch.Tensor | None = None


@runtime_checkable
class Backbone(Protocol):
    """A frozen masked-diffusion denoiser.

    Attributes:
        name: The spec the backbone was loaded from (``"tiny"``, ``"hf:..."``).
        mask_token_id: Id of the ``[MASK]`` token that fills the canvas.
        pad_token_id: Id used for left padding (never equal to ``mask_token_id``).
        eos_token_ids: Ids that end a completion.
        vocab_size: V, the size of the logits' last dimension.
        hidden_size: H, the width of one hidden layer.
        max_length: Longest canvas (prompt + generation) the model accepts.
        tokenizer: A transformers tokenizer (encodes prompts, decodes completions).
        device: Where the model's parameters live.
        dtype: The model's floating point type.
    """

    name: str
    mask_token_id: int
    pad_token_id: int
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    hidden_size: int
    max_length: int
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype

    def forward(
        self,
        canvas: torch.Tensor,
        attention_mask: torch.Tensor,
        hidden_layers: Sequence[int] | None = None,
    ) -> BackboneOutput:
        """Run one forward pass.

        Args:
            canvas: int64 tensor ``[B, L]`` of token ids on the backbone's device, left-padded.
            attention_mask: int64/bool tensor ``[B, L]``, 0 on padding.
            hidden_layers: Indices into the model's hidden states (``-1`` = last layer) to return,
                or ``None`` for no hidden states.

        Returns:
            The aligned logits and, if requested, hidden states.
        """
        ...

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenize prompts into id lists (no padding), with the model's usual special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Turn completion ids into text, dropping special tokens."""
        ...
