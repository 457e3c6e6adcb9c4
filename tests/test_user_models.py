"""Your own Pyro model through probgen: Pyro-style models written here (not probgen's),
each trained once with Pyro's own ``SVI.step`` loop and once through ``probgen.fit`` with
the default settings (the optimizer and learning rate the Pyro loop uses, the display
quiet), from the same seed and data order: the parameters must agree; then the run's
checkpoint, loaded with ``probgen.load`` into fresh callables (as a new process would),
gives the same ``Predictive`` output as the trained run.

The models follow Pyro's own examples: the SVI tutorial's coin (``pyro.param`` only), a
Bayesian regression with AutoNormal and AutoIAFNormal, the Gaussian mixture tutorial
(TraceEnum_ELBO, AutoDelta), the subsampled-plate model of Pyro's Lightning example fed
by a DataLoader, and a small CVAE fed dict batches as in Pyro's CVAE example.
"""

import copy

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta, AutoIAFNormal, AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, Dataset, TensorDataset

import probgen
from probgen.data import TensorData
from probgen.errors import CheckpointError, ConfigError, DataError
from probgen.train import SVIStep, load_checkpoint
from tests.conftest import QUIET

TIGHT = dict(rtol=1e-6, atol=1e-7)


@pytest.fixture(autouse=True)
def _clean_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


# --------------------------------------------------------------------------- the models


def coin_model(data):
    """The SVI tutorial's coin: a Beta prior on the fairness, one Bernoulli per toss."""
    f = pyro.sample("latent_fairness", dist.Beta(torch.tensor(10.0), torch.tensor(10.0)))
    for i in range(len(data)):
        pyro.sample(f"obs_{i}", dist.Bernoulli(f), obs=data[i])


def coin_guide(data):
    alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
    beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
    pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))


def coin_data():
    return torch.cat([torch.ones(6), torch.zeros(4)])


class BayesianRegression(PyroModule):
    """Pyro's Bayesian regression tutorial, three features."""

    def __init__(self):
        super().__init__()
        self.linear = PyroModule[nn.Linear](3, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 5.0).expand([1]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


def regression_data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.2 * torch.randn(n, generator=g)


K = 2


@config_enumerate
def gmm(data):
    """The Gaussian mixture tutorial: the assignment enumerated out (TraceEnum_ELBO)."""
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def gmm_data():
    return torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])


def gmm_guide():
    return AutoDelta(poutine.block(gmm, expose=["weights", "locs", "scale"]))


class SubsampledModel(PyroModule):
    """Pyro's svi_lightning example: the batches are a subsample of a plate of `size`."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, covariates, data=None):
        coeff = pyro.sample("coeff", dist.Normal(0, 1))
        bias = pyro.sample("bias", dist.Normal(0, 1))
        scale = pyro.sample("scale", dist.LogNormal(0, 1))
        with pyro.plate("data", self.size, len(covariates)):
            loc = bias + coeff * covariates
            return pyro.sample("obs", dist.Normal(loc, scale), obs=data)


def subsample_data(n=96):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, generator=g)
    return x, 0.5 + 2.0 * x + 0.5 * torch.randn(n, generator=g)


def loader(x, y, batch_size=32, seed=0):
    # the DataLoader shuffles with its own generator: the same order on both sides
    return DataLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


class TinyCVAE(nn.Module):
    """Pyro's CVAE example in miniature: a prior net p(z | x), a generation net
    p(y | x, z), a recognition net q(z | x, y); the data set yields dicts
    {"input": x, "output": y}, and the model is called as model(xs, ys)."""

    def __init__(self, d=12, z=2, h=16):
        super().__init__()
        self.prior_net = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 2 * z))
        self.generation_net = nn.Sequential(nn.Linear(d + z, h), nn.ReLU(), nn.Linear(h, d))
        self.recognition_net = nn.Sequential(nn.Linear(2 * d, h), nn.ReLU(), nn.Linear(h, 2 * z))
        self.z = z

    def _normal(self, out):
        return out[..., : self.z], nn.functional.softplus(out[..., self.z :]) + 1e-3

    def model(self, xs, ys=None):
        pyro.module("generation_net", self)
        with pyro.plate("data", xs.shape[0]):
            loc, scale = self._normal(self.prior_net(xs))
            zs = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            logits = self.generation_net(torch.cat([xs, zs], -1))
            return pyro.sample("y", dist.Bernoulli(logits=logits).to_event(1), obs=ys)

    def guide(self, xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                loc, scale = self._normal(self.prior_net(xs))
            else:
                loc, scale = self._normal(self.recognition_net(torch.cat([xs, ys], -1)))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class DictData(Dataset):
    def __init__(self, n=48, d=12, order=("input", "output")):
        g = torch.Generator().manual_seed(3)
        self.y = (torch.rand(n, d, generator=g) < 0.4).float()
        self.x = self.y * (torch.rand(n, d, generator=g) < 0.5)  # a masked copy
        self.order = order

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        items = {"input": self.x[i], "output": self.y[i]}
        return {k: items[k] for k in self.order}


# --------------------------------------------------------------------------- helpers


def store_values():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def pyro_loop(model, guide, elbo, batches, epochs, optim_args, seed, kwargs=False):
    """Pyro's own loop: SVI.step over the batches, epoch after epoch."""
    torch.manual_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam(dict(optim_args)), elbo)
    losses = []
    for _ in range(epochs):
        for b in batches():
            losses.append(svi.step(**b) if kwargs else svi.step(*b))
    return losses


