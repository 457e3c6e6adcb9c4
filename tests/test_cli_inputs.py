"""Bad command-line values are one line and exit status 2, before anything trains.

Three parts: the checks of probgen.checks (the one place with the one message style);
the parser class and run wrapper of probgen.cli; and every example's parser over the
table of bad values of benchmarks/bad_inputs.py (each numeric flag given a negative,
zero, huge, NaN or infinite value where that is not legal, an unwritable --out, an
unknown --device), run in this process with the training loop's first epoch replaced by
an exception: a case passes when the script stops with one error line before it.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from probgen import checks, cli
from probgen.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _bad_inputs():
    spec = importlib.util.spec_from_file_location(
        "bad_inputs", ROOT / "benchmarks" / "bad_inputs.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bad_inputs", module)
    spec.loader.exec_module(module)
    return module


BAD = _bad_inputs()
EXAMPLES = BAD.example_paths(ROOT)


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    "check, value, message",
    [
        (checks.positive_int, 0, "z must be at least 1, got 0."),
        (checks.positive_int, -3, "z must be at least 1, got -3."),
        (checks.positive_int, 2.0, "z must be an integer, got 2.0."),
        (checks.positive_int, True, "z must be an integer, got True."),
        (checks.positive_int, "4", "z must be an integer, got '4'."),
        (checks.positive_int, 10**23, "z must be at least 1 and at most 2**63 - 1"),
        (checks.nonnegative_int, -1, "z must be 0 or more, got -1."),
        (checks.seed, -1, "z must be in 0..2**63 - 1, got -1."),
        (checks.seed, 10**23, "z must be in 0..2**63 - 1, got 100000000000000000000000."),
        (checks.positive_float, 0.0, "z must be more than 0, got 0.0."),
        (checks.positive_float, float("nan"), "z must be a finite number (more than 0), got nan."),
        (checks.positive_float, float("inf"), "z must be a finite number (more than 0), got inf."),
        (checks.nonnegative_float, -1e-9, "z must be 0 or more, got -1e-09."),
        (checks.finite_float, float("-inf"), "z must be a finite number, got -inf."),
        (checks.finite_float, 10**400, "z must be a finite number, got an integer of about 401"),
        (checks.probability, 1.5, "z must lie in [0, 1], got 1.5."),
        (checks.fraction, 1, "z must lie in (0, 1), got 1."),
        (checks.fraction, 0.0, "z must lie in (0, 1), got 0.0."),
        (checks.probability, "0.5", "z must be a number, got '0.5'."),
    ],
)
def test_a_check_refuses_with_one_sentence_in_one_style(check, value, message):
    with pytest.raises(ConfigError) as info:
        check("z", value)
    text = str(info.value)
    assert text.startswith(message) and text.endswith(".") and "\n" not in text
    assert len(text) < 160  # a 23-digit (or 400-digit) value stays one short line


def test_checks_return_plain_python_values():
    assert type(checks.positive_int("n", np.int64(3))) is int
    assert type(checks.positive_int("n", torch.tensor(3))) is int
    assert type(checks.real("x", np.float32(0.5))) is float
    assert type(checks.nonnegative_float("x", 2)) is float
    assert checks.seed("seed", 2**63 - 1) == 2**63 - 1 and checks.seed("seed", 0) == 0
    assert checks.int_in_range("q", 3, 1, 3) == 3
    assert checks.probability("p", 0) == 0.0 and checks.probability("p", 1) == 1.0
    assert checks.real("a", 0.25, 0, 0.5, low_open=True, high_open=True) == 0.25
    assert checks.choice("net", "mlp", ["mlp", "conv"]) == "mlp"
    with pytest.raises(ConfigError, match="net must be one of 'mlp', 'conv', got 'rnn'"):
        checks.choice("net", "rnn", ["mlp", "conv"])


def test_zero_can_mean_something_below_the_lower_bound():
    patience = dict(low=1, zero="no early stopping")
    assert checks.integer("patience", 0, **patience) == 0
    assert checks.integer("patience", 7, **patience) == 7
    with pytest.raises(
        ConfigError,
        match=r"patience must be 0 \(no early stopping\) or at "
        r"least 1, got -1\.",
    ):
        checks.integer("patience", -1, **patience)


def test_a_hint_says_what_to_do():
    with pytest.raises(ConfigError, match=r"must be at least 129, got 5; FID on 128 features\."):
        checks.integer("samples", 5, low=129, hint="FID on 128 features")


def test_every_seed_check_accepts_is_one_torch_and_numpy_take():
    from probgen.train import set_seed

    for s in (0, 1, 2**32, 2**63 - 1):
        set_seed(checks.seed("seed", s))
        torch.Generator().manual_seed(checks.seed("seed", s) + 17)  # the examples' offsets
    torch.manual_seed(0)


def test_writable_dir_makes_the_folder_and_refuses_files(tmp_path):
    made = checks.writable_dir("--out", tmp_path / "a" / "b")
    assert made == tmp_path / "a" / "b" and made.is_dir()
    assert list(made.iterdir()) == []  # the write test leaves nothing behind
    f = tmp_path / "results.txt"
    f.write_text("x")
    with pytest.raises(
        ConfigError,
        match=r"--out must be a folder this process can write in, "
        r"got .*results.txt \(a file\)",
    ):
        checks.writable_dir("--out", f)
    with pytest.raises(ConfigError, match=r"results.txt is a file"):
        checks.writable_dir("--out", f / "run")
    assert not (f / "run").exists()
    away = tmp_path / "not" / "yet"
    assert checks.writable_dir("--out", away, create=False) == away and not away.exists()


def test_writable_dir_refuses_a_read_only_folder(tmp_path):
    if not BAD.chmod_stops_writes():
        pytest.skip("permissions do not stop this user's writes (root): no read-only folder")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(ConfigError, match="Permission denied"):
            checks.writable_dir("--out", ro)
        with pytest.raises(ConfigError, match="cannot create it"):
            checks.writable_dir("--out", ro / "run")
    finally:
        ro.chmod(stat.S_IRWXU)


def test_writable_dir_refuses_a_folder_that_refuses_writes(tmp_path):
    """Where permissions do not stop this user (root), a system folder that refuses every
    write: the write test, not the permission bits, is what answers."""
    folder = BAD.unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("no folder here refuses this user's writes")
    try:
        with pytest.raises(
            ConfigError,
            match=r"cannot write in .*: (Permission denied|"
            r"Read-only file system|No such file)",
        ):
            checks.writable_dir("--out", folder)
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(stat.S_IRWXU)


def test_writable_dir_says_the_systems_words_for_a_file_it_cannot_make(tmp_path):
    # /dev/null is no folder: what the OS says about making one under it is said plainly
    with pytest.raises(ConfigError, match=r"/dev/null is a file|cannot create it"):
        checks.writable_dir("--out", Path("/dev/null") / "run")


# --------------------------------------------------------------------------- argparse


def parser(**flags):
    p = cli.Parser(prog="script.py")
    for flag, kind in flags.items():
        p.add_argument(f"--{flag}", type=kind)
    return p


def one_line_exit(p, argv, capsys):
    with pytest.raises(SystemExit) as info:
        p.parse_args(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.count("\n") == 1, err
    return err.strip()


def test_arg_refuses_at_parse_time_in_one_line(capsys):
    p = parser(
        n=checks.arg(checks.positive_int),
        lr=checks.arg(checks.positive_float),
        q=checks.arg(checks.int_in_range, low=1, high=3, hint="visible quadrants"),
    )
    assert (
        one_line_exit(p, ["--n", "0"], capsys) == "script.py: error: --n must be at least 1, got 0."
    )
    assert one_line_exit(p, ["--n", "nan"], capsys).endswith("--n must be an integer, got 'nan'.")
    assert one_line_exit(p, ["--n", "1" * 5000], capsys).endswith("(5000 digits).")
    assert one_line_exit(p, ["--lr=-inf"], capsys).endswith(
        "--lr must be a finite number (more than 0), got -inf."
    )
    assert one_line_exit(p, ["--lr", "1e400"], capsys).endswith("got inf.")
    assert one_line_exit(p, ["--q", "4"], capsys).endswith(
        "--q must be in 1..3, got 4; visible quadrants."
    )
    args = p.parse_args(["--n", "7", "--lr", "1e-3", "--q", "2"])
    assert (args.n, args.lr, args.q) == (7, 1e-3, 2) and type(args.lr) is float


def test_the_long_flag_names_the_value_and_other_errors_keep_argparses_form(capsys):
    p = cli.Parser(prog="script.py")
    p.add_argument("-k", "--iw-samples", type=checks.arg(checks.positive_int))
    assert (
        one_line_exit(p, ["-k", "0"], capsys)
        == "script.py: error: --iw-samples must be at least 1, got 0."
    )
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--nope"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("usage:") and "unrecognized" in err


def test_arg_takes_only_checks():
    with pytest.raises(TypeError, match="not a check"):
        checks.arg(int)


# --------------------------------------------------------------------------- cli


def common_args(*argv, tmp_path, **kw):
    p = cli.common_parser("test", epochs=3, out=str(tmp_path / "out"), **kw)
    threads = torch.get_num_threads()
    try:
        return cli.finish_args(p, list(argv))
    finally:
        torch.set_num_threads(threads)
        torch.manual_seed(0)


def test_fit_config_passes_patience_and_seed_and_patience_0_is_off(tmp_path):
    args = common_args("--patience", "4", "--seed", "9", "--device", "cpu", tmp_path=tmp_path)
    cfg = cli.fit_config(args)
    assert (cfg.patience, cfg.seed, cfg.epochs) == (4, 9, 3)
    off = cli.fit_config(common_args("--patience", "0", "--device", "cpu", tmp_path=tmp_path))
    assert off.patience is None and off.seed == 0  # seed 0 given, not fit's default
    none = cli.fit_config(common_args("--device", "cpu", tmp_path=tmp_path, patience=None))
    assert none.patience is None


def test_val_size_0_only_where_a_script_needs_no_validation(tmp_path, capsys):
    args = common_args("--val-size", "0", "--device", "cpu", tmp_path=tmp_path, need_val=False)
    assert args.val_size == 0
    with pytest.raises(SystemExit):
        common_args("--val-size", "0", "--device", "cpu", tmp_path=tmp_path)
    assert "--val-size must be at least 1, got 0." in capsys.readouterr().err


def test_smoke_keeps_a_val_size_given_on_the_command_line(tmp_path):
    assert common_args("--smoke", "--device", "cpu", tmp_path=tmp_path).val_size == 128
    assert (
        common_args("--smoke", "--val-size", "64", "--device", "cpu", tmp_path=tmp_path).val_size
        == 64
    )


def failing(error):
    def main(argv=None):
        raise error

    return main


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "no space left on the device while writing run/checkpoint.pt"),
        (errno.EDQUOT, "disk quota exceeded while writing run/checkpoint.pt"),
        (errno.EROFS, "read-only file system while writing run/checkpoint.pt"),
        (errno.EACCES, "permission denied: run/checkpoint.pt"),
    ],
)
def test_run_says_a_file_system_error_in_one_line(code, words, capsys):
    status = cli.run(failing(OSError(code, os.strerror(code), "run/checkpoint.pt")))
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1, err
    assert words in err and "the last checkpoint is intact" in err
    assert "Traceback" not in err and (code == errno.EACCES or "--resume" in err)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_checkpoint_the_file_system_refuses_is_one_line_and_exit_status_1(
    code, tmp_path, capsys, monkeypatch
):
    """The checkpoint writer's CheckpointWriteError (a CheckpointError and an OSError) is
    said in its own words, once, with exit status 1 as every file-system error; a
    checkpoint that cannot be written for another reason is a probgen error (2)."""
    from probgen.errors import CheckpointError
    from probgen.train.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()

    def refused(obj, f, *args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", refused)
    assert cli.run(lambda argv=None: save_checkpoint(path, {"epoch": 2})) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err and "the previous checkpoint is intact" in err, err
    assert path.read_bytes() == before
    assert cli.run(failing(CheckpointError("truncated file"))) == 2


def test_run_keeps_the_traceback_of_other_os_errors():
    with pytest.raises(FileNotFoundError):  # a path the code got wrong: a bug to see
        cli.run(failing(FileNotFoundError(errno.ENOENT, "No such file", "nowhere.txt")))
    with pytest.raises(OSError):
        cli.run(failing(OSError("no errno")))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_while_writing_results_is_one_line(tmp_path, capsys):
    """results.json a link to /dev/full, where every write fails with ENOSPC as on a full
    disk: the error names the file, and the run wrapper says it in one line."""
    (tmp_path / "results.json").symlink_to("/dev/full")
    args = argparse.Namespace(out=tmp_path, device="cpu")

    def main(argv=None):
        cli.write_results(tmp_path, {"fid": 1.5}, args, time.perf_counter())

    assert cli.run(main) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"no space left on the device while writing {tmp_path / 'results.json'}" in err


def test_write_results_still_writes(tmp_path):
    args = argparse.Namespace(out=tmp_path, device="cpu")
    cli.write_results(
        tmp_path, {"fid": 1.5}, args, time.perf_counter(), table=[{"a": 1.0, "b": "x"}]
    )
    assert json.loads((tmp_path / "results.json").read_text())["results"] == {"fid": 1.5}
    assert (tmp_path / "results.csv").read_text().splitlines() == ["a,b", "1.0000,x"]


def test_write_table_writes_floats_with_four_decimals_and_names_a_full_disk(tmp_path, capsys):
    rows = [
        {"digits": 1, "ari": 0.123456, "nll": float("nan")},
        {"digits": 2, "ari": 1.0, "nll": float("inf")},
    ]
    assert cli.write_table(tmp_path / "t.csv", rows) == tmp_path / "t.csv"
    assert (tmp_path / "t.csv").read_text().splitlines() == [
        "digits,ari,nll",
        "1,0.1235,nan",
        "2,1.0000,inf",
    ]
    (tmp_path / "full.csv").symlink_to("/dev/full")
    assert cli.run(lambda argv=None: cli.write_table(tmp_path / "full.csv", rows)) == 1
    assert f"while writing {tmp_path / 'full.csv'}" in capsys.readouterr().err


# --------------------------------------------------------------------------- every example


def test_the_table_reaches_every_example_and_flag():
    """The introspection finds the common flags in every example and each example's own
    numeric flags: a parser it could not read would make the table below pass empty."""
    assert len(EXAMPLES) >= 15
    total = 0
    for path in EXAMPLES:
        cases = BAD.cases_for(path)
        flags = {c.flag for c in cases}
        assert {
            "--epochs",
            "--lr",
            "--batch-size",
            "--seed",
            "--out",
            "--weight-decay",
            "--val-size",
            "--threads",
            "--patience",
        } <= flags, path.name
        assert len(flags) > 10, (path.name, flags)
        total += len(cases)
    assert total > 600


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_bad_value_is_one_line_before_training(path, tmp_path):
    example = BAD.load_example(path)
    bad = []
    cases = BAD.cases_for(path, example)
    for i, case in enumerate(cases):
        if case.skip:
            continue
        r = BAD.run_case(example, case, tmp_path / f"case{i}", timeout=120)
        if r.outcome != "one-line":
            bad.append(f"{case.flag} {case.kind} ({' '.join(case.argv)}): {r.outcome}: {r.detail}")
    assert not bad, f"{len(bad)} of {len(cases)} bad inputs not refused in one line:\n" + "\n".join(
        bad
    )


@pytest.mark.parametrize(
    "script, argv",
    [
        (
            "vae.py",
            [
                "--seed",
                "0",
                "--threads",
                "0",
                "--patience",
                "0",
                "--iw-samples",
                "0",
                "--weight-decay",
                "0",
            ],
        ),
        ("gan.py", ["--val-size", "0", "--fid-every", "0", "--ema", "0", "--label-smoothing", "0"]),
        ("aae.py", ["--fid-samples", "0", "--parzen-samples", "0", "--augment-shift", "0"]),
        ("anomaly.py", ["--digits", "0"]),
    ],
)
def test_legal_values_reach_training(script, argv, tmp_path):
    """What the table allows is allowed: these settings start training."""
    example = BAD.load_example(ROOT / "examples" / script)
    case = BAD.Case(script, "legal", "legal", argv)
    r = BAD.run_case(example, case, tmp_path, timeout=120)
    assert r.outcome == "silent" and r.detail == "training started", (r.outcome, r.detail)


def test_the_fid_minimum_is_the_metrics_own():
    """cli's FID sample minimum comes from probgen.metrics.quality: one more than the
    shipped classifier's features, which an FID just accepts and one fewer refuses."""
    from probgen.errors import DataError
    from probgen.metrics import quality
    from probgen.nn.classifier import load_classifier

    need = quality.min_fid_samples("mnist")
    assert cli.MIN_FID_SAMPLES == need == load_classifier().num_features + 1
    assert cli.MIN_INCEPTION_FID_SAMPLES == quality.min_fid_samples("inception") == 2049
    g = torch.Generator().manual_seed(0)
    real = torch.randn(need, need - 1, generator=g, dtype=torch.float64)
    fake = torch.randn(need, need - 1, generator=g, dtype=torch.float64) + 0.5
    assert quality.frechet_distance(real, fake) > 0
    with pytest.raises(DataError, match=f"at least {need}"):
        quality.frechet_distance(real, fake[:-1])
    with pytest.raises(ConfigError, match="feature must be one of"):
        quality.min_fid_samples("clip")


