import math

import numpy as np
import pytest

from commit_env.tasks import get_task


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("insert:any", lambda e: len(e.meta["items"]) + 1),
        ("remove:any", lambda e: len(e.meta["items"])),
        ("replace:any", lambda e: len(e.meta["items"])),
        ("insert:index", lambda e: 1),
        ("copy", lambda e: 1),
        ("latin", lambda e: 576),
        ("qa:list", None),
        ("sudoku", None),
    ],
)
def test_answer_set_lists_every_valid_answer_once(name, count):
    task = get_task(name)
    rng = np.random.default_rng(4)
    for _ in range(3):
        example = task.sample(rng)
        answers = task.answer_set(example)
        assert len(set(answers)) == len(answers)
        if count is not None:
            assert len(answers) == count(example)
        assert all(task.score(example, a) == 1.0 for a in answers)
        assert example.reference in answers
        # a random valid answer is always listed
        assert task.sample_answer(example, rng) in answers


def test_qa_list_answer_set_is_every_ordered_choice():
    task = get_task("qa:list")
    example = task.sample(np.random.default_rng(0))
    from commit_env.tasks.qa import CATEGORIES

    members, k = len(CATEGORIES[example.meta["category"]]), example.meta["k"]
    assert len(task.answer_set(example)) == math.perm(members, k)


def test_tasks_without_a_listed_answer_set_return_none():
    for name in ("shuffle", "math"):
        task = get_task(name)
        assert task.answer_set(task.sample(np.random.default_rng(0))) is None


def test_shuffle_names_its_permutation_instead_of_listing_it():
    task = get_task("shuffle")
    rng = np.random.default_rng(3)
    for _ in range(5):
        example = task.sample(rng)
        text, items = task.answer_permutation(example)
        assert task.score(example, text) == 0.0  # the prompt's order is the one non-answer
        assert items == list(example.meta["items"])
        for _ in range(3):
            order = [items[int(i)] for i in rng.permutation(len(items))]
            assert task.score(example, ",".join(order)) == float(order != items)
    for name in ("copy", "remove:any", "latin", "qa:list"):
        other = get_task(name)
        assert other.answer_permutation(other.sample(rng)) is None
