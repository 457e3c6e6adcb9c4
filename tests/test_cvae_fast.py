"""The CVAE's fast paths compute what the plain ones do, and the example records its phases."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from probgen.data import quadrant_task
from probgen.errors import DataError
from probgen.metrics import iw_nll, log_importance_weights, negative_elbo
from probgen.metrics.likelihood import elbo_and_iw_nll
from probgen.models import CVAE, Baseline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cvae_and_task(mnist_small):
    task = {k: quadrant_task(v.subset(slice(0, 64)), 2) for k, v in mnist_small.items()}
    torch.manual_seed(0)
    return CVAE(Baseline(hidden=(32,)), z_dim=4, hidden=(32,)), task


def test_completions_once_give_the_same_bound_as_the_baseline_in_every_step(cvae_and_task):
    cvae, task = cvae_and_task
    cached = cvae.with_completions(task["train"], batch_size=24)  # batches of 24, 24, 16
    inputs, targets, completed = cached.all()
    assert completed.shape == (64, 784) and cached.names[2] == "completed"
    ref_inputs, ref_targets = task["train"].all()
    assert torch.equal(inputs, ref_inputs) and torch.equal(targets, ref_targets)
    hidden = inputs.reshape(64, -1) == -1
    assert torch.equal(completed[~hidden], inputs.reshape(64, -1)[~hidden])  # visible kept
    assert ((completed[hidden] > 0) & (completed[hidden] < 1)).all()  # baseline's guess
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    values = []
    for args in ((inputs, targets), (inputs, targets, completed)):
        torch.manual_seed(1)
        values.append(elbo.differentiable_loss(cvae.model, cvae.guide, *args).item())
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    # predictions from the prior network take the cached completion too
    draws = []
    for args in ((inputs[:5],), (inputs[:5], None, completed[:5])):
        torch.manual_seed(2)
        with pyro.poutine.trace() as tr:
            cvae.guide(*args)
        draws.append(tr.trace.nodes["z"]["value"])
    assert draws[0].shape == (5, 4) and torch.allclose(draws[0], draws[1])


def test_completions_of_another_shape_are_refused(cvae_and_task):
    cvae, task = cvae_and_task
    inputs, targets = task["train"].all()
    with pytest.raises(DataError, match="with_completions"):
        cvae.model(inputs, targets, torch.zeros(64, 783))


def test_cvae_weights_with_a_particle_plate_equal_repeated_arguments(cvae_and_task):
    cvae, task = cvae_and_task
    batch = cvae.with_completions(task["test"]).all()
    out = []
    for vectorize in (True, False):
        torch.manual_seed(3)
        out.append(
            log_importance_weights(
                cvae.model, cvae.guide, *batch, num_particles=5, vectorize=vectorize
            )
        )
    assert out[0].shape == (5, 64)
    assert torch.allclose(out[0], out[1], rtol=1e-5, atol=1e-4)


def test_one_pass_evaluation_agrees_with_the_separate_estimates(cvae_and_task):
    cvae, task = cvae_and_task
    data = cvae.with_completions(task["test"])
    torch.manual_seed(4)
    both = elbo_and_iw_nll(
        cvae.model, cvae.guide, data, elbo_particles=6, iw_samples=6, batch_size=32
    )
    torch.manual_seed(4)
    elbo = negative_elbo(cvae.model, cvae.guide, data, num_particles=6, batch_size=32)
    torch.manual_seed(4)
    nll = iw_nll(cvae.model, cvae.guide, data, num_samples=6, batch_size=32, chunk_size=6)
    assert both["neg_elbo"] == pytest.approx(elbo, rel=1e-6)
    assert both["iw_nll"] == pytest.approx(nll, rel=1e-6)
    assert both["iw_nll"] < both["neg_elbo"]
    # and Pyro's own Trace_ELBO estimates the same bound (another draw, close by)
    torch.manual_seed(5)
    pyro_elbo = Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1)
    ref = pyro_elbo.differentiable_loss(cvae.model, cvae.guide, *data.all()).item() / 64
    assert both["neg_elbo"] == pytest.approx(ref, rel=0.02)


def run_example(tmp_path, *flags):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "cvae.py"),
            "--smoke",
            "--no-progress",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
            *flags,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_example_records_phases_and_a_seed_reproduces_the_run(tmp_path):
    run_example(tmp_path / "a", "--quadrants", "3", "--seed", "1")
    run_example(tmp_path / "b", "--quadrants", "3", "--seed", "1")
    rows = [read_csv(tmp_path / d / "results.csv") for d in ("a", "b")]
    assert rows[0] == rows[1]
    rec = json.loads((tmp_path / "a" / "results.json").read_text())
    res = rec["results"]["3 quadrants"]
    assert set(res["seconds"]) == {"baseline", "completions", "cvae", "evaluation", "figure"}
    assert all(v >= 0 for v in res["seconds"].values())
    assert rec["args"]["lr_schedule"] == "warmup_cosine" and rec["args"]["objective"] == "meanfield"


def test_example_takes_pyro_settings_and_refuses_bad_counts(tmp_path):
    proc = run_example(
        tmp_path,
        "--quadrants",
        "2",
        "--epochs",
        "50",
        "--patience",
        "3",
        "--lr-schedule",
        "none",
        "--objective",
        "trace",
    )
    assert "Pyro tutorial" in proc.stdout
    bad = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "cvae.py"),
            "--smoke",
            "--out",
            str(tmp_path),
            "--iw-samples",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "--iw-samples must be at least 1" in bad.stderr


def test_likelihood_of_the_hidden_pixels_only_equals_the_masked_one(cvae_and_task):
    """A batch that hides the same pixels everywhere takes the short path (logits of those
    pixels only); one whose masks differ takes the masked full output. Same number."""
    import torch.nn.functional as F

    cvae, task = cvae_and_task
    inputs, targets = task["train"].all()
    x, t = inputs.reshape(64, -1), targets.reshape(64, -1)
    torch.manual_seed(6)
    z = torch.randn(64, 4)
    with pyro.poutine.trace() as tr, pyro.poutine.condition(data={"z": z}):
        cvae.model(inputs, targets)
    short = tr.trace.nodes["y"]
    assert short["value"].shape == (64, 392)  # 2 quadrants hidden
    by_hand = -(
        F.binary_cross_entropy_with_logits(cvae.generation_net(z), t, reduction="none") * (x == -1)
    ).sum(1)
    assert torch.allclose(short["fn"].log_prob(short["value"]), by_hand, atol=1e-4)
    # another mask in one row: the masked path, same values for the other rows
    mixed = inputs.clone()
    mixed[0].reshape(-1)[:10] = -1
    with pyro.poutine.trace() as tr, pyro.poutine.condition(data={"z": z}):
        cvae.model(mixed, targets)
    full = tr.trace.nodes["y"]
    lp = full["fn"].log_prob(full["value"])
    assert full["value"].shape == (64, 784)
    assert torch.allclose(lp[1:], by_hand[1:], atol=1e-4) and lp[0] < by_hand[0]
