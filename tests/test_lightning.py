"""probgen.lightning: a step trained by Lightning's Trainer ends where probgen.fit ends.

Each test trains the same model twice from the same weights, seed and batch order, once
with ``probgen.fit`` and once with ``Trainer.fit(ProbgenModule(...))`` on the CPU, and
compares the parameters (and the logged losses with fit's history); a run with another
setting shows the comparison can tell runs apart.
"""

import copy
import importlib.util
import logging
import re
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_mean
from torch.distributions import constraints
from torch.testing import assert_close

import probgen
from probgen.data import TensorData
from probgen.errors import ConfigError
from probgen.models import GAN, VAE
from probgen.models.flow import FlowModel
from probgen.train import LossStep, Phase, PhasedStep, SVIStep, set_seed

L = pytest.importorskip("lightning.pytorch")
from probgen.lightning import ProbgenModule, TensorBatches  # noqa: E402

QUIET = dict(progress=False, verbose=False)
TIGHT = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True)
def _lightning_quiet_and_fresh_store():
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def trainer(tmp_path, **kwargs):
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        **kwargs,
    )


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def store():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def assert_all_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert_close(a[k], b[k], **TIGHT, msg=lambda m, k=k: f"{k}: {m}")


def largest_difference(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_vae_trained_by_lightning_equals_fit(mnist_small, tmp_path):
    train = mnist_small["train"].subset(slice(0, 96))
    val = mnist_small["val"].subset(slice(0, 64))
    torch.manual_seed(1)
    start = VAE(z_dim=4, hidden=[32], likelihood="continuous_bernoulli")
    by_fit, by_lightning, other_lr = (copy.deepcopy(start) for _ in range(3))
    # the user's own parameter, which neither run may touch (the model trains in a scope)
    pyro.param("users_own", torch.ones(2))

    result = probgen.fit(
        by_fit,
        train,
        val,
        seed=7,
        epochs=2,
        batch_size=32,
        patience=None,
        restore_best=False,
        **QUIET,
    )

    def lightning_run(vae, **settings):
        set_seed(7)
        batches = TensorBatches(train, 32, shuffle=True, generator=torch.Generator().manual_seed(7))
        t = trainer(tmp_path, max_epochs=2)
        t.fit(ProbgenModule(vae, **settings), batches, TensorBatches(val, 1000))
        return t

    t = lightning_run(by_lightning)
    assert_all_close(params(by_fit), params(by_lightning))
    assert largest_difference(params(by_fit), params(start)) > 1e-3  # it trained
    assert t.global_step == 2 * 3
    # the logged losses are fit's epoch figures (per example, weighted by batch size)
    last = result.history[-1]
    assert float(t.callback_metrics["train_loss_epoch"]) == pytest.approx(
        last["train_loss"], rel=1e-5
    )
    assert float(t.callback_metrics["val_loss"]) == pytest.approx(last["val_loss"], rel=1e-5)
    assert set(store()) == {"users_own"}
    assert_close(pyro.param("users_own"), torch.ones(2))

    lightning_run(other_lr, lr=2e-3)
    assert largest_difference(params(by_fit), params(other_lr)) > 1e-3


def data_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mu, s), obs=x)


def known_scale_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def raw_guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


PAIRS = {
    "AutoNormal": (
        data_model,
        lambda: AutoNormal(data_model, init_loc_fn=init_to_mean),
        {"AutoNormal.locs.mu", "AutoNormal.scales.mu", "AutoNormal.locs.s", "AutoNormal.scales.s"},
    ),
    "pyro.param": (known_scale_model, lambda: raw_guide, {"loc", "scale"}),
}


