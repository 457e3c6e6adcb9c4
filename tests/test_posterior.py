"""Posterior inspection: flow guides (densities against autograd Jacobians, every objective),
NUTS on latents, the inference gaps on probabilistic PCA."""

import math

import pyro
import pytest
import torch

import probgen
from probgen.data import TensorData
from probgen.errors import ConfigError
from probgen.infer.guides import GUIDE_FLOWS, AmortizedFlow
from probgen.models.vae import VAE
from probgen.train import load, save_model
from tests.conftest import QUIET

FLOWS = GUIDE_FLOWS.names()


def binary_batch(n=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).to(dtype)


def tiny_flow_vae(kind, z_dim=3, depth=2, **kw):
    return VAE(z_dim=z_dim, hidden=(16,), guide_flow=kind, guide_flow_depth=depth, **kw)


def test_every_flow_family_is_registered():
    assert set(FLOWS) == {
        "planar",
        "iaf",
        "sylvester",
        "spline",
        "zuko:maf",
        "zuko:nsf",
        "zuko:nice",
        "zuko:realnvp",
    }


@pytest.mark.parametrize("kind", FLOWS)
def test_flow_guide_density_is_the_change_of_variables_of_its_draws(kind):
    """log q(z|x) at the guide's site equals log N(z0) - log|det dz/dz0| with the Jacobian
    of the flow taken by autograd, per image (float64, 3 latent dimensions)."""
    torch.manual_seed(1)
    vae = tiny_flow_vae(kind, depth=3).double()
    with torch.no_grad():  # move every step well away from the identity
        for p in vae.guide_flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = binary_batch(dtype=torch.float64)
    torch.manual_seed(7)
    tr = pyro.poutine.trace(vae.guide).get_trace(x)
    site = tr.nodes["z"]
    z, log_q = site["value"], site["fn"].log_prob(site["value"])
    # the same base draw, recomputed apart from the guide
    flat = x.reshape(x.shape[0], -1)
    h = vae.encoder.body(flat)
    loc, scale = vae.encoder.loc(h), vae.encoder.log_scale(h).exp()
    torch.manual_seed(7)
    z0 = torch.distributions.Normal(loc, scale).rsample()
    steps = vae.guide_flow.transforms(h)

    def push(u):
        for t in steps:
            u = t(u)
        return u

    torch.testing.assert_close(push(z0), z)
    for i in range(x.shape[0]):

        def one(u, i=i):
            full = z0.detach().clone()
            full[i] = u
            return push(full)[i]

        jac = torch.autograd.functional.jacobian(one, z0[i].detach())
        expected = (
            torch.distributions.Normal(loc[i], scale[i]).log_prob(z0[i]).sum()
            - torch.linalg.slogdet(jac).logabsdet
        )
        torch.testing.assert_close(log_q[i], expected, rtol=1e-9, atol=1e-9)
    # an invertible flow also scores codes it did not draw (a fresh distribution, no cache)
    if kind in ("iaf", "spline") or kind.startswith("zuko:"):
        fresh = vae.posterior(x)
        torch.testing.assert_close(fresh.log_prob(z.detach().clone()), log_q)


