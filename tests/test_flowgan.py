"""Flow-GAN: the hybrid loss, its two players' phases, the discriminators, short runs."""

import math

import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Predictive

import probgen
from probgen.errors import ConfigError, DataError
from probgen.metrics.density import bits_per_dim
from probgen.models.flowgan import FlowGAN
from probgen.nn.flowgan_nets import build_discriminator
from probgen.train import save_model
from tests.conftest import QUIET, load_example, run_example

TINY = dict(depth=1, hidden=4)


def tiny(adv_weight=0.5, **kw):
    kw = {**TINY, **kw} if kw.get("flow", "realnvp") == "realnvp" else kw
    return FlowGAN(
        kw.pop("flow", "realnvp"),
        event_shape=kw.pop("event_shape", (1, 28, 28)),
        adv_weight=adv_weight,
        **kw,
    )


@pytest.fixture
def batch(mnist_small):
    x, _ = next(mnist_small["train"].batches(8))
    return (x,)


def grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


# --------------------------------------------------------------------------- the loss


def test_hybrid_at_adv_weight_0_is_the_flows_own_loss(batch):
    """Value and gradients equal the flow's own SVI training loss, in bits/dim; no
    discriminator is run and only the flow's phase exists."""
    fg = tiny(0.0)
    step = fg.fit_step(probgen.FitConfig())
    assert [p.name for p in step.phases] == ["G"]
    hybrid = step.phases[0].loss(batch, {})
    hybrid.backward()
    g_hybrid = grads(fg.flow_model)
    assert all(p.grad is None for p in fg.discriminator.parameters())
    fg.zero_grad(set_to_none=True)
    own = probgen.SVIStep(fg.flow_model).loss(batch)  # nats per example
    own.backward()
    d = fg.num_dims
    value = hybrid.item()
    assert value == pytest.approx(float(bits_per_dim(-own.detach(), d, 256)), rel=1e-6)
    assert value == pytest.approx(fg.bits_per_dim(batch[0]).mean().item(), rel=1e-6)
    scale = 1.0 / (d * math.log(2.0))
    for gh, p in zip(g_hybrid, fg.flow_model.parameters()):
        torch.testing.assert_close(gh, p.grad * scale, rtol=1e-5, atol=1e-9)


def test_adv_weight_1_computes_no_likelihood_and_0_5_mixes_the_terms(batch, monkeypatch):
    fg = tiny(1.0)
    fg.initialize(batch[0])

    def boom(b):
        raise AssertionError("the likelihood term was computed at adv_weight 1")

    monkeypatch.setattr(fg, "likelihood_term", boom)
    torch.manual_seed(3)
    loss = fg.generator_loss(batch, {})
    loss.backward()
    torch.manual_seed(3)
    with torch.no_grad():
        expect = F.softplus(-fg.discriminator(fg.fake(batch))).mean()  # -log D(f(z))
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert all(p.grad is None for p in fg.discriminator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fg.flow_model.parameters())

    half = tiny(0.5)
    half.load_state_dict(fg.state_dict())
    torch.manual_seed(4)
    mixed = half.generator_loss(batch, {})
    torch.manual_seed(4)
    with torch.no_grad():
        bpd = half.likelihood_term(batch)
        adv = F.softplus(-half.discriminator(half.fake(batch))).mean()
    assert mixed.item() == pytest.approx(0.5 * bpd.item() + 0.5 * adv.item(), rel=1e-5)
    assert set(half.pop_term_means()) == {"bpd", "adv"} and half.pop_term_means() == {}


def test_grover_form_is_adversarial_plus_like_reg_times_bits_per_dim(batch):
    fg = FlowGAN("realnvp", like_reg=3.0, **TINY)
    torch.manual_seed(5)
    loss = fg.generator_loss(batch, {})
    torch.manual_seed(5)
    with torch.no_grad():
        bpd = fg.likelihood_term(batch)
        adv = F.softplus(-fg.discriminator(fg.fake(batch))).mean()
    assert loss.item() == pytest.approx(adv.item() + 3.0 * bpd.item(), rel=1e-5)
    assert "like_reg=3.0" in repr(fg)


def test_samples_are_differentiable_and_of_temperature_1(batch):
    fg = tiny(0.5)
    fake = fg.fake(batch)
    assert fake.shape == batch[0].shape and fake.requires_grad
    fake.sum().backward()
    assert all(p.grad is not None for p in fg.flow_model.parameters())
    # the same noise through the flow's own (no-grad) sampler gives the same images
    torch.manual_seed(7)
    a = fg.fake(batch).detach()
    torch.manual_seed(7)
    b = fg.flow_model.distribution(1.0).sample((8,))
    torch.testing.assert_close((a + 1) / 2, b)


