"""Every example runs with --smoke and writes what it reports."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


def test_every_example_has_a_smoke_flag():
    assert EXAMPLES
    for p in EXAMPLES:
        assert "--smoke" in p.read_text(), p.name


def run(script, *args, timeout=600):
    # every example takes the common flags, --threads among them
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / script),
            "--smoke",
            "--no-progress",
            "--threads",
            "1",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_cvae_example_smoke(tmp_path):
    proc = run("cvae.py", "--out", str(tmp_path), "--device", "cpu")
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["", "1 quadrant", "2 quadrants", "3 quadrants"]
    names = [r[0] for r in rows[1:]]
    assert names[0] == "NN baseline NLL" and names[1].startswith("CVAE -ELBO")
    assert names[2].startswith("CVAE IS NLL") and names[3].startswith("gap")
    values = {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}
    for vals in values.values():
        assert all(math.isfinite(v) for v in vals)
    nn, elbo, nll, gap = (values[n] for n in names)
    for i in range(3):
        assert nll[i] > 0 and elbo[i] > 0 and 0 < nn[i] < 784 * math.log(2) * 1.5
        assert gap[i] == pytest.approx(nn[i] - elbo[i], abs=0.02)
    # fewer hidden pixels, smaller loss
    assert nn[0] > nn[1] > nn[2]
    for q in (1, 2, 3):
        assert (tmp_path / f"cvae_q{q}.png").stat().st_size > 1000
        assert (tmp_path / f"cvae_q{q}.pt").exists() and (tmp_path / f"baseline_q{q}.pt").exists()
    assert (tmp_path / "learning_curves.png").exists()
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["results"]["2 quadrants"]["cvae_epochs"] == 2
    assert "Pyro tutorial" in proc.stdout


def test_cvae_example_resume_and_bad_quadrant(tmp_path):
    run("cvae.py", "--out", str(tmp_path), "--quadrants", "3", "--device", "cpu")
    proc = run("cvae.py", "--out", str(tmp_path), "--quadrants", "3", "--device", "cpu", "--resume")
    assert (
        "epoch" not in proc.stdout.split("CVAE ==")[1].split("evaluation")[0]
    )  # nothing left to train
    bad = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cvae.py"), "--smoke", "--quadrants", "4"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "1..3" in bad.stderr


def results(tmp_path):
    return json.loads((tmp_path / "results.json").read_text())


def test_vae_example_smoke(tmp_path):
    proc = run("vae.py", "--out", str(tmp_path), "--device", "cpu")
    rec = results(tmp_path)["results"]["models"]["vae"]
    assert 0 < rec["iw_nll"] <= rec["neg_elbo"] + 1.0  # k = 16 tightens the bound
    assert rec["kl"] > 0 and 0 <= rec["active_units"] <= 50 and len(rec["kl_per_dim"]) == 50
    assert rec["epochs_run"] == 2 and rec["iw_samples"] == 16
    assert results(tmp_path)["args"]["objective"] == "meanfield"  # measured to converge faster
    for name in ("reconstructions", "samples", "latent", "learning_curves"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
    assert "86.76" in proc.stdout


def test_vae_example_beta_sweep_and_iwae(tmp_path):
    run("vae.py", "--out", str(tmp_path / "b"), "--betas", "0", "4", "--z-dim", "4")
    with open(tmp_path / "b" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["beta"]) for r in rows] == [0.0, 4.0]
    kl = [float(r["kl"]) for r in rows]
    assert kl[0] > kl[1]  # the KL weight squeezes the code
    run(
        "vae.py",
        "--out",
        str(tmp_path / "i"),
        "--model",
        "iwae",
        "--particles",
        "4",
        "--net",
        "conv",
        "--likelihood",
        "continuous_bernoulli",
    )
    args = results(tmp_path / "i")["args"]
    assert args["objective"] == "iwae" and args["particles"] == 4
    bad = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "vae.py"), "--smoke", "--z-dim", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "--z-dim" in bad.stderr


@pytest.mark.parametrize(
    "script, figure", [("denoising.py", "noisy.png"), ("inpainting.py", "holed.png")]
)
def test_restoration_examples_smoke(script, figure, tmp_path):
    run(script, "--out", str(tmp_path))
    rec = results(tmp_path)["results"]
    assert 0 < rec["psnr_before"] < 60 and 0 < rec["psnr_after"] < 60
    assert (tmp_path / figure).stat().st_size > 1000


def test_anomaly_example_smoke(tmp_path):
    import torch

    import probgen
    from probgen.cli import SMOKE_LIMIT
    from probgen.data import image_splits
    from probgen.metrics import elbo_per_example
    from probgen.train import set_seed

    run("anomaly.py", "--out", str(tmp_path), "--digits", "1")
    record = results(tmp_path)
    row, args = record["results"]["rows"][0], record["args"]
    assert row["left_out_digit"] == 1
    # the reported ROC-AUC, recomputed: the saved VAE's -ELBO on the same test images (the
    # example's seed, so the same draws of q), its AUC by counting pairs
    test = image_splits(
        "mnist",
        val_size=args["val_size"],
        binarize="dynamic",
        seed=args["seed"],
        device=args["device"],
        limit=SMOKE_LIMIT,
    )["test"]
    model = probgen.load(tmp_path / "checkpoint_digit1.pt", map_location=args["device"])
    set_seed(args["seed"])
    with torch.no_grad():
        scores = -elbo_per_example(model.model, model.guide, test, num_particles=args["particles"])
    is_anomaly = test.tensors[1] == 1
    assert 0 < int(is_anomaly.sum()) < len(test)
    assert row["score_normal"] == pytest.approx(float(scores[~is_anomaly].mean()), rel=1e-6)
    assert row["score_anomalous"] == pytest.approx(float(scores[is_anomaly].mean()), rel=1e-6)
    # every (anomalous, normal) pair: 1 when the anomaly scores higher, 1/2 on a tie
    pos, neg = scores[is_anomaly].double()[:, None], scores[~is_anomaly].double()[None, :]
    auc = float(((pos > neg).double() + 0.5 * (pos == neg).double()).mean())
    assert row["roc_auc"] == pytest.approx(auc, abs=1e-9)
    assert (tmp_path / "anomaly_digit1.png").exists()


def test_cvae_label_example_smoke(tmp_path):
    run("cvae_label.py", "--out", str(tmp_path))
    rec = results(tmp_path)["results"]
    assert 0 < rec["iw_nll"] <= rec["neg_elbo"] + 1.0
    assert (tmp_path / "generated.png").exists() and (tmp_path / "restyle.png").exists()


def test_latent_space_example_smoke_and_same_seed_same_run(tmp_path):
    run("latent_space.py", "--out", str(tmp_path), "--seed", "3")
    rec = results(tmp_path)["results"]
    assert [r["code_size"] for r in rec["by_code_size"]] == [2, 8]
    assert 60 <= rec["pca_components_for_90pct"] <= 120  # the documents: about 80
    for name in ("latent", "prior_samples", "manifold", "interpolation", "pca"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
    # --seed fixes every weight from the first: five models, each built after the last
    # one trained, give the same numbers in a second process (torch seeds itself randomly)
    run("latent_space.py", "--out", str(tmp_path / "again"), "--seed", "3")
    assert results(tmp_path / "again")["results"] == rec


# ------------------------------------------------------------------- bad settings


def run_bad(script, *args, timeout=300):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / script),
            "--smoke",
            "--no-progress",
            "--threads",
            "1",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def assert_one_error_line(proc, script, *words):
    """Exit status 2, no traceback, and the last line of stderr is the only one that
    says ``error:``, in argparse's form ``<script>: error: ...``."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert [line for line in lines if "error:" in line] == lines[-1:], proc.stderr[-3000:]
    assert lines[-1].startswith(f"{script}: error: "), lines[-1]
    for w in words:
        assert w in lines[-1], lines[-1]


