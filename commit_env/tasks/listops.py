"""Embedded list operations on single-character items (ParallelBench's ``waiting_line`` family).

A list is ``k`` distinct lowercase letters joined by commas (``c,a,f,b``); ``k`` counts the items
of the *answer* (4 to 12 by default), so every family's answer is 7 to 23 characters and fits the
default generation length of 24. Families and their prompts:

========================  ==================================  ===================================
name                      prompt                              valid answers
========================  ==================================  ===================================
``copy``                  ``copy c,a,f,b:``                   the list itself
``reverse``               ``reverse c,a,f,b:``                the list reversed
``sort``                  ``sort c,a,f,b:``                   the list in alphabetical order
``shuffle``               ``shuffle c,a,f,b:``                any permutation that differs from it
``insert:index``          ``insert x at 2 in c,a,f:``         ``x`` inserted so it has index 2
``insert:any``            ``insert x in c,a,f:``              ``x`` inserted at any index
``remove:index``          ``remove 2 from c,a,f,b,e:``        the item at index 2 removed
``remove:any``            ``remove one from c,a,f,b,e:``      any one item removed
``replace:index``         ``replace 2 with x in c,a,f,b:``    the item at index 2 replaced by x
``replace:any``           ``replace one with x in c,a,f,b:``  any one item replaced by x
========================  ==================================  ===================================

Indices are 0-based. The single-answer families (``copy``, ``reverse``, ``sort`` and the
``index`` levels) make tokens depend on the prompt; the multi-answer ones (``shuffle`` and the
``any`` levels) make tokens depend on each other, so committing tokens of different valid answers
in the same step produces an invalid list.
"""

from __future__ import annotations

import string
from typing import Any, ClassVar

import numpy as np

from commit_env.tasks.base import EmbeddedTask, Example

__all__ = [
    "ITEM_ALPHABET",
    "ListTask",
    "CopyList",
    "ReverseList",
    "SortList",
    "ShuffleList",
    "InsertItem",
    "RemoveItem",
    "ReplaceItem",
    "parse_list",
]

ITEM_ALPHABET: str = string.ascii_lowercase
"""Characters list items are drawn from (distinct within a list)."""

MIN_ITEMS, MAX_ITEMS = 4, 12


def parse_list(completion: str) -> list[str] | None:
    """Split a completion into single-character items, or ``None`` if it is not such a list.

    Surrounding whitespace of the completion and of each item is ignored.
    """
    if not isinstance(completion, str):
        return None
    items = [part.strip() for part in completion.strip().split(",")]
    if not items or any(len(item) != 1 for item in items):
        return None
    return items


def _join(items: list[str] | tuple[str, ...]) -> str:
    return ",".join(items)


class ListTask(EmbeddedTask):
    """Shared behaviour of the list families.

    Args:
        difficulty: One of ``levels`` (``index`` or ``any`` for insert/remove/replace).
        min_items: Fewest items in the answer (>= 4).
        max_items: Most items in the answer (<= 12).

    Raises:
        ValueError: On an unknown level or an item range outside 4..12.
    """

    levels: tuple[str, ...] = ("default",)
    default_difficulty: str = "default"
    default_gen_length: int = 24
    multi_answer: ClassVar[bool] = False

    def __init__(
        self,
        difficulty: str | None = None,
        *,
        min_items: int = MIN_ITEMS,
        max_items: int = MAX_ITEMS,
    ) -> None:
        super().__init__(difficulty)
        if not MIN_ITEMS <= min_items <= max_items <= MAX_ITEMS:
            raise ValueError(
                f"item range {min_items}..{max_items} is invalid for task {self.name!r}; "
                f"need {MIN_ITEMS} <= min_items <= max_items <= {MAX_ITEMS}"
            )
        self.min_items, self.max_items = int(min_items), int(max_items)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(difficulty={self.difficulty!r}, "
            f"min_items={self.min_items}, max_items={self.max_items})"
        )

    @property
    def max_answer_length(self) -> int:
        """Characters of the longest valid answer."""
        return 2 * self.max_items - 1

    @property
    def is_multi_answer(self) -> bool:
        """Whether a prompt has more than one valid answer."""
        return self.multi_answer

    def _draw(self, rng: np.random.Generator, n: int) -> list[str]:
        picks = rng.choice(len(ITEM_ALPHABET), size=n, replace=False)
        return [ITEM_ALPHABET[int(i)] for i in picks]

    def _k(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.min_items, self.max_items + 1))

    # Subclasses: build (prompt, meta) and the valid answers.
    def _make(self, rng: np.random.Generator, k: int) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def valid_answers(self, example: Example) -> list[list[str]]:
        """Every valid answer (as item lists) of ``example``, reference first."""
        raise NotImplementedError

    def answer_set(self, example: Example) -> list[str] | None:
        """Every valid answer as text (see :meth:`EmbeddedTask.answer_set`)."""
        return [_join(items) for items in self.valid_answers(example)]

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one example; see :class:`~commit_env.tasks.base.Task`."""
        prompt, meta = self._make(rng, self._k(rng))
        example = Example(prompt=prompt, reference="", meta=meta)
        return Example(prompt, _join(self.valid_answers(example)[0]), meta)

    def sample_answer(self, example: Example, rng: np.random.Generator) -> str:
        """Return a uniformly random valid answer."""
        answers = self.valid_answers(example)
        return _join(answers[int(rng.integers(len(answers)))])

    def score(self, example: Example, completion: str) -> float:
        """Return 1.0 when the completion is one of the valid lists, else 0.0 (never raises)."""
        items = parse_list(completion)
        if items is None:
            return 0.0
        return float(any(items == answer for answer in self.valid_answers(example)))


class _Unary(ListTask):
    """Families whose prompt is ``<verb> <list>:``."""

    verb: ClassVar[str] = ""

    def _make(self, rng: np.random.Generator, k: int) -> tuple[str, dict[str, Any]]:
        items = self._draw(rng, k)
        return f"{self.verb} {_join(items)}:", {"items": items}


class CopyList(_Unary):
    """Repeat the list."""

    name = "copy"
    verb = "copy"

    def valid_answers(self, example: Example) -> list[list[str]]:
        """The list itself."""
        return [list(example.meta["items"])]


class ReverseList(_Unary):
    """Write the list backwards."""

    name = "reverse"
    verb = "reverse"

    def valid_answers(self, example: Example) -> list[list[str]]:
        """The reversed list."""
        return [list(reversed(example.meta["items"]))]


class SortList(_Unary):
    """Write the items in alphabetical order."""

    name = "sort"
    verb = "sort"

    def valid_answers(self, example: Example) -> list[list[str]]:
        """The sorted list."""
        return [sorted(example.meta["items"])]


class ShuffleList(_Unary):
    """Write any permutation of the items that differs from the input order.

    The verifier checks the multiset and the difference; it never enumerates permutations.
    """

    name = "shuffle"
    verb = "shuffle"
    multi_answer = True

    def valid_answers(self, example: Example) -> list[list[str]]:
        """The reference only (the answer set has k! - 1 members; see :meth:`score`)."""
        items = list(example.meta["items"])
        return [items[1:] + items[:1]]

    def answer_set(self, example: Example) -> list[str] | None:
        """Not enumerated: k! - 1 permutations."""
        return None

    def answer_permutation(self, example: Example) -> tuple[str, list[str]] | None:
        """The prompt's order (the one permutation that is not an answer) and its items."""
        items = list(example.meta["items"])
        return _join(items), items

    def sample_answer(self, example: Example, rng: np.random.Generator) -> str:
        """A uniformly random permutation different from the input."""
        items = list(example.meta["items"])
        while True:
            perm = [items[int(i)] for i in rng.permutation(len(items))]
            if perm != items:
                return _join(perm)

    def score(self, example: Example, completion: str) -> float:
        """1.0 for a permutation of the items that differs from the input, else 0.0."""
        items = parse_list(completion)
        given = list(example.meta["items"])
        if items is None:
            return 0.0
        return float(sorted(items) == sorted(given) and items != given)


