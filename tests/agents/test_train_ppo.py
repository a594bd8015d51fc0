"""train_ppo outputs, behaviour cloning, the CLI helpers, and a short run that learns."""

from __future__ import annotations

import json

import pytest
from commit_env.agents.bc import bc_warm_start
from commit_env.agents.policy import PPOPolicy
from commit_env.agents.train_ppo import PPOConfig, build_model, evaluate_agent, train_ppo
from commit_env.evaluation.cli import _resolve_init, build_parser
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from commit_env.decoding import DecodeSetting
from commit_env.envs import make_sb3_vec_env
from commit_env.policies import ThresholdPolicy

CUSTOM_TAGS = {
    "rollout/task_score_mean",
    "rollout/nfe_mean",
    "rollout/commit_per_step_mean",
    "rollout/forced_commit_rate",
    "eval/score",
    "eval/nfe",
    "eval/return",
    "rollout/ep_rew_mean",
}


def test_train_ppo_writes_model_config_and_tensorboard(tmp_path):
    cfg = PPOConfig(
        setting=DecodeSetting(8, "block:4"),
        timesteps=256,
        num_envs=8,
        n_steps=16,
        batch_size=64,
        n_epochs=1,
        eval_every=128,
        eval_n=8,
        checkpoint_every=128,
        out=str(tmp_path),
        progress_bar=False,
    )
    summary = train_ppo(cfg)
    assert (tmp_path / "final.zip").is_file() and (tmp_path / "best.zip").is_file()
    assert list((tmp_path / "checkpoints").glob("*.zip"))
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["step_cost"] == cfg.step_cost and stored["algo"] == "ppo"
    # the observation's feature set and top-k are part of the checkpoint metadata
    assert stored["features"] == list(cfg.features) and stored["top_k"] == cfg.top_k
    assert stored["setting"]["gen_length"] == 8 and stored["setting"]["window"] == "block:4"
    runs = list((tmp_path / "tb").iterdir())
    assert len(runs) == 1
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    assert CUSTOM_TAGS <= set(acc.Tags()["scalars"])
    assert summary["timesteps"] >= 256 and summary["final_eval"]["nfe"] >= 1
    assert PPOPolicy.load(tmp_path).step_cost == cfg.step_cost


def test_short_ppo_run_improves_return(tmp_path, backbone):
    # Easy setting: a large step cost on qa with short blocks; committing the confident
    # positions clearly pays, while the initial policy (bias -2) commits next to nothing and
    # relies on the engine's one forced commit per step.
    cfg = PPOConfig(
        setting=DecodeSetting(8, "block:4"),
        step_cost=0.2,
        timesteps=2048,
        num_envs=16,
        n_steps=16,
        batch_size=64,
        n_epochs=10,
        lr=3e-3,
        hidden=32,
        eval_n=32,
        out=str(tmp_path),
        progress_bar=False,
    )
    summary = train_ppo(cfg)
    before, after = summary["initial_eval"], summary["final_eval"]
    assert after["return"] > before["return"] + 0.1, (before, after)
    assert after["nfe"] < before["nfe"]


def test_bc_warm_start_clones_threshold_teacher(backbone):
    cfg = PPOConfig(setting=DecodeSetting(8, "block:4"), num_envs=4, n_steps=8, batch_size=32)
    venv = make_sb3_vec_env(4, seed=0, config=cfg.env_config(backbone))
    model = build_model(cfg, venv)
    before = evaluate_agent(model, cfg, backbone=backbone, n=32)
    losses = bc_warm_start(
        model,
        ThresholdPolicy(0.9),
        cfg.env_config(backbone),
        n_episodes=64,
        epochs=40,
        backbone=backbone,
    )
    after = evaluate_agent(model, cfg, backbone=backbone, n=32)
    assert losses[-1] < 0.6 * losses[0]
    assert after["forced_commit_rate"] < before["forced_commit_rate"]
    assert after["nfe"] < before["nfe"]


def test_cli_parses_train_ppo_and_requires_a_controller_init():
    args = build_parser().parse_args(
        [
            "train-ppo",
            "--task",
            "qa",
            "--step-cost",
            "0.05",
            "--timesteps",
            "64",
            "--num-envs",
            "4",
            "--budget",
            "6",
            "--init",
            "controller:/nowhere",
            "--algo",
            "maskable",
            "--kind",
            "masked-lm",
            "--dtype",
            "float32",
        ]
    )
    assert args.step_cost == 0.05 and args.budget == 6 and args.init == "controller:/nowhere"
    assert args.kind == "masked-lm" and args.dtype == "float32"
    with pytest.raises(ValueError, match="controller:DIR"):
        _resolve_init("nonsense")


def test_config_validation():
    with pytest.raises(ValueError, match="algo"):
        PPOConfig(algo="a2c")  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="does not divide"):
        PPOConfig(num_envs=3, n_steps=10, batch_size=64)
