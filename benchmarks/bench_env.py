"""Throughput of the token-commitment environments against the bare decode engine.

Measures, with a fixed policy (commit nothing: the engine's top-1 progress guarantee commits one
position per step, so episodes last up to G steps):

* single env (``CommitEnv``, B = 1) steps/s;
* vector env (``CommitVectorEnv``, B = num_envs) env-steps/s (= B x vector steps/s) and the ratio;
* engine-only step time at B = num_envs: ``Decoder.step`` with the same fixed mask, restarting
  finished rows with one batched ``Decoder.start`` + ``replace_rows`` exactly as the vector env
  does (the same forwards, without observations, rewards, scoring or validation), and the ratio
  of the vector env's step time to it. The bare ``Decoder.step`` time on a batch whose finished
  rows are not restarted is printed too (it shrinks as rows finish, so it is a loose bound).

The measurements are interleaved in rounds and each reports its fastest round (the least
disturbed by other processes) and the median round.

CPU, embedded backbone::

    python benchmarks/bench_env.py --num-envs 64 --rounds 5 --seconds 1

Thread study (issue 14): ``--threads-study`` measures the single env's steps/s with 1 and 2 torch
threads, first as the machine is, then with one extra busy process (``yes > /dev/null``, started
here and killed by its pid afterwards) so that the second core is taken::

    python benchmarks/bench_env.py --threads-study --rounds 3 --seconds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Callable

import numpy as np
import torch

from commit_env.backbones import load_backbone
from commit_env.decoding import DecodeConfig, Decoder
from commit_env.decoding.batching import replace_rows
from commit_env.envs import CommitEnv, CommitVectorEnv
from commit_env.evaluate import sample_examples
from commit_env.tasks import get_task


def single_env_stepper(
    kwargs: dict, num_threads: int | None = None
) -> tuple[Callable[[], None], Callable[[], None]]:
    env = CommitEnv(**(kwargs | {"num_threads": num_threads or kwargs.get("num_threads")}))
    env.reset(seed=0)
    action = np.zeros(env.gen_length, dtype=np.int8)

    def step() -> None:
        _, _, terminated, _, _ = env.step(action)
        if terminated:
            env.reset()

    return step, env.close


def vector_env_stepper(
    kwargs: dict, num_envs: int
) -> tuple[Callable[[], None], Callable[[], None], dict[str, float]]:
    venv = CommitVectorEnv(num_envs=num_envs, **kwargs)
    venv.reset(seed=0)
    action = np.zeros((num_envs, venv.gen_length), dtype=np.int8)
    # Time the engine calls made *inside* the env steps: contention from other processes hits
    # both sides of this ratio alike, so it isolates the env's own overhead.
    inside = {"engine": 0.0, "env": 0.0}
    decoder = venv._core.decoder
    for name in ("step", "start"):
        method = getattr(decoder, name)

        def timed(*args, _method=method, **kw):
            t0 = time.perf_counter()
            out = _method(*args, **kw)
            inside["engine"] += time.perf_counter() - t0
            return out

        setattr(decoder, name, timed)

    def step() -> None:
        t0 = time.perf_counter()
        venv.step(action)
        inside["env"] += time.perf_counter() - t0

    return step, venv.close, inside


def engine_steppers(kwargs: dict, num_envs: int) -> tuple[Callable[[], None], Callable[[], float]]:
    backbone = load_backbone(kwargs["backbone"], device=kwargs.get("device"))
    G = kwargs["gen_length"]
    decoder = Decoder(backbone, DecodeConfig(gen_length=G))
    pool = [e.prompt for e in sample_examples(get_task(kwargs["task"]), 512, seed=0)]
    mask = torch.zeros((num_envs, G), dtype=torch.bool, device=decoder.device)
    cursor = 0

    def prompts(n: int) -> list[str]:
        nonlocal cursor
        cursor += n
        return [pool[(cursor - n + i) % len(pool)] for i in range(n)]

    # Same workload as the vector env: finished rows restart at the next step in one start().
    state = decoder.start(prompts(num_envs))
    pending = np.zeros(0, dtype=np.int64)

    def step_with_restarts() -> None:
        nonlocal pending
        was_done = state.done.cpu().numpy().copy()  # on CPU .numpy() aliases the tensor
        decoder.step(state, mask)
        if pending.size:
            fresh = decoder.start(prompts(pending.size))
            replace_rows(state, pending, fresh, pad_token_id=backbone.pad_token_id)
        pending = np.flatnonzero(state.done.cpu().numpy() & ~was_done)

    bare = {"state": decoder.start(prompts(num_envs))}

    def bare_step() -> float:
        if bare["state"].all_done:  # restart outside the timed region
            bare["state"] = decoder.start(prompts(num_envs))
        t0 = time.perf_counter()
        decoder.step(bare["state"], mask)
        return time.perf_counter() - t0

    return step_with_restarts, bare_step


def time_round(step: Callable[[], object], seconds: float, min_iters: int = 5) -> float:
    """Mean seconds per call over one round (``step`` may return its own timed duration)."""
    iters, own, start = 0, 0.0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - start < seconds:
        result = step()
        own += result if isinstance(result, float) else 0.0
        iters += 1
    return (own or (time.perf_counter() - start)) / iters


def threads_study(kwargs: dict, rounds: int, seconds: float, threads: list[int]) -> None:
    """Single-env steps/s per torch thread count, as is and with one extra busy process."""
    print(
        f"backbone={kwargs['backbone']} task={kwargs['task']} G={kwargs['gen_length']} "
        f"cpus={os.cpu_count()} rounds={rounds}x{seconds}s (single env, commit-nothing policy)"
    )
    print("| load | torch threads | steps/s best | steps/s median |")
    print("|---|---|---|---|", flush=True)
    for load in ("as is", "+1 busy process"):
        busy = None
        if load != "as is":
            busy = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)  # noqa: S607
        try:
            for n in threads:
                step, close = single_env_stepper(kwargs, num_threads=n)
                for _ in range(10):
                    step()
                v = [1.0 / time_round(step, seconds) for _ in range(rounds)]
                print(f"| {load} | {n} | {max(v):,.1f} | {statistics.median(v):,.1f} |", flush=True)
                close()
        finally:
            if busy is not None:
                busy.kill()  # by pid: only the process started above
                busy.wait()


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--task", default="qa")
    parser.add_argument("--gen-length", type=int, default=16)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timing round")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the env's default)"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--threads-study",
        action="store_true",
        help="single env steps/s with 1 and 2 threads, as is and with the other core busy",
    )
    return parser.parse_args()


def env_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments shared by the single env, the vector env and the engine steppers."""
    return {
        "task": args.task,
        "backbone": args.backbone,
        "gen_length": args.gen_length,
        "device": args.device,
        "num_threads": args.threads,  # None: the env's default (1 for a small CPU backbone)
    }


