"""Issue 14: the from-scratch recipe, its sweep, the length curriculum and RL Zoo configs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import yaml
from commit_env.agents.callbacks import LengthCurriculumCallback
from commit_env.agents.policy import PPOPolicy
from commit_env.agents.sweep import format_scratch_table, run_scratch_sweep
from commit_env.agents.train_ppo import FROM_SCRATCH, PPOConfig, train_ppo
from commit_env.agents.zoo import CONFIGS, conf_path
from commit_env.evaluation.cli import _ppo_config, build_parser
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from commit_env.decoding import DecodeSetting
from commit_env.envs.actions import threshold_of
from commit_env.policies import ThresholdPolicy

TINY = dict(
    setting=DecodeSetting(8, "block:4"),
    timesteps=256,
    num_envs=8,
    n_steps=16,
    batch_size=64,
    n_epochs=1,
    eval_n=8,
    progress_bar=False,
)


def test_from_scratch_run_roundtrips_as_a_threshold_rule(tmp_path, backbone):
    cfg = PPOConfig(out=str(tmp_path), curriculum=(4, 8), **{**FROM_SCRATCH, **TINY})
    summary = train_ppo(cfg, backbone=backbone)
    assert summary["timesteps"] >= 256
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["action_mode"] == "threshold" and "conflict" in stored["features"]
    runs = list((tmp_path / "tb").iterdir())
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"rollout/return_mean", "rollout/nfe_mean", "train/curriculum_stage"} <= tags
    assert "train/std" in tags  # a Gaussian threshold head
    policy = PPOPolicy.load(tmp_path)
    assert policy.env_config.action_mode == "threshold"
    # the loaded agent commits exactly what the threshold rule of its own action commits
    from commit_env.decoding import Decoder
    from commit_env.evaluate import sample_examples
    from commit_env.tasks import get_task

    decoder = Decoder(backbone, policy.decode_config(cfg.setting.config()))
    prompts = [e.prompt for e in sample_examples(get_task("qa"), 3, 0)]
    state = decoder.start(prompts)
    act, _ = policy.model.predict(policy.observe(state), deterministic=True)
    mask = policy.select(state)
    for i in range(3):
        t = float(threshold_of(act[i])[0])
        rule = ThresholdPolicy(t).select(state)[i]
        assert torch.equal(mask[i], rule)


def test_scratch_config_validation():
    with pytest.raises(ValueError, match="policy='mlp'"):
        PPOConfig(action_mode="threshold")  # per-position net emits masks
    with pytest.raises(ValueError, match="action_mode"):
        PPOConfig(action_mode="bits", policy="mlp")
    with pytest.raises(ValueError, match="increasing"):
        LengthCurriculumCallback([8, 4], 100)


def test_cli_from_scratch_flags():
    args = build_parser().parse_args(
        ["train-ppo", "--from-scratch", "--curriculum", "8", "16", "--threads", "1"]
    )
    cfg = _ppo_config(args)
    assert cfg.action_mode == "threshold" and cfg.shaping == FROM_SCRATCH["shaping"]
    assert cfg.curriculum == (8, 16) and cfg.threads == 1 and "conflict" in cfg.features
    args = build_parser().parse_args(["train-ppo", "--action-mode", "count", "--shaping", "0.5"])
    cfg = _ppo_config(args)
    assert cfg.action_mode == "count" and cfg.policy == "mlp" and cfg.shaping == 0.5
    args = build_parser().parse_args(
        ["ppo-sweep", "--from-scratch", "--tasks", "copy", "sort", "--minutes", "15"]
    )
    assert args.tasks == ["copy", "sort"] and args.from_scratch


def test_scratch_sweep_records_and_table(tmp_path, backbone):
    base = dataclasses.replace(PPOConfig(), **{**TINY, "timesteps": 128})
    records = run_scratch_sweep(
        [0.02],
        ["qa"],
        base,
        minutes_per_agent=0.05,
        eval_n=4,
        thresholds=(0.5, 0.9),
        setting=DecodeSetting(8, "block:4"),
        out=tmp_path,
    )
    (r,) = records
    assert r["task"] == "qa" and r["best_threshold"] in (0.5, 0.9)
    assert r["return"] == pytest.approx(r["score"] - 0.02 * r["nfe"])
    assert r["met"] == (r["return"] >= r["threshold_return"] - 1e-9)
    table = format_scratch_table(records)
    assert table.count("\n") == 2 and "| qa | 0.02 |" in table
    saved = json.loads((tmp_path / "scratch_sweep.json").read_text())
    assert len(saved["records"]) == 1 and len(saved["heuristics"]["qa"]) == 2
    with pytest.raises(ValueError, match="empty"):
        run_scratch_sweep([], ["qa"], base)


def test_zoo_configs_load_and_build_envs():
    import gymnasium as gym

    import commit_env  # noqa: F401

    for name in CONFIGS:
        conf = yaml.safe_load(conf_path(name).read_text())
        (env_id,) = conf
        assert env_id == "commit_env/TokenCommit-v0"
        hp = conf[env_id]
        assert hp["n_envs"] == 8 and hp["vec_env_wrapper"] == "commit_env.envs.sb3.batched_vec_env"
        env = gym.make(env_id, **hp["env_kwargs"])
        obs, _ = env.reset(seed=0)
        assert env.action_space.contains(env.action_space.sample())
        env.close()
    with pytest.raises(ValueError, match="unknown zoo config"):
        conf_path("a2c")


def _zoo_train(tmp_path, n: int, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "rl_zoo3.train",
        "--algo",
        "ppo",
        "--env",
        "commit_env/TokenCommit-v0",
        "--gym-packages",
        "commit_env",
        "--conf-file",
        str(conf_path("ppo")),
        "-n",
        str(n),
        "-f",
        str(tmp_path / "logs"),
        "--tensorboard-log",
        str(tmp_path / "tb"),
        "--eval-freq",
        "-1",
        "--seed",
        "0",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def _check_zoo_run(tmp_path, proc):
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "logs" / "ppo").glob("*/commit_env-TokenCommit-v0.zip"))
    runs = list((tmp_path / "tb").glob("*/PPO_1"))
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    assert {"rollout/ep_rew_mean", "rollout/task_score_mean", "rollout/return_mean"} <= set(
        acc.Tags()["scalars"]
    )


@pytest.mark.slow  # ~20 s of CPU, minutes of wall time on a loaded 2-core box (Zoo imports)
def test_rl_zoo_entry_point_trains_briefly(tmp_path):
    pytest.importorskip("rl_zoo3")
    # one rollout of 8 envs x 32 steps through the Zoo's own entry point
    proc = _zoo_train(tmp_path, 256, ["-params", "n_steps:32", "batch_size:64"])
    _check_zoo_run(tmp_path, proc)


@pytest.mark.slow
def test_rl_zoo_trains_a_few_thousand_steps(tmp_path):
    pytest.importorskip("rl_zoo3")
    proc = _zoo_train(tmp_path, 4096, [])
    _check_zoo_run(tmp_path, proc)
