"""Supervised controller study: quality vs cost, ablations and on-policy rounds.

Usage (embedded backbone, CPU; about 15-25 minutes on 2 cores):
    python benchmarks/controller_study.py --out runs/controller-study

Prints, for the default setting (G=16, block:4): score and NFE of the sequential reference, the
tuned heuristics, the oracle and every controller variant (full, no hidden features, no history
features, no tau, + one on-policy round), the NFE-gap target check, the controller's forward cost
relative to the backbone's, and collection + training wall time.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from commit_env.evaluation.sweeps import PolicySpec, Setting, heuristic_grid, run_sweep
from commit_env.supervised.collect import CollectConfig, MixedPolicy, collect_traces
from commit_env.supervised.inputs import batch_from_state
from commit_env.supervised.policy import ControllerPolicy
from commit_env.supervised.train import TrainConfig, train

from commit_env.backbones import load_backbone
from commit_env.decoding import Decoder, FeatureBuilder
from commit_env.io import write_json_atomic
from commit_env.policies import make_policy

TASKS = ("qa", "math", "code")


def controller_spec(label, directory, backbone):
    policy = ControllerPolicy.from_pretrained(directory, backbone=backbone)
    return PolicySpec(label, "controller", (("variant", label),), factory=lambda c: policy)


def forward_cost(backbone, directory, setting, n=64, repeats=20):
    """Mean controller forward time / mean backbone forward time on a batch of n states."""
    from commit_env.evaluate import sample_examples
    from commit_env.tasks import get_task

    policy = ControllerPolicy.from_pretrained(directory, backbone=backbone)
    config = policy.decode_config(setting.config())
    prompts = [e.prompt for e in sample_examples(get_task("qa"), n, 0)]
    decoder = Decoder(backbone, config)
    state = decoder.start(prompts)
    builder = FeatureBuilder(policy.meta["feature_groups"], hidden_dim=config.hidden_features)
    canvas, att = state.canvas, state.attention_mask
    with torch.inference_mode():
        for _ in range(3):
            backbone.forward(canvas, att)
            policy.model(batch_from_state(state, builder))
        t0 = time.perf_counter()
        for _ in range(repeats):
            backbone.forward(canvas, att, hidden_layers=(-1,))
        t_backbone = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        for _ in range(repeats):
            policy.model(batch_from_state(state, builder))
        t_controller = (time.perf_counter() - t0) / repeats
    return t_controller / t_backbone, t_controller, t_backbone


def train_variants(out, collect, epochs, backbone, collect_n, timings):
    """Ablation variants on round 0, then one on-policy round (controller mixed with topk)."""
    base = TrainConfig(traces=(collect.out,), out=str(out / "full"), epochs=epochs, rollout_n=0)
    variants = {
        "full": base,
        "no-hidden": replace(base, out=str(out / "no-hidden"), drop_groups=("hidden",)),
        "no-history": replace(base, out=str(out / "no-history"), drop_groups=("history",)),
        "no-tau": replace(base, out=str(out / "no-tau"), use_tau=False),
    }
    summaries = {}
    for name, cfg in variants.items():
        t0 = time.perf_counter()
        summaries[name] = train(replace(cfg, progress=False))
        timings[f"train/{name}"] = time.perf_counter() - t0
    # one on-policy round: controller mixed with the reference, relabelled by completion
    t0 = time.perf_counter()
    learner = ControllerPolicy.from_pretrained(out / "full" / "best", backbone=backbone)
    round1 = replace(collect, out=str(out / "round1"), n=collect_n // 2, seed=2)
    collect_traces(
        round1,
        backbone=backbone,
        behaviour=MixedPolicy(learner=learner, reference=make_policy("topk"), beta=0.7),
        relabel_with_reference=True,
    )
    summaries["on-policy"] = train(
        replace(base, traces=(collect.out, round1.out), out=str(out / "on-policy"), progress=False)
    )
    timings["on-policy round"] = time.perf_counter() - t0
    return summaries


def print_tables(records, summaries):
    """Validation metrics per variant and the score/NFE table per task."""
    for name, s in summaries.items():
        b = s["best"]
        print(
            f"val {name:>10}: auroc {b['auroc']:.3f} ap {b['ap']:.3f} f05 {b['f05']:.3f} "
            f"(epoch {b['epoch']})"
        )
    print("\n| policy | " + " | ".join(f"{t} score | {t} NFE" for t in TASKS) + " |")
    print("|---|" + "---|---|" * len(TASKS))
    by = {(r["params_label"], r["task"]): r for r in records}
    for label in dict.fromkeys(r["params_label"] for r in records):
        cells = [f"{by[(label, t)]['score']:.3f} | {by[(label, t)]['nfe']:.2f}" for t in TASKS]
        print(f"| {label} | " + " | ".join(cells) + " |")


def print_gap(records, variants):
    """How much of the best heuristic's NFE gap to the oracle each controller closes."""
    by = {(r["params_label"], r["task"]): r for r in records}
    print("\nNFE-gap target (score >= sequential - 0.01):")
    for t in TASKS:
        seq = by[("topk(k=1)", t)]["score"]
        heur = [
            r
            for r in records
            if r["task"] == t
            and r["policy"] not in ("controller", "oracle")
            and r["score"] >= seq - 0.01
        ]
        best = min(heur, key=lambda r: r["nfe"]) if heur else None
        if best is None:
            continue
        oracle = by[("oracle()", t)]
        for name in variants:
            c = by[(f"controller(variant={name})", t)]
            ok_score = c["score"] >= seq - 0.01
            gap = best["nfe"] - oracle["nfe"]
            closed = (best["nfe"] - c["nfe"]) / gap if gap > 0 else float("nan")
            print(
                f"  {t:>5} {name:>10}: score {c['score']:.3f} (seq {seq:.3f}, ok={ok_score}) "
                f"NFE {c['nfe']:.2f}; best heuristic {best['params_label']} {best['nfe']:.2f}; "
                f"oracle {oracle['nfe']:.2f}; gap closed {closed:.2f}"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/controller-study")
    parser.add_argument("--collect-n", type=int, default=768)
    parser.add_argument("--eval-n", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    out = Path(args.out)
    backbone = load_backbone("tiny")
    setting = Setting(16, "block:4", None)
    timings = {}
    t0 = time.perf_counter()
    collect = CollectConfig(out=str(out / "round0"), n=args.collect_n, seed=1)
    info = collect_traces(collect, backbone=backbone)
    timings["collect"] = time.perf_counter() - t0
    summaries = train_variants(out, collect, args.epochs, backbone, args.collect_n, timings)
    specs = [s for s in heuristic_grid(16) if s.name != "prophet"]
    specs += [controller_spec(name, out / name / "best", backbone) for name in summaries]
    records = run_sweep(backbone, TASKS, specs, [setting], n=args.eval_n, seed=0)
    write_json_atomic(out / "records.json", records)
    print(
        f"\ncollection: {info['steps']} states from {info['traces']} traces, "
        f"{info['bytes_per_position_step']:.1f} bytes per position-step on disk"
    )
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    print_tables(records, summaries)
    print_gap(records, list(summaries))
    ratio, tc, tb = forward_cost(backbone, out / "full" / "best", setting)
    print(
        f"\ncontroller forward {tc * 1e3:.2f} ms vs backbone {tb * 1e3:.2f} ms at B=64: "
        f"ratio {ratio:.3f} (target <= 0.15)"
    )


if __name__ == "__main__":
    main()
