"""Normalizing flows: one contract over every transform and builder, then densities,
bits/dim, the Pyro model, data helpers, bad input and the example.

Transforms are checked in float64 against autograd: ``inverse(forward(x)) == x``;
``log|det J|`` of the forward map and of the inverse map each equal the
log-determinant of the Jacobian that ``torch.autograd.functional.jacobian``
computes; gradients reach every parameter; a save/load round trip gives the same
function (ActNorm's "initialised" flag included).
"""

import importlib.util
import json
import math
import subprocess
import sys

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive
from torch.distributions.transforms import _InverseTransform

import probgen
from probgen.data.dequantize import (
    dequantized,
    logit_preprocess,
    logit_transform,
    to_levels,
    uniform_dequantize,
)
from probgen.data.toy import TOY, toy_points, toy_splits
from probgen.errors import ConfigError, DataError
from probgen.flows import (
    FLOWS,
    ActNorm,
    CheckerboardAffineCoupling,
    CrossUnitCoupling,
    MultiscaleTransform,
    NormflowsTransform,
    Permute,
    Squeeze,
    actnorm,
    build_flow,
    chain,
    denseflow,
    glow,
    glow_step,
    invertible_linear,
    nice,
    realnvp,
    reset_caches,
    scaling,
    squeeze2d,
    unsqueeze2d,
)
from probgen.flows.builders import _channel_coupling, _split_prior, _vector_coupling
from probgen.flows.transforms import invertible_conv1x1
from probgen.metrics.density import mean_bits_per_dim, nats_to_bits_per_dim
from probgen.models.flow import FlowModel
from probgen.train import load_model, save_model
from tests.conftest import QUIET, ROOT


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny float64 convolutions: on a busy 2-core machine, OpenMP's second thread
    mostly waits (up to 100x slower here); one thread for this module, then restore."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- cases
# Each case builds a transform (Pyro convention: base -> data) and gives the shape of
# its input (base side).


def _multiscale():
    post = chain(glow_step((4, 2, 2), 4))
    inner = chain(glow_step((2, 2, 2), 4))
    return MultiscaleTransform(
        (1, 4, 4),
        post,
        pre=CheckerboardAffineCoupling((1, 4, 4), 0, 4),
        inner=inner,
        split_prior=_split_prior((4, 2, 2), 4),
    ), (1, 4, 4)


class _ProtocolAffine(torch.nn.Module):
    """A flow written to normflows' protocol (``forward(z) -> (x, log|det dx/dz|)``,
    ``inverse(x) -> (z, log|det dz/dx|)``, one batch dimension, scalar log-dets)."""

    def __init__(self, dim):
        super().__init__()
        self.s = torch.nn.Parameter(torch.zeros(dim))
        self.t = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, z):
        assert z.dim() == 2
        return z * torch.exp(self.s) + self.t, self.s.sum()

    def inverse(self, x):
        assert x.dim() == 2
        return (x - self.t) * torch.exp(-self.s), -self.s.sum()


def _normflows_case():
    import normflows

    return NormflowsTransform(normflows.flows.AffineConstFlow((3,)), (3,)), (3,)


def _flow(builder, shape, **kw):
    def make():
        f = builder(shape, **kw)
        return f.transform, f.latent_shape

    return make


TRANSFORMS = {
    "actnorm-image": lambda: (actnorm((2, 3, 3)), (2, 3, 3)),
    "actnorm-vector": lambda: (actnorm((3,)), (3,)),
    "scaling": lambda: (scaling((3,)), (3,)),
    "invertible-linear": lambda: (invertible_linear(3), (3,)),
    "conv1x1": lambda: (invertible_conv1x1(4), (4, 2, 3)),
    "permute-even-odd": lambda: (Permute.even_odd(5), (5,)),
    "permute-channels": lambda: (Permute.reverse(4, dim=-3), (4, 2, 2)),
    "squeeze-inverse": lambda: (Squeeze().inv, (4, 2, 2)),
    "checkerboard": lambda: (CheckerboardAffineCoupling((2, 4, 4), 1, 4), (2, 4, 4)),
    "channel-coupling": lambda: (_channel_coupling((4, 2, 2), 4), (4, 2, 2)),
    "additive-coupling": lambda: (_vector_coupling(4, (8,), additive=True), (4,)),
    "affine-coupling": lambda: (_vector_coupling(3, (8,)), (3,)),
    "multiscale": _multiscale,
    "nice-vector": _flow(nice, (4,), hidden=(8,), depth=3),
    "nice-image": _flow(nice, (1, 4, 4), hidden=(8,), depth=2),
    "realnvp-vector": _flow(realnvp, (2,), hidden=(8,), depth=2),
    "realnvp-image": _flow(realnvp, (1, 4, 4), hidden=4, depth=1, levels=2),
    "glow-vector": _flow(glow, (3,), hidden=(8,), depth=2),
    "glow-image": _flow(glow, (1, 4, 4), hidden=4, depth=1, levels=2),
    "adapter": lambda: (NormflowsTransform(_ProtocolAffine(3), (3,)), (3,)),
}
if importlib.util.find_spec("normflows") is not None:  # the adapter on the library itself
    TRANSFORMS["adapter-normflows"] = _normflows_case


