"""The training spine: any Pyro model/guide pair as pyro.infer.SVI trains it, phases for
adversarial games, resume of a multi-phase run, callbacks and monitors, DataLoader input,
probgen.load, and the settings a resumed run must share."""

import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, config_enumerate
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

import probgen
from probgen.data import TensorData
from probgen.errors import CheckpointError, ConfigError, DataError
from probgen.models import VAE
from probgen.train import (
    CSVLogger,
    FitConfig,
    LossStep,
    Metric,
    Phase,
    PhasedStep,
    SVIStep,
    WeightAverage,
    load_checkpoint,
)
from tests.conftest import QUIET

# --------------------------------------------------------------------------- Pyro equivalence


def param_model(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, scale), obs=x)


def empty_guide(x):
    pass


class BayesianRegression(PyroModule):
    def __init__(self):
        super().__init__()
        self.linear = PyroModule[nn.Linear](3, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 5.0).expand([1]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


@config_enumerate
def mixture_model(x):
    weights = pyro.param("weights", torch.ones(2) / 2, constraint=dist.constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
    with pyro.plate("data", x.shape[0]):
        k = pyro.sample("k", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(locs[k], 1.0), obs=x)


def mixture_guide(x):
    pass


def nested_model(x):
    # a plate inside a plate: groups x members
    mu = pyro.param("mu", torch.zeros(x.shape[1]))
    with pyro.plate("groups", x.shape[1], dim=-1):
        shift = pyro.sample("shift", dist.Normal(mu, 1.0))
        with pyro.plate("members", x.shape[0], dim=-2):
            pyro.sample("x", dist.Normal(shift, 0.5), obs=x)


def nested_guide(x):
    q = pyro.param("q", torch.zeros(x.shape[1]))
    with pyro.plate("groups", x.shape[1], dim=-1):
        pyro.sample("shift", dist.Normal(q, 0.3))


def _batches(n_batches=4, size=16, dim=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dim is None:
        return [(torch.randn(size, generator=g) * 0.5 + 2.0,) for _ in range(n_batches)]
    return [(torch.randn(size, dim, generator=g),) for _ in range(n_batches)]


def _regression_batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(4):
        x = torch.randn(32, 3, generator=g)
        out.append((x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(32, generator=g)))
    return out


def _run_pyro_svi(model, guide, elbo, batches, epochs, lr, seed):
    pyro.clear_param_store()
    probgen.train.set_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)
    for _ in range(epochs):
        for b in batches:
            svi.step(*b)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _run_probgen(model, guide, elbo, batches, epochs, lr, seed):
    pyro.clear_param_store()
    probgen.fit(
        SVIStep(model, guide, loss=elbo),
        batches,
        epochs=epochs,
        lr=lr,
        seed=seed,
        device="cpu",
        restore_best=False,
        patience=None,
        **QUIET,
    )
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _vae_case():
    vae = VAE(z_dim=3, hidden=(16,))
    g = torch.Generator().manual_seed(2)
    batches = [((torch.rand(8, 1, 28, 28, generator=g) > 0.5).float(),) for _ in range(3)]
    return vae.model, vae.guide, batches


@pytest.mark.parametrize("case", ["param", "autonormal", "enum", "tracegraph", "nested", "vae"])
def test_fit_equals_pyro_svi(case):
    """N steps through probgen.fit end with the same parameters as N steps of Pyro's SVI
    (same seed, data order and Adam settings)."""
    if case == "param":
        args = (param_model, empty_guide, lambda: Trace_ELBO(), _batches())
    elif case == "autonormal":
        model = BayesianRegression()
        args = (model, AutoNormal(model), lambda: Trace_ELBO(), _regression_batches())
    elif case == "enum":
        args = (
            mixture_model,
            mixture_guide,
            lambda: TraceEnum_ELBO(max_plate_nesting=1),
            _batches(),
        )
    elif case == "tracegraph":
        args = (param_model, empty_guide, lambda: TraceGraph_ELBO(), _batches())
    elif case == "nested":
        args = (nested_model, nested_guide, lambda: Trace_ELBO(), _batches(dim=3))
    else:
        model, guide, batches = _vae_case()
        args = (model, guide, lambda: Trace_ELBO(), batches)
    model, guide, make_elbo, batches = args
    if case == "autonormal":  # a fresh guide for each side: AutoNormal keeps its params
        ours = _run_probgen(model, AutoNormal(model), make_elbo(), batches, 3, 0.05, 7)
        ref = _run_pyro_svi(model, AutoNormal(model), make_elbo(), batches, 3, 0.05, 7)
    elif case == "vae":  # the same initial weights on each side
        vae = model.__self__
        start = {k: v.clone() for k, v in vae.state_dict().items()}
        ours = _run_probgen(vae.model, vae.guide, make_elbo(), batches, 3, 0.05, 7)
        vae.load_state_dict(start)
        # fit leaves no gradient behind (Pyro's SVI would accumulate onto it)
        assert all(p.grad is None for p in vae.parameters())
        ref = _run_pyro_svi(vae.model, vae.guide, make_elbo(), batches, 3, 0.05, 7)
        moved = [
            k
            for k in start
            if k.startswith("decoder") and not torch.equal(ref[f"vae$$${k}"], start[k])
        ]
        assert moved
    else:
        ours = _run_probgen(model, guide, make_elbo(), batches, 3, 0.05, 7)
        ref = _run_pyro_svi(model, guide, make_elbo(), batches, 3, 0.05, 7)
    assert set(ours) == set(ref) and ours
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-6, rtol=1e-5), k
    # and training moved them (the comparison is not between two untouched inits)
    pyro.clear_param_store()


def test_param_sites_train_without_a_module():
    pyro.clear_param_store()
    data = TensorData(torch.randn(256) * 0.5 + 3.0)
    res = probgen.fit(
        SVIStep(param_model, empty_guide),
        data,
        epochs=60,
        lr=0.1,
        batch_size=64,
        device="cpu",
        **QUIET,
    )
    assert abs(pyro.param("loc").item() - 3.0) < 0.15
    assert abs(pyro.param("scale").item() - 0.5) < 0.1
    assert res.train_loss[-1] < res.train_loss[0]
    pyro.clear_param_store()


def test_autoguide_trains_without_calling_it_first():
    pyro.clear_param_store()
    model = BayesianRegression()
    guide = AutoNormal(model)
    batches = _regression_batches()
    probgen.fit(SVIStep(model, guide), batches, epochs=150, lr=0.05, device="cpu", **QUIET)
    w = pyro.param("AutoNormal.locs.linear.weight").detach().reshape(-1)
    assert torch.allclose(w, torch.tensor([1.0, -2.0, 0.5]), atol=0.15), w
    pyro.clear_param_store()


def test_module_form_trains_pyro_params_too():
    """SVIStep(model, guide, module=m): the module's parameters and the model's pyro.param
    sites both train (the first edition silently left the latter untouched)."""
    pyro.clear_param_store()
    holder = nn.Linear(1, 1)

    def model(x):
        pyro.module("holder", holder)
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc + 0 * holder.weight.sum(), 1.0), obs=x)

    data = TensorData(torch.full((64,), 2.0))
    # (the last weights, as SVI leaves them: enough epochs for Adam's swing to settle)
    probgen.fit(
        SVIStep(model, empty_guide, module=holder),
        data,
        epochs=80,
        lr=0.1,
        batch_size=64,
        device="cpu",
        **QUIET,
    )
    assert abs(pyro.param("loc").item() - 2.0) < 0.1
    # the older positional form is refused with the keyword to use
    with pytest.raises(ConfigError, match=r"write SVIStep\(model, guide, module=module\)"):
        SVIStep(holder, model, empty_guide)
    pyro.clear_param_store()


