"""probgen's figures leave the user's matplotlib alone: they never select or switch
the backend (a notebook's inline figures keep working after any of them), leave no
figure open in pyplot, and still write their files headless."""

import importlib.util

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

from probgen import viz

PNG = b"\x89PNG\r\n\x1a\n"
BACKENDS = ["svg", "pdf"]
if importlib.util.find_spec("matplotlib_inline") is not None:
    BACKENDS.append("module://matplotlib_inline.backend_inline")  # Jupyter's inline figures


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)


def _figures():
    """Every figure function of probgen.viz, each called with small valid inputs."""
    g = torch.Generator().manual_seed(0)
    x = _images(6)
    hist = [{"epoch": e, "train_loss": 10.0 - e, "val_loss": 11.0 - e} for e in range(3)]
    labels = torch.arange(40) % 10
    density, _ = viz.density_on_grid(lambda p: -0.5 * (p ** 2).sum(1), resolution=20)
    pts = torch.randn(200, 2, generator=g)
    return {
        "rows_figure": lambda path: viz.rows_figure({"a": x, "b": x.flip(0)}, path, title="t"),
        "grid_figure": lambda path: viz.grid_figure(x, nrow=3, path=path, title="t"),
        "completion_figure": lambda path: viz.completion_figure(
            x[:3], x[:3], {"NN": x[:3], "CVAE": x[:6].reshape(2, 3, 1, 28, 28)}, path, title="t"),
        "learning_curves": lambda path: viz.learning_curves({"run": hist}, path),
        "latent_scatter": lambda path: viz.latent_scatter(
            {"2-D": torch.randn(40, 2, generator=g), "5-D": torch.randn(40, 5, generator=g)},
            labels, path, title="t"),
        "manifold_grids": lambda path: viz.manifold_grids(
            {"decoder": lambda z: z.sum(1).sigmoid().view(-1, 1, 1, 1).expand(-1, 1, 28, 28)},
            n=4, path=path, title="t"),
        "interpolation_figure": lambda path: viz.interpolation_figure({"AE": x}, path, title="t"),
        "pca_vs_autoencoder": lambda path: viz.pca_vs_autoencoder(
            torch.full((200,), 1 / 200), {2: 0.05, 8: 0.03}, {2: 0.04, 8: 0.02}, path),
        "anomaly_figure": lambda path: viz.anomaly_figure(
            torch.randn(100, generator=g), torch.arange(100) % 5 == 0, 0.8, path=path),
        "toy_density_figure": lambda path: viz.toy_density_figure(
            {"moons": pts}, {"moons": {"flow": density}}, path, titles={("moons", "flow"): "t"}),
        "toy_samples_figure": lambda path: viz.toy_samples_figure(
            {"flow": {0.5: pts, 1.0: pts}}, path, title="t"),
        "temperature_grid_figure": lambda path: viz.temperature_grid_figure(
            {0.5: x, 1.0: x}, path, nrow=3, title="t"),
    }


FIGURES = sorted(_figures())


def test_every_figure_function_is_covered():
    public = {name for name in viz.__all__ if name.endswith(("_figure", "_curves", "_scatter",
                                                             "_grids", "_autoencoder"))}
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