@pytest.mark.parametrize(
    "guide, elbo",
    [("AutoNormal", Trace_ELBO), ("AutoNormal", TraceGraph_ELBO), ("pyro.param", TraceGraph_ELBO)],
)
def test_pyro_pair_with_lazy_parameters_equals_fit(guide, elbo, tmp_path):
    """A bare Pyro model and guide whose parameters exist only after a first call (an
    AutoNormal; pyro.param sites outside any module): ProbgenModule's warm-up pass makes
    them on the first batch without moving any generator (torch's, nor the data's own,
    which orders the batches), so the runs match. TraceGraph_ELBO runs its own backward
    (a phase with owns_backward): the warm-up's gradients must not reach the first step."""
    model, make_guide, names = PAIRS[guide]
    data = TensorData(torch.randn(80) * 2 + 3)
    result = {}
    for way in ("fit", "lightning", "other"):
        pyro.clear_param_store()
        g = make_guide()
        assert not store() and not (isinstance(g, torch.nn.Module) and list(g.parameters()))
        lr = 0.02 if way == "other" else 0.05
        step = SVIStep(model, g, optim=pyro.optim.Adam({"lr": lr}), loss=elbo())
        if way == "fit":
            probgen.fit(step, data, seed=3, epochs=3, batch_size=16, **QUIET)
        else:
            set_seed(3)
            batches = TensorBatches(
                data, 16, shuffle=True, generator=torch.Generator().manual_seed(3)
            )
            trainer(tmp_path, max_epochs=3).fit(ProbgenModule(step), batches)
        result[way] = store()
    assert set(result["fit"]) == names
    assert_all_close(result["fit"], result["lightning"])
    assert largest_difference(result["fit"], result["other"]) > 1e-3


def test_adversarial_toy_of_plain_tensors_equals_fit(tmp_path):
    """Two players as two phases over plain tensors (no module): x runs twice on each
    batch and its loss reaches y's gradient (nothing detached), so y's phase must clear
    that stray gradient before its own backward, as the fit loop does."""
    data = TensorData(torch.randn(48, 2) + 1.0)

    def step(lr_y=0.1):
        x = torch.tensor([0.5, -0.3], requires_grad=True)
        y = torch.tensor([0.2, 0.4], requires_grad=True)

        def game(batch):
            return (batch[0].mean(0) * x * y).sum() + 0.5 * (x**2).sum() - 0.5 * (y**2).sum()

        return PhasedStep(
            None,
            [
                Phase(
                    "x",
                    lambda batch, ctx: game(batch),
                    params=[x],
                    repeats=2,
                    fresh_batch=False,
                    optimizer="sgd",
                    lr=0.1,
                ),
                Phase("y", lambda batch, ctx: -game(batch), params=[y], optimizer="sgd", lr=lr_y),
            ],
        ), (x, y)

    by_fit, xy_fit = step()
    result = probgen.fit(by_fit, data, seed=4, epochs=2, batch_size=16, **QUIET)
    runs = {}
    for name, lr_y in (("lightning", 0.1), ("other", 0.2)):
        set_seed(4)
        batches = TensorBatches(data, 16, shuffle=True, generator=torch.Generator().manual_seed(4))
        s, xy = step(lr_y)
        t = trainer(tmp_path, max_epochs=2)
        t.fit(ProbgenModule(s), batches)
        runs[name] = (t, xy)
    t, xy = runs["lightning"]
    for a, b in zip(xy_fit, xy):
        assert_close(a, b, **TIGHT)
    assert float((xy_fit[1].detach() - torch.tensor([0.2, 0.4])).abs().max()) > 1e-2
    assert t.global_step == 2 * 3 * (2 + 1)
    assert float(t.callback_metrics["train_loss/x_epoch"]) == pytest.approx(
        result.history[-1]["train_loss/x"], rel=1e-5
    )
    assert max(float((a - b).abs().max()) for a, b in zip(xy_fit, runs["other"][1])) > 1e-3


def test_flow_model_equals_fit_and_leaves_the_users_param_store(tmp_path):
    """A probgen flow registers its network with pyro.module at every step: inside the
    model's own scope of Pyro's param store, as under fit, never in the user's."""
    data = TensorData(torch.randn(64, 4))
    start = FlowModel(
        "nice", event_shape=(4,), preprocess="none", num_levels=None, depth=2, hidden=[8]
    )
    by_fit, by_lightning = copy.deepcopy(start), copy.deepcopy(start)
    pyro.param("users_own", torch.ones(2))
    probgen.fit(by_fit, data, seed=1, epochs=2, batch_size=16, **QUIET)
    set_seed(1)
    batches = TensorBatches(data, 16, shuffle=True, generator=torch.Generator().manual_seed(1))
    trainer(tmp_path, max_epochs=2).fit(ProbgenModule(by_lightning), batches)
    assert_all_close(params(by_fit), params(by_lightning))
    assert largest_difference(params(by_fit), params(start)) > 1e-3
    assert set(store()) == {"users_own"}


