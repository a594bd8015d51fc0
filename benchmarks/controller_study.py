"""Supervised controller study: one controller for all settings vs the heuristics and the oracle.

Usage (embedded backbone, CPU)::

    python benchmarks/controller_study.py --out runs/controller-study            # quick
    python benchmarks/controller_study.py --out runs/cs --tasks copy sort latin \\
        --collect-n 384 --eval-n 64 --grid quick --ablations

Steps: round 0 + one relabelled on-policy round over a setting mixture at every task's default G
(:func:`~commit_env.supervised.rounds.train_controller_rounds`), then on each task's default
setting: the heuristics, the oracle, round 0 and the final round at a sweep of deployment
thresholds. Prints the score/NFE table, the M2 NFE-gap closure per task (at matched score: within
1 point of the cell's best), the AUP per family, the controller forward / backbone forward ratio at
B=64 and the collection + training wall time. ``--grid quick`` adds the quick cross-setting grid
(cells outside the training mixture are marked unseen); ``--ablations`` the ablation table with
paired bootstrap intervals. Everything is written to ``OUT/study.json`` and ``OUT/study.md``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from commit_env.evaluation.controller import (
    ablation_records,
    ablation_table,
    controller_specs,
)
from commit_env.evaluation.grid import bench_grid, default_setting, task_gen_length
from commit_env.evaluation.metrics import aup_table
from commit_env.evaluation.sweeps import PolicySpec, Setting, heuristic_grid, run_sweep
from commit_env.supervised.inputs import batch_from_state
from commit_env.supervised.policy import ControllerPolicy
from commit_env.supervised.rounds import (
    RoundsConfig,
    RoundsResult,
    default_training_mixture,
    train_ablations,
    train_controller_rounds,
)
from commit_env.supervised.train import TrainConfig

from commit_env.backbones import Backbone, load_backbone
from commit_env.decoding import Decoder
from commit_env.io import write_json_atomic, write_text_atomic

QUICK_TASKS = ("copy", "sort", "latin")
MATCH = 0.01  # "matched score": within 1 point of the cell's best


def forward_cost(backbone, directory, setting, n=64, repeats=10, task="qa"):
    """Controller scoring time / backbone forward time on a batch of ``n`` live states.

    The controller side is everything :meth:`ControllerPolicy.select` adds per step: building
    the inputs (features, setting) and the forward with structure features and both heads.

    Returns:
        ``(ratio, controller seconds, backbone seconds)`` per call (means).
    """
    from commit_env.evaluate import sample_examples
    from commit_env.tasks import get_task

    policy = ControllerPolicy.from_pretrained(directory, backbone=backbone)
    config = policy.decode_config(setting.config())
    prompts = [e.prompt for e in sample_examples(get_task(task), n, 0)]
    decoder = Decoder(backbone, config)
    state = decoder.start(prompts)
    canvas, att = state.canvas, state.attention_mask
    layers = (-1,) if config.hidden_features else None

    def controller():
        batch = batch_from_state(state, policy._builder)
        batch.features = batch.features * policy._keep
        policy.model.forward_all(batch)

    with torch.inference_mode():
        for _ in range(3):
            backbone.forward(canvas, att, hidden_layers=layers)
            controller()
        t0 = time.perf_counter()
        for _ in range(repeats):
            backbone.forward(canvas, att, hidden_layers=layers)
        t_backbone = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        for _ in range(repeats):
            controller()
        t_controller = (time.perf_counter() - t0) / repeats
    return t_controller / t_backbone, t_controller, t_backbone


def quick_heuristics(gen_length: int) -> list[PolicySpec]:
    """The tuned heuristic families of the bench's quick preset (plus the oracle)."""
    keep = {"topk(k=1)", "topk(k=2)", "topk(k=4)", "oracle()"}
    keep |= {f"threshold(threshold={t})" for t in (0.5, 0.7, 0.9, 0.95, 0.99)}
    keep |= {f"factor(factor={f})" for f in (0.5, 1.0, 2.0, 4.0)}
    keep |= {f"eb(gamma={g})" for g in (0.1, 0.5, 1.0, 2.0)}
    keep |= {"klass()"}
    return [s for s in heuristic_grid(gen_length) if s.label in keep]


