"""Run directories with an owner and a key.

Every command that writes an output directory (``bench``, ``collect``, ``train-controller``,
``train-ppo``, ``sweep --json-out``) goes through this module:

* :func:`prepare_out_dir` turns "``--out`` is a file", "cannot create" and "not writable" into one
  :class:`~commit_env.errors.RunDirError` line naming the path.
* :class:`RunLock` owns the directory for the lifetime of a run: an exclusive ``flock`` on
  ``DIR/.lock``, which holds the owner's pid. A second writer gets
  :class:`~commit_env.errors.RunDirLocked` naming that pid. The kernel drops the lock when its
  holder dies, so a stale lock file (dead pid) is simply taken over; the lock is re-entrant within
  one process. On acquiring it, the leftovers of a killed writer are swept (see
  :func:`sweep_partial`): half-written ``.NAME.*.tmp`` files and directories are deleted, and a
  directory replaced mid-way (only ``.NAME.old`` left) is restored.
* :func:`check_run_key` stores ``DIR/run_key.json``: every setting that changes a result. A resumed
  run that asks for other settings is refused with a line listing the differences (or, with
  ``force``, the key is replaced and the caller discards the old results).
* :func:`file_lock` is the short blocking lock :func:`commit_env.evaluation.io.append_jsonl_atomic`
  takes around its read-modify-write, so two appending processes never lose a record.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from commit_env.errors import ResumeMismatch, RunDirError, RunDirLocked

__all__ = [
    "LOCK_FILE",
    "RUN_KEY_FILE",
    "RunLock",
    "check_run_key",
    "file_lock",
    "prepare_out_dir",
    "sweep_partial",
]

LOCK_FILE = ".lock"
RUN_KEY_FILE = "run_key.json"

_held: dict[str, tuple[int, int]] = {}  # realpath -> (fd, depth) of locks this process holds
_held_guard = threading.Lock()


def prepare_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create an output directory (with parents) or fail with one line naming it.

    Args:
        path: The directory.
        flag: The option that named it (used in messages).

    Returns:
        The directory as a :class:`~pathlib.Path`.

    Raises:
        RunDirError: If ``path`` (or a parent) is a file, or it cannot be created or written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(
            f"{flag} {path} is a file; expected a directory (new or a previous run's)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(f"{flag} {path}: a parent is a file; expected a directory path") from None
    except OSError as err:
        raise RunDirError(f"{flag} {path} cannot be created: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunDirError(f"{flag} {path} is not writable by this user")
    return path


def _read_owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 256).decode("utf-8", "replace").strip()
        return text.split()[0] if text else "unknown"
    except OSError:
        return "unknown"


class RunLock:
    """Exclusive ownership of an output directory (a context manager).

    Args:
        directory: The output directory (created, via :func:`prepare_out_dir`).
        flag: The option that named it (used in messages).
        sweep: Sweep a killed writer's leftovers after acquiring (see :func:`sweep_partial`).

    Raises:
        RunDirLocked: If another live process holds the directory (the message names its pid).
        RunDirError: If the directory cannot be created or written.
    """

    def __init__(self, directory: str | Path, flag: str = "--out", *, sweep: bool = True) -> None:
        self.directory = Path(directory)
        self.flag = flag
        self.sweep = sweep
        self._key: str | None = None

    def acquire(self) -> RunLock:
        """Take the lock (re-entrant within this process); see the class docstring."""
        directory = prepare_out_dir(self.directory, self.flag)
        key = os.path.realpath(directory)
        with _held_guard:
            if key in _held:
                fd, depth = _held[key]
                _held[key] = (fd, depth + 1)
                self._key = key
                return self
            lock_path = directory / LOCK_FILE
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as err:
                raise RunDirError(
                    f"{self.flag} {directory}: cannot create {lock_path}: {err.strerror or err}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                owner = _read_owner(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirLocked(
                        f"{self.flag} {directory} is in use by process {owner} (lock file "
                        f"{lock_path}); wait for it to finish or choose another directory"
                    ) from None
                raise
            # the previous owner (if any) is dead: its pid is overwritten by ours
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
            _held[key] = (fd, 1)
            self._key = key
        if self.sweep:
            sweep_partial(directory)
        return self

    def release(self) -> None:
        """Drop the lock (the outermost release of this process frees it)."""
        if self._key is None:
            return
        with _held_guard:
            fd, depth = _held[self._key]
            if depth > 1:
                _held[self._key] = (fd, depth - 1)
            else:
                del _held[self._key]
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        self._key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def sweep_partial(directory: str | Path) -> int:
    """Remove a killed writer's leftovers under ``directory`` (call only while holding its lock).

    Deletes temporary files and directories named ``.NAME.*.tmp`` (written by
    :func:`commit_env.io.atomic_write` and :func:`commit_env.io.replace_dir_atomic`) and
    restores ``NAME`` from ``.NAME.old`` when a directory replacement was cut between its two
    renames (a stale ``.NAME.old`` next to ``NAME`` is deleted).

    Args:
        directory: The run directory.

    Returns:
        How many leftovers were removed or restored.
    """
    count = 0
    for path in sorted(Path(directory).rglob(".*"), key=lambda p: len(p.parts), reverse=True):
        name = path.name
        try:
            if name.endswith(".tmp") and name.count(".") >= 3:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                count += 1
            elif name.endswith(".old") and path.is_dir() and name.count(".") >= 2:
                target = path.with_name(name[1 : -len(".old")])
                if target.exists():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.replace(path, target)
                count += 1
        except OSError:
            continue
    return count


def _fmt(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def check_run_key(
    directory: str | Path,
    key: Mapping[str, Any],
    *,
    force: bool = False,
    what: str = "run",
    hint: str = "use another --out, or --force to discard its results",
) -> bool:
    """Record or compare ``DIR/run_key.json``: every setting that changes a result.

    Args:
        directory: The run directory (hold its :class:`RunLock`).
        key: The settings of this run (JSON-serialisable; compared after a JSON round trip).
        force: Replace a different stored key instead of refusing.
        what: What the directory holds (used in the message).
        hint: What the user can do (the end of the message).

    Returns:
        True if the directory already held results with this key (resume), False if it is new
        or its key was replaced (``force``): the caller must then discard old results.

    Raises:
        ResumeMismatch: If the stored key differs and ``force`` is false (one line listing every
            differing setting, old -> new).
    """
    from commit_env.io import json_safe, write_json_atomic

    path = Path(directory) / RUN_KEY_FILE
    new = json.loads(json.dumps(json_safe(dict(key)), sort_keys=True, default=str))
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old == new:
            return True
        if not force:
            if not isinstance(old, dict):
                diffs = f"{path} is unreadable"
            else:
                names = sorted(set(old) | set(new))
                diffs = ", ".join(
                    f"{k}: {_fmt(old.get(k))} -> {_fmt(new.get(k))}"
                    for k in names
                    if old.get(k) != new.get(k)
                )
            raise ResumeMismatch(
                f"{directory} holds a {what} with other settings ({diffs}); {hint}"
            )
    write_json_atomic(path, new)
    return False


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold a blocking exclusive ``flock`` on ``path`` (created) for the ``with`` block.

    Args:
        path: The lock file (a sidecar, never the data file: atomic writes replace that).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
