"""Contract tests over every registered model, and the CVAE's own behaviour."""

import math

import pytest
import torch
from pyro.infer import Predictive

import probgen
from probgen.data import MISSING, quadrant_task
from probgen.errors import ConfigError, DataError
from probgen.metrics import iw_nll, negative_elbo
from probgen.models import CVAE, MODELS, VAE, Baseline
from probgen.train import WeightAverage, load_model, save_model
from tests.conftest import QUIET


def tiny_cvae(mnist_small):
    task = quadrant_task(mnist_small["train"], 2)
    return CVAE(Baseline(hidden=(16,)), z_dim=3, hidden=(16,)), next(task.batches(8))


def tiny_vae(mnist_small):
    x, y = next(mnist_small["train"].batches(8))
    return VAE(z_dim=3, hidden=(16,), likelihood="continuous_bernoulli", num_labels=10), (x, y)


def tiny_flow(mnist_small):
    from probgen.models.flow import FlowModel

    x = torch.randn(8, 2)
    return FlowModel("realnvp", event_shape=(2,), preprocess="none", hidden=(8,), depth=2), (x,)


def tiny_gan(mnist_small):
    from probgen.models.gan import GAN

    x, _ = next(mnist_small["train"].batches(8))
    return GAN(z_dim=4, net="mlp", g_hidden=(16,), d_hidden=(16,)), (x,)


def tiny_mevae(mnist_small):
    from probgen.models.mevae import MEVAE

    x = (torch.rand(8, 1, 32, 32) < 0.2).float()
    return MEVAE(
        (1, 32, 32),
        num_entities=2,
        what_dim=4,
        encoder_channels=(8, 16),
        encoder_hidden=16,
        decoder_hidden=(32,),
    ), (x,)


# One tiny instance and one batch per registered model; a new model adds itself here.
# The builder is called again (another seed) to check that save/load restores every value.
TINY = {"cvae": tiny_cvae, "flow": tiny_flow, "mevae": tiny_mevae, "vae": tiny_vae}


def tiny_aae(mnist_small):
    from probgen.models.aae import AAE

    x, y = next(mnist_small["train"].batches(8))
    return AAE(
        z_dim=2, hidden=(16,), d_hidden=(16,), encoder="gaussian", prior="mixture", num_labels=10
    ), (x, y)


def tiny_semi_supervised_aae(mnist_small):
    from probgen.models.semi_supervised_aae import SemiSupervisedAAE

    x, y = next(mnist_small["train"].batches(8))
    return SemiSupervisedAAE(z_dim=3, hidden=(16,), d_hidden=(16,), encoder="gaussian"), (x, y)


def tiny_flowgan(mnist_small):
    from probgen.models.flowgan import FlowGAN

    x, _ = next(mnist_small["train"].batches(8))
    return FlowGAN("realnvp", event_shape=(1, 28, 28), adv_weight=0.5, depth=1, hidden=4), (x,)


def tiny_age_cgan(mnist_small):
    from probgen.models.aging import AgeCGAN

    x, y = next(mnist_small["train"].batches(8))
    return AgeCGAN(num_levels=10, z_dim=4, g_width=4, d_width=4, e_width=4), (x, y)


def tiny_caae(mnist_small):
    from probgen.models.aging import CAAE

    x, y = next(mnist_small["train"].batches(8))
    return CAAE(num_levels=10, z_dim=3, hidden=(16,), d_hidden=(16,), d_img_width=4), (x, y)


ADVERSARIAL = {
    "aae": tiny_aae,
    "age_cgan": tiny_age_cgan,
    "caae": tiny_caae,
    "flowgan": tiny_flowgan,
    "gan": tiny_gan,
    "semi_supervised_aae": tiny_semi_supervised_aae,
}  # no guide: trained by phases (fit_step)


def test_every_registered_model_has_a_contract_case():
    assert set(MODELS.names()) == set(TINY) | set(ADVERSARIAL)


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_contract_adversarial_phases_move_their_own_parameters(name, mnist_small, tmp_path):
    """Each phase's loss is finite and reaches its own parameters; the model is a Pyro
    model whose latent Predictive draws; a checkpoint rebuilds it."""
    torch.manual_seed(0)
    model, batch = ADVERSARIAL[name](mnist_small)
    step = model.fit_step(probgen.FitConfig(patience=None, restore_best=False))
    for phase in step.phases:
        for p in model.parameters():
            p.grad = None
        out = phase.loss(batch, {})
        loss = out[0] if isinstance(out, tuple) else out
        assert loss.dim() == 0 and math.isfinite(loss.item())
        loss.backward()
        own = phase.declared_params()
        assert own and all(p.grad is not None and p.grad.abs().sum() > 0 for p in own), phase.name
    samples = Predictive(model.model, num_samples=3)(None, size=5)
    assert samples["z"].shape[:2] == (3, 5)
    save_model(model, tmp_path / "m.pt")
    again = probgen.load(tmp_path / "m.pt")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("name", sorted(set(TINY) | set(ADVERSARIAL)))
