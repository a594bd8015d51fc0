"""Embedded question answering: name members of a category.

``easy``: "name a fruit:" -> one member (``fig``). ``hard``: "name two fruits:" -> two distinct
members joined by a comma (``fig,lime``). Every category has several members, so a model that
commits the letters of different members in parallel spells a word that is not in the category.
"""

from __future__ import annotations

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


class CategoryQA(EmbeddedTask):
    """Name one (``easy``) or two distinct (``hard``) members of a category.

    Score is 1.0 when the completion is exactly the requested number of distinct members of the
    category (comma-separated, surrounding whitespace ignored), else 0.0.
    """

    name = "qa"
    default_gen_length = 16

    @property
    def n_items(self) -> int:
        """How many members the answer must list."""
        return 1 if self.difficulty == "easy" else 2

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw a category uniformly; see :class:`~commit_env.tasks.base.Task`."""
        category = sorted(CATEGORIES)[int(rng.integers(len(CATEGORIES)))]
        prompt = f"name a {category}:" if self.n_items == 1 else f"name two {_PLURAL[category]}:"
        reference = ",".join(CATEGORIES[category][: self.n_items])
        return Example(prompt=prompt, reference=reference, meta={"category": category})

    def sample_answer(self, example: Example, rng: np.random.Generator) -> str:
        """Return distinct members drawn uniformly without replacement."""
        members = CATEGORIES[example.meta["category"]]
        picks = rng.choice(len(members), size=self.n_items, replace=False)
        return ",".join(members[int(i)] for i in picks)

    def score(self, example: Example, completion: str) -> float:
        """Return 1.0 for the right number of distinct category members, else 0.0."""
        words = _split_answer(completion)
        members = set(CATEGORIES[example.meta["category"]])
        ok = len(words) == self.n_items and len(set(words)) == len(words)
        return float(ok and all(w in members for w in words))
