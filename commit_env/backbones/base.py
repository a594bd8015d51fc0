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

__all__ = ["Backbone", "BackboneOutput", "CachedBackbone", "kv_cache_support"]


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


@runtime_checkable
class CachedBackbone(Protocol):
    """Optional extension of :class:`Backbone`: forwards that reuse cached keys and values.

    The decode engine's ``kv_cache`` option (Fast-dLLM prefix and dual caches) needs it. The cache
    is one tensor per decode batch whose first dimension is B and whose second-to-last dimension
    is the canvas length L (the engine only selects rows and left-pads that axis; the backbone
    owns the rest of the layout). A forward computes the rows' tokens at ``positions`` only: their
    queries attend to the fresh keys/values of those positions and to the *cached* keys/values of
    every other position, and their fresh keys/values are written into the cache.

    Attributes:
        supports_kv_cache: Whether :meth:`forward_cached` works on this model.
        kv_cache_unsupported_reason: One line saying why not (empty when supported).
    """

    supports_kv_cache: bool
    kv_cache_unsupported_reason: str

    def new_kv_cache(self, batch: int, length: int) -> torch.Tensor:
        """An empty (zero) cache for ``batch`` rows of canvas length ``length``."""
        ...

    def forward_cached(
        self,
        canvas: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        cache: torch.Tensor,
        *,
        rows: torch.Tensor | None = None,
        hidden_layers: Sequence[int] | None = None,
    ) -> BackboneOutput:
        """Forward of the tokens at ``positions`` against the cached keys/values of the rest.

        Args:
            canvas: int64 ``[b, L]`` token ids, left-padded.
            attention_mask: ``[b, L]``, 0 on padding.
            positions: int64 ``[b, Q]`` canvas indices to compute, ascending and contiguous per
                row; a row with fewer positions repeats its last one (the copies compute the same
                values and are ignored). ``arange(L)`` for every row is a full forward that
                (re)fills the whole cache.
            cache: The batch's cache (from :meth:`new_kv_cache`), updated in place.
            rows: int64 ``[b]`` rows of ``cache`` that the ``b`` canvas rows are (``None``: the
                cache has exactly ``b`` rows, in order).
            hidden_layers: As in :meth:`Backbone.forward`.

        Returns:
            Aligned logits ``[b, Q, V]`` (row ``k`` scores the token at ``positions[:, k]``) and,
            if requested, hidden states ``[b, Q, H * len(hidden_layers)]``.
        """
        ...


def kv_cache_support(backbone: object) -> tuple[bool, str]:
    """Whether ``backbone`` can run the engine's KV-cache modes, and if not, why (one line).

    Args:
        backbone: Any backbone.

    Returns:
        ``(supported, reason)``; ``reason`` is empty when supported.
    """
    if not callable(getattr(backbone, "forward_cached", None)):
        return False, f"{type(backbone).__name__} has no forward_cached (no KV-cache support)"
    if not bool(getattr(backbone, "supports_kv_cache", False)):
        reason = str(getattr(backbone, "kv_cache_unsupported_reason", "") or "")
        return False, reason or f"{type(backbone).__name__} reports no KV-cache support"
    return True, ""
