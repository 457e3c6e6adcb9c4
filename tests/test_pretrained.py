"""Model folders without pickle (probgen.models.pretrained): ``save_pretrained`` /
``from_pretrained`` round trips for every registered model and its variants, the one-line
errors for each kind of mismatch, tied and non-contiguous tensors, and the Hugging Face
Hub path against local folders only (no network)."""

from __future__ import annotations

import json
import pickle
import random
import shutil
import socket

import numpy as np
import pyro
import pytest
import safetensors.torch
import torch
from torch import nn

import probgen
from probgen.errors import CheckpointError, ConfigError
from probgen.models import MODELS, VAE, Baseline
from probgen.models.aging import RecurrentAger
from probgen.models.pretrained import CONFIG_NAME, WEIGHTS_NAME, file_tensors, load_weights
from probgen.models.registry import from_pretrained, read_pretrained_config
from probgen.train import as_step
from tests.test_device import CASES, CONFIG, _post_fit, _step


@pytest.fixture
def no_pickle(monkeypatch):
    """torch.load and every pickle entry point raise: a load that reaches them fails."""

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle loader was called")

    class Refused:
        def __init__(self, *args, **kwargs):
            refuse()

    for owner, name in (
        (torch, "load"),
        (torch.serialization, "load"),
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
    ):
        monkeypatch.setattr(owner, name, Refused if name == "Unpickler" else refuse)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection raises."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _flat(out):
    if torch.is_tensor(out):
        return [out.detach()]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flat(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat(o)]
    return [] if out is None else [torch.as_tensor(out)]


def _outputs(name, model, batch):
    """Every phase's training loss and the post-fit methods (test_device's), each under a
    fixed seed, in eval mode, in a scope of Pyro's param store of their own."""
    step = as_step(
        model, probgen.FitConfig(patience=None, restore_best=False, **CONFIG.get(name, {}))
    )
    out = []
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        pyro.set_rng_seed(7)
        ctx = {}
        for phase in step.phases:
            value = phase.loss(batch, ctx)
            out += _flat(value[0] if isinstance(value, tuple) else value)
        pyro.set_rng_seed(8)
        with torch.no_grad():
            out += _flat(_post_fit(name, model, batch))
    return out


def test_every_registered_model_has_a_round_trip_case():
    assert set(MODELS.names()) <= set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_gives_identical_outputs_without_pickle(name, mnist_small, tmp_path, no_pickle):
    """A folder rebuilds the model (from other initial weights: another seed) with every
    parameter and buffer equal, ActNorm's start and fixed permutations included, and
    the same losses, samples, codes and log-densities under a fixed seed; no pickle."""
    model, batch, _ = _step(name, mnist_small)  # lazily made state (ActNorm) set
    model.eval()
    folder = model.save_pretrained(tmp_path / name)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    torch.manual_seed(12345)
    again = from_pretrained(folder)
    assert type(again) is type(model) and not again.training
    mine, theirs = model.state_dict(), again.state_dict()
    assert list(mine) == list(theirs)
    for key in mine:
        assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), key
    want, got = _outputs(name, model, batch), _outputs(name, again, batch)
    assert len(want) == len(got) > 0
    for i, (a, b) in enumerate(zip(want, got)):
        assert a.shape == b.shape and torch.equal(a, b), (name, i)


def test_the_rebuilt_model_is_a_fresh_copy_not_the_original_init(tmp_path, no_pickle):
    """(The round trip would pass trivially if a rebuilt model's own initial weights
    happened to equal the saved ones: they do not.)"""
    torch.manual_seed(0)
    model = VAE(z_dim=3, hidden=(16,))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.save_pretrained(tmp_path / "m")
    torch.manual_seed(0)
    fresh = VAE(z_dim=3, hidden=(16,))
    again = VAE.from_pretrained(tmp_path / "m")
    p0, p1, p2 = (next(m.parameters()) for m in (model, fresh, again))
    assert torch.equal(p0, p2) and not torch.equal(p1, p2)