def gap_closure(records: list[dict[str, Any]], task: str) -> dict[str, Any] | None:
    """M2 at one cell: the NFE gap (best matched heuristic -> oracle) the controller closes."""
    rows = [r for r in records if r["task"] == task]
    deployable = [r for r in rows if r["family"] not in ("oracle",)]
    if not deployable:
        return None
    best = max(r["score"] for r in deployable)
    matched = [r for r in deployable if r["score"] >= best - MATCH - 1e-9]
    heur = [r for r in matched if not r["family"].startswith("controller")]
    ctrl = [r for r in matched if r["family"] == "controller"]
    oracle = next((r for r in rows if r["family"] == "oracle"), None)
    out: dict[str, Any] = {"task": task, "best_score": best}
    h = min(heur, key=lambda r: r["nfe"]) if heur else None
    c = min(ctrl, key=lambda r: r["nfe"]) if ctrl else None
    out["heuristic"] = None if h is None else (h["params_label"], h["score"], h["nfe"])
    out["controller"] = None if c is None else (c["params_label"], c["score"], c["nfe"])
    out["oracle"] = None if oracle is None else (oracle["score"], oracle["nfe"])
    if h is not None and c is not None and oracle is not None and h["nfe"] > oracle["nfe"]:
        out["closed"] = (h["nfe"] - c["nfe"]) / (h["nfe"] - oracle["nfe"])
    else:
        out["closed"] = None  # no matched controller point, or no gap to close
    return out


