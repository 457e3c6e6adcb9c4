"""The README stays a true landing page: its commands, its runnable snippets, its links and
its layout."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def snippet(marker: str, text: str = README) -> str:
    """The first ```python block after ``<!-- marker``."""
    block = text.split(f"<!-- {marker}")[1]
    return re.search(r"```python\n(.*?)\n```", block, re.S).group(1)


def test_ci_runs_the_readme_test_command_verbatim():
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(blocks) >= 2
    assert blocks[0].strip() == "pip install -e . && python examples/cvae.py"
    test_cmd = blocks[1].strip()
    assert test_cmd == 'pip install -e ".[test]" && python -m pytest -q'
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_is_a_landing_page():
    lines = README.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"
    # the API snippet is on the first screen
    start = next(i for i, line in enumerate(lines) if "<!-- api-snippet" in line)
    end = next(i for i in range(start + 2, len(lines)) if lines[i] == "```")
    assert end < 45, f"the API snippet ends at line {end + 1}"
    for section in ("## Your own Pyro model", "## Add a model family", "## Layout"):
        assert section in lines, section


def test_relative_links_resolve():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert local, "the README links its results pages"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files {missing}"


def test_every_results_page_is_linked_from_the_readme():
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs" / "results").glob("*.md")}
    pages.discard("docs/results/index.md")
    unlinked = sorted(p for p in pages if p not in README)
    assert not unlinked, f"results pages the README's table does not link: {unlinked}"


def probgen_files() -> list[str]:
    """The package's files as the repository holds them (git's index; the files on disk
    outside a git checkout), so a colleague's uncommitted new module does not count."""
    try:
        run = subprocess.run(
            ["git", "ls-files", "probgen"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        tracked = run.stdout.split()
    except (OSError, subprocess.CalledProcessError):
        tracked = []
    return tracked or [p.relative_to(ROOT).as_posix() for p in (ROOT / "probgen").rglob("*.py")]


def test_layout_is_true():
    block = README.split("## Layout")[1]
    layout = re.search(r"```\n(.*?)\n```", block, re.S).group(1)
    # an indented line continues the description above it
    paths = [
        line.split()[0].rstrip("/")
        for line in layout.splitlines()
        if line.strip() and not line[0].isspace()
    ]
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"the README's layout names {missing}, which do not exist"
    files = probgen_files()
    packages = sorted(
        {f.rsplit("/", 1)[0] for f in files if f.count("/") == 2 and f.endswith("/__init__.py")}
    )
    top_modules = sorted(
        f for f in files if f.count("/") == 1 and f.endswith(".py") and f != "probgen/__init__.py"
    )
    unlisted = [p for p in packages + top_modules if p not in paths]
    assert not unlisted, f"the README's layout does not list {unlisted}"


def test_api_snippet_runs(tmp_path, monkeypatch):
    code = snippet("api-snippet")
    assert len([l for l in code.splitlines() if l.strip()]) <= 13
    # the snippet as written, with one epoch instead of ten and a cheaper NLL
    code = code.replace("epochs=10", "epochs=1").replace("num_samples=100", "num_samples=5")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert tuple(scope["samples"].shape) == (10, 8, 1, 28, 28)
    assert scope["result"].epochs_run == 1 and 0 < scope["result"].best_loss < 200
    assert (tmp_path / "cvae.pt").exists()


def test_public_names_resolve():
    import importlib

    for name in (
        "probgen",
        "probgen.data",
        "probgen.flows",
        "probgen.metrics",
        "probgen.models",
        "probgen.viz",
        "probgen.train",
        "probgen.infer",
    ):
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        assert exported, f"{name} has no __all__"
        missing = [n for n in exported if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names {missing}, which it does not define"


def test_svi_snippet_runs_its_epochs_recovers_the_weights_and_reloads(tmp_path):
    import pyro
    import torch

    import probgen

    code = snippet("svi-snippet")
    assert "epochs=100" in code and 'probgen.load("run.pt", model=model' in README
    run = tmp_path / "run.pt"
    pyro.clear_param_store()
    torch.manual_seed(0)
    scope = {}
    shown = code.replace(
        "batch_size=100)", f"batch_size=100, progress=False, checkpoint={str(run)!r})"
    )
    exec(compile(shown, "README.md", "exec"), scope)
    # Pyro's meaning: no validation data, so no early stopping; every epoch asked for runs
    result = scope["result"]
    assert result.epochs_run == 100, f"the run stopped after {result.epochs_run} of 100 epochs"
    w = scope["guide"].median()["w"]
    assert torch.allclose(w, torch.tensor([1.0, -2.0, 0.5]), atol=0.05), w
    # what the README says of the checkpoint: probgen.load restores the Pyro param store
    trained = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    assert trained
    pyro.clear_param_store()
    probgen.load(str(run), model=scope["model"], guide=scope["guide"])
    restored = dict(pyro.get_param_store().items())
    assert set(restored) == set(trained)
    for name, value in trained.items():
        assert torch.allclose(restored[name].detach(), value), name
    pyro.clear_param_store()


def test_family_snippet_registers_a_model_that_fit_trains():
    import torch

    import probgen
    from probgen.data import TensorData
    from probgen.models import MODELS

    code = snippet("family-snippet")
    assert "ppca" not in MODELS
    scope = {}
    try:
        exec(compile(code, "README.md", "exec"), scope)
        PPCA = scope["PPCA"]
        assert MODELS.get("ppca") is PPCA

        # data from a known probabilistic PCA, whose log-likelihood is in closed form
        g = torch.Generator().manual_seed(0)
        W, b, sigma = torch.randn(5, 2, generator=g), torch.randn(5, generator=g), 0.3
        x = torch.randn(4000, 2, generator=g) @ W.T + b + sigma * torch.randn(4000, 5, generator=g)

        def log_likelihood(W, b, sigma, x):
            cov = W @ W.T + sigma**2 * torch.eye(W.shape[0])
            mvn = torch.distributions.MultivariateNormal(b, covariance_matrix=cov)
            return mvn.log_prob(x).mean().item()

        torch.manual_seed(0)
        model = PPCA(x_dim=5, z_dim=2)
        before = log_likelihood(
            model.decoder.weight.detach(),
            model.decoder.bias.detach(),
            model.log_sigma.exp().item(),
            x[3000:],
        )
        result = probgen.fit(
            model,
            TensorData(x[:3000]),
            TensorData(x[3000:]),
            epochs=40,
            lr=0.02,
            batch_size=100,
            progress=False,
            verbose=False,
        )
        with torch.no_grad():
            learned = log_likelihood(
                model.decoder.weight, model.decoder.bias, model.log_sigma.exp().item(), x[3000:]
            )
        truth = log_likelihood(W, b, sigma, x[3000:])
        # trained by the ELBO, the model's exact likelihood reaches the true parameters'
        assert before < truth - 1.0
        assert learned > truth - 0.05, (before, learned, truth)
        # the validation loss is a -ELBO: above the learned model's exact -log p(x)
        assert result.best_loss >= -learned - 0.05
    finally:
        MODELS._items.pop("ppca", None)