def _modules(t):
    """The module behind a transform (``Squeeze().inv`` is a view of ``Squeeze()``)."""
    return t._inv if isinstance(t, _InverseTransform) else t


def _params(t):
    m = _modules(t)
    return list(m.parameters()) if isinstance(m, torch.nn.Module) else []


def _build(name, seed=0):
    """The case's transform in float64, ActNorm started from data, parameters moved off
    their (near-identity) initial values so that every check is non-trivial."""
    torch.manual_seed(seed)
    t, shape = TRANSFORMS[name]()
    module = _modules(t)
    if isinstance(module, torch.nn.Module):
        module.double()
    if _params(t):
        with torch.no_grad():
            data = t(2 + 3 * torch.randn((32,) + tuple(shape), dtype=torch.float64))
            reset_caches(module)
            t.inv(data + 0.5 * torch.randn_like(data))  # density direction: ActNorm starts here
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
        reset_caches(module)
    return t, tuple(shape)


def _sum_to_batch(ladj, batch_dims):
    return (
        ladj.reshape(ladj.shape[:batch_dims] + (-1,)).sum(-1) if ladj.dim() > batch_dims else ladj
    )


def _jacobian_logdet(f, x):
    """log|det| of the Jacobian of ``f`` at one example ``x`` (shape (1, *event))."""
    J = torch.autograd.functional.jacobian(f, x)
    d = x.numel()
    return torch.linalg.slogdet(J.reshape(-1, d))[1]


@pytest.fixture(params=sorted(TRANSFORMS))
def case(request):
    return request.param


def test_registry_lists_every_flow():
    assert set(FLOWS.names()) == {
        "nice",
        "realnvp",
        "glow",
        "denseflow",
        "identity",
        "zuko:maf",
        "zuko:nsf",
        "zuko:nice",
        "zuko:realnvp",
    }


def test_contract_inverse_and_log_det_against_autograd(case):
    t, shape = _build(case)
    x = torch.randn((3,) + shape, dtype=torch.float64)
    y = t(x)
    ladj = _sum_to_batch(t.log_abs_det_jacobian(x, y), 1)
    assert ladj.shape == (3,)
    reset_caches(_modules(t))
    x_back = t.inv(y.clone())  # a new tensor: no cache hit, a real inversion
    torch.testing.assert_close(x_back, x, rtol=1e-9, atol=1e-9)
    for i in range(3):
        reset_caches(_modules(t))
        fwd = _jacobian_logdet(lambda a: t(a), x[i : i + 1].clone())
        torch.testing.assert_close(fwd, ladj[i], rtol=1e-7, atol=1e-7)
        reset_caches(_modules(t))
        inv = _jacobian_logdet(lambda a: t.inv(a), y[i : i + 1].detach().clone())
        torch.testing.assert_close(inv, -ladj[i], rtol=1e-7, atol=1e-7)
    if case.startswith(("permute", "squeeze", "additive")):
        assert torch.allclose(ladj, torch.zeros_like(ladj))  # volume preserving by design
    elif _params(t):
        assert ladj.abs().max() > 1e-6  # a non-trivial Jacobian was checked


def test_contract_inverse_log_det_from_data_side(case):
    """Start from data: t.inv then log_abs_det_jacobian(x, y) is what log_prob uses."""
    t, shape = _build(case)
    y = torch.randn((4,) + shape, dtype=torch.float64)
    y = t(y).detach()  # a point on the data side with the data side's shape
    reset_caches(_modules(t))
    x = t.inv(y)
    ladj = _sum_to_batch(t.log_abs_det_jacobian(x, y), 1)
    reset_caches(_modules(t))
    torch.testing.assert_close(t(x.detach().clone()), y, rtol=1e-9, atol=1e-9)
    reset_caches(_modules(t))
    inv = _jacobian_logdet(lambda a: t.inv(a), y[:1].clone())
    torch.testing.assert_close(inv, -ladj[0], rtol=1e-7, atol=1e-7)


def test_contract_gradients_reach_every_parameter(case):
    t, shape = _build(case)
    module = _modules(t)
    if not _params(t):
        pytest.skip(f"{case} has no parameters")
    y = t(torch.randn((8,) + shape, dtype=torch.float64)).detach()
    reset_caches(module)
    x = t.inv(y)
    nll = 0.5 * (x**2).flatten(1).sum(1) + _sum_to_batch(t.log_abs_det_jacobian(x, y), 1)
    nll.sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_contract_save_load_round_trip(case, tmp_path):
    t, shape = _build(case, seed=0)
    module = _modules(t)
    if not isinstance(module, torch.nn.Module) or not module.state_dict():
        pytest.skip(f"{case} has no state")
    save_model(module, tmp_path / "t.pt")
    other, _ = TRANSFORMS[case]()
    other_m = _modules(other).double()
    load_model(other_m, tmp_path / "t.pt")
    for (k, a), (_, b) in zip(module.state_dict().items(), other_m.state_dict().items()):
        assert torch.equal(a, b), k
    # a fresh batch from elsewhere: an ActNorm that re-initialised would differ here
    y = 5 + 10 * torch.randn((6,) + shape, dtype=torch.float64)
    reset_caches(module)
    reset_caches(other_m)
    torch.testing.assert_close(other.inv(y.clone()), t.inv(y.clone()), rtol=0, atol=0)


