"""Ray scale-out on a real local cluster: equality with the local path, retries, resume."""

from __future__ import annotations

import json
import os
import sys

import pytest

ray = pytest.importorskip("ray")

from commit_env.evaluation.distributed import (  # noqa: E402
    LocalExecutor,
    RayExecutor,
    ShardFailedError,
    example_ranges,
    start_ray,
)
from commit_env.evaluation.io import append_jsonl_atomic, read_jsonl  # noqa: E402
from commit_env.evaluation.sweeps import (  # noqa: E402
    PolicySpec,
    Setting,
    heuristic_grid,
    record_key,
)
from commit_env.supervised.collect import CollectConfig  # noqa: E402

from commit_env.decoding import DecodeSetting  # noqa: E402
from commit_env.traces import TraceDataset  # noqa: E402

N, BATCH = 12, 4
TASKS = ["qa", "math"]
SETTINGS = [Setting(16, "block:4", None), Setting(16, "full", 6)]
# greedy, the seeded-random score (batch-dependent: needs batch-aligned shards) and the oracle
SPECS = [
    s
    for s in heuristic_grid(16)
    if s.label in ("threshold(threshold=0.9)", "topk(score=random)", "oracle()", "eb(gamma=0.1)")
]
# a factory-built (learned-style) policy that cannot run in one setting: skipped by both paths
SPECS.append(
    PolicySpec(
        "custom",
        "custom",
        (("k", 2),),
        factory=lambda config: None if config.step_budget else _topk2(),
    )
)


def _topk2():
    from commit_env.policies import make_policy

    return make_policy("topk", k=2)


