"""Embedded 4x4 puzzles (ParallelBench's ``puzzle`` family): Latin squares and sudoku.

Grids are written row by row, rows separated by ``;`` (19 characters, default generation
length 24).

- ``latin``: "latin b,k,3,q:" -> any 4x4 Latin square over the four given symbols
  (``bk3q;3qbk;k3qb;qbk3``; 576 valid squares per prompt).
- ``sudoku``: "sudoku 1_34;3_12;_1_3;4_21:" -> the full grid with every blank (``_``) filled so
  that rows, columns and 2x2 boxes each hold 1-4 once. 4 to 10 blanks; the verifier checks the
  grid's constraints and the givens, never a stored solution, so a puzzle with several solutions
  accepts all of them.
"""

from __future__ import annotations

import itertools
import string
from functools import lru_cache

import numpy as np

from commit_env.tasks.base import EmbeddedTask, Example

__all__ = ["LatinSquare", "Sudoku4", "parse_grid", "latin_squares", "sudoku_grids"]

N = 4
SYMBOL_ALPHABET: str = string.ascii_lowercase + string.digits
_ROW_SEP = ";"
_BLANK = "_"


@lru_cache(maxsize=1)
def latin_squares() -> tuple[tuple[tuple[int, ...], ...], ...]:
    """All 576 Latin squares of order 4 over symbols ``0..3`` (rows as tuples)."""
    perms = list(itertools.permutations(range(N)))
    out = []
    for rows in itertools.product(perms, repeat=N):
        if all(len({r[c] for r in rows}) == N for c in range(N)):
            out.append(rows)
    return tuple(out)


def _boxes_ok(rows: tuple[tuple[int, ...], ...]) -> bool:
    for br in (0, 2):
        for bc in (0, 2):
            if len({rows[r][c] for r in (br, br + 1) for c in (bc, bc + 1)}) != N:
                return False
    return True


@lru_cache(maxsize=1)
def sudoku_grids() -> tuple[tuple[tuple[int, ...], ...], ...]:
    """All 288 solved 4x4 sudoku grids over ``0..3``."""
    return tuple(g for g in latin_squares() if _boxes_ok(g))


def parse_grid(completion: str) -> list[str] | None:
    """Split a completion into 4 rows of 4 characters, or ``None`` if it is not such a grid."""
    if not isinstance(completion, str):
        return None
    rows = [row.strip() for row in completion.strip().split(_ROW_SEP)]
    if len(rows) != N or any(len(row) != N for row in rows):
        return None
    return rows


def _is_latin(rows: list[str], symbols: set[str]) -> bool:
    if any(set(row) != symbols for row in rows):
        return False
    return all({row[c] for row in rows} == symbols for c in range(N))


def _render(rows: list[str] | tuple[str, ...]) -> str:
    return _ROW_SEP.join(rows)


class LatinSquare(EmbeddedTask):
    """Write any 4x4 Latin square over four given symbols.

    Args:
        difficulty: Only ``default``.

    Raises:
        ValueError: On an unknown level.
    """

    name = "latin"
    levels = ("default",)
    default_difficulty = "default"
    default_gen_length = 24
    max_answer_length = N * N + N - 1

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw four distinct symbols; see :class:`~commit_env.tasks.base.Task`."""
        picks = rng.choice(len(SYMBOL_ALPHABET), size=N, replace=False)
        symbols = [SYMBOL_ALPHABET[int(i)] for i in picks]
        reference = _render(["".join(symbols[(r + c) % N] for c in range(N)) for r in range(N)])
        return Example(f"latin {','.join(symbols)}:", reference, {"symbols": symbols})

    def sample_answer(self, example: Example, rng: np.random.Generator) -> str:
        """A uniformly random Latin square over the symbols."""
        squares = latin_squares()
        square = squares[int(rng.integers(len(squares)))]
        symbols = example.meta["symbols"]
        return _render(["".join(symbols[v] for v in row) for row in square])

    def answer_set(self, example: Example) -> list[str] | None:
        """All 576 Latin squares over the example's symbols."""
        symbols = example.meta["symbols"]
        return [
            _render(["".join(symbols[v] for v in row) for row in square])
            for square in latin_squares()
        ]

    def score(self, example: Example, completion: str) -> float:
        """1.0 when every row and column holds each given symbol once, else 0.0."""
        rows = parse_grid(completion)
        if rows is None:
            return 0.0
        return float(_is_latin(rows, set(example.meta["symbols"])))


