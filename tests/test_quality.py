"""Sample-quality metrics: the shipped MNIST classifier, FID/KID on its features, precision/recall,
class coverage and the errors on bad input."""

import math
from itertools import pairwise

import pytest
import torch
import torchvision.transforms.functional as TF

from probgen.errors import CheckpointError, ConfigError, DataError
from probgen.metrics.classifier_training import accuracy
from probgen.metrics.quality import (
    FID_NAME,
    QualityReference,
    class_coverage,
    extract_features,
    fid,
    fid_metric,
    frechet_distance,
    kernel_distance,
    knn_radii,
    precision_recall,
    reference_statistics,
    sample_quality,
)
from probgen.nn.classifier import (
    SUMS_FILE,
    WEIGHTS_FILE,
    MNISTClassifier,
    load_classifier,
    sha256_of,
    shipped_sha256,
)


@pytest.fixture(scope="module")
def mnist():
    from probgen.data import image_splits

    return image_splits("mnist", val_size=0)


@pytest.fixture(scope="module")
def test_images(mnist):
    return mnist["test"].tensors[0]


@pytest.fixture(scope="module")
def reference(test_images):
    """Features of the first 2000 test images."""
    return reference_statistics(test_images[:2000])


def _one_line(err):
    text = str(err.value)
    assert "\n" not in text and len(text) > 20
    return text


# ---------------------------------------------------------------------------------- classifier


