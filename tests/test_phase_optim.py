"""Optimizer settings per phase are the run's (``FitConfig.phase_optim``), not the model's.

The adversarial models' constructors took ``lr``, ``d_lr``, ``g_lr``, ``c_lr`` and
``betas`` before (issue 29); a run gives them now: ``fit(gan, data,
phase_optim={"D": {"lr": 1e-4}})``. These tests check that such a run trains as a phase
that carries the same settings itself, that the settings are recorded, checked before
training and resumed like ``lr``, that Lightning's module honours them, and that the
checkpoints and model folders written with the old constructor arguments still load.

``tests/data/before_issue29/`` holds what probgen wrote at commit 1279d7c (the
constructors with learning rates): ``gan.pt``, the checkpoint of a one-epoch run of a GAN
built with ``d_lr=1e-4, g_lr=2e-4, betas=(0.4, 0.9)``, and ``gan_folder``, its
``save_pretrained`` folder. They were made by running, in a checkout of that commit::

    torch.manual_seed(0)
    gan = GAN(data_shape=(2,), z_dim=2, net="mlp", g_hidden=[4], d_hidden=[4],
              output="identity", data_range=None, d_lr=1e-4, g_lr=2e-4, betas=(0.4, 0.9))
    probgen.fit(gan, TensorData(torch.randn(16, 2)), epochs=1, batch_size=8,
                checkpoint="gan.pt", progress=False, verbose=False, device="cpu", seed=0)
    gan.save_pretrained("gan_folder")
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import probgen
from probgen.data import TensorData
from probgen.errors import CheckpointError, ConfigError
from probgen.infer.adversarial import adversarial_phases, player_optim
from probgen.models import AAE, CAAE, GAN, AgeCGAN, FlowGAN, SemiSupervisedAAE
from probgen.models.registry import DROPPED, build_from_config, model_config
from probgen.models.semi_supervised_aae import regularization_optim
from probgen.train import FitConfig, Phase, PhasedStep

OLD = Path(__file__).resolve().parent / "data" / "before_issue29"
QUIET = dict(progress=False, verbose=False, device="cpu")
NO_MONITOR = dict(patience=None, restore_best=False)


def tiny_gan(seed: int = 0) -> GAN:
    torch.manual_seed(seed)
    return GAN(
        data_shape=(2,),
        z_dim=2,
        net="mlp",
        g_hidden=[8],
        d_hidden=[8],
        output="identity",
        data_range=None,
    )


def toy() -> TensorData:
    return TensorData(torch.randn(48, 2, generator=torch.Generator().manual_seed(3)))


def weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def largest_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


class OwnSettings(PhasedStep):
    """The GAN's phases carrying the settings themselves (what ``GAN(d_lr=..., betas=...)``
    built before): the reference a ``phase_optim`` run must equal."""

    def __init__(self, gan: GAN, **settings):
        super().__init__(
            gan,
            adversarial_phases(
                gan.discriminator, gan.generator, gan.real, gan.fake, gan.spec, k=gan.k, **settings
            ),
        )


# --------------------------------------------------------------------------- the runs


def test_phase_optim_trains_as_phases_that_carry_the_settings():
    """``phase_optim`` gives the D phase its lr and the G phase its betas: the weights equal
    those of the phases built with ``d_lr`` and ``betas`` (the old constructors' way), and
    differ from a run without them (so the comparison can tell)."""
    start = tiny_gan()
    by_config, by_phases, plain = (copy.deepcopy(start) for _ in range(3))
    run = dict(epochs=2, batch_size=16, lr=2e-3, seed=1, **NO_MONITOR, **QUIET)
    result = probgen.fit(
        by_config, toy(), **run, phase_optim={"D": {"lr": 5e-4}, "G": {"betas": (0.2, 0.9)}}
    )
    probgen.fit(OwnSettings(by_phases, d_lr=5e-4, betas=(0.5, 0.999)), toy(), **run)
    # the reference's G phase needs its own betas: build its step's phases by hand
    ref = copy.deepcopy(start)
    d, _ = adversarial_phases(
        ref.discriminator, ref.generator, ref.real, ref.fake, ref.spec, d_lr=5e-4
    )
    _, g = adversarial_phases(
        ref.discriminator, ref.generator, ref.real, ref.fake, ref.spec, betas=(0.2, 0.9)
    )
    probgen.fit(PhasedStep(ref, [d, g]), toy(), **run)
    probgen.fit(plain, toy(), **run)
    assert largest_difference(weights(by_config), weights(ref)) == 0.0
    assert largest_difference(weights(by_config), weights(by_phases)) > 1e-5  # G's betas
    assert largest_difference(weights(by_config), weights(plain)) > 1e-4
    # recorded as JSON keeps it (tuples as lists), and the history's lr is D's
    assert result.config.phase_optim == {"D": {"lr": 5e-4}, "G": {"betas": [0.2, 0.9]}}
    assert result.history[-1]["lr"] == 5e-4


def test_phase_optim_overrides_the_phases_own_settings_and_optimizer():
    """``lr`` replaces a phase's own lr (and an lr in its optim_kwargs), other keys merge
    over its optim_kwargs, ``optimizer`` replaces its optimizer: the optimizer fit builds
    shows each."""
    net = torch.nn.Linear(2, 1)
    seen = {}

    def loss(batch, ctx):
        return net(batch[0]).pow(2).mean()

    sgd = {"momentum": 0.5, "weight_decay": 0.1, "maximize": True}
    step = PhasedStep(
        net,
        [
            Phase("a", loss, params=net, lr=0.5, optim_kwargs={"betas": (0.9, 0.99), "eps": 1e-3}),
            Phase("b", loss, params=net, optimizer="sgd", optim_kwargs={"lr": 0.3, **sgd}),
            # switched to Adam without an lr: each keeps its own (in optim_kwargs, or lr=)
            Phase("c", loss, params=net, optimizer="sgd", optim_kwargs={"lr": 0.3, **sgd}),
            Phase("d", loss, params=net, lr=0.4, optimizer="sgd", optim_kwargs=sgd),
        ],
    )

    class Look(probgen.train.Callback):
        def on_epoch_end(self, run, entry):
            for st in run.phases:
                seen[st.phase.name] = (
                    type(st.optimizer).__name__,
                    dict(st.optimizer.param_groups[0]),
                )

    probgen.fit(
        step,
        TensorData(torch.randn(8, 2)),
        epochs=1,
        batch_size=8,
        callbacks=[Look()],
        phase_optim={
            "a": {"lr": 0.01, "betas": [0.1, 0.2]},
            "b": {"lr": 0.02, "optimizer": "adam"},
            "c": {"optimizer": "adam"},
            "d": {"optimizer": "adam"},
        },
        **NO_MONITOR,
        **QUIET,
    )
    kind, a = seen["a"]
    assert kind == "Adam" and a["lr"] == 0.01 and a["betas"] == (0.1, 0.2) and a["eps"] == 1e-3
    # a switched phase has Adam's own settings but its learning rate: none of the SGD
    # settings Adam also takes (weight_decay, maximize) carried over
    adam = dict(torch.optim.Adam([torch.zeros(1, requires_grad=True)]).param_groups[0])
    for name, lr in (("b", 0.02), ("c", 0.3), ("d", 0.4)):
        kind, group = seen[name]
        assert kind == "Adam" and group["lr"] == lr, name
        assert {k: v for k, v in group.items() if k not in ("lr", "params")} == {
            k: v for k, v in adam.items() if k not in ("lr", "params")
        }, name


def test_phase_optim_round_trips_through_json():
    cfg = FitConfig(lr=2e-4, phase_optim={"D": {"lr": 1e-4}, "G": {"betas": (0.5, 0.99)}})
    again = FitConfig.from_json(cfg.to_json())
    assert again == cfg and again.phase_optim["G"]["betas"] == [0.5, 0.99]
    assert "phase_optim" in cfg.explicit() and "phase_optim" not in FitConfig().explicit()


def test_numpy_arrays_and_tensors_in_phase_optim_are_recorded_as_lists(tmp_path):
    """A numpy array or a tensor is kept as the list it holds (a 0-d one as its number):
    the run trains with it, records it as JSON, and resumes with either form."""
    ckpt = str(tmp_path / "run.pt")
    run = dict(batch_size=16, seed=1, checkpoint=ckpt, **NO_MONITOR, **QUIET)
    as_tensors = {
        "D": {"lr": torch.tensor(2.0**-12, requires_grad=True)},
        "G": {"betas": torch.tensor([0.5, 0.75])},
    }
    result = probgen.fit(tiny_gan(), toy(), epochs=1, phase_optim=as_tensors, **run)
    recorded = {"D": {"lr": 2.0**-12}, "G": {"betas": [0.5, 0.75]}}
    assert result.config.phase_optim == recorded
    assert FitConfig.from_json(result.config.to_json()).phase_optim == recorded
    as_arrays = {"D": {"lr": np.float32(2.0**-12)}, "G": {"betas": np.array([0.5, 0.75])}}
    again = probgen.fit(tiny_gan(), toy(), epochs=2, resume=True, phase_optim=as_arrays, **run)
    assert again.epochs_run == 2 and again.config.phase_optim == recorded
    groups = [p["optimizer"]["param_groups"][0] for p in torch.load(ckpt)["phases"]]
    assert groups[0]["lr"] == 2.0**-12 and groups[1]["betas"] == (0.5, 0.75)


@pytest.mark.parametrize(
    "phase_optim, words",
    [
        ({"X": {"lr": 1e-3}}, ["phase_optim names 'X'", "its phases are 'D', 'G'"]),
        ({"D": 1e-3}, ["phase_optim['D'] must be a dict of optimizer settings"]),
        ({"D": {"lr": 0.0}}, ["phase_optim['D']['lr'] must be more than 0"]),
        ({"D": {"lr": math.inf}}, ["phase_optim['D']['lr'] must be a finite number"]),
        ({"D": {"lr": "fast"}}, ["phase_optim['D']['lr']"]),
        ({"G": {"momentum": 0.9}}, ["phase_optim['G']", "Adam refuses", "momentum"]),
        ({"G": {"betas": [0.5, 1.5]}}, ["phase_optim['G']", "Adam refuses", "beta"]),
        # torch refuses these with IndexError and RuntimeError
        ({"G": {"betas": [0.5]}}, ["phase_optim['G']", "Adam refuses", "index out of range"]),
        (
            {"G": {"fused": True, "foreach": True}},
            ["phase_optim['G']", "Adam refuses", "`fused` and `foreach` cannot be `True`"],
        ),
        # not JSON data: the run could not record it
        ({"G": {"betas": [0.5, object()]}}, ["phase_optim['G']['betas'][1]", "type object"]),
        ({"G": {"eps": {"value": 1e-8}}}, ["phase_optim['G']['eps']", "type dict"]),
        ({"G": {"betas": {0.5, 0.9}}}, ["phase_optim['G']['betas']", "type set"]),
        ({"G": {"optimizer": "lbfgs"}}, ["phase_optim['G']['optimizer']", "lbfgs"]),
        ([("D", {"lr": 1e-3})], ["phase_optim must be a dict of phase name"]),
    ],
)
def test_bad_phase_optim_is_one_line_before_training(phase_optim, words, tmp_path):
    gan = tiny_gan()
    before = weights(gan)
    with pytest.raises(ConfigError) as err:
        probgen.fit(
            gan,
            toy(),
            epochs=1,
            batch_size=16,
            checkpoint=str(tmp_path / "r.pt"),
            phase_optim=phase_optim,
            **NO_MONITOR,
            **QUIET,
        )
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message
    assert largest_difference(weights(gan), before) == 0.0  # nothing trained
    assert not (tmp_path / "r.pt").exists()


# --------------------------------------------------------------------------- resume


def test_resume_applies_a_new_phase_lr_and_refuses_other_new_settings(tmp_path, capsys):
    """As ``lr``: a resumed run may change a phase's learning rate (applied, said in one
    line), not its other optimizer settings (one line naming the phase)."""
    ckpt = str(tmp_path / "run.pt")
    run = dict(batch_size=16, lr=1e-3, seed=1, checkpoint=ckpt, **NO_MONITOR, **QUIET)
    probgen.fit(tiny_gan(), toy(), epochs=1, phase_optim={"D": {"lr": 1e-3}}, **run)
    resumed = probgen.fit(
        tiny_gan(),
        toy(),
        epochs=2,
        resume=True,
        phase_optim={"D": {"lr": 2e-4}},
        **dict(run, verbose=True),
    )
    assert [h["lr"] for h in resumed.history] == [1e-3, pytest.approx(2e-4)]
    assert "with phase 'D': lr 0.0002 (the checkpoint ran with 0.001)" in capsys.readouterr().out
    with pytest.raises(
        CheckpointError,
        match=r"phase_optim\['G'\]: \{\} in the checkpoint, "
        r"\{'betas': \[0.1, 0.9\]\} now",
    ):
        probgen.fit(
            tiny_gan(),
            toy(),
            epochs=3,
            resume=True,
            phase_optim={"D": {"lr": 2e-4}, "G": {"betas": [0.1, 0.9]}},
            **run,
        )


def test_resume_with_an_unchanged_phase_optim_continues_the_run(tmp_path, capsys):
    """Stopped after one epoch and resumed with the same ``phase_optim``: the weights of
    the uninterrupted run. Resumed with another run ``lr``, the D phase keeps its own
    rate (not scaled by the new run lr) and G, which follows the run's, moves to it."""
    settings = dict(
        batch_size=16, lr=1e-3, seed=1, phase_optim={"D": {"lr": 3e-4}}, **NO_MONITOR, **QUIET
    )
    whole = tiny_gan()
    probgen.fit(whole, toy(), epochs=2, **settings)
    ckpt, other = tmp_path / "run.pt", tmp_path / "other.pt"
    probgen.fit(tiny_gan(), toy(), epochs=1, checkpoint=str(ckpt), **settings)
    shutil.copy(ckpt, other)
    again = tiny_gan()
    probgen.fit(again, toy(), epochs=2, checkpoint=str(ckpt), resume=True, **settings)
    assert largest_difference(weights(whole), weights(again)) < 1e-6
    capsys.readouterr()
    result = probgen.fit(
        tiny_gan(),
        toy(),
        epochs=2,
        checkpoint=str(other),
        resume=True,
        **dict(settings, lr=2e-3, verbose=True),
    )
    assert phase_rates(other) == {"D": 3e-4, "G": 2e-3}
    assert [h["lr"] for h in result.history] == [3e-4, 3e-4]  # the history's lr is D's
    out = capsys.readouterr().out
    assert "with lr 0.002 (the checkpoint ran with 0.001)" in out and "phase 'D'" not in out


