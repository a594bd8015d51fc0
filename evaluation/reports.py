"""Markdown report and derived tables from result records (never decodes anything).

The trade-off numbers come from :mod:`commit_env.evaluation.metrics` (AUP, iso-quality speed-up,
the cross-setting frontier count), so a report can be re-rendered from any ``results.json``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from commit_env.evaluation.metrics import (
    LEARNED,
    NOT_DEPLOYABLE,
    TOLERANCE,
    aup_table,
    family_speedups,
    frontier_cells,
    frontier_counts,
    group_cells,
    heuristic_yardstick,
    iso_quality_speedups,
    missed_bar,
    oracle_gap_closed,
    setting_label,
    setting_label_of,
)
from commit_env.evaluation.plots import pareto_frontier
from commit_env.evaluation.sweeps import paired_difference

__all__ = [
    "DefaultSpec",
    "cross_setting_cells",
    "default_records",
    "relative_setting_label",
    "judging_inputs",
    "load_ablation_table",
    "render_report",
    "resolution_note",
    "rescore",
    "setting_label",
]

DefaultSpec = tuple[int, str] | Mapping[str, Any]
"""The default setting: one ``(gen_length, window)`` for every task, or ``{task: setting}`` with
``Setting`` objects or ``(gen_length, window)`` tuples (tasks with different default G)."""


def _default_of(default: DefaultSpec, task: str) -> tuple[int, str] | None:
    if not isinstance(default, Mapping):
        g, window = default
        return int(g), str(window)
    spec = default.get(task)
    if spec is None:
        return None
    if isinstance(spec, tuple):
        return int(spec[0]), str(spec[1])
    return int(spec.gen_length), str(spec.window)


def default_records(
    records: Sequence[dict[str, Any]], default: DefaultSpec
) -> list[dict[str, Any]]:
    """The records at each task's default setting (its G and window, no step budget).

    Args:
        records: Result records.
        default: See :data:`DefaultSpec`.

    Returns:
        The matching records, in input order (e.g. for ``plots.pareto_plot``).
    """
    out = []
    for r in records:
        d = _default_of(default, r["task"])
        if d is not None and (r["gen_length"], r["window"]) == d and r["step_budget"] is None:
            out.append(r)
    return out


def relative_setting_label(record: Mapping[str, Any], default_gen_length: int) -> str:
    """A setting label relative to the task's default G, comparable across tasks.

    Args:
        record: Has ``gen_length``, ``window`` and ``step_budget``.
        default_gen_length: The task's default G.

    Returns:
        For example ``2G block:8 S=G/4`` (``S=-``: no budget; a budget that does not divide G
        keeps its number, a length that is not a multiple of the default keeps ``G=<n>``).
    """
    g, budget = int(record["gen_length"]), record["step_budget"]
    if g % default_gen_length == 0:
        scale = g // default_gen_length
        length = "G" if scale == 1 else f"{scale}G"
    else:
        length = f"G={g}"
    if budget is None:
        limit = "-"
    elif g % int(budget) == 0:
        limit = f"G/{g // int(budget)}"
    else:
        limit = str(budget)
    return f"{length} {record['window']} S={limit}"


def cross_setting_cells(
    records: Sequence[dict[str, Any]],
    learned_families: Collection[str] = LEARNED,
    *,
    tolerance: float = TOLERANCE,
    trained_settings: Mapping[str, Collection[Any]] | None = None,
    default: DefaultSpec | None = None,
    deployed: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Frontier verdicts per (learned family, setting, task), plus per-setting summaries.

    Args:
        records: Result records.
        learned_families: Families judged against the heuristics (the oracle is neither).
        tolerance: Quality bar below the cell's best (1 point = 0.01).
        trained_settings: ``{family: settings it was trained on}`` (see
            :func:`commit_env.evaluation.metrics.frontier_cells`).
        default: The default setting per task (:data:`DefaultSpec`). When given, the summaries
            group settings by :func:`relative_setting_label` (``2G block:8 S=G/4``), so tasks
            with different default G share a column; otherwise by the absolute label.
        deployed: ``{family: params_label}`` of the member judged per family (see
            :func:`commit_env.evaluation.metrics.frontier_cells`).

    Returns:
        One ``task == "mean"`` row per (family, setting) with ``wins``, ``n`` (tasks),
        ``win_rate``, mean ``score`` and ``nfe`` (for ``plots.cross_setting_plot``), followed by
        the rows of :func:`commit_env.evaluation.metrics.frontier_cells`.
    """
    cells = frontier_cells(
        records,
        learned_families,
        tolerance=tolerance,
        trained_settings=trained_settings,
        deployed=deployed,
    )

    def column(c: dict[str, Any]) -> str:
        d = None if default is None else _default_of(default, c["task"])
        return c["setting"] if d is None else relative_setting_label(c, d[0])

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["family"], column(c)), []).append(c)
    means = []
    for (family, setting), sel in groups.items():
        wins = sum(c["win"] for c in sel)
        means.append(
            {
                "family": family,
                "setting": setting,
                "task": "mean",
                "wins": wins,
                "n": len(sel),
                "win_rate": wins / len(sel),
                "score": sum(c["score"] for c in sel) / len(sel),
                "nfe": sum(c["nfe"] for c in sel) / len(sel),
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


def _winner(rows: Sequence[dict[str, Any]], tolerance: float = TOLERANCE) -> dict[str, Any] | None:
    """Cheapest deployable policy within ``tolerance`` of the best score."""
    cands = [r for r in rows if r["family"] not in NOT_DEPLOYABLE]
    if not cands:
        return None
    top = max(r["score"] for r in cands)
    return min((r for r in cands if r["score"] >= top - tolerance - 1e-9), key=lambda r: r["nfe"])


def _family_task_table(
    rows: Sequence[dict[str, Any]], fmt: Any, header: str, tasks: Sequence[str]
) -> list[str]:
    """A family x task markdown table; ``fmt(row or None) -> str``."""
    by = {(r["family"], r["task"]): r for r in rows}
    families = list(dict.fromkeys(r["family"] for r in rows))
    out = [f"| {header} | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for family in families:
        out.append(f"| {family} | " + " | ".join(fmt(by.get((family, t))) for t in tasks) + " |")
    return out


def _aup_section(base: Sequence[dict[str, Any]], tasks: Sequence[str]) -> list[str]:
    rows = aup_table(base)
    if not rows:
        return []
    best = {
        t: max(
            (r["aup"] for r in rows if r["task"] == t and r["family"] not in NOT_DEPLOYABLE),
            default=0.0,
        )
        for t in tasks
    }

    def fmt(r: dict[str, Any] | None) -> str:
        if r is None:
            return "-"
        text = f"{r['aup']:.2f}"
        top = r["family"] not in NOT_DEPLOYABLE and r["aup"] >= best[r["task"]] - 1e-9
        return f"**{text}**" if top and r["aup"] > 0 else text

    return [
        "## AUP (accuracy under parallelism), default setting",
        "",
        "d3LLM's AUP per policy family: the area under the family's score-vs-tokens-per-forward "
        "curve (one point per parameter value), each point weighted by "
        "min(exp(-3 (1 - y / y_max)), 1) with y_max the best score of the task's cell; points "
        "more than 5 points below y_max are dropped (a family with none left scores 0). Higher "
        "is better; a family that keeps the best score y_max up to T tokens per forward "
        "scores T y_max. "
        "Bold: best deployable family per task (the oracle reads the reference).",
        "",
        *_family_task_table(rows, fmt, "family", tasks),
        "",
    ]


def _speedup_section(
    base: Sequence[dict[str, Any]], tasks: Sequence[str], tolerance: float
) -> list[str]:
    rows = family_speedups(iso_quality_speedups(base, tolerance=tolerance))
    if not rows:
        return []

    def fmt(r: dict[str, Any] | None) -> str:
        if r is None or r["speedup"] is None:
            return "-"
        return f"{r['speedup']:.2f}x {r['params_label']}"

    return [
        "## Iso-quality speed-up, default setting",
        "",
        f"Sequential NFE / policy NFE for the fastest member of each family whose score is within "
        f"{100 * tolerance:g} point(s) of the best in the cell (oracle excluded from the best); "
        "`-`: no member reaches that quality.",
        "",
        *_family_task_table(rows, fmt, "family", tasks),
        "",
    ]


def resolution_note(records: Sequence[Mapping[str, Any]], tolerance: float = TOLERANCE) -> str:
    """How many examples "within the tolerance" admits, given the examples per cell.

    On a small sample the tolerance can be finer than one example (64 examples: one is 1.6
    points), so "within 1 point of the best" means "not one example fewer" and a single puzzle
    decides a cell. The report says so next to every verdict that uses the tolerance.

    Args:
        records: Result records (their ``n``: examples per cell).
        tolerance: The score tolerance on the ``[0, 1]`` scale.

    Returns:
        One sentence, or ``""`` when no record carries ``n``.
    """
    ns = sorted({int(r["n"]) for r in records if r.get("n")})
    if not ns:
        return ""
    n = ns[0]
    slack = int(tolerance * n + 1e-9)
    count = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]} to {ns[-1]}"
    admits = (
        "not one example fewer than the best: a single example decides a cell"
        if slack == 0
        else f"up to {slack} example(s) fewer than the best"
    )
    return (
        f"Resolution: {count} examples per cell, so one example moves a score by "
        f"{100 / n:.1f} points and the {100 * tolerance:g}-point tolerance admits {admits}."
    )


def _oracle_gap_section(
    base: Sequence[dict[str, Any]], tasks: Sequence[str], tolerance: float
) -> list[str]:
    rows = oracle_gap_closed(base, tolerance=tolerance)
    if not rows:
        return []
    lines = [
        "## Oracle gap closed, default setting",
        "",
        f"At matched score (within {100 * tolerance:g} point(s) of the cell's best, oracle "
        "excluded): the fewest NFE of any heuristic (H), of the learned family's members (L) and "
        "the oracle's (O); closed = (H - L) / (H - O). `-`: undefined (no heuristic or no member "
        "reaches the bar). The mean is over the tasks where it is defined; the tasks where a "
        "heuristic reaches the bar and no member of the family does are named after it. "
        "*At heuristics' best*: the same measured within the tolerance of the best heuristic "
        "score instead (a secondary reading; it differs only where the learned family "
        "out-scores every heuristic, which leaves `closed` undefined). "
        + resolution_note(base, tolerance),
        "",
        "| family | task | heuristic (H) | oracle (O) | learned member (L) | closed "
        "| at heuristics' best |",
        "|---|---|---|---|---|---|---|",
    ]
    families = list(dict.fromkeys(r["family"] for r in rows))
    for family in families:
        mine = [r for r in rows if r["family"] == family]
        for task in tasks:
            for r in (r for r in mine if r["task"] == task):
                h = "-" if r["heuristic"] is None else f"{r['heuristic']} {r['heuristic_nfe']:.2f}"
                m = "-" if r["member"] is None else f"{r['member']} {r['nfe']:.2f}"
                c, ch = (_percent(r[k]) for k in ("closed", "closed_at_heuristic_best"))
                lines.append(
                    f"| {family} | {task} | {h} | {r['oracle_nfe']:.2f} | {m} | {c} | {ch} |"
                )
        closed = [r["closed"] for r in mine if r["closed"] is not None]
        closed_h = [
            r["closed_at_heuristic_best"]
            for r in mine
            if r.get("closed_at_heuristic_best") is not None
        ]
        missed = [r["task"] for r in mine if missed_bar(r)]
        if closed or closed_h:
            label = f"mean ({len(closed)} tasks" + (
                f"; misses the bar on {', '.join(missed)})" if missed else ")"
            )
            mean = _percent(sum(closed) / len(closed)) if closed else "-"
            mean_h = (
                f"{_percent(sum(closed_h) / len(closed_h))} ({len(closed_h)} tasks)"
                if closed_h
                else "-"
            )
            lines.append(f"| {family} | {label} | | | | {mean} | {mean_h} |")
    return [*lines, ""]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _frontier_section(
    cells: Sequence[dict[str, Any]], tolerance: float, resolution: str = ""
) -> list[str]:
    per_task = [c for c in cells if c["task"] != "mean"]
    lines = [
        "## Cross-setting grid",
        "",
        f"A learned policy wins a cell (setting x task) only when its score is within "
        f"{100 * tolerance:g} point(s) of the best score any deployable policy reaches there "
        "*and* no heuristic reaches its score with fewer NFE. `below best`: it lost on quality "
        "(a collapse is a loss, however cheap); `heuristic cheaper`: a heuristic matched it for "
        "fewer NFE. Rival: the cheapest heuristic reaching its score (else, in parentheses, the "
        "best heuristic). " + resolution,
        "",
    ]
    if not per_task:
        return [*lines, "No learned policy was measured next to heuristics.", ""]
    for count in frontier_counts(per_task):
        family, n = count["family"], count["cells"]
        text = (
            f"**{family}**: wins {count['wins']}/{n} cells "
            f"({100 * count['wins'] / max(n, 1):.0f}%); below the best in "
            f"{count['below_best']}, a heuristic cheaper in {count['heuristic_cheaper']}"
        )
        if count["unseen_cells"] is not None:
            text += (
                f"; on settings unseen in training: {count['unseen_wins']}/{count['unseen_cells']}"
            )
        lines += [text + ".", ""]
        lines += [
            "| setting | task | score | best | NFE | verdict | rival (score, NFE) |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in per_task:
            if c["family"] != family:
                continue
            rival = c["rival"] if c["rival"] is not None else "(best heuristic)"
            seen = "" if c["seen"] in (None, False) else " (trained)"
            lines.append(
                f"| {c['setting']}{seen} | {c['task']} | {c['score']:.3f} | {c['best']:.3f} | "
                f"{c['nfe']:.2f} | {c['verdict']} | {rival} ({c['rival_score']:.3f}, "
                f"{c['rival_nfe']:.2f}) |"
            )
        lines.append("")
    return lines


def _yardstick_section(records: Sequence[dict[str, Any]], tolerance: float) -> list[str]:
    rows = heuristic_yardstick(records, tolerance=tolerance)
    if not rows:
        return []
    text = ", ".join(
        f"{r['family']} {r['wins']}/{r['cells']} (`{r['params_label']}`)" for r in rows
    )
    return [
        "Yardstick: the same rule among the heuristics alone (learned policies removed), each "
        "heuristic family judged by its best fixed setting, chosen on these cells: " + text + ".",
        "",
    ]


def render_report(
    records: Sequence[dict[str, Any]],
    cells: Sequence[dict[str, Any]],
    *,
    cfg: dict[str, Any],
    timings: dict[str, float],
    default: DefaultSpec,
    tolerance: float = TOLERANCE,
    ablations: str | None = None,
) -> str:
    """The bench report in markdown.

    Args:
        records: Result records.
        cells: Output of :func:`cross_setting_cells` (pass ``trained_settings`` there to get the
            counts on settings unseen in training).
        cfg: The bench configuration (for the header: ``backbone``, ``tasks``, ``n``, ``seed``,
            ``mode``).
        timings: Seconds per phase.
        default: The default setting, see :data:`DefaultSpec`.
        tolerance: "Within 1 point" on the ``[0, 1]`` score scale.
        ablations: The controller's ablation table
            (:func:`commit_env.evaluation.controller.ablation_table`; ``--full`` only), put in its
            own section; None leaves the section out.

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
    base = default_records(records, default)
    tasks = list(dict.fromkeys(r["task"] for r in base))
    lines += _aup_section(base, tasks)
    lines += _speedup_section(base, tasks, tolerance)
    lines += _oracle_gap_section(base, tasks, tolerance)
    for task in tasks:
        rows = [r for r in base if r["task"] == task]
        g, window = rows[0]["gen_length"], rows[0]["window"]
        lines += [f"## {task}: default setting (G={g}, {window}, no budget)", ""]
        lines += _default_table(rows)
        front = pareto_frontier(
            [(r["nfe"], r["score"]) for r in rows if r["family"] not in NOT_DEPLOYABLE]
        )
        named = []
        for nfe, score in front:
            r = next(r for r in rows if r["nfe"] == nfe and r["score"] == score)
            named.append(f"{r['params_label']} ({nfe:.2f} NFE, {score:.3f})")
        lines += ["", "Pareto frontier (oracle excluded): " + " -> ".join(named), ""]
        lines += _paired_section(rows, tolerance)
    lines += _frontier_section(cells, tolerance, resolution_note(records, tolerance))
    if any(c["task"] != "mean" for c in cells):
        lines += _yardstick_section(records, tolerance)
    if ablations:
        lines += _ablation_section(ablations)
    lines += [
        "## What wins where",
        "",
        f"Cheapest policy (fewest NFE) within {100 * tolerance:g} point(s) of the best score in "
        "each cell (oracle excluded).",
        "",
        "| setting | task | winner | score | NFE |",
        "|---|---|---|---|---|",
    ]
    for (setting, task), rows in group_cells(records).items():
        w = _winner(rows, tolerance)
        if w is not None:
            lines.append(
                f"| {setting} | {task} | {w['params_label']} | {w['score']:.3f} | {w['nfe']:.2f} |"
            )
    lines += [
        "",
        "Figures: `pareto.png`, `cross_setting.png`, `traces.png`. Raw records: `results.json`.",
        "",
    ]
    return "\n".join(lines)


def _ablation_section(table: str) -> list[str]:
    return [
        "## Controller ablations",
        "",
        "Each variant is the controller retrained without one component (`no_history`, "
        "`no_hidden`: those input groups zeroed; `no_structure`: no token ids or structure "
        "features; `no_tau`: no learned per-state threshold; `no_on_policy`: round 0 only), "
        "deployed at its own calibrated thresholds on every task's default setting, on "
        "the same examples as the full controller. Differences are variant minus full, with 95% "
        "paired bootstrap intervals over the examples (`*`: the interval excludes 0). Raw "
        "records: `controller/ablations.jsonl`.",
        "",
        table.strip(),
        "",
    ]


def load_ablation_table(out: str | Path) -> str | None:
    """The ablation table of a bench directory (``controller/ablations.jsonl``), or None."""
    from commit_env.evaluation.controller import ablation_table
    from commit_env.evaluation.io import read_jsonl

    path = Path(out) / "controller" / "ablations.jsonl"
    records = read_jsonl(path) if path.is_file() else []
    return ablation_table(records) if records else None


def _paired_section(rows: Sequence[dict[str, Any]], tolerance: float = TOLERANCE) -> list[str]:
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
        r
        for r in rows
        if r["family"] not in LEARNED and r["family"] not in NOT_DEPLOYABLE and "scores" in r
    ]
    for lr in learned:
        refs = [seq]
        if others:
            cheapest = max(
                others, key=lambda r: (r["score"] >= seq["score"] - tolerance, -r["nfe"])
            )
            if cheapest is not seq:
                refs.append(cheapest)
        for ref in refs:
            d = paired_difference(lr["scores"], ref["scores"])
            mark = "*" if d["significant"] else ""
            out.append(
                f"| {lr['params_label']} | {ref['params_label']} | {d['diff']:+.3f}{mark} "
                f"| {d['low']:+.3f}..{d['high']:+.3f} | {lr['nfe'] - ref['nfe']:+.2f} |"
            )
    return out + [""]


def judging_inputs(
    learned_families: Sequence[str],
    trained_settings: Mapping[str, Collection[Any]],
    deployed: Mapping[str, str],
) -> dict[str, Any]:
    """What the cross-setting verdicts need beyond the records, as JSON (for :func:`rescore`).

    Args:
        learned_families: Families judged against the heuristics.
        trained_settings: ``{family: settings it was trained on}`` (labels, ``Setting`` objects
            or ``(gen_length, window[, step_budget])`` tuples).
        deployed: ``{family: params_label}`` of the member judged per family.

    Returns:
        ``{"learned_families", "trained_settings" (as labels), "deployed"}``.
    """
    return {
        "learned_families": list(learned_families),
        "trained_settings": {
            family: [setting_label_of(s) for s in settings]
            for family, settings in trained_settings.items()
        },
        "deployed": dict(deployed),
    }


def rescore(
    out: str | Path,
    *,
    default: DefaultSpec | None = None,
    learned_families: Collection[str] | None = None,
    tolerance: float = TOLERANCE,
    trained_settings: Mapping[str, Collection[Any]] | None = None,
    deployed: Mapping[str, str] | None = None,
    write: bool = True,
) -> str:
    """Re-render ``report.md`` of a finished bench directory from its records alone.

    A bench writes what its cross-setting verdicts need beyond the records (the judged families,
    their training settings, the deployed member of each) under ``"judging"`` in
    ``summary.json``; the arguments left None are taken from there, so a finished run's report
    is reproduced. Without that key, every member of each learned family is judged.

    Args:
        out: The bench output directory (``results.json``, or ``results.jsonl`` of an interrupted
            run; ``bench_config.json`` and ``summary.json`` are read when present).
        default: The default setting (None: ``gen_length``/``window`` of ``bench_config.json``;
            each task at its own default G when that ``gen_length`` is null).
        learned_families: Families judged in the cross-setting grid (None: the bench's, else
            the usual learned families).
        tolerance: "Within 1 point" on the ``[0, 1]`` score scale.
        trained_settings: ``{family: settings it was trained on}`` (None: the bench's).
        deployed: ``{family: params_label}`` of the member judged per family (None: the
            bench's, else every member).
        write: Write ``out/report.md`` (atomically).

    Returns:
        The report text.

    Raises:
        FileNotFoundError: If ``out`` has no records.
        ValueError: If no default setting is given and ``bench_config.json`` has none.
    """
    import json

    from commit_env.evaluation.grid import default_setting, task_gen_length
    from commit_env.evaluation.io import read_jsonl

    out = Path(out)
    if (out / "results.json").is_file():
        records = json.loads((out / "results.json").read_text())
    elif (out / "results.jsonl").is_file():
        records = read_jsonl(out / "results.jsonl")
    else:
        raise FileNotFoundError(f"no results.json or results.jsonl in {out}")
    cfg_path, summary_path = out / "bench_config.json", out / "summary.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    timings = summary.get("timings", {})
    judging = summary.get("judging", {})
    if learned_families is None:
        learned_families = judging.get("learned_families", LEARNED)
    if trained_settings is None:
        trained_settings = judging.get("trained_settings")
    if deployed is None:
        deployed = judging.get("deployed")
    if default is None:
        if "gen_length" not in cfg or "window" not in cfg:
            raise ValueError(f"pass default=(gen_length, window): {cfg_path} does not name one")
        if cfg["gen_length"] is None:  # each task at its own default G
            default = {
                task: default_setting(task_gen_length(task), cfg["window"])
                for task in dict.fromkeys(r["task"] for r in records)
            }
        else:
            default = (cfg["gen_length"], cfg["window"])
    header = {
        "backbone": cfg.get("backbone", "?"),
        "tasks": cfg.get("tasks") or list(dict.fromkeys(r["task"] for r in records)),
        "n": cfg.get("n", "?"),
        "seed": cfg.get("seed", "?"),
        "mode": cfg.get("mode", "?"),
    }
    cells = cross_setting_cells(
        records,
        learned_families,
        tolerance=tolerance,
        trained_settings=trained_settings,
        default=default,
        deployed=deployed,
    )
    text = render_report(
        records,
        cells,
        cfg=header,
        timings=timings,
        default=default,
        tolerance=tolerance,
        ablations=load_ablation_table(out),
    )
    if write:
        _write_text_atomic(out / "report.md", text)
    return text


def _write_text_atomic(path: Path, text: str) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