def test_probgen_models_leave_the_users_param_store_alone():
    pyro.clear_param_store()
    pyro.param("users_own", torch.tensor(1.5))
    vae = VAE(z_dim=2, hidden=(8,))
    x = (torch.rand(64, 1, 28, 28) > 0.5).float()
    probgen.fit(vae, TensorData(x), epochs=1, batch_size=32, device="cpu", **QUIET)
    assert list(pyro.get_param_store().keys()) == ["users_own"]
    pyro.clear_param_store()


def test_seed_none_never_reseeds_global_generators():
    def run():
        torch.manual_seed(123)
        vae = VAE(z_dim=2, hidden=(8,))
        x = (torch.rand(64, 1, 28, 28) > 0.5).float()
        probgen.fit(vae, TensorData(x), epochs=2, batch_size=16, device="cpu", seed=None, **QUIET)
        return torch.cat([p.detach().reshape(-1) for p in vae.parameters()])

    a, b = run(), run()
    assert torch.equal(a, b)
    assert torch.initial_seed() == 123  # torch.seed() would have changed it


# --------------------------------------------------------------------------- phases: a 1-D GAN


class ToyGAN(nn.Module):
    """The 1-D toy: z ~ U(0, 1) scalar, G(z) should follow N(-1, 1)."""

    def __init__(self):
        super().__init__()
        self.generator = nn.Sequential(
            nn.Linear(1, 32),
            nn.LeakyReLU(0.2),
            nn.Linear(32, 32),
            nn.LeakyReLU(0.2),
            nn.Linear(32, 1),
        )
        self.discriminator = nn.Sequential(
            nn.Linear(1, 32),
            nn.LeakyReLU(0.2),
            nn.Linear(32, 32),
            nn.LeakyReLU(0.2),
            nn.Linear(32, 1),
        )

    def sample(self, n):
        return self.generator(torch.rand(n, 1))

    def d_loss(self, batch, ctx):
        real = batch[0].reshape(-1, 1)
        fake = self.sample(real.shape[0]).detach()
        return F.binary_cross_entropy_with_logits(
            self.discriminator(real), torch.ones_like(real)
        ) + F.binary_cross_entropy_with_logits(self.discriminator(fake), torch.zeros_like(fake))

    def g_loss(self, batch, ctx):  # non-saturating: maximise log D(G(z))
        fake = self.sample(batch[0].shape[0])
        return F.binary_cross_entropy_with_logits(self.discriminator(fake), torch.ones_like(fake))

    def fit_step(self, config):
        betas = {"betas": (0.5, 0.999)}
        return PhasedStep(
            self,
            [
                Phase("D", self.d_loss, params=self.discriminator, optim_kwargs=betas),
                Phase("G", self.g_loss, params=self.generator, optim_kwargs=betas),
            ],
        )


