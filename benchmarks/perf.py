"""The numbers the issues promise, in one table.

Usage (embedded backbone, CPU; about 2-3 minutes):
    python benchmarks/perf.py
    python benchmarks/perf.py --controller runs/controller/best --traces traces/round0

Rows: engine overhead per step / backbone forward (B=64), decode batching speed-up (B=64 vs B=1),
vector-env speed-up (B=64 vs the single env) and env overhead vs the engine, controller forward /
backbone forward (B=64), trace bytes per position-step on disk. Without ``--controller`` and
``--traces`` a small collection and a one-epoch controller are made in a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import bench_engine  # noqa: E402
import bench_env  # noqa: E402
from commit_env.evaluation.sweeps import Setting  # noqa: E402
from controller_study import forward_cost  # noqa: E402

from commit_env.backbones import load_backbone  # noqa: E402
from commit_env.decoding import DecodeConfig  # noqa: E402
from commit_env.evaluate import sample_examples  # noqa: E402
from commit_env.tasks import get_task  # noqa: E402
from commit_env.traces import TraceDataset  # noqa: E402


def env_ratios(B: int, rounds: int = 3, seconds: float = 1.0) -> tuple[float, float]:
    kwargs = {"task": "qa", "backbone": "tiny", "gen_length": 16, "device": None}
    single, close_single = bench_env.single_env_stepper(kwargs)
    vector, close_vector, _ = bench_env.vector_env_stepper(kwargs, B)
    engine, _ = bench_env.engine_steppers(kwargs, B)
    for step in (single, vector, engine):
        for _ in range(5):
            step()
    t = {"single": [], "vector": [], "engine": []}
    for _ in range(rounds):
        t["single"].append(bench_env.time_round(single, seconds))
        t["vector"].append(bench_env.time_round(vector, seconds))
        t["engine"].append(bench_env.time_round(engine, seconds))
    close_single()
    close_vector()
    med = {k: statistics.median(v) for k, v in t.items()}
    return med["single"] * B / med["vector"], med["vector"] / med["engine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controller", default=None)
    parser.add_argument("--traces", default=None)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    B = args.batch
    backbone = load_backbone("tiny")
    prompts = [e.prompt for e in sample_examples(get_task("qa"), B, seed=0)]
    config = DecodeConfig(gen_length=16, eos_stop=False)
    bench_engine.throughput(backbone, prompts[:8], config, batch_size=8)  # warm-up
    _, forward_time, overhead = bench_engine.engine_overhead(backbone, prompts, config, 3)
    tps_1 = bench_engine.throughput(backbone, prompts[:16], config, batch_size=1)
    tps_b = bench_engine.throughput(backbone, prompts, config, batch_size=B)
    env_speedup, env_overhead = env_ratios(B)

    tmp = None
    if args.controller is None or args.traces is None:
        from commit_env.supervised.collect import CollectConfig, collect_traces
        from commit_env.supervised.train import TrainConfig, train

        tmp = tempfile.TemporaryDirectory()
        traces = str(Path(tmp.name) / "traces")
        collect_traces(CollectConfig(out=traces, n=64), backbone=backbone, progress=False)
        train(
            TrainConfig(
                traces=(traces,),
                out=str(Path(tmp.name) / "ctrl"),
                epochs=1,
                rollout_n=0,
                progress=False,
            )
        )
        args.traces = args.traces or traces
        args.controller = args.controller or str(Path(tmp.name) / "ctrl" / "best")
    ratio, t_ctrl, t_bb = forward_cost(backbone, Path(args.controller), Setting(16, "block:4"))
    trace_bytes = TraceDataset(args.traces).bytes_per_position_step()

    print(f"device={backbone.device} torch_threads={torch.get_num_threads()} B={B} G=16")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(
        f"| engine overhead per step / backbone forward | {overhead / forward_time:.3f} | <= 0.10 |"
    )
    print(f"| decode throughput B={B} / B=1 | {tps_b / tps_1:.1f}x | >= 20x |")
    print(f"| vector env env-steps/s B={B} / single env | {env_speedup:.1f}x | >= 20x |")
    print(f"| vector env step / engine step (B={B}) | {env_overhead:.3f} | <= 1.10 |")
    print(f"| controller forward / backbone forward (B={B}) | {ratio:.3f} | <= 0.15 |")
    print(f"| trace bytes per position-step (disk) | {trace_bytes:.1f} | <= 100 |")
    print(
        f"(forward {forward_time * 1e3:.1f} ms, controller {t_ctrl * 1e3:.2f} ms, "
        f"backbone w/ hidden {t_bb * 1e3:.2f} ms; throughput {tps_1:.0f} vs {tps_b:.0f} tok/s)"
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