def same_params(ours, ref):
    assert set(ours) == set(ref) and ours
    for k in ref:
        assert_close(ours[k], ref[k], **TIGHT, msg=k)


def predictive(model, guide, args, seed=11, n=4, sites=None):
    torch.manual_seed(seed)
    out = Predictive(model, guide=guide, num_samples=n, return_sites=sites)(*args)
    return {k: v.detach() for k, v in out.items()}


def same_predictions(a, b):
    assert set(a) == set(b) and a
    for k in a:
        assert_close(a[k], b[k], **TIGHT, msg=k)


# --------------------------------------------------------------------------- the six models


def test_coin_pyro_param_only(tmp_path):
    data = coin_data()
    adam = {"lr": 0.0005, "betas": (0.90, 0.999)}
    pyro_loop(coin_model, coin_guide, Trace_ELBO(), lambda: [(data,)], 150, adam, 0)
    ref = store_values()
    pyro.clear_param_store()
    torch.manual_seed(0)
    res = probgen.fit(
        SVIStep(coin_model, coin_guide, loss=Trace_ELBO(), optim=pyro.optim.Adam(adam)),
        TensorData(data),
        num_steps=150,
        checkpoint=str(tmp_path / "coin.pt"),
        **QUIET,
    )
    ours = store_values()
    same_params(ours, ref)
    assert res.steps == 150 and res.epochs_run == 150 and not res.stopped_early
    assert not torch.equal(ours["alpha_q"], torch.tensor(15.0))  # training moved them
    before = predictive(coin_model, coin_guide, (data,))
    pyro.clear_param_store()
    run = probgen.load(tmp_path / "coin.pt", model=coin_model, guide=coin_guide)
    # constrained values, as pyro.param shows them (positive), not the stored logs
    assert_close(run.params["alpha_q"], ours["alpha_q"], **TIGHT)
    assert run.params["alpha_q"] > 0 and run.params["beta_q"] > 0
    same_predictions(before, predictive(coin_model, coin_guide, (data,)))


@pytest.mark.parametrize("kind", ["AutoNormal", "AutoIAFNormal"])
def test_bayesian_regression_with_an_autoguide(kind, tmp_path):
    x, y = regression_data()
    make = {
        "AutoNormal": AutoNormal,
        "AutoIAFNormal": lambda m: AutoIAFNormal(m, hidden_dim=[10], num_transforms=1),
    }[kind]
    adam = {"lr": 0.03}
    model = BayesianRegression()
    pyro_loop(model, make(model), Trace_ELBO(), lambda: [(x, y)], 60, adam, 5)
    ref = store_values()
    pyro.clear_param_store()
    guide = make(model)
    torch.manual_seed(5)
    probgen.fit(
        SVIStep(model, guide, optim=pyro.optim.Adam(adam)),
        TensorData(x, y),
        epochs=60,
        checkpoint=str(tmp_path / "reg.pt"),
        **QUIET,
    )
    ours = store_values()
    same_params(ours, ref)
    before = predictive(model, guide, (x,), sites=("obs", "sigma"))
    # a new process: a fresh model and guide, an empty param store
    pyro.clear_param_store()
    model2 = BayesianRegression()
    guide2 = make(model2)
    probgen.load(tmp_path / "reg.pt", model=model2, guide=guide2)
    # an AutoGuide builds its parameters on its first call, from the model's trace on the
    # training arguments (as in Pyro): called once so, it gets the run's values then
    guide2(x, y)
    same_predictions(before, predictive(model2, guide2, (x,), sites=("obs", "sigma")))
    pyro.clear_param_store()  # without the checkpoint: other parameters, other predictions
    model3 = BayesianRegression()
    guide3 = make(model3)
    guide3(x, y)
    with pytest.raises(AssertionError):
        same_predictions(before, predictive(model3, guide3, (x,), sites=("obs", "sigma")))


