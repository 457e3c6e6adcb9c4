"""probgen's figures leave the user's matplotlib alone: they never select or switch
the backend (a notebook's inline figures keep working after any of them), leave no
figure open in pyplot, and still write their files headless."""

import importlib.util

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

from probgen import viz
from probgen.errors import DataError

PNG = b"\x89PNG\r\n\x1a\n"
BACKENDS = ["svg", "pdf"]
if importlib.util.find_spec("matplotlib_inline") is not None:
    BACKENDS.append("module://matplotlib_inline.backend_inline")  # Jupyter's inline figures


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)


class _Conditional:
    """A label-conditional decoder: the code's first value and the label in two pixels."""

    num_labels, device = 3, torch.device("cpu")

    def prior_sample(self, n, labels=None):
        return torch.rand(n, 2)

    def decode(self, z, labels):
        x = torch.zeros(z.shape[0], 1, 28, 28)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = z[:, 0], labels.float() / 2
        return x


def _figures():
    """Every figure function of probgen.viz, each called with small valid inputs."""
    g = torch.Generator().manual_seed(0)
    x = _images(6)
    hist = [{"epoch": e, "train_loss": 10.0 - e, "val_loss": 11.0 - e} for e in range(3)]
    labels = torch.arange(40) % 10
    density, _ = viz.density_on_grid(lambda p: -0.5 * (p**2).sum(1), resolution=20)
    pts = torch.randn(200, 2, generator=g)
    return {
        "rows_figure": lambda path: viz.rows_figure({"a": x, "b": x.flip(0)}, path, title="t"),
        "grid_figure": lambda path: viz.grid_figure(x, nrow=3, path=path, title="t"),
        "completion_figure": lambda path: viz.completion_figure(
            x[:3], x[:3], {"NN": x[:3], "CVAE": x[:6].reshape(2, 3, 1, 28, 28)}, path, title="t"
        ),
        "learning_curves": lambda path: viz.learning_curves({"run": hist}, path),
        "history_figure": lambda path: viz.history_figure(
            {"a": hist, "b": hist[:2]}, ["train_loss", ("train_loss", "val_loss")], path, title="t"
        ),
        "phase_losses_figure": lambda path: viz.phase_losses_figure(
            [dict(h, **{"train_loss/D": 1.0, "train_loss/G": 2.0}) for h in hist], path
        ),
        "fid_curve_figure": lambda path: viz.fid_curve_figure(
            {"run": [dict(h, fid=5.0 - h["epoch"], seconds=1.0) for h in hist]}, path
        ),
        "discriminator_figure": lambda path: viz.discriminator_figure(
            {"epoch 1": {"samples": torch.randn(100, 1, generator=g), "d": torch.rand(9)}},
            torch.linspace(-5, 5, 9),
            torch.full((9,), 0.1),
            path,
            title="t",
        ),
        "kl_map_figure": lambda path: viz.kl_map_figure(
            torch.rand(2, 1, 16, 16, generator=g),
            {
                "kl": torch.rand(2, 4, 4, generator=g),
                "indices": torch.tensor([[0, 5], [3, 9]]),
                "centres": torch.zeros(2, 2, 2),
            },
            4,
            path,
        ),
        "progression_figure": lambda path: viz.progression_figure(
            x[:4].reshape(2, 2, 1, 28, 28),
            {"same": lambda a, s: a[:, None].expand(-1, 2, -1, -1, -1)},
            level=1,
            path=path,
            title="t",
        ),
        "style_figure": lambda path: viz.style_figure(_Conditional(), path, styles=2),
        "tradeoff_figure": lambda path: viz.tradeoff_figure(
            {"w0": (1.1, 30.0), "w1": (20.0, 9.0)}, path, xlabel="bits/dim", ylabel="FID"
        ),
        "latent_scatter": lambda path: viz.latent_scatter(
            {"2-D": torch.randn(40, 2, generator=g), "5-D": torch.randn(40, 5, generator=g)},
            labels,
            path,
            title="t",
        ),
        "manifold_grids": lambda path: viz.manifold_grids(
            {"decoder": lambda z: z.sum(1).sigmoid().view(-1, 1, 1, 1).expand(-1, 1, 28, 28)},
            n=4,
            path=path,
            title="t",
        ),
        "interpolation_figure": lambda path: viz.interpolation_figure({"AE": x}, path, title="t"),
        "pca_vs_autoencoder": lambda path: viz.pca_vs_autoencoder(
            torch.full((200,), 1 / 200), {2: 0.05, 8: 0.03}, {2: 0.04, 8: 0.02}, path
        ),
        "anomaly_figure": lambda path: viz.anomaly_figure(
            torch.randn(100, generator=g), torch.arange(100) % 5 == 0, 0.8, path=path
        ),
        "toy_density_figure": lambda path: viz.toy_density_figure(
            {"moons": pts}, {"moons": {"flow": density}}, path, titles={("moons", "flow"): "t"}
        ),
        "toy_samples_figure": lambda path: viz.toy_samples_figure(
            {"flow": {0.5: pts, 1.0: pts}}, path, title="t"
        ),
        "temperature_grid_figure": lambda path: viz.temperature_grid_figure(
            {0.5: x, 1.0: x}, path, nrow=3, title="t"
        ),
    }