def test_shipped_weights_small_and_hash_checked(tmp_path):
    assert WEIGHTS_FILE.stat().st_size < 1_000_000
    assert sha256_of(WEIGHTS_FILE) == shipped_sha256()
    assert len(shipped_sha256()) == 64 and SUMS_FILE.exists()
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_classifier(WEIGHTS_FILE, sha256="0" * 64)
    damaged = tmp_path / "w.pt"
    damaged.write_bytes(WEIGHTS_FILE.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_classifier(damaged, sha256=shipped_sha256())


def test_shipped_classifier_accuracy_on_mnist_test_set(mnist):
    net = load_classifier().to(memory_format=torch.channels_last)  # faster on CPU
    assert not net.training
    x, y = mnist["test"].tensors
    acc = accuracy(net, x, y)
    assert acc >= 0.99, acc


def test_retraining_command_writes_loadable_weights(tmp_path, capsys):
    from probgen.metrics.classifier_training import main

    out = tmp_path / "w" / "clf.pt"
    rng_before = torch.get_rng_state()
    main(["--out", str(out), "--epochs", "1", "--limit", "256", "--batch-size", "64"])
    assert torch.equal(torch.get_rng_state(), rng_before)  # no global re-seeding
    digest = (out.parent / "SHA256SUMS").read_text().split()[0]
    assert digest == sha256_of(out)
    net = load_classifier(out, sha256=digest)
    assert isinstance(net, MNISTClassifier)
    assert "test accuracy" in capsys.readouterr().out


def test_train_classifier_is_seeded_learns_and_leaves_the_global_stream_alone(mnist):
    from probgen.metrics.classifier_training import train_classifier

    x, y = mnist["train"].tensors
    lines = []
    state = torch.get_rng_state()
    net = train_classifier(x[:2048], y[:2048], epochs=2, batch_size=64, seed=3, log=lines.append)
    assert torch.equal(torch.get_rng_state(), state)  # a forked random state
    assert not net.training and len(lines) == 2 and lines[1].startswith("epoch 2/2: train loss")
    # far above chance (10%) on images it never saw
    assert accuracy(net, x[5000:6000], y[5000:6000]) > 0.8  # (measured: 0.96)
    again = train_classifier(x[:256], y[:256], epochs=1, batch_size=64, seed=3, log=lines.append)
    twice = train_classifier(x[:256], y[:256], epochs=1, batch_size=64, seed=3, log=lines.append)
    other = train_classifier(x[:256], y[:256], epochs=1, batch_size=64, seed=4, log=lines.append)
    for (name, a), b in zip(again.state_dict().items(), twice.state_dict().values()):
        assert torch.equal(a, b), name  # the seed decides all
    assert not torch.equal(again.head[1].weight, other.head[1].weight)
    with pytest.raises(ConfigError, match="epochs must be at least 1, got 0"):
        train_classifier(x[:10], y[:10], epochs=0)


# ---------------------------------------------------------------------------------------- FID


def test_identical_sets_give_fid_near_zero(test_images, reference):
    assert abs(fid(test_images[:2000], reference)) < 1e-3
    # and two disjoint halves of the test set are close, far below a noisy copy
    other = fid(test_images[2000:3000], reference)
    assert 0 < other < fid(test_images[2000:3000] * 0.5, reference)


def test_fid_rises_monotonically_with_noise(test_images, reference):
    real = test_images[2000:3000]
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(real.shape, generator=gen)
    scores = [fid((real + s * noise).clamp(0, 1), reference) for s in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in pairwise(scores)), scores


def test_fid_rises_monotonically_with_blur(test_images, reference):
    real = test_images[2000:3000]
    scores = [fid(real, reference)]
    for sigma in (0.5, 1.0, 1.5, 2.5):
        scores.append(fid(TF.gaussian_blur(real, kernel_size=9, sigma=sigma), reference))
    assert all(a < b for a, b in pairwise(scores)), scores


def test_streaming_fid_metric_matches_fid(test_images, reference):
    metric = fid_metric()
    metric.update(test_images[:2000], real=True)
    metric.update(test_images[2000:3000], real=False)
    assert float(metric.compute()) == pytest.approx(
        fid(test_images[2000:3000], reference), rel=1e-4
    )


def test_frechet_distance_of_shifted_gaussians():
    """torchmetrics' FID on given features: two Gaussians differing by a mean shift of 3 -> 9."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(20000, 4, generator=gen, dtype=torch.float64) + torch.tensor([3.0, 0, 0, 0])
    assert frechet_distance(a, b) == pytest.approx(9.0, abs=0.1)


# ---------------------------------------------------------------------------------------- KID


def test_kid_with_small_subsets(test_images, reference):
    feats, _ = extract_features(test_images[2000:2600])
    noisy, _ = extract_features(
        (test_images[2000:2600] + 0.3 * torch.rand(600, 1, 28, 28)).clamp(0, 1)
    )
    rng_before = torch.get_rng_state()
    same = kernel_distance(reference.features, feats, subsets=20, subset_size=50, seed=1)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert same == kernel_distance(reference.features, feats, subsets=20, subset_size=50, seed=1)
    far = kernel_distance(reference.features, noisy, subsets=20, subset_size=50, seed=1)
    assert abs(same[0]) < 3 * same[1] + 1e-3  # same distribution: KID ~ 0 within noise
    assert far[0] > same[0] + 3 * far[1]
    with pytest.raises(DataError, match="kid_subset_size"):
        kernel_distance(reference.features, feats[:40], subsets=2, subset_size=50)


# ---------------------------------------------------------------------------- precision/recall


def test_precision_recall_on_a_known_case():
    # 1-D: real {0, 1, 2, 3} with k = 1 have radius 1; of the samples {0.5, 10} one is inside.
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0]])
    assert knn_radii(real, 1).tolist() == [1.0, 1.0, 1.0, 1.0]
    # the samples' radius is 9.5 (each other), so their balls hold every real point
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    # two far clusters, samples = one of them exactly: precision 1, recall 1/2
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 5, generator=gen)
    b = torch.randn(300, 5, generator=gen) + 100.0
    precision, recall = precision_recall(torch.cat([a, b]), a.clone(), k=3)
    assert precision == 1.0 and recall == 0.5


def test_sample_quality_on_three_classes(mnist, reference):
    x, y = mnist["train"].tensors
    three = x[(y == 0) | (y == 1) | (y == 7)][:1500]
    out = sample_quality(three, reference, kid_subsets=10, kid_subset_size=500)
    assert out["classes_covered"] == 3
    assert out["class_kl"] == pytest.approx(math.log(10 / 3), abs=0.1)
    assert out["recall"] < out["precision"]
    assert out["recall"] < 0.5
    assert out["fid_name"] == FID_NAME == "FID, MNIST-classifier features"
    for key in (
        "fid",
        "kid_mean",
        "kid_std",
        "precision",
        "recall",
        "num_samples",
        "num_reference",
    ):
        assert key in out
    full = sample_quality(x[:1500], reference, kid_subsets=10, kid_subset_size=500)
    assert full["classes_covered"] == 10 and full["class_kl"] < 0.05
    assert full["fid"] < out["fid"] and full["recall"] > out["recall"]


def test_class_coverage_counts_and_threshold():
    logits = torch.nn.functional.one_hot(torch.tensor([0] * 50 + [1] * 49 + [2]), 10).float()
    cov = class_coverage(logits)  # class 2 holds 1%, a tenth of its share
    assert cov["classes_covered"] == 3
    assert class_coverage(logits, min_share=0.2)["classes_covered"] == 2
    uniform = torch.nn.functional.one_hot(torch.arange(100) % 10, 10).float()
    assert class_coverage(uniform)["class_kl"] == pytest.approx(0.0, abs=1e-12)
    one = torch.nn.functional.one_hot(torch.zeros(10, dtype=torch.long), 10).float()
    assert class_coverage(one)["class_kl"] == pytest.approx(math.log(10))


def test_reference_save_load_roundtrip(tmp_path, reference, test_images):
    path = tmp_path / "ref.pt"
    reference.save(path)
    again = QualityReference.load(path)
    assert torch.equal(again.features, reference.features)
    assert again.feature_network == reference.feature_network
    assert fid(test_images[2000:2500], again) == fid(test_images[2000:2500], reference)
    (tmp_path / "junk.pt").write_bytes(b"not a reference")
    with pytest.raises(CheckpointError):
        QualityReference.load(tmp_path / "junk.pt")


def test_image_layouts_and_uint8_accepted(test_images):
    x = test_images[:300]
    base, _ = extract_features(x)
    for variant in (x.reshape(300, 784), x.reshape(300, 28, 28)):
        assert torch.allclose(extract_features(variant)[0], base)
    as_bytes = (x * 255).round().to(torch.uint8)
    assert torch.allclose(extract_features(as_bytes)[0], base, atol=1e-4)


# ----------------------------------------------------------------------------------- bad input


def test_bad_images_raise_clear_errors(test_images, reference):
    with pytest.raises(DataError, match="colour") as err:
        fid(torch.rand(300, 3, 28, 28), reference)
    _one_line(err)
    with pytest.raises(DataError, match="another size") as err:
        fid(torch.rand(300, 1, 32, 32), reference)
    _one_line(err)
    with pytest.raises(DataError, match=r"\(x \+ 1\) / 2") as err:
        fid(test_images[:300] * 2 - 1, reference)
    _one_line(err)
    with pytest.raises(DataError, match="NaN"):
        fid(torch.full((300, 1, 28, 28), float("nan")), reference)
    with pytest.raises(DataError, match="tensor"):
        fid([[0.0]], reference)


def test_too_few_samples_raise_clear_errors(test_images, reference, monkeypatch):
    with pytest.raises(DataError, match="at least 129 samples") as err:
        fid(test_images[:50], reference)
    _one_line(err)
    with pytest.raises(DataError, match=r"KID subsets: 1000.*kid_subset_size") as err:
        sample_quality(test_images[:500], reference)  # default KID subsets of 1000
    _one_line(err)
    with pytest.raises(DataError, match="at least 129 reference images"):
        fid(test_images[:300], test_images[:60])
    import torchmetrics.utilities.imports as tm_imports

    monkeypatch.setattr(tm_imports, "_TORCH_FIDELITY_AVAILABLE", True)  # refused before any loading
    with pytest.raises(DataError, match="at least 2049 samples"):  # Inception: 2048 features
        fid(
            test_images[:300], test_images[:3000], feature="inception", inception_weights="download"
        )
    with pytest.raises(DataError, match="at least 129 reference features"):
        frechet_distance(reference.features[:100], reference.features)


def test_bad_settings_raise_clear_errors(test_images, reference):
    with pytest.raises(ConfigError, match="feature must be one of"):
        fid(test_images[:300], reference, feature="vgg")
    with pytest.raises(ConfigError, match="kid_subsets"):
        sample_quality(test_images[:300], reference, kid_subsets=0)
    with pytest.raises(ConfigError, match="k must be"):
        sample_quality(test_images[:300], reference, k=0, kid_subset_size=100)


def test_inception_fid_asks_for_weights_offline(test_images, tmp_path, monkeypatch):
    """Asking for the standard Inception FID without weights says what to provide; nothing
    downloads."""
    with pytest.raises(ConfigError, match="inception_weights") as err:
        fid(test_images[:300], test_images[300:600], feature="inception")
    text = _one_line(err)
    assert "download" in text and ".pth" in text
    with pytest.raises(ConfigError, match="not found"):
        fid(
            test_images[:300],
            test_images[300:600],
            feature="inception",
            inception_weights=str(tmp_path / "missing.pth"),
        )
    import torchmetrics.utilities.imports as tm_imports

    monkeypatch.setattr(tm_imports, "_TORCH_FIDELITY_AVAILABLE", True)  # refused before any loading
    with pytest.raises(ConfigError, match="pass the real images"):
        fid(test_images[:3000], feature="inception", inception_weights="download")
    monkeypatch.setattr(tm_imports, "_TORCH_FIDELITY_AVAILABLE", False)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError, match="pip install torch-fidelity"):
        fid(
            test_images[:300],
            test_images[300:600],
            feature="inception",
            inception_weights=str(weights),
        )


def test_reference_of_other_features_refused(reference, test_images):
    other = QualityReference(reference.features, None, "inception-v3:2048")
    with pytest.raises(ConfigError, match="made with"):
        fid(test_images[:300], other)


# ---------------------------------------------------------------------------------- scorer, curve


def test_quality_scorer_picks_the_features_and_matches_sample_quality(test_images):
    from probgen.metrics.quality import quality_scorer

    ref_images, samples = test_images[:400], test_images[1000:1300]
    scorer = quality_scorer(ref_images, seed=3)
    assert scorer.feature == "mnist" and scorer.fid_name == FID_NAME
    assert len(scorer.reference) == 400
    # the same numbers as sample_quality on the raw images, KID on subsets no larger than
    # the smaller set (300 samples here)
    direct = sample_quality(samples, ref_images, seed=3, kid_subset_size=300)
    report = scorer.report(samples)
    assert report["kid_subset_size"] == 300
    for key in ("fid", "kid_mean", "kid_std", "precision", "recall", "class_kl"):
        assert report[key] == pytest.approx(direct[key], rel=1e-6), key
    assert scorer.fid(samples) == pytest.approx(direct["fid"], rel=1e-6)
    assert quality_scorer(test_images[:200].reshape(200, 28, 28)).feature == "mnist"
    # colour images: Inception's features with weights, none without
    colour = torch.rand(10, 3, 32, 32)
    assert quality_scorer(colour) is None


def test_fid_curve_scores_fixed_noise_and_the_live_weights(test_images):
    from types import SimpleNamespace

    from probgen.metrics.quality import FIDCurve

    class Sampler(torch.nn.Module):
        ema = 0.9

        def sample(self, n, generator=None, averaged=True):
            x = torch.rand(n, 1, 2, 2, generator=generator)
            return x if averaged else 1 - x

    scores = []
    curve = FIDCurve(lambda x: scores.append(x) or float(x.mean()), 5, every=2, seed=4)
    run = SimpleNamespace(module=Sampler(), config=SimpleNamespace(epochs=3), step=None)
    entries = [{"epoch": e} for e in range(3)]
    for entry in entries:
        curve.on_validation_end(run, entry)
    assert "fid" not in entries[0]  # every second epoch, and the last
    noise = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(4))
    for entry in entries[1:]:
        assert entry["fid"] == pytest.approx(float(noise.mean()))
        assert entry["fid_live"] == pytest.approx(float((1 - noise).mean()))
        assert entry["fid_seconds"] >= 0 and entry["fid_cpu_seconds"] >= 0
    assert len(scores) == 4 and torch.equal(scores[0], scores[2])  # the same noise each time
    Sampler.ema = 0.0
    entry = {"epoch": 2}
    curve.on_validation_end(run, entry)
    assert "fid_live" not in entry and "fid" in entry
    with pytest.raises(ConfigError, match="num_samples"):
        FIDCurve(lambda x: 0.0, 0)


def test_sample_report_scores_its_own_noise_and_leaves_the_global_stream_alone(test_images):
    from probgen.metrics.quality import quality_scorer, report_line

    class Sampler:
        def sample(self, n, generator=None):
            return test_images[torch.randperm(1000, generator=generator)[:n]]

    scorer = quality_scorer(test_images[:400], seed=3)
    state = torch.get_rng_state()
    report = scorer.sample_report(Sampler(), 300, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    # the report of the samples that a generator seeded with 7 draws, and its time
    expected = scorer.report(Sampler().sample(300, torch.Generator().manual_seed(7)))
    assert report.pop("eval_seconds") > 0
    assert report == expected
    other = scorer.report(Sampler().sample(300, torch.Generator().manual_seed(8)))
    assert other["fid"] != report["fid"]
    line = report_line(report)
    assert line.startswith(f"{FID_NAME} {report['fid']:.2f}, KID ")
    assert f"classes covered {report['classes_covered']}/10" in line
    with pytest.raises(ConfigError, match="num_samples"):
        scorer.sample_report(Sampler(), 0)
