"""A trained PPO / MaskablePPO agent as a :class:`~commit_env.policies.CommitPolicy`.

:class:`PPOPolicy` turns a batched :class:`~commit_env.decoding.TraceState` into the observation
dict the environment would have produced (through the env's own
:class:`~commit_env.envs.observation.ObservationLayout`, never a second feature
implementation), runs the SB3 policy deterministically and returns the commit mask, so
``commit_env.evaluate.evaluate_policy`` and the benchmark sweeps treat the agent like any heuristic.

Example:
    >>> policy = PPOPolicy.load("runs/ppo/final.zip")  # doctest: +SKIP
    >>> config = policy.decode_config(policy.setting.config())  # doctest: +SKIP
    >>> evaluate_policy(backbone, task, policy, config)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from commit_env.agents.policy_net import PerPositionNet, per_position_layout

from commit_env.backbones.spec import BackboneSpec
from commit_env.decoding import DEFAULT_TOP_K, TRAINING_SETTING, DecodeSetting
from commit_env.decoding.state import TraceState
from commit_env.envs.actions import actions_to_mask
from commit_env.envs.core import EnvConfig
from commit_env.envs.observation import DEFAULT_FEATURES, ObservationLayout
from commit_env.policies.base import CommitPolicy

__all__ = ["PPOPolicy", "StateObserver", "load_model"]

ALGOS: dict[str, str] = {
    "ppo": "stable_baselines3:PPO",
    "maskable": "sb3_contrib:MaskablePPO",
}


def _algo_class(algo: str) -> Any:
    import importlib

    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; expected one of {sorted(ALGOS)}")
    module, name = ALGOS[algo].split(":")
    return getattr(importlib.import_module(module), name)


def load_model(path: str | Path, algo: str = "ppo", device: str | None = None) -> Any:
    """Load a saved SB3 model (``PPO`` or ``MaskablePPO``) without an environment.

    Args:
        path: The ``.zip`` written by ``model.save``.
        algo: ``"ppo"`` or ``"maskable"``.
        device: Torch device (default ``"cpu"``).

    Returns:
        The model.

    Raises:
        ValueError: On an unknown ``algo``.
        FileNotFoundError: If ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved model at {path}")
    return _algo_class(algo).load(str(path), device=device or "cpu")


class StateObserver:
    """Build the environment's observation dict for a batched trace state.

    The observation comes from :class:`commit_env.envs.observation.ObservationLayout` (one layout
    per generation length and device seen, all with the training env's features, top-k and
    hidden width), then per-position keys are zero-padded from the state's G to the env's padded
    width, exactly as padding positions read in the env. No task, decoder or backbone is needed:
    the vocabulary size comes from the ``proposal`` bounds of the observation space.

    Args:
        env_config: The training environment's config (features, top-k, hidden width).
        observation_space: The model's Dict observation space (gives the padded width).

    Raises:
        ValueError: See :func:`commit_env.agents.policy_net.per_position_layout`.
    """

    def __init__(self, env_config: EnvConfig, observation_space: Any) -> None:
        self.env_config = env_config
        self.observation_space = observation_space
        self.gen_length, _, self._globals = per_position_layout(observation_space, exclude=())
        self._vocab_size = int(np.max(observation_space["proposal"].high)) + 1
        self._layouts: dict[tuple[int, str], ObservationLayout] = {}

    def _layout_for(self, G: int, device: torch.device) -> ObservationLayout:
        key = (G, str(device))
        if key not in self._layouts:
            env = self.env_config
            self._layouts[key] = ObservationLayout(
                env.features,
                top_k=env.top_k,
                hidden_dim=env.hidden_dim,
                gen_length=G,
                vocab_size=self._vocab_size,
                device=device,
            )
        return self._layouts[key]

    def __call__(self, state: TraceState) -> dict[str, np.ndarray]:
        """The observation of every row.

        Args:
            state: B rows, G <= the env's padded width.

        Returns:
            key -> ``[B, ...]`` arrays matching the model's observation space.

        Raises:
            ValueError: If the state's G exceeds the width the model was trained with.
        """
        G_s, G = state.gen_length, self.gen_length
        if G_s > G:
            raise ValueError(
                f"state has gen_length {G_s} but the policy was trained with padded width {G}; "
                f"decode with gen_length <= {G}"
            )
        obs = self._layout_for(G_s, state.canvas.device).observe(state)
        out: dict[str, np.ndarray] = {}
        B = state.batch_size
        for key, space in self.observation_space.spaces.items():
            value = obs[key]
            if key in self._globals or G_s == G:
                out[key] = np.ascontiguousarray(value)
                continue
            w = space.shape[0] // G
            padded = np.zeros((B, G, w), dtype=value.dtype)
            padded[:, :G_s] = value.reshape(B, G_s, w)
            out[key] = padded.reshape(B, G * w)
        return out


