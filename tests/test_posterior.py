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
    assert set(FLOWS) == {"planar", "iaf", "sylvester", "spline"}


@pytest.mark.parametrize("kind", FLOWS)
def test_flow_guide_density_is_the_change_of_variables_of_its_draws(kind):
    """log q(z|x) at the guide's site equals log N(z0) - log|det dz/dz0| with the Jacobian
    of the flow taken by autograd, per image (float64, 3 latent dimensions)."""
    torch.manual_seed(1)
    vae = tiny_flow_vae(kind, depth=3).double()
    with torch.no_grad():   # move every step well away from the identity
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
        expected = (torch.distributions.Normal(loc[i], scale[i]).log_prob(z0[i]).sum()
                    - torch.linalg.slogdet(jac).logabsdet)
        torch.testing.assert_close(log_q[i], expected, rtol=1e-9, atol=1e-9)
    # an invertible flow also scores codes it did not draw (a fresh distribution, no cache)
    if kind in ("iaf", "spline"):
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
        for t in one.transforms:
            y = t(y)
        torch.testing.assert_close(y, z[j])
        torch.testing.assert_close(one.log_prob(y), q.log_prob(z)[j], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("objective,particles", [("trace", 1), ("meanfield", 1), ("iwae", 4),
                                                 ("jit", 1), ("trace", 3)])
@pytest.mark.parametrize("kind", FLOWS)
def test_flow_guides_train_with_every_objective(kind, objective, particles):
    x = binary_batch(16)
    torch.manual_seed(0)
    vae = tiny_flow_vae(kind)
    before = {n: p.detach().clone() for n, p in vae.guide_flow.named_parameters()}
    res = probgen.fit(vae, TensorData(x), epochs=2, batch_size=8, lr=1e-2, objective=objective,
                      num_particles=particles, device="cpu", **QUIET)
    assert all(math.isfinite(v) for v in res.train_loss)
    moved = [n for n, p in vae.guide_flow.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)   # every flow parameter is trained


def test_flow_guide_learns_and_metrics_work(mnist_small):
    from probgen.data import static_binarize
    from probgen.metrics.likelihood import elbo_and_iw_nll

    data = {k: TensorData(static_binarize(v.tensors[0])) for k, v in mnist_small.items()}
    torch.manual_seed(0)
    vae = VAE(z_dim=4, hidden=(64,), guide_flow="iaf")
    res = probgen.fit(vae, data["train"], data["val"], epochs=3, lr=3e-3, batch_size=64,
                      device="cpu", **QUIET)
    assert res.train_loss[-1] < res.train_loss[0]
    m = elbo_and_iw_nll(vae.model, vae.guide, data["test"].subset(slice(0, 32)),
                        elbo_particles=5, iw_samples=20)
    assert 0 < m["iw_nll"] <= m["neg_elbo"] + 1.0


@pytest.mark.parametrize("kind", FLOWS)
def test_flow_vae_round_trips_through_a_checkpoint(kind, tmp_path):
    torch.manual_seed(0)
    vae = tiny_flow_vae(kind, guide_flow_kwargs={"hidden": [12]} if kind != "sylvester"
                        else {"householder": 2})
    save_model(vae, tmp_path / "m.pt")
    torch.manual_seed(5)   # a different draw of every weight: the checkpoint must decide
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
    assert "guide_flow" not in VAE(z_dim=3, hidden=(8,)).settings


@pytest.mark.parametrize("kwargs,match", [
    (dict(guide_flow="maf"), "guide_flow must be None or one of"),
    (dict(guide_flow="iaf", guide_flow_depth=0), "guide_flow_depth"),
    (dict(guide_flow="iaf", encoder="delta"), "needs encoder='gaussian'"),
    (dict(guide_flow="iaf", guide_flow_kwargs={"hidden": [2]}), "at least as wide as z_dim"),
    (dict(guide_flow="planar", guide_flow_kwargs={"bins": 3}), "do not fit the 'planar' flow"),
    (dict(guide_flow="sylvester", guide_flow_kwargs={"householder": 0}), "householder"),
])
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