def test_gaussian_mixture_with_trace_enum(tmp_path):
    data = gmm_data()
    adam = {"lr": 0.1, "betas": (0.8, 0.99)}
    pyro_loop(gmm, gmm_guide(), TraceEnum_ELBO(max_plate_nesting=1), lambda: [(data,)], 50, adam, 3)
    ref = store_values()
    pyro.clear_param_store()
    guide = gmm_guide()
    torch.manual_seed(3)
    probgen.fit(
        SVIStep(gmm, guide, loss=TraceEnum_ELBO(max_plate_nesting=1), optim=pyro.optim.Adam(adam)),
        TensorData(data),
        num_steps=50,
        checkpoint=str(tmp_path / "gmm.pt"),
        **QUIET,
    )
    ours = store_values()
    same_params(ours, ref)
    assert not torch.equal(ours["AutoDelta.locs"], ours["AutoDelta.locs"][[1, 0]])
    before = predictive(gmm, guide, (data,), sites=("locs", "weights", "scale"))
    pyro.clear_param_store()
    guide2 = gmm_guide()
    probgen.load(tmp_path / "gmm.pt", model=gmm, guide=guide2)
    guide2(data)
    same_predictions(before, predictive(gmm, guide2, (data,), sites=("locs", "weights", "scale")))


