"""Ray scale-out: 2 single-threaded workers against one single-threaded process.

Measures, on the embedded backbone:

* trace collection (``collect``) and a heuristic sweep: wall time of the local path in this
  process (1 torch thread) and of :class:`RayExecutor` with N one-CPU workers, once the actors
  are up (cluster and actor start-up are reported separately), and the speed-up;
* per-shard scheduling overhead at the default shard size (one engine batch): one worker, so
  ``wall - sum(shard compute)`` is what Ray, the driver's merge and the writes add, per shard,
  as a fraction of the mean shard compute time.

It also checks that the distributed records equal the local ones (wall times aside).

Collection defaults to ``qa,math``, like the sweep: ``code`` scoring runs each completion's tests
in sandboxed subprocesses that the local path already spreads over both cores (a thread pool), so
a collection that includes ``code`` is mostly that parallel scoring and cannot show the decode's
scale-out (``--collect-tasks qa,math,code`` measures it anyway).

Usage::

    nice -n 10 python benchmarks/bench_ray.py            # about 5 minutes on 2 cores
    python benchmarks/bench_ray.py --workers 4 --collect-n 1024
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402
from commit_env.evaluation.bench import _quick_heuristics  # noqa: E402
from commit_env.evaluation.distributed import LocalExecutor, RayExecutor  # noqa: E402
from commit_env.evaluation.sweeps import PolicySpec, Setting  # noqa: E402
from commit_env.supervised.collect import CollectConfig  # noqa: E402

from commit_env.traces import TraceDataset  # noqa: E402


def _strip(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


def _rows(path):
    return [
        {k: (v.tobytes() if hasattr(v, "tobytes") else v) for k, v in r.items()}
        for r in TraceDataset(path).iter_records()
    ]


def parse_args() -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--collect-n", type=int, default=512)
    p.add_argument("--collect-batch", type=int, default=128, help="collect's default")
    p.add_argument("--sweep-n", type=int, default=128)
    p.add_argument("--sweep-batch", type=int, default=64, help="sweep's default")
    p.add_argument("--tasks", default="qa,math", help="sweep tasks")
    p.add_argument("--collect-tasks", default="qa,math", help="collection tasks")
    p.add_argument("--rounds", type=int, default=1, help="alternating local/Ray rounds")
    return p.parse_args()


@dataclass
class SweepWorkload:
    """The heuristic sweep every path runs: the same tasks, policies, settings and sizes."""

    tasks: list[str]
    specs: list[PolicySpec]
    settings: list[Setting]
    n: int
    batch_size: int

    def run(self, executor: LocalExecutor | RayExecutor, **kwargs: Any) -> list[dict]:
        return executor.sweep(
            self.tasks, self.specs, self.settings, n=self.n, batch_size=self.batch_size, **kwargs
        )


@dataclass
class RoundResult:
    """One local/Ray round: the printed timings row, the shard counts and the sweep records."""

    row: dict
    collect_shards: int
    sweep_shards: int
    local_records: list[dict]
    ray_records: list[dict]


def start_workers(ex: RayExecutor) -> None:
    """Start the actor pool and wait until every actor has loaded its backbone."""
    pool = ex._get_pool()
    pool.start()
    ex.ray.get([a.backbone_info.remote() for a in pool.actors])


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """``fn(*args, **kwargs)``'s wall time in seconds and its result."""
    tick = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - tick, result