def test_gan_phases_equal_fit(tmp_path):
    """Two phases with two optimizers: k=2 discriminator steps on fresh batches, then a
    generator step; 5 batches an epoch, so the last step of each epoch is cut short (as in
    the fit loop, the next epoch starts a whole step)."""
    data = TensorData(torch.rand(80, 1, 4, 4))
    torch.manual_seed(1)
    start = GAN(data_shape=(1, 4, 4), z_dim=2, net="mlp", g_hidden=[8], d_hidden=[8], k=2)
    by_fit, by_lightning, other = (copy.deepcopy(start) for _ in range(3))
    result = probgen.fit(
        by_fit, data, seed=5, epochs=2, batch_size=16, patience=None, restore_best=False, **QUIET
    )

    def lightning_run(gan, **settings):
        set_seed(5)
        batches = TensorBatches(data, 16, shuffle=True, generator=torch.Generator().manual_seed(5))
        t = trainer(tmp_path, max_epochs=2)
        t.fit(ProbgenModule(gan, **settings), batches)
        return t

    t = lightning_run(by_lightning)
    assert_all_close(params(by_fit), params(by_lightning))
    for net in ("generator", "discriminator"):
        moved = {k: v for k, v in params(by_fit).items() if k.startswith(net)}
        assert largest_difference(moved, {k: params(start)[k] for k in moved}) > 1e-3
    # per epoch: 5 discriminator steps and 2 generator steps (the third step is cut short)
    assert t.global_step == 2 * (5 + 2)
    last = result.history[-1]
    for phase in ("D", "G"):
        assert float(t.callback_metrics[f"train_loss/{phase}_epoch"]) == pytest.approx(
            last[f"train_loss/{phase}"], rel=1e-5
        )

    lightning_run(other, lr=5e-4)
    assert largest_difference(params(by_fit), params(other)) > 1e-4


def test_gan_with_phase_optim_trained_by_lightning_equals_fit(tmp_path):
    """FitConfig.phase_optim (the players' optimizer settings, out of the model): the
    discriminator's lr and the generator's betas as fit applies them; without them the
    Lightning run differs; a phase the step lacks is refused at construction."""
    data = TensorData(torch.rand(64, 1, 4, 4))
    torch.manual_seed(2)
    start = GAN(data_shape=(1, 4, 4), z_dim=2, net="mlp", g_hidden=[8], d_hidden=[8])
    by_fit, by_lightning, plain = (copy.deepcopy(start) for _ in range(3))
    phase_optim = {"D": {"lr": 3e-3}, "G": {"betas": (0.2, 0.9)}}
    probgen.fit(
        by_fit,
        data,
        seed=5,
        epochs=2,
        batch_size=16,
        patience=None,
        restore_best=False,
        phase_optim=phase_optim,
        **QUIET,
    )

    def lightning_run(gan, **settings):
        set_seed(5)
        batches = TensorBatches(data, 16, shuffle=True, generator=torch.Generator().manual_seed(5))
        t = trainer(tmp_path, max_epochs=2)
        module = ProbgenModule(gan, **settings)
        t.fit(module, batches)
        return module

    module = lightning_run(by_lightning, phase_optim=phase_optim)
    assert_all_close(params(by_fit), params(by_lightning))
    d_opt, g_opt = (st.optimizer for st in module._states)
    assert d_opt.param_groups[0]["lr"] == 3e-3 and g_opt.param_groups[0]["betas"] == (0.2, 0.9)
    lightning_run(plain)
    assert largest_difference(params(by_fit), params(plain)) > 1e-4
    with pytest.raises(ConfigError, match=r"phase_optim names 'disc'.*'D', 'G'"):
        ProbgenModule(copy.deepcopy(start), phase_optim={"disc": {"lr": 1e-3}})


