"""probgen.data.recipes: the training sets the examples share, each checked against a hand
computation, with what they record in their settings."""

import pytest
import torch

from probgen.data import TensorData, recipes
from probgen.data.labels import labelled_split
from probgen.errors import ConfigError, DataError, DataNotFoundError


def test_with_settings_merges_over_a_base():
    data = TensorData(torch.zeros(3, 1))
    assert recipes.with_settings(data, {"a": 1, "b": 2}, b=3, c=4) is data
    assert data.settings == {"a": 1, "b": 3, "c": 4}


def test_toy1d_is_seeded_normal_and_leaves_the_global_stream_alone():
    state = torch.get_rng_state()
    data = recipes.toy1d(5000, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    x = data.tensors[0]
    expected = torch.randn(5000, 1, generator=torch.Generator().manual_seed(3)) - 1.0
    assert torch.equal(x, expected)
    assert abs(float(x.mean()) + 1.0) < 0.05 and abs(float(x.std()) - 1.0) < 0.05
    assert data.settings == {"dataset": "toy1d", "size": 5000, "seed": 3}


def _partial(n=100, labelled=(0, 5, 17, 42)):
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)
    y = torch.full((n,), -1)
    y[list(labelled)] = torch.arange(len(labelled))
    return TensorData(x, torch.zeros(n, dtype=torch.long)), y


def test_semi_supervised_repeats_the_labelled_images():
    train, y = _partial()
    train.settings = {"dataset": "mnist"}
    data, repeats = recipes.semi_supervised(train, y, labelled_share=0.2)
    # 0.2 * 100 / (0.8 * 4) = 6.25 -> 6 copies of the 4 labelled images after the 96 others
    assert repeats == 6 and len(data) == 96 + 24
    xs, ys = data.tensors
    assert torch.equal(ys[:96], torch.full((96,), -1))
    assert torch.equal(ys[96:], torch.arange(4).repeat(6))
    assert torch.equal(xs[96:100].flatten(), torch.tensor([0.0, 5.0, 17.0, 42.0]))
    assert data.settings == {"dataset": "mnist", "num_labelled": 4, "labelled_share": 0.2}
    # a tiny share still keeps every labelled image once
    assert recipes.semi_supervised(train, y, labelled_share=0.001)[1] == 1


def test_semi_supervised_draws_a_count_of_labels_balanced_with_its_own_seed():
    """A count of labels keeps that many true labels, as many of each class, drawn with
    ``seed`` from a generator of its own (torch's global stream is left alone)."""
    n = 200
    y = torch.arange(n) % 10
    train = TensorData(torch.arange(n, dtype=torch.float32).reshape(n, 1), y)
    before = torch.random.get_rng_state()
    data, repeats = recipes.semi_supervised(train, 20, labelled_share=0.5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    kept = data.tensors[1][data.tensors[1] >= 0]
    assert len(kept) == 20 * repeats and torch.equal(
        torch.bincount(kept[:20]), torch.full((10,), 2)
    )
    # the same draw as labelled_split with that seed; another seed keeps other images
    explicit = labelled_split(y, 20, 10, torch.Generator().manual_seed(3))
    same, _ = recipes.semi_supervised(train, explicit, labelled_share=0.5)
    assert torch.equal(data.tensors[0], same.tensors[0])
    other, _ = recipes.semi_supervised(train, 20, labelled_share=0.5, seed=4)
    assert not torch.equal(data.tensors[0], other.tensors[0])
    with pytest.raises(DataError, match="from the true labels"):
        recipes.semi_supervised(TensorData(train.tensors[0]), 20, labelled_share=0.5)


@pytest.mark.parametrize(
    "labels, share, error, message",
    [
        (torch.full((100,), -1), 0.1, DataError, "some labelled images"),
        (torch.zeros(99, dtype=torch.long), 0.1, DataError, "one label per training image"),
        (None, 1.0, ConfigError, r"labelled_share must lie in \(0, 1\), got 1\.0\."),
    ],
)
def test_semi_supervised_refuses_bad_input(labels, share, error, message):
    train, y = _partial()
    with pytest.raises(error, match=message):
        recipes.semi_supervised(train, y if labels is None else labels, share)


def test_shifted_moves_every_image_or_the_labelled_ones():
    _train, y = _partial(n=8, labelled=(1, 6))
    images = torch.zeros(8, 1, 9, 9)
    images[:, :, 4, 4] = 1.0  # one lit pixel in the middle
    data = TensorData(images, y)
    assert recipes.shifted(data, 0) is data
    every = recipes.shifted(data, 2)
    assert every.settings == {"augment_shift": 2, "augment_which": "all"}
    ((bx, by),) = every.batches(8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(by, y) and torch.equal(bx.sum((1, 2, 3)), torch.ones(8))
    assert (bx[:, 0, 4, 4] == 0).any()  # some image moved
    lit = bx[:, 0].flatten(1).argmax(1)
    rows, cols = lit // 9, lit % 9
    assert bool(((rows - 4).abs() <= 2).all() and ((cols - 4).abs() <= 2).all())
    labelled = recipes.shifted(data, 2, only_labelled=True)
    assert labelled.settings["augment_which"] == "labelled"
    for seed in range(5):
        ((bx, _),) = labelled.batches(8, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(bx[y < 0], images[y < 0])


def test_dequantized_splits_fix_the_evaluation_draws():
    levels = torch.randint(0, 256, (10, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    images = levels / 255.0
    splits = {
        "train": TensorData(images),
        "val": TensorData(images[:4]),
        "test": TensorData(images),
    }
    out = recipes.dequantized_splits(splits, seed=5, eval_size=6)
    assert torch.equal(out["test_images"], images[:6]) and len(out["test"]) == 6
    again = recipes.dequantized_splits(splits, seed=5, eval_size=6)
    assert torch.equal(out["test"].tensors[0], again["test"].tensors[0])  # one fixed draw
    assert not torch.equal(out["val"].tensors[0], out["test"].tensors[0][:4])  # its own seed
    for split in ("val", "test"):
        u = out[split].tensors[0] * 256 - levels[: len(out[split])]
        assert bool(((u >= 0) & (u < 1)).all())  # each value inside its grey level's bin
    assert out["train"].transform is not None  # drawn per batch
    assert recipes.dequantized_splits({**splits, "val": TensorData(images[:0])})["val"] is None
    assert (
        recipes.dequantized_splits({"train": splits["train"], "test": splits["test"]})["val"]
        is None
    )


def test_download_splits_says_where_the_files_go(monkeypatch):
    def offline(name, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(recipes, "image_splits", offline)
    with pytest.raises(DataNotFoundError) as info:
        recipes.download_splits("cifar10", root="/data", download=True)
    text = str(info.value)
    assert "\n" not in text and "/data" in text and "no network" in text
    assert "copy the files there" in text


def test_balanced_labels():
    assert recipes.balanced_labels(3, 7).tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert torch.bincount(recipes.balanced_labels(10, 1000)).tolist() == [100] * 10
