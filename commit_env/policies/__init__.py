"""Heuristic and oracle commitment policies, and the name -> policy registry.

Every policy implements :class:`CommitPolicy` (``select(state) -> [B, G] bool mask``). Build one
by name with :func:`make_policy`; :func:`list_policies` names them all. Revocable policies (WINO,
ReMDM) return a :class:`~commit_env.decoding.CommitDecision` with a ``remask`` mask and need
``remask_cap > 0``: run them with ``policy.decode_config(base)``. FreeDave returns a
:class:`~commit_env.decoding.DraftDecision` (K drafts verified in one batched forward).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from commit_env.policies.base import CommitPolicy, rank_within_eligible, top_k_mask
from commit_env.policies.entropy_bound import EntropyBoundPolicy
from commit_env.policies.freedave import FreeDavePolicy
from commit_env.policies.klass import KLASSPolicy
from commit_env.policies.oracle import OraclePolicy
from commit_env.policies.prophet import ProphetPolicy
from commit_env.policies.remask import ReMDMPolicy, WINOPolicy
from commit_env.policies.threshold import FactorPolicy, ThresholdPolicy
from commit_env.policies.topk import TopKPolicy, even_schedule_k

__all__ = [
    "POLICIES",
    "CommitPolicy",
    "EntropyBoundPolicy",
    "FactorPolicy",
    "FreeDavePolicy",
    "KLASSPolicy",
    "OraclePolicy",
    "ProphetPolicy",
    "ReMDMPolicy",
    "ThresholdPolicy",
    "TopKPolicy",
    "WINOPolicy",
    "even_schedule_k",
    "list_policies",
    "make_policy",
    "rank_within_eligible",
    "top_k_mask",
]

POLICIES: dict[str, type[CommitPolicy]] = {
    "topk": TopKPolicy,
    "threshold": ThresholdPolicy,
    "factor": FactorPolicy,
    "eb": EntropyBoundPolicy,
    "klass": KLASSPolicy,
    "prophet": ProphetPolicy,
    "oracle": OraclePolicy,
    "wino": WINOPolicy,
    "remdm": ReMDMPolicy,
    "freedave": FreeDavePolicy,
}


def list_policies() -> list[str]:
    """Return the registered policy names, sorted."""
    return sorted(POLICIES)


def make_policy(name: str, **params: Any) -> CommitPolicy:
    """Build a registered policy.

    Args:
        name: A name from :func:`list_policies`.
        **params: The policy's parameters (dataclass fields); string values from a command line
            are converted to the field's type.

    Returns:
        The policy.

    Raises:
        ValueError: On an unknown name or parameter (the message lists the valid ones) or a
            value the policy rejects.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; expected one of {list_policies()}")
    cls = POLICIES[name]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ValueError(f"policy {name!r} has no parameter(s) {unknown}; valid: {sorted(fields)}")
    converted = {k: _convert(k, v, fields[k].default) for k, v in params.items()}
    return cls(**converted)


def _convert(key: str, value: Any, default: Any) -> Any:
    """Convert a command-line string to the type of the field's default.

    Raises:
        ValueError: If a string cannot be read as the field's numeric type.
    """
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if value.lower() in ("none", "null"):
        return None
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes")
    if default is None:  # optional: the narrowest numeric type that parses, else the string
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                continue
        return value
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return kind(value)
            except ValueError:
                raise ValueError(
                    f"parameter {key!r} expects {kind.__name__}, got {value!r}"
                ) from None
    return value
