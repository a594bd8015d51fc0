"""Deploy a trained stability controller as a :class:`~commit_env.policies.CommitPolicy`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from commit_env.supervised.inputs import batch_from_state
from commit_env.supervised.model import ControllerConfig, StabilityController

from commit_env.backbones.base import Backbone
from commit_env.decoding import FeatureBuilder, TraceState
from commit_env.decoding.config import DEFAULT_TOP_K
from commit_env.errors import CorruptCheckpointError, InputNotFound
from commit_env.io import dumps_json, replace_dir_atomic
from commit_env.policies import CommitPolicy, top_k_mask

__all__ = ["ControllerPolicy", "save_controller", "load_controller"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_controller(
    model: StabilityController,
    directory: str | Path,
    meta: dict[str, Any],
    *,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write ``model.safetensors`` + ``config.json`` into ``directory`` atomically.

    Args:
        model: The controller.
        directory: Target directory (replaced as a whole).
        meta: What deployment must check: feature groups and names, hidden width, backbone,
            vocabulary size, deployment threshold, training settings.
        extra: Writes further files (e.g. the optimizer state) into the temporary directory, so
            they land together with the weights.
    """
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        config = {"controller": model.config.__dict__, **meta}
        (tmp / CONFIG_FILE).write_text(dumps_json(config, indent=2, sort_keys=True))
        if extra is not None:
            extra(tmp)

    replace_dir_atomic(directory, fill)