def test_subsampled_plate_model_from_a_dataloader(tmp_path):
    x, y = subsample_data()
    n = len(x)
    adam = {"lr": 0.05}
    model = SubsampledModel(n)
    batches = loader(x, y)  # one DataLoader, iterated every epoch, on both sides
    losses = pyro_loop(model, AutoNormal(model), Trace_ELBO(), lambda: batches, 4, adam, 8)
    ref = store_values()
    pyro.clear_param_store()
    guide = AutoNormal(model)
    torch.manual_seed(8)
    res = probgen.fit(
        SVIStep(model, guide, optim=pyro.optim.Adam(adam)),
        loader(x, y),
        epochs=4,
        checkpoint=str(tmp_path / "sub.pt"),
        **QUIET,
    )
    same_params(store_values(), ref)
    # losses per example of the whole data: Pyro's loss (scaled by N/B) over N, for every
    # batch size (batches of 32 here), not over the batch's 32
    per_epoch = torch.tensor(losses).reshape(4, -1).mean(1) / n
    assert_close(torch.tensor(res.train_loss, dtype=torch.float32), per_epoch, rtol=1e-5, atol=1e-5)
    # validation on the same scale: a pass over batches of 16 and one over batches of 48
    # score what Pyro's Trace_ELBO().loss scores, over N
    step = SVIStep(model, guide)
    for bs in (16, 48):
        torch.manual_seed(4)
        got = probgen.train.evaluate(step, DataLoader(TensorDataset(x, y), batch_size=bs))
        torch.manual_seed(4)  # (iterating a DataLoader draws its base seed: both do)
        ref_loss = sum(
            Trace_ELBO().loss(model, guide, xb, yb)
            for xb, yb in DataLoader(TensorDataset(x, y), batch_size=bs)
        )
        assert got == pytest.approx(ref_loss / (n // bs) / n, rel=1e-5)
    before = predictive(model, guide, (x[:5],), sites=("coeff", "bias"))
    pyro.clear_param_store()
    model2 = SubsampledModel(n)
    guide2 = AutoNormal(model2)
    probgen.load(tmp_path / "sub.pt", model=model2, guide=guide2)
    guide2(x[:32], y[:32])
    after = predictive(model2, guide2, (x[:5],), sites=("coeff", "bias"))
    same_predictions(before, after)


def test_dict_batch_cvae_as_in_pyros_example(tmp_path):
    """Pyro's CVAE example feeds svi.step(batch["input"], batch["output"]); through fit
    the same mapping is one batch_to_args, and the dict as keyword arguments would not
    fit model(xs, ys): one clear error naming both callables."""
    cvae = TinyCVAE()
    start = copy.deepcopy(cvae.state_dict())
    data = DictData()

    def batches():
        return DataLoader(
            data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1)
        )

    adam = {"lr": 0.01}
    ours_loader = batches()  # one DataLoader, iterated every epoch, on both sides
    pyro_loop(
        cvae.model,
        cvae.guide,
        Trace_ELBO(),
        lambda: [(b["input"], b["output"]) for b in ours_loader],
        3,
        adam,
        9,
    )
    ref = {k: v.clone() for k, v in cvae.state_dict().items()}
    pyro.clear_param_store()
    cvae.load_state_dict(start)
    with pytest.raises(ConfigError) as err:
        probgen.fit(SVIStep(cvae.model, cvae.guide, module=cvae), batches(), epochs=1, **QUIET)
    text = str(err.value)
    assert "TinyCVAE.model(xs, ys=None)" in text and "TinyCVAE.guide(xs, ys=None)" in text
    assert "'input', 'output'" in text and "batch_to_args" in text and "\n" not in text
    assert torch.equal(cvae.prior_net[0].weight, start["prior_net.0.weight"])  # no update
    torch.manual_seed(9)
    probgen.fit(
        SVIStep(
            cvae.model,
            cvae.guide,
            module=cvae,
            optim=pyro.optim.Adam(adam),
            batch_to_args=lambda b: ((b["input"], b["output"]), {}),
        ),
        batches(),
        epochs=3,
        checkpoint=str(tmp_path / "cvae.pt"),
        **QUIET,
    )
    for k, v in ref.items():
        assert_close(cvae.state_dict()[k], v, **TIGHT, msg=k)
    assert not torch.equal(ref["prior_net.0.weight"], start["prior_net.0.weight"])
    xs = data.x[:3]
    before = predictive(cvae.model, cvae.guide, (xs,), sites=("y", "z"))
    pyro.clear_param_store()
    cvae2 = TinyCVAE()
    probgen.load(tmp_path / "cvae.pt", model=cvae2.model, guide=cvae2.guide)
    same_predictions(before, predictive(cvae2.model, cvae2.guide, (xs,), sites=("y", "z")))


def test_dict_keys_in_any_order_are_keyword_arguments():
    """{'output': y, 'input': x} reaches model(input, output) by name, not by position."""
    seen = []

    def model(input, output=None):
        seen.append((input.sum().item(), None if output is None else output.sum().item()))
        loc = pyro.param("loc", torch.zeros(12))
        with pyro.plate("data", input.shape[0]):
            pyro.sample("y", dist.Normal(loc + 0 * input, 1.0).to_event(1), obs=output)

    def guide(input, output=None):
        pass

    data = DictData(n=16, order=("output", "input"))
    batch = next(iter(DataLoader(data, batch_size=16)))
    assert list(batch) == ["output", "input"]
    probgen.fit(SVIStep(model, guide), [batch], epochs=1, **QUIET)
    assert seen[0] == (data.x.sum().item(), data.y.sum().item())
    # and the same steps as Pyro's SVI called with those keyword arguments
    ours = store_values()
    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    svi.step(**batch)
    same_params(ours, store_values())


# --------------------------------------------------------------------------- Pyro's meaning


def noisy_coin_run(**kw):
    """The coin trained with the defaults, 200 epochs of one batch: its one-sample
    training loss goes up and down, which early stopping on it would act on."""
    torch.manual_seed(0)
    return probgen.fit(
        SVIStep(coin_model, coin_guide, optim=pyro.optim.Adam({"lr": 0.05})),
        TensorData(coin_data()),
        epochs=200,
        **kw,
    )


def test_no_early_stopping_or_best_weights_without_validation_data(capsys):
    res = noisy_coin_run(**QUIET)
    assert res.epochs_run == 200 and not res.stopped_early
    assert res.config.patience is None and res.config.restore_best is False
    # the last weights, not the best epoch's: the coin's loss is noisy, so they differ
    assert res.best_epoch != 199
    last = store_values()
    pyro.clear_param_store()
    torch.manual_seed(0)
    svi = SVI(coin_model, coin_guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(200):
        svi.step(coin_data())
    same_params(last, store_values())


def test_early_stopping_when_asked_prints_one_line(capsys):
    res = noisy_coin_run(patience=5, progress=False)
    out = capsys.readouterr().out.strip().splitlines()
    assert res.stopped_early and res.epochs_run < 200
    stop = [line for line in out if "stopped early" in line]
    assert len(stop) == 1
    best = res.best_epoch + 1
    assert (
        f"stopped early after epoch {res.epochs_run} of 200: train_loss did not improve "
        f"on {res.best_loss:.6g} (epoch {best}) for 5 checks"
    ) in stop[0]
    assert f"holds epoch {best}'s weights" in stop[0]
    # verbose=False: nothing printed, the same stop
    quiet = noisy_coin_run(patience=5, **QUIET)
    assert capsys.readouterr().out == "" and quiet.epochs_run == res.epochs_run


def test_validation_data_turns_early_stopping_on():
    x, y = regression_data()
    model = BayesianRegression()
    res = probgen.fit(
        SVIStep(model, AutoNormal(model)),
        TensorData(x, y),
        TensorData(x[:16], y[:16]),
        epochs=2,
        **QUIET,
    )
    assert res.config.patience == 10 and res.config.restore_best is True
    # patience given explicitly without validation data: asked for, so it acts
    pyro.clear_param_store()
    res = noisy_coin_run(patience=3, **QUIET)
    assert res.stopped_early and res.config.restore_best is True


def test_pyro_validation_is_left_as_the_user_set_it():
    """A Bernoulli observation outside {0, 1}: Pyro's validation (on by default) refuses
    it; fit keeps that, and validate=False still switches it off on request."""
    bad = torch.tensor([0.0, 1.0, 0.5])
    assert pyro.infer.util.is_validation_enabled()
    with pytest.raises(ValueError, match="support"):
        probgen.fit(SVIStep(coin_model, coin_guide), TensorData(bad), epochs=1, **QUIET)
    pyro.clear_param_store()
    probgen.fit(SVIStep(coin_model, coin_guide), TensorData(bad), epochs=1, validate=False, **QUIET)
    assert pyro.infer.util.is_validation_enabled()  # as it was after the run
    pyro.enable_validation(False)
    try:
        pyro.clear_param_store()
        probgen.fit(SVIStep(coin_model, coin_guide), TensorData(bad), epochs=1, **QUIET)
        assert not pyro.infer.util.is_validation_enabled()
    finally:
        pyro.enable_validation(True)


def test_seed_none_leaves_the_global_generators_alone():
    import random

    torch.manual_seed(123)
    # numpy's legacy global generator is the one under test here: fit must leave it alone
    np.random.seed(7)  # noqa: NPY002
    random.seed(7)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    x, y = regression_data()
    model = BayesianRegression()
    probgen.fit(
        SVIStep(model, AutoNormal(model)), TensorData(x, y), epochs=2, batch_size=16, **QUIET
    )
    assert torch.initial_seed() == 123  # torch.manual_seed would have changed it
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert random.getstate() == py_state


def test_num_steps_counts_steps_across_epochs():
    x, y = regression_data(40)
    model = BayesianRegression()
    res = probgen.fit(
        SVIStep(model, AutoNormal(model)), TensorData(x, y), batch_size=16, num_steps=7, **QUIET
    )  # 3 batches an epoch: 3 + 3 + 1
    assert res.steps == 7 and res.epochs_run == 3 and res.config.epochs == 3
    with pytest.raises(ConfigError, match="give epochs or num_steps, not both"):
        probgen.fit(
            SVIStep(model, AutoNormal(model)), TensorData(x, y), epochs=2, num_steps=7, **QUIET
        )


# --------------------------------------------------------------------------- steps and batches


def test_pyros_positional_order_is_refused_with_the_keyword():
    with pytest.raises(ConfigError, match=r"optim=pyro.optim.Adam"):
        SVIStep(coin_model, coin_guide, pyro.optim.Adam({"lr": 0.01}))
    with pytest.raises(ConfigError, match=r"optim=pyro.optim.Adam"):
        SVIStep(coin_model, coin_guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    with pytest.raises(ConfigError, match="loss="):
        SVIStep(coin_model, coin_guide, Trace_ELBO())
    with pytest.raises(ConfigError, match="clip_norm"):
        SVIStep(coin_model, coin_guide, optim=pyro.optim.Adam({"lr": 0.01}, {"clip_norm": 1.0}))


def test_settings_a_ready_made_step_ignores_are_refused_and_not_recorded():
    data = TensorData(coin_data())
    for kw in ({"objective": "iwae"}, {"num_particles": 4}, {"eval_particles": 2}):
        with pytest.raises(ConfigError, match=f"{next(iter(kw))} is set, but the step given"):
            probgen.fit(SVIStep(coin_model, coin_guide), data, epochs=1, **kw, **QUIET)
    with pytest.raises(ConfigError, match="lr is set"):
        probgen.fit(
            SVIStep(coin_model, coin_guide, optim=pyro.optim.Adam({"lr": 0.1})),
            data,
            epochs=1,
            lr=0.5,
            **QUIET,
        )
    res = probgen.fit(
        SVIStep(coin_model, coin_guide, optim=pyro.optim.Adam({"lr": 0.1})), data, epochs=1, **QUIET
    )
    cfg = res.config
    assert cfg.objective is None and cfg.num_particles is None and cfg.lr is None
    assert cfg.optimizer is None


def test_a_per_parameter_pyro_optimizer_gives_each_its_settings():
    data = coin_data()

    def per_param(name):
        return {"lr": 0.01 if name == "alpha_q" else 0.0}

    probgen.fit(
        SVIStep(coin_model, coin_guide, optim=pyro.optim.Adam(per_param)),
        TensorData(data),
        epochs=3,
        **QUIET,
    )
    assert pyro.param("beta_q").item() == pytest.approx(15.0)
    assert pyro.param("alpha_q").item() != pytest.approx(15.0)


def test_module_does_not_change_the_gradient_scale():
    """SVIStep(model, guide, module=m) takes Pyro's summed ELBO, as without module=."""
    cvae = TinyCVAE()
    start = copy.deepcopy(cvae.state_dict())
    data = DictData(n=16)
    batch = (data.x, data.y)
    grads = []
    for kw in ({}, {"module": cvae}):
        cvae.load_state_dict(start)
        pyro.clear_param_store()
        step = SVIStep(cvae.model, cvae.guide, **kw)
        torch.manual_seed(0)
        loss, reported = step.loss(batch, {})
        loss.backward()
        grads.append(cvae.prior_net[0].weight.grad.clone())
        cvae.zero_grad(set_to_none=True)
        assert_close(reported, loss.detach() / 16)
    assert_close(grads[0], grads[1], **TIGHT)


def test_an_empty_loader_is_an_error_not_a_zero_loss():
    empty = DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0)), batch_size=4)
    model = BayesianRegression()
    with pytest.raises(DataError, match="gave no batch"):
        probgen.fit(SVIStep(model, AutoNormal(model)), empty, epochs=1, **QUIET)
    x, y = regression_data(8)
    with pytest.raises(DataError, match="validation data gave no batch"):
        probgen.fit(SVIStep(model, AutoNormal(model)), [(x, y)], empty, epochs=1, **QUIET)