# --------------------------------------------------------------------------- the phases


@pytest.mark.parametrize("loss", ["non_saturating", "wgan_gp"])
def test_each_phase_moves_its_own_player_only(batch, loss):
    fg = tiny(0.5, loss=loss)
    for phase in fg.fit_step(probgen.FitConfig()).phases:
        fg.zero_grad(set_to_none=True)
        phase.loss(batch, {}).backward()
        own = fg.discriminator if phase.name == "D" else fg.flow_model
        other = fg.flow_model if phase.name == "D" else fg.discriminator
        assert {id(p) for p in phase.declared_params()} == {id(p) for p in own.parameters()}
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own.parameters()), (
            phase.name
        )
        assert all(p.grad is None for p in other.parameters()), phase.name


def test_001_order_and_the_discriminator_judges_the_generator_steps_fakes(batch, monkeypatch):
    fg = tiny(0.5)
    g, d = fg.fit_step(probgen.FitConfig()).phases
    assert (g.name, d.name, d.repeats) == ("G", "D", 1)
    made = []
    real_fake = fg.fake
    monkeypatch.setattr(fg, "fake", lambda b: made.append(1) or real_fake(b))
    ctx = {}
    g.loss(batch, ctx)
    assert len(made) == 1 and not ctx["fake"].requires_grad
    kept = ctx["fake"]
    seen = []
    disc = fg.discriminator
    monkeypatch.setattr(disc, "forward", lambda x: seen.append(x) or torch.zeros(x.shape[0]))
    d.loss(batch, ctx)
    assert len(made) == 1 and any(x is kept for x in seen)  # no new draw: the same fakes
    d.loss(batch, ctx)  # a later repeat: fresh fakes
    assert len(made) == 2
    other = tiny(0.5, order="discriminator_first", k=2)
    assert [p.name for p in other.fit_step(probgen.FitConfig()).phases] == ["D", "G"]
    assert other.fit_step(probgen.FitConfig()).phases[0].repeats == 2


