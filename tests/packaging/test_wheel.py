"""The built wheel installs everything under ``commit_env``, next to a top-level ``agents``.

``openai-agents`` (and others) install a top-level package named ``agents``; commit-env's RL
code must not claim that name. The test builds the wheel from a copy of the sources, installs it
into a fresh virtual environment next to a stand-in ``agents`` package and imports both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "commit_env", "agents", "supervised", "evaluation")


def _can_build_wheels() -> bool:
    try:
        import setuptools.command.bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        try:
            import wheel  # noqa: F401
        except ImportError:
            return False
    return True


pytestmark = pytest.mark.skipif(
    not _can_build_wheels(), reason="building a wheel needs setuptools >= 70.1 or `wheel`"
)


def _run(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "-w", str(dist), str(src),
    )  # fmt: skip
    (built,) = dist.glob("commit_env-*.whl")
    return built


def test_wheel_claims_no_generic_top_level_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"commit_env"}
    for sub in ("agents", "supervised", "evaluation"):
        assert f"commit_env/{sub}/__init__.py" in names


def test_wheel_installs_next_to_a_top_level_agents_package(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    # System site packages provide torch etc.; the wheel and the stand-in go into the venv's own
    # site-packages, which come first on sys.path.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        _run(
            str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).strip()
    )
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel))
    standin = site / "agents"
    standin.mkdir()
    (standin / "__init__.py").write_text('NAME = "stand-in agents"\n')
    probe = (
        "import agents, commit_env, commit_env.agents, commit_env.supervised, "
        "commit_env.evaluation.cli as cli\n"
        "print(agents.NAME)\n"
        "print(commit_env.__file__)\n"
        "print(commit_env.agents.__file__)\n"
        "print(cli.build_parser().prog)\n"
    )
    lines = _run(str(python), "-I", "-c", probe, cwd=tmp_path).splitlines()
    assert lines[0] == "stand-in agents"
    assert Path(lines[1]).is_relative_to(site) and Path(lines[2]).is_relative_to(site)
    assert lines[3] == "commit-env"