def _spread(n, *batch):
    return torch.randn(*batch, n, 2, 3, 3) * torch.tensor([5.0, 0.5]).view(2, 1, 1) + torch.tensor(
        [3.0, -1.0]
    ).view(2, 1, 1)


def test_actnorm_starts_from_data_and_keeps_its_flag(tmp_path):
    torch.manual_seed(0)
    t = actnorm((2, 3, 3))
    assert isinstance(t, ActNorm) and not t.initialized
    one = torch.randn(1, 2, 3, 3)
    single = t.inv(one)  # one example has no spread: wait, stay the identity
    assert torch.equal(single, one) and not t.initialized
    reset_caches(t)
    z = t.inv(_spread(64))  # the density direction: the base side is standardised
    assert t.initialized
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3)), torch.ones(2), atol=1e-4, rtol=0)
    assert "initialized" in t.state_dict()
    reset_caches(t)
    assert not torch.allclose(t.inv(_spread(64)), z)  # started once: new data, new output
    # the sampling direction standardises the data side; any batch shape counts its examples
    s = actnorm((2, 3, 3))
    x = s(_spread(4, 8))
    torch.testing.assert_close(x.mean((0, 1, 3, 4)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std((0, 1, 3, 4)), torch.ones(2), atol=1e-4, rtol=0)
    # loading a state dict carries the flag both ways (the Python flag looks again)
    fresh = actnorm((2, 3, 3))
    fresh.load_state_dict(t.state_dict())
    reset_caches(t)
    y = _spread(8)
    torch.testing.assert_close(fresh.inv(y.clone()), t.inv(y.clone()), rtol=0, atol=0)
    t.load_state_dict(actnorm((2, 3, 3)).state_dict())
    assert not t.initialized and not probgen.flows.transforms.is_initialized(t)
    reset_caches(t)
    t.inv(_spread(16))
    assert t.initialized  # it waited for data again


# ------------------------------------------------------------------------- DenseFlow


@pytest.mark.parametrize(
    "shape,kw",
    [
        ((2,), dict(hidden=(8,), depth=1, units=2, growth=2)),
        ((1, 4, 4), dict(hidden=4, depth=1, units=2, growth=2, levels=2)),
    ],
)
def test_denseflow_augmented_bijection_log_det_against_autograd(shape, kw):
    """With the noise fixed, (x, e) -> latents is a bijection; its log-determinant
    (steps plus sum log sigma of every cross-unit coupling) matches autograd."""
    torch.manual_seed(0)
    flow = denseflow(shape, **kw).double()
    x = torch.randn((32,) + shape, dtype=torch.float64)
    flow.initialize(x)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x1 = x[:1].clone()
    latents, ld, noises = flow.encode(x1)
    assert [tuple(e.shape[1:]) for e in noises] == flow.noise_shapes
    assert [tuple(w.shape[1:]) for w in latents] == flow.latent_shapes
    sizes = [x1.numel()] + [e.numel() for e in noises]

    def f(v):
        parts = v.split(sizes)
        xs = parts[0].reshape(x1.shape)
        es = [p.reshape(e.shape) for p, e in zip(parts[1:], noises)]
        lat, _, _ = flow.encode(xs, es)
        return torch.cat([w.reshape(-1) for w in lat])

    v = torch.cat([x1.reshape(-1)] + [e.reshape(-1) for e in noises])
    J = torch.autograd.functional.jacobian(f, v)
    assert J.shape[0] == J.shape[1] == flow.latent_dim  # dimensions add up
    torch.testing.assert_close(torch.linalg.slogdet(J)[1], ld[0], rtol=1e-7, atol=1e-7)
    assert ld.abs().item() > 1e-3
    # decoding the latents drops the noise and gives back the data
    torch.testing.assert_close(flow.decode(latents), x1, rtol=1e-9, atol=1e-9)
    # the bound is log N(w) + log|det| - log N(e), one importance weight
    lw, _ = flow.log_weight(x1, noises)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    expected = (
        ld
        + sum(normal.log_prob(w).sum() for w in latents)
        - sum(normal.log_prob(e).sum() for e in noises)
    )
    torch.testing.assert_close(lw, expected)


def test_denseflow_bound_is_a_bound_and_importance_sampling_tightens_it():
    """On a 2-D grid: exp(E_e[log w]) (the ELBO) loses mass, so it integrates to less
    than 1, while the mean of the weights w is unbiased for p(x), so the importance-
    weighted estimate with many draws integrates to 1; the IW bound lies in between."""
    from probgen.viz.density import density_on_grid

    torch.manual_seed(0)
    flow = denseflow((2,), hidden=(16,), depth=1, units=1, growth=2).double()
    flow.initialize(torch.randn(256, 2, dtype=torch.float64))
    with torch.no_grad():
        for aug in flow.level.augments:  # a noise distribution far from the best one
            aug.net.layers[-1].bias.add_(0.7)
    extent = (-6, 6, -6, 6)

    def mass(fn):
        dens, area = density_on_grid(lambda p: fn(p.double()), extent, resolution=100)
        return dens.sum() * area

    elbo = mass(lambda p: torch.stack([flow.log_prob(p) for _ in range(8)]).mean(0))
    iw4 = mass(lambda p: torch.stack([flow.log_prob(p, num_samples=4) for _ in range(8)]).mean(0))
    unbiased = mass(lambda p: flow.log_prob(p, num_samples=64))
    assert elbo < 0.95 and elbo < iw4 < unbiased
    assert unbiased == pytest.approx(1.0, abs=0.03)


# ------------------------------------------------------------------- toy densities


def test_toy_data_sets_are_reproducible_and_shaped():
    assert set(TOY.names()) == {"moons", "rings", "8gaussians"}
    for name in TOY.names():
        a, b = toy_points(name, 500, seed=3), toy_points(name, 500, seed=3)
        assert a.shape == (500, 2) and torch.equal(a, b)
        assert a.abs().max() < 4.5
    r = toy_points("rings", 3000).norm(dim=1)
    assert ((r - r.round()).abs() < 0.4).float().mean() > 0.99  # on circles of radius 1, 2, 3
    c = toy_points("8gaussians", 4000)
    assert (c.norm(dim=1) - 2.5).abs().mean() < 0.3
    splits = toy_splits("moons", train=100, val=10, test=20)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [100, 10, 20]
    assert not torch.equal(splits["train"].tensors[0][:10], splits["val"].tensors[0])


@pytest.fixture(scope="module")
def trained_toy():
    torch.manual_seed(0)
    splits = toy_splits("moons", train=2000, val=500, test=1000, seed=0)
    model = FlowModel("realnvp", event_shape=(2,), preprocess="none", hidden=(32, 32), depth=2)
    with torch.no_grad():
        untrained = -float(model.log_prob(splits["test"].tensors[0]).mean())
    res = probgen.fit(
        model,
        splits["train"],
        splits["val"],
        epochs=12,
        batch_size=128,
        lr=5e-3,
        device="cpu",
        patience=None,
        **QUIET,
    )
    return model, splits, untrained, res


def test_trained_toy_flow_integrates_to_one_and_beats_a_gaussian(trained_toy):
    from probgen.viz.density import density_on_grid

    model, splits, untrained, res = trained_toy
    dens, area = density_on_grid(model.log_prob, (-6, 6, -6, 6), resolution=300)
    assert dens.sum() * area == pytest.approx(1.0, abs=0.02)
    test = splits["test"].tensors[0]
    with torch.no_grad():
        nll = -float(model.log_prob(test).mean())
    cov = torch.cov(splits["train"].tensors[0].T.double())
    gaussian_nll = 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))
    assert nll < untrained - 0.5
    assert nll < gaussian_nll - 0.3  # it learned the moons, not just their mean and covariance
    assert res.train_loss[-1] < res.train_loss[0]


