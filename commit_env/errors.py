"""Exceptions raised to users of commit-env.

Bad input raises ``ValueError``/``TypeError`` (or a subclass below) at construction time; internal
invariants use ``assert``.
"""

from __future__ import annotations

__all__ = [
    "CommitEnvError",
    "DependencyNotInstalled",
    "BackboneUnavailable",
    "CorruptShardError",
    "UsageError",
    "InputNotFound",
    "CorruptCheckpointError",
    "RunDirError",
    "RunDirLocked",
    "ResumeMismatch",
    "DataUnavailable",
]


class CommitEnvError(Exception):
    """Base class of every exception defined by commit-env."""


class DependencyNotInstalled(CommitEnvError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


class BackboneUnavailable(CommitEnvError, ValueError):
    """A backbone spec cannot be loaded (unknown name, missing mask token, bad checkpoint)."""


class CorruptShardError(CommitEnvError, ValueError):
    """A trace shard on disk is truncated or unreadable; the message names the file."""


class UsageError(CommitEnvError, ValueError):
    """Bad user input (a value, a path, a combination of options); the CLI prints it in one line."""


class InputNotFound(UsageError, FileNotFoundError):
    """A file or directory the user named does not exist (the message names it)."""


class CorruptCheckpointError(UsageError):
    """A checkpoint file is unreadable or disagrees with its metadata (the message names it)."""


class RunDirError(UsageError):
    """An output directory cannot be used (a file, not writable, ...)."""


class RunDirLocked(RunDirError):
    """Another live process holds the output directory's lock (the message names its pid)."""


class ResumeMismatch(UsageError):
    """A resumed run asks for settings other than the ones its directory was written with."""


class DataUnavailable(UsageError):
    """A data set is neither on disk nor reachable (offline); the message says what to do."""
