"""Policy sweeps: every policy x parameters x setting x task, measured the same way.

Records are plain dicts (JSON-ready); reports and plots consume them and never decode.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from commit_env.backbones.base import Backbone
from commit_env.decoding import DecodeConfig, DecodeSetting
from commit_env.evaluate import (
    PolicyEval,
    evaluate_policy,
    reference_tokens,
    sample_examples,
)
from commit_env.policies import make_policy
from commit_env.tasks import Example, get_task

__all__ = [
    "PolicySpec",
    "Setting",
    "heuristic_grid",
    "run_sweep",
    "record_key",
    "sweep_jobs",
    "base_record",
    "policy_for_job",
    "finish_record",
    "markdown_table",
    "paired_difference",
]


@dataclass(frozen=True)
class PolicySpec:
    """A policy by name and parameters, plus the family it is plotted with.

    Attributes:
        family: Curve label (``threshold``, ``eb``, ``sequential`` ...).
        name: Registry name (``make_policy``), or ``controller``/``ppo`` for learned policies.
        params: Parameters.
        factory: Builds the policy for a setting (learned policies), or returns ``None`` when it
            cannot run there (the setting is skipped); ``None`` = ``make_policy``.
    """

    family: str
    name: str
    params: tuple[tuple[str, Any], ...] = ()
    factory: Callable[[DecodeConfig], Any] | None = None

    @property
    def label(self) -> str:
        """``name(k=v, ...)``."""
        inner = ", ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.name}({inner})"


#: One decode setting of the grid: the project's one setting type.
Setting = DecodeSetting


def heuristic_grid(gen_length: int) -> list[PolicySpec]:
    """Every training-free heuristic at its published defaults plus a sweep, and the oracle.

    Args:
        gen_length: G (for the all-at-once policy).

    Returns:
        Policy specs in plotting order.
    """
    specs = [
        PolicySpec("sequential", "topk", (("k", 1),)),
        PolicySpec("topk", "topk", (("k", 2),)),
        PolicySpec("topk", "topk", (("k", 4),)),
        PolicySpec("topk-even", "topk", (("schedule", "even"),)),
        PolicySpec("topk-margin", "topk", (("score", "margin"),)),
        PolicySpec("topk-entropy", "topk", (("score", "entropy"),)),
        PolicySpec("topk-random", "topk", (("score", "random"),)),
        PolicySpec("all-at-once", "topk", (("k", gen_length),)),
    ]
    specs += [
        PolicySpec("threshold", "threshold", (("threshold", t),))
        for t in (0.5, 0.7, 0.9, 0.95, 0.99)
    ]
    specs += [PolicySpec("factor", "factor", (("factor", f),)) for f in (0.5, 1.0, 2.0, 4.0)]
    specs += [PolicySpec("eb", "eb", (("gamma", g),)) for g in (0.01, 0.1, 0.5, 1.0, 2.0)]
    specs += [
        PolicySpec("klass", "klass", ()),
        PolicySpec("klass", "klass", (("conf_threshold", 0.9), ("kl_threshold", 0.001))),
        PolicySpec("klass", "klass", (("conf_threshold", 0.3), ("kl_threshold", 0.05))),
    ]
    specs += [
        PolicySpec("prophet", "prophet", ()),
        PolicySpec("prophet", "prophet", (("high", 5.0), ("mid", 3.0), ("low", 1.5))),
    ]
    specs += [  # revocable and draft-and-verify (issue 15)
        PolicySpec("wino", "wino", ()),
        PolicySpec("wino", "wino", (("draft_threshold", 0.4), ("verify_threshold", 0.7))),
        PolicySpec("wino", "wino", (("draft_threshold", 0.8), ("verify_threshold", 0.95))),
        PolicySpec("remdm", "remdm", ()),
        PolicySpec("remdm", "remdm", (("schedule", "conf"),)),
        PolicySpec("freedave", "freedave", ()),
        PolicySpec("freedave", "freedave", (("draft_steps", 8),)),
    ]
    specs.append(PolicySpec("oracle", "oracle", ()))
    return specs


def record_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """Identity of a result record (used to resume an interrupted sweep)."""
    return (
        record["task"],
        record["policy"],
        record["params_label"],
        record["gen_length"],
        record["window"],
        record["step_budget"],
    )


def run_sweep(
    backbone: Backbone,
    tasks: Sequence[str],
    policies: Sequence[PolicySpec],
    settings: Sequence[Setting],
    *,
    n: int = 100,
    seed: int = 0,
    batch_size: int = 128,
    done: Container[tuple[Any, ...]] = frozenset(),
    on_record: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    keep_scores: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every policy on every task and setting, on the same seeded examples.

    Args:
        backbone: The denoiser.
        tasks: Task names.
        policies: Policy specs.
        settings: Decode settings.
        n: Examples per task (the same for every policy and setting).
        seed: Seed of the example draw.
        batch_size: Rows per engine batch.
        done: Keys (:func:`record_key`) already measured; skipped (resume). Pass a set that
            ``on_record`` updates to deduplicate across calls.
        on_record: Called with each new record (e.g. to append it to disk atomically).
        progress: Show a progress bar.
        keep_scores: Store per-example scores in records (for paired comparisons).

    Returns:
        The new records.
    """
    from tqdm.auto import tqdm

    examples: dict[str, list[Example]] = {t: sample_examples(get_task(t), n, seed) for t in tasks}
    jobs = sweep_jobs(tasks, policies, settings)
    records = []
    refs: dict[Any, Any] = {}
    for task_name, setting, spec in tqdm(jobs, desc="sweep", unit="run", disable=not progress):
        base = base_record(task_name, setting, spec)
        if record_key(base) in done:
            continue
        task = get_task(task_name)
        prompts = [e.prompt for e in examples[task_name]]
        built = policy_for_job(
            backbone,
            spec,
            setting.config(),
            prompts,
            batch_size,
            refs,
            (task_name, setting),
            task=task_name,
        )
        if built is None:  # the learned policy does not support this setting
            continue
        policy, config = built
        ev: PolicyEval = evaluate_policy(
            backbone, task, policy, config, examples=examples[task_name], batch_size=batch_size
        )
        record = finish_record(base, ev, seed=seed, keep_scores=keep_scores)
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def sweep_jobs(
    tasks: Sequence[str], policies: Sequence[PolicySpec], settings: Sequence[Setting]
) -> list[tuple[str, Setting, PolicySpec]]:
    """The sweep's (task, setting, policy) jobs in their fixed order (tasks, then settings)."""
    return [(t, s, p) for t in tasks for s in settings for p in policies]


