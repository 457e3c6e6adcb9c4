"""GANs: the adversarial losses, the theory of the game on a grid, the networks, the GAN as
a Pyro model trained by the fit loop's phases, the 1-D toy, and examples/gan.py."""

import math

import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Predictive
from torch import nn

import probgen
from probgen.data import TensorData
from probgen.errors import ConfigError, DataError
from probgen.infer.adversarial import (
    ADVERSARIAL_LOSSES,
    adversarial_phases,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    optimal_discriminator,
    r1_penalty,
    value_on_grid,
)
from probgen.models import GAN, MODELS
from probgen.nn.gan_nets import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, dcgan_nets
from probgen.train import Phase, load_checkpoint
from tests.conftest import QUIET, load_example, run_example

NO_MONITOR = dict(patience=None, restore_best=False)


# --------------------------------------------------------------------------- losses


def test_losses_are_the_papers_formulas():
    real, fake = torch.tensor([2.0, -0.5, 0.3]), torch.tensor([-1.0, 0.7, -3.0])
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    # -(1/m) sum [log D(x) + log(1 - D(G(z)))]: Algorithm 1, line 5, as a descent
    v = (d_real.log() + (1 - d_fake).log()).mean()
    assert discriminator_loss(real, fake).item() == pytest.approx(-v.item(), rel=1e-6)
    # one-sided smoothing: the real label 0.9, the fake label still 0
    smoothed = -(0.9 * d_real.log() + 0.1 * (1 - d_real).log()).mean() - (1 - d_fake).log().mean()
    assert discriminator_loss(real, fake, label_smoothing=0.1).item() == pytest.approx(
        smoothed.item(), rel=1e-6
    )
    assert generator_loss(fake, "minimax").item() == pytest.approx(
        (1 - d_fake).log().mean().item(), rel=1e-6
    )
    assert generator_loss(fake, "non_saturating").item() == pytest.approx(
        -d_fake.log().mean().item(), rel=1e-6
    )
    assert discriminator_loss(real, fake, "wasserstein").item() == pytest.approx(
        (fake.mean() - real.mean()).item()
    )
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(
        (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()).item()
    )
    assert generator_loss(fake, "wasserstein").item() == pytest.approx(-fake.mean().item())
    # stable where sigmoid saturates in float32
    assert math.isfinite(discriminator_loss(torch.tensor([-200.0]), torch.tensor([200.0])).item())


def test_non_saturating_gradient_stays_large_where_minimax_vanishes():
    # A generator that puts its sample at theta, where a fixed discriminator is sure it is
    # fake: D(G(z)) -> 0. The minimax loss's gradient vanishes there, the non-saturating
    # one does not, and both push theta towards the data (towards larger D).
    w = 4.0  # D(x) = sigmoid(w x)

    def grad(kind, theta):
        t = torch.tensor(theta, requires_grad=True)
        generator_loss((w * t).reshape(1), kind).backward()
        return t.grad.item()

    for theta in (-2.0, -3.0):  # D(G(z)) = 3e-4, 6e-6
        mm, ns = grad("minimax", theta), grad("non_saturating", theta)
        assert mm < 0 and ns < 0  # descent moves theta up
        assert abs(mm) < 2e-3 and abs(ns) > 0.99 * w
    # where D is fooled (D(G(z)) -> 1) it is the other way round
    assert abs(grad("minimax", 2.0)) > 0.99 * w and abs(grad("non_saturating", 2.0)) < 2e-3


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic():
    real, fake = torch.randn(16, 3), torch.randn(16, 3)
    unit = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        unit.weight.copy_(torch.tensor([[0.6, 0.0, 0.8]]))  # |grad| = 1
    assert gradient_penalty(unit, real, fake).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        unit.weight.mul_(3.0)  # |grad| = 3: (3 - 1)^2
    gp = gradient_penalty(unit, real, fake)
    assert gp.item() == pytest.approx(4.0, rel=1e-5)
    gp.backward()  # differentiable in the critic
    assert unit.weight.grad is not None and unit.weight.grad.abs().sum() > 0


def test_r1_penalty_is_the_squared_gradient_norm_at_the_data():
    critic = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[1.0, 2.0, 2.0]]))  # |grad|^2 = 9 everywhere
    x = torch.randn(8, 3, requires_grad=True)
    r1 = r1_penalty(critic(x).squeeze(-1), x)
    assert r1.item() == pytest.approx(9.0, rel=1e-6)
    r1.backward()
    assert critic.weight.grad is not None