def phase_rates(ckpt) -> dict:
    """Each phase's learning rate as the checkpoint's optimizers hold it."""
    return {p["name"]: p["optimizer"]["param_groups"][0]["lr"] for p in torch.load(ckpt)["phases"]}


def test_a_phases_own_lr_changed_between_runs_is_applied_from_the_rate_it_ran_with(
    tmp_path, capsys
):
    """A ready-made step whose ``Phase(lr=...)`` changed between the runs: the resumed
    phase goes on at the new rate (the checkpoint records the rate the phase started
    with; today's phase cannot say it)."""
    net = torch.nn.Linear(2, 1)

    def loss(batch, ctx):
        return net(batch[0]).pow(2).mean()

    def step(lr):
        return PhasedStep(net, [Phase("a", loss, params=net, lr=lr)])

    ckpt = tmp_path / "run.pt"
    data = TensorData(torch.randn(8, 2))
    run = dict(batch_size=4, checkpoint=str(ckpt), **NO_MONITOR, **QUIET)
    probgen.fit(step(0.1), data, epochs=1, **run)
    result = probgen.fit(step(0.05), data, epochs=2, resume=True, **dict(run, verbose=True))
    assert [h["lr"] for h in result.history] == [0.1, 0.05]
    assert "with phase 'a': lr 0.05 (the checkpoint ran with 0.1)" in capsys.readouterr().out
    entry = torch.load(ckpt)["phases"][0]
    assert entry["lr_setting"] == entry["initial_lr"] == 0.05