FIGURES = sorted(_figures())


def test_every_figure_function_is_covered():
    public = {
        name
        for name in viz.__all__
        if name.endswith(("_figure", "_curves", "_scatter", "_grids", "_autoencoder"))
    }
    assert public == set(FIGURES)


@pytest.fixture(params=BACKENDS)
def user_backend(request):
    """A backend the user chose (not Agg), restored afterwards."""
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    matplotlib.use(request.param)
    chosen = matplotlib.get_backend()
    assert chosen.lower() != "agg"
    open_before = plt.get_fignums()
    yield chosen
    assert plt.get_fignums() == open_before  # no figure left in pyplot's care
    matplotlib.use(before)


@pytest.mark.parametrize("name", FIGURES)
def test_figure_keeps_the_users_backend_and_writes_its_file(name, user_backend, tmp_path):
    path = tmp_path / "sub" / f"{name}.png"
    fig = _figures()[name](path)
    assert matplotlib.get_backend() == user_backend
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
    # without a path: a figure to show or save later, still nothing switched or left open
    fig = _figures()[name](None)
    assert isinstance(fig, Figure) and matplotlib.get_backend() == user_backend
    fig.savefig(tmp_path / "later.png")
    assert (tmp_path / "later.png").read_bytes()[:8] == PNG


def test_save_closes_a_users_pyplot_figure(tmp_path):
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert fig.number in plt.get_fignums()
    assert viz.save(fig, tmp_path / "mine.png") is fig
    assert fig.number not in plt.get_fignums()
    assert (tmp_path / "mine.png").read_bytes()[:8] == PNG
    assert matplotlib.get_backend() == before


# --------------------------------------------------------------------------- histories


def _lines(ax):
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()), line.get_linestyle())
        for line in ax.lines
    }


def test_phase_losses_figure_draws_each_phase_then_the_extra_figures_recorded():
    a = [
        {"epoch": e, "train_loss/G": 2.0 * e, "train_loss/D": 1.0 + e, "val_loss": 3.0}
        for e in range(3)
    ]
    b = [{"epoch": e, "train_loss/D": 5.0 - e, "val_error": 9.0 - e} for e in range(2)]
    fig = viz.phase_losses_figure(
        {"a": a, "b": b}, extra={"val_error": "class error (%)", "fid": "FID"}
    )
    # phases in name order, val_loss is no phase, fid was never recorded
    assert [ax.get_title() for ax in fig.axes] == [
        "D loss (epoch mean)",
        "G loss (epoch mean)",
        "class error (%)",
    ]
    assert _lines(fig.axes[0]) == {
        "a": ([1, 2, 3], [1.0, 2.0, 3.0], "-"),
        "b": ([1, 2], [5.0, 4.0], "-"),
    }
    assert _lines(fig.axes[2]) == {"b": ([1, 2], [9.0, 8.0], "-")}
    # a key of extra that is a phase's loss is drawn once, under extra's title
    fig = viz.phase_losses_figure(b, extra={"train_loss/D": "D"})
    assert [ax.get_title() for ax in fig.axes] == ["D"]
    # one phase (train_loss alone) and nothing of extra: no panel to draw, said in one line
    with pytest.raises(DataError, match="record no train_loss/<phase>"):
        viz.phase_losses_figure([{"epoch": 0, "train_loss": 1.0}])


