"""Train the learned remask head on counterfactual rollouts.

For every state where the verified controller could take a commit back (a step that accepted more
than one token, verified by leave-one-out copies), the plain controller completes the decode once
as is and once per candidate token with that token remasked, all in one batched decode. A
candidate's label is the difference of the two final scores: +1 where taking the commit back
turns a failing answer into a valid one, -1 where it breaks a valid one, 0 mostly. The head
(:class:`~commit_env.supervised.remask_head.RemaskHead`) regresses that difference from
:data:`~commit_env.supervised.remask_head.VERIFY_FEATURES`, so deployment remasks a token when
the expected gain exceeds a margin.

States come from decodes of held-out prompts (``seed`` 30000 by default: neither the controller's
collection nor the bench's examples) at several controller thresholds, so the head sees the
states the threshold sweep visits.

Usage::

    commit-env train-remask-head --controller bench-out/controller/round1/best --out remask-head
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from commit_env.supervised.policy import ControllerPolicy
from commit_env.supervised.remask_head import (
    RemaskHead,
    remask_candidates,
    save_remask_head,
    verify_features,
)
from commit_env.supervised.verify import VerifiedControllerPolicy

from commit_env.backbones.base import Backbone
from commit_env.decoding import (
    CommitDecision,
    Decoder,
    DecodeSetting,
    TraceState,
    completion_text,
    run_to_completion,
    select_rows,
)
from commit_env.evaluate import sample_examples
from commit_env.tasks import Example, get_task

__all__ = [
    "NoRemaskCandidates",
    "RemaskTrainConfig",
    "collect_remask_data",
    "fit_head",
    "train_remask_head",
]

logger = logging.getLogger(__name__)


class NoRemaskCandidates(ValueError):
    """No decode step offered a token to take back (every step committed one token)."""


@dataclass(frozen=True)
class RemaskTrainConfig:
    """What :func:`train_remask_head` collects and how it fits the head.

    Attributes:
        tasks: Task families whose prompts are decoded.
        n: Prompts per task and controller threshold.
        seed: Seed of the prompt draw (held out from the controller's collection and the bench).
        thresholds: Controller thresholds the states are visited at.
        window: Window of every decode (at each task's default G).
        candidate_q: Verified tokens with a leave-one-out probability below this are candidates.
        batch_size: Prompts per decode batch.
        epochs: Full-batch training epochs.
        lr: Adam learning rate.
        hidden: Head width.
        margin: Deployment margin written with the head (remask when the predicted gain exceeds it).
        progress: Progress bar over decode batches.
    """

    tasks: tuple[str, ...] = ("insert:any", "remove:any", "sudoku", "latin", "shuffle")
    n: int = 256
    seed: int = 30000
    thresholds: tuple[float, ...] = (0.7, 0.85, 0.95)
    window: str = "full"
    candidate_q: float = 0.99
    batch_size: int = 64
    epochs: int = 400
    lr: float = 3e-3
    hidden: int = 32
    margin: float = 0.05
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must name at least one task family")
        for name in self.tasks:
            get_task(name)  # a clear error for an unknown family
        if self.n < 1 or self.batch_size < 1 or self.epochs < 1 or self.hidden < 1:
            raise ValueError("n, batch_size, epochs and hidden must be >= 1")
        if not self.thresholds or not all(0.0 < t < 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be in (0, 1), got {self.thresholds}")
        if not 0.0 < self.candidate_q <= 1.0:
            raise ValueError(f"candidate_q must be in (0, 1], got {self.candidate_q}")


@dataclass
class _RemaskProbe(VerifiedControllerPolicy):
    """Verifies like the verified controller, remasks nothing, records every candidate state."""

    candidate_q: float = 0.99
    records: list[tuple[TraceState, torch.Tensor, torch.Tensor]] = field(
        default_factory=list, repr=False
    )

    def failed_verification(
        self, state: TraceState, remaskable: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._last_accept is not None and self.verify_top is not None
        q, accepted = self.verify_probs, self._last_accept
        cand = remask_candidates(q, remaskable, accepted, self.candidate_q)
        rows = cand.any(-1).nonzero().squeeze(1)
        if rows.numel():
            eos = torch.tensor([int(i) for i in self.drafter.meta.get("eos_token_ids", ())] or [-1])
            feats = verify_features(state, q, self.verify_top, accepted, eos)[rows]
            self.records.append((select_rows(state, rows), cand[rows], feats[cand[rows]]))
        return torch.zeros_like(remaskable), torch.zeros(remaskable.shape, device=q.device)


def _rollout_gains(
    decoder: Decoder,
    snap: TraceState,
    cand: torch.Tensor,
    plain: ControllerPolicy,
    score: Callable[[torch.Tensor, torch.Tensor], np.ndarray],
) -> np.ndarray:
    """Score change of remasking each candidate, against the same state completed as is."""
    b, G = cand.shape
    dev = snap.canvas.device
    rows, pos = cand.to(dev).nonzero(as_tuple=True)
    m = rows.numel()
    copies = select_rows(snap, torch.cat([torch.arange(b, device=dev), rows]))
    copies.done = torch.zeros_like(copies.done)  # snapshots hold active rows only
    remask = torch.zeros((b + m, G), dtype=torch.bool, device=dev)
    remask[torch.arange(b, b + m, device=dev), pos] = True
    first = torch.as_tensor(plain.select(copies), dtype=torch.bool)
    copies = decoder.step(copies, CommitDecision(first, remask=remask))
    run_to_completion(decoder, copies, plain)
    scores = score(copies.row_ids, copies.gen_tokens)
    return scores[b:] - scores[rows.cpu().numpy()]


def _batch_data(
    backbone: Backbone,
    controller: ControllerPolicy,
    task_name: str,
    examples: Sequence[Example],
    cfg: RemaskTrainConfig,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Features and gains of every candidate visited while decoding ``examples``."""
    task = get_task(task_name)
    probe = _RemaskProbe(candidate_q=cfg.candidate_q, _drafter=controller)
    setting = DecodeSetting(task.default_gen_length, cfg.window)
    decoder = Decoder(backbone, probe.decode_config(setting.config()))
    state = decoder.start([e.prompt for e in examples], row_ids=range(len(examples)))
    probe.reset(state)
    run_to_completion(decoder, state, probe)

    def score(row_ids: torch.Tensor, tokens: torch.Tensor) -> np.ndarray:
        texts = completion_text(backbone, tokens)
        ids = row_ids.tolist()
        return np.asarray([task.score(examples[r], t) for r, t in zip(ids, texts, strict=True)])

    feats, gains = [], []
    for snap, cand, f in probe.records:
        feats.append(f.cpu().numpy().astype(np.float32))
        gains.append(_rollout_gains(decoder, snap, cand, controller, score).astype(np.float32))
    return feats, gains


def collect_remask_data(
    backbone: Backbone, controller: ControllerPolicy, cfg: RemaskTrainConfig
) -> dict[str, np.ndarray]:
    """Candidates' features and counterfactual score gains over tasks x thresholds.

    Raises:
        NoRemaskCandidates: If no step offered a candidate.

    Returns:
        ``{"features": [N, F] float32, "gains": [N] float32, "task": [N] int (index into
        cfg.tasks), "threshold": [N] float32}``.
    """
    jobs = []
    for ti, name in enumerate(cfg.tasks):
        examples = sample_examples(get_task(name), cfg.n, cfg.seed + ti)
        for t in cfg.thresholds:
            for lo in range(0, cfg.n, cfg.batch_size):
                jobs.append((ti, name, t, examples[lo : lo + cfg.batch_size]))
    if cfg.progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="remask rollouts", unit="batch")
    out: dict[str, list[np.ndarray]] = {"features": [], "gains": [], "task": [], "threshold": []}
    for ti, name, t, batch in jobs:
        feats, gains = _batch_data(backbone, controller.with_threshold(t), name, batch, cfg)
        for f, g in zip(feats, gains, strict=True):
            out["features"].append(f)
            out["gains"].append(g)
            out["task"].append(np.full(len(g), ti))
            out["threshold"].append(np.full(len(g), t, dtype=np.float32))
    if not out["gains"]:
        raise NoRemaskCandidates(
            "no remask candidates visited (every step committed one token): raise n or lower "
            "the thresholds"
        )
    return {k: np.concatenate(v) for k, v in out.items()}


def fit_head(
    features: np.ndarray, gains: np.ndarray, cfg: RemaskTrainConfig, seed: int = 0
) -> tuple[RemaskHead, dict[str, float]]:
    """Fit the head by full-batch MSE regression of the gain (seeded).

    Returns:
        ``(head, stats)`` with the final loss and the loss of predicting 0 everywhere.
    """
    torch.manual_seed(seed)
    head = RemaskHead(cfg.hidden)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(gains, dtype=torch.float32)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    for _ in range(cfg.epochs):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(head(x), y)
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(head(x), y))
    return head, {"mse": final, "mse_zero": float((y**2).mean())}