# --------------------------------------------------------------------------- players


@pytest.mark.parametrize(
    "build, d_names, g_names",
    [
        (lambda: tiny_gan(), ["D"], ["G"]),
        (
            lambda: AAE(image_shape=(4,), z_dim=2, hidden=(8,), d_hidden=(8,)),
            ["discriminator"],
            ["generator"],
        ),
        (
            lambda: SemiSupervisedAAE(
                image_shape=(4,), num_classes=3, z_dim=2, hidden=(8,), d_hidden=(8,)
            ),
            ["discriminator_z", "discriminator_y"],
            ["generator_z", "generator_y"],
        ),
        (
            lambda: AgeCGAN(
                image_shape=(1, 8, 8), num_levels=2, z_dim=2, g_width=4, d_width=4, e_width=4
            ),
            ["D"],
            ["G"],
        ),
        (
            lambda: CAAE(
                image_shape=(1, 8, 8),
                num_levels=2,
                z_dim=2,
                hidden=(8,),
                net="mlp",
                d_hidden=(8,),
                d_img_width=4,
            ),
            ["discriminator_z", "discriminator_img"],
            ["encoder_generator"],
        ),
    ],
)
def test_player_optim_names_each_models_players(build, d_names, g_names):
    model = build()
    po = player_optim(model, d_lr=1e-4, g_lr=2e-4, betas=(0.5, 0.9))
    assert po == {
        **{n: {"lr": 1e-4, "betas": [0.5, 0.9]} for n in d_names},
        **{n: {"lr": 2e-4, "betas": [0.5, 0.9]} for n in g_names},
    }
    assert player_optim(model) is None


