r"""Train the future-stability controller on collected traces.

Usage (embedded backbone, CPU; collection + training take a few minutes)::

    commit-env collect --out traces/round0
    commit-env train-controller --traces traces/round0 --out runs/controller

On a GPU with a real model::

    commit-env collect --backbone hf:GSAI-ML/LLaDA-8B-Instruct --kind llada --trust-remote-code \\
        --task gsm8k --gen-length 256 --window block:32 --out traces/llada
    commit-env train-controller --traces traces/llada --out runs/controller-llada --device cuda

Checkpoints: ``OUT/best`` (selected by F0.5 at the deployment threshold on held-out traces; the
threshold itself is selected there too unless ``--threshold`` fixes it) and
``OUT/last`` (for ``--resume``), each ``model.safetensors`` + ``config.json``; the optimizer,
schedule, generator and history of ``last`` are ``optimizer.pt`` (loaded with
``weights_only=True``). Each checkpoint directory is written whole into a temporary directory and
renamed into place, so a kill leaves the previous one intact. ``OUT`` is locked while training
(a second trainer fails naming the first one's pid). ``OUT/run_key.json`` records the traces (paths
and sizes) and every hyperparameter but ``epochs`` (which a resume may raise): ``--resume`` with
other ones is refused unless ``--force``.
TensorBoard scalars go to
``OUT/tb``: ``train/loss``, ``val/loss``, ``val/auroc``, ``val/ap``, ``val/f05``,
``rollout/score``, ``rollout/nfe``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from commit_env.supervised.inputs import ControllerBatch, batch_from_records
from commit_env.supervised.model import ControllerConfig, StabilityController
from commit_env.supervised.policy import ControllerPolicy, load_controller, save_controller

from commit_env.backbones.base import Backbone
from commit_env.backbones.spec import resolve_backbone
from commit_env.decoding import DEFAULT_TOP_K, FEATURE_GROUPS
from commit_env.errors import ResumeMismatch
from commit_env.io import write_json_atomic
from commit_env.rundir import RunLock, check_run_key
from commit_env.traces import TraceDataset, read_manifest

__all__ = [
    "TrainConfig",
    "train",
    "binary_metrics",
    "concat_batches",
    "load_training_data",
    "setting_range",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Controller training settings.

    Attributes:
        traces: Trace directories (several = aggregated, e.g. round 0 + on-policy rounds).
        out: Output directory.
        epochs: Passes over the training traces.
        batch_size: States per optimizer step.
        lr: AdamW learning rate (cosine-decayed to 10%).
        weight_decay: AdamW weight decay on matrices.
        d_model: Controller width.
        n_layers: Controller depth.
        n_heads: Attention heads.
        use_tau: Learn the per-state threshold (False = ablation without tau).
        use_structure: Read token ids and structure features (False = ablation without them).
        eos_weight: Weight of the end-of-answer head's BCE (0 = no EOS head training).
        neg_weight: BCE weight of unstable positions.
        tau_penalty: Coefficient of tau^2.
        threshold: Deployment threshold on ``sigmoid(logit - tau)``; ``None`` selects it per
            epoch on the held-out states (the value of :data:`THRESHOLD_GRID` with the best
            F0.5), stored in the checkpoint as its learned threshold.
        right_crop: Probability of a random right-crop of the visible window per state.
        drop_groups: Feature groups zeroed out (ablations, e.g. ``("hidden",)``).
        val_every_n_traces: Every n-th trace id is held out for validation.
        rollout_n: Held-out prompts decoded closed-loop after each epoch (0 = off).
        rollout_seed: Seed of the held-out prompt draw (disjoint from collection seeds).
        seed: Seed of initialisation, shuffling and crops.
        skip_corrupt: Skip unreadable shards (with a warning) instead of failing.
        resume: Continue from ``OUT/last`` (a fresh start when ``OUT`` holds no run yet).
        force: With ``resume``, continue even if the traces or hyperparameters differ from the
            ones ``OUT/last`` was trained with.
        device: Training device (None = CUDA if available).
        progress: Show progress bars.
    """

    traces: tuple[str, ...] = ("traces/round0",)
    out: str = "runs/controller"
    epochs: int = 6
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    use_tau: bool = True
    use_structure: bool = True
    eos_weight: float = 0.5
    neg_weight: float = 3.0
    tau_penalty: float = 1e-3
    threshold: float | None = None
    right_crop: float = 0.5
    drop_groups: tuple[str, ...] = ()
    val_every_n_traces: int = 10
    rollout_n: int = 96
    rollout_seed: int = 10_000
    seed: int = 0
    skip_corrupt: bool = False
    resume: bool = False
    force: bool = False
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.drop_groups) - set(FEATURE_GROUPS))
        if unknown:
            raise ValueError(
                f"unknown feature group(s) {unknown} in drop_groups; valid: {list(FEATURE_GROUPS)}"
            )
        for name in ("lr", "weight_decay", "neg_weight", "tau_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if self.rollout_n < 0 or self.val_every_n_traces < 2:
            raise ValueError(
                f"rollout_n must be >= 0 and val_every_n_traces >= 2, got {self.rollout_n} "
                f"and {self.val_every_n_traces}"
            )
        if not self.traces:
            raise ValueError("traces must name at least one trace directory")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.right_crop <= 1.0:
            raise ValueError(f"right_crop must be a probability, got {self.right_crop}")


#: Deployment thresholds tried when ``TrainConfig.threshold`` is None.
THRESHOLD_GRID: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def binary_metrics(prob: np.ndarray, label: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC, average precision, F0.5, precision and recall of ``prob >= threshold``.

    Args:
        prob: float ``[N]`` predicted probabilities.
        label: ``[N]`` 0/1 labels.
        threshold: Decision threshold.

    Returns:
        The metrics (NaN where undefined, e.g. AUROC with one class).
    """
    label = label.astype(bool)
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    order = np.argsort(-prob, kind="stable")
    sorted_label = label[order]
    tp = np.cumsum(sorted_label)

    if n_pos and n_neg:
        # Rank statistic with average ranks for ties (Mann-Whitney U).
        ranks = np.empty(len(prob))
        ranks[np.argsort(prob, kind="stable")] = np.arange(1, len(prob) + 1)
        _, inverse, counts = np.unique(prob, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
        auroc = (ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        precision_at = tp / np.arange(1, len(prob) + 1)
        ap = float((precision_at * sorted_label).sum() / n_pos)
    else:
        auroc, ap = float("nan"), float("nan")
    pred = prob >= threshold
    tp1 = float((pred & label).sum())
    precision = tp1 / max(float(pred.sum()), 1.0)
    recall = tp1 / max(float(n_pos), 1.0)
    beta2 = 0.25
    denom = beta2 * precision + recall
    f05 = (1 + beta2) * precision * recall / denom if denom > 0 else 0.0
    return {"auroc": float(auroc), "ap": ap, "f05": f05, "precision": precision, "recall": recall}


def load_training_data(
    directories: tuple[str, ...], val_every: int, skip_corrupt: bool
) -> tuple[ControllerBatch, ControllerBatch, dict[str, Any]]:
    """Stream the trace directories into a training and a held-out batch.

    Args:
        directories: Trace directories with identical feature layouts.
        val_every: Trace ids divisible by this go to validation.
        skip_corrupt: Skip unreadable shards.

    Returns:
        ``(train, val, meta)`` with ``meta`` from the first directory's manifest.

    Raises:
        ValueError: If directories disagree on features/backbone or hold no records.
    """
    train_parts, val_parts = [], []
    meta: dict[str, Any] | None = None
    settings: list[Any] = []
    keys = ("feature_names", "vocab_size", "hidden_features", "backbone")
    for directory in directories:
        dataset = TraceDataset(directory, skip_corrupt=skip_corrupt)
        if meta is None:
            meta = dict(dataset.meta)
        else:
            for k in keys:
                if meta.get(k) != dataset.meta.get(k):
                    raise ValueError(
                        f"{directory} was collected with {k}={dataset.meta.get(k)!r}, but "
                        f"{directories[0]} with {meta.get(k)!r}: traces must share features "
                        "and backbone"
                    )
        for s in _meta_settings(dataset.meta):
            if s not in settings:
                settings.append(s)
        train_records, val_records = [], []
        for record in dataset.iter_records():
            target = val_records if record["trace_id"] % val_every == 0 else train_records
            target.append(record)
        # collate per directory (old traces fall back to their own manifest's setting)
        if train_records:
            train_parts.append(batch_from_records(train_records, dataset.meta))
        if val_records:
            val_parts.append(batch_from_records(val_records, dataset.meta))
    n_train = sum(len(b.tokens) for b in train_parts)
    n_val = sum(len(b.tokens) for b in val_parts)
    if not n_train or not n_val:
        raise ValueError(
            f"need training and validation records; got {n_train} and {n_val} from "
            f"{list(directories)}"
        )
    assert meta is not None
    meta["settings"] = settings
    meta["gen_length"] = max(int(s[0]) for s in settings)
    return concat_batches(train_parts), concat_batches(val_parts), meta


def _meta_settings(meta: dict[str, Any]) -> list[list[Any]]:
    """The ``[G, window, budget]`` settings a trace directory was collected with."""
    if "settings" in meta:
        return [list(s) for s in meta["settings"]]
    return [[int(meta["gen_length"]), meta["window"], meta["step_budget"]]]


def setting_range(settings: list[list[Any]]) -> dict[str, Any]:
    """What a checkpoint trained on ``settings`` has seen (checked at deployment).

    Args:
        settings: ``[G, window, budget]`` triples.

    Returns:
        ``{"gen_lengths", "window_kinds", "window_widths", "budget_limited"}``.
    """
    from commit_env.decoding.config import validate_setting

    kinds, widths = set(), set()
    for g, w, b in settings:
        kind, width = validate_setting(int(g), w, b)
        kinds.add(kind)
        widths.add(width)
    return {
        "gen_lengths": sorted({int(s[0]) for s in settings}),
        "window_kinds": sorted(kinds),
        "window_widths": sorted(widths),
        "budget_limited": any(s[2] is not None for s in settings),
    }


def concat_batches(parts: list[ControllerBatch]) -> ControllerBatch:
    """Stack batches along B, right-padding G and P to the widest (padding is hidden).

    Args:
        parts: Batches (at least one).

    Returns:
        One batch.
    """
    if len(parts) == 1:
        return parts[0]
    G = max(b.tokens.shape[1] for b in parts)
    P = max(b.prompt.shape[1] for b in parts)

    def pad(t: torch.Tensor | None, width: int, value: Any) -> torch.Tensor | None:
        if t is None:
            return None
        extra = width - t.shape[1]
        if extra == 0:
            return t
        shape = (t.shape[0], extra, *t.shape[2:])
        return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=1)

    fields: dict[str, list[Any]] = {k: [] for k in parts[0].__dict__}
    for b in parts:
        for k, v in b.__dict__.items():
            if k in ("prompt", "prompt_mask"):
                v = pad(v, P, 0)
            elif k == "committed":
                v = pad(v, G, True)
            elif isinstance(v, torch.Tensor) and v.dim() >= 2 and k != "setting":
                v = pad(v, G, 0)
            fields[k].append(v)
    return ControllerBatch(
        **{
            k: (None if any(x is None for x in v) else torch.cat(v, dim=0))
            for k, v in fields.items()
        }
    )


def _index(batch: ControllerBatch, idx: torch.Tensor) -> ControllerBatch:
    return ControllerBatch(
        **{k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in batch.__dict__.items()}
    )


def _feature_mask(meta: dict[str, Any], drop_groups: tuple[str, ...]) -> torch.Tensor:
    from commit_env.decoding import FeatureBuilder

    builder = FeatureBuilder(
        meta["feature_groups"],
        top_k=int(meta.get("top_k", DEFAULT_TOP_K)),
        hidden_dim=meta["hidden_features"],
    )
    keep = []
    for name in builder.names:
        group = builder.spec(name).group
        keep += [group not in drop_groups] * builder.width(name)
    return torch.tensor(keep, dtype=torch.float32)


@torch.no_grad()
def _evaluate(
    model: StabilityController,
    val: ControllerBatch,
    device: torch.device,
    threshold: float | None,
) -> dict[str, float]:
    model.eval()
    probs, labels, losses = [], [], []
    n = val.tokens.shape[0]
    for lo in range(0, n, 1024):
        batch = _index(val, torch.arange(lo, min(n, lo + 1024))).to(device)
        loss, _ = model.loss(batch)
        logits, tau = model(batch)
        p = torch.sigmoid(logits - tau[:, None])[batch.eligible]
        probs.append(p.cpu().numpy())
        labels.append(batch.labels[batch.eligible].cpu().numpy())
        losses.append(float(loss) * len(batch.tokens))
    model.train()
    prob, label = np.concatenate(probs), np.concatenate(labels)
    candidates = THRESHOLD_GRID if threshold is None else (threshold,)
    scored = [(binary_metrics(prob, label, t), t) for t in candidates]
    metrics, chosen = max(scored, key=lambda mt: mt[0]["f05"])  # first best on ties
    metrics["threshold"] = chosen
    metrics["loss"] = sum(losses) / n
    return metrics


def _rollout(
    directory: Path, meta: dict[str, Any], cfg: TrainConfig, backbone: Backbone | None
) -> dict[str, float]:
    """Closed-loop check: decode held-out prompts with the checkpoint in ``directory``."""
    from commit_env.supervised.collect import draw_examples

    from commit_env.decoding import DecodeSetting, decode
    from commit_env.evaluate import score_completions

    backbone = resolve_backbone(meta["backbone"] if backbone is None else backbone)
    policy = ControllerPolicy.from_pretrained(directory, backbone=backbone)
    g, window, budget = meta["settings"][0]
    setting = DecodeSetting(int(g), window, budget)
    config = policy.decode_config(setting.config())
    pairs = draw_examples(tuple(meta["tasks"]), cfg.rollout_n, cfg.rollout_seed)
    result = decode(backbone, [e.prompt for _, e in pairs], policy, config, batch_size=128)
    from commit_env.tasks import get_task

    scores = [
        score_completions(get_task(name), [e], [text])[0]
        for (name, e), text in zip(pairs, result.texts, strict=True)
    ]
    return {"score": float(np.mean(scores)), "nfe": float(result.nfe.float().mean())}


@dataclass
class _Data:
    """Stage 1 result: training and held-out states (ablated groups zeroed) and trace meta."""

    train: ControllerBatch
    val: ControllerBatch
    meta: dict[str, Any]


@dataclass
class _Model:
    """Stage 2 result: the controller, its optimizer and cosine schedule."""

    model: StabilityController
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int


@dataclass
class _Progress:
    """Loop state saved in ``last/optimizer.pt`` (restored by ``--resume``)."""

    generator: torch.Generator
    epoch: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"f05": -1.0})
    history: list[dict[str, Any]] = field(default_factory=list)


def train(cfg: TrainConfig, *, backbone: Backbone | None = None) -> dict[str, Any]:
    """Train a controller; write ``OUT/best`` and ``OUT/last``.

    Stages: :func:`_load_data`, :func:`_build_model`, :func:`_resume`, then per epoch
    :func:`_train_epoch` and :func:`_end_epoch` (validation, checkpoints, rollout).

    Args:
        cfg: Training settings.
        backbone: A loaded backbone for the closed-loop rollouts (default: resolve the spec
            recorded in the traces); unused when ``cfg.rollout_n == 0``.

    Returns:
        Summary: best validation metrics, rollout score/NFE per epoch, seconds.

    Raises:
        RunDirLocked: If another process is writing ``cfg.out``.
        ResumeMismatch: If ``cfg.resume`` finds a checkpoint of other traces or hyperparameters
            (without ``cfg.force``), or one that cannot be resumed (the message says why).
    """
    for directory in cfg.traces:
        read_manifest(directory)  # fail on a missing trace directory before taking the lock
    with RunLock(cfg.out):
        return _train(cfg, backbone)


def run_key(cfg: TrainConfig) -> dict[str, Any]:
    """What ``OUT/run_key.json`` records: every hyperparameter and the identity of the traces."""
    skip = {"out", "resume", "force", "device", "progress", "skip_corrupt", "traces"}
    skip |= {"rollout_n", "rollout_seed"}  # closed-loop checks only; they change no weight
    skip |= {"epochs"}  # resuming to train for more epochs is what --resume is for
    traces = []
    for directory in cfg.traces:
        manifest = read_manifest(directory)
        traces.append(
            {
                "path": str(Path(directory).resolve()),
                "examples": int(manifest.get("examples_done", 0)),
                "steps": int(manifest["steps"]),
                "shards": len(manifest["shards"]),
            }
        )
    hyper = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    return {"traces": traces, **hyper}


def _train(cfg: TrainConfig, backbone: Backbone | None) -> dict[str, Any]:
    from torch.utils.tensorboard import SummaryWriter

    start_time = time.perf_counter()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    progress = _Progress(generator=torch.Generator().manual_seed(cfg.seed))
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    resuming = cfg.resume and _can_resume(out / "last")
    check_run_key(
        out,
        run_key(cfg),
        force=cfg.force or not resuming,
        what="controller checkpoint",
        hint="pass the same --traces and hyperparameters, use another --out, or --force",
    )
    data = _load_data(cfg)
    parts = _build_model(cfg, data, device)
    if resuming:
        _resume(out / "last", parts, progress, device)
    writer = SummaryWriter(str(out / "tb"))
    writer.add_text("hyperparameters", json.dumps(dataclasses.asdict(cfg), indent=2))
    ckpt_meta = _checkpoint_meta(cfg, data.meta)
    parts.model.train()
    for epoch in range(progress.epoch, cfg.epochs):
        step = _train_epoch(cfg, data.train, parts, progress.generator, epoch, writer, device)
        _end_epoch(cfg, data, parts, progress, epoch, step, writer, ckpt_meta, device, backbone)
    writer.close()
    summary = {
        "best": progress.best,
        "history": progress.history,
        "train_states": int(data.train.tokens.shape[0]),
        "val_states": int(data.val.tokens.shape[0]),
        "seconds": time.perf_counter() - start_time,
        "checkpoint": str(out / "best"),
    }
    write_json_atomic(out / "summary.json", summary, indent=2, sort_keys=False)
    return summary


def _load_data(cfg: TrainConfig) -> _Data:
    """Stage 1: stream the traces, split by trace id, zero the ablated feature groups."""
    train_set, val_set, meta = load_training_data(
        cfg.traces, cfg.val_every_n_traces, cfg.skip_corrupt
    )
    feature_mask = _feature_mask(meta, cfg.drop_groups)
    train_set.features *= feature_mask
    val_set.features *= feature_mask
    return _Data(train_set, val_set, meta)


def _build_model(cfg: TrainConfig, data: _Data, device: torch.device) -> _Model:
    """Stage 2: the controller sized from the trace meta, AdamW and a cosine schedule."""
    meta = data.meta
    model_cfg = ControllerConfig(
        vocab_size=int(meta["vocab_size"]),
        feature_dim=int(meta["feature_dim"]),
        eos_token_ids=tuple(meta.get("eos_token_ids", ())),
        separator_token_ids=tuple(meta.get("separator_token_ids", ())),
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        use_tau=cfg.use_tau,
        use_structure=cfg.use_structure,
        eos_weight=cfg.eos_weight,
        neg_weight=cfg.neg_weight,
        tau_penalty=cfg.tau_penalty,
    )
    model = StabilityController(model_cfg).to(device)
    optimizer = model.configure_optimizers(cfg.lr, cfg.weight_decay)
    steps_per_epoch = math.ceil(data.train.tokens.shape[0] / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps)))
    )
    return _Model(model, optimizer, scheduler, steps_per_epoch)


def _can_resume(last: Path) -> bool:
    """Whether ``last`` is a whole checkpoint; False when absent; otherwise says why not."""
    if not last.exists():
        logger.warning("--resume: %s does not exist yet; starting from epoch 1", last)
        return False
    missing = [
        name
        for name in ("model.safetensors", "config.json", "optimizer.pt")
        if not (last / name).is_file()
    ]
    if missing:
        raise ResumeMismatch(
            f"cannot resume from {last}: it lacks {', '.join(missing)} (written by an older "
            "version or damaged); run without --resume to start over"
        )
    return True


def _resume(last: Path, parts: _Model, progress: _Progress, device: torch.device) -> None:
    """Stage 3 (``--resume``): restore weights, optimizer, schedule, generator and history."""
    loaded, _ = load_controller(last, device)
    try:
        parts.model.load_state_dict(loaded.state_dict())
    except RuntimeError:
        raise ResumeMismatch(
            f"cannot resume from {last}: its architecture differs from this run's "
            f"({loaded.config}); use the same hyperparameters or another --out"
        ) from None
    path = last / "optimizer.pt"
    try:
        saved = torch.load(path, weights_only=True, map_location=device)
        parts.optimizer.load_state_dict(saved["optimizer"])
        parts.scheduler.load_state_dict(saved["scheduler"])
    except (RuntimeError, ValueError, KeyError, EOFError, OSError) as err:
        raise ResumeMismatch(
            f"cannot resume from {path}: unreadable or mismatched ({err})"
        ) from None
    progress.generator.set_state(saved["generator"])
    progress.epoch = int(saved["epoch"])
    progress.best = json.loads(saved["best"])
    progress.history = json.loads(saved["history"])
    logger.info("resumed from %s at epoch %d", last, progress.epoch)


def _checkpoint_meta(cfg: TrainConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records: feature layout (groups, names, K, D), backbone, setting."""
    return {
        "feature_groups": meta["feature_groups"],
        "feature_names": meta["feature_names"],
        "hidden_features": int(meta["hidden_features"]),
        "top_k": int(meta.get("top_k", DEFAULT_TOP_K)),
        "vocab_size": int(meta["vocab_size"]),
        "backbone": meta["backbone"],
        "eos_token_ids": list(meta.get("eos_token_ids", ())),
        "separator_token_ids": list(meta.get("separator_token_ids", ())),
        "hidden_size": meta.get("hidden_size"),
        "gen_length": int(meta["settings"][0][0]),
        "window": meta["settings"][0][1],
        "step_budget": meta["settings"][0][2],
        "settings": meta["settings"],
        "setting_range": setting_range(meta["settings"]),
        "tasks": meta["tasks"],
        "threshold": cfg.threshold,
        "drop_groups": list(cfg.drop_groups),
        "train_config": dataclasses.asdict(cfg),
    }


def _train_epoch(
    cfg: TrainConfig,
    train_set: ControllerBatch,
    parts: _Model,
    generator: torch.Generator,
    epoch: int,
    writer: Any,
    device: torch.device,
) -> int:
    """Stage 4: one shuffled pass with random right-crops; returns the global step after it."""
    from tqdm.auto import tqdm

    model, optimizer = parts.model, parts.optimizer
    step = epoch * parts.steps_per_epoch
    perm = torch.randperm(train_set.tokens.shape[0], generator=generator)
    bar = tqdm(
        range(parts.steps_per_epoch),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not cfg.progress,
        unit="batch",
    )
    for i in bar:
        batch = _index(train_set, perm[i * cfg.batch_size : (i + 1) * cfg.batch_size])
        if cfg.right_crop > 0:
            cropped = batch.right_crop(generator)
            use = torch.rand(len(batch.tokens), generator=generator) < cfg.right_crop
            batch = dataclasses.replace(
                batch,
                visible_end=torch.where(use, cropped.visible_end, batch.visible_end),
                eligible=torch.where(use[:, None], cropped.eligible, batch.eligible),
            )
        loss, loss_parts = model.loss(batch.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        parts.scheduler.step()
        step += 1
        if step % 10 == 0:
            writer.add_scalar("train/loss", float(loss.detach()), step)
            writer.add_scalar("train/bce", loss_parts["bce"], step)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    return step


def _end_epoch(
    cfg: TrainConfig,
    data: _Data,
    parts: _Model,
    progress: _Progress,
    epoch: int,
    step: int,
    writer: Any,
    ckpt_meta: dict[str, Any],
    device: torch.device,
    backbone: Backbone | None,
) -> None:
    """Stage 5: validate, save ``last`` (and ``best``), optional rollout, optimizer state."""
    import tempfile

    out = Path(cfg.out)
    metrics = _evaluate(parts.model, data.val, device, cfg.threshold)
    for key in ("loss", "auroc", "ap", "f05", "precision", "recall", "threshold"):
        writer.add_scalar(f"val/{key}", metrics[key], step)
    ckpt_meta = {**ckpt_meta, "threshold": metrics["threshold"]}
    record = {"epoch": epoch + 1, **{f"val_{k}": v for k, v in metrics.items()}}
    if metrics["f05"] > progress.best["f05"]:
        progress.best = {**metrics, "epoch": epoch + 1}
        save_controller(parts.model, out / "best", ckpt_meta)
    if cfg.rollout_n > 0:
        with tempfile.TemporaryDirectory(prefix=".rollout.", suffix=".tmp", dir=out) as tmp:
            save_controller(parts.model, Path(tmp) / "ckpt", ckpt_meta)
            rollout = _rollout(Path(tmp) / "ckpt", data.meta, cfg, backbone)
        writer.add_scalar("rollout/score", rollout["score"], step)
        writer.add_scalar("rollout/nfe", rollout["nfe"], step)
        record.update({f"rollout_{k}": v for k, v in rollout.items()})
    progress.history.append(record)
    state = {
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "generator": progress.generator.get_state(),
        "epoch": epoch + 1,
        "best": json.dumps(progress.best),
        "history": json.dumps(progress.history),
    }
    # model, config and optimizer state land together: the whole directory is renamed in
    save_controller(
        parts.model,
        out / "last",
        ckpt_meta,
        extra=lambda tmp: torch.save(state, tmp / "optimizer.pt"),
    )
    logger.info("epoch %d: %s", epoch + 1, record)
