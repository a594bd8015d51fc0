"""SB3 callbacks: decode statistics in the rollout logs, periodic evaluation, a wall-clock limit.

All values go through ``self.logger.record`` so they land in every configured output (stdout
table, TensorBoard) next to SB3's own ``rollout/`` and ``train/`` scalars (STYLE G12).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

__all__ = [
    "DecodeStatsCallback",
    "LengthCurriculumCallback",
    "PeriodicEvalCallback",
    "WallClockLimitCallback",
]


class DecodeStatsCallback(BaseCallback):
    """Log per-episode decode statistics from the env's final infos, once per rollout.

    Reads ``task_score``, ``nfe``, ``steps``, ``forced_commits`` and ``gen_length`` from the info
    of every slot that finished (see ``CommitEnv``'s *Episode End*) and records:

    * ``rollout/task_score_mean``: mean task score of the episodes that ended in the rollout;
    * ``rollout/nfe_mean``: mean backbone forwards per episode;
    * ``rollout/commit_per_step_mean``: mean of ``gen_length / steps`` (tokens locked per step);
    * ``rollout/forced_commit_rate``: forced commits / steps over the rollout's episodes (how
      often the agent committed nothing and the engine forced the top-1);
    * ``rollout/return_mean`` (when ``step_cost`` is given): mean ``score - step_cost * nfe``,
      the objective itself, free of any shaping term.

    Args:
        step_cost: lambda of the run (``None``: no ``rollout/return_mean``).
        verbose: SB3 verbosity.
    """

    def __init__(self, step_cost: float | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.step_cost = step_cost
        self._episodes: list[tuple[float, float, float, float, float]] = []

    def _on_rollout_start(self) -> None:
        self._episodes = []

    def _on_step(self) -> bool:
        dones = self.locals.get("dones")
        infos = self.locals.get("infos", [])
        if dones is None:
            return True
        for i in np.flatnonzero(dones):
            info = infos[i]
            if "task_score" not in info:
                continue
            self._episodes.append(
                (
                    float(info["task_score"]),
                    float(info["nfe"]),
                    float(info.get("steps", info["nfe"])),
                    float(info.get("forced_commits", 0)),
                    float(info.get("gen_length", 0)),
                )
            )
        return True

    def _on_rollout_end(self) -> None:
        if not self._episodes:
            return
        score, nfe, steps, forced, gen = np.asarray(self._episodes, dtype=float).T
        self.logger.record("rollout/task_score_mean", float(score.mean()))
        self.logger.record("rollout/nfe_mean", float(nfe.mean()))
        self.logger.record(
            "rollout/commit_per_step_mean", float((gen / np.maximum(steps, 1)).mean())
        )
        self.logger.record("rollout/forced_commit_rate", float(forced.sum() / max(steps.sum(), 1)))
        if self.step_cost is not None:
            self.logger.record("rollout/return_mean", float((score - self.step_cost * nfe).mean()))


class LengthCurriculumCallback(BaseCallback):
    """Curriculum over generation lengths: stage i draws episodes from ``lengths[: i + 1]``.

    Training progress (the larger of the timestep fraction and, with ``max_seconds``, the wall
    time fraction) is split into ``len(lengths)`` equal stages; at each stage boundary the env's
    ``set_gen_lengths`` is called (``CommitSB3VecEnv.set_gen_lengths``), so new episodes draw
    their length uniformly from the lengths reached so far. Records ``train/curriculum_stage``.

    Args:
        lengths: Increasing generation lengths, the last normally the env's G.
        total_timesteps: The run's timestep budget.
        max_seconds: The run's wall-time budget, if any.
        verbose: SB3 verbosity.

    Raises:
        ValueError: If ``lengths`` is empty or not increasing.
    """

    def __init__(
        self,
        lengths: Any,
        total_timesteps: int,
        max_seconds: float | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.lengths = [int(g) for g in lengths]
        if not self.lengths or any(
            b <= a for a, b in zip(self.lengths, self.lengths[1:], strict=False)
        ):
            raise ValueError(f"curriculum lengths must be increasing, got {self.lengths}")
        self.total = max(int(total_timesteps), 1)
        self.max_seconds = max_seconds
        self.stage = -1
        self._start = 0.0

    def _on_training_start(self) -> None:
        self._start = time.perf_counter()
        self.training_env.env_method(
            "set_gen_lengths", self.lengths
        )  # every length fits, or fail now
        self._advance(0)

    def _advance(self, stage: int) -> None:
        self.stage = stage
        self.training_env.env_method("set_gen_lengths", self.lengths[: stage + 1])
        self.logger.record("train/curriculum_stage", stage)

    def _on_step(self) -> bool:
        frac = self.num_timesteps / self.total
        if self.max_seconds:
            frac = max(frac, (time.perf_counter() - self._start) / self.max_seconds)
        stage = min(int(frac * len(self.lengths)), len(self.lengths) - 1)
        if stage > self.stage:
            self._advance(stage)
        return True


class PeriodicEvalCallback(BaseCallback):
    """Every ``eval_every`` timesteps, evaluate the current policy with a caller's function.

    The function gets the model and returns a dict with ``score``, ``nfe`` and ``return``
    (``commit_env.agents.train_ppo`` evaluates on a separate seeded example set through
    ``commit_env.evaluate.evaluate_policy``); each is logged as ``eval/<name>`` and dumped at the
    current timestep. The best mean return is kept in :attr:`best_return`, and ``on_best`` (if
    given) is called with the model when it improves.

    Args:
        evaluate: ``model -> {"score": ..., "nfe": ..., "return": ...}``.
        eval_every: Timesteps between evaluations (counted over all envs).
        on_best: Called with the model on a new best return (e.g. to save ``best.zip``).
        verbose: SB3 verbosity.

    Raises:
        ValueError: If ``eval_every < 1``.
    """

    def __init__(
        self,
        evaluate: Callable[[Any], dict[str, float]],
        eval_every: int,
        on_best: Callable[[Any], None] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {eval_every}")
        self.evaluate = evaluate
        self.eval_every = eval_every
        self.on_best = on_best
        self.best_return = -float("inf")
        self.history: list[dict[str, float]] = []
        self._next = eval_every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.eval_every
            self.run()
        return True

    def run(self) -> dict[str, float]:
        """Evaluate now, log ``eval/*`` and return the metrics."""
        metrics = dict(self.evaluate(self.model))
        metrics["timesteps"] = float(self.num_timesteps)
        self.history.append(metrics)
        for name in ("score", "nfe", "return"):
            self.logger.record(f"eval/{name}", float(metrics[name]))
        self.logger.dump(self.num_timesteps)
        if metrics["return"] > self.best_return:
            self.best_return = float(metrics["return"])
            if self.on_best is not None:
                self.on_best(self.model)
        return metrics


class WallClockLimitCallback(BaseCallback):
    """Stop training once ``max_seconds`` of wall (or process CPU) time have passed.

    Args:
        max_seconds: Budget in seconds.
        cpu: Count this process's CPU time (``time.process_time``, all its threads) instead of
            wall time: the budget then means the same on an idle and on a shared machine.
        verbose: SB3 verbosity.
    """

    def __init__(self, max_seconds: float, cpu: bool = False, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.max_seconds = max_seconds
        self.cpu = cpu
        self._clock = time.process_time if cpu else time.perf_counter
        self._start = 0.0
        self.stopped_early = False

    def _on_training_start(self) -> None:
        self._start = self._clock()

    def _on_step(self) -> bool:
        if self._clock() - self._start > self.max_seconds:
            self.stopped_early = True
            return False
        return True