def test_player_optim_refuses_a_player_the_phases_lack():
    flow_only = FlowGAN("realnvp", event_shape=(1, 28, 28), adv_weight=0.0, depth=1, hidden=4)
    assert player_optim(flow_only, g_lr=1e-3) == {"G": {"lr": 1e-3}}
    with pytest.raises(
        ConfigError, match="d_lr is set, but the phases \\(G\\) have no discriminator"
    ):
        player_optim(flow_only, d_lr=1e-3)


@pytest.mark.parametrize(
    "betas, words",
    [
        (0.5, "betas must be a pair of numbers in [0, 1)"),
        ((0.5, 0.9, 0.99), "betas must be a pair of numbers in [0, 1)"),
        ("ab", "betas must be a pair of numbers in [0, 1)"),
        ((0.5, 1.0), "betas[1] must lie in [0, 1), got 1.0"),
        ((-0.1, 0.9), "betas[0] must lie in [0, 1), got -0.1"),
        ((0.5, "x"), "betas[1] must be a number"),
    ],
)
def test_player_optim_refuses_betas_that_are_no_pair_in_one_line(betas, words):
    with pytest.raises(ConfigError) as err:
        player_optim(tiny_gan(), betas=betas)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_player_optim_takes_betas_as_an_array_and_refuses_them_without_players():
    assert player_optim(tiny_gan(), betas=np.array([0.5, 0.75])) == {
        "D": {"betas": [0.5, 0.75]},
        "G": {"betas": [0.5, 0.75]},
    }
    net = torch.nn.Linear(2, 1)
    plain = [Phase("a", lambda b, ctx: net(b[0]).sum(), params=net)]
    with pytest.raises(ConfigError, match=r"betas is set, but the phases \(a\) have no player"):
        player_optim(plain, betas=(0.5, 0.9))
    assert player_optim(plain) is None


