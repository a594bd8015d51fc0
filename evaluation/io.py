"""Result files: JSON-lines records appended atomically (via :mod:`commit_env.io`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from commit_env.io import dumps_json, write_json_atomic, write_text_atomic
from commit_env.rundir import file_lock

__all__ = ["write_json_atomic", "read_jsonl", "append_jsonl_atomic"]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file (missing file = no records).

    Args:
        path: The file.

    Returns:
        The records.

    Raises:
        ValueError: If a line is not valid JSON (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{i}: not valid JSON ({err})") from err
    return records


def append_jsonl_atomic(
    path: str | Path,
    record: dict[str, Any],
    *,
    key: Callable[[dict[str, Any]], Hashable] | None = None,
) -> bool:
    """Append one record by rewriting the file atomically (safe against interruption).

    The read-modify-write runs under an exclusive lock on the sidecar ``.NAME.lock``, so
    concurrent appenders (threads or processes) never lose a record. With ``key``, a record
    whose key is already in the file is not appended again (no duplicates).

    Args:
        path: The JSON-lines file.
        record: The record to append (NaN/inf are written as ``null``).
        key: Identity of a record, for de-duplication.

    Returns:
        True if the record was appended, False if ``key`` found it already there.
    """
    path = Path(path)
    with file_lock(path.with_name(f".{path.name}.lock")):
        if key is not None and key(record) in {key(r) for r in read_jsonl(path)}:
            return False
        old = path.read_text() if path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        write_text_atomic(path, old + dumps_json(record, sort_keys=True) + "\n")
    return True
