"""The ParallelBench loader on small files written here (same layout as the released ones)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from commit_env.tasks import get_task


def _names(items):
    return json.dumps(items).replace('","', '", "')


LISTS = [["Ann Lee", "Bo Li", "Cy Park"], ["Dee Fox", "Ed Ray", "Flo Kim", "Gus Hall"]]


def _write(root, group, stem, records, config=None):
    folder = root / group
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    if config is not None:
        import yaml

        (folder / "task_config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def root(tmp_path):
    shot = {"input": {"context": _names(["Al Bo", "Cy Do"])}, "answer": _names(["Al Bo", "Cy Do"])}
    _write(
        tmp_path,
        "waiting_line",
        "copy",
        [
            {
                "input": {"context": _names(x), "icl_examples": [shot]},
                "answer": _names(x),
                "metadata": {},
            }
            for x in LISTS
        ],
    )
    _write(
        tmp_path,
        "waiting_line",
        "reverse",
        [
            {"input": {"context": _names(x)}, "answer": _names(x[::-1]), "metadata": {}}
            for x in LISTS
        ],
    )
    _write(
        tmp_path,
        "waiting_line",
        "sort",
        [
            {"input": {"context": _names(x)}, "answer": _names(sorted(x)), "metadata": {}}
            for x in LISTS
        ],
    )
    _write(
        tmp_path,
        "waiting_line",
        "shuffle",
        [
            {
                "input": {"context": _names(x)},
                "answer": {"input": x, "example": _names(x[1:] + x[:1])},
            }
            for x in LISTS
        ],
    )
    _write(
        tmp_path,
        "waiting_line",
        "insert_index",
        [
            {
                "input": {"context": _names(x), "word": "New Guy", "index": 1},
                "answer": _names(x[:1] + ["New Guy"] + x[1:]),
            }
            for x in LISTS
        ],
    )
    _write(
        tmp_path,
        "waiting_line",
        "remove_index",
        [{"input": {"context": _names(x), "index": 0}, "answer": _names(x[1:])} for x in LISTS],
    )
    _write(
        tmp_path,
        "waiting_line",
        "insert_random",
        [
            {
                "input": {"context": _names(x), "word": "New Guy"},
                "answer": {"input": x, "word": "New Guy", "example": _names(["New Guy"] + x)},
            }
            for x in LISTS
        ],
    )
    _write(
        tmp_path,
        "waiting_line",
        "remove_random",
        [
            {"input": {"context": _names(x)}, "answer": {"input": x, "example": _names(x[1:])}}
            for x in LISTS
        ],
    )
    _write(
        tmp_path,
        "waiting_line",
        "replace_random",
        [
            {
                "input": {"context": _names(x), "word": "New Guy"},
                "answer": {"input": x, "word": "New Guy", "example": _names(["New Guy"] + x[1:])},
            }
            for x in LISTS
        ],
    )
    _write(
        tmp_path,
        "puzzle",
        "latin_square_n4",
        [
            {
                "input": {"size": 4, "symbols": "[H, 4, C, A]"},
                "answer": {
                    "symbols": ["H", "4", "C", "A"],
                    "example": "H,4,C,A\n4,C,A,H\nC,A,H,4\nA,H,4,C",
                },
            }
        ],
    )
    _write(
        tmp_path,
        "puzzle",
        "sudoku_n4_12",
        [
            {"input": {"sudoku": "0000\n0000\n0000\n0000"}, "answer": "1234\n3412\n2143\n4321"},
            {"input": {"sudoku": "1034\n3412\n0320\n0143"}, "answer": "1234\n3412\n4321\n2143"},
        ],
    )
    return tmp_path


def test_prompt_template_icl_and_reference(root):
    task = get_task("parallelbench", path=root, subset="waiting_line/copy")
    assert len(task) == 2 and task.metric_name == "list_match_score"
    example = task.load_examples(1)[0]
    assert example.prompt.startswith("You are managing a waiting line")
    assert example.prompt.count("You are managing") == 2  # in-context example first
    assert '["Al Bo", "Cy Do"]\n\n' in example.prompt
    assert example.prompt.rstrip().endswith("provide only the final list.")
    assert task.score(example, example.reference) == 1.0
    assert task.score(example, ' ["Ann Lee", "Bo Li", "Cy Park"] and more') == 1.0
    no_icl = get_task("parallelbench:waiting_line/copy", path=root, icl=False)
    assert no_icl.examples[0].prompt.count("You are managing") == 1
    assert no_icl.sample(np.random.default_rng(0)).prompt in {e.prompt for e in no_icl.examples}


@pytest.mark.parametrize(
    "subset", ["copy", "reverse", "sort", "shuffle", "insert_index", "remove_index"]
)
def test_waiting_line_references_verify_and_garbage_fails(root, subset):
    task = get_task("parallelbench", path=root, subset=f"waiting_line/{subset}")
    for example in task.examples:
        assert task.score(example, example.reference) == 1.0
        for bad in ("", "[", "]", "[]", "[,]", '["Ann Lee"', "\x00" * 3, "[" * 50):
            assert task.score(example, bad) == 0.0
        assert task.score(example, None) == 0.0  # type: ignore[arg-type]


def test_multi_answer_lists_accept_every_valid_answer(root):
    x = LISTS[1]
    shuffle = get_task("parallelbench", path=root, subset="waiting_line/shuffle")
    ex = shuffle.examples[1]
    assert shuffle.score(ex, _names(x[::-1])) == 1.0
    assert shuffle.score(ex, _names(x)) == 0.0  # unchanged order is not a shuffle
    assert shuffle.score(ex, _names(x[:-1] + x[:1])) == 0.0
    insert = get_task("parallelbench", path=root, subset="waiting_line/insert_random")
    ex = insert.examples[1]
    for i in range(len(x) + 1):
        assert insert.score(ex, _names(x[:i] + ["New Guy"] + x[i:])) == 1.0
    assert insert.score(ex, _names(x[:1] + ["Other"] + x[1:])) == 0.0
    remove = get_task("parallelbench", path=root, subset="waiting_line/remove_random")
    ex = remove.examples[1]
    assert all(remove.score(ex, _names(x[:i] + x[i + 1 :])) == 1.0 for i in range(len(x)))
    assert remove.score(ex, _names(x[1:][::-1])) == 0.0
    replace = get_task("parallelbench", path=root, subset="waiting_line/replace_random")
    ex = replace.examples[1]
    for i in range(len(x)):
        assert replace.score(ex, _names(x[:i] + ["New Guy"] + x[i + 1 :])) == 1.0
    assert replace.score(ex, _names(["New Guy", "New Guy"] + x[2:])) == 0.0


def test_puzzles_verify_the_grid_not_a_stored_solution(root):
    latin = get_task("parallelbench", path=root, subset="puzzle/latin_square_n4")
    ex = latin.examples[0]
    assert "size 4 with the symbols [H, 4, C, A]" in ex.prompt
    assert latin.score(ex, "A,H,4,C\nH,4,C,A\n4,C,A,H\nC,A,H,4") == 1.0  # not the example
    assert latin.score(ex, "H,4,C,A\nH,4,C,A\nC,A,H,4\nA,H,4,C") == 0.0
    sudoku = get_task("parallelbench", path=root, subset="puzzle/sudoku_n4_12")
    empty, given = sudoku.examples
    assert "Input:\n0000" in empty.prompt and empty.prompt.endswith("Output:\n")
    other = "2143\n4321\n1234\n3412"
    assert sudoku.score(empty, other) == 1.0  # a different valid grid: accepted
    assert sudoku.score(given, given.reference) == 1.0
    assert sudoku.score(given, other) == 0.0  # breaks the givens
    assert sudoku.score(empty, "1234\n2341\n3412\n4123") == 0.0  # a Latin square, boxes broken


def test_task_config_yaml_overrides_the_built_in_template(tmp_path):
    config = {"waiting_line/copy": {"prompt": "COPY {context}!", "metric": "list_match_score"}}
    _write(
        tmp_path,
        "waiting_line",
        "copy",
        [{"input": {"context": '["A B"]'}, "answer": '["A B"]'}],
        config,
    )
    task = get_task("parallelbench", path=tmp_path / "waiting_line" / "copy.jsonl")
    assert task.subset == "waiting_line/copy" and task.examples[0].prompt == 'COPY ["A B"]!\n'


def test_bad_input_is_a_one_line_error(tmp_path, root):
    with pytest.raises(ValueError, match="path="):
        get_task("parallelbench", subset="waiting_line/copy")
    with pytest.raises(ValueError, match="unknown parallelbench subset .*latin_square_n4"):
        get_task("parallelbench", path=root, subset="waiting_line/teleport")
    with pytest.raises(ValueError, match="does not exist"):
        get_task("parallelbench", path=tmp_path / "nowhere", subset="waiting_line/copy")
    (root / "waiting_line" / "sort.jsonl").write_text(
        '{"input": {"context": "[]"}, "answer": "[]"}\n{oops\n'
    )
    with pytest.raises(ValueError, match=r"sort.jsonl, line 2: not valid JSON"):
        get_task("parallelbench", path=root, subset="waiting_line/sort")
    config = {"waiting_line/copy": {"prompt": "{context}", "metric": "bleu"}}
    _write(tmp_path, "waiting_line", "copy", [{"input": {"context": "[]"}, "answer": "[]"}], config)
    with pytest.raises(ValueError, match="metric 'bleu'"):
        get_task("parallelbench", path=tmp_path, subset="waiting_line/copy")