def run_round(
    r: int,
    local: LocalExecutor,
    ex: RayExecutor,
    collect_config: Callable[[str], CollectConfig],
    workload: SweepWorkload,
) -> RoundResult:
    """Collect and sweep once locally and once on Ray; traces go to ``local{r}`` / ``ray{r}``."""
    row: dict = {"load": os.getloadavg()[0]}
    row["collect_local_s"], _ = timed(local.collect, collect_config(f"local{r}"), progress=False)
    row["collect_ray_s"], _ = timed(ex.collect, collect_config(f"ray{r}"), progress=False)
    collect_shards = len(ex.shard_compute_s)  # read now: the sweep below resets it
    row["sweep_local_s"], local_records = timed(workload.run, local, progress=False)
    row["sweep_ray_s"], ray_records = timed(workload.run, ex, progress=False)
    row["collect_speedup"] = row["collect_local_s"] / row["collect_ray_s"]
    row["sweep_speedup"] = row["sweep_local_s"] / row["sweep_ray_s"]
    return RoundResult(row, collect_shards, len(ex.shard_compute_s), local_records, ray_records)


def scale_out(
    args: argparse.Namespace,
    collect_config: Callable[[str], CollectConfig],
    workload: SweepWorkload,
    out: dict,
) -> RoundResult:
    """The local path against ``--workers`` Ray workers, round by round; fills ``out``.

    Returns:
        The last round (its sweep records are compared between the two paths).
    """
    local = LocalExecutor("tiny")
    local.backbone  # noqa: B018 - load outside the timings
    tick = time.perf_counter()
    with RayExecutor("tiny", workers=args.workers, progress=False) as ex:
        start_workers(ex)
        out["cluster_and_actor_startup_s"] = time.perf_counter() - tick
        # local and Ray alternate, round by round, so a change in the machine's load hits both
        rounds = []
        for r in range(args.rounds):
            result = run_round(r, local, ex, collect_config, workload)
            out["collect_shards"] = result.collect_shards
            out["sweep_shards"] = result.sweep_shards
            rounds.append(result.row)
            print(json.dumps(result.row), flush=True)
    out["rounds"] = rounds
    return result


def add_totals(out: dict) -> None:
    """Sum the rounds' times into ``out`` and add the overall speed-ups."""
    for key in ("collect_local_s", "collect_ray_s", "sweep_local_s", "sweep_ray_s"):
        out[key] = sum(r[key] for r in out["rounds"])
    out["collect_speedup"] = out["collect_local_s"] / out["collect_ray_s"]
    out["sweep_speedup"] = out["sweep_local_s"] / out["sweep_ray_s"]


def shard_overhead(workload: SweepWorkload) -> dict:
    """Per-shard scheduling and driver cost of a sweep on one Ray worker.

    With one worker nothing runs in parallel, so ``wall - sum(shard compute)`` is all
    scheduling and driver work.
    """
    with RayExecutor("tiny", workers=1, progress=False) as ex:
        start_workers(ex)
        wall, _ = timed(workload.run, ex)
        compute = ex.shard_compute_s
    shards = len(compute)
    per_shard = (wall - sum(compute)) / shards
    return {
        "shards": shards,
        "mean_shard_compute_s": sum(compute) / shards,
        "overhead_per_shard_s": per_shard,
        "overhead_fraction": per_shard / (sum(compute) / shards),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    workload = SweepWorkload(
        tasks=args.tasks.split(","),
        specs=_quick_heuristics(16),
        settings=[Setting(16, "block:4", None)],
        n=args.sweep_n,
        batch_size=args.sweep_batch,
    )
    tmp = tempfile.mkdtemp(prefix="bench_ray_")
    out: dict = {"load_before": os.getloadavg(), "workers": args.workers}

    def collect_config(name: str) -> CollectConfig:
        return CollectConfig(
            out=f"{tmp}/{name}",
            n=args.collect_n,
            batch_size=args.collect_batch,
            tasks=tuple(args.collect_tasks.split(",")),
        )

    last = scale_out(args, collect_config, workload, out)
    add_totals(out)
    out["sweep_records_equal"] = _strip(last.local_records) == _strip(last.ray_records)
    out["collect_rows_equal"] = _rows(f"{tmp}/local0") == _rows(f"{tmp}/ray0")
    out["overhead"] = shard_overhead(workload)
    out["load_after"] = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
