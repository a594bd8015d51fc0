"""The controller with revocable commits: controller drafts, WINO's verification remasks.

:class:`VerifiedControllerPolicy` drafts with a :class:`ControllerPolicy` (every eligible
position whose predicted stability clears the controller's threshold, plus its EOS tail) and keeps
WINO's narrow-out step (:class:`~commit_env.policies.WINOPolicy`): when a step accepted more than
one token, committed window tokens whose leave-one-out probability falls below
``verify_threshold`` are remasked (at most ``accepted - 1``), so a step still gains a token. The
pair answers issue 15's question for the main method: does taking commits back buy quality at
the same NFE? Compare it with the plain controller at matched NFE (``benchmarks`` or the bench's
sweep machinery).

Usage::

    from commit_env.supervised.verify import VerifiedControllerPolicy
    policy = VerifiedControllerPolicy.wrap(ControllerPolicy.from_pretrained(ckpt, backbone=bb))
    result = decode(bb, prompts, policy, policy.decode_config(setting.config()))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from commit_env.supervised.policy import ControllerPolicy

from commit_env.decoding.state import TraceState
from commit_env.policies import WINOPolicy

__all__ = ["VerifiedControllerPolicy"]


@dataclass
class VerifiedControllerPolicy(WINOPolicy):
    """WINO's verify-and-remask around a controller's drafts.

    Build with :meth:`wrap`. ``params`` reports the controller's thresholds and the verification
    settings; the drafter's weights are shared, never copied.

    Args:
        verify_threshold: WINO's tau_2: remask a committed token whose leave-one-out probability
            is below it.
        remask_cap: Engine per-position remask limit.
    """

    name: ClassVar[str] = "controller-verify"
    _drafter: ControllerPolicy | None = field(default=None, repr=False)

    @classmethod
    def wrap(
        cls, drafter: ControllerPolicy, *, verify_threshold: float = 0.9, remask_cap: int = 8
    ) -> VerifiedControllerPolicy:
        """Verify ``drafter``'s commits (WINO's narrow-out)."""
        return cls(verify_threshold=verify_threshold, remask_cap=remask_cap, _drafter=drafter)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self._drafter is None:
            raise ValueError("use VerifiedControllerPolicy.wrap(controller)")

    @property
    def drafter(self) -> ControllerPolicy:
        """The controller that drafts."""
        assert self._drafter is not None
        return self._drafter

    @property
    def params(self) -> dict[str, Any]:
        """The controller's thresholds plus ``verify_threshold`` and ``remask_cap``."""
        out: dict[str, Any] = {"threshold": self.drafter.threshold}
        if self.drafter.thresholds_scope:
            out["thresholds"] = self.drafter.thresholds_scope
        out.update(verify_threshold=self.verify_threshold, remask_cap=self.remask_cap)
        return out

    def with_threshold(self, threshold: float) -> VerifiedControllerPolicy:
        """The same verification around the controller at another threshold."""
        return dataclasses.replace(self, _drafter=self.drafter.with_threshold(threshold))

    def for_task(self, task: str) -> VerifiedControllerPolicy:
        """The same verification around the controller's deployment for ``task``.

        See :meth:`~commit_env.supervised.policy.ControllerPolicy.for_task`.
        """
        drafter = self.drafter.for_task(task)
        return self if drafter is self.drafter else dataclasses.replace(self, _drafter=drafter)

    def decode_options(self) -> dict[str, Any]:
        """Remasking on, and the controller's hidden-feature width."""
        return {**self.drafter.decode_options(), **super().decode_options()}

    def reset(self, state: TraceState) -> None:
        """Forget the previous decode's verification results."""
        super().reset(state)
        self.drafter.reset(state)

    def draft(self, state: TraceState) -> torch.Tensor:
        """The controller's commits (a bool mask over eligible positions)."""
        commit = self.drafter.select(state)
        return torch.as_tensor(commit, dtype=torch.bool) & state.eligible
