"""Exceptions raised to users of commit-env.

Bad input raises ``ValueError``/``TypeError`` (or a subclass below) at construction time; internal
invariants use ``assert``.
"""

from __future__ import annotations

__all__ = ["CommitEnvError", "DependencyNotInstalled", "BackboneUnavailable", "CorruptShardError"]


class CommitEnvError(Exception):
    """Base class of every exception defined by commit-env."""


class DependencyNotInstalled(CommitEnvError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


class BackboneUnavailable(CommitEnvError, ValueError):
    """A backbone spec cannot be loaded (unknown name, missing mask token, bad checkpoint)."""


class CorruptShardError(CommitEnvError, ValueError):
    """A trace shard on disk is truncated or unreadable; the message names the file."""
