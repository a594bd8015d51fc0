"""The testbed families: generators, exact verifiers that accept every valid answer, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from commit_env.backbones.tiny import build_tiny_tokenizer
from commit_env.tasks import get_task
from commit_env.tasks.listops import parse_list
from commit_env.tasks.registry import TESTBED_TASKS

LIST_FAMILIES = (
    "copy",
    "reverse",
    "sort",
    "shuffle",
    "insert:index",
    "insert:any",
    "remove:index",
    "remove:any",
    "replace:index",
    "replace:any",
)
ALL_NEW = tuple(dict.fromkeys(LIST_FAMILIES + TESTBED_TASKS))
MALFORMED = ("", " ", ",", ",,,", "a,,b", "ab,cd", "a;b;c;d", "[MASK]", "x" * 500, "é,ü,ß", "\n\n")


def _draw(name: str, n: int = 40, seed: int = 0, **kwargs):
    task = get_task(name, **kwargs)
    rng = np.random.default_rng(seed)
    return task, [task.sample(rng) for _ in range(n)]


@pytest.mark.parametrize("name", ALL_NEW)
def test_generator_is_seeded_and_references_verify(name):
    task, first = _draw(name, seed=3)
    _, again = _draw(name, seed=3)
    _, other = _draw(name, seed=4)
    assert [e.prompt for e in first] == [e.prompt for e in again]
    assert [e.prompt for e in first] != [e.prompt for e in other]
    rng = np.random.default_rng(0)
    for example in first:
        assert task.score(example, example.reference) == 1.0
        assert task.score(example, f"  {example.reference} ") == 1.0  # surrounding space ignored
        assert task.score(example, task.sample_answer(example, rng)) == 1.0


@pytest.mark.parametrize("name", ALL_NEW)
def test_answers_fill_the_canvas_and_fit_the_vocabulary(name):
    task, examples = _draw(name, n=300)
    G = task.default_gen_length
    rng = np.random.default_rng(1)
    lengths = [len(task.sample_answer(e, rng)) for e in examples]
    assert G >= 24 and np.mean(lengths) >= G / 2
    assert max(lengths) <= task.max_answer_length <= G
    task.check_gen_length(G)
    tok = build_tiny_tokenizer()
    text = "".join(e.prompt + e.reference for e in examples)
    assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", ALL_NEW)
def test_malformed_completions_score_zero(name):
    task, examples = _draw(name, n=5)
    for example in examples:
        for bad in MALFORMED + (example.reference + ",", example.reference[:-1]):
            assert task.score(example, bad) == 0.0
        assert task.score(example, None) == 0.0  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["shuffle", "insert:any", "remove:any", "replace:any"])
def test_multi_answer_families_sample_many_answers(name):
    task, examples = _draw(name, n=10)
    rng = np.random.default_rng(0)
    for example in examples:
        answers = {task.sample_answer(example, rng) for _ in range(30)}
        assert len(answers) >= 3
    assert task.is_multi_answer


@pytest.mark.parametrize("name", ["copy", "reverse", "sort", "insert", "remove", "replace"])
def test_single_answer_families(name):
    task, examples = _draw(name, n=10)
    rng = np.random.default_rng(0)
    assert not task.is_multi_answer
    for example in examples:
        assert {task.sample_answer(example, rng) for _ in range(10)} == {example.reference}


def test_shuffle_accepts_every_permutation_but_the_identity():
    task, (example,) = _draw("shuffle", n=1, min_items=4, max_items=4)
    items = example.meta["items"]
    scores = {p: task.score(example, ",".join(p)) for p in itertools.permutations(items)}
    assert sum(scores.values()) == 23 and scores[tuple(items)] == 0.0
    assert task.score(example, ",".join(items[:3] + items[:1])) == 0.0  # not a permutation


def test_edit_families_accept_every_position_at_level_any():
    for name, extra in (("insert:any", 1), ("remove:any", -1), ("replace:any", 0)):
        task, examples = _draw(name, n=10)
        for example in examples:
            items, k = example.meta["items"], len(example.meta["items"])
            valid = {",".join(a) for a in task.valid_answers(example)}
            assert len(valid) == k + max(extra, 0)
            assert all(len(parse_list(v)) == k + extra for v in valid)
            assert all(task.score(example, v) == 1.0 for v in valid)
            # every other arrangement of the same items fails
            wrong = ",".join(reversed(parse_list(example.reference)))
            assert task.score(example, wrong) == float(wrong in valid)
            del items


def test_index_levels_follow_the_index():
    task, examples = _draw("insert:index", n=20)
    for e in examples:
        assert parse_list(e.reference)[e.meta["index"]] == e.meta["item"]
    task, examples = _draw("remove:index", n=20)
    for e in examples:
        items = list(e.meta["items"])
        assert e.meta["items"][e.meta["index"]] not in parse_list(e.reference)
        assert len(parse_list(e.reference)) == len(items) - 1
    task, examples = _draw("replace:index", n=20)
    for e in examples:
        assert parse_list(e.reference)[e.meta["index"]] == e.meta["item"]
        other = e.meta["index"] - 1 if e.meta["index"] else 1
        moved = list(e.meta["items"])
        moved[other] = e.meta["item"]
        assert task.score(e, ",".join(moved)) == 0.0


def test_item_range_and_k_narrowing():
    task, examples = _draw("sort", n=50, min_items=6, max_items=6)
    assert {len(parse_list(e.reference)) for e in examples} == {6}
    for name in ("copy", "insert:any", "remove:index"):
        with pytest.raises(ValueError, match="4 <= min_items <= max_items <= 12"):
            get_task(name, max_items=13)
        with pytest.raises(ValueError, match="4 <= min_items"):
            get_task(name, min_items=3)
    with pytest.raises(ValueError, match="min_items"):
        get_task("copy", min_items=8, max_items=5)


def test_unknown_family_or_level_names_the_valid_values():
    with pytest.raises(ValueError, match="expected one of"):
        get_task("rotate")
    with pytest.raises(ValueError, match=r"\['index', 'any'\]"):
        get_task("insert:somewhere")
    with pytest.raises(ValueError, match=r"\['default'\]"):
        get_task("copy:hard")


def test_gen_length_too_short_is_a_one_line_error():
    for name in ("copy", "latin", "sudoku", "qa:list", "remove:any", "math:hard"):
        task = get_task(name)
        task.check_gen_length(task.max_answer_length)
        with pytest.raises(ValueError, match="too short") as info:
            task.check_gen_length(task.max_answer_length - 1)
        assert "\n" not in str(info.value) and str(task.max_answer_length) in str(info.value)
    get_task("copy", max_items=4).check_gen_length(7)
