"""``decode``: run a commitment policy over prompts with the engine, and its accounting."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from commit_env.backbones.base import Backbone
from commit_env.decoding.config import DecodeConfig
from commit_env.decoding.engine import Decoder
from commit_env.decoding.state import CommitDecision, TraceState

__all__ = ["DecodeResult", "SupportsSelect", "decode", "completion_text", "run_to_completion"]


class SupportsSelect(Protocol):
    """Anything with ``select(state)``; see :class:`commit_env.policies.CommitPolicy`."""

    def select(self, state: TraceState) -> torch.Tensor | CommitDecision:
        """Return a commit mask ``[B, G]`` (or a decision) for ``state``."""
        ...


@dataclass
class DecodeResult:
    """Outputs and accounting of one :func:`decode` call (N rows, all tensors on the CPU).

    Attributes:
        tokens: int64 ``[N, G]`` final generation region.
        texts: Completion text per row (up to the first EOS, special tokens dropped).
        nfe: int64 ``[N]`` forward passes that included the row.
        steps: int64 ``[N]`` commit steps.
        commit_step: int64 ``[N, G]`` step at which each position was committed.
        forced_commits: int64 ``[N]`` progress-guarantee commits.
        budget_fills: int64 ``[N]`` tokens filled because the step budget ran out.
        early_fills: int64 ``[N]`` tokens filled by a policy's all-in exit.
        filled_without_forward: int64 ``[N]`` EOS tail tokens filled after an early stop.
        forward_tokens: int64 ``[N]`` tokens processed by the row's forwards (the whole canvas
            per forward; with a KV cache only the recomputed positions, plus the whole canvas
            for every cache refresh).
        kv_refreshes: int64 ``[N]`` forwards that (re)filled the row's KV cache (0 without one).
        canvas_tokens: int64 ``[N]`` real tokens of the row's canvas (prompt + generation), what
            one uncached forward processes.
        gen_len: int64 ``[N]`` each row's generation length.
        remasks: int64 ``[N]`` remask events (tokens re-decoded); 0 unless remasking is on.
        remask_changed: int64 ``[N]`` re-decoded tokens that differ from the remasked token.
        remask_ignored: int64 ``[N]`` remask bits that took no effect.
        wall_time: Seconds for the whole call.
        device: Where the backbone ran.
        config: The decode configuration.
        trace: Per-chunk step records when ``config.record_trace`` is set.
    """

    tokens: torch.Tensor
    texts: list[str]
    nfe: torch.Tensor
    steps: torch.Tensor
    commit_step: torch.Tensor
    forced_commits: torch.Tensor
    budget_fills: torch.Tensor
    early_fills: torch.Tensor
    filled_without_forward: torch.Tensor
    forward_tokens: torch.Tensor
    kv_refreshes: torch.Tensor
    canvas_tokens: torch.Tensor
    gen_len: torch.Tensor
    remasks: torch.Tensor
    remask_changed: torch.Tensor
    remask_ignored: torch.Tensor
    wall_time: float
    device: str
    config: DecodeConfig
    trace: list[list[dict[str, Any]]] = field(default_factory=list)

    @property
    def tokens_per_forward(self) -> torch.Tensor:
        """Float ``[N]``: generated positions per forward pass (row's gen length / NFE)."""
        return self.gen_len.float() / self.nfe.clamp(min=1).float()

    @property
    def forward_tokens_saved(self) -> torch.Tensor:
        """int64 ``[N]``: tokens a KV cache saved (uncached cost of the same NFE minus the cost)."""
        return self.nfe * self.canvas_tokens - self.forward_tokens

    @property
    def forced_commit_rate(self) -> float:
        """Fraction of commit steps where the policy committed nothing and one was forced."""
        return float(self.forced_commits.sum()) / max(1, int(self.steps.sum()))

    def summary(self) -> dict[str, float]:
        """Mean accounting over rows, plus wall time."""
        return {
            "nfe": float(self.nfe.float().mean()),
            "steps": float(self.steps.float().mean()),
            "tokens_per_forward": float(self.tokens_per_forward.mean()),
            "forced_commit_rate": self.forced_commit_rate,
            "budget_fills": float(self.budget_fills.float().mean()),
            "early_fills": float(self.early_fills.float().mean()),
            "filled_without_forward": float(self.filled_without_forward.float().mean()),
            "forward_tokens": float(self.forward_tokens.float().mean()),
            "forward_tokens_saved": float(self.forward_tokens_saved.float().mean()),
            "kv_refreshes": float(self.kv_refreshes.float().mean()),
            "remasks": float(self.remasks.float().mean()),
            "remask_changed": float(self.remask_changed.float().mean()),
            "wall_time": self.wall_time,
        }


def completion_text(backbone: Backbone, tokens: torch.Tensor) -> list[str]:
    """Decode generation regions to text, cutting each row at its first EOS.

    Args:
        backbone: Provides ``eos_token_ids`` and ``decode``.
        tokens: int64 ``[N, G]`` generation regions.

    Returns:
        N strings.
    """
    eos = set(backbone.eos_token_ids)
    texts = []
    for row in tokens.tolist():  # per row, once per decode, not on the step path
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        texts.append(backbone.decode(row[:cut]))
    return texts


def run_to_completion(decoder: Decoder, state: TraceState, policy: SupportsSelect) -> TraceState:
    """Step ``state`` with ``policy`` until every row is done (the one decode loop).

    Args:
        decoder: The engine that produced ``state``.
        state: A started (or partially decoded, e.g. snapshot) state.
        policy: The commitment policy.

    Returns:
        The finished state (the same object).
    """
    while not state.all_done:
        state = decoder.step(state, policy.select(state))
    return state


_ACCOUNTS = (
    "nfe",
    "step",
    "forced_commits",
    "budget_fills",
    "early_fills",
    "filled_without_forward",
    "forward_tokens",
    "kv_refreshes",
    "prompt_len",
    "gen_len",
    "remasks",
    "remask_changed",
    "remask_ignored",
)


def decode(
    backbone: Backbone,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    policy: SupportsSelect,
    config: DecodeConfig,
    *,
    batch_size: int | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
) -> DecodeResult:
    """Decode ``prompts`` with ``policy`` on the batched engine.

    Args:
        backbone: The frozen denoiser.
        prompts: N prompt strings or token-id lists.
        policy: A commitment policy; ``policy.reset(state)`` is called per chunk if defined.
        config: Decode settings.
        batch_size: Rows per engine batch (default: all N at once).
        seeds: Per-row sampler seeds (default ``config.seed + row index``).
        progress: Show a progress bar over chunks.

    Returns:
        Tokens, texts and accounting for every row, in input order.

    Raises:
        ValueError: On empty input or a non-positive ``batch_size``.
    """
    n = len(prompts)
    if n == 0:
        raise ValueError("prompts must be a non-empty sequence")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = n if batch_size is None else batch_size
    decoder = Decoder(backbone, config)
    seeds = [config.seed + i for i in range(n)] if seeds is None else list(seeds)
    chunks = range(0, n, size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="decode", unit="batch")
    parts: list[dict[str, torch.Tensor]] = []
    traces: list[list[dict[str, Any]]] = []
    start_time = time.perf_counter()
    for lo in chunks:
        hi = min(n, lo + size)
        state = decoder.start(prompts[lo:hi], seeds=seeds[lo:hi], row_ids=range(lo, hi))
        if hasattr(policy, "reset"):
            policy.reset(state)
        run_to_completion(decoder, state, policy)
        part = {name: getattr(state, name).cpu() for name in _ACCOUNTS}
        part["tokens"] = state.gen_tokens.cpu()
        part["commit_step"] = state.commit_step.cpu()
        parts.append(part)
        if config.record_trace:
            traces.append(state.trace or [])
    if backbone.device.type == "cuda":
        torch.cuda.synchronize(backbone.device)
    wall = time.perf_counter() - start_time
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return DecodeResult(
        tokens=cat["tokens"],
        texts=completion_text(backbone, cat["tokens"]),
        nfe=cat["nfe"],
        steps=cat["step"],
        commit_step=cat["commit_step"],
        forced_commits=cat["forced_commits"],
        budget_fills=cat["budget_fills"],
        early_fills=cat["early_fills"],
        filled_without_forward=cat["filled_without_forward"],
        forward_tokens=cat["forward_tokens"],
        kv_refreshes=cat["kv_refreshes"],
        canvas_tokens=cat["prompt_len"] + cat["gen_len"],
        gen_len=cat["gen_len"],
        remasks=cat["remasks"],
        remask_changed=cat["remask_changed"],
        remask_ignored=cat["remask_ignored"],
        wall_time=wall,
        device=str(backbone.device),
        config=config,
        trace=traces,
    )
