"""The README's "Where things live" map names every module of the package."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("commit_env", "agents", "supervised", "evaluation")


def _map_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]


def _named_modules() -> set[str]:
    named = set()
    for cell in _map_rows():
        paths = re.findall(r"`([^`]+)`", cell)
        folder = ""
        for p in paths:
            if "/" in p:
                folder = p.rsplit("/", 1)[0]
                named.add(p.rstrip("/"))
            elif folder:
                named.add(f"{folder}/{p}")  # `a/b.py`, `c.py`: c.py lives beside b.py
    return named


def test_every_module_is_on_the_map():
    named = _named_modules()
    modules = {
        str(p.relative_to(ROOT))
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if p.name != "__init__.py" or p.parent == ROOT / "commit_env"
    }
    missing = sorted(m for m in modules if m not in named)
    assert not missing, f"README 'Where things live' lacks: {missing}"


def test_every_mapped_path_exists():
    gone = sorted(p for p in _named_modules() if not (ROOT / p).exists())
    assert not gone, f"README 'Where things live' names missing paths: {gone}"
