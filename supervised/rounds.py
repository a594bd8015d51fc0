"""The controller's training pipeline: round 0, relabelled on-policy rounds, and ablations.

Round 0 decodes with the reference policy over a mixture of settings and trains on its
future-stability labels. Each on-policy round (DAgger) decodes with the previous round's
controller mixed with the reference policy (:class:`~commit_env.supervised.collect.MixedPolicy`),
relabels every visited state by completing it with the reference policy, and retrains on all
rounds' traces together. Every round leaves a checkpoint, so a report can show both.

Usage (embedded backbone, CPU)::

    from commit_env.supervised.rounds import RoundsConfig, train_controller_rounds
    result = train_controller_rounds(RoundsConfig(out="runs/ctrl", n=256))
    result.checkpoints  # [runs/ctrl/round0/best, runs/ctrl/round1/best]
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from commit_env.supervised.calibrate import CalibrationConfig, calibrate_checkpoint
from commit_env.supervised.collect import (
    DEFAULT_TASKS,
    CollectConfig,
    MixedPolicy,
    collect_traces,
    setting_mixture,
)
from commit_env.supervised.policy import ControllerPolicy
from commit_env.supervised.train import TrainConfig, train

from commit_env.backbones.base import Backbone
from commit_env.backbones.spec import BackboneSpec, resolve_backbone
from commit_env.decoding import DecodeSetting
from commit_env.io import replace_dir_atomic, write_json_atomic
from commit_env.policies import make_policy

__all__ = [
    "ABLATIONS",
    "RoundsConfig",
    "RoundsResult",
    "default_training_mixture",
    "train_ablations",
    "train_controller_rounds",
]

#: Ablation name -> TrainConfig overrides (``no_on_policy`` is the round-0 checkpoint itself).
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_history": {"drop_groups": ("history",)},
    "no_hidden": {"drop_groups": ("hidden",)},
    "no_tau": {"use_tau": False},
    "no_structure": {"use_structure": False},
    "no_on_policy": {},
}


def default_training_mixture(gen_length: int) -> tuple[DecodeSetting, ...]:
    """The settings one controller is trained on at default length G.

    Windows ``block:4``, ``sliding:8`` and ``full``; budgets none, G/4 and G/8. The bench grid's
    other widths (``block:8``, ``sliding:16``) and lengths (2G) stay unseen in training.

    Args:
        gen_length: G.

    Returns:
        The settings.
    """
    return setting_mixture((gen_length,), ("block:4", "sliding:8", "full"), (1.0, 0.25, 0.125))


@dataclass(frozen=True)
class RoundsConfig:
    """Round 0 plus on-policy rounds.

    Attributes:
        out: Output directory (``traces/roundK`` and ``roundK/`` checkpoints; reused on rerun).
        backbone: Backbone spec.
        tasks: Task names of the collection.
        settings: Setting mixture (default: :func:`default_training_mixture` of G = 16).
        n: Prompts decoded in round 0.
        on_policy_n: Prompts decoded per on-policy round (None: ``n``); relabelling completes
            every visited state, so these rounds cost more per prompt.
        on_policy_rounds: Relabelled on-policy rounds after round 0 (>= 0).
        beta: Probability that a row follows the learner at a step in on-policy rounds.
        reference: Reference policy name.
        train: Training settings template (``traces``/``out``/``seed`` are set per round).
        calibration: Calibrate the final round's deployment thresholds on held-out decodes over
            the mixture (:mod:`commit_env.supervised.calibrate`); None keeps the threshold
            training selected on labels.
        hidden_features: D, hidden-state projection width recorded.
        seed: Seed of the example draws (round k uses ``seed + k``), training and coin flips.
        batch_size: Rows per engine batch.
        device: Backbone device.
        progress: Progress bars.
        labels: Label kind of every round's traces (``final`` or ``nearest``; see
            :class:`~commit_env.supervised.collect.CollectConfig`).
        nearest_margin: Ambiguity margin of ``nearest`` labels (see ``CollectConfig``).
    """

    out: str = "runs/controller-rounds"
    backbone: str | BackboneSpec = "tiny"
    tasks: tuple[str, ...] = DEFAULT_TASKS
    settings: tuple[DecodeSetting, ...] = ()
    n: int = 512
    on_policy_n: int | None = None
    on_policy_rounds: int = 1
    beta: float = 0.5
    reference: str = "topk"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(rollout_n=0))
    calibration: CalibrationConfig | None = field(default_factory=CalibrationConfig)
    hidden_features: int = 16
    seed: int = 0
    batch_size: int = 128
    device: str | None = None
    progress: bool = True
    labels: str = "final"
    nearest_margin: int | None = None

    def __post_init__(self) -> None:
        if self.on_policy_rounds < 0:
            raise ValueError(f"on_policy_rounds must be >= 0, got {self.on_policy_rounds}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.n < 1 or (self.on_policy_n is not None and self.on_policy_n < 1):
            raise ValueError(f"n and on_policy_n must be >= 1, got {self.n}, {self.on_policy_n}")

    @property
    def mixture(self) -> tuple[DecodeSetting, ...]:
        """The setting mixture (default: :func:`default_training_mixture` at G = 16)."""
        return self.settings or default_training_mixture(16)

    def collect_config(self, round_index: int) -> CollectConfig:
        """The collection of round ``round_index``."""
        return CollectConfig(
            out=str(Path(self.out) / "traces" / f"round{round_index}"),
            backbone=self.backbone,
            tasks=self.tasks,
            n=self.n if round_index == 0 or self.on_policy_n is None else self.on_policy_n,
            seed=self.seed + 1 + round_index,
            settings=self.mixture,
            reference=self.reference,
            hidden_features=self.hidden_features,
            batch_size=self.batch_size,
            device=self.device,
            labels=self.labels,
            nearest_margin=self.nearest_margin,
        )


@dataclass
class RoundsResult:
    """What :func:`train_controller_rounds` produced.

    Attributes:
        rounds: Per round: ``round``, ``traces``, ``checkpoint``, ``collect`` and ``train``
            summaries, ``collect_seconds`` and ``train_seconds``.
    """

    rounds: list[dict[str, Any]]

    @property
    def checkpoints(self) -> list[Path]:
        """Checkpoint directory of every round, round 0 first."""
        return [Path(r["checkpoint"]) for r in self.rounds]

    @property
    def final(self) -> Path:
        """The last round's checkpoint."""
        return self.checkpoints[-1]

    @property
    def seconds(self) -> float:
        """Collection, training and calibration time of all rounds."""
        return sum(
            r["collect_seconds"] + r["train_seconds"] + r.get("calibrate_seconds", 0.0)
            for r in self.rounds
        )