def test_temperature_scales_the_latent(trained_toy):
    model = trained_toy[0]
    for temp in (0.5, 1.0):
        x = model.sample(4000, temperature=temp)
        z = model.flow.encode(x)
        assert z.std().item() == pytest.approx(temp, rel=0.05)


def test_flow_model_is_a_pyro_model_with_exact_likelihood(trained_toy):
    model, splits, _, _ = trained_toy
    x = splits["test"].tensors[0][:16]
    tr = poutine.trace(model.model).get_trace(x)
    tr.compute_log_prob()
    torch.testing.assert_close(tr.nodes["x"]["log_prob"], model.log_prob(x))
    # the recorded latent is f^{-1}(x); the guide is empty
    torch.testing.assert_close(tr.nodes["z"]["value"], model.flow.encode(x).reshape(16, -1))
    samples = Predictive(model.model, guide=model.guide, num_samples=3)(x)
    assert samples["z"].shape == (3, 16, 2)
    gen = Predictive(model.model, num_samples=2)(None, num_samples=5)
    assert gen["x"].shape == (2, 5, 2) and gen["z"].shape == (2, 5, 2)
    # the SVI step's loss is the mean negative log-likelihood
    loss = probgen.SVIStep(model).loss((x,))
    torch.testing.assert_close(loss, -model.log_prob(x).mean())


