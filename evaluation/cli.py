"""The ``commit-env`` command line.

Subcommands:
    list             tasks, policies and backbones
    eval             score one policy on one task setting
    train-backbone   rebuild the embedded tiny backbone
    bench            the main job: sweeps, controller, grid evaluation, report and figures
    perf             performance table: engine overhead, batching, controller cost, trace size
    collect          record labelled decode traces for the supervised controller
    train-controller train the future-stability controller on traces
    train-ppo        train a PPO agent on the token-commitment environment
    ppo-sweep        PPO per step cost against the best tuned confidence threshold

Errors: every user error (a bad value, a missing or unusable path, a locked or mismatched run
directory) exits with status 2 and one line on stderr naming the value and what is valid;
unexpected internal errors keep their traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from commit_env.io import dumps_json

__all__ = ["main", "build_parser", "parse_params"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` on one line and exit with status 2."""
        print(f"{self.prog}: error: {_one_line(message)}", file=sys.stderr)
        raise SystemExit(2)


def _one_line(message: object) -> str:
    return " ".join(str(message).split()) or "(no message)"


def _int_at_least(low: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return convert


def _number(low: float | None = None, *, above: bool = False, below: float | None = None) -> Any:
    """A finite float in ``[low, below)`` (``(low, ...`` with ``above``), for argparse."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if above else '>='} {low:g}")
    if below is not None:
        bounds.append(f"< {below:g}")
    wanted = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if above else value >= low
        if ok and below is not None:
            ok = value < below
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return convert


def _sandbox_mode(text: str) -> str:
    from commit_env.tasks.sandbox import resolve_sandbox_mode

    try:
        return resolve_sandbox_mode(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


_POSITIVE = _int_at_least(1)
_NONNEGATIVE = _int_at_least(0)


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """Parse ``key=value`` strings.

    Args:
        items: Strings from ``--param``.

    Returns:
        The mapping (values stay strings; the policy registry converts them).

    Raises:
        ValueError: On an item without ``=``.
    """
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects key=value, got {item!r}")
        params[key] = value
    return params


def _add_sandbox_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sandbox",
        type=_sandbox_mode,
        default=None,
        help="isolation of generated code: auto (bubblewrap, else guards with a warning), "
        "strict (fail without bubblewrap), guards (default: $COMMIT_ENV_SANDBOX or auto)",
    )


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    """The full backbone spec: name, kind, device, dtype, remote code."""
    p.add_argument("--backbone", default="tiny", help="'tiny' or 'hf:<name-or-path>'")
    p.add_argument("--kind", default="auto", help="backbone kind: auto|masked-lm|llada|dream")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16")
    p.add_argument("--trust-remote-code", action="store_true")


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``, ``--workers`` and ``--gpus-per-worker`` (Ray scale-out)."""
    from commit_env.evaluation.distributed import add_ray_arguments

    add_ray_arguments(p)


def _backbone_spec(args: argparse.Namespace) -> Any:
    from commit_env.backbones.spec import BackboneSpec

    return BackboneSpec.of(args)


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    _add_backbone_args(p)
    p.add_argument("--task", default="qa", help="task name, e.g. qa, math:hard, code, gsm8k")
    p.add_argument("--gen-length", type=_POSITIVE, default=None, help="G (default: the task's)")
    p.add_argument("--window", default="full", help="block:B | sliding:W | full")
    p.add_argument("--budget", type=_POSITIVE, default=None, help="step budget (max NFE per row)")
    p.add_argument("--n", type=_POSITIVE, default=100, help="examples")
    p.add_argument(
        "--seed", type=_NONNEGATIVE, default=0, help="seed of the example draw and sampler"
    )
    p.add_argument("--temperature", type=_number(0.0), default=0.0)
    p.add_argument("--batch-size", type=_POSITIVE, default=64)
    _add_sandbox_arg(p)


def _add_eval(sub: Any) -> None:
    ev = sub.add_parser("eval", help="score one policy on one task setting")
    _add_decode_args(ev)
    ev.add_argument("--policy", default="topk", help="policy name (see `commit-env list`)")
    ev.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--json", action="store_true", help="print one JSON record")
    ev.add_argument("--no-progress", action="store_true")
    _add_ray_args(ev)


def _add_train_backbone(sub: Any) -> None:
    tb = sub.add_parser("train-backbone", help="rebuild the embedded tiny backbone")
    tb.add_argument("--out", default="commit_env/backbones/data/tiny-testbed")
    tb.add_argument("--steps", type=_POSITIVE, default=None)
    tb.add_argument("--batch-size", type=_POSITIVE, default=None)
    tb.add_argument("--seed", type=_NONNEGATIVE, default=None)
    tb.add_argument("--log-dir", default="runs/train-backbone")
    tb.add_argument(
        "--init-from",
        default=None,
        help="continue from this checkpoint's weights (e.g. an annealing stage on --out itself)",
    )
    tb.add_argument(
        "--mix",
        choices=("default", "anneal", "focus", "repair", "lists", "distinct", "ends"),
        default=None,
        help="corpus mixture",
    )
    tb.add_argument("--lr", type=_number(0, above=True), default=None, help="peak learning rate")
    tb.add_argument("--schedule", choices=("rsqrt", "cosine", "linear"), default=None)
    tb.add_argument("--warmup", type=_NONNEGATIVE, default=None, help="linear warm-up steps")


def _add_sweep(sub: Any) -> None:
    sw = sub.add_parser(
        "sweep", help="every heuristic (and the oracle) on tasks: a score/NFE table"
    )
    _add_decode_args(sw)
    sw.add_argument("--tasks", default="qa,math,code", help="comma-separated task names")
    sw.add_argument("--json-out", default=None, help="also write the records to this file")
    _add_ray_args(sw)


def _add_bench(sub: Any) -> None:
    be = sub.add_parser("bench", help="the main job (see evaluation/bench.py)")
    mode = be.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    be.set_defaults(mode="quick")
    be.add_argument("--out", default="bench-out")
    _add_backbone_args(be)
    be.set_defaults(backbone=None)  # the preset's: BENCH_BACKBONE
    be.add_argument("--task", action="append", default=None, help="task (repeatable)")
    be.add_argument(
        "--tasks",
        default=None,
        help="comma-separated tasks (default: QUICK_TASKS, --full: every testbed family; "
        "the original families: --backbone tiny --tasks qa,math,code)",
    )
    be.add_argument("--gen-length", type=_POSITIVE, default=None)
    be.add_argument("--window", default=None)
    be.add_argument("--n", type=_POSITIVE, default=None, help="examples per task and setting")
    be.add_argument(
        "--collect-n",
        type=_POSITIVE,
        default=None,
        help="controller trace prompts per task (default: 256, --full: 1024)",
    )
    be.add_argument(
        "--controller-labels",
        choices=("final", "nearest"),
        default=None,
        help="label kind of the controller's traces (default: final, --full: nearest; "
        "see `collect --labels`)",
    )
    be.add_argument(
        "--controller-nearest-margin",
        type=_NONNEGATIVE,
        default=None,
        help="with nearest labels: stable only where every answer within M agreements agrees",
    )
    be.add_argument("--ppo-timesteps", type=_NONNEGATIVE, default=None)
    be.add_argument(
        "--remask-n",
        type=_NONNEGATIVE,
        default=None,
        help="prompts per task and threshold for the learned remask head (0: skip it)",
    )
    be.add_argument("--batch-size", type=_POSITIVE, default=None)
    be.add_argument("--seed", type=_NONNEGATIVE, default=None)
    be.add_argument("--no-progress", action="store_true")
    be.add_argument(
        "--force",
        action="store_true",
        help="OUT holds a bench of other settings: discard its results and start over",
    )
    _add_sandbox_arg(be)
    _add_ray_args(be)


def _add_collect(sub: Any) -> None:
    co = sub.add_parser("collect", help="record labelled decode traces")
    co.add_argument("--out", default="traces/round0")
    _add_backbone_args(co)
    co.add_argument(
        "--task",
        action="append",
        default=None,
        help="task (repeatable; default: every embedded family at both levels)",
    )
    co.add_argument("--n", type=_POSITIVE, default=768, help="examples to decode")
    co.add_argument("--seed", type=_NONNEGATIVE, default=0)
    _add_setting_args(co)
    co.add_argument("--reference", default="topk", help="reference policy name")
    co.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reference policy parameter",
    )
    co.add_argument(
        "--hidden-features", type=_NONNEGATIVE, default=16, help="0 = no hidden features"
    )
    co.add_argument("--batch-size", type=_POSITIVE, default=128)
    co.add_argument(
        "--labels",
        choices=("final", "nearest"),
        default="final",
        help="final: stable = equals the decode's final token; nearest: equals the valid "
        "answer the state's committed tokens and proposals point to (tasks that list answers)",
    )
    _add_sandbox_arg(co)
    _add_ray_args(co)