@pytest.mark.parametrize(
    "script, args, words",
    [
        ("cvae_label.py", ["--z-dim", "0"], ["--z-dim must be at least 1, got 0."]),
        ("anomaly.py", ["--z-dim", "-3"], ["--z-dim must be at least 1, got -3."]),
        ("denoising.py", ["--hidden", "0"], ["--hidden must be at least 1, got 0."]),
        ("vae.py", ["--hidden", "64", "0"], ["--hidden must be at least 1, got 0."]),
        ("flows.py", ["--depth", "0", "--flow", "realnvp"], ["--depth must be at least 1, got 0."]),
        ("vae.py", ["--seed", "1" + "0" * 22], ["--seed must be in 0..2**63 - 1"]),
    ],
)
def test_a_bad_number_is_one_error_line_at_parse_time(script, args, words, tmp_path):
    """Refused as the command line is parsed: exactly one line on stderr, no usage."""
    proc = run_bad(script, *args, "--out", str(tmp_path / "out"))
    assert_one_error_line(proc, script, *words)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "out").exists()  # refused before --out was even made


@pytest.mark.parametrize(
    "script, args, words",
    [
        ("mevae.py", ["--min-digits", "3", "--max-digits", "2"], ["min_digits (3)", "max_digits"]),
        ("mevae.py", ["--canvas", "28", "--max-digits", "4"], ["do not fit", "28x28"]),
        ("flows.py", ["--flow", "realnvp", "--levels", "9"], ["levels", "at most 3"]),
    ],
)
def test_a_setting_the_library_refuses_is_one_error_line(script, args, words, tmp_path):
    """Settings that only the library can judge (together, or against the data): its
    ConfigError, said by cli.run as one line before training."""
    proc = run_bad(script, *args, "--out", str(tmp_path))
    assert_one_error_line(proc, script, *words)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert not list(tmp_path.glob("*.pt"))  # nothing trained, nothing saved


