"""Train a PPO (or MaskablePPO) commitment agent on the batched SB3 environment.

CPU, embedded tiny backbone (about 4 minutes, 2 cores)::

    commit-env train-ppo --task qa --step-cost 0.02 --timesteps 12000 --num-envs 16 --seed 0 \
        --gen-length 16 --window block:4 --out runs/ppo_qa_0.02

    # the same from Python: train_ppo(PPOConfig(task="qa", step_cost=0.02, out="runs/ppo_qa"))

GPU, a real backbone (the env batches all slots into one forward)::

    commit-env train-ppo --task math --backbone hf:GSAI-ML/LLaDA-8B-Instruct --step-cost 0.01 \
        --timesteps 200000 --num-envs 64 --gen-length 64 --window block:16 --out runs/ppo_llada

The run directory is locked while training (a second run into it fails naming the first one's
pid); every ``.zip`` (``final``, ``best``, ``last`` and ``checkpoints/``) is written atomically,
model and optimizer state together. ``--resume`` continues from ``OUT/last.zip`` (written at every
checkpoint and at the end) up to ``--timesteps``; ``OUT/run_key.json`` records every setting that
changes the learning, and a resume with other ones is refused unless ``--force``.

Writes ``OUT/final.zip`` (``PPO.load``-able, and ``commit_env.agents.policy.PPOPolicy.load``-able),
``OUT/config.json``, ``OUT/best.zip`` (best periodic evaluation), ``OUT/checkpoints/`` and
TensorBoard logs under ``OUT/tb``: SB3's ``rollout/`` and ``train/`` curves plus
``rollout/task_score_mean``, ``rollout/nfe_mean``, ``rollout/commit_per_step_mean``,
``rollout/forced_commit_rate`` and ``eval/score``, ``eval/nfe``, ``eval/return``.

Which algorithm: ``--algo ppo`` (plain PPO with
:class:`commit_env.agents.policy_net.PerPositionPolicy`, whose masked Bernoulli handles
eligibility) is the main path. ``--algo maskable`` runs sb3-contrib's MaskablePPO with the same
network; it builds one masked categorical per position every step and is several times slower
per step (``benchmarks/bench_ppo.py``) with no gain here.

Learning from scratch (no behaviour cloning), ``--from-scratch`` = :data:`FROM_SCRATCH`:

* ``action_mode="threshold"``: the action is one number per step mapped to a confidence
  threshold (:mod:`commit_env.envs.actions`), so "commit nothing" cannot be expressed, every
  fixed threshold rule is a constant action, and the state-dependent policy can only add to it.
  The network is SB3's ``MultiInputPolicy`` on :class:`PerPositionExtractor` features (the raw
  ``proposal`` ids left out) with a Gaussian head.
* ``shaping=1.0``: potential-based shaping ``F = gamma * Phi(s') - Phi(s)`` with
  ``Phi = committed fraction`` and ``Phi(terminal) = 0`` (Ng et al. 1999); with ``gamma = 1`` the
  terms of every episode sum to exactly 0, so returns and optimal policies are unchanged.
* ``"conflict"`` observation group: per-position duplicate-token flags
  (:func:`commit_env.envs.observation.conflict_features`).
* ``curriculum``: optional increasing generation lengths (``--curriculum 8 16 24``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from commit_env.agents.policy import PPOPolicy, _algo_class
from commit_env.agents.policy_net import PerPositionMaskablePolicy, PerPositionPolicy

from commit_env.backbones.base import Backbone
from commit_env.backbones.spec import BackboneLike, BackboneSpec, resolve_backbone
from commit_env.decoding import DEFAULT_TOP_K, TRAINING_SETTING, DecodeSetting
from commit_env.envs.core import EnvConfig
from commit_env.envs.observation import DEFAULT_FEATURES
from commit_env.evaluate import evaluate_policy, sample_examples
from commit_env.io import write_bytes_atomic, write_json_atomic
from commit_env.policies.base import CommitPolicy
from commit_env.rundir import RunLock, check_run_key
from commit_env.tasks.registry import get_task

__all__ = [
    "FROM_SCRATCH",
    "PPOConfig",
    "build_model",
    "evaluate_agent",
    "save_model_atomic",
    "train_ppo",
]

#: PPOConfig fields of the from-scratch recipe (``--from-scratch``; see the module docstring).
FROM_SCRATCH: dict[str, Any] = {
    "action_mode": "threshold",
    "shaping": 1.0,
    "features": (*DEFAULT_FEATURES, "conflict"),
    "policy": "mlp",
    "lr": 1e-3,
    "ent_coef": 0.0,
    "log_std_init": -0.5,
    # short rollouts, many epochs: more updates per sample (qa, lambda 0.02, 12k steps, seed 0:
    # return 0.902 vs 0.878 with n_steps 32 / 4 epochs / batch 256; tuned threshold 0.892)
    "n_steps": 16,
    "n_epochs": 10,
    "batch_size": 128,
}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PPOConfig:
    """Everything a PPO training run needs; stored as ``OUT/config.json``.

    Attributes:
        task: Task name (``qa``, ``math``, ``code``, ...).
        backbone: Backbone spec string (``tiny`` = embedded default) or a full
            :class:`~commit_env.backbones.spec.BackboneSpec` (kind, dtype, remote code); a loaded
            backbone can be passed to :func:`train_ppo` instead.
        setting: The decode setting (G is the env's padded width; ``step_budget=None`` = G).
        features: Feature groups the env observes (recorded in ``config.json``).
        top_k: K, top-k probabilities per position in the observation.
        hidden_dim: D, hidden-projection width (used with the ``"hidden"`` group).
        step_cost: lambda, reward subtracted per step (return = score - lambda * NFE).
        timesteps: Environment steps to train for (over all envs).
        num_envs: B, slots of the batched env (one backbone forward per step for all).
        n_steps: Rollout length per env (rollout = n_steps * num_envs transitions).
        batch_size: PPO minibatch size.
        n_epochs: PPO epochs per rollout.
        lr: Adam learning rate.
        ent_coef: Entropy bonus (summed over eligible positions only).
        gamma: Discount (episodes are short with a terminal reward: ~1).
        gae_lambda: GAE lambda.
        hidden: d, width of the per-position network.
        logit_bias: Initial commit-logit bias (-2: commit ~12% of eligible positions).
        seed: Seed of the model, the env slots (``seed + i``) and behaviour cloning.
        out: Run directory; ``None`` = ``runs/{task}__ppo__{seed}__{time}``.
        algo: ``"ppo"`` (main path) or ``"maskable"`` (sb3-contrib MaskablePPO).
        policy: ``"per_position"`` (weight-shared network) or ``"mlp"`` (SB3's MultiInputPolicy).
        eval_every: Timesteps between evaluations (0 = only at the end).
        eval_n: Examples per evaluation (a separate seeded set).
        eval_seed: Seed of the evaluation examples.
        checkpoint_every: Timesteps between checkpoints (0 = none).
        max_minutes: Stop training after this much wall time (``None`` = no limit).
        max_cpu_minutes: Stop training after this much CPU time of the process (``None`` = no
            limit); the M4 budget is counted this way.
        init_teacher: ``--init`` spec as given (e.g. ``controller:DIR``); the caller resolves it
            into a teacher policy passed to :func:`train_ppo`.
        bc_episodes: Teacher decodes recorded for behaviour cloning.
        bc_epochs: Behaviour-cloning epochs.
        progress_bar: Show SB3's progress bar (needs ``tqdm`` and ``rich``).
        verbose: SB3 verbosity (1 prints the logger table every rollout).
        action_mode: The env's action (``"mask"``, ``"threshold"`` or ``"count"``); the
            per-position policy needs ``"mask"``, the others use ``policy="mlp"``.
        shaping: Weight of the env's potential-based shaping (0 = off); its discount is
            ``gamma``.
        curriculum: Increasing generation lengths for :class:`LengthCurriculumCallback`
            (``None`` = off).
        threads: Torch threads (``None``: the env's default, 1 for a small CPU backbone).
        log_std_init: Initial log std of the Gaussian head (threshold mode).
        resume: Continue from ``OUT/last.zip`` (a fresh start when there is none yet).
        force: With ``resume``, continue even if the settings differ from the stored run key.
    """

    task: str = "qa"
    backbone: str | BackboneSpec = "tiny"
    setting: DecodeSetting = TRAINING_SETTING
    features: tuple[str, ...] = DEFAULT_FEATURES
    top_k: int = DEFAULT_TOP_K
    hidden_dim: int = 8
    step_cost: float = 0.01
    timesteps: int = 12_000
    num_envs: int = 16
    n_steps: int = 32
    batch_size: int = 256
    n_epochs: int = 4
    lr: float = 1e-3
    ent_coef: float = 0.0
    gamma: float = 1.0
    gae_lambda: float = 0.95
    hidden: int = 64
    logit_bias: float = -2.0
    seed: int = 0
    out: str | None = None
    algo: Literal["ppo", "maskable"] = "ppo"
    policy: Literal["per_position", "mlp"] = "per_position"
    eval_every: int = 0
    eval_n: int = 64
    eval_seed: int = 12345
    checkpoint_every: int = 0
    max_minutes: float | None = None
    max_cpu_minutes: float | None = None
    init_teacher: str | None = None
    bc_episodes: int = 128
    bc_epochs: int = 20
    progress_bar: bool = True
    verbose: int = 0
    action_mode: str = "mask"
    shaping: float = 0.0
    curriculum: tuple[int, ...] | None = None
    threads: int | None = None
    log_std_init: float = -0.5
    resume: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if self.action_mode not in ("mask", "threshold", "count"):
            raise ValueError(
                f"action_mode must be 'mask', 'threshold' or 'count', got {self.action_mode!r}"
            )
        if self.action_mode != "mask" and (self.policy != "mlp" or self.algo != "ppo"):
            raise ValueError(
                f"action_mode {self.action_mode!r} needs policy='mlp' and algo='ppo' (the "
                "per-position and maskable policies emit commit masks)"
            )
        if self.curriculum is not None:
            lengths = tuple(int(g) for g in self.curriculum)
            if not lengths or any(b <= a for a, b in zip(lengths, lengths[1:], strict=False)):
                raise ValueError(f"curriculum lengths must be increasing, got {list(lengths)}")
            object.__setattr__(self, "curriculum", lengths)
        if self.algo not in ("ppo", "maskable"):
            raise ValueError(f"algo must be 'ppo' or 'maskable', got {self.algo!r}")
        if self.policy not in ("per_position", "mlp"):
            raise ValueError(f"policy must be 'per_position' or 'mlp', got {self.policy!r}")
        for name in ("timesteps", "num_envs", "n_steps", "batch_size", "n_epochs", "eval_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.step_cost < 0:
            raise ValueError(f"step_cost must be >= 0, got {self.step_cost}")
        if self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError("eval_every and checkpoint_every must be >= 0")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0 or None, got {self.max_minutes}")
        if self.max_cpu_minutes is not None and self.max_cpu_minutes <= 0:
            raise ValueError(f"max_cpu_minutes must be > 0 or None, got {self.max_cpu_minutes}")
        if self.rollout_size % self.batch_size:
            warnings.warn(
                f"batch_size {self.batch_size} does not divide the rollout of "
                f"{self.n_steps} x {self.num_envs} = {self.rollout_size} transitions; the last "
                f"minibatch of every epoch is truncated (pick e.g. {self.rollout_size // 2})",
                stacklevel=2,
            )

    @property
    def rollout_size(self) -> int:
        """Transitions per rollout (``n_steps * num_envs``)."""
        return self.n_steps * self.num_envs

    def env_config(self, backbone: BackboneLike | None = None) -> EnvConfig:
        """The environment config of this run.

        Args:
            backbone: A loaded backbone to share (default: the spec ``self.backbone``).

        Returns:
            The env config.
        """
        return EnvConfig(
            task=self.task,
            backbone=self.backbone if backbone is None else backbone,
            gen_length=self.setting.gen_length,
            window=self.setting.window,
            step_budget=self.setting.step_budget,
            step_cost=self.step_cost,
            features=self.features,
            top_k=self.top_k,
            hidden_dim=self.hidden_dim,
            action_mode=self.action_mode,
            shaping=self.shaping,
            shaping_gamma=self.gamma,
            num_threads=self.threads,
        )


def build_model(cfg: PPOConfig, venv: Any, tensorboard_log: str | None = None) -> Any:
    """Create the SB3 model (``PPO`` or ``MaskablePPO``) for a run.

    Args:
        cfg: The run config.
        venv: The (``VecMonitor``-wrapped) SB3 vector env.
        tensorboard_log: TensorBoard directory, or ``None``.

    Returns:
        The untrained model.
    """
    if cfg.policy == "mlp":
        from commit_env.agents.policy_net import PerPositionMlpPolicy

        # MultiInputPolicy on PerPositionExtractor features (raw token ids left out).
        policy: Any = PerPositionMlpPolicy
        policy_kwargs: dict[str, Any] | None = {
            "net_arch": {"pi": [cfg.hidden, cfg.hidden], "vf": [cfg.hidden, cfg.hidden]},
        }
        if cfg.action_mode == "threshold":
            policy_kwargs["log_std_init"] = cfg.log_std_init
    else:
        policy = PerPositionPolicy if cfg.algo == "ppo" else PerPositionMaskablePolicy
        policy_kwargs = {"hidden": cfg.hidden, "logit_bias": cfg.logit_bias}
    return _algo_class(cfg.algo)(
        policy,
        venv,
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs,
        learning_rate=cfg.lr,
        ent_coef=cfg.ent_coef,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        policy_kwargs=policy_kwargs,
        tensorboard_log=tensorboard_log,
        seed=cfg.seed,
        verbose=cfg.verbose,
        device="cpu" if _cpu_only() else "auto",
    )


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def evaluate_agent(
    model: Any,
    cfg: PPOConfig,
    *,
    backbone: Backbone | None = None,
    n: int | None = None,
    seed: int | None = None,
) -> dict[str, float]:
    """Evaluate a model deterministically with ``commit_env.evaluate.evaluate_policy``.

    Args:
        model: The SB3 model.
        cfg: The run config (task, decode settings, step cost).
        backbone: A loaded backbone (default: resolve ``cfg.backbone``).
        n: Examples (default ``cfg.eval_n``).
        seed: Example seed (default ``cfg.eval_seed``).

    Returns:
        ``{"score", "nfe", "return", "forced_commit_rate", "tokens_per_forward"}`` means, with
        ``return = score - step_cost * nfe``.
    """
    backbone = resolve_backbone(cfg.backbone if backbone is None else backbone)
    task = get_task(cfg.task)
    policy = PPOPolicy.from_model(model, cfg.env_config(backbone), algo=cfg.algo)
    n = cfg.eval_n if n is None else n
    examples = sample_examples(task, n, cfg.eval_seed if seed is None else seed)
    config = policy.decode_config(cfg.setting.config())
    ev = evaluate_policy(backbone, task, policy, config, examples=examples)
    summary = ev.summary()
    return {
        "score": summary["score"],
        "nfe": summary["nfe"],
        "return": summary["score"] - cfg.step_cost * summary["nfe"],
        "forced_commit_rate": summary["forced_commit_rate"],
        "tokens_per_forward": summary["tokens_per_forward"],
    }


def save_model_atomic(model: Any, path: str | Path) -> None:
    """``model.save`` into memory, then one atomic write: a kill never leaves half a zip.

    Args:
        model: An SB3 model.
        path: The ``.zip`` file.
    """
    import io

    buffer = io.BytesIO()
    model.save(buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _run_dir(cfg: PPOConfig) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    return Path("runs") / f"{cfg.task}__ppo__{cfg.seed}__{int(time.time())}"


def train_ppo(
    cfg: PPOConfig,
    teacher: CommitPolicy | None = None,
    *,
    backbone: Backbone | None = None,
) -> dict[str, Any]:
    """Train an agent, evaluate it and save it (stages: env, warm start, learn, final eval).

    Args:
        cfg: The run config.
        teacher: Optional policy to behaviour-clone before RL (``--init``; resolved by the
            caller, e.g. the supervised controller built in ``evaluation``).
        backbone: A loaded backbone to train on (default: resolve ``cfg.backbone``, a spec
            string or a full :class:`~commit_env.backbones.spec.BackboneSpec`).

    Returns:
        Summary: ``out``, ``timesteps`` trained, ``wall_time_s``, ``env_steps_per_s``,
        ``stopped_early``, ``bc_losses``, ``initial_eval``/``final_eval`` metrics (see
        :func:`evaluate_agent`) and the ``eval_history``.

    Raises:
        ValueError: On an invalid environment setting.
        RunDirLocked: If another process is writing the run directory.
    """
    out = _run_dir(cfg)
    get_task(cfg.task)  # fail on an unknown name before taking the lock or loading a model
    with RunLock(out):
        return _train(cfg, out, teacher, backbone)


_NOT_IN_KEY = {
    "out",
    "resume",
    "force",
    "progress_bar",
    "verbose",
    "timesteps",  # a resume may train for longer
    "max_minutes",
    "max_cpu_minutes",  # a stop condition, like max_minutes
    "threads",  # speed only
    "eval_every",
    "eval_n",
    "eval_seed",
    "checkpoint_every",
    "init_teacher",  # the warm start happens once, before the first checkpoint
    "bc_episodes",
    "bc_epochs",
}


def ppo_run_key(cfg: PPOConfig) -> dict[str, Any]:
    """Every setting of ``cfg`` that changes what is learned (``OUT/run_key.json``)."""
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_KEY}
    if isinstance(key.get("backbone"), dict):
        key["backbone"].pop("device", None)
    return key


def _resume_source(out: Path) -> Path | None:
    """The checkpoint ``--resume`` continues from (None: nothing to resume yet)."""
    for name in ("last.zip", "final.zip"):
        if (out / name).is_file():
            return out / name
    logger.warning("--resume: no %s/last.zip yet; starting from scratch", out)
    return None


def _load_for_resume(run: _Run, path: Path) -> Any:
    """Load ``path`` (model, optimizer, timestep count) onto the run's env, or say why not."""
    import zipfile

    from commit_env.errors import CorruptCheckpointError, ResumeMismatch

    if not zipfile.is_zipfile(path):
        raise CorruptCheckpointError(f"{path} is not a readable SB3 checkpoint (not a zip file)")
    try:
        return _algo_class(run.cfg.algo).load(
            str(path),
            env=run.venv,
            device=run.model.device,
            tensorboard_log=str(run.out / "tb"),
        )
    except (zipfile.BadZipFile, EOFError, KeyError) as err:
        raise CorruptCheckpointError(f"{path} is not a readable SB3 checkpoint ({err})") from None
    except ValueError as err:  # SB3: observation or action spaces do not match
        raise ResumeMismatch(f"cannot resume from {path}: {err}") from None


def _train(
    cfg: PPOConfig, out: Path, teacher: CommitPolicy | None, backbone: Backbone | None
) -> dict[str, Any]:
    source = _resume_source(out) if cfg.resume else None
    check_run_key(
        out,
        ppo_run_key(cfg),
        force=cfg.force or source is None,
        what="PPO run",
        hint="pass the same settings, use another --out, or --force",
    )
    write_json_atomic(out / "config.json", dataclasses.asdict(cfg))
    run = _make_run(cfg, out, resolve_backbone(cfg.backbone if backbone is None else backbone))
    summary: dict[str, Any] = {"out": str(out), "bc_losses": []}
    if source is not None:
        run.model = _load_for_resume(run, source)
        summary["resumed_from"] = {"path": str(source), "timesteps": int(run.model.num_timesteps)}
    elif teacher is not None:
        summary["bc_losses"] = _warm_start(run, teacher)
    summary["initial_eval"] = run.evaluate(run.model)
    summary.update(_learn(run))
    run.venv.close()
    write_json_atomic(out / "summary.json", summary)
    final = summary["final_eval"]
    logger.info(
        "trained %d steps in %.0fs: eval score %.3f nfe %.2f return %.3f",
        summary["timesteps"],
        summary["wall_time_s"],
        final["score"],
        final["nfe"],
        final["return"],
    )
    return summary


@dataclass
class _Run:
    """The pieces of one training run (built by :func:`_make_run`)."""

    cfg: PPOConfig
    out: Path
    backbone: Backbone
    env_config: EnvConfig
    venv: Any
    model: Any

    def evaluate(self, model: Any) -> dict[str, float]:
        """Deterministic evaluation on the run's held-out examples."""
        return evaluate_agent(model, self.cfg, backbone=self.backbone)


def _make_run(cfg: PPOConfig, out: Path, backbone: Backbone) -> _Run:
    """Stage 1: the monitored SB3 vector env and the untrained model."""
    from stable_baselines3.common.vec_env import VecMonitor

    from commit_env.envs.sb3 import make_sb3_vec_env

    env_config = cfg.env_config(backbone)
    venv = VecMonitor(
        make_sb3_vec_env(cfg.num_envs, seed=cfg.seed, config=env_config),
        info_keywords=("is_success",),
    )
    model = build_model(cfg, venv, tensorboard_log=str(out / "tb"))
    return _Run(cfg, out, backbone, env_config, venv, model)


def _warm_start(run: _Run, teacher: CommitPolicy) -> list[float]:
    """Stage 2: behaviour cloning of ``teacher``; returns the per-epoch losses."""
    from commit_env.agents.bc import bc_warm_start

    return bc_warm_start(
        run.model,
        teacher,
        run.env_config,
        n_episodes=run.cfg.bc_episodes,
        epochs=run.cfg.bc_epochs,
        seed=run.cfg.seed,
        backbone=run.backbone,
    )


def _learn(run: _Run) -> dict[str, Any]:
    """Stage 3: RL with evaluation/checkpoint/time-limit callbacks, save, final evaluation."""
    from stable_baselines3.common.callbacks import CallbackList

    cfg, out, model = run.cfg, run.out, run.model
    evaluator = _periodic_evaluator(run)
    callbacks = _training_callbacks(run, evaluator)
    limits = _time_limits(cfg)
    callbacks += limits
    tick, cpu_tick = time.perf_counter(), time.process_time()
    start = int(model.num_timesteps)  # > 0 when resumed
    if cfg.timesteps > start:
        model.learn(
            total_timesteps=cfg.timesteps - start,
            callback=CallbackList(callbacks),
            tb_log_name=cfg.algo.upper(),
            progress_bar=cfg.progress_bar,
            reset_num_timesteps=start == 0,
        )
    wall = time.perf_counter() - tick
    cpu = time.process_time() - cpu_tick
    save_model_atomic(model, out / "final.zip")
    save_model_atomic(model, out / "last.zip")
    final = _final_evaluation(run, evaluator)
    return {
        "timesteps": int(model.num_timesteps),
        "wall_time_s": wall,
        "cpu_time_s": cpu,
        "env_steps_per_s": (model.num_timesteps - start) / max(wall, 1e-9),
        "stopped_early": any(limit.stopped_early for limit in limits),
        "final_eval": final,
        "eval_history": evaluator.history,
    }


def _periodic_evaluator(run: _Run) -> Any:
    """The evaluation callback; it saves ``best.zip`` and keeps the history (also if unused)."""
    from commit_env.agents.callbacks import PeriodicEvalCallback

    return PeriodicEvalCallback(
        run.evaluate,
        max(run.cfg.eval_every, 1),
        on_best=lambda m: save_model_atomic(m, run.out / "best.zip"),
    )


def _training_callbacks(run: _Run, evaluator: Any) -> list[Any]:
    """Decode statistics, then the curriculum, evaluation and checkpoints the config asks for."""
    from commit_env.agents.callbacks import DecodeStatsCallback, LengthCurriculumCallback

    cfg = run.cfg
    callbacks: list[Any] = [DecodeStatsCallback(step_cost=cfg.step_cost)]
    if cfg.curriculum:
        callbacks.append(
            LengthCurriculumCallback(
                cfg.curriculum,
                cfg.timesteps,
                None if cfg.max_minutes is None else cfg.max_minutes * 60.0,
            )
        )
    if cfg.eval_every:
        callbacks.append(evaluator)
    if cfg.checkpoint_every:
        callbacks.append(_atomic_checkpoints(run.out, cfg.checkpoint_every, cfg.algo))
    return callbacks


def _time_limits(cfg: PPOConfig) -> list[Any]:
    """Callbacks that stop training after ``max_minutes`` of wall / ``max_cpu_minutes`` of CPU."""
    from commit_env.agents.callbacks import WallClockLimitCallback

    limits = []
    if cfg.max_minutes is not None:
        limits.append(WallClockLimitCallback(cfg.max_minutes * 60.0))
    if cfg.max_cpu_minutes is not None:
        limits.append(WallClockLimitCallback(cfg.max_cpu_minutes * 60.0, cpu=True))
    return limits


def _final_evaluation(run: _Run, evaluator: Any) -> dict[str, Any]:
    """Evaluate the trained model, reusing the periodic evaluation if it just ran at this step."""
    model = run.model
    if evaluator.history and evaluator.history[-1]["timesteps"] == model.num_timesteps:
        return evaluator.history[-1]
    if run.cfg.eval_every:
        return evaluator.run()
    return run.evaluate(model)


def _atomic_checkpoints(out: Path, every: int, prefix: str) -> Any:
    """Atomically save ``checkpoints/PREFIX_N_steps.zip`` and ``last.zip`` every ``every`` steps."""
    from stable_baselines3.common.callbacks import BaseCallback

    class AtomicCheckpoints(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self._next = every

        def _on_training_start(self) -> None:
            self._next = (self.num_timesteps // every + 1) * every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self._next:
                path = out / "checkpoints" / f"{prefix}_{self.num_timesteps}_steps.zip"
                save_model_atomic(self.model, path)
                save_model_atomic(self.model, out / "last.zip")
                self._next = (self.num_timesteps // every + 1) * every
            return True

    return AtomicCheckpoints()
