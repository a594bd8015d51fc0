"""Behaviour cloning: warm-start a per-position actor from any commitment policy.

``commit-env train-ppo --init controller:DIR`` builds the supervised controller in the evaluation
layer and passes it here as a plain :class:`~commit_env.policies.CommitPolicy` (``agents`` never
imports ``supervised``). The teacher decodes seeded task examples with the batched engine; every
step's observation (the env's own, via :class:`commit_env.agents.policy.StateObserver`) is
paired with the teacher's commit mask, and the actor's per-position logits are fitted with
binary cross-entropy over eligible positions. RL then refines the teacher instead of starting
from nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from commit_env.agents.policy import StateObserver
from commit_env.agents.policy_net import PerPositionNet

from commit_env.backbones.base import Backbone
from commit_env.backbones.spec import resolve_backbone
from commit_env.decoding import Decoder
from commit_env.decoding.state import CommitDecision
from commit_env.envs.core import EnvConfig
from commit_env.evaluate import sample_examples
from commit_env.policies.base import CommitPolicy
from commit_env.tasks.registry import get_task

__all__ = ["bc_warm_start", "collect_teacher_data"]

logger = logging.getLogger(__name__)


def collect_teacher_data(
    teacher: CommitPolicy,
    env_config: EnvConfig,
    observation_space: Any,
    *,
    n_episodes: int = 128,
    seed: int = 0,
    batch_size: int = 64,
    backbone: Backbone | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Decode seeded examples with ``teacher`` and record (observation, commit mask) pairs.

    Args:
        teacher: Any commitment policy (``select(state) -> bool [B, G]``).
        env_config: The training env's config (task, G, window, budget, features).
        observation_space: The model's Dict observation space.
        n_episodes: Examples to decode.
        seed: Seed of the example draw.
        batch_size: Rows per engine batch.
        backbone: A loaded backbone (default: load ``env_config.backbone``).

    Returns:
        ``(obs, targets)``: observation dict key -> ``[N, ...]`` over every step of every
        unfinished row, and float32 ``[N, G]`` teacher commits (eligible positions only).

    Raises:
        ValueError: If ``n_episodes < 1`` or the env config uses per-episode setting lists.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if env_config.settings:
        raise ValueError("behaviour cloning needs a single decode setting (settings=None)")
    if backbone is None:
        backbone = resolve_backbone(env_config.backbone, device=env_config.device)
    task = get_task(env_config.task) if isinstance(env_config.task, str) else env_config.task
    G = env_config.gen_length or task.default_gen_length
    config = env_config.decode_config(
        G, window=env_config.window, step_budget=env_config.step_budget
    )
    # A teacher may read features of its own (the supervised controller's hidden projection).
    wanted = teacher.decode_config(config)
    if config.hidden_features and wanted.hidden_features != config.hidden_features:
        raise ValueError(
            f"teacher needs hidden_features={wanted.hidden_features} but the env observes "
            f"hidden_dim={config.hidden_features}; drop 'hidden' from the env features or "
            "match the widths"
        )
    config = wanted
    decoder = Decoder(backbone, config)
    observer = StateObserver(env_config, observation_space)
    examples = sample_examples(task, n_episodes, seed)
    obs_parts: list[dict[str, np.ndarray]] = []
    target_parts: list[np.ndarray] = []
    for lo in range(0, n_episodes, batch_size):
        state = decoder.start([e.prompt for e in examples[lo : lo + batch_size]])
        teacher.reset(state)
        while not state.all_done:
            decision = teacher.select(state)
            mask = decision.mask if isinstance(decision, CommitDecision) else decision
            active = (~state.done).cpu().numpy()  # [B]
            obs = observer(state)
            target = (mask.bool() & state.eligible).float().cpu().numpy()  # [B, G]
            obs_parts.append({k: v[active] for k, v in obs.items()})
            pad = np.zeros((int(active.sum()), observer.gen_length), dtype=np.float32)
            pad[:, : target.shape[1]] = target[active]
            target_parts.append(pad)
            decoder.step(state, decision)
    obs_all = {k: np.concatenate([p[k] for p in obs_parts]) for k in obs_parts[0]}
    return obs_all, np.concatenate(target_parts)


def bc_warm_start(
    model: Any,
    teacher: CommitPolicy,
    env_config: EnvConfig,
    n_episodes: int = 128,
    epochs: int = 20,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    backbone: Backbone | None = None,
) -> list[float]:
    """Fit the actor of a per-position SB3 model to a teacher's commit decisions.

    Args:
        model: ``PPO`` or ``MaskablePPO`` whose policy uses
            :class:`commit_env.agents.policy_net.PerPositionNet` (``PerPositionPolicy`` /
            ``PerPositionMaskablePolicy``).
        teacher: Any :class:`CommitPolicy` (e.g. the supervised controller, built by the caller).
        env_config: The training env's config.
        n_episodes: Teacher decodes to record.
        epochs: Passes over the recorded steps.
        batch_size: Steps per gradient update.
        lr: Adam learning rate.
        seed: Seed of the example draw and of the minibatch shuffling.
        backbone: A loaded backbone to share.

    Returns:
        Mean BCE loss (over eligible positions) of every epoch.

    Raises:
        TypeError: If the model's policy is not a per-position policy.
        ValueError: On invalid ``n_episodes``/``epochs``.
    """
    policy = model.policy
    if not isinstance(getattr(policy, "mlp_extractor", None), PerPositionNet):
        raise TypeError(
            "behaviour cloning needs a per-position policy "
            "(commit_env.agents.policy_net.PerPositionPolicy)"
        )
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    obs, targets = collect_teacher_data(
        teacher,
        env_config,
        model.observation_space,
        n_episodes=n_episodes,
        seed=seed,
        backbone=backbone,
    )
    N, G = targets.shape
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    policy.set_training_mode(True)
    for _ in range(epochs):
        order = rng.permutation(N)
        total, weight = 0.0, 0.0
        for lo in range(0, N, batch_size):
            idx = order[lo : lo + batch_size]
            obs_t, _ = policy.obs_to_tensor({k: v[idx] for k, v in obs.items()})
            features = policy.extract_features(obs_t, policy.pi_features_extractor)
            latent = policy.mlp_extractor.forward_actor(features)  # [b, 2G]
            logits, eligible = latent[:, :G], latent[:, G:]  # [b, G] each
            target = torch.as_tensor(targets[idx], device=logits.device)
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            n = eligible.detach().sum().clamp(min=1.0)
            loss = (bce * eligible).sum() / n
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * float(n)
            weight += float(n)
        losses.append(total / max(weight, 1.0))
    policy.set_training_mode(False)
    logger.info("behaviour cloning: %d steps, loss %.4f -> %.4f", N, losses[0], losses[-1])
    return losses
