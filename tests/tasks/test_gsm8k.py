"""GSM8K: local JSONL loading, prompts, and exact numeric scoring."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from commit_env.errors import DependencyNotInstalled
from commit_env.tasks import get_task
from commit_env.tasks.base import Task
from commit_env.tasks.gsm8k import GSM8K, extract_answer, normalize_number

PROBLEMS = [
    {
        "question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
        "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n48+24 = <<48+24=72>>72\n#### 72",
    },
    {
        "question": "Janet earns $2 per egg and sells 9 eggs. How much does she make?",
        "answer": "She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18",
    },
    {
        "question": "A house costs $1,000 and then $234 more. What is the total?",
        "answer": "1000 + 234 = <<1000+234=1234>>1234\n#### 1,234",
    },
    {
        "question": "It is 3 degrees and cools by 5 degrees. What is the temperature?",
        "answer": "3 - 5 = -2\n#### -2",
    },
]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS), encoding="utf-8")
    return path


def test_loads_local_file(data_file: Path) -> None:
    task = GSM8K(path=str(data_file))
    assert isinstance(task, Task)
    assert task.name == "gsm8k" and task.default_gen_length == 256
    assert len(task) == 4
    examples = task.load_examples()
    assert [e.meta["answer"] for e in examples] == ["72", "18", "1234", "-2"]
    assert examples[0].prompt == f"Question: {PROBLEMS[0]['question']}\nAnswer:"
    assert examples[0].reference == PROBLEMS[0]["answer"]
    assert len(task.load_examples(2)) == 2


def test_registry_builds_it(data_file: Path) -> None:
    task = get_task("gsm8k", path=str(data_file))
    assert isinstance(task, GSM8K) and len(task) == 4


def test_sample_is_seeded(data_file: Path) -> None:
    task = GSM8K(path=str(data_file))
    first = [task.sample(np.random.default_rng(7)).prompt for _ in range(3)]
    again = [task.sample(np.random.default_rng(7)).prompt for _ in range(3)]
    assert first == again
    assert task.sample(np.random.default_rng(0)) in task.load_examples()


def test_reference_scores_one(data_file: Path) -> None:
    task = GSM8K(path=str(data_file))
    for example in task.load_examples():
        assert task.score(example, " " + example.reference) == 1.0


@pytest.mark.parametrize(
    ("index", "completion", "expected"),
    [
        (0, " She sold 24 in May, so 48 + 24 = 72 clips.", 1.0),
        (0, " 48 + 24 = 72\n#### 72", 1.0),
        (0, " 72.0", 1.0),
        (0, " The answer is 72. She was very busy that month.", 1.0),
        (0, " 48 + 24 = 72\n#### 72\n\nQuestion: What is 5 + 5?\nAnswer: 10", 1.0),
        (1, " She makes $18 a day.", 1.0),
        (1, "#### 18", 1.0),
        (1, " The answer is $18.00 per day, which is a lot", 1.0),
        (2, " The total is $1,234.", 1.0),
        (2, " 1234", 1.0),
        (3, " It will be -2 degrees.", 1.0),
        (0, " 48 + 24 = 71", 0.0),
        (0, " #### 24 clips, then 72 overall", 0.0),
        (1, " She makes $19.", 0.0),
        (2, " 1,235", 0.0),
        (3, " It will be 2 degrees.", 0.0),
        (0, " I do not know.", 0.0),
        (0, "", 0.0),
    ],
)
def test_score(data_file: Path, index: int, completion: str, expected: float) -> None:
    task = GSM8K(path=str(data_file))
    assert task.score(task.load_examples()[index], completion) == expected


def test_extract_and_normalize() -> None:
    assert extract_answer("a 1, b 2, c 3") == "3"
    assert extract_answer("The answer is 5. Later 7.") == "5"
    assert extract_answer("#### 1,000,000") == "1000000"
    assert extract_answer("nothing") is None
    assert normalize_number("$1,234.50") == normalize_number("1234.5")
    assert normalize_number("42.") == 42
    assert normalize_number("forty") is None


def test_few_shot_uses_file_head(data_file: Path) -> None:
    task = GSM8K(path=str(data_file), few_shot=2)
    assert len(task) == 2
    prompt = task.load_examples()[0].prompt
    assert prompt.startswith(
        f"Question: {PROBLEMS[0]['question']}\nAnswer: {PROBLEMS[0]['answer']}"
    )
    assert prompt.endswith(f"Question: {PROBLEMS[2]['question']}\nAnswer:")
    assert prompt.count("Question:") == 3
    with pytest.raises(ValueError, match="few-shot"):
        GSM8K(path=str(data_file), few_shot=4)
    with pytest.raises(ValueError, match="few_shot"):
        GSM8K(path=str(data_file), few_shot=-1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        ('{"question": "q", "answer": "#### 1"}\nnot json\n', "line 2: not valid JSON"),
        ('{"question": "q"}\n', "line 1: missing or empty string field 'answer'"),
        ('{"question": "q", "answer": "no marker 3"}\n', "line 1: answer does not end"),
        ("[1, 2]\n", "line 1: expected a JSON object"),
    ],
)
def test_malformed_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        GSM8K(path=str(path))
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        GSM8K(path=str(tmp_path / "absent.jsonl"))


def test_hub_needs_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    task = GSM8K()  # the Hub data set loads on first use, not at construction
    with pytest.raises(DependencyNotInstalled, match=r"commit-env\[data\]"):
        len(task)
