r"""``commit-env bench``: the main job.

Heuristic sweeps and the oracle -> trace collection -> controller training -> (optional) a short
PPO run -> every policy on the same seeded examples over a grid of settings -> ``results.json``,
``report.md``, ``pareto.png``, ``cross_setting.png``, ``traces.png`` and TensorBoard logs of every
training under ``OUT/``.

Usage (embedded backbone, CPU, offline)::

    commit-env bench --quick --out bench-out      # <= 10 minutes on a 2-core CPU
    commit-env bench --full --out bench-out-full  # the grid of 3 x 3 x 3 settings, more examples

On a real model (GPU when present)::

    commit-env bench --backbone hf:GSAI-ML/LLaDA-8B-Instruct --kind llada --trust-remote-code \\
        --task gsm8k --gen-length 256 --window block:32 --dtype bfloat16 --batch-size 16

An interrupted bench resumes: result records are appended atomically to ``OUT/results.jsonl``
and finished trainings are reused.
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
from commit_env.evaluation.io import append_jsonl_atomic, read_jsonl, write_json_atomic
from commit_env.evaluation.sweeps import PolicySpec, Setting, heuristic_grid, record_key, run_sweep

from commit_env.backbones.base import Backbone
from commit_env.backbones.spec import BackboneSpec
from commit_env.decoding import TRAINING_SETTING, DecodeConfig, DecodeSetting, decode
from commit_env.decoding.config import validate_setting
from commit_env.evaluate import sample_examples
from commit_env.io import write_text_atomic
from commit_env.policies import CommitPolicy, make_policy
from commit_env.tasks import get_task

__all__ = [
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
        tasks: Tasks evaluated.
        setting: The default setting (the one the controller and PPO are trained on; its
            step budget is unlimited).
        n: Examples per task and setting.
        seed: Seed of every example draw.
        batch_size: Rows per engine batch.
        collect_n: Prompts decoded for controller traces.
        controller_epochs: Controller training epochs.
        ppo_timesteps: PPO environment steps on the first task, warm-started by cloning the
            threshold rule (0 = skip the PPO run).
        grid_gen_lengths: Generation lengths of the cross-setting grid.
        grid_windows: Window widths of the grid (``block:B`` etc.).
        grid_budget_fractions: Step budgets of the grid as fractions of G (1.0 = unlimited).
        progress: Progress bars.
    """

    out: str = "bench-out"
    mode: str = "quick"
    backbone: str = "tiny"
    kind: str = "auto"
    device: str | None = None
    dtype: str | None = None
    trust_remote_code: bool = False
    tasks: tuple[str, ...] = ("qa", "math", "code")
    setting: DecodeSetting = TRAINING_SETTING
    n: int = 64
    seed: int = 0
    batch_size: int = 128
    collect_n: int = 768
    controller_epochs: int = 6
    ppo_timesteps: int = 8192
    grid_gen_lengths: tuple[int, ...] = (16,)
    grid_windows: tuple[str, ...] = ("block:4", "full")
    grid_budget_fractions: tuple[float, ...] = (1.0, 0.5)
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

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
                collect_n=1536,
                ppo_timesteps=30_000,
                controller_epochs=8,
                grid_gen_lengths=(12, 16, 24),
                grid_windows=("block:4", "sliding:8", "full"),
                grid_budget_fractions=(1.0, 0.5, 0.25),
            )
        else:
            raise ValueError(f"unknown bench mode {mode!r}; expected 'quick' or 'full'")
        return dataclasses.replace(base, **overrides)

    @property
    def backbone_spec(self) -> BackboneSpec:
        """The backbone with every loader option (what each stage loads or records)."""
        return BackboneSpec.of(self)

    def settings(self) -> list[Setting]:
        """The cross-setting grid (combinations :func:`validate_setting` rejects are skipped)."""
        out = []
        for g in self.grid_gen_lengths:
            for w in self.grid_windows:
                try:
                    validate_setting(g, w)
                except ValueError:
                    continue  # e.g. a block width that does not divide G
                for frac in self.grid_budget_fractions:
                    budget = None if frac >= 1.0 else max(1, int(round(g * frac)))
                    out.append(Setting(g, w, budget))
        return out


