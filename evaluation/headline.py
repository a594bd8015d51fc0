"""The bench's headline: the issue-level numbers of a run in one small dict (and a few lines).

``report.md`` has every table; a user (or a script comparing runs) wants the verdicts first:
which family has the best AUP on each task at the default setting, how much of the gap between
the best heuristic and the oracle each learned family closes, and how many grid cells each
learned family's deployed member wins. :func:`headline` computes them from the same records and
cross-setting cells as the report; ``commit-env bench`` writes it into ``summary.json`` and
prints :func:`format_headline`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from commit_env.evaluation.metrics import (
    LEARNED,
    NOT_DEPLOYABLE,
    TOLERANCE,
    aup_table,
    frontier_counts,
    missed_bar,
    oracle_gap_closed,
)

__all__ = ["format_headline", "headline"]

_EPS = 1e-9


def headline(
    base: Sequence[Mapping[str, Any]],
    cells: Sequence[Mapping[str, Any]],
    learned_families: Collection[str] = LEARNED,
    *,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """The run's verdicts.

    Args:
        base: Records of the default setting of each task
            (:func:`commit_env.evaluation.reports.default_records`).
        cells: Cross-setting cells (:func:`commit_env.evaluation.reports.cross_setting_cells`;
            the per-setting ``task == "mean"`` rows are ignored).
        learned_families: Families reported under ``"learned"``.
        tolerance: The "matched score" bar of the oracle-gap metric.

    Returns:
        ``{"aup": {task: {"families": [...], "aup": best}}, "learned": {family: {...}}}``:
        per task the deployable families with the highest AUP (ties share it; none when every
        family scores 0); per learned family ``aup_best`` (the tasks it tops), ``oracle_gap_closed``
        (mean over the tasks where it is defined, None if none) with ``oracle_gap_tasks`` and
        ``oracle_gap_missed`` (the tasks where a heuristic reaches the matched-score bar and no
        member of the family does: left out of the mean, so they are named), and
        ``grid_wins`` / ``grid_cells`` / ``unseen_wins`` / ``unseen_cells`` of its deployed member.
    """
    rows = [r for r in aup_table(base) if r["family"] not in NOT_DEPLOYABLE]
    best_aup: dict[str, dict[str, Any]] = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        top = max(r["aup"] for r in mine)
        families = [r["family"] for r in mine if top > 0 and r["aup"] >= top - _EPS]
        best_aup[task] = {"families": families, "aup": top}
    gaps = oracle_gap_closed(base, learned_families, tolerance=tolerance)
    counts = {c["family"]: c for c in frontier_counts([c for c in cells if c["task"] != "mean"])}
    present = dict.fromkeys(
        [r["family"] for r in base if r["family"] in learned_families] + list(counts)
    )
    learned = {}
    for family in present:
        closed = [g["closed"] for g in gaps if g["family"] == family and g["closed"] is not None]
        count = counts.get(family, {})
        learned[family] = {
            "aup_best": [t for t, b in best_aup.items() if family in b["families"]],
            "oracle_gap_closed": sum(closed) / len(closed) if closed else None,
            "oracle_gap_tasks": len(closed),
            "oracle_gap_missed": [
                g["task"] for g in gaps if g["family"] == family and missed_bar(g)
            ],
            "grid_wins": count.get("wins", 0),
            "grid_cells": count.get("cells", 0),
            "unseen_wins": count.get("unseen_wins"),
            "unseen_cells": count.get("unseen_cells"),
        }
    return {"aup": best_aup, "learned": learned}


def format_headline(h: Mapping[str, Any]) -> str:
    """A few plain-text lines of :func:`headline` (what ``commit-env bench`` prints)."""
    lines = ["Best AUP at the default setting:"]
    for task, b in h["aup"].items():
        lines.append(f"  {task}: {', '.join(b['families']) or '-'} ({b['aup']:.2f})")
    lines.append("Learned families (oracle gap closed at matched score; grid cells won):")
    for family, v in h["learned"].items():
        gap = v["oracle_gap_closed"]
        gap_text = "-" if gap is None else f"{100 * gap:.0f}% over {v['oracle_gap_tasks']} task(s)"
        if v.get("oracle_gap_missed"):
            gap_text += f", misses the bar on {', '.join(v['oracle_gap_missed'])}"
        grid = f"{v['grid_wins']}/{v['grid_cells']}"
        if v["unseen_cells"]:
            grid += f" (unseen {v['unseen_wins']}/{v['unseen_cells']})"
        tops = len(v["aup_best"])
        lines.append(f"  {family}: gap {gap_text}; grid {grid}; best AUP on {tops} task(s)")
    return "\n".join(lines)