def train_controller_rounds(
    cfg: RoundsConfig, *, backbone: Backbone | None = None, executor: Any = None
) -> RoundsResult:
    """Round 0 (reference-policy traces) and ``cfg.on_policy_rounds`` relabelled DAgger rounds.

    Finished rounds (``OUT/roundK/round.json``) are reused, so an interrupted run resumes. The
    final round's checkpoint is then calibrated (``cfg.calibration``), once.

    Args:
        cfg: The rounds.
        backbone: A loaded backbone (default: resolve ``cfg.backbone``).
        executor: Collects round 0 (``executor.collect``, e.g. a Ray executor); on-policy rounds
            decode with the learner and always collect in this process. None: all local.

    Returns:
        Every round's checkpoint and summaries.
    """
    backbone = backbone or resolve_backbone(cfg.backbone, device=cfg.device)
    out = Path(cfg.out)
    rounds: list[dict[str, Any]] = []
    trace_dirs: list[str] = []
    for k in range(cfg.on_policy_rounds + 1):
        collect = cfg.collect_config(k)
        trace_dirs.append(collect.out)
        marker = out / f"round{k}" / "round.json"
        if marker.is_file():
            rounds.append(json.loads(marker.read_text()))
            continue
        tick = time.perf_counter()
        if k == 0 and executor is not None:
            collected = executor.collect(collect, progress=cfg.progress)
        elif k == 0:
            collected = collect_traces(collect, backbone=backbone, progress=cfg.progress)
        else:
            learner = ControllerPolicy.from_pretrained(rounds[-1]["checkpoint"], backbone=backbone)
            behaviour = MixedPolicy(
                learner=learner,
                reference=make_policy(cfg.reference),
                beta=cfg.beta,
                seed=cfg.seed + k,
            )
            collected = collect_traces(
                collect,
                backbone=backbone,
                behaviour=behaviour,
                relabel_with_reference=True,
                progress=cfg.progress,
            )
        collect_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        train_cfg = dataclasses.replace(
            cfg.train,
            traces=tuple(trace_dirs),  # DAgger: aggregate every round's traces
            out=str(out / f"round{k}"),
            seed=cfg.seed,
            device=cfg.device,
            progress=cfg.progress,
        )
        summary = train(train_cfg, backbone=backbone)
        record = {
            "round": k,
            "on_policy": k > 0,
            "traces": list(trace_dirs),
            "checkpoint": str(out / f"round{k}" / "best"),
            "collect": {key: v for key, v in collected.items() if key != "config"},
            "train": {key: summary[key] for key in ("best", "train_states", "val_states")},
            "collect_seconds": collect_seconds,
            "train_seconds": time.perf_counter() - tick,
        }
        write_json_atomic(marker, record, indent=2, sort_keys=False)
        rounds.append(record)
    if cfg.calibration is not None and "calibration" not in rounds[-1]:
        _calibrate_final(cfg, rounds[-1], backbone)
    return RoundsResult(rounds)