def _quick_heuristics(gen_length: int) -> list[PolicySpec]:
    keep = {
        "topk(k=1)",
        f"topk(k={gen_length})",
        "threshold(threshold=0.7)",
        "threshold(threshold=0.9)",
        "threshold(threshold=0.99)",
        "factor(factor=1.0)",
        "factor(factor=2.0)",
        "eb(gamma=0.1)",
        "eb(gamma=1.0)",
        "klass()",
        "prophet()",
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

    @property
    def default(self) -> Setting:
        """The default setting with an unlimited budget."""
        return Setting(self.cfg.setting.gen_length, self.cfg.setting.window, None)

    def sweep(self, specs: Sequence[PolicySpec], settings: Sequence[Setting]) -> None:
        """Evaluate ``specs`` on ``settings``, appending new records (skipping finished ones)."""

        def on_record(record: dict[str, Any]) -> None:
            append_jsonl_atomic(self.results_path, record)
            self.done.add(record_key(record))

        cfg = self.cfg
        run_sweep(
            self.backbone,
            cfg.tasks,
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
    """

    controller: PolicySpec
    ppo: PolicySpec | None = None

    @property
    def specs(self) -> list[PolicySpec]:
        """Every learned policy, controller first."""
        return [self.controller] + ([self.ppo] if self.ppo is not None else [])


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the whole pipeline; see the module docstring.

    Stages: :func:`heuristics_stage`, :func:`controller_stage`, :func:`ppo_stage`,
    :func:`grid_stage`, :func:`traces_stage` and :func:`report_stage`, each timed.

    Args:
        cfg: Bench settings.

    Returns:
        Summary with output paths and timings.
    """
    t0 = time.perf_counter()
    bench = _open_bench(cfg)

    def timed(name: str, stage: Any, *args: Any) -> Any:
        tick = time.perf_counter()
        result = stage(bench, *args)
        bench.timings[name] = time.perf_counter() - tick
        return result

    timed("heuristic_sweep", heuristics_stage)
    controller = timed("controller", controller_stage)
    learned = LearnedPolicies(controller)
    if cfg.ppo_timesteps > 0:
        learned = LearnedPolicies(controller, timed("ppo", ppo_stage))
    timed("grid", grid_stage, learned)
    traces = timed("traces", traces_stage, learned)
    return report_stage(bench, learned, traces, t0)


def _open_bench(cfg: BenchConfig) -> _Bench:
    """Output directory, config record, task check, backbone, and the records so far."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench_config.json", dataclasses.asdict(cfg))
    for t in cfg.tasks:
        get_task(t)  # fail fast on unknown names
    backbone = cfg.backbone_spec.load()
    results_path = out / "results.jsonl"
    done = {record_key(r) for r in read_jsonl(results_path)}
    return _Bench(cfg, out, backbone, results_path, done)


def heuristics_stage(bench: _Bench) -> None:
    """Stage 1: heuristic sweeps and the oracle on the default setting."""
    G = bench.cfg.setting.gen_length
    specs = heuristic_grid(G) if bench.cfg.mode == "full" else _quick_heuristics(G)
    bench.sweep(specs, [bench.default])


def controller_stage(bench: _Bench) -> PolicySpec:
    """Stage 2: the supervised controller, round 0 and on-policy rounds, reused when trained.

    One controller is trained over a mixture of settings (``default_training_mixture`` of every
    task's default G). Both rounds are measured on the default setting: round 0 at its learned
    threshold (family ``controller-round0``), the final round at a sweep of deployment
    thresholds (family ``controller``: its curve and AUP). ``--full`` adds the ablations
    (``OUT/controller/ablations.jsonl`` and ``ablations.md``, paired bootstrap intervals).
    ``cfg.extra["controller_on_policy_rounds"]`` (default 1) sets the number of on-policy rounds.

    Returns:
        The final round at its learned threshold (evaluated on the whole grid).
    """
    from commit_env.evaluation.controller import (
        ablation_records,
        ablation_table,
        controller_specs,
        learned_threshold,
    )
    from commit_env.supervised.rounds import train_ablations, train_controller_rounds

    cfg, bb = bench.cfg, bench.backbone
    rounds_cfg = _rounds_config(cfg, bench.out)
    rounds = train_controller_rounds(rounds_cfg, backbone=bb)
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
    bench.sweep(round0 + curve, [bench.default])
    if cfg.mode == "full":
        variants = {"full": rounds.final, **train_ablations(rounds, rounds_cfg, backbone=bb)}
        path = bench.out / "controller" / "ablations.jsonl"
        done = {record_key(r) for r in read_jsonl(path)}
        ablation_records(
            bb,
            cfg.tasks,
            variants,
            [bench.default],
            n=cfg.n,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            done=done,
            on_record=lambda r: append_jsonl_atomic(path, r),
            progress=cfg.progress,
        )
        table = ablation_table(read_jsonl(path))
        write_text_atomic(bench.out / "controller" / "ablations.md", table + "\n")
    tau = learned_threshold(rounds.final)
    return next(s for s in curve if dict(s.params)["threshold"] == tau)


def ppo_stage(bench: _Bench) -> PolicySpec:
    """Stage 3: a short PPO run warm-started by cloning the threshold rule.

    The env observation has no hidden features or prompt, and cloning the controller from it
    stalled (BCE ~0.67), so the Fast-dLLM threshold rule is the teacher.
    """
    teacher = make_policy("threshold", threshold=0.9)
    return _train_ppo(bench.cfg, bench.out, bench.backbone, teacher)


def grid_stage(bench: _Bench, learned: LearnedPolicies) -> None:
    """Stage 4: every policy over the grid of settings, and the learned ones on the default."""
    G = bench.cfg.setting.gen_length
    grid_heuristics = [s for s in _quick_heuristics(G) if s.name != "prophet"]
    for setting in bench.cfg.settings():
        specs = [
            s
            if s.label != f"topk(k={G})"
            else PolicySpec("all-at-once", "topk", (("k", setting.gen_length),))
            for s in grid_heuristics
        ]
        bench.sweep(specs + learned.specs, [setting])
    bench.sweep(learned.specs, [bench.default])  # for the Pareto picture


def traces_stage(bench: _Bench, learned: LearnedPolicies) -> list[dict[str, Any]]:
    """Stage 5: per-step stability data of three policies (``traces.json``, ``traces.png``)."""
    default = bench.default
    assert learned.controller.factory is not None
    specs: list[tuple[str, CommitPolicy]] = [
        ("sequential", make_policy("topk")),
        ("threshold 0.9", make_policy("threshold", threshold=0.9)),
        ("controller", learned.controller.factory(default.config())),
    ]
    cfg = bench.cfg
    traces = _trace_records(bench.backbone, cfg.tasks[0], specs, default.config(), 2, cfg.seed)
    write_json_atomic(bench.out / "traces.json", traces)
    return traces


def report_stage(
    bench: _Bench, learned: LearnedPolicies, traces: list[dict[str, Any]], t0: float
) -> dict[str, Any]:
    """Stage 6: ``results.json``, ``report.md``, the figures and ``summary.json``."""
    from commit_env.evaluation import plots, reports

    cfg, out = bench.cfg, bench.out
    G, window = cfg.setting.gen_length, cfg.setting.window
    records = read_jsonl(bench.results_path)
    write_json_atomic(out / "results.json", records)
    families = [s.family for s in learned.specs]
    cells = reports.cross_setting_cells(records, learned_families=families)
    default_records = [
        r
        for r in records
        if r["window"] == window and r["gen_length"] == G and r["step_budget"] is None
    ]
    plots.pareto_plot(default_records, out / "pareto.png")
    plots.cross_setting_plot([c for c in cells if c["task"] == "mean"], out / "cross_setting.png")
    plots.trace_plot(traces, out / "traces.png")
    bench.timings["total"] = time.perf_counter() - t0
    report = reports.render_report(
        records,
        cells,
        cfg=dataclasses.asdict(cfg),
        timings=bench.timings,
        default=(G, window),
    )
    write_text_atomic(out / "report.md", report)
    summary = {
        "out": str(out),
        "records": len(records),
        "timings": bench.timings,
        "device": str(bench.backbone.device),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def _rounds_config(cfg: BenchConfig, out: Path) -> Any:
    """The controller's rounds for this bench: a setting mixture at every task's default G."""
    from commit_env.evaluation.grid import task_gen_length
    from commit_env.supervised.rounds import RoundsConfig, default_training_mixture
    from commit_env.supervised.train import TrainConfig

    mixture: list[DecodeSetting] = []
    for g in sorted({task_gen_length(t) for t in cfg.tasks}):
        mixture += [s for s in default_training_mixture(g) if s not in mixture]
    return RoundsConfig(
        out=str(out / "controller"),
        backbone=cfg.backbone_spec,
        tasks=cfg.tasks,
        settings=tuple(mixture),
        n=cfg.collect_n,
        on_policy_n=max(1, cfg.collect_n // 2),
        on_policy_rounds=int(cfg.extra.get("controller_on_policy_rounds", 1)),
        train=TrainConfig(epochs=cfg.controller_epochs, rollout_n=0),
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
                    setting=cfg.setting,
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