def test_contract_weight_average_copies_and_averages_every_model(name, mnist_small):
    """WeightAverage builds its averaged copy of every model (a deep copy) and ends with
    the mean of the epochs' weights in the model, every parameter included."""
    torch.manual_seed(0)
    model, batch = {**TINY, **ADVERSARIAL}[name](mnist_small)
    seen = []

    def record(run, entry):
        seen.append([p.detach().clone() for p in run.module.parameters()])

    recorder = type("Recorder", (), {"on_validation_end": staticmethod(record)})()
    probgen.fit(
        model,
        [batch],
        epochs=2,
        lr=1e-2,
        device="cpu",
        restore_best=False,
        patience=None,
        callbacks=[recorder, WeightAverage("uniform")],
        **QUIET,
    )
    moved = 0
    for i, p in enumerate(model.parameters()):
        assert torch.allclose(p, (seen[0][i] + seen[1][i]) / 2, atol=1e-6), i
        moved += int(not torch.equal(seen[0][i], seen[1][i]))
    assert moved > 0


# --------------------------------------------------------------------------- autoencoders


def tiny_denoising_ae(mnist_small):
    x, _ = next(mnist_small["train"].batches(8))
    return VAE.from_preset(
        "denoising_ae", z_dim=3, hidden=(16,), likelihood="continuous_bernoulli"
    ), (x,)


def tiny_vae_with_a_flow_guide(mnist_small):
    x, _ = next(mnist_small["train"].batches(8))
    return VAE(z_dim=3, hidden=(16,), likelihood="continuous_bernoulli", guide_flow="planar"), (x,)


def tiny_universal_aae_on_noise(mnist_small):
    from probgen.models.aae import AAE

    x, _ = next(mnist_small["train"].batches(8))
    return AAE(
        z_dim=3,
        hidden=(16,),
        d_hidden=(16,),
        encoder="universal",
        corruption="noise",
        likelihood="continuous_bernoulli",
    ), (x,)


AUTOENCODERS = {"aae", "caae", "semi_supervised_aae", "vae"}
AUTOENCODER_CASES = {
    "aae": tiny_aae,
    "caae": tiny_caae,
    "semi_supervised_aae": tiny_semi_supervised_aae,
    "vae": tiny_vae,
    "denoising_ae": tiny_denoising_ae,
    "vae_planar": tiny_vae_with_a_flow_guide,
    "aae_universal_noise": tiny_universal_aae_on_noise,
}


def test_the_registered_autoencoders_are_those_with_the_interface(mnist_small):
    from probgen.models.autoencoder import Autoencoder

    found = {
        name
        for name, build in {**TINY, **ADVERSARIAL}.items()
        if isinstance(build(mnist_small)[0], Autoencoder)
    }
    assert found == AUTOENCODERS


def _own_reconstruction_term(model, args) -> float:
    """``-log p(x | z)`` per image from Pyro's traces of the model's own guide and model
    (the guide's draw replayed into the model): the ELBO's reconstruction term."""
    from pyro import poutine

    guide = poutine.trace(model.guide).get_trace(*args)
    site = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(*args).nodes["x"]
    return -float(site["fn"].log_prob(site["value"]).sum().detach()) / args[0].shape[0]