@pytest.mark.parametrize("kind", FLOWS)
def test_flow_guides_broadcast_over_particles(kind):
    """k draws per image in one pass (IWAE's vectorized particles, the IS NLL's particle
    plate) have the same densities as the images scored one draw at a time."""
    torch.manual_seed(0)
    vae = tiny_flow_vae(kind)
    x = binary_batch()
    h = vae.encoder.body(x.reshape(5, -1))
    loc, scale = vae.encoder.loc(h), vae.encoder.log_scale(h).exp()
    q = vae.guide_flow.distribution(loc, scale, h).expand([4, 5])
    z = q.rsample()
    assert z.shape == (4, 5, 3) and q.log_prob(z).shape == (4, 5)
    base = torch.distributions.Normal(loc, scale)
    torch.manual_seed(3)
    z0 = base.rsample((4,))
    torch.manual_seed(3)
    z = q.rsample()
    for j in range(4):
        one = vae.guide_flow.distribution(loc, scale, h)
        y = z0[j]
        # Pyro's flows through the distribution's own transforms (planar and Sylvester
        # score only what those transforms drew); a zuko guide scores any code
        steps = getattr(one, "transforms", None) or vae.guide_flow.transforms(h)
        for t in steps:
            y = t(y)
        torch.testing.assert_close(y, z[j])
        torch.testing.assert_close(one.log_prob(y), q.log_prob(z)[j], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "objective,particles", [("trace", 1), ("meanfield", 1), ("iwae", 4), ("jit", 1), ("trace", 3)]
)
@pytest.mark.parametrize("kind", FLOWS)
def test_flow_guides_train_with_every_objective(kind, objective, particles):
    x = binary_batch(16)
    torch.manual_seed(0)
    vae = tiny_flow_vae(kind)
    before = {n: p.detach().clone() for n, p in vae.guide_flow.named_parameters()}
    res = probgen.fit(
        vae,
        TensorData(x),
        epochs=2,
        batch_size=8,
        lr=1e-2,
        objective=objective,
        num_particles=particles,
        device="cpu",
        **QUIET,
    )
    assert all(math.isfinite(v) for v in res.train_loss)
    moved = [n for n, p in vae.guide_flow.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)  # every flow parameter is trained


def test_flow_guide_learns_and_metrics_work(mnist_small):
    from probgen.data import static_binarize
    from probgen.metrics.likelihood import elbo_and_iw_nll

    data = {k: TensorData(static_binarize(v.tensors[0])) for k, v in mnist_small.items()}
    torch.manual_seed(0)
    vae = VAE(z_dim=4, hidden=(64,), guide_flow="iaf")
    res = probgen.fit(
        vae, data["train"], data["val"], epochs=3, lr=3e-3, batch_size=64, device="cpu", **QUIET
    )
    assert res.train_loss[-1] < res.train_loss[0]
    m = elbo_and_iw_nll(
        vae.model, vae.guide, data["test"].subset(slice(0, 32)), elbo_particles=5, iw_samples=20
    )
    assert 0 < m["iw_nll"] <= m["neg_elbo"] + 1.0


@pytest.mark.parametrize("kind", FLOWS)
def test_flow_vae_round_trips_through_a_checkpoint(kind, tmp_path):
    torch.manual_seed(0)
    small = {"sylvester": {"householder": 2}}.get(
        kind, {"hidden_features": [12]} if kind.startswith("zuko:") else {"hidden": [12]}
    )
    vae = tiny_flow_vae(kind, guide_flow_kwargs=small)
    save_model(vae, tmp_path / "m.pt")
    torch.manual_seed(5)  # a different draw of every weight: the checkpoint must decide
    other = load(tmp_path / "m.pt")
    assert other.settings == vae.settings and other.guide_flow.kind == kind
    x = binary_batch()
    torch.manual_seed(2)
    a = pyro.poutine.trace(vae.guide).get_trace(x).nodes["z"]
    torch.manual_seed(2)
    b = pyro.poutine.trace(other.guide).get_trace(x).nodes["z"]
    torch.testing.assert_close(a["value"], b["value"])
    torch.testing.assert_close(a["fn"].log_prob(a["value"]), b["fn"].log_prob(b["value"]))
    assert other.reconstruct(x).shape == x.shape


def test_plain_vae_settings_are_unchanged():
    settings = VAE(z_dim=3, hidden=(8,)).settings
    assert "guide_flow" not in settings and "prior_flow" not in settings


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(guide_flow="maf"), "guide_flow must be None or one of"),
        (dict(guide_flow="iaf", guide_flow_depth=0), "guide_flow_depth"),
        (dict(guide_flow="iaf", encoder="delta"), "needs encoder='gaussian'"),
        (dict(guide_flow="iaf", guide_flow_kwargs={"hidden": [2]}), "at least as wide as z_dim"),
        (dict(guide_flow="planar", guide_flow_kwargs={"bins": 3}), "do not fit the 'planar' flow"),
        (dict(guide_flow="sylvester", guide_flow_kwargs={"householder": 0}), "householder"),
    ],
)
def test_bad_flow_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        VAE(z_dim=3, hidden=(8,), **kwargs)
    assert "\n" not in str(err.value)


