"""No function outside the tests is longer than 60 code lines without a stated reason.

Code lines are the non-blank lines of a function's body after its docstring that are not
``#`` comments (nested functions count towards the function that holds them). A function may
exceed :data:`MAX_CODE_LINES` only when its docstring says why on a line of its own that starts
with ``Long:``, for example::

    def _empty_state(...):
        \"\"\"The state before the first forward.

        Long: it names every TraceState field once (one line each).
        \"\"\"

Otherwise split it into helpers that each do one job.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("commit_env", "agents", "supervised", "evaluation", "benchmarks")
MAX_CODE_LINES = 60
REASON_PREFIX = "Long:"

Function = ast.FunctionDef | ast.AsyncFunctionDef


def code_lines(function: Function, source_lines: list[str]) -> int:
    """Non-blank, non-comment lines of ``function``'s body after its docstring."""
    body = function.body
    if ast.get_docstring(function) is not None:
        body = body[1:]
    if not body:
        return 0
    lines = source_lines[body[0].lineno - 1 : function.end_lineno]
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def has_reason(function: Function) -> bool:
    """Whether the docstring has a line starting with ``Long:``."""
    docstring = ast.get_docstring(function) or ""
    return any(line.startswith(REASON_PREFIX) for line in docstring.splitlines())


def long_functions(source: str) -> list[tuple[int, str, int]]:
    """``(line, qualified name, code lines)`` of each over-long function without a reason."""
    source_lines = source.splitlines()
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(child, prefix)
                continue
            qualname = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                n = code_lines(child, source_lines)
                if n > MAX_CODE_LINES and not has_reason(child):
                    found.append((child.lineno, qualname, n))
            visit(child, f"{qualname}.")

    visit(ast.parse(source), "")
    return found


def _function(name: str, docstring: str, body_lines: int, indent: str = "") -> str:
    statements = "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}():\n{docstring}{indent}    # a comment\n\n{statements}"


def test_counting_skips_docstring_comments_and_blank_lines_and_honours_long():
    doc = '    """Doc.\n\n    More doc.\n    """\n'
    reason = '    """Doc.\n\n    Long: a reason.\n    """\n'
    source = (
        _function("at_limit", doc, MAX_CODE_LINES)
        + _function("over", doc, MAX_CODE_LINES + 1)
        + _function("excused", reason, MAX_CODE_LINES + 1)
        + "class A:\n"
        + "    def method(self):\n"
        + _function("inner", "", MAX_CODE_LINES + 1, indent="        ")
    )
    found = [(name, n) for _, name, n in long_functions(source)]
    assert found == [
        ("over", MAX_CODE_LINES + 1),
        ("A.method", MAX_CODE_LINES + 2),  # a nested function counts towards its holder
        ("A.method.inner", MAX_CODE_LINES + 1),
    ]


def test_no_function_is_long_without_a_reason():
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            for line, name, n in long_functions(path.read_text(encoding="utf-8")):
                offenders.append(f"{relative}:{line} {name} ({n} code lines)")
    assert not offenders, (
        f"functions over {MAX_CODE_LINES} code lines without a '{REASON_PREFIX}' line in their "
        "docstring (split them, or say why they are long):\n" + "\n".join(offenders)
    )