class Sudoku4(EmbeddedTask):
    """Fill the blanks of a 4x4 sudoku (digits 1-4, 2x2 boxes).

    Args:
        difficulty: Only ``default``.
        min_blanks: Fewest blanks (>= 4).
        max_blanks: Most blanks (<= 10).

    Raises:
        ValueError: On an unknown level or a blank range outside 4..10.
    """

    name = "sudoku"
    levels = ("default",)
    default_difficulty = "default"
    default_gen_length = 24
    max_answer_length = N * N + N - 1

    def __init__(
        self, difficulty: str | None = None, *, min_blanks: int = 4, max_blanks: int = 10
    ) -> None:
        super().__init__(difficulty)
        if not 4 <= min_blanks <= max_blanks <= 10:
            raise ValueError(
                f"blank range {min_blanks}..{max_blanks} is invalid for task 'sudoku'; "
                "need 4 <= min_blanks <= max_blanks <= 10"
            )
        self.min_blanks, self.max_blanks = int(min_blanks), int(max_blanks)

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw a solved grid and blank 4-10 cells; see :class:`~commit_env.tasks.base.Task`."""
        grids = sudoku_grids()
        grid = grids[int(rng.integers(len(grids)))]
        blanks = int(rng.integers(self.min_blanks, self.max_blanks + 1))
        cells = {int(i) for i in rng.choice(N * N, size=blanks, replace=False)}
        puzzle = [
            "".join(_BLANK if r * N + c in cells else str(grid[r][c] + 1) for c in range(N))
            for r in range(N)
        ]
        reference = _render(["".join(str(v + 1) for v in row) for row in grid])
        return Example(f"sudoku {_render(puzzle)}:", reference, {"puzzle": puzzle})

    def solutions(self, example: Example) -> list[str]:
        """Every completed grid consistent with the givens (at least one)."""
        puzzle = example.meta["puzzle"]
        out = []
        for grid in sudoku_grids():
            rows = ["".join(str(v + 1) for v in row) for row in grid]
            if all(
                p == _BLANK or p == g
                for pr, gr in zip(puzzle, rows, strict=True)
                for p, g in zip(pr, gr, strict=True)
            ):
                out.append(_render(rows))
        return out

    def sample_answer(self, example: Example, rng: np.random.Generator) -> str:
        """A uniformly random solution."""
        options = self.solutions(example)
        return options[int(rng.integers(len(options)))]

    def answer_set(self, example: Example) -> list[str] | None:
        """Every solution (:meth:`solutions`)."""
        return self.solutions(example)

    def score(self, example: Example, completion: str) -> float:
        """1.0 for a valid sudoku grid that keeps every given digit, else 0.0."""
        rows = parse_grid(completion)
        if rows is None:
            return 0.0
        puzzle = example.meta["puzzle"]
        givens_kept = all(
            p == _BLANK or p == g
            for pr, gr in zip(puzzle, rows, strict=True)
            for p, g in zip(pr, gr, strict=True)
        )
        if not givens_kept or not _is_latin(rows, set("1234")):
            return 0.0
        boxes_ok = all(
            len({rows[r][c] for r in (br, br + 1) for c in (bc, bc + 1)}) == N
            for br in (0, 2)
            for bc in (0, 2)
        )
        return float(boxes_ok)

    def num_solutions(self, example: Example) -> int:
        """How many grids solve ``example``."""
        return len(self.solutions(example))
