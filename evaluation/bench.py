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

from commit_env.backbones import load_backbone
from commit_env.backbones.base import Backbone
from commit_env.decoding import DecodeConfig, decode
from commit_env.evaluate import sample_examples
from commit_env.policies import make_policy
from commit_env.tasks import get_task
from commit_env.evaluation.io import append_jsonl_atomic, read_jsonl, write_json_atomic
from commit_env.evaluation.sweeps import PolicySpec, Setting, heuristic_grid, record_key, run_sweep

__all__ = ["BenchConfig", "run_bench"]

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
        gen_length: G of the default setting (the one the controller is trained on).
        window: Window of the default setting.
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
    gen_length: int = 16
    window: str = "block:4"
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

    def settings(self) -> list[Setting]:
        """The cross-setting grid (windows wider than G are skipped; blocks must divide G)."""
        out = []
        for g in self.grid_gen_lengths:
            for w in self.grid_windows:
                kind, _, width = w.partition(":")
                if kind == "block" and g % int(width):
                    continue
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
    specs: Sequence[tuple[str, Any]],
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
        cfg = getattr(policy, "decode_config", lambda c: c)(config)
        result = decode(backbone, prompts, policy, dataclasses.replace(cfg, record_trace=True))
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


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the whole pipeline; see the module docstring.

    Args:
        cfg: Bench settings.

    Returns:
        Summary with output paths and timings.
    """
    from commit_env.evaluation import plots, reports

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench_config.json", dataclasses.asdict(cfg))
    timings: dict[str, float] = {}
    for t in cfg.tasks:
        get_task(t)  # fail fast on unknown names
    backbone = load_backbone(
        cfg.backbone,
        kind=cfg.kind,
        device=cfg.device,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
    )
    results_path = out / "results.jsonl"
    existing = read_jsonl(results_path)
    done = {record_key(r) for r in existing}

    def on_record(record: dict[str, Any]) -> None:
        append_jsonl_atomic(results_path, record)
        done.add(record_key(record))

    def sweep(specs: Sequence[PolicySpec], settings: Sequence[Setting]) -> None:
        run_sweep(
            backbone,
            cfg.tasks,
            specs,
            settings,
            n=cfg.n,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            done=done,
            on_record=on_record,
            progress=cfg.progress,
        )

    default = Setting(cfg.gen_length, cfg.window, None)
    heuristics = (
        heuristic_grid(cfg.gen_length) if cfg.mode == "full" else _quick_heuristics(cfg.gen_length)
    )

    # ----- 1. heuristic sweeps and the oracle on the default setting
    tick = time.perf_counter()
    sweep(heuristics, [default])
    timings["heuristic_sweep"] = time.perf_counter() - tick

    # ----- 2. traces and the supervised controller
    tick = time.perf_counter()
    controller_dir = _train_controller(cfg, backbone, out)
    timings["controller"] = time.perf_counter() - tick

    learned = [
        PolicySpec(
            "controller",
            "controller",
            (("threshold", "learned"),),
            factory=_controller_factory(controller_dir, backbone),
        )
    ]
    # ----- 3. optional PPO agent
    if cfg.ppo_timesteps > 0:
        tick = time.perf_counter()
        # Warm start by behaviour cloning of the Fast-dLLM threshold rule: the env observation has
        # no hidden features or prompt, and cloning the controller from it stalled (BCE ~0.67).
        teacher = make_policy("threshold", threshold=0.9)
        learned.append(_train_ppo(cfg, out, backbone, teacher))
        timings["ppo"] = time.perf_counter() - tick

    # ----- 4. every policy over the grid of settings
    tick = time.perf_counter()
    grid_heuristics = [s for s in _quick_heuristics(cfg.gen_length) if s.name != "prophet"]
    for setting in cfg.settings():
        specs = [
            s
            if s.label != f"topk(k={cfg.gen_length})"
            else PolicySpec("all-at-once", "topk", (("k", setting.gen_length),))
            for s in grid_heuristics
        ]
        sweep(specs + learned, [setting])
    # learned policies on the default setting too (for the Pareto picture)
    sweep(learned, [default])
    timings["grid"] = time.perf_counter() - tick

    # ----- 5. traces picture data
    tick = time.perf_counter()
    ctrl = learned[0].factory(default.config())
    trace_specs = [
        ("sequential", make_policy("topk")),
        ("threshold 0.9", make_policy("threshold", threshold=0.9)),
        ("controller", ctrl),
    ]
    traces = _trace_records(backbone, cfg.tasks[0], trace_specs, default.config(), 2, cfg.seed)
    write_json_atomic(out / "traces.json", traces)
    timings["traces"] = time.perf_counter() - tick

    # ----- 6. results, report and figures
    records = read_jsonl(results_path)
    write_json_atomic(out / "results.json", records)
    cells = reports.cross_setting_cells(records, learned_families=[s.family for s in learned])
    plots.pareto_plot(
        [
            r
            for r in records
            if r["window"] == cfg.window
            and r["gen_length"] == cfg.gen_length
            and r["step_budget"] is None
        ],
        out / "pareto.png",
    )
    plots.cross_setting_plot([c for c in cells if c["task"] == "mean"], out / "cross_setting.png")
    plots.trace_plot(traces, out / "traces.png")
    timings["total"] = time.perf_counter() - t0
    report = reports.render_report(
        records,
        cells,
        cfg=dataclasses.asdict(cfg),
        timings=timings,
        default=(cfg.gen_length, cfg.window),
    )
    (out / "report.md").write_text(report)
    summary = {
        "out": str(out),
        "records": len(records),
        "timings": timings,
        "device": str(backbone.device),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def _train_controller(cfg: BenchConfig, backbone: Backbone, out: Path) -> Path:
    from commit_env.supervised.collect import CollectConfig, collect_traces
    from commit_env.supervised.train import TrainConfig, train

    controller_dir = out / "controller"
    if (controller_dir / "summary.json").is_file():
        logger.info("reusing trained controller in %s", controller_dir)
        return controller_dir / "best"
    collect = CollectConfig(
        out=str(out / "traces" / "round0"),
        backbone=cfg.backbone,
        n=cfg.collect_n,
        seed=cfg.seed + 1,
        gen_length=cfg.gen_length,
        window=cfg.window,
        batch_size=cfg.batch_size,
        device=cfg.device,
    )
    collect_traces(collect, backbone=backbone, progress=cfg.progress)
    train(
        TrainConfig(
            traces=(collect.out,),
            out=str(controller_dir),
            epochs=cfg.controller_epochs,
            rollout_n=0,
            seed=cfg.seed,
            device=cfg.device,
            progress=cfg.progress,
        )
    )
    return controller_dir / "best"


def _controller_factory(directory: Path, backbone: Backbone) -> Any:
    from commit_env.supervised.policy import ControllerPolicy

    policy = ControllerPolicy.from_pretrained(directory, backbone=backbone)

    def build(config: DecodeConfig) -> Any:
        return policy

    return build


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
                    gen_length=cfg.gen_length,
                    window=cfg.window,
                    seed=cfg.seed,
                    step_cost=0.02,
                    init_teacher="controller",
                    bc_episodes=64,
                    progress_bar=cfg.progress,
                    backbone=cfg.backbone,
                ),
                teacher=teacher,
            )
        finally:
            torch.set_num_threads(threads)
    policy = PPOPolicy.load(ppo_dir / "final.zip", backbone=backbone)

    def build(config: DecodeConfig) -> Any:
        return policy if config.gen_length <= policy.gen_length else None

    return PolicySpec("ppo", "ppo", (("step_cost", policy.step_cost),), factory=build)
