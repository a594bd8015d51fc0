"""Torch thread defaults for small backbones on the CPU.

A small backbone (the embedded ``tiny`` model) runs matrix products far too small to gain from
intra-op parallelism, while PyTorch's OpenMP pool spin-waits for its workers. When another process
keeps the other core(s) busy (an SB3 learner, TensorBoard, a second env, a training job) every
forward then waits for a descheduled worker: one env measured 456 steps/s with one thread and
97 steps/s with two on a 2-core machine with the other core busy (issue 14; reproduce with
``benchmarks/bench_env.py --busy``).

Policy, applied when an env is built (:class:`~commit_env.envs.core.CommitSlots`):

1. ``num_threads`` given (``EnvConfig.num_threads``, ``gym.make(..., num_threads=2)``,
   ``commit-env train-ppo --threads 2``): ``torch.set_num_threads(num_threads)``.
2. else the environment variable ``COMMIT_ENV_NUM_THREADS`` (an int), if set.
3. else, if the backbone runs on the CPU and has at most :data:`SMALL_BACKBONE_PARAMS`
   parameters: one thread.
4. else nothing changes (large or GPU backbones keep PyTorch's default).

``torch.set_num_threads`` is process-wide, so the setting also applies to a learner in the same
process (SB3's small policy networks are fastest single-threaded on a shared CPU as well). Pass
``num_threads=0`` to leave torch's setting alone.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["ENV_VAR", "SMALL_BACKBONE_PARAMS", "configure_threads", "resolve_num_threads"]

ENV_VAR = "COMMIT_ENV_NUM_THREADS"
#: Backbones up to this many parameters count as small (the embedded tiny model has ~1M).
SMALL_BACKBONE_PARAMS = 50_000_000


def _param_count(backbone: Any) -> int | None:
    for obj in (backbone, getattr(backbone, "model", None)):
        params = getattr(obj, "parameters", None)
        if callable(params):
            try:
                return sum(p.numel() for p in params())
            except TypeError:
                continue
    return None


def resolve_num_threads(
    num_threads: int | None, backbone: Any = None, device: torch.device | str | None = None
) -> int | None:
    """The thread count the policy above picks (``None``: leave torch alone).

    Args:
        num_threads: Explicit setting (``0`` = leave torch alone), or ``None``.
        backbone: The loaded backbone (its parameter count decides "small").
        device: Where it runs.

    Returns:
        Threads to set, or ``None``.

    Raises:
        ValueError: If ``num_threads`` or ``COMMIT_ENV_NUM_THREADS`` is negative or not an int.
    """
    if num_threads is None:
        raw = os.environ.get(ENV_VAR, "").strip()
        if raw:
            try:
                num_threads = int(raw)
            except ValueError:
                raise ValueError(f"{ENV_VAR} must be an integer >= 0, got {raw!r}") from None
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
            raise ValueError(f"num_threads must be an integer >= 0 or None, got {num_threads!r}")
        return None if num_threads == 0 else num_threads
    if device is None or torch.device(device).type != "cpu":
        return None
    count = _param_count(backbone)
    if count is not None and count <= SMALL_BACKBONE_PARAMS:
        return 1
    return None


def configure_threads(
    num_threads: int | None, backbone: Any = None, device: torch.device | str | None = None
) -> int:
    """Apply :func:`resolve_num_threads` and return torch's thread count afterwards.

    Args:
        num_threads: Explicit setting (``0`` = leave torch alone), or ``None`` for the default.
        backbone: The loaded backbone.
        device: Where it runs.

    Returns:
        ``torch.get_num_threads()`` after the call.
    """
    n = resolve_num_threads(num_threads, backbone, device)
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()