def test_history_figure_draws_the_asked_keys_of_every_run():
    a = [
        {"epoch": e, "train_loss/D": 1.0 + e, "train_loss/G": 2.0 * e, "fid": None}
        for e in range(3)
    ]
    a[2]["fid"] = 7.0
    b = [{"epoch": e, "train_loss/D": 5.0 - e} for e in range(2)]
    fig = viz.history_figure(
        {"a": a, "b": b},
        ["train_loss/D", ("train_loss/G", "fid")],
        titles={"train_loss/D": "D loss"},
        styles={"fid": "o:"},
    )
    first, second = fig.axes[:2]
    assert len(fig.axes) == 2 and first.get_title() == "D loss"
    assert first.get_xlabel() == "epoch"
    assert _lines(first) == {"a": ([1, 2, 3], [1.0, 2.0, 3.0], "-"), "b": ([1, 2], [5.0, 4.0], "-")}
    # run b has neither key of the second panel: no line; fid only where it was recorded
    assert _lines(second) == {
        "a train_loss/G": ([1, 2, 3], [0.0, 2.0, 4.0], "-"),
        "a fid": ([3], [7.0], ":"),
    }
    assert [line.get_color() for line in first.lines] == ["C0", "C1"]
    assert second.get_legend() is not None
    # one bare history, another x, a log axis
    fig = viz.history_figure(
        a,
        [("train_loss/D", "train_loss/G")],
        x=lambda h: [10 * h_["epoch"] for h_ in h],
        xlabel="steps",
        logy=True,
        styles="--",
    )
    ax = fig.axes[0]
    assert _lines(ax) == {
        "train_loss/D": ([0, 10, 20], [1.0, 2.0, 3.0], "--"),
        "train_loss/G": ([0, 10, 20], [0.0, 2.0, 4.0], "--"),
    }
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "steps"


def test_learning_curves_is_train_dashed_and_validation_solid():
    hist = [{"epoch": e, "train_loss": 10.0 - e, "val_loss": 11.0 - e} for e in range(3)]
    no_val = [{"epoch": e, "train_loss": 3.0, "val_loss": None} for e in range(2)]
    fig = viz.learning_curves({"vae": hist, "ae": no_val}, ylabel="nats")
    ax = fig.axes[0]
    assert _lines(ax) == {
        "vae train": ([1, 2, 3], [10.0, 9.0, 8.0], "--"),
        "vae val": ([1, 2, 3], [11.0, 10.0, 9.0], "-"),
        "ae train": ([1, 2], [3.0, 3.0], "--"),
    }
    assert ax.get_ylabel() == "nats"


def test_training_minutes_and_the_fid_curve():
    cpu = [
        {
            "epoch": e,
            "seconds": 100.0,
            "cpu_seconds": 30.0 * (e + 1),
            "fid": 9.0 - e,
            "fid_seconds": 50.0,
        }
        for e in range(3)
    ]
    assert viz.training_minutes(cpu) == pytest.approx([0.5, 1.5, 3.0])
    wall = [{"epoch": e, "seconds": 90.0, "fid_seconds": 30.0, "fid": None} for e in range(3)]
    wall[1]["fid"] = wall[2]["fid"] = 4.0
    del wall[0]["fid_seconds"]  # no FID that epoch: all of its time was training
    assert viz.training_minutes(wall) == pytest.approx([1.5, 2.5, 3.5])
    assert viz.training_minutes(wall, leave_out=()) == pytest.approx([1.5, 3.0, 4.5])
    live = [dict(h, fid_live=h["fid"] + 1) for h in cpu]
    fig = viz.fid_curve_figure({"ema": live, "wall": wall}, name="FID, MNIST")
    by_epoch, by_time = fig.axes[:2]
    assert _lines(by_epoch)["ema"] == ([1, 2, 3], [9.0, 8.0, 7.0], "-")
    assert _lines(by_epoch)["ema, live G"][:2] == ([1, 2, 3], [10.0, 9.0, 8.0])
    assert _lines(by_time)["ema"][0] == pytest.approx([0.5, 1.5, 3.0])
    assert _lines(by_time)["wall"][0] == pytest.approx([2.5, 3.5])
    assert "wall, live G" not in _lines(by_time)
    assert by_time.get_xlabel() == "training minutes"  # not every run has CPU seconds
    assert by_epoch.get_ylabel() == "FID, MNIST" and by_epoch.get_yscale() == "log"


def test_tradeoff_figure_turns_logarithmic_over_a_wide_range():
    ax = viz.tradeoff_figure({"a": (1.0, 3.0), "b": (2.0, 1.0)}).axes[0]
    assert ax.get_xscale() == "linear"
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines] == [
        (1.0, 3.0),
        (2.0, 1.0),
    ]
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    assert viz.tradeoff_figure({"a": (1.0, 3.0), "b": (20.0, 1.0)}).axes[0].get_xscale() == "log"


