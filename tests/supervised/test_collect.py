import dataclasses

import numpy as np
from commit_env.supervised.collect import CollectConfig, MixedPolicy, collect_traces

from commit_env.policies import make_policy
from commit_env.traces import TraceDataset


def test_labels_are_future_stability(small_collection):
    cfg, summary = small_collection
    data = TraceDataset(cfg.out)
    finals = {}
    import pyarrow.parquet as pq

    for shard in data.manifest["shards"]:
        t = pq.read_table(data.directory / shard["traces_file"]).to_pydict()
        for tid, fin in zip(t["trace_id"], t["final_tokens"], strict=True):
            finals[tid] = np.frombuffer(fin, np.int32)
    n_labelled = 0
    for r in data.iter_records():
        masked = r["label"] >= 0
        expect = (r["proposal"] == finals[r["trace_id"]]).astype(np.int8)
        assert (r["label"][masked] == expect[masked]).all()
        # committed positions hold their final token already
        assert (r["tokens"][~masked] == finals[r["trace_id"]][~masked]).all()
        n_labelled += int(masked.sum())
    assert n_labelled > 0
    assert summary["traces"] == cfg.n


def test_default_features_fit_the_byte_budget(small_collection):
    _, summary = small_collection
    assert summary["bytes_per_position_step"] <= 100


def test_collection_resumes(tmp_path, tiny):
    cfg = CollectConfig(
        out=str(tmp_path / "t"),
        n=8,
        seed=5,
        batch_size=8,
        shard_traces=4,
        hidden_features=0,
        feature_groups=("confidence", "position"),
    )
    collect_traces(cfg, backbone=tiny, progress=False)
    bigger = dataclasses.replace(cfg, n=16)
    collect_traces(bigger, backbone=tiny, progress=False)
    dataset = TraceDataset(cfg.out)
    ids = sorted({r["trace_id"] for r in dataset.iter_records()})
    assert ids == list(range(16))
    assert dataset.meta["top_k"] == cfg.top_k == 3
    assert dataset.meta["feature_groups"] == ["confidence", "position"]


def test_relabelling_with_the_reference_matches_final_labels(tmp_path, tiny):
    # beta=0 follows the reference: completing each visited state with the reference reproduces
    # the decode's own final tokens, so relabelled and final-token labels must agree.
    base = CollectConfig(
        out=str(tmp_path / "a"),
        n=8,
        seed=7,
        batch_size=8,
        hidden_features=0,
        feature_groups=("confidence", "position"),
    )
    collect_traces(base, backbone=tiny, progress=False)
    ref = make_policy("topk")
    mixed = MixedPolicy(learner=make_policy("threshold", threshold=0.5), reference=ref, beta=0.0)
    other = dataclasses.replace(base, out=str(tmp_path / "b"))
    collect_traces(
        other, backbone=tiny, behaviour=mixed, relabel_with_reference=True, progress=False
    )
    a = [r["label"].tolist() for r in TraceDataset(base.out).iter_records()]
    b = [r["label"].tolist() for r in TraceDataset(other.out).iter_records()]
    assert a == b
