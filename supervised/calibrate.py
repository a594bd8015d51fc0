"""Deployment calibration: pick the controller's threshold on held-out decodes, not on labels.

Training selects a threshold by F0.5 on future-stability labels (``label_threshold`` in the
checkpoint). That is a per-token criterion; what a user deploys for is the *decode*: the same
answer quality as sequential decoding at as few forwards as possible. Calibration decodes
held-out prompts (a seed disjoint from collection and evaluation) over the training setting
mixture once per candidate threshold (the strictest is nearly sequential decoding, thanks to the
controller's confidence fallback), and keeps per setting group

    the candidate with the fewest forwards whose mean score is within ``tolerance`` of the best
    mean score of the candidates (and of an optional reference policy).

Groups are the mixture's (window kind, step-budget fraction ``budget / G``) pairs: ``full@1`` is
the full window without a budget, ``block@0.25`` block windows (any width) under a budget of G/4.
Measured on the testbed, they want different thresholds (full window at G/4: 0.99; sliding at
G/4: 0.95), so the deployed controller picks its threshold per row
(:attr:`ControllerPolicy.setting_thresholds`: the row's window kind, nearest budget fraction).
The same rule is also applied per task (``task_thresholds``): one shared threshold per group
cannot be both strict enough for order-free answers (``insert:any`` wants 0.995 in the full
window) and loose enough for ``copy`` (0.5 commits its whole canvas in one forward). A caller
that knows its task deploys that task's table (:meth:`ControllerPolicy.for_task`); any other
task gets the shared one. The result is written into the checkpoint's ``config.json``
(``threshold``, ``setting_thresholds``, ``task_thresholds``, ``calibration``) and every cell's
numbers into ``calibration.json``.

Usage::

    from commit_env.supervised.calibrate import CalibrationConfig, calibrate_checkpoint
    calibrate_checkpoint("runs/ctrl/round1/best", backbone, ["sudoku"], settings)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from commit_env.supervised.policy import CONFIG_FILE, ControllerPolicy

from commit_env.backbones.base import Backbone
from commit_env.decoding import DecodeSetting, decode
from commit_env.evaluate import sample_examples, score_completions
from commit_env.io import write_json_atomic
from commit_env.policies import make_policy
from commit_env.tasks import get_task

__all__ = [
    "CALIBRATION_THRESHOLDS",
    "CalibrationConfig",
    "setting_group",
    "calibrate_checkpoint",
    "select_task_thresholds",
    "select_thresholds",
]

#: Candidate deployment thresholds; the high end matters: within a point of sequential quality
#: is where the controller must save forwards. The low end is for the per-task tables: a copy
#: family reaches one forward per answer only below 0.5.
CALIBRATION_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.85, 0.95, 0.99, 0.995)


@dataclass(frozen=True)
class CalibrationConfig:
    """How the deployment threshold is calibrated.

    Attributes:
        n: Held-out examples per task and setting (64: the per-task tables decide on one
            task's examples alone, and at 32 one example is 3 points).
        seed: Seed of their draw (disjoint from collection seeds and the bench's seed 0).
        thresholds: Candidate thresholds.
        tolerance: Allowed mean score deficit against the group's best mean score (default one
            point: the bench's own "matched score", ``evaluation.metrics.TOLERANCE``).
        reference: Optional reference policy whose score joins the target (``"topk"`` =
            sequential decoding). Off by default: it costs G forwards per row, and with the
            controller's confidence fallback the strictest candidate is nearly sequential
            decoding already.
        batch_size: Rows per engine batch.
        progress: Progress bar over the (task, setting) cells.
    """

    n: int = 64
    seed: int = 20_000
    thresholds: tuple[float, ...] = CALIBRATION_THRESHOLDS
    tolerance: float = 0.01
    reference: str | None = None
    batch_size: int = 128
    progress: bool = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not self.thresholds or not all(0.0 < t < 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be non-empty, each in (0, 1), got {self.thresholds}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")


def setting_group(setting: DecodeSetting) -> str:
    """``"KIND@F"``: window kind and ``F = budget / G`` (1 without a budget), e.g. ``full@0.25``."""
    kind = setting.window.split(":", 1)[0]
    return f"{kind}@{(setting.step_budget or setting.gen_length) / setting.gen_length:g}"


def select_thresholds(
    cells: Sequence[dict[str, Any]], tolerance: float
) -> dict[str, dict[str, Any]]:
    """Per setting group, the cheapest threshold within ``tolerance`` of the best mean score.

    The target is the best group-mean score of every candidate and the optional reference
    (sequential decoding anchors the free group, but under a step budget it is forced to fill
    most of the canvas at the end, so the best candidate is the bar there).

    Args:
        cells: Rows ``{"group", "threshold", "score", "nfe"}``: one per (task, setting,
            threshold); ``threshold`` None marks the reference's own row.
        tolerance: Allowed deficit against the target.

    Returns:
        ``{group: {"threshold", "score", "nfe", "reference_score", "target", "reached"}}``:
        group means over its (task, setting) cells (``reference_score`` None without a
        reference); ``reached`` is False when the reference beat every candidate by more than
        the tolerance (then the best-scoring candidate is kept).
    """
    out: dict[str, dict[str, Any]] = {}
    for group in sorted({c["group"] for c in cells}):
        mine = [c for c in cells if c["group"] == group]
        ref_scores = [c["score"] for c in mine if c["threshold"] is None]
        ref = float(np.mean(ref_scores)) if ref_scores else None
        means = []
        for t in sorted({c["threshold"] for c in mine if c["threshold"] is not None}):
            at = [c for c in mine if c["threshold"] == t]
            score = float(np.mean([c["score"] for c in at]))
            means.append((t, score, float(np.mean([c["nfe"] for c in at]))))
        # under a budget sequential decoding is no anchor: the best of everything is the target
        target = max([m[1] for m in means] + ([ref] if ref is not None else []))
        ok = [m for m in means if m[1] >= target - tolerance - 1e-9]
        if ok:
            t, score, nfe = min(ok, key=lambda m: (m[2], -m[1]))
        else:
            t, score, nfe = max(means, key=lambda m: (m[1], -m[2]))
        out[group] = {
            "threshold": t,
            "score": score,
            "nfe": nfe,
            "reference_score": ref,
            "target": target,
            "reached": bool(ok),
        }
    return out


def select_task_thresholds(
    cells: Sequence[dict[str, Any]], tolerance: float
) -> dict[str, dict[str, float]]:
    """:func:`select_thresholds` on each task's own cells: ``{task: {group: threshold}}``."""
    return {
        task: {
            group: g["threshold"]
            for group, g in select_thresholds(
                [c for c in cells if c["task"] == task], tolerance
            ).items()
        }
        for task in sorted({c["task"] for c in cells})
    }


def calibrate_checkpoint(
    directory: str | Path,
    backbone: Backbone,
    tasks: Sequence[str],
    settings: Sequence[DecodeSetting],
    cfg: CalibrationConfig | None = None,
) -> dict[str, Any]:
    """Decode held-out prompts, select the deployment thresholds, write them into the checkpoint.

    Args:
        directory: Controller checkpoint (``config.json`` is rewritten atomically).
        backbone: The backbone the checkpoint serves.
        tasks: Task names (each task's examples are decoded at every setting).
        settings: The setting mixture (typically the one the controller trained on).
        cfg: Calibration options.

    Returns:
        ``{"threshold", "setting_thresholds", "task_thresholds", "groups", "cells", "config"}``.
        ``threshold`` (for window kinds outside the table) is ``full@1``'s, else the highest of
        the table; ``task_thresholds`` is :func:`select_task_thresholds`.

    Raises:
        ValueError: On empty ``tasks`` or ``settings``, or a checkpoint that cannot serve them.
    """
    cfg = cfg or CalibrationConfig()
    if not tasks or not settings:
        raise ValueError("tasks and settings must not be empty")
    directory = Path(directory)
    base = ControllerPolicy.from_pretrained(directory, backbone=backbone)
    cells = _decode_cells(base, backbone, tasks, settings, cfg)
    groups = select_thresholds(cells, cfg.tolerance)
    table = {name: g["threshold"] for name, g in groups.items()}
    free = table.get("full@1", max(table.values()))
    per_task = select_task_thresholds(cells, cfg.tolerance)
    result = {
        "threshold": free,
        "setting_thresholds": table,
        "task_thresholds": per_task,
        "groups": groups,
        "cells": cells,
        "config": asdict(cfg),
    }
    write_json_atomic(directory / "calibration.json", result, indent=2)
    meta = json.loads((directory / CONFIG_FILE).read_text())
    meta.setdefault("label_threshold", meta.get("threshold"))
    meta["threshold"] = free
    meta["setting_thresholds"] = table
    meta["task_thresholds"] = per_task
    meta["calibration"] = {"groups": groups, "tolerance": cfg.tolerance, "n": cfg.n}
    write_json_atomic(directory / CONFIG_FILE, meta, indent=2)
    return result


def _decode_cells(
    base: ControllerPolicy,
    backbone: Backbone,
    tasks: Sequence[str],
    settings: Sequence[DecodeSetting],
    cfg: CalibrationConfig,
) -> list[dict[str, Any]]:
    """One row per (task, setting, threshold) plus the reference's row (threshold None).

    Every task's examples share one decode per (setting, candidate): bigger batches, fewer calls.
    """
    built = {name: get_task(name) for name in tasks}
    examples = {name: sample_examples(task, cfg.n, cfg.seed) for name, task in built.items()}
    prompts = [e.prompt for name in tasks for e in examples[name]]
    candidates: list[tuple[float | None, Any]] = [
        (t, base.with_threshold(t)) for t in cfg.thresholds
    ]
    if cfg.reference is not None:
        candidates.insert(0, (None, make_policy(cfg.reference)))
    jobs = [(s, t, p) for s in settings for t, p in candidates]
    if cfg.progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="calibrate", unit="decode")
    cells = []
    for setting, t, policy in jobs:
        config = base.decode_config(setting.config())
        result = decode(backbone, prompts, policy, config, batch_size=cfg.batch_size)
        nfe = result.nfe.float().numpy()
        for i, name in enumerate(tasks):
            rows = slice(i * cfg.n, (i + 1) * cfg.n)
            scores = score_completions(built[name], examples[name], result.texts[rows])
            cells.append(
                {
                    "task": name,
                    "setting": setting.label,
                    "group": setting_group(setting),
                    "threshold": t,
                    "score": float(scores.mean()),
                    "nfe": float(nfe[rows].mean()),
                }
            )
    return cells
