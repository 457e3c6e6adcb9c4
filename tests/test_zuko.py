"""zuko's flows in probgen (probgen.flows.zuko_bridge): as a VAE's guide, as its prior and
as a FlowModel, checked against zuko's own distributions, closed forms on a linear-Gaussian
model, a grid integral and the logit map's Jacobian; Predictive; probgen.load and
save_pretrained/from_pretrained round trips; models without zuko installed."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.contrib.zuko import ZukoToPyro
from pyro.infer import Predictive, Trace_ELBO
from torch import nn

import probgen
from probgen.data import TensorData
from probgen.errors import ConfigError
from probgen.flows.zuko_bridge import ZUKO_FLOWS, ZukoDensity, ZukoDistribution, zuko_flow
from probgen.infer.guides import AmortizedFlow
from probgen.metrics import iw_log_likelihood
from probgen.models.flow import FlowModel
from probgen.models.registry import from_pretrained
from probgen.models.vae import VAE
from probgen.train import load, save_model
from tests.conftest import QUIET, ROOT
from tests.test_pretrained import no_pickle  # noqa: F401  (a fixture)

zuko = pytest.importorskip("zuko")


def binary_batch(n=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).to(dtype)


def _shake(module, scale=0.3, seed=1):
    """Move every parameter well away from its initial value (non-trivial checks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def zuko_vae(**kw):
    torch.manual_seed(0)
    return VAE(z_dim=3, hidden=(16,), **kw).double()


# -- the guide ---------------------------------------------------------------------------


@pytest.mark.parametrize("inverse", [True, False])
@pytest.mark.parametrize("name", ["zuko:nsf", "zuko:realnvp"])
def test_zuko_guide_scores_its_draws_as_zukos_own_flow_on_the_encoder_context(name, inverse):
    """The guide's site is Pyro's ZukoToPyro over zuko's flow conditioned on the encoder's
    features h(x). With the encoder's Gaussian set to N(0, I) the guide is exactly zuko's
    flow: its draws' densities (remembered from the draw, the sampling pass) equal what
    zuko's own distribution computes for them on the same context (the density pass):
    ``flow(h)`` for inverse=False, zuko's ``Flow(flow.transform.inv, flow.base)(h)`` (its
    inverted flow) for inverse=True."""
    vae = zuko_vae(
        guide_flow=name,
        guide_flow_depth=2,
        guide_flow_kwargs={"hidden_features": [16], "inverse": inverse},
    )
    _shake(vae.guide_flow)
    with torch.no_grad():  # the encoder's Gaussian becomes N(0, I): q is zuko's flow itself
        for head in (vae.encoder.loc, vae.encoder.log_scale):
            head.weight.zero_()
            head.bias.zero_()
    x = binary_batch()
    tr = pyro.poutine.trace(vae.guide).get_trace(x)
    site = tr.nodes["z"]
    assert isinstance(site["fn"], ZukoToPyro)
    z = site["value"]
    log_q = site["fn"].log_prob(z)
    h = vae.encoder.body(x.reshape(5, -1))
    flow = vae.guide_flow.steps[0].flow
    reference = (zuko.flows.Flow(flow.transform.inv, flow.base) if inverse else flow)(h)
    assert z.shape == (5, 3) and log_q.shape == (5,)
    torch.testing.assert_close(log_q, reference.log_prob(z.detach().clone()), rtol=1e-9, atol=1e-9)
    # the context matters: another image's features give other densities
    other = reference.log_prob(z.detach().clone().flip(0))
    assert not torch.allclose(other, log_q.flip(0), atol=1e-3)


def test_zuko_guide_with_the_encoders_gaussian_is_zukos_flow_with_that_base():
    vae = zuko_vae(guide_flow="zuko:maf", guide_flow_kwargs={"hidden_features": [16]})
    _shake(vae)
    x = binary_batch()
    torch.manual_seed(3)
    tr = pyro.poutine.trace(vae.guide).get_trace(x)
    z, log_q = tr.nodes["z"]["value"], tr.nodes["z"]["fn"].log_prob(tr.nodes["z"]["value"])
    h = vae.encoder.body(x.reshape(5, -1))
    loc, scale = vae.encoder.loc(h), vae.encoder.log_scale(h).exp()
    base = zuko.distributions.DiagNormal(loc, scale)
    reference = zuko.distributions.NormalizingFlow(
        vae.guide_flow.steps[0].flow.transform(h).inv, base
    )
    torch.testing.assert_close(log_q, reference.log_prob(z.detach().clone()), rtol=1e-9, atol=1e-9)
    # the draw is the base draw pushed through zuko's transform (IAF direction)
    torch.manual_seed(3)
    z0 = torch.distributions.Normal(loc, scale).rsample()
    torch.testing.assert_close(z, vae.guide_flow.steps[0].flow.transform(h)(z0))


# -- a linear-Gaussian model: log p(x) in closed form ---------------------------------------

W = torch.tensor([[1.0, 0.9], [0.8, 1.0], [0.5, -0.2], [0.1, 0.3]], dtype=torch.float64)
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
SIGMA = 0.4


def ppca_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + MU, SIGMA).to_event(1), obs=x)


