"""Name -> task class registry (explicit dict, no import-order magic)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from commit_env.tasks.base import Task

__all__ = ["EMBEDDED_TASKS", "TASKS", "TESTBED_TASKS", "get_task", "list_tasks", "register_task"]

# Values are classes/factories or "module:attr" strings: listing tasks imports nothing heavy.
TASKS: dict[str, str | Callable[..., Task]] = {
    "qa": "commit_env.tasks.qa:CategoryQA",
    "math": "commit_env.tasks.arithmetic:DigitSum",
    "code": "commit_env.tasks.code:LinearFunctionCode",
    "gsm8k": "commit_env.tasks.gsm8k:GSM8K",
    "humaneval": "commit_env.tasks.humaneval:HumanEval",
    "copy": "commit_env.tasks.listops:CopyList",
    "reverse": "commit_env.tasks.listops:ReverseList",
    "sort": "commit_env.tasks.listops:SortList",
    "shuffle": "commit_env.tasks.listops:ShuffleList",
    "insert": "commit_env.tasks.listops:InsertItem",
    "remove": "commit_env.tasks.listops:RemoveItem",
    "replace": "commit_env.tasks.listops:ReplaceItem",
    "latin": "commit_env.tasks.puzzles:LatinSquare",
    "sudoku": "commit_env.tasks.puzzles:Sudoku4",
    "parallelbench": "commit_env.tasks.parallelbench:ParallelBenchTask",
}

# Embedded families: ship with the package, need no data set, used to train the tiny backbone.
EMBEDDED_TASKS: tuple[str, ...] = ("qa", "math", "code")

# The testbed: parallel-decoding-hard families whose answers fill most of the canvas and whose
# tokens depend on each other. `commit-env bench` runs these by default.
TESTBED_TASKS: tuple[str, ...] = (
    "copy",
    "reverse",
    "sort",
    "shuffle",
    "insert:any",
    "remove:any",
    "replace:any",
    "latin",
    "sudoku",
    "qa:list",
)


def register_task(
    name: str, factory: str | Callable[..., Task], *, overwrite: bool = False
) -> None:
    """Register a task factory under ``name``.

    Args:
        name: Registry name used by :func:`get_task` and the CLI.
        factory: A callable returning a :class:`Task`, or a ``"module:attr"`` string naming one.
        overwrite: Replace an existing registration instead of raising.

    Raises:
        ValueError: If ``name`` is taken and ``overwrite`` is false, or ``name`` is empty.
    """
    if not name:
        raise ValueError("task name must be a non-empty string")
    if name in TASKS and not overwrite:
        raise ValueError(f"task {name!r} is already registered; pass overwrite=True to replace it")
    TASKS[name] = factory


def list_tasks() -> list[str]:
    """Return the registered task names, sorted."""
    return sorted(TASKS)


def _resolve(factory: str | Callable[..., Task]) -> Callable[..., Task]:
    if callable(factory):
        return factory
    module_name, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task registered under ``name``.

    Args:
        name: A name from :func:`list_tasks`. ``"qa:hard"`` is shorthand for
            ``get_task("qa", difficulty="hard")``.
        **kwargs: Passed to the task's constructor (for example ``difficulty``).

    Returns:
        The task instance.

    Raises:
        ValueError: If ``name`` is not registered (the message lists the valid names) or the
            constructor rejects ``kwargs``.
    """
    base, _, difficulty = name.partition(":")
    if base not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {list_tasks()}")
    if difficulty:
        kwargs.setdefault("difficulty", difficulty)
    return _resolve(TASKS[base])(**kwargs)
