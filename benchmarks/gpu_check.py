"""One-command GPU check of the decode stack on a random-weight model of real size.

Builds a model from a config (no download; random weights, so quality means nothing here, only
speed), wraps it as a backbone and measures, printing one table:

1. **engine overhead per step** at B = ``--batch``: ``Decoder.step`` (commit, finish, one batched
   forward, feature update, window update) minus the ``backbone.forward`` timed inside that step,
   as a fraction of the forward (target <= 5 %); plus the bare forward and the EB policy's
   ``select`` time;
2. **decode throughput** (generated tokens / s, full ``decode`` calls with a fixed top-k schedule of
   ``--steps`` forwards) at B = 1 and B = ``--batch`` and their ratio (target >= 20x);
3. **vector env speed-up**: env-steps / s of ``CommitVectorEnv`` with ``--batch`` slots over a
   single ``CommitEnv`` (target >= 20x);
4. **controller cost**: one ``select`` of a randomly initialised stability controller (the
   supervised policy's network, default size) at B = ``--batch`` vs the forward (target <= 1 %);
5. **KV-cache speed-up**: whole decodes at B = ``--batch`` in blocks of ``--block`` with the same
   fixed top-k schedule, without a cache and with the engine's Fast-dLLM prefix and dual caches:
   wall time, forward tokens and cache refreshes, and how many generated tokens agree with the
   uncached decode (random weights: agreement only shows how approximate the cache is here, it
   is not a quality measure).

Shapes (``--shape``): ``llada-8b`` (default on CUDA: LLaMA stack of LLaDA-8B's size, 32 layers,
width 4096, vocabulary 126464, driven non-causally like LLaDA, bf16) or ``bert-large`` (a 24-layer
BERT-shaped masked LM). ``--cpu-smoke`` runs the same code on a tiny LLaMA on the CPU (< 60 s) so
the script is tested without a GPU. Tokens come from the embedded backbone's tokenizer (its ids
lie inside every shape's vocabulary); the mask id is LLaDA's (126336) or the vocabulary's last id.

Usage::

    python benchmarks/gpu_check.py                 # GPU, ~2-4 min on one H100/H200
    python benchmarks/gpu_check.py --shape bert-large
    python benchmarks/gpu_check.py --cpu-smoke --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from commit_env.backbones import HFBackbone, load_backbone
from commit_env.decoding import DecodeConfig, Decoder, FeatureBuilder, decode
from commit_env.policies import EntropyBoundPolicy, TopKPolicy

SHAPES: dict[str, dict[str, Any]] = {
    "llada-8b": {
        "arch": "llama",
        "kind": "llada",
        "vocab_size": 126464,
        "mask_token_id": 126336,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
    },
    "bert-large": {
        "arch": "bert",
        "kind": "masked-lm",
        "vocab_size": 30522,
        "mask_token_id": 103,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "max_position_embeddings": 512,
    },
    "smoke": {
        "arch": "llama",
        "kind": "llada",
        "vocab_size": 256,
        "mask_token_id": 255,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
    },
}

TARGETS = {
    "engine_overhead": ("<= 5% of the forward at B=batch", lambda v: v <= 0.05),
    "throughput_ratio": (">= 20x batch-1", lambda v: v >= 20.0),
    "vector_env_speedup": (">= 20x single env", lambda v: v >= 20.0),
    "controller_cost": ("<= 1% of the forward", lambda v: v <= 0.01),
}


@dataclass
class Timer:
    """Wall-clock timing that waits for the device before reading the clock."""

    device: torch.device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def median(self, fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
        """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def build_backbone(shape: str, device: torch.device, dtype: torch.dtype) -> HFBackbone:
    """A random-weight model of ``shape`` built from its config, wrapped as a backbone."""
    import transformers

    spec = dict(SHAPES[shape])
    arch, kind, mask_id = spec.pop("arch"), spec.pop("kind"), spec.pop("mask_token_id")
    tokenizer = load_backbone("tiny", device="cpu").tokenizer  # ids < 256 fit every shape
    if arch == "llama":
        config = transformers.LlamaConfig(
            **spec, tie_word_embeddings=False, attn_implementation="sdpa"
        )
        model_cls = transformers.LlamaForCausalLM
    else:
        config = transformers.BertConfig(**spec, attn_implementation="sdpa")
        model_cls = transformers.BertForMaskedLM
    torch.manual_seed(0)
    with torch.device(device):
        model = model_cls._from_config(config, dtype=dtype)
    model.eval()
    return HFBackbone(
        model,
        tokenizer,
        name=f"random:{shape}",
        kind=kind,
        mask_token_id=mask_id,
        pad_token_id=int(tokenizer.pad_token_id),
        eos_token_ids=(int(tokenizer.eos_token_id),),
    )