def toy_data(n=8192, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorData(torch.randn(n, generator=g) - 1.0)


# The 1-D GAN that learns N(-1, 1) from z ~ U(0, 1) through these phases, to within 0.05 of
# the mean and std: tests/test_gan.py::test_toy_recipe_reaches_the_target_moments.


def test_phases_move_only_their_own_parameters():
    gan = ToyGAN()
    g0 = [p.detach().clone() for p in gan.generator.parameters()]
    d0 = [p.detach().clone() for p in gan.discriminator.parameters()]
    only_d = PhasedStep(gan, [Phase("D", gan.d_loss, params=gan.discriminator)])
    probgen.fit(only_d, toy_data(512), epochs=1, batch_size=64, device="cpu", **QUIET)
    assert all(torch.equal(a, b) for a, b in zip(g0, gan.generator.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d0, gan.discriminator.parameters()))
    d1 = [p.detach().clone() for p in gan.discriminator.parameters()]
    only_g = PhasedStep(gan, [Phase("G", gan.g_loss, params=gan.generator)])
    probgen.fit(only_g, toy_data(512), epochs=1, batch_size=64, device="cpu", **QUIET)
    assert all(torch.equal(a, b) for a, b in zip(d1, gan.discriminator.parameters()))


def test_k_discriminator_steps_take_fresh_batches():
    seen = []
    net = nn.Linear(1, 1)

    def d_loss(batch, ctx):
        seen.append(("D", batch[0][0].item()))
        return net(batch[0].reshape(-1, 1)).pow(2).mean()

    def g_loss(batch, ctx):
        seen.append(("G", batch[0][0].item()))
        return net(batch[0].reshape(-1, 1)).pow(2).mean()

    data = [(torch.full((4,), float(i)),) for i in range(6)]
    step = PhasedStep(
        net, [Phase("D", d_loss, params=net, repeats=3), Phase("G", g_loss, params=net)]
    )
    probgen.fit(step, data, epochs=1, device="cpu", **QUIET)
    # each iteration: three D steps on three fresh batches, then G on the last of them
    assert seen == [
        ("D", 0.0),
        ("D", 1.0),
        ("D", 2.0),
        ("G", 2.0),
        ("D", 3.0),
        ("D", 4.0),
        ("D", 5.0),
        ("G", 5.0),
    ]
    with pytest.raises(ConfigError, match="repeats"):
        Phase("D", d_loss, repeats=0)


class Killed(Exception):
    pass


def kill_after(epochs):
    def cb(entry):
        if entry["epoch"] + 1 == epochs:
            raise Killed()  # after the checkpoint of that epoch, as a kill would

    return cb


def test_resumed_adversarial_run_equals_uninterrupted(tmp_path):
    def run(ckpt, resume=False, init_seed=0, callbacks=()):
        torch.manual_seed(init_seed)
        gan = ToyGAN()
        probgen.fit(
            gan,
            toy_data(1024),
            epochs=4,
            batch_size=128,
            lr=2e-3,
            device="cpu",
            seed=4,
            checkpoint=str(ckpt),
            resume=resume,
            patience=None,
            restore_best=False,
            lr_schedule="cosine",
            callbacks=callbacks,
            **QUIET,
        )
        return gan

    full = run(tmp_path / "a.pt")
    with pytest.raises(Killed):
        run(tmp_path / "b.pt", callbacks=[kill_after(2)])
    assert load_checkpoint(tmp_path / "b.pt")["epoch"] == 2
    resumed = run(tmp_path / "b.pt", resume=True, init_seed=99)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    state = load_checkpoint(tmp_path / "b.pt")
    assert [p["name"] for p in state["phases"]] == ["D", "G"]
    assert all(p["scheduler"] is not None and p["steps"] == 4 * 8 for p in state["phases"])
    # the schedule's length depends on epochs: a resume may not change them then
    with pytest.raises(CheckpointError, match="epochs: 4 in the checkpoint, 6 now"):
        probgen.fit(
            ToyGAN(),
            toy_data(1024),
            epochs=6,
            batch_size=128,
            lr=2e-3,
            device="cpu",
            seed=4,
            checkpoint=str(tmp_path / "b.pt"),
            resume=True,
            lr_schedule="cosine",
            **QUIET,
        )


def test_a_phase_adds_a_custom_term_to_a_pyro_objective():
    """ELBO + custom term in one phase: its gradient is the sum of the two gradients."""
    from probgen.train import ELBOLoss

    torch.manual_seed(0)
    vae = VAE(z_dim=2, hidden=(8,))
    x = (torch.rand(16, 1, 28, 28) > 0.5).float()
    neg_elbo = ELBOLoss(vae.model, vae.guide, "meanfield")
    penalty = lambda: 0.1 * sum((p**2).sum() for p in vae.decoder.parameters())

    def grads(fn):
        for p in vae.parameters():
            p.grad = None
        torch.manual_seed(1)
        with pyro.get_param_store().scope():
            fn().backward()
        return [
            p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in vae.parameters()
        ]

    both = grads(lambda: neg_elbo((x,)) + penalty())
    elbo_only = grads(lambda: neg_elbo((x,)))
    pen_only = grads(penalty)
    for g, a, b in zip(both, elbo_only, pen_only):
        assert torch.allclose(g, a + b, atol=1e-5)
    step = PhasedStep(vae, [Phase("ae", lambda b, ctx: neg_elbo(b) + penalty(), params=vae)])
    res = probgen.fit(step, TensorData(x), epochs=3, batch_size=8, lr=1e-2, device="cpu", **QUIET)
    assert res.train_loss[-1] < res.train_loss[0]
    with pytest.raises(ConfigError, match="differentiable_loss"):
        ELBOLoss(vae.model, vae.guide, TraceGraph_ELBO())


# --------------------------------------------------------------------------- monitors, callbacks


def test_monitor_follows_a_callback_metric_every_n_epochs():
    net = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(net.weight)
    data = TensorData(torch.ones(32, 1), torch.ones(32, 1))
    # a "score" that peaks at epoch 4 (0-based 3) and is computed every other epoch
    scores = iter([1.0, 5.0, 2.0, 0.5, 0.1])
    res = probgen.fit(
        LossStep(net, lambda m, x, y: ((m(x) - y) ** 2).mean()),
        data,
        epochs=10,
        lr=0.01,
        batch_size=32,
        device="cpu",
        monitor="score",
        mode="max",
        patience=2,
        callbacks=[Metric("score", lambda m: next(scores), every=2)],
        **QUIET,
    )
    assert res.curve("score") == [None, 1.0, None, 5.0, None, 2.0, None, 0.5]
    assert res.best_epoch == 3 and res.best_loss == 5.0 and res.stopped_early


def test_lr_schedule_and_csv_log(tmp_path):
    net = nn.Linear(2, 1)
    data = TensorData(torch.randn(64, 2), torch.randn(64, 1))
    res = probgen.fit(
        LossStep(net, lambda m, x, y: ((m(x) - y) ** 2).mean()),
        data,
        epochs=5,
        batch_size=16,
        lr=0.1,
        lr_schedule="warmup_cosine",
        warmup_epochs=1,
        device="cpu",
        callbacks=[CSVLogger(tmp_path / "log.csv")],
        **QUIET,
    )
    lrs = res.curve("lr")
    assert lrs[0] == pytest.approx(0.1, rel=1e-6)  # the end of the warm-up
    assert lrs[1] > lrs[2] > lrs[3] > lrs[4] and lrs[4] < 0.01
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss") and len(rows) == 6
    with pytest.raises(ConfigError, match="learning-rate schedule"):
        FitConfig(lr_schedule="sawtooth").check()


def _regression_net_and_data():
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(96, 3, generator=g)
    data = TensorData(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + torch.randn(96, 1, generator=g))
    return net, LossStep(net, lambda m, x, y: ((m(x) - y) ** 2).mean()), data


class EpochWeights:
    """Records the module's weights after every epoch's training."""

    def __init__(self):
        self.seen = []

    def on_validation_end(self, run, entry):
        self.seen.append(torch.cat([p.detach().flatten().clone() for p in run.module.parameters()]))


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("kind", ["ema", "uniform"])
def test_weight_average_is_the_average_of_the_epochs_weights(kind):
    net, step, data = _regression_net_and_data()
    rec = EpochWeights()
    avg = WeightAverage(
        kind, decay=0.6, start=3, metrics={"avg_w0": lambda m: float(m.weight[0, 0])}
    )
    res = probgen.fit(
        step,
        data,
        epochs=7,
        batch_size=16,
        lr=0.05,
        device="cpu",
        restore_best=False,
        patience=None,
        callbacks=[rec, avg],
        **QUIET,
    )
    w = rec.seen[2:]  # the epochs from start=3
    if kind == "ema":
        expect = w[0].clone()
        for v in w[1:]:
            expect = 0.6 * expect + 0.4 * v
    else:
        expect = torch.stack(w).mean(0)
    assert avg.num_averaged == 5
    assert torch.allclose(_flat(net), expect, atol=1e-6)  # swapped in at the end
    assert not torch.allclose(expect, rec.seen[-1], atol=1e-4)  # an average, not the last
    # the metric saw the averaged copy, epoch by epoch; nothing before start
    curve = res.curve("avg_w0")
    assert curve[:2] == [None, None]
    assert curve[-1] == pytest.approx(float(expect[0]), abs=1e-6)


def test_weight_average_swap_off_keeps_the_trained_weights_and_copies_on_request():
    net, step, data = _regression_net_and_data()
    rec = EpochWeights()
    avg = WeightAverage("uniform", swap=False)
    with pytest.raises(ConfigError, match="no average yet"):
        avg.copy_to(net)
    probgen.fit(
        step,
        data,
        epochs=3,
        batch_size=16,
        lr=0.05,
        device="cpu",
        restore_best=False,
        patience=None,
        callbacks=[rec, avg],
        **QUIET,
    )
    assert torch.equal(_flat(net), rec.seen[-1])
    other = nn.Linear(3, 1)
    avg.copy_to(other)
    assert torch.allclose(_flat(other), torch.stack(rec.seen).mean(0), atol=1e-6)
    assert torch.equal(_flat(avg.averaged), _flat(other))


def test_resumed_weight_average_equals_uninterrupted(tmp_path):
    def run(ckpt, resume=False, kill=None):
        net, step, data = _regression_net_and_data()
        avg = WeightAverage("ema", decay=0.5)
        cbs = [avg] + ([kill_after(kill)] if kill else [])
        probgen.fit(
            step,
            data,
            epochs=5,
            batch_size=16,
            lr=0.05,
            device="cpu",
            seed=1,
            checkpoint=str(ckpt),
            resume=resume,
            restore_best=False,
            patience=None,
            callbacks=cbs,
            **QUIET,
        )
        return net, avg

    full, _avg_full = run(tmp_path / "a.pt")
    with pytest.raises(Killed):
        run(tmp_path / "b.pt", kill=3)
    assert load_checkpoint(tmp_path / "b.pt")["callbacks"][0]["averaged"]["n_averaged"] == 3
    resumed, avg_resumed = run(tmp_path / "b.pt", resume=True)
    assert avg_resumed.num_averaged == 5
    assert torch.equal(_flat(full), _flat(resumed))


def test_weight_average_refuses_bad_settings():
    with pytest.raises(ConfigError, match="kind must be one of"):
        WeightAverage("swa")
    for decay in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match=r"decay must lie in \(0, 1\), got"):
            WeightAverage(decay=decay)
    with pytest.raises(ConfigError, match="decay must be a number, got True"):
        WeightAverage(decay=True)
    with pytest.raises(ConfigError, match="start must be at least 1, got 0; the first epoch"):
        WeightAverage(start=0)
    pyro.clear_param_store()
    with pytest.raises(ConfigError, match="no module"):
        probgen.fit(
            SVIStep(param_model, empty_guide),
            _batches(),
            epochs=1,
            device="cpu",
            callbacks=[WeightAverage()],
            **QUIET,
        )
    pyro.clear_param_store()


