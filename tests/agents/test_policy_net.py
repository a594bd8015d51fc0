"""The per-position policy: masking of log-probability, entropy, sampling and mode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from commit_env.agents.policy_net import (
    MaskedBernoulliDistribution,
    PerPositionExtractor,
    PerPositionPolicy,
    per_position_layout,
)

G = 6


def _space() -> gym.spaces.Dict:
    box = lambda n: gym.spaces.Box(0.0, 1.0, (n,), np.float32)  # noqa: E731
    return gym.spaces.Dict(
        {
            "conf": box(G),
            "eligible": box(G),
            "valid": box(G),
            "topk": box(G * 3),
            "progress": box(1),
            "proposal": gym.spaces.Box(0, 99, (G,), np.int32),
        }
    )


def _obs(B: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    eligible = torch.tensor(
        [[1, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float32
    )[:B]
    valid = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.float32)
    return {
        "conf": torch.rand(B, G, generator=gen),
        "eligible": eligible,
        "valid": valid[:B],
        "topk": torch.rand(B, G * 3, generator=gen),
        "progress": torch.rand(B, 1, generator=gen),
        "proposal": torch.randint(0, 99, (B, G), generator=gen).float(),
    }


@pytest.fixture()
def policy() -> PerPositionPolicy:
    torch.manual_seed(0)
    p = PerPositionPolicy(_space(), gym.spaces.MultiBinary(G), lambda _: 1e-3, hidden=16)
    torch.nn.init.normal_(p.mlp_extractor.pi_logit.weight, std=1.0)  # varied logits
    return p


def test_layout_puts_eligible_and_valid_first():
    G_, per_pos, globals_ = per_position_layout(_space())
    assert G_ == G
    assert [k for k, _ in per_pos[:2]] == ["eligible", "valid"]
    assert ("topk", 3) in per_pos and "proposal" not in dict(per_pos)
    assert globals_ == ["progress"]
    ext = PerPositionExtractor(_space())
    assert ext.features_dim == G * (1 + 1 + 1 + 3 + 1)
    feats = ext(_obs()).reshape(3, G, -1)
    torch.testing.assert_close(feats[..., 0], _obs()["eligible"])


def test_log_prob_and_entropy_count_only_eligible_positions(policy):
    obs = _obs()
    eligible = obs["eligible"].bool()
    a = torch.zeros(3, G)
    b = a.clone()
    b[~eligible] = 1.0  # differs only at ineligible positions
    _, logp_a, ent = policy.evaluate_actions(obs, a)
    _, logp_b, _ = policy.evaluate_actions(obs, b)
    torch.testing.assert_close(logp_a, logp_b)
    # Row 1 has no eligible position: zero log-prob and zero entropy.
    assert float(logp_a[1].detach()) == 0.0 and float(ent[1].detach()) == 0.0
    # Entropy equals the per-position Bernoulli entropies summed over eligible positions.
    dist = policy.get_distribution(obs)
    assert isinstance(dist, MaskedBernoulliDistribution)
    per_pos = torch.distributions.Bernoulli(logits=dist.distribution.logits).entropy()
    torch.testing.assert_close(ent, (per_pos * eligible).sum(1))
    # Log-prob of action 1 at eligible positions equals the sum of log sigmoid there.
    ones = eligible.float()
    _, logp_ones, _ = policy.evaluate_actions(obs, ones)
    logits = dist.distribution.logits
    expected = (torch.nn.functional.logsigmoid(logits) * ones).sum(1) + (
        torch.nn.functional.logsigmoid(-logits) * (eligible & ~ones.bool())
    ).sum(1)
    torch.testing.assert_close(logp_ones, expected)


def test_samples_and_mode_never_commit_ineligible(policy):
    obs = _obs()
    eligible = obs["eligible"].bool()
    for _ in range(50):
        actions, _, _ = policy(obs)
        assert not bool((actions.bool() & ~eligible).any())
    mode = policy.get_distribution(obs).mode()
    assert not bool((mode.bool() & ~eligible).any())


def test_initial_policy_commits_little():
    torch.manual_seed(0)
    p = PerPositionPolicy(_space(), gym.spaces.MultiBinary(G), lambda _: 1e-3)
    probs = p.get_distribution(_obs()).distribution.probs
    assert float(probs.max().detach()) < 0.2  # sigmoid(-2) = 0.12
    assert isinstance(p.action_net, torch.nn.Identity)


def test_rejects_mismatched_action_space():
    with pytest.raises(ValueError, match="does not match"):
        PerPositionPolicy(_space(), gym.spaces.MultiBinary(G + 1), lambda _: 1e-3)