def train_remask_head(
    controller_dir: str | Path,
    backbone: Backbone,
    cfg: RemaskTrainConfig,
    out: str | Path,
) -> dict[str, Any]:
    """Collect counterfactual rollouts, fit the head, save it to ``out``.

    Args:
        controller_dir: The controller checkpoint that drafts.
        backbone: Its backbone.
        cfg: What to collect and how to fit.
        out: Output directory (``remask_head.safetensors`` + ``remask_head.json``).

    Returns:
        The metadata written with the head (counts, losses, timings).
    """
    t0 = time.perf_counter()
    controller = ControllerPolicy.from_pretrained(controller_dir, backbone=backbone)
    data = collect_remask_data(backbone, controller, cfg)
    collect_s = time.perf_counter() - t0
    head, stats = fit_head(data["features"], data["gains"], cfg)
    gains = data["gains"]
    meta = {
        "backbone": backbone.name,
        "controller": str(controller_dir),
        "margin": cfg.margin,
        "candidate_q": cfg.candidate_q,
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "candidates": int(gains.size),
        "helps": int((gains > 0).sum()),
        "hurts": int((gains < 0).sum()),
        "collect_seconds": round(collect_s, 2),
        "fit_seconds": round(time.perf_counter() - t0 - collect_s, 2),
        **stats,
    }
    save_remask_head(head, out, meta)
    helps, hurts = meta["helps"], meta["hurts"]
    logger.info("remask head: %d candidates (%d help, %d hurt)", gains.size, helps, hurts)
    return meta
