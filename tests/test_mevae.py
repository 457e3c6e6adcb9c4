"""Multi-entity VAE: scenes and their ground truth, top-K selection, the model, ARI, the example."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import probgen
from probgen.data import TensorData
from probgen.data.scenes import images_only, lattice_capacity, make_scenes, scene_splits
from probgen.errors import ConfigError, DataError
from probgen.metrics.likelihood import elbo_and_iw_nll
from probgen.metrics.segmentation import active_entities, adjusted_rand_index, decomposition_scores
from probgen.models.mevae import MEVAE
from probgen.nn.mevae_nets import (
    COMPOSITIONS,
    EntityDecoder,
    centre_to_where,
    noisy_or_logits,
    select_topk_by_kl,
)

from .conftest import QUIET

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool():
    from probgen.data import load_images

    images, labels = load_images("mnist", train=False)
    return images[:300], labels[:300]


# --------------------------------------------------------------------------- scenes


def test_scene_ground_truth(pool):
    digits, labels = pool
    s = make_scenes(
        digits,
        labels,
        60,
        canvas=64,
        min_digits=1,
        max_digits=4,
        min_distance=14,
        mask_threshold=0.5,
        seed=3,
    )
    n = s["counts"]
    assert ((n >= 1) & (n <= 4)).all() and set(n.tolist()) == {1, 2, 3, 4}
    assert ((s["classes"] >= 0).sum(1) == n).all() and ((s["sources"] >= 0).sum(1) == n).all()
    level = int(0.5 * 255)
    for i in range(60):
        canvas = torch.zeros(64, 64, dtype=torch.uint8)
        for j in range(4):
            mask = s["masks"][i, j]
            if j >= n[i]:
                assert not mask.any() and s["classes"][i, j] == -1
                continue
            src = s["sources"][i, j]
            r, c = s["positions"][i, j].tolist()
            assert 0 <= r <= 36 and 0 <= c <= 36
            assert s["classes"][i, j] == labels[src]
            # the mask is the digit's ink above the threshold, at its position, nothing else
            expect = torch.zeros(64, 64, dtype=torch.bool)
            expect[r : r + 28, c : c + 28] = digits[src] > level
            assert torch.equal(mask, expect)
            canvas[r : r + 28, c : c + 28] = torch.maximum(
                canvas[r : r + 28, c : c + 28], digits[src]
            )
        assert torch.equal(s["images"][i], canvas)  # the scene is the digits' maximum
        union = s["masks"][i].any(0)
        assert torch.equal(union, s["images"][i] > level)  # masks cover exactly the ink
        seg = s["segmentation"][i]
        assert torch.equal(seg > 0, union)
        for j in range(int(n[i])):  # an owner is a digit inked there
            assert s["masks"][i, j][seg == j + 1].all()
        centres = s["positions"][i, : n[i]].float()
        if n[i] > 1:
            assert torch.pdist(centres).min() >= 14


def test_scenes_are_deterministic_and_single_digit_scenes(pool):
    digits, labels = pool
    a = make_scenes(digits, labels, 20, seed=1)
    b = make_scenes(digits, labels, 20, seed=1)
    c = make_scenes(digits, labels, 20, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["images"], c["images"])
    one = make_scenes(digits, labels, 20, min_digits=1, max_digits=1, seed=1)
    assert (one["counts"] == 1).all() and one["masks"].shape == (20, 1, 64, 64)


def test_crowded_settings_fall_back_to_the_lattice(pool):
    digits, labels = pool
    cap = lattice_capacity(64, 28, 12)  # (floor(36 / 12) + 1)^2 = 16
    assert cap == 16
    s = make_scenes(digits, labels, 3, min_digits=cap, max_digits=cap, min_distance=12, seed=0)
    for i in range(3):
        assert torch.pdist(s["positions"][i].float()).min() >= 12


def test_scene_splits_cache_and_truth(tmp_path, monkeypatch):
    kw = dict(canvas=48, max_digits=2, min_distance=10, val_size=1000, seed=5, root=tmp_path)
    first = scene_splits(40, 10, 12, truth=("test",), binarize="static", **kw)
    assert set(first) == {"train", "val", "test"}
    assert len(first["train"].tensors) == 1 and first["train"].tensors[0].shape == (40, 1, 48, 48)
    assert first["test"].names == (
        "images",
        "masks",
        "segmentation",
        "counts",
        "classes",
        "positions",
    )
    assert list((tmp_path / "scenes").glob("*.pt"))
    import probgen.data.scenes as scenes

    def no_drawing(*a, **k):
        raise AssertionError("the cached scenes should have been read")

    monkeypatch.setattr(scenes, "make_scenes", no_drawing)
    again = scene_splits(40, 10, 12, truth=True, binarize="static", **kw)
    for k in first:
        assert torch.equal(first[k].tensors[0], again[k].tensors[0])
    assert torch.equal(first["test"].tensors[1], again["test"].tensors[1])  # masks unpacked
    assert set(first["test"].tensors[0].unique().tolist()) <= {0.0, 1.0}
    only = images_only(again["test"])
    assert len(only.tensors) == 1 and torch.equal(only.tensors[0], again["test"].tensors[0])


def test_bad_scene_settings(pool):
    digits, labels = pool
    with pytest.raises(ConfigError, match="smaller than one digit"):
        make_scenes(digits, labels, 5, canvas=20)
    with pytest.raises(ConfigError, match="do not fit"):
        make_scenes(digits, labels, 5, canvas=40, max_digits=5, min_distance=14)
    with pytest.raises(ConfigError, match="min_digits"):
        make_scenes(digits, labels, 5, min_digits=3, max_digits=2)
    with pytest.raises(ConfigError, match="mask_threshold"):
        make_scenes(digits, labels, 5, mask_threshold=1.5)
    with pytest.raises(ConfigError, match="truth"):
        scene_splits(5, 5, 5, truth=("tests",), cache=False)


# --------------------------------------------------------------------------- top-K by KL


def test_topk_picks_the_largest_kl_and_gradients_reach_only_the_kept():
    torch.manual_seed(1)
    loc = torch.randn(3, 10, 5, requires_grad=True)
    scale = (0.2 + torch.rand(3, 10, 5)).requires_grad_()
    idx, loc_k, scale_k, kl = select_topk_by_kl(loc, scale, 4)
    by_hand = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    assert torch.allclose(kl, by_hand, atol=1e-5)
    order = by_hand.argsort(1, descending=True)[:, :4]
    assert torch.equal(idx, order)
    assert torch.equal(loc_k, loc[torch.arange(3)[:, None], idx])
    (loc_k.sum() + scale_k.sum()).backward()
    kept = torch.zeros(3, 10, dtype=torch.bool)
    kept[torch.arange(3)[:, None], idx] = True
    assert (loc.grad[kept] == 1).all() and (loc.grad[~kept] == 0).all()
    assert (scale.grad[kept] == 1).all() and (scale.grad[~kept] == 0).all()
    with pytest.raises(ConfigError, match=r"1\.\.10"):
        select_topk_by_kl(loc, scale, 11)


def test_model_gradients_reach_the_kept_candidates_only():
    torch.manual_seed(0)
    m = MEVAE(
        (1, 32, 32),
        num_entities=2,
        what_dim=4,
        encoder_channels=(8, 16),
        encoder_hidden=16,
        decoder_hidden=(32,),
    )
    x = (torch.rand(3, 1, 32, 32) < 0.2).float()
    loc, scale = m.candidates(x)
    loc.retain_grad()
    idx, loc_k, scale_k, _ = select_topk_by_kl(loc, scale, 2)
    z = loc_k + scale_k * torch.randn_like(loc_k)
    logits = m.logits(z)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, x.flatten(1)).backward()
    kept = torch.zeros(3, loc.shape[1], dtype=torch.bool)
    kept[torch.arange(3)[:, None], idx] = True
    assert (loc.grad[~kept] == 0).all() and (loc.grad[kept].abs().sum(-1) > 0).all()


def test_k_larger_than_the_grid_and_bad_model_settings():
    with pytest.raises(ConfigError, match="larger than the encoder's grid"):
        MEVAE(num_entities=17)  # 64x64 halved 4 times: a 4x4 grid
    with pytest.raises(ConfigError, match="larger than the encoder's grid"):
        MEVAE((1, 32, 32), num_entities=5, encoder_channels=(8, 8, 8, 8))  # 2x2
    with pytest.raises(ConfigError, match="divisible"):
        MEVAE((1, 36, 36))
    with pytest.raises(ConfigError, match="num_entities"):
        MEVAE(num_entities=0)
    with pytest.raises(ConfigError, match="one-channel"):
        MEVAE((3, 64, 64))
    with pytest.raises(ConfigError, match="composition"):
        MEVAE(composition="sum")
    with pytest.raises(ConfigError, match="context_layers"):
        MEVAE(context_layers=-1)
    m = MEVAE((1, 32, 32), num_entities=2, encoder_channels=(8, 16))
    with pytest.raises(DataError, match="binary"):
        probgen.metrics.negative_elbo(m.model, m.guide, TensorData(torch.rand(4, 1, 32, 32)))
    with pytest.raises(DataError, match="shape"):
        m.model(torch.zeros(4, 1, 28, 28))


# --------------------------------------------------------------------------- rendering


def test_noisy_or_composition():
    torch.manual_seed(0)
    ink = torch.rand(2, 3, 5, 5)
    b = torch.tensor(-2.0)
    p = torch.sigmoid(noisy_or_logits(ink, b, dim=1))
    expect = 1 - torch.sigmoid(-b) * (1 - ink).prod(1)
    assert torch.allclose(p, expect, atol=1e-5)
    # an entity that draws nothing leaves the image as the others make it
    more = torch.cat([ink, torch.zeros(2, 1, 5, 5)], 1)
    assert torch.allclose(noisy_or_logits(more, b, dim=1), noisy_or_logits(ink, b, dim=1))
    p_max = torch.sigmoid(COMPOSITIONS.get("max")(ink, b, dim=1))
    assert torch.allclose(p_max, torch.maximum(ink.amax(1), torch.sigmoid(b)), atol=1e-5)


def test_where_places_the_glimpse_at_the_pixel_it_names():
    dec = EntityDecoder(what_dim=2, canvas=64, glimpse=28, hidden=(8,))
    with torch.no_grad():
        for layer in dec.net:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
        dec.net[-1].bias.fill_(30.0)  # a solid 28x28 window
        dec.presence.bias.fill_(30.0)  # fully present
    for top, left in [(1, 1), (35, 35), (10, 25)]:
        centre_px = torch.tensor([left + 14.0, top + 14.0])  # (x, y) in pixels
        centre = centre_px / 32 - 1  # canvas coordinates
        z = torch.cat([torch.zeros(2), centre_to_where(centre, dec.reach), torch.zeros(1)])
        ink = dec(z.view(1, -1))[0]
        expect = torch.zeros(64, 64)
        expect[top : top + 28, left : left + 28] = 1
        assert torch.allclose(ink, expect, atol=1e-3), (top, left)


# --------------------------------------------------------------------------- ARI


def test_ari_closed_form_by_hand():
    t = torch.tensor([0, 0, 1, 1])
    # contingency [[2, 0, 0], [0, 1, 1]]: index 1, row pairs 2, column pairs 1, C(4, 2) = 6
    # expected 2 * 1 / 6 = 1/3, maximum 3/2 -> (1 - 1/3) / (3/2 - 1/3) = 4/7
    assert adjusted_rand_index(t, torch.tensor([0, 0, 1, 2])).item() == pytest.approx(4 / 7)
    # [[2, 1, 0], [0, 1, 2]]: index 2, rows 6, columns 3, C(6, 2) = 15 -> (2 - 1.2) / (4.5 - 1.2)
    t6, p6 = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(t6, p6).item() == pytest.approx(8 / 33)
    assert adjusted_rand_index(t6, 5 - p6 * 2).item() == pytest.approx(8 / 33)  # label names
    assert adjusted_rand_index(t6, 7 - t6).item() == 1.0
    # one cluster each, or all singletons: 1 (scikit-learn's convention); one vs two: 0
    zeros = torch.zeros(5, dtype=torch.long)
    assert adjusted_rand_index(zeros, zeros) == 1
    assert adjusted_rand_index(torch.arange(5), torch.arange(5)) == 1
    assert adjusted_rand_index(torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1, 1])) == 0
    # batched, with a mask: points outside it do not count
    batch_t = torch.stack([t6, t6])
    batch_p = torch.stack([p6, torch.tensor([0, 0, 0, 1, 1, 3])])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    out = adjusted_rand_index(batch_t, batch_p, mask)
    assert out[0].item() == pytest.approx(8 / 33) and out[1].item() == 1.0
    with pytest.raises(DataError, match="integer"):
        adjusted_rand_index(t.float(), t.float())


def test_ari_agrees_with_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.clustering")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = torch.randint(0, 4, (200,), generator=g)
        noise = torch.randint(0, 5, (200,), generator=g)
        b = torch.where(torch.rand(200, generator=g) < 0.6, a, noise)
        assert adjusted_rand_index(a, b).item() == pytest.approx(
            tm.adjusted_rand_score(b, a).item(), abs=1e-6
        )


def test_decomposition_scores():
    seg = torch.zeros(2, 6, 6, dtype=torch.long)
    seg[0, :2, :2], seg[0, 3:, 3:] = 1, 2  # two digits
    seg[1, 1:4, 1:4] = 1  # one digit
    renders = torch.zeros(2, 3, 6, 6)
    renders[0, 2][seg[0] == 1] = 1.0  # entity 3 draws digit 1, entity 1 digit 2
    renders[0, 0][seg[0] == 2] = 1.0
    renders[1, 1][seg[1] == 1] = 0.9
    renders[1, 0] = 0.01  # faint: not an active entity
    out = decomposition_scores(renders, seg, torch.tensor([2, 1]), min_ink=2.0)
    assert torch.allclose(out["ari"], torch.ones(2, dtype=torch.float64))
    assert out["active"].tolist() == [2, 1] and out["count_correct"].all()
    assert active_entities(renders, 2.0).tolist() == [[True, False, True], [False, True, False]]


# --------------------------------------------------------------------------- training


def tiny_scenes(tmp_path):
    return scene_splits(
        256,
        64,
        64,
        canvas=32,
        max_digits=2,
        min_distance=3,
        val_size=500,
        binarize="dynamic",
        seed=0,
        root=tmp_path,
        truth=("test",),
    )


def tiny_model():
    return MEVAE(
        (1, 32, 32),
        num_entities=2,
        what_dim=6,
        encoder_channels=(16, 32, 32),
        encoder_hidden=32,
        decoder_hidden=(64, 128),
    )


def test_elbo_is_finite_and_falls(tmp_path):
    s = tiny_scenes(tmp_path)
    data = {k: images_only(v) for k, v in s.items()}
    torch.manual_seed(0)
    m = tiny_model()
    before = probgen.metrics.negative_elbo(m.model, m.guide, data["val"], num_particles=2)
    result = probgen.fit(
        m, data["train"], data["val"], epochs=4, batch_size=32, lr=2e-3, seed=0, **QUIET
    )
    vals = result.curve("val_loss")
    assert all(math.isfinite(v) for v in vals)
    after = probgen.metrics.negative_elbo(m.model, m.guide, data["val"], num_particles=2)
    assert math.isfinite(before) and after < before - 50, (before, after)
    both = elbo_and_iw_nll(
        m.model, m.guide, data["test"].subset(slice(0, 8)), elbo_particles=4, iw_samples=8
    )
    assert math.isfinite(both["iw_nll"]) and both["iw_nll"] < both["neg_elbo"] + 5
    parts = m.decompose(s["test"].tensors[0][:4])
    assert parts["ink"].shape == (4, 2, 32, 32) and parts["kl"].shape == (4, 4, 4)
    assert m.sample(3).shape == (3, 1, 32, 32)
    # checkpoints rebuild the model with its settings
    path = probgen.train.save_model(m, tmp_path / "mevae.pt")
    again = probgen.load(path)
    assert torch.allclose(again.decompose(s["test"].tensors[0][:4])["ink"], parts["ink"])


def test_example_smoke(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "mevae.py"),
            "--smoke",
            "--no-progress",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads((tmp_path / "results.json").read_text())["results"]
    for name in ("mevae", "vae"):
        r = rec[name]
        assert math.isfinite(r["neg_elbo"]) and math.isfinite(r["iw_nll"]) and r["iw_nll"] > 0
        assert r["latent_dims"] == 60 and r["epochs_run"] == 2
    assert [row["digits"] for row in rec["by_count"]] == [1, 2, 3, 4]
    # the decomposition scores, recomputed: the saved MEVAE on the same test scenes, counts
    # by summing each entity's ink, ARI by torchmetrics (one scene at a time, foreground)
    import warnings

    from torchmetrics.functional.clustering import adjusted_rand_score

    args = json.loads((tmp_path / "results.json").read_text())["args"]
    scenes = scene_splits(
        args["train_scenes"],
        args["val_scenes"],
        args["test_scenes"],
        canvas=args["canvas"],
        min_digits=args["min_digits"],
        max_digits=args["max_digits"],
        min_distance=args["min_distance"],
        val_size=args["val_size"],
        binarize="dynamic",
        seed=args["seed"],
        truth=("test",),
    )["test"]
    x, _, seg, counts = scenes.tensors[:4]
    with torch.no_grad():
        ink = probgen.load(tmp_path / "mevae.pt").decompose(x)["ink"]
    active = (ink.flatten(2).sum(-1) >= args["min_ink"]).sum(1)
    owner = ink.argmax(1)
    with warnings.catch_warnings():  # torchmetrics' sparse contingency table
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        ari = torch.stack(
            [
                adjusted_rand_score(owner[i][seg[i] > 0], seg[i][seg[i] > 0].long())
                for i in range(len(x))
            ]
        ).double()
    assert rec["mevae"]["count_accuracy"] == pytest.approx(
        (active == counts).double().mean().item(), abs=1e-12
    )
    assert rec["mevae"]["ari"] == pytest.approx(ari.mean().item(), abs=1e-6)
    for row in rec["by_count"]:
        sel = counts == row["digits"]
        assert row["scenes"] == int(sel.sum())
        assert row["mevae_count_accuracy"] == pytest.approx(
            (active[sel] == row["digits"]).double().mean().item(), abs=1e-12
        )
        assert row["mevae_mean_active"] == pytest.approx(
            active[sel].double().mean().item(), abs=1e-12
        )
        assert row["mevae_ari"] == pytest.approx(ari[sel].mean().item(), abs=1e-6)
    for name in ("decomposition", "kl_map", "samples", "learning_curves"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
    assert (tmp_path / "results.csv").exists() and (tmp_path / "by_count.csv").exists()
    bad = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "mevae.py"),
            "--smoke",
            "--canvas",
            "20",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert bad.returncode == 2 and "--canvas" in bad.stderr and "20" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