def measure_rounds(
    kwargs: dict, num_envs: int, rounds: int, seconds: float
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per call of every stepper, round by round, and the engine time inside the env.

    The steppers are interleaved within each round so that a change in the machine's load hits
    all of them alike.

    Returns:
        ``(times, inside)``: per-round seconds per call by measurement name (single, vector,
        engine, bare), and the vector env's own step time and the engine time inside it.
    """
    single, close_single = single_env_stepper(kwargs)
    vector, close_vector, inside = vector_env_stepper(kwargs, num_envs)
    engine, bare = engine_steppers(kwargs, num_envs)
    benches = {"single": single, "vector": vector, "engine": engine, "bare": bare}
    times: dict[str, list[float]] = {name: [] for name in benches}
    for step in benches.values():  # warm-up
        for _ in range(10):
            step()
    inside.update(engine=0.0, env=0.0)
    for _ in range(rounds):
        for name, step in benches.items():
            times[name].append(time_round(step, seconds))
    close_single()
    close_vector()
    return times, inside


def print_table(
    args: argparse.Namespace, times: dict[str, list[float]], inside: dict[str, float]
) -> None:
    """The best and median round of every measurement and ratio, as a markdown table."""
    B = args.num_envs
    print(
        f"backbone={args.backbone} task={args.task} G={args.gen_length} B={B} "
        f"torch_threads={torch.get_num_threads()} rounds={args.rounds}x{args.seconds}s"
    )
    print("| measurement | best round | median round |")
    print("|---|---|---|")
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}

    def row(label: str, fn: Callable[[dict[str, float]], float], fmt: str) -> None:
        print(f"| {label} | {fn(best):{fmt}} | {fn(med):{fmt}} |")

    row("single env steps/s", lambda t: 1 / t["single"], ",.1f")
    row(f"vector env (B={B}) env-steps/s", lambda t: B / t["vector"], ",.1f")
    row("vector / single env-steps/s", lambda t: t["single"] * B / t["vector"], ".1f")
    row(f"engine step + batched restarts (B={B}) ms", lambda t: t["engine"] * 1e3, ".2f")
    row(f"bare Decoder.step (B={B}) ms", lambda t: t["bare"] * 1e3, ".2f")
    row(f"vector env step (B={B}) ms", lambda t: t["vector"] * 1e3, ".2f")
    row("vector env / engine step time", lambda t: t["vector"] / t["engine"], ".3f")
    row("vector env / bare Decoder.step time", lambda t: t["vector"] / t["bare"], ".3f")
    ratio = inside["env"] / inside["engine"]
    print(f"| vector env step / engine calls inside it (all rounds) | {ratio:.3f} | |")


def main() -> None:
    args = parse_args()
    if args.threads_study:
        kw = {"task": args.task, "backbone": args.backbone, "gen_length": args.gen_length}
        threads_study(kw | {"device": args.device}, args.rounds, args.seconds, [1, 2])
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    times, inside = measure_rounds(env_kwargs(args), args.num_envs, args.rounds, args.seconds)
    print_table(args, times, inside)


if __name__ == "__main__":
    main()