def test_the_phases_serve_other_adversarial_families():
    # an adversarial autoencoder's regularisation game: D tells prior draws ("real") from
    # the encoder's codes ("fake"); a Flow-GAN adds a likelihood term to the generator's loss
    torch.manual_seed(0)
    encoder, disc = nn.Linear(4, 2), MLPDiscriminator((2,), hidden=(8,))
    d_phase, g_phase = adversarial_phases(
        disc,
        encoder,
        real=lambda b: torch.randn(b[0].shape[0], 2),
        fake=lambda b: encoder(b[0]),
        loss="non_saturating",
        k=2,
        r1_weight=1.0,
        generator_extra=lambda b, ctx: torch.tensor(5.0),
        adversarial_weight=0.0,
        names=("D_z", "encoder"),
    )
    assert (d_phase.name, d_phase.repeats, g_phase.name) == ("D_z", 2, "encoder")
    batch = (torch.randn(16, 4),)
    assert g_phase.loss(batch, {}).item() == pytest.approx(5.0)  # weight 0: the extra term
    value = d_phase.loss(batch, {})
    value.backward()
    assert math.isfinite(value.item()) and encoder.weight.grad is None
    with pytest.raises(ConfigError, match="r1_weight"):
        adversarial_phases(disc, encoder, lambda b: b, lambda b: b, r1_weight=-1.0)


def test_loss_settings_are_checked():
    assert set(ADVERSARIAL_LOSSES.names()) == {"minimax", "non_saturating", "wgan_gp", "hinge"}
    with pytest.raises(ConfigError, match="adversarial loss"):
        GAN(loss="least_squares")
    with pytest.raises(
        ConfigError, match=r"k \(discriminator steps per generator step\) must be at least 1"
    ):
        GAN(net="mlp", k=0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        GAN(net="mlp", label_smoothing=1.0)
    with pytest.raises(ConfigError, match="label smoothing applies"):
        GAN(net="mlp", loss="wgan_gp", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="betas"):  # the phases' own Adam betas
        gan = GAN(net="mlp")
        adversarial_phases(gan.discriminator, gan.generator, gan.real, gan.fake, betas=(0.5, 1.5))
    with pytest.raises(ConfigError, match="generator loss kind"):
        generator_loss(torch.zeros(2), "saturating")


# --------------------------------------------------------------------------- theory on a grid


def _grid_densities(shift=2.0, scale=1.5):
    x = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    dx = float(x[1] - x[0])
    p_data = torch.distributions.Normal(-1.0, 1.0).log_prob(x).exp()
    p_g = torch.distributions.Normal(-1.0 + shift, scale).log_prob(x).exp()
    return x, dx, p_data, p_g


def test_value_at_the_optimal_discriminator_is_minus_log4_plus_2_jsd():
    from scipy.spatial.distance import jensenshannon

    _x, dx, p_data, p_g = _grid_densities()
    d_star = optimal_discriminator(p_data, p_g)
    v = value_on_grid(d_star, p_data, p_g, dx).item()
    jsd = jensenshannon(p_data.numpy(), p_g.numpy()) ** 2  # scipy: sqrt(JSD), nats
    assert v == pytest.approx(-math.log(4) + 2 * jsd, abs=1e-6)
    assert v > -math.log(4) + 0.1  # the densities differ
    # D* maximises V(D, G): any other discriminator scores less
    for other in (
        d_star.clamp(0.1, 0.9),
        torch.full_like(d_star, 0.5),
        torch.sigmoid(torch.logit(d_star.clamp(1e-9, 1 - 1e-9)) + 0.3),
    ):
        assert value_on_grid(other, p_data, p_g, dx).item() < v
    # equal densities: D* = 1/2 everywhere and V = -log 4 (the global minimum of C(G))
    d_equal = optimal_discriminator(p_data, p_data)
    assert torch.allclose(d_equal, torch.full_like(d_equal, 0.5))
    assert value_on_grid(d_equal, p_data, p_data, dx).item() == pytest.approx(
        -math.log(4), abs=1e-6
    )


def test_a_trained_discriminator_approaches_the_optimal_one():
    torch.manual_seed(0)
    p_data = torch.distributions.Normal(-1.0, 1.0)
    p_g = torch.distributions.Normal(1.0, 1.5)
    d = MLPDiscriminator((1,), hidden=(32, 32))
    steps = 400
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = discriminator_loss(d(p_data.sample((512, 1))), d(p_g.sample((512, 1))))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    x = torch.linspace(-3, 3, 121)
    d_star = optimal_discriminator(p_data.log_prob(x).exp(), p_g.log_prob(x).exp())
    with torch.no_grad():
        learned = torch.sigmoid(d(x[:, None]))
    assert (learned - d_star).abs().max() < 0.03
    assert (d_star.max() - d_star.min()) > 0.8  # a task where D matters


# --------------------------------------------------------------------------- networks


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_dcgan_networks_follow_the_guidelines(shape):
    g, d = dcgan_nets(shape, 100)
    x = g(torch.randn(4, 100))
    assert x.shape == (4,) + shape and d(torch.tanh(x)).shape == (4,)
    modules = list(g.modules()) + list(d.modules())
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in modules)  # no pooling
    ups = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    downs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert ups and all(m.stride == (2, 2) for m in ups)  # fractionally strided
    assert all(m.stride == (2, 2) for m in downs[:-1])  # strided
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert any(isinstance(m, nn.ReLU) for m in g.modules())
    slopes = {m.negative_slope for m in d.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}