def _strip(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local cluster of 2 CPUs for the module."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the custom factory below lives in this test module, which workers cannot import
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    start_ray(
        ray, num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def executor(cluster):
    """One executor for the equality and resume tests (actor start-up is the slow part)."""
    with RayExecutor("tiny", workers=2, cpus_per_worker=0.5, progress=False) as ex:
        yield ex


@pytest.fixture(scope="module")
def local_records():
    return LocalExecutor("tiny").sweep(
        TASKS, SPECS, SETTINGS, n=N, batch_size=BATCH, progress=False
    )


def _collect_cfg(out, **kw):
    return CollectConfig(
        out=str(out),
        tasks=("qa", "math"),
        n=10,
        seed=3,
        setting=DecodeSetting(16, "block:4", None),
        batch_size=BATCH,
        shard_traces=3,  # flushes fall mid-batch
        hidden_features=4,
        **kw,
    )


def _dataset_rows(path):
    ds = TraceDataset(path)
    rows = [
        {k: (v.tobytes() if hasattr(v, "tobytes") else v) for k, v in r.items()}
        for r in ds.iter_records()
    ]
    return rows, ds.manifest


def test_example_ranges_align_with_batches():
    assert example_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert example_ranges(10, 4, shard_size=5) == [(0, 8), (8, 10)]
    assert example_ranges(10, 4, start=6) == [(6, 10)]
    with pytest.raises(ValueError, match="batch_size"):
        example_ranges(10, 0)


def test_sweep_equals_local_and_writes_once(tmp_path, local_records, executor):
    path = tmp_path / "results.jsonl"
    records = executor.sweep(
        TASKS,
        SPECS,
        SETTINGS,
        n=N,
        batch_size=BATCH,
        on_record=lambda r: append_jsonl_atomic(path, r),
        progress=False,
    )
    # every job x batch-aligned range is one shard; the skipped custom jobs still ran
    assert len(executor.shard_compute_s) == len(TASKS) * len(SETTINGS) * len(SPECS) * (N // BATCH)
    assert len(local_records) == len(TASKS) * len(SETTINGS) * len(SPECS) - len(TASKS)
    assert _strip(records) == _strip(local_records)  # same order, same per-example scores
    assert _strip(read_jsonl(path)) == _strip(local_records)


def test_eval_with_sampling_equals_local(executor):
    from commit_env.backbones import load_backbone
    from commit_env.decoding import DecodeConfig
    from commit_env.evaluate import evaluate_policy
    from commit_env.policies import make_policy
    from commit_env.tasks import get_task

    config = DecodeConfig(gen_length=16, window="block:4", temperature=0.8, seed=5)
    local = evaluate_policy(
        load_backbone("tiny"),
        get_task("qa"),
        make_policy("threshold", threshold=0.7),
        config,
        n=10,
        seed=2,
        batch_size=BATCH,
    )
    spec = PolicySpec("threshold", "threshold", (("threshold", 0.7),))
    dist = executor.evaluate("qa", spec, config, n=10, seed=2, batch_size=BATCH, progress=False)
    assert dist.scores.tolist() == local.scores.tolist()
    assert dist.result.tokens.tolist() == local.result.tokens.tolist()
    assert _strip([dist.summary(seed=2)]) == _strip([local.summary(seed=2)])


def test_collect_equals_local_and_resumes(tmp_path, monkeypatch, executor):
    local_dir, ray_dir = tmp_path / "local", tmp_path / "ray"
    LocalExecutor("tiny").collect(_collect_cfg(local_dir), progress=False)
    expected_rows, expected_manifest = _dataset_rows(local_dir)

    from commit_env.traces import TraceWriter

    original = TraceWriter.add_trace
    calls = {"n": 0}

    def interrupted(self, trace, steps):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # the driver dies mid-run
        original(self, trace, steps)

    monkeypatch.setattr(TraceWriter, "add_trace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        executor.collect(_collect_cfg(ray_dir), progress=False)
    monkeypatch.setattr(TraceWriter, "add_trace", original)
    assert json.loads((ray_dir / "manifest.json").read_text())["examples_done"] == 3
    summary = executor.collect(_collect_cfg(ray_dir), progress=False)
    assert summary["traces"] == 10
    rows, manifest = _dataset_rows(ray_dir)
    assert rows == expected_rows
    assert manifest["meta"] == expected_manifest["meta"]
    assert manifest["examples_done"] == expected_manifest["examples_done"]
    assert manifest["steps"] == expected_manifest["steps"]


def test_sweep_resumes_after_interruption(tmp_path, local_records, executor):
    path = tmp_path / "results.jsonl"

    def stop_after_three(record):
        append_jsonl_atomic(path, record)
        if len(read_jsonl(path)) == 3:
            raise KeyboardInterrupt

    specs = SPECS[:2]
    with pytest.raises(KeyboardInterrupt):
        executor.sweep(
            TASKS,
            specs,
            SETTINGS,
            n=N,
            batch_size=BATCH,
            on_record=stop_after_three,
            progress=False,
        )
    done = {record_key(r) for r in read_jsonl(path)}
    executor.sweep(
        TASKS,
        specs,
        SETTINGS,
        n=N,
        batch_size=BATCH,
        done=done,
        on_record=lambda r: append_jsonl_atomic(path, r),
        progress=False,
    )
    expected = [r for r in local_records if r["params_label"] in {s.label for s in specs}]
    assert _strip(read_jsonl(path)) == _strip(expected)


def test_killed_worker_is_retried_without_duplicates(tmp_path, local_records):
    marker = tmp_path / "killed"
    path = tmp_path / "results.jsonl"
    specs = SPECS[:2]
    with RayExecutor(
        "tiny", workers=2, cpus_per_worker=0.5, progress=False, fault=("exit_once", str(marker))
    ) as ex:
        ex.sweep(
            ["qa"],
            specs,
            SETTINGS[:1],
            n=N,
            batch_size=BATCH,
            on_record=lambda r: append_jsonl_atomic(path, r),
            progress=False,
        )
    assert marker.exists()  # a worker really died (os._exit) on its first shard
    written = read_jsonl(path)
    assert len({record_key(r) for r in written}) == len(written) == 2
    expected = [
        r
        for r in local_records
        if r["task"] == "qa"
        and r["window"] == "block:4"
        and r["params_label"] in {s.label for s in specs}
    ]
    assert _strip(written) == _strip(expected)


def test_repeated_failure_ends_with_one_line_error(tmp_path):
    path = tmp_path / "results.jsonl"
    with RayExecutor(
        "tiny", workers=1, cpus_per_worker=0.5, progress=False, max_retries=1, fault=("raise", None)
    ) as ex:
        with pytest.raises(ShardFailedError, match=r"failed 2 times") as info:
            ex.sweep(
                ["qa"],
                SPECS[:1],
                SETTINGS[:1],
                n=N,
                batch_size=BATCH,
                on_record=lambda r: append_jsonl_atomic(path, r),
                progress=False,
            )
    message = str(info.value)
    assert "\n" not in message
    assert "task=qa" in message and "examples " in message and "injected" in message
    assert not path.exists()


def test_bad_worker_count_is_refused():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        RayExecutor("tiny", workers=0)


def test_reduced_bench_records_equal_local(tmp_path, executor):
    from commit_env.evaluation.bench import BenchConfig, run_bench

    cfg = BenchConfig.preset(
        "quick",
        backbone="tiny",  # the executor's backbone
        tasks=("qa",),
        n=8,
        batch_size=BATCH,
        collect_n=16,
        controller_epochs=1,
        ppo_timesteps=0,
        remask_n=0,
        window="full",
        grid=((1, "full", 2),),
        progress=False,
    )
    import dataclasses

    run_bench(dataclasses.replace(cfg, out=str(tmp_path / "local")))
    run_bench(dataclasses.replace(cfg, out=str(tmp_path / "ray")), executor=executor)
    local = read_jsonl(tmp_path / "local" / "results.jsonl")
    dist = read_jsonl(tmp_path / "ray" / "results.jsonl")
    assert {r["policy"] for r in dist} >= {"controller", "oracle", "threshold"}
    assert _strip(dist) == _strip(local)


@pytest.mark.parametrize("command", ["collect", "sweep", "eval", "bench"])
def test_cli_accepts_ray_options(command):
    from commit_env.evaluation.cli import build_parser

    parser = build_parser()
    assert parser.parse_args([command]).ray is None  # local by default
    args = parser.parse_args([command, "--ray", "--workers", "3", "--gpus-per-worker", "0.5"])
    assert (args.ray, args.workers, args.gpus_per_worker) == ("", 3, 0.5)
    assert parser.parse_args([command, "--ray", "auto"]).ray == "auto"
