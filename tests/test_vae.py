"""The autoencoder family: every preset x network contract, likelihoods, objectives, errors."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

import probgen
from probgen.data import GaussianNoise, RandomBlocks
from probgen.errors import ConfigError, DataError
from probgen.infer import IWAE_ELBO
from probgen.metrics import iw_nll, negative_elbo
from probgen.models import LIKELIHOODS, PRESETS, VAE
from probgen.train import load_model, save_model
from tests.conftest import QUIET


def batch(n=6, binary=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    return ((x < 0.3).float() if binary else x), torch.randint(0, 10, (n,), generator=g)


def tiny(preset, net="mlp", **kw):
    hidden = (16,)
    return VAE.from_preset(preset, z_dim=3, net=net, hidden=hidden, **kw)


@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("preset", PRESETS.names())
def test_preset_contract(preset, net, tmp_path):
    torch.manual_seed(0)
    model = tiny(preset, net)
    x, y = batch()
    loss = probgen.SVIStep(model).loss((x, y))
    assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Predictive: posterior codes and means for data; prior samples without data
    post = Predictive(model.model, guide=model.guide, num_samples=3, return_sites=("z", "mean"))(
        x, y
    )
    assert post["z"].shape == (3, 6, 3) and post["mean"].shape == (3, 6, 784)
    labels = torch.arange(4) if model.num_labels else None
    s = model.sample(4, labels=labels)
    assert s.shape == (4, 1, 28, 28) and s.min() >= 0 and s.max() <= 1
    assert model.reconstruct(x, y).shape == x.shape
    loc, scale = model.encode(x, y)
    assert loc.shape == (6, 3) and (scale is None) == (model.encoder_kind == "delta")
    save_model(model, tmp_path / "m.pt")
    torch.manual_seed(1)
    other = tiny(preset, net)
    load_model(other, tmp_path / "m.pt")
    torch.manual_seed(2)
    a = model.reconstruct(x, y)
    torch.manual_seed(2)
    assert torch.equal(a, other.reconstruct(x, y))


def binarized(data):
    from probgen.data import TensorData, static_binarize

    return {k: TensorData(static_binarize(v.tensors[0]), v.tensors[1]) for k, v in data.items()}


@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_every_likelihood_trains_a_vae(name, mnist_small):
    data = {k: v.subset(slice(0, 256)) for k, v in mnist_small.items()}
    if name == "bernoulli":
        data = binarized(data)
    model = VAE(z_dim=4, hidden=(64,), likelihood=name)
    res = probgen.fit(
        model, data["train"], data["val"], epochs=3, lr=3e-3, batch_size=64, device="cpu", **QUIET
    )
    assert res.train_loss[-1] < res.train_loss[0]
    if name == "gaussian_learned":
        assert model.likelihood.scale.item() != pytest.approx(0.1)


def test_continuous_bernoulli_is_a_density_on_the_unit_interval():
    lik = LIKELIHOODS.get("continuous_bernoulli")()
    u = torch.linspace(0, 1, 20001)[:, None]
    for logit in (-3.0, 0.0, 0.7, 4.0):
        lp = lik(torch.full((1, 1), logit)).log_prob(u)
        assert torch.trapezoid(lp.exp(), u[:, 0]).item() == pytest.approx(1.0, abs=1e-3)


def test_gaussian_likelihood_is_normal_around_sigmoid():
    out = torch.randn(3, 784)
    x = torch.rand(3, 784)
    lp = LIKELIHOODS.get("gaussian")(scale=0.2)(out).log_prob(x)
    ref = torch.distributions.Normal(torch.sigmoid(out), 0.2).log_prob(x).sum(1)
    assert torch.allclose(lp, ref)


def test_autoencoder_loss_is_the_reconstruction_nll():
    model = tiny("ae")
    x, y = batch()
    loss = probgen.SVIStep(model).loss((x, y))
    logits = model.decoder(model.encode(x)[0])
    nll = (
        torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x.reshape(6, -1), reduction="none"
        )
        .sum(1)
        .mean()
    )
    assert loss.item() == pytest.approx(nll.item(), rel=1e-5)


def test_beta_scales_the_analytic_kl_term():
    x, y = batch()
    losses, kls = {}, {}
    for beta in (0.0, 1.0, 2.0, 4.0):
        torch.manual_seed(0)
        model = tiny("vae", beta=beta)
        elbo = TraceMeanField_ELBO(max_plate_nesting=1)
        torch.manual_seed(5)
        losses[beta] = elbo.differentiable_loss(model.model, model.guide, x, y).item()
        loc, scale = model.encode(x)
        kls[beta] = (
            torch.distributions.kl_divergence(
                torch.distributions.Normal(loc, scale), torch.distributions.Normal(0, 1)
            )
            .sum()
            .item()
        )
    kl = kls[1.0]
    for beta in (0.0, 2.0, 4.0):
        assert losses[beta] - losses[1.0] == pytest.approx((beta - 1) * kl, rel=1e-4, abs=1e-3)


def _value_and_grads(elbo, model, guide, params, *args):
    loss = elbo.differentiable_loss(model, guide, *args)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), grads


@pytest.mark.parametrize("particles,vectorize", [(1, False), (3, True), (2, False)])
def test_trace_objective_matches_pyro_without_host_reads(particles, vectorize, monkeypatch):
    """probgen's ``trace`` objective: Pyro's Trace_ELBO value and gradient, and for a
    reparameterized guide no float read of any site (Pyro's reads each one)."""
    import pyro.infer.trace_elbo as pyro_trace_elbo

    import probgen.infer.objectives as ours_module
    from probgen.infer import OBJECTIVES

    x, y = batch()
    model = tiny("vae")
    params = list(model.parameters())
    kw = dict(num_particles=particles, vectorize_particles=vectorize, max_plate_nesting=1)
    ours_cls = OBJECTIVES.get("trace")
    assert issubclass(ours_cls, Trace_ELBO)
    with pyro.get_param_store().scope():
        torch.manual_seed(5)
        ref, ref_g = _value_and_grads(Trace_ELBO(**kw), model.model, model.guide, params, x, y)
        reads = []
        monkeypatch.setattr(ours_module, "torch_item", lambda t: reads.append(1) or t.item())
        monkeypatch.setattr(pyro_trace_elbo, "torch_item", lambda t: reads.append(1) or t.item())
        torch.manual_seed(5)
        got, got_g = _value_and_grads(ours_cls(**kw), model.model, model.guide, params, x, y)
    assert reads == []
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(got_g, ref_g):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "settings,particles,vectorize",
    [
        (dict(), 1, False),
        (dict(), 3, True),
        (dict(beta=2.0), 2, False),
        (dict(beta=0.0), 1, False),
        (dict(guide_flow="iaf"), 2, True),
    ],
)
def test_meanfield_objective_matches_pyro_without_host_reads(
    settings, particles, vectorize, monkeypatch
):
    """probgen's ``meanfield`` objective: Pyro's TraceMeanField_ELBO value and gradient
    (analytic KL, a KL weight as Pyro scales or masks it, the sampled term of a flow guide
    whose KL torch lacks) without any float read (Pyro's reads three per step)."""
    import pyro.infer.trace_elbo as pyro_trace_elbo
    import pyro.infer.trace_mean_field_elbo as pyro_mean_field

    import probgen.infer.objectives as ours_module
    from probgen.infer import OBJECTIVES

    x, y = batch()
    model = tiny("vae", **settings)
    params = list(model.parameters())
    kw = dict(num_particles=particles, vectorize_particles=vectorize, max_plate_nesting=1)
    ours_cls = OBJECTIVES.get("meanfield")
    assert issubclass(ours_cls, TraceMeanField_ELBO)
    with pyro.get_param_store().scope():
        torch.manual_seed(5)
        ref, ref_g = _value_and_grads(
            TraceMeanField_ELBO(**kw), model.model, model.guide, params, x, y
        )
        reads = []
        for module in (ours_module, pyro_trace_elbo, pyro_mean_field):
            monkeypatch.setattr(module, "torch_item", lambda t: reads.append(1) or t.item())
        torch.manual_seed(5)
        got, got_g = _value_and_grads(ours_cls(**kw), model.model, model.guide, params, x, y)
        torch.manual_seed(5)
        pyro_reads = len(reads)
        TraceMeanField_ELBO(**kw).differentiable_loss(model.model, model.guide, x, y)
    assert pyro_reads == 0 and len(reads) > 0  # (the count would see Pyro's reads)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert sum(g is not None and g.abs().sum() > 0 for g in got_g) > 0
    for a, b in zip(got_g, ref_g):
        assert (a is None) == (b is None)
        assert a is None or torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("particles", [1, 3])