def test_a_flow_is_a_pyro_guide_with_the_exact_posterior():
    """Linear-Gaussian model, flow guide: the posterior is Gaussian, which a Glow on
    vectors (ActNorm, invertible linear map, coupling) can represent exactly, so
    the ELBO climbs to log p(x), known in closed form, and never above it."""
    import pyro.distributions as dist
    from pyro.infer import Trace_ELBO

    torch.manual_seed(0)
    pyro.clear_param_store()
    A = torch.tensor([[1.0, 0.5], [-0.3, 1.2]])
    x = torch.tensor([1.0, -0.5])
    flow = glow((2,), hidden=(8,), depth=2)

    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ A.T, 0.5).to_event(1), obs=x)

    def guide():
        pyro.module("flow", flow)
        pyro.sample("z", flow.distribution())

    exact = float(
        dist.MultivariateNormal(torch.zeros(2), A @ A.T + 0.25 * torch.eye(2)).log_prob(x)
    )
    elbo = Trace_ELBO(num_particles=32, vectorize_particles=True)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    with torch.no_grad():
        start = -float(elbo.differentiable_loss(model, guide))
    for _ in range(300):
        loss = elbo.differentiable_loss(model, guide)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = -float(
            Trace_ELBO(num_particles=4000, vectorize_particles=True).differentiable_loss(
                model, guide
            )
        )
    assert start < exact - 0.3
    assert exact - 0.03 < final < exact + 0.01


