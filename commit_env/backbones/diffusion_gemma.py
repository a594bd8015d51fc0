"""DiffusionGemma (transformers' native block-diffusion LM) behind the ``Backbone`` protocol.

``DiffusionGemmaForBlockDiffusion`` differs from a masked diffusion LM in three ways, and this
adapter maps each one onto the engine's commit semantics explicitly:

* **No mask token: uncommitted positions hold noise.** The engine fills uncommitted positions with
  :attr:`~DiffusionGemmaBackbone.mask_token_id`, which here is only a *placeholder*: before every
  forward the adapter replaces each placeholder with a token drawn uniformly from the vocabulary,
  as transformers' ``EntropyBoundSampler`` does when it initialises and renoises a canvas. The
  noise is seeded by ``noise_seed`` and a digest of the row's current tokens, so a forward is a
  deterministic function of the row alone (independent of batch composition and call order), and
  fresh noise is drawn every step because a step always commits at least one token. A committed
  token is never renoised: our policies commit irrevocably, whereas transformers' own sampler
  re-decides every position at every step (nothing is locked there). The placeholder id is
  excluded from the logits, so it can never be proposed and committed.
* **Encoder / decoder block design.** The committed prefix (prompt and finished blocks) goes
  through the causal encoder, which fills the prompt KV cache; a canvas of ``canvas_length``
  positions goes through the bidirectional decoder that reads that cache. The canvas of a row is
  the block (blocks of ``canvas_length`` counted from the *end* of the engine's canvas) that holds
  its first placeholder. With ``gen_length`` a multiple of ``canvas_length`` and
  ``window="block:<canvas_length>"`` these are exactly the engine's windows and DiffusionGemma's
  own block schedule; positions after a row's canvas get uniform logits (so use a block window no
  wider than ``canvas_length``). A row whose canvas starts at column 0 gets the model's BOS token as
  its prefix. Left padding is handled with per-row position ids and 2-D masks, so a padded row
  gets the same logits as the row alone. The prefix is re-encoded at every forward (no KV reuse
  across steps here), so one engine NFE costs one encoder pass plus one decoder pass.
* **Self-conditioning.** The decoder takes the previous step's logits of the same canvas. The
  adapter keeps them per row *lineage* (the row's prefix plus the tokens committed in its canvas):
  the entry whose committed tokens are the largest subset consistent with the current row is used,
  as ``self_conditioning_logits`` with ``self_conditioning_mask`` true; a new canvas starts with
  the zero signal, as in transformers' ``generate``. The stored logits are the raw (temperature
  1) logits, whereas transformers feeds back its temperature-scheduled ones. Disable with
  ``self_conditioning=False`` (every step then sees the zero signal); :meth:`reset` clears it.

Vision inputs, the temperature schedule and the adaptive stopping criteria of transformers'
``generate`` are not used: the engine's policies and ``step_budget`` decide when to stop.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from commit_env.backbones.hf import HFBackbone

__all__ = ["DiffusionGemmaBackbone"]

# Logit given to the placeholder id and to positions outside a row's canvas. DiffusionGemma
# soft-caps its logits to +-30, so this is ~0 probability while log-softmax stays finite.
_EXCLUDED_LOGIT = -1.0e4


class DiffusionGemmaBackbone(HFBackbone):
    """A ``DiffusionGemmaForBlockDiffusion`` model exposed as a denoiser for the decode engine.

    See the module docstring for how commit/renoise, blocks and self-conditioning are mapped.

    Attributes:
        canvas_length: Width C of the decoder canvas (the model's block length).
        noise_seed: Seed of the uniform noise that stands in for uncommitted positions.
        self_conditioning: Whether the previous step's logits are fed back to the decoder.
        self_conditioning_cache: Most self-conditioning entries kept (oldest dropped first);
            ``None`` keeps twice the largest batch seen. One entry is ``canvas_length x V``
            logits in the model's dtype (what transformers' ``generate`` keeps per row).
        noise_vocab_size: Noise tokens are drawn from ``[0, noise_vocab_size)``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        kind: str = "diffusion-gemma",
        canvas_length: int | None = None,
        noise_seed: int = 0,
        self_conditioning: bool = True,
        self_conditioning_cache: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Wrap a loaded ``DiffusionGemmaForBlockDiffusion`` and its tokenizer.

        Args:
            model: The transformers model.
            tokenizer: Its tokenizer. Its ``mask_token_id`` (or the ``mask_token_id`` keyword)
                names the placeholder id; it never reaches the model.
            name: Spec recorded as :attr:`name`.
            kind: Must be ``"diffusion-gemma"``.
            canvas_length: Decoder canvas width; default ``model.config.canvas_length``.
            noise_seed: Seed of the placeholder noise.
            self_conditioning: Feed the previous step's logits back (see the module docstring).
            self_conditioning_cache: Most self-conditioning entries kept (>= 1); default twice
                the largest batch seen.
            **kwargs: Passed to :class:`HFBackbone` (``mask_token_id``, ``pad_token_id``, ...).

        Raises:
            ValueError: If ``kind`` is not ``"diffusion-gemma"``, ``canvas_length`` or
                ``self_conditioning_cache`` is not positive.
        """
        if kind != "diffusion-gemma":
            raise ValueError(f"DiffusionGemmaBackbone needs kind='diffusion-gemma', got {kind!r}")
        config = model.config
        if canvas_length is None:
            canvas_length = getattr(config, "canvas_length", None) or 256
        if int(canvas_length) < 1:
            raise ValueError(f"canvas_length must be positive, got {canvas_length}")
        if self_conditioning_cache is not None and int(self_conditioning_cache) < 1:
            raise ValueError(
                f"self_conditioning_cache must be positive, got {self_conditioning_cache}"
            )
        self.canvas_length = int(canvas_length)
        self.noise_seed = int(noise_seed)
        self.self_conditioning = bool(self_conditioning)
        self.self_conditioning_cache = (
            None if self_conditioning_cache is None else int(self_conditioning_cache)
        )
        self._largest_batch = 1
        text_config = config.get_text_config()
        self.noise_vocab_size = int(text_config.vocab_size)
        bos = getattr(text_config, "bos_token_id", None)
        self._bos_id = int(bos) if isinstance(bos, int) else 0
        # prefix digest -> list of (canvas tokens [C] on CPU with -1 at placeholders, logits [C, V])
        self._sc_entries: OrderedDict[bytes, list[tuple[torch.Tensor, torch.Tensor]]] = (
            OrderedDict()
        )
        self._sc_count = 0
        super().__init__(model, tokenizer, name=name, kind=kind, **kwargs)
        self.reset()  # drop what the constructor's probe forward stored

    def _find_mask_token_id(self, override: int | None) -> int:
        # The placeholder never reaches the model. Without a tokenizer/config mask token, Gemma
        # vocabularies' reserved ``<mask>`` token serves; otherwise the caller must name one.
        if override is None and self._special_id("mask_token_id") is None:
            convert = getattr(self.tokenizer, "convert_tokens_to_ids", None)
            unk = getattr(self.tokenizer, "unk_token_id", None)
            candidate = convert("<mask>") if callable(convert) else None
            if isinstance(candidate, int) and candidate != unk:
                return candidate
        return super()._find_mask_token_id(override)

    def reset(self) -> None:
        """Forget every stored self-conditioning signal."""
        self._sc_entries.clear()
        self._sc_count = 0

    # ------------------------------------------------------------------ layout

    def _layout(
        self, canvas: torch.Tensor, attention: torch.Tensor
    ) -> tuple[torch.Tensor, int, int]:
        """Per-row canvas start column, the canvas width and the prefix width."""
        B, L = canvas.shape
        C = min(self.canvas_length, L)
        placeholder = (canvas == self.mask_token_id) & attention
        first = torch.where(
            placeholder.any(-1), placeholder.long().argmax(-1), torch.full((B,), L - 1)
        )  # [B] first placeholder (a row with none uses the last block)
        block_from_end = torch.div(L - 1 - first, C, rounding_mode="floor")  # [B]
        start = (L - (block_from_end + 1) * C).clamp(min=0)  # [B] canvas start column
        return start, C, max(int(start.max()), 1)

    def _digest(self, *parts: torch.Tensor) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(self.noise_seed.to_bytes(8, "little", signed=True))
        for part in parts:
            h.update(part.numpy().astype("<i8").tobytes())
            h.update(b"|")
        return h.digest()

    def _sc_lookup(self, key: bytes, tokens: torch.Tensor) -> tuple[int, torch.Tensor] | None:
        """The stored entry of this lineage with the most committed tokens consistent with ours."""
        best: tuple[int, torch.Tensor] | None = None
        best_count = -1
        for i, (known, logits) in enumerate(self._sc_entries.get(key, ())):
            fixed = known >= 0
            if bool((tokens[fixed] == known[fixed]).all()) and int(fixed.sum()) > best_count:
                best, best_count = (i, logits), int(fixed.sum())
        return best

    def _sc_store(
        self, key: bytes, tokens: torch.Tensor, logits: torch.Tensor, parent: int | None
    ) -> None:
        entries = self._sc_entries.setdefault(key, [])
        if parent is not None:
            del entries[parent]  # the child supersedes its parent
            self._sc_count -= 1
        entries.append((tokens, logits))
        self._sc_count += 1
        self._sc_entries.move_to_end(key)
        limit = self.self_conditioning_cache or 2 * self._largest_batch
        while self._sc_count > limit:
            oldest = next(iter(self._sc_entries))
            dropped = self._sc_entries.pop(oldest)
            self._sc_count -= len(dropped)

    # ------------------------------------------------------------------ forward

    def _prefix(
        self, canvas: torch.Tensor, attention: torch.Tensor, start: torch.Tensor, W: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded encoder input ``[B, W]``: the columns ``start - W .. start - 1`` of a row.

        Args:
            canvas: CPU ``[B, L]`` engine canvas.
            attention: CPU bool ``[B, L]`` attention.
            start: ``[B]`` canvas start column of each row.
            W: Prefix width.

        Returns:
            ``(prefix ids, prefix attention)``, both ``[B, W]``; a row with nothing before its
            canvas gets the BOS token as its only real prefix token.
        """
        cols = start[:, None] - W + torch.arange(W)[None, :]  # [B, W]
        inside = cols >= 0  # negative columns are padding
        safe = cols.clamp(min=0)
        prefix = torch.where(inside, canvas.gather(1, safe), self.pad_token_id)
        prefix_att = inside & attention.gather(1, safe)
        empty = ~prefix_att.any(-1)  # [B] rows with nothing before their canvas: encode BOS
        prefix[empty, -1] = self._bos_id
        prefix_att[empty, -1] = True
        return prefix, prefix_att

    def _seeded_noise(
        self, prefix: torch.Tensor, prefix_att: torch.Tensor, marked: torch.Tensor
    ) -> tuple[torch.Tensor, list[bytes]]:
        """Per-row noise for the placeholders, and each row's lineage key.

        Args:
            prefix: ``[B, W]`` prefix ids.
            prefix_att: Bool ``[B, W]`` real prefix tokens.
            marked: ``[B, C]`` lineage view of the canvas (-1 placeholder, -2 padding).

        Returns:
            ``(noise [B, C], keys)``: uniform tokens seeded by a digest of the row's prefix and
            canvas, and the digest of the row's prefix and canvas width (its lineage key).
        """
        B, C = marked.shape
        noise = torch.empty((B, C), dtype=torch.long)
        prefix_keys: list[bytes] = []
        for b in range(B):  # one digest and one small draw per row
            real_prefix = prefix[b][prefix_att[b]]
            prefix_keys.append(self._digest(real_prefix, torch.tensor([C])))
            gen = torch.Generator().manual_seed(
                int.from_bytes(self._digest(real_prefix, marked[b])[:8], "little") >> 1
            )
            noise[b] = torch.randint(0, self.noise_vocab_size, (C,), generator=gen)
        return noise, prefix_keys

    def _sc_signal(
        self, prefix_keys: list[bytes], marked: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[int | None]]:
        """Self-conditioning inputs of each row's lineage (zero signal where there is none).

        Returns:
            ``(logits [B, C, V], mask [B], parents)``, the logits and mask ``None`` when no row
            has a stored signal; ``parents[b]`` is the index of row ``b``'s entry in its lineage.
        """
        B, C = marked.shape
        sc_logits = sc_mask = None
        parents: list[int | None] = [None] * B
        if not self.self_conditioning:
            return sc_logits, sc_mask, parents
        found = [self._sc_lookup(prefix_keys[b], marked[b]) for b in range(B)]
        if any(f is not None for f in found):
            vocab = next(f[1] for f in found if f is not None).shape[-1]
            sc_logits = torch.zeros((B, C, vocab), dtype=self.dtype, device=device)
            sc_mask = torch.zeros(B, dtype=torch.bool, device=device)
            for b, f in enumerate(found):
                if f is not None:
                    parents[b] = f[0]
                    sc_logits[b] = f[1]
                    sc_mask[b] = True
        return sc_logits, sc_mask, parents

    def _model_inputs(
        self,
        prefix: torch.Tensor,
        prefix_att: torch.Tensor,
        block: torch.Tensor,
        block_att: torch.Tensor,
        sc_logits: torch.Tensor | None,
        sc_mask: torch.Tensor | None,
        device: torch.device,
    ) -> dict[str, Any]:
        """Keyword arguments of the model: the prefix to encode, the canvas block to decode.

        Args:
            prefix: ``[B, W]`` left-padded prefix ids.
            prefix_att: Bool ``[B, W]`` real prefix tokens.
            block: ``[B, C]`` canvas block, placeholders already replaced by noise.
            block_att: Bool ``[B, C]`` real canvas positions.
            sc_logits: Self-conditioning logits (see :meth:`_sc_signal`).
            sc_mask: Self-conditioning mask.
            device: The model's device.
        """
        from transformers import DynamicCache  # noqa: PLC0415 - transformers is loaded already

        C = block.shape[1]
        n_prefix = prefix_att.long().sum(-1, keepdim=True)  # [B, 1]
        return {
            "input_ids": prefix.to(device),
            "attention_mask": prefix_att.long().to(device),
            "position_ids": (prefix_att.long().cumsum(-1) - 1).clamp(min=0).to(device),
            "cache": DynamicCache(config=self.model.config.get_text_config(decoder=True)),
            "decoder_input_ids": block.to(device),
            "decoder_attention_mask": torch.cat([prefix_att, block_att], 1).long().to(device),
            "decoder_position_ids": (n_prefix + torch.arange(C)[None, :]).to(device),
            "self_conditioning_logits": sc_logits,
            "self_conditioning_mask": sc_mask,
        }

    @staticmethod
    def _to_canvas(block: torch.Tensor, index: torch.Tensor, L: int) -> torch.Tensor:
        """Scatter block values ``[B, C, D]`` into a zero ``[B, L, D]`` canvas at ``index``."""
        B, _, D = block.shape
        canvas = torch.zeros((B, L, D), dtype=block.dtype, device=index.device)
        return canvas.scatter_(1, index.expand(-1, -1, D), block)

    def _raw_logits(
        self, canvas: torch.Tensor, attention_mask: torch.Tensor, *, hidden: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Decoder logits (and hidden states) of each row's canvas, placed on the whole canvas."""
        device = canvas.device
        cpu_canvas = canvas.cpu()
        cpu_att = attention_mask.cpu().bool()
        B, L = cpu_canvas.shape
        self._largest_batch = max(self._largest_batch, B)
        start, C, W = self._layout(cpu_canvas, cpu_att)  # W = prefix width (left-padded)
        prefix, prefix_att = self._prefix(cpu_canvas, cpu_att, start, W)

        # Canvas [B, C]: placeholders become seeded uniform noise.
        block_cols = start[:, None] + torch.arange(C)[None, :]  # [B, C]
        block = cpu_canvas.gather(1, block_cols)
        block_att = cpu_att.gather(1, block_cols)
        holes = (block == self.mask_token_id) & block_att  # [B, C]
        marked = torch.where(holes, -1, torch.where(block_att, block, -2))  # lineage view
        noise, prefix_keys = self._seeded_noise(prefix, prefix_att, marked)
        block = torch.where(holes, noise, block)

        sc_logits, sc_mask, parents = self._sc_signal(prefix_keys, marked, device)
        kwargs = self._model_inputs(
            prefix, prefix_att, block, block_att, sc_logits, sc_mask, device
        )
        if hidden:
            kwargs["output_hidden_states"] = True
        with torch.inference_mode():
            output = self.model(**kwargs)
        block_logits = output.logits.float()  # [B, C, V]
        if self.self_conditioning:
            stored = block_logits.to(self.dtype)
            for b in range(B):
                self._sc_store(prefix_keys[b], marked[b].clone(), stored[b], parents[b])

        index = block_cols.to(device)[..., None]  # [B, C, 1]
        logits = self._to_canvas(block_logits, index, L)  # zero (uniform) outside the canvas
        if 0 <= self.mask_token_id < logits.shape[-1]:
            logits[..., self.mask_token_id] = _EXCLUDED_LOGIT
        hidden_states = None
        if hidden:
            states = output.hidden_states or ()
            hidden_states = tuple(self._to_canvas(state, index, L) for state in states)
        return logits, hidden_states

    def forward(
        self,
        canvas: torch.Tensor,
        attention_mask: torch.Tensor,
        hidden_layers: Sequence[int] | None = None,
    ):
        """Run one denoising forward over a left-padded engine canvas.

        Args:
            canvas: Integer tensor ``[B, L]``; :attr:`mask_token_id` marks uncommitted positions.
            attention_mask: Integer/bool tensor ``[B, L]``, 0 on padding.
            hidden_layers: Decoder hidden-state indices to return (zeros outside each row's
                canvas), or ``None``.

        Returns:
            Aligned logits ``[B, L, V]`` (float32): the decoder's logits on each row's canvas,
            uniform (zero) logits elsewhere, and the placeholder id excluded everywhere.
        """
        return super().forward(canvas, attention_mask, hidden_layers)

    __call__ = forward

    def __repr__(self) -> str:
        """Short description naming the spec, canvas length, device and dtype."""
        return (
            f"DiffusionGemmaBackbone(name={self.name!r}, canvas_length={self.canvas_length}, "
            f"device={self.device}, dtype={self.dtype}, vocab_size={self.vocab_size}, "
            f"self_conditioning={self.self_conditioning})"
        )
