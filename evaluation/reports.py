"""Markdown report and derived tables from result records (never decodes anything)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from commit_env.evaluation.plots import pareto_frontier
from commit_env.evaluation.sweeps import paired_difference

__all__ = ["cross_setting_cells", "render_report", "setting_label", "frontier_advantage"]

LEARNED = ("controller", "ppo")


def setting_label(r: dict[str, Any]) -> str:
    """``G=16 block:4 S=8`` for a record."""
    return f"G={r['gen_length']} {r['window']} S={r['step_budget'] or '-'}"


def frontier_advantage(
    point: tuple[float, float], heuristics: Sequence[tuple[float, float]]
) -> float:
    """Score of ``point`` minus the best heuristic score reachable with at most its NFE.

    Args:
        point: ``(nfe, score)``.
        heuristics: ``(nfe, score)`` of the heuristics in the same cell.

    Returns:
        The advantage (>= 0: on or above the frontier). With no heuristic at that NFE or less,
        the policy's own score.
    """
    nfe, score = point
    reachable = [s for n, s in heuristics if n <= nfe + 1e-9]
    return score - max(reachable) if reachable else score


def cross_setting_cells(
    records: Sequence[dict[str, Any]], learned_families: Sequence[str] = LEARNED
) -> list[dict[str, Any]]:
    """Advantage over the heuristic frontier per (learned family, setting, task).

    Args:
        records: Result records.
        learned_families: Families compared against the heuristics (oracle excluded from both).

    Returns:
        Cells with ``family``, ``setting``, ``task``, ``nfe``, ``score`` and ``advantage``; plus
        one task-averaged cell per (family, setting) with ``task == "mean"``.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((setting_label(r), r["task"]), []).append(r)
    cells = []
    for (setting, task), rows in groups.items():
        heur = [
            (r["nfe"], r["score"])
            for r in rows
            if r["family"] not in learned_families and r["family"] != "oracle"
        ]
        for r in rows:
            if r["family"] in learned_families and heur:
                cells.append(
                    {
                        "family": r["family"],
                        "setting": setting,
                        "task": task,
                        "nfe": r["nfe"],
                        "score": r["score"],
                        "advantage": frontier_advantage((r["nfe"], r["score"]), heur),
                    }
                )
    means = []
    for family in dict.fromkeys(c["family"] for c in cells):
        for setting in dict.fromkeys(c["setting"] for c in cells):
            sel = [c for c in cells if c["family"] == family and c["setting"] == setting]
            if sel:
                means.append(
                    {
                        "family": family,
                        "setting": setting,
                        "task": "mean",
                        "nfe": sum(c["nfe"] for c in sel) / len(sel),
                        "score": sum(c["score"] for c in sel) / len(sel),
                        "advantage": sum(c["advantage"] for c in sel) / len(sel),
                    }
                )
    return means + cells


