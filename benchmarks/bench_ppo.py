"""PPO throughput on the batched env: env-steps/s versus num_envs, and MaskablePPO's per-step cost.

CPU, embedded tiny backbone (a few minutes on 2 cores)::

    python benchmarks/bench_ppo.py                      # num_envs 1 8 32 64, then PPO vs Maskable
    python benchmarks/bench_ppo.py --num-envs 8 32 --skip-maskable

"env-steps/s" counts transitions (one step of one slot) over the whole ``learn`` call, so PPO's
update epochs are included; "env only" steps the same env with the confidence-0.9 rule and no
learning, to separate the backbone's cost from the agent's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from commit_env.agents.policy_net import PerPositionMaskablePolicy, PerPositionPolicy
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecMonitor

from commit_env.backbones import load_backbone
from commit_env.envs import make_sb3_vec_env


def env_only(num_envs: int, steps: int, **env_kwargs) -> float:
    venv = make_sb3_vec_env(num_envs, seed=0, **env_kwargs)
    obs = venv.reset()
    tick = time.perf_counter()
    for _ in range(max(1, steps // num_envs)):
        action = ((obs["eligible"] > 0.5) & (obs["conf"] > 0.9)).astype(np.float32)
        obs, _, _, _ = venv.step(action)
    rate = max(1, steps // num_envs) * num_envs / (time.perf_counter() - tick)
    venv.close()
    return rate


def ppo_rate(num_envs: int, steps: int, *, maskable: bool = False, **env_kwargs) -> float:
    venv = VecMonitor(make_sb3_vec_env(num_envs, seed=0, **env_kwargs))
    n_steps = max(8, 256 // num_envs)
    kwargs = dict(
        n_steps=n_steps,
        batch_size=min(256, n_steps * num_envs),
        n_epochs=4,
        gamma=1.0,
        seed=0,
        verbose=0,
    )
    if maskable:
        from sb3_contrib import MaskablePPO

        model = MaskablePPO(PerPositionMaskablePolicy, venv, **kwargs)
    else:
        model = PPO(PerPositionPolicy, venv, **kwargs)
    total = max(steps, 2 * n_steps * num_envs)
    tick = time.perf_counter()
    model.learn(total_timesteps=total)
    rate = model.num_timesteps / (time.perf_counter() - tick)
    venv.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--steps", type=int, default=1024, help="transitions per measurement")
    parser.add_argument("--task", default="qa")
    parser.add_argument("--gen-length", type=int, default=16)
    parser.add_argument("--window", default="block:4")
    parser.add_argument("--maskable-gen-length", type=int, default=32)
    parser.add_argument("--maskable-num-envs", type=int, default=16)
    parser.add_argument("--skip-maskable", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # small nets: 1 thread beats 2 on a shared 2-core box
    backbone = load_backbone("tiny")  # held so every env shares it
    env = dict(task=args.task, backbone=backbone, gen_length=args.gen_length, window=args.window)

    print(
        f"PPO (PerPositionPolicy), {args.task}, G={args.gen_length}, {args.window}, "
        f"torch threads={args.threads}"
    )
    print("| num_envs | PPO env-steps/s | env only steps/s | PPO / env only |")
    print("|---|---|---|---|")
    for n in args.num_envs:
        steps = max(args.steps // 4, 256) if n == 1 else args.steps
        ppo = ppo_rate(n, steps, **env)
        raw = env_only(n, steps, **env)
        print(f"| {n} | {ppo:.1f} | {raw:.1f} | {ppo / raw:.2f} |", flush=True)

    if not args.skip_maskable:
        G, n = args.maskable_gen_length, args.maskable_num_envs
        env = dict(task=args.task, backbone=backbone, gen_length=G, window="block:8")
        ppo = ppo_rate(n, args.steps, **env)
        mask = ppo_rate(n, args.steps, maskable=True, **env)
        print(f"\nPPO vs MaskablePPO, same per-position net, G={G}, num_envs={n}, block:8")
        print("| algo | env-steps/s | ms per env-step |")
        print("|---|---|---|")
        print(f"| PPO | {ppo:.1f} | {1000 / ppo:.2f} |")
        print(f"| MaskablePPO | {mask:.1f} | {1000 / mask:.2f} |")
        print(f"MaskablePPO is {ppo / mask:.1f}x slower per step")


if __name__ == "__main__":
    main()