def test_samples_are_differentiable_for_use_as_a_generator(trained_toy):
    model = trained_toy[0]
    x = model.flow.distribution(temperature=0.8).rsample((64,))
    (x**2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.zero_grad()


# ------------------------------------------------------------------ images, bits/dim


def test_bits_per_dim_closed_forms(mnist_small):
    data = dequantized(mnist_small["test"], seed=0)
    x = data.tensors[0][:32].double()
    d = 784
    # identity flow with a uniform base on [0, 1]^D: log p = 0, so bits/dim = log2(256) = 8
    flat = FlowModel(
        probgen.flows.identity((1, 28, 28), base="uniform"), preprocess="none", num_levels=256
    ).double()
    torch.testing.assert_close(flat.bits_per_dim(x), torch.full((32,), 8.0, dtype=torch.float64))
    # identity flow, standard normal base, logit preprocessing: closed form
    alpha = 0.05
    model = FlowModel(probgen.flows.identity((1, 28, 28)), preprocess="logit", alpha=alpha).double()
    z = alpha + (1 - 2 * alpha) * x
    y = torch.log(z / (1 - z))
    log_px = (
        (
            -0.5 * y**2
            - 0.5 * math.log(2 * math.pi)
            + math.log(1 - 2 * alpha)
            - torch.log(z)
            - torch.log(1 - z)
        )
        .flatten(1)
        .sum(1)
    )
    expected = (d * math.log(256) - log_px) / (d * math.log(2))
    torch.testing.assert_close(model.bits_per_dim(x), expected, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(model.log_prob(x), log_px)
    assert mean_bits_per_dim(model.log_prob, TensorDataOf(x), d) == pytest.approx(
        float(expected.mean()), rel=1e-12
    )
    assert nats_to_bits_per_dim(d * math.log(2), d, None) == pytest.approx(1.0)
    # the logit helpers agree with each other
    yy, ld = logit_preprocess(x, alpha)
    torch.testing.assert_close(yy, y)
    t = logit_transform(alpha)
    torch.testing.assert_close(-t.log_abs_det_jacobian(yy, t(yy)).flatten(1).sum(1), ld)


def TensorDataOf(x):
    return probgen.data.TensorData(x)


def test_uniform_dequantization_stays_in_the_bins(mnist_small):
    x = mnist_small["train"].tensors[0][:64]
    k = to_levels(x)
    g = torch.Generator().manual_seed(0)
    u = uniform_dequantize(x, g)
    assert torch.all(u * 256 >= k) and torch.all(u * 256 < k + 1)
    fixed = dequantized(mnist_small["test"], seed=1)
    assert torch.equal(fixed.tensors[0], dequantized(mnist_small["test"], seed=1).tensors[0])
    moving = dequantized(mnist_small["train"])
    b1 = next(moving.batches(8))[0]
    b2 = next(moving.batches(8))[0]
    assert not torch.equal(b1, b2) and torch.equal((b1 * 256).floor(), (b2 * 256).floor())


@pytest.mark.parametrize(
    "name,kw",
    [
        ("nice", dict(hidden=(16,), depth=2)),
        ("realnvp", dict(hidden=4, depth=1, levels=2)),
        ("glow", dict(hidden=4, depth=1)),
        ("denseflow", dict(hidden=4, depth=1, units=1)),
        # zuko's flows start farther from the data's
        # density (no near-identity start): a larger step
        ("zuko:maf", dict(depth=2, hidden_features=[16], lr=1e-2)),
        ("zuko:nsf", dict(depth=1, hidden_features=[16], lr=1e-2)),
    ],
)
def test_image_flow_model_trains_and_samples(name, kw, mnist_small, tmp_path):
    kw = dict(kw)
    lr = kw.pop("lr", 2e-3)
    torch.manual_seed(0)
    train = dequantized(mnist_small["train"].subset(slice(0, 128)))
    val = dequantized(mnist_small["val"].subset(slice(0, 64)), seed=0)
    model = FlowModel(name, **kw)
    if name in ("glow", "denseflow"):
        with pytest.raises(ConfigError, match="initiali"):
            model.sample(2)
    model.initialize(next(train.batches(64))[0])
    before = model.evaluate_bits_per_dim(val)
    probgen.fit(
        model, train, val, epochs=2, batch_size=32, lr=lr, device="cpu", patience=None, **QUIET
    )
    after = model.evaluate_bits_per_dim(val)
    assert math.isfinite(after) and after < before
    assert 0 < after < 9
    assert model.exact == (name != "denseflow")
    for temp in (0.5, 1.0):
        s = model.sample(3, temperature=temp)
        assert s.shape == (3, 1, 28, 28) and s.min() >= 0 and s.max() <= 1
    save_model(model, tmp_path / "m.pt")
    other = FlowModel(name, **kw)
    load_model(other, tmp_path / "m.pt")
    x = val.tensors[0][:8]
    if model.exact:
        torch.testing.assert_close(other.log_prob(x), model.log_prob(x))
    else:
        torch.manual_seed(5)
        a = model.log_prob(x)
        torch.manual_seed(5)
        torch.testing.assert_close(other.log_prob(x), a)


def test_dequantization_as_a_latent_site_closed_forms(mnist_small):
    """Data as grey levels, the dequantization noise u a latent site. With a uniform
    flow density on [0, 1]^D, P(k) = 256^-D exactly: the uniform guide gives 8 bits/dim
    exactly; a (non-uniform) variational guide gives an ELBO above it and an
    importance-weighted bound between the two."""
    x = mnist_small["test"].tensors[0][:16].double()
    flat = probgen.flows.identity((1, 28, 28), base="uniform")
    uniform = FlowModel(flat, preprocess="none", num_levels=256, dequantization="uniform").double()
    eight = torch.full((16,), 8.0, dtype=torch.float64)
    torch.testing.assert_close(uniform.bits_per_dim(x), eight)
    torch.testing.assert_close(uniform.bits_per_dim(x, num_samples=8), eight)
    vd = FlowModel(
        probgen.flows.identity((1, 28, 28), base="uniform"),
        preprocess="none",
        num_levels=256,
        dequantization="variational",
        dequantizer_hidden=4,
    ).double()
    torch.manual_seed(0)
    elbo = float(vd.bits_per_dim(x).mean())
    iw = float(vd.bits_per_dim(x, num_samples=32).mean())
    assert elbo > 8.005 and 8 - 1e-3 < iw < elbo
    u = poutine.trace(vd.guide).get_trace(x).nodes["u"]["value"]
    assert u.shape == x.shape and u.min() > 0 and u.max() < 1
    with pytest.raises(DataError, match="grid"):
        vd.model(uniform_dequantize(x))


def test_variational_dequantization_trains_with_the_flow(mnist_small):
    torch.manual_seed(0)
    model = FlowModel("glow", hidden=4, depth=1, dequantization="variational")
    batch = next(mnist_small["train"].batches(32))
    model.initialize(batch[0])
    loss = probgen.SVIStep(model).loss(batch)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.zero_grad()
    train = mnist_small["train"].subset(slice(0, 128))
    res = probgen.fit(
        model,
        train,
        mnist_small["val"].subset(slice(0, 64)),
        epochs=2,
        batch_size=32,
        lr=2e-3,
        device="cpu",
        patience=None,
        **QUIET,
    )
    assert res.val_loss[-1] < res.val_loss[0]
    assert model.sample(2).shape == (2, 1, 28, 28)


# --------------------------------------------------------------------- bad input


def test_wrong_event_shape_is_a_clear_error():
    model = FlowModel("glow", hidden=4, depth=1)
    for bad in (torch.rand(4, 1, 27, 28), torch.rand(4, 784), torch.rand(1, 28, 28)):
        with pytest.raises(DataError, match="shape"):
            model.log_prob(bad)
    flow = realnvp((2,), hidden=(4,), depth=1)
    with pytest.raises(DataError, match=r"\(2,\)"):
        flow.log_prob(torch.zeros(5, 3))
    with pytest.raises(DataError, match="shape"):
        actnorm((3,)).inv(torch.zeros(4, 2))


def test_splits_need_even_channels_and_sizes():
    with pytest.raises(ConfigError, match="even"):
        denseflow((1, 8, 8), growth=3, units=1, hidden=4, depth=1)
    with pytest.raises(ConfigError, match="levels"):
        glow((1, 28, 28), levels=3)
    with pytest.raises(ConfigError, match="squeezed"):
        glow((1, 7, 7))
    with pytest.raises(ConfigError, match="even height"):
        MultiscaleTransform((1, 5, 4), chain(glow_step((4, 2, 2), 4)))
    with pytest.raises(ConfigError, match="at least 2"):
        _channel_coupling((1, 4, 4), 4)
    with pytest.raises(ConfigError, match="at least 2"):
        nice((1,))
    with pytest.raises(DataError, match="even height"):
        squeeze2d(torch.zeros(2, 1, 3, 4))
    with pytest.raises(ConfigError, match="event shape"):
        build_flow("glow", (28, 28))
    with pytest.raises(ConfigError, match="unknown flow"):
        build_flow("maf", (2,))
    with pytest.raises(ConfigError, match="does not take"):
        build_flow("nice", (2,), levels=2)
    with pytest.raises(ConfigError, match="depth"):
        glow((2,), depth=0)


def test_images_outside_the_expected_range_are_rejected(mnist_small):
    x = mnist_small["test"].tensors[0][:4]
    model = FlowModel("realnvp", hidden=4, depth=1, levels=1)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        model.log_prob(x * 255)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        model.model(x - 0.5)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        uniform_dequantize(x * 2)
    with pytest.raises(DataError, match="grid"):
        uniform_dequantize(uniform_dequantize(x))
    with pytest.raises(ConfigError, match="alpha"):
        FlowModel("identity", preprocess="logit", alpha=0.6)
    with pytest.raises(ConfigError, match="temperature"):
        FlowModel("identity").sample(2, temperature=0)


def test_nice_partition_puts_even_positions_first_in_the_density_direction():
    p = Permute.even_odd(7)
    assert p.inv(torch.arange(7.0)).tolist() == [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0]
    assert p(p.inv(torch.arange(7.0))).tolist() == list(range(7))
    flow = nice((6,), depth=2, hidden=(4,))
    first = flow.transform.parts[-1]  # chain reverses: the data side's first part is last
    assert isinstance(first, Permute)
    assert first.inv(torch.arange(6.0)).tolist() == [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]


@pytest.mark.parametrize("u", [0.0, 1.0])
def test_a_logistic_base_gives_finite_draws_at_the_uniforms_ends(monkeypatch, u):
    """torch's ``uniform_`` returns exactly 0 about once in 2**24 draws, and a logistic's
    inverse CDF maps it to -inf (a NICE sample of NaN); clamped, the base value and the
    sample stay finite, at the clamped quantile."""
    flow = nice((6,), depth=2, hidden=(4,))
    monkeypatch.setattr(torch.Tensor, "uniform_", lambda self, *a, **k: self.fill_(u))
    z = flow.base_distribution((6,), base="logistic").sample((2,))
    eps = torch.finfo(z.dtype).eps
    expected = math.log(eps / (1 - eps)) if u == 0 else math.log((1 - eps) / eps)
    assert torch.allclose(z, torch.full_like(z, expected))
    assert torch.isfinite(flow.sample(2)).all()


@pytest.mark.parametrize(
    "name,kw",
    [
        ("realnvp", dict(hidden=4, depth=1, levels=1)),
        ("glow", dict(hidden=4, depth=1, levels=1)),
        ("zuko:nsf", dict(hidden_features=[8], depth=1)),
    ],
)
def test_a_flow_distribution_in_a_users_own_pyro_model(name, kw):  # (not DenseFlow: new noise)
    """The documented use, ``pyro.sample("x", flow.distribution(), obs=x)`` in a model
    written by hand, trained with SVI on the same batch every step: each step's loss
    is the current parameters' exact NLL (no stale cached transform values)."""
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    pyro.clear_param_store()
    torch.manual_seed(0)
    flow = build_flow(name, (2, 4, 4), **kw).double()
    x = torch.randn(8, 2, 4, 4, dtype=torch.float64)
    flow.initialize(x)

    def model(x):
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", flow.distribution(), obs=x)

    svi = SVI(model, lambda x: None, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(4)]  # a stale cache breaks the second backward
    assert all(math.isfinite(v) for v in losses) and len(set(losses)) == 4
    with torch.no_grad():
        before = flow.distribution().log_prob(x)
        for param in flow.parameters():
            param.add_(0.01)
        after = flow.distribution().log_prob(x)  # the same x object: no stale value
        assert not torch.allclose(after, before)
        if flow.exact:
            torch.testing.assert_close(after, flow.log_prob(x))


def test_base_temperature_and_data_range_settings_are_checked():
    with pytest.raises(ConfigError, match="uniform base has no temperature"):
        FlowModel("identity", event_shape=(2,), preprocess="none", base="uniform").sample(
            3, temperature=0.5
        )
    # images without logit preprocessing still count the 256 levels and check the range
    model = FlowModel("identity", preprocess="none")
    assert model.num_levels == 256
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(
        model.bits_per_dim(x), (784 * math.log(256) - model.log_prob(x)) / (784 * math.log(2))
    )
    with pytest.raises(DataError, match="num_levels=None"):
        model.log_prob(x * 255)
    assert FlowModel("identity", preprocess="none", num_levels=None).log_prob(x * 255).shape == (3,)


def test_variational_dequantizer_keeps_u_inside_the_support():
    from probgen.data.dequantize import U_MARGIN, VariationalDequantizer

    deq = VariationalDequantizer((1, 4, 4), hidden=4)
    with torch.no_grad():  # push sigmoid far into saturation: float32 rounds it to 1
        deq.net[-1].bias.fill_(40.0)
    q = deq.distribution(torch.randint(0, 256, (5, 1, 4, 4)).float())
    u = q.sample()
    assert u.max() <= 1 - U_MARGIN + 1e-7 and u.min() >= U_MARGIN
    prior = torch.distributions.Uniform(torch.zeros(1, 4, 4), torch.ones(1, 4, 4))
    assert torch.isfinite(prior.log_prob(u)).all()


def test_squeeze_round_trip_and_order():
    x = torch.arange(2 * 4 * 4.0).reshape(1, 2, 4, 4)
    s = squeeze2d(x)
    assert s.shape == (1, 8, 2, 2)
    assert s[0, :4, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # channel 0's top-left 2x2 block
    assert torch.equal(unsqueeze2d(s), x)
    noise = CrossUnitCoupling((2, 4, 4), 2, hidden=4)
    with pytest.raises(DataError, match="noise"):
        noise.augment(torch.zeros(3, 2, 4, 4), torch.zeros(3, 1, 4, 4))


# ---------------------------------------------------------------------- the example


def test_flows_example_smoke(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "flows.py"),
            "--smoke",
            "--no-progress",
            "--data",
            "mnist",
            "toy",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    flows = ["nice", "realnvp", "glow", "denseflow"]
    assert sorted(results["mnist"]) == sorted(flows)
    for name in flows:
        r = results["mnist"][name]
        assert 0 < r["test_bits_per_dim"] < 12 and r["bound"] == (name == "denseflow")
        assert r["parameters"] > 0 and len(r["history"]) == r["epochs"]
        assert (tmp_path / f"samples_{name}.png").stat().st_size > 1000
    for toy in ("moons", "rings", "8gaussians"):
        for name in flows:
            assert math.isfinite(results["toy"][toy][name]["test_nll"])
    assert (tmp_path / "toy_densities.png").stat().st_size > 5000
    assert (tmp_path / "bits_per_dim.png").exists()
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("data,flow") and len(rows) == 1 + 4 + 12
    assert "bits/dim" in proc.stdout
    # one meaning per column: -log p(x) of the continuous data, nats per example
    import csv

    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert "test_nll_nats" not in table[0]
    for row in table:
        data, name = row["data"], row["flow"]
        value = float(row["test_neg_log_density_nats"])
        if data == "mnist":  # dequantized images in [0, 1]^784: 784 ln 256 below the 8-bit NLL
            bpd = results["mnist"][name]["test_bits_per_dim"]
            assert value == pytest.approx((bpd - 8) * 784 * math.log(2), abs=1e-3)
            assert value == pytest.approx(
                results["mnist"][name]["test_neg_log_density_nats"], abs=1e-3
            )
        else:
            assert value == pytest.approx(
                results["toy"][data.split(":")[1]][name]["test_nll"], abs=1e-3
            )


@pytest.mark.parametrize(
    "name,shape,kw",
    [
        ("glow", (1, 8, 8), dict(depth=2, hidden=8, levels=2)),
        ("realnvp", (1, 8, 8), dict(depth=2, hidden=8)),
        ("glow", (6,), dict(depth=2, hidden=(16,))),
    ],
)
def test_log_determinants_stay_in_float32_under_bfloat16_autocast(name, shape, kw):
    """Mixed precision (a fit option the loop may offer): the networks run in bfloat16, but
    every coupling's log-scale (the log-determinant's terms), every 1x1 map's output and the
    log-density come back in float32, close to the float32 computation."""
    from pyro.distributions.transforms import AffineCoupling

    from probgen.flows.transforms import InvertibleLinear

    torch.manual_seed(0)
    model = FlowModel(name, event_shape=shape, preprocess="none", num_levels=None, **kw)
    x = torch.randn(16, *shape)
    model.initialize(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from the near-identity start
    exact = model.log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.log_prob(x)
        couplings = [m for m in model.modules() if isinstance(m, AffineCoupling)]
        scales = [m._cached_log_scale for m in couplings]
        for m in model.modules():
            if isinstance(m, InvertibleLinear):
                v = torch.randn((5,) + (m.channels,) + ((4, 4) if m._event_dim == 3 else ()))
                assert m(v).dtype == torch.float32
    assert mixed.dtype == torch.float32
    assert all(s.dtype == torch.float32 for s in scales if s is not None)
    assert (mixed - exact).abs().max() < 0.02 * exact.abs().max() + 0.5
    lin = invertible_conv1x1(4)
    v = torch.randn(3, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mapped = lin(v)
    assert torch.allclose(mapped, lin(v), rtol=1e-6, atol=1e-6)  # not rounded to bfloat16
