"""Scale-out on Ray: sweeps, evaluation and trace collection across processes, GPUs and machines.

Work is split into deterministic *shards*: a sweep job (task x setting x policy) times a range of
its seeded examples, or a range of a collection's examples. Shard ranges are aligned to the local
path's engine batches (``batch_size`` rows starting at multiples of ``batch_size``), and every
shard decodes with the same per-row seeds as the local run, so a shard's rows are bit-for-bit the
rows the local loop produces, however the shards are spread.

Each Ray actor (:class:`ShardRunner`) loads the backbone once from a
:class:`~commit_env.backbones.spec.BackboneSpec` and serves many shards. Only the driver writes:
sweep records go through the same ``on_record`` callback (``append_jsonl_atomic``) and collection
through the same :class:`~commit_env.traces.TraceWriter` as the local path, in the local order, so
nothing is written twice and an interrupted run resumes from what is on disk.

A shard whose worker dies or raises is put back in the queue and retried on another worker (a dead
actor is replaced by a fresh one); after ``max_retries`` retries the run stops with
:class:`ShardFailedError`, a one-line message naming the shard.

Usage::

    from commit_env.evaluation.distributed import RayExecutor
    with RayExecutor("tiny", workers=2) as ex:          # a local Ray cluster
        records = ex.sweep(["qa"], policies, settings, n=256)
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from commit_env.evaluation.sweeps import (
    PolicySpec,
    Setting,
    base_record,
    finish_record,
    policy_for_job,
    record_key,
    run_sweep,
    sweep_jobs,
)

from commit_env.backbones.spec import BackboneLike, BackboneSpec, resolve_backbone
from commit_env.decoding import DecodeConfig, DecodeResult, decode
from commit_env.errors import CommitEnvError, DependencyNotInstalled
from commit_env.evaluate import PolicyEval, sample_examples, score_completions
from commit_env.tasks import get_task

__all__ = [
    "LocalExecutor",
    "add_ray_arguments",
    "ray_counterpart",
    "RayExecutor",
    "ShardFailedError",
    "ShardRunner",
    "SweepJob",
    "example_ranges",
    "start_ray",
    "merge_results",
]


#: Decode state fields concatenated row-wise when shards are merged.
class ShardFailedError(CommitEnvError, RuntimeError):
    """A shard failed on every attempt; the message names the shard and the last error."""


def _import_ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline clusters: no usage report
    try:
        import ray
    except ImportError as err:
        raise DependencyNotInstalled(
            "distributed runs need Ray: pip install 'commit-env[ray]'"
        ) from err
    return ray


def start_ray(ray: Any, attempts: int = 3, **kwargs: Any) -> None:
    """``ray.init(**kwargs)``, retried when a local node times out starting (busy machines).

    Ray waits a fixed 30 s for a new local node to register; on an overloaded machine that can
    fail although the node would come up.

    Args:
        ray: The ``ray`` module.
        attempts: Tries in all.
        **kwargs: Passed to ``ray.init``.
    """
    for attempt in range(attempts):
        try:
            ray.init(**kwargs)
            return
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception here
            if "timed out during startup" not in str(err) or attempt == attempts - 1:
                raise
            ray.shutdown()


def example_ranges(
    n: int, batch_size: int, shard_size: int | None = None, start: int = 0
) -> list[tuple[int, int]]:
    """Shard example ranges aligned to the local path's engine batches.

    Args:
        n: Examples in total.
        batch_size: Rows per engine batch (the local loop's chunking).
        shard_size: Examples per shard, rounded up to a multiple of ``batch_size``
            (default: one batch per shard).
        start: First example (a multiple of ``batch_size`` keeps the local batches).

    Returns:
        ``[(lo, hi), ...]`` covering ``[start, n)``.

    Raises:
        ValueError: On ``batch_size < 1`` or ``shard_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    step = batch_size * max(1, -(-(shard_size or batch_size) // batch_size))
    return [(lo, min(n, lo + step)) for lo in range(start, n, step)]


def merge_results(parts: Sequence[DecodeResult]) -> DecodeResult:
    """Concatenate the decode results of consecutive example ranges (wall times add up).

    Args:
        parts: Results in example order.

    Returns:
        One result whose rows are the parts' rows, in order.
    """
    if len(parts) == 1:
        return parts[0]
    # every per-row tensor field, so accounting added to DecodeResult is merged too
    names = [
        f.name
        for f in dataclasses.fields(DecodeResult)
        if isinstance(getattr(parts[0], f.name), torch.Tensor)
    ]
    rows = {name: torch.cat([getattr(p, name) for p in parts]) for name in names}
    return dataclasses.replace(
        parts[0],
        **rows,
        texts=[t for p in parts for t in p.texts],
        wall_time=sum(p.wall_time for p in parts),
        trace=[c for p in parts for c in p.trace],
    )


@dataclass(frozen=True)
class SweepJob:
    """One (task, setting, policy) evaluation, by value (what a worker needs to run its shards).

    Attributes:
        task: Task name.
        setting: The decode setting.
        spec: The policy spec (learned policies' factories travel pickled).
        config: Decode config override (``None``: ``setting.config()``; ``eval`` passes its
            temperature and seed here).
    """

    task: str
    setting: Setting
    spec: PolicySpec
    config: DecodeConfig | None = None

    def decode_config(self) -> DecodeConfig:
        """The config the job decodes with (before the policy adjusts it)."""
        return self.setting.config() if self.config is None else self.config


class ShardRunner:
    """One worker: loads the backbone once, then runs sweep and collection shards.

    Runs inside a Ray actor (:class:`RayExecutor` wraps it with ``ray.remote``); usable directly.

    Args:
        backbone: The backbone spec (never a loaded model: each worker loads its own).
        threads: torch intra-op threads (``None``: leave as is).
        fault: Test hook: ``("exit_once", marker)`` kills the process (``os._exit``) on the first
            shard unless ``marker`` exists (it is created first, so one worker dies once);
            ``("raise", None)`` fails every shard.
    """

    def __init__(
        self,
        backbone: BackboneSpec | str,
        threads: int | None = None,
        fault: tuple[str, Any] | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.backbone = BackboneSpec.coerce(backbone).load()
        self.fault = fault
        self._examples: dict[tuple[str, int, int], list[Any]] = {}
        self._collect: dict[Any, Any] = {}

    def _maybe_fail(self) -> None:
        if self.fault is None:
            return
        kind, arg = self.fault
        if kind == "exit_once" and not Path(arg).exists():
            Path(arg).touch()
            os._exit(1)
        if kind == "raise":
            raise RuntimeError("injected shard failure")

    def backbone_info(self) -> tuple[str, int, int, tuple[int, ...], int, tuple[int, ...]]:
        """What a trace manifest records (name, vocabulary, mask, EOS, hidden size, separators)."""
        from commit_env.supervised.inputs import separator_token_ids

        b = self.backbone
        eos = tuple(int(i) for i in b.eos_token_ids)
        separators = tuple(separator_token_ids(b.tokenizer))
        return b.name, b.vocab_size, b.mask_token_id, eos, int(b.hidden_size), separators

    def sweep_shard(
        self, job: SweepJob, n: int, seed: int, batch_size: int, lo: int, hi: int
    ) -> tuple[DecodeResult, np.ndarray, float] | None:
        """Decode and score examples ``[lo, hi)`` of a job's seeded draw of ``n``.

        Returns:
            ``(decode result, scores, compute seconds)``, or ``None`` when the policy cannot run
            in the job's setting.
        """
        self._maybe_fail()
        tick = time.perf_counter()
        task = get_task(job.task)
        key = (job.task, n, seed)
        if key not in self._examples:
            self._examples = {key: sample_examples(task, n, seed)}  # keep one draw
        examples = self._examples[key][lo:hi]
        prompts = [e.prompt for e in examples]
        config = job.decode_config()
        seeds = [config.seed + i for i in range(lo, hi)]  # the local run's per-row seeds
        refs: dict[Any, Any] = {}
        if job.spec.factory is None and job.spec.name == "oracle":
            from commit_env.policies import TopKPolicy

            sequential = dataclasses.replace(config, step_budget=None)
            refs["ref"] = decode(
                self.backbone, prompts, TopKPolicy(), sequential, batch_size=batch_size, seeds=seeds
            ).tokens
        built = policy_for_job(
            self.backbone, job.spec, config, prompts, batch_size, refs, "ref", task=job.task
        )
        if built is None:
            return None
        policy, config = built
        result = decode(self.backbone, prompts, policy, config, batch_size=batch_size, seeds=seeds)
        scores = score_completions(task, examples, result.texts)
        return result, scores, time.perf_counter() - tick

    def collect_shard(self, cfg: Any, lo: int, hi: int) -> tuple[list[Any], np.ndarray, float]:
        """Decode collection examples ``[lo, hi)`` of ``cfg`` (a ``CollectConfig``).

        Returns:
            ``([(trace record, step records)], scores, compute seconds)``.
        """
        from commit_env.supervised.collect import collect_batch, draw_examples, draw_settings
        from commit_env.supervised.labels import AnswerTokens

        from commit_env.decoding import Decoder
        from commit_env.policies import make_policy

        self._maybe_fail()
        tick = time.perf_counter()
        if self._collect.get("cfg") != cfg:
            self._collect = {
                "cfg": cfg,
                "examples": draw_examples(cfg.tasks, cfg.n, cfg.seed),
                "settings": draw_settings(cfg.mixture, cfg.n, cfg.seed),
                "tasks": {name: get_task(name) for name in cfg.tasks},
                "decoder": Decoder(self.backbone, cfg.decode_config()),
                "builder": cfg.feature_builder(),
                "answers": AnswerTokens(self.backbone, cfg.nearest_margin)
                if cfg.labels == "nearest"
                else None,
            }
        c = self._collect
        reference = make_policy(cfg.reference, **dict(cfg.reference_params))
        records: list[Any] = []
        scores = []
        for b_lo in range(lo, hi, cfg.batch_size):
            b_hi = min(hi, b_lo + cfg.batch_size)
            recs, sc = collect_batch(
                c["decoder"],
                c["builder"],
                reference,
                c["tasks"],
                c["examples"][b_lo:b_hi],
                b_lo,
                settings=c["settings"][b_lo:b_hi],  # per-row settings of a mixture
                answers=c["answers"],
            )
            records += recs
            scores.append(sc)
        return records, np.concatenate(scores), time.perf_counter() - tick


@dataclass
class _Pool:
    """The actors and the shard queue of one run (driver side)."""

    ray: Any
    make_actor: Callable[[], Any]
    size: int
    depth: int
    max_retries: int
    actors: list[Any] = field(default_factory=list)

    def start(self) -> None:
        while len(self.actors) < self.size:
            self.actors.append(self.make_actor())

    def run(
        self,
        shards: Sequence[Any],
        submit: Callable[[Any, Any], Any],
        on_result: Callable[[Any, Any], None],
        describe: Callable[[Any], str],
        progress: Any,
    ) -> list[float]:
        """Run every shard; ``on_result(shard, result)`` in completion order; compute times."""
        ray = self.ray
        self.start()
        queue: deque[tuple[Any, int | None]] = deque((s, None) for s in shards)
        attempts: dict[int, int] = {}
        inflight: dict[Any, tuple[int, Any, Any]] = {}  # ref -> (actor slot, actor, shard)
        load = [0] * len(self.actors)
        computes: list[float] = []
        while queue or inflight:
            for slot in range(len(self.actors)):
                while load[slot] < self.depth and queue:
                    shard = self._next(queue, slot)
                    actor = self.actors[slot]
                    inflight[submit(actor, shard)] = (slot, actor, shard)
                    load[slot] += 1
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            slot, actor, shard = inflight.pop(ref)
            load[slot] -= 1
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as err:  # the worker died or the shard raised
                key = id(shard)
                attempts[key] = attempts.get(key, 0) + 1
                if attempts[key] > self.max_retries:
                    self.close()
                    last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err)
                    raise ShardFailedError(
                        f"{describe(shard)} failed {attempts[key]} times; last error: {last}"
                    ) from None
                if isinstance(err, ray.exceptions.RayActorError) and self.actors[slot] is actor:
                    self._replace(slot)
                queue.appendleft((shard, slot))  # retried first, preferably on another worker
                continue
            computes.append(float(result[-1]) if isinstance(result, tuple) else 0.0)
            on_result(shard, result)
            progress.update(1)
        return computes

    @staticmethod
    def _next(queue: deque[tuple[Any, int | None]], slot: int) -> Any:
        for i, (shard, avoid) in enumerate(queue):
            if avoid != slot:
                del queue[i]
                return shard
        return queue.popleft()[0]

    def _replace(self, slot: int) -> None:
        """Swap a dead actor for a fresh one (its other in-flight shards fail and are retried)."""
        self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self.make_actor()

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []


class RayExecutor:
    """Runs sweeps, evaluations and trace collection on a Ray cluster.

    Args:
        backbone: Backbone spec (string, dict or :class:`BackboneSpec`; each worker loads it).
        address: ``""``/``None``: a new local cluster (or the one this process already joined);
            ``"auto"``: the running cluster; or a cluster address (``ray://host:10001``,
            ``host:6379``).
        workers: Actors (each loads the backbone once).
        gpus_per_worker: GPUs per actor (fractions pack several on one GPU; 0 = CPU).
        cpus_per_worker: CPUs per actor (its torch thread count, at least 1, is the rounded value;
            fractions let more actors than cores share a small machine).
        shard_size: Examples per shard, rounded up to a multiple of the batch size
            (default: one engine batch per shard).
        max_retries: Retries of a failed shard before the run stops with
            :class:`ShardFailedError`.
        progress: One progress bar over all shards.
        fault: Test hook passed to every :class:`ShardRunner`.

    Raises:
        ValueError: On ``workers < 1`` or negative resources.
        DependencyNotInstalled: Without Ray.
    """

    def __init__(
        self,
        backbone: BackboneSpec | str = "tiny",
        *,
        address: str | None = "",
        workers: int = 2,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1,
        shard_size: int | None = None,
        max_retries: int = 2,
        progress: bool = True,
        fault: tuple[str, Any] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if gpus_per_worker < 0 or cpus_per_worker <= 0 or max_retries < 0:
            raise ValueError(
                "gpus_per_worker must be >= 0, cpus_per_worker > 0 and max_retries >= 0, got "
                f"{gpus_per_worker}, {cpus_per_worker}, {max_retries}"
            )
        self.ray = _import_ray()
        self.spec = BackboneSpec.coerce(backbone)
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.shard_size = shard_size
        self.max_retries = max_retries
        self.progress = progress
        self.fault = fault
        self._owns_cluster = False
        if not self.ray.is_initialized():
            local = address in (None, "", "local")
            start_ray(
                self.ray,
                address=None if local else address,
                include_dashboard=False if local else None,
                log_to_driver=False,
                configure_logging=False,
            )
            self._owns_cluster = True
        self._pool: _Pool | None = None
        #: Compute seconds of every shard of the last run (for overhead measurements).
        self.shard_compute_s: list[float] = []

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the actors (and the local cluster if this executor started it)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._owns_cluster:
            self.ray.shutdown()
            self._owns_cluster = False

    def _get_pool(self) -> _Pool:
        if self._pool is None:
            remote = self.ray.remote(ShardRunner).options(
                num_cpus=self.cpus_per_worker,
                num_gpus=self.gpus_per_worker,
                max_restarts=0,
                max_task_retries=0,
            )
            spec, threads, fault = self.spec, max(1, round(self.cpus_per_worker)), self.fault
            self._pool = _Pool(
                self.ray,
                lambda: remote.remote(spec, threads, fault),
                self.workers,
                depth=2,  # one shard queued behind the running one hides the round trip
                max_retries=self.max_retries,
            )
        return self._pool

    def _bar(self, total: int, desc: str, progress: bool) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="shard", disable=not (progress and self.progress))

    # ------------------------------------------------------------------ sweeps and evaluation
    def sweep(
        self,
        tasks: Sequence[str],
        policies: Sequence[PolicySpec],
        settings: Sequence[Setting],
        *,
        n: int = 100,
        seed: int = 0,
        batch_size: int = 128,
        done: Container[tuple[Any, ...]] = frozenset(),
        on_record: Callable[[dict[str, Any]], None] | None = None,
        progress: bool = True,
        keep_scores: bool = True,
    ) -> list[dict[str, Any]]:
        """:func:`~commit_env.evaluation.sweeps.run_sweep` on the cluster; the same records.

        Records are passed to ``on_record`` (on the driver) in the local run's order.

        Returns:
            The new records.
        """
        jobs = [
            (base, SweepJob(t, s, p))
            for t, s, p in sweep_jobs(tasks, policies, settings)
            if record_key(base := base_record(t, s, p)) not in done
        ]
        records: list[dict[str, Any]] = []

        def emit(index: int, base: dict[str, Any], ev: PolicyEval | None) -> None:
            if ev is None:
                return
            record = finish_record(base, ev, seed=seed, keep_scores=keep_scores)
            records.append(record)
            if on_record is not None:
                on_record(record)

        self._run_jobs(jobs, n, seed, batch_size, emit, "ray sweep", progress)
        return records

    def evaluate(
        self,
        task: str,
        spec: PolicySpec,
        config: DecodeConfig,
        *,
        n: int = 100,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = True,
    ) -> PolicyEval:
        """:func:`~commit_env.evaluate.evaluate_policy` of one policy on the cluster.

        Args:
            task: Task name.
            spec: The policy.
            config: Decode config (temperature and seed included).
            n: Examples.
            seed: Seed of the example draw.
            batch_size: Rows per engine batch.
            progress: Progress bar.

        Returns:
            The same scores and accounting as the local evaluation.
        """
        setting = Setting(config.gen_length, config.window, config.step_budget)
        out: list[PolicyEval | None] = []
        job = SweepJob(task, setting, spec, config)
        base = base_record(task, setting, spec)
        self._run_jobs(
            [(base, job)],
            n,
            seed,
            batch_size,
            lambda i, b, ev: out.append(ev),
            "ray eval",
            progress,
        )
        if not out or out[0] is None:
            raise ValueError(f"policy {spec.label} cannot run at {setting.label}")
        return out[0]

    def _run_jobs(
        self,
        jobs: Sequence[tuple[dict[str, Any], SweepJob]],
        n: int,
        seed: int,
        batch_size: int,
        emit: Callable[[int, dict[str, Any], PolicyEval | None], None],
        desc: str,
        progress: bool,
    ) -> None:
        ranges = example_ranges(n, batch_size, self.shard_size)
        shards = [(j, lo, hi) for j in range(len(jobs)) for lo, hi in ranges]
        if not shards:  # everything already done (a resumed run)
            self.shard_compute_s = []
            return
        parts: dict[int, dict[int, Any]] = {j: {} for j in range(len(jobs))}
        next_job = [0]
        job_refs = [self.ray.put(job) for _, job in jobs]  # shipped once per job, not per shard

        def on_result(shard: tuple[int, int, int], result: Any) -> None:
            j, lo, _ = shard
            parts[j][lo] = result
            while next_job[0] < len(jobs) and len(parts[next_job[0]]) == len(ranges):
                k = next_job[0]
                got = [parts[k][lo] for lo, _ in ranges]
                parts[k] = {}
                next_job[0] += 1
                if any(g is None for g in got):
                    emit(k, jobs[k][0], None)
                    continue
                result_ = merge_results([g[0] for g in got])
                scores = np.concatenate([g[1] for g in got])
                emit(k, jobs[k][0], PolicyEval(scores=scores, result=result_, examples=[]))

        def describe(shard: tuple[int, int, int]) -> str:
            j, lo, hi = shard
            job = jobs[j][1]
            return (
                f"shard (task={job.task}, setting={job.setting.label}, policy={job.spec.label}, "
                f"examples {lo}-{hi - 1})"
            )

        def submit(actor: Any, shard: tuple[int, int, int]) -> Any:
            j, lo, hi = shard
            return actor.sweep_shard.remote(job_refs[j], n, seed, batch_size, lo, hi)

        with self._bar(len(shards), desc, progress) as bar:
            self.shard_compute_s = self._get_pool().run(shards, submit, on_result, describe, bar)

    # ------------------------------------------------------------------ trace collection
    def collect(self, cfg: Any, *, progress: bool = True) -> dict[str, Any]:
        """:func:`~commit_env.supervised.collect.collect_traces` on the cluster (reference round).

        Shards of ``cfg.batch_size``-aligned example ranges are decoded on the workers; the driver
        writes them in example order through the same :class:`~commit_env.traces.TraceWriter`, so
        the directory equals the local one and an interrupted collection resumes.

        Args:
            cfg: A ``CollectConfig``.
            progress: Progress bar.

        Returns:
            The same summary as ``collect_traces``.
        """
        from commit_env.supervised.collect import trace_meta

        from commit_env.policies import make_policy
        from commit_env.traces import TraceDataset, TraceWriter

        pool = self._get_pool()
        pool.start()
        meta = trace_meta(
            cfg,
            _BackboneInfo(*self.ray.get(pool.actors[0].backbone_info.remote())),
            cfg.feature_builder(),
            make_policy(cfg.reference, **dict(cfg.reference_params)),
            on_policy=False,
        )
        writer = TraceWriter(cfg.out, meta, shard_traces=cfg.shard_traces)
        start = writer.examples_done
        # from the start of the batch holding the first missing example (as the local loop)
        first = start - start % cfg.batch_size
        ranges = example_ranges(cfg.n, cfg.batch_size, self.shard_size, first)
        pending: dict[int, Any] = {}
        order = deque(lo for lo, _ in ranges)
        scores: list[float] = []

        def on_result(shard: tuple[int, int], result: Any) -> None:
            pending[shard[0]] = result
            while order and order[0] in pending:
                records, sc, _ = pending.pop(order.popleft())
                new = [i for i, (trace, _) in enumerate(records) if trace["example_index"] >= start]
                scores.extend(sc[new].tolist())
                for i in new:  # traces already on disk are not written twice
                    writer.add_trace(*records[i])

        def describe(shard: tuple[int, int]) -> str:
            return f"collection shard (examples {shard[0]}-{shard[1] - 1} of {cfg.out})"

        def submit(actor: Any, shard: tuple[int, int]) -> Any:
            return actor.collect_shard.remote(cfg_ref, *shard)

        cfg_ref = self.ray.put(cfg)
        with self._bar(len(ranges), "ray collect", progress) as bar:
            self.shard_compute_s = pool.run(ranges, submit, on_result, describe, bar)
        writer.flush()
        dataset = TraceDataset(cfg.out)
        return {
            "traces": writer.examples_done,
            "steps": len(dataset),
            "mean_score_this_run": float(np.mean(scores)) if scores else float("nan"),
            "bytes_per_position_step": dataset.bytes_per_position_step(),
            "config": dataclasses.asdict(cfg),
        }


@dataclass(frozen=True)
class _BackboneInfo:
    """The manifest fields of a backbone, asked of a worker (the driver loads no large model)."""

    name: str
    vocab_size: int
    mask_token_id: int
    eos_token_ids: tuple[int, ...]
    hidden_size: int
    separator_token_ids: tuple[int, ...]


class LocalExecutor:
    """The local path behind the same interface as :class:`RayExecutor` (one process).

    Args:
        backbone: A loaded backbone or its spec (loaded on first use).
    """

    def __init__(self, backbone: BackboneLike) -> None:
        self._backbone = backbone

    @property
    def backbone(self) -> Any:
        """The loaded backbone."""
        self._backbone = resolve_backbone(self._backbone)
        return self._backbone

    def sweep(
        self,
        tasks: Sequence[str],
        policies: Sequence[PolicySpec],
        settings: Sequence[Setting],
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """:func:`~commit_env.evaluation.sweeps.run_sweep` with this backbone."""
        return run_sweep(self.backbone, tasks, policies, settings, **kwargs)

    def collect(self, cfg: Any, *, progress: bool = True) -> dict[str, Any]:
        """:func:`~commit_env.supervised.collect.collect_traces` with this backbone."""
        from commit_env.supervised.collect import collect_traces

        return collect_traces(cfg, backbone=self.backbone, progress=progress)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def add_ray_arguments(parser: Any) -> None:
    """Add the ``Ray scale-out`` argument group to a subcommand's parser.

    Args:
        parser: An ``argparse`` parser with the backbone options.
    """
    g = parser.add_argument_group("Ray scale-out")
    g.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: no value = a local cluster, 'auto' = the running cluster, "
        "or a cluster address (ray://host:10001)",
    )
    g.add_argument("--workers", type=int, default=2, help="Ray actors (each loads the backbone)")
    g.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="GPUs per actor (0.5 packs two per GPU)"
    )
    g.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="examples per shard (a multiple of the batch size; default: one batch)",
    )


def ray_counterpart(args: Any, local: Callable[..., Any]) -> Callable[..., Any]:
    """The Ray version of a command's local call (``local`` itself without ``--ray``).

    Supports ``run_sweep``, ``collect_traces``, ``run_bench`` and ``evaluate_policy``; the
    returned callable takes the local call's arguments and returns the same kind of result.

    Args:
        args: Parsed command-line arguments (with :func:`add_ray_arguments`' options).
        local: The local function.

    Returns:
        A callable.
    """
    if getattr(args, "ray", None) is None:
        return local

    def executor() -> RayExecutor:
        return RayExecutor(
            BackboneSpec.of(args),
            address=args.ray,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            shard_size=args.shard_size,
            progress=not getattr(args, "no_progress", False),
        )

    name = getattr(local, "__name__", "")
    if name == "run_sweep":

        def sweep(backbone: Any, tasks: Any, policies: Any, settings: Any, **kw: Any) -> Any:
            with executor() as ex:
                return ex.sweep(tasks, policies, settings, **kw)

        return sweep
    if name == "collect_traces":

        def collect(cfg: Any, **kw: Any) -> Any:
            with executor() as ex:
                return ex.collect(cfg, progress=kw.get("progress", True))

        return collect
    if name == "run_bench":

        def bench(cfg: Any, **kw: Any) -> Any:
            with executor() as ex:
                return local(cfg, executor=ex, **kw)

        return bench
    if name == "evaluate_policy":
        from commit_env.evaluation.cli import parse_params

        def evaluate(backbone: Any, task: Any, policy: Any, config: Any, **kw: Any) -> Any:
            params = () if args.policy == "oracle" else tuple(parse_params(args.param).items())
            spec = PolicySpec(args.policy, args.policy, params)
            with executor() as ex:
                return ex.evaluate(
                    args.task,
                    spec,
                    config,
                    n=len(kw["examples"]),
                    seed=args.seed,
                    batch_size=kw.get("batch_size") or 64,
                    progress=kw.get("progress", True),
                )

        return evaluate
    raise ValueError(f"no Ray counterpart for {name!r}")
