"""Embedded code generation: write a Python expression for a linear function.

``easy``: "f(x)=3x+1:" -> ``3*x+1``, ``x*3+1``, ``1+3*x`` or ``1+x*3``. ``hard``:
"f(x,y)=3x+2y+1:" -> any order of the three terms and of each product (24 programs). Completions
are scored by executing ``def f(...): return <completion>`` against test inputs in a sandboxed
subprocess; tokens taken in parallel from different valid programs make an invalid program.
"""

from __future__ import annotations

import ast
import itertools

import numpy as np

from commit_env.tasks.base import EmbeddedTask, Example

__all__ = ["LinearFunctionCode"]

_TEST_POINTS = ((0, 0), (1, 2), (2, -1), (-3, 5), (7, 4))


def _term_forms(coef: int, var: str) -> tuple[str, str]:
    return (f"{coef}*{var}", f"{var}*{coef}")


class LinearFunctionCode(EmbeddedTask):
    """Return an expression computing ``a*x+b`` (``easy``) or ``a*x+c*y+b`` (``hard``).

    Score is 1.0 when the program ``def f(x[, y]): return <completion>`` returns the right value
    on every test input inside the sandbox, else 0.0.
    """

    name = "code"
    default_gen_length = 16

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

    def program(self, example: Example, completion: str) -> str:
        """The test program that the sandbox runs for ``completion``."""
        coefs, bias = example.meta["coefs"], example.meta["bias"]
        args = ", ".join(self.variables)
        lines = [f"def f({args}):", f"    return {completion.strip()}", ""]
        for x, y in _TEST_POINTS:
            values = {"x": x, "y": y}
            call = ", ".join(str(values[v]) for v in self.variables)
            expected = sum(c * values[v] for c, v in zip(coefs, self.variables, strict=True)) + bias
            lines.append(f"assert f({call}) == {expected}")
        return "\n".join(lines) + "\n"

    def score(self, example: Example, completion: str) -> float:
        """Return 1.0 if the completion passes every test in the sandbox, else 0.0."""
        expression = completion.strip()
        if not expression or "\n" in expression:
            return 0.0
        program = self.program(example, expression)
        try:
            ast.parse(program)  # parsing never executes code; skip the subprocess on syntax errors
        except (SyntaxError, ValueError):
            return 0.0
        from commit_env.tasks.sandbox import run_sandboxed

        return float(run_sandboxed(program, timeout=5.0).passed)
