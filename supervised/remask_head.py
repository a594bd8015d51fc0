"""A learned remask head: which of the controller's commits to take back.

:class:`LearnedRemaskPolicy` is the controller with revocable commits where the decision to take a
commit back is learned. The controller drafts, WINO's leave-one-out copies verify every committed
window token in the same batched forward (as in :class:`VerifiedControllerPolicy`), and instead of
WINO's fixed rule (``q < verify_threshold``) a small :class:`RemaskHead` predicts, per verified
token, the *change in the final score* that remasking it would bring. A token is remasked when the
predicted gain exceeds ``margin`` (highest gain first, at most ``accepted - 1`` per step, so a
step still gains a token).

The head reads :data:`VERIFY_FEATURES`: the leave-one-out statistics (the probability of the held
token with it masked, the top probability there), a structure cue (the same token committed
elsewhere in the row), the step's size and the canvas's progress. It is trained by
:mod:`commit_env.supervised.remask_train` on counterfactual rollouts: from each visited state,
the plain controller completes the decode once as is and once per candidate with that token
remasked; the label is the score difference.

Usage::

    from commit_env.supervised.remask_head import LearnedRemaskPolicy
    controller = ControllerPolicy.from_pretrained(ckpt, backbone=bb)
    policy = LearnedRemaskPolicy.from_pretrained(head_dir, controller)
    result = decode(bb, prompts, policy, policy.decode_config(setting.config()))
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from commit_env.supervised.policy import ControllerPolicy
from commit_env.supervised.verify import VerifiedControllerPolicy
from torch import nn

from commit_env.decoding.state import TraceState
from commit_env.errors import CorruptCheckpointError, InputNotFound
from commit_env.io import dumps_json, replace_dir_atomic

__all__ = [
    "VERIFY_FEATURES",
    "LearnedRemaskPolicy",
    "RemaskHead",
    "load_remask_head",
    "remask_candidates",
    "save_remask_head",
    "verify_features",
]

#: Per verified token features (last axis of :func:`verify_features`).
VERIFY_FEATURES: tuple[str, ...] = (
    "loo_prob",  # q: probability of the held token with it masked (leave-one-out)
    "loo_logit",  # log(q / (1 - q)) / 10, clamped to [-1, 1]
    "loo_top",  # top leave-one-out probability at the position
    "loo_agrees",  # the held token is the leave-one-out argmax
    "dup_committed",  # other committed positions of the row hold the same token (min(n, 4) / 4)
    "accepted_frac",  # tokens the verified step committed / G
    "masked_frac",  # masked positions of the row / G
    "is_eos",  # the held token is an end-of-answer token
    "rel_position",  # position / G
)
#: Files of a saved head.
HEAD_WEIGHTS, HEAD_CONFIG = "remask_head.safetensors", "remask_head.json"


def verify_features(
    state: TraceState,
    q: torch.Tensor,
    top: torch.Tensor,
    accepted: torch.Tensor,
    eos_ids: torch.Tensor,
) -> torch.Tensor:
    """float32 ``[B, G, F]`` features (:data:`VERIFY_FEATURES`) of every position.

    Args:
        state: The state after the verified step.
        q: ``[B, G]`` leave-one-out probability of the held token (NaN: not verified).
        top: ``[B, G]`` top leave-one-out probability (NaN: not verified).
        accepted: ``[B]`` tokens the verified step committed.
        eos_ids: int64 end-of-answer ids.

    Returns:
        The features; rows of unverified positions are finite but meaningless (mask them with
        :func:`remask_candidates`).
    """
    dev = state.canvas.device
    q = q.to(dev).nan_to_num(1.0).float()
    top = top.to(dev).nan_to_num(1.0).float()
    G = state.gen_length
    tokens = state.gen_tokens
    held = state.committed & state.valid
    same = (tokens[:, :, None] == tokens[:, None, :]) & held[:, :, None] & held[:, None, :]
    dup = (same.sum(-1) - 1).clamp(min=0, max=4).float() / 4  # [B, G] minus itself
    gen_len = state.gen_len.to(dev).float().clamp(min=1)[:, None]
    logit = (q.clamp(1e-6, 1 - 1e-6).logit() / 10).clamp(-1, 1)
    masked = (state.masked & state.valid).sum(-1, keepdim=True).float() / gen_len
    cols = [
        q,
        logit,
        top,
        (q >= top - 1e-6).float(),
        dup,
        (accepted.to(dev).float()[:, None] / gen_len).expand(-1, G),
        masked.expand(-1, G),
        torch.isin(tokens, eos_ids.to(dev)).float(),
        torch.arange(G, device=dev).float()[None, :].expand(state.batch_size, G) / gen_len,
    ]
    return torch.stack(cols, -1)


def remask_candidates(
    q: torch.Tensor, remaskable: torch.Tensor, accepted: torch.Tensor, candidate_q: float
) -> torch.Tensor:
    """Bool ``[B, G]``: the tokens a remask head may take back.

    Verified, remaskable tokens with ``q < candidate_q`` in rows whose step accepted more than one
    token (only those may be remasked: WINO's progress rule).
    """
    dev = remaskable.device
    q = q.to(dev)
    return remaskable & torch.isfinite(q) & (q < candidate_q) & (accepted.to(dev) > 1)[:, None]


class RemaskHead(nn.Module):
    """MLP from :data:`VERIFY_FEATURES` to the predicted score gain of a remask, in ``[-1, 1]``.

    Args:
        hidden: Hidden width.
    """

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.hidden = hidden
        self.net = nn.Sequential(
            nn.Linear(len(VERIFY_FEATURES), hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[..., F]`` features -> ``[...]`` predicted gain."""
        return torch.tanh(self.net(features).squeeze(-1))


def save_remask_head(head: RemaskHead, directory: str | Path, meta: dict[str, Any]) -> None:
    """Write the head (safetensors) and ``remask_head.json`` into ``directory`` atomically."""
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        save_file(state, str(tmp / HEAD_WEIGHTS))
        config = {"hidden": head.hidden, "features": list(VERIFY_FEATURES), **meta}
        (tmp / HEAD_CONFIG).write_text(dumps_json(config, indent=2, sort_keys=True))

    replace_dir_atomic(directory, fill)


def load_remask_head(directory: str | Path) -> tuple[RemaskHead, dict[str, Any]]:
    """Load a head saved by :func:`save_remask_head` (safetensors, no pickle).

    Raises:
        InputNotFound: If a file is missing.
        CorruptCheckpointError: If the files are unreadable or were written for other features.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (HEAD_CONFIG, HEAD_WEIGHTS):
        if not (directory / name).is_file():
            raise InputNotFound(f"{directory / name} not found: not a remask head directory")
    try:
        meta = json.loads((directory / HEAD_CONFIG).read_text())
        head = RemaskHead(int(meta["hidden"]))
        if tuple(meta["features"]) != VERIFY_FEATURES:
            raise CorruptCheckpointError(
                f"{directory}: head features {meta['features']} differ from this version's "
                f"{list(VERIFY_FEATURES)}; retrain the head"
            )
        head.load_state_dict(load_file(str(directory / HEAD_WEIGHTS)))
    except (SafetensorError, KeyError, ValueError, RuntimeError) as err:
        raise CorruptCheckpointError(f"{directory}: unreadable remask head ({err})") from err
    return head.eval(), meta


@dataclass
class LearnedRemaskPolicy(VerifiedControllerPolicy):
    """The controller with a learned remask head (see the module docstring).

    Build with :meth:`wrap_head` or :meth:`from_pretrained`.

    Args:
        margin: Remask a verified token when its predicted score gain exceeds this.
        candidate_q: Only tokens whose leave-one-out probability is below this are considered
            (the head is trained on the same candidates).
    """

    name: ClassVar[str] = "controller-remask"
    margin: float = 0.05
    candidate_q: float = 0.99
    _head: RemaskHead | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._head is None or self._drafter is None:
            raise ValueError("use LearnedRemaskPolicy.wrap_head(controller, head)")
        super().__post_init__()
        if not -1.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be in [-1, 1), got {self.margin}")
        if not 0.0 < self.candidate_q <= 1.0:
            raise ValueError(f"candidate_q must be in (0, 1], got {self.candidate_q}")
        ids = [int(i) for i in self.drafter.meta.get("eos_token_ids", ())] or [-1]
        self._eos_ids = torch.tensor(ids)

    @classmethod
    def wrap_head(
        cls,
        drafter: ControllerPolicy,
        head: RemaskHead,
        *,
        margin: float = 0.05,
        candidate_q: float = 0.99,
        remask_cap: int = 8,
    ) -> LearnedRemaskPolicy:
        """``drafter`` drafts; ``head`` decides which verified commits to take back."""
        return cls(
            remask_cap=remask_cap,
            margin=margin,
            candidate_q=candidate_q,
            _drafter=drafter,
            _head=head,
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, drafter: ControllerPolicy, *, margin: float | None = None
    ) -> LearnedRemaskPolicy:
        """Load a head trained for ``drafter``'s backbone (``margin``: default the head's).

        Raises:
            ValueError: If the head was trained on another backbone than the controller's.
        """
        head, meta = load_remask_head(directory)
        mine, theirs = drafter.meta.get("backbone"), meta.get("backbone")
        if mine and theirs and mine != theirs:
            raise ValueError(
                f"remask head {directory} was trained on backbone {theirs!r}, "
                f"the controller reads {mine!r}"
            )
        return cls.wrap_head(
            drafter,
            head,
            margin=float(meta.get("margin", 0.05)) if margin is None else margin,
            candidate_q=float(meta.get("candidate_q", 0.99)),
        )

    @property
    def head(self) -> RemaskHead:
        """The remask head."""
        assert self._head is not None
        return self._head

    @property
    def params(self) -> dict[str, Any]:
        """The controller's thresholds plus ``margin`` (the remask head's bar)."""
        out: dict[str, Any] = {"threshold": self.drafter.threshold}
        if self.drafter.thresholds_scope:
            out["thresholds"] = self.drafter.thresholds_scope
        out.update(margin=self.margin)
        return out

    def with_margin(self, margin: float) -> LearnedRemaskPolicy:
        """The same head and controller at another remask margin."""
        return dataclasses.replace(self, margin=margin)

    @torch.no_grad()
    def predicted_gain(self, state: TraceState) -> torch.Tensor:
        """Float ``[B, G]``: the head's predicted score gain of remasking each verified token."""
        assert self._last_accept is not None and self.verify_top is not None
        feats = verify_features(
            state, self.verify_probs, self.verify_top, self._last_accept, self._eos_ids
        )
        param = next(self.head.parameters())
        return self.head(feats.to(param.device)).to(state.canvas.device)

    def failed_verification(
        self, state: TraceState, remaskable: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates whose predicted gain exceeds ``margin``; highest gain first."""
        assert self._last_accept is not None
        cand = remask_candidates(self.verify_probs, remaskable, self._last_accept, self.candidate_q)
        gain = self.predicted_gain(state)
        return cand & (gain > self.margin), gain