def _calibrate_final(cfg: RoundsConfig, record: dict[str, Any], backbone: Backbone) -> None:
    """Calibrate the final round's checkpoint and note it in that round's ``round.json``."""
    assert cfg.calibration is not None
    tick = time.perf_counter()
    calibration = dataclasses.replace(cfg.calibration, progress=cfg.progress)
    result = calibrate_checkpoint(
        record["checkpoint"], backbone, cfg.tasks, cfg.mixture, calibration
    )
    record["calibration"] = result["groups"]
    record["calibrate_seconds"] = time.perf_counter() - tick
    marker = Path(cfg.out) / f"round{record['round']}" / "round.json"
    write_json_atomic(marker, record, indent=2, sort_keys=False)


def train_ablations(
    rounds: RoundsResult,
    cfg: RoundsConfig,
    *,
    names: tuple[str, ...] = tuple(ABLATIONS),
    backbone: Backbone | None = None,
) -> dict[str, Path]:
    """Retrain the final round's controller with one component removed per ablation.

    Each variant trains on the same traces as the final round with :data:`ABLATIONS` overrides;
    ``no_on_policy`` is a copy of the round-0 checkpoint. When ``cfg.calibration`` is set, every
    variant is then calibrated exactly like the final round (same held-out decodes, same rule),
    so a comparison measures the removed component, not a different deployment threshold.
    Finished variants (and calibrations) are reused.

    Args:
        rounds: The result of :func:`train_controller_rounds`.
        cfg: The same config.
        names: Which ablations (keys of :data:`ABLATIONS`).
        backbone: A loaded backbone (only for rollouts if the template enables them).

    Returns:
        ``{name: checkpoint directory}``.

    Raises:
        ValueError: On an unknown ablation name.
    """
    unknown = sorted(set(names) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; expected some of {list(ABLATIONS)}")
    out = Path(cfg.out) / "ablations"
    final = rounds.rounds[-1]
    result: dict[str, Path] = {}
    for name in names:
        directory = out / name
        if name == "no_on_policy":
            if not (directory / "best" / "config.json").is_file():
                # a copy: calibrating it must not change the round-0 checkpoint the bench reports
                replace_dir_atomic(
                    directory / "best",
                    lambda tmp: shutil.copytree(rounds.checkpoints[0], tmp, dirs_exist_ok=True),
                )
        elif not (directory / "summary.json").is_file():
            overrides = dict(ABLATIONS[name])
            if "drop_groups" in overrides:
                overrides["drop_groups"] = tuple(cfg.train.drop_groups) + overrides["drop_groups"]
            train(
                dataclasses.replace(
                    cfg.train,
                    traces=tuple(final["traces"]),
                    out=str(directory),
                    seed=cfg.seed,
                    device=cfg.device,
                    progress=cfg.progress,
                    **overrides,
                ),
                backbone=backbone,
            )
        result[name] = directory / "best"
        if cfg.calibration is not None and not (result[name] / "calibration.json").is_file():
            backbone = backbone or resolve_backbone(cfg.backbone, device=cfg.device)
            calibration = dataclasses.replace(cfg.calibration, progress=cfg.progress)
            calibrate_checkpoint(result[name], backbone, cfg.tasks, cfg.mixture, calibration)
    return result