def test_dcgan_cifar_discriminator_is_the_thesis_network():
    d = DCGANDiscriminator((3, 32, 32))
    widths = [m.out_channels for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [32, 64, 128, 1]
    assert sum(p.numel() for p in d.parameters()) == 167808


def test_dcgan_64_generator_starts_from_1024x4x4():
    g = DCGANGenerator((3, 64, 64), z_dim=100)
    assert g.start == (1024, 4, 4)
    widths = [m.out_channels for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert widths == [512, 256, 128, 3]
    g.eval()
    assert g(torch.randn(2, 100)).shape == (2, 3, 64, 64)


def test_networks_reject_bad_input():
    d = DCGANDiscriminator((1, 28, 28))
    with pytest.raises(DataError, match=r"shape \(B, 1, 28, 28\)"):
        d(torch.zeros(2, 3, 32, 32))
    with pytest.raises(DataError, match=r"values in \[-1, 1\]"):
        d(torch.full((2, 1, 28, 28), 255.0))
    with pytest.raises(DataError, match=r"values in \[-1, 1\]"):
        d(torch.full((2, 1, 28, 28), float("nan")))
    with pytest.raises(ConfigError, match="28, 32, 64"):
        DCGANGenerator((1, 30, 30))
    with pytest.raises(ConfigError, match="square"):
        GAN(data_shape=(1,), net="dcgan")
    with pytest.raises(ConfigError, match="unbounded"):
        GAN(data_shape=(1,), net="mlp", output="identity")
    with pytest.raises(ConfigError, match="takes no setting g_width"):
        GAN(net="mlp", g_width=8)
    gan = GAN(net="mlp", g_hidden=(8,), d_hidden=(8,))
    with pytest.raises(DataError, match=r"values in \[0, 1\]"):
        gan.real((torch.full((2, 1, 28, 28), 255.0),))


# --------------------------------------------------------------------------- the model


def tiny_gan(**kw):
    return GAN(**{"net": "mlp", "z_dim": 4, "g_hidden": (16,), "d_hidden": (16,), **kw})


def test_gan_is_a_pyro_model_with_a_latent_site():
    gan = tiny_gan()
    samples = Predictive(gan.model, num_samples=3)(size=5)
    assert samples["z"].shape == (3, 5, 4) and samples["x"].shape == (3, 5, 1, 28, 28)
    assert samples["x"].min() >= 0 and samples["x"].max() <= 1  # the data's range
    trace = poutine.trace(gan.model).get_trace(torch.zeros(6, 1, 28, 28))
    assert trace.nodes["z"]["type"] == "sample" and not trace.nodes["z"]["is_observed"]
    assert trace.nodes["x"]["infer"].get("_deterministic")
    assert trace.nodes["z"]["fn"].event_shape == (4,)
    # x is G(z): the deterministic site follows from the latent
    assert torch.allclose(trace.nodes["x"]["value"], gan.decode(trace.nodes["z"]["value"]))
    uniform = tiny_gan(prior="uniform").sample(500)
    assert uniform.shape == (500, 1, 28, 28)


@pytest.mark.parametrize("loss", ["minimax", "non_saturating", "wgan_gp", "hinge"])
def test_every_loss_trains_a_dcgan_epoch(loss, mnist_small):
    torch.manual_seed(0)
    gan = GAN(net="dcgan", loss=loss, z_dim=8, g_width=8, d_width=8, k=1)
    g0 = [p.detach().clone() for p in gan.generator.parameters()]
    res = probgen.fit(
        gan,
        mnist_small["train"].subset(slice(0, 64)),
        epochs=1,
        batch_size=32,
        lr=2e-4,
        device="cpu",
        **NO_MONITOR,
        **QUIET,
    )
    h = res.history[0]
    assert math.isfinite(h["train_loss/D"]) and math.isfinite(h["train_loss/G"])
    assert not all(torch.equal(a, b) for a, b in zip(g0, gan.generator.parameters()))
    x = gan.sample(8)
    assert x.shape == (8, 1, 28, 28) and x.min() >= 0 and x.max() <= 1


def test_k_discriminator_steps_per_generator_step_on_fresh_batches():
    gan = tiny_gan(k=3)
    phases = gan.phases()
    assert [p.name for p in phases] == ["D", "G"]
    assert phases[0].repeats == 3 and phases[0].fresh_batch
    seen = []
    x = torch.rand(12, 1, 28, 28)
    x[:, 0, 0, 0] = torch.arange(12) / 12  # a batch is known by its first pixel
    d_loss, g_loss = phases[0].loss, phases[1].loss

    def spy(name, fn):
        def loss(batch, ctx):
            seen.append((name, round(batch[0][0, 0, 0, 0].item() * 12)))
            return fn(batch, ctx)

        return loss

    step = probgen.PhasedStep(
        gan,
        [
            Phase("D", spy("D", d_loss), params=gan.discriminator, repeats=3),
            Phase("G", spy("G", g_loss), params=gan.generator),
        ],
    )
    probgen.fit(
        step, TensorData(x), epochs=1, batch_size=2, device="cpu", seed=None, **NO_MONITOR, **QUIET
    )
    d_batches = [b for n, b in seen if n == "D"]
    assert [n for n, _ in seen] == ["D", "D", "D", "G"] * 2
    assert len(set(d_batches)) == 6  # six different batches of data


def test_generator_step_leaves_the_discriminator_alone():
    torch.manual_seed(0)
    gan = tiny_gan()
    d_phase, g_phase = gan.phases()
    batch = (torch.rand(8, 1, 28, 28),)
    g_phase.loss(batch, {}).backward()
    assert all(p.grad is None for p in gan.discriminator.parameters())
    assert all(p.requires_grad for p in gan.discriminator.parameters())
    assert all(p.grad is not None for p in gan.generator.parameters())
    gan.zero_grad(set_to_none=True)
    d_phase.loss(batch, {}).backward()  # the fakes are detached
    assert all(p.grad is None for p in gan.generator.parameters())


def test_generator_average_follows_the_live_generator(tmp_path, mnist_small):
    torch.manual_seed(0)
    gan = tiny_gan(ema=0.5)
    _, g_phase = gan.phases()
    live = [p.detach().clone() for p in gan.generator.parameters()]
    avg = [p.clone() for p in live]
    opt = torch.optim.SGD(gan.generator.parameters(), lr=0.1)
    batch = (torch.rand(8, 1, 28, 28),)
    for _ in range(3):
        opt.zero_grad()
        g_phase.loss(batch, {}).backward()  # folds the current weights in, then the loss
        opt.step()
        avg = [0.5 * a + 0.5 * p for a, p in zip(avg, live)]
        live = [p.detach().clone() for p in gan.generator.parameters()]
    for a, b in zip(avg, gan.generator_ema.parameters()):
        assert torch.allclose(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(live, gan.generator_ema.parameters()))
    z = torch.randn(4, 4)
    gan.eval()
    assert torch.allclose(gan.decode(z), gan.from_net(gan.generate(z, gan.generator_ema)))
    # the average is part of the model: checkpointed and loaded
    probgen.fit(
        gan,
        mnist_small["train"].subset(slice(0, 32)),
        epochs=1,
        batch_size=16,
        device="cpu",
        checkpoint=str(tmp_path / "g.pt"),
        **NO_MONITOR,
        **QUIET,
    )
    loaded = probgen.load(tmp_path / "g.pt")
    assert loaded.ema == 0.5
    for a, b in zip(
        gan.generator_ema.state_dict().values(), loaded.generator_ema.state_dict().values()
    ):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="ema"):
        tiny_gan(ema=1.0)


def test_fit_refuses_to_early_stop_a_gan_on_its_losses(mnist_small):
    # (fit stops early only when asked or given validation data: ask here)
    with pytest.raises(ConfigError, match="no validation loss"):
        probgen.fit(tiny_gan(), mnist_small["train"], epochs=1, device="cpu", patience=3, **QUIET)
    with pytest.raises(ConfigError, match="no validation loss"):
        probgen.fit(
            tiny_gan(), mnist_small["train"], mnist_small["val"], epochs=1, device="cpu", **QUIET
        )


def test_checkpoint_records_settings_and_load_rebuilds(tmp_path, mnist_small):
    torch.manual_seed(0)
    gan = tiny_gan(loss="hinge", k=2, prior="uniform")
    ckpt = tmp_path / "gan.pt"
    probgen.fit(
        gan,
        mnist_small["train"].subset(slice(0, 64)),
        epochs=1,
        batch_size=16,
        device="cpu",
        checkpoint=str(ckpt),
        **NO_MONITOR,
        **QUIET,
    )
    assert "gan" in MODELS
    state = load_checkpoint(ckpt)
    assert [p["steps"] for p in state["phases"]] == [4, 2]  # k = 2: two D steps per G step
    loaded = probgen.load(ckpt)
    assert isinstance(loaded, GAN) and loaded.k == 2 and loaded.spec.name == "hinge"
    for (k, a), (_, b) in zip(gan.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


# --------------------------------------------------------------------------- quality, recomputed
# The examples' sample-quality numbers, recomputed here from the same images with numpy and
# scipy (the Frechet distance of Heusel et al. 2017 by numpy's eigh, Kynkaanniemi et al.
# 2019's precision and recall by brute-force distances, the class histogram by bincount): a
# second implementation that shares only the feature network with probgen.metrics.quality.


def independent_quality(samples, test_images, k=3, min_share=0.1):
    import numpy as np
    from scipy.spatial.distance import cdist

    from probgen.metrics.quality import extract_features

    real = extract_features(test_images)[0].double().numpy()
    feats, logits = extract_features(samples)
    fake = feats.double().numpy()
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    # tr sqrt(C_r C_f) = tr sqrt(C_r^1/2 C_f C_r^1/2), a symmetric matrix (eigh, no sqrtm of
    # a product that dead ReLU features make singular)
    w, v = np.linalg.eigh(cov_r)
    half = (v * np.sqrt(w.clip(min=0))) @ v.T
    root_trace = np.sqrt(np.linalg.eigvalsh(half @ cov_f @ half).clip(min=0)).sum()
    fid = float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r) + np.trace(cov_f) - 2 * root_trace)
    # column k of the sorted distances: the k-th neighbour, column 0 being the point itself
    radius_r = np.sort(cdist(real, real), axis=1)[:, k]
    radius_f = np.sort(cdist(fake, fake), axis=1)[:, k]
    d = cdist(fake, real)
    precision = float((d <= radius_r[None, :]).any(axis=1).mean())
    recall = float((radius_f[None, :] >= d.T).any(axis=1).mean())
    share = np.bincount(logits.argmax(1).numpy(), minlength=10) / len(fake)
    return {
        "fid": fid,
        "precision": precision,
        "recall": recall,
        "classes_covered": int((share >= min_share / 10).sum()),
        "class_histogram": share,
    }