def _default_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = [
        "| policy | score | 95% CI | NFE | tokens/forward | forced-commit rate |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["nfe"], -r["score"])):
        out.append(
            f"| {r['params_label']} | {r['score']:.3f} | {r['score_ci_low']:.2f}-"
            f"{r['score_ci_high']:.2f} | {r['nfe']:.2f} | {r['tokens_per_forward']:.2f} | "
            f"{r['forced_commit_rate']:.3f} |"
        )
    return out


def _winner(rows: Sequence[dict[str, Any]], tolerance: float = 0.01) -> dict[str, Any]:
    """Cheapest non-oracle policy within ``tolerance`` of the best score."""
    cands = [r for r in rows if r["family"] != "oracle"]
    top = max(r["score"] for r in cands)
    return min((r for r in cands if r["score"] >= top - tolerance), key=lambda r: r["nfe"])


def render_report(
    records: Sequence[dict[str, Any]],
    cells: Sequence[dict[str, Any]],
    *,
    cfg: dict[str, Any],
    timings: dict[str, float],
    default: tuple[int, str],
) -> str:
    """The bench report in markdown.

    Args:
        records: Result records.
        cells: Output of :func:`cross_setting_cells`.
        cfg: The bench configuration (for the header).
        timings: Seconds per phase.
        default: ``(gen_length, window)`` of the default setting.

    Returns:
        Markdown text.
    """
    lines = ["# commit-env bench report", ""]
    lines += [
        f"Backbone `{cfg['backbone']}`, tasks {', '.join(cfg['tasks'])}, "
        f"{cfg['n']} examples per task and setting (seed {cfg['seed']}, identical for every "
        f"policy), mode `{cfg['mode']}`.",
        "",
    ]
    lines += ["Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    g, window = default
    base = [
        r
        for r in records
        if r["gen_length"] == g and r["window"] == window and r["step_budget"] is None
    ]
    for task in dict.fromkeys(r["task"] for r in base):
        rows = [r for r in base if r["task"] == task]
        lines += [f"## {task}: default setting (G={g}, {window}, no budget)", ""]
        lines += _default_table(rows)
        front = pareto_frontier([(r["nfe"], r["score"]) for r in rows if r["family"] != "oracle"])
        named = []
        for nfe, score in front:
            r = next(r for r in rows if r["nfe"] == nfe and r["score"] == score)
            named.append(f"{r['params_label']} ({nfe:.2f} NFE, {score:.3f})")
        lines += ["", "Pareto frontier (oracle excluded): " + " -> ".join(named), ""]
        lines += _paired_section(rows)
    lines += [
        "## Cross-setting grid",
        "",
        "Advantage = learned policy's score minus the best heuristic score reachable with at "
        "most the same mean NFE in that cell (>= 0: on or above the heuristic frontier).",
        "",
    ]
    per_task = [c for c in cells if c["task"] != "mean"]
    for family in dict.fromkeys(c["family"] for c in per_task):
        sel = [c for c in per_task if c["family"] == family]
        on = sum(c["advantage"] >= 0 for c in sel)
        near = sum(c["advantage"] >= -0.01 for c in sel)
        lines += [
            f"**{family}**: on or above the frontier in {on}/{len(sel)} cells "
            f"({100 * on / max(len(sel), 1):.0f}%); within 1 point in {near}/{len(sel)}.",
            "",
        ]
        lines += ["| setting | task | score | NFE | advantage |", "|---|---|---|---|---|"]
        lines += [
            f"| {c['setting']} | {c['task']} | {c['score']:.3f} | {c['nfe']:.2f} | "
            f"{c['advantage']:+.3f} |"
            for c in sel
        ]
        lines.append("")
    lines += [
        "## What wins where",
        "",
        "Cheapest policy (fewest NFE) within 1 point of the best score in each cell "
        "(oracle excluded).",
        "",
        "| setting | task | winner | score | NFE |",
        "|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((setting_label(r), r["task"]), []).append(r)
    for (setting, task), rows in groups.items():
        w = _winner(rows)
        lines.append(
            f"| {setting} | {task} | {w['params_label']} | {w['score']:.3f} | {w['nfe']:.2f} |"
        )
    lines += [
        "",
        "Figures: `pareto.png`, `cross_setting.png`, `traces.png`. Raw records: `results.json`.",
        "",
    ]
    return "\n".join(lines)


def _paired_section(rows: Sequence[dict[str, Any]]) -> list[str]:
    learned = [r for r in rows if r["family"] in LEARNED and "scores" in r]
    seq = next((r for r in rows if r["family"] == "sequential" and "scores" in r), None)
    if not learned or seq is None:
        return []
    out = [
        "Paired comparisons (same examples; * = 95% bootstrap interval of the difference "
        "excludes 0):",
        "",
        "| policy | vs | score diff | 95% CI | NFE diff |",
        "|---|---|---|---|---|",
    ]
    others = [
        r for r in rows if r["family"] not in LEARNED and r["family"] != "oracle" and "scores" in r
    ]
    for lr in learned:
        best = max(others, key=lambda r: (r["score"] >= seq["score"] - 0.01, -r["nfe"]))
        for ref in (seq, best):
            d = paired_difference(lr["scores"], ref["scores"])
            mark = "*" if d["significant"] else ""
            out.append(
                f"| {lr['params_label']} | {ref['params_label']} | {d['diff']:+.3f}{mark} "
                f"| {d['low']:+.3f}..{d['high']:+.3f} | {lr['nfe'] - ref['nfe']:+.2f} |"
            )
    return out + [""]
