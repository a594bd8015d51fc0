r"""``commit-env bench``: the main job.

Heuristic sweeps and the oracle -> trace collection -> controller training -> (optional) a learned
remask head for it and a short PPO run -> every policy on the same seeded examples over a grid of
settings (each learned family at its deployed member) -> ``results.json``,
``report.md``, ``pareto.png``, ``cross_setting.png``, ``traces.png`` and TensorBoard logs of every
training under ``OUT/``.

Usage (embedded backbone, CPU, offline)::

    commit-env bench --quick --out bench-out      # <= 10 minutes on a 2-core CPU
    commit-env bench --full --out bench-out-full  # every testbed family over the full grid

Each task runs at its own default generation length, over the grid of
:mod:`commit_env.evaluation.grid` (default G and 2G; windows block:8, sliding:16, full; budgets
none, G/4, G/8). The default backbone is ``tiny-testbed`` (trained on every embedded family);
``--quick`` runs :data:`QUICK_TASKS` and ``--full`` every testbed family (:data:`FULL_TASKS`).
The original families stay selectable: ``--backbone tiny --tasks qa,math,code``.

On a real model (GPU when present)::

    commit-env bench --backbone hf:GSAI-ML/LLaDA-8B-Instruct --kind llada --trust-remote-code \\
        --task gsm8k --gen-length 256 --window block:32 --dtype bfloat16 --batch-size 16

An interrupted bench resumes: result records are appended atomically to ``OUT/results.jsonl``
and finished trainings are reused. ``OUT`` is locked while a bench runs (a second one into it
fails naming the first one's pid), and ``OUT/run_key.json`` records every setting that changes a
result (n, seed, backbone, tasks, settings and grid, training sizes): a resume with other
settings is refused, or with ``force`` (``--force``) starts over, discarding the old results.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from commit_env.evaluation.controller import DEFAULT_THRESHOLDS
from commit_env.evaluation.distributed import LocalExecutor
from commit_env.evaluation.grid import GridSpec, default_setting, grid_settings, task_gen_length
from commit_env.evaluation.io import append_jsonl_atomic, read_jsonl, write_json_atomic
from commit_env.evaluation.sweeps import PolicySpec, Setting, heuristic_grid, record_key

from commit_env.backbones.base import Backbone
from commit_env.backbones.spec import BackboneSpec
from commit_env.decoding import DecodeConfig, DecodeSetting, decode
from commit_env.errors import ResumeMismatch
from commit_env.evaluate import sample_examples
from commit_env.io import write_text_atomic
from commit_env.policies import CommitPolicy, make_policy
from commit_env.rundir import RunLock, check_run_key
from commit_env.tasks import get_task
from commit_env.tasks.registry import TESTBED_TASKS

__all__ = [
    "BENCH_BACKBONE",
    "FULL_TASKS",
    "QUICK_TASKS",
    "TESTBED_PREVIEW_TASKS",
    "BenchConfig",
    "LearnedPolicies",
    "controller_stage",
    "grid_stage",
    "heuristics_stage",
    "ppo_stage",
    "report_stage",
    "run_bench",
    "traces_stage",
]

logger = logging.getLogger(__name__)

# The bench's backbone and families: the testbed checkpoint on the testbed families.
BENCH_BACKBONE = "tiny-testbed"
# --quick: testbed families where the checkpoint meets the quality bar and commitment matters
# (three, to stay under 10 minutes on 2 CPU cores).
QUICK_TASKS: tuple[str, ...] = ("insert:any", "remove:any", "sudoku")
# --full: every testbed family.
FULL_TASKS: tuple[str, ...] = TESTBED_TASKS
# Kept for code written against the preview (same families as the quick default).
TESTBED_PREVIEW_TASKS: tuple[str, ...] = QUICK_TASKS


@dataclass(frozen=True)
class BenchConfig:
    """What ``commit-env bench`` runs.

    Attributes:
        out: Output directory.
        mode: ``quick`` (<= 10 min on a 2-core CPU) or ``full``.
        backbone: Backbone spec.
        kind: Backbone kind.
        device: Device (None = CUDA if available).
        dtype: Backbone dtype.
        trust_remote_code: For remote-code checkpoints.
        tasks: Tasks evaluated (default: :data:`QUICK_TASKS`; ``--full``: :data:`FULL_TASKS`).
        window: Window of every task's default setting (a window that does not fit a task's
            G falls back to ``full``).
        gen_length: G of every task's default setting (None: each task's own default G).
        setting: The setting PPO is trained on (None: the first task's default setting; the
            controller trains on a mixture, see :func:`controller_stage`).
        n: Examples per task and setting.
        seed: Seed of every example draw.
        batch_size: Rows per engine batch.
        collect_n: Prompts decoded for controller traces, per task (round 0; each on-policy
            round decodes half as many): the controller sees as many per family however many
            families the bench runs.
        controller_epochs: Controller training epochs.
        controller_labels: Label kind of the controller's traces (``final`` or ``nearest``;
            :class:`~commit_env.supervised.collect.CollectConfig`). ``--full`` defaults to
            ``nearest`` with ``collect_n=1024``.
        controller_nearest_margin: Ambiguity margin of ``nearest`` labels (None: one answer).
        ppo_timesteps: PPO environment steps on the first task, warm-started by cloning the
            threshold rule (0 = skip the PPO run).
        remask_n: Prompts per task and controller threshold whose counterfactual rollouts train
            the learned remask head (family ``controller-remask``; 0 = skip that stage).
        grid: The cross-setting grid: ``"quick"``, ``"full"`` or an explicit
            :data:`commit_env.evaluation.grid.GridSpec`, applied to each task's default G.
        progress: Progress bars.
    """

    out: str = "bench-out"
    mode: str = "quick"
    backbone: str = BENCH_BACKBONE
    kind: str = "auto"
    device: str | None = None
    dtype: str | None = None
    trust_remote_code: bool = False
    tasks: tuple[str, ...] = QUICK_TASKS
    window: str = "full"
    gen_length: int | None = None
    setting: DecodeSetting | None = None
    n: int = 64
    seed: int = 0
    batch_size: int = 128
    collect_n: int = 256
    controller_epochs: int = 6
    controller_labels: str = "final"
    controller_nearest_margin: int | None = None
    ppo_timesteps: int = 8192
    remask_n: int = 64
    grid: str | GridSpec = "quick"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from commit_env.supervised.labels import LABEL_KINDS

        # checked here, not hours later when the controller stage builds its collection
        if self.controller_labels not in LABEL_KINDS:
            raise ValueError(
                f"controller_labels must be one of {list(LABEL_KINDS)}, "
                f"got {self.controller_labels!r}"
            )
        margin = self.controller_nearest_margin
        if margin is not None and margin < 0:
            raise ValueError(f"controller_nearest_margin must be >= 0, got {margin}")

    @classmethod
    def preset(cls, mode: str, **overrides: Any) -> BenchConfig:
        """The ``quick`` or ``full`` preset with overrides.

        Args:
            mode: ``quick`` or ``full``.
            **overrides: Fields to change.

        Returns:
            The configuration.

        Raises:
            ValueError: On an unknown mode.
        """
        if mode == "quick":
            base = cls(mode="quick")
        elif mode == "full":
            base = cls(
                mode="full",
                n=200,
                ppo_timesteps=30_000,
                remask_n=256,
                controller_epochs=8,
                # measured on --full (stop 34): 1024 nearest-label traces per family give the
                # controller the highest AUP on 6 of 10 families (256 final-label traces: 2)
                collect_n=1024,
                controller_labels="nearest",
                grid="full",
                tasks=FULL_TASKS,
            )
        else:
            raise ValueError(f"unknown bench mode {mode!r}; expected 'quick' or 'full'")
        return dataclasses.replace(base, **overrides)

    @property
    def backbone_spec(self) -> BackboneSpec:
        """The backbone with every loader option (what each stage loads or records)."""
        return BackboneSpec.of(self)

    @property
    def training_setting(self) -> DecodeSetting:
        """PPO's training setting: ``setting``, or the first task's default setting."""
        if self.setting is not None:
            return self.setting
        default = self.default_for(self.tasks[0])
        return DecodeSetting(default.gen_length, default.window)

    def default_for(self, task: str) -> Setting:
        """A task's default setting: its default G (or ``gen_length``), ``window``, no budget."""
        return default_setting(self.gen_length or task_gen_length(task), self.window)

    def settings(self, task: str) -> list[Setting]:
        """A task's cross-setting grid (:func:`commit_env.evaluation.grid.grid_settings`)."""
        return grid_settings(self.default_for(task).gen_length, self.grid)


