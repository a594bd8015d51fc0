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
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_parser", "parse_params"]


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


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="tiny", help="'tiny' or 'hf:<name-or-path>'")
    p.add_argument("--kind", default="auto", help="backbone kind: auto|masked-lm|llada|dream")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--task", default="qa", help="task name, e.g. qa, math:hard, code, gsm8k")
    p.add_argument("--gen-length", type=int, default=None, help="G (default: the task's)")
    p.add_argument("--window", default="full", help="block:B | sliding:W | full")
    p.add_argument("--budget", type=int, default=None, help="step budget (max NFE per row)")
    p.add_argument("--n", type=int, default=100, help="examples")
    p.add_argument("--seed", type=int, default=0, help="seed of the example draw and sampler")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=64)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="commit-env", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list tasks, policies and backbones")

    ev = sub.add_parser("eval", help="score one policy on one task setting")
    _add_decode_args(ev)
    ev.add_argument("--policy", default="topk", help="policy name (see `commit-env list`)")
    ev.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--json", action="store_true", help="print one JSON record")
    ev.add_argument("--no-progress", action="store_true")

    tb = sub.add_parser("train-backbone", help="rebuild the embedded tiny backbone")
    tb.add_argument("--out", default="commit_env/backbones/data/tiny")
    tb.add_argument("--steps", type=int, default=None)
    tb.add_argument("--batch-size", type=int, default=None)
    tb.add_argument("--seed", type=int, default=None)
    tb.add_argument("--log-dir", default="runs/train-backbone")
    sw = sub.add_parser(
        "sweep", help="every heuristic (and the oracle) on tasks: a score/NFE table"
    )
    _add_decode_args(sw)
    sw.add_argument("--tasks", default="qa,math,code", help="comma-separated task names")
    sw.add_argument("--json-out", default=None, help="also write the records to this file")

    from commit_env.agents.train_ppo import add_cli as add_train_ppo

    add_train_ppo(sub)

    be = sub.add_parser("bench", help="the main job (see evaluation/bench.py)")
    mode = be.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    be.set_defaults(mode="quick")
    be.add_argument("--out", default="bench-out")
    be.add_argument("--backbone", default="tiny")
    be.add_argument("--kind", default="auto")
    be.add_argument("--device", default=None)
    be.add_argument("--dtype", default=None)
    be.add_argument("--trust-remote-code", action="store_true")
    be.add_argument("--task", action="append", default=None, help="task (repeatable)")
    be.add_argument("--gen-length", type=int, default=None)
    be.add_argument("--window", default=None)
    be.add_argument("--n", type=int, default=None, help="examples per task and setting")
    be.add_argument("--collect-n", type=int, default=None)
    be.add_argument("--ppo-timesteps", type=int, default=None)
    be.add_argument("--batch-size", type=int, default=None)
    be.add_argument("--seed", type=int, default=None)
    be.add_argument("--no-progress", action="store_true")

    co = sub.add_parser("collect", help="record labelled decode traces")
    co.add_argument("--out", default="traces/round0")
    co.add_argument("--backbone", default="tiny")
    co.add_argument("--device", default=None)
    co.add_argument(
        "--task",
        action="append",
        default=None,
        help="task (repeatable; default: every embedded family at both levels)",
    )
    co.add_argument("--n", type=int, default=768, help="examples to decode")
    co.add_argument("--seed", type=int, default=0)
    co.add_argument("--gen-length", type=int, default=16)
    co.add_argument("--window", default="block:4")
    co.add_argument("--budget", type=int, default=None)
    co.add_argument("--reference", default="topk", help="reference policy name")
    co.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reference policy parameter",
    )
    co.add_argument("--hidden-features", type=int, default=16, help="0 = no hidden features")
    co.add_argument("--batch-size", type=int, default=128)

    tc = sub.add_parser("train-controller", help="train the stability controller")
    tc.add_argument("--traces", action="append", required=True, help="trace dir (repeatable)")
    tc.add_argument("--out", default="runs/controller")
    tc.add_argument("--epochs", type=int, default=None)
    tc.add_argument("--batch-size", type=int, default=None)
    tc.add_argument("--lr", type=float, default=None)
    tc.add_argument("--threshold", type=float, default=None)
    tc.add_argument("--no-tau", action="store_true", help="ablation: no learned threshold")
    tc.add_argument(
        "--drop-group",
        action="append",
        default=[],
        help="ablation: zero a feature group (hidden, history, ...)",
    )
    tc.add_argument("--rollout-n", type=int, default=None, help="held-out closed-loop prompts")
    tc.add_argument("--seed", type=int, default=None)
    tc.add_argument("--device", default=None)
    tc.add_argument("--skip-corrupt", action="store_true", help="skip unreadable shards")
    tc.add_argument("--resume", action="store_true")
    return parser