@pytest.mark.parametrize(
    "make, call",
    [
        (lambda: Baseline(hidden=(16,)), lambda m, x: m.predict(x)),
        (
            lambda: RecurrentAger((1, 8, 8), num_levels=3, hidden=8, embed=8, weights=[1.0, 3.0]),
            lambda m, x: m.sequence_loss(
                x[:2, :, :8, :8].reshape(2, 1, 1, 8, 8).expand(2, 3, 1, 8, 8), start=0
            ),
        ),
    ],
)
def test_rebuildable_networks_that_are_not_registered_round_trip(
    make, call, mnist_small, tmp_path, no_pickle
):
    """Networks made rebuildable without being registered models (the CVAE's baseline,
    the recurrent ager with its loss-weight buffer) get the same methods."""
    model = make()
    x, _ = next(mnist_small["train"].batches(4))
    model.save_pretrained(tmp_path / "n")
    again = type(model).from_pretrained(tmp_path / "n")
    assert torch.equal(call(model.eval(), x), call(again, x))


def test_nested_models_are_recorded_and_rebuilt(tmp_path):
    """A CVAE's baseline is recorded as a model of its own in config.json."""
    from probgen.models import CVAE

    model = CVAE(Baseline(hidden=(8,)), z_dim=2, hidden=(8,))
    model.save_pretrained(tmp_path / "c")
    config = read_pretrained_config(tmp_path / "c")
    assert config["name"] == "cvae"
    assert (
        config["model"]["args"]["baseline"]["__probgen_model__"] == "probgen.models.cvae:Baseline"
    )
    assert config["model"]["args"]["baseline"]["args"]["hidden"] == [8]
    again = from_pretrained(tmp_path / "c")
    assert isinstance(again.baseline, Baseline)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


# --------------------------------------------------------------------------- what it records


def test_config_records_version_settings_and_data_settings(mnist_small, tmp_path):
    model = VAE(z_dim=2, hidden=(8,))
    model.save_pretrained(tmp_path / "a", data_settings=mnist_small["train"])
    config = read_pretrained_config(tmp_path / "a")
    assert config["probgen_version"] == probgen.__version__
    assert config["format"] == "probgen.pretrained" and config["format_version"] == 1
    assert config["model"]["__probgen_model__"] == "probgen.models.vae:VAE"
    assert config["model"]["args"]["z_dim"] == 2 and config["model"]["args"]["hidden"] == [8]
    assert config["data"] == json.loads(json.dumps(mnist_small["train"].settings))
    assert config["data"]["dataset"] == "mnist"
    # a dict, and a run's result that records them (its data_settings)
    model.save_pretrained(tmp_path / "b", data_settings={"binarize": "dynamic", "size": 5})
    assert read_pretrained_config(tmp_path / "b")["data"] == {"binarize": "dynamic", "size": 5}
    result = probgen.FitResult()
    result.data_settings = {"dataset": "mnist", "limit": 512}
    model.save_pretrained(tmp_path / "c", data_settings=result)
    assert read_pretrained_config(tmp_path / "c")["data"] == {"dataset": "mnist", "limit": 512}
    model.save_pretrained(tmp_path / "d")
    assert read_pretrained_config(tmp_path / "d")["data"] is None


