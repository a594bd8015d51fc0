"""Embedded mathematical reasoning: write a number as a sum of digits.

``easy``: "sum 2 digits to 12:" -> ``3+9`` (any two digits summing to 12). ``hard``: three digits.
The digits depend on each other through the sum: digits committed in parallel from different
decompositions give the wrong total, while a decoder that commits one digit at a time can compute
the last digit from the others.
"""

from __future__ import annotations

import itertools

import numpy as np

from commit_env.tasks.base import EmbeddedTask, Example

__all__ = ["DigitSum"]


def _decompositions(total: int, n_digits: int) -> list[tuple[int, ...]]:
    return [d for d in itertools.product(range(10), repeat=n_digits) if sum(d) == total]


class DigitSum(EmbeddedTask):
    """Write the target number as a sum of 2 (``easy``) or 3 (``hard``) decimal digits.

    Targets are drawn so that at least four decompositions exist. Score is 1.0 when the completion
    is ``d+d`` (``d+d+d``) of single digits whose sum is the target, else 0.0.
    """

    name = "math"
    default_gen_length = 16

    @property
    def n_digits(self) -> int:
        """How many digits the answer must add."""
        return 2 if self.difficulty == "easy" else 3

    @property
    def max_answer_length(self) -> int:
        """Characters of every valid answer (digits and plus signs)."""
        return 2 * self.n_digits - 1

    @property
    def targets(self) -> list[int]:
        """Targets with at least four decompositions."""
        top = 9 * self.n_digits
        return [t for t in range(top + 1) if len(_decompositions(t, self.n_digits)) >= 4]

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw a target uniformly; see :class:`~commit_env.tasks.base.Task`."""
        targets = self.targets
        total = targets[int(rng.integers(len(targets)))]
        reference = "+".join(str(d) for d in _decompositions(total, self.n_digits)[0])
        return Example(
            prompt=f"sum {self.n_digits} digits to {total}:",
            reference=reference,
            meta={"total": total},
        )

    def sample_answer(self, example: Example, rng: np.random.Generator) -> str:
        """Return a uniformly random decomposition of the target."""
        options = _decompositions(example.meta["total"], self.n_digits)
        return "+".join(str(d) for d in options[int(rng.integers(len(options)))])

    def score(self, example: Example, completion: str) -> float:
        """Return 1.0 for a correct digit decomposition of the target, else 0.0."""
        parts = completion.strip().split("+")
        if len(parts) != self.n_digits or not all(len(p) == 1 and p.isdigit() for p in parts):
            return 0.0
        return float(sum(int(p) for p in parts) == example.meta["total"])
