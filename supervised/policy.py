"""Deploy a trained stability controller as a :class:`~commit_env.policies.CommitPolicy`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from commit_env.supervised.inputs import batch_from_state
from commit_env.supervised.model import ControllerConfig, StabilityController

from commit_env.backbones.base import Backbone
from commit_env.decoding import FeatureBuilder, TraceState
from commit_env.decoding.config import DEFAULT_TOP_K
from commit_env.io import replace_dir_atomic
from commit_env.policies import CommitPolicy, top_k_mask

__all__ = ["ControllerPolicy", "save_controller", "load_controller"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_controller(
    model: StabilityController, directory: str | Path, meta: dict[str, Any]
) -> None:
    """Write ``model.safetensors`` + ``config.json`` into ``directory`` atomically.

    Args:
        model: The controller.
        directory: Target directory (replaced as a whole).
        meta: What deployment must check: feature groups and names, hidden width, backbone,
            vocabulary size, deployment threshold, training settings.
    """
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        config = {"controller": model.config.__dict__, **meta}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))

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
        FileNotFoundError: If the directory lacks ``config.json`` or the weights.
        ValueError: If the weights do not match the stored architecture.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: not a controller checkpoint")
    config = json.loads((directory / CONFIG_FILE).read_text())
    model = StabilityController(ControllerConfig(**config["controller"]))
    weights = load_file(str(directory / WEIGHTS_FILE))
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"{directory}: weights do not match config.json: {err}") from err
    return model.to(device).eval(), config


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
