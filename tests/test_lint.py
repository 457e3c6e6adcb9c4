"""The tree stays as ruff's settings in pyproject.toml want it: lint-clean everywhere, and
formatted everywhere but examples/ (see [tool.ruff.format] for why)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def tracked_sources() -> list[str]:
    """The Python files and notebooks git tracks (a file being written and not yet added
    is no one's to judge); the whole folder where git is not at hand."""
    try:
        run = subprocess.run(
            ["git", "ls-files", "*.py", "*.ipynb"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return ["."]
    return run.stdout.split() or ["."]


@pytest.mark.parametrize(
    "args", [("check", "--output-format", "concise"), ("format", "--check")], ids=["lint", "format"]
)
def test_ruff_is_clean(args):
    # --force-exclude: the files are named one by one, and the settings' exclusions
    # (examples/ from the formatter) still hold
    run = ruff(*args, "--force-exclude", *tracked_sources())
    assert run.returncode == 0, f"ruff {' '.join(args)}:\n{run.stdout}{run.stderr}"


def test_ruff_sees_a_violation(tmp_path):
    """The check reads the project's settings (a rule only they select: py310 annotations,
    UP045) and fails on a bad file (an unused import, a line left unformatted)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom typing import Optional\n\nx: Optional[int] = {  'a':1}\n")
    config = ["--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    found = ruff("check", *config, str(bad)).stdout
    assert "F401" in found and "UP045" in found
    assert ruff("format", *config, "--check", str(bad)).returncode == 1
