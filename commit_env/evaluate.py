"""Score a commitment policy on a task: seeded examples, one decode, the task's own verifier.

This lives in the library layer so the supervised trainer (closed-loop checks) and the RL agents
(periodic evaluation) measure policies exactly like the benchmark suite does.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from commit_env.backbones.base import Backbone
from commit_env.decoding import DecodeConfig, DecodeResult, decode
from commit_env.decoding.run import SupportsSelect
from commit_env.tasks.base import Example, Task

__all__ = [
    "PolicyEval",
    "bootstrap_ci",
    "evaluate_policy",
    "reference_tokens",
    "sample_examples",
    "score_completions",
]


def sample_examples(task: Task, n: int, seed: int) -> list[Example]:
    """Draw ``n`` examples with ``numpy.random.default_rng(seed)``: every policy sees the same ones.

    Args:
        task: The task.
        n: Number of examples (>= 1).
        seed: Seed of the example generator.

    Returns:
        The examples.

    Raises:
        ValueError: If ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    return [task.sample(rng) for _ in range(n)]


def score_completions(
    task: Task, examples: Sequence[Example], completions: Sequence[str], *, max_workers: int = 2
) -> np.ndarray:
    """Score completions with the task's verifier (tasks with ``score_many`` batch it).

    Args:
        task: The task.
        examples: N examples.
        completions: N completions.
        max_workers: Threads for tasks whose scorer runs subprocesses.

    Returns:
        float64 array ``[N]`` of scores in ``[0, 1]``.
    """
    if hasattr(task, "score_many"):
        return np.asarray(task.score_many(examples, completions, max_workers=max_workers), float)
    if max_workers > 1 and getattr(task, "name", "") == "code":
        with ThreadPoolExecutor(max_workers) as pool:
            scores = list(pool.map(task.score, examples, completions))
    else:
        scores = [task.score(e, c) for e, c in zip(examples, completions, strict=True)]
    return np.asarray(scores, dtype=float)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean.

    Args:
        values: Per-example values.
        n_boot: Bootstrap resamples.
        level: Coverage (0.95 = 95%).
        seed: Seed of the resampler.

    Returns:
        ``(low, high)``; both equal the value for a single example.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@dataclass
class PolicyEval:
    """Scores and accounting of one policy on one task setting.

    Attributes:
        scores: float64 ``[N]`` per-example scores.
        result: The decode's tokens, texts and accounting.
        examples: The examples decoded.
    """

    scores: np.ndarray
    result: DecodeResult
    examples: list[Example] = field(repr=False)

    def summary(self, *, seed: int = 0) -> dict[str, Any]:
        """Mean score with its 95% bootstrap interval, plus the decode accounting means.

        The accounting includes ``forward_tokens`` (real tokens the forwards computed),
        ``forward_tokens_saved`` (what a KV cache saved against uncached forwards of the same
        NFE), ``kv_refreshes`` and the ``kv_cache`` mode, so cached and uncached runs compare on
        NFE and on tokens processed.
        """
        low, high = bootstrap_ci(self.scores, seed=seed)
        out: dict[str, Any] = {
            "score": float(self.scores.mean()),
            "score_ci_low": low,
            "score_ci_high": high,
            "n": int(self.scores.size),
        }
        out.update(self.result.summary())
        out["kv_cache"] = self.result.config.kv_cache
        out["device"] = self.result.device
        return out


def reference_tokens(
    backbone: Backbone,
    prompts: Sequence[str],
    config: DecodeConfig,
    *,
    batch_size: int | None = None,
) -> Any:
    """Generation regions of the one-token-per-step confidence decode (the oracle's reference).

    Args:
        backbone: The denoiser.
        prompts: N prompts.
        config: Decode settings (the budget is lifted so the reference is fully sequential).
        batch_size: Rows per engine batch.

    Returns:
        int64 tensor ``[N, G]``.
    """
    from dataclasses import replace

    from commit_env.policies import TopKPolicy

    sequential = replace(config, step_budget=None)
    return decode(backbone, prompts, TopKPolicy(), sequential, batch_size=batch_size).tokens


def evaluate_policy(
    backbone: Backbone,
    task: Task,
    policy: SupportsSelect,
    config: DecodeConfig,
    *,
    n: int = 100,
    seed: int = 0,
    examples: Sequence[Example] | None = None,
    batch_size: int | None = 64,
    progress: bool = False,
) -> PolicyEval:
    """Decode ``n`` seeded examples of ``task`` with ``policy`` and score them.

    Args:
        backbone: The denoiser.
        task: The task.
        policy: The commitment policy.
        config: Decode settings.
        n: Examples (ignored when ``examples`` is given).
        seed: Seed of the example draw.
        examples: Pre-drawn examples (to pair several policies exactly).
        batch_size: Rows per engine batch.
        progress: Show a progress bar.

    Returns:
        Per-example scores, the decode result and the examples.
    """
    examples = list(examples) if examples is not None else sample_examples(task, n, seed)
    prompts = [e.prompt for e in examples]
    result = decode(backbone, prompts, policy, config, batch_size=batch_size, progress=progress)
    scores = score_completions(task, examples, result.texts)
    return PolicyEval(scores=scores, result=result, examples=examples)
