import pytest
from commit_env.supervised.collect import CollectConfig, collect_traces

from commit_env.backbones import load_backbone


@pytest.fixture(scope="session")
def tiny():
    return load_backbone("tiny")


@pytest.fixture(scope="session")
def small_collection(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("traces") / "round0"
    cfg = CollectConfig(out=str(out), n=48, seed=3, batch_size=24, shard_traces=16)
    summary = collect_traces(cfg, backbone=tiny, progress=False)
    return cfg, summary