def test_fit_returns_the_module_in_the_mode_it_came_in():
    vae = VAE(z_dim=2, hidden=(8,))
    x = TensorData((torch.rand(32, 1, 28, 28) > 0.5).float())
    vae.eval()
    probgen.fit(vae, x, epochs=1, batch_size=16, device="cpu", **QUIET)
    assert not vae.training
    vae.train()
    probgen.fit(vae, x, epochs=1, batch_size=16, device="cpu", **QUIET)
    assert vae.training


# --------------------------------------------------------------------------- data loaders


def test_dataloader_input_trains_and_validates():
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-1.0], [2.0]])
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64)
    net = nn.Linear(3, 1)
    res = probgen.fit(
        LossStep(net, lambda m, a, b: ((m(a) - b) ** 2).mean()),
        loader,
        val,
        epochs=30,
        lr=0.05,
        device="cpu",
        **QUIET,
    )
    assert res.val_loss[-1] < 0.01 * res.val_loss[0]
    # the same batches in the same order, from a plain list and from TensorData's slices
    fixed = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    a, b = nn.Linear(3, 1), nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    loss = lambda m, u, v: ((m(u) - v) ** 2).mean()
    probgen.fit(LossStep(a, loss), fixed, epochs=2, device="cpu", **QUIET)
    probgen.fit(
        LossStep(b, loss),
        DataLoader(TensorDataset(x, y), batch_size=32),
        epochs=2,
        device="cpu",
        **QUIET,
    )
    assert torch.equal(a.weight, b.weight)


