"""The notebooks in guides/ run top to bottom (seconds-long settings, PROBGEN_SMOKE=1),
are stored without outputs, and compute what their text says."""

import json
import math

import matplotlib
import pytest

from tests.conftest import ROOT

GUIDES = sorted((ROOT / "guides").glob("*.ipynb"))


def run_notebook(path, tmp_path, monkeypatch):
    cells = json.loads(path.read_text())["cells"]
    monkeypatch.setenv("PROBGEN_SMOKE", "1")
    monkeypatch.chdir(tmp_path)
    matplotlib.use("Agg")
    scope = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            code = "".join(cell["source"])
            exec(compile(code, f"{path.name}, cell {i}", "exec"), scope)
    import matplotlib.pyplot as plt

    plt.close("all")
    return scope


def test_there_are_guides():
    assert {p.name for p in GUIDES} >= {"autoencoders.ipynb", "flows.ipynb"}


@pytest.mark.parametrize("path", GUIDES, ids=lambda p: p.name)
def test_guide_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


def test_autoencoders_guide(tmp_path, monkeypatch):
    ns = run_notebook(ROOT / "guides" / "autoencoders.ipynb", tmp_path, monkeypatch)
    assert ns["prior_inside"] == pytest.approx(1 - math.exp(-2), abs=1e-6)
    assert set(ns["inside"]) == {"autoencoder", "VAE"}
    report = ns["report"]
    assert 0 < report["iw_nll"] <= report["neg_elbo"] + 1.0 < 600
    assert len(report["kl_per_dim"]) == 2 and 0 <= report["active_units"] <= 2
    assert tuple(ns["posterior"]["z"].shape) == (5, 8, 2)
    assert tuple(ns["prior"]["mean"].shape) == (1, 16, 784)  # the site holds flat images


def test_flows_guide(tmp_path, monkeypatch):
    ns = run_notebook(ROOT / "guides" / "flows.ipynb", tmp_path, monkeypatch)
    assert math.isfinite(ns["nll"]) and math.isfinite(ns["gauss_nll"])
    assert 0.9 < ns["mass"] < 1.05
    import torch

    torch.testing.assert_close(ns["site_log_prob"], ns["flow"].log_prob(ns["test_x"][:5]))
    assert 0.5 < ns["bpd"] < 8.0


def test_gans_guide(tmp_path, monkeypatch):
    import torch

    from probgen.metrics import quality

    ns = run_notebook(ROOT / "guides" / "gans.ipynb", tmp_path, monkeypatch)
    n = ns["N"]
    # the GAN is a Pyro model: a latent sample site and the images as a deterministic site
    assert tuple(ns["trace"].nodes["z"]["value"].shape) == (4, ns["gan"].z_dim)
    assert ns["trace"].nodes["x"]["infer"].get("_deterministic") is True
    assert tuple(ns["draws"]["x"].shape) == (1, 8, 1, 28, 28)
    # the FID curve: one entry per epoch, the last the model's own FID on the same noise
    assert len(ns["fid_curve"]) == ns["EPOCHS"]
    assert ns["fid_curve"][-1] == pytest.approx(ns["fid_of"](ns["gan"]), rel=1e-6)
    # the printed scores are those of the samples shown; training images score near zero
    assert ns["scores"]["fid"] == pytest.approx(
        quality.fid(ns["samples"], ns["reference"]), rel=1e-6
    )
    assert ns["real"]["fid"] < 0.2 * ns["scores"]["fid"]
    # the conditional samples: N / 10 of each asked digit, the agreement the classifier's
    assert torch.equal(torch.bincount(ns["asked"].cpu()), torch.full((10,), n // 10))
    shown = ns["classifier"](ns["conditional"]).argmax(-1)
    assert ns["agreement"] == pytest.approx(float((shown == ns["asked"]).float().mean()))
