"""Frozen denoisers behind the :class:`Backbone` protocol, and the spec -> backbone loader.

Specs accepted by :func:`load_backbone`:

* ``"tiny"``: the small masked-LM checkpoint embedded in the package (``data/tiny``), trained on
  ``qa``/``math``/``code``.
* ``"tiny-testbed"``: a preview checkpoint of the same model trained on every embedded family
  (``data/tiny-testbed``; what ``commit-env train-backbone`` reproduces).
* ``"hf:<name-or-path>"``: any transformers checkpoint (Hub id or local directory) through
  :class:`HFBackbone`.

Importing this package does not import transformers; that happens when a model is loaded.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from commit_env.backbones.base import Backbone, BackboneOutput
from commit_env.errors import BackboneUnavailable

if TYPE_CHECKING:
    from commit_env.backbones.hf import HFBackbone

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneOutput",
    "HFBackbone",
    "TINY_BACKBONE_DIR",
    "TINY_TESTBED_DIR",
    "list_backbones",
    "load_backbone",
]

TINY_BACKBONE_DIR: Path = Path(__file__).parent / "data" / "tiny"
TINY_TESTBED_DIR: Path = Path(__file__).parent / "data" / "tiny-testbed"

_HF_PREFIX = "hf:"
_HF_FORM = "hf:<name-or-path>"


def __getattr__(name: str) -> Any:
    # HFBackbone lives in a module that is cheap to import, but resolving it on first use keeps
    # ``import commit_env.backbones`` free of anything model-related.
    if name == "HFBackbone":
        from commit_env.backbones.hf import HFBackbone

        return HFBackbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _embedded_loader(name: str, directory: Path) -> Callable[..., Backbone]:
    """A loader of one embedded masked-LM checkpoint shipped as package data."""

    def load(
        *,
        kind: str = "auto",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        trust_remote_code: bool = False,
        **kw: Any,
    ) -> Backbone:
        if kind not in ("auto", "masked-lm"):
            raise BackboneUnavailable(
                f"the {name!r} backbone is a masked-lm model, not kind={kind!r}"
            )
        if not (directory / "config.json").is_file():
            raise BackboneUnavailable(
                f"the embedded {name!r} checkpoint is missing ({directory} has no config.json); "
                f"rebuild it with `commit-env train-backbone --out {directory}`"
            )
        from commit_env.backbones.hf import HFBackbone

        return HFBackbone.from_pretrained(
            directory,
            kind="masked-lm",
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            name=name,
            **kw,
        )

    load.__doc__ = f"Load the embedded {name!r} masked-LM checkpoint."
    return load


# Named backbones: spec -> factory(kind=, device=, dtype=, trust_remote_code=, **kw). The
# ``hf:<name-or-path>`` form is handled by load_backbone itself.
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "tiny": _embedded_loader("tiny", TINY_BACKBONE_DIR),
    "tiny-testbed": _embedded_loader("tiny-testbed", TINY_TESTBED_DIR),
}

_CACHE: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()
# Held while loading so that two threads asking for the same spec share one model.
_CACHE_LOCK = threading.Lock()


def list_backbones() -> list[str]:
    """Return the named backbone specs, sorted (``"hf:<name-or-path>"`` is also accepted)."""
    return sorted(BACKBONES)


def _valid_forms() -> str:
    return ", ".join([*(repr(name) for name in sorted(BACKBONES)), repr(_HF_FORM)])


def _build(
    spec: str,
    *,
    kind: str,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    trust_remote_code: bool,
    **kw: Any,
) -> Backbone:
    if spec in BACKBONES:
        return BACKBONES[spec](
            kind=kind, device=device, dtype=dtype, trust_remote_code=trust_remote_code, **kw
        )
    if spec.startswith(_HF_PREFIX):
        target = spec[len(_HF_PREFIX) :].strip()
        if not target:
            raise BackboneUnavailable(f"backbone spec {spec!r} names no checkpoint; use {_HF_FORM}")
        from commit_env.backbones.hf import HFBackbone

        return HFBackbone.from_pretrained(
            target,
            kind=kind,  # type: ignore[arg-type]
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            name=spec,
            **kw,
        )
    raise BackboneUnavailable(f"unknown backbone spec {spec!r}; valid forms: {_valid_forms()}")


def load_backbone(
    spec: str,
    *,
    kind: str = "auto",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    cache: bool = True,
    **kw: Any,
) -> Backbone:
    """Load the backbone named by ``spec``.

    While a loaded backbone is alive, asking again for the same spec and options returns the same
    object (the cache holds weak references, so a model is freed once no one uses it).

    Args:
        spec: ``"tiny"`` (see :func:`list_backbones`) or ``"hf:<name-or-path>"``.
        kind: ``"auto"``, ``"masked-lm"``, ``"llada"``, ``"dream"`` or ``"diffusion-gemma"`` (see
            :class:`HFBackbone`).
        device: Device for the model; default CUDA when available, else CPU.
        dtype: Model dtype (torch dtype or name such as ``"bf16"``); default bfloat16 on CUDA
            when supported, else float32.
        trust_remote_code: Allow the checkpoint's own modeling code (LLaDA, Dream).
        cache: Share one instance per (spec, options) while it is alive; ``False`` always loads.
        **kw: Extra keyword arguments for :meth:`HFBackbone.from_pretrained` (e.g.
            ``mask_token_id``, ``pad_token_id``, ``eos_token_ids``, ``add_special_tokens``).

    Returns:
        The loaded backbone.

    Raises:
        BackboneUnavailable: If the spec is unknown (the message lists the valid forms) or the
            checkpoint cannot be loaded. It subclasses ``ValueError``.
        ValueError: If ``dtype`` or ``kind`` is invalid.
    """
    if not isinstance(spec, str):
        raise TypeError(f"backbone spec must be a string, got {type(spec).__name__}")
    if spec not in BACKBONES and not spec.startswith(_HF_PREFIX):
        raise BackboneUnavailable(f"unknown backbone spec {spec!r}; valid forms: {_valid_forms()}")

    from commit_env.backbones.hf import resolve_device, resolve_dtype

    # Resolve defaults first so that device=None and its explicit equivalent share an entry.
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)

    def build() -> Backbone:
        return _build(
            spec,
            kind=kind,
            device=resolved_device,
            dtype=resolved_dtype,
            trust_remote_code=trust_remote_code,
            **kw,
        )

    key: Hashable = (
        spec,
        kind,
        str(resolved_device),
        str(resolved_dtype),
        bool(trust_remote_code),
        tuple(sorted((k, _freeze(v)) for k, v in kw.items())),
    )
    try:
        hash(key)
    except TypeError:
        cache = False  # an unhashable extra option: load without sharing
    if not cache:
        return build()
    with _CACHE_LOCK:
        backbone = _CACHE.get(key)
        if backbone is None:
            backbone = build()
            _CACHE[key] = backbone
        return backbone


def _freeze(value: Any) -> Any:
    # Lists (e.g. eos_token_ids=[...]) are natural to pass but unhashable; tuples key the same way.
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value