def prompts_for(backbone: HFBackbone, n: int, length: int, seed: int = 0) -> list[list[int]]:
    """``n`` prompts of ``length`` ordinary token ids (the tokenizer's non-special ids)."""
    special = set(backbone.tokenizer.all_special_ids) | {backbone.mask_token_id}
    pool = [i for i in range(len(backbone.tokenizer)) if i not in special]
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.choice(pool, size=length)] for _ in range(n)]


def measure_engine(
    backbone: HFBackbone, timer: Timer, batch: int, prompt_len: int, gen: int, repeats: int
) -> dict[str, float]:
    """Engine step vs its own forward at B = batch (rows never finish during the measurement).

    The backbone's forward is timed *inside* each ``Decoder.step`` (synchronised before and after),
    so the overhead is measured directly as step time minus the forward it ran, not as the
    difference of two separately noisy timings.
    """
    config = DecodeConfig(gen_length=gen, window="full", eos_stop=False)
    decoder = Decoder(backbone, config)
    prompts = prompts_for(backbone, batch, prompt_len)
    state = decoder.start(prompts)
    commit_one = TopKPolicy(k=1)
    inner: list[float] = []
    original = backbone.forward

    def timed_forward(*args: Any, **kwargs: Any) -> Any:
        timer.sync()
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        timer.sync()
        inner.append(time.perf_counter() - t0)
        return out

    steps: list[tuple[float, float]] = []

    def engine_step() -> None:
        mask = commit_one.select(state)
        inner.clear()
        timer.sync()
        t0 = time.perf_counter()
        decoder.step(state, mask)
        timer.sync()
        steps.append((time.perf_counter() - t0, sum(inner)))

    backbone.forward = timed_forward  # type: ignore[method-assign]
    try:
        for _ in range(repeats + 1):
            engine_step()
    finally:
        del backbone.forward  # back to the class method
    steps = steps[1:]  # the first step warms up
    overheads = [step - fwd for step, fwd in steps]
    t_forward = statistics.median(fwd for _, fwd in steps)
    t_bare = timer.median(lambda: backbone.forward(state.canvas, state.attention_mask), repeats)
    policy = EntropyBoundPolicy()
    t_policy = timer.median(lambda: policy.select(state), repeats)
    return {
        "forward_s": t_forward,
        "bare_forward_s": t_bare,
        "engine_step_s": statistics.median(step for step, _ in steps),
        "engine_overhead_s": statistics.median(overheads),
        "engine_overhead": statistics.median(overheads) / t_forward,
        "eb_select_s": t_policy,
        "state": state,  # type: ignore[dict-item]  # reused by the controller check
    }


def measure_throughput(
    backbone: HFBackbone, timer: Timer, batch: int, prompt_len: int, gen: int, steps: int
) -> dict[str, float]:
    """Generated tokens / s of whole decodes at B = 1 and B = batch with ``steps`` forwards."""
    k = math.ceil(gen / steps)
    config = DecodeConfig(gen_length=gen, window="full", eos_stop=False)
    out: dict[str, float] = {}
    for b in (1, batch):
        prompts = prompts_for(backbone, b, prompt_len, seed=b)
        seconds = timer.median(
            lambda p=prompts: decode(backbone, p, TopKPolicy(k=k), config), repeats=1
        )
        out[f"tokens_per_s_b{b}"] = b * gen / seconds
        out[f"decode_s_b{b}"] = seconds
    out["throughput_ratio"] = out[f"tokens_per_s_b{batch}"] / out["tokens_per_s_b1"]
    return out