def test_discriminator_figure_draws_each_snapshot():
    grid = torch.linspace(-5, 5, 11)
    shots = {
        f"epoch {e}": {"samples": torch.full((50, 1), float(e)), "d": grid.sigmoid()}
        for e in (1, 4)
    }
    target = torch.distributions.Normal(-1.0, 1.0).log_prob(grid).exp()
    fig = viz.discriminator_figure(shots, grid, target, target_label="N(-1, 1)")
    assert len(fig.axes) == 2
    for ax, e in zip(fig.axes, (1, 4)):
        lines = _lines(ax)
        assert lines["D(x)"][1] == pytest.approx(grid.sigmoid().tolist())
        assert lines["N(-1, 1)"][1] == pytest.approx(target.tolist())
        assert ax.get_title() == f"epoch {e}: mean {e:.3f}, std 0.000"
        # the histogram's mass sits in the bin of the samples' value
        heights = [patch.get_height() for patch in ax.patches]
        assert max(heights) > 0 and sum(h > 0 for h in heights) == 1


@pytest.mark.parametrize("loss", ["non_saturating", "wgan_gp"])
def test_discriminator_snapshot_draws_fixed_noise_and_d_in_the_unit_interval(loss):
    from probgen.models import GAN

    gan = GAN(
        data_shape=(1,),
        net="mlp",
        loss=loss,
        z_dim=1,
        prior="uniform",
        output="identity",
        data_range=None,
        g_hidden=(8,),
        d_hidden=(8,),
    )
    grid = torch.linspace(-5, 5, 41)
    state = torch.get_rng_state()
    shot = viz.discriminator_snapshot(gan, 30, seed=7, grid=grid)
    again = viz.discriminator_snapshot(gan, 30, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # its own generator
    assert set(again) == {"samples"} and torch.equal(shot["samples"], again["samples"])
    assert torch.equal(shot["samples"], gan.sample(30, generator=torch.Generator().manual_seed(7)))
    d = gan.discriminate(grid[:, None]).detach()
    if loss == "non_saturating":  # a probability, as it is
        assert torch.equal(shot["d"], d)
    else:  # a critic, rescaled to [0, 1]
        assert shot["d"].min() == 0 and shot["d"].max() == 1
        assert torch.allclose(shot["d"], (d - d.min()) / (d.max() - d.min()))


def test_style_codes_and_figure_hold_a_style_along_each_row():
    model = _Conditional()
    state = torch.get_rng_state()
    z, labels = viz.style_codes(model, styles=2, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # a forked random state
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    # every label of a row drew the same numbers (seed + row)
    for row, seed in ((z[:3], 5), (z[3:], 6)):
        torch.manual_seed(seed)
        assert torch.equal(row, torch.rand(1, 2).expand(3, 2))
    torch.set_rng_state(state)
    fig = viz.style_figure(model, styles=2, seed=5)
    grid = fig.axes[0].images[0].get_array()
    # a 2 x 3 grid of 28 x 28 images with 1-pixel gaps: row r, column c at (29 r, 29 c)
    for r in range(2):
        for c in range(3):
            assert grid[29 * r, 29 * c + 1, 0] == pytest.approx(c / 2)
            assert grid[29 * r, 29 * c, 0] == pytest.approx(float(z[3 * r, 0]), abs=1e-6)


def test_aae_figures_writes_what_the_model_has(tmp_path):
    from types import SimpleNamespace

    class Plain:
        z_dim, label_to_decoder = 2, False

        def decode(self, z):
            return z.sum(1).sigmoid().view(-1, 1, 1, 1).expand(-1, 1, 28, 28)

    g = torch.Generator().manual_seed(0)
    report = SimpleNamespace(
        codes=torch.randn(50, 2, generator=g),
        labels=torch.arange(50) % 10,
        prior_draws=torch.randn(50, 2, generator=g),
        prior_labels=None,
        samples=_images(20),
    )
    figs = viz.aae_figures(Plain(), report, tmp_path, "t")
    assert set(figs) == {"codes", "manifold", "samples"}
    assert {p.name for p in tmp_path.iterdir()} == {
        "codes_t.png",
        "manifold_t.png",
        "samples_t.png",
    }
    codes, prior = figs["codes"].axes[:2]
    assert codes.get_xlim() == prior.get_xlim() == codes.get_ylim()  # one square frame
    assert [c.get_offsets().shape[0] for c in codes.collections] == [50]
    conditional = _Conditional()
    conditional.z_dim, conditional.label_to_decoder = 3, True
    figs = viz.aae_figures(conditional, report, tmp_path / "c", "c")
    assert set(figs) == {"codes", "style", "samples"}


def test_manifold_codes_around_a_priors_draws():
    draws = torch.stack([torch.linspace(-10, 10, 1001), torch.linspace(0, 1, 1001)], 1)
    z = viz.manifold_codes(3, around=draws)
    lo, hi = torch.quantile(draws, 0.01, dim=0), torch.quantile(draws, 0.99, dim=0)
    assert z[0].tolist() == pytest.approx([float(lo[0]), float(hi[1])])  # top left
    assert z[-1].tolist() == pytest.approx([float(hi[0]), float(lo[1])])  # bottom right
    assert z[1, 0] == pytest.approx(0.0, abs=1e-5)


def test_colourize_gives_each_entity_its_colour():
    from probgen.viz.scenes import ENTITY_COLOURS

    ink = torch.zeros(1, 9, 2, 2)
    for k in range(9):
        ink[0, k, k // 4 % 2, k % 2] = 0.5 if k < 8 else 0.0
    rgb = viz.colourize(ink)
    assert rgb.shape == (1, 3, 2, 2)
    # pixel (0, 0) holds entities 0 and 2 at half ink each: their colours' half-sum
    assert rgb[0, :, 0, 0].tolist() == pytest.approx(
        (0.5 * (ENTITY_COLOURS[0] + ENTITY_COLOURS[2])).clamp(0, 1).tolist()
    )
    one = viz.one_colour(ink[:, 9 - 1], 9)  # the ninth entity: the second colour again
    assert one.shape == (1, 3, 2, 2) and float(one.sum()) == 0.0
    assert viz.one_colour(torch.ones(1, 1, 1), 9)[0, :, 0, 0].tolist() == pytest.approx(
        ENTITY_COLOURS[1].tolist()
    )


def test_progression_figure_rows_and_missing_levels():
    truth = torch.full((3, 2, 1, 28, 28), 0.5)
    calls = []

    def forward(x, s):
        calls.append(s)
        out = torch.full((x.shape[0], 2, 1, 28, 28), float("nan"))
        out[:, 1] = 1.0
        return out

    fig = viz.progression_figure(truth, {"fwd": forward}, level=0, n=2)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["#0 truth", "#0 fwd", "#1 truth", "#1 fwd"] and calls == [0, 0]
    row = fig.axes[1].images[0].get_array()
    assert float(row[0, 0, 0]) == 0.0 and float(row[0, 29, 0]) == 1.0  # NaN drawn black


def test_vae_figures_of_a_conditional_and_a_plain_vae(tmp_path):
    from probgen.models import VAE

    torch.manual_seed(0)
    x, y = _images(20), torch.arange(20) % 10
    plain = viz.vae_figures(VAE(z_dim=2, hidden=(8,)), x, y, tmp_path, "_a")
    assert set(plain) == {"reconstructions", "samples", "latent"}
    assert {p.name for p in tmp_path.iterdir()} == {
        "reconstructions_a.png",
        "samples_a.png",
        "latent_a.png",
    }
    grid = plain["samples"].axes[0].images[0].get_array()
    assert grid.shape[:2] == (8 * 29 - 1, 10 * 29 - 1)  # 80 samples, ten per row
    cond = viz.vae_figures(VAE(z_dim=2, hidden=(8,), num_labels=10), x, y, tmp_path, "_c")
    grid = cond["samples"].axes[0].images[0].get_array()
    assert grid.shape[:2] == (10 * 29 - 1, 8 * 29 - 1)  # a row of eight per label
    assert [ax.get_ylabel() for ax in plain["reconstructions"].axes] == ["data", "reconstruction"]


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: viz.image_grid(torch.zeros(4, 1, 5, 5), nrow=0),  # range() with step 0
            "nrow must be at least 1, got 0.",
        ),
        (
            lambda: viz.image_row(torch.zeros(4, 1, 5, 5), pad=-1),  # images overlapped
            "pad must be 0 or more, got -1.",
        ),
        (lambda: viz.manifold_codes(0), "n must be at least 1, got 0."),  # ZeroDivisionError
        (
            lambda: viz.density_on_grid(lambda p: p.sum(-1), resolution=1),  # IndexError
            "resolution must be at least 2, got 1.",
        ),
    ],
)
def test_a_bad_figure_setting_is_one_config_error(call, message):
    from probgen.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message
