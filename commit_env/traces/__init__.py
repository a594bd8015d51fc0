"""Compact trace records of decodes and their on-disk shards (Parquet).

A *trace* is one decoded prompt (stored once: prompt ids, final tokens, score); a *step record* is
one trace state of that decode (generation-region tokens, proposals, eligibility, features as
float16, and the future-stability label of every position). See :mod:`commit_env.traces.shards`.
"""

from commit_env.traces.shards import (
    STEP_SCHEMA,
    TRACE_SCHEMA,
    TraceDataset,
    TraceWriter,
    read_manifest,
)

__all__ = ["STEP_SCHEMA", "TRACE_SCHEMA", "TraceDataset", "TraceWriter", "read_manifest"]