def test_sylvester_step_is_invertible_where_the_diagonal_allows():
    """1 + tanh'(a) R_ii R~_ii > 0 for any context: the log-determinant is finite even for
    extreme parameters."""
    flow = AmortizedFlow("sylvester", z_dim=4, context_dim=3, depth=1)
    with torch.no_grad():
        flow.steps[0].net.weight.mul_(1000)
    q = flow.distribution(torch.zeros(6, 4), torch.ones(6, 4), 10 * torch.randn(6, 3))
    z = q.rsample()
    assert torch.isfinite(q.log_prob(z)).all()


# -- NUTS ------------------------------------------------------------------------------------


def test_nuts_recovers_a_known_posterior():
    """Conjugate normal model: mu ~ N(0, 2^2), y_i ~ N(mu, 1) -> N(m, v) in closed form;
    a correlated 2-D Gaussian beside it. Means within 5 Monte Carlo standard errors,
    variances within 25%, R-hat below 1.05."""
    from probgen.infer.mcmc import run_nuts
    from probgen.inspect import arviz, from_mcmc

    g = torch.Generator().manual_seed(0)
    y = 1.5 + torch.randn(10, generator=g)
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]])

    def model(y):
        mu = pyro.sample("mu", pyro.distributions.Normal(0.0, 2.0))
        pyro.sample("w", pyro.distributions.MultivariateNormal(torch.tensor([1.0, -1.0]), cov))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", pyro.distributions.Normal(mu, 1.0), obs=y)

    v = 1.0 / (1 / 4 + 10)
    m = v * y.sum()
    torch.manual_seed(0)
    chains = run_nuts(model, y, num_chains=2, num_samples=200, warmup_steps=150, jit_compile=True)
    az = arviz()
    idata = from_mcmc(chains)
    summary = az.summary(idata, var_names=["mu", "w"])
    assert (summary["r_hat"] < 1.05).all()
    mu = chains.samples["mu"]
    assert mu.shape == (2, 200)
    ess = float(summary.loc["mu", "ess_bulk"])
    assert abs(mu.mean() - m) < 5 * math.sqrt(v / ess)
    assert mu.var() == pytest.approx(v, rel=0.25)
    w = chains.get_samples()["w"]
    assert w.shape == (400, 2)
    torch.testing.assert_close(w.mean(0), torch.tensor([1.0, -1.0]), atol=0.3, rtol=0)
    torch.testing.assert_close(torch.cov(w.T), cov, atol=0.3, rtol=0)


# -- inference gaps on probabilistic PCA --------------------------------------------------


def ppca(w, mu, sigma):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(
                "z", pyro.distributions.Normal(x.new_zeros(w.shape[1]), 1.0).to_event(1)
            )
            pyro.sample("x", pyro.distributions.Normal(z @ w.T + mu, sigma).to_event(1), obs=x)

    def exact(x):
        d = w.shape[1]
        marginal = torch.distributions.MultivariateNormal(
            mu, w @ w.T + sigma**2 * torch.eye(w.shape[0], dtype=w.dtype)
        )
        m = w.T @ w + sigma**2 * torch.eye(d, dtype=w.dtype)
        post_cov = sigma**2 * torch.linalg.inv(m)
        post_mean = (x - mu) @ w @ torch.linalg.inv(m).T
        return marginal.log_prob(x), post_mean, post_cov

    return model, exact


def ppca_data(w, mu, sigma, n=6):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(n, w.shape[1], generator=g, dtype=w.dtype)
    return z @ w.T + mu + sigma * torch.randn(n, w.shape[0], generator=g, dtype=w.dtype)


def diag_family(loc, log_scale):
    return pyro.distributions.Normal(loc, log_scale.exp()).to_event(1)