def measure_kv_cache(
    backbone: HFBackbone,
    timer: Timer,
    batch: int,
    prompt_len: int,
    gen: int,
    steps: int,
    block: int,
) -> dict[str, Any]:
    """Decode wall time and forward tokens with no cache, a prefix cache and a dual cache."""
    k = math.ceil(gen / steps)
    prompts = prompts_for(backbone, batch, prompt_len, seed=7)
    out: dict[str, Any] = {"kv_block": block}
    results = {}
    for mode in ("none", "prefix", "dual"):
        config = DecodeConfig(
            gen_length=gen, window=f"block:{block}", eos_stop=False, kv_cache=mode
        )
        holder: dict[str, Any] = {}

        def run_once(c: DecodeConfig = config, h: dict[str, Any] = holder) -> None:
            h["result"] = decode(backbone, prompts, TopKPolicy(k=k), c)

        out[f"kv_{mode}_s"] = timer.median(run_once, repeats=1)
        result = holder["result"]
        results[mode] = result
        out[f"kv_{mode}_nfe"] = float(result.nfe.float().mean())
        out[f"kv_{mode}_forward_tokens"] = float(result.forward_tokens.float().mean())
        out[f"kv_{mode}_refreshes"] = float(result.kv_refreshes.float().mean())
    for mode in ("prefix", "dual"):
        out[f"kv_{mode}_speedup"] = out["kv_none_s"] / out[f"kv_{mode}_s"]
        out[f"kv_{mode}_token_ratio"] = (
            out[f"kv_{mode}_forward_tokens"] / out["kv_none_forward_tokens"]
        )
        same = results[mode].tokens == results["none"].tokens
        out[f"kv_{mode}_agreement"] = float(same.float().mean())
    return out


def measure_envs(
    backbone: HFBackbone, timer: Timer, batch: int, gen: int, repeats: int
) -> dict[str, float]:
    """Env-steps / s of a ``batch``-slot vector env vs a single env (commit-nothing policy)."""
    from commit_env.envs import CommitEnv, CommitVectorEnv

    kwargs = {"task": "qa", "backbone": backbone, "gen_length": gen, "window": "full"}
    env = CommitEnv(**kwargs)
    env.reset(seed=0)
    venv = CommitVectorEnv(num_envs=batch, **kwargs)
    venv.reset(seed=0)
    single_action = np.zeros(env.gen_length, dtype=np.int8)
    vector_action = np.zeros((batch, venv.gen_length), dtype=np.int8)

    def single_step() -> None:
        if env.step(single_action)[2]:
            env.reset()

    t_single = timer.median(single_step, repeats)
    t_vector = timer.median(lambda: venv.step(vector_action), repeats)
    env.close()
    venv.close()
    return {
        "single_env_steps_per_s": 1.0 / t_single,
        "vector_env_steps_per_s": batch / t_vector,
        "vector_env_speedup": (batch / t_vector) / (1.0 / t_single),
    }


def measure_controller(
    backbone: HFBackbone, timer: Timer, state: Any, forward_s: float, repeats: int
) -> dict[str, Any]:
    """One select of a random default-size stability controller at the engine batch."""
    try:
        from commit_env.supervised.model import ControllerConfig, StabilityController
        from commit_env.supervised.policy import ControllerPolicy
    except ImportError as exc:  # pragma: no cover - supervised ships with the package
        return {"controller_skipped": f"supervised package unavailable: {exc}"}
    groups = ("confidence", "history", "position", "global")
    builder = FeatureBuilder(groups, top_k=3, hidden_dim=0)
    config = ControllerConfig(
        vocab_size=backbone.vocab_size,
        feature_dim=builder.dim,
        eos_token_ids=tuple(backbone.eos_token_ids),
    )
    torch.manual_seed(0)
    model = StabilityController(config).to(backbone.device).eval()
    meta = {
        "feature_groups": list(groups),
        "feature_names": builder.names,
        "hidden_features": 0,
        "vocab_size": backbone.vocab_size,
        "backbone": backbone.name,
    }
    policy = ControllerPolicy(threshold=0.5, model=model, meta=meta)
    t_select = timer.median(lambda: policy.select(state), repeats)
    return {"controller_select_s": t_select, "controller_cost": t_select / forward_s}