def test_save_pretrained_takes_a_fit_results_data_settings(tmp_path):
    """fit records the training data's settings on its result, and a model folder saved
    with ``data_settings=result`` holds them (a subset's slice included)."""
    from probgen.data import image_splits

    splits = image_splits("mnist", val_size=32, limit=96, binarize="dynamic", seed=3)
    train = splits["train"].subset(slice(0, 40))
    model = VAE(z_dim=2, hidden=(8,))
    result = probgen.fit(
        model,
        train,
        splits["val"],
        epochs=1,
        batch_size=20,
        device="cpu",
        seed=0,
        progress=False,
        verbose=False,
    )
    assert result.data_settings == train.settings
    assert result.data_settings is not train.settings  # a copy: later edits stay apart
    assert result.data_settings["binarize"] == "dynamic"
    assert result.data_settings["subsets"] == [[0, 40, None]]
    model.save_pretrained(tmp_path / "m", data_settings=result)
    assert read_pretrained_config(tmp_path / "m")["data"] == json.loads(json.dumps(train.settings))
    # data without settings (a plain TensorData): nothing recorded, as without data_settings
    plain = probgen.data.TensorData((train.tensors[0] > 0.5).float())
    result = probgen.fit(
        model, plain, epochs=1, batch_size=20, device="cpu", seed=0, progress=False, verbose=False
    )
    assert result.data_settings is None
    model.save_pretrained(tmp_path / "n", data_settings=result)
    assert read_pretrained_config(tmp_path / "n")["data"] is None