@pytest.mark.parametrize("name", sorted(AUTOENCODER_CASES))
def test_contract_autoencoder_interface(name, mnist_small):
    """VAE and the adversarial autoencoders answer one interface alike
    (probgen.models.autoencoder): codes of q(z|x), whose centre decodes to the model's own
    reconstruction; prior draws; decoded samples; and a reconstruction loss that is the
    ELBO's reconstruction term of the model's own Pyro model/guide pair, differentiable in
    the encoder and the decoder."""
    from probgen.metrics.report import seeded
    from probgen.models.autoencoder import Autoencoder

    torch.manual_seed(0)
    model, batch = AUTOENCODER_CASES[name](mnist_small)
    model.eval()
    x = batch[0]
    n = x.shape[0]
    labels = batch[1] if len(batch) > 1 and model.num_labels else None
    assert isinstance(model, Autoencoder) and model.device == torch.device("cpu")
    assert model.label_to_decoder == (name in ("caae", "vae"))  # (tiny_vae is conditional)
    z = model.codes(x, labels)
    assert z.shape == (n, model.z_dim) and torch.isfinite(z).all()
    centre = model.codes(x, labels, sample=False)
    assert torch.equal(centre, model.codes(x, labels, sample=False))
    deterministic = name in ("caae", "denoising_ae")  # point-mass encoders
    assert torch.equal(z, centre) == deterministic
    decoder_labels = labels if model.label_to_decoder else None
    if name == "semi_supervised_aae":  # its decoder reads the class head's softmax
        decoder_labels = torch.softmax(model.class_logits(x), -1)
    decoded = model.decode(centre, decoder_labels)
    assert decoded.shape == (n, 1, 28, 28)
    assert torch.allclose(decoded, model.reconstruct(x, labels), atol=1e-6)
    prior = model.prior_sample(n, labels)
    assert prior.shape == (n, model.z_dim) and torch.isfinite(prior).all()
    samples = model.sample(labels=torch.arange(3)) if model.label_to_decoder else model.sample(3)
    assert samples.shape == (3, 1, 28, 28)
    args = (
        tuple(batch[:2])
        if len(batch) > 1 and (model.num_labels or name == "semi_supervised_aae")
        else (x,)
    )
    with seeded(5):
        loss = model.reconstruction_loss(batch)
    with seeded(5):
        own = _own_reconstruction_term(model, args)
    assert loss.dim() == 0 and float(loss.detach()) == pytest.approx(own, rel=1e-5)
    model.zero_grad()
    loss.backward()
    for part in (model.encoder, model.decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


@pytest.fixture(params=sorted(TINY))
def tiny(request, mnist_small):
    torch.manual_seed(0)
    model, batch = TINY[request.param](mnist_small)
    torch.manual_seed(1)
    other, _ = TINY[request.param](mnist_small)
    return model, batch, other


def test_contract_finite_loss_and_gradients_reach_every_parameter(tiny):
    model, batch, _ = tiny
    step = probgen.SVIStep(model)
    loss = step.loss(batch)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_contract_predictive_and_save_load(tiny, tmp_path):
    model, batch, other = tiny
    samples = Predictive(model.model, guide=model.guide, num_samples=4)(*batch)
    assert samples["z"].shape[:2] == (4, batch[0].shape[0])
    assert torch.isfinite(samples["z"]).all()
    save_model(model, tmp_path / "m.pt")
    assert any(
        not torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), other.state_dict().values())
    )
    load_model(other, tmp_path / "m.pt")
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


def test_cvae_shapes_and_predictions(mnist_small):
    model, (inputs, _targets) = tiny_cvae(mnist_small)
    probs = model.model(inputs)
    assert probs.shape == (8, 784) and probs.min() >= 0 and probs.max() <= 1
    pred = model.predict(inputs, num_samples=5)
    assert pred.shape == (5, 8, 1, 28, 28)
    visible = inputs != MISSING
    assert torch.equal(pred[:, visible], inputs[visible].expand(5, -1))  # visible pixels kept
    assert not torch.equal(pred[0], pred[1])  # z differs per sample
    assert model.baseline.predict(inputs).shape == inputs.shape


def test_cvae_learns_and_beats_its_untrained_self(mnist_small):
    task = {k: quadrant_task(v, 1) for k, v in mnist_small.items()}
    baseline = Baseline(hidden=(64,))
    before_base = baseline.state_dict()["net.0.weight"].clone()
    b_fit = probgen.fit(
        baseline,
        task["train"],
        task["val"],
        epochs=4,
        lr=3e-3,
        batch_size=64,
        device="cpu",
        **QUIET,
    )
    assert b_fit.train_loss[-1] < b_fit.train_loss[0]
    frozen = baseline.state_dict()["net.0.weight"].clone()
    assert not torch.equal(before_base, frozen)
    cvae = CVAE(baseline, z_dim=8, hidden=(64,))
    start = negative_elbo(cvae.model, cvae.guide, task["test"], num_particles=2)
    res = probgen.fit(
        cvae, task["train"], task["val"], epochs=4, lr=3e-3, batch_size=64, device="cpu", **QUIET
    )
    assert res.train_loss[-1] < res.train_loss[0]
    end = negative_elbo(cvae.model, cvae.guide, task["test"], num_particles=2)
    assert end < start - 50
    assert torch.equal(cvae.baseline.state_dict()["net.0.weight"], frozen)  # baseline untouched
    # importance sampling tightens the bound: IW NLL below -ELBO
    torch.manual_seed(0)
    elbo = negative_elbo(cvae.model, cvae.guide, task["test"], num_particles=20)
    nll = iw_nll(cvae.model, cvae.guide, task["test"], num_samples=20)
    assert nll < elbo


@pytest.mark.parametrize("shape", [(8, 1, 27, 28), (8, 783), (784,)])
def test_cvae_rejects_images_of_the_wrong_shape(mnist_small, shape):
    model, _ = tiny_cvae(mnist_small)
    with pytest.raises(DataError, match="shape"):
        model.model(torch.zeros(shape))


def test_cvae_rejects_values_outside_unit_interval(mnist_small):
    model, (inputs, targets) = tiny_cvae(mnist_small)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        model.model(inputs, targets * 255)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        model.model(inputs * 255, targets)
    with pytest.raises(DataError, match="do not match"):
        model.model(inputs, targets[:3])


def test_cvae_settings_are_checked():
    with pytest.raises(ConfigError, match="z_dim"):
        CVAE(z_dim=0)
    with pytest.raises(ConfigError, match="layer sizes"):
        CVAE(hidden=(0,))
