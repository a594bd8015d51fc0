"""Trade-off metrics computed from result records only, so any run can be re-scored.

A *record* is one dict of ``results.json`` (see :func:`commit_env.evaluation.sweeps.run_sweep`):
it names a ``task``, a policy ``family`` and its ``params_label``, the setting
(``gen_length``, ``window``, ``step_budget``) and carries the measured mean ``score`` (in
``[0, 1]``), ``nfe`` and ``tokens_per_forward``. A *cell* is one (setting, task) pair: every
policy measured there saw the same examples.

Three metrics, none of which rewards a policy for collapsing:

* :func:`aup`, :func:`aup_table`: AUP, accuracy under parallelism (d3LLM, arXiv 2601.07568), the
  quality-weighted area under one policy family's accuracy-vs-tokens-per-forward curve.
* :func:`iso_quality_speedups`: sequential NFE divided by a policy's NFE, only where the policy
  scores within ``tolerance`` of the cell's best.
* :func:`frontier_cells`, :func:`frontier_counts`: a learned policy wins a cell only when it
  scores within ``tolerance`` of the cell's best *and* no heuristic reaches its score with fewer
  NFE.

"The best" of a cell is the highest score of any *deployable* policy in it: the EGP oracle reads
the reference decode, so it is reported but never sets the bar (``exclude``). "1 point" is 0.01
on the ``[0, 1]`` score scale (:data:`TOLERANCE`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "AUP_ALPHA",
    "AUP_DROP",
    "LEARNED",
    "NOT_DEPLOYABLE",
    "TOLERANCE",
    "aup",
    "aup_table",
    "aup_weight",
    "cell_best",
    "family_speedups",
    "frontier_cells",
    "frontier_counts",
    "group_cells",
    "heuristic_yardstick",
    "iso_quality_speedups",
    "missed_bar",
    "oracle_gap_closed",
    "setting_label",
    "setting_label_of",
]

TOLERANCE = 0.01
"""One point on the ``[0, 1]`` score scale."""
AUP_ALPHA = 3.0
"""d3LLM's penalty factor of the AUP quality weight."""
AUP_DROP = 0.05
"""AUP ignores points more than this far (5 points) below the cell's best score."""
LEARNED: tuple[str, ...] = ("controller", "controller-round0", "controller-remask", "ppo")
"""Families of learned policies (everything else but the oracle counts as a heuristic)."""
NOT_DEPLOYABLE: tuple[str, ...] = ("oracle",)
"""Families that read the reference: reported, never the bar, never a rival."""

_EPS = 1e-9


def setting_label(record: Mapping[str, Any]) -> str:
    """``G=16 block:4 S=8`` for a record (or any mapping with the three setting fields).

    Args:
        record: Has ``gen_length``, ``window`` and ``step_budget`` (None = no budget).

    Returns:
        The label, identical to :attr:`commit_env.evaluation.sweeps.Setting.label`.
    """
    return f"G={record['gen_length']} {record['window']} S={record['step_budget'] or '-'}"


def setting_label_of(setting: Any) -> str:
    """A setting label from a label, a ``Setting``, a mapping or a ``(G, window, budget)`` tuple."""
    if isinstance(setting, str):
        return setting
    if isinstance(setting, Mapping):
        return setting_label(setting)
    if isinstance(setting, tuple) and len(setting) in (2, 3):
        g, window, budget = (*setting, None)[:3]
        return setting_label({"gen_length": g, "window": window, "step_budget": budget})
    if hasattr(setting, "label"):
        return str(setting.label)
    raise ValueError(
        f"bad setting {setting!r}; expected a label 'G=16 full S=-', a Setting, "
        "a record or a (gen_length, window[, step_budget]) tuple"
    )