def test_fit_steps_reuse_the_data_plate_with_pyros_value_and_gradient(particles):
    """In fit's own steps of a VAE (the step declares the module) the model and guide share
    one plate per batch size; the ELBO and its gradient are Pyro's on fresh plates, with
    vectorized particles too (their plate at dim -2), and no plate dim stays allocated."""
    from pyro.poutine.runtime import _DIM_ALLOCATOR

    from probgen.infer.context import running_steps

    x, y = batch()
    model = tiny("vae")
    params = list(model.parameters())
    kw = dict(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    with pyro.get_param_store().scope():
        torch.manual_seed(5)
        ref, ref_g = _value_and_grads(Trace_ELBO(**kw), model.model, model.guide, params, x, y)
        assert model._plates == {}  # outside fit: fresh plates
        with running_steps(module=model), warnings.catch_warnings():
            warnings.simplefilter("error")  # Pyro's model/guide plate check too
            for half in (x[:3], x):  # two batch sizes: two plates
                _value_and_grads(
                    Trace_ELBO(**kw), model.model, model.guide, params, half, y[: len(half)]
                )
            torch.manual_seed(5)
            got, got_g = _value_and_grads(Trace_ELBO(**kw), model.model, model.guide, params, x, y)
            trace = pyro.poutine.trace(model.guide).get_trace(x, y)
        with running_steps(module=None):  # a step that does not declare it
            fresh = pyro.poutine.trace(model.guide).get_trace(x, y)
    assert sorted(model._plates) == [3, len(x)]
    assert "data" not in trace.nodes and "data" in fresh.nodes  # no subsample message
    assert trace.nodes["z"]["cond_indep_stack"][0].dim == -1
    assert all(d is None for d in _DIM_ALLOCATOR._stack)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(got_g, ref_g):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_trace_objective_takes_pyros_estimator_for_a_discrete_latent():
    """A guide site without reparameterization: the score-function surrogate, whose value
    is not the ELBO's; probgen's ``trace`` gives Pyro's value and gradient."""
    from probgen.infer import OBJECTIVES

    loc = torch.tensor(0.3, requires_grad=True)
    logit = torch.tensor(-0.2, requires_grad=True)
    data = torch.tensor([1.0, 0.5, 2.0])

    def model(data):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        with pyro.plate("d", 3):
            pyro.sample("x", dist.Normal(loc + c, 1.0), obs=data)

    def guide(data):
        pyro.sample("c", dist.Bernoulli(logits=logit))

    with pyro.get_param_store().scope():
        torch.manual_seed(2)
        ref, ref_g = _value_and_grads(Trace_ELBO(), model, guide, [loc, logit], data)
        torch.manual_seed(2)
        got, got_g = _value_and_grads(OBJECTIVES.get("trace")(), model, guide, [loc, logit], data)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert ref_g[1].abs().item() > 0  # the score-function gradient reaches the logit
    for a, b in zip(got_g, ref_g):
        assert torch.allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0, 4.0])
