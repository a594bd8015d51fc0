"""Latin squares and 4x4 sudoku: every valid grid is accepted, invalid ones are not."""

from __future__ import annotations

import numpy as np
import pytest

from commit_env.tasks import get_task
from commit_env.tasks.base import Example
from commit_env.tasks.puzzles import latin_squares, sudoku_grids


def _render(rows):
    return ";".join("".join(map(str, r)) for r in rows)


def test_counts_of_the_grid_families():
    assert len(latin_squares()) == 576
    assert len(sudoku_grids()) == 288


def test_latin_accepts_all_576_squares_over_the_symbols():
    task = get_task("latin")
    example = task.sample(np.random.default_rng(5))
    symbols = example.meta["symbols"]
    assert example.prompt == f"latin {','.join(symbols)}:"
    texts = {_render(["".join(symbols[v] for v in row) for row in sq]) for sq in latin_squares()}
    assert len(texts) == 576 and all(task.score(example, t) == 1.0 for t in texts)
    # a grid whose rows are permutations but with a repeated column is rejected
    row = "".join(symbols)
    assert task.score(example, ";".join([row] * 4)) == 0.0
    # other symbols are rejected
    assert task.score(example, _render(latin_squares()[0]).replace("0", "9")) == 0.0


def test_latin_all_at_once_style_mixes_are_mostly_invalid():
    task = get_task("latin")
    example = task.sample(np.random.default_rng(0))
    rng = np.random.default_rng(0)
    answers = [task.sample_answer(example, rng) for _ in range(200)]
    # positionwise mixes of two random valid squares: the failure mode of parallel commits
    mixes = [
        "".join(a if i % 2 else b for i, (a, b) in enumerate(zip(x, y, strict=True)))
        for x, y in zip(answers[::2], answers[1::2], strict=True)
    ]
    assert np.mean([task.score(example, m) for m in mixes]) < 0.5


def test_sudoku_blanks_givens_and_every_solution_accepted():
    task = get_task("sudoku")
    rng = np.random.default_rng(2)
    multi = 0
    for _ in range(60):
        example = task.sample(rng)
        puzzle = example.meta["puzzle"]
        blanks = sum(row.count("_") for row in puzzle)
        assert 4 <= blanks <= 10
        solutions = task.solutions(example)
        assert example.reference in solutions
        assert all(task.score(example, s) == 1.0 for s in solutions)
        multi += len(solutions) > 1
        # every other sudoku grid breaks a given
        others = [_render([[v + 1 for v in r] for r in g]) for g in sudoku_grids()]
        assert sum(task.score(example, g) for g in others) == len(solutions)
    assert multi > 0  # several-solution puzzles occur


def test_sudoku_checks_boxes_not_only_rows_and_columns():
    task = get_task("sudoku")
    not_sudoku = next(sq for sq in latin_squares() if sq not in set(sudoku_grids()))
    grid = [[v + 1 for v in row] for row in not_sudoku]
    puzzle = ["".join(str(v) for v in row) for row in grid]
    puzzle = ["_" + p[1:] for p in puzzle]  # 4 blanks
    example = Example(prompt="", reference="", meta={"puzzle": puzzle})
    assert task.score(example, _render(grid)) == 0.0


def test_sudoku_blank_range():
    task = get_task("sudoku", min_blanks=10, max_blanks=10)
    example = task.sample(np.random.default_rng(0))
    assert sum(row.count("_") for row in example.meta["puzzle"]) == 10
    with pytest.raises(ValueError, match="4 <= min_blanks <= max_blanks <= 10"):
        get_task("sudoku", max_blanks=11)