class _Edit(ListTask):
    """insert/remove/replace at a given index (``index``) or anywhere (``any``)."""

    levels = ("index", "any")
    default_difficulty = "index"

    @property
    def is_multi_answer(self) -> bool:
        """The ``any`` level has several valid answers."""
        return self.difficulty == "any"


class InsertItem(_Edit):
    """Insert a new item (at a given index, or anywhere); the answer has ``k`` items."""

    name = "insert"

    def _make(self, rng: np.random.Generator, k: int) -> tuple[str, dict[str, Any]]:
        *items, new = self._draw(rng, k)
        if self.difficulty == "index":
            index = int(rng.integers(0, k))
            prompt = f"insert {new} at {index} in {_join(items)}:"
        else:
            index = None
            prompt = f"insert {new} in {_join(items)}:"
        return prompt, {"items": items, "item": new, "index": index}

    def valid_answers(self, example: Example) -> list[list[str]]:
        """The list with the item inserted at the index (or at every index)."""
        items, new, index = example.meta["items"], example.meta["item"], example.meta["index"]
        spots = [index] if index is not None else range(len(items) + 1)
        return [list(items[:i]) + [new] + list(items[i:]) for i in spots]


class RemoveItem(_Edit):
    """Remove one item (at a given index, or any); the answer has ``k`` items."""

    name = "remove"

    def _make(self, rng: np.random.Generator, k: int) -> tuple[str, dict[str, Any]]:
        items = self._draw(rng, k + 1)
        if self.difficulty == "index":
            index = int(rng.integers(0, k + 1))
            prompt = f"remove {index} from {_join(items)}:"
        else:
            index = None
            prompt = f"remove one from {_join(items)}:"
        return prompt, {"items": items, "index": index}

    def valid_answers(self, example: Example) -> list[list[str]]:
        """The list without the item at the index (or without any one item)."""
        items, index = example.meta["items"], example.meta["index"]
        spots = [index] if index is not None else range(len(items))
        return [list(items[:i]) + list(items[i + 1 :]) for i in spots]


class ReplaceItem(_Edit):
    """Replace one item by a new one (at a given index, or any); the answer has ``k`` items."""

    name = "replace"

    def _make(self, rng: np.random.Generator, k: int) -> tuple[str, dict[str, Any]]:
        *items, new = self._draw(rng, k + 1)
        if self.difficulty == "index":
            index = int(rng.integers(0, k))
            prompt = f"replace {index} with {new} in {_join(items)}:"
        else:
            index = None
            prompt = f"replace one with {new} in {_join(items)}:"
        return prompt, {"items": items, "item": new, "index": index}

    def valid_answers(self, example: Example) -> list[list[str]]:
        """The list with the item at the index (or any one item) replaced."""
        items, new, index = example.meta["items"], example.meta["item"], example.meta["index"]
        spots = [index] if index is not None else range(len(items))
        return [list(items[:i]) + [new] + list(items[i + 1 :]) for i in spots]
