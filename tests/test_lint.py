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


@pytest.mark.parametrize(
    "args",
    [("check", "--output-format", "concise", "."), ("format", "--check", ".")],
    ids=["lint", "format"],
)
def test_ruff_is_clean(args):
    run = ruff(*args)
    assert run.returncode == 0, f"ruff {' '.join(args)}:\n{run.stdout}{run.stderr}"


def test_ruff_sees_a_violation(tmp_path):
    """The check reads the project's settings and fails on a bad file (an unused import, a
    line left unformatted)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = {  'a':1}\n")
    config = ["--config", str(ROOT / "pyproject.toml")]
    assert "F401" in ruff("check", *config, "--no-cache", str(bad)).stdout
    assert ruff("format", *config, "--check", "--no-cache", str(bad)).returncode == 1