def base_record(task_name: str, setting: Setting, spec: PolicySpec) -> dict[str, Any]:
    """The identifying fields of a job's record (everything :func:`record_key` reads)."""
    return {
        "task": task_name,
        "policy": spec.name,
        "family": spec.family,
        "params": dict(spec.params),
        "params_label": spec.label,
        "gen_length": setting.gen_length,
        "window": setting.window,
        "step_budget": setting.step_budget,
    }


def policy_for_job(
    backbone: Backbone,
    spec: PolicySpec,
    config: DecodeConfig,
    prompts: Sequence[str],
    batch_size: int,
    refs: dict[Any, Any],
    ref_key: Any,
    *,
    task: str | None = None,
) -> tuple[Any, DecodeConfig] | None:
    """Build a job's policy and decode config (``None``: the policy cannot run here).

    Args:
        backbone: The denoiser (the oracle's reference decode runs on it).
        spec: The policy spec.
        config: The setting's decode config.
        prompts: The job's prompts (the oracle's reference rows, in order).
        batch_size: Rows per engine batch.
        refs: Cache of oracle references, updated in place.
        ref_key: Cache key of ``prompts`` under ``config``.
        task: The job's task: a learned policy with per-task calibration (``for_task``, see
            :meth:`commit_env.supervised.policy.ControllerPolicy.for_task`) deploys that task's
            thresholds.

    Returns:
        ``(policy, config)`` or ``None``.
    """
    if spec.factory is not None:
        policy = spec.factory(config)
        if policy is None:
            return None
        if task is not None and hasattr(policy, "for_task"):
            policy = policy.for_task(task)
        return policy, policy.decode_config(config)
    if spec.name == "oracle":
        if ref_key not in refs:
            refs[ref_key] = reference_tokens(backbone, prompts, config, batch_size=batch_size)
        oracle = make_policy("oracle", reference=refs[ref_key], **dict(spec.params))
        return oracle, config
    policy = make_policy(spec.name, **dict(spec.params))
    return policy, policy.decode_config(config)  # remask_cap for WINO / ReMDM; as is otherwise


def finish_record(
    base: dict[str, Any], ev: PolicyEval, *, seed: int, keep_scores: bool = True
) -> dict[str, Any]:
    """A job's full record: its identity, the evaluation summary and (optionally) scores."""
    record = {**base, **ev.summary(seed=seed), "seed": seed}
    if keep_scores:
        record["scores"] = ev.scores.tolist()
        record["nfe_per_example"] = ev.result.nfe.tolist()
    return record


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """Score / NFE table: one row per policy, one column pair per task.

    Args:
        records: Sweep records of one setting.

    Returns:
        A GitHub markdown table.
    """
    tasks = sorted({r["task"] for r in records})
    labels = list(dict.fromkeys(r["params_label"] for r in records))
    by = {(r["params_label"], r["task"]): r for r in records}
    head = "| policy | " + " | ".join(f"{t} score | {t} NFE" for t in tasks) + " |"
    rule = "|---|" + "---|---|" * len(tasks)
    rows = [head, rule]
    for label in labels:
        cells = []
        for t in tasks:
            r = by.get((label, t))
            cells += ["-", "-"] if r is None else [f"{r['score']:.3f}", f"{r['nfe']:.2f}"]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def paired_difference(a: Sequence[float], b: Sequence[float], *, seed: int = 0) -> dict[str, float]:
    """Mean difference ``a - b`` over paired examples with a 95% bootstrap interval.

    Args:
        a: Per-example values of policy A.
        b: Per-example values of policy B (same examples, same order).
        seed: Resampling seed.

    Returns:
        ``{"diff", "low", "high", "significant"}`` (significant: the interval excludes 0).
    """
    from commit_env.evaluate import bootstrap_ci

    d = np.asarray(a, float) - np.asarray(b, float)
    low, high = bootstrap_ci(d, seed=seed)
    return {
        "diff": float(d.mean()),
        "low": low,
        "high": high,
        "significant": float(low > 0 or high < 0),
    }
