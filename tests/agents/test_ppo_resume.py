"""``train-ppo``: atomic checkpoints, ``--resume`` up to ``--timesteps``, refused other settings."""

from __future__ import annotations

import dataclasses

import pytest
from commit_env.agents.train_ppo import PPOConfig, train_ppo

from commit_env.decoding import DecodeSetting
from commit_env.errors import CorruptCheckpointError, ResumeMismatch


def _cfg(out, **kw):
    base = dict(
        setting=DecodeSetting(8, "block:4"),
        timesteps=64,
        num_envs=4,
        n_steps=8,
        batch_size=32,
        n_epochs=1,
        eval_n=4,
        checkpoint_every=32,
        out=str(out),
        progress_bar=False,
    )
    return PPOConfig(**{**base, **kw})


def test_resume_continues_to_more_timesteps_and_refuses_other_settings(tmp_path):
    first = train_ppo(_cfg(tmp_path))
    assert first["timesteps"] == 64
    assert (tmp_path / "last.zip").is_file() and list((tmp_path / "checkpoints").glob("*.zip"))
    assert not [p for p in tmp_path.rglob("*.tmp")]
    more = train_ppo(_cfg(tmp_path, timesteps=96, resume=True))
    assert more["resumed_from"]["timesteps"] == 64 and more["timesteps"] == 96
    with pytest.raises(ResumeMismatch, match="step_cost: 0.01 -> 0.05"):
        train_ppo(_cfg(tmp_path, timesteps=128, resume=True, step_cost=0.05))
    # a kill mid-write never leaves a partial zip; a damaged one is named
    (tmp_path / "last.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptCheckpointError, match="last.zip"):
        train_ppo(_cfg(tmp_path, timesteps=128, resume=True))


def test_fresh_run_without_resume_replaces_the_key(tmp_path):
    cfg = _cfg(tmp_path, timesteps=32, checkpoint_every=0)
    train_ppo(cfg)
    summary = train_ppo(dataclasses.replace(cfg, step_cost=0.05))  # no --resume: start over
    assert "resumed_from" not in summary and summary["timesteps"] == 32