def test_every_beta_trains(beta, mnist_small):
    model = VAE(z_dim=4, hidden=(64,), beta=beta, likelihood="continuous_bernoulli")
    data = mnist_small["train"].subset(slice(0, 256))
    res = probgen.fit(model, data, None, epochs=3, lr=3e-3, batch_size=64, device="cpu", **QUIET)
    assert res.train_loss[-1] < res.train_loss[0]


def test_iwae_objective_matches_pyro_renyi_elbo_value_and_gradient():
    x, y = batch()
    model = tiny("vae")
    for vectorize in (True, False):
        torch.manual_seed(3)
        ours = IWAE_ELBO(num_particles=5, vectorize_particles=vectorize)
        loss = ours.differentiable_loss(model.model, model.guide, x, y)
        model.zero_grad()
        loss.backward()
        g_ours = [p.grad.clone() for p in model.parameters()]
        torch.manual_seed(3)
        pyro_elbo = RenyiELBO(
            alpha=0.0, num_particles=5, max_plate_nesting=1, vectorize_particles=vectorize
        )
        model.zero_grad()
        with pyro.get_param_store().scope():
            ref = pyro_elbo.loss_and_grads(model.model, model.guide, x, y)
        assert loss.item() == pytest.approx(ref, rel=1e-5)
        for a, p in zip(g_ours, model.parameters()):
            assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-5)
    # one particle: the IWAE bound is the ELBO
    torch.manual_seed(4)
    one = IWAE_ELBO(num_particles=1).differentiable_loss(model.model, model.guide, x, y)
    torch.manual_seed(4)
    assert one.item() == pytest.approx(
        Trace_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x, y).item(),
        rel=1e-5,
    )


def test_iwae_training_tightens_the_bound(mnist_small):
    data = {k: v.subset(slice(0, 256)) for k, v in mnist_small.items()}
    model = VAE(z_dim=4, hidden=(64,), likelihood="continuous_bernoulli")
    res = probgen.fit(
        model,
        data["train"],
        data["val"],
        epochs=3,
        lr=3e-3,
        batch_size=64,
        device="cpu",
        objective="iwae",
        num_particles=8,
        **QUIET,
    )
    assert res.train_loss[-1] < res.train_loss[0]
    torch.manual_seed(0)
    elbo = negative_elbo(model.model, model.guide, data["test"], num_particles=8)
    nll = iw_nll(model.model, model.guide, data["test"], num_samples=64)
    assert nll < elbo