def test_loss_step_with_clipping_and_schedule_equals_fit(tmp_path):
    """A plain network's LossStep, with fit's gradient clipping and a cosine schedule built
    from SCHEDULES over the Trainer's run."""
    x = torch.randn(60, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(60)
    data = TensorData(x, y)
    torch.manual_seed(0)
    start = torch.nn.Linear(3, 1)

    def mse(net, x, y):
        return ((net(x).squeeze(-1) - y) ** 2).mean()

    settings = dict(lr=0.05, clip_norm=0.5, lr_schedule="cosine")
    by_fit, by_lightning, unclipped = (copy.deepcopy(start) for _ in range(3))
    probgen.fit(LossStep(by_fit, mse), data, seed=2, epochs=3, batch_size=16, **settings, **QUIET)
    for net, changes in ((by_lightning, {}), (unclipped, {"clip_norm": None})):
        set_seed(2)
        batches = TensorBatches(data, 16, shuffle=True, generator=torch.Generator().manual_seed(2))
        module = ProbgenModule(LossStep(net, mse), **{**settings, **changes})
        trainer(tmp_path, max_epochs=3).fit(module, batches)
    assert_all_close(params(by_fit), params(by_lightning))
    assert largest_difference(params(by_fit), params(unclipped)) > 1e-3


def test_pyro_param_sites_follow_precision_and_checkpoints(tmp_path):
    """pyro.param sites outside any module: converted with the module by Lightning's
    64-bit precision, and saved in and restored from Lightning's checkpoints."""
    x = torch.randn(64) + 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16)

    def module():
        return ProbgenModule(
            SVIStep(known_scale_model, raw_guide, optim=pyro.optim.Adam({"lr": 0.1}))
        )

    t = trainer(tmp_path, max_epochs=2, precision="64-true")
    t.fit(module(), loader)
    trained = store()
    assert {v.dtype for v in trained.values()} == {torch.float64}
    assert float(trained["loc"]) > 0.3  # from 0 towards the data's mean, 3
    ckpt = tmp_path / "run.ckpt"
    t.save_checkpoint(ckpt)

    pyro.clear_param_store()
    resumed = trainer(tmp_path, max_epochs=2, precision="64-true")  # done: restores only
    resumed.fit(module(), loader, ckpt_path=ckpt)
    assert resumed.global_step == t.global_step
    assert_all_close(store(), trained)


def test_fit_loop_settings_are_refused_with_the_trainers_counterpart():
    vae = VAE(image_shape=(1, 4, 4), z_dim=2, hidden=[4])
    with pytest.raises(ConfigError, match=r"epochs is the fit loop's, use Trainer\(max_epochs"):
        ProbgenModule(vae, epochs=3)
    with pytest.raises(ConfigError, match=r"patience is the fit loop.s.*EarlyStopping"):
        ProbgenModule(vae, config=probgen.FitConfig(patience=3))
    with pytest.raises(ConfigError, match="unknown settings"):
        ProbgenModule(vae, learning_rate=0.1)
    with pytest.raises(ConfigError, match="num_particles set, but the step given"):
        ProbgenModule(SVIStep(data_model, AutoNormal(data_model)), num_particles=4)
    with pytest.raises(ConfigError, match="lr must be"):
        ProbgenModule(vae, lr=-1.0)


@pytest.mark.parametrize(
    "setting, value, counterpart",
    [
        ("precision", "bf16", r'Trainer\(precision="bf16-mixed"\)'),
        ("matmul_precision", "high", r"torch\.set_float32_matmul_precision"),
        ("compile", True, "compile the networks yourself"),
        ("data_on_device", False, r"a DataLoader\(pin_memory=True\)"),
    ],
)
def test_fit_loop_speed_settings_are_refused_with_the_trainers_counterpart(
    setting, value, counterpart
):
    vae = VAE(image_shape=(1, 4, 4), z_dim=2, hidden=[4])
    with pytest.raises(ConfigError, match=rf"{setting} is the fit loop's, use {counterpart}"):
        ProbgenModule(vae, **{setting: value})
    with pytest.raises(ConfigError, match=rf"{setting} is the fit loop's"):
        ProbgenModule(vae, config=probgen.FitConfig(**{setting: value}))


