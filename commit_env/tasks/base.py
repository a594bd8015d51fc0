"""The task protocol: prompts plus a verifiable scorer.

A task draws :class:`Example` records from a seeded ``numpy.random.Generator`` and scores a
completion string with its own verifier, returning a float in ``[0, 1]``. Scoring never trusts the
completion: code tasks execute it in a sandboxed subprocess (:mod:`commit_env.tasks.sandbox`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Example", "Task", "EmbeddedTask"]


@dataclass(frozen=True)
class Example:
    """One task instance.

    Attributes:
        prompt: Text given to the model before the generation canvas.
        reference: One correct completion (tasks with several valid answers pick one).
        meta: Task-specific data the scorer needs (for example the set of valid answers).
    """

    prompt: str
    reference: str
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """What every task provides.

    Attributes:
        name: Registry name of the task family.
        default_gen_length: Generation length that fits every reference completion.
    """

    name: str
    default_gen_length: int

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one example using only ``rng`` for randomness."""
        ...

    def score(self, example: Example, completion: str) -> float:
        """Return the verifier's score of ``completion`` for ``example``, a float in ``[0, 1]``."""
        ...


class EmbeddedTask:
    """Shared behaviour of the embedded synthetic task families.

    Embedded families have many valid answers per prompt, so committing tokens of different answers
    in parallel produces an invalid one: that is what makes commitment matter on them.
    Subclasses implement :meth:`sample` and :meth:`score`, and :meth:`sample_answer` (a uniformly
    random valid answer, used to build the backbone's training corpus).

    Args:
        difficulty: One of the family's ``levels``.

    Raises:
        ValueError: If ``difficulty`` is not one of the family's levels.
    """

    name: str = ""
    levels: tuple[str, ...] = ("easy", "hard")
    default_difficulty: str = "easy"
    default_gen_length: int = 16

    def __init__(self, difficulty: str | None = None) -> None:
        difficulty = self.default_difficulty if difficulty is None else difficulty
        if difficulty not in self.levels:
            raise ValueError(
                f"unknown difficulty {difficulty!r} for task {self.name!r}; "
                f"expected one of {list(self.levels)}"
            )
        self.difficulty = difficulty

    def __repr__(self) -> str:
        return f"{type(self).__name__}(difficulty={self.difficulty!r})"

    max_answer_length: int | None = None
    """Characters (= tokens of the embedded backbone) of the longest valid answer, if known."""

    @property
    def is_multi_answer(self) -> bool:
        """Whether a prompt of this family/level has more than one valid answer."""
        return True

    def check_gen_length(self, gen_length: int) -> None:
        """Raise if a generation canvas of ``gen_length`` cannot hold the family's longest answer.

        Args:
            gen_length: G, positions of the generation canvas.

        Raises:
            ValueError: If ``gen_length`` is shorter than :attr:`max_answer_length`.
        """
        need = self.max_answer_length
        if need is not None and gen_length < need:
            raise ValueError(
                f"gen_length {gen_length} is too short for task {self.name!r} "
                f"(level {self.difficulty!r}): its longest answer has {need} tokens; "
                f"use gen_length >= {need} (default {self.default_gen_length})"
            )

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one example; see :class:`Task`."""
        raise NotImplementedError

    def score(self, example: Example, completion: str) -> float:
        """Score a completion; see :class:`Task`."""
        raise NotImplementedError

    def sample_answer(self, example: Example, rng: np.random.Generator) -> str:
        """Return a uniformly random valid answer to ``example``."""
        raise NotImplementedError

    def answer_set(self, example: Example) -> list[str] | None:
        """Every valid answer to ``example`` as text, or ``None`` where the set is not enumerated.

        The controller's nearest-answer labels
        (:class:`~commit_env.supervised.collect.CollectConfig`'s ``labels="nearest"``) read it;
        families whose answer sets are too large to list (``shuffle``: k! - 1) return ``None``.
        """
        return None

    def answer_permutation(self, example: Example) -> tuple[str, list[str]] | None:
        """``(text, items)`` for a permutation family, else ``None``.

        ``text`` is the one answer that is *not* valid (the prompt's order) and ``items`` its items
        in that order: every other order of the items, written like ``text``, is valid. The
        nearest-answer labels use it where :meth:`answer_set` would be too large to list.
        """
        return None