def test_regularization_optim_is_a_tenth_of_the_run_lr_by_default():
    model = SemiSupervisedAAE(image_shape=(4,), num_classes=3, z_dim=2, hidden=(8,), d_hidden=(8,))
    po = regularization_optim(model, 1e-3, g_lr=5e-4)
    assert po == {
        "discriminator_z": {"lr": pytest.approx(1e-4)},
        "discriminator_y": {"lr": pytest.approx(1e-4)},
        "generator_z": {"lr": 5e-4},
        "generator_y": {"lr": 5e-4},
    }


# --------------------------------------------------------------------------- old files


def test_a_checkpoint_written_with_the_old_learning_rate_arguments_loads():
    """``gan.pt`` records ``d_lr``, ``g_lr`` and ``betas`` among the GAN's settings (see
    the module docstring): probgen.load rebuilds the GAN without them, with its weights;
    so does from_pretrained its folder."""
    saved = torch.load(OLD / "gan.pt", weights_only=False)
    assert {"d_lr", "g_lr", "betas"} <= set(saved["model"]["args"])
    gan = probgen.load(OLD / "gan.pt")
    assert isinstance(gan, GAN) and not gan.training
    weights_saved = saved["module"]
    assert all(torch.equal(gan.state_dict()[k], v) for k, v in weights_saved.items())
    folder = probgen.from_pretrained(OLD / "gan_folder")
    config = json.loads((OLD / "gan_folder" / "config.json").read_text())
    assert config["model"]["args"]["d_lr"] == 1e-4
    assert largest_difference(weights(folder), weights(gan)) == 0.0


