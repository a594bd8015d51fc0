"""The future-stability controller: a small transformer over one trace state.

Background: TraceLock ("The Path Matters: Learning a Token-Commitment Policy for Diffusion Language
Models", arXiv 2605.24697). The controller reads the prompt (pooled into one token), the committed
tokens, the proposals and the shared trace-state features of the visible window (positions right of
it are hidden), and emits
one stability logit per generation position plus one learned threshold logit tau per state. A
position is committed when ``sigmoid(logit - tau) >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from commit_env.supervised.inputs import ControllerBatch
from torch import nn

__all__ = ["ControllerConfig", "StabilityController"]


@dataclass(frozen=True)
class ControllerConfig:
    """Architecture and loss of the controller.

    Attributes:
        vocab_size: V of the backbone the traces came from (token embeddings).
        feature_dim: F, features per position.
        max_gen_length: Largest G the position embedding covers.
        max_prompt_length: Largest prompt the prompt position embedding covers.
        d_model: Width.
        n_layers: Transformer layers.
        n_heads: Attention heads.
        dropout: Dropout in the encoder.
        use_tau: Learn the per-state threshold tau (False: tau = 0, an ablation).
        neg_weight: Weight of unstable positions in the BCE (a wrong commit is permanent).
        pos_weight: Weight of stable positions.
        tau_penalty: Coefficient of the tau^2 penalty.
    """

    vocab_size: int
    feature_dim: int
    max_gen_length: int = 256
    max_prompt_length: int = 1024
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.0
    use_tau: bool = True
    neg_weight: float = 3.0
    pos_weight: float = 1.0
    tau_penalty: float = 1e-3

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} not divisible by n_heads {self.n_heads}")
        if min(self.vocab_size, self.feature_dim, self.n_layers) < 1:
            raise ValueError("vocab_size, feature_dim and n_layers must be >= 1")


class StabilityController(nn.Module):
    """Per-position stability logits and a per-state threshold.

    Args:
        config: Architecture.
    """

    def __init__(self, config: ControllerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.token = nn.Embedding(config.vocab_size, d)
        self.segment = nn.Embedding(3, d)  # 0 prompt, 1 generation token, 2 proposal stream
        self.gen_pos = nn.Embedding(config.max_gen_length, d)
        self.prompt_pos = nn.Embedding(config.max_prompt_length, d)
        self.features = nn.Sequential(nn.Linear(config.feature_dim, d), nn.GELU(), nn.Linear(d, d))
        layer = nn.TransformerEncoderLayer(
            d, config.n_heads, 2 * d, config.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.stability = nn.Linear(d, 1)
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

        Raises:
            ValueError: If G or the prompt exceeds the embedding tables or ids exceed V.
        """
        B, G = batch.tokens.shape
        P = batch.prompt.shape[1]
        cfg = self.config
        if G > cfg.max_gen_length or P > cfg.max_prompt_length:
            raise ValueError(
                f"controller covers G <= {cfg.max_gen_length} and prompts <= "
                f"{cfg.max_prompt_length}; got G={G}, P={P}"
            )
        dev = batch.tokens.device
        gpos = torch.arange(G, device=dev)
        visible = gpos[None, :] < batch.visible_end[:, None]  # [B, G]
        gen = (
            self.token(batch.tokens)
            + self.token(batch.proposal)
            + self.segment.weight[1]
            + self.gen_pos(gpos)[None]
            + self.features(batch.features)
        )  # [B, G, d]
        gen = gen * visible[..., None]  # hidden positions carry nothing
        # The prompt enters as one pooled token: attention then runs over G + 1 positions, not
        # P + G, which keeps the controller's forward a small fraction of the backbone's.
        prompt = self.token(batch.prompt) + self.prompt_pos(torch.arange(P, device=dev))[None]
        weight = batch.prompt_mask.float()[..., None]  # [B, P, 1]
        summary = (prompt * weight).sum(1) / weight.sum(1).clamp(min=1.0)  # [B, d]
        summary = summary + self.segment.weight[0]
        x = torch.cat([summary[:, None], gen], dim=1)  # [B, 1 + G, d]
        keep = torch.cat([torch.ones_like(visible[:, :1]), visible], dim=1)  # [B, 1 + G]
        h = self.norm(self.encoder(x, src_key_padding_mask=~keep))
        h_gen = h[:, 1:]  # [B, G, d]
        logits = self.stability(h_gen).squeeze(-1)  # [B, G]
        if cfg.use_tau:
            pooled = (h_gen * visible[..., None]).sum(1) / visible.sum(1, keepdim=True).clamp(min=1)
            tau = self.tau(pooled).squeeze(-1)  # [B]
        else:
            tau = torch.zeros(B, device=dev)
        return logits, tau

    def loss(self, batch: ControllerBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted BCE on ``logit - tau`` over labelled eligible positions, plus ``tau^2``.

        Args:
            batch: Inputs with ``labels``.

        Returns:
            ``(loss, parts)`` with the scalar loss and its components for logging.
        """
        assert batch.labels is not None, "loss needs labels"
        logits, tau = self(batch)
        margin = logits - tau[:, None]  # [B, G]
        labels = batch.labels
        weight = torch.where(labels > 0.5, self.config.pos_weight, self.config.neg_weight)
        weight = weight * batch.eligible
        bce = F.binary_cross_entropy_with_logits(margin, labels, weight=weight, reduction="sum")
        bce = bce / weight.sum().clamp(min=1e-6)
        penalty = self.config.tau_penalty * (tau**2).mean()
        return bce + penalty, {"bce": float(bce.detach()), "tau_penalty": float(penalty.detach())}

    def configure_optimizers(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """AdamW with decay on matrices only (embeddings and norms excluded)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            matrix = p.dim() >= 2 and "token" not in name and "pos" not in name
            (decay if matrix else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr)
