"""Per-position actor-critic policies for SB3 PPO and sb3-contrib MaskablePPO.

The commit decision at one position should depend on that position's trace features (and a little
context), not on where it sits in a flat vector, so the network is shared across positions:

* :class:`PerPositionExtractor` (a ``BaseFeaturesExtractor``) stacks the per-position keys of the
  Dict observation into ``[B, G, C]`` (``eligible`` and ``valid`` first, then the other per-position
  keys; global keys such as ``progress`` are broadcast to every position) and flattens it, because
  SB3 hands a flat ``[B, features_dim]`` tensor to the policy body.
* :class:`PerPositionNet` (the ``mlp_extractor``) runs one MLP per position (weights shared), adds a
  masked-mean context of the row, and emits one commit logit per position (bias initialised to
  ``logit_bias``, -2 by default: commit about 12% of eligible positions at first). The critic pools
  its own per-position trunk with a masked mean and max over valid positions.
* :class:`MaskedBernoulliDistribution` sums the Bernoulli log-probability and entropy over
  *eligible* positions only; ineligible bits are always sampled as 0 and contribute exactly zero
  (pitfall 2 of ``shared/reference/ecosystem.md``: without this, padding and committed positions
  inflate the entropy bonus and ``approx_kl``).
* :class:`PerPositionPolicy` (PPO) and :class:`PerPositionMaskablePolicy` (MaskablePPO) plug the
  pieces into SB3's ``MultiInputActorCriticPolicy`` / sb3-contrib's
  ``MaskableMultiInputActorCriticPolicy`` through their public hooks
  (``_build_mlp_extractor`` and ``_get_action_dist_from_latent``); neither ``train`` nor
  ``collect_rollouts`` is touched (STYLE G13).

Which to use: plain PPO with :class:`PerPositionPolicy` is the main path. MaskablePPO turns the
``MultiBinary(G)`` action into G two-way categoricals and applies a ``2 G`` mask every step,
which is slower per step (see ``benchmarks/bench_ppo.py``) for the same effect the masked
Bernoulli gets for free; use it only when you need sb3-contrib's masking machinery (for example
its ``MaskableEvalCallback`` or a policy without the per-position head).

Dimensions: B batch rows, G generation positions, C channels per position, d hidden width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import torch
import torch.nn.functional as F
from sb3_contrib.common.maskable.policies import MaskableMultiInputActorCriticPolicy
from stable_baselines3.common.distributions import BernoulliDistribution
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from commit_env.decoding import FEATURES

__all__ = [
    "MaskedBernoulliDistribution",
    "PerPositionExtractor",
    "PerPositionMaskablePolicy",
    "PerPositionMlpPolicy",
    "PerPositionNet",
    "PerPositionPolicy",
    "per_position_layout",
]

_GLOBAL_KEYS = frozenset(f.name for f in FEATURES if f.group == "global")
_FIRST = ("eligible", "valid")  # channels 0 and 1 of every position (the net reads them)
DEFAULT_EXCLUDE: tuple[str, ...] = ("proposal",)  # raw token ids carry no ordinal meaning


def per_position_layout(
    observation_space: gym.spaces.Dict, exclude: Sequence[str] = DEFAULT_EXCLUDE
) -> tuple[int, list[tuple[str, int]], list[str]]:
    """How a Dict observation maps to per-position channels.

    Args:
        observation_space: The env's (single) Dict observation space; it must hold 1-D ``Box``
            keys ``eligible`` and ``valid`` of shape ``(G,)``.
        exclude: Keys to leave out (default: the raw ``proposal`` token ids).

    Returns:
        ``(G, per_position, globals)``: G, the ``(key, width)`` pairs stacked per position
        (``eligible`` and ``valid`` first), and the global keys broadcast to every position.

    Raises:
        ValueError: If a required key is missing or a key's size is not a multiple of G.
    """
    spaces = observation_space.spaces
    for key in _FIRST:
        if key not in spaces:
            raise ValueError(f"observation needs the {key!r} key, got {sorted(spaces)}")
    G = int(spaces["eligible"].shape[0])
    per_position: list[tuple[str, int]] = [(k, 1) for k in _FIRST]
    globals_: list[str] = []
    for key in sorted(spaces):
        if key in _FIRST or key in exclude:
            continue
        size = int(spaces[key].shape[0]) if len(spaces[key].shape) == 1 else -1
        if key in _GLOBAL_KEYS and size == 1:
            globals_.append(key)
        elif size > 0 and size % G == 0:
            per_position.append((key, size // G))
        else:
            raise ValueError(
                f"observation key {key!r} has shape {spaces[key].shape}; expected (1,) for a "
                f"global feature or (G * width,) with G = {G}"
            )
    return G, per_position, globals_


class PerPositionExtractor(BaseFeaturesExtractor):
    """Stack a Dict observation into per-position channels, flattened to ``[B, G * C]``.

    Channel 0 is ``eligible`` and channel 1 is ``valid`` (:class:`PerPositionNet` reads them);
    per-position keys of width w (``topk`` has K) add w channels, global keys one broadcast
    channel each.

    Args:
        observation_space: The env's Dict observation space.
        exclude: Observation keys to ignore (default ``("proposal",)``).

    Raises:
        ValueError: See :func:`per_position_layout`.
    """

    def __init__(
        self, observation_space: gym.spaces.Dict, exclude: Sequence[str] = DEFAULT_EXCLUDE
    ) -> None:
        G, per_position, globals_ = per_position_layout(observation_space, exclude)
        channels = sum(w for _, w in per_position) + len(globals_)
        super().__init__(observation_space, features_dim=G * channels)
        self.gen_length = G
        self.channels = channels
        self._per_position = per_position
        self._globals = globals_

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stack the observation.

        Args:
            observations: key -> float tensor ``[B, G * w]`` or ``[B, 1]`` (SB3-preprocessed).

        Returns:
            float tensor ``[B, G * C]`` (position-major).
        """
        B, G = observations["eligible"].shape[0], self.gen_length
        cols = [observations[k].reshape(B, G, w) for k, w in self._per_position]  # [B, G, w]
        cols += [observations[k].reshape(B, 1, 1).expand(B, G, 1) for k in self._globals]
        return torch.cat(cols, dim=-1).reshape(B, G * self.channels)  # [B, G*C]