def assert_same_quality(reported, samples, test_images):
    """The reported FID, precision, recall and classes covered are those of ``samples``."""
    n = samples.shape[0]
    mine = independent_quality(samples, test_images)
    assert reported["classes_covered"] == mine["classes_covered"], (reported, mine)
    # float32 against float64 distances may move a point on a ball's edge: one point of slack
    assert abs(reported["precision"] - mine["precision"]) <= 1.5 / n, (reported, mine)
    assert abs(reported["recall"] - mine["recall"]) <= 1.5 / test_images.shape[0], (reported, mine)
    # (the same features in float64 both ways: they agree to 1e-9; other samples of the
    # same generator move a smoke run's FID by 3e-4 of itself)
    assert reported["fid"] == pytest.approx(mine["fid"], rel=1e-6), (reported, mine)
    return mine


def smoke_mnist_test_images():
    """The MNIST test images a --smoke run of the examples scores against."""
    from probgen import cli
    from probgen.data import image_splits

    return image_splits("mnist", val_size=0, seed=0, device="cpu", limit=cli.SMOKE_LIMIT)[
        "test"
    ].tensors[0]


# --------------------------------------------------------------------------- examples/gan.py
# The example runs in this process (its module imported once): no interpreter start-up and
# no second import of torch per run, which on a busy 2-core machine is most of a smoke run.


