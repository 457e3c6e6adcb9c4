"""probgen's CVAE example against Pyro's own CVAE recipe, on the same MNIST, in one process.

For each quadrant setting (1, 2, 3 visible) it runs, one after the other:

* ``probgen``: ``examples/cvae.py`` as a user runs it (its defaults, or the flags in
  ``--probgen-args``), trained on 50,000 training images with 10,000 held out for early
  stopping, scored on the 10,000 test images;
* ``pyro``: a re-implementation of the recipe of Pyro's ``examples/cvae`` (Pyro 1.9),
  written for this benchmark: the same three 784-500-500 networks (sigmoid outputs,
  z of 200), Pyro's ``SVI`` with ``Trace_ELBO`` and ``pyro.optim.Adam`` (lr 1e-3), batch
  128, ``-n 50 -esp 3`` (the tutorial's settings), baseline trained first with the
  masked binary cross-entropy. As in Pyro's example, it trains on all 60,000 training
  images, early-stops on the test set, and reports on the test set the baseline's
  masked cross-entropy and ``Trace_ELBO(num_particles=10)`` in batches of 32 (the mean
  of the batch means). Its data come from device-resident tensors through a
  ``DataLoader`` instead of Pyro's per-image PIL transforms, which only makes it faster.

Settings run interleaved (probgen q=1, Pyro q=1, probgen q=2, ...), so a change in the
machine's load falls on both. It prints both tables, each side's wall time per setting
and in total, and on its last line the ratio of the wall times.

    python benchmarks/cvae_vs_pyro.py                       # both full runs (about an hour)
    python benchmarks/cvae_vs_pyro.py --quadrants 3
    python benchmarks/cvae_vs_pyro.py --smoke               # seconds: 1 epoch on slices
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import platform
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from probgen import checks
from probgen.data import MISSING, image_splits, quadrant_task
from probgen.train import set_seed

ROOT = Path(__file__).resolve().parents[1]
D = 784


# --------------------------------------------------------------------------- Pyro's recipe


def mlp(n_in: int, n_out: int, hidden=(500, 500)) -> nn.Sequential:
    layers, last = [], n_in
    for h in hidden:
        layers += [nn.Linear(last, h), nn.ReLU()]
        last = h
    return nn.Sequential(*layers, nn.Linear(last, n_out))


class PyroBaseline(nn.Module):
    """Pyro's ``BaselineNet``: visible pixels (hidden ones -1) -> probabilities of every pixel."""

    def __init__(self):
        super().__init__()
        self.net = mlp(D, D)

    def forward(self, x):
        return torch.sigmoid(self.net(x.reshape(-1, D)))


def masked_bce_sum(probs, output):
    """Pyro's ``MaskedBCELoss``: cross-entropy summed over the pixels the output keeps
    (the hidden ones; the visible ones are -1 in ``output``)."""
    output = output.reshape(probs.shape)
    keep = output != MISSING
    return F.binary_cross_entropy(probs[keep], output[keep], reduction="sum")


class PyroGaussianNet(nn.Module):
    """Pyro's ``Encoder``: an image whose -1 pixels are filled from ``y`` -> (loc, scale)."""

    def __init__(self, z_dim=200):
        super().__init__()
        self.body = nn.Sequential(*list(mlp(D, 500, hidden=(500,))), nn.ReLU())
        self.loc = nn.Linear(500, z_dim)
        self.log_scale = nn.Linear(500, z_dim)

    def forward(self, x, y):
        filled = torch.where(x == MISSING, y.reshape(x.shape), x).reshape(-1, D)
        h = self.body(filled)
        return self.loc(h), torch.exp(self.log_scale(h))