def test_the_vae_learns_the_data(mnist_small):
    data = binarized(mnist_small)
    model = VAE(z_dim=8, hidden=(128,))
    before = negative_elbo(model.model, model.guide, data["test"], num_particles=4)
    probgen.fit(
        model, data["train"], data["val"], epochs=6, lr=3e-3, batch_size=64, device="cpu", **QUIET
    )
    after = negative_elbo(model.model, model.guide, data["test"], num_particles=4)
    assert after < before - 200 and after < 250  # 543 nats is a coin flip per pixel


def test_conditional_vae_generates_the_label_it_is_given(mnist_small):
    data = binarized(mnist_small)
    model = VAE.from_preset("conditional_vae", z_dim=2, hidden=(128,))
    probgen.fit(
        model, data["train"], None, epochs=10, lr=3e-3, batch_size=64, device="cpu", **QUIET
    )
    x, y = mnist_small["test"].all()
    # the mean of 64 generated images of label d is nearest to the mean of real test d's
    torch.manual_seed(0)
    real = torch.stack([x[y == d].reshape(-1, 784).mean(0) for d in range(10)])
    hits = 0
    for d in range(10):
        gen = model.sample(labels=torch.full((64,), d)).reshape(64, -1).mean(0)
        hits += int((real - gen).norm(dim=1).argmin()) == d
    assert hits >= 6, hits  # a model that ignored the label would hit at most one


def test_corruptions():
    x = torch.full((4, 1, 28, 28), 0.5)
    noisy = GaussianNoise(0.4)(x, generator=torch.Generator().manual_seed(0))
    assert noisy.min() >= 0 and noisy.max() <= 1
    # clipping at 0 and 1 is clipping the noise at +-t = 0.5: E[clip(e)^2] in closed form
    n01 = torch.distributions.Normal(0.0, 1.0)
    a, t, s = 0.5 / 0.4, 0.5, 0.4
    pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    var = s * s * (2 * n01.cdf(torch.tensor(a)).item() - 1 - 2 * a * pdf) + t * t * 2 * (
        1 - n01.cdf(torch.tensor(a)).item()
    )
    assert (noisy - x).std().item() == pytest.approx(math.sqrt(var), abs=0.01)
    raw = GaussianNoise(0.4, clip=False)(x, generator=torch.Generator().manual_seed(0))
    assert (raw - x).std().item() == pytest.approx(0.4, abs=0.015)
    holed = RandomBlocks(size=9)(torch.ones(5, 1, 28, 28))
    assert ((holed == 0).reshape(5, -1).sum(1) == 81).all()
    flat = RandomBlocks(size=5, count=2, image_shape=(1, 28, 28))(torch.ones(3, 784))
    zeros = (flat == 0).sum(1)
    assert ((zeros >= 25) & (zeros <= 50)).all()
    with pytest.raises(ConfigError, match="image_shape"):
        RandomBlocks()(torch.ones(3, 784))
    with pytest.raises(ConfigError, match="does not fit"):
        RandomBlocks(size=40)(torch.ones(1, 1, 28, 28))


def test_denoising_guide_sees_noise_but_the_target_is_clean():
    model = tiny("denoising_ae")
    x, _ = batch()
    seen = []
    model.encoder.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    probgen.SVIStep(model).loss((x, None))
    assert not torch.equal(seen[0], x.reshape(6, -1))
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(z_dim=0), "z_dim"),
        (dict(beta=-1.0), "beta"),
        (dict(likelihood="poisson"), "unknown likelihood"),
        (dict(net="transformer"), "unknown network"),
        (dict(encoder="flow"), "encoder"),
        (dict(num_labels=-2), "num_labels"),
        (dict(net="conv", image_shape=(1, 30, 30)), "divisible by 4"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        VAE(**kwargs)


def test_bad_data_are_clear_errors():
    model = tiny("conditional_vae")
    x, y = batch()
    with pytest.raises(DataError, match="binary"):
        model.model(x * 0.5, y)
    with pytest.raises(DataError, match="6 images but labels"):
        model.model(x, y[:4])
    with pytest.raises(DataError, match=r"0\.\.9"):
        model.model(x, y + 10)
    with pytest.raises(DataError, match="pass labels"):
        model.model(x)
    with pytest.raises(DataError, match="shape"):
        model.model(x[:, :, :27], y)
    with pytest.raises(DataError, match="0 images"):
        model.guide(x[:0], y[:0])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        tiny("vae", likelihood="gaussian").model(x * 255)