def test_dataloader_over_an_image_folder_streams_from_disk(tmp_path):
    """Images read from disk batch by batch (torchvision's ImageFolder) train a network."""
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    g = torch.Generator().manual_seed(0)
    for label, level in (("dark", 40), ("light", 215)):
        (tmp_path / label).mkdir()
        for i in range(24):
            pixels = (level + torch.randint(-30, 30, (8, 8), generator=g)).clamp(0, 255)
            Image.fromarray(pixels.to(torch.uint8).numpy(), mode="L").save(
                tmp_path / label / f"{i}.png"
            )
    folder = datasets.ImageFolder(
        str(tmp_path),
        transform=transforms.ToTensor(),
        loader=lambda path: Image.open(path).convert("L"),
    )
    loader = DataLoader(folder, batch_size=8, shuffle=True, generator=g)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    res = probgen.fit(
        LossStep(net, lambda m, x, y: F.cross_entropy(m(x), y)),
        loader,
        epochs=15,
        lr=0.05,
        device="cpu",
        **QUIET,
    )
    assert res.train_loss[-1] < 0.1 < res.train_loss[0]


def test_bad_training_data_is_refused():
    with pytest.raises(ConfigError, match="TensorData or an iterable"):
        probgen.fit(
            LossStep(nn.Linear(1, 1), lambda m, x: m(x).mean()), 42, epochs=1, device="cpu", **QUIET
        )