def test_resume_into_another_runs_folder_is_one_error_line(tmp_path):
    run("denoising.py", "--out", str(tmp_path))
    proc = run_bad("cvae_label.py", "--out", str(tmp_path), "--resume")
    assert_one_error_line(proc, "cvae_label.py", "another run", "--out")


def test_argparse_flag_errors_keep_exit_status_2():
    proc = run_bad("latent_space.py", "--pca-sizes", "0")
    assert proc.returncode == 2 and "--pca-sizes" in proc.stderr.splitlines()[-1]
    proc = run_bad("vae.py", "--likelihood", "poisson")
    assert proc.returncode == 2 and "--likelihood" in proc.stderr.splitlines()[-1]


def test_cli_run_turns_probgen_errors_into_one_line(capsys):
    from probgen import cli
    from probgen.errors import CheckpointError, ConfigError, TrainingDivergedError

    def failing(error):
        def main(argv=None):
            raise error

        return main

    assert cli.run(lambda argv=None: {"done": True}) == 0
    assert cli.run(failing(ConfigError("z_dim must be positive,\n  got 0."))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith(": error: z_dim must be positive, got 0.\n")
    assert cli.run(failing(CheckpointError("truncated"))) == 2
    assert cli.run(failing(TrainingDivergedError("loss became NaN in epoch 3"))) == 1
    assert "error: loss became NaN" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli.run(failing(ZeroDivisionError("bug")))


def test_results_json_writes_paths_anywhere_in_the_arguments(tmp_path):
    """A checkpoint path inside an argument's dict (sample_quality's ``--load name=PATH``)
    once crashed the results file's JSON after a whole run; it is written as a string."""
    import argparse
    import json
    import time

    from probgen import cli

    args = argparse.Namespace(out=tmp_path, load={"realnvp": tmp_path / "r.pt"}, device="cpu")
    cli.write_results(tmp_path, {"fid": 1.5}, args, time.perf_counter())
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["args"]["load"] == {"realnvp": str(tmp_path / "r.pt")}
    assert record["args"]["out"] == str(tmp_path) and record["results"] == {"fid": 1.5}


# ------------------------------------------------------------------- --resume and data


def first_fit_data(script, *argv, tmp_path, skip=0):
    """The training data that ``examples/script --smoke argv`` hands to its fit (the one
    after ``skip`` fits, which train), caught as the epoch starts; nothing trains."""
    import contextlib
    import io

    import torch

    from probgen.train import loop
    from tests.conftest import load_example

    if str(ROOT / "examples") not in sys.path:
        sys.path.insert(0, str(ROOT / "examples"))  # the examples' shared helpers
    example = load_example(script[:-3])
    seen, original = [], loop.Run.train_epoch

    class Caught(BaseException):
        pass

    def catch(self, epoch):
        if not any(run is self for run in seen):
            seen.append(self)
        if seen[-1] is self and len(seen) == skip + 1:
            raise Caught
        return original(self, epoch)

    threads = torch.get_num_threads()
    loop.Run.train_epoch = catch
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            example.cli.run(
                example.main,
                [
                    "--smoke",
                    "--no-progress",
                    "--threads",
                    "1",
                    "--device",
                    "cpu",
                    "--out",
                    str(tmp_path),
                    *argv,
                ],
            )
    except Caught:
        pass
    finally:
        loop.Run.train_epoch = original
        torch.set_num_threads(threads)
    assert len(seen) == skip + 1, f"{script}: {len(seen)} fits reached, not {skip + 1}"
    return seen[-1].train_data


DATA_CASES = [(p.name, [], 0, {}) for p in EXAMPLES if p.name not in ("aging.py",)] + [
    ("cvae.py", ["--quadrants", "2"], 1, {"quadrants": 2}),  # the CVAE's precomputed inputs
    ("aae.py", ["--labels", "semi_supervised", "--num-labelled", "20"], 0, {"num_labelled": 20}),
    ("aae.py", ["--augment-shift", "2"], 0, {"augment_shift": 2}),
    ("gan.py", ["--data", "toy1d"], 0, {"dataset": "toy1d"}),
    ("anomaly.py", ["--digits", "4"], 0, {"without_digit": 4}),
    ("vae.py", ["--binarize", "static"], 0, {"binarize": "static"}),
]


@pytest.mark.parametrize(
    "script, argv, skip, expect",
    DATA_CASES,
    ids=[" ".join([s[:-3], *a]) for s, a, _, _ in DATA_CASES],
)
def test_every_example_says_how_its_training_data_was_made(script, argv, skip, expect, tmp_path):
    """The fit loop keeps the training data's ``settings`` in each checkpoint and a
    ``--resume`` refuses other ones: every example's training data carries them (aging
    keeps no checkpoints, so nothing resumes)."""
    data = first_fit_data(script, *argv, tmp_path=tmp_path, skip=skip)
    settings = getattr(data, "settings", None)
    assert isinstance(settings, dict) and settings.get("seed") == 0, (script, settings)
    assert settings.get("dataset"), settings
    for k, v in expect.items():
        assert settings.get(k) == v, (k, settings)


def test_resume_refuses_other_data_settings(tmp_path, capsys):
    """Static against dynamic binarization: the resumed run stops with one line before
    training, naming the setting."""
    from tests.conftest import load_example, run_example

    example = load_example("vae")
    tiny = [
        "--out",
        str(tmp_path),
        "--z-dim",
        "2",
        "--hidden",
        "16",
        "--iw-samples",
        "0",
        "--epochs",
        "1",
    ]
    assert run_example(example, *tiny) == 0
    before = (tmp_path / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert run_example(example, *tiny, "--binarize", "static", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "binarize" in err[0] and "'dynamic'" in err[0], err
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # left as it was
    assert run_example(example, *tiny, "--resume") == 0  # the same settings resume


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_last_one(
    tmp_path, capsys, monkeypatch
):
    """The disk fills while the resumed run writes its next checkpoint (half the bytes
    written, then ENOSPC, as torch.save meets it): one line naming the problem and the
    file, the previous checkpoint byte for byte, no partial file left."""
    import errno

    import torch

    from tests.conftest import load_example, run_example

    example = load_example("vae")
    tiny = ["--out", str(tmp_path), "--z-dim", "2", "--hidden", "16", "--iw-samples", "0"]
    assert run_example(example, *tiny, "--epochs", "1") == 0
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if hasattr(f, "truncate"):  # what reached the disk: a part of it
            f.truncate(f.tell() // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    # a file-system error, not a bad setting: exit status 1 (the checkpoint writer's
    # CheckpointWriteError is an OSError too)
    assert run_example(example, *tiny, "--epochs", "2", "--resume") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device" in err[0], err
    assert "checkpoint is intact" in err[0] and "checkpoint.pt" in err[0], err
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


# ------------------------------------------------------------------- --log trackers


def read_tensorboard_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_log_csv_and_tensorboard_record_each_fit_apart(tmp_path):
    """cvae.py fits a baseline, then a CVAE: each fit logs to its own CSV file and
    TensorBoard folder, and what they hold is the fit's history as its checkpoint keeps it
    (FitResult.history), epoch by epoch, with the script's arguments among the settings."""
    pytest.importorskip("tensorboard")
    from probgen.train.checkpoint import load_checkpoint
    from tests.conftest import load_example, run_example

    example = load_example("cvae")
    assert (
        run_example(
            example,
            "--out",
            str(tmp_path),
            "--quadrants",
            "1",
            "--log",
            "csv",
            "--log",
            "tensorboard",
        )
        == 0
    )
    summary = results(tmp_path)["results"]["1 quadrant"]
    seen = set()
    for name, kind in (("baseline_q1", "baseline"), ("cvae_q1", "cvae")):
        history = load_checkpoint(tmp_path / f"{name}.pt")["history"]
        assert len(history) == summary[f"{kind}_epochs"] == 2
        with open(tmp_path / f"log_{name}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in history]
        scalars = read_tensorboard_scalars(tmp_path / "tensorboard" / name)
        for key in ("train_loss", "val_loss", "lr"):
            logged = [float(r[key]) for r in rows]
            assert logged == [h[key] for h in history], (name, key)  # written as Python does
            assert [s for s, _ in scalars[key]] == [1, 2]
            assert [v for _, v in scalars[key]] == pytest.approx(logged, rel=1e-6)  # float32
        seen.add(tuple(float(r["train_loss"]) for r in rows))
        config = json.loads((tmp_path / f"log_{name}_config.json").read_text())
        assert config["args"]["quadrants"] == [1] and config["args"]["log"] == [
            "csv",
            "tensorboard",
        ]
        assert config["fit"]["epochs"] == 2
    assert len(seen) == 2  # two fits, two records: neither overwrote the other
    assert not (tmp_path / "log.csv").exists()
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == [
        "baseline_q1",
        "cvae_q1",
    ]


@pytest.mark.parametrize(
    "tracker, module",
    [("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")],
)
def test_a_missing_tracker_library_is_one_line_before_anything_runs(
    tracker, module, tmp_path, capsys, monkeypatch
):
    """The library is imported as the command line is parsed: a missing one stops the
    script with one line naming the extra to install, before the data are read."""
    from tests.conftest import load_example, run_example

    example = load_example("vae")

    def never(*args, **kwargs):
        raise AssertionError("the script went on past its command line")

    monkeypatch.setattr(example.cli, "mnist", never)
    monkeypatch.setattr(example, "fit", never)
    monkeypatch.setitem(sys.modules, module, None)  # "import module" raises ImportError
    with pytest.raises(SystemExit) as info:  # argparse's exit, as for any bad flag
        run_example(example, "--out", str(tmp_path), "--log", "csv", "--log", tracker)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": error: the " in err[0], err
    assert f"pip install 'probgen[{tracker}]'" in err[0], err
    assert list(tmp_path.iterdir()) == []  # no log file, no checkpoint