class PyroCVAE(nn.Module):
    """Pyro's ``CVAE``: prior net on the baseline's guess, recognition net, generation net."""

    def __init__(self, baseline: PyroBaseline, z_dim=200):
        super().__init__()
        self.baseline = baseline
        self.prior_net = PyroGaussianNet(z_dim)
        self.recognition_net = PyroGaussianNet(z_dim)
        self.generation_net = nn.Sequential(mlp(z_dim, D), nn.Sigmoid())

    def model(self, xs, ys=None):
        pyro.module("pyro_cvae", self)
        n = xs.shape[0]
        with pyro.plate("data"):
            with torch.no_grad():
                y_hat = self.baseline(xs).reshape(xs.shape)
            loc, scale = self.prior_net(xs, y_hat)
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            probs = self.generation_net(z)
            if ys is not None:
                hidden = (xs == MISSING).reshape(-1, D)
                pyro.sample(
                    "y",
                    dist.Bernoulli(probs[hidden].reshape(n, -1), validate_args=False).to_event(1),
                    obs=ys[xs == MISSING].reshape(n, -1),
                )
            return probs

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                loc, scale = self.prior_net(xs, self.baseline(xs).reshape(xs.shape))
            else:
                loc, scale = self.recognition_net(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def pyro_data(split, q: int):
    """(input, output) as Pyro's example builds them: input has the hidden pixels at -1,
    output the visible ones."""
    inputs, images = quadrant_task(split, q).all()
    outputs = torch.where(inputs == MISSING, images, torch.full_like(images, MISSING))
    return TensorDataset(inputs, outputs)


def early_stopped(train_epoch, val_loss, epochs, patience, state):
    """Pyro's loop: an epoch of training, then the validation loss; keep the best
    weights; stop after ``patience`` epochs without improvement."""
    best, best_state, bad, run = math.inf, None, 0, 0
    for _ in range(epochs):
        train_epoch()
        loss = val_loss()
        run += 1
        if loss < best:
            best, best_state, bad = loss, copy.deepcopy(state()), 0
        else:
            bad += 1
        if bad >= patience:
            break
    return best_state, run


def run_pyro_recipe(
    train_set, test_set, epochs, patience, lr=1e-3, batch_size=128, particles=10, progress=False
):
    times, epochs_run = {}, {}
    train = DataLoader(train_set, batch_size=batch_size, shuffle=True)
    test = DataLoader(test_set, batch_size=batch_size)

    t0 = time.perf_counter()
    baseline = PyroBaseline()
    opt = torch.optim.Adam(baseline.parameters(), lr=lr)

    def base_epoch():
        baseline.train()
        for x, y in train:
            opt.zero_grad()
            loss = masked_bce_sum(baseline(x), y) / x.shape[0]
            loss.backward()
            opt.step()

    @torch.no_grad()
    def base_val():
        baseline.eval()
        return sum(masked_bce_sum(baseline(x), y).item() / x.shape[0] for x, y in test) / len(test)

    best, epochs_run["baseline"] = early_stopped(
        base_epoch, base_val, epochs, patience, baseline.state_dict
    )
    baseline.load_state_dict(best)
    baseline.eval()
    times["baseline"] = time.perf_counter() - t0
    # The baseline's NLL as trained, before the CVAE: Pyro's SVI registers the whole CVAE
    # module, baseline included, and its parameters do not stay as trained (measured: at
    # 3 quadrants the same network scored 98.40 after the CVAE's training).
    t0 = time.perf_counter()
    nn_total, batches = 0.0, 0
    with torch.no_grad():
        for x, y in DataLoader(test_set, batch_size=32):  # Pyro's generate_table batches
            nn_total += masked_bce_sum(baseline(x), y).item() / x.shape[0]
            batches += 1
    nn_nll = nn_total / batches
    times["evaluation"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pyro.clear_param_store()
    cvae = PyroCVAE(baseline)
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": lr}), loss=Trace_ELBO())

    def cvae_epoch():
        for x, y in train:
            svi.step(x, y)

    def cvae_val():
        return sum(svi.evaluate_loss(x, y) / x.shape[0] for x, y in test) / len(test)

    best, epochs_run["cvae"] = early_stopped(
        cvae_epoch, cvae_val, epochs, patience, cvae.state_dict
    )
    cvae.load_state_dict(best)
    cvae.eval()
    times["cvae"] = time.perf_counter() - t0

    # Pyro's generate_table: batches of 32, mean of the per-batch means.
    t0 = time.perf_counter()
    elbo = Trace_ELBO(num_particles=particles)
    cvae_total, batches = 0.0, 0
    for x, y in DataLoader(test_set, batch_size=32):
        cvae_total += elbo.differentiable_loss(cvae.model, cvae.guide, x, y).item() / x.shape[0]
        batches += 1
    times["evaluation"] += time.perf_counter() - t0
    return {
        "nn_nll": nn_nll,
        "cvae_elbo": cvae_total / batches,
        "baseline_epochs": epochs_run["baseline"],
        "cvae_epochs": epochs_run["cvae"],
        "seconds": times,
    }


# --------------------------------------------------------------------------- probgen's example


def load_example():
    spec = importlib.util.spec_from_file_location(
        "probgen_cvae_example", ROOT / "examples" / "cvae.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(name, results, quadrants, reference=None):
    cols = [f"{q} quadrant{'s' if q > 1 else ''}" for q in quadrants]
    lines = [f"{name}".ljust(28) + "".join(c.rjust(13) for c in cols)]
    for label, key in (("NN baseline NLL", "nn_nll"), ("CVAE -ELBO", "cvae_elbo")):
        lines.append(
            f"  {label}".ljust(28) + "".join(f"{results[q][key]:13.2f}" for q in quadrants)
        )
    lines.append(
        "  gap".ljust(28)
        + "".join(f"{results[q]['nn_nll'] - results[q]['cvae_elbo']:13.2f}" for q in quadrants)
    )
    lines.append(
        "  epochs (baseline, CVAE)".ljust(28)
        + "".join(
            f"{results[q]['baseline_epochs']:>8d},{results[q]['cvae_epochs']:>4d}"
            for q in quadrants
        )
    )
    lines.append(
        "  wall seconds".ljust(28) + "".join(f"{results[q]['wall']:13.1f}" for q in quadrants)
    )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-q", "--quadrants", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    positive = checks.arg(checks.positive_int)
    p.add_argument("--pyro-epochs", type=positive, default=50, help="Pyro's -n (the tutorial: 50)")
    p.add_argument(
        "--pyro-patience", type=positive, default=3, help="Pyro's -esp (the tutorial: 3)"
    )
    p.add_argument(
        "--probgen-args",
        default="",
        help="extra flags for examples/cvae.py, e.g. '--epochs 50 --patience 3'",
    )
    p.add_argument(
        "--threads",
        type=checks.arg(checks.integer, low=1, zero="torch's default"),
        default=0,
        help="torch threads (0: torch's default)",
    )
    p.add_argument("--seed", type=checks.arg(checks.seed), default=0)
    p.add_argument("--out", default="results/cvae_vs_pyro")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: 1 epoch each on slices of the data (a test of the script)",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    example = load_example()
    limit = 512 if args.smoke else None
    pyro_epochs = 1 if args.smoke else args.pyro_epochs
    # Pyro's split: all training images to train, the test set to early-stop and to score.
    splits = image_splits("mnist", val_size=0, seed=args.seed, device="cpu", limit=limit)
    results = {"probgen": {}, "pyro": {}}
    for q in args.quadrants:
        flags = [
            "--quadrants",
            str(q),
            "--out",
            str(out / f"probgen_q{q}"),
            "--device",
            "cpu",
            "--seed",
            str(args.seed),
            "--no-progress",
        ] + args.probgen_args.split()
        if args.threads:
            flags += ["--threads", str(args.threads)]
        if args.smoke:
            flags.append("--smoke")
        print(f"\n=== probgen, {q} visible: examples/cvae.py {' '.join(flags)}", flush=True)
        t0 = time.perf_counter()
        record = example.main(flags)
        r = record["results"][example.column(q)]
        results["probgen"][q] = dict(
            nn_nll=r["nn_nll"],
            cvae_elbo=r["cvae_elbo"],
            baseline_epochs=r["baseline_epochs"],
            cvae_epochs=r["cvae_epochs"],
            seconds=r["seconds"],
            wall=time.perf_counter() - t0,
        )

        print(
            f"\n=== Pyro's recipe, {q} visible (-n {pyro_epochs} -esp {args.pyro_patience})",
            flush=True,
        )
        set_seed(args.seed)
        t0 = time.perf_counter()
        r = run_pyro_recipe(
            pyro_data(splits["train"], q),
            pyro_data(splits["test"], q),
            epochs=pyro_epochs,
            patience=args.pyro_patience,
        )
        r["wall"] = time.perf_counter() - t0
        results["pyro"][q] = r
        print(
            f"Pyro's recipe: NN {r['nn_nll']:.2f}, CVAE -ELBO {r['cvae_elbo']:.2f}, "
            f"{r['wall']:.0f} s",
            flush=True,
        )

    walls = {k: sum(v[q]["wall"] for q in args.quadrants) for k, v in results.items()}
    (out / "results.json").write_text(
        json.dumps(
            {
                "results": {k: {str(q): v for q, v in r.items()} for k, r in results.items()},
                "wall_seconds": walls,
                "args": vars(args),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                "versions": {"torch": torch.__version__, "pyro": pyro.__version__},
            },
            indent=2,
        )
    )
    print("\nTest set (nats per image)")
    print(table("probgen examples/cvae.py", results["probgen"], args.quadrants))
    print(table("Pyro's recipe", results["pyro"], args.quadrants))
    print(
        f"\nwall time: probgen {walls['probgen'] / 60:.1f} min, Pyro's recipe "
        f"{walls['pyro'] / 60:.1f} min, on {platform.machine()} with "
        f"{torch.get_num_threads()} threads"
    )
    print(f"ratio probgen / Pyro wall time: {walls['probgen'] / walls['pyro']:.3f}")
    return results


if __name__ == "__main__":
    main()
