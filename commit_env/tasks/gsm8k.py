"""GSM8K grade-school math word problems, scored by exact numeric match of the final answer.

Data comes from a local JSONL file (``{"question": ..., "answer": ...}`` per line, the answer
ending with ``#### <number>`` as in the original release) or from the Hugging Face Hub
(``openai/gsm8k``, needs the ``data`` extra). The prompt is ``Question: <question>``, a newline
and ``Answer:``, optionally preceded by worked examples in the same format.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

from commit_env.tasks.base import Example
from commit_env.tasks.dataset import DatasetTask, load_hub_records, read_jsonl_records

__all__ = ["GSM8K", "extract_answer", "normalize_number"]

# A number as written in solutions: optional sign and dollar sign, thousands groups, decimals.
_NUMBER = re.compile(r"(?<![\w.])(-?)\$?\s?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
_MARKERS = (re.compile(r"####"), re.compile(r"the answer is", re.IGNORECASE))
# A model prompted few-shot goes on to invent the next question; its numbers are not answers.
_CONTINUATION = re.compile(r"\n\s*Question:")


def normalize_number(text: str) -> Fraction | None:
    """Parse a written number (``"$1,234.50"``, ``"-3"``, ``"42.0"``) into an exact value.

    Args:
        text: The number, possibly with a dollar sign, thousands commas or a trailing period.

    Returns:
        The value as a :class:`~fractions.Fraction` (so ``"42.0"`` equals ``"42"``), or None if
        ``text`` is not a number.
    """
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(completion: str) -> str | None:
    """Return the final numeric answer written in ``completion``, or None if it has no number.

    The first number after the last ``####`` (or else after the last "The answer is") wins;
    without either marker, the last number of the text. Text from an invented follow-up
    ``Question:`` on is ignored.

    Args:
        completion: Model output following ``"Answer:"``.

    Returns:
        The number as written, sign included and ``$``/commas removed, or None.
    """
    match = _CONTINUATION.search(completion)
    text = completion[: match.start()] if match else completion
    for marker in _MARKERS:
        positions = [m.end() for m in marker.finditer(text)]
        if positions:
            found = _NUMBER.search(text, positions[-1])
            if found:
                return _as_written(found)
    numbers = list(_NUMBER.finditer(text))
    return _as_written(numbers[-1]) if numbers else None


def _as_written(match: re.Match[str]) -> str:
    return match.group(1) + match.group(2).replace(",", "")


def _check_record(record: dict, where: str) -> dict[str, str]:
    for key in ("question", "answer"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise ValueError(f"{where}: missing or empty string field {key!r}")
    if _final_answer(record["answer"]) is None:
        raise ValueError(f"{where}: answer does not end with '#### <number>'")
    return {"question": record["question"], "answer": record["answer"]}


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    return read_jsonl_records(path, "GSM8K", _check_record)


def _final_answer(answer: str) -> str | None:
    _, sep, tail = answer.rpartition("####")
    if not sep:
        return None
    found = _NUMBER.search(tail)
    return _as_written(found) if found else None


def _load_hub(dataset_name: str, config: str, split: str) -> list[dict[str, str]]:
    return load_hub_records(
        dataset_name,
        split,
        ("question", "answer"),
        config=config,
        missing='loading GSM8K from the Hugging Face Hub needs the "datasets" package: '
        'pip install "commit-env[data]" (or pass path= to a local JSONL file)',
    )


class GSM8K(DatasetTask):
    """GSM8K task: a word problem in, a worked solution ending with the number out.

    Args:
        split: Hub split to evaluate on (ignored with ``path``).
        path: Local JSONL file; read and validated at construction. Without it the Hub data set
            is loaded on first use.
        dataset_name: Hub data set id.
        config: Hub configuration (``"main"`` or ``"socratic"``).
        few_shot: Number of worked examples put before each question: the first lines of
            ``path`` (then left out of the evaluated problems) or of the Hub ``train`` split.

    Raises:
        ValueError: If ``few_shot`` is negative, or ``path`` is empty, malformed (the message names
            the file and line) or holds no problem besides the few-shot ones.
    """

    name = "gsm8k"
    default_gen_length = 256

    def __init__(
        self,
        split: str = "test",
        path: str | None = None,
        dataset_name: str = "openai/gsm8k",
        config: str = "main",
        few_shot: int = 0,
    ) -> None:
        """Build the task; see the class docstring."""
        if isinstance(few_shot, bool) or not isinstance(few_shot, int) or few_shot < 0:
            raise ValueError(f"few_shot must be a non-negative integer, got {few_shot!r}")
        self.split = split
        self.dataset_name = dataset_name
        self.config = config
        self.few_shot = few_shot
        self.path = None if path is None else Path(path)
        self._examples: list[Example] | None = None
        if self.path is not None:
            self._examples = self._build(_read_jsonl(self.path), None)

    def __repr__(self) -> str:
        """Name the data source."""
        source = f"path={str(self.path)!r}" if self.path else f"{self.dataset_name}:{self.split}"
        return f"GSM8K({source}, few_shot={self.few_shot})"

    def _build(
        self, records: list[dict[str, str]], shots: list[dict[str, str]] | None
    ) -> list[Example]:
        if shots is None:  # local file: its head is the few-shot pool
            shots, records = records[: self.few_shot], records[self.few_shot :]
            if not records:
                raise ValueError(
                    f"GSM8K file {self.path} has {len(shots)} problems, all used as few-shot "
                    f"examples (few_shot={self.few_shot})"
                )
        prefix = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
        examples = []
        for index, record in enumerate(records):
            answer = _final_answer(record["answer"])
            if answer is None:
                raise ValueError(f"GSM8K problem {index} has no '#### <number>' answer")
            examples.append(
                Example(
                    prompt=f"{prefix}Question: {record['question']}\nAnswer:",
                    reference=record["answer"],
                    meta={"answer": answer, "question": record["question"], "index": index},
                )
            )
        return examples

    def _load_examples(self) -> list[Example]:
        records = _load_hub(self.dataset_name, self.config, self.split)
        shots = _load_hub(self.dataset_name, self.config, "train")[: self.few_shot]
        return self._build(records, shots)

    def score(self, example: Example, completion: str) -> float:
        """Return 1.0 if the completion's final number equals the reference answer, else 0.0.

        Args:
            example: A problem from this task (``meta["answer"]`` holds the number).
            completion: Model output following ``"Answer:"``.

        Returns:
            1.0 or 0.0.
        """
        predicted = extract_answer(completion)
        if predicted is None:
            return 0.0
        expected = normalize_number(example.meta["answer"])
        return float(expected is not None and normalize_number(predicted) == expected)
