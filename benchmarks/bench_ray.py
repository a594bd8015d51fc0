"""Ray scale-out: 2 single-threaded workers against one single-threaded process.

Measures, on the embedded backbone:

* trace collection (``collect``) and a heuristic sweep: wall time of the local path in this
  process (1 torch thread) and of :class:`RayExecutor` with N one-CPU workers, once the actors
  are up (cluster and actor start-up are reported separately), and the speed-up;
* per-shard scheduling overhead at the default shard size (one engine batch): one worker, so
  ``wall - sum(shard compute)`` is what Ray, the driver's merge and the writes add, per shard,
  as a fraction of the mean shard compute time.

It also checks that the distributed records equal the local ones (wall times aside).

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

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402
from commit_env.evaluation.bench import _quick_heuristics  # noqa: E402
from commit_env.evaluation.distributed import LocalExecutor, RayExecutor  # noqa: E402
from commit_env.evaluation.sweeps import Setting  # noqa: E402
from commit_env.supervised.collect import CollectConfig  # noqa: E402

from commit_env.traces import TraceDataset  # noqa: E402


def _strip(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


def _rows(path):
    return [
        {k: (v.tobytes() if hasattr(v, "tobytes") else v) for k, v in r.items()}
        for r in TraceDataset(path).iter_records()
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--collect-n", type=int, default=512)
    p.add_argument("--collect-batch", type=int, default=128, help="collect's default")
    p.add_argument("--sweep-n", type=int, default=128)
    p.add_argument("--sweep-batch", type=int, default=64, help="sweep's default")
    p.add_argument("--tasks", default="qa,math")
    p.add_argument("--rounds", type=int, default=1, help="alternating local/Ray rounds")
    args = p.parse_args()
    torch.set_num_threads(1)
    tasks = args.tasks.split(",")
    specs = _quick_heuristics(16)
    settings = [Setting(16, "block:4", None)]
    tmp = tempfile.mkdtemp(prefix="bench_ray_")
    out: dict = {"load_before": os.getloadavg(), "workers": args.workers}

    def collect_cfg(name):
        return CollectConfig(out=f"{tmp}/{name}", n=args.collect_n, batch_size=args.collect_batch)

    p_rounds = args.rounds
    local = LocalExecutor("tiny")
    local.backbone  # noqa: B018 - load outside the timings
    tick = time.perf_counter()
    with RayExecutor("tiny", workers=args.workers, progress=False) as ex:
        pool = ex._get_pool()
        pool.start()
        ex.ray.get([a.backbone_info.remote() for a in pool.actors])
        out["cluster_and_actor_startup_s"] = time.perf_counter() - tick
        # local and Ray alternate, round by round, so a change in the machine's load hits both
        rounds = []
        for r in range(p_rounds):
            row: dict = {"load": os.getloadavg()[0]}
            tick = time.perf_counter()
            local.collect(collect_cfg(f"local{r}"), progress=False)
            row["collect_local_s"] = time.perf_counter() - tick
            tick = time.perf_counter()
            ex.collect(collect_cfg(f"ray{r}"), progress=False)
            row["collect_ray_s"] = time.perf_counter() - tick
            out["collect_shards"] = len(ex.shard_compute_s)
            tick = time.perf_counter()
            local_records = local.sweep(
                tasks, specs, settings, n=args.sweep_n, batch_size=args.sweep_batch, progress=False
            )
            row["sweep_local_s"] = time.perf_counter() - tick
            tick = time.perf_counter()
            ray_records = ex.sweep(
                tasks, specs, settings, n=args.sweep_n, batch_size=args.sweep_batch, progress=False
            )
            row["sweep_ray_s"] = time.perf_counter() - tick
            out["sweep_shards"] = len(ex.shard_compute_s)
            row["collect_speedup"] = row["collect_local_s"] / row["collect_ray_s"]
            row["sweep_speedup"] = row["sweep_local_s"] / row["sweep_ray_s"]
            rounds.append(row)
            print(json.dumps(row), flush=True)
    out["rounds"] = rounds
    for key in ("collect_local_s", "collect_ray_s", "sweep_local_s", "sweep_ray_s"):
        out[key] = sum(r[key] for r in rounds)
    out["collect_speedup"] = out["collect_local_s"] / out["collect_ray_s"]
    out["sweep_speedup"] = out["sweep_local_s"] / out["sweep_ray_s"]
    out["sweep_records_equal"] = _strip(local_records) == _strip(ray_records)
    out["collect_rows_equal"] = _rows(f"{tmp}/local0") == _rows(f"{tmp}/ray0")

    # per-shard overhead: one worker, so wall - sum(compute) is all scheduling and driver work
    with RayExecutor("tiny", workers=1, progress=False) as ex:
        pool = ex._get_pool()
        pool.start()
        ex.ray.get([a.backbone_info.remote() for a in pool.actors])
        tick = time.perf_counter()
        ex.sweep(tasks, specs, settings, n=args.sweep_n, batch_size=args.sweep_batch)
        wall = time.perf_counter() - tick
        compute = ex.shard_compute_s
    shards = len(compute)
    per_shard = (wall - sum(compute)) / shards
    out["overhead"] = {
        "shards": shards,
        "mean_shard_compute_s": sum(compute) / shards,
        "overhead_per_shard_s": per_shard,
        "overhead_fraction": per_shard / (sum(compute) / shards),
    }
    out["load_after"] = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
