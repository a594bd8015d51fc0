"""PPO with ``MultiInputPolicy`` on ``gym.make("commit_env/TokenCommit-v0")``, no glue code.

CPU, embedded backbone (about a minute)::

    python examples/ppo_gym_make.py --total-timesteps 2048
"""

from __future__ import annotations

import argparse

import gymnasium as gym
from stable_baselines3 import PPO

import commit_env  # noqa: F401  (registers commit_env/TokenCommit-v0)


def main(
    total_timesteps: int = 2048,
    *,
    task: str = "qa",
    backbone: str = "tiny",
    gen_length: int = 16,
    seed: int = 0,
) -> PPO:
    env = gym.make(
        "commit_env/TokenCommit-v0",
        task=task,
        backbone=backbone,
        gen_length=gen_length,
        step_cost=0.01,
    )
    # Episodes are short with a terminal reward: gamma ~ 1, small rollouts.
    n_steps = min(256, max(16, total_timesteps))
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=n_steps,
        batch_size=min(64, n_steps),
        gamma=1.0,
        seed=seed,
        verbose=0,
    )
    model.learn(total_timesteps=total_timesteps)
    env.close()
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-timesteps", type=int, default=2048)
    parser.add_argument("--task", default="qa")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--gen-length", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(
        args.total_timesteps,
        task=args.task,
        backbone=args.backbone,
        gen_length=args.gen_length,
        seed=args.seed,
    )
