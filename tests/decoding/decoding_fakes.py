"""Fast deterministic stand-ins for a backbone, shared by the decoding and policy tests.

``FakeBackbone`` implements the :class:`commit_env.backbones.base.Backbone` protocol with a fixed,
seeded function of the whole row: every logit depends on every real token of the row, so the
proposals change as tokens get committed. It ignores left padding (positions count from the first
real token, the context only averages real tokens), so a row's logits do not depend on which other
rows share its batch. ``CountingBackbone`` wraps any backbone and records every forward call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from commit_env.backbones.base import Backbone, BackboneOutput

PAD, MASK, EOS = 0, 1, 2
FIRST_WORD = 3  # ids below this are special


class FakeBackbone:
    """A seeded random "denoiser" over a small vocabulary.

    Args:
        vocab_size: V (ids 0, 1, 2 are PAD, MASK, EOS).
        hidden_size: H, width of the returned hidden states.
        max_length: Longest canvas accepted.
        seed: Seed of the fixed random weights.
        scale: Logit scale (larger = more confident proposals).
        eos_bias: Added to the EOS logit (makes EOS proposals more or less frequent).
    """

    def __init__(
        self,
        *,
        vocab_size: int = 12,
        hidden_size: int = 8,
        max_length: int = 64,
        seed: int = 0,
        scale: float = 3.0,
        eos_bias: float = 0.0,
        name: str = "fake",
    ) -> None:
        self.name = name
        self.mask_token_id = MASK
        self.pad_token_id = PAD
        self.eos_token_ids: tuple[int, ...] = (EOS,)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.max_length = max_length
        self.tokenizer = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        gen = torch.Generator().manual_seed(seed)
        d = hidden_size
        self._embed = torch.randn(vocab_size, d, generator=gen)
        self._pos = torch.randn(max_length, d, generator=gen) * 2.0
        self._mix = torch.randn(d, d, generator=gen) / math.sqrt(d)
        self._out = torch.randn(d, vocab_size, generator=gen) * scale / math.sqrt(d)
        bias = torch.zeros(vocab_size)
        bias[PAD] = bias[MASK] = -8.0  # finite: entropies and KLs stay finite
        bias[EOS] = eos_bias
        self._bias = bias

    def forward(
        self,
        canvas: torch.Tensor,
        attention_mask: torch.Tensor,
        hidden_layers: Sequence[int] | None = None,
    ) -> BackboneOutput:
        """Aligned logits ``[B, L, V]`` (and the hidden state when asked)."""
        attn = attention_mask.to(torch.float32)  # [B, L]
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L] from first real token
        h = self._embed[canvas] + self._pos[pos]  # [B, L, d]
        h = h * attn[..., None]
        context = torch.tanh(h @ self._mix)  # [B, L, d]
        # Mean over real tokens, computed per row on its own values only (batch-invariant).
        ctx = (context * attn[..., None]).sum(1, keepdim=True) / attn.sum(-1)[:, None, None]
        hidden = torch.tanh(h + 2.0 * ctx)  # [B, L, d]
        logits = hidden @ self._out + self._bias  # [B, L, V]
        out_hidden = None
        if hidden_layers is not None:
            out_hidden = torch.cat([hidden for _ in hidden_layers], dim=-1)
        return BackboneOutput(logits=logits, hidden=out_hidden)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """One id per UTF-8 byte, mapped into the word ids."""
        span = self.vocab_size - FIRST_WORD
        return [[FIRST_WORD + b % span for b in t.encode()] for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Word ids as lowercase letters; special ids dropped."""
        return "".join(chr(ord("a") + int(i) - FIRST_WORD) for i in ids if int(i) >= FIRST_WORD)


@dataclass
class ForwardCall:
    """One recorded forward: the canvas it saw (a copy) and its batch size."""

    canvas: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.canvas.shape[0])


@dataclass
class CountingBackbone:
    """Delegating wrapper that records every forward call (implements the Backbone protocol)."""

    inner: Backbone
    calls: list[ForwardCall] = field(default_factory=list)

    def __getattr__(self, name: str):  # only called for attributes not found normally
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # Protocol attributes are looked up through __getattr__; forward is wrapped.
    def forward(
        self,
        canvas: torch.Tensor,
        attention_mask: torch.Tensor,
        hidden_layers: Sequence[int] | None = None,
    ) -> BackboneOutput:
        self.calls.append(ForwardCall(canvas.clone(), attention_mask.clone()))
        return self.inner.forward(canvas, attention_mask, hidden_layers=hidden_layers)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.inner.encode(texts)

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode(ids)

    @property
    def n_calls(self) -> int:
        return len(self.calls)

    def row_counts(self, prompts: Sequence[Sequence[int]], gen_length: int) -> list[int]:
        """How many recorded forwards included each prompt (identified by its padded prompt)."""
        counts = [0] * len(prompts)
        for call in self.calls:
            width = call.canvas.shape[1] - gen_length  # P of that call
            for i, p in enumerate(prompts):
                if len(p) > width:
                    continue
                padded = torch.full((width,), self.inner.pad_token_id, dtype=torch.long)
                padded[width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
                counts[i] += int((call.canvas[:, :width] == padded).all(-1).sum())
        return counts


def distinct_prompts(n: int, *, vocab_size: int = 12, seed: int = 0) -> list[list[int]]:
    """``n`` distinct id-list prompts of lengths 1-4 (different lengths exercise left padding)."""
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    while len(out) < n:
        length = 1 + len(out) % 4
        p = torch.randint(FIRST_WORD, vocab_size, (length,), generator=gen).tolist()
        if p not in out:
            out.append(p)
    return out


class ScriptedBackbone(FakeBackbone):
    """Proposes ``script[i]`` at generation position ``i`` with probability ``confidence[i]``.

    The logits ignore the canvas, so the proposals and their confidences are known exactly (the
    remaining probability is spread evenly over the other word ids).
    """

    def __init__(self, script: Sequence[int], confidence: Sequence[float], **kw) -> None:
        super().__init__(**kw)
        assert len(script) == len(confidence)
        self.script = [int(t) for t in script]
        self.confidence = [float(c) for c in confidence]

    def forward(
        self,
        canvas: torch.Tensor,
        attention_mask: torch.Tensor,
        hidden_layers: Sequence[int] | None = None,
    ) -> BackboneOutput:
        B, L = canvas.shape
        G, V = len(self.script), self.vocab_size
        probs = torch.full((B, L, V), 1e-6)
        probs[:, :, FIRST_WORD:] = 1.0
        for i, (tok, conf) in enumerate(zip(self.script, self.confidence, strict=True)):
            row = torch.full((V,), (1.0 - conf) / (V - 3))
            row[PAD] = row[MASK] = 1e-6
            row[tok] = conf
            probs[:, L - G + i] = row
        logits = probs.log()
        hidden = None
        if hidden_layers is not None:
            hidden = torch.zeros(B, L, self.hidden_size * len(hidden_layers))
        return BackboneOutput(logits=logits, hidden=hidden)
