"""Aging: the graded digits (ground truth at every level), the face-folder loader, Age-cGAN's
inversion (encoder on generated pairs, then pixel or identity refinement), the CAAE's phases,
the recurrent model's loss weights, bad settings, and examples/aging.py."""

import json
import math
from pathlib import Path

import pytest
import torch
from pyro.infer import Predictive

import probgen
from probgen.data import TensorData
from probgen.data.faces import (
    AGE_GROUPS,
    AgeFolder,
    age_group,
    faces_loader,
    graded_images,
    graded_mnist,
    parse_face_name,
    stroke_thickness,
)
from probgen.errors import ConfigError, DataError
from probgen.models.aging import (
    CAAE,
    AgeCGAN,
    RecurrentAger,
    loss_weights,
    total_variation,
    unchanged,
)
from probgen.models.registry import MODELS
from probgen.train import PhasedStep
from tests.conftest import QUIET, load_example, run_example

ROOT = Path(__file__).resolve().parents[1]
NO_MONITOR = dict(patience=None, restore_best=False)


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def moved(module, before):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


def slant(images):
    """Measured slant: the regression of the ink's column on its row (second moments)."""
    w = images.flatten(1)
    h = images.shape[-1]
    rows = torch.arange(h, dtype=torch.float32).repeat_interleave(h)
    cols = torch.arange(h, dtype=torch.float32).repeat(h)
    m = w.sum(1, keepdim=True)
    r = (w * rows).sum(1, keepdim=True) / m
    c = (w * cols).sum(1, keepdim=True) / m
    return -((w * (rows - r) * (cols - c)).sum(1) / (w * (rows - r) ** 2).sum(1))


# --------------------------------------------------------------------------- graded digits


def test_graded_levels_follow_the_measured_attribute_and_keep_the_digit(mnist_small):
    from probgen.nn.classifier import load_classifier

    x, digits = (t[:256] for t in mnist_small["test"].tensors)
    graded = graded_images(x, "thickness", 6)
    assert graded.shape == (256, 6, 1, 28, 28) and graded.min() >= 0 and graded.max() <= 1
    assert torch.equal(graded[:, 1], x)  # level `thinning` is the digit as drawn
    width = torch.stack([stroke_thickness(graded[:, k]) for k in range(6)], 1)  # (N, 6)
    assert bool((width[:, 1:] > width[:, :-1]).float().mean() > 0.95)  # per digit, nearly all
    assert bool((width.mean(0)[1:] > width.mean(0)[:-1] + 0.5).all())  # on average, strictly
    classifier = load_classifier().eval()
    with torch.no_grad():
        for k in range(6):  # every level of a digit is the same digit
            acc = (classifier(graded[:, k]).argmax(1) == digits).float().mean().item()
            assert acc > 0.7, (k, acc)
    sl = graded_images(x, "slant", 5, max_shear=0.4)
    s = torch.stack([slant(sl[:, k]) for k in range(5)], 1)
    assert bool((s[:, 1:] > s[:, :-1]).float().mean() > 0.95)
    with torch.no_grad():
        assert all(
            (classifier(sl[:, k]).argmax(1) == digits).float().mean() > 0.9 for k in range(5)
        )
    assert torch.equal(graded_images(x, "thickness", 6), graded)  # deterministic


