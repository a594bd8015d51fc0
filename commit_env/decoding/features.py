"""The feature builder: one definition of the trace-state features for every consumer.

The Gym observation, the trace records and the supervised controller's input all come from
:class:`FeatureBuilder`, so they cannot drift apart. Every feature is finite float32 in the range
documented in :data:`FEATURES` (token ids are kept separately as ``proposal``).

Feature groups (for ablations): ``confidence``, ``history``, ``position``, ``global``, ``hidden``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from commit_env.decoding.engine import STABLE_CAP
from commit_env.decoding.state import TraceState

__all__ = ["FEATURES", "FEATURE_GROUPS", "FeatureSpec", "FeatureBuilder"]


@dataclass(frozen=True)
class FeatureSpec:
    """Documentation of one feature.

    Attributes:
        name: Key in the feature dict.
        group: Ablation group.
        low: Smallest value.
        high: Largest value.
        meaning: What it measures.
    """

    name: str
    group: str
    low: float
    high: float
    meaning: str


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("conf", "confidence", 0.0, 1.0, "probability of the proposal"),
    FeatureSpec("margin", "confidence", 0.0, 1.0, "top-1 minus top-2 probability"),
    FeatureSpec("entropy_norm", "confidence", 0.0, 1.0, "entropy / log V"),
    FeatureSpec("topk", "confidence", 0.0, 1.0, "K largest probabilities (K columns)"),
    FeatureSpec("stable", "history", 0.0, 1.0, f"forwards with unchanged proposal / {STABLE_CAP}"),
    FeatureSpec("prev_conf", "history", 0.0, 1.0, "previous step's confidence"),
    FeatureSpec("kl", "history", 0.0, 1.0, "1 - exp(-KL(p_t || p_t-1))"),
    FeatureSpec("masked", "position", 0.0, 1.0, "1 if not committed"),
    FeatureSpec("eligible", "position", 0.0, 1.0, "1 if masked and inside the window"),
    FeatureSpec("gen_pos", "position", 0.0, 1.0, "index / (row's gen length - 1)"),
    FeatureSpec("window_pos", "position", -1.0, 2.0, "(index - window start) / window width"),
    FeatureSpec("progress", "global", 0.0, 1.0, "NFE / step budget"),
    FeatureSpec("masked_frac", "global", 0.0, 1.0, "fraction of positions still masked"),
    FeatureSpec("window_frac", "global", 0.0, 1.0, "window width / G"),
    FeatureSpec("hidden", "hidden", -5.0, 5.0, "random projection of the last hidden state (D)"),
)
FEATURE_GROUPS: tuple[str, ...] = ("confidence", "history", "position", "global", "hidden")
_BY_NAME = {f.name: f for f in FEATURES}


class FeatureBuilder:
    """Turn a :class:`TraceState` into per-position features.

    Args:
        groups: Which feature groups to build (default: all but ``hidden``).
        top_k: K, columns of ``topk`` (must not exceed the decoder's ``top_k``).
        hidden_dim: D, columns of ``hidden`` (the decoder's ``hidden_features``).

    Raises:
        ValueError: On an unknown group, or ``hidden`` requested with ``hidden_dim == 0``.
    """

    def __init__(
        self,
        groups: Sequence[str] = ("confidence", "history", "position", "global"),
        *,
        top_k: int = 3,
        hidden_dim: int = 0,
    ) -> None:
        unknown = sorted(set(groups) - set(FEATURE_GROUPS))
        if unknown:
            raise ValueError(f"unknown feature groups {unknown}; expected {list(FEATURE_GROUPS)}")
        if "hidden" in groups and hidden_dim < 1:
            raise ValueError(
                "the 'hidden' group needs hidden_dim >= 1 (DecodeConfig.hidden_features)"
            )
        self.groups = tuple(g for g in FEATURE_GROUPS if g in groups)
        self.top_k = top_k
        self.hidden_dim = hidden_dim

    @property
    def names(self) -> list[str]:
        """Feature names in stacking order."""
        return [f.name for f in FEATURES if f.group in self.groups]

    def width(self, name: str) -> int:
        """Columns a feature occupies in :meth:`stack` (1, K or D)."""
        return {"topk": self.top_k, "hidden": self.hidden_dim}.get(name, 1)

    @property
    def dim(self) -> int:
        """F, total columns of :meth:`stack`."""
        return sum(self.width(n) for n in self.names)

    def spec(self, name: str) -> FeatureSpec:
        """The documentation record of feature ``name``."""
        return _BY_NAME[name]

    def build(self, state: TraceState) -> dict[str, torch.Tensor]:
        """Compute the selected features.

        Args:
            state: A decode state with B rows and G positions.

        Returns:
            Dict name -> float32 tensor ``[B, G]`` (``topk``: ``[B, G, K]``, ``hidden``:
            ``[B, G, D]``), on the state's device.
        """
        B, G = state.batch_size, state.gen_length
        out: dict[str, torch.Tensor] = {}
        if "confidence" in self.groups:
            out["conf"] = state.confidence
            out["margin"] = state.margin
            out["entropy_norm"] = state.entropy
            out["topk"] = state.topk_probs[..., : self.top_k]
        if "history" in self.groups:
            out["stable"] = state.stable_steps.clamp(max=STABLE_CAP).float() / STABLE_CAP
            out["prev_conf"] = state.prev_confidence
            out["kl"] = -torch.expm1(-state.kl)  # 1 - exp(-kl), in [0, 1)
        if "position" in self.groups:
            pos = torch.arange(G, device=state.canvas.device, dtype=torch.float32)[None, :]
            width = (state.window_end - state.window_start).clamp(min=1).float()[:, None]
            out["masked"] = state.masked.float()
            out["eligible"] = state.eligible.float()
            last = (state.gen_len - 1).clamp(min=1).float()[:, None]  # [B, 1]
            out["gen_pos"] = (pos / last).clamp(0.0, 1.0)
            out["window_pos"] = ((pos - state.window_start[:, None]) / width).clamp(-1.0, 2.0)
        if "global" in self.groups:
            masked_frac = state.masked.float().sum(-1) / state.gen_len.float()  # [B]
            progress = (state.nfe.float() / state.budget.float()).clamp(0.0, 1.0)
            window = state.window_width.float() / state.gen_len.float()
            out["progress"] = progress[:, None].expand(B, G)
            out["masked_frac"] = masked_frac[:, None].expand(B, G)
            out["window_frac"] = window.clamp(0.0, 1.0)[:, None].expand(B, G)
        if "hidden" in self.groups:
            if state.hidden is None or state.hidden.shape[-1] != self.hidden_dim:
                raise ValueError(
                    f"state has no hidden features of width {self.hidden_dim}; "
                    "set DecodeConfig.hidden_features to match"
                )
            out["hidden"] = state.hidden
        return {k: v.float() for k, v in out.items()}

    def stack(self, state: TraceState) -> torch.Tensor:
        """All selected features as one float32 tensor ``[B, G, F]``."""
        feats = self.build(state)
        cols = [feats[n] if feats[n].dim() == 3 else feats[n][..., None] for n in self.names]
        return torch.cat(cols, dim=-1)