def ppca_exact(x):
    """log p(x), and the KL of the best diagonal Gaussian from p(z|x) (per point, equal for
    every x: the posterior covariance does not depend on x)."""
    log_px = dist.MultivariateNormal(MU, W @ W.T + SIGMA**2 * torch.eye(4, dtype=W.dtype)).log_prob(
        x
    )
    post_cov = SIGMA**2 * torch.linalg.inv(W.T @ W + SIGMA**2 * torch.eye(2, dtype=W.dtype))
    precision = torch.linalg.inv(post_cov)
    # KL(N(m, diag(1/P_ii)) || N(m, C)) = 0.5 (log det C + sum log P_ii)
    kl_diag = 0.5 * (torch.logdet(post_cov) + torch.log(torch.diagonal(precision)).sum())
    return log_px, float(kl_diag)


class LinearGuide(nn.Module):
    """q(z|x) = N(A x + b, s) (amortized), optionally through a zuko flow with context x."""

    def __init__(self, flow=None):
        super().__init__()
        self.loc = nn.Linear(4, 2).double()
        self.log_scale = nn.Parameter(torch.full((2,), -1.0, dtype=torch.float64))
        self.flow = (
            None
            if flow is None
            else AmortizedFlow(flow, 2, 4, depth=2, hidden_features=[16]).double()
        )

    def __call__(self, x):
        loc, scale = self.loc(x), self.log_scale.exp().expand(x.shape[0], 2)
        with pyro.plate("data", x.shape[0]):
            q = (
                dist.Normal(loc, scale).to_event(1)
                if self.flow is None
                else self.flow.distribution(loc, scale, x)
            )
            return pyro.sample("z", q)


def _elbo_per_point(guide, x, particles=4000):
    with torch.no_grad():
        tr = Trace_ELBO(num_particles=particles, vectorize_particles=True)
        return -torch.tensor(
            [tr.loss(ppca_model, guide, x[i : i + 1]) for i in range(x.shape[0])], dtype=x.dtype
        )


def _fit(guide, x, steps=300, lr=0.03):
    opt = torch.optim.Adam(guide.parameters(), lr=lr)
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True)
    for _ in range(steps):
        opt.zero_grad()
        elbo.differentiable_loss(ppca_model, guide, x).backward()
        opt.step()


