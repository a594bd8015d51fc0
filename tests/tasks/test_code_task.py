"""Embedded code family: every taught program passes the sandbox, mixtures and garbage fail."""

from __future__ import annotations

import numpy as np
import pytest

from commit_env.tasks import get_task
from commit_env.tasks.code import LinearFunctionCode


@pytest.mark.parametrize(("difficulty", "count"), [("easy", 4), ("hard", 24)])
def test_every_valid_program_scores_one(difficulty: str, count: int) -> None:
    task = get_task("code") if difficulty == "easy" else get_task("code", difficulty="hard")
    assert isinstance(task, LinearFunctionCode) and task.difficulty == difficulty
    example = task.sample(np.random.default_rng(11))
    programs = task.valid_programs(example)
    assert len(programs) == count
    assert example.reference == programs[0]
    assert [task.score(example, p) for p in programs] == [1.0] * count


def test_mixtures_score_zero() -> None:
    task = get_task("code")
    example = task.sample(np.random.default_rng(5))
    a, b = example.meta["coefs"][0], example.meta["bias"]
    # Token-wise mixtures of valid programs such as "3*x+1" and "x*3+1".
    mixtures = [f"{a}*x*{a}", f"x+{a}*{b}", f"x*{a}*x", f"{b}+x+{a}", f"{a}*{b}+x"]
    assert [task.score(example, m) for m in mixtures] == [0.0] * len(mixtures)


def test_hard_mixtures_score_zero() -> None:
    task = get_task("code:hard")
    example = task.sample(np.random.default_rng(5))
    (a, c), b = example.meta["coefs"], example.meta["bias"]
    assert a != c  # else swapping the variables would be a valid program
    mixtures = [f"{a}*x+{c}*x+{b}", f"{a}*y+{c}*x+{b}", f"x*{a}*{c}*y+{b}", f"{a}*x+{c}*y"]
    assert [task.score(example, m) for m in mixtures] == [0.0] * len(mixtures)


@pytest.mark.parametrize(
    "garbage",
    ["", "   ", "x+", "???", "3*x\n+1", "while True: pass", "__import__('os').system('true')",
     "import os", "lambda: 0", "x+1+"],
)  # fmt: skip
def test_garbage_scores_zero(garbage: str) -> None:
    task = get_task("code")
    example = task.sample(np.random.default_rng(0))
    assert task.score(example, garbage) == 0.0
