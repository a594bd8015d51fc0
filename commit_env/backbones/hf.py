"""A :class:`~commit_env.backbones.base.Backbone` around a Hugging Face transformers checkpoint.

Four families are supported:

* ``masked-lm``: any ``AutoModelForMaskedLM`` checkpoint (BERT, RoBERTa, ModernBERT, MDLM-style
  models). Logit ``i`` already scores token ``i``.
* ``llada``: LLaDA checkpoints (remote code, ``trust_remote_code=True``). Also aligned.
* ``dream``: Dream checkpoints (remote code). Dream is initialised from an autoregressive model, so
  its raw logit ``i - 1`` predicts token ``i``; the adapter shifts them so the output is aligned.
* ``diffusion-gemma``: transformers' native ``DiffusionGemmaForBlockDiffusion`` (uniform-noise
  block diffusion, no mask token), through
  :class:`~commit_env.backbones.diffusion_gemma.DiffusionGemmaBackbone`.

transformers is imported lazily inside the functions that load a model, so importing this module
(and :mod:`commit_env.backbones`) stays cheap.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from commit_env.backbones.base import BackboneOutput
from commit_env.errors import BackboneUnavailable

__all__ = ["HFBackbone", "Kind", "resolve_device", "resolve_dtype"]

Kind = Literal["auto", "masked-lm", "llada", "dream", "diffusion-gemma"]
_KINDS: tuple[str, ...] = ("auto", "masked-lm", "llada", "dream", "diffusion-gemma")
_CONCRETE_KINDS: tuple[str, ...] = _KINDS[1:]

# LLaDA's released checkpoints use this id for ``<|mdm_mask|>``; older configs do not record it.
_LLADA_MASK_TOKEN_ID = 126336

_DTYPE_ALIASES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

# Config attributes that hold the context length, in order of preference.
_MAX_LENGTH_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length")
_HIDDEN_SIZE_ATTRS = ("hidden_size", "d_model", "n_embd", "dim")
# Tokenizers report a huge sentinel (``int(1e30)``) for "no limit".
_TOKENIZER_NO_LIMIT = 1_000_000
_DEFAULT_MAX_LENGTH = 4096


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a device argument into a :class:`torch.device`.

    Args:
        device: ``None`` (CUDA when available, else CPU), a device string, or a device.

    Returns:
        The resolved device.

    Raises:
        BackboneUnavailable: If the string names no device type, or the device is not present
            here (e.g. ``cuda`` without a GPU, ``cuda:3`` with two).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        return device
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise BackboneUnavailable(
            f"unknown device {device!r}; expected cpu, cuda, cuda:N or mps"
        ) from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BackboneUnavailable(
                f"device {device!r} requested but CUDA is not available here; use --device cpu"
            )
        if resolved.index is not None and resolved.index >= count:
            raise BackboneUnavailable(
                f"device {device!r} requested but only {count} CUDA device(s) exist "
                f"(cuda:0..cuda:{count - 1})"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise BackboneUnavailable(f"device {device!r} requested but MPS is not available here")
    return resolved


def _check_local_checkpoint(source: str) -> None:
    """Name the file when a local checkpoint's ``config.json`` or a safetensors file is corrupt."""
    import json
    import struct
    from pathlib import Path

    directory = Path(source)
    if not directory.is_dir():
        return
    config = directory / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BackboneUnavailable(f"{config} is not valid JSON ({err})") from None
    for weights in sorted(directory.glob("*.safetensors")):
        size = weights.stat().st_size
        try:
            with open(weights, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                if length > size - 8:
                    raise ValueError(f"header of {length} bytes in a {size}-byte file")
                header = json.loads(fh.read(length))
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            if 8 + length + max(ends, default=0) > size:
                raise ValueError("tensor data is truncated")
        except (struct.error, ValueError, KeyError, TypeError, IndexError) as err:
            raise BackboneUnavailable(
                f"{weights} is not a valid safetensors file ({err}); re-download or re-save it"
            ) from None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Turn a dtype argument into a floating :class:`torch.dtype`.

    Args:
        dtype: ``None`` (bfloat16 on a CUDA device that supports it, else float32), a name such as
            ``"bf16"``/``"float32"``/``"fp16"``, or a torch floating dtype.
        device: The device the model will live on (decides the default).

    Returns:
        The resolved dtype.

    Raises:
        ValueError: If ``dtype`` is not a recognised floating point type.
    """
    if dtype is None:
        if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point type, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key in _DTYPE_ALIASES:
            return _DTYPE_ALIASES[key]
    raise ValueError(
        f"unsupported dtype {dtype!r}; use a torch floating dtype or one of "
        f"{', '.join(sorted(_DTYPE_ALIASES))}"
    )


def _detect_kind(config: Any) -> str:
    model_type = str(getattr(config, "model_type", "") or "").lower()
    if model_type.replace("-", "_").startswith("diffusion_gemma"):
        return "diffusion-gemma"
    if "llada" in model_type:
        return "llada"
    if "dream" in model_type:
        return "dream"
    return "masked-lm"


def _config_attr(config: Any, names: Sequence[str]) -> Any:
    """Return the first non-None attribute among ``names``, looking in the text sub-config too."""
    configs = [config]
    get_text_config = getattr(config, "get_text_config", None)
    if callable(get_text_config):
        try:
            text_config = get_text_config()
        except Exception:  # noqa: BLE001 - exotic configs; the top level config is enough
            text_config = None
        if text_config is not None and text_config is not config:
            configs.append(text_config)
    for cfg in configs:
        for name in names:
            value = getattr(cfg, name, None)
            if value is not None:
                return value
    return None


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, Sequence | torch.Tensor):
        return [int(v) for v in value]
    return [int(value)]


def _extract_logits(output: Any) -> torch.Tensor | None:
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, tuple | list) and output:
        # return_dict=False style outputs put the logits first.
        first = output[0]
        if isinstance(first, torch.Tensor) and first.dim() == 3:
            logits = first
    return logits if isinstance(logits, torch.Tensor) else None


def _extract_hidden_states(output: Any) -> tuple[torch.Tensor, ...] | None:
    hidden = getattr(output, "hidden_states", None)
    if hidden is None and isinstance(output, dict):
        hidden = output.get("hidden_states")
    return tuple(hidden) if hidden is not None else None


def _position_offset(model: torch.nn.Module) -> int:
    """Offset the checkpoint adds to position ids (RoBERTa-style embeddings start at pad + 1).

    RoBERTa-family models reserve the first ``padding_idx + 1`` rows of their learned position
    table and mark that with ``padding_idx`` on the embedding; every other model counts from 0.
    """
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Embedding):
            continue
        if name.rsplit(".", 1)[-1] not in ("position_embeddings", "embed_positions"):
            continue
        if module.padding_idx is not None:
            return int(module.padding_idx) + 1
        return 0
    return 0


class HFBackbone:
    """A frozen transformers model + tokenizer exposed through the ``Backbone`` protocol.

    Build one with :meth:`from_pretrained` (or :func:`commit_env.backbones.load_backbone`). The
    model is put in eval mode with gradients disabled and every forward runs under
    :func:`torch.inference_mode`.

    Left padding: the decode engine left-pads prompts so that the generation region is the same
    slice ``[:, P:]`` of every row. When the model's ``forward`` takes ``position_ids`` the adapter
    passes ``attention_mask.cumsum(-1) - 1`` (clamped at 0, plus the checkpoint's position offset),
    so each row's first real token sits at position 0 exactly as if it had been run alone
    unpadded; together with the attention mask, padding then does not change a row's logits.

    Attributes:
        name: The spec the backbone was loaded from.
        kind: ``"masked-lm"``, ``"llada"``, ``"dream"`` or ``"diffusion-gemma"``.
        model: The underlying transformers model.
        tokenizer: The transformers tokenizer.
        mask_token_id: Id of the mask token.
        pad_token_id: Id used for left padding (differs from ``mask_token_id``).
        eos_token_ids: Ids that end a completion.
        vocab_size: Size of the logits' last dimension.
        hidden_size: Width of one hidden layer.
        max_length: Longest canvas accepted by :meth:`forward`.
        device: Device of the model's parameters.
        dtype: Floating point type of the model.
        add_special_tokens: Whether :meth:`encode` adds the tokenizer's special tokens.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        kind: str = "masked-lm",
        mask_token_id: int | None = None,
        pad_token_id: int | None = None,
        eos_token_ids: Sequence[int] = (),
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> None:
        """Wrap an already loaded model and tokenizer.

        Args:
            model: A transformers model whose forward returns ``.logits`` of shape ``[B, L, V]``.
            tokenizer: The matching transformers tokenizer.
            name: Spec string recorded as :attr:`name`.
            kind: ``"masked-lm"``, ``"llada"``, ``"dream"`` (shifts logits right) or
                ``"diffusion-gemma"`` (only through its subclass
                :class:`~commit_env.backbones.diffusion_gemma.DiffusionGemmaBackbone`).
            mask_token_id: Override of the mask token id (default: tokenizer, then config).
            pad_token_id: Override of the padding id (default: tokenizer, then config, then EOS).
            eos_token_ids: Extra ids that end a completion, added to the tokenizer/config ones.
            max_length: Override of the longest accepted canvas (default: from the config).
            add_special_tokens: Whether :meth:`encode` adds the tokenizer's special tokens.

        Raises:
            BackboneUnavailable: If no mask token or no usable padding id can be found, or the
                model's forward does not return logits.
            ValueError: If ``kind`` is not one of the concrete kinds.
        """
        if kind not in _CONCRETE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(_CONCRETE_KINDS)}, got {kind!r}")
        self.name = name
        self.kind = kind
        self.model = model
        self.tokenizer = tokenizer
        self.add_special_tokens = bool(add_special_tokens)
        config = model.config

        model.eval()
        model.requires_grad_(False)
        first_param = next(model.parameters(), None)
        self.device = first_param.device if first_param is not None else torch.device("cpu")
        self.dtype = first_param.dtype if first_param is not None else torch.float32

        self.mask_token_id = self._find_mask_token_id(mask_token_id)
        self.eos_token_ids = self._find_eos_token_ids(eos_token_ids)
        self.pad_token_id = self._find_pad_token_id(pad_token_id)

        self._forward_params = frozenset(inspect.signature(model.forward).parameters)
        # Dream's own modeling code does not take a 2-D padding mask: it wants the string "full"
        # or a 4-D [B, 1, L, L] mask (see _dream_attention_mask).
        self._dream_masking = "dream" in str(getattr(config, "model_type", "") or "").lower()
        # A transformers-native decoder stack (Qwen2 holding Dream weights, Llama holding LLaDA
        # weights) is causal by default; it is driven like the remote code drives its model: an
        # explicit 4-D [B, 1, L, L] mask (which transformers uses as-is, so no causal triangle)
        # plus per-row position ids. See _bidirectional_mask.
        self._native_bidirectional = (
            kind in ("llada", "dream")
            and not self._dream_masking
            and type(model).__module__.startswith("transformers.")
        )
        self._attn_implementation = str(getattr(config, "_attn_implementation", None) or "eager")
        if self._native_bidirectional and self._attn_implementation.startswith("flash"):
            raise BackboneUnavailable(
                f"{self.name!r}: a {kind} model on a native transformers stack needs a 4-D "
                f"attention mask, which {self._attn_implementation!r} does not take; load it "
                "with attn_implementation='sdpa' or 'eager'"
            )
        self._position_offset = _position_offset(model)
        # KV-cache support is probed on first use (see _kv_probe): (layers, kv heads, head dim)
        # and the keyword the model takes its cache under, or the reason it is unsupported.
        self._kv_state: tuple[tuple[int, int, int] | None, str] | None = None
        self._kv_key = "cache"

        if max_length is None:
            max_length = self._find_max_length()
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.max_length = int(max_length)

        hidden_size = _config_attr(config, _HIDDEN_SIZE_ATTRS)
        self.hidden_size = int(hidden_size) if hidden_size is not None else 0

        # One tiny forward checks that the model really yields logits and reads V off them, which
        # can differ from config.vocab_size when the embedding table was padded.
        probe = torch.full((1, 1), self.mask_token_id, dtype=torch.long, device=self.device)
        try:
            logits = self._raw_logits(probe, torch.ones_like(probe), hidden=False)[0]
        except (IndexError, RuntimeError) as exc:
            raise BackboneUnavailable(
                f"a forward of {self.name!r} on the mask token {self.mask_token_id} failed (is the "
                f"id inside the vocabulary?): {exc}"
            ) from exc
        if not 0 <= self.mask_token_id < logits.shape[-1]:
            raise BackboneUnavailable(
                f"mask_token_id {self.mask_token_id} is outside the vocabulary of {self.name!r} "
                f"(size {logits.shape[-1]})"
            )
        self.vocab_size = int(logits.shape[-1])
        if self.hidden_size == 0:
            hidden = self._raw_logits(probe, torch.ones_like(probe), hidden=True)[1]
            self.hidden_size = int(hidden[-1].shape[-1]) if hidden else 0

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        kind: Kind = "auto",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        trust_remote_code: bool = False,
        name: str | None = None,
        mask_token_id: int | None = None,
        pad_token_id: int | None = None,
        eos_token_ids: Sequence[int] = (),
        max_length: int | None = None,
        add_special_tokens: bool = True,
        attn_implementation: str | None = None,
        **options: Any,
    ) -> HFBackbone:
        """Load a checkpoint from the Hub or a local directory.

        Args:
            name_or_path: Hub repository id or local checkpoint directory.
            kind: ``"auto"`` detects from ``config.model_type`` (``diffusion_gemma`` ->
                diffusion-gemma, contains ``"llada"`` -> llada, ``"dream"`` -> dream, anything
                else -> masked-lm).
            device: Where to put the model; default CUDA when available, else CPU.
            dtype: Model dtype (torch dtype or ``"float32"``, ``"bf16"``, ``"fp16"`` ...); default
                bfloat16 on CUDA when supported, else float32.
            trust_remote_code: Allow the checkpoint's own modeling code (LLaDA, Dream).
            name: Spec recorded as :attr:`name`; default ``"hf:<name_or_path>"``.
            mask_token_id: Mask id for checkpoints whose tokenizer and config lack one.
            pad_token_id: Padding id override.
            eos_token_ids: Extra end-of-completion ids.
            max_length: Override of the longest accepted canvas.
            add_special_tokens: Whether :meth:`encode` adds the tokenizer's special tokens.
            attn_implementation: transformers attention kernel (``"sdpa"``, ``"eager"`` ...);
                default: transformers' choice.
            **options: Options of the ``diffusion-gemma`` adapter (``canvas_length``,
                ``noise_seed``, ``self_conditioning``, ``self_conditioning_cache``; see
                :class:`~commit_env.backbones.diffusion_gemma.DiffusionGemmaBackbone`).

        Returns:
            The loaded backbone (a ``DiffusionGemmaBackbone`` for ``kind="diffusion-gemma"``).

        Raises:
            BackboneUnavailable: If the checkpoint cannot be loaded, needs ``trust_remote_code``,
                has no mask token, or its model does not return logits.
            ValueError: If ``kind`` or ``dtype`` is invalid.
            TypeError: If ``options`` are given for a kind that takes none.
        """
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
        source = str(name_or_path)
        _check_local_checkpoint(source)

        import transformers  # noqa: PLC0415 - deferred: importing transformers costs seconds

        try:
            config = transformers.AutoConfig.from_pretrained(
                source, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError, KeyError) as exc:
            hint = (
                "" if trust_remote_code else " (custom architectures need trust_remote_code=True)"
            )
            raise BackboneUnavailable(f"cannot load the config of {source!r}{hint}: {exc}") from exc
        if kind == "auto":
            kind = _detect_kind(config)  # type: ignore[assignment]
        target_cls: type[HFBackbone] = cls
        if kind == "diffusion-gemma":
            from commit_env.backbones.diffusion_gemma import DiffusionGemmaBackbone

            target_cls = DiffusionGemmaBackbone
        elif options:
            raise TypeError(
                f"unexpected options {sorted(options)} for a {kind} backbone (only the "
                "diffusion-gemma kind takes extra options)"
            )

        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                source, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BackboneUnavailable(f"cannot load the tokenizer of {source!r}: {exc}") from exc

        model = cls._load_model(
            transformers,
            source,
            config=config,
            kind=kind,
            device=resolved_device,
            dtype=resolved_dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
        return target_cls(
            model,
            tokenizer,
            name=name if name is not None else f"hf:{source}",
            kind=kind,
            mask_token_id=mask_token_id,
            pad_token_id=pad_token_id,
            eos_token_ids=eos_token_ids,
            max_length=max_length,
            add_special_tokens=add_special_tokens,
            **options,
        )

    @staticmethod
    def _load_model(
        transformers: Any,
        source: str,
        *,
        config: Any,
        kind: str,
        device: torch.device,
        dtype: torch.dtype,
        trust_remote_code: bool,
        attn_implementation: str | None = None,
    ) -> Any:
        """Load the model, trying the auto classes that fit ``kind`` until one yields logits."""
        if kind == "masked-lm":
            candidates = ["AutoModelForMaskedLM"]
        elif kind == "diffusion-gemma":
            candidates = ["DiffusionGemmaForBlockDiffusion"]
        else:
            # LLaDA/Dream remote code maps AutoModel to the LM class; checkpoints that map it to a
            # headless base model still load through the causal-LM head.
            candidates = ["AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM"]
        errors: list[str] = []
        for auto_name in candidates:
            auto_cls = getattr(transformers, auto_name, None)
            if auto_cls is None:
                errors.append(f"{auto_name}: not in transformers {transformers.__version__}")
                continue
            extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
            try:
                model = auto_cls.from_pretrained(
                    source, config=config, dtype=dtype, trust_remote_code=trust_remote_code, **extra
                )
            except (OSError, ValueError, KeyError) as exc:
                errors.append(f"{auto_name}: {exc}")
                continue
            model.to(device)
            model.eval()
            model.requires_grad_(False)
            if len(candidates) == 1 or _yields_logits(model, device):
                return model
            errors.append(f"{auto_name}: {type(model).__name__} returns no logits")
            del model
        detail = "; ".join(errors)
        hint = "" if trust_remote_code else " (custom architectures need trust_remote_code=True)"
        raise BackboneUnavailable(f"cannot load {source!r} as a {kind} model{hint}: {detail}")

    # ------------------------------------------------------------------ token ids

    def _special_id(self, attr: str) -> int | None:
        value = getattr(self.tokenizer, attr, None)
        if value is None:
            value = _config_attr(self.model.config, (attr,))
        return int(value) if isinstance(value, int) else None

    def _find_mask_token_id(self, override: int | None) -> int:
        if override is not None:
            return int(override)
        mask = self._special_id("mask_token_id")
        if mask is None and self.kind == "llada":
            mask = _LLADA_MASK_TOKEN_ID
        if mask is None:
            raise BackboneUnavailable(
                f"checkpoint {self.name!r} has no mask token: neither its tokenizer nor its config "
                "defines mask_token_id; pass mask_token_id=<id> (e.g. "
                "load_backbone(spec, mask_token_id=...)) to name the token that fills the canvas"
            )
        return mask

    def _find_eos_token_ids(self, extra: Sequence[int]) -> tuple[int, ...]:
        ids: list[int] = []
        ids += _as_id_list(getattr(self.tokenizer, "eos_token_id", None))
        ids += _as_id_list(_config_attr(self.model.config, ("eos_token_id",)))
        generation_config = getattr(self.model, "generation_config", None)
        if generation_config is not None:
            ids += _as_id_list(getattr(generation_config, "eos_token_id", None))
        ids += _as_id_list(list(extra))
        # dict.fromkeys keeps first-seen order while dropping duplicates.
        return tuple(i for i in dict.fromkeys(ids) if i != self.mask_token_id)

    def _find_pad_token_id(self, override: int | None) -> int:
        if override is not None:
            pad = int(override)
        else:
            pad = self._special_id("pad_token_id")
            if pad is None or pad == self.mask_token_id:
                pad = self.eos_token_ids[0] if self.eos_token_ids else None
        if pad is None or pad == self.mask_token_id:
            raise BackboneUnavailable(
                f"checkpoint {self.name!r} has no padding id distinct from the mask id "
                f"{self.mask_token_id}; pass pad_token_id=<id>"
            )
        return pad

    def _find_max_length(self) -> int:
        from_config = _config_attr(self.model.config, _MAX_LENGTH_ATTRS)
        if isinstance(from_config, int) and from_config > 0:
            return from_config - self._position_offset
        from_tokenizer = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(from_tokenizer, int) and 0 < from_tokenizer < _TOKENIZER_NO_LIMIT:
            return from_tokenizer
        return _DEFAULT_MAX_LENGTH

    # ------------------------------------------------------------------ forward

    def _raw_logits(
        self, canvas: torch.Tensor, attention_mask: torch.Tensor, *, hidden: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        model_mask: Any = attention_mask
        if self._dream_masking:
            model_mask = _dream_attention_mask(attention_mask)
        elif self._native_bidirectional:
            model_mask = _bidirectional_mask(attention_mask, self._attn_implementation, self.dtype)
        kwargs: dict[str, Any] = {"input_ids": canvas, "attention_mask": model_mask}
        if "use_cache" in self._forward_params:
            kwargs["use_cache"] = False  # one full forward per step: a KV cache is pure overhead
        if "position_ids" in self._forward_params:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            kwargs["position_ids"] = positions + self._position_offset
        return self._run_model(kwargs, hidden)

    def _run_model(
        self, kwargs: dict[str, Any], hidden: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """One model call: raw ``[B, L, V]`` logits and (optionally) the hidden states."""
        if "return_dict" in self._forward_params:
            kwargs["return_dict"] = True
        if hidden:
            kwargs["output_hidden_states"] = True
        with torch.inference_mode():
            output = self.model(**kwargs)
        logits = _extract_logits(output)
        if logits is None or logits.dim() != 3:
            raise BackboneUnavailable(
                f"{type(self.model).__name__} ({self.name!r}) did not return [B, L, V] logits"
            )
        return logits, _extract_hidden_states(output) if hidden else None

    def _align(self, tensor: torch.Tensor) -> torch.Tensor:
        # Dream convention: raw position i - 1 predicts token i; position 0 has no predecessor and
        # reuses its own row.
        if self.kind != "dream" or tensor.shape[1] < 2:
            return tensor
        return torch.cat([tensor[:, :1], tensor[:, :-1]], dim=1)

    def forward(
        self,
        canvas: torch.Tensor,
        attention_mask: torch.Tensor,
        hidden_layers: Sequence[int] | None = None,
    ) -> BackboneOutput:
        """Run one forward pass over a left-padded canvas.

        Args:
            canvas: Integer tensor ``[B, L]`` of token ids, left-padded.
            attention_mask: Integer/bool tensor ``[B, L]``, 0 on padding.
            hidden_layers: Indices into the model's hidden states (``-1`` = last layer, ``0`` = the
                embedding output) to concatenate on the last dimension, or ``None``.

        Returns:
            Aligned logits ``[B, L, V]`` in the model's dtype (callers upcast) and, if requested,
            hidden states ``[B, L, H * len(hidden_layers)]`` (shifted like the logits for Dream, so
            row ``i`` is the state that scored token ``i``).

        Raises:
            TypeError: If ``canvas`` or ``attention_mask`` is not a tensor, or ``canvas`` is not
                integer.
            ValueError: If the shapes are not ``[B, L]``, differ, ``L`` exceeds
                :attr:`max_length`, or a hidden layer index is out of range.
        """
        if not isinstance(canvas, torch.Tensor) or not isinstance(attention_mask, torch.Tensor):
            raise TypeError("canvas and attention_mask must be torch tensors")
        if canvas.dim() != 2:
            raise ValueError(f"canvas must have shape [B, L], got {tuple(canvas.shape)}")
        if attention_mask.shape != canvas.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match canvas shape "
                f"{tuple(canvas.shape)}"
            )
        if canvas.dtype.is_floating_point or canvas.dtype == torch.bool:
            raise TypeError(f"canvas must hold integer token ids, got {canvas.dtype}")
        length = canvas.shape[1]
        if length == 0 or canvas.shape[0] == 0:
            raise ValueError(f"canvas must be non-empty, got shape {tuple(canvas.shape)}")
        if length > self.max_length:
            raise ValueError(
                f"canvas length {length} exceeds max_length {self.max_length} of {self.name!r}"
            )
        layers = None if hidden_layers is None else [int(i) for i in hidden_layers]
        if layers is not None and not layers:
            raise ValueError("hidden_layers must name at least one layer (or be None)")

        canvas = canvas.to(self.device, dtype=torch.long)
        attention_mask = attention_mask.to(self.device, dtype=torch.long)
        logits, hidden_states = self._raw_logits(canvas, attention_mask, hidden=layers is not None)

        hidden = None
        if layers is not None:
            if not hidden_states:
                raise BackboneUnavailable(
                    f"{type(self.model).__name__} ({self.name!r}) does not return hidden states"
                )
            n = len(hidden_states)
            bad = [i for i in layers if not -n <= i < n]
            if bad:
                raise ValueError(
                    f"hidden layer indices {bad} out of range for {n} hidden states "
                    f"(valid: {-n}..{n - 1})"
                )
            hidden = self._align(torch.cat([hidden_states[i] for i in layers], dim=-1))
        return BackboneOutput(logits=self._align(logits), hidden=hidden)

    __call__ = forward

    # ------------------------------------------------------------------ KV cache

    @property
    def supports_kv_cache(self) -> bool:
        """Whether :meth:`forward_cached` works on this model (probed once, on first use)."""
        return self._kv_probe()[0] is not None

    @property
    def kv_cache_unsupported_reason(self) -> str:
        """Why :attr:`supports_kv_cache` is false (empty when it is true)."""
        return self._kv_probe()[1]

    def _kv_probe(self) -> tuple[tuple[int, int, int] | None, str]:
        if self._kv_state is None:
            self._kv_state = self._probe_kv_cache()
        return self._kv_state

    def _probe_kv_cache(self) -> tuple[tuple[int, int, int] | None, str]:
        """Find the cache geometry with one tiny forward, then check a cached forward is exact.

        The model must call ``cache.update(keys, values, layer_idx)`` in every attention layer
        (transformers-native decoder and encoder stacks do); the check compares a forward of the
        last two positions against the cache of a full forward with the full forward itself.
        """
        who = f"{self.name!r} ({type(self.model).__name__})"
        if self.kind == "diffusion-gemma":
            return (
                None,
                f"{who}: diffusion-gemma keeps its own prompt cache; kv_cache does not apply",
            )
        if self._dream_masking or not type(self.model).__module__.startswith("transformers."):
            return None, f"{who}: KV caches need a transformers-native model, not remote code"
        if self._attn_implementation.startswith("flash"):
            return None, f"{who}: cached forwards need a 4-D mask, which flash attention lacks"
        takes_kwargs = "kwargs" in self._forward_params
        if "position_ids" not in self._forward_params and not takes_kwargs:
            return None, f"{who}: the model's forward takes no position_ids"
        length = 4
        canvas = (torch.arange(length, device=self.device) % self.vocab_size)[None, :]
        attention = torch.ones_like(canvas)
        geometry: tuple[int, int, int] | None = None
        for key in ("cache", "past_key_values"):
            if key not in self._forward_params and not takes_kwargs:
                continue
            recorder = _ShapeRecorder()
            try:
                self._cached_call(canvas, attention, canvas, recorder, key, hidden=False)
            except (TypeError, ValueError, RuntimeError):
                continue
            geometry = recorder.geometry()
            if geometry is not None:
                self._kv_key = key
                break
        if geometry is None:
            return None, f"{who}: the model does not read a KV cache in every attention layer"
        self._kv_state = (geometry, "")
        try:
            cache = self.new_kv_cache(1, length)
            full = self.forward_cached(canvas, attention, torch.arange(length)[None, :], cache)
            tail = torch.arange(length - 2, length)[None, :]
            part = self.forward_cached(canvas, attention, tail, cache)
        except (TypeError, ValueError, RuntimeError) as exc:
            return None, f"{who}: a cached forward failed: {exc}"
        finally:
            self._kv_state = None
        tolerance = 1e-3 if self.dtype == torch.float32 else 1e-1
        gap = float((part.logits.float() - full.logits[:, -2:].float()).abs().max())
        scale = float(full.logits.float().abs().max()) + 1.0
        if not gap <= tolerance * scale:
            return None, f"{who}: a cached forward differs from the full one by {gap:.3g}"
        return geometry, ""

    def new_kv_cache(self, batch: int, length: int) -> torch.Tensor:
        """A zero cache ``[batch, layers, 2, kv_heads, length, head_dim]`` in the model's dtype.

        Args:
            batch: Rows B.
            length: Canvas length L.

        Returns:
            The cache tensor (keys at index 0 and values at index 1 of dimension 2).

        Raises:
            BackboneUnavailable: If the model does not support KV caches.
        """
        geometry, reason = self._kv_probe()
        if geometry is None:
            raise BackboneUnavailable(reason)
        layers, heads, head_dim = geometry
        with torch.inference_mode():
            return torch.zeros(
                (batch, layers, 2, heads, length, head_dim), dtype=self.dtype, device=self.device
            )

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
        """Forward of the tokens at ``positions``; every other position is read from ``cache``.

        Queries at ``positions`` attend, with the same bidirectional padding mask as
        :meth:`forward`, to their own fresh keys/values and to the cached keys/values of every
        other real position; their fresh keys/values are written into ``cache`` (Fast-dLLM's
        "replace position"). ``positions = arange(L)`` is a full forward that refills the cache.
        Dream-style shifted models also compute the position before each row's first one.

        Args:
            canvas: Integer ``[b, L]`` token ids, left-padded.
            attention_mask: ``[b, L]``, 0 on padding.
            positions: int64 ``[b, Q]`` ascending, contiguous canvas indices per row (a shorter
                row repeats its last index).
            cache: ``[B, layers, 2, kv_heads, L, head_dim]`` from :meth:`new_kv_cache`, updated
                in place.
            rows: int64 ``[b]`` cache rows of the canvas rows (``None``: all ``B == b`` rows).
            hidden_layers: As in :meth:`forward`.

        Returns:
            Aligned logits ``[b, Q, V]`` for ``positions`` and, if requested, hidden states.

        Raises:
            BackboneUnavailable: If the model does not support KV caches.
            ValueError: On mismatched shapes or positions outside the canvas.
        """
        geometry, reason = self._kv_probe()
        if geometry is None:
            raise BackboneUnavailable(reason)
        b, length = canvas.shape
        if attention_mask.shape != canvas.shape or positions.dim() != 2 or positions.shape[0] != b:
            raise ValueError(
                f"canvas {tuple(canvas.shape)}, attention_mask {tuple(attention_mask.shape)} and "
                f"positions {tuple(positions.shape)} must be [b, L], [b, L] and [b, Q]"
            )
        expected = (b if rows is None else cache.shape[0], *geometry[:1], 2, geometry[1])
        if tuple(cache.shape[:4]) != expected or cache.shape[4] != length:
            raise ValueError(
                f"cache shape {tuple(cache.shape)} does not fit a canvas of length {length} "
                f"(expected [B, {geometry[0]}, 2, {geometry[1]}, {length}, {geometry[2]}])"
            )
        if positions.numel() and not 0 <= int(positions.min()) <= int(positions.max()) < length:
            raise ValueError(f"positions must lie in [0, {length}), got {positions.tolist()}")
        layers = None if hidden_layers is None else [int(i) for i in hidden_layers]
        canvas = canvas.to(self.device, dtype=torch.long)
        attention_mask = attention_mask.to(self.device, dtype=torch.long)
        raw = positions.to(self.device, dtype=torch.long)
        if self.kind == "dream":  # raw logit i - 1 scores token i: also run the position before
            raw = torch.cat([(raw[:, :1] - 1).clamp(min=0), raw], dim=1)
        store = _PositionCache(cache, None if rows is None else rows.to(self.device), raw)
        logits, hidden_states = self._cached_call(
            canvas, attention_mask, raw, store, self._kv_key, hidden=layers is not None
        )
        if store.calls != geometry[0]:
            raise BackboneUnavailable(
                f"{self.name!r}: the model read the KV cache in {store.calls} layers, "
                f"expected {geometry[0]}"
            )
        if self.kind == "dream":  # aligned column k is the raw column of position k - 1
            take = (raw[:, 1:] - raw[:, 1:2]).clamp(min=0)  # [b, Q]
        else:
            take = torch.arange(positions.shape[1], device=self.device).expand_as(raw)
        logits = logits.gather(1, take[..., None].expand(-1, -1, logits.shape[-1]))
        hidden = None
        if layers is not None:
            if not hidden_states:
                raise BackboneUnavailable(f"{self.name!r} does not return hidden states")
            n = len(hidden_states)
            bad = [i for i in layers if not -n <= i < n]
            if bad:
                raise ValueError(
                    f"hidden layer indices {bad} out of range for {n} hidden states "
                    f"(valid: {-n}..{n - 1})"
                )
            hidden = torch.cat([hidden_states[i] for i in layers], dim=-1)
            hidden = hidden.gather(1, take[..., None].expand(-1, -1, hidden.shape[-1]))
        return BackboneOutput(logits=logits, hidden=hidden)

    def _cached_call(
        self,
        canvas: torch.Tensor,
        attention_mask: torch.Tensor,
        raw: torch.Tensor,
        store: Any,
        key: str,
        *,
        hidden: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """One model call on the tokens at ``raw`` [b, Q] with ``store`` as its cache."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + self._position_offset
        mask = _bidirectional_mask(
            attention_mask, self._attn_implementation, self.dtype, queries=raw.shape[1]
        )
        kwargs: dict[str, Any] = {
            "input_ids": canvas.gather(1, raw),
            "attention_mask": mask,
            "position_ids": positions.gather(1, raw),
            key: store,
        }
        return self._run_model(kwargs, hidden)

    # ------------------------------------------------------------------ text

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenize prompts into id lists without padding.

        Args:
            texts: The prompts.

        Returns:
            One id list per text, with special tokens when :attr:`add_special_tokens` is set.

        Raises:
            TypeError: If ``texts`` is a single string rather than a sequence of strings.
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings; wrap a single text in a list")
        return [
            list(self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"])
            for text in texts
        ]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Turn completion ids into text, dropping special tokens (mask, pad, EOS ...).

        Args:
            ids: Token ids (a list or a 1-D tensor).

        Returns:
            The decoded text; spaces are not cleaned up.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(
            [int(i) for i in ids], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def __repr__(self) -> str:
        """Short description naming the spec, kind, device and dtype."""
        return (
            f"HFBackbone(name={self.name!r}, kind={self.kind!r}, device={self.device}, "
            f"dtype={self.dtype}, vocab_size={self.vocab_size}, max_length={self.max_length})"
        )


def _dream_attention_mask(attention_mask: torch.Tensor) -> str | torch.Tensor:
    """Translate a 2-D padding mask into the form Dream's modeling code accepts.

    Dream treats ``"full"`` as "every position sees every position" and otherwise expects a 4-D
    mask. Only the key axis is masked: padded query rows still attend to the real tokens, so their
    (ignored) outputs stay finite instead of becoming NaN from an all-masked softmax row.
    """
    if bool(attention_mask.all()):
        return "full"
    keys = attention_mask.bool()[:, None, None, :]
    return keys.expand(-1, 1, attention_mask.shape[1], -1)


def _bidirectional_mask(
    attention_mask: torch.Tensor,
    attn_implementation: str,
    dtype: torch.dtype,
    *,
    queries: int | None = None,
) -> torch.Tensor:
    """A full (non-causal) 4-D ``[B, 1, Q, L]`` mask that hides padded keys (Q = L by default).

    transformers passes a 4-D mask to the attention kernel as-is (no causal triangle is added),
    which is how Dream's remote code makes its Qwen2 stack bidirectional and how a LLaMA stack
    without the causal mask (LLaDA) is reproduced on ``LlamaForCausalLM``. SDPA takes a boolean
    mask (True = attend); the eager kernel adds the mask to the scores, so it gets 0 / -inf-like
    floats. Only keys are masked: padded query rows still see the real tokens, so their (ignored)
    outputs stay finite.
    """
    width = attention_mask.shape[1] if queries is None else queries
    keys = attention_mask.bool()[:, None, None, :].expand(-1, 1, width, -1)
    if attn_implementation == "sdpa":
        return keys
    additive = torch.zeros(keys.shape, dtype=dtype, device=keys.device)
    return additive.masked_fill_(~keys, torch.finfo(dtype).min)


class _ShapeRecorder:
    """A stand-in transformers cache that records each layer's key shape and changes nothing."""

    def __init__(self) -> None:
        self.shapes: dict[int, tuple[int, int]] = {}

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *a: Any,
        **k: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.shapes[int(layer_idx)] = (int(key_states.shape[1]), int(key_states.shape[-1]))
        return key_states, value_states

    def geometry(self) -> tuple[int, int, int] | None:
        """``(layers, kv heads, head dim)`` when every layer 0..n-1 reported the same shape."""
        n = len(self.shapes)
        if n == 0 or sorted(self.shapes) != list(range(n)) or len(set(self.shapes.values())) != 1:
            return None
        heads, head_dim = self.shapes[0]
        return n, heads, head_dim


class _PositionCache:
    """A stand-in transformers cache over one engine cache tensor (Fast-dLLM's replace position).

    Each attention layer hands over the keys/values of the positions it computed; they are
    written into the stored tensor at those positions, and the layer attends to the whole stored
    row (cached entries everywhere else). Padding copies of a position write identical values.
    """

    def __init__(self, store: torch.Tensor, rows: torch.Tensor | None, positions: torch.Tensor):
        self.store = store  # [B, layers, 2, kv_heads, L, head_dim]
        self.rows = rows  # [b] or None
        self.positions = positions  # [b, Q]
        self.calls = 0

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *a: Any,
        **k: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        b, _, q, _ = key_states.shape
        if self.rows is None:
            index = torch.arange(b, device=key_states.device)[:, None].expand(b, q)
        else:
            index = self.rows[:, None].expand(b, q)
        store, layer = self.store, int(layer_idx)
        # Advanced indices around a slice put their dims first: the target is [b, Q, heads, dim].
        store[index, layer, 0, :, self.positions] = key_states.transpose(1, 2).to(store.dtype)
        store[index, layer, 1, :, self.positions] = value_states.transpose(1, 2).to(store.dtype)
        if self.rows is None:
            return store[:, layer, 0], store[:, layer, 1]
        return store[self.rows, layer, 0], store[self.rows, layer, 1]


def _yields_logits(model: Any, device: torch.device) -> bool:
    """Whether a one-token forward of ``model`` returns ``[B, L, V]`` logits."""
    probe = torch.zeros((1, 1), dtype=torch.long, device=device)
    # Remote code differs in which mask forms it takes; an all-ones 2-D mask is the common one.
    for kwargs in ({"attention_mask": torch.ones_like(probe)}, {}):
        try:
            with torch.inference_mode():
                output = model(input_ids=probe, **kwargs)
        except Exception:  # noqa: BLE001 - any failure means "try another form / auto class"
            continue
        logits = _extract_logits(output)
        return logits is not None and logits.dim() == 3
    return False