def test_ppca_optimised_gaussian_guide_reaches_log_px_exactly():
    """Orthogonal columns of W make p(z|x) a diagonal Gaussian: the per-image optimised
    diagonal guide is the exact posterior, its ELBO equals log p(x), and the IS estimate
    of log p(x) equals the closed form."""
    from probgen.metrics.gaps import LocalGuide, inference_gaps, optimise_local_guide

    torch.manual_seed(0)
    q_, _ = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64))
    w = q_ * torch.tensor([2.0, 0.7], dtype=torch.float64)
    mu, sigma = torch.linspace(-1, 1, 5, dtype=torch.float64), 0.5
    model, exact = ppca(w, mu, sigma)
    x = ppca_data(w, mu, sigma)
    log_px, post_mean, post_cov = exact(x)
    assert torch.allclose(post_cov, torch.diag(torch.diagonal(post_cov)), atol=1e-12)
    zeros = torch.zeros(6, 2, dtype=torch.float64)
    local = LocalGuide("z", diag_family, {"loc": zeros, "log_scale": zeros}, stick_the_landing=True)
    history = optimise_local_guide(model, local, x, steps=600, lr=0.05, num_particles=4)
    assert history[-1] < history[0]
    torch.testing.assert_close(local.params["loc"], post_mean, atol=2e-3, rtol=0)
    torch.testing.assert_close(
        local.params["log_scale"].exp(),
        torch.diagonal(post_cov).sqrt().expand(6, 2),
        atol=2e-3,
        rtol=0,
    )
    # a stand-in for an encoder: off by 0.3 in the mean, 1.3 times too wide
    std = torch.diagonal(post_cov).sqrt().expand(6, 2)
    off = {"loc": post_mean + 0.3, "log_scale": (1.3 * std).log()}
    amortized = LocalGuide("z", diag_family, off)
    gaps = inference_gaps(
        model, amortized, local, x, elbo_particles=20000, iw_samples=20000, chunk=5000
    )
    torch.testing.assert_close(gaps["elbo_local"], log_px, atol=1e-3, rtol=0)
    torch.testing.assert_close(gaps["log_px_local"], log_px, atol=1e-3, rtol=0)
    # q* = p(z|x): every weight is p(x), the effective sample size is all draws, and the
    # estimate from q* is the one kept
    torch.testing.assert_close(
        gaps["ess_local"], torch.full_like(log_px, 20000.0), rtol=1e-6, atol=0
    )
    assert (gaps["ess_amortized"] < 0.9 * 20000).all()
    torch.testing.assert_close(gaps["log_px"], log_px, atol=1e-3, rtol=0)
    assert (gaps["approximation_gap"].abs() < 1e-3).all()
    # the amortization gap is KL(q_amortized || p(z|x)) in closed form
    post = torch.distributions.MultivariateNormal(post_mean, post_cov)
    q_a = torch.distributions.MultivariateNormal(off["loc"], torch.diag_embed(1.69 * std**2))
    kl = torch.distributions.kl_divergence(q_a, post)
    assert (kl > 0.2).all()
    torch.testing.assert_close(gaps["amortization_gap"], kl, rtol=0, atol=0.05)


def test_ppca_approximation_gap_of_a_diagonal_family_is_its_kl_in_closed_form():
    """With correlated posteriors the best diagonal Gaussian matches the posterior mean
    and the diagonal of the precision; the approximation gap is KL(q* || p(z|x))."""
    from probgen.metrics.gaps import LocalGuide, inference_gaps, optimise_local_guide

    w = torch.tensor([[1.0, 0.9], [0.8, 1.0], [0.5, -0.2], [0.1, 0.3]], dtype=torch.float64)
    mu, sigma = torch.zeros(4, dtype=torch.float64), 0.4
    model, exact = ppca(w, mu, sigma)
    x = ppca_data(w, mu, sigma, n=4)
    log_px, post_mean, post_cov = exact(x)
    precision = torch.linalg.inv(post_cov)
    q_scale = (1.0 / torch.diagonal(precision)).sqrt()
    best = torch.distributions.MultivariateNormal(post_mean, torch.diag(q_scale**2))
    kl = torch.distributions.kl_divergence(
        best, torch.distributions.MultivariateNormal(post_mean, post_cov)
    )
    assert (kl > 0.1).all()  # the family cannot reach the posterior
    zeros = torch.zeros(4, 2, dtype=torch.float64)
    local = LocalGuide("z", diag_family, {"loc": zeros, "log_scale": zeros}, stick_the_landing=True)
    optimise_local_guide(model, local, x, steps=1000, lr=0.05, num_particles=16)
    torch.testing.assert_close(local.params["loc"], post_mean, atol=0.03, rtol=0)
    torch.testing.assert_close(
        local.params["log_scale"].exp(), q_scale.expand(4, 2), atol=0.03, rtol=0
    )
    gaps = inference_gaps(
        model, local, local, x, elbo_particles=20000, iw_samples=20000, chunk=5000
    )
    torch.testing.assert_close(log_px - gaps["elbo_local"], kl, atol=0.02, rtol=0)
    # (importance sampling from this too-narrow q* has heavy-tailed weights: its log p(x)
    # estimate swings by a tenth of a nat at k = 20000, so it is not checked here)


