"""A backbone by full specification, and the one resolver every trainer uses.

Trainers and environments accept either a loaded :class:`~commit_env.backbones.base.Backbone`
or a specification: a plain spec string (``"tiny"``, ``"hf:<name-or-path>"``) or a
:class:`BackboneSpec` carrying the loader options (kind, device, dtype, remote code), so
``commit-env bench --backbone hf:... --kind llada --dtype bfloat16 --trust-remote-code`` reaches
every stage with all of its options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from commit_env.backbones import load_backbone
from commit_env.backbones.base import Backbone

__all__ = ["BackboneLike", "BackboneSpec", "resolve_backbone"]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything :func:`~commit_env.backbones.load_backbone` needs.

    Attributes:
        name: ``"tiny"`` or ``"hf:<name-or-path>"``.
        kind: Backbone kind (``auto``, ``masked-lm``, ``llada``, ``dream``).
        device: Device (``None`` = CUDA when available).
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``None`` (the loader's default).
        trust_remote_code: Allow remote-code checkpoints.
    """

    name: str = "tiny"
    kind: str = "auto"
    device: str | None = None
    dtype: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def coerce(cls, value: str | Mapping[str, Any] | BackboneSpec) -> BackboneSpec:
        """A spec from a spec string, a dict (as stored in a run's ``config.json``) or a spec.

        Raises:
            ValueError: On any other value.
        """
        if isinstance(value, BackboneSpec):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if isinstance(value, Mapping):
            return cls(**dict(value))
        raise ValueError(f"backbone must be a spec string, a dict or a BackboneSpec, got {value!r}")

    @classmethod
    def of(cls, options: Any) -> BackboneSpec:
        """The spec from an object with the loader options as attributes.

        Args:
            options: Anything with ``backbone``, ``kind``, ``device``, ``dtype`` and
                ``trust_remote_code`` (a bench config, parsed command-line arguments).

        Returns:
            The spec.
        """
        return cls(
            options.backbone,
            kind=options.kind,
            device=options.device,
            dtype=options.dtype,
            trust_remote_code=options.trust_remote_code,
        )

    def load(self, device: str | None = None) -> Backbone:
        """Load (or reuse from the cache) the backbone; ``device`` overrides :attr:`device`."""
        return load_backbone(
            self.name,
            kind=self.kind,
            device=self.device if device is None else device,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
        )


BackboneLike = Backbone | BackboneSpec | str


def resolve_backbone(backbone: BackboneLike, device: str | None = None) -> Backbone:
    """A loaded backbone from a loaded one (returned as is), a spec string or a spec.

    Args:
        backbone: The backbone or its specification.
        device: Device override for specifications (``None``: the spec's own).

    Returns:
        The backbone.
    """
    if isinstance(backbone, str | BackboneSpec):
        return BackboneSpec.coerce(backbone).load(device)
    return backbone