def _grey_vae_data(n=64):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 1, 28, 28, generator=g) < 0.3).float()
    grey = x.clone()
    grey[n - 1, 0, 5, 5] = 0.5  # one grey pixel in the last example only
    return x, grey


@pytest.mark.parametrize("where", ["train", "val"])
def test_data_checked_whole_before_the_first_step(where):
    """The VAE's per-batch check is skipped inside fit because the loop checks the whole
    TensorData first: a grey pixel anywhere is still refused, before any update."""
    x, grey = _grey_vae_data()
    vae = VAE(z_dim=2, hidden=(8,))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    train, val = (
        (TensorData(grey), TensorData(x)) if where == "train" else (TensorData(x), TensorData(grey))
    )
    with pytest.raises(DataError, match="binary pixels"):
        probgen.fit(vae, train, val, epochs=1, batch_size=16, device="cpu", **QUIET)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())


def test_the_whole_data_is_checked_once_not_per_batch(monkeypatch):
    x, _ = _grey_vae_data()
    vae = VAE(z_dim=2, hidden=(8,))
    sizes = []
    check = vae.likelihood.check
    monkeypatch.setattr(vae.likelihood, "check", lambda t: (sizes.append(t.shape[0]), check(t)))
    probgen.fit(
        vae, TensorData(x), TensorData(x[:32]), epochs=2, batch_size=16, device="cpu", **QUIET
    )
    assert sizes == [64, 32]  # train and validation, whole, once
    sizes.clear()
    probgen.fit(vae, [(x[:32],), (x[32:],)], epochs=2, device="cpu", **QUIET)
    assert sizes == [32, 32, 32, 32]  # a list of batches: every batch, every epoch


