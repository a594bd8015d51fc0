"""KV caches vs none: quality, NFE, forward tokens and wall time of the same decodes.

For every (task, policy) pair the same seeded examples are decoded three times, without a cache
and with the engine's Fast-dLLM prefix and dual caches (``DecodeConfig.kv_cache``), and scored with
the task's verifier. Reported per mode: task score, token agreement and exact-row agreement with
the uncached decode, mean NFE, mean forward tokens (and the share saved), cache refreshes per row
and wall time.

Usage (CPU, a few minutes)::

    python benchmarks/bench_kv_cache.py                          # embedded backbone
    python benchmarks/bench_kv_cache.py --backbone random-llama  # tiny random LLaMA (LLaDA-style)
    python benchmarks/bench_kv_cache.py --json kv.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from commit_env.backbones import load_backbone
from commit_env.decoding import DecodeConfig
from commit_env.evaluate import evaluate_policy, sample_examples
from commit_env.policies import make_policy
from commit_env.tasks import get_task

POLICIES = {"topk": {}, "threshold": {"threshold": 0.9}, "eb": {}}


def random_llama(layers: int = 4, seed: int = 0) -> Any:
    """A random LLaMA stack (driven as LLaDA) over the embedded tokenizer; scores are ~0."""
    import transformers

    from commit_env.backbones import HFBackbone

    tokenizer = load_backbone("tiny", device="cpu").tokenizer
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.2,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    return HFBackbone(
        model,
        tokenizer,
        name=f"random-llama-{layers}",
        kind="llada",
        pad_token_id=int(tokenizer.pad_token_id),
        eos_token_ids=(int(tokenizer.eos_token_id),),
    )


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """All measurements, one record per (task, policy, mode)."""
    if args.backbone == "random-llama":
        backbone = random_llama(args.layers)
    else:
        backbone = load_backbone(args.backbone)
    rows: list[dict[str, Any]] = []
    for task_name in args.tasks.split(","):
        task = get_task(task_name)
        examples = sample_examples(task, args.n, args.seed)
        for policy_name in args.policies.split(","):
            base = None
            for mode in ("none", "prefix", "dual"):
                config = DecodeConfig(
                    gen_length=args.gen_length, window=f"block:{args.block}", kv_cache=mode
                )
                policy = make_policy(policy_name, **POLICIES.get(policy_name, {}))
                ev = evaluate_policy(backbone, task, policy, config, examples=examples)
                result = ev.result
                if base is None:
                    base = result
                same = result.tokens == base.tokens
                uncached = (result.nfe * result.canvas_tokens).float().sum()
                record = {
                    "backbone": backbone.name,
                    "task": task_name,
                    "policy": policy_name,
                    "kv_cache": mode,
                    "score": float(ev.scores.mean()),
                    "token_agreement": float(same.float().mean()),
                    "row_agreement": float(same.all(-1).float().mean()),
                    "nfe": float(result.nfe.float().mean()),
                    "forward_tokens": float(result.forward_tokens.float().mean()),
                    "saved": 1.0 - float(result.forward_tokens.float().sum() / uncached),
                    "kv_refreshes": float(result.kv_refreshes.float().mean()),
                    "wall_time": result.wall_time,
                }
                rows.append(record)
                print(
                    f"{task_name:6s} {policy_name:9s} {mode:6s} score {record['score']:.3f} "
                    f"agree {record['token_agreement']:.3f}/{record['row_agreement']:.3f} "
                    f"nfe {record['nfe']:.2f} fwd-tokens {record['forward_tokens']:.1f} "
                    f"(saved {record['saved']:.0%}) refreshes {record['kv_refreshes']:.2f} "
                    f"{record['wall_time']:.2f} s",
                    flush=True,
                )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The records as a markdown table."""
    lines = [
        "| task | policy | kv_cache | score | token / row agreement | NFE | forward tokens "
        "| saved | refreshes | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['policy']} | {r['kv_cache']} | {r['score']:.3f} "
            f"| {r['token_agreement']:.3f} / {r['row_agreement']:.3f} | {r['nfe']:.2f} "
            f"| {r['forward_tokens']:.1f} | {r['saved']:.0%} | {r['kv_refreshes']:.2f} "
            f"| {r['wall_time']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="tiny", help="'tiny', 'hf:...' or 'random-llama'")
    parser.add_argument("--layers", type=int, default=4, help="layers of random-llama")
    parser.add_argument("--tasks", default="qa,math")
    parser.add_argument("--policies", default="topk,threshold,eb")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gen-length", type=int, default=16)
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = run(args)
    print()
    print(table(rows))
    if args.json is not None:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