def table(records: list[dict[str, Any]], tasks: list[str]) -> str:
    """Score / NFE per policy (rows) and task (columns) at each task's default setting."""
    by = {(r["params_label"], r["family"], r["task"]): r for r in records}
    labels = list(dict.fromkeys((r["params_label"], r["family"]) for r in records))
    lines = ["| family | policy | " + " | ".join(f"{t} score / NFE" for t in tasks) + " |"]
    lines.append("|---|---|" + "---|" * len(tasks))
    for label, family in labels:
        cells = []
        for t in tasks:
            r = by.get((label, family, t))
            cells.append("-" if r is None else f"{r['score']:.3f} / {r['nfe']:.2f}")
        lines.append(f"| {family} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/controller-study")
    parser.add_argument("--tasks", nargs="+", default=list(QUICK_TASKS))
    parser.add_argument("--collect-n", type=int, default=256)
    parser.add_argument("--on-policy-n", type=int, default=None)
    parser.add_argument("--eval-n", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--grid", choices=("none", "quick", "full"), default="none")
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def training_mixture(tasks: list[str]) -> list[Setting]:
    """The default training mixture at every task's default G, without duplicates."""
    mixture: list[Setting] = []
    for g in sorted({task_gen_length(t) for t in tasks}):
        mixture += [s for s in default_training_mixture(g) if s not in mixture]
    return mixture


def rounds_config(
    args: argparse.Namespace, out: Path, tasks: list[str], mixture: list[Setting]
) -> RoundsConfig:
    """Round 0 plus one on-policy round (half of ``--collect-n`` unless given) on the mixture."""
    return RoundsConfig(
        out=str(out / "controller"),
        tasks=tuple(tasks),
        settings=tuple(mixture),
        n=args.collect_n,
        on_policy_n=args.on_policy_n or max(1, args.collect_n // 2),
        train=TrainConfig(epochs=args.epochs, rollout_n=0),
        seed=args.seed,
    )


def measure_forward_cost(
    backbone: Backbone, rounds: RoundsResult, tasks: list[str]
) -> dict[str, float]:
    """:func:`forward_cost` of the final controller at the shortest G, on the first task."""
    setting = default_setting(min(task_gen_length(t) for t in tasks))
    ratio, tc, tb = forward_cost(backbone, rounds.final, setting, task=tasks[0])
    return {"ratio": ratio, "controller_s": tc, "backbone_s": tb}


def default_setting_records(
    backbone: Backbone, rounds: RoundsResult, tasks: list[str], n: int, seed: int
) -> tuple[list[dict[str, Any]], list[PolicySpec]]:
    """Heuristics, oracle, round 0 and the final round's threshold curve at each task's default.

    Returns:
        ``(records, curve)``: the sweep records and the final controller's specs.
    """
    round0 = controller_specs(
        rounds.checkpoints[0],
        backbone,
        thresholds=None,
        family="controller-round0",
        extra_params=(("round", 0),),
    )
    curve = controller_specs(rounds.final, backbone)
    records: list[dict[str, Any]] = []
    for t in tasks:
        setting = default_setting(task_gen_length(t))
        specs = quick_heuristics(setting.gen_length) + round0 + curve
        records += run_sweep(backbone, [t], specs, [setting], n=n, seed=seed)
    return records, curve


def grid_study_records(
    backbone: Backbone, tasks: list[str], grid: str, curve: list[PolicySpec], n: int
) -> list[dict[str, Any]]:
    """The heuristics (no oracle) and the controller at its middle threshold over the grid."""
    grid_records = []
    for t, settings in bench_grid(tasks, grid).items():
        h = [s for s in quick_heuristics(task_gen_length(t)) if s.name != "oracle"]
        learned = [s for s in curve if s.params == curve[len(curve) // 2].params]
        grid_records += run_sweep(backbone, [t], h + learned, settings, n=n)
    return grid_records


def ablation_study_records(
    backbone: Backbone, rounds: RoundsResult, cfg: RoundsConfig, tasks: list[str], n: int, seed: int
) -> list[dict[str, Any]]:
    """Train the ablated controllers and evaluate them with the full one at each default."""
    variants = {"full": rounds.final, **train_ablations(rounds, cfg, backbone=backbone)}
    abl = []
    for t in tasks:
        abl += ablation_records(
            backbone,
            [t],
            variants,
            [default_setting(task_gen_length(t))],
            n=n,
            seed=seed,
        )
    return abl


def run_study(
    args: argparse.Namespace, backbone: Backbone, cfg: RoundsConfig, rounds: RoundsResult
) -> dict[str, Any]:
    """Every measurement after training; the keys of ``study.json`` in their order."""
    tasks = list(cfg.tasks)
    report: dict[str, Any] = {"rounds": rounds.rounds, "collect_train_seconds": rounds.seconds}
    report["forward_cost"] = measure_forward_cost(backbone, rounds, tasks)
    records, curve = default_setting_records(backbone, rounds, tasks, args.eval_n, args.seed)
    report["default_records"] = records
    report["gaps"] = [g for g in (gap_closure(records, t) for t in tasks) if g is not None]
    report["aup"] = aup_table(records)
    if args.grid != "none":
        report["grid_records"] = grid_study_records(backbone, tasks, args.grid, curve, args.eval_n)
    if args.ablations:
        report["ablations"] = ablation_study_records(
            backbone, rounds, cfg, tasks, args.eval_n, args.seed
        )
    return report


def rounds_lines(report: dict[str, Any], tasks: list[str]) -> list[str]:
    """Title, collection + training times and the forward cost."""
    md = [f"# Controller study ({', '.join(tasks)})", ""]
    md.append(
        "collection + training (both rounds): "
        + ", ".join(
            f"round {r['round']}: collect {r['collect_seconds']:.0f} s, train "
            f"{r['train_seconds']:.0f} s ({r['collect']['steps']} states)"
            for r in report["rounds"]
        )
        + f"; total {report['collect_train_seconds']:.0f} s"
    )
    cost = report["forward_cost"]
    tc, tb = cost["controller_s"], cost["backbone_s"]
    md.append(
        f"controller scoring {tc * 1e3:.2f} ms vs backbone forward {tb * 1e3:.2f} ms at B=64: "
        f"ratio {cost['ratio']:.3f} (target <= 0.15)"
    )
    return md


def fmt_point(point: Sequence[Any] | None) -> str:
    """``label / score / NFE`` of a gap row's point (floats to 3 significant digits)."""
    if point is None:
        return "-"
    return " / ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in point)


def gap_lines(gaps: list[dict[str, Any]]) -> list[str]:
    """The M2 table: NFE gap closed per task."""
    md = ["## M2: NFE gap closed at matched score (within 1 point of the cell's best)", ""]
    md += ["| task | best score | best matched heuristic | controller | oracle | closed |"]
    md += ["|---|---|---|---|---|---|"]
    for g in gaps:
        closed = "-" if g["closed"] is None else f"{g['closed']:.2f}"
        md.append(
            f"| {g['task']} | {g['best_score']:.3f} | {fmt_point(g['heuristic'])} | "
            f"{fmt_point(g['controller'])} | {fmt_point(g['oracle'])} | {closed} |"
        )
    return md


def aup_lines(aups: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    """The AUP table per family and task, and the family with the highest AUP per task."""
    md = ["", "## AUP per family (default setting)", ""]
    fams = list(dict.fromkeys(r["family"] for r in aups))
    md += ["| family | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    by = {(r["family"], r["task"]): r["aup"] for r in aups}
    for fam in fams:
        md.append(f"| {fam} | " + " | ".join(f"{by.get((fam, t), 0.0):.3f}" for t in tasks) + " |")
    winners = {t: max(fams, key=lambda fam: by.get((fam, t), -1.0)) for t in tasks}
    md += ["", "highest AUP per task: " + ", ".join(f"{t}: {w}" for t, w in winners.items())]
    return md


def grid_lines(grid_records: list[dict[str, Any]], trained: set[Setting]) -> list[str]:
    """Per grid cell: whether training saw it, the best heuristic and the controller."""
    md = ["", "## Grid (controller at one threshold vs the heuristics)", ""]
    md += ["| task | setting | seen in training | best heuristic score / NFE | controller |"]
    md += ["|---|---|---|---|---|"]
    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in grid_records:
        cells.setdefault((r["task"], r["gen_length"], r["window"], r["step_budget"]), []).append(r)
    for (t, g, w, b), rows in cells.items():
        seen = Setting(g, w, b) in trained
        heur = [r for r in rows if r["family"] != "controller"]
        best = max(heur, key=lambda r: (r["score"], -r["nfe"]))
        c = next((r for r in rows if r["family"] == "controller"), None)
        cs = "-" if c is None else f"{c['score']:.3f} / {c['nfe']:.2f}"
        md.append(
            f"| {t} | G={g} {w} S={b or '-'} | {seen} | {best['score']:.3f} / "
            f"{best['nfe']:.2f} ({best['params_label']}) | {cs} |"
        )
    return md


def study_markdown(report: dict[str, Any], tasks: list[str], trained: set[Setting]) -> str:
    """``study.md``: every table of the report, in the order they were measured."""
    records = report["default_records"]
    md = rounds_lines(report, tasks)
    md += ["", "## Default setting (full window, no budget)", "", table(records, tasks), ""]
    md += gap_lines(report["gaps"])
    md += aup_lines(report["aup"], tasks)
    if "grid_records" in report:
        md += grid_lines(report["grid_records"], trained)
    if "ablations" in report:
        md += ["", "## Ablations (paired 95% bootstrap intervals vs the full controller)", ""]
        md.append(ablation_table(report["ablations"]))
    return "\n".join(md) + "\n"


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    backbone = load_backbone("tiny")
    tasks = list(args.tasks)
    mixture = training_mixture(tasks)
    cfg = rounds_config(args, out, tasks, mixture)
    rounds = train_controller_rounds(cfg, backbone=backbone)
    report = run_study(args, backbone, cfg, rounds)
    md = study_markdown(report, tasks, set(mixture))
    write_json_atomic(out / "study.json", report)
    write_text_atomic(out / "study.md", md)
    print(md, end="")


if __name__ == "__main__":
    main()