def test_every_fit_setting_is_read_or_refused_with_a_counterpart():
    """A new FitConfig field must be either a step/optimizer setting ProbgenModule reads
    or a fit-loop setting it refuses with the Trainer's counterpart (else it would be
    silently ignored)."""
    from dataclasses import fields

    from probgen.lightning import LOOP_ONLY, STEP_AND_OPTIMIZER

    names = {f.name for f in fields(probgen.FitConfig)}
    assert names == set(LOOP_ONLY) | set(STEP_AND_OPTIMIZER)
    assert not set(LOOP_ONLY) & set(STEP_AND_OPTIMIZER)


def _binary_scaled(batch, generator=None):
    """A transform with one_draw_checks whose every draw is bad: pixels of 0.25 and 0.75."""
    from probgen.data import dynamic_binarization

    return (dynamic_binarization(batch, generator)[0] * 0.5 + 0.25,) + tuple(batch[1:])


_binary_scaled.one_draw_checks = True


def test_tensor_batches_are_checked_once_as_fit_checks_them(tmp_path, monkeypatch):
    """Data of a TensorBatches is checked whole when training, validation and testing
    start (dynamically binarized data: one draw), and the model skips its per-batch
    checks, as under probgen.fit; a DataLoader's batches are checked one by one; bad data
    is refused before the first step."""
    from torch.utils.data import DataLoader, TensorDataset

    from probgen.data import dynamic_binarization
    from probgen.errors import DataError

    g = torch.Generator().manual_seed(5)
    grey = torch.rand(40, 1, 4, 4, generator=g)
    binary = (grey < 0.5).float()
    vae = VAE(image_shape=(1, 4, 4), z_dim=2, hidden=[4])
    calls = []
    check = vae.likelihood.check
    monkeypatch.setattr(vae.likelihood, "check", lambda x: calls.append(len(x)) or check(x))
    module = ProbgenModule(vae)
    train = TensorData(grey, transform=dynamic_binarization)
    val = TensorData(binary)
    t = trainer(tmp_path, max_epochs=2)
    t.fit(module, TensorBatches(train, 10, shuffle=True, generator=g), TensorBatches(val, 20))
    # each data set whole, once (one draw of the training data's binarization); no
    # check per batch in 2 epochs of 4 training and 2 validation batches
    assert calls == [40, 40], calls
    calls.clear()
    t.test(module, TensorBatches(val, 20))
    assert calls == [], calls  # the validation data, checked already
    t.test(module, TensorBatches(TensorData(binary[:30]), 20))
    assert calls == [30], calls
    calls.clear()
    t.test(module, DataLoader(TensorDataset(binary), batch_size=20))
    assert calls == [20, 20], calls

    bad = VAE(image_shape=(1, 4, 4), z_dim=2, hidden=[4])
    before = params(bad)
    with pytest.raises(DataError, match="binary pixels"):
        trainer(tmp_path, max_epochs=1).fit(
            ProbgenModule(bad),
            TensorBatches(TensorData(grey, transform=_binary_scaled), 10),
        )
    assert_all_close(params(bad), before)


def test_without_lightning_the_import_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    path = Path(probgen.__file__).parent / "lightning.py"
    spec = importlib.util.spec_from_file_location("probgen_lightning_copy", path)
    with pytest.raises(ImportError, match=r"pip install 'probgen\[lightning\]'"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_docs_snippet_runs(tmp_path, monkeypatch):
    """docs/lightning.md's example as written, on a slice of MNIST for one epoch."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "lightning.md").read_text()
    block = page.split("<!-- lightning-snippet")[1]
    code = re.search(r"```python\n(.*?)\n```", block, re.S).group(1)
    for original in ("val_size=10000", "max_epochs=10", "logger=False"):
        assert original in code, f"the test shrinks {original!r}; update it with the page"
    code = (
        code.replace("val_size=10000", "val_size=128, limit=384")
        .replace("max_epochs=10", "max_epochs=1")
        .replace("logger=False", "logger=False, enable_progress_bar=False")
    )
    monkeypatch.chdir(tmp_path)  # Lightning's default folder for checkpoints
    scope = {}
    exec(compile(code, "docs/lightning.md", "exec"), scope)
    val_loss = float(scope["trainer"].callback_metrics["val_loss"])
    # a -ELBO per image of 784 binary pixels (784 ln 2 = 543 for a decoder knowing nothing)
    assert 300 < val_loss < 600
    assert set(store()) == set()  # the VAE trained in its own scope of the param store
