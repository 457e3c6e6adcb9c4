"""Every example runs with --smoke and writes what it reports."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


def test_every_example_has_a_smoke_flag():
    assert EXAMPLES
    for p in EXAMPLES:
        assert "--smoke" in p.read_text(), p.name


def run(script, *args, timeout=600):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--smoke",
                           "--no-progress", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_cvae_example_smoke(tmp_path):
    proc = run("cvae.py", "--out", str(tmp_path), "--device", "cpu")
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["", "1 quadrant", "2 quadrants", "3 quadrants"]
    names = [r[0] for r in rows[1:]]
    assert names[0] == "NN baseline NLL" and names[1].startswith("CVAE -ELBO")
    assert names[2].startswith("CVAE IS NLL") and names[3].startswith("gap")
    values = {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}
    for vals in values.values():
        assert all(math.isfinite(v) for v in vals)
    nn, elbo, nll, gap = (values[n] for n in names)
    for i in range(3):
        assert 0 < nll[i] and 0 < elbo[i] and 0 < nn[i] < 784 * math.log(2) * 1.5
        assert gap[i] == pytest.approx(nn[i] - elbo[i], abs=0.02)
    # fewer hidden pixels, smaller loss
    assert nn[0] > nn[1] > nn[2]
    for q in (1, 2, 3):
        assert (tmp_path / f"cvae_q{q}.png").stat().st_size > 1000
        assert (tmp_path / f"cvae_q{q}.pt").exists() and (tmp_path / f"baseline_q{q}.pt").exists()
    assert (tmp_path / "learning_curves.png").exists()
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["results"]["2 quadrants"]["cvae_epochs"] == 2
    assert "Pyro tutorial" in proc.stdout


def test_cvae_example_resume_and_bad_quadrant(tmp_path):
    run("cvae.py", "--out", str(tmp_path), "--quadrants", "3", "--device", "cpu")
    proc = run("cvae.py", "--out", str(tmp_path), "--quadrants", "3", "--device", "cpu",
               "--resume")
    assert "epoch" not in proc.stdout.split("CVAE ==")[1].split("evaluation")[0]  # nothing left to train
    bad = subprocess.run([sys.executable, str(ROOT / "examples" / "cvae.py"), "--smoke",
                          "--quadrants", "4"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "1..3" in bad.stderr