def load_controller(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[StabilityController, dict[str, Any]]:
    """Load a controller saved by :func:`save_controller` (safetensors, no pickle).

    Args:
        directory: Checkpoint directory.
        device: Where to put the model.

    Returns:
        ``(model, config)`` with the model in eval mode.

    Raises:
        InputNotFound: If the directory lacks ``config.json`` or the weights.
        CorruptCheckpointError: If a file is unreadable, or the architecture, the feature layout
            and the weights' shapes disagree (the message names the file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise InputNotFound(f"controller checkpoint {directory} not found (a directory)")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise InputNotFound(f"{directory / name} not found: not a controller checkpoint")
    config = _read_config(directory / CONFIG_FILE)
    try:
        weights = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CorruptCheckpointError(
            f"{directory / WEIGHTS_FILE} is not a readable safetensors file ({err})"
        ) from None
    model = StabilityController(config["_controller_config"])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != found:
        bad = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        k = bad[0]
        raise CorruptCheckpointError(
            f"{directory / WEIGHTS_FILE} does not match {directory / CONFIG_FILE}: {k} has shape "
            f"{found.get(k)}, the config implies {expected.get(k)} ({len(bad)} tensor(s) differ)"
        )
    model.load_state_dict(weights)
    del config["_controller_config"]
    return model.to(device).eval(), config


def _read_config(path: Path) -> dict[str, Any]:
    """Read and cross-check a checkpoint's ``config.json`` (architecture vs feature layout)."""
    try:
        config = json.loads(path.read_text())
        arch = ControllerConfig(**config["controller"])
        builder = FeatureBuilder(
            config["feature_groups"],
            top_k=int(config.get("top_k", DEFAULT_TOP_K)),
            hidden_dim=int(config["hidden_features"]),
        )
        vocab = int(config["vocab_size"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"{path} is not valid JSON ({err})") from None
    except KeyError as err:
        raise CorruptCheckpointError(f"{path} lacks the field {err}") from None
    except (TypeError, ValueError) as err:
        raise CorruptCheckpointError(f"{path} has an invalid value: {err}") from None
    if builder.dim != arch.feature_dim:
        raise CorruptCheckpointError(
            f"{path}: the feature layout (groups {list(builder.groups)}, top_k {builder.top_k}, "
            f"hidden_features {builder.hidden_dim}) has {builder.dim} columns but the controller "
            f"reads feature_dim={arch.feature_dim}"
        )
    if vocab != arch.vocab_size:
        raise CorruptCheckpointError(
            f"{path}: vocab_size {vocab} differs from the vocabulary of the controller's token "
            f"embedding ({arch.vocab_size})"
        )
    return {**config, "_controller_config": arch}


@dataclass
class ControllerPolicy(CommitPolicy):
    """Commit eligible positions whose predicted stability clears the learned threshold.

    A position is committed when ``sigmoid(logit - tau) >= threshold``; ``max_per_step`` caps the
    commits per step (highest first); rows where nothing clears it fall back to their single most
    stable eligible position (``fallback="top1"``) or leave it to the engine's forced commit
    (``fallback="none"``, counted in ``forced_commits``).

    Build with :meth:`from_pretrained`.
    """

    name: ClassVar[str] = "controller"
    threshold: float = 0.5
    max_per_step: int | None = None
    fallback: Literal["top1", "none"] = "top1"
    model: Any = field(default=None, repr=False)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.max_per_step is not None and self.max_per_step < 1:
            raise ValueError(f"max_per_step must be >= 1 or None, got {self.max_per_step}")
        if self.fallback not in ("top1", "none"):
            raise ValueError(f"fallback must be 'top1' or 'none', got {self.fallback!r}")
        if self.model is None:
            raise ValueError("use ControllerPolicy.from_pretrained(directory)")
        self._builder = FeatureBuilder(
            self.meta["feature_groups"],
            top_k=int(self.meta.get("top_k", DEFAULT_TOP_K)),
            hidden_dim=self.meta["hidden_features"],
        )
        if self._builder.names != self.meta["feature_names"]:
            raise ValueError(
                f"checkpoint features {self.meta['feature_names']} differ from this version's "
                f"{self._builder.names}; retrain the controller"
            )

    @property
    def params(self) -> dict[str, Any]:
        """Deployment parameters (not the weights)."""
        return {
            "threshold": self.threshold,
            "max_per_step": self.max_per_step,
            "fallback": self.fallback,
        }

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        threshold: float | None = None,
        max_per_step: int | None = None,
        fallback: Literal["top1", "none"] = "top1",
        device: str | torch.device | None = None,
        backbone: Backbone | None = None,
    ) -> ControllerPolicy:
        """Load a checkpoint written by the trainer.

        Args:
            directory: Checkpoint directory (``model.safetensors`` + ``config.json``).
            threshold: Deployment threshold (default: the one selected in training).
            max_per_step: Optional cap on commits per step.
            fallback: What to do when nothing clears the threshold.
            device: Where to run the controller (default: the backbone's, else CPU).
            backbone: If given, checked now for vocabulary compatibility.

        Returns:
            The policy.

        Raises:
            ValueError: If the checkpoint's vocabulary or features do not fit ``backbone`` or
                this version.
        """
        device = device or (backbone.device if backbone is not None else "cpu")
        model, meta = load_controller(directory, device)
        if backbone is not None:
            _check_vocab(meta, backbone.vocab_size)
        thr = meta.get("threshold", 0.5) if threshold is None else threshold
        return cls(
            threshold=thr, max_per_step=max_per_step, fallback=fallback, model=model, meta=meta
        )

    def decode_options(self) -> dict[str, Any]:
        """The checkpoint's hidden-feature width (see :meth:`CommitPolicy.decode_config`)."""
        return {"hidden_features": int(self.meta["hidden_features"])}

    @torch.no_grad()
    def stability(self, state: TraceState) -> torch.Tensor:
        """``sigmoid(logit - tau)`` per position, float32 ``[B, G]`` on the state's device."""
        _check_vocab(self.meta, state.vocab_size)
        D = int(self.meta["hidden_features"])
        if D and (state.hidden is None or state.hidden.shape[-1] != D):
            raise ValueError(
                f"this controller reads hidden features of width {D}: decode with "
                f"DecodeConfig(hidden_features={D}) (see ControllerPolicy.decode_config)"
            )
        param = next(self.model.parameters())
        batch = batch_from_state(state, self._builder).to(param.device)
        logits, tau = self.model(batch)
        return torch.sigmoid(logits - tau[:, None]).to(state.canvas.device)

    def select(self, state: TraceState) -> torch.Tensor:
        """Threshold the predicted stability; see :class:`CommitPolicy`."""
        prob = self.stability(state)  # [B, G]
        commit = state.eligible & (prob >= self.threshold)
        if self.max_per_step is not None:
            commit &= top_k_mask(prob, state.eligible, self.max_per_step)
        if self.fallback == "top1":
            none = ~commit.any(-1, keepdim=True)  # [B, 1]
            commit |= none & top_k_mask(prob, state.eligible, 1)
        return commit


def _check_vocab(meta: dict[str, Any], vocab_size: int) -> None:
    if int(meta["vocab_size"]) != int(vocab_size):
        raise ValueError(
            f"controller was trained on a backbone with vocabulary {meta['vocab_size']} "
            f"({meta.get('backbone')!r}) but this backbone has {vocab_size}"
        )