def _cmd_sweep(args: argparse.Namespace) -> int:
    from commit_env.backbones import load_backbone
    from commit_env.tasks import get_task
    from commit_env.evaluation.sweeps import Setting, heuristic_grid, markdown_table, run_sweep

    tasks = [t for t in args.tasks.split(",") if t]
    for t in tasks:
        get_task(t)  # validate before loading a model
    gen_length = args.gen_length or 16
    setting = Setting(gen_length, args.window, args.budget)
    backbone = load_backbone(
        args.backbone,
        kind=args.kind,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )
    records = run_sweep(
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


def _cmd_bench(args: argparse.Namespace) -> int:
    from commit_env.evaluation.bench import BenchConfig, run_bench

    overrides = {
        "out": args.out,
        "backbone": args.backbone,
        "kind": args.kind,
        "device": args.device,
        "dtype": args.dtype,
        "trust_remote_code": args.trust_remote_code,
        "tasks": tuple(args.task) if args.task else None,
        "gen_length": args.gen_length,
        "window": args.window,
        "n": args.n,
        "collect_n": args.collect_n,
        "ppo_timesteps": args.ppo_timesteps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    cfg = BenchConfig.preset(args.mode, **{k: v for k, v in overrides.items() if v is not None})
    if cfg.gen_length not in cfg.grid_gen_lengths:
        import dataclasses

        cfg = dataclasses.replace(cfg, grid_gen_lengths=(cfg.gen_length,))
    summary = run_bench(cfg)
    print(json.dumps(summary, indent=2))
    print(f"report: {summary['out']}/report.md")
    return 0


def _cmd_train_ppo(args: argparse.Namespace) -> int:
    from commit_env.agents.train_ppo import run_cli

    teacher = None
    if args.init:
        kind, _, path = args.init.partition(":")
        if kind != "controller" or not path:
            raise ValueError(f"--init expects controller:DIR, got {args.init!r}")
        from commit_env.supervised.policy import ControllerPolicy

        teacher = ControllerPolicy.from_pretrained(path)
    summary = run_cli(args, teacher)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2, default=str))
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from commit_env.supervised.collect import DEFAULT_TASKS, CollectConfig, collect_traces

    cfg = CollectConfig(
        out=args.out,
        backbone=args.backbone,
        tasks=tuple(args.task) if args.task else DEFAULT_TASKS,
        n=args.n,
        seed=args.seed,
        gen_length=args.gen_length,
        window=args.window,
        step_budget=args.budget,
        reference=args.reference,
        reference_params=tuple(parse_params(args.param).items()),
        feature_groups=("confidence", "history", "position", "global")
        + (("hidden",) if args.hidden_features else ()),
        hidden_features=args.hidden_features,
        batch_size=args.batch_size,
        device=args.device,
    )
    summary = collect_traces(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
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
    }
    cfg = dataclasses.replace(
        TrainConfig(), **{k: v for k, v in overrides.items() if v is not None}
    )
    summary = train(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
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
    from commit_env.backbones import load_backbone
    from commit_env.decoding import DecodeConfig
    from commit_env.evaluate import evaluate_policy, reference_tokens, sample_examples
    from commit_env.policies import make_policy
    from commit_env.tasks import get_task

    task = get_task(args.task)  # validate names before loading a model
    params: dict[str, Any] = parse_params(args.param)
    if args.policy != "oracle":
        policy = make_policy(args.policy, **params)
    config = DecodeConfig(
        gen_length=args.gen_length or task.default_gen_length,
        window=args.window,
        step_budget=args.budget,
        temperature=args.temperature,
        seed=args.seed,
    )
    backbone = load_backbone(
        args.backbone,
        kind=args.kind,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )
    examples = sample_examples(task, args.n, args.seed)
    if args.policy == "oracle":
        ref = reference_tokens(
            backbone, [e.prompt for e in examples], config, batch_size=args.batch_size
        )
        policy = make_policy("oracle", reference=ref, **params)
    ev = evaluate_policy(
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
        "params": policy.params if hasattr(policy, "params") else params,
        "gen_length": config.gen_length,
        "window": config.window,
        "budget": args.budget,
        "seed": args.seed,
        **ev.summary(seed=args.seed),
    }
    if args.json:
        print(json.dumps(record, sort_keys=True))
    else:
        print(
            f"{args.task} | {getattr(policy, 'describe', lambda: args.policy)()} | "
            f"G={config.gen_length} window={config.window} budget={args.budget}\n"
            f"  score {record['score']:.3f}  (95% CI {record['score_ci_low']:.3f}"
            f"-{record['score_ci_high']:.3f}, n={record['n']})\n"
            f"  NFE {record['nfe']:.2f}  tokens/forward {record['tokens_per_forward']:.2f}  "
            f"forced-commit rate {record['forced_commit_rate']:.3f}  "
            f"wall {record['wall_time']:.2f}s on {record['device']}"
        )
    return 0


def _cmd_train_backbone(args: argparse.Namespace) -> int:
    import dataclasses

    from commit_env.backbones.tiny import TinyBackboneTrainConfig, train_tiny_backbone

    overrides = {
        k: v
        for k, v in {
            "out": args.out,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "log_dir": args.log_dir,
        }.items()
        if v is not None
    }
    cfg = dataclasses.replace(TinyBackboneTrainConfig(), **overrides)
    summary = train_tiny_backbone(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


_COMMANDS = {
    "list": _cmd_list,
    "eval": _cmd_eval,
    "train-backbone": _cmd_train_backbone,
    "sweep": _cmd_sweep,
    "bench": _cmd_bench,
    "train-ppo": _cmd_train_ppo,
    "collect": _cmd_collect,
    "train-controller": _cmd_train_controller,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``commit-env`` console script.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Process exit code (2 on bad input, with the reason on stderr).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, TypeError) as err:
        print(f"commit-env {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