def test_label_smoothing_sets_the_real_target_and_leaves_the_fake_one_at_0(batch):
    fg = tiny(0.5, label_smoothing=0.2)
    d = fg.fit_step(probgen.FitConfig()).phases[1]
    fake = torch.rand_like(batch[0]) * 2 - 1
    got = d.loss(batch, {"fake": fake})
    with torch.no_grad():
        real_logits = fg.discriminator(2 * batch[0] - 1)
        fake_logits = fg.discriminator(fake)
    expect = F.binary_cross_entropy_with_logits(
        real_logits, torch.full_like(real_logits, 0.8)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    assert got.item() == pytest.approx(expect.item(), rel=1e-5)
    plain = F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    assert abs(got.item() - plain.item()) > 1e-3


# --------------------------------------------------------------------------- discriminators


@pytest.mark.parametrize("name", ["dcgan", "resnet18"])
def test_discriminators_take_28_grey_and_32_colour_and_refuse_others(name):
    for shape in [(1, 28, 28), (3, 32, 32)]:
        net = build_discriminator(name, shape)
        assert net(torch.rand(2, *shape) * 2 - 1).shape == (2,)
        with pytest.raises(DataError, match="shape"):
            net(torch.rand(2, 3, 28, 28) if shape[0] == 1 else torch.rand(2, 1, 32, 32))
    for bad in [(3, 64, 64), (1, 28, 32), (784,)]:
        with pytest.raises(ConfigError, match=r"28.*32"):
            build_discriminator(name, bad)


def test_discriminators_are_the_thesis_networks():
    count = lambda m: sum(p.numel() for p in m.parameters())
    # 001 figure 3.2: 3 -> 32 -> 64 -> 128 -> 1; figure 3.3: CIFAR ResNet-18, one output
    assert (
        count(build_discriminator("dcgan", (3, 32, 32)))
        == 3 * 32 * 16 + 32 * 64 * 16 + 64 * 2 + 64 * 128 * 16 + 128 * 2 + 128 * 16
    )
    res = build_discriminator("resnet18", (3, 32, 32))
    assert res.net.conv1.kernel_size == (3, 3) and res.net.conv1.stride == (1, 1)
    assert isinstance(res.net.maxpool, torch.nn.Identity)
    assert [len(getattr(res.net, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert count(res) == 11_169_345  # SPEC-adversarial 6.5's count
    critic = FlowGAN("realnvp", loss="wgan_gp", discriminator="resnet18", **TINY)
    assert critic.k == 5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in critic.discriminator.modules())


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="adv_weight"):
        tiny(1.5)
    with pytest.raises(ConfigError, match="not both"):
        FlowGAN("realnvp", adv_weight=0.5, like_reg=1.0, **TINY)
    with pytest.raises(ConfigError, match="order"):
        tiny(0.5, order="sideways")
    with pytest.raises(ConfigError, match="28"):
        FlowGAN("realnvp", event_shape=(2,), **TINY)
    with pytest.raises(ConfigError, match="label_smoothing"):
        tiny(0.5, label_smoothing=1.0)
    with pytest.raises(ConfigError, match="label smoothing"):
        tiny(0.5, loss="wgan_gp", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="d_width"):
        tiny(0.5, discriminator="resnet18", d_width=8)
    fg = tiny(0.5)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        fg.fit_step(probgen.FitConfig()).phases[1].loss((torch.full((4, 1, 28, 28), 2.0),), {})


# --------------------------------------------------------------------------- as a model


def test_a_pyro_model_that_saves_and_loads(batch, tmp_path):
    fg = tiny(0.5)
    fg.initialize(batch[0])
    s = Predictive(fg.model, num_samples=3)(None, size=5)
    assert s["z"].shape[:2] == (3, 5) and s["x"].shape == (3, 5, 1, 28, 28)
    assert fg.sample(4).shape == (4, 1, 28, 28)
    save_model(fg, tmp_path / "m.pt")
    again = probgen.load(tmp_path / "m.pt")
    assert isinstance(again, FlowGAN) and again.adv_weight == 0.5
    for (k, a), (_, b) in zip(fg.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


SETTINGS = {
    "likelihood only": dict(adv_weight=0.0),
    "hybrid dcgan": dict(adv_weight=0.5, label_smoothing=0.1),
    "adversarial only": dict(adv_weight=1.0),
    "hybrid resnet18": dict(adv_weight=0.5, discriminator="resnet18"),
    "wgan-gp, k=2": dict(adv_weight=0.5, loss="wgan_gp", k=2),
    "grover": dict(adv_weight=None, like_reg=1.0),
    "denseflow": dict(adv_weight=0.5, flow="denseflow", depth=1, hidden=4, levels=1),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_short_run_of_each_setting(name, mnist_small):
    from probgen.data.dequantize import dequantized

    train = dequantized(mnist_small["train"].subset(slice(0, 32)))
    val = dequantized(mnist_small["val"].subset(slice(0, 16)), seed=1)
    torch.manual_seed(0)
    fg = tiny(**SETTINGS[name])
    fg.initialize(train.tensors[0][:16])
    before = {k: v.clone() for k, v in fg.state_dict().items()}
    res = probgen.fit(
        fg,
        train,
        val,
        epochs=1,
        batch_size=16,
        lr=1e-3,
        patience=None,
        restore_best=False,
        device="cpu",
        **QUIET,
    )
    h = res.history[-1]
    g_loss = h["train_loss/G"] if "train_loss/D" in h else h["train_loss"]  # one phase
    assert math.isfinite(g_loss) and math.isfinite(h["val_loss"])
    assert 0 < h["val_loss"] < 20  # bits/dim of the flow
    assert ("train_loss/D" in h) == (fg._adv_w > 0)
    flow_moved = any(
        not torch.equal(before[k], v)
        for k, v in fg.state_dict().items()
        if k.startswith("flow_model.")
    )
    d_moved = any(
        not torch.equal(before[k], v)
        for k, v in fg.state_dict().items()
        if k.startswith("discriminator.") and v.is_floating_point()
    )
    assert flow_moved and d_moved == (fg._adv_w > 0)
    assert fg.exact == (name != "denseflow")


# --------------------------------------------------------------------------- examples/flow_gan.py
# Run in this process (its module imported once), as tests/test_gan.py runs examples/gan.py.


@pytest.fixture(scope="module")
def example():
    return load_example("flow_gan")


def test_flowgan_example_sweep_smoke(example, tmp_path):
    import json

    out = tmp_path / "out"
    assert (
        run_example(
            example,
            "--disc",
            "dcgan",
            "--adv-weight",
            "0",
            "1",
            "--like-reg",
            "2",
            "--out",
            str(out),
        )
        == 0
    )
    r = json.loads((out / "results.json").read_text())["results"]
    assert set(r["settings"]) == {"w0", "dcgan_w1", "dcgan_grover2"}
    for tag, s in r["settings"].items():
        assert 0 < s["test_bits_per_dim"] < 20 and s["fid"] > 0, tag
        assert all("train_bpd" in h for h in s["history"]) == (tag != "dcgan_w1")
        assert all("train_adv" in h for h in s["history"]) == (tag != "w0")
        assert (out / f"samples_{tag}.png").stat().st_size > 1000
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("setting,disc,adv_weight")
    for name in ("tradeoff.png", "losses.png"):
        assert (out / name).stat().st_size > 1000
    again = probgen.load(out / "flowgan_dcgan_grover2.pt")
    assert again.like_reg == 2.0 and again.form == "grover"


def test_flowgan_example_cifar10_and_bad_weight(example, tmp_path, monkeypatch, capsys):
    """CIFAR-10 through torchvision (download=True), from a small CIFAR-shaped folder, with
    the WGAN-GP critic; an adversarial weight outside [0, 1] is refused."""
    import json

    import torchvision.datasets.cifar as tv_cifar

    from tests.test_gan import _fake_cifar

    _fake_cifar(tmp_path / "data")
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    out = tmp_path / "out"
    assert (
        run_example(
            example,
            "--data",
            "cifar10",
            "--data-root",
            str(tmp_path / "data"),
            "--disc",
            "wgan_gp",
            "--adv-weight",
            "0.5",
            "--epochs",
            "1",
            "--train-size",
            "48",
            "--batch-size",
            "16",
            "--val-size",
            "16",
            "--out",
            str(out),
        )
        == 0
    )
    r = json.loads((out / "results.json").read_text())["results"]
    assert r["fid_name"] is None and set(r["settings"]) == {"wgan_gp_w0.5"}
    assert 0 < r["settings"]["wgan_gp_w0.5"]["test_bits_per_dim"] < 20
    fg = probgen.load(out / "flowgan_wgan_gp_w0.5.pt")
    assert fg.event_shape == (3, 32, 32) and fg.spec.name == "wgan_gp" and fg.k == 5
    with pytest.raises(SystemExit):
        run_example(example, "--adv-weight", "1.5", "--out", str(out))
    assert "[0, 1]" in capsys.readouterr().err


def test_flowgan_example_nice_base_is_a_setting(example, tmp_path, capsys):
    """``--base normal`` builds NICE on a Gaussian base (recorded in the checkpoint); the
    other flows, whose base is normal, refuse it."""
    out = tmp_path / "out"
    assert (
        run_example(
            example,
            "--flow",
            "nice",
            "--base",
            "normal",
            "--adv-weight",
            "0",
            "--fid-samples",
            "200",
            "--out",
            str(out),
        )
        == 0
    )
    fg = probgen.load(out / "flowgan_w0.pt")
    assert fg.flow_model.flow.base == "normal"
    assert isinstance(
        fg.flow_model.flow.distribution().base_dist.base_dist, torch.distributions.Normal
    )
    with pytest.raises(SystemExit):
        run_example(example, "--flow", "realnvp", "--base", "normal", "--out", str(out))
    assert "--base picks NICE's base" in capsys.readouterr().err


def test_flowgan_example_init_starts_from_a_trained_flow(example, tmp_path):
    """``--init CHECKPOINT`` copies a trained flow's weights into every setting's flow
    before it trains; a checkpoint of another flow is refused with the flag's name."""
    from probgen.errors import CheckpointError

    src = tmp_path / "src"
    assert (
        run_example(
            example,
            "--flow",
            "nice",
            "--adv-weight",
            "0",
            "--fid-samples",
            "200",
            "--out",
            str(src),
        )
        == 0
    )
    trained = probgen.load(src / "flowgan_w0.pt").flow_model.state_dict()
    args = example.parse_args(["--smoke", "--flow", "nice", "--adv-weight", "0.5"])
    setting = example.settings(args)[0]
    fresh = example.build(args, setting, (1, 28, 28))
    assert not all(torch.equal(v, trained[k]) for k, v in fresh.flow_model.state_dict().items())
    example.start_from(fresh, src / "flowgan_w0.pt")
    assert all(torch.equal(v, trained[k]) for k, v in fresh.flow_model.state_dict().items())
    other = example.build(
        example.parse_args(["--smoke", "--flow", "realnvp"]), setting, (1, 28, 28)
    )
    with pytest.raises(CheckpointError, match="--init"):
        example.start_from(other, src / "flowgan_w0.pt")
    # the whole run: the adversarial setting trains on from the copied weights
    out = tmp_path / "out"
    assert (
        run_example(
            example,
            "--flow",
            "nice",
            "--disc",
            "wgan_gp",
            "--adv-weight",
            "0.5",
            "--fid-samples",
            "200",
            "--init",
            str(src / "flowgan_w0.pt"),
            "--out",
            str(out),
        )
        == 0
    )
    assert (out / "flowgan_wgan_gp_w0.5.pt").exists()
