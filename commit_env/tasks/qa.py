"""Embedded question answering: name members of a category.

``easy``: "name a fruit:" -> one member (``fig``). ``hard``: "name two fruits:" -> two distinct
members joined by a comma (``fig,lime``). ``list``: "name 4 fruits:" -> k distinct members in any
order (k from 3 to 5, default generation length 32). Every category has several members, so a
model that commits the letters of different members in parallel spells a word that is not in the
category.
"""

from __future__ import annotations

import itertools

import numpy as np

from commit_env.tasks.base import EmbeddedTask, Example

__all__ = ["CategoryQA", "CATEGORIES"]

# Category -> members. Words are at most 6 letters so two of them fit in 13 characters.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": (
        "apple",
        "banana",
        "cherry",
        "fig",
        "grape",
        "lemon",
        "lime",
        "mango",
        "pear",
        "plum",
    ),
    "animal": ("cat", "dog", "horse", "lion", "mouse", "tiger", "wolf", "zebra", "bear", "fox"),
    "color": ("red", "blue", "green", "black", "white", "pink", "brown", "gray"),
    "metal": ("iron", "gold", "silver", "copper", "tin", "zinc", "lead"),
    "tool": ("hammer", "saw", "drill", "wrench", "axe", "file", "chisel"),
    "planet": ("mars", "venus", "earth", "saturn", "pluto"),
}
_PLURAL = {c: c + "s" for c in CATEGORIES}


def _split_answer(completion: str) -> list[str]:
    return [w.strip() for w in completion.strip().split(",")]


LIST_MIN_ITEMS, LIST_MAX_ITEMS = 3, 5


class CategoryQA(EmbeddedTask):
    """Name one (``easy``), two (``hard``) or k (``list``) distinct members of a category.

    Score is 1.0 when the completion is exactly the requested number of distinct members of the
    category (comma-separated, any order, surrounding whitespace ignored), else 0.0.

    Args:
        difficulty: ``easy``, ``hard`` or ``list``.
        min_items: Fewest members asked for at the ``list`` level (>= 3).
        max_items: Most members asked for at the ``list`` level (<= 5).

    Raises:
        ValueError: On an unknown level or an item range outside 3..5.
    """

    name = "qa"
    levels = ("easy", "hard", "list")
    default_gen_length = 16

    def __init__(
        self,
        difficulty: str | None = None,
        *,
        min_items: int = LIST_MIN_ITEMS,
        max_items: int = LIST_MAX_ITEMS,
    ) -> None:
        super().__init__(difficulty)
        if not LIST_MIN_ITEMS <= min_items <= max_items <= LIST_MAX_ITEMS:
            raise ValueError(
                f"item range {min_items}..{max_items} is invalid for task 'qa'; "
                f"need {LIST_MIN_ITEMS} <= min_items <= max_items <= {LIST_MAX_ITEMS}"
            )
        self.min_items, self.max_items = int(min_items), int(max_items)
        if self.difficulty == "list":
            self.default_gen_length = 32

    @property
    def n_items(self) -> int:
        """How many members the answer must list (the most, at the ``list`` level)."""
        return {"easy": 1, "hard": 2}.get(self.difficulty, self.max_items)

    @property
    def max_answer_length(self) -> int:
        """Characters of the longest valid answer."""
        longest = max(
            sum(sorted(map(len, members), reverse=True)[: self.n_items])
            for members in CATEGORIES.values()
        )
        return longest + self.n_items - 1

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw a category uniformly; see :class:`~commit_env.tasks.base.Task`."""
        category = sorted(CATEGORIES)[int(rng.integers(len(CATEGORIES)))]
        if self.difficulty == "list":
            k = int(rng.integers(self.min_items, self.max_items + 1))
            prompt = f"name {k} {_PLURAL[category]}:"
        else:
            k = self.n_items
            prompt = f"name a {category}:" if k == 1 else f"name two {_PLURAL[category]}:"
        reference = ",".join(CATEGORIES[category][:k])
        return Example(prompt=prompt, reference=reference, meta={"category": category, "k": k})

    def sample_answer(self, example: Example, rng: np.random.Generator) -> str:
        """Return distinct members drawn uniformly without replacement, in random order."""
        members = CATEGORIES[example.meta["category"]]
        k = int(example.meta.get("k", self.n_items))
        picks = rng.choice(len(members), size=k, replace=False)
        return ",".join(members[int(i)] for i in picks)

    def answer_set(self, example: Example) -> list[str] | None:
        """Every ordered choice of k distinct members (at most 10 * 9 * 8 * 7 * 6 = 30240)."""
        members = CATEGORIES[example.meta["category"]]
        k = int(example.meta.get("k", self.n_items))
        return [",".join(words) for words in itertools.permutations(members, k)]

    def score(self, example: Example, completion: str) -> float:
        """Return 1.0 for the right number of distinct category members, else 0.0."""
        if not isinstance(completion, str):
            return 0.0
        words = _split_answer(completion)
        members = set(CATEGORIES[example.meta["category"]])
        k = int(example.meta.get("k", self.n_items))
        ok = len(words) == k and len(set(words)) == len(words)
        return float(ok and all(w in members for w in words))