def test_graded_mnist_is_cached_and_splits_into_identities(tmp_path):
    a = graded_mnist("thickness", 3, val_size=16, limit=32, cache=tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1
    b = graded_mnist("thickness", 3, val_size=16, limit=32, cache=tmp_path)
    assert set(a) == {"train", "val", "test"}
    for k in a:
        assert torch.equal(a[k].images, b[k].images) and torch.equal(a[k].digits, b[k].digits)
    flat = a["test"].flat()
    x, level, ident = flat.tensors
    assert x.shape == (96, 1, 28, 28)
    assert torch.equal(x[ident == 5][level[ident == 5]], a["test"].images[5])
    assert a["test"].sequences().tensors[0].shape == (32, 3, 1, 28, 28)
    with pytest.raises(ConfigError, match="attribute"):
        graded_images(x, "age", 3)
    with pytest.raises(ConfigError, match="thinning"):
        graded_images(x, "thickness", 3, thinning=3)


# --------------------------------------------------------------------------- faces folder


def write_faces(folder: Path, names, size=20):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for name in names:
        img = torch.randint(0, 256, (size, size + 4, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(img.numpy()).save(
            folder / name, format="PNG" if name.endswith(".png") else "JPEG"
        )


def test_faces_loader_parses_bins_and_streams_to_the_fit_loop(tmp_path):
    ages = [3, 18, 19, 35, 47, 52, 60, 88]
    names = [f"{a}_{i % 2}_{i % 5}_2017011{i}.jpg.chip.jpg" for i, a in enumerate(ages)]
    names[3] = names[3].replace(".jpg.chip.jpg", ".png")
    write_faces(tmp_path / "faces", names)
    (tmp_path / "faces" / "notes.txt").write_text("not an image")
    ds = AgeFolder(tmp_path / "faces", size=32)
    order = sorted(range(len(names)), key=lambda i: names[i])  # files in name order
    assert [f.name for f in ds.files] == [names[i] for i in order]
    assert ds.ages == [ages[i] for i in order]
    assert ds.groups.tolist() == [[0, 0, 1, 2, 3, 4, 5, 5][i] for i in order]
    assert [age_group(a, "caae") for a in ages] == [0, 3, 3, 5, 6, 7, 7, 9]
    assert AgeFolder(tmp_path / "faces", 16, "caae").num_groups == len(AGE_GROUPS["caae"]) == 10
    img, _group = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1 and img.std() > 0.05
    assert AgeFolder(tmp_path / "faces", 16, channels=1)[0][0].shape == (1, 16, 16)
    assert parse_face_name("26_1_3_20170116.jpg") == (26, 1, 3)
    # the spine's DataLoader path: Age-cGAN trains on batches read from disk
    loader = faces_loader(
        tmp_path / "faces", 32, batch_size=4, generator=torch.Generator().manual_seed(0)
    )
    cgan = AgeCGAN((3, 32, 32), ds.num_groups, z_dim=4, g_width=4, d_width=4, e_width=4)
    before = snapshot(cgan.generator)
    res = probgen.fit(cgan, loader, epochs=1, device="cpu", **NO_MONITOR, **QUIET)
    assert all(math.isfinite(v) for v in res.train_loss) and any(moved(cgan.generator, before))
    # a file that does not follow the pattern is named in the error, or skipped
    write_faces(tmp_path / "faces", ["selfie.jpg"])
    with pytest.raises(DataError, match=r"selfie\.jpg"):
        AgeFolder(tmp_path / "faces")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "30_1_2_2017.jpg").write_text("not a jpeg")
    with pytest.raises(DataError, match=r"30_1_2_2017\.jpg.*could not be decoded"):
        AgeFolder(tmp_path / "broken")[0]
    lenient = AgeFolder(tmp_path / "faces", strict=False)
    assert lenient.skipped == ["selfie.jpg"] and len(lenient) == 8
    with pytest.raises(ConfigError, match="age group"):
        AgeFolder(tmp_path / "faces", groups=(5, 20))
    with pytest.raises(DataError, match="does not exist"):
        AgeFolder(tmp_path / "nowhere")


# --------------------------------------------------------------------------- Age-cGAN


def tiny_cgan(**kw):
    return AgeCGAN(**{"num_levels": 4, "z_dim": 6, "g_width": 8, "d_width": 8, "e_width": 8, **kw})


def test_cgan_phases_and_encoder_step_move_their_own_networks(mnist_small):
    torch.manual_seed(0)
    cgan = tiny_cgan(num_levels=10)
    data = TensorData(*mnist_small["train"].tensors)
    nets = ("generator", "discriminator", "encoder")
    steps = {
        "D": ({"discriminator"}, PhasedStep(cgan, [cgan.phases()[0]])),
        "G": ({"generator"}, PhasedStep(cgan, [cgan.phases()[1]])),
        "encoder": ({"encoder"}, cgan.encoder_step()),
    }
    pairs = cgan.encoder_pairs(128, generator=torch.Generator().manual_seed(1))
    x, y, _z = pairs.tensors
    assert x.shape == (128, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    assert set(y.tolist()) <= set(range(10)) and len(set(y.tolist())) > 5
    for name, (own, step) in steps.items():
        before = {n: snapshot(getattr(cgan, n)) for n in nets}
        probgen.fit(
            step,
            pairs if name == "encoder" else data,
            epochs=1,
            batch_size=64,
            device="cpu",
            **NO_MONITOR,
            **QUIET,
        )
        for n in nets:
            assert any(moved(getattr(cgan, n), before[n])) == (n in own), (name, n)
    # a Pyro model: z and the level are sample sites; given levels are observed
    tr = Predictive(cgan.model, num_samples=2)(None, torch.tensor([3, 7]))
    assert tr["z"].shape == (2, 2, 6) and tr["y"].tolist() == [[3, 7], [3, 7]]
    assert tr["x"].shape == (2, 2, 1, 28, 28)
    with pytest.raises(ConfigError, match="restore_best"):
        cgan.fit_step(probgen.FitConfig())
    assert MODELS.get("age_cgan") is AgeCGAN and MODELS.get("caae") is CAAE


def test_inversion_recovers_z_and_optimises_the_distance_asked(tmp_path):
    torch.manual_seed(0)
    cgan = tiny_cgan(z_dim=4).eval()
    # the encoder trained on generated pairs lands nearer the true z than a random guess
    pairs = cgan.encoder_pairs(2048, generator=torch.Generator().manual_seed(0))
    probgen.fit(
        cgan.encoder_step(),
        pairs,
        epochs=4,
        lr=3e-3,
        batch_size=64,
        device="cpu",
        **NO_MONITOR,
        **QUIET,
    )
    g = torch.Generator().manual_seed(5)
    z_true = torch.randn(12, 4, generator=g)
    y = torch.randint(0, 4, (12,), generator=g)
    x = cgan.regenerate(z_true, y)
    z0 = cgan.invert(x, y, refine="none")
    z_rand = torch.randn(12, 4, generator=g)
    pixel = cgan.distance(x, y, "pixel")
    identity = cgan.distance(x, y, "identity")
    with torch.no_grad():
        assert pixel(z0).mean() < 0.5 * pixel(z_rand).mean()
    assert (z0 - z_true).norm(dim=1).mean() < (z_rand - z_true).norm(dim=1).mean()
    # refinement from z0 by L-BFGS-B: the pixel distance falls, and z approaches the truth
    weights = snapshot(cgan)
    zp = cgan.invert(x, y, refine="pixel", maxiter=100)
    with torch.no_grad():
        assert pixel(zp).mean() < 0.3 * pixel(z0).mean()
    assert (zp - z_true).norm(dim=1).mean() < 0.5 * (z0 - z_true).norm(dim=1).mean()
    # on an image G cannot draw exactly (shifted by two pixels), each refinement lowers the
    # distance it was asked to, more than the other one does
    shifted = torch.roll(x, 2, dims=-1)
    pixel, identity = cgan.distance(shifted, y, "pixel"), cgan.distance(shifted, y, "identity")
    z0 = cgan.invert(shifted, y, refine="none")
    zp = cgan.invert(shifted, y, refine="pixel", maxiter=100)
    zi = cgan.invert(shifted, y, refine="identity", maxiter=100)
    with torch.no_grad():
        d0, dp, di = pixel(z0).mean(), pixel(zp).mean(), pixel(zi).mean()
        f0, fp, fi = identity(z0).mean(), identity(zp).mean(), identity(zi).mean()
    assert fi < f0 and fi < fp
    assert dp < d0 and dp < di
    # editing keeps z and swaps the level
    out = cgan.edit(shifted, y, 2, refine="none")
    assert torch.allclose(out, cgan.regenerate(z0, 2))
    # the networks' weights are untouched by inversion
    assert not any(moved(cgan, weights))


def test_bad_settings_give_clear_errors():
    cgan = tiny_cgan()
    x = cgan.sample(0, n=3)
    with pytest.raises(ConfigError, match="target level 4 is out of range"):
        cgan.edit(x, 0, 4)
    with pytest.raises(ConfigError, match="out of range"):
        cgan.invert(x, 9)
    with pytest.raises(ConfigError, match="refine"):
        cgan.invert(x, 0, refine="lpips")

    def rgb_only(images):
        return torch.nn.functional.conv2d(images, torch.ones(2, 3, 3, 3)).flatten(1)

    with pytest.raises(ConfigError, match=r"does not accept images of shape \(1, 28, 28\)"):
        cgan.invert(x, 0, refine="identity", features=rgb_only)

    @torch.no_grad()
    def no_grad_features(images):
        return images.flatten(1)

    with pytest.raises(ConfigError, match="no gradient"):
        cgan.invert(x, 0, refine="identity", features=no_grad_features)
    with pytest.raises(ConfigError, match="feature network"):
        AgeCGAN((3, 32, 32), 4, z_dim=4, g_width=4, d_width=4, e_width=4).invert(
            torch.rand(2, 3, 32, 32), 0, refine="identity"
        )
    with pytest.raises(DataError, match="levels"):
        cgan.real((x,))
    with pytest.raises(ConfigError, match="num_levels"):
        AgeCGAN(num_levels=1)
    caae = CAAE(num_levels=4, z_dim=3, hidden=(8,), d_hidden=(8,), d_img_width=4)
    with pytest.raises(ConfigError, match="target level"):
        caae.edit(x, -1)
    with pytest.raises(ConfigError, match="tv_weight"):
        CAAE(num_levels=4, tv_weight=-1.0)
    with pytest.raises(ConfigError, match="fake_levels"):
        CAAE(num_levels=4, fake_levels="other")
    rec = RecurrentAger(num_levels=4, hidden=8, embed=8)
    with pytest.raises(ConfigError, match="only ages forward"):
        rec.edit(x, 2, 1)
    with pytest.raises(ConfigError, match="out of range"):
        rec.edit(x, 0, 4)


# --------------------------------------------------------------------------- CAAE


def test_caae_phases_move_only_their_own_parameters():
    torch.manual_seed(0)
    caae = CAAE(num_levels=4, z_dim=3, hidden=(16,), d_hidden=(16,), d_img_width=4, tv_weight=0.5)
    g = torch.Generator().manual_seed(0)
    data = TensorData(
        torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 4, (64,), generator=g)
    )
    nets = ("encoder", "decoder", "discriminator", "image_discriminator")
    owner = {
        "encoder_generator": {"encoder", "decoder"},
        "discriminator_z": {"discriminator"},
        "discriminator_img": {"image_discriminator"},
    }
    phases = {p.name: p for p in caae.phases()}
    assert list(phases) == list(owner)
    for name, phase in phases.items():
        caae.zero_grad(set_to_none=True)
        out = phase.loss(data.tensors, {})
        (out[0] if isinstance(out, tuple) else out).backward()
        for net in nets:
            grads = [p.grad for p in getattr(caae, net).parameters()]
            if net in owner[name]:
                assert all(gr is not None and gr.abs().sum() > 0 for gr in grads), (name, net)
            else:
                assert all(gr is None for gr in grads), (name, net)
        before = {net: snapshot(getattr(caae, net)) for net in nets}
        probgen.fit(
            PhasedStep(caae, [phase]),
            data,
            epochs=1,
            batch_size=32,
            device="cpu",
            **NO_MONITOR,
            **QUIET,
        )
        for net in nets:
            assert any(moved(getattr(caae, net), before[net])) == (net in owner[name]), (name, net)
    # the encoder-generator loss is its four terms, with their weights
    batch = data.tensors
    with torch.no_grad():
        flat, levels = caae._batch(batch)
        z = caae.codes(flat, sample=False)
        out = caae.decode(z, levels)
        expected = (
            caae.reconstruction_loss(batch)
            + caae.spec.g_loss(caae.discriminator(z))
            + caae.spec.g_loss(caae.image_discriminator(caae._image_input(out, levels)))
            + 0.5 * total_variation(out)
        )
        assert caae.encoder_generator_loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    # aging is G(E(x), y): the level changes the image, not the code
    x = batch[0][:4]
    assert not torch.allclose(caae.edit(x, 0), caae.edit(x, 3))
    assert Predictive(caae.model, num_samples=2)(None, size=3)["y"].shape == (2, 3)


def test_caae_random_fake_levels_ask_the_generator_for_drawn_levels():
    """fake_levels="random": D_img's fakes and the generator's adversarial and TV terms use
    G(E(x), y') at levels y' drawn uniformly (labelled y'); the reconstruction stays at y."""
    torch.manual_seed(0)
    caae = CAAE(
        num_levels=4,
        z_dim=3,
        hidden=(16,),
        d_hidden=(16,),
        d_img_width=4,
        tv_weight=0.5,
        fake_levels="random",
    )
    assert "fake_levels='random'" in repr(caae)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 28, 28, generator=g)
    batch = (x, torch.zeros(256, dtype=torch.long))  # every image at level 0
    with torch.no_grad():
        maps = caae.fake_image(batch)[:, 1:]  # the label maps D_img reads
        drawn = maps.flatten(2).mean(2).argmax(1)  # the level each fake carries
        counts = torch.bincount(drawn, minlength=4)
        assert bool((counts > 30).all()), counts  # all four levels, about 64 each
        real = caae.real_image(batch)[:, 1:].flatten(2).mean(2).argmax(1)
        assert bool((real == 0).all())
        # the generator's loss, term by term, with the levels the same seed draws
        with torch.random.fork_rng():
            torch.manual_seed(5)
            value = caae.encoder_generator_loss(batch)
        with torch.random.fork_rng():
            torch.manual_seed(5)
            z = caae.codes(x, sample=False)
            levels = torch.randint(0, 4, (256,))
        out = caae.decode(z, levels)
        assert not bool((levels == 0).all())
        rest = (value - caae.reconstruction_loss(batch)).item()  # the terms besides it
        expected = (
            caae.spec.g_loss(caae.discriminator(z))
            + caae.spec.g_loss(caae.image_discriminator(caae._image_input(out, levels)))
            + 0.5 * total_variation(out)
        )
        assert rest == pytest.approx(expected.item(), abs=2e-3)
        own = caae.decode(z, batch[1])  # what "own" would give
        wrong = (
            caae.spec.g_loss(caae.discriminator(z))
            + caae.spec.g_loss(caae.image_discriminator(caae._image_input(own, batch[1])))
            + 0.5 * total_variation(own)
        )
        assert abs(expected.item() - wrong.item()) > 1e-2


def test_total_variation_is_the_authors_formula():
    img = torch.zeros(1, 1, 4, 5)
    img[..., 2:, :] = 1.0  # one horizontal edge, 5 pixels long
    assert total_variation(img).item() == pytest.approx(5 / (2 * 4))
    img = torch.zeros(1, 1, 4, 5)
    img[..., :, 3:] = 2.0  # one vertical edge of height 2, 4 pixels long
    assert total_variation(img).item() == pytest.approx(4 * 4 / (2 * 5))


# --------------------------------------------------------------------------- recurrent


def test_recurrent_loss_weights_grow_towards_the_oldest_group():
    w = loss_weights(6)
    assert w.shape == (5,) and w.sum().item() == pytest.approx(1.0)
    assert bool((w[1:] > w[:-1]).all()) and w.argmax().item() == 4
    assert torch.allclose(w, torch.arange(1.0, 6.0) / 15)
    assert torch.allclose(loss_weights(4, "uniform"), torch.full((3,), 1 / 3))
    assert torch.allclose(loss_weights(3, [1.0, 3.0]), torch.tensor([0.25, 0.75]))
    with pytest.raises(ConfigError, match="2 numbers"):
        loss_weights(3, [1.0, 2.0, 3.0])
    # the loss weighs each group's squared error by its weight
    torch.manual_seed(0)
    rec = RecurrentAger((1, 8, 8), 4, hidden=8, embed=8)
    seq = torch.rand(5, 4, 1, 8, 8)
    pred = rec.net(seq[:, 1], 2)
    err = (pred - seq[:, 2:]).pow(2).flatten(2).sum(2)
    expected = (err * rec.weights[1:]).sum(1).mean()
    assert rec.sequence_loss(seq, start=1).item() == pytest.approx(expected.item(), rel=1e-6)
    assert rec.weights[1:].tolist() == pytest.approx([2 / 6, 3 / 6])
    # editing steps through the groups in order and returns the last
    with torch.no_grad():
        two = rec.net(seq[:, 0], 2)
        assert torch.allclose(rec.edit(seq[:, 0], 0, 2), two[:, 1])
        assert torch.equal(rec.edit(seq[:, 0], 1, 1), seq[:, 0])
    # it learns: the loss on a fixed progression set falls
    data = TensorData(seq.repeat(8, 1, 1, 1, 1))
    before = rec.sequence_loss(data.tensors[0], start=0).item()
    probgen.fit(rec, data, epochs=5, lr=3e-3, batch_size=8, device="cpu", **NO_MONITOR, **QUIET)
    assert rec.sequence_loss(data.tensors[0], start=0).item() < before
    with pytest.raises(DataError, match="progressions"):
        rec.sequence_loss(torch.rand(5, 3, 1, 8, 8))


# --------------------------------------------------------------------------- every level


def test_every_aging_model_moves_an_image_to_every_level():
    """The aging models' common method: ``(B, K, C, H, W)``, each level's entry the model's
    own edit to that level (Age-cGAN: from one inversion, refined as asked), NaN exactly
    where the model cannot go (the recurrent model, below the input's level)."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    cgan = tiny_cgan()
    caae = CAAE(num_levels=4, z_dim=3, hidden=(16,), d_hidden=(16,), d_img_width=4)
    rec = RecurrentAger((1, 28, 28), 4, hidden=8, embed=8)
    for s in range(4):
        outs = {m: m.at_every_level(x, s) for m in (cgan, caae, rec)}
        assert all(o.shape == (3, 4, 1, 28, 28) for o in outs.values())
        z = cgan.invert(x, s)
        for t in range(4):
            assert torch.equal(outs[cgan][:, t], cgan.regenerate(z, t))
            assert torch.allclose(outs[caae][:, t], caae.edit(x, t), atol=1e-6)
        out = outs[rec]
        assert bool(torch.isnan(out[:, :s]).all()) and torch.equal(out[:, s], x)
        assert not bool(torch.isnan(out[:, s:]).any())
        for t in range(s + 1, 4):
            assert torch.allclose(out[:, t], rec.edit(x, s, t), atol=1e-6)
        assert not torch.isnan(outs[cgan]).any() and not torch.isnan(outs[caae]).any()
    refined = cgan.at_every_level(x, 1, refine="pixel", maxiter=3)
    z = cgan.invert(x, 1, refine="pixel", maxiter=3)
    assert not torch.equal(z, cgan.invert(x, 1))  # the refinement reached the inversion
    assert torch.equal(refined[:, 2], cgan.regenerate(z, 2))
    same = unchanged(x, 4)
    assert same.shape == (3, 4, 1, 28, 28) and all(torch.equal(same[:, t], x) for t in range(4))
    with pytest.raises(ConfigError, match=r"level must be in 0\.\.3, got 4"):
        rec.at_every_level(x, 4)
    with pytest.raises(ConfigError, match="out of range"):
        caae.at_every_level(x, 4)


# --------------------------------------------------------------------------- the example


@pytest.fixture
def example():
    return load_example("aging")


def recount_identity_and_attribute(example, out, rec):
    """``{method: (identity, attribute_acc)}`` of a --smoke run of examples/aging.py in
    ``out``: over every input level s and target t != s (t > s for the recurrent model), the
    share of edits whose nearest true image at t (squared distance in the recognition
    features) is their own, and the share the level classifier puts at t."""
    from probgen.data.faces import graded_mnist
    from probgen.metrics.classifier_training import train_classifier
    from probgen.train import load_model

    args = json.loads((out / "results.json").read_text())["args"]
    k, n = rec["levels"], rec["eval_identities"]
    splits = graded_mnist(args["data"], k, val_size=0, seed=args["seed"], limit=args["limit"])
    train, truth = splits["train"], splits["test"].images[:n]
    flat = train.flat()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the example ran: the same sums, the same weights
    try:
        level_net = train_classifier(
            flat.tensors[0],
            flat.tensors[1],
            epochs=args["classifier_epochs"],
            seed=args["seed"],
            log=lambda *a: None,
        )
        features = train_classifier(
            flat.tensors[0],
            train.digits.repeat_interleave(k),
            epochs=args["classifier_epochs"],
            seed=args["seed"] + 1,
            log=lambda *a: None,
        ).features
        cgan = probgen.load(out / "age_cgan.pt")
        caae = probgen.load(out / "caae.pt")
        gru = load_model(
            RecurrentAger(tuple(truth.shape[2:]), k, hidden=32, embed=32), out / "recurrent.pt"
        ).eval()

        def cgan_edits(x, s, refine):
            z = cgan.invert(x, s, refine=refine, maxiter=args["maxiter"])
            return torch.stack([cgan.regenerate(z, t) for t in range(k)], 1)

        makers = {
            "no-change": lambda x, s: x[:, None].expand(-1, k, *x.shape[1:]),
            "caae": lambda x, s: torch.stack([caae.edit(x, t) for t in range(k)], 1),
        }
        for label, refine in (
            ("cgan encoder", "none"),
            ("cgan+pixel", "pixel"),
            ("cgan+identity", "identity"),
        ):
            makers[label] = lambda x, s, r=refine: cgan_edits(x, s, r)
        result = {}
        with torch.no_grad():
            true_f = [features(truth[:, t]) for t in range(k)]
            for name, make in makers.items():
                hits, levels = [], []
                for s in range(k):
                    with torch.enable_grad():  # the refinements follow gradients
                        out_s = make(truth[:, s], s)
                    for t in range(k):
                        if t == s:
                            continue
                        d = (features(out_s[:, t])[:, None] - true_f[t][None]).pow(2).sum(-1)
                        hits.append((d.argmin(1) == torch.arange(n)).double().mean())
                        levels.append((level_net(out_s[:, t]).argmax(1) == t).double().mean())
                result[name] = (float(torch.stack(hits).mean()), float(torch.stack(levels).mean()))
            hits, levels = [], []
            for s in range(k - 1):
                ahead = gru.progression(truth[:, s], s)  # levels s + 1 .. k - 1
                for j, t in enumerate(range(s + 1, k)):
                    d = (features(ahead[:, j])[:, None] - true_f[t][None]).pow(2).sum(-1)
                    hits.append((d.argmin(1) == torch.arange(n)).double().mean())
                    levels.append((level_net(ahead[:, j]).argmax(1) == t).double().mean())
            result["recurrent"] = (
                float(torch.stack(hits).mean()),
                float(torch.stack(levels).mean()),
            )
    finally:
        torch.set_num_threads(threads)
    return result


def test_aging_example_smoke(example, tmp_path, capsys):
    assert (
        run_example(
            example,
            "--out",
            str(tmp_path),
            "--eval-identities",
            "16",
            "--refine",
            "none",
            "pixel",
            "identity",
        )
        == 0
    )
    rec = json.loads((tmp_path / "results.json").read_text())["results"]
    table = rec["table"]
    assert list(table) == [
        "no-change",
        "cgan encoder",
        "cgan+pixel",
        "cgan+identity",
        "caae",
        "recurrent",
    ]
    for name, row in table.items():
        for key in (
            "target_mse",
            "target_mse_forward",
            "identity",
            "attribute_acc",
            "target_ssim",
            "seconds_per_image",
        ):
            assert math.isfinite(row[key]), (name, key)
    assert table["no-change"]["rec_mse"] == 0.0  # the input returned as is
    # identity and attribute accuracy, recomputed: the two scoring networks trained again as
    # the example trains them (each follows its seed), every method's edits from its saved
    # model, and the two shares counted here
    mine = recount_identity_and_attribute(example, tmp_path, rec)
    for name, (identity, attribute) in mine.items():
        assert table[name]["identity"] == pytest.approx(identity, abs=1e-6), name
        assert table[name]["attribute_acc"] == pytest.approx(attribute, abs=1e-6), name
    # no-change at the target is the distance between the true levels: measured, not zero
    assert table["no-change"]["target_mse"] > 0.01
    assert rec["levels"] == 3 and rec["training"]["cgan"]["pairs"] == 512
    for name in ("progression.png", "recurrent.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert isinstance(probgen.load(tmp_path / "age_cgan.pt"), AgeCGAN)
    caae = probgen.load(tmp_path / "caae.pt")
    assert isinstance(caae, CAAE) and caae.fake_levels == "random"  # the example's default
    assert rec["training"]["recurrent"]["epochs"] == 1  # --recurrent-epochs (smoke)
    assert (tmp_path / "results.csv").read_text().count("\n") == 7
    # a face folder: the cGAN and the CAAE train on it from disk and draw their edits
    write_faces(tmp_path / "faces", [f"{a}_0_1_2017{a}.jpg" for a in (4, 22, 33, 44, 55, 66)])
    out = tmp_path / "faces_run"
    assert (
        run_example(
            example,
            "--out",
            str(out),
            "--data",
            "faces",
            "--faces-dir",
            str(tmp_path / "faces"),
            "--face-size",
            "32",
            "--caae-face-size",
            "16",
            "--method",
            "cgan",
            "caae",
            "--batch-size",
            "4",
        )
        == 0
    )
    rec = json.loads((out / "results.json").read_text())["results"]
    assert rec["faces"] == 6 and rec["groups"] == 6 and set(rec["training"]) == {"cgan", "caae"}
    for name in ("progression.png", "progression_caae.png"):
        assert (out / name).stat().st_size > 1000, name
    assert probgen.load(out / "caae.pt").image_shape == (3, 16, 16)
    capsys.readouterr()
    assert (
        run_example(
            example,
            "--out",
            str(tmp_path),
            "--data",
            "faces",
            "--faces-dir",
            str(tmp_path / "faces"),
        )
        == 2
    )
    assert "recurrent aging trains on progressions" in capsys.readouterr().err
    assert (
        run_example(
            example,
            "--out",
            str(tmp_path),
            "--data",
            "faces",
            "--faces-dir",
            str(tmp_path / "nowhere"),
            "--method",
            "cgan",
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