def test_save_pretrained_leaves_the_model_as_it_was(tmp_path):
    model = VAE(z_dim=2, hidden=(8,)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    model.save_pretrained(tmp_path / "m")
    assert model.training and list(model.parameters()) == params
    assert all(p is q for p, q in zip(model.parameters(), params))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_from_pretrained_leaves_the_random_streams_alone(tmp_path):
    VAE(z_dim=2, hidden=(8,)).save_pretrained(tmp_path / "m")
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    from_pretrained(tmp_path / "m")
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_a_float64_model_comes_back_in_float64(tmp_path):
    model = VAE(z_dim=2, hidden=(8,)).double()
    model.save_pretrained(tmp_path / "m")
    again = from_pretrained(tmp_path / "m")
    assert all(p.dtype == torch.float64 for p in again.parameters())
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


class _Tied(nn.Module):
    """Tied weights, a buffer that is a view of part of another, one that is not
    contiguous (what safetensors refuses to write as they are)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 3)
        self.dec = nn.Linear(3, 4)
        self.dec.weight = nn.Parameter(torch.empty(4, 3))
        self.head = nn.Linear(3, 4, bias=False)
        self.head.weight = self.dec.weight  # tied
        base = torch.arange(12.0).reshape(3, 4)
        self.register_buffer("table", base)
        self.register_buffer("row", base[1])  # part of table's memory
        self.register_buffer("transposed", torch.randn(4, 3).t())  # not contiguous


def test_tied_views_and_non_contiguous_tensors_round_trip(tmp_path):
    """Tied weights are written once and come back tied; a view of part of another
    tensor and a non-contiguous tensor are written as their own copies."""
    src = _Tied()
    kept, tied = file_tensors(src.state_dict())
    assert tied == {"head.weight": "dec.weight"} and "head.weight" not in kept
    assert all(t.is_contiguous() for t in kept.values())
    # through the folder writer and load_weights (a module built by hand)
    from probgen.models.pretrained import read_weights, write_folder

    with torch.no_grad():
        src.dec.weight.normal_()
        src.table.add_(1.0)
    write_folder(src, tmp_path / "t", {"model": None})
    with safetensors.safe_open(str(tmp_path / "t" / WEIGHTS_NAME), "pt") as f:
        assert "head.weight" not in set(f.keys())
    dst = _Tied()
    load_weights(dst, tmp_path / "t")
    assert dst.head.weight is dst.dec.weight
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
    assert set(read_weights(tmp_path / "t")) == set(src.state_dict())


def test_safetensors_itself_refuses_what_file_tensors_prepares():
    """(Why file_tensors exists: the raw state dict does not save.)"""
    with pytest.raises((RuntimeError, ValueError)):
        safetensors.torch.save(_Tied().state_dict())


# --------------------------------------------------------------------------- one-line errors


def _one_line(err, *says):
    text = str(err.value)
    assert "\n" not in text, text
    for s in says:
        assert s in text, text
    return text


def _edit(folder, change):
    file = folder / CONFIG_NAME
    config = json.loads(file.read_text())
    change(config)
    file.write_text(json.dumps(config))


def _rewrite_weights(folder, change):
    """Change model.safetensors and record its new digest (a consistent but different
    folder, as another model's or version's would be)."""
    from probgen.models.pretrained import _sha256

    tensors = safetensors.torch.load_file(str(folder / WEIGHTS_NAME))
    change(tensors)
    safetensors.torch.save_file(tensors, str(folder / WEIGHTS_NAME))
    _edit(folder, lambda c: c["weights"].update(sha256=_sha256(folder / WEIGHTS_NAME)))


@pytest.fixture
def folder(tmp_path):
    VAE(z_dim=3, hidden=(8,)).save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


@pytest.mark.parametrize(
    "change, says",
    [
        (
            lambda c: c["model"].update({"__probgen_model__": "probgen.models.vae:OldVAE"}),
            ["a model class this probgen does not have", "probgen 0.1.0"],
        ),
        (
            lambda c: c["model"].update({"__probgen_model__": "probgen.models.gone:VAE"}),
            ["a model class this probgen does not have (ModuleNotFoundError"],
        ),
        (
            lambda c: c["model"].update({"__probgen_model__": "os:system"}),
            ["probgen rebuilds only probgen's own registered models"],
        ),
        (
            lambda c: c["model"]["args"].update({"dropout_rate": 0.1}),
            [
                "it records 'dropout_rate', which the constructor no longer takes",
                'edit the "model"',
            ],
        ),
        (
            lambda c: c["model"]["args"].update({"latent_dim": c["model"]["args"].pop("z_dim")}),
            [
                "it records 'latent_dim', which the constructor no longer takes",
                "the constructor now also takes 'z_dim' (default 50)",
            ],
        ),
        (
            lambda c: c["model"]["args"].pop("beta"),
            [
                "the constructor now also takes 'beta' (default 1.0), which it does not record",
                "strict=False",
            ],
        ),
        (
            lambda c: c["model"]["args"].update({"z_dim": 0}),
            ["cannot build from its recorded settings (ConfigError"],
        ),
        (
            lambda c: c.update({"format_version": 2, "probgen_version": "9.0"}),
            ["written by a newer probgen (9.0, folder format 2 > 1); upgrade probgen"],
        ),
        (lambda c: c.update({"format": "something.else"}), ["not the config of a probgen model"]),
        (lambda c: c.pop("model"), ["records no model settings"]),
    ],
)
def test_changed_settings_give_one_line(folder, change, says):
    _edit(folder, change)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(folder)
    _one_line(err, *says)


def test_an_argument_added_since_takes_its_default_when_not_strict(folder):
    _edit(folder, lambda c: c["model"]["args"].pop("beta"))
    again = from_pretrained(folder, strict=False)
    assert again.beta == 1.0


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda t: t.pop(sorted(t)[0]), ["does not fit the VAE config.json describes: it lacks '"]),
        (
            lambda t: t.update({"extra.weight": torch.zeros(2)}),
            ["it has 'extra.weight', which the model does not"],
        ),
    ],
)
def test_missing_or_extra_weights_give_one_line(folder, change, says):
    _rewrite_weights(folder, change)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(folder)
    _one_line(err, *says, "write it again with model.save_pretrained")


def test_weights_of_another_shape_give_one_line(tmp_path):
    VAE(z_dim=3, hidden=(8,)).save_pretrained(tmp_path / "a")
    VAE(z_dim=3, hidden=(9,)).save_pretrained(tmp_path / "b")
    shutil.copy(tmp_path / "b" / WEIGHTS_NAME, tmp_path / "a" / WEIGHTS_NAME)
    _edit(
        tmp_path / "a",
        lambda c: c["weights"].update(
            sha256=json.loads((tmp_path / "b" / CONFIG_NAME).read_text())["weights"]["sha256"]
        ),
    )
    with pytest.raises(CheckpointError) as err:
        from_pretrained(tmp_path / "a")
    _one_line(err, "in the file and", "in the model")


@pytest.mark.parametrize(
    "spoil, says",
    [
        (
            lambda f: (f / WEIGHTS_NAME).write_bytes((f / WEIGHTS_NAME).read_bytes()[:-7]),
            "is not the weights file config.json was written with",
        ),
        (lambda f: (f / WEIGHTS_NAME).unlink(), "has a config.json but no model.safetensors"),
        (lambda f: (f / CONFIG_NAME).unlink(), "has no config.json, so it is not a probgen model"),
        (lambda f: (f / CONFIG_NAME).write_text("{not json"), "is not readable JSON"),
    ],
)
def test_spoilt_folders_give_one_line(folder, spoil, says):
    spoil(folder)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(folder)
    _one_line(err, says)


def test_a_truncated_weights_file_with_its_digest_gives_one_line(folder):
    from probgen.models.pretrained import _sha256

    file = folder / WEIGHTS_NAME
    file.write_bytes(file.read_bytes()[:-7])
    _edit(folder, lambda c: c["weights"].update(sha256=_sha256(file)))
    with pytest.raises(CheckpointError) as err:
        from_pretrained(folder)
    _one_line(err, "is not a readable safetensors file")


def test_paths_that_are_not_folders_give_one_line(tmp_path, no_network):
    with pytest.raises(CheckpointError) as err:
        from_pretrained(tmp_path / "nowhere")
    _one_line(err, "no model folder at")
    probgen.train.save_model(VAE(z_dim=2, hidden=(8,)), tmp_path / "vae.pt")
    with pytest.raises(CheckpointError) as err:
        from_pretrained(tmp_path / "vae.pt")
    _one_line(err, "is a file, not a model folder", "probgen.load(")


def test_loading_a_folder_as_another_class_gives_one_line(tmp_path):
    from probgen.models import GAN

    GAN(z_dim=2, net="mlp", g_hidden=(8,), d_hidden=(8,)).save_pretrained(tmp_path / "g")
    with pytest.raises(CheckpointError) as err:
        VAE.from_pretrained(tmp_path / "g")
    _one_line(err, "holds a GAN, not a VAE", "probgen.from_pretrained(")
    assert isinstance(GAN.from_pretrained(tmp_path / "g"), GAN)


def test_save_pretrained_refusals_give_one_line(tmp_path):
    class MyVAE(VAE):
        def __init__(self):
            super().__init__(z_dim=2, hidden=(8,))

    with pytest.raises(ConfigError) as err:
        MyVAE().save_pretrained(tmp_path / "m")
    _one_line(err, "MyVAE is not a registered probgen model")
    model = VAE(z_dim=2, hidden=(8,))
    with pytest.raises(ConfigError) as err:
        model.save_pretrained(tmp_path / "m", data_settings={"x": torch.zeros(3)})
    _one_line(err, "data_settings", "Tensor")
    with pytest.raises(ConfigError) as err:
        model.save_pretrained(tmp_path / "m", data_settings=3)
    _one_line(err, "data_settings must be a dict, a TensorData or a fit result")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError) as err:
        model.save_pretrained(tmp_path / "file")
    _one_line(err, "is a file; save_pretrained writes a folder")
    assert not (tmp_path / "m").exists()


def test_a_failed_save_leaves_the_earlier_folder_byte_for_byte(folder, monkeypatch):
    import errno

    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(CheckpointError) as err:
        VAE(z_dim=3, hidden=(8,)).save_pretrained(folder)
    _one_line(err, "No space left on device", "the files that were there are as they were")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# --------------------------------------------------------------------------- the Hub


def test_push_to_hub_and_from_a_repo_id_through_local_folders(
    tmp_path, monkeypatch, no_network, no_pickle
):
    """push_to_hub uploads the folder's two files (the upload replaced by a copy into a
    local 'remote'); from_pretrained("user/repo") downloads them (snapshot_download
    replaced by that folder) and rebuilds the same model."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    remote, calls = tmp_path / "remote", []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create", repo_id, kwargs.get("private")))

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
        calls.append(("upload", repo_id, sorted(allow_patterns)))
        shutil.copytree(folder_path, remote / repo_id)
        return "commit-info"

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append(("download", repo_id, revision, sorted(allow_patterns), kwargs))
        return str(remote / repo_id)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)  # "user/vae" is no folder here
    torch.manual_seed(0)
    model = VAE(z_dim=3, hidden=(8,)).eval()
    assert (
        model.push_to_hub("user/vae", private=True, data_settings={"dataset": "mnist"})
        == "commit-info"
    )
    again = from_pretrained("user/vae", revision="main", local_files_only=True)
    files = [CONFIG_NAME, WEIGHTS_NAME]
    assert calls == [
        ("create", "user/vae", True),
        ("upload", "user/vae", files),
        ("download", "user/vae", "main", files, {"local_files_only": True}),
    ]
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model.reconstruct(x), again.reconstruct(x))
    assert read_pretrained_config("user/vae")["data"] == {"dataset": "mnist"}


