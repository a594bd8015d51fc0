"""The environment's observation layout: which features, in which columns, with which bounds.

:class:`ObservationLayout` is the one description of what an agent sees. The envs
(:class:`~commit_env.envs.core.CommitSlots`) pack their per-step snapshot with it, and a trained
agent (``commit_env.agents.policy.PPOPolicy``) turns any batched
:class:`~commit_env.decoding.TraceState` into exactly the same observation with it, without an
environment, a task or a decoder.

A snapshot is one float32 ``[B, W]`` array: the observation columns (keys sorted by name), then
the accounting columns (:data:`ACCOUNTS`), then the G generated token ids. It is built on the
device and copied to the host once per step.

Dimensions follow :mod:`commit_env.decoding`: B rows, G generation length, K top-k columns,
D hidden-projection width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from commit_env.decoding import FEATURES, FeatureBuilder
from commit_env.decoding.features import FEATURE_GROUPS
from commit_env.decoding.state import TraceState

__all__ = [
    "ACCOUNTS",
    "CONFLICT_KEYS",
    "DEFAULT_FEATURES",
    "OBSERVATION_GROUPS",
    "ObservationLayout",
    "conflict_features",
]

#: Feature groups an env observes unless told otherwise.
DEFAULT_FEATURES: tuple[str, ...] = ("confidence", "history", "position", "global")
#: Accounting columns packed after the observation columns (one host copy per step).
ACCOUNTS: tuple[str, ...] = (
    "done",
    "nfe",
    "step",
    "forced_commits",
    "budget",
    "gen_len",
    "budget_fills",
    "remasks",
    "remask_ignored",
)
#: Keys of the env-level ``"conflict"`` group (see :func:`conflict_features`).
CONFLICT_KEYS: tuple[str, ...] = ("dup_committed", "dup_neighbor", "dup_proposal")
#: Every group an env can observe: the decoder's feature groups plus ``"conflict"``.
OBSERVATION_GROUPS: tuple[str, ...] = (*FEATURE_GROUPS, "conflict")
_GLOBAL_KEYS = frozenset(f.name for f in FEATURES if f.group == "global")
_SPEC = {f.name: f for f in FEATURES}


def conflict_features(state: TraceState) -> dict[str, torch.Tensor]:
    """Per-position flags that make token conflicts visible to a per-position policy.

    Confidences alone cannot tell a policy that two masked positions both propose ``"the"``
    (committing both yields a stutter) or that a proposal repeats a token already committed in
    the row. These flags compare token ids, so a weight-shared per-position network sees them
    without embedding the vocabulary. Only masked, valid positions can be flagged.

    Args:
        state: A trace state with B rows and G positions.

    Returns:
        float32 ``[B, G]`` tensors: ``dup_proposal`` (another masked position proposes the same
        token), ``dup_committed`` (some committed position of the row holds that token) and
        ``dup_neighbor`` (the left or right neighbour holds or proposes the same token).
    """
    masked = state.masked & state.valid  # [B, G]
    prop = state.proposal  # [B, G]
    toks = state.gen_tokens  # [B, G]
    same = prop[:, :, None] == prop[:, None, :]  # [B, G, G]
    eye = torch.eye(prop.shape[1], dtype=torch.bool, device=prop.device)
    dup_prop = (same & ~eye & masked[:, None, :]).any(-1)  # [B, G]
    committed = state.committed & state.valid
    dup_comm = ((prop[:, :, None] == toks[:, None, :]) & committed[:, None, :]).any(-1)
    # the token each position currently "shows": its committed token or its proposal
    shown = torch.where(committed, toks, prop)  # [B, G]
    left = torch.zeros_like(masked)
    right = torch.zeros_like(masked)
    left[:, 1:] = (prop[:, 1:] == shown[:, :-1]) & state.valid[:, :-1]
    right[:, :-1] = (prop[:, :-1] == shown[:, 1:]) & state.valid[:, 1:]
    return {
        "dup_committed": (dup_comm & masked).float(),
        "dup_neighbor": ((left | right) & masked).float(),
        "dup_proposal": (dup_prop & masked).float(),
    }


class ObservationLayout:
    """Column ranges and bounds of every observation key and accounting field.

    Args:
        features: Feature groups of :class:`~commit_env.decoding.FeatureBuilder`, plus
            optionally ``"conflict"`` (the :data:`CONFLICT_KEYS` of :func:`conflict_features`).
        top_k: K, top-k probabilities per position.
        hidden_dim: D, hidden-projection width (used only with the ``"hidden"`` group).
        gen_length: G, the padded observation width.
        vocab_size: V (bounds the ``proposal`` key; token ids travel as float32, exact < 2**24).
        device: Where snapshots are packed (the decoder's device).
        remask: Add the ``remaskable`` key (``[G]`` in {0, 1}: positions a remask action may hit;
            ``TokenCommit-v1``).

    Raises:
        ValueError: On an unknown feature group or a vocabulary larger than 2**24.
    """

    def __init__(
        self,
        features: Sequence[str],
        *,
        top_k: int,
        hidden_dim: int,
        gen_length: int,
        vocab_size: int,
        device: torch.device | str = "cpu",
        remask: bool = False,
    ) -> None:
        unknown = sorted(set(features) - set(OBSERVATION_GROUPS))
        if unknown:
            raise ValueError(
                f"unknown feature groups {unknown}; expected {list(OBSERVATION_GROUPS)}"
            )
        if vocab_size > 2**24:
            raise ValueError(f"vocab_size {vocab_size} exceeds 2**24 (float32 token columns)")
        self.features = tuple(features)
        self.hidden_dim = hidden_dim if "hidden" in self.features else 0
        self.gen_length = gen_length
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.conflicts = "conflict" in self.features
        groups = tuple(f for f in self.features if f != "conflict")
        self.builder = FeatureBuilder(groups, top_k=top_k, hidden_dim=self.hidden_dim)
        widths = {name: self._width(name) for name in self.builder.names}
        if self.conflicts:
            widths.update({key: gen_length for key in CONFLICT_KEYS})
        widths.update(eligible=gen_length, valid=gen_length, proposal=gen_length)
        self.remask = remask
        if remask:
            widths["remaskable"] = gen_length
        self.keys: tuple[str, ...] = tuple(sorted(widths))
        self._columns(widths)

    def _width(self, name: str) -> int:
        return 1 if name in _GLOBAL_KEYS else self.gen_length * self.builder.width(name)

    def _bounds(self, key: str) -> tuple[float, float]:
        if key in ("eligible", "valid", "remaskable") or key in CONFLICT_KEYS:
            return 0.0, 1.0
        if key == "proposal":
            return 0.0, float(self.vocab_size - 1)
        return _SPEC[key].low, _SPEC[key].high

    def _columns(self, widths: dict[str, int]) -> None:
        """Column ranges of observation keys, accounting fields and tokens, and their bounds."""
        cols: dict[str, tuple[int, int]] = {}
        lo: list[float] = []
        hi: list[float] = []
        offset = 0
        for key in self.keys:
            n = widths[key]
            cols[key] = (offset, offset + n)
            low, high = self._bounds(key)
            lo += [low] * n
            hi += [high] * n
            offset += n
        self.obs_width = offset
        for name in ACCOUNTS:
            cols[name] = (offset, offset + 1)
            offset += 1
        cols["tokens"] = (offset, offset + self.gen_length)
        offset += self.gen_length
        lo += [-math.inf] * (offset - self.obs_width)
        hi += [math.inf] * (offset - self.obs_width)
        self.columns = cols
        self._lo = torch.tensor(lo, dtype=torch.float32, device=self.device)  # [W]
        self._hi = torch.tensor(hi, dtype=torch.float32, device=self.device)  # [W]

    def space(self) -> gym.spaces.Dict:
        """The single-slot observation space (``proposal`` is int32, everything else float32)."""
        spaces: dict[str, gym.spaces.Space[Any]] = {}
        for key in self.keys:
            a, b = self.columns[key]
            low = self._lo[a:b].cpu().numpy().copy()
            high = self._hi[a:b].cpu().numpy().copy()
            if key == "proposal":
                spaces[key] = gym.spaces.Box(
                    low=low.astype(np.int32), high=high.astype(np.int32), dtype=np.int32
                )
            else:
                spaces[key] = gym.spaces.Box(low=low, high=high, dtype=np.float32)
        return gym.spaces.Dict(spaces)

    def pack(self, state: TraceState) -> np.ndarray:
        """Observations, accounting and tokens of every row as float32 ``[B, W]`` (host).

        Per-position keys read 0 at padding positions; NaNs read 0; every column is clamped to
        its bounds.

        Args:
            state: A trace state whose G equals :attr:`gen_length`.

        Returns:
            The snapshot.
        """
        B = state.batch_size
        feats = self.builder.build(state)
        validf = state.valid.float()  # [B, G]
        feats["eligible"] = state.eligible.float()
        feats["valid"] = validf
        feats["proposal"] = state.proposal.float()
        if self.conflicts:
            feats.update(conflict_features(state))
        if self.remask:
            feats["remaskable"] = state.remaskable.float()
        parts: list[torch.Tensor] = []
        for key in self.keys:
            value = feats[key]
            if key in _GLOBAL_KEYS:
                parts.append(value[:, :1])  # [B, 1] per-row constant
            elif value.dim() == 3:
                parts.append((value * validf[..., None]).reshape(B, -1))  # [B, G*K] or [B, G*D]
            else:
                parts.append(value * validf)  # [B, G] padding positions read 0
        zeros = torch.zeros((B, 1), device=validf.device)
        parts += [  # hand-built states may lack the remask counts
            zeros if getattr(state, name) is None else getattr(state, name).float()[:, None]
            for name in ACCOUNTS
        ]
        parts.append(state.gen_tokens.float())  # [B, G] exact for ids < 2**24
        snap = torch.cat(parts, dim=1)  # [B, W]
        # nan_to_num before the clamp: a NaN would pass through clamp and break the space.
        snap = torch.nan_to_num(snap, nan=0.0).clamp_(min=self._lo, max=self._hi)
        return snap.cpu().numpy()

    def column(self, snapshot: np.ndarray, name: str) -> np.ndarray:
        """The columns of key, accounting field or ``"tokens"`` ``name``: ``[B, n]`` (a view)."""
        a, b = self.columns[name]
        return snapshot[:, a:b]

    def observation(self, snapshot: np.ndarray) -> dict[str, np.ndarray]:
        """The observation dict of a snapshot: key -> ``[B, ...]`` (``proposal`` as int32)."""
        out = {key: self.column(snapshot, key) for key in self.keys}
        out["proposal"] = out["proposal"].astype(np.int32)
        return out

    def observe(self, state: TraceState) -> dict[str, np.ndarray]:
        """The observation an env with this layout gives for ``state`` (no side effects).

        Args:
            state: A trace state whose G equals :attr:`gen_length`.

        Returns:
            key -> ``[B, ...]`` arrays (float32; ``proposal`` int32).
        """
        return self.observation(self.pack(state))