def fmt_seconds(value: float) -> str:
    return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"


# One table row: (measure, value, note, target tag); the tag names a TARGETS entry or is "".
Row = tuple[str, str, str, str]

# Short row tags for the TARGETS keys, so the row tuples stay on one line each.
TARGET_TAGS = {
    "eo": "engine_overhead",
    "tr": "throughput_ratio",
    "ve": "vector_env_speedup",
    "cc": "controller_cost",
}


def speed_rows(results: dict[str, Any]) -> list[Row]:
    """Rows of the engine, policy, decode-throughput and env measurements."""
    b = results["batch"]
    return [
        (
            "bare forward",
            fmt_seconds(results["bare_forward_s"]),
            f"B={b}, L={results['canvas']}",
            "",
        ),
        ("engine step", fmt_seconds(results["engine_step_s"]), f"B={b}, incl. its forward", ""),
        (
            "engine overhead",
            f"{results['engine_overhead']:.1%} ({fmt_seconds(results['engine_overhead_s'])})",
            "step minus the forward inside it, / forward",
            "eo",
        ),
        ("EB policy select", fmt_seconds(results["eb_select_s"]), f"B={b}", ""),
        ("decode tokens/s B=1", f"{results['tokens_per_s_b1']:.1f}", "", ""),
        (f"decode tokens/s B={b}", f"{results[f'tokens_per_s_b{b}']:.1f}", "", ""),
        ("throughput ratio", f"{results['throughput_ratio']:.1f}x", f"B={b} / B=1", "tr"),
        ("single env steps/s", f"{results['single_env_steps_per_s']:.1f}", "", ""),
        (f"vector env steps/s ({b})", f"{results['vector_env_steps_per_s']:.1f}", "", ""),
        ("vector env speed-up", f"{results['vector_env_speedup']:.1f}x", "", "ve"),
    ]


def controller_rows(results: dict[str, Any]) -> list[Row]:
    """Rows of the controller measurement, or one "skipped" row when it did not run."""
    if "controller_cost" not in results:
        return [("controller cost", "skipped", results.get("controller_skipped", ""), "")]
    b = results["batch"]
    return [
        ("controller select", fmt_seconds(results["controller_select_s"]), f"B={b}", ""),
        ("controller cost", f"{results['controller_cost']:.2%}", "of forward", "cc"),
    ]


def kv_cache_rows(results: dict[str, Any]) -> list[Row]:
    """Rows of the KV-cache comparison, or one "skipped" row when it did not run."""
    if "kv_none_s" not in results:
        return [("KV-cache speed-up", "skipped", results.get("kv_cache", ""), "")]
    b, block = results["batch"], results["kv_block"]
    rows = [("decode, no KV cache", fmt_seconds(results["kv_none_s"]), f"B={b}, block:{block}", "")]
    for mode in ("prefix", "dual"):
        rows.append(
            (
                f"KV-cache speed-up ({mode})",
                f"{results[f'kv_{mode}_speedup']:.2f}x",
                f"{fmt_seconds(results[f'kv_{mode}_s'])}; forward tokens "
                f"{results[f'kv_{mode}_token_ratio']:.0%} of uncached; "
                f"{results[f'kv_{mode}_refreshes']:.1f} refreshes/row; tokens agreeing "
                f"with uncached {results[f'kv_{mode}_agreement']:.0%}",
                "",
            )
        )
    return rows


