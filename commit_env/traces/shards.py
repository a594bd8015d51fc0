"""Trace shards: atomic Parquet writes, a manifest for resumable collection, streaming reads.

Layout of a trace directory::

    manifest.json          feature names, backbone, settings, shards written, examples done
    steps-00000.parquet    one row per (trace, step): per-position arrays of length G
    traces-00000.parquet   one row per trace: prompt ids, final tokens, score

Per position-step the default record costs: token (int32) + proposal (int32) + eligible (uint8) +
label (int8) + F float16 features, i.e. ``10 + 2F`` bytes before Parquet compression (F = 16 by
default: 42 bytes). The prompt is stored once per trace, never per step.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from commit_env.errors import CorruptShardError, DependencyNotInstalled, InputNotFound, RunDirError
from commit_env.io import atomic_write, dumps_json, write_bytes_atomic

__all__ = ["STEP_SCHEMA", "TRACE_SCHEMA", "TraceWriter", "TraceDataset", "read_manifest"]

MANIFEST = "manifest.json"

STEP_SCHEMA: dict[str, str] = {
    "trace_id": "int64: trace the state belongs to",
    "nfe": "int32: forward passes so far",
    "budget": "int32: the row's step budget",
    "gen_len": "int32: the row's generation length",
    "window_start": "int32: first generation index of the window",
    "window_end": "int32: one past the window's last index",
    "tokens": "binary int32[G]: generation region (committed tokens, mask id elsewhere)",
    "proposal": "binary int32[G]: proposed token per position",
    "eligible": "binary uint8[G]: 1 if masked and inside the window",
    "label": "binary int8[G]: 1 stable (proposal == final token), 0 unstable, -1 committed",
    "features": "binary float16[G, F]: FeatureBuilder.stack in manifest['feature_names'] order",
}
TRACE_SCHEMA: dict[str, str] = {
    "trace_id": "int64",
    "prompt_ids": "binary int32[P_i]: the prompt (no padding)",
    "final_tokens": "binary int32[G]: generation region at the end of the decode",
    "score": "float64: task score of the completion",
    "example_index": "int64: index of the example in the collection's seeded draw",
}


def _pa() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow is a core dependency
        raise DependencyNotInstalled("trace shards need pyarrow: pip install pyarrow") from err
    return pa, pq


def _atomic_write_table(table: Any, path: Path) -> None:
    _, pq = _pa()
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read a trace directory's manifest.

    Args:
        directory: The trace directory.

    Returns:
        The manifest dict.

    Raises:
        InputNotFound: If there is no manifest (a ``FileNotFoundError``).
        CorruptShardError: If the manifest is not valid JSON or lacks its fields.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise InputNotFound(f"trace directory {directory} not found (run `commit-env collect`)")
    if not path.is_file():
        raise InputNotFound(f"{path} not found: not a trace directory (run `commit-env collect`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptShardError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or not {"meta", "shards", "steps"} <= set(manifest):
        raise CorruptShardError(f"{path} is not a trace manifest (needs meta, shards, steps)")
    return manifest


class TraceWriter:
    """Accumulate trace and step records; write them as atomic Parquet shards.

    Re-opening a directory resumes it: existing shards are kept and ``examples_done`` tells the
    collector where to continue. A directory written with different ``meta`` is refused.

    Args:
        directory: Output directory (created if missing).
        meta: Collection metadata stored in the manifest (feature names, backbone, settings ...).
        shard_traces: Traces per shard.

    Raises:
        ValueError: If the directory holds traces collected with different metadata.
    """

    def __init__(self, directory: str | Path, meta: dict[str, Any], *, shard_traces: int = 256):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_traces = shard_traces
        if (self.directory / MANIFEST).is_file():
            manifest = read_manifest(self.directory)
            stored, new = manifest["meta"], json.loads(dumps_json(meta))
            if stored != new:
                diffs = ", ".join(
                    f"{k}: {stored.get(k)!r} -> {new.get(k)!r}"
                    for k in sorted(set(stored) | set(new))
                    if stored.get(k) != new.get(k)
                )
                raise ValueError(
                    f"{self.directory} holds traces collected with different settings ({diffs}); "
                    "use a new directory (or delete this one)"
                )
            self.manifest = manifest
        else:
            self.manifest = {"meta": meta, "shards": [], "examples_done": 0, "steps": 0}
            self._write_manifest()
        self._steps: list[dict[str, Any]] = []
        self._traces: list[dict[str, Any]] = []

    @property
    def examples_done(self) -> int:
        """Examples whose traces are safely on disk."""
        return int(self.manifest["examples_done"])

    def add_trace(self, trace: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        """Buffer one finished trace and its step records (see the schemas)."""
        self._traces.append(trace)
        self._steps.extend(steps)
        if len(self._traces) >= self.shard_traces:
            self.flush()

    def flush(self) -> None:
        """Write buffered records as one shard and update the manifest (both atomically).

        Raises:
            RunDirError: If another writer changed the manifest since this one read it (its
                shards would be dropped from the manifest otherwise); hold the directory's
                :class:`~commit_env.rundir.RunLock` while writing, as ``collect`` does.
        """
        if not self._traces:
            return
        self._check_unchanged()
        pa, _ = _pa()
        index = len(self.manifest["shards"])
        names = {
            "steps_file": f"steps-{index:05d}.parquet",
            "traces_file": f"traces-{index:05d}.parquet",
        }
        _atomic_write_table(pa.Table.from_pylist(self._steps), self.directory / names["steps_file"])
        _atomic_write_table(
            pa.Table.from_pylist(self._traces), self.directory / names["traces_file"]
        )
        self.manifest["shards"].append(
            {**names, "traces": len(self._traces), "steps": len(self._steps)}
        )
        self.manifest["examples_done"] = int(max(t["example_index"] for t in self._traces)) + 1
        self.manifest["steps"] = int(self.manifest["steps"]) + len(self._steps)
        self._write_manifest()
        self._steps, self._traces = [], []

    def _check_unchanged(self) -> None:
        path = self.directory / MANIFEST
        try:
            on_disk = json.loads(path.read_text())["shards"]
        except (OSError, ValueError, KeyError, TypeError):
            on_disk = None
        if on_disk != self.manifest["shards"]:
            raise RunDirError(
                f"{path} was changed by another writer ({len(on_disk or [])} shards on disk, "
                f"{len(self.manifest['shards'])} expected); refusing to overwrite it"
            )

    def _write_manifest(self) -> None:
        data = dumps_json(self.manifest, indent=2, sort_keys=True).encode()
        write_bytes_atomic(self.directory / MANIFEST, data)


def _frombuffer(blob: bytes, dtype: Any) -> np.ndarray:
    return np.frombuffer(blob, dtype=dtype)


class TraceDataset:
    """Stream step records (joined with their trace's prompt) from a trace directory.

    Args:
        directory: A directory written by :class:`TraceWriter`.
        skip_corrupt: Warn about and skip unreadable shards instead of raising.

    Raises:
        FileNotFoundError: If the directory has no manifest.
    """

    def __init__(self, directory: str | Path, *, skip_corrupt: bool = False) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.meta: dict[str, Any] = self.manifest["meta"]
        self.skip_corrupt = skip_corrupt

    @property
    def feature_names(self) -> list[str]:
        """Feature columns in stacking order."""
        return list(self.meta["feature_names"])

    @property
    def feature_dim(self) -> int:
        """F, float16 values per position."""
        return int(self.meta["feature_dim"])

    def __len__(self) -> int:
        return int(self.manifest["steps"])

    def _read_shard(self, shard: dict[str, Any]) -> tuple[Any, Any] | None:
        _, pq = _pa()
        tables = []
        for key in ("steps_file", "traces_file"):
            path = self.directory / shard[key]
            try:
                tables.append(pq.read_table(path))
            except Exception as err:  # noqa: BLE001 - any read failure means a bad shard
                message = f"trace shard {path} is corrupt or truncated: {err}"
                if self.skip_corrupt:
                    warnings.warn(message + " (skipped)", stacklevel=3)
                    return None
                raise CorruptShardError(message + " (pass skip_corrupt=True to skip it)") from err
        return tables[0], tables[1]

    def iter_records(self) -> Iterator[dict[str, Any]]:
        """Yield one decoded step record at a time.

        Yields:
            Dict with numpy arrays ``tokens``/``proposal`` (int32 ``[G]``), ``eligible``
            (bool ``[G]``), ``label`` (int8 ``[G]``), ``features`` (float16 ``[G, F]``),
            ``prompt_ids`` (int32 ``[P_i]``) and the scalar fields of :data:`STEP_SCHEMA`;
            columns a collector added beyond the schema are passed through as stored.
        """
        F = self.feature_dim
        for shard in self.manifest["shards"]:
            tables = self._read_shard(shard)
            if tables is None:
                continue
            steps, traces = (t.to_pydict() for t in tables)
            prompts = {
                tid: _frombuffer(p, np.int32)
                for tid, p in zip(traces["trace_id"], traces["prompt_ids"], strict=True)
            }
            extra = [k for k in steps if k not in STEP_SCHEMA]  # collector-specific columns
            for i in range(len(steps["trace_id"])):
                tokens = _frombuffer(steps["tokens"][i], np.int32)
                yield {
                    **{k: steps[k][i] for k in extra},
                    "trace_id": steps["trace_id"][i],
                    "nfe": steps["nfe"][i],
                    "budget": steps["budget"][i],
                    "gen_len": steps["gen_len"][i],
                    "window_start": steps["window_start"][i],
                    "window_end": steps["window_end"][i],
                    "tokens": tokens,
                    "proposal": _frombuffer(steps["proposal"][i], np.int32),
                    "eligible": _frombuffer(steps["eligible"][i], np.uint8).astype(bool),
                    "label": _frombuffer(steps["label"][i], np.int8),
                    "features": _frombuffer(steps["features"][i], np.float16).reshape(-1, F),
                    "prompt_ids": prompts[steps["trace_id"][i]],
                }

    def bytes_per_position_step(self) -> float:
        """On-disk bytes (all shards, compressed) per recorded position-step."""
        total = sum(
            (self.directory / s[k]).stat().st_size
            for s in self.manifest["shards"]
            for k in ("steps_file", "traces_file")
        )
        positions = sum(int(s["steps"]) for s in self.manifest["shards"]) * int(
            self.meta["gen_length"]
        )
        return total / max(positions, 1)