@pytest.mark.parametrize("kind", [None, "iaf"])
def test_vae_gap_table(kind):
    from probgen.metrics.gaps import vae_gap_table

    torch.manual_seed(0)
    vae = VAE(z_dim=2, hidden=(16,), guide_flow=kind)
    x = binary_batch(3)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    rows = vae_gap_table({"q": vae}, x, steps=60, lr=0.05, elbo_particles=200, iw_samples=400)
    row = rows[0]
    assert row["images"] == 3 and row["guide"] == "q"
    assert row["approximation_gap"] > -0.5 and row["amortization_gap"] > 0
    assert row["inference_gap"] == pytest.approx(row["approximation_gap"] + row["amortization_gap"])
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in vae.parameters())


# -- the example -----------------------------------------------------------------------------


def test_posterior_example_smoke(tmp_path):
    import csv
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "posterior.py"),
            "--smoke",
            "--no-progress",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--guides",
            "diag",
            "iaf",
            "sylvester",
            "zuko:nsf",
            "--log",
            "csv",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "flows.csv") as f:
        flows = list(csv.DictReader(f))
    assert [r["guide"] for r in flows] == ["diag", "iaf", "sylvester", "zuko:nsf"]
    for r in flows:
        assert 0 < float(r["iw_nll_k16"]) <= float(r["neg_elbo"]) + 1.0
    # --log csv: one log per fit, named after its guide (zuko:nsf as zuko-nsf)
    for g in ("diag", "iaf", "sylvester", "zuko-nsf"):
        assert len((tmp_path / f"log_{g}.csv").read_text().splitlines()) == 3  # 2 epochs
    with open(tmp_path / "nuts.csv") as f:
        nuts = list(csv.DictReader(f))
    assert [r["model"] for r in nuts] == ["diag", "iaf"]
    assert all(1.0 <= float(r["max_rhat"]) < 2.0 for r in nuts)
    for g in ("diag", "iaf"):
        for i in (0, 1):
            assert (tmp_path / f"pairs_{g}_{i}.png").stat().st_size > 5000
    gaps = json.loads((tmp_path / "gaps.json").read_text())["results"]["gaps"]
    for r in gaps:
        assert r["inference_gap"] == pytest.approx(
            r["approximation_gap"] + r["amortization_gap"], abs=1e-3
        )
    # a part that needs a model no run trained is one error line
    bad = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "posterior.py"),
            "--smoke",
            "--out",
            str(tmp_path / "empty"),
            "--parts",
            "gaps",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "train the 'diag' guide first" in bad.stderr


def test_posterior_guide_notebook(tmp_path, monkeypatch):
    from tests.conftest import ROOT
    from tests.test_guides import run_notebook

    ns = run_notebook(ROOT / "guides" / "posterior.ipynb", tmp_path, monkeypatch)
    idata = ns["idata"]
    assert idata.posterior["z"].dims == ("chain", "draw", "example", "latent")
    assert set(ns["exact"]) == {"diagonal", "IAF"}
    assert ns["exact"]["IAF"].posterior["z"].shape[:2] == (2, 30)
    torch.testing.assert_close(ns["ppca_gaps"]["elbo_local"], ns["exact_log_px"], atol=1e-3, rtol=0)
    for row in ns["rows"]:
        assert row["inference_gap"] == pytest.approx(
            row["approximation_gap"] + row["amortization_gap"], abs=1e-3
        )
