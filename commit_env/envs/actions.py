"""Action parameterisations of the token-commitment envs (``EnvConfig.action_mode``).

``"mask"`` (the default, TokenCommit-v0's original action) is a ``MultiBinary(G)`` commit mask:
an agent that learns to output all zeros gets only the engine's forced top-1 commit per step,
which is the "commit nothing" collapse seen when PPO learns from scratch.

The two other modes cannot express "commit nothing", and each contains the heuristic it is
compared with, so plain SB3 PPO starts from (and can always fall back to) a sensible rule:

``"threshold"``
    ``Box(-1, 1, (1,))``. The action ``a`` maps to a confidence threshold
    ``t = 1 - 10 ** (-1.5 * (a + 1))`` (``a = -1`` -> 0, ``a = 0`` -> 0.968, ``a = 1`` -> 0.999,
    log resolution near 1 where thresholds matter); the step commits every eligible position
    with ``confidence >= t`` *plus* the most confident eligible position, exactly
    :class:`commit_env.policies.ThresholdPolicy` (t). A constant action is therefore a tuned
    threshold rule; a state-dependent one can beat it. Values outside ``[-1, 1]`` are clipped
    (SB3 clips Gaussian samples to the bounds anyway).
``"count"``
    ``Discrete(G)``: action ``n`` commits the ``n + 1`` most confident eligible positions.

Both modes read the engine's confidences and eligibility directly (no observation key needed),
so they behave the same in :class:`~commit_env.envs.CommitEnv`, the vector env, the SB3 adapter
and :class:`commit_env.agents.policy.PPOPolicy` outside any env.
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

__all__ = ["ACTION_MODES", "ActionMode", "action_space", "actions_to_mask", "threshold_of"]

ActionMode = Literal["mask", "threshold", "count"]
ACTION_MODES: tuple[str, ...] = ("mask", "threshold", "count")


def check_action_mode(mode: str) -> None:
    """Raise ``ValueError`` naming the valid modes if ``mode`` is not one of them."""
    if mode not in ACTION_MODES:
        raise ValueError(f"action_mode must be one of {list(ACTION_MODES)}, got {mode!r}")


def action_space(mode: str, gen_length: int) -> gym.spaces.Space[Any]:
    """The single-slot action space of ``mode`` for G = ``gen_length``.

    Args:
        mode: ``"mask"``, ``"threshold"`` or ``"count"``.
        gen_length: G.

    Returns:
        ``MultiBinary(G)``, ``Box(-1, 1, (1,), float32)`` or ``Discrete(G)``.

    Raises:
        ValueError: On an unknown mode.
    """
    check_action_mode(mode)
    if mode == "threshold":
        return gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    if mode == "count":
        return gym.spaces.Discrete(gen_length)
    return gym.spaces.MultiBinary(gen_length)


def threshold_of(action: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Confidence thresholds of threshold-mode actions: ``1 - 10 ** (-1.5 * (clip(a) + 1))``.

    Args:
        action: ``[B]`` or ``[B, 1]`` actions.

    Returns:
        float32 ``[B]`` thresholds in ``[0, 0.999]``.
    """
    a = torch.as_tensor(np.asarray(action, dtype=np.float32)).reshape(-1).clamp(-1.0, 1.0)
    return 1.0 - torch.pow(10.0, -1.5 * (a + 1.0))


def _batch_values(actions: Any, batch: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(actions, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} action must be numeric, got {actions!r}") from e
    if arr.size != batch:
        raise ValueError(f"expected {batch} {what} action(s) (one per slot), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} actions must be finite, got {arr.tolist()}")
    return arr


def actions_to_mask(
    mode: str, actions: Any, confidence: torch.Tensor, eligible: torch.Tensor
) -> torch.Tensor:
    """Turn a batch of threshold or count actions into commit masks.

    Args:
        mode: ``"threshold"`` or ``"count"`` (``"mask"`` actions are masks already).
        actions: ``B`` actions (shape ``[B]`` or ``[B, 1]``).
        confidence: float ``[B, G]`` proposal confidences.
        eligible: bool ``[B, G]`` positions that may be committed.

    Returns:
        bool ``[B, G]`` on ``confidence``'s device: eligible positions only, at least one per
        row that has any eligible position.

    Raises:
        ValueError: On an unknown mode, a wrong number of actions, a non-finite value or a count
            outside ``[0, G)``.
    """
    from commit_env.policies.base import rank_within_eligible

    check_action_mode(mode)
    if mode == "mask":
        raise ValueError("actions_to_mask converts 'threshold' and 'count' actions only")
    B, G = confidence.shape
    ranks = rank_within_eligible(confidence, eligible)  # [B, G] 0 = most confident eligible
    values = _batch_values(actions, B, mode)
    if mode == "threshold":
        t = threshold_of(values).to(confidence.device)[:, None]  # [B, 1]
        return eligible & ((confidence >= t) | (ranks == 0))
    if not np.all((values == np.round(values)) & (values >= 0) & (values < G)):
        raise ValueError(f"count actions must be integers in [0, {G}), got {values.tolist()}")
    n = torch.as_tensor(values, dtype=torch.int64, device=confidence.device)[:, None]  # [B, 1]
    return eligible & (ranks <= n)