def target_cell(results: dict[str, Any], tag: str) -> str:
    """The target column: the target's text and whether the result met it ("" if untagged)."""
    if not tag:
        return ""
    key = TARGET_TAGS[tag]
    text, check = TARGETS[key]
    return f"{text}: {'met' if check(results[key]) else 'MISSED'}"


def report(results: dict[str, Any]) -> str:
    """The results as a markdown table with the issue's targets."""
    rows = speed_rows(results) + controller_rows(results) + kv_cache_rows(results)
    lines = ["| measure | value | note | target |", "|---|---|---|---|"]
    for name, value, note, tag in rows:
        lines.append(f"| {name} | {value} | {note} | {target_cell(results, tag)} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement; returns the numbers (JSON-friendly)."""
    if args.cpu_smoke:
        device, dtype, shape = torch.device("cpu"), torch.float32, "smoke"
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "no CUDA device: run on a GPU machine, or `--cpu-smoke` for the tiny CPU check"
            )
        device, dtype, shape = torch.device("cuda"), torch.bfloat16, args.shape
    timer = Timer(device)
    start = time.perf_counter()
    print(f"building a random {shape} model on {device} ({dtype}) ...", flush=True)
    backbone = build_backbone(shape, device, dtype)
    n_params = sum(p.numel() for p in backbone.model.parameters())
    built = time.perf_counter() - start
    print(f"  {n_params / 1e9:.2f} B parameters in {built:.1f} s", flush=True)
    P, G, B = args.prompt_length, args.gen_length, args.batch
    results: dict[str, Any] = {
        "shape": shape,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "parameters": n_params,
        "batch": B,
        "prompt_length": P,
        "gen_length": G,
        "canvas": P + G,
        "steps": args.steps,
    }
    print("engine overhead ...", flush=True)
    engine = measure_engine(backbone, timer, B, P, G, args.repeats)
    state = engine.pop("state")
    results.update(engine)
    print("controller ...", flush=True)
    results.update(measure_controller(backbone, timer, state, results["forward_s"], args.repeats))
    del state  # its [B, G, V] float tensors are large on a real vocabulary
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print("decode throughput ...", flush=True)
    results.update(measure_throughput(backbone, timer, B, P, G, args.steps))
    print("vector env ...", flush=True)
    results.update(measure_envs(backbone, timer, B, G, args.repeats))
    if device.type == "cuda":
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if G % args.block:
        results["kv_cache"] = f"block {args.block} does not divide gen length {G}"
    else:
        print("KV cache ...", flush=True)
        results.update(measure_kv_cache(backbone, timer, B, P, G, args.steps, args.block))
    results["total_s"] = time.perf_counter() - start
    return results


def main(argv: list[str] | None = None) -> int:
    """Command line entry; prints the table (and writes ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=[s for s in SHAPES if s != "smoke"], default="llada-8b")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU (< 60 s)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-length", type=int, default=None)
    parser.add_argument("--gen-length", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="forwards per decode")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per median")
    parser.add_argument("--block", type=int, default=None, help="block width of the KV check")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    args.prompt_length = args.prompt_length or (16 if smoke else 64)
    args.gen_length = args.gen_length or (32 if smoke else 256)
    args.steps = args.steps or (8 if smoke else 32)
    args.repeats = args.repeats or (3 if smoke else 5)
    args.block = args.block or (8 if smoke else 32)
    if min(args.batch, args.prompt_length, args.gen_length, args.steps, args.repeats) < 1:
        parser.error("--batch, --prompt-length, --gen-length, --steps and --repeats must be >= 1")
    if args.block < 1:
        parser.error(f"--block must be >= 1, got {args.block}")
    results = run(args)
    print()
    print(
        f"gpu_check: {results['shape']} ({results['parameters'] / 1e9:.2f} B params, "
        f"{results['dtype']}) on {results['device']}, total {results['total_s']:.1f} s"
    )
    print(report(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, default=str))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