@dataclass
class PPOPolicy(CommitPolicy):
    """A trained SB3 agent behind the :class:`CommitPolicy` protocol (deterministic actions).

    Build it with :meth:`load` (or :meth:`from_model` during training). ``select`` commits every
    eligible position whose commit probability is >= 0.5.

    Attributes:
        path: Where the model was loaded from (empty for an in-memory model).
        step_cost: The lambda the agent was trained with.
        algo: ``"ppo"`` or ``"maskable"``.
        setting: The training setting; its G is the env's padded width (the largest G the
            policy accepts).
    """

    name: ClassVar[str] = "ppo"
    path: str = ""
    step_cost: float = 0.0
    algo: str = "ppo"
    setting: DecodeSetting = TRAINING_SETTING
    _model: Any = field(default=None, repr=False, compare=False)
    _env_config: EnvConfig | None = field(default=None, repr=False, compare=False)
    _observer: StateObserver | None = field(default=None, repr=False, compare=False)

    @property
    def params(self) -> dict[str, Any]:
        """The policy's published parameters (for reports)."""
        return {"step_cost": self.step_cost, "algo": self.algo, "path": self.path}

    @property
    def gen_length(self) -> int:
        """The env's padded width G (the largest G the policy accepts)."""
        return self.setting.gen_length

    @property
    def model(self) -> Any:
        """The SB3 model (``PPO`` or ``MaskablePPO``)."""
        return self._model

    @property
    def env_config(self) -> EnvConfig:
        """The training environment's config (observation layout, task, backbone)."""
        assert self._env_config is not None, "PPOPolicy built without an env config"
        return self._env_config

    @property
    def observation_keys(self) -> tuple[str, ...]:
        """The observation keys the model reads, in the env's (sorted) order."""
        return tuple(self._model.observation_space.spaces)

    @classmethod
    def from_model(
        cls,
        model: Any,
        env_config: EnvConfig,
        *,
        algo: str = "ppo",
        window: str | None = None,
        step_budget: int | None = None,
        path: str = "",
    ) -> PPOPolicy:
        """Wrap an in-memory SB3 model.

        Args:
            model: ``PPO`` or ``MaskablePPO`` trained on the token-commitment env.
            env_config: The env's config.
            algo: ``"ppo"`` or ``"maskable"``.
            window: Training window (default ``env_config.window``).
            step_budget: Training budget (default ``env_config.step_budget``).
            path: Where the model lives, for reports.

        Returns:
            The policy.

        Raises:
            ValueError: If the model's observation space lacks ``eligible``/``valid``.
        """
        observer = StateObserver(env_config, model.observation_space)
        return cls(
            path=path,
            step_cost=float(env_config.step_cost),
            algo=algo,
            setting=DecodeSetting(
                observer.gen_length,
                env_config.window if window is None else window,
                env_config.step_budget if step_budget is None else step_budget,
            ),
            _model=model,
            _env_config=env_config,
            _observer=observer,
        )

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> PPOPolicy:
        """Load ``final.zip`` (or any checkpoint) plus the run's ``config.json``.

        Args:
            path: The model ``.zip`` or the run directory (then ``final.zip`` inside it).
                ``config.json`` is looked up next to the zip, then one directory up (for
                checkpoints under ``checkpoints/``).
            device: Torch device for the policy network (default ``"cpu"``).

        Returns:
            The policy.

        Raises:
            FileNotFoundError: If the zip or ``config.json`` is missing.
            ValueError: If ``config.json`` names an unknown algorithm.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "final.zip"
        candidates = [path.parent / "config.json", path.parent.parent / "config.json"]
        config_path = next((p for p in candidates if p.is_file()), None)
        if config_path is None:
            raise FileNotFoundError(f"no config.json next to {path} (looked in {candidates})")
        cfg = json.loads(config_path.read_text())
        algo = cfg.get("algo", "ppo")
        model = load_model(path, algo, device)
        setting = cfg.get("setting", cfg)  # runs written before the nested setting: flat keys
        backbone = cfg.get("backbone", "tiny")
        env_config = EnvConfig(
            task=cfg["task"],
            backbone=BackboneSpec.coerce(backbone),
            gen_length=setting["gen_length"],
            window=setting["window"],
            step_budget=setting.get("step_budget"),
            step_cost=cfg["step_cost"],
            features=tuple(cfg.get("features", DEFAULT_FEATURES)),
            top_k=int(cfg.get("top_k", DEFAULT_TOP_K)),
            hidden_dim=int(cfg.get("hidden_dim", 8)),
            action_mode=cfg.get("action_mode", "mask"),
            shaping=float(cfg.get("shaping", 0.0)),
        )
        return cls.from_model(model, env_config, algo=algo, path=str(path))

    def decode_options(self) -> dict[str, Any]:
        """The hidden-feature width the agent observes (see :meth:`CommitPolicy.decode_config`)."""
        env = self.env_config
        return {"hidden_features": env.hidden_dim if "hidden" in env.features else 0}

    def observe(self, state: TraceState) -> dict[str, np.ndarray]:
        """The env observation of every row of ``state`` (key -> ``[B, ...]``).

        Args:
            state: B rows with G <= :attr:`gen_length`.

        Returns:
            The observation dict.

        Raises:
            ValueError: If the state's G exceeds :attr:`gen_length`.
        """
        assert self._observer is not None, "PPOPolicy built without an observer"
        return self._observer(state)

    def commit_logits(self, obs: dict[str, np.ndarray]) -> torch.Tensor | None:
        """Commit logits ``[B, G]`` of a per-position model (``None`` for other networks).

        Args:
            obs: Batched observation dict.

        Returns:
            float tensor ``[B, G]`` on the CPU (``-inf`` where ineligible), or ``None``.
        """
        policy = self._model.policy
        if not isinstance(policy.mlp_extractor, PerPositionNet):
            return None
        with torch.no_grad():
            obs_t, _ = policy.obs_to_tensor(obs)
            features = policy.extract_features(obs_t, policy.pi_features_extractor)
            latent = policy.mlp_extractor.forward_actor(features)  # [B, 2G]
        G = latent.shape[1] // 2
        logits = latent[:, :G].masked_fill(latent[:, G:] < 0.5, float("-inf"))
        return logits.cpu()

    def select(self, state: TraceState) -> torch.Tensor:
        """Deterministic commit mask: eligible positions with commit probability >= 0.5.

        Args:
            state: B rows with G <= :attr:`gen_length`.

        Returns:
            bool tensor ``[B, G]`` on the state's device.

        Raises:
            ValueError: If the state's G exceeds :attr:`gen_length`.
        """
        G_s = state.gen_length
        obs = self.observe(state)
        logits = self.commit_logits(obs)
        if logits is not None:
            actions = logits >= 0  # [B, G_env] p >= 0.5, exactly as the distribution's mode
        else:
            kwargs: dict[str, Any] = {}
            if self.algo == "maskable":
                masks = np.ones((state.batch_size, 2 * self.gen_length), dtype=bool)
                masks[:, 1::2] = obs["eligible"] > 0.5
                kwargs["action_masks"] = masks
            act, _ = self._model.predict(obs, deterministic=True, **kwargs)
            mode = self.env_config.action_mode
            if mode != "mask":  # one threshold / count per row, mapped as the env maps it
                return actions_to_mask(mode, act, state.confidence, state.eligible)
            actions = torch.as_tensor(np.asarray(act) > 0.5)
        return actions[:, :G_s].to(state.eligible.device) & state.eligible
