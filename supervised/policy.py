"""Deploy a trained stability controller as a :class:`~commit_env.policies.CommitPolicy`."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from commit_env.supervised.inputs import batch_from_state, separator_token_ids
from commit_env.supervised.model import INPUT_VERSION, ControllerConfig, StabilityController

from commit_env.backbones.base import Backbone
from commit_env.decoding import FeatureBuilder, TraceState
from commit_env.decoding.config import DEFAULT_TOP_K
from commit_env.decoding.state import WINDOW_CODES
from commit_env.errors import CorruptCheckpointError, InputNotFound
from commit_env.io import dumps_json, replace_dir_atomic
from commit_env.policies import CommitPolicy, even_schedule_k, top_k_mask

__all__ = [
    "ControllerPolicy",
    "check_backbone",
    "check_setting",
    "load_controller",
    "parse_setting_thresholds",
    "save_controller",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: ``ControllerPolicy.fallback`` values: what a row commits when nothing clears the threshold.
FALLBACKS: tuple[str, ...] = ("confidence", "top1", "none")


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
        CorruptCheckpointError: If a file is unreadable, the checkpoint was written by another
            controller version (input layout), or the architecture, the feature layout, the
            setting range and the weights' shapes disagree (the message names the file).
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
        arch = _controller_config(path, config["controller"])
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
    rng = config.get("setting_range")
    if rng is not None:  # what check_setting reads at every step
        try:
            kinds = [str(k) for k in rng["window_kinds"]]
            bool(rng["budget_limited"])
            lengths = [int(g) for g in rng["gen_lengths"]]
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptCheckpointError(
                f"{path}: setting_range must hold window_kinds, budget_limited and gen_lengths "
                f"({type(err).__name__}: {err})"
            ) from None
        unknown = sorted(set(kinds) - set(WINDOW_CODES))
        if unknown or not lengths or min(lengths) < 1:
            raise CorruptCheckpointError(
                f"{path}: setting_range has window kinds {kinds} (valid: {sorted(WINDOW_CODES)}) "
                f"and gen_lengths {lengths} (each >= 1, at least one)"
            )
    return {**config, "_controller_config": arch}


def _controller_config(path: Path, fields: dict[str, Any]) -> ControllerConfig:
    """The architecture of ``config.json``, refusing other controller versions.

    A field this version lacks (e.g. the learned position table of the previous input layout) or
    another input version means the checkpoint was written by another controller version.
    """
    known = {f.name for f in dataclasses.fields(ControllerConfig)}
    extra = sorted(set(fields) - known)
    if extra:
        raise CorruptCheckpointError(
            f"{path}: checkpoint written by another controller version (fields {extra} are not "
            "part of this version's controller); retrain it"
        )
    if int(fields.get("input_version", 0)) != INPUT_VERSION:
        raise CorruptCheckpointError(
            f"{path}: checkpoint written by another controller version (input layout "
            f"{fields.get('input_version')}, this version reads {INPUT_VERSION}); retrain it"
        )
    return ControllerConfig(**fields)


@dataclass
class ControllerPolicy(CommitPolicy):
    """Commit eligible positions whose predicted stability clears the learned threshold.

    A position is committed when ``sigmoid(logit - tau) >= threshold``, or, when
    ``setting_thresholds`` (``(window kind, budget / G, threshold)`` triples; a row without a
    budget has ``budget / G = 1``) is set, the threshold of the row's window kind at the nearest
    budget fraction (calibration picks them on held-out decodes, see
    :mod:`commit_env.supervised.calibrate`); ``max_per_step`` caps the
    commits per step (highest first); rows where nothing clears it fall back to their single most
    stable eligible position (``fallback="top1"``), to the backbone's most confident one
    (``fallback="confidence"``, the default: as the threshold rises the controller becomes
    exactly sequential decoding, the quality anchor every heuristic shares) or leave it to the
    engine's forced commit (``fallback="none"``, counted in ``forced_commits``). Sweeping
    ``threshold`` at deployment trades quality for speed: each value is one point of the
    controller's curve.

    Task-aware deployment: calibration also keeps a table per task (``task_thresholds`` in the
    checkpoint's ``config.json``; a copy family wants a looser threshold than an order-free one in
    the same setting). A caller that knows the task asks :meth:`for_task` for that task's table;
    an unknown task keeps the shared ``setting_thresholds``.

    End-of-answer tail (Learn2PD): eligible positions that propose an EOS, whose EOS head says
    ``>= max(eos_threshold, threshold)`` and that are followed only by such positions (or
    committed EOS) up to the row's end are committed together (``eos_threshold=None`` turns this
    off). Tying the tail to the deployment threshold keeps one knob: a stricter deployment is
    stricter about the tail too.

    Pacing under a step budget (``pace``, on by default): a budget-limited row commits at least
    its share ``ceil(masks left / steps left)`` (LLaDA's even schedule,
    :func:`~commit_env.policies.even_schedule_k`), its most stable positions first. Without it a
    cautious row defers the rest to the engine's budget fill, which commits every remaining
    proposal at once on the last step. Rows without a budget are unaffected.

    Every :meth:`select` checks that the state is one the checkpoint can serve (vocabulary,
    hidden width, window kinds and budgets seen in training, G up to ``max_extrapolation`` times
    the largest trained G) and raises a ``ValueError`` naming the mismatch otherwise.

    Build with :meth:`from_pretrained`.
    """

    name: ClassVar[str] = "controller"
    threshold: float = 0.5
    setting_thresholds: tuple[tuple[str, float, float], ...] | None = None
    task_thresholds: dict[str, dict[str, float]] | None = field(default=None, compare=False)
    max_per_step: int | None = None
    fallback: Literal["top1", "confidence", "none"] = "confidence"
    eos_threshold: float | None = 0.9
    max_extrapolation: float = 4.0
    pace: bool = True
    model: Any = field(default=None, repr=False)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        for kind, fraction, value in self.setting_thresholds or ():
            if not (kind in WINDOW_CODES and fraction > 0.0 and 0.0 < value < 1.0):
                raise ValueError(
                    "setting_thresholds must be (window kind in "
                    f"{sorted(WINDOW_CODES)}, budget / G > 0, threshold in (0, 1)) triples, got "
                    f"{self.setting_thresholds}"
                )
        if self.max_per_step is not None and self.max_per_step < 1:
            raise ValueError(f"max_per_step must be >= 1 or None, got {self.max_per_step}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if self.eos_threshold is not None and not 0.0 < self.eos_threshold < 1.0:
            raise ValueError(f"eos_threshold must be in (0, 1) or None, got {self.eos_threshold}")
        if not self.max_extrapolation >= 1.0:
            raise ValueError(f"max_extrapolation must be >= 1, got {self.max_extrapolation}")
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
        # Ablated groups were zeroed in training: zero them at deployment too.
        dropped = set(self.meta.get("drop_groups", ()))
        keep = []
        for name in self._builder.names:
            keep += [self._builder.spec(name).group not in dropped] * self._builder.width(name)
        self._keep = torch.tensor(keep, dtype=torch.float32)

    @property
    def params(self) -> dict[str, Any]:
        """Deployment parameters (not the weights)."""
        return {
            "threshold": self.threshold,
            "max_per_step": self.max_per_step,
            "fallback": self.fallback,
            "eos_threshold": self.eos_threshold,
            "pace": self.pace,
        }

    @property
    def thresholds_scope(self) -> str | None:
        """How the deployed thresholds vary.

        ``"per task and setting"`` (calibrated task tables), ``"per setting"`` (a setting table)
        or None (one threshold).
        """
        if not self.setting_thresholds:
            return None
        return "per task and setting" if self.task_thresholds else "per setting"

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        threshold: float | None = None,
        max_per_step: int | None = None,
        fallback: Literal["top1", "confidence", "none"] = "confidence",
        eos_threshold: float | None = 0.9,
        max_extrapolation: float = 4.0,
        pace: bool = True,
        device: str | torch.device | None = None,
        backbone: Backbone | None = None,
    ) -> ControllerPolicy:
        """Load a checkpoint written by the trainer.

        Args:
            directory: Checkpoint directory (``model.safetensors`` + ``config.json``).
            threshold: Deployment threshold for every row (default: the checkpoint's: its
                calibrated ``threshold`` and ``setting_thresholds`` when calibrated, see
                :mod:`commit_env.supervised.calibrate`, else the one training selected).
            max_per_step: Optional cap on commits per step.
            fallback: What a row commits when nothing clears the threshold (:data:`FALLBACKS`).
            eos_threshold: EOS-head probability that commits an EOS tail (None: off).
            max_extrapolation: Largest deployable G as a multiple of the largest trained G.
            pace: Commit at least the even schedule's share per step under a step budget.
            device: Where to run the controller (default: the backbone's, else CPU).
            backbone: If given, checked now (name, vocabulary, hidden size, EOS ids).

        Returns:
            The policy.

        Raises:
            ValueError: If the checkpoint's backbone, vocabulary or features do not fit
                ``backbone`` or this version.
        """
        device = device or (backbone.device if backbone is not None else "cpu")
        model, meta = load_controller(directory, device)
        if backbone is not None:
            check_backbone(meta, backbone)
        thr = meta.get("threshold", 0.5) if threshold is None else threshold
        table = meta.get("setting_thresholds") if threshold is None else None
        return cls(
            threshold=thr,
            setting_thresholds=parse_setting_thresholds(table) if table else None,
            task_thresholds=(meta.get("task_thresholds") or None) if threshold is None else None,
            max_per_step=max_per_step,
            fallback=fallback,
            eos_threshold=eos_threshold,
            max_extrapolation=max_extrapolation,
            pace=pace,
            model=model,
            meta=meta,
        )

    def with_threshold(self, threshold: float) -> ControllerPolicy:
        """The same checkpoint (shared weights) at one deployment threshold for every row."""
        return dataclasses.replace(
            self, threshold=threshold, setting_thresholds=None, task_thresholds=None
        )

    def for_task(self, task: str) -> ControllerPolicy:
        """The policy to deploy on ``task``: its calibrated per-setting table, when it has one.

        Groups the task's table lacks keep the shared entries; the free threshold becomes the
        task's ``full@1`` (else stays). Without a task table (an unseen task, a fixed
        threshold) this is ``self``.
        """
        own = (self.task_thresholds or {}).get(task)
        if not own:
            return self
        shared = {f"{k}@{f:g}": t for k, f, t in self.setting_thresholds or ()}
        table = {**shared, **own}
        return dataclasses.replace(
            self,
            threshold=float(table.get("full@1", self.threshold)),
            setting_thresholds=parse_setting_thresholds(table),
            task_thresholds=None,
        )

    def row_thresholds(self, state: TraceState) -> torch.Tensor:
        """float32 ``[B, 1]``: each row's threshold.

        ``threshold``, or with ``setting_thresholds`` the entry of the row's window kind whose
        budget fraction is nearest the row's ``budget / G`` in log space (``threshold`` for a
        window kind the table lacks). The loop runs over table entries, not positions.
        """
        dev = state.canvas.device
        out = torch.full((state.batch_size,), float(self.threshold), device=dev)
        if not self.setting_thresholds:
            return out[:, None]
        row = (state.budget.to(dev).float() / state.gen_len.to(dev).float().clamp(min=1)).log()
        kinds = state.window_kind.to(dev)
        for kind in {k for k, _, _ in self.setting_thresholds}:
            entries = [(f, t) for k, f, t in self.setting_thresholds if k == kind]
            fractions = torch.tensor([math.log(f) for f, _ in entries], device=dev)
            values = torch.tensor([t for _, t in entries], device=dev)
            nearest = (row[:, None] - fractions[None, :]).abs().argmin(-1)  # [B]
            out = torch.where(kinds == WINDOW_CODES[kind], values[nearest], out)
        return out[:, None]

    def decode_options(self) -> dict[str, Any]:
        """The checkpoint's hidden-feature width (see :meth:`CommitPolicy.decode_config`)."""
        return {"hidden_features": int(self.meta["hidden_features"])}

    def check_state(self, state: TraceState) -> None:
        """Raise a ``ValueError`` naming the mismatch if the checkpoint cannot serve ``state``."""
        _check_vocab(self.meta, state.vocab_size)
        D = int(self.meta["hidden_features"])
        if D and (state.hidden is None or state.hidden.shape[-1] != D):
            raise ValueError(
                f"this controller reads hidden features of width {D}: decode with "
                f"DecodeConfig(hidden_features={D}) (see ControllerPolicy.decode_config)"
            )
        check_setting(self.meta, state, self.max_extrapolation)

    @torch.no_grad()
    def scores(self, state: TraceState) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sigmoid(logit - tau), sigmoid(eos_logit))``, float32 ``[B, G]`` each.

        Raises:
            ValueError: If the checkpoint cannot serve ``state`` (see :meth:`check_state`).
        """
        self.check_state(state)
        param = next(self.model.parameters())
        batch = batch_from_state(state, self._builder).to(param.device)
        batch.features = batch.features * self._keep.to(param.device)
        logits, tau, eos = self.model.forward_all(batch)
        dev = state.canvas.device
        return torch.sigmoid(logits - tau[:, None]).to(dev), torch.sigmoid(eos).to(dev)

    def stability(self, state: TraceState) -> torch.Tensor:
        """``sigmoid(logit - tau)`` per position, float32 ``[B, G]`` on the state's device."""
        return self.scores(state)[0]

    def select(self, state: TraceState) -> torch.Tensor:
        """Threshold the predicted stability; see :class:`CommitPolicy`."""
        prob, eos_prob = self.scores(state)  # [B, G]
        bar = self.row_thresholds(state)  # [B, 1]
        commit = state.eligible & (prob >= bar)
        if self.eos_threshold is not None:
            commit |= state.eligible & self._eos_tail(state, eos_prob, bar)
        if self.max_per_step is not None:
            commit &= top_k_mask(prob, state.eligible, self.max_per_step)
        if self.pace:
            k = torch.where(state.budget_limited, even_schedule_k(state), 0)
            commit |= top_k_mask(prob, state.eligible, k)
        if self.fallback != "none":
            none = ~commit.any(-1, keepdim=True)  # [B, 1]
            ranking = prob if self.fallback == "top1" else state.confidence
            commit |= none & top_k_mask(ranking, state.eligible, 1)
        return commit

    def _eos_tail(
        self, state: TraceState, eos_prob: torch.Tensor, bar: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Bool ``[B, G]``: the suffix where every position is (or confidently proposes) EOS.

        ``bar`` (``[B, 1]``, default :meth:`row_thresholds`) raises ``eos_threshold`` per row.
        """
        bar = self.row_thresholds(state) if bar is None else bar
        eos_ids = torch.tensor(
            [int(i) for i in self.meta.get("eos_token_ids", ())] or [-1], device=eos_prob.device
        )
        tokens = torch.where(state.committed, state.gen_tokens, state.proposal)
        is_eos = torch.isin(tokens, eos_ids) & state.valid
        ok = is_eos & (state.committed | (eos_prob >= bar.clamp(min=float(self.eos_threshold))))
        ok |= ~state.valid  # padding beyond the row's length does not break the tail
        # suffix-all: position i is in the tail if ok at every j >= i
        return ok.flip(-1).long().cumprod(-1).flip(-1).bool() & state.valid


def parse_setting_thresholds(table: dict[str, float]) -> tuple[tuple[str, float, float], ...]:
    """``{"full@0.25": 0.95, ...}`` (a checkpoint's ``setting_thresholds``) as sorted triples."""
    out = []
    for key, value in table.items():
        kind, _, fraction = key.partition("@")
        out.append((kind, float(fraction or 1.0), float(value)))
    return tuple(sorted(out))


def check_backbone(meta: dict[str, Any], backbone: Backbone) -> None:
    """Raise a ``ValueError`` naming the mismatch if ``backbone`` is not the checkpoint's.

    Args:
        meta: Checkpoint ``config.json``.
        backbone: The backbone it is about to serve.
    """
    _check_vocab(meta, backbone.vocab_size)
    trained = meta.get("backbone")
    if trained is not None and trained != backbone.name:
        raise ValueError(
            f"controller was trained on backbone {trained!r} but is used with {backbone.name!r}"
        )
    hidden = meta.get("hidden_size")
    if hidden is not None and int(hidden) != int(backbone.hidden_size):
        raise ValueError(
            f"controller was trained on a backbone with hidden size {hidden}, this one has "
            f"{backbone.hidden_size}"
        )
    separators = meta.get("separator_token_ids")
    if separators is not None:
        own = separator_token_ids(backbone.tokenizer)
        if sorted(int(i) for i in separators) != own:
            raise ValueError(
                f"controller was trained with separator ids {sorted(separators)}, this "
                f"backbone's tokenizer has {own}"
            )
    eos = meta.get("eos_token_ids")
    if eos is not None and sorted(int(i) for i in eos) != sorted(backbone.eos_token_ids):
        raise ValueError(
            f"controller was trained with EOS ids {sorted(eos)}, this backbone has "
            f"{sorted(backbone.eos_token_ids)}"
        )


def check_setting(meta: dict[str, Any], state: TraceState, max_extrapolation: float = 4.0) -> None:
    """Raise a ``ValueError`` naming the mismatch if the state's settings were never trained.

    A checkpoint serves the window kinds it was trained on (any width), step budgets only if it
    saw budgets, and generation lengths up to ``max_extrapolation`` times its largest.

    Args:
        meta: Checkpoint ``config.json`` (``setting_range``; older checkpoints skip the check).
        state: The decode state.
        max_extrapolation: Factor on the largest trained G.
    """
    rng = meta.get("setting_range")
    if rng is None:
        return
    codes = {v: k for k, v in WINDOW_CODES.items()}
    kinds = {codes[int(k)] for k in state.window_kind.unique().tolist()}
    unseen = sorted(kinds - set(rng["window_kinds"]))
    if unseen:
        raise ValueError(
            f"controller was trained on windows {rng['window_kinds']} and cannot serve "
            f"{unseen} (retrain with these windows in the setting mixture)"
        )
    if bool(state.budget_limited.any()) and not rng["budget_limited"]:
        raise ValueError(
            "controller was trained without step budgets and cannot serve a budget-limited "
            "setting (collect with budgets in the setting mixture)"
        )
    limit = max_extrapolation * max(rng["gen_lengths"])
    g = int(state.gen_len.max())
    if g > limit:
        raise ValueError(
            f"gen_length {g} exceeds what this controller serves: trained on G in "
            f"{rng['gen_lengths']}, extrapolates up to {max_extrapolation:g}x = {limit:g}"
        )


def _check_vocab(meta: dict[str, Any], vocab_size: int) -> None:
    if int(meta["vocab_size"]) != int(vocab_size):
        raise ValueError(
            f"controller was trained on a backbone with vocabulary {meta['vocab_size']} "
            f"({meta.get('backbone')!r}) but this backbone has {vocab_size}"
        )
