import pytest
from commit_env.supervised.calibrate import CalibrationConfig
from commit_env.supervised.collect import CollectConfig, collect_traces
from commit_env.supervised.rounds import (
    RoundsConfig,
    default_training_mixture,
    train_controller_rounds,
)
from commit_env.supervised.train import TrainConfig

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


@pytest.fixture(scope="session")
def calibrated(tmp_path_factory, tiny):
    """A calibrated controller checkpoint on the tiny backbone (shared by several modules)."""
    cfg = RoundsConfig(
        out=str(tmp_path_factory.mktemp("calibrated")),
        tasks=("qa",),
        settings=default_training_mixture(16)[::4],
        n=16,
        on_policy_rounds=0,
        train=TrainConfig(epochs=1, batch_size=64, rollout_n=0, val_every_n_traces=4),
        batch_size=16,
        calibration=CalibrationConfig(n=5, thresholds=(0.3, 0.8, 0.99), progress=False),
        progress=False,
    )
    return cfg, train_controller_rounds(cfg, backbone=tiny)
