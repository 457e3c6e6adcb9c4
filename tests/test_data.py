import hashlib

import pytest
import torch

from probgen.data import (
    BUNDLED_MNIST,
    MISSING,
    TensorData,
    image_splits,
    load_images,
    mask_inputs,
    quadrant_mask,
    quadrant_task,
    split_indices,
    unpack_bundled_mnist,
)
from probgen.errors import ConfigError, DataError, DataNotFoundError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_bundled_files_match_their_checksums():
    sums = dict(
        reversed(line.split()) for line in (BUNDLED_MNIST / "SHA256SUMS").read_text().splitlines()
    )
    assert len(sums) == 4
    for name, digest in sums.items():
        assert hashlib.sha256((BUNDLED_MNIST / name).read_bytes()).hexdigest() == digest
    assert "CC BY-SA" in (BUNDLED_MNIST / "SOURCE.md").read_text()


def test_mnist_counts_labels_and_mean(tmp_path):
    unpack_bundled_mnist(tmp_path)
    images, labels = load_images("mnist", train=True, root=tmp_path)
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == TRAIN_COUNTS
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(images.float().mean().item() / 255 - 0.1307) < 1e-4
    images, labels = load_images("mnist", train=False, root=tmp_path)
    assert images.shape == (10000, 28, 28)
    assert torch.bincount(labels).tolist() == TEST_COUNTS
    assert (tmp_path / "MNIST" / "raw" / "SOURCE.md").exists()


def test_missing_data_folder_offline_says_what_to_do(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_images("mnist", root=tmp_path / "nowhere", download=False)
    msg = str(err.value)
    assert "nowhere" in msg and "bundled" in msg
    with pytest.raises(DataNotFoundError, match="download=True"):
        load_images("fashion-mnist", root=tmp_path, download=False)


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match="mnist"):
        load_images("imagenet")


def test_splits_are_disjoint_and_sized():
    tr, va = split_indices(100, 20, seed=3)
    assert len(tr) == 80 and len(va) == 20
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert torch.equal(split_indices(100, 20, seed=3)[1], va)
    with pytest.raises(ConfigError):
        split_indices(100, 100)


def test_image_splits_shapes_range_device():
    s = image_splits("mnist", val_size=1000, limit=300)
    assert set(s) == {"train", "val", "test"}
    x, y = s["train"].tensors
    assert x.shape == (300, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and y.dtype == torch.int64
    full = image_splits("mnist", val_size=1000)
    assert len(full["train"]) == 59000 and len(full["val"]) == 1000 and len(full["test"]) == 10000


def test_static_binarization_is_fixed_and_unbiased():
    s1 = image_splits("mnist", val_size=0, limit=2000, binarize="static", seed=7)
    s2 = image_splits("mnist", val_size=0, limit=2000, binarize="static", seed=7)
    grey = image_splits("mnist", val_size=0, limit=2000)["train"].tensors[0]
    b = s1["train"].tensors[0]
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(b, s2["train"].tensors[0])
    # E[binarized] = grey level; 1.5M pixels make the mean match to ~1e-3
    assert abs(b.mean().item() - grey.mean().item()) < 3e-3
    # the batch iterator returns the same fixed draw every epoch
    e1 = next(s1["train"].batches(64))[0]
    e2 = next(s1["train"].batches(64))[0]
    assert torch.equal(e1, e2)


def test_dynamic_binarization_resamples_every_epoch():
    s = image_splits("mnist", val_size=100, limit=1000, binarize="dynamic", seed=0)
    g = torch.Generator().manual_seed(0)
    e1 = next(s["train"].batches(1000, generator=g))[0]
    e2 = next(s["train"].batches(1000, generator=g))[0]
    grey = s["train"].tensors[0]
    assert set(e1.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(e1, e2)
    assert abs(e1.mean().item() - grey.mean().item()) < 3e-3
    # evaluation splits get one fixed binarization
    assert set(s["test"].tensors[0].unique().tolist()) <= {0.0, 1.0}
    # the same generator state gives the same draw (reproducible resumes)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(
        next(s["train"].batches(10, generator=g1))[0], next(s["train"].batches(10, generator=g2))[0]
    )


def test_batches_cover_every_example_once():
    d = TensorData(torch.arange(10).float(), torch.arange(10) * 2)
    batches = list(d.batches(4, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    seen = torch.cat([b[0] for b in batches])
    assert sorted(seen.long().tolist()) == list(range(10))
    for x, y in batches:
        assert torch.equal(y, x.long() * 2)
    assert d.num_batches(4) == 3 and len(list(d.batches(4, drop_last=True))) == 2


def test_tensordata_rejects_mismatched_lengths():
    with pytest.raises(DataError, match="first dimension"):
        TensorData(torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize("q,visible", [(1, 196), (2, 392), (3, 588)])
def test_quadrant_masks(q, visible):
    m = quadrant_mask(q)
    assert m.shape == (28, 28) and int(m.sum()) == visible
    assert m[27, 0]  # bottom-left is always visible
    assert not m[27, 27]  # bottom-right is always hidden
    assert bool(m[0, 0]) == (q >= 2) and bool(m[0, 27]) == (q == 3)


@pytest.mark.parametrize("q", [0, 4, -1, 2.0, True])
def test_quadrant_count_outside_range(q):
    with pytest.raises(ConfigError, match="1, 2 or 3"):
        quadrant_mask(q)


def test_quadrant_task_batches(mnist_small):
    task = quadrant_task(mnist_small["test"], 1)
    inputs, targets = next(task.batches(8))
    assert inputs.shape == targets.shape == (8, 1, 28, 28)
    hidden = inputs == MISSING
    assert int(hidden[0].sum()) == 784 - 196
    assert torch.equal(inputs[~hidden], targets[~hidden])
    assert torch.equal(mask_inputs(targets, quadrant_mask(1)), inputs)


def test_random_shift_moves_each_image_by_its_own_offset():
    from probgen.data.augment import RandomShift

    # a random image inside a 2-pixel zero frame: every shift of up to 2 keeps all of it
    x = torch.zeros(64, 2, 9, 9)
    x[:, :, 2:7, 2:7] = torch.rand(64, 2, 5, 5) + 0.1
    labels = torch.arange(64)
    out, same = RandomShift(2)((x, labels), torch.Generator().manual_seed(0))
    assert same is labels and out.shape == x.shape
    offsets = set()
    for i in range(64):
        # exactly one offset in {-2..2}^2 maps the image onto the output
        hits = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(torch.roll(x[i], (dy, dx), (1, 2)), out[i])
        ]
        assert len(hits) == 1, i
        offsets.add(hits[0])
    assert len(offsets) > 10  # per image, not one offset for the batch
    # reproducible from the generator; flat images shift alike given their shape
    flat = RandomShift(2, image_shape=(2, 9, 9))(
        x.reshape(64, -1), torch.Generator().manual_seed(0)
    )
    assert torch.equal(flat, out.reshape(64, -1))
    # pixels that enter the frame are the fill value
    edge = RandomShift(1, fill=-1.0)(torch.zeros(200, 1, 4, 4), torch.Generator().manual_seed(1))
    assert set(edge.unique().tolist()) == {-1.0, 0.0} and (edge == 0).sum(dim=(1, 2, 3)).min() >= 9
    assert torch.equal(RandomShift(0)(x), x)
    # only_labelled: the images of label -1 (unlabelled) stay, the others move
    y = torch.where(torch.arange(64) % 3 == 0, torch.arange(64) % 10, torch.full((64,), -1))
    part, labels = RandomShift(2, only_labelled=True)((x, y), torch.Generator().manual_seed(0))
    keep = y >= 0
    assert labels is y and torch.equal(part[~keep], x[~keep])
    moved = (part[keep] != x[keep]).flatten(1).any(1)
    assert int(moved.sum()) >= int(keep.sum()) - 3  # (0, 0) has chance 1/25 per image
    with pytest.raises(ConfigError, match="labels say which"):
        RandomShift(1, only_labelled=True)(x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_shift=-1), "max_shift"),
        (dict(max_shift=1.5), "max_shift"),
        (dict(max_shift=9), "out of the frame"),
    ],
)
def test_random_shift_bad_settings(kwargs, message):
    from probgen.data.augment import RandomShift

    with pytest.raises(ConfigError, match=message):
        RandomShift(**kwargs)(torch.zeros(2, 1, 9, 9))
    with pytest.raises(ConfigError, match="image_shape"):
        RandomShift(1)(torch.zeros(2, 81))


