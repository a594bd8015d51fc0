"""qa:list: k distinct members of a category in any order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from commit_env.tasks import get_task
from commit_env.tasks.qa import CATEGORIES


def test_list_level_asks_for_k_members_and_accepts_any_order():
    task = get_task("qa:list")
    assert task.default_gen_length == 32 and task.is_multi_answer
    rng = np.random.default_rng(0)
    ks = set()
    for _ in range(50):
        example = task.sample(rng)
        k, members = example.meta["k"], CATEGORIES[example.meta["category"]]
        ks.add(k)
        assert example.prompt.startswith(f"name {k} ")
        words = example.reference.split(",")
        for order in itertools.islice(itertools.permutations(words), 10):
            assert task.score(example, ",".join(order)) == 1.0
        assert task.score(example, ",".join(words[:-1])) == 0.0  # too few
        assert task.score(example, ",".join(words[:-1] + words[:1])) == 0.0  # repeated
        outsider = next(w for c, ms in CATEGORIES.items() for w in ms if w not in members)
        assert task.score(example, ",".join(words[:-1] + [outsider])) == 0.0
    assert ks == {3, 4, 5}


def test_old_levels_unchanged():
    rng = np.random.default_rng(7)
    easy = get_task("qa").sample(rng)
    assert easy.prompt.startswith("name a ") and "," not in easy.reference
    assert get_task("qa:hard").default_gen_length == 16


def test_list_range_errors():
    with pytest.raises(ValueError, match="3 <= min_items <= max_items <= 5"):
        get_task("qa:list", max_items=6)
    with pytest.raises(ValueError, match=r"\['easy', 'hard', 'list'\]"):
        get_task("qa:long")
    task = get_task("qa:list", min_items=4, max_items=4)
    assert {task.sample(np.random.default_rng(s)).meta["k"] for s in range(10)} == {4}
