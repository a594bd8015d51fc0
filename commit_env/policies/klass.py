"""KLASS: confidence plus KL stability over the last H steps.

Reference: shkim0116/KLASS ``src/model/llada_klass.py``; arXiv 2511.05664. Defaults are the
LLaDA script's (tau_c 0.6, tau_KL 0.015, H 2); the Dream script uses tau_c 0.9, tau_KL 0.001.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from commit_env.decoding.state import TraceState
from commit_env.policies.base import CommitPolicy, top_k_mask

__all__ = ["KLASSPolicy"]


@dataclass
class KLASSPolicy(CommitPolicy):
    """Commit every eligible position that is confident and has been stable.

    Ready = eligible and ``confidence > conf_threshold`` and each of the last ``history`` KL values
    ``KL(p_t || p_t-1) < kl_threshold`` (so nothing is ready before ``history`` steps of KL exist).
    Rows with nothing ready fall back to top-``fallback_k`` by confidence.

    Args:
        conf_threshold: tau_c.
        kl_threshold: tau_KL.
        history: H, KL values that must all be below tau_KL (at most ``DecodeConfig.history``).
        fallback_k: Positions committed by confidence when nothing is ready.

    Raises:
        ValueError: On out-of-range parameters.
    """

    name: ClassVar[str] = "klass"
    conf_threshold: float = 0.6
    kl_threshold: float = 0.015
    history: int = 2
    fallback_k: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf_threshold <= 1.0:
            raise ValueError(f"conf_threshold must be in [0, 1], got {self.conf_threshold}")
        if self.kl_threshold < 0 or self.history < 1 or self.fallback_k < 1:
            raise ValueError("kl_threshold must be >= 0, history and fallback_k >= 1")

    def select(self, state: TraceState) -> torch.Tensor:
        """KLASS rule; see :class:`CommitPolicy`."""
        H = state.kl_history.shape[-1]
        if self.history > H:
            raise ValueError(
                f"KLASS history={self.history} needs DecodeConfig.history >= {self.history} "
                f"(got {H})"
            )
        recent = state.kl_history[..., H - self.history :]  # [B, G, h]
        stable = (recent < self.kl_threshold).all(-1)  # [B, G]
        ready = state.eligible & stable & (state.confidence > self.conf_threshold)
        fallback = top_k_mask(state.confidence, state.eligible, self.fallback_k)
        none_ready = ~ready.any(-1, keepdim=True)  # [B, 1]
        return torch.where(none_ready, fallback, ready)
