"""Result files: JSON-lines records appended atomically (via :mod:`commit_env.io`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from commit_env.io import write_json_atomic, write_text_atomic

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


def append_jsonl_atomic(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record by rewriting the file atomically (safe against interruption).

    Args:
        path: The JSON-lines file.
        record: The record to append.
    """
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    write_text_atomic(path, old + json.dumps(record, sort_keys=True) + "\n")
