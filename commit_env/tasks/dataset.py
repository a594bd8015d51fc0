"""The shared base of data-set-backed tasks (GSM8K, HumanEval): loading, lazy examples, sampling.

A data-set task reads a local JSON-lines file (optionally gzipped, validated line by line with
one-line errors naming the file and line) or the Hugging Face Hub (the ``data`` extra), turns the
records into :class:`~commit_env.tasks.base.Example` objects once, and then serves them in
data-set order. Subclasses supply the record validation, the Hub fields and ``_build``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from commit_env.errors import DataUnavailable, DependencyNotInstalled
from commit_env.tasks.base import Example

__all__ = ["DatasetTask", "load_hub_records", "read_jsonl_records"]


def read_jsonl_records(
    path: Path, label: str, check: Callable[[dict[str, Any], str], dict[str, str]]
) -> list[dict[str, str]]:
    """Read and validate a JSON-lines file (``.gz`` is decompressed).

    Args:
        path: The file.
        label: Data-set name for messages (``"GSM8K"``).
        check: Validates one decoded object (given it and ``"<path>, line <n>"``) and returns
            the record to keep; raises ``ValueError`` naming the problem.

    Returns:
        The records, in file order.

    Raises:
        ValueError: If the file is unreadable, a line is not a JSON object or fails ``check``,
            or the file holds no record.
    """
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {label} file {path}: {exc}") from exc
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        records.append(check(record, where))
    if not records:
        raise ValueError(f"{label} file {path} is empty")
    return records


def load_hub_records(
    dataset_name: str,
    split: str,
    fields: Sequence[str],
    *,
    config: str | None = None,
    missing: str,
) -> list[dict[str, str]]:
    """Load a split from the Hugging Face Hub, keeping ``fields`` of every row.

    Args:
        dataset_name: Hub data set id.
        split: Split name.
        fields: Columns to keep.
        config: Hub configuration, if the data set has several.
        missing: Message of the error raised when ``datasets`` is not installed.

    Returns:
        The records.

    Raises:
        DependencyNotInstalled: Without the ``datasets`` package.
        DataUnavailable: If the data set is not cached locally and the Hub cannot be reached.
    """
    try:
        import datasets
    except ImportError as exc:
        raise DependencyNotInstalled(missing) from exc
    args = (dataset_name,) if config is None else (dataset_name, config)
    try:
        rows = datasets.load_dataset(*args, split=split)
    except (ConnectionError, OSError) as exc:  # offline and not in the local cache
        raise DataUnavailable(
            f"data set {dataset_name!r} (split {split!r}) is not in the local cache and the Hub "
            f"is unreachable ({type(exc).__name__}); run once online, or use a local JSONL file "
            "(the task's path= argument)"
        ) from exc
    return [{key: row[key] for key in fields} for row in rows]


class DatasetTask:
    """Lazily loaded examples in data-set order, with the task protocol's access methods.

    Subclasses set ``self._examples`` at construction (local file) or implement
    :meth:`_load_examples` (loaded on first use, e.g. from the Hub).
    """

    _examples: list[Example] | None = None

    def _load_examples(self) -> list[Example]:
        raise NotImplementedError

    @property
    def examples(self) -> list[Example]:
        """Every evaluated problem, in data-set order (loaded on first use)."""
        if self._examples is None:
            self._examples = self._load_examples()
        return self._examples

    def __len__(self) -> int:
        """Return the number of evaluated problems."""
        return len(self.examples)

    def load_examples(self, n: int | None = None) -> list[Example]:
        """Return the first ``n`` problems (all of them when ``n`` is None).

        Args:
            n: How many problems, or None for all.

        Returns:
            The examples, in data-set order.

        Raises:
            ValueError: If ``n`` is negative.
        """
        if n is not None and n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        return list(self.examples if n is None else self.examples[:n])

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one problem uniformly; see :class:`~commit_env.tasks.base.Task`."""
        return self.examples[int(rng.integers(len(self.examples)))]
