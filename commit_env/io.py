"""The one atomic-write helper: write a temp file next to the target, fsync, rename.

An interrupted run never leaves half a file: readers see the old content or the new one. Every
file the project writes atomically (result records, trace shards and manifests, run configs and
summaries, controller checkpoints) goes through :func:`atomic_write` or its wrappers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "dumps_json",
    "json_safe",
    "replace_dir_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Produce ``path`` atomically: ``write(tmp)`` fills a temp file, then it is renamed.

    Args:
        path: Target file (its directory is created).
        write: Writes the complete content to the given temporary path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _file_mode(path))  # mkstemp's 0600 would make results private
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_mode(path: Path) -> int:
    """The mode of the file being replaced, else the usual ``0644`` narrowed by the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o644 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would race with other threads)
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def json_safe(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by ``None`` (valid JSON everywhere).

    Args:
        data: Nested dicts, lists, tuples and scalars (numpy scalars are converted).

    Returns:
        The same structure (tuples become lists) with only finite floats.
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    if hasattr(data, "item") and callable(data.item) and getattr(data, "shape", None) == ():
        return json_safe(data.item())  # numpy / torch scalar
    return data


def dumps_json(data: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` ``(data)`` that never writes ``NaN`` or ``Infinity``.

    Args:
        data: The data.
        **kwargs: ``json.dumps`` options (``indent``, ``sort_keys``, ``default`` ...).

    Returns:
        Strict JSON text.
    """
    default = kwargs.pop("default", None)
    if default is not None:
        data = json.loads(json.dumps(data, default=default, allow_nan=True))
    return json.dumps(json_safe(data), allow_nan=False, **kwargs)


def write_json_atomic(
    path: str | Path,
    data: Any,
    *,
    indent: int = 1,
    sort_keys: bool = True,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write ``data`` as strict JSON to ``path`` atomically (NaN/inf become ``null``).

    Args:
        path: Target file.
        data: JSON-serialisable data.
        indent: JSON indentation.
        sort_keys: Sort object keys.
        default: Converter for values JSON cannot encode (``json.dumps``' ``default``).
    """
    text = dumps_json(data, indent=indent, sort_keys=sort_keys, default=default)
    write_text_atomic(path, text)


def replace_dir_atomic(directory: str | Path, fill: Callable[[Path], None]) -> None:
    """Replace a whole directory: ``fill(tmp)`` populates a temp directory, then two renames.

    The old directory (if any) is moved aside first and deleted afterwards, so the target is
    never half-written (at worst, briefly absent with the previous version kept as
    ``.NAME.old``, which :func:`commit_env.rundir.sweep_partial` restores after a kill). Every
    file is fsynced before the renames, so a checkpoint directory is whole or absent.

    Args:
        directory: Target directory.
        fill: Writes the complete content into the given temporary directory.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make checkpoints private
    try:
        fill(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as fh:
                    os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = directory.with_name(f".{directory.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