def test_splits_record_how_they_were_made(mnist_small):
    train = mnist_small["train"]
    assert train.settings == {
        "dataset": "mnist",
        "split": "train",
        "val_size": 256,
        "binarize": "none",
        "limit": 512,
        "seed": 0,
    }
    assert mnist_small["val"].settings["split"] == "val"
    # kept by what keeps the examples, and a slice says which
    assert quadrant_task(train, 2).settings == train.settings
    assert train.to("cpu").settings == train.settings
    assert train.subset(slice(0, 100)).settings["subsets"] == [[0, 100, None]]
    # other indices: their count and a digest of the positions (a mask, as its positions)
    picked = train.subset(torch.tensor([0, 5])).settings["subsets"]
    assert picked == [{"indices": 2, "sha256": picked[0]["sha256"]}]
    mask = torch.zeros(len(train), dtype=torch.bool)
    mask[[0, 5]] = True
    assert train.subset(mask).settings == train.subset([0, 5]).settings
    assert {
        k: v for k, v in train.subset(mask).settings.items() if k != "subsets"
    } == train.settings
    assert train.subset([0, 6]).settings != train.subset([0, 5]).settings
    with pytest.raises(DataError, match="settings must be a dict"):
        TensorData(torch.zeros(3), settings="mnist")


def test_to_converts_floats_only():
    d = TensorData(torch.zeros(4, 2, dtype=torch.float64), torch.arange(4))
    f = d.to(dtype=torch.float32)
    assert f.tensors[0].dtype == torch.float32 and f.tensors[1].dtype == torch.int64


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(val_size=-1), "val_size must be 0 or more, got -1."),
        (dict(limit=0), "limit must be at least 1, got 0; give None for every example."),
        (dict(limit=-5), "limit must be at least 1, got -5"),  # not a slice of all but 5
        (dict(val_size=2.5), "val_size must be an integer, got 2.5."),
    ],
)
def test_image_splits_refuses_bad_sizes_in_one_line(kwargs, message, monkeypatch):
    import probgen.data.datasets as datasets

    def never(*args, **kw):
        raise AssertionError("the data were read before the settings were checked")

    monkeypatch.setattr(datasets, "load_images", never)
    with pytest.raises(ConfigError) as err:
        datasets.image_splits("mnist", **kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