def test_a_local_folder_never_reaches_the_hub(tmp_path, monkeypatch, no_network):
    """A folder that exists is read from disk even when its path reads "user/repo"."""
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def refuse(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.chdir(tmp_path)
    VAE(z_dim=2, hidden=(8,)).save_pretrained("user/vae")
    assert isinstance(from_pretrained("user/vae"), VAE)
    for local in ("./missing", str(tmp_path / "missing"), "a/b/c", "../x"):
        with pytest.raises(CheckpointError) as err:
            from_pretrained(local)
        _one_line(err, "no model folder at")
    with pytest.raises(ConfigError) as err:
        from_pretrained(str(tmp_path / "user" / "vae"), revision="main")
    _one_line(err, "is a local path; revision and Hub options apply")


def test_hub_failures_give_one_line(tmp_path, monkeypatch, no_network):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to the Hub.\nCheck your connection.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as err:
        from_pretrained("user/vae")
    _one_line(
        err,
        "no local folder 'user/vae', and fetching it from the Hugging Face Hub "
        "failed (OSError: We couldn't connect to the Hub.)",
    )
    with pytest.raises(ConfigError) as err:
        VAE(z_dim=2, hidden=(8,)).push_to_hub("not a repo id")
    _one_line(err, 'repo_id must read "user/repo"')
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    with pytest.raises(ConfigError) as err:
        from_pretrained("user/vae")
    _one_line(err, 'pip install "probgen[hub]"')


# --------------------------------------------------------------------------- the docs page


def test_probgen_exports_from_pretrained():
    from probgen.models import registry

    assert probgen.from_pretrained is registry.from_pretrained


def test_docs_snippet_runs(tmp_path, monkeypatch, no_pickle):
    """docs/pretrained.md's example as written, on a slice of MNIST for one epoch."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "pretrained.md").read_text()
    block = page.split("<!-- pretrained-snippet")[1]
    code = re.search(r"```python\n(.*?)\n```", block, re.S).group(1)
    for original in ('val_size=10000, binarize="static")', "epochs=10", "print("):
        assert original in code, f"the test shrinks {original!r}; update it with the page"
    code = (
        code.replace(
            'val_size=10000, binarize="static")', 'val_size=100, limit=300, binarize="static")'
        )
        .replace("epochs=10", "epochs=1, progress=False, verbose=False")
        .replace("print(", "shape = (")
    )
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "docs/pretrained.md", "exec"), scope)
    assert tuple(scope["shape"]) == (8, 1, 28, 28)
    vae, model, x = scope["vae"].eval(), scope["model"], scope["x"]
    assert model is not vae and torch.equal(vae.reconstruct(x), model.reconstruct(x))
    config = read_pretrained_config(tmp_path / "results" / "vae-mnist")
    assert config["data"]["binarize"] == "static" and config["data"]["split"] == "train"
