"""Step-cost (lambda) sweep: train one agent per lambda and compare it with tuned thresholds.

For every lambda the agent is trained for a bounded wall time, then evaluated with
``commit_env.evaluate.evaluate_policy`` on the same seeded examples as every confidence
threshold; the comparison is the mean return ``score - lambda * NFE`` against the best threshold
*for that lambda*. The (score, NFE) points of the agents form the agent's trade-off curve.

CPU, embedded tiny backbone (3 lambdas x 4 minutes, about 14 minutes)::

    commit-env ppo-sweep --lambdas 0.005 0.02 0.05 --minutes 4 --task qa --gen-length 16 \
        --window block:4 --out runs/lambda_sweep

``--warm-start T`` behaviour-clones ``ThresholdPolicy(T)`` before RL (off by default);
``--warm-start none`` trains from the initial low-commit policy.

From scratch on several families (issue 14's M4 protocol; :func:`run_scratch_sweep`): one agent
per (family, lambda), trained with the :data:`~commit_env.agents.train_ppo.FROM_SCRATCH` recipe
at the family's default setting (its default G, full window, no budget), against the best of
:data:`SCRATCH_THRESHOLDS` tuned for that family and lambda *on the evaluation examples
themselves* (an optimistic baseline)::

    commit-env ppo-sweep --from-scratch --tasks copy sort latin --lambdas 0.005 0.02 0.05 \
        --minutes 15 --out runs/m4

TensorBoard curves of every agent: ``tensorboard --logdir runs/m4``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from commit_env.agents.policy import PPOPolicy
from commit_env.agents.train_ppo import FROM_SCRATCH, PPOConfig, train_ppo

from commit_env.backbones.spec import resolve_backbone
from commit_env.decoding import DecodeSetting
from commit_env.evaluate import evaluate_policy, sample_examples
from commit_env.io import write_json_atomic
from commit_env.policies import ThresholdPolicy
from commit_env.tasks.registry import get_task

__all__ = [
    "SCRATCH_THRESHOLDS",
    "THRESHOLDS",
    "format_scratch_table",
    "format_table",
    "run_lambda_sweep",
    "run_scratch_sweep",
]

THRESHOLDS: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
#: The finer grid the from-scratch comparison tunes the threshold rule on.
SCRATCH_THRESHOLDS: tuple[float, ...] = (
    0.3,
    0.5,
    0.6,
    0.7,
    0.8,
    0.85,
    0.9,
    0.95,
    0.97,
    0.99,
    0.999,
)

logger = logging.getLogger(__name__)


def run_lambda_sweep(
    lambdas: Sequence[float],
    base: PPOConfig,
    *,
    minutes_per_lambda: float = 4.0,
    eval_n: int = 128,
    eval_seed: int = 2024,
    thresholds: Sequence[float] = THRESHOLDS,
    warm_start: float | None = None,
    out: str | Path = "runs/lambda_sweep",
) -> list[dict[str, Any]]:
    """Train and evaluate one agent per lambda; compare with the best threshold per lambda.

    Args:
        lambdas: Step costs.
        base: Run settings shared by every lambda (``step_cost``, ``out`` and ``max_minutes``
            are replaced per lambda).
        minutes_per_lambda: Wall-time limit of each training run.
        eval_n: Evaluation examples (the same for every policy).
        eval_seed: Seed of the evaluation examples.
        thresholds: Confidence thresholds of the heuristic baseline.
        warm_start: Behaviour-clone ``ThresholdPolicy(warm_start)`` before RL (``None``: no).
        out: Directory for the per-lambda runs and ``sweep.json``.

    Returns:
        One record per lambda: the agent's ``score``/``nfe``/``return``, training steps and
        time, the best threshold with its ``score``/``nfe``/``return``, and ``met`` (agent
        return >= best threshold return).

    Raises:
        ValueError: If ``lambdas`` is empty.
    """
    if not lambdas:
        raise ValueError("lambdas must not be empty")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = resolve_backbone(base.backbone)
    task = get_task(base.task)
    config = base.setting.config()
    examples = sample_examples(task, eval_n, eval_seed)
    heuristics = []
    for t in thresholds:
        summary = evaluate_policy(
            backbone, task, ThresholdPolicy(t), config, examples=examples
        ).summary()
        heuristics.append({"threshold": t, "score": summary["score"], "nfe": summary["nfe"]})
    records: list[dict[str, Any]] = []
    for lam in lambdas:
        cfg = dataclasses.replace(
            base,
            step_cost=float(lam),
            out=str(out / f"lambda_{lam:g}"),
            max_minutes=minutes_per_lambda,
            progress_bar=False,
        )
        teacher = None if warm_start is None else ThresholdPolicy(warm_start)
        train = train_ppo(cfg, teacher, backbone=backbone)
        agent = PPOPolicy.load(Path(cfg.out) / "final.zip")
        agent_config = agent.decode_config(config)
        summary = evaluate_policy(backbone, task, agent, agent_config, examples=examples).summary()
        record = _compare(float(lam), summary, train, heuristics, warm_start)
        record["met"] = bool(record["return"] >= record["threshold_return"] - 1e-9)
        records.append(record)
        logger.info("lambda %g: %s", lam, record)
    write_json_atomic(
        out / "sweep.json",
        {"records": records, "heuristics": heuristics},
        indent=2,
        sort_keys=False,
    )
    return records


def _compare(
    lam: float,
    agent: dict[str, Any],
    train: dict[str, Any],
    heuristics: Sequence[dict[str, Any]],
    warm_start: float | None,
) -> dict[str, Any]:
    """One sweep record: the agent's return against the best threshold's at ``lam``."""
    best = max(heuristics, key=lambda h: h["score"] - lam * h["nfe"])
    return {
        "lambda": lam,
        "score": agent["score"],
        "nfe": agent["nfe"],
        "return": agent["score"] - lam * agent["nfe"],
        "train_steps": train["timesteps"],
        "train_minutes": train["wall_time_s"] / 60.0,
        "train_cpu_minutes": train.get("cpu_time_s", float("nan")) / 60.0,
        "env_steps_per_s": train["env_steps_per_s"],
        "warm_start": warm_start,
        "best_threshold": best["threshold"],
        "threshold_score": best["score"],
        "threshold_nfe": best["nfe"],
        "threshold_return": best["score"] - lam * best["nfe"],
    }


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`run_lambda_sweep` records.

    Args:
        records: Sweep records.

    Returns:
        The table.
    """
    lines = [
        "| lambda | PPO score | PPO NFE | PPO return | steps (min) | best thr | thr score "
        "| thr NFE | thr return | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['lambda']:g} | {r['score']:.3f} | {r['nfe']:.2f} | {r['return']:.4f} "
            f"| {r['train_steps']} ({r['train_minutes']:.1f}) | {r['best_threshold']:g} "
            f"| {r['threshold_score']:.3f} | {r['threshold_nfe']:.2f} "
            f"| {r['threshold_return']:.4f} | {'yes' if r['met'] else 'no'} |"
        )
    return "\n".join(lines)


