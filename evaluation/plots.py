"""Figures from result records (never decodes anything itself).

* :func:`pareto_plot`: score vs NFE per policy family, Pareto frontier highlighted, one panel per
  task.
* :func:`cross_setting_plot`: heatmap of (policy family x setting) -> score advantage over the
  heuristic frontier.
* :func:`trace_plot`: positions x steps per policy: when each position's proposal became stable
  (equal to its final token from then on) and when it was committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["pareto_frontier", "pareto_plot", "cross_setting_plot", "trace_plot"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        from commit_env.errors import DependencyNotInstalled

        raise DependencyNotInstalled(
            "plots need matplotlib (a core dependency): pip install matplotlib"
        ) from err
    return plt


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (nfe, score) not dominated by any other (lower NFE and higher score is better).

    Args:
        points: ``(nfe, score)`` pairs.

    Returns:
        The frontier, sorted by NFE.
    """
    frontier: list[tuple[float, float]] = []
    for nfe, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or score > frontier[-1][1]:
            frontier.append((nfe, score))
    return frontier


def pareto_plot(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Score vs mean NFE, one curve per policy family, frontier highlighted, a panel per task.

    Args:
        records: Sweep records (one setting or many; all points are drawn).
        path: Output PNG.
    """
    plt = _pyplot()
    tasks = sorted({r["task"] for r in records})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [r for r in records if r["task"] == task]
        families = list(dict.fromkeys(r["family"] for r in rows))
        for family in families:
            pts = sorted((r["nfe"], r["score"]) for r in rows if r["family"] == family)
            xs, ys = zip(*pts, strict=True)
            style = "*" if family in ("controller", "ppo", "oracle") else "o"
            ax.plot(xs, ys, marker=style, ms=7 if style == "*" else 4, lw=1, label=family)
        front = pareto_frontier([(r["nfe"], r["score"]) for r in rows])
        fx, fy = zip(*front, strict=True)
        ax.step(fx, fy, where="post", color="black", lw=2.5, alpha=0.35, label="Pareto frontier")
        ax.set_title(task)
        ax.set_xlabel("mean NFE (forward passes)")
        ax.set_ylabel("task score")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cross_setting_plot(
    cells: Sequence[dict[str, Any]], path: str | Path, value: str = "advantage"
) -> None:
    """Heatmap: rows = policy families, columns = settings, colour = ``value``.

    Args:
        cells: Dicts with ``family``, ``setting`` (label) and ``value``.
        path: Output PNG.
        value: Key of the plotted value (e.g. score advantage over the heuristic frontier).
    """
    plt = _pyplot()
    import numpy as np

    families = list(dict.fromkeys(c["family"] for c in cells))
    settings = list(dict.fromkeys(c["setting"] for c in cells))
    grid = np.full((len(families), len(settings)), np.nan)
    for c in cells:
        grid[families.index(c["family"]), settings.index(c["setting"])] = c[value]
    fig, ax = plt.subplots(figsize=(1.1 * len(settings) + 3, 0.5 * len(families) + 2))
    lim = max(1e-6, float(np.nanmax(np.abs(grid)))) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(settings)), settings, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(families)), families, fontsize=8)
    for i in range(len(families)):
        for j in range(len(settings)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:+.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label=value)
    ax.set_title("score minus heuristic frontier at the same NFE (mean over tasks)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trace_plot(traces: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Positions x steps for a few examples and policies.

    Each panel is one (policy, example): light cells mark steps where the position's proposal
    already equals its final token and stays so; a black dot marks the commit step.

    Args:
        traces: Dicts with ``policy``, ``example`` (label), ``stable`` (list of per-step lists of
            0/1 over positions) and ``commit_step`` (per position).
        path: Output PNG.
    """
    plt = _pyplot()
    import numpy as np

    n = len(traces)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.0 * rows), squeeze=False)
    for ax, tr in zip(axes.flat, traces, strict=False):
        stable = np.asarray(tr["stable"], dtype=float)  # [steps, G]
        ax.imshow(stable.T, cmap="Blues", vmin=0, vmax=1.6, aspect="auto", origin="lower")
        commit = np.asarray(tr["commit_step"])
        pos = np.flatnonzero(commit >= 0)
        ax.scatter(commit[pos], pos, s=10, c="black", marker="o", label="commit")
        ax.set_title(f"{tr['policy']} | {tr['example']}", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("position")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