def test_a_bare_pair_trains_where_its_data_is(monkeypatch):
    """device='auto' moves nothing of a bare model/guide pair: the batches reach the model
    as the user gave them (CPU tensors here, while 'auto' would pick CUDA: a move would
    fail on this machine). What this cannot see: a real GPU's copies."""
    from probgen.train import device

    monkeypatch.setattr(device, "resolve_device", lambda device: torch.device("cuda"))
    seen = []

    def model(x):
        seen.append(x.device)
        return coin_model(x)

    res = probgen.fit(SVIStep(model, coin_guide), TensorData(coin_data()), epochs=1, **QUIET)
    assert seen and all(d.type == "cpu" for d in seen) and res.device == "cpu"
    seen.clear()
    probgen.fit(SVIStep(model, coin_guide), [(coin_data(),)], epochs=1, **QUIET)
    assert seen and all(d.type == "cpu" for d in seen)


def test_a_param_store_run_explains_itself(tmp_path):
    probgen.fit(
        SVIStep(coin_model, coin_guide),
        TensorData(coin_data()),
        epochs=1,
        checkpoint=str(tmp_path / "c.pt"),
        **QUIET,
    )
    with pytest.raises(CheckpointError, match=r"probgen.load\(path, model=model, guide=guide\)"):
        probgen.load(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="param store") as err:
        probgen.train.load_model(nn.Linear(1, 1), tmp_path / "c.pt")
    assert "NoneType" not in str(err.value)
    assert load_checkpoint(tmp_path / "c.pt")["pyro_constraints"]["alpha_q"] == {"name": "positive"}