@pytest.fixture(scope="module")
def example():
    return load_example("gan")


def test_gan_example_mnist_smoke_and_resume(example, tmp_path, capsys):
    import json

    assert (
        run_example(
            example, "--out", str(tmp_path), "--epochs", "1", "--loss", "minimax", "non_saturating"
        )
        == 0
    )
    first = json.loads((tmp_path / "results.json").read_text())["results"]["gans"]
    test_images = smoke_mnist_test_images()
    for loss in ("minimax", "non_saturating"):
        r = first[loss]
        assert [h["epoch"] for h in r["history"]] == [0]
        assert math.isfinite(r["history"][0]["fid"])  # the FID curve
        assert r["k"] == 1 and r["num_samples"] == 1000
        # the reported quality is that of the saved generator's evaluation samples (drawn
        # with seed + 13), recomputed here by a second implementation
        gan = probgen.load(tmp_path / f"gan_mnist_{loss}.pt")
        samples = gan.sample(1000, generator=torch.Generator().manual_seed(13))
        mine = assert_same_quality(r, samples, test_images)
        assert r["class_histogram"] == pytest.approx(mine["class_histogram"].tolist(), abs=1e-12)
        for name in (f"samples_mnist_{loss}.png", f"over_training_mnist_{loss}.png"):
            assert (tmp_path / name).stat().st_size > 1000
    for name in ("losses.png", "fid.png", "results.csv"):
        assert (tmp_path / name).exists()
    assert "FID, MNIST-classifier features" in capsys.readouterr().out
    # --resume continues the checkpoint: one more epoch, the first one kept
    assert (
        run_example(
            example, "--out", str(tmp_path), "--epochs", "2", "--loss", "non_saturating", "--resume"
        )
        == 0
    )
    hist = json.loads((tmp_path / "results.json").read_text())["results"]["gans"]["non_saturating"][
        "history"
    ]
    assert [h["epoch"] for h in hist] == [0, 1]
    assert hist[0] == first["non_saturating"]["history"][0]
    loaded = probgen.load(tmp_path / "gan_mnist_non_saturating.pt")
    assert isinstance(loaded, GAN) and loaded.spec.name == "non_saturating"