def _add_setting_args(p: argparse.ArgumentParser) -> None:
    """G, window and budget, defaulting to the training setting."""
    from commit_env.decoding import TRAINING_SETTING as T

    p.add_argument("--gen-length", type=_POSITIVE, default=T.gen_length)
    p.add_argument("--window", default=T.window, help="block:B | sliding:W | full")
    p.add_argument("--budget", type=_POSITIVE, default=T.step_budget, help="step budget (max NFE)")


def _setting(args: argparse.Namespace) -> Any:
    from commit_env.decoding import DecodeSetting

    return DecodeSetting(args.gen_length, args.window, args.budget)


def _add_train_controller(sub: Any) -> None:
    tc = sub.add_parser("train-controller", help="train the stability controller")
    tc.add_argument("--traces", action="append", required=True, help="trace dir (repeatable)")
    tc.add_argument("--out", default="runs/controller")
    tc.add_argument("--epochs", type=_POSITIVE, default=None)
    tc.add_argument("--batch-size", type=_POSITIVE, default=None)
    tc.add_argument("--lr", type=_number(0.0, above=True), default=None)
    tc.add_argument("--threshold", type=_number(0.0, above=True, below=1.0), default=None)
    tc.add_argument("--no-tau", action="store_true", help="ablation: no learned threshold")
    tc.add_argument(
        "--drop-group",
        action="append",
        default=[],
        help="ablation: zero a feature group (confidence, history, position, global, hidden)",
    )
    tc.add_argument(
        "--rollout-n", type=_NONNEGATIVE, default=None, help="held-out closed-loop prompts"
    )
    tc.add_argument("--seed", type=_NONNEGATIVE, default=None)
    tc.add_argument("--device", default=None)
    tc.add_argument("--skip-corrupt", action="store_true", help="skip unreadable shards")
    tc.add_argument("--resume", action="store_true", help="continue from OUT/last")
    tc.add_argument(
        "--force",
        action="store_true",
        help="--resume even with other traces or hyperparameters than OUT/last's",
    )