def test_batches_the_loop_cannot_check_whole_are_checked_one_by_one():
    """A DataLoader (or a TensorData with a per-batch transform) is checked per batch."""
    x, grey = _grey_vae_data()
    with pytest.raises(DataError, match="binary pixels"):
        probgen.fit(
            VAE(z_dim=2, hidden=(8,)), [(x[:32],), (grey[32:],)], epochs=1, device="cpu", **QUIET
        )
    with pytest.raises(DataError, match="binary pixels"):
        probgen.fit(
            VAE(z_dim=2, hidden=(8,)),
            TensorData(x, transform=lambda b, g: (b[0] * 0.5,)),
            epochs=1,
            batch_size=16,
            device="cpu",
            **QUIET,
        )


def test_deterministic_sites_skipped_only_inside_the_loops_steps():
    """fit's steps trace no "mean" site (no loss reads it); Predictive after fit, and a
    Predictive run from a callback during fit, both still return it."""
    from probgen.infer.context import current_step

    x, _ = _grey_vae_data()
    vae = VAE(z_dim=2, hidden=(8,))
    seen, from_callback = [], []

    def spy_model(*args, **kw):
        with pyro.poutine.block():
            inner = pyro.poutine.trace(vae.model).get_trace(*args, **kw)
        seen.append((current_step(), "mean" in inner.nodes))
        return vae.model(*args, **kw)

    def callback(entry):
        from_callback.append(
            pyro.infer.Predictive(
                vae.model, guide=vae.guide, num_samples=2, return_sites=("mean",)
            )(x[:3])["mean"].shape
        )

    probgen.fit(
        SVIStep(spy_model, vae.guide, module=vae, loss="meanfield"),
        TensorData(x),
        TensorData(x),
        epochs=1,
        batch_size=32,
        device="cpu",
        callbacks=[callback],
        **QUIET,
    )
    assert seen and all(ctx is not None and not has_mean for ctx, has_mean in seen)
    assert from_callback == [torch.Size([2, 3, 784])]
    assert current_step() is None
    post = pyro.infer.Predictive(vae.model, guide=vae.guide, num_samples=2, return_sites=("mean",))(
        x[:3]
    )
    assert post["mean"].shape == (2, 3, 784)


def test_a_probgen_model_passed_as_bare_functions_still_registers_its_parameters():
    """Inside fit the VAE skips pyro.module only when the step declares its module; as a
    bare model/guide pair its parameters are found through Pyro and every one trains."""
    pyro.clear_param_store()  # a bare pair uses the global store: no stale "vae$$$" names
    x, _ = _grey_vae_data()
    vae = VAE(z_dim=2, hidden=(8,))
    before = {k: v.clone() for k, v in vae.named_parameters()}
    probgen.fit(
        SVIStep(vae.model, vae.guide, loss="meanfield"),
        TensorData(x),
        epochs=1,
        batch_size=16,
        device="cpu",
        **QUIET,
    )
    assert all(not torch.equal(before[k], v) for k, v in vae.named_parameters())
    # a compiled objective traces the parameters through pyro.module: the VAE keeps it
    jit_vae = VAE(z_dim=2, hidden=(8,))
    before = {k: v.clone() for k, v in jit_vae.named_parameters()}
    probgen.fit(
        jit_vae, TensorData(x), epochs=1, batch_size=16, device="cpu", objective="jit", **QUIET
    )
    assert all(not torch.equal(before[k], v) for k, v in jit_vae.named_parameters())
    pyro.clear_param_store()


# --------------------------------------------------------------------------- checkpoints