def group_cells(
    records: Iterable[Mapping[str, Any]],
) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """Records grouped by cell, in first-seen order.

    Args:
        records: Result records.

    Returns:
        ``{(setting label, task): [records]}``.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((setting_label(r), r["task"]), []).append(r)
    return groups


def cell_best(
    rows: Iterable[Mapping[str, Any]], exclude: Collection[str] = NOT_DEPLOYABLE
) -> float | None:
    """The best score of a cell.

    Args:
        rows: The records of one cell.
        exclude: Families that never set the bar (the oracle).

    Returns:
        The highest ``score`` among the other records, or None when there is none.
    """
    scores = [float(r["score"]) for r in rows if r["family"] not in exclude]
    return max(scores) if scores else None


# ----------------------------------------------------------------------------------------- AUP


def aup_weight(y: float, y_max: float, alpha: float = AUP_ALPHA) -> float:
    """d3LLM's quality weight ``min(exp(-alpha * (1 - y / y_max)), 1)``.

    Args:
        y: A score.
        y_max: The best score (> 0).
        alpha: Penalty factor.

    Returns:
        The weight in ``(0, 1]``: 1 at the best score, ``exp(-alpha)`` at score 0.

    Raises:
        ValueError: If ``y_max`` is not positive.
    """
    if y_max <= 0:
        raise ValueError(f"y_max must be > 0, got {y_max}")
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


def aup(
    points: Sequence[tuple[float, float]],
    y_max: float | None = None,
    *,
    alpha: float = AUP_ALPHA,
    drop: float = AUP_DROP,
) -> float:
    """Accuracy under parallelism of one curve.

    The points ``(rho, y)`` (tokens per forward, score) more than ``drop`` below ``y_max`` are
    dropped; the rest, sorted by ``rho``, give::

        AUP = rho_1 y_1 w(y_1)
              + sum_{i>1} (rho_i - rho_{i-1}) (y_i w(y_i) + y_{i-1} w(y_{i-1})) / 2

    with ``w = aup_weight``. This is d3LLM's formula with two readings made explicit: the cut is
    relative to ``y_max`` (the issue's "more than 5 points below the best"; d3LLM's script anchors
    it at the curve's lowest-parallelism point), and the first rectangle is weighted too (d3LLM's
    curves start at rho = 1 near ``y_max``, where the weight is about 1; ours may start at high
    parallelism and low quality, and an unweighted rectangle would reward that).

    Args:
        points: ``(tokens_per_forward, score)`` pairs, scores in ``[0, 1]``; tokens per forward > 0.
        y_max: Best score of the cell (None: the best of ``points``).
        alpha: Penalty factor of the weight.
        drop: Points below ``y_max - drop`` are ignored.

    Returns:
        The area, 0.0 for no points, no point left after the cut, or ``y_max <= 0``. A single
        point at the best score gives its tokens per forward.

    Raises:
        ValueError: If a tokens-per-forward value is not positive.
    """
    for rho, _ in points:
        if not rho > 0:
            raise ValueError(f"tokens per forward must be > 0, got {rho}")
    if not points:
        return 0.0
    if y_max is None:
        y_max = max(y for _, y in points)
    if y_max <= 0:
        return 0.0
    kept = sorted((float(r), float(y)) for r, y in points if y >= y_max - drop - _EPS)
    if not kept:
        return 0.0
    weighted = [(r, y * aup_weight(y, y_max, alpha)) for r, y in kept]
    area = weighted[0][0] * weighted[0][1]
    for (r0, h0), (r1, h1) in zip(weighted, weighted[1:], strict=False):
        area += 0.5 * (r1 - r0) * (h0 + h1)
    return area


def aup_table(
    records: Iterable[Mapping[str, Any]],
    *,
    alpha: float = AUP_ALPHA,
    drop: float = AUP_DROP,
    exclude: Collection[str] = NOT_DEPLOYABLE,
) -> list[dict[str, Any]]:
    """AUP per (policy family, task, setting): each family's parameter settings form its curve.

    Args:
        records: Result records (any number of settings).
        alpha: Penalty factor of the weight.
        drop: Points more than this below the cell's best are ignored.
        exclude: Families that do not set the cell's best (they still get an AUP).

    Returns:
        Rows ``{"family", "task", "setting", "aup", "y_max", "points", "kept", "max_tpf"}``:
        ``points`` on the curve, ``kept`` after the cut, ``max_tpf`` the largest tokens per
        forward among kept points (None if none). Cells without a deployable policy are skipped.
    """
    out = []
    for (setting, task), rows in group_cells(records).items():
        y_max = cell_best(rows, exclude)
        if y_max is None:
            continue
        for family in dict.fromkeys(r["family"] for r in rows):
            pts = [
                (float(r["tokens_per_forward"]), float(r["score"]))
                for r in rows
                if r["family"] == family
            ]
            kept = [p for p in pts if p[1] >= y_max - drop - _EPS]
            out.append(
                {
                    "family": family,
                    "task": task,
                    "setting": setting,
                    "aup": aup(pts, y_max, alpha=alpha, drop=drop),
                    "y_max": y_max,
                    "points": len(pts),
                    "kept": len(kept),
                    "max_tpf": max((p[0] for p in kept), default=None),
                }
            )
    return out


# ---------------------------------------------------------------------- iso-quality speed-up


def iso_quality_speedups(
    records: Iterable[Mapping[str, Any]],
    *,
    tolerance: float = TOLERANCE,
    baseline: str = "sequential",
    exclude: Collection[str] = NOT_DEPLOYABLE,
) -> list[dict[str, Any]]:
    """Sequential NFE / policy NFE for every record, counted only at iso-quality.

    Args:
        records: Result records.
        tolerance: A policy qualifies when its score is at least the cell's best minus this.
        baseline: Family whose NFE is the numerator (one record per cell; the first is used).
        exclude: Families that do not set the cell's best.

    Returns:
        One row per record of every cell that has a ``baseline`` record: ``{"family",
        "params_label", "task", "setting", "score", "nfe", "best", "qualified", "speedup"}``
        (``speedup`` None when not qualified).
    """
    out = []
    for (setting, task), rows in group_cells(records).items():
        base = next((r for r in rows if r["family"] == baseline), None)
        best = cell_best(rows, exclude)
        if base is None or best is None:
            continue
        for r in rows:
            ok = float(r["score"]) >= best - tolerance - _EPS
            out.append(
                {
                    "family": r["family"],
                    "params_label": r.get("params_label", r["family"]),
                    "task": task,
                    "setting": setting,
                    "score": float(r["score"]),
                    "nfe": float(r["nfe"]),
                    "best": best,
                    "qualified": ok,
                    "speedup": float(base["nfe"]) / float(r["nfe"]) if ok else None,
                }
            )
    return out


def family_speedups(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The best iso-quality speed-up of each family per (task, setting).

    Args:
        rows: Output of :func:`iso_quality_speedups`.

    Returns:
        ``{"family", "task", "setting", "speedup", "params_label"}`` per group: the largest
        qualified speed-up and the member reaching it, or ``speedup`` None and ``params_label``
        None when no member is within tolerance of the best.
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["family"], r["task"], r["setting"]), []).append(r)
    out = []
    for (family, task, setting), sel in groups.items():
        ok = [r for r in sel if r["speedup"] is not None]
        top = max(ok, key=lambda r: r["speedup"]) if ok else None
        out.append(
            {
                "family": family,
                "task": task,
                "setting": setting,
                "speedup": None if top is None else top["speedup"],
                "params_label": None if top is None else top["params_label"],
            }
        )
    return out


def oracle_gap_closed(
    records: Iterable[Mapping[str, Any]],
    learned_families: Collection[str] = LEARNED,
    *,
    tolerance: float = TOLERANCE,
    oracle: str = "oracle",
) -> list[dict[str, Any]]:
    """How much of the NFE gap between the best heuristic and the oracle each learned family closes.

    At matched score: in each cell, ``H`` is the fewest NFE of any heuristic within
    ``tolerance`` of the cell's best score (oracle excluded from the best), ``L`` the same for
    the learned family's members (e.g. its deployment-threshold sweep) and ``O`` the oracle's
    NFE; the family closes ``(H - L) / (H - O)`` of the gap (1 = the oracle's speed, 0 = the
    heuristic's, negative = slower than the heuristic). Undefined (None) when no heuristic or
    no member reaches the bar, or when the oracle is not faster than the heuristic.

    A cell whose best score is the learned family's own, more than ``tolerance`` above every
    heuristic, is undefined by that rule. ``closed_at_heuristic_best`` measures it the other
    way round, at the best *heuristic* score instead (same tolerance): the same value wherever a
    heuristic sets the cell's best, and defined where the family out-scores every heuristic. It
    is a secondary reading; the headline stays ``closed``.

    Args:
        records: Result records (typically one setting per task, e.g. the defaults).
        learned_families: Families measured.
        tolerance: The quality bar is the cell's best minus this.
        oracle: The oracle's family.

    Returns:
        ``{"family", "task", "setting", "best", "heuristic", "heuristic_nfe", "oracle_nfe",
        "member", "nfe", "closed", "heuristic_best", "closed_at_heuristic_best"}`` per (learned
        family with records in the cell, cell).
    """
    out = []
    for (setting, task), rows in group_cells(records).items():
        best = cell_best(rows, (oracle,))
        orc = [r for r in rows if r["family"] == oracle]
        if best is None or not orc:
            continue
        every_heuristic = [
            r for r in rows if r["family"] not in learned_families and r["family"] != oracle
        ]
        o_nfe = min(float(r["nfe"]) for r in orc)
        h_best = cell_best(every_heuristic, ())
        h, _, _ = _gap_at(every_heuristic, [], best, tolerance, o_nfe)
        for family in dict.fromkeys(r["family"] for r in rows if r["family"] in learned_families):
            mine = [r for r in rows if r["family"] == family]
            _, m, closed = _gap_at(every_heuristic, mine, best, tolerance, o_nfe)
            closed_h = None
            if h_best is not None:
                closed_h = _gap_at(every_heuristic, mine, h_best, tolerance, o_nfe)[2]
            out.append(
                {
                    "family": family,
                    "task": task,
                    "setting": setting,
                    "best": best,
                    "heuristic": None if h is None else h.get("params_label", h["family"]),
                    "heuristic_nfe": None if h is None else float(h["nfe"]),
                    "oracle_nfe": o_nfe,
                    "member": None if m is None else m.get("params_label", m["family"]),
                    "nfe": None if m is None else float(m["nfe"]),
                    "closed": closed,
                    "heuristic_best": h_best,
                    "closed_at_heuristic_best": closed_h,
                }
            )
    return out


def _gap_at(
    heuristics: Sequence[Mapping[str, Any]],
    members: Sequence[Mapping[str, Any]],
    best: float,
    tolerance: float,
    oracle_nfe: float,
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None, float | None]:
    """Cheapest heuristic and member within ``tolerance`` of ``best``, and the gap closed."""
    bar = best - tolerance - _EPS

    def cheapest(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
        ok = [r for r in rows if float(r["score"]) >= bar]
        return min(ok, key=lambda r: float(r["nfe"])) if ok else None

    h, m = cheapest(heuristics), cheapest(members)
    closed = None
    if h is not None and m is not None and float(h["nfe"]) > oracle_nfe + _EPS:
        closed = (float(h["nfe"]) - float(m["nfe"])) / (float(h["nfe"]) - oracle_nfe)
    return h, m, closed


def missed_bar(row: Mapping[str, Any]) -> bool:
    """Whether an :func:`oracle_gap_closed` row is a failure of the learned family.

    A heuristic reaches the matched-score bar and no member of the family does. The gap is
    undefined there, so a mean over the defined tasks leaves it out; reports name these tasks
    so that failing to reach the bar never reads better than reaching it slowly.
    """
    return row["heuristic"] is not None and row["member"] is None


# ------------------------------------------------------------------------- frontier count


def _seen(record: Mapping[str, Any], setting: str, trained: Mapping[str, set[str]]) -> bool | None:
    """Was ``setting`` among the record's family's training settings (None: unknown)?"""
    if record["family"] in trained:
        return setting in trained[record["family"]]
    if record.get("trained_settings") is not None:
        return setting in {setting_label_of(s) for s in record["trained_settings"]}
    return None


def frontier_cells(
    records: Iterable[Mapping[str, Any]],
    learned_families: Collection[str] = LEARNED,
    *,
    tolerance: float = TOLERANCE,
    exclude: Collection[str] = NOT_DEPLOYABLE,
    trained_settings: Mapping[str, Collection[Any]] | None = None,
    deployed: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Did each learned policy win its cell? One row per learned record.

    A cell counts for a learned policy (``win``) only when (1) its score is within
    ``tolerance`` of the best score any deployable policy reaches in the cell, and (2) no
    heuristic reaches at least its score with fewer NFE. A collapsed policy (low score at low
    NFE) fails (1): it is a loss, however far the heuristics at its NFE fall.

    Args:
        records: Result records.
        learned_families: Families judged; every other family not in ``exclude`` is a heuristic.
        tolerance: The quality bar is the cell's best minus this.
        exclude: Families neither judged nor rivals, and never the bar (the oracle).
        trained_settings: Optional ``{family: settings it was trained on}`` (labels like
            ``"G=16 block:4 S=-"``, ``Setting`` objects or ``(G, window[, budget])`` tuples). A
            family absent here falls back to its records' ``"trained_settings"`` key; without
            either, ``seen`` is None (unknown).
        deployed: Optional ``{family: params_label}``: judge only that member of the family
            (e.g. the controller at its learned threshold, not every point of its deployment
            threshold sweep, which would count one cell many times).

    Returns:
        Rows ``{"family", "params_label", "setting", "gen_length", "window", "step_budget",
        "task", "score", "nfe", "best", "win", "verdict", "rival", "rival_score", "rival_nfe",
        "seen"}``. ``verdict`` is ``"win"``,
        ``"below best"`` (fails 1) or ``"heuristic cheaper"`` (fails 2); ``rival`` is the
        cheapest heuristic reaching the policy's score (None if there is none; then the
        highest-scoring heuristic is named for reference with ``rival_score``/``rival_nfe``).
        Cells without any heuristic are skipped.

    Raises:
        ValueError: If a trained setting cannot be read as a setting.
    """
    trained = (
        {f: {setting_label_of(s) for s in ss} for f, ss in trained_settings.items()}
        if trained_settings
        else {}
    )
    out = []
    for (setting, task), rows in group_cells(records).items():
        best = cell_best(rows, exclude)
        heur = [
            r for r in rows if r["family"] not in learned_families and r["family"] not in exclude
        ]
        if best is None or not heur:
            continue
        for r in rows:
            if r["family"] not in learned_families:
                continue
            if deployed and r["family"] in deployed:
                if r.get("params_label", r["family"]) != deployed[r["family"]]:
                    continue
            score, nfe = float(r["score"]), float(r["nfe"])
            reaching = [h for h in heur if float(h["score"]) >= score - _EPS]
            cheaper = [h for h in reaching if float(h["nfe"]) < nfe - _EPS]
            good = score >= best - tolerance - _EPS
            if not good:
                verdict = "below best"
            elif cheaper:
                verdict = "heuristic cheaper"
            else:
                verdict = "win"
            rival = (
                min(reaching, key=lambda h: (float(h["nfe"]), -float(h["score"])))
                if reaching
                else max(heur, key=lambda h: (float(h["score"]), -float(h["nfe"])))
            )
            seen = _seen(r, setting, trained)
            out.append(
                {
                    "family": r["family"],
                    "params_label": r.get("params_label", r["family"]),
                    "setting": setting,
                    "gen_length": r["gen_length"],
                    "window": r["window"],
                    "step_budget": r["step_budget"],
                    "task": task,
                    "score": score,
                    "nfe": nfe,
                    "best": best,
                    "win": verdict == "win",
                    "verdict": verdict,
                    "rival": rival.get("params_label", rival["family"]) if reaching else None,
                    "rival_score": float(rival["score"]),
                    "rival_nfe": float(rival["nfe"]),
                    "seen": seen,
                }
            )
    return out


def frontier_counts(cells: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Win counts per learned family, overall and on settings unseen in training.

    Args:
        cells: Output of :func:`frontier_cells`.

    Returns:
        ``{"family", "wins", "cells", "below_best", "heuristic_cheaper", "unseen_wins",
        "unseen_cells"}`` per family; the two ``unseen_*`` are None when no cell of the family
        says whether its setting was seen in training.
    """
    by: dict[str, list[Mapping[str, Any]]] = {}
    for c in cells:
        by.setdefault(c["family"], []).append(c)
    out = []
    for family, sel in by.items():
        known = [c for c in sel if c.get("seen") is not None]
        unseen = [c for c in known if not c["seen"]]
        out.append(
            {
                "family": family,
                "wins": sum(bool(c["win"]) for c in sel),
                "cells": len(sel),
                "below_best": sum(c["verdict"] == "below best" for c in sel),
                "heuristic_cheaper": sum(c["verdict"] == "heuristic cheaper" for c in sel),
                "unseen_wins": sum(bool(c["win"]) for c in unseen) if known else None,
                "unseen_cells": len(unseen) if known else None,
            }
        )
    return out


def heuristic_yardstick(
    records: Iterable[Mapping[str, Any]],
    learned_families: Collection[str] = LEARNED,
    *,
    tolerance: float = TOLERANCE,
    exclude: Collection[str] = NOT_DEPLOYABLE,
) -> list[dict[str, Any]]:
    """How often one fixed heuristic setting wins its cells under the learned policies' rule.

    A scale for :func:`frontier_cells`' win rate: with the learned policies removed, each
    heuristic family in turn is judged as if it were learned (its score within ``tolerance`` of
    the cell's best, no *other* heuristic reaching it for fewer NFE), one fixed member at a
    time, and its best member is kept. Picking that member on the judged cells themselves
    flatters the heuristic, so the rate is an upper reference, not a baseline to beat by luck.

    Args:
        records: Result records (learned and excluded families are dropped).
        learned_families: Families removed before judging.
        tolerance: The quality bar is the cell's best minus this.
        exclude: Families neither judged nor rivals (the oracle).

    Returns:
        ``{"family", "params_label", "wins", "cells"}`` per heuristic family, most wins first.
    """
    heur = [
        r for r in records if r["family"] not in learned_families and r["family"] not in exclude
    ]
    out = []
    for family in dict.fromkeys(r["family"] for r in heur):
        best: dict[str, Any] | None = None
        members = dict.fromkeys(
            r.get("params_label", family) for r in heur if r["family"] == family
        )
        for member in members:
            cells = frontier_cells(
                heur, (family,), tolerance=tolerance, exclude=exclude, deployed={family: member}
            )
            wins = sum(c["win"] for c in cells)
            if cells and (best is None or wins > best["wins"]):
                best = {"family": family, "params_label": member, "wins": wins, "cells": len(cells)}
        if best is not None:
            out.append(best)
    return sorted(out, key=lambda b: (-b["wins"] / b["cells"], b["family"]))
