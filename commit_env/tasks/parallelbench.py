"""ParallelBench test files (arXiv 2510.04767), read from a local copy, for real checkpoints.

ParallelBench releases one JSONL file per task, ``<group>/<task>.jsonl`` (for example
``waiting_line/copy.jsonl``, ``puzzle/latin_square_n4.jsonl``) beside a ``task_config.yaml`` that
gives each task's prompt template (``str.format`` fields taken from the record's ``input``) and its
metric. Every line holds ``input`` (template fields, optionally ``icl_examples``), ``answer`` (the
reference string, or a dict with the data the metric needs and an ``example`` answer) and
``metadata``. This loader reads those files from a local path (nothing is downloaded), renders the
prompt (in-context examples first, each followed by its answer) and scores with a verifier that
accepts *every* valid answer: any shuffle that differs from the input, an insertion/removal/
replacement at any position for the ``random`` tasks, any Latin square over the symbols, and any
sudoku grid that keeps the givens (the grid is checked, not compared with a stored solution).

Use::

    get_task("parallelbench", path="ParallelBench/dataset/parallel_bench/data/output/test",
             subset="waiting_line/copy")
    get_task("parallelbench:puzzle/latin_square_n4", path=...)

When ``task_config.yaml`` is present its prompt and metric are used; otherwise the built-in copy
of the released templates (:data:`SUBSETS`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from commit_env.tasks.base import Example

__all__ = ["METRICS", "SUBSETS", "ParallelBenchTask", "parse_list"]

_LINE = "You are managing a waiting line at a customer service desk.\n"
_PUZZLE_SUDOKU = (
    "Fill the positions where the values are 0 in a 4x4 grid with digits 1-4 so that each "
    "column, each row, and each of the four 2x2 subgrids that compose the grid contains all of "
    "the digits from 1 to 4.\\n\\nInput:\\n{sudoku}\\nOutput:\\n"
)

# task file stem -> (prompt template, metric name), as released in the task_config.yaml files.
SUBSETS: dict[str, tuple[str, str]] = {
    "copy": (
        _LINE + "You need to record the following people in the order they arrived:\n{context}\n"
        "Please copy the list exactly and provide only the final list.\n",
        "list_match_score",
    ),
    "reverse": (
        _LINE + "The previous staff member put the waiting line in the wrong order.\n"
        "Please reverse the order of the following people in the waiting line to correct it:\n"
        "{context}\nPlease reverse the order of the list and provide only the final list.\n",
        "list_match_score",
    ),
    "sort": (
        _LINE + "The following people should be organized alphabetically by last name for "
        "efficient processing:\n{context}\nPlease sort the list in alphabetical order and provide "
        "only the final list.\n",
        "list_match_score",
    ),
    "shuffle": (
        _LINE + "The waiting line should be randomly shuffled to ensure fair service "
        "distribution:\n{context}\nPlease randomly shuffle the list and provide only the final "
        "list.\nEnsure the sequence is different from the original.\n",
        "list_shuffle_score",
    ),
    "insert_index": (
        _LINE + 'A new person "{word}" is inserted into the line at position {index}:\n'
        "{context}\nPlease put the new person at the specified position and provide only the "
        "final list.\n",
        "list_match_score",
    ),
    "insert_random": (
        _LINE + 'A new person "{word}" is inserted into the line at a random position:\n'
        "{context}\nPlease put the new person in the random position and provide only the final "
        "list.\n",
        "list_random_insert_score",
    ),
    "remove_index": (
        _LINE + "The person at position {index} has left the waiting line:\n{context}\n"
        "Please remove the person at the specified position and provide only the final list.\n",
        "list_match_score",
    ),
    "remove_random": (
        _LINE + "One person has left the waiting line:\n{context}\n"
        "Please remove a random person and provide only the final list.\n",
        "list_random_remove_score",
    ),
    "replace_index": (
        _LINE + 'The person at position {index} must be replaced with "{word}":\n{context}\n'
        'Please replace the person at the specified position with "{word}" and provide only '
        "the final list.\n",
        "list_match_score",
    ),
    "replace_random": (
        _LINE + 'One person in the waiting line must be replaced with "{word}":\n{context}\n'
        'Please replace one random person with "{word}" and provide only the final list.',
        "list_random_replace_score",
    ),
    "latin_square_n4": (
        "Generate a Latin square of size {size} with the symbols {symbols}. Only output the "
        "final result as CSV.",
        "latin_square_score",
    ),
    "sudoku_n4_12": (_PUZZLE_SUDOKU, "sudoku_score"),
}


def parse_list(text: str) -> list[str] | None:
    """Read a list such as ``["Ann Lee", "Bo Li"]`` from model output (the last bracketed one).

    Items are split on commas and stripped of spaces and double quotes; a missing bracket is
    tolerated (the whole text is the list). Returns ``None`` for an empty list.
    """
    if not isinstance(text, str):
        return None
    if "[" in text:
        text = text.rsplit("[", 1)[1]
    if "]" in text:
        text = text.split("]", 1)[0]
    items = [item.strip('" ') for item in text.split(",")]
    items = [item for item in items if item]
    return items or None


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    parsed = parse_list(str(value))
    return parsed or []


def _list_match(prediction: str, answer: Any, record: dict[str, Any]) -> float:
    pred = parse_list(prediction)
    return float(pred is not None and pred == _as_list(answer))


def _list_shuffle(prediction: str, answer: Any, record: dict[str, Any]) -> float:
    pred, given = parse_list(prediction), _as_list(answer["input"])
    return float(pred is not None and sorted(pred) == sorted(given) and pred != given)


def _list_random_insert(prediction: str, answer: Any, record: dict[str, Any]) -> float:
    pred, given, word = parse_list(prediction), _as_list(answer["input"]), answer.get("word")
    if pred is None or len(pred) != len(given) + 1:
        return 0.0
    return float(
        any(
            pred[:i] + pred[i + 1 :] == given and (word is None or pred[i] == word)
            for i in range(len(pred))
        )
    )


def _list_random_remove(prediction: str, answer: Any, record: dict[str, Any]) -> float:
    pred, given = parse_list(prediction), _as_list(answer["input"])
    if pred is None or len(pred) != len(given) - 1:
        return 0.0
    return float(any(given[:i] + given[i + 1 :] == pred for i in range(len(given))))


def _list_random_replace(prediction: str, answer: Any, record: dict[str, Any]) -> float:
    pred, given, word = parse_list(prediction), _as_list(answer["input"]), answer.get("word")
    if pred is None or len(pred) != len(given):
        return 0.0
    diffs = [i for i, (p, g) in enumerate(zip(pred, given, strict=True)) if p != g]
    return float(len(diffs) == 1 and (word is None or pred[diffs[0]] == word))


def _latin_square(prediction: str, answer: Any, record: dict[str, Any]) -> float:
    symbols = {str(s).strip() for s in answer["symbols"]}
    size = len(symbols)
    rows = []
    for line in prediction.split("\n"):
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) == size and set(cells) == symbols:
            rows.append(cells)
    if len(rows) < size:
        return 0.0
    rows = rows[:size]
    return float(all({row[c] for row in rows} == symbols for c in range(size)))


def _read_grid(text: str, n: int = 4) -> list[list[int]] | None:
    grid = []
    for line in text.replace(" ", "").replace(",", "").split("\n"):
        digits = [int(d) for d in re.findall(r"\d", line)]
        if len(digits) == n:
            grid.append(digits)
    return grid if len(grid) == n else None


def _sudoku(prediction: str, answer: Any, record: dict[str, Any]) -> float:
    grid = _read_grid(prediction)
    givens = _read_grid(str(record["input"]["sudoku"]))
    if grid is None or givens is None:
        return 0.0
    full = set(range(1, 5))
    if any(set(row) != full for row in grid):
        return 0.0
    if any({grid[r][c] for r in range(4)} != full for c in range(4)):
        return 0.0
    for br in (0, 2):
        for bc in (0, 2):
            if {grid[r][c] for r in (br, br + 1) for c in (bc, bc + 1)} != full:
                return 0.0
    return float(all(givens[r][c] in (0, grid[r][c]) for r in range(4) for c in range(4)))


METRICS = {
    "list_match_score": _list_match,
    "list_shuffle_score": _list_shuffle,
    "list_random_insert_score": _list_random_insert,
    "list_random_remove_score": _list_random_remove,
    "list_random_replace_score": _list_random_replace,
    "latin_square_score": _latin_square,
    "sudoku_score": _sudoku,
}
"""Metric name (as in ``task_config.yaml``) -> verifier ``(prediction, answer, record)``."""


def _answer_text(answer: Any) -> str:
    return answer if isinstance(answer, str) else str(answer.get("example", ""))


class ParallelBenchTask:
    """One ParallelBench task read from local JSONL.

    Args:
        path: The directory holding ``<group>/<task>.jsonl`` (the released ``output/test``
            folder) or one ``.jsonl`` file.
        subset: ``<group>/<task>``, e.g. ``waiting_line/copy`` (optional when ``path`` is a file).
        difficulty: Alias of ``subset`` (so ``get_task("parallelbench:waiting_line/copy")``
            works).
        icl: Put the record's in-context examples before the question.
        gen_length: Default generation length (tokens of the real checkpoint's tokenizer).

    Raises:
        ValueError: If the subset is unknown (the message lists the supported ones), the file is
            missing or malformed (the message names file and line), or ``task_config.yaml``
            names an unsupported metric.
    """

    name = "parallelbench"
    max_answer_length: int | None = None
    is_multi_answer = True

    def __init__(
        self,
        path: str | Path | None = None,
        subset: str | None = None,
        *,
        difficulty: str | None = None,
        icl: bool = True,
        gen_length: int = 64,
    ) -> None:
        if path is None:
            raise ValueError(
                "parallelbench needs path=: the released test folder (.../output/test) or one "
                "of its .jsonl files; nothing is downloaded"
            )
        subset = subset or difficulty
        root = Path(path)
        if root.is_file() or root.suffix == ".jsonl":
            file = root
            subset = subset or f"{root.parent.name}/{root.stem}"
        else:
            if not subset:
                raise ValueError(
                    f"parallelbench needs subset= (e.g. 'waiting_line/copy'); supported task "
                    f"files: {sorted(SUBSETS)}"
                )
            file = root / f"{subset}.jsonl"
        stem = subset.rsplit("/", 1)[-1]
        if stem not in SUBSETS:
            raise ValueError(
                f"unknown parallelbench subset {subset!r}; supported task files "
                f"(any group, e.g. waiting_line/<task>, puzzle/<task>): {sorted(SUBSETS)}"
            )
        if not file.is_file():
            raise ValueError(f"parallelbench file {file} does not exist")
        self.subset, self.path, self.icl = subset, file, bool(icl)
        self.default_gen_length = int(gen_length)
        self.template, self.metric_name = self._config(file, subset, stem)
        if self.metric_name not in METRICS:
            raise ValueError(
                f"parallelbench subset {subset!r} uses metric {self.metric_name!r}; "
                f"supported: {sorted(METRICS)}"
            )
        self._metric = METRICS[self.metric_name]
        self.examples = [self._example(r, i) for i, r in enumerate(self._read(file))]
        if not self.examples:
            raise ValueError(f"parallelbench file {file} holds no records")

    def __repr__(self) -> str:
        return f"ParallelBenchTask(subset={self.subset!r}, path={str(self.path)!r})"

    def __len__(self) -> int:
        """Number of records."""
        return len(self.examples)

    @staticmethod
    def _config(file: Path, subset: str, stem: str) -> tuple[str, str]:
        template, metric = SUBSETS[stem]
        config_file = file.parent / "task_config.yaml"
        if config_file.is_file():
            import yaml

            try:
                config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"cannot parse {config_file}: {exc}") from exc
            entry = config.get(subset) or config.get(f"{file.parent.name}/{stem}")
            if isinstance(entry, dict):
                template = str(entry.get("prompt", template))
                metric = str(entry.get("metric", metric))
        return template, metric

    @staticmethod
    def _read(file: Path) -> list[dict[str, Any]]:
        records = []
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file}, line {number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("input"), dict):
                raise ValueError(f"{file}, line {number}: expected an object with an 'input' dict")
            if "answer" not in record:
                raise ValueError(f"{file}, line {number}: missing 'answer'")
            records.append(record)
        return records

    def _render(self, fields: dict[str, Any]) -> str:
        try:
            return self.template.format(**fields).replace("\\n", "\n")
        except (KeyError, IndexError) as exc:
            raise ValueError(
                f"{self.path}: record lacks the prompt field {exc} of subset {self.subset!r}"
            ) from exc

    def _example(self, record: dict[str, Any], index: int) -> Example:
        messages = []
        if self.icl:
            for shot in record["input"].get("icl_examples", []) or []:
                messages.append({"role": "user", "content": self._render(shot["input"])})
                messages.append({"role": "assistant", "content": _answer_text(shot["answer"])})
        messages.append({"role": "user", "content": self._render(record["input"])})
        parts = []
        for message in messages:
            parts.append(message["content"].rstrip("\n") + "\n")
            if message["role"] == "assistant":
                parts.append("\n")
        prompt = "".join(parts)
        meta = {
            "record": record,
            "messages": messages,
            "index": index,
            "metadata": record.get("metadata", {}),
        }
        return Example(prompt=prompt, reference=_answer_text(record["answer"]), meta=meta)

    def load_examples(self, n: int | None = None) -> list[Example]:
        """Return the first ``n`` records (all when ``None``), in file order.

        Raises:
            ValueError: If ``n`` is negative.
        """
        if n is not None and n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        return list(self.examples if n is None else self.examples[:n])

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw one record uniformly; see :class:`~commit_env.tasks.base.Task`."""
        return self.examples[int(rng.integers(len(self.examples)))]

    def check_gen_length(self, gen_length: int) -> None:
        """No static bound: answer lengths depend on the checkpoint's tokenizer."""

    def score(self, example: Example, completion: str) -> float:
        """Score with the subset's metric; malformed output scores 0.0, never raises."""
        if not isinstance(completion, str):
            return 0.0
        record = example.meta["record"]
        try:
            return float(self._metric(completion, record["answer"], record))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return 0.0
