"""MaskablePPO on the SB3 vector adapter: N slots, one batched backbone forward per step.

CPU, embedded backbone (about a minute)::

    python examples/maskable_ppo_vec.py --num-envs 16 --total-timesteps 4096
"""

from __future__ import annotations

import argparse

from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import VecMonitor

from commit_env.envs import make_sb3_vec_env


def main(
    total_timesteps: int = 4096,
    *,
    num_envs: int = 16,
    task: str = "qa",
    backbone: str = "tiny",
    gen_length: int = 16,
    seed: int = 0,
) -> MaskablePPO:
    venv = make_sb3_vec_env(
        num_envs, seed=seed, task=task, backbone=backbone, gen_length=gen_length, step_cost=0.01
    )
    # VecMonitor provides info["episode"] (rollout/ep_rew_mean); success rate comes from
    # info["is_success"], which the env sets on the final step.
    venv = VecMonitor(venv, info_keywords=("is_success", "nfe"))
    n_steps = min(64, max(8, total_timesteps // num_envs))
    model = MaskablePPO(
        "MultiInputPolicy",
        venv,
        n_steps=n_steps,
        batch_size=min(256, n_steps * num_envs),
        gamma=1.0,
        seed=seed,
        verbose=0,
    )
    model.learn(total_timesteps=total_timesteps)
    venv.close()
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-timesteps", type=int, default=4096)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--task", default="qa")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--gen-length", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(
        args.total_timesteps,
        num_envs=args.num_envs,
        task=args.task,
        backbone=args.backbone,
        gen_length=args.gen_length,
        seed=args.seed,
    )