def resume_old_gan(ckpt, epochs: int, **settings):
    """Resume (a copy of) ``gan.pt`` with today's GAN, built as the module docstring's."""
    torch.manual_seed(0)
    gan = GAN(
        data_shape=(2,),
        z_dim=2,
        net="mlp",
        g_hidden=[4],
        d_hidden=[4],
        output="identity",
        data_range=None,
    )
    run = dict(batch_size=8, checkpoint=str(ckpt), resume=True, seed=0, **QUIET)
    return probgen.fit(gan, TensorData(torch.randn(16, 2)), epochs=epochs, **{**run, **settings})


def test_an_old_checkpoint_resumes_with_the_model_without_its_learning_rates(tmp_path):
    """Resuming ``gan.pt`` with the GAN built today: its recorded ``d_lr`` is no
    difference of the model's settings (it never shaped the model)."""
    ckpt = tmp_path / "gan.pt"
    shutil.copy(OLD / "gan.pt", ckpt)
    result = resume_old_gan(ckpt, 2)
    assert result.epochs_run == 2
    # the optimizer state carries on: D's lr as the old run set it
    assert result.history[-1]["lr"] == pytest.approx(1e-4)


def test_an_old_checkpoint_resumed_with_phase_optim_keeps_the_rate_it_ran_with(tmp_path, capsys):
    """``gan.pt`` ran D at 1e-4 and G at 2e-4 (``GAN(d_lr=1e-4, g_lr=2e-4)``) under a run
    ``lr`` of 1e-3, and records no phase's starting rate: ``phase_optim`` giving those
    rates again leaves them (scaled from the rate the phase ran with, not from the run's
    ``lr``), and a new one is applied from it."""
    ckpt = tmp_path / "gan.pt"
    shutil.copy(OLD / "gan.pt", ckpt)
    resume_old_gan(ckpt, 2, phase_optim={"D": {"lr": 1e-4}}, verbose=True)
    assert "with phase 'D': lr 0.0001 (the checkpoint ran with 0.0001)" in capsys.readouterr().out
    assert phase_rates(ckpt) == {"D": 1e-4, "G": 2e-4}
    # what the run's settings gave each phase, and the rate it started with
    entries = torch.load(ckpt)["phases"]
    assert [(p["lr_setting"], p["initial_lr"]) for p in entries] == [(1e-4, 1e-4), (1e-3, 2e-4)]
    # D's new rate is applied from 1e-4; G's settings are as they were: it goes on
    resume_old_gan(ckpt, 3, phase_optim={"D": {"lr": 5e-5}})
    assert phase_rates(ckpt) == {"D": 5e-5, "G": 2e-4}
    # resumed first as it was (D goes on at 1e-4 though the run's lr is 1e-3): the
    # checkpoint it writes records 1e-4 as D's starting rate, so a later phase_optim
    # giving 1e-4 changes nothing
    shutil.copy(OLD / "gan.pt", ckpt)
    resume_old_gan(ckpt, 2)
    assert phase_rates(ckpt) == {"D": 1e-4, "G": 2e-4}
    resume_old_gan(ckpt, 3, phase_optim={"D": {"lr": 1e-4}})
    assert phase_rates(ckpt) == {"D": 1e-4, "G": 2e-4}