def _mlp(sizes: Sequence[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers)


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``h [B, G, d]`` over positions where ``mask [B, G]`` is 1 (0 if none)."""
    w = mask[..., None]  # [B, G, 1]
    return (h * w).sum(1) / w.sum(1).clamp(min=1.0)  # [B, d]


class PerPositionNet(nn.Module):
    """Weight-shared per-position actor and pooled critic (SB3 ``mlp_extractor`` interface).

    ``forward_actor`` returns ``[B, 2 G]``: G commit logits followed by the G eligibility bits,
    which :meth:`PerPositionPolicy._get_action_dist_from_latent` splits again (SB3 hands only the
    latent to the distribution hook, so the mask travels with it).

    Args:
        gen_length: G.
        channels: C, per-position input channels (channel 0 eligible, 1 valid).
        hidden: d, width of the per-position trunks.
        logit_bias: Initial bias of the commit logit (-2: commit little at first).
        activation: Activation module class.
    """

    def __init__(
        self,
        gen_length: int,
        channels: int,
        hidden: int = 64,
        logit_bias: float = -2.0,
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        self.gen_length = gen_length
        self.channels = channels
        self.pi_trunk = _mlp([channels, hidden, hidden], activation)
        self.pi_head = nn.Sequential(nn.Linear(2 * hidden, hidden), activation())
        self.pi_logit = nn.Linear(hidden, 1)
        self.vf_trunk = _mlp([channels, hidden, hidden], activation)
        self.latent_dim_pi = 2 * gen_length
        self.latent_dim_vf = 2 * hidden
        self.logit_bias = logit_bias
        self.reset_logit_head()

    def reset_logit_head(self) -> None:
        """Small logit weights and bias ``logit_bias`` (so the initial policy commits little)."""
        nn.init.normal_(self.pi_logit.weight, std=0.01)
        nn.init.constant_(self.pi_logit.bias, self.logit_bias)

    def _split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B = features.shape[0]
        x = features.reshape(B, self.gen_length, self.channels)  # [B, G, C]
        return x, x[..., 0], x[..., 1]  # features, eligible [B, G], valid [B, G]

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        """Commit logits and eligibility.

        Args:
            features: float tensor ``[B, G * C]`` from :class:`PerPositionExtractor`.

        Returns:
            float tensor ``[B, 2 G]``: logits ``[:, :G]``, eligible bits ``[:, G:]``.
        """
        x, eligible, valid = self._split(features)
        h = self.pi_trunk(x)  # [B, G, d]
        context = _masked_mean(h, valid)[:, None, :].expand_as(h)  # [B, G, d]
        logits = self.pi_logit(self.pi_head(torch.cat([h, context], dim=-1))).squeeze(-1)
        return torch.cat([logits, eligible], dim=-1)  # [B, 2G]

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled value features.

        Args:
            features: float tensor ``[B, G * C]``.

        Returns:
            float tensor ``[B, 2 d]``: masked mean and masked max over valid positions.
        """
        x, _, valid = self._split(features)
        h = self.vf_trunk(x)  # [B, G, d]
        mean = _masked_mean(h, valid)  # [B, d]
        peak = h.masked_fill(valid[..., None] < 0.5, -1.0).amax(1)  # [B, d] tanh range >= -1
        return torch.cat([mean, peak], dim=-1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both latents (SB3's ``MlpExtractor`` contract).

        Args:
            features: float tensor ``[B, G * C]``.

        Returns:
            ``(latent_pi [B, 2G], latent_vf [B, 2d])``.
        """
        return self.forward_actor(features), self.forward_critic(features)


class MaskedBernoulliDistribution(BernoulliDistribution):
    """Independent Bernoulli commit bits, counted only at eligible positions.

    Ineligible bits are always sampled (and taken as mode) 0; their log-probability and entropy
    contribute exactly zero, whatever action value is evaluated there.

    Args:
        action_dims: G.
    """

    def __init__(self, action_dims: int) -> None:
        super().__init__(action_dims)
        self.eligible: torch.Tensor | None = None

    def proba_distribution(  # type: ignore[override]
        self, action_logits: torch.Tensor, eligible: torch.Tensor | None = None
    ) -> MaskedBernoulliDistribution:
        """Set the parameters.

        Args:
            action_logits: float tensor ``[B, G]``.
            eligible: float/bool tensor ``[B, G]``; ``None`` means every position counts.

        Returns:
            ``self``.
        """
        super().proba_distribution(action_logits)
        self.eligible = (
            torch.ones_like(action_logits) if eligible is None else eligible.float()
        )  # [B, G]
        return self

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Sum of per-position log-probabilities over eligible positions ``[B]``."""
        return (self.distribution.log_prob(actions) * self.eligible).sum(dim=1)

    def entropy(self) -> torch.Tensor:
        """Sum of per-position entropies over eligible positions ``[B]``."""
        return (self.distribution.entropy() * self.eligible).sum(dim=1)

    def sample(self) -> torch.Tensor:
        """Bernoulli draw ``[B, G]`` with ineligible bits 0."""
        return self.distribution.sample() * self.eligible

    def mode(self) -> torch.Tensor:
        """Deterministic action ``[B, G]``: 1 where ``p >= 0.5`` and eligible."""
        return (self.distribution.logits >= 0).float() * self.eligible

    def actions_from_params(  # type: ignore[override]
        self,
        action_logits: torch.Tensor,
        eligible: torch.Tensor | None = None,
        deterministic: bool = False,
    ) -> torch.Tensor:
        """Actions from logits and eligibility (see :meth:`proba_distribution`)."""
        self.proba_distribution(action_logits, eligible)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(  # type: ignore[override]
        self, action_logits: torch.Tensor, eligible: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled actions and their log-probabilities."""
        actions = self.actions_from_params(action_logits, eligible)
        return actions, self.log_prob(actions)


def _install_per_position(policy: Any, hidden: int, logit_bias: float) -> None:
    extractor = policy.features_extractor
    if not isinstance(extractor, PerPositionExtractor):
        raise TypeError(
            "per-position policies need features_extractor_class=PerPositionExtractor, got "
            f"{type(extractor).__name__}"
        )
    policy.mlp_extractor = PerPositionNet(
        extractor.gen_length, extractor.channels, hidden=hidden, logit_bias=logit_bias
    )


def _rebuild_heads(policy: Any, lr_schedule: Schedule) -> None:
    # The logits come straight from the per-position net: SB3's Linear(latent_pi, G) action head
    # is replaced by an identity, and the optimizer rebuilt over the remaining parameters.
    policy.action_net = nn.Identity()
    policy.mlp_extractor.reset_logit_head()  # undo ortho_init, if it was requested
    policy.optimizer = policy.optimizer_class(
        policy.parameters(), lr=lr_schedule(1), **policy.optimizer_kwargs
    )


class _PerPositionMixin:
    """What both per-position policies share: arguments, the per-position trunk and heads."""

    hidden: int
    logit_bias: float

    def _configure(
        self,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.MultiBinary,
        hidden: int,
        logit_bias: float,
        kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        _check_spaces(observation_space, action_space)
        self.hidden = hidden
        self.logit_bias = logit_bias
        kwargs.setdefault("features_extractor_class", PerPositionExtractor)
        kwargs.setdefault("ortho_init", False)
        return kwargs

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(hidden=self.hidden, logit_bias=self.logit_bias)
        return data

    def _build_mlp_extractor(self) -> None:
        _install_per_position(self, self.hidden, self.logit_bias)

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        _rebuild_heads(self, lr_schedule)


class PerPositionPolicy(_PerPositionMixin, MultiInputActorCriticPolicy):
    """SB3 actor-critic with one weight-shared commit logit per position (PPO's main policy).

    Use as ``PPO(PerPositionPolicy, venv, policy_kwargs=dict(hidden=64, logit_bias=-2.0))``.
    The features extractor defaults to :class:`PerPositionExtractor` and ``ortho_init`` to
    ``False``; other keyword arguments are SB3's.

    Args:
        observation_space: The env's Dict observation space.
        action_space: ``MultiBinary(G)``.
        lr_schedule: Learning-rate schedule.
        hidden: d, width of the per-position trunks.
        logit_bias: Initial commit-logit bias.
        **kwargs: ``MultiInputActorCriticPolicy`` arguments.

    Raises:
        ValueError: If the action space is not ``MultiBinary(G)`` matching the observation.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.MultiBinary,
        lr_schedule: Schedule,
        hidden: int = 64,
        logit_bias: float = -2.0,
        **kwargs: Any,
    ) -> None:
        kwargs = self._configure(observation_space, action_space, hidden, logit_bias, kwargs)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        self.action_dist = MaskedBernoulliDistribution(int(action_space.n))

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor) -> MaskedBernoulliDistribution:
        G = latent_pi.shape[1] // 2
        logits, eligible = latent_pi[:, :G], latent_pi[:, G:] > 0.5  # [B, G] each
        return MaskedBernoulliDistribution(G).proba_distribution(logits, eligible)


class PerPositionMaskablePolicy(_PerPositionMixin, MaskableMultiInputActorCriticPolicy):
    """The per-position network for sb3-contrib's MaskablePPO.

    MaskablePPO models ``MultiBinary(G)`` as G two-way categoricals with logits ``[0, l_i]`` per
    position; the env's ``action_masks()`` (``[allow 0, allow 1]`` per position) then removes the
    commit choice at ineligible positions. Arguments as :class:`PerPositionPolicy`.

    Args:
        observation_space: The env's Dict observation space.
        action_space: ``MultiBinary(G)``.
        lr_schedule: Learning-rate schedule.
        hidden: d, width of the per-position trunks.
        logit_bias: Initial commit-logit bias.
        **kwargs: ``MaskableMultiInputActorCriticPolicy`` arguments.

    Raises:
        ValueError: If the action space is not ``MultiBinary(G)`` matching the observation.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.MultiBinary,
        lr_schedule: Schedule,
        hidden: int = 64,
        logit_bias: float = -2.0,
        **kwargs: Any,
    ) -> None:
        kwargs = self._configure(observation_space, action_space, hidden, logit_bias, kwargs)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor) -> Any:
        B, G = latent_pi.shape[0], latent_pi.shape[1] // 2
        logits = latent_pi[:, :G]  # [B, G]
        pairs = torch.stack([torch.zeros_like(logits), logits], dim=-1)  # [B, G, 2]
        return self.action_dist.proba_distribution(action_logits=pairs.reshape(B, 2 * G))


class PerPositionMlpPolicy(MultiInputActorCriticPolicy):
    """SB3's ``MultiInputPolicy`` on :class:`PerPositionExtractor` features, for any action space.

    The threshold and count action modes (``EnvConfig.action_mode``) emit one number per step, so
    they use a plain MLP actor-critic; this class only swaps SB3's ``CombinedExtractor`` (which
    would feed the raw ``proposal`` token ids as magnitudes) for the per-position stack. It can be
    named by its import path where a policy string is expected, e.g. in an RL Zoo hyperparameter
    file: ``policy: commit_env.agents.policy_net.PerPositionMlpPolicy``.

    Args:
        observation_space: The env's Dict observation space.
        action_space: Any SB3-supported action space.
        lr_schedule: Learning-rate schedule.
        **kwargs: ``MultiInputActorCriticPolicy`` arguments.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.Space,
        lr_schedule: Schedule,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("features_extractor_class", PerPositionExtractor)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)


def _check_spaces(observation_space: gym.spaces.Space, action_space: gym.spaces.Space) -> None:
    if not isinstance(observation_space, gym.spaces.Dict):
        raise ValueError(f"expected a Dict observation space, got {observation_space}")
    if not isinstance(action_space, gym.spaces.MultiBinary) or len(action_space.shape) != 1:
        raise ValueError(f"expected a MultiBinary(G) action space, got {action_space}")
    G = per_position_layout(observation_space)[0]
    if int(action_space.n) != G:
        raise ValueError(f"action space {action_space} does not match G = {G} of the observation")


def bernoulli_probs(latent_pi: torch.Tensor) -> torch.Tensor:
    """Commit probabilities from a :class:`PerPositionNet` actor latent (0 where ineligible).

    Args:
        latent_pi: float tensor ``[B, 2 G]``.

    Returns:
        float tensor ``[B, G]``.
    """
    G = latent_pi.shape[1] // 2
    return F.sigmoid(latent_pi[:, :G]) * (latent_pi[:, G:] > 0.5)