def test_gan_example_toy_smoke_and_bad_k(example, tmp_path, capsys):
    import json

    assert run_example(example, "--out", str(tmp_path), "--data", "toy1d", "--loss", "hinge") == 0
    r = json.loads((tmp_path / "results.json").read_text())["results"]["gans"]["hinge"]
    assert math.isfinite(r["mean"]) and r["std"] >= 0 and r["arch"] == "mlp"
    assert (tmp_path / "toy1d_hinge.png").stat().st_size > 1000
    capsys.readouterr()
    try:  # refused at parse time (argparse's exit) or by the model (cli.run's status)
        code = run_example(example, "--out", str(tmp_path), "--k", "0")
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "got 0" in err and ("--k " in err or "k (discriminator" in err)
    assert len(err.splitlines()) == 1


def test_toy_recipe_reaches_the_target_moments(example, tmp_path):
    """002's toy: z ~ U(0, 1), data N(-1, 1); the example's recipe (non-saturating loss, R1
    penalty 1, 40 epochs) puts the mean and std of G(z) within 0.05 of -1 and 1 (measured
    on 10 seeds; this is seed 0, about 20 s of one CPU thread)."""
    import json

    threads = torch.get_num_threads()
    try:
        assert (
            example.cli.run(
                example.main,
                [
                    "--no-progress",
                    "--threads",
                    "1",
                    "--device",
                    "cpu",
                    "--data",
                    "toy1d",
                    "--snapshots",
                    "2",
                    "--out",
                    str(tmp_path),
                ],
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    r = json.loads((tmp_path / "results.json").read_text())["results"]["gans"]["non_saturating"]
    assert r["epochs"] == 40 and r["r1_weight"] == 1.0
    assert abs(r["mean"] + 1.0) < 0.05 and abs(r["std"] - 1.0) < 0.05, (r["mean"], r["std"])


def _fake_cifar(root, per_batch=64, seed=0):
    """A folder in CIFAR-10's python layout (torchvision's cifar-10-batches-py), small."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": rng.integers(0, 10, per_batch).tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_gan_example_cifar10_through_torchvision(example, tmp_path, monkeypatch):
    """CIFAR-10 loads through torchvision's CIFAR10 with download=True, here from a small
    CIFAR-shaped folder (its files cannot carry the real checksums, so torchvision's
    checksum test is bypassed; everything else is torchvision's own loading)."""
    import json

    import torchvision.datasets.cifar as tv_cifar

    _fake_cifar(tmp_path / "data")
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    assert (
        run_example(
            example,
            "--data",
            "cifar10",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
        )
        == 0
    )
    r = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert r["fid_name"] is None  # no colour features offline
    gan = probgen.load(tmp_path / "out" / "gan_cifar10_non_saturating.pt")
    assert gan.data_shape == (3, 32, 32) and gan.sample(2).shape == (2, 3, 32, 32)
    assert (tmp_path / "out" / "samples_cifar10_non_saturating.png").stat().st_size > 1000


def test_sample_quality_example_scores_every_family_alike(tmp_path):
    import importlib.util
    import json
    from types import SimpleNamespace

    from probgen.train import set_seed
    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location(
        "sq_example", ROOT / "examples" / "sample_quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    common = [
        "--smoke",
        "--no-progress",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--samples",
        "200",
        "--out",
        str(tmp_path),
    ]
    threads = torch.get_num_threads()
    try:
        assert (
            module.cli.run(module.main, common + ["--models", "vae", "glow", "gan_ns", "cdcgan"])
            == 0
        )
        rows = json.loads((tmp_path / "results.json").read_text())["results"]["rows"]
        assert [r["model"] for r in rows] == [
            "vae (mean)",
            "vae (draw)",
            "glow T=0.7",
            "glow T=1.0",
            "gan_ns",
            "cdcgan",
        ]
        # every row's numbers are those of its model's samples (the checkpoint saved, the
        # example's own draw after set_seed(seed)), recomputed here by a second implementation
        test_images = smoke_mnist_test_images()
        by_label = {r["model"]: r for r in rows}
        for name in ("vae", "glow", "gan_ns", "cdcgan"):
            model = probgen.load(tmp_path / "checkpoints" / f"{name}.pt")
            set_seed(0)
            for label, x in module.draw(name, model, 200, SimpleNamespace(device="cpu")).items():
                assert_same_quality(by_label.pop(label), x, test_images)
        assert not by_label and all(r["epochs"] >= 1 for r in rows)
        # the conditional DCGAN is asked for 20 of each digit, in turn, as the conditional VAE
        cgan = probgen.load(tmp_path / "checkpoints" / "cdcgan.pt")
        set_seed(0)
        (x,) = module.draw("cdcgan", cgan, 200, SimpleNamespace(device="cpu")).values()
        set_seed(0)
        z = torch.randn(200, cgan.z_dim)
        levels = torch.arange(10).repeat_interleave(20)
        torch.testing.assert_close(x, cgan.regenerate(z, levels))
        assert not torch.allclose(x, cgan.regenerate(z, levels.roll(1)))
        assert (tmp_path / "samples.png").stat().st_size > 1000
        # a second run loads the checkpoints instead of training
        assert module.cli.run(module.main, common + ["--models", "gan_ns"]) == 0
        again = json.loads((tmp_path / "results.json").read_text())["results"]["rows"]
        (first,) = (r for r in rows if r["model"] == "gan_ns")
        assert again[0]["epochs"] == first["epochs"]
        # the loaded generator, the same seed: the same samples and so the same scores
        for key in ("fid", "kid", "precision", "recall", "classes_covered", "class_kl"):
            assert again[0][key] == first[key], key
    finally:
        torch.set_num_threads(threads)