def _add_train_remask_head(sub: Any) -> None:
    from commit_env.supervised.remask_train import RemaskTrainConfig

    d = RemaskTrainConfig()
    p = sub.add_parser(
        "train-remask-head",
        help="train a learned remask head for a controller (counterfactual rollouts)",
    )
    _add_backbone_args(p)
    p.set_defaults(backbone="tiny-testbed")
    p.add_argument("--controller", required=True, help="controller checkpoint directory")
    p.add_argument("--out", default="runs/remask-head")
    p.add_argument("--tasks", default=",".join(d.tasks), help="comma-separated task families")
    p.add_argument("--n", type=_POSITIVE, default=d.n, help="prompts per task and threshold")
    p.add_argument("--seed", type=_NONNEGATIVE, default=d.seed)
    p.add_argument(
        "--thresholds",
        type=_number(0.0, above=True, below=1.0),
        nargs="+",
        default=list(d.thresholds),
        help="controller thresholds the states are visited at",
    )
    p.add_argument("--margin", type=_number(-1.0, below=1.0), default=d.margin)
    p.add_argument("--epochs", type=_POSITIVE, default=d.epochs)
    p.add_argument("--threads", type=_POSITIVE, default=None, help="torch intra-op threads")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _add_ppo_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train-ppo`` and ``ppo-sweep``."""
    _add_backbone_args(p)
    p.add_argument("--task", default="qa")
    _add_setting_args(p)
    p.add_argument("--num-envs", type=_POSITIVE, default=16)
    p.add_argument("--seed", type=_NONNEGATIVE, default=0)
    p.add_argument(
        "--threads",
        type=_POSITIVE,
        default=None,
        help="torch intra-op threads (default: 1 for a small backbone on the CPU, else torch's; "
        "or COMMIT_ENV_NUM_THREADS)",
    )
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="learn without imitation: threshold action, potential-based shaping, conflict "
        "features (agents.train_ppo.FROM_SCRATCH)",
    )
    p.add_argument("--action-mode", choices=("mask", "threshold", "count"), default=None)
    p.add_argument(
        "--shaping", type=_number(0.0), default=None, help="potential-based shaping weight"
    )
    p.add_argument("--conflict-features", action="store_true", help="observe duplicate-token flags")
    p.add_argument(
        "--curriculum",
        type=_POSITIVE,
        nargs="+",
        default=None,
        help="increasing generation lengths",
    )


def _add_train_ppo(sub: Any) -> None:
    from commit_env.agents.train_ppo import PPOConfig

    d = PPOConfig()
    p = sub.add_parser(
        "train-ppo", help="train a PPO commitment agent (SB3) on the batched environment"
    )
    _add_ppo_args(p)
    p.add_argument("--step-cost", type=_number(0.0), default=d.step_cost, help="lambda per step")
    p.add_argument("--timesteps", type=_POSITIVE, default=d.timesteps)
    p.add_argument("--n-steps", type=_POSITIVE, default=d.n_steps)
    p.add_argument("--batch-size", type=_POSITIVE, default=d.batch_size)
    p.add_argument("--n-epochs", type=_POSITIVE, default=d.n_epochs)
    p.add_argument("--lr", type=_number(0.0, above=True), default=d.lr)
    p.add_argument("--ent-coef", type=_number(0.0), default=d.ent_coef)
    p.add_argument("--out", default=None, help="run directory (default runs/...)")
    p.add_argument("--algo", choices=("ppo", "maskable"), default=d.algo)
    p.add_argument("--eval-every", type=_NONNEGATIVE, default=d.eval_every)
    p.add_argument("--eval-n", type=_POSITIVE, default=d.eval_n)
    p.add_argument("--checkpoint-every", type=_NONNEGATIVE, default=d.checkpoint_every)
    p.add_argument("--max-minutes", type=_number(0.0, above=True), default=None)
    p.add_argument("--init", default=None, help="warm start, e.g. controller:DIR")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.zip")
    p.add_argument(
        "--force", action="store_true", help="--resume even with other settings than OUT's run"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _warm_start(text: str) -> str:
    if text != "none":
        _number(0.0, above=True, below=1.0)(text)
    return text


def _add_ppo_sweep(sub: Any) -> None:
    p = sub.add_parser(
        "ppo-sweep", help="PPO per step cost against the best tuned confidence threshold"
    )
    _add_ppo_args(p)
    p.add_argument("--lambdas", type=_number(0.0), nargs="+", default=[0.005, 0.02, 0.05])
    p.add_argument(
        "--minutes",
        type=_number(0.0, above=True),
        default=4.0,
        help="training minutes per agent (wall; CPU minutes with --from-scratch)",
    )
    p.add_argument("--timesteps", type=_POSITIVE, default=1_000_000, help="upper bound")
    p.add_argument("--eval-n", type=_POSITIVE, default=128)
    p.add_argument(
        "--warm-start", type=_warm_start, default="none", help="threshold to clone, or 'none'"
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        help="with --from-scratch: families, one agent per family and lambda at each family's "
        "default setting",
    )
    p.add_argument("--out", default="runs/lambda_sweep")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand (the one place they are wired)."""
    parser = _Parser(prog="commit-env", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list tasks, policies and backbones")
    for add in (
        _add_eval,
        _add_train_backbone,
        _add_sweep,
        _add_train_ppo,
        _add_ppo_sweep,
        _add_bench,
        _add_collect,
        _add_train_controller,
        _add_train_remask_head,
    ):
        add(sub)
    return parser


def _cmd_sweep(args: argparse.Namespace) -> int:
    from commit_env.evaluation.sweeps import Setting, heuristic_grid, markdown_table, run_sweep

    from commit_env.tasks import get_task

    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks:
        raise ValueError(f"--tasks names no task: {args.tasks!r}; e.g. qa,math,code")
    for t in tasks:
        get_task(t)  # validate before loading a model
    if args.json_out:
        _check_out_file(args.json_out, "--json-out")
    gen_length = 16 if args.gen_length is None else args.gen_length
    setting = Setting(gen_length, args.window, args.budget)
    backbone = _backbone_spec(args).load() if args.ray is None else None
    records = _ray_or_local(args, run_sweep)(
        backbone,
        tasks,
        heuristic_grid(gen_length),
        [setting],
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    print(f"setting: {setting.label}, n={args.n}, seed={args.seed}, backbone={args.backbone}")
    print(markdown_table(records))
    if args.json_out:
        from commit_env.evaluation.io import write_json_atomic

        write_json_atomic(args.json_out, records)
    return 0


def _bench_tasks(args: argparse.Namespace) -> tuple[str, ...] | None:
    tasks = list(args.task or [])
    if args.tasks:
        tasks += [t.strip() for t in args.tasks.split(",") if t.strip()]
    return tuple(tasks) or None


def _cmd_bench(args: argparse.Namespace) -> int:
    from commit_env.evaluation.bench import BenchConfig, run_bench

    overrides = {
        "window": args.window,
        "gen_length": args.gen_length,
        "out": args.out,
        "backbone": args.backbone,
        "kind": args.kind,
        "device": args.device,
        "dtype": args.dtype,
        "trust_remote_code": args.trust_remote_code,
        "tasks": _bench_tasks(args),
        "n": args.n,
        "collect_n": args.collect_n,
        "controller_labels": args.controller_labels,
        "controller_nearest_margin": args.controller_nearest_margin,
        "ppo_timesteps": args.ppo_timesteps,
        "remask_n": args.remask_n,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    cfg = BenchConfig.preset(args.mode, **{k: v for k, v in overrides.items() if v is not None})
    summary = _ray_or_local(args, run_bench)(cfg, **({"force": True} if args.force else {}))
    head = summary.pop("headline", None)
    print(dumps_json(summary, indent=2))
    if head is not None:
        from commit_env.evaluation.headline import format_headline

        print(format_headline(head))
    print(f"report: {summary['out']}/report.md (headline numbers also in summary.json)")
    return 0


def _ray_or_local(args: argparse.Namespace, local: Any) -> Any:
    """``local``, or its Ray counterpart when ``--ray`` is given (same arguments, same result)."""
    from commit_env.evaluation.distributed import ray_counterpart

    return ray_counterpart(args, local)


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # process-wide: entry-point setting only


def _ppo_config(args: argparse.Namespace, **fields: Any) -> Any:
    from commit_env.agents.train_ppo import FROM_SCRATCH, PPOConfig

    extra: dict[str, Any] = dict(FROM_SCRATCH) if args.from_scratch else {}
    if args.action_mode is not None:
        extra["action_mode"] = args.action_mode
        if args.action_mode != "mask":
            extra["policy"] = "mlp"
    if args.shaping is not None:
        extra["shaping"] = args.shaping
    if args.conflict_features and "conflict" not in extra.get("features", ()):
        extra["features"] = (*PPOConfig().features, "conflict")
    if args.curriculum:
        extra["curriculum"] = tuple(args.curriculum)
    extra.update(fields)
    return PPOConfig(
        task=args.task,
        backbone=_backbone_spec(args),
        setting=_setting(args),
        num_envs=args.num_envs,
        timesteps=args.timesteps,
        seed=args.seed,
        threads=args.threads,
        **extra,
    )


def _resolve_init(init: str | None) -> Any:
    """The teacher ``--init controller:DIR`` names (``None`` without ``--init``)."""
    if not init:
        return None
    kind, _, path = init.partition(":")
    if kind != "controller" or not path:
        raise ValueError(f"--init expects controller:DIR, got {init!r}")
    from commit_env.supervised.policy import ControllerPolicy

    return ControllerPolicy.from_pretrained(path)


def _cmd_train_ppo(args: argparse.Namespace) -> int:
    from commit_env.agents.train_ppo import train_ppo

    cfg = _ppo_config(
        args,
        step_cost=args.step_cost,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        lr=args.lr,
        ent_coef=args.ent_coef,
        out=args.out,
        algo=args.algo,
        eval_every=args.eval_every,
        eval_n=args.eval_n,
        checkpoint_every=args.checkpoint_every,
        max_minutes=args.max_minutes,
        init_teacher=args.init,
        progress_bar=not args.no_progress,
        resume=args.resume,
        force=args.force,
    )
    teacher = _resolve_init(args.init)
    _set_threads(args)
    summary = train_ppo(cfg, teacher)
    final = summary["final_eval"]
    print(
        f"{summary['out']}: {summary['timesteps']} steps in {summary['wall_time_s']:.0f}s "
        f"({summary['env_steps_per_s']:.0f} env-steps/s); eval score {final['score']:.3f}, "
        f"NFE {final['nfe']:.2f}, return {final['return']:.3f}"
    )
    print(dumps_json({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str))
    return 0


def _cmd_ppo_sweep(args: argparse.Namespace) -> int:
    from commit_env.agents.sweep import format_table, run_lambda_sweep

    from commit_env.rundir import RunLock

    _set_threads(args)
    if args.tasks and not args.from_scratch:
        raise ValueError("--tasks needs --from-scratch (the imitation sweep uses --task)")
    if args.from_scratch:
        from commit_env.agents.sweep import format_scratch_table, run_scratch_sweep

        from commit_env.tasks import get_task

        tasks = args.tasks or [args.task]
        for t in tasks:
            get_task(t)  # validate names before training
        with RunLock(args.out):
            records = run_scratch_sweep(
                args.lambdas,
                tasks,
                _ppo_config(args),
                minutes_per_agent=args.minutes,
                eval_n=args.eval_n,
                out=args.out,
            )
        print(format_scratch_table(records))
        return 0
    with RunLock(args.out):
        records = run_lambda_sweep(
            args.lambdas,
            _ppo_config(args),
            minutes_per_lambda=args.minutes,
            eval_n=args.eval_n,
            warm_start=None if args.warm_start == "none" else float(args.warm_start),
            out=args.out,
        )
    print(format_table(records))
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from commit_env.supervised.collect import DEFAULT_TASKS, CollectConfig, collect_traces

    cfg = CollectConfig(
        out=args.out,
        backbone=_backbone_spec(args),
        tasks=tuple(args.task) if args.task else DEFAULT_TASKS,
        n=args.n,
        seed=args.seed,
        setting=_setting(args),
        reference=args.reference,
        reference_params=tuple(parse_params(args.param).items()),
        feature_groups=("confidence", "history", "position", "global")
        + (("hidden",) if args.hidden_features else ()),
        hidden_features=args.hidden_features,
        batch_size=args.batch_size,
        device=args.device,
        labels=args.labels,
    )
    summary = _ray_or_local(args, collect_traces)(cfg)
    print(dumps_json({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


def _cmd_train_controller(args: argparse.Namespace) -> int:
    import dataclasses

    from commit_env.supervised.train import TrainConfig, train

    overrides = {
        "traces": tuple(args.traces),
        "out": args.out,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "threshold": args.threshold,
        "rollout_n": args.rollout_n,
        "seed": args.seed,
        "device": args.device,
        "drop_groups": tuple(args.drop_group),
        "use_tau": not args.no_tau,
        "skip_corrupt": args.skip_corrupt,
        "resume": args.resume,
        "force": args.force,
    }
    cfg = dataclasses.replace(
        TrainConfig(), **{k: v for k, v in overrides.items() if v is not None}
    )
    summary = train(cfg)
    print(dumps_json({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


def _cmd_train_remask_head(args: argparse.Namespace) -> int:
    from commit_env.supervised.remask_train import RemaskTrainConfig, train_remask_head

    from commit_env.envs.threads import configure_threads

    cfg = RemaskTrainConfig(
        tasks=tuple(t for t in args.tasks.split(",") if t),
        n=args.n,
        seed=args.seed,
        thresholds=tuple(args.thresholds),
        margin=args.margin,
        epochs=args.epochs,
        progress=args.progress,
    )
    backbone = _backbone_spec(args).load()
    configure_threads(args.threads, backbone)
    meta = train_remask_head(args.controller, backbone, cfg, args.out)
    print(dumps_json(meta, indent=2))
    return 0


def _cmd_list(_: argparse.Namespace) -> int:
    from commit_env.backbones import list_backbones
    from commit_env.policies import POLICIES
    from commit_env.tasks import list_tasks

    print("tasks:     ", ", ".join(list_tasks()))
    print("policies:  ", ", ".join(f"{n}{_fields(c)}" for n, c in sorted(POLICIES.items())))
    print("backbones: ", ", ".join(list_backbones()))
    return 0


def _fields(cls: Any) -> str:
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls) if f.init]
    return f"({', '.join(names)})"


def _cmd_eval(args: argparse.Namespace) -> int:
    from commit_env.decoding import DecodeConfig
    from commit_env.evaluate import evaluate_policy, reference_tokens, sample_examples
    from commit_env.policies import make_policy
    from commit_env.tasks import get_task

    task = get_task(args.task)  # validate names before loading a model
    params: dict[str, Any] = parse_params(args.param)
    if args.policy != "oracle":
        policy = make_policy(args.policy, **params)
    config = DecodeConfig(
        gen_length=task.default_gen_length if args.gen_length is None else args.gen_length,
        window=args.window,
        step_budget=args.budget,
        temperature=args.temperature,
        seed=args.seed,
    )
    examples = sample_examples(task, args.n, args.seed)  # data problems before a model loads
    backbone = _backbone_spec(args).load()
    if args.policy == "oracle":
        ref = reference_tokens(
            backbone, [e.prompt for e in examples], config, batch_size=args.batch_size
        )
        policy = make_policy("oracle", reference=ref, **params)
    config = policy.decode_config(config)  # e.g. remask_cap for the revocable policies
    ev = _ray_or_local(args, evaluate_policy)(
        backbone,
        task,
        policy,
        config,
        examples=examples,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    record = {
        "task": args.task,
        "policy": args.policy,
        "params": policy.params,
        "gen_length": config.gen_length,
        "window": config.window,
        "budget": args.budget,
        "seed": args.seed,
        **ev.summary(seed=args.seed),
    }
    if args.json:
        print(dumps_json(record, sort_keys=True))
    else:
        _print_eval(record, policy.describe(), config)
    return 0


def _print_eval(record: dict[str, Any], described: str, config: Any) -> None:
    print(
        f"{record['task']} | {described} | "
        f"G={config.gen_length} window={config.window} budget={record['budget']}\n"
        f"  score {record['score']:.3f}  (95% CI {record['score_ci_low']:.3f}"
        f"-{record['score_ci_high']:.3f}, n={record['n']})\n"
        f"  NFE {record['nfe']:.2f}  tokens/forward {record['tokens_per_forward']:.2f}  "
        f"forced-commit rate {record['forced_commit_rate']:.3f}  "
        f"wall {record['wall_time']:.2f}s on {record['device']}"
    )


def _cmd_train_backbone(args: argparse.Namespace) -> int:
    import dataclasses

    from commit_env.backbones.tiny import MIXES, TinyBackboneTrainConfig, train_tiny_backbone
    from commit_env.rundir import prepare_out_dir

    prepare_out_dir(args.out)  # a file or unwritable path fails now, not after training
    if args.log_dir:
        prepare_out_dir(args.log_dir, "--log-dir")
    if args.init_from is not None and not os.path.isfile(
        os.path.join(args.init_from, "config.json")
    ):
        raise ValueError(f"--init-from {args.init_from}: no checkpoint (config.json) there")
    overrides = {
        k: v
        for k, v in {
            "out": args.out,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "log_dir": args.log_dir,
            "init_from": args.init_from,
            "mix": MIXES[args.mix] if args.mix else None,
            "lr": args.lr,
            "schedule": args.schedule,
            "warmup": args.warmup,
        }.items()
        if v is not None
    }
    cfg = dataclasses.replace(TinyBackboneTrainConfig(), **overrides)
    summary = train_tiny_backbone(cfg)
    print(dumps_json({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


_COMMANDS = {
    "list": _cmd_list,
    "eval": _cmd_eval,
    "train-backbone": _cmd_train_backbone,
    "sweep": _cmd_sweep,
    "bench": _cmd_bench,
    "train-ppo": _cmd_train_ppo,
    "ppo-sweep": _cmd_ppo_sweep,
    "collect": _cmd_collect,
    "train-controller": _cmd_train_controller,
    "train-remask-head": _cmd_train_remask_head,
}


def _check_out_file(path: str, flag: str) -> None:
    """An output file's path: not a directory, its parent a writable directory."""
    from pathlib import Path

    from commit_env.errors import RunDirError

    target = Path(path)
    if target.is_dir():
        raise RunDirError(f"{flag} {path} is a directory; expected a file path")
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise RunDirError(f"{flag} {path}: {parent} is a file, not a directory")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"{flag} {path}: {parent} is not writable by this user")


def _check_options(args: argparse.Namespace) -> None:
    """Validate options that need no model before any work starts (device, sandbox)."""
    device = getattr(args, "device", None)
    if device is not None:
        from commit_env.backbones.hf import resolve_device

        resolve_device(device)  # unknown, or CUDA/MPS absent here: one line now, not a traceback
    mode = getattr(args, "sandbox", None)
    if mode is not None:
        from commit_env.tasks.sandbox import sandbox_backend

        sandbox_backend(mode)  # strict without bubblewrap fails here, before any decoding


def _quiet_hub() -> None:
    """The Hub client logs every retry (many lines offline); an error still ends in one line."""
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # read when huggingface_hub is imported
    hub_logging = sys.modules.get("huggingface_hub.utils.logging")
    if hub_logging is not None:
        hub_logging.set_verbosity_error()


def _user_errors() -> tuple[type[BaseException], ...]:
    from commit_env.errors import CommitEnvError

    return (ValueError, TypeError, CommitEnvError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``commit-env`` console script.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Process exit code: 0, or 2 on bad input with one line naming it on stderr (argparse's
        own errors included); unexpected internal errors propagate with their traceback.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a one-line parse error (2)
        return stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    if not args.verbose:
        _quiet_hub()
    from commit_env.tasks.sandbox import ENV_VAR

    saved = os.environ.get(ENV_VAR)
    try:
        _check_options(args)
        if getattr(args, "sandbox", None) is not None:
            os.environ[ENV_VAR] = args.sandbox  # read by the code tasks' scorers
        return _COMMANDS[args.command](args)
    except _user_errors() as err:
        print(f"commit-env {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        if saved is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved


if __name__ == "__main__":
    sys.exit(main())