def _quick_heuristics(gen_length: int) -> list[PolicySpec]:
    keep = {
        "topk(k=1)",
        f"topk(k={gen_length})",
        "topk(schedule=even)",  # LLaDA's even split of the budget: the pacing baseline
        "threshold(threshold=0.7)",
        "threshold(threshold=0.9)",
        "threshold(threshold=0.99)",
        "factor(factor=1.0)",
        "factor(factor=2.0)",
        "eb(gamma=0.1)",
        "eb(gamma=1.0)",
        "klass()",
        "prophet()",
        "wino()",
        "freedave()",
        "oracle()",
    }
    return [s for s in heuristic_grid(gen_length) if s.label in keep]


def _trace_records(
    backbone: Backbone,
    task_name: str,
    specs: Sequence[tuple[str, CommitPolicy]],
    config: DecodeConfig,
    n_examples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Per policy and example: stable-from matrix and commit steps (data for traces.png)."""
    task = get_task(task_name)
    examples = sample_examples(task, n_examples, seed)
    prompts = [e.prompt for e in examples]
    out = []
    for label, policy in specs:
        cfg = policy.decode_config(config, record_trace=True)
        result = decode(backbone, prompts, policy, cfg)
        steps = [d["proposal"] for d in result.trace[0] if "proposal" in d]  # each [N, G]
        proposals = torch.stack(steps)  # [T, N, G]
        final = result.tokens[None]  # [1, N, G]
        equal = proposals == final
        # stable from t: equal at t and at every later forward (suffix-all)
        stable = equal.flip(0).long().cumprod(0).flip(0).bool()
        for i, example in enumerate(examples):
            out.append(
                {
                    "policy": label,
                    "example": example.prompt,
                    "stable": stable[:, i].int().tolist(),
                    "commit_step": result.commit_step[i].tolist(),
                }
            )
    return out


@dataclass
class _Bench:
    """What every stage shares: config, output paths, the backbone and the resumable records."""

    cfg: BenchConfig
    out: Path
    backbone: Backbone
    results_path: Path
    done: set[tuple[Any, ...]]
    timings: dict[str, float] = field(default_factory=dict)
    executor: Any = None  # where sweeps and collection run (None: this process)
    controller_dir: Path | None = None  # the final controller checkpoint (controller_stage)

    @property
    def defaults(self) -> dict[str, Setting]:
        """Every task's default setting (its own G, the bench window, no budget)."""
        return {t: self.cfg.default_for(t) for t in self.cfg.tasks}

    def sweep(
        self,
        specs: Sequence[PolicySpec],
        settings: Sequence[Setting],
        tasks: Sequence[str] | None = None,
    ) -> None:
        """Evaluate ``specs`` on ``settings`` of ``tasks`` (default: all), appending new records.

        Finished records (by :func:`record_key`) are skipped.
        """

        def on_record(record: dict[str, Any]) -> None:
            append_jsonl_atomic(self.results_path, record, key=record_key)
            self.done.add(record_key(record))

        cfg = self.cfg
        executor = self.executor or LocalExecutor(self.backbone)
        executor.sweep(
            cfg.tasks if tasks is None else tasks,
            specs,
            settings,
            n=cfg.n,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            done=self.done,
            on_record=on_record,
            progress=cfg.progress,
        )


@dataclass(frozen=True)
class LearnedPolicies:
    """Result of the training stages: the learned policies' specs for the grid.

    Attributes:
        controller: The supervised controller (always trained).
        ppo: The PPO agent, or ``None`` when ``ppo_timesteps == 0``.
        remask: The controller with its learned remask head at the calibrated thresholds, or
            ``None`` when ``remask_n == 0`` or the head was skipped.
    """

    controller: PolicySpec
    ppo: PolicySpec | None = None
    remask: PolicySpec | None = None

    @property
    def specs(self) -> list[PolicySpec]:
        """Every learned policy's deployed member, controller first."""
        return [s for s in (self.controller, self.remask, self.ppo) if s is not None]


def run_bench(cfg: BenchConfig, executor: Any = None, *, force: bool = False) -> dict[str, Any]:
    """Run the whole pipeline; see the module docstring.

    Stages: :func:`heuristics_stage`, :func:`controller_stage`, :func:`ppo_stage`,
    :func:`grid_stage`, :func:`traces_stage` and :func:`report_stage`, each timed.

    Args:
        cfg: Bench settings.
        executor: Runs the sweeps and the trace collection (a
            :class:`~commit_env.evaluation.distributed.RayExecutor`); ``None``: this process.
        force: Start over in an ``out`` written with other settings (its results are deleted)
            instead of refusing.

    Returns:
        Summary with output paths and timings.

    Raises:
        RunDirLocked: If another process is writing ``cfg.out``.
        ResumeMismatch: If ``cfg.out`` holds results of other settings and ``force`` is false.
    """
    with RunLock(cfg.out):
        return _run_bench(cfg, executor, force)


def _run_bench(cfg: BenchConfig, executor: Any, force: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    bench = _open_bench(cfg, force)
    bench.executor = executor

    def timed(name: str, stage: Any, *args: Any) -> Any:
        tick = time.perf_counter()
        result = stage(bench, *args)
        bench.timings[name] = time.perf_counter() - tick
        return result

    timed("heuristic_sweep", heuristics_stage)
    controller = timed("controller", controller_stage)
    remask = timed("remask", remask_stage) if cfg.remask_n > 0 else None
    ppo = timed("ppo", ppo_stage) if cfg.ppo_timesteps > 0 else None
    learned = LearnedPolicies(controller, ppo, remask)
    timed("grid", grid_stage, learned)
    traces = timed("traces", traces_stage, learned)
    return report_stage(bench, learned, traces, t0)


def bench_key(cfg: BenchConfig) -> dict[str, Any]:
    """Every setting of ``cfg`` that changes a result (what ``OUT/run_key.json`` records)."""
    spec = dataclasses.asdict(cfg.backbone_spec)
    spec.pop("device", None)  # where it runs does not change what it computes
    skip = {"out", "device", "batch_size", "progress", "backbone", "kind", "dtype"}
    skip |= {"trust_remote_code"}
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    return {**key, "backbone": spec}


_RESULTS = ("results.jsonl", "results.json", "report.md", "summary.json", "traces.json")


def _check_resume(cfg: BenchConfig, out: Path, force: bool) -> None:
    """Refuse (or with ``force`` clear) an ``out`` whose results come from other settings."""
    import shutil

    had_key = (out / "run_key.json").is_file()
    runs = (
        set()
        if had_key
        else {(r.get("n"), r.get("seed")) for r in read_jsonl(out / "results.jsonl")}
    )
    legacy_mismatch = bool(runs - {(cfg.n, cfg.seed)})  # a bench from before run keys
    if legacy_mismatch and not force:
        raise ResumeMismatch(
            f"{out} holds results of other settings ((n, seed) in {sorted(runs, key=str)}), "
            f"this run asks n={cfg.n}, seed={cfg.seed}; use another --out, or --force"
        )
    if check_run_key(out, bench_key(cfg), force=force, what="bench") or not (
        had_key or legacy_mismatch
    ):
        return
    for name in _RESULTS:  # a new key: results of other settings must not be reused
        (out / name).unlink(missing_ok=True)
    for name in ("controller", "ppo", "traces"):
        shutil.rmtree(out / name, ignore_errors=True)


def _open_bench(cfg: BenchConfig, force: bool = False) -> _Bench:
    """Output directory, config record, task check, backbone, and the records so far."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for t in cfg.tasks:
        get_task(t)  # fail fast on unknown names
    _check_resume(cfg, out, force)
    write_json_atomic(out / "bench_config.json", dataclasses.asdict(cfg))
    backbone = cfg.backbone_spec.load()
    results_path = out / "results.jsonl"
    done = {record_key(r) for r in read_jsonl(results_path)}
    return _Bench(cfg, out, backbone, results_path, done)


def heuristics_stage(bench: _Bench) -> None:
    """Stage 1: heuristic sweeps and the oracle on each task's default setting."""
    for task, default in bench.defaults.items():
        G = default.gen_length
        specs = heuristic_grid(G) if bench.cfg.mode == "full" else _quick_heuristics(G)
        bench.sweep(specs, [default], tasks=[task])


def controller_stage(bench: _Bench) -> PolicySpec:
    """Stage 2: the supervised controller, round 0 and on-policy rounds, reused when trained.

    One controller is trained over a mixture of settings (``default_training_mixture`` of every
    task's default G); the final round's deployment thresholds are calibrated on held-out
    decodes over that mixture (:mod:`commit_env.supervised.calibrate`). Both rounds are measured
    on the default setting: round 0 at its label-selected threshold (family
    ``controller-round0``), the final round at its calibrated thresholds and a sweep of
    deployment thresholds (family ``controller``: its curve and AUP). ``--full`` adds the ablations
    (``OUT/controller/ablations.jsonl`` and ``ablations.md``, paired bootstrap intervals).
    ``cfg.extra["controller_on_policy_rounds"]`` (default 1) sets the number of on-policy rounds.

    Returns:
        The final round at its calibrated thresholds (evaluated on the whole grid).
    """
    from commit_env.evaluation.controller import (
        ablation_records,
        ablation_table,
        controller_specs,
        deployed_params,
    )
    from commit_env.supervised.rounds import train_ablations, train_controller_rounds

    cfg, bb = bench.cfg, bench.backbone
    rounds_cfg = _rounds_config(cfg, bench.out)
    # round 0 is collected through bench.executor (Ray or local); on-policy rounds collect locally
    rounds = train_controller_rounds(rounds_cfg, backbone=bb, executor=bench.executor)
    write_json_atomic(bench.out / "controller" / "rounds.json", rounds.rounds)
    bench.timings["controller_collect_train"] = rounds.seconds
    round0 = controller_specs(
        rounds.checkpoints[0],
        bb,
        thresholds=None,
        family="controller-round0",
        extra_params=(("round", 0),),
    )
    curve = controller_specs(rounds.final, bb)
    for task, default in bench.defaults.items():
        bench.sweep(round0 + curve, [default], tasks=[task])
    if cfg.mode == "full":
        variants = {"full": rounds.final, **train_ablations(rounds, rounds_cfg, backbone=bb)}
        path = bench.out / "controller" / "ablations.jsonl"
        done = {record_key(r) for r in read_jsonl(path)}
        for task, default in bench.defaults.items():
            ablation_records(
                bb,
                [task],
                variants,
                [default],
                n=cfg.n,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                done=done,
                on_record=lambda r: append_jsonl_atomic(path, r),
                progress=cfg.progress,
            )
        table = ablation_table(read_jsonl(path))
        write_text_atomic(bench.out / "controller" / "ablations.md", table + "\n")
    bench.controller_dir = Path(rounds.final)
    deployed = deployed_params(rounds.final)
    return next(s for s in curve if s.params == deployed)


#: The controller thresholds the learned remask head is swept at (family ``controller-remask``):
#: the plain controller's curve, so both families are compared over the same drafters (up to
#: 0.999, which a quick probe with 1024 nearest-label traces needed to reach the bar).
REMASK_THRESHOLDS: tuple[float, ...] = DEFAULT_THRESHOLDS


def remask_stage(bench: _Bench) -> PolicySpec | None:
    """Stage 2b: the final controller with a learned remask head, reused when trained.

    Trains :class:`~commit_env.supervised.remask_head.RemaskHead` on counterfactual rollouts of
    ``cfg.remask_n`` held-out prompts per task and threshold
    (:func:`~commit_env.supervised.remask_train.train_remask_head`, ``OUT/controller/remask-head``)
    and sweeps :class:`~commit_env.supervised.remask_head.LearnedRemaskPolicy` over
    :data:`REMASK_THRESHOLDS` on every task's default setting (family ``controller-remask``:
    its curve and AUP next to the plain controller's), plus the head around the controller's
    calibrated thresholds: the deployed member, returned for the grid (None when the head was
    skipped), where the cross-setting section judges it like the plain controller.
    """
    from commit_env.supervised.policy import ControllerPolicy
    from commit_env.supervised.remask_head import LearnedRemaskPolicy
    from commit_env.supervised.remask_train import (
        NoRemaskCandidates,
        RemaskTrainConfig,
        train_remask_head,
    )

    cfg, bb = bench.cfg, bench.backbone
    assert bench.controller_dir is not None, "remask_stage runs after controller_stage"
    head_dir = bench.out / "controller" / "remask-head"
    if not (head_dir / "remask_head.json").is_file():
        train_cfg = RemaskTrainConfig(tasks=cfg.tasks, n=cfg.remask_n, progress=cfg.progress)
        try:
            train_remask_head(bench.controller_dir, bb, train_cfg, head_dir)
        except NoRemaskCandidates as err:  # nothing to learn from: the family is left out
            logger.warning("remask head skipped: %s", err)
            return None
    deployed = ControllerPolicy.from_pretrained(bench.controller_dir, backbone=bb)
    drafters = [deployed.with_threshold(t) for t in REMASK_THRESHOLDS] + [deployed]
    specs = []
    for drafter in drafters:
        policy = LearnedRemaskPolicy.from_pretrained(head_dir, drafter)

        def build(config: DecodeConfig, policy: Any = policy) -> Any:
            return policy

        params = tuple(policy.params.items())
        specs.append(PolicySpec("controller-remask", "controller-remask", params, factory=build))
    for task, default in bench.defaults.items():
        bench.sweep(specs, [default], tasks=[task])
    return specs[-1]  # the calibrated thresholds: judged on the grid


def ppo_stage(bench: _Bench) -> PolicySpec:
    """Stage 3: a short PPO run warm-started by cloning the threshold rule.

    The env observation has no hidden features or prompt, and cloning the controller from it
    stalled (BCE ~0.67), so the Fast-dLLM threshold rule is the teacher.
    """
    teacher = make_policy("threshold", threshold=0.9)
    return _train_ppo(bench.cfg, bench.out, bench.backbone, teacher)


def grid_stage(bench: _Bench, learned: LearnedPolicies) -> None:
    """Stage 4: every policy over each task's grid, and the learned ones on the defaults."""
    for task, default in bench.defaults.items():
        bench.sweep(learned.specs, [default], tasks=[task])  # for the Pareto picture
        for setting in bench.cfg.settings(task):
            G = setting.gen_length
            specs = [s for s in _quick_heuristics(G) if s.name != "prophet"]
            bench.sweep(specs + learned.specs, [setting], tasks=[task])


def traces_stage(bench: _Bench, learned: LearnedPolicies) -> list[dict[str, Any]]:
    """Stage 5: per-step stability data of three policies (``traces.json``, ``traces.png``)."""
    cfg = bench.cfg
    default = cfg.default_for(cfg.tasks[0])
    assert learned.controller.factory is not None
    specs: list[tuple[str, CommitPolicy]] = [
        ("sequential", make_policy("topk")),
        ("threshold 0.9", make_policy("threshold", threshold=0.9)),
        ("controller", learned.controller.factory(default.config())),
    ]
    traces = _trace_records(bench.backbone, cfg.tasks[0], specs, default.config(), 2, cfg.seed)
    write_json_atomic(bench.out / "traces.json", traces)
    return traces


def report_stage(
    bench: _Bench, learned: LearnedPolicies, traces: list[dict[str, Any]], t0: float
) -> dict[str, Any]:
    """Stage 6: ``results.json``, ``report.md``, the figures and ``summary.json``."""
    from commit_env.evaluation import metrics, plots, reports
    from commit_env.evaluation.headline import headline

    cfg, out = bench.cfg, bench.out
    defaults = bench.defaults
    records = read_jsonl(bench.results_path)
    write_json_atomic(out / "results.json", records)
    families, trained = _trained_settings(cfg, out, learned, records)
    deployed = {s.family: s.label for s in learned.specs}  # not the threshold sweeps
    cells = reports.cross_setting_cells(
        records,
        learned_families=families,
        trained_settings=trained,
        default=defaults,
        deployed=deployed,
    )
    base = reports.default_records(records, defaults)
    plots.pareto_plot(base, out / "pareto.png", aup=metrics.aup_table(base))
    plots.cross_setting_plot([c for c in cells if c["task"] == "mean"], out / "cross_setting.png")
    plots.trace_plot(traces, out / "traces.png")
    bench.timings["total"] = time.perf_counter() - t0
    report = reports.render_report(
        records,
        cells,
        cfg=dataclasses.asdict(cfg),
        timings=bench.timings,
        default=defaults,
        ablations=reports.load_ablation_table(out),
    )
    write_text_atomic(out / "report.md", report)
    summary = {
        "out": str(out),
        "records": len(records),
        "timings": bench.timings,
        "device": str(bench.backbone.device),
        "headline": headline(base, cells, families),
        # what the cross-setting verdicts need beyond the records (reports.rescore reads it)
        "judging": reports.judging_inputs(families, trained, deployed),
    }
    write_json_atomic(out / "summary.json", summary, sort_keys=False)  # timings in phase order
    return summary


def _trained_settings(
    cfg: BenchConfig, out: Path, learned: LearnedPolicies, records: Sequence[dict[str, Any]]
) -> tuple[list[str], dict[str, list[tuple[Any, ...]]]]:
    """The learned families the report judges, and the settings each trained on."""
    families = [s.family for s in learned.specs]
    ppo_setting = cfg.training_setting
    trained = {family: [(ppo_setting.gen_length, ppo_setting.window)] for family in families}
    # the controller is trained on a setting mixture, not on one setting
    trained["controller"] = [
        (s.gen_length, s.window, s.step_budget) for s in _rounds_config(cfg, out).mixture
    ]
    if any(r["family"] == "controller-round0" for r in records):  # learned: judged, not rival
        families.append("controller-round0")
        trained["controller-round0"] = trained["controller"]
    if "controller-remask" in families:  # seen where both parts trained (the head: no budget)
        from commit_env.supervised.remask_train import RemaskTrainConfig

        head = (RemaskTrainConfig().window, None)
        trained["controller-remask"] = [s for s in trained["controller"] if s[1:] == head]
    return families, trained


def _rounds_config(cfg: BenchConfig, out: Path) -> Any:
    """The controller's rounds for this bench: a setting mixture at every task's default G.

    Each task's default setting (:meth:`BenchConfig.default_for`) is part of the mixture.
    """
    from commit_env.supervised.rounds import RoundsConfig, default_training_mixture
    from commit_env.supervised.train import TrainConfig

    mixture: list[DecodeSetting] = []
    for g in sorted({cfg.default_for(t).gen_length for t in cfg.tasks}):
        mixture += [s for s in default_training_mixture(g) if s not in mixture]
    mixture += [d for d in dict.fromkeys(cfg.default_for(t) for t in cfg.tasks) if d not in mixture]
    return RoundsConfig(
        out=str(out / "controller"),
        backbone=cfg.backbone_spec,
        tasks=cfg.tasks,
        settings=tuple(mixture),
        n=cfg.collect_n * len(cfg.tasks),
        on_policy_n=max(1, cfg.collect_n * len(cfg.tasks) // 2),
        on_policy_rounds=int(cfg.extra.get("controller_on_policy_rounds", 1)),
        train=TrainConfig(epochs=cfg.controller_epochs, rollout_n=0),
        labels=cfg.controller_labels,
        nearest_margin=cfg.controller_nearest_margin,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        device=cfg.device,
        progress=cfg.progress,
    )


def _train_ppo(cfg: BenchConfig, out: Path, backbone: Backbone, teacher: Any) -> PolicySpec:
    """A short PPO run warm-started from ``teacher`` (behaviour cloning), one torch thread."""
    from commit_env.agents.policy import PPOPolicy
    from commit_env.agents.train_ppo import PPOConfig, train_ppo

    ppo_dir = out / "ppo"
    if not (ppo_dir / "final.zip").is_file():
        threads = torch.get_num_threads()
        if backbone.device.type == "cpu":
            torch.set_num_threads(1)  # PPO's small updates run faster single-threaded on CPU
        try:
            train_ppo(
                PPOConfig(
                    task=cfg.tasks[0],
                    out=str(ppo_dir),
                    timesteps=cfg.ppo_timesteps,
                    setting=cfg.training_setting,
                    seed=cfg.seed,
                    step_cost=0.02,
                    init_teacher="controller",
                    bc_episodes=64,
                    progress_bar=cfg.progress,
                    backbone=cfg.backbone_spec,
                ),
                teacher=teacher,
                backbone=backbone,
            )
        finally:
            torch.set_num_threads(threads)
    policy = PPOPolicy.load(ppo_dir / "final.zip")

    def build(config: DecodeConfig) -> Any:
        return policy if config.gen_length <= policy.gen_length else None

    return PolicySpec("ppo", "ppo", (("step_cost", policy.step_cost),), factory=build)
