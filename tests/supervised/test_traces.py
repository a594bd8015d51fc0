import json

import numpy as np
import pytest

from commit_env.errors import CorruptShardError
from commit_env.traces import TraceDataset, TraceWriter, read_manifest


def _step(trace_id, G=4, F=2):
    return {
        "trace_id": trace_id,
        "nfe": 1,
        "budget": G,
        "gen_len": G,
        "window_start": 0,
        "window_end": G,
        "tokens": np.arange(G, dtype=np.int32).tobytes(),
        "proposal": np.arange(G, dtype=np.int32).tobytes(),
        "eligible": np.ones(G, np.uint8).tobytes(),
        "label": np.array([1, 0, -1, 1], np.int8).tobytes(),
        "features": np.full((G, F), 0.5, np.float16).tobytes(),
    }


def _trace(trace_id):
    return {
        "trace_id": trace_id,
        "prompt_ids": np.array([5, 6, 7], np.int32).tobytes(),
        "final_tokens": np.arange(4, dtype=np.int32).tobytes(),
        "score": 1.0,
        "example_index": trace_id,
    }


META = {"feature_names": ["a", "b"], "feature_dim": 2, "gen_length": 4}


def test_roundtrip_and_resume(tmp_path):
    writer = TraceWriter(tmp_path, META, shard_traces=2)
    for i in range(3):
        writer.add_trace(_trace(i), [_step(i), _step(i)])
    writer.flush()
    assert writer.examples_done == 3
    assert len(read_manifest(tmp_path)["shards"]) == 2
    data = TraceDataset(tmp_path)
    records = list(data.iter_records())
    assert len(records) == len(data) == 6
    r = records[0]
    assert r["features"].shape == (4, 2) and r["features"].dtype == np.float16
    assert r["prompt_ids"].tolist() == [5, 6, 7]
    assert r["label"].tolist() == [1, 0, -1, 1]
    # re-opening resumes instead of starting over
    again = TraceWriter(tmp_path, META, shard_traces=2)
    assert again.examples_done == 3


def test_different_meta_is_refused(tmp_path):
    TraceWriter(tmp_path, META)
    with pytest.raises(ValueError, match="different settings"):
        TraceWriter(tmp_path, {**META, "feature_dim": 3})


def test_corrupt_shard_names_file_and_can_be_skipped(tmp_path):
    writer = TraceWriter(tmp_path, META, shard_traces=1)
    writer.add_trace(_trace(0), [_step(0)])
    writer.add_trace(_trace(1), [_step(1)])
    shard = tmp_path / read_manifest(tmp_path)["shards"][0]["steps_file"]
    shard.write_bytes(shard.read_bytes()[:40])  # truncate
    with pytest.raises(CorruptShardError, match=shard.name):
        list(TraceDataset(tmp_path).iter_records())
    with pytest.warns(UserWarning, match="skipped"):
        records = list(TraceDataset(tmp_path, skip_corrupt=True).iter_records())
    assert [r["trace_id"] for r in records] == [1]


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a trace directory"):
        TraceDataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(CorruptShardError, match="manifest.json"):
        TraceDataset(tmp_path)


def test_no_temp_files_left_behind(tmp_path):
    writer = TraceWriter(tmp_path, META, shard_traces=1)
    writer.add_trace(_trace(0), [_step(0)])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((tmp_path / "manifest.json").read_text())["examples_done"] == 1
