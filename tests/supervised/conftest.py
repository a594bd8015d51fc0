import pytest
from commit_env.supervised.calibrate import CalibrationConfig
from commit_env.supervised.collect import CollectConfig, collect_traces
from commit_env.supervised.policy import ControllerPolicy
from commit_env.supervised.rounds import (
    RoundsConfig,
    default_training_mixture,
    train_controller_rounds,
)
from commit_env.supervised.train import TrainConfig

from commit_env.backbones import load_backbone
from commit_env.decoding import DecodeConfig, Decoder


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


#: Prompts on which :func:`drafter_threshold` reads the fixture controller's scores.
DRAFT_PROMPTS = ("name a fruit:", "what is 2+3?", "name a colour:", "what is 4+4?")


@pytest.fixture(scope="session")
def drafter_threshold(calibrated, tiny):
    """A controller threshold at which the fixture controller commits several tokens per step.

    The fixture trains for one epoch, so its scores sit in a narrow band that moves whenever the
    input layout changes; a fixed threshold can fall above or below all of them. The median of its
    first-step scores commits about half of each first step and leaves the rest for later steps.
    """
    _, result = calibrated
    policy = ControllerPolicy.from_pretrained(result.final, backbone=tiny)
    decoder = Decoder(tiny, policy.decode_config(DecodeConfig(gen_length=12)))
    state = decoder.start(list(DRAFT_PROMPTS))
    prob = policy.stability(state)[state.eligible]
    return round(float(prob.median()), 4)
