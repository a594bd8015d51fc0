"""Embedded code generation: write a Python expression for a linear function.

``easy``: "f(x)=3x+1:" -> ``3*x+1``, ``x*3+1``, ``1+3*x`` or ``1+x*3``. ``hard``:
"f(x,y)=3x+2y+1:" -> any order of the three terms and of each product (24 programs). Completions
are scored in the sandbox (:func:`~commit_env.tasks.sandbox.run_tests`): the completion becomes
``def f(...): return <completion>`` in an isolated worker, and a trusted judge calls it on the test
inputs and compares the plain values it returns; tokens taken in parallel from different valid
programs make an invalid program.
"""

from __future__ import annotations

import ast
import itertools

import numpy as np

from commit_env.tasks.base import EmbeddedTask, Example
from commit_env.tasks.sandbox import resolve_sandbox_mode, run_tests

__all__ = ["LinearFunctionCode"]

_TEST_POINTS = ((0, 0), (1, 2), (2, -1), (-3, 5), (7, 4))


def _term_forms(coef: int, var: str) -> tuple[str, str]:
    return (f"{coef}*{var}", f"{var}*{coef}")


class LinearFunctionCode(EmbeddedTask):
    """Return an expression computing ``a*x+b`` (``easy``) or ``a*x+c*y+b`` (``hard``).

    Score is 1.0 when the program ``def f(x[, y]): return <completion>`` returns the right value
    on every test input inside the sandbox, else 0.0.

    Args:
        difficulty: ``"easy"`` or ``"hard"``.
        timeout: Wall-clock seconds each scoring run may take in the sandbox.
        sandbox: Isolation mode of the scoring sandbox (``"auto"``, ``"strict"``, ``"guards"``;
            None reads ``COMMIT_ENV_SANDBOX``), see :func:`~commit_env.tasks.sandbox.run_tests`.

    Raises:
        ValueError: If ``difficulty``, ``timeout`` or ``sandbox`` is invalid.
    """

    name = "code"
    default_gen_length = 16

    def __init__(
        self, difficulty: str | None = None, *, timeout: float = 5.0, sandbox: str | None = None
    ) -> None:
        """Build the task; see the class docstring."""
        super().__init__(difficulty)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.sandbox = None if sandbox is None else resolve_sandbox_mode(sandbox)

    @property
    def variables(self) -> tuple[str, ...]:
        """Argument names of the function."""
        return ("x",) if self.difficulty == "easy" else ("x", "y")

    def sample(self, rng: np.random.Generator) -> Example:
        """Draw coefficients uniformly; see :class:`~commit_env.tasks.base.Task`."""
        coefs = [int(c) for c in rng.integers(2, 10, size=len(self.variables))]
        bias = int(rng.integers(1, 10))
        spec = "+".join(f"{c}{v}" for c, v in zip(coefs, self.variables, strict=True))
        prompt = f"f({','.join(self.variables)})={spec}+{bias}:"
        example = Example(prompt=prompt, reference="", meta={"coefs": coefs, "bias": bias})
        return Example(prompt, self.valid_programs(example)[0], example.meta)

    def valid_programs(self, example: Example) -> list[str]:
        """Every expression the family teaches for ``example`` (term orders x product orders)."""
        coefs, bias = example.meta["coefs"], example.meta["bias"]
        terms = [_term_forms(c, v) for c, v in zip(coefs, self.variables, strict=True)]
        terms.append((str(bias),))
        programs = []
        for order in itertools.permutations(range(len(terms))):
            for forms in itertools.product(*(terms[i] for i in order)):
                programs.append("+".join(forms))
        return sorted(set(programs), key=lambda p: (p != "+".join(t[0] for t in terms), p))

    def sample_answer(self, example: Example, rng: np.random.Generator) -> str:
        """Return a uniformly random valid expression."""
        programs = self.valid_programs(example)
        return programs[int(rng.integers(len(programs)))]

    def source(self, completion: str) -> str:
        """The untrusted function definition that the sandbox runs for ``completion``."""
        return f"def f({', '.join(self.variables)}):\n    return {completion.strip()}\n"

    def tests(self, example: Example) -> str:
        """The trusted ``check(candidate)`` source that the judge runs for ``example``."""
        coefs, bias = example.meta["coefs"], example.meta["bias"]
        lines = ["def check(candidate):"]
        for x, y in _TEST_POINTS:
            values = {"x": x, "y": y}
            call = ", ".join(str(values[v]) for v in self.variables)
            expected = sum(c * values[v] for c, v in zip(coefs, self.variables, strict=True)) + bias
            lines.append(f"    assert candidate({call}) == {expected}")
        return "\n".join(lines) + "\n"

    def program(self, example: Example, completion: str) -> str:
        """A self-contained program (function then asserts), for reading; scoring splits it."""
        body = self.tests(example).replace("candidate(", "f(").splitlines()[1:]
        return self.source(completion) + "\n" + "\n".join(line.strip() for line in body) + "\n"

    def score(self, example: Example, completion: str) -> float:
        """Return 1.0 if the completion passes every test in the sandbox, else 0.0."""
        expression = completion.strip()
        if not expression or "\n" in expression:
            return 0.0
        source = self.source(expression)
        try:
            ast.parse(source)  # parsing never executes code; skip the subprocess on syntax errors
        except (SyntaxError, ValueError):
            return 0.0
        result = run_tests(
            source, self.tests(example), "f", timeout=self.timeout, sandbox=self.sandbox
        )
        return float(result.passed)
