"""Plain SB3 PPO from scratch on the batched env with the threshold action and shaping.

The three issue-14 env options, without any commit-env training code: ``action_mode="threshold"``
(one confidence threshold per step; "commit nothing" cannot be expressed), potential-based
``shaping`` (episode returns unchanged) and the ``"conflict"`` observation group.

CPU, embedded backbone (a minute or two)::

    python examples/ppo_from_scratch.py --total-timesteps 4096
    tensorboard --logdir runs/example_scratch
"""

from __future__ import annotations

import argparse

from commit_env.agents.callbacks import DecodeStatsCallback
from commit_env.agents.policy_net import PerPositionMlpPolicy
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecMonitor

from commit_env.envs import make_sb3_vec_env


def main(total_timesteps: int = 4096, *, task: str = "qa", step_cost: float = 0.02) -> PPO:
    venv = VecMonitor(
        make_sb3_vec_env(
            16,
            seed=0,
            task=task,
            step_cost=step_cost,
            action_mode="threshold",
            shaping=1.0,  # gamma below is 1: every episode's shaping terms sum to 0
            features=("confidence", "history", "position", "global", "conflict"),
        )
    )
    model = PPO(
        PerPositionMlpPolicy,  # MultiInputPolicy on per-position features (token ids left out)
        venv,
        n_steps=32,
        batch_size=256,
        gamma=1.0,
        learning_rate=1e-3,
        policy_kwargs={"log_std_init": -0.5},
        tensorboard_log="runs/example_scratch",
        seed=0,
    )
    model.learn(total_timesteps, callback=DecodeStatsCallback(step_cost=step_cost))
    venv.close()
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-timesteps", type=int, default=4096)
    parser.add_argument("--task", default="qa")
    parser.add_argument("--step-cost", type=float, default=0.02)
    args = parser.parse_args()
    main(args.total_timesteps, task=args.task, step_cost=args.step_cost)
