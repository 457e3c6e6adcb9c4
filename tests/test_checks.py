"""probgen.checks' switches, optional settings and size lists (the other checks are tested
with the command lines that use them, tests/test_cli_inputs.py), and the library's
settings refused in the checks' one message style before anything is built."""

import numpy as np
import pytest
import torch

from probgen import checks
from probgen.errors import ConfigError


@pytest.mark.parametrize("value", [True, False])
def test_flag_takes_booleans_only(value):
    assert checks.flag("label_to_decoder", value) is value


@pytest.mark.parametrize(
    "value, shown",
    [(1, "1"), (0, "0"), ("yes", "'yes'"), (None, "None"), (np.bool_(True), "np.True_")],
)
def test_flag_refuses_what_is_not_a_bool(value, shown):
    with pytest.raises(ConfigError) as info:
        checks.flag("label_to_decoder", value)
    assert str(info.value) == f"label_to_decoder must be True or False, got {shown}."


def test_optional_lets_none_through_and_checks_the_rest():
    assert checks.optional(checks.positive_float, "d_lr", None) is None
    assert checks.optional(checks.positive_float, "d_lr", 2) == 2.0
    assert checks.optional(checks.integer, "k", 3, low=2) == 3
    with pytest.raises(ConfigError, match=r"^d_lr must be more than 0, got 0\.$"):
        checks.optional(checks.positive_float, "d_lr", 0)
    with pytest.raises(ConfigError, match=r"^k must be at least 4, got 3; or None\.$"):
        checks.optional(checks.integer, "k", 3, low=4, hint="or None")


def test_sizes_are_integers_of_at_least_one():
    assert checks.sizes("hidden", [64, 32]) == (64, 32)
    assert checks.sizes("shape", torch.Size([1, 28, 28])) == (1, 28, 28)
    got = checks.sizes("hidden", (np.int64(8),))
    assert got == (8,) and type(got[0]) is int
    assert checks.sizes("hidden", [], min_len=0) == ()


@pytest.mark.parametrize(
    "value, shown",
    [
        ([64, 0], "[64, 0]"),
        ([], "[]"),
        ([True, 3], "[True, 3]"),
        ([2.0], "[2.0]"),
        (64, "64"),
        ("64", "'64'"),
        ([-1], "[-1]"),
        ([2**63], "[9223372036854775808]"),
    ],
)
def test_sizes_refuse_anything_else_in_one_line(value, shown):
    with pytest.raises(ConfigError) as info:
        checks.sizes("hidden", value)
    assert str(info.value) == f"hidden must be one or more integers of at least 1, got {shown}."


def test_sizes_count_a_minimum_length():
    with pytest.raises(
        ConfigError,
        match=r"^layer sizes must be 2 or more integers of at least "
        r"1, got \[3\]\.$",
    ):
        checks.sizes("layer sizes", [3], min_len=2)


# --------------------------------------------------------------------------- the library's


def _models():
    from probgen.models import AAE, CAAE, GAN, VAE, AgeCGAN, SemiSupervisedAAE
    from probgen.models.aging import RecurrentAger
    from probgen.models.priors import CircleMixturePrior, UniformPrior

    return {
        "AAE": AAE,
        "CAAE": CAAE,
        "GAN": GAN,
        "VAE": VAE,
        "AgeCGAN": AgeCGAN,
        "SemiSupervisedAAE": SemiSupervisedAAE,
        "RecurrentAger": RecurrentAger,
        "CircleMixturePrior": CircleMixturePrior,
        "UniformPrior": UniformPrior,
    }


# (class, settings, the whole message): each was a hand-written guard before (or none)
REFUSED = [
    ("AAE", dict(z_dim=0), "the code size z_dim must be at least 1, got 0."),
    ("AAE", dict(z_dim=2.0), "the code size z_dim must be an integer, got 2.0."),
    (
        "AAE",
        dict(label_to_decoder=1, num_labels=10),
        "label_to_decoder must be True or False, got 1.",
    ),
    ("AAE", dict(encoder="universal", noise_dim=0), "noise_dim must be at least 1, got 0."),
    (
        "AAE",
        dict(encoder="adversarial"),
        "encoder must be one of 'deterministic', 'gaussian', 'universal', got 'adversarial'.",
    ),
    ("SemiSupervisedAAE", dict(num_classes=1), "num_classes must be at least 2, got 1."),
    ("CAAE", dict(tv_weight=-1), "tv_weight must be 0 or more, got -1."),
    ("AgeCGAN", dict(num_levels=1), "num_levels must be at least 2, got 1."),
    ("RecurrentAger", dict(num_levels=True), "num_levels must be an integer, got True."),
    ("GAN", dict(ema=1.0), "ema must lie in [0, 1), got 1.0; a decay (0.999 is usual; 0: none)."),
    ("VAE", dict(beta=-1.0), "beta must be 0 or more, got -1.0; beta weights the KL term."),
    (
        "CircleMixturePrior",
        dict(z_dim=2, num_components=0),
        "the mixture prior's num_components must be at least 1, got 0.",
    ),
    (
        "UniformPrior",
        dict(z_dim=2, low=1.0, high=1.0),
        "the uniform prior's high must be more than 1, got 1.0; the uniform prior needs low < "
        "high.",
    ),
]


@pytest.mark.parametrize(
    "name, settings, message", REFUSED, ids=[f"{c}-{next(iter(s))}" for c, s, _ in REFUSED]
)
def test_library_settings_are_refused_in_the_checks_words(name, settings, message):
    with pytest.raises(ConfigError) as info:
        _models()[name](**settings)
    assert str(info.value) == message
