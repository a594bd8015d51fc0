"""Decode-engine performance: per-step overhead and batching speed-up.

Usage (embedded backbone, CPU):
    python benchmarks/bench_engine.py
    python benchmarks/bench_engine.py --backbone hf:GSAI-ML/LLaDA-8B-Instruct --device cuda

Prints:
  * engine overhead: mean time per step spent outside the backbone forward (commit logic, feature
    refresh, window update, and the top-1 policy's select) divided by the mean forward time, at
    batch 64 (target <= 10%);
  * batching: decode throughput (generated tokens / s) at batch 64 versus batch 1 (target >= 20x).
"""

from __future__ import annotations

import argparse
import time

import torch

from commit_env.backbones import load_backbone
from commit_env.decoding import DecodeConfig, Decoder, decode
from commit_env.evaluate import sample_examples
from commit_env.policies import TopKPolicy
from commit_env.tasks import get_task


class TimedBackbone:
    """Proxy that accumulates wall time spent inside ``forward``."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, canvas, attention_mask, hidden_layers=None):
        sync(self.inner.device)
        t0 = time.perf_counter()
        out = self.inner.forward(canvas, attention_mask, hidden_layers=hidden_layers)
        sync(self.inner.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def engine_overhead(backbone, prompts, config, repeats):
    timed = TimedBackbone(backbone)
    decoder = Decoder(timed, config)
    policy = TopKPolicy()
    steps, total, forward_seconds, forward_calls = 0, 0.0, 0.0, 0
    for _ in range(repeats):
        state = decoder.start(prompts)
        timed.seconds, timed.calls = 0.0, 0  # count only the forwards inside steps
        t0 = time.perf_counter()
        n = 0
        while not state.all_done:
            state = decoder.step(state, policy.select(state))
            n += 1
        sync(backbone.device)
        total += time.perf_counter() - t0
        steps += n
        forward_seconds += timed.seconds
        forward_calls += timed.calls
    # Every step runs one forward except each row's last (it finishes without one).
    step_time = total / steps
    forward_time = forward_seconds / max(forward_calls, 1)
    overhead = (total - forward_seconds) / steps  # per step, outside the backbone
    return step_time, forward_time, overhead


def throughput(backbone, prompts, config, batch_size):
    t0 = time.perf_counter()
    result = decode(backbone, prompts, TopKPolicy(), config, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return float(result.gen_len.sum()) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--device", default=None)
    parser.add_argument("--task", default="qa")
    parser.add_argument("--gen-length", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    backbone = load_backbone(args.backbone, device=args.device)
    task = get_task(args.task)
    prompts = [e.prompt for e in sample_examples(task, args.batch, seed=0)]
    config = DecodeConfig(gen_length=args.gen_length, eos_stop=False)
    decode(backbone, prompts[:8], TopKPolicy(), config)  # warm-up

    step_time, forward_time, overhead = engine_overhead(backbone, prompts, config, args.repeats)
    tps_1 = throughput(backbone, prompts[:16], config, batch_size=1)
    tps_b = throughput(backbone, prompts, config, batch_size=args.batch)

    print(
        f"backbone={args.backbone} device={backbone.device} G={args.gen_length} "
        f"threads={torch.get_num_threads()}"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| forward time / step (B={args.batch}) | {forward_time * 1e3:.2f} ms |")
    print(f"| engine step time incl. forward (B={args.batch}) | {step_time * 1e3:.2f} ms |")
    print(f"| engine overhead / forward | {overhead / forward_time:.3f} (target <= 0.10) |")
    print(f"| throughput B=1 | {tps_1:.0f} tok/s |")
    print(f"| throughput B={args.batch} | {tps_b:.0f} tok/s |")
    print(f"| batching speed-up | {tps_b / tps_1:.1f}x (target >= 20x) |")


if __name__ == "__main__":
    main()