def test_the_shared_fid_flags_and_their_checks(capsys):
    p = cli.Parser(prog="x")
    p.add_argument("--fid-samples", type=cli.sample_count(), default=10000)
    p.add_argument("--eval-samples", type=cli.sample_count(zero="skip"), default=10000)
    cli.image_source_flags(p)
    args = p.parse_args(["--fid-samples", str(cli.MIN_FID_SAMPLES), "--eval-samples", "0"])
    assert args.fid_samples == cli.MIN_FID_SAMPLES and args.eval_samples == 0
    assert args.data_root is None and not args.no_download and args.inception_weights is None
    cli.check_inception_samples(p, args, "fid_samples")  # no Inception: no check
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--fid-samples", str(cli.MIN_FID_SAMPLES - 1)])
    assert info.value.code == 2 and "--fid-samples must be at least" in capsys.readouterr().err
    args = p.parse_args(["--inception-weights", "w.pt", "--fid-samples", "2000"])
    with pytest.raises(SystemExit) as info:
        cli.check_inception_samples(p, args, "eval_samples", "fid_samples")
    last = capsys.readouterr().err.splitlines()[-1]  # argparse's usage, then the line
    assert info.value.code == 2
    assert f"--fid-samples must be at least {cli.MIN_INCEPTION_FID_SAMPLES}" in last
    assert last.endswith("got 2000; FID on Inception's 2048 features.")
    # 0 keeps its flag's meaning ("skip") with Inception too; the other flag's 0 does not
    args = p.parse_args(["--inception-weights", "w.pt", "--eval-samples", "0"])
    cli.check_inception_samples(p, args, "eval_samples", "fid_samples")
    args.fid_samples = 0
    with pytest.raises(SystemExit):
        cli.check_inception_samples(p, args, "fid_samples")
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"--fid-samples must be at least {cli.MIN_INCEPTION_FID_SAMPLES}, got 0; FID on "
            f"Inception's 2048 features."
        )
    )


def test_cli_quality_scorer_says_when_no_features_fit(capsys):
    args = argparse.Namespace(inception_weights=None)
    assert cli.quality_scorer(args, torch.rand(4, 3, 32, 32)) is None
    assert "no FID for this data" in capsys.readouterr().out
    scorer = cli.quality_scorer(args, torch.rand(200, 1, 28, 28), seed=3)
    assert scorer.feature == "mnist" and scorer.seed == 3 and len(scorer.reference) == 200
    assert capsys.readouterr().out == ""
