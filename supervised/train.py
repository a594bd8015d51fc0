r"""Train the future-stability controller on collected traces.

Usage (embedded backbone, CPU; collection + training take a few minutes)::

    commit-env collect --out traces/round0
    commit-env train-controller --traces traces/round0 --out runs/controller

On a GPU with a real model::

    commit-env collect --backbone hf:GSAI-ML/LLaDA-8B-Instruct --kind llada --trust-remote-code \\
        --task gsm8k --gen-length 256 --window block:32 --out traces/llada
    commit-env train-controller --traces traces/llada --out runs/controller-llada --device cuda

Checkpoints: ``OUT/best`` (selected by F0.5 at the deployment threshold on held-out traces) and
``OUT/last`` (for ``--resume``), each ``model.safetensors`` + ``config.json``; the optimizer state
of ``last`` is ``optimizer.pt`` (loaded with ``weights_only=True``). TensorBoard scalars go to
``OUT/tb``: ``train/loss``, ``val/loss``, ``val/auroc``, ``val/ap``, ``val/f05``,
``rollout/score``, ``rollout/nfe``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from commit_env.traces import TraceDataset
from commit_env.supervised.inputs import ControllerBatch, batch_from_records
from commit_env.supervised.model import ControllerConfig, StabilityController
from commit_env.supervised.policy import ControllerPolicy, load_controller, save_controller

__all__ = ["TrainConfig", "train", "binary_metrics", "load_training_data"]

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
        neg_weight: BCE weight of unstable positions.
        tau_penalty: Coefficient of tau^2.
        threshold: Deployment threshold on ``sigmoid(logit - tau)``.
        right_crop: Probability of a random right-crop of the visible window per state.
        drop_groups: Feature groups zeroed out (ablations, e.g. ``("hidden",)``).
        val_every_n_traces: Every n-th trace id is held out for validation.
        rollout_n: Held-out prompts decoded closed-loop after each epoch (0 = off).
        rollout_seed: Seed of the held-out prompt draw (disjoint from collection seeds).
        seed: Seed of initialisation, shuffling and crops.
        skip_corrupt: Skip unreadable shards (with a warning) instead of failing.
        resume: Continue from ``OUT/last`` if present.
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
    neg_weight: float = 3.0
    tau_penalty: float = 1e-3
    threshold: float = 0.5
    right_crop: float = 0.5
    drop_groups: tuple[str, ...] = ()
    val_every_n_traces: int = 10
    rollout_n: int = 96
    rollout_seed: int = 10_000
    seed: int = 0
    skip_corrupt: bool = False
    resume: bool = False
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.traces:
            raise ValueError("traces must name at least one trace directory")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.right_crop <= 1.0:
            raise ValueError(f"right_crop must be a probability, got {self.right_crop}")


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
    train_records, val_records = [], []
    meta: dict[str, Any] | None = None
    for directory in directories:
        dataset = TraceDataset(directory, skip_corrupt=skip_corrupt)
        this = {k: dataset.meta[k] for k in ("feature_names", "vocab_size", "hidden_features")}
        if meta is None:
            meta = dict(dataset.meta)
        elif any(meta[k] != v for k, v in this.items()):
            raise ValueError(f"{directory} was collected with other features or another backbone")
        for record in dataset.iter_records():
            target = val_records if record["trace_id"] % val_every == 0 else train_records
            target.append(record)
    if not train_records or not val_records:
        raise ValueError(
            f"need training and validation records; got {len(train_records)} and "
            f"{len(val_records)} from {list(directories)}"
        )
    assert meta is not None
    return batch_from_records(train_records), batch_from_records(val_records), meta


def _index(batch: ControllerBatch, idx: torch.Tensor) -> ControllerBatch:
    return ControllerBatch(
        **{k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in batch.__dict__.items()}
    )


def _feature_mask(meta: dict[str, Any], drop_groups: tuple[str, ...]) -> torch.Tensor:
    from commit_env.decoding import FeatureBuilder

    builder = FeatureBuilder(meta["feature_groups"], top_k=3, hidden_dim=meta["hidden_features"])
    keep = []
    for name in builder.names:
        group = builder.spec(name).group
        keep += [group not in drop_groups] * builder.width(name)
    return torch.tensor(keep, dtype=torch.float32)


@torch.no_grad()
def _evaluate(
    model: StabilityController, val: ControllerBatch, device: torch.device, threshold: float
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
    metrics = binary_metrics(np.concatenate(probs), np.concatenate(labels), threshold)
    metrics["loss"] = sum(losses) / n
    return metrics


def _rollout(directory: Path, meta: dict[str, Any], cfg: TrainConfig) -> dict[str, float]:
    """Closed-loop check: decode held-out prompts with the checkpoint in ``directory``."""
    from commit_env.backbones import load_backbone
    from commit_env.decoding import decode
    from commit_env.evaluate import score_completions
    from commit_env.supervised.collect import draw_examples

    backbone = load_backbone(meta["backbone"])
    policy = ControllerPolicy.from_pretrained(directory, backbone=backbone)
    config = policy.decode_config(
        gen_length=int(meta["gen_length"]),
        window=meta["window"],
        step_budget=meta["step_budget"],
    )
    pairs = draw_examples(tuple(meta["tasks"]), cfg.rollout_n, cfg.rollout_seed)
    result = decode(backbone, [e.prompt for _, e in pairs], policy, config, batch_size=128)
    from commit_env.tasks import get_task

    scores = [
        score_completions(get_task(name), [e], [text])[0]
        for (name, e), text in zip(pairs, result.texts, strict=True)
    ]
    return {"score": float(np.mean(scores)), "nfe": float(result.nfe.float().mean())}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train a controller; write ``OUT/best`` and ``OUT/last``.

    Args:
        cfg: Training settings.

    Returns:
        Summary: best validation metrics, rollout score/NFE per epoch, seconds.
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_set, val_set, meta = load_training_data(
        cfg.traces, cfg.val_every_n_traces, cfg.skip_corrupt
    )
    feature_mask = _feature_mask(meta, cfg.drop_groups)
    train_set.features *= feature_mask
    val_set.features *= feature_mask
    model_cfg = ControllerConfig(
        vocab_size=int(meta["vocab_size"]),
        feature_dim=int(meta["feature_dim"]),
        max_gen_length=max(256, int(meta["gen_length"])),
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        use_tau=cfg.use_tau,
        neg_weight=cfg.neg_weight,
        tau_penalty=cfg.tau_penalty,
    )
    out = Path(cfg.out)
    model = StabilityController(model_cfg).to(device)
    optimizer = model.configure_optimizers(cfg.lr, cfg.weight_decay)
    n_train = train_set.tokens.shape[0]
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps)))
    )
    epoch0, best, history = 0, {"f05": -1.0}, []
    if cfg.resume and (out / "last" / "optimizer.pt").is_file():
        loaded, _ = load_controller(out / "last", device)
        model.load_state_dict(loaded.state_dict())
        saved = torch.load(out / "last" / "optimizer.pt", weights_only=True, map_location=device)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        epoch0, best, history = (
            int(saved["epoch"]),
            json.loads(saved["best"]),
            json.loads(saved["history"]),
        )
        logger.info("resumed from %s at epoch %d", out / "last", epoch0)
    writer = SummaryWriter(str(out / "tb"))
    writer.add_text("hyperparameters", json.dumps(dataclasses.asdict(cfg), indent=2))
    ckpt_meta = {
        "feature_groups": meta["feature_groups"],
        "feature_names": meta["feature_names"],
        "hidden_features": int(meta["hidden_features"]),
        "vocab_size": int(meta["vocab_size"]),
        "backbone": meta["backbone"],
        "gen_length": int(meta["gen_length"]),
        "window": meta["window"],
        "step_budget": meta["step_budget"],
        "tasks": meta["tasks"],
        "threshold": cfg.threshold,
        "drop_groups": list(cfg.drop_groups),
        "train_config": dataclasses.asdict(cfg),
    }
    step = epoch0 * steps_per_epoch
    model.train()
    for epoch in range(epoch0, cfg.epochs):
        perm = torch.randperm(n_train, generator=generator)
        bar = tqdm(
            range(steps_per_epoch),
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
            loss, parts = model.loss(batch.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % 10 == 0:
                writer.add_scalar("train/loss", float(loss.detach()), step)
                writer.add_scalar("train/bce", parts["bce"], step)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        metrics = _evaluate(model, val_set, device, cfg.threshold)
        for key in ("loss", "auroc", "ap", "f05", "precision", "recall"):
            writer.add_scalar(f"val/{key}", metrics[key], step)
        save_controller(model, out / "last", ckpt_meta)
        record = {"epoch": epoch + 1, **{f"val_{k}": v for k, v in metrics.items()}}
        if metrics["f05"] > best["f05"]:
            best = {**metrics, "epoch": epoch + 1}
            save_controller(model, out / "best", ckpt_meta)
        if cfg.rollout_n > 0:
            rollout = _rollout(out / "last", meta, cfg)
            writer.add_scalar("rollout/score", rollout["score"], step)
            writer.add_scalar("rollout/nfe", rollout["nfe"], step)
            record.update({f"rollout_{k}": v for k, v in rollout.items()})
        history.append(record)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "epoch": epoch + 1,
                "best": json.dumps(best),
                "history": json.dumps(history),
            },
            out / "last" / "optimizer.pt",
        )
        logger.info("epoch %d: %s", epoch + 1, record)
    writer.close()
    summary = {
        "best": best,
        "history": history,
        "train_states": n_train,
        "val_states": int(val_set.tokens.shape[0]),
        "seconds": time.perf_counter() - start_time,
        "checkpoint": str(out / "best"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