def _threshold_grid(
    backbone: Any, task: Any, setting: DecodeSetting, examples: Any, thresholds: Sequence[float]
) -> list[dict[str, Any]]:
    config = setting.config()
    rows = []
    for t in thresholds:
        summary = evaluate_policy(
            backbone, task, ThresholdPolicy(t), config, examples=examples
        ).summary()
        rows.append({"threshold": t, "score": summary["score"], "nfe": summary["nfe"]})
    return rows


def run_scratch_sweep(
    lambdas: Sequence[float],
    tasks: Sequence[str],
    base: PPOConfig,
    *,
    minutes_per_agent: float = 15.0,
    eval_n: int = 128,
    eval_seed: int = 2024,
    thresholds: Sequence[float] = SCRATCH_THRESHOLDS,
    setting: DecodeSetting | None = None,
    out: str | Path = "runs/scratch_sweep",
    cpu_budget: bool = True,
) -> list[dict[str, Any]]:
    """PPO from scratch (no imitation) per family and lambda against the tuned threshold rule.

    Every agent uses ``base`` with the :data:`FROM_SCRATCH` recipe applied, its family, its
    lambda, the family's setting and a wall-time limit; it is evaluated deterministically on
    ``eval_n`` seeded examples, on which every threshold of ``thresholds`` is evaluated too.

    Args:
        lambdas: Step costs.
        tasks: Task families (e.g. ``["copy", "sort", "latin"]``).
        base: Shared run settings (``num_envs``, ``n_steps``, ``seed``, ``backbone``, ...).
        minutes_per_agent: Time limit of each training run (the M4 budget is 15 CPU-minutes).
        cpu_budget: Count the limit in CPU time of this process (default, as M4 does) rather
            than wall time.
        eval_n: Evaluation examples per family.
        eval_seed: Their seed.
        thresholds: The heuristic grid.
        setting: Decode setting of every family (default: each family's default setting: its
            ``default_gen_length``, full window, no budget).
        out: Directory of the runs (``{task}/lambda_{lam}``) and ``scratch_sweep.json``.

    Returns:
        One record per (task, lambda): the :func:`run_lambda_sweep` fields plus ``task``.

    Raises:
        ValueError: If ``lambdas`` or ``tasks`` is empty.
    """
    if not lambdas or not tasks:
        raise ValueError("lambdas and tasks must not be empty")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = resolve_backbone(base.backbone)
    records: list[dict[str, Any]] = []
    grids: dict[str, list[dict[str, Any]]] = {}
    for name in tasks:
        task = get_task(name)
        run_setting = setting or DecodeSetting(int(task.default_gen_length), "full", None)
        examples = sample_examples(task, eval_n, eval_seed)
        grids[name] = _threshold_grid(backbone, task, run_setting, examples, thresholds)
        for lam in lambdas:
            cfg = dataclasses.replace(
                base,
                **FROM_SCRATCH,
                task=name,
                setting=run_setting,
                step_cost=float(lam),
                out=str(out / name.replace(":", "_") / f"lambda_{lam:g}"),
                max_minutes=None if cpu_budget else minutes_per_agent,
                max_cpu_minutes=minutes_per_agent if cpu_budget else None,
                progress_bar=False,
            )
            train = train_ppo(cfg, backbone=backbone)
            agent = PPOPolicy.load(Path(cfg.out) / "final.zip")
            agent_config = agent.decode_config(run_setting.config())
            summary = evaluate_policy(
                backbone, task, agent, agent_config, examples=examples
            ).summary()
            record = {"task": name, **_compare(float(lam), summary, train, grids[name], None)}
            record["met"] = bool(record["return"] >= record["threshold_return"] - 1e-9)
            records.append(record)
            logger.info("%s lambda %g: %s", name, lam, record)
            write_json_atomic(
                out / "scratch_sweep.json",
                {"records": records, "heuristics": grids},
                indent=2,
                sort_keys=False,
            )
    return records


def format_scratch_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`run_scratch_sweep` records (one row per family and lambda).

    Args:
        records: Sweep records.

    Returns:
        The table.
    """
    lines = [
        "| family | lambda | PPO score | PPO NFE | PPO return | steps (CPU min) | best thr "
        "| thr score | thr NFE | thr return | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['task']} | {r['lambda']:g} | {r['score']:.3f} | {r['nfe']:.2f} "
            f"| {r['return']:.4f} | {r['train_steps']} ({r['train_cpu_minutes']:.1f}) "
            f"| {r['best_threshold']:g} | {r['threshold_score']:.3f} | {r['threshold_nfe']:.2f} "
            f"| {r['threshold_return']:.4f} | {'yes' if r['met'] else 'no'} |"
        )
    return "\n".join(lines)
