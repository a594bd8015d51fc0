"""Fixtures of the policy tests: a factory of hand-built trace states, and the fake backbone."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# The fake backbone lives with the decoding tests; share it instead of copying it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "decoding"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_states import build_state  # noqa: E402

from commit_env.decoding import TraceState  # noqa: E402


@pytest.fixture
def make_state() -> Callable[..., TraceState]:
    """The :func:`policy_states.build_state` factory."""
    return build_state