def test_an_old_checkpoint_resumes_with_the_betas_it_ran_with(tmp_path):
    """``gan.pt``'s phases ran with betas (0.4, 0.9) and its settings record no
    ``phase_optim``: a ``phase_optim`` giving those betas continues it; other betas are
    refused, the message saying what the optimizer ran with."""
    ckpt = tmp_path / "gan.pt"
    shutil.copy(OLD / "gan.pt", ckpt)
    both = {"D": {"betas": (0.4, 0.9)}, "G": {"betas": [0.4, 0.9]}}
    assert resume_old_gan(ckpt, 2, phase_optim=both).epochs_run == 2
    # the resumed run records them: it resumes with them again, not without
    assert resume_old_gan(ckpt, 3, phase_optim=both).epochs_run == 3
    with pytest.raises(CheckpointError, match=r"phase_optim\['D'\]"):
        resume_old_gan(ckpt, 4, phase_optim={"G": {"betas": [0.4, 0.9]}})
    shutil.copy(OLD / "gan.pt", ckpt)
    with pytest.raises(
        CheckpointError,
        match=r"phase_optim\['G'\]: \{\} in the checkpoint \(its optimizer ran with "
        r"\{'betas': \(0.4, 0.9\)\}\), \{'betas': \[0.5, 0.9\]\} now",
    ):
        resume_old_gan(ckpt, 2, phase_optim={"G": {"betas": [0.5, 0.9]}})


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (
            GAN,
            dict(
                data_shape=(2,),
                z_dim=2,
                net="mlp",
                g_hidden=[4],
                d_hidden=[4],
                output="identity",
                data_range=None,
            ),
        ),
        (FlowGAN, dict(flow="realnvp", event_shape=(1, 28, 28), depth=1, hidden=4)),
        (AAE, dict(image_shape=(4,), z_dim=2, hidden=(8,), d_hidden=(8,))),
        (
            SemiSupervisedAAE,
            dict(image_shape=(4,), num_classes=3, z_dim=2, hidden=(8,), d_hidden=(8,)),
        ),
        (
            AgeCGAN,
            dict(image_shape=(1, 8, 8), num_levels=2, z_dim=2, g_width=4, d_width=4, e_width=4),
        ),
        (
            CAAE,
            dict(
                image_shape=(1, 8, 8),
                num_levels=2,
                z_dim=2,
                hidden=(8,),
                net="mlp",
                d_hidden=(8,),
                d_img_width=4,
            ),
        ),
    ],
)
def test_settings_recorded_with_the_old_learning_rates_rebuild(cls, kwargs):
    """Every model whose constructor lost its learning rates: its settings as an earlier
    probgen recorded them (each dropped argument set) rebuild the same model."""
    model = cls(**kwargs)
    config = model_config(model)
    path = config["__probgen_model__"]
    old = dict(config["args"])
    for name in DROPPED[path]:
        old[name] = [0.4, 0.9] if name == "betas" else 1e-4
    rebuilt = build_from_config({"__probgen_model__": path, "args": old})
    assert type(rebuilt) is cls and model_config(rebuilt) == config
    # the old arguments are what the table drops: the constructor refuses each today
    # (FlowGAN hands unknown keywords to its flow's builder, which refuses them)
    for name in DROPPED[path]:
        with pytest.raises((TypeError, ConfigError)):
            cls(**kwargs, **{name: old[name]})
