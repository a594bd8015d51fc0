"""Evaluating the supervised controller like any policy family: threshold curves and ablations.

* :func:`controller_specs`: one checkpoint at several deployment thresholds, as policy specs of
  one family (``controller``), so the sweep draws its curve and
  :func:`~commit_env.evaluation.metrics.aup_table` gives it an AUP like a heuristic family.
* :func:`ablation_records` / :func:`ablation_table`: every ablation variant on the same seeded
  examples, compared with the full controller by paired bootstrap intervals
  (:func:`~commit_env.evaluation.sweeps.paired_difference`).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from pathlib import Path
from typing import Any

from commit_env.evaluation.sweeps import PolicySpec, Setting, paired_difference, run_sweep

from commit_env.backbones.base import Backbone
from commit_env.decoding import DecodeConfig

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ablation_records",
    "ablation_table",
    "controller_specs",
    "deployed_params",
    "learned_threshold",
]

#: Deployment thresholds of the controller's curve (plus the learned one of the checkpoint).
#: 0.999 lets the curve reach the matched-score bar where 0.995 still commits a wrong proposal
#: (``--full`` with nearest labels: ``remove:any`` 0.925 -> 0.995, ``replace:any`` 0.90 -> 0.985).
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.85, 0.95, 0.99, 0.995, 0.999)


def learned_threshold(directory: str | Path) -> float:
    """The deployment threshold of a checkpoint (its ``config.json``: calibrated or trained)."""
    import json

    return float(json.loads((Path(directory) / "config.json").read_text()).get("threshold", 0.5))


def deployed_params(directory: str | Path) -> tuple[tuple[str, Any], ...]:
    """The params of a checkpoint's deployed member in :func:`controller_specs`.

    ``(("threshold", t),)``, plus ``("thresholds", "per setting")`` when calibration chose
    thresholds per window kind and step-budget fraction, or ``("thresholds", "per task and
    setting")`` when it also kept a table per task (they are in the checkpoint's
    ``config.json`` and ``calibration.json``).
    """
    import json

    meta = json.loads((Path(directory) / "config.json").read_text())
    t = float(meta.get("threshold", 0.5))
    if not meta.get("setting_thresholds"):
        return (("threshold", t),)
    scope = "per task and setting" if meta.get("task_thresholds") else "per setting"
    return (("threshold", t), ("thresholds", scope))


def controller_specs(
    directory: str | Path,
    backbone: Backbone,
    *,
    thresholds: Sequence[float] | None = DEFAULT_THRESHOLDS,
    family: str = "controller",
    include_learned: bool = True,
    extra_params: tuple[tuple[str, Any], ...] = (),
) -> list[PolicySpec]:
    """Policy specs of one checkpoint at several deployment thresholds (one family).

    Args:
        directory: Controller checkpoint.
        backbone: The backbone (checked against the checkpoint now).
        thresholds: Deployment thresholds (None or empty: only the learned one).
        family: Family label of every spec.
        include_learned: Add the checkpoint's deployed member (its calibrated or
            training-selected thresholds, params :func:`deployed_params`).
        extra_params: Params put before the threshold, e.g. ``(("round", 0),)``: records are
            keyed by policy name and params, so two checkpoints in one sweep need distinct ones.

    Returns:
        Specs with params ``extra_params + (("threshold", t),)`` sharing one loaded model,
        sorted by threshold (the deployed member, when it has a separate budget threshold,
        right after its free threshold's member).
        A setting the checkpoint cannot serve raises the policy's ``ValueError`` at decode time.
    """
    from commit_env.supervised.policy import ControllerPolicy

    base = ControllerPolicy.from_pretrained(directory, backbone=backbone)
    members = {(("threshold", float(t)),): base.with_threshold(float(t)) for t in thresholds or ()}
    if include_learned or not members:
        members[deployed_params(directory)] = base
    specs = []
    for own, policy in sorted(members.items()):

        def build(config: DecodeConfig, policy: Any = policy) -> Any:
            return policy

        specs.append(PolicySpec(family, "controller", (*extra_params, *own), factory=build))
    return specs


def ablation_records(
    backbone: Backbone,
    tasks: Sequence[str],
    variants: Mapping[str, str | Path],
    settings: Sequence[Setting],
    *,
    threshold: float | None = None,
    n: int = 100,
    seed: int = 0,
    batch_size: int = 128,
    done: Container[tuple[Any, ...]] = frozenset(),
    on_record: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every controller variant on the same seeded examples.

    Args:
        backbone: The backbone.
        tasks: Task names.
        variants: ``{name: checkpoint}``; include ``"full"`` (the reference of the comparison).
        settings: Settings to evaluate.
        threshold: Deployment threshold for every variant (None: each checkpoint's own).
        n: Examples per task.
        seed: Seed of the example draw (identical across variants: paired comparisons).
        batch_size: Rows per engine batch.
        done: Record keys to skip (resume).
        on_record: Called with each new record.
        progress: Progress bar.

    Returns:
        Records with family ``ablation:<name>`` (per-example scores kept).
    """
    specs = []
    for name, directory in variants.items():
        # the variant goes into the params so records of different variants never collide
        specs += controller_specs(
            directory,
            backbone,
            thresholds=None if threshold is None else (threshold,),
            family=f"ablation:{name}",
            include_learned=threshold is None,
            extra_params=(("variant", name),),
        )[:1]
    return run_sweep(
        backbone,
        tasks,
        specs,
        settings,
        n=n,
        seed=seed,
        batch_size=batch_size,
        done=done,
        on_record=on_record,
        progress=progress,
    )


def ablation_table(records: Sequence[Mapping[str, Any]], reference: str = "full") -> str:
    """Markdown: each ablation vs the full controller, per task and setting, paired intervals.

    Args:
        records: Records from :func:`ablation_records` (per-example ``scores`` and
            ``nfe_per_example``).
        reference: The variant compared against.

    Returns:
        A table: variant, task, setting, score, NFE, score difference and NFE difference with
        95% paired bootstrap intervals (``*`` = the interval excludes 0).
    """
    by = {
        (r["family"].removeprefix("ablation:"), r["task"], _setting(r)): r
        for r in records
        if str(r["family"]).startswith("ablation:")
    }
    lines = [
        f"| variant | task | setting | score | NFE | score - {reference} [95% CI] | "
        f"NFE - {reference} [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, task, setting), r in sorted(by.items()):
        ref = by.get((reference, task, setting))
        if name == reference or ref is None:
            diff = "-", "-"
        else:
            diff = (
                _fmt(paired_difference(r["scores"], ref["scores"])),
                _fmt(paired_difference(r["nfe_per_example"], ref["nfe_per_example"])),
            )
        lines.append(
            f"| {name} | {task} | {setting} | {r['score']:.3f} | {r['nfe']:.2f} | "
            f"{diff[0]} | {diff[1]} |"
        )
    return "\n".join(lines)


def _setting(record: Mapping[str, Any]) -> str:
    return f"G={record['gen_length']} {record['window']} S={record['step_budget'] or '-'}"


def _fmt(d: Mapping[str, float]) -> str:
    star = "*" if d["significant"] else ""
    return f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{star}"
