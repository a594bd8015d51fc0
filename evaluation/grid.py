"""The cross-setting grid that binds: lengths, windows and step budgets that change the ranking.

Per task, with G its default generation length (``task.default_gen_length``; 16 for the old
``qa``/``math``/``code`` families):

* generation lengths G and 2G;
* windows ``block:8``, ``sliding:16`` and ``full``;
* step budgets none, G/4 and G/8.

**One rule for windows:** a window is kept only when its width is smaller than G and, for
``block:B``, B divides G. A wider (or equal) window is the full window, which the grid already
has, so it is dropped rather than clamped; a block width that does not divide G is dropped
rather than adjusted, so every label in a report means exactly what it says. For example at
G = 16, ``sliding:16`` is dropped (it equals ``full``); at G = 24 all three windows stay.

**Budgets:** G/d is ``G // d`` forwards (dropped when 0; duplicates merged). A budget *binds* when
it cuts the sequential decode short: one token per forward needs G forwards, so every budget
below G binds, and at G/4 a policy must commit at least 4 tokens per forward on average. The
engine fills whatever is still masked when the budget is spent (``budget_fills``).

The ``quick`` variant is three settings per task at the default G: ``full`` without a budget
(the usual default setting, which the bench's default sweep has measured already), ``full`` with
budget G/4 (a budget that binds) and ``block:8`` without a budget (a window that binds), to keep
``commit-env bench --quick`` short; ``full`` is the whole grid (at most 18 settings per task).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from commit_env.evaluation.sweeps import Setting

from commit_env.decoding import parse_window

__all__ = [
    "FULL_GRID",
    "GRID_MODES",
    "QUICK_GRID",
    "GridCell",
    "GridSpec",
    "bench_grid",
    "budget_for",
    "default_setting",
    "grid_settings",
    "product_grid",
    "task_gen_length",
    "window_fits",
]

GridCell = tuple[int, str, int | None]
"""``(G multiplier, window, budget divisor)``; a divisor of None means no budget."""
GridSpec = tuple[GridCell, ...]
"""The cells of a grid, in order."""


def product_grid(
    scales: Sequence[int], windows: Sequence[str], divisors: Sequence[int | None]
) -> GridSpec:
    """Every combination of G multiplier, window and budget divisor.

    Args:
        scales: G multipliers (1 = the task's default G).
        windows: Window specs.
        divisors: Budget divisors d (budget G/d; None = no budget).

    Returns:
        The cells, G first, then window, then budget.
    """
    return tuple(itertools.product(scales, windows, divisors))


FULL_GRID: GridSpec = product_grid((1, 2), ("block:8", "sliding:16", "full"), (None, 4, 8))
QUICK_GRID: GridSpec = ((1, "full", None), (1, "full", 4), (1, "block:8", None))
GRID_MODES: dict[str, GridSpec] = {"quick": QUICK_GRID, "full": FULL_GRID}


def window_fits(window: str, gen_length: int) -> bool:
    """Whether ``window`` is a distinct, well-defined window at ``gen_length``.

    Args:
        window: ``"full"``, ``"block:B"`` or ``"sliding:W"``.
        gen_length: G.

    Returns:
        True for ``full``; for the others, True when the width is below G and (blocks) divides G.

    Raises:
        ValueError: On a malformed window or a non-positive ``gen_length``.
    """
    if gen_length < 1:
        raise ValueError(f"gen_length must be >= 1, got {gen_length}")
    kind, width = parse_window(window)
    if width is None:
        return True
    if width >= gen_length:
        return False
    return not (kind == "block" and gen_length % width)


def budget_for(gen_length: int, divisor: int | None) -> int | None:
    """The step budget G/d.

    Args:
        gen_length: G.
        divisor: d (None = no budget).

    Returns:
        ``gen_length // divisor`` (None when ``divisor`` is None or the budget would be 0).

    Raises:
        ValueError: If ``divisor`` is not a positive integer or None.
    """
    if divisor is None:
        return None
    if divisor < 1:
        raise ValueError(f"budget divisor must be a positive int or None, got {divisor}")
    budget = gen_length // divisor
    return budget if budget >= 1 else None


def grid_settings(default_gen_length: int, mode: str | GridSpec = "full") -> list[Setting]:
    """The settings of one task, in the order of the grid's cells.

    Args:
        default_gen_length: The task's default G.
        mode: ``"quick"``, ``"full"`` or an explicit :data:`GridSpec`.

    Returns:
        Distinct settings (windows filtered by :func:`window_fits`).

    Raises:
        ValueError: On an unknown mode or a non-positive length.
    """
    if isinstance(mode, str):
        if mode not in GRID_MODES:
            raise ValueError(f"unknown grid mode {mode!r}; expected one of {sorted(GRID_MODES)}")
        mode = GRID_MODES[mode]
    if default_gen_length < 1:
        raise ValueError(f"default_gen_length must be >= 1, got {default_gen_length}")
    out: list[Setting] = []
    for scale, window, d in mode:
        g = default_gen_length * scale
        if not window_fits(window, g):
            continue
        s = Setting(g, window, budget_for(g, d))
        if d is not None and s.step_budget is None:
            continue  # G/d rounds to 0: no such budget
        if s not in out:
            out.append(s)
    return out


def task_gen_length(task: str) -> int:
    """The default generation length of a registered task.

    Args:
        task: Task name (``get_task`` syntax, e.g. ``"qa:hard"``).

    Returns:
        ``task.default_gen_length``.

    Raises:
        ValueError: On an unknown task (the message lists the valid names).
    """
    from commit_env.tasks import get_task

    return int(get_task(task).default_gen_length)


def default_setting(gen_length: int, window: str = "full") -> Setting:
    """The default setting of a task: its default G, ``window`` if it fits (else full), no budget.

    Args:
        gen_length: The task's default G.
        window: Preferred window.

    Returns:
        The setting.
    """
    return Setting(gen_length, window if window_fits(window, gen_length) else "full", None)


def bench_grid(
    tasks: Sequence[str] | None = None,
    mode: str | GridSpec = "quick",
    *,
    gen_lengths: Mapping[str, int] | None = None,
) -> dict[str, list[Setting]]:
    """The grid of every task.

    Args:
        tasks: Task names (None: the testbed, ``commit_env.tasks.registry.TESTBED_TASKS``).
        mode: ``"quick"``, ``"full"`` or an explicit :data:`GridSpec`.
        gen_lengths: Default G per task (missing tasks: :func:`task_gen_length`, which builds
            the task).

    Returns:
        ``{task: settings}`` in task order.

    Raises:
        ValueError: On an unknown task or mode.
    """
    if tasks is None:
        from commit_env.tasks.registry import TESTBED_TASKS

        tasks = TESTBED_TASKS
    lengths = dict(gen_lengths or {})
    return {
        t: grid_settings(lengths[t] if t in lengths else task_gen_length(t), mode) for t in tasks
    }
