"""The future-stability controller: a small transformer over one trace state.

Background: TraceLock ("The Path Matters: Learning a Token-Commitment Policy for Diffusion Language
Models", arXiv 2605.24697) and Learn2PD (arXiv 2509.25188, end-of-text prediction). The controller
reads the prompt (pooled into one token), the committed tokens, the proposals, the shared
trace-state features, the structure features (conflicts between proposals, see
:func:`~commit_env.supervised.inputs.structure_features`) of the visible window (positions right of
it are hidden) and the decode setting (window, G, budget, steps left), and emits one stability
logit per generation position, one end-of-answer logit per position and one learned threshold
logit tau per state. A position is committed when ``sigmoid(logit - tau) >= threshold``.

Positions are encoded with fixed sinusoids of the absolute index and of the offset from the
window start (no learned position table), so one checkpoint runs at any generation length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from commit_env.supervised.inputs import (
    SETTING_FEATURES,
    STRUCTURE_FEATURES,
    ControllerBatch,
    structure_features,
)
from torch import nn

__all__ = ["ControllerConfig", "StabilityController", "sinusoid"]

#: Version of the input layout; checkpoints of another version are refused at load.
INPUT_VERSION = 4


@dataclass(frozen=True)
class ControllerConfig:
    """Architecture and loss of the controller.

    Attributes:
        vocab_size: V of the backbone the traces came from (token embeddings).
        feature_dim: F, features per position.
        eos_token_ids: End-of-answer ids of that backbone (structure features, EOS head).
        separator_token_ids: Segment separators of that backbone's tokenizer (the row and
            column structure features).
        d_model: Width.
        n_layers: Transformer layers.
        n_heads: Attention heads.
        dropout: Dropout in the encoder.
        use_tau: Learn the per-state threshold tau (False: tau = 0, an ablation).
        use_structure: Read token ids (prompt, committed tokens, proposals) and the structure
            features (False: an ablation that sees only the per-position features and setting).
        neg_weight: Weight of unstable positions in the BCE (a wrong commit is permanent).
        pos_weight: Weight of stable positions.
        tau_penalty: Coefficient of the tau^2 penalty.
        eos_weight: Weight of the end-of-answer BCE.
        input_version: Layout version of the inputs (:data:`INPUT_VERSION`).
    """

    vocab_size: int
    feature_dim: int
    eos_token_ids: tuple[int, ...] = ()
    separator_token_ids: tuple[int, ...] = ()
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.0
    use_tau: bool = True
    use_structure: bool = True
    neg_weight: float = 3.0
    pos_weight: float = 1.0
    tau_penalty: float = 1e-3
    eos_weight: float = 0.5
    input_version: int = INPUT_VERSION

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} not divisible by n_heads {self.n_heads}")
        if min(self.vocab_size, self.feature_dim, self.n_layers) < 1:
            raise ValueError("vocab_size, feature_dim and n_layers must be >= 1")
        if self.input_version != INPUT_VERSION:
            raise ValueError(
                f"controller input layout version {self.input_version} is not this version's "
                f"{INPUT_VERSION}; retrain the controller"
            )
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))
        separators = tuple(int(i) for i in self.separator_token_ids)
        object.__setattr__(self, "separator_token_ids", separators)


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal encoding of (possibly negative) integer positions.

    Args:
        positions: int64 tensor of any shape.
        dim: Even output width.

    Returns:
        float32 tensor ``positions.shape + (dim,)``; defined for every integer (extrapolates).
    """
    half = dim // 2
    freq = torch.exp(
        -math.log(10_000.0)
        * torch.arange(half, device=positions.device, dtype=torch.float32)
        / half
    )
    angle = positions.float()[..., None] * freq
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class StabilityController(nn.Module):
    """Per-position stability and end-of-answer logits and a per-state threshold.

    Args:
        config: Architecture.
    """

    def __init__(self, config: ControllerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.token = nn.Embedding(config.vocab_size, d)
        self.segment = nn.Embedding(3, d)  # 0 prompt summary, 1 generation position
        self.committed_flag = nn.Embedding(2, d)
        self.positions = nn.Linear(2 * d, d)  # sinusoids of index and offset from window start
        self.features = nn.Sequential(nn.Linear(config.feature_dim, d), nn.GELU(), nn.Linear(d, d))
        self.structure = nn.Linear(len(STRUCTURE_FEATURES), d)
        self.setting = nn.Sequential(
            nn.Linear(len(SETTING_FEATURES), d), nn.GELU(), nn.Linear(d, d)
        )
        layer = nn.TransformerEncoderLayer(
            d, config.n_heads, 2 * d, config.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.stability = nn.Linear(d, 1)
        self.eos = nn.Linear(d, 1)
        self.tau = nn.Linear(d, 1)
        nn.init.zeros_(self.tau.weight)
        nn.init.zeros_(self.tau.bias)

    def forward(self, batch: ControllerBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Score a batch of states.

        Args:
            batch: Controller inputs on the model's device.

        Returns:
            ``(logits, tau)``: float32 ``[B, G]`` stability logits and float32 ``[B]`` threshold
            logits (zeros when ``use_tau`` is off).
        """
        logits, tau, _ = self.forward_all(batch)
        return logits, tau

    def forward_all(
        self, batch: ControllerBatch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score a batch of states, with the end-of-answer head.

        Args:
            batch: Controller inputs on the model's device.

        Returns:
            ``(logits, tau, eos_logits)``: ``[B, G]``, ``[B]`` and ``[B, G]`` float32.

        Raises:
            ValueError: If token ids exceed the vocabulary or the feature width differs.
        """
        cfg = self.config
        B, G = batch.tokens.shape
        if batch.features.shape[-1] != cfg.feature_dim:
            raise ValueError(
                f"controller reads {cfg.feature_dim} features per position, got "
                f"{batch.features.shape[-1]}"
            )
        dev = batch.tokens.device
        d = cfg.d_model
        gpos = torch.arange(G, device=dev)
        visible = gpos[None, :] < batch.visible_end[:, None]  # [B, G]
        pos = torch.cat(
            [
                sinusoid(gpos, d)[None].expand(B, G, d),
                sinusoid(gpos[None, :] - batch.window_start[:, None], d),
            ],
            dim=-1,
        )
        setting = self.setting(batch.setting)  # [B, d]
        gen = (
            self.segment.weight[1]
            + self.positions(pos)
            + self.features(batch.features)
            + self.committed_flag(batch.committed.long())
            + setting[:, None]
        )  # [B, G, d]
        if cfg.use_structure:
            structure = structure_features(
                batch.tokens,
                batch.proposal,
                batch.committed,
                visible,
                batch.prompt,
                batch.prompt_mask,
                cfg.eos_token_ids,
                cfg.separator_token_ids,
            )
            gen = gen + self.token(batch.tokens) + self.token(batch.proposal)
            gen = gen + self.structure(structure)
        gen = gen * visible[..., None]  # hidden positions carry nothing
        # The prompt enters as one pooled token: attention then runs over G + 1 positions, not
        # P + G, which keeps the controller's forward a small fraction of the backbone's.
        summary = self.segment.weight[0] + setting  # [B, d]
        if cfg.use_structure:
            P = batch.prompt.shape[1]
            prompt = self.token(batch.prompt) + sinusoid(torch.arange(P, device=dev), d)[None]
            weight = batch.prompt_mask.float()[..., None]  # [B, P, 1]
            summary = summary + (prompt * weight).sum(1) / weight.sum(1).clamp(min=1.0)
        x = torch.cat([summary[:, None], gen], dim=1)  # [B, 1 + G, d]
        keep = torch.cat([torch.ones_like(visible[:, :1]), visible], dim=1)  # [B, 1 + G]
        h = self.norm(self.encoder(x, src_key_padding_mask=~keep))
        h_gen = h[:, 1:]  # [B, G, d]
        logits = self.stability(h_gen).squeeze(-1)  # [B, G]
        eos_logits = self.eos(h_gen).squeeze(-1)  # [B, G]
        if cfg.use_tau:
            tau = self.tau(h[:, 0]).squeeze(-1)  # [B] from the summary token
        else:
            tau = torch.zeros(B, device=dev)
        return logits, tau, eos_logits

    def loss(self, batch: ControllerBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted BCE on ``logit - tau`` over labelled eligible positions, ``tau^2``, EOS BCE.

        Args:
            batch: Inputs with ``labels`` (and ``eos_labels`` for the end-of-answer head).

        Returns:
            ``(loss, parts)`` with the scalar loss and its components for logging.
        """
        if batch.labels is None:
            raise ValueError("loss needs a batch with labels (batch_from_records)")
        logits, tau, eos_logits = self.forward_all(batch)
        margin = logits - tau[:, None]  # [B, G]
        labels = batch.labels
        weight = torch.where(labels > 0.5, self.config.pos_weight, self.config.neg_weight)
        weight = weight * batch.eligible
        bce = F.binary_cross_entropy_with_logits(margin, labels, weight=weight, reduction="sum")
        bce = bce / weight.sum().clamp(min=1e-6)
        penalty = self.config.tau_penalty * (tau**2).mean()
        loss = bce + penalty
        parts = {"bce": float(bce.detach()), "tau_penalty": float(penalty.detach())}
        if batch.eos_labels is not None and self.config.eos_weight > 0:
            masked = (~batch.committed).float() * (
                torch.arange(batch.tokens.shape[1], device=batch.tokens.device)[None, :]
                < batch.visible_end[:, None]
            )
            eos_bce = F.binary_cross_entropy_with_logits(
                eos_logits, batch.eos_labels, weight=masked, reduction="sum"
            ) / masked.sum().clamp(min=1.0)
            loss = loss + self.config.eos_weight * eos_bce
            parts["eos_bce"] = float(eos_bce.detach())
        return loss, parts

    def configure_optimizers(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """AdamW with decay on matrices only (embeddings and norms excluded)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            matrix = p.dim() >= 2 and "token" not in name and "segment" not in name
            (decay if matrix else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr)