def test_elbo_with_a_zuko_guide_is_below_the_exact_log_px_and_beats_the_diagonal_guide():
    """On probabilistic PCA with a correlated posterior: the ELBO of the zuko guide stays
    below log p(x) (closed form) before and after a short fit; the fit shrinks the gap; the
    diagonal guide cannot go below KL(best diagonal || p(z|x)) (closed form, > 0.1 nats),
    and the zuko guide's gap ends well below that. The importance-sampled estimate with the
    zuko guide (a particle plate over its draws) lands on log p(x)."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(32, 2, generator=g, dtype=torch.float64)
    x = z @ W.T + MU + SIGMA * torch.randn(32, 4, generator=g, dtype=torch.float64)
    log_px, kl_diag = ppca_exact(x)
    assert kl_diag > 0.1
    x_eval = x[:6]
    torch.manual_seed(0)
    zuko_guide, diag_guide = LinearGuide("zuko:maf"), LinearGuide()
    gap_before = log_px[:6] - _elbo_per_point(zuko_guide, x_eval)
    _fit(zuko_guide, x)
    _fit(diag_guide, x)
    gap_zuko = log_px[:6] - _elbo_per_point(zuko_guide, x_eval)
    gap_diag = log_px[:6] - _elbo_per_point(diag_guide, x_eval)
    tol = 0.01  # Monte Carlo error of a 4000-particle ELBO here
    assert (gap_before > -tol).all() and (gap_zuko > -tol).all() and (gap_diag > -tol).all()
    assert gap_zuko.mean() < 0.5 * gap_before.mean()
    assert (gap_diag > kl_diag - 0.03).all()  # the family's floor, reached or not
    assert gap_zuko.mean() < 0.5 * kl_diag  # below the diagonal family's floor
    torch.manual_seed(1)
    with torch.no_grad():
        iw = iw_log_likelihood(ppca_model, zuko_guide, x_eval, num_samples=500)
    torch.testing.assert_close(iw, log_px[:6], atol=0.02, rtol=0)


# -- the prior ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["zuko:nsf", "zuko:maf"])
def test_zuko_prior_integrates_to_one_and_is_the_models_z_density(name):
    """p(z) on a 2-D grid sums to 1 (a density); the model's z site scores a code with
    exactly zuko's ``flow().log_prob``; generating draws from it."""
    torch.manual_seed(0)
    vae = VAE(
        z_dim=2,
        hidden=(16,),
        prior_flow=name,
        prior_flow_depth=2,
        prior_flow_kwargs={"hidden_features": [8]},
    ).double()
    _shake(vae.prior_flow, scale=0.2)
    n, lim = 401, 9.0
    axis = torch.linspace(-lim, lim, n, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        log_p = vae.prior().log_prob(grid)
    cell = (axis[1] - axis[0]) ** 2
    assert float(log_p.exp().sum() * cell) == pytest.approx(1.0, abs=5e-3)
    # not the standard normal: the flow moved it
    assert (log_p - dist.Normal(0.0, 1.0).log_prob(grid).sum(-1)).abs().max() > 0.1
    # the model's z site, given a code, is zuko's density of that code
    x = binary_batch(4)
    codes = torch.randn(4, 2, dtype=torch.float64)
    tr = pyro.poutine.trace(pyro.poutine.condition(vae.model, {"z": codes})).get_trace(x)
    torch.testing.assert_close(
        tr.nodes["z"]["fn"].log_prob(codes), vae.prior_flow().log_prob(codes), rtol=1e-9, atol=1e-9
    )
    assert vae.sample(3).shape == (3, 1, 28, 28)


def test_the_zuko_prior_is_trained_by_fit():
    x = binary_batch(16, dtype=torch.float32)
    torch.manual_seed(0)
    vae = VAE(
        z_dim=2,
        hidden=(16,),
        prior_flow="zuko:nsf",
        prior_flow_depth=1,
        prior_flow_kwargs={"hidden_features": [8]},
    )
    before = {k: v.detach().clone() for k, v in vae.prior_flow.named_parameters()}
    res = probgen.fit(vae, TensorData(x), epochs=2, batch_size=8, lr=1e-2, device="cpu", **QUIET)
    assert all(math.isfinite(v) for v in res.train_loss)
    moved = [k for k, p in vae.prior_flow.named_parameters() if not torch.equal(p, before[k])]
    assert moved == list(before)


# -- FlowModel ---------------------------------------------------------------------------


def _levels(n=12, shape=(1, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 256, (n,) + shape, generator=g)
    return ((k + torch.rand((n,) + shape, generator=g)) / 256).double()


def test_zuko_flow_model_bits_per_dim_is_the_converted_log_density():
    """log p(x) of a FlowModel over a zuko flow is zuko's density of the logit-space pixels
    (flattened) plus the logit map's log-Jacobian (closed form); bits/dim is
    (D log 256 - log p(x)) / (D log 2); the z site is zuko's noise-side value."""
    torch.manual_seed(0)
    model = FlowModel("zuko:nsf", event_shape=(1, 4, 4), depth=2, hidden_features=[16]).double()
    _shake(model.flow, scale=0.1)
    x = _levels()
    a = model.alpha
    s = a + (1 - 2 * a) * x
    y = torch.log(s) - torch.log1p(-s)
    log_jac = (math.log(1 - 2 * a) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
    expected = model.flow.flow().log_prob(y.flatten(1)) + log_jac
    lp = model.log_prob(x)
    torch.testing.assert_close(lp, expected, rtol=1e-9, atol=1e-9)
    d = 16
    bpd = model.bits_per_dim(x)
    assert torch.isfinite(bpd).all()
    torch.testing.assert_close(
        bpd, (d * math.log(256) - expected) / (d * math.log(2)), rtol=1e-9, atol=1e-9
    )
    tr = pyro.poutine.trace(model.model).get_trace(x)
    torch.testing.assert_close(tr.nodes["x"]["fn"].log_prob(x), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(tr.nodes["z"]["value"], model.flow.flow().transform(y.flatten(1)))


def test_zuko_flow_model_trains_samples_and_scales_its_base_by_temperature():
    torch.manual_seed(0)
    data = TensorData(_levels(64).float())
    model = FlowModel("zuko:realnvp", event_shape=(1, 4, 4), depth=2, hidden_features=[16])
    before = model.evaluate_bits_per_dim(data)
    res = probgen.fit(
        model, data, epochs=3, batch_size=16, lr=5e-3, device="cpu", patience=None, **QUIET
    )
    after = model.evaluate_bits_per_dim(data)
    assert all(math.isfinite(v) for v in res.train_loss) and math.isfinite(after)
    assert after < before
    s = model.sample(5)
    assert s.shape == (5, 1, 4, 4) and s.min() >= 0 and s.max() <= 1
    vec = FlowModel("zuko:maf", event_shape=(2,), preprocess="none", depth=2, hidden_features=[8])
    torch.manual_seed(1)
    draws = vec.flow.distribution(temperature=0.5).sample((4000,))
    assert vec.flow.encode(draws).std(0).sub(0.5).abs().max() < 0.03


# -- Predictive, reloading -----------------------------------------------------------------


def test_predictive_draws_z_from_the_zuko_guide():
    """Predictive with the zuko guide (one draw at a time, and vectorized over draws: the
    guide's distribution expanded by a plate) gives codes distributed as q(z|x), far from
    the prior, and the decoder's mean of those very codes."""
    vae = zuko_vae(guide_flow="zuko:nsf", guide_flow_kwargs={"hidden_features": [16]})
    with torch.no_grad():
        vae.encoder.loc.bias.fill_(2.0)  # q far from N(0, I)
        vae.encoder.log_scale.bias.fill_(-1.5)
    x = binary_batch(4)
    one = Predictive(vae.model, guide=vae.guide, num_samples=3, return_sites=("z", "mean"))(x)
    assert one["z"].shape == (3, 4, 3) and one["mean"].shape == (3, 4, 784)
    torch.testing.assert_close(one["mean"][1], vae.decode(one["z"][1]).reshape(4, -1))
    many = Predictive(
        vae.model, guide=vae.guide, num_samples=800, parallel=True, return_sites=("z",)
    )(x)["z"]
    with torch.no_grad():
        ref = vae.posterior(x).sample((800,))
    se = (ref.var(0) / 800 + many.var(0) / 800).sqrt()
    assert ((many.mean(0) - ref.mean(0)).abs() < 4.5 * se).all()
    assert ref.mean(0).abs().mean() > 1.0  # the prior's mean is 0
    assert (many.std(0) - ref.std(0)).abs().max() < 0.1


def _outputs(vae, x):
    torch.manual_seed(2)
    site = pyro.poutine.trace(vae.guide).get_trace(x).nodes["z"]
    codes = torch.linspace(-1, 1, 12, dtype=x.dtype).reshape(4, 3)
    return (
        site["value"],
        site["fn"].log_prob(site["value"]),
        vae.prior().log_prob(codes),
        vae.reconstruct(x),
    )


ZUKO_VAE = dict(
    guide_flow="zuko:nsf",
    guide_flow_kwargs={"hidden_features": [16], "bins": 4},
    prior_flow="zuko:maf",
    prior_flow_kwargs={"hidden_features": [8], "randperm": True},
)


def test_zuko_vae_round_trips_through_probgen_load(tmp_path):
    vae = _shake(zuko_vae(**ZUKO_VAE).float(), scale=0.1)
    x = binary_batch(4, dtype=torch.float32)
    save_model(vae, tmp_path / "m.pt")
    torch.manual_seed(9)  # other initial weights (and another random order): the file decides
    other = load(tmp_path / "m.pt")
    assert other.settings == vae.settings
    for a, b in zip(_outputs(vae, x), _outputs(other, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_zuko_models_round_trip_through_model_folders_without_pickle(tmp_path, no_pickle):  # noqa: F811
    vae = _shake(zuko_vae(**ZUKO_VAE), scale=0.1)
    x = binary_batch(4)
    vae.save_pretrained(tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    args = config["model"]["args"]
    assert args["guide_flow"] == "zuko:nsf" and args["prior_flow"] == "zuko:maf"
    assert args["guide_flow_kwargs"] == {"hidden_features": [16], "bins": 4}
    torch.manual_seed(9)
    other = from_pretrained(tmp_path / "vae")
    for a, b in zip(_outputs(vae, x), _outputs(other, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    flow = _shake(
        FlowModel("zuko:nsf", event_shape=(1, 4, 4), depth=1, hidden_features=[8]), scale=0.1
    )
    flow.save_pretrained(tmp_path / "flow")
    again = FlowModel.from_pretrained(tmp_path / "flow")
    images = _levels(6).float()
    torch.testing.assert_close(again.log_prob(images), flow.log_prob(images), rtol=0, atol=0)


# -- settings and a missing zuko -----------------------------------------------------------


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda: VAE(
                z_dim=3, guide_flow="zuko:nsf", guide_flow_kwargs={"order": torch.arange(3)}
            ),
            "JSON data",
        ),
        (
            lambda: VAE(z_dim=3, guide_flow="zuko:nsf", guide_flow_kwargs={"features": 4}),
            "probgen sets itself",
        ),
        (
            lambda: VAE(z_dim=3, guide_flow="zuko:maf", guide_flow_kwargs={"hidden": [4]}),
            "refuses the settings",
        ),
        (
            lambda: VAE(z_dim=3, guide_flow="zuko:maf", guide_flow_kwargs={"activation": "Nope"}),
            "torch.nn module class",
        ),
        (
            lambda: VAE(z_dim=3, guide_flow="zuko:maf", guide_flow_kwargs={"inverse": "yes"}),
            "inverse",
        ),
        (lambda: VAE(z_dim=3, guide_flow="zuko:glow"), "guide_flow must be None or one of"),
        (lambda: VAE(z_dim=3, prior_flow="zuko:glow"), "prior_flow must be None"),
        (lambda: VAE(z_dim=3, prior_flow="zuko:maf", beta=0.0), "beta = 0"),
        (lambda: VAE(z_dim=3, prior_flow="zuko:maf", prior_flow_kwargs=[8]), "must be a dict"),
        (lambda: FlowModel("zuko:nsf", event_shape=(1, 4, 4), transforms=3), "probgen sets"),
        (lambda: FlowModel("zuko:nsf", event_shape=(1, 4, 4), depth=0), "depth"),
        (lambda: ZukoDensity(zuko_flow("zuko:maf", 5), (1, 4, 4)), "16 features"),
        (lambda: ZukoDensity(zuko_flow("zuko:maf", 16, context=2), (16,)), "unconditional"),
    ],
)
def test_bad_zuko_settings_are_one_line_errors(make, match):
    with pytest.raises(ConfigError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def test_the_names_and_the_activation_setting():
    assert ZUKO_FLOWS.names() == ["zuko:maf", "zuko:nice", "zuko:nsf", "zuko:realnvp"]
    flow = zuko_flow("zuko:maf", 3, depth=1, hidden_features=[8], activation="ELU")
    assert any(isinstance(m, nn.ELU) for m in flow.modules())
    d = ZukoDistribution(flow())
    assert d.expand([4]).batch_shape == (4,) and isinstance(d.expand([4]), ZukoDistribution)
    assert d.sample((2,)).shape == (2, 3) and not d.sample((2,)).requires_grad


_WITHOUT_ZUKO = r"""
import sys
sys.modules["zuko"] = None          # "import zuko" raises ImportError from here on
import pyro, torch
import probgen
from probgen.data import image_splits
from probgen.errors import ConfigError
from probgen.models import MODELS, VAE
from probgen.models.flow import FlowModel
from tests.test_device import CASES

mnist = image_splits("mnist", val_size=256, limit=512, seed=0)
built = []
for name in sorted(CASES):
    try:
        model, batch = CASES[name](mnist)
    except ConfigError as err:      # test_device's zuko variants
        assert name.startswith("vae_zuko"), name
        print("REFUSED", err)
        continue
    built.append(type(model).__name__)
assert set(MODELS.names()) <= set(CASES)
vae = VAE(z_dim=2, hidden=(8,), guide_flow="spline")
pyro.poutine.trace(vae.guide).get_trace(torch.zeros(2, 1, 28, 28))
for make in (lambda: VAE(z_dim=2, guide_flow="zuko:nsf"),
             lambda: VAE(z_dim=2, prior_flow="zuko:maf"),
             lambda: FlowModel("zuko:nsf", event_shape=(4,), preprocess="none")):
    try:
        make()
    except ConfigError as err:
        print("REFUSED", err)
    else:
        raise AssertionError("built without zuko")
print("BUILT", len(built))
del sys.modules["zuko"]             # zuko installed again: imported when a zuko flow is built
assert "zuko" not in sys.modules
VAE(z_dim=2, hidden=(8,), guide_flow="zuko:maf")
assert "zuko" in sys.modules
print("IMPORTED WHEN BUILT")
"""


def test_every_registered_model_builds_without_zuko_and_zuko_flows_say_how_to_install():
    """In a fresh process where ``import zuko`` fails: every registered model (and the
    variants test_device builds) builds, and each zuko use is one line naming the extra;
    once zuko can be imported, it is imported when a zuko flow is built, not before."""
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ZUKO], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    refused = [line for line in proc.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == 5  # test_device's two zuko variants and the three above
    assert all("pip install 'probgen[zuko]'" in line for line in refused)
    assert "BUILT" in proc.stdout and "IMPORTED WHEN BUILT" in proc.stdout


def test_docs_snippet_runs(tmp_path, monkeypatch):
    """docs/zuko.md's example as written, on a slice of MNIST for one epoch."""
    import re

    page = (ROOT / "docs" / "zuko.md").read_text()
    code = re.search(r"```python\n(.*?)\n```", page.split("<!-- zuko-snippet")[1], re.S).group(1)
    for original in ("val_size=10000", "epochs=10", "print("):
        assert original in code, f"the test shrinks {original!r}; update it with the page"
    code = (
        code.replace("val_size=10000", "val_size=100, limit=300")
        .replace("epochs=10", "epochs=1, progress=False, verbose=False")
        .replace("print(", "bpd = (")
    )
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "docs/zuko.md", "exec"), scope)
    assert 0 < scope["bpd"] < 12
    vae = scope["vae"].eval()
    again = from_pretrained(tmp_path / "results" / "vae-zuko")
    x = next(scope["splits"]["val"].batches(4))[0]
    torch.testing.assert_close(again.reconstruct(x), vae.reconstruct(x), rtol=0, atol=0)


def test_building_a_zuko_flow_leaves_torchs_validation_setting_alone():
    # zuko's import switches torch.distributions validation off for the whole process;
    # probgen's first import of it puts the user's setting back (a fresh interpreter, so
    # the import is the first).
    code = (
        "import torch\n"
        "from probgen.models import VAE\n"
        "torch.distributions.Distribution.set_default_validate_args(True)\n"
        "VAE(z_dim=2, hidden=(8,), guide_flow='zuko:nsf', "
        "guide_flow_kwargs={'hidden_features': [8]})\n"
        "import zuko\n"
        "print(torch.distributions.Distribution._validate_args)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"