def test_load_returns_a_ready_model(tmp_path):
    torch.manual_seed(0)
    vae = VAE(z_dim=3, hidden=(16,), likelihood="continuous_bernoulli")
    x = torch.rand(64, 1, 28, 28)
    probgen.fit(
        vae,
        TensorData(x[:48]),
        TensorData(x[48:]),
        epochs=3,
        batch_size=16,
        device="cpu",
        checkpoint=str(tmp_path / "vae.pt"),
        **QUIET,
    )
    loaded = probgen.load(tmp_path / "vae.pt")
    assert type(loaded) is VAE and loaded.z_dim == 3 and not loaded.training
    for (k, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k  # the best weights, as fit returned them
    last = probgen.load(tmp_path / "vae.pt", weights="last")
    assert type(last) is VAE


def test_load_a_cvae_and_a_flow(tmp_path):
    from probgen.models import CVAE, Baseline, FlowModel

    cvae = CVAE(Baseline(hidden=(8,)), z_dim=2, hidden=(8,))
    probgen.train.save_model(cvae, tmp_path / "cvae.pt")
    again = probgen.load(tmp_path / "cvae.pt")
    assert again.baseline.net[0].out_features == 8 and again.z_dim == 2
    assert torch.equal(again.baseline.net[0].weight, cvae.baseline.net[0].weight)
    flow = FlowModel(
        "realnvp", event_shape=(2,), preprocess="none", num_levels=None, depth=2, hidden=8
    )
    probgen.train.save_model(flow, tmp_path / "flow.pt")
    back = probgen.load(tmp_path / "flow.pt")
    z = torch.randn(5, 2)
    assert torch.allclose(back.distribution().log_prob(z), flow.distribution().log_prob(z))


def test_load_explains_a_checkpoint_without_settings(tmp_path):
    probgen.train.save_model(nn.Linear(2, 2), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="load_model"):
        probgen.load(tmp_path / "plain.pt")


def test_resume_names_every_differing_setting_and_applies_a_new_lr(tmp_path, capsys):
    net = nn.Linear(1, 1)
    data = TensorData(torch.randn(32, 1), torch.randn(32, 1))
    loss = lambda m, x, y: ((m(x) - y) ** 2).mean()
    ck = str(tmp_path / "r.pt")
    probgen.fit(LossStep(net, loss), data, epochs=1, device="cpu", checkpoint=ck, **QUIET)
    with pytest.raises(
        CheckpointError,
        match=r"batch_size: 128 in the checkpoint, 16 now; "
        r"weight_decay: 0.0 in the checkpoint, 0.1 now",
    ):
        probgen.fit(
            LossStep(net, loss),
            data,
            epochs=2,
            device="cpu",
            checkpoint=ck,
            resume=True,
            batch_size=16,
            weight_decay=0.1,
            **QUIET,
        )
    res = probgen.fit(
        LossStep(net, loss),
        data,
        epochs=2,
        device="cpu",
        checkpoint=ck,
        resume=True,
        lr=0.01,
        progress=False,
    )
    assert "with lr 0.01 (the checkpoint ran with 0.001)" in capsys.readouterr().out
    assert res.history[-1]["lr"] == pytest.approx(0.01)


def test_resume_refuses_the_same_class_built_otherwise(tmp_path):
    x = TensorData((torch.rand(32, 1, 28, 28) > 0.5).float())
    ck = str(tmp_path / "ae.pt")
    probgen.fit(
        VAE.from_preset("denoising_ae", z_dim=2, hidden=(8,)),
        x,
        epochs=1,
        batch_size=16,
        device="cpu",
        checkpoint=ck,
        **QUIET,
    )
    with pytest.raises(
        CheckpointError, match="model setting corruption: 'noise' in the checkpoint, 'blocks' now"
    ):
        probgen.fit(
            VAE.from_preset("inpainting_ae", z_dim=2, hidden=(8,)),
            x,
            epochs=2,
            batch_size=16,
            device="cpu",
            checkpoint=ck,
            resume=True,
            **QUIET,
        )


def test_config_takes_numpy_numbers_and_paths():
    cfg = FitConfig(
        epochs=np.int64(3),
        lr=np.float32(0.5),
        batch_size=np.int32(8),
        checkpoint=Path("runs") / "a.pt",
        patience=np.int64(2),
    ).check()
    assert type(cfg.epochs) is int and type(cfg.lr) is float and cfg.checkpoint == "runs/a.pt"
    assert FitConfig.from_json(cfg.to_json()) == cfg
    json.loads(cfg.to_json())


def test_checkpoint_keeps_numpy_rng(tmp_path):
    net = nn.Linear(1, 1)
    data = TensorData(torch.randn(8, 1), torch.randn(8, 1))
    np.random.seed(5)
    probgen.fit(
        LossStep(net, lambda m, x, y: ((m(x) - y) ** 2).mean()),
        data,
        epochs=1,
        device="cpu",
        seed=None,
        checkpoint=str(tmp_path / "n.pt"),
        **QUIET,
    )
    expected = np.random.rand()
    state = load_checkpoint(tmp_path / "n.pt")
    from probgen.train.device import set_rng_state

    set_rng_state(state["rng"], torch.Generator())
    assert np.random.rand() == expected
