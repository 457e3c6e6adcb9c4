"""Normalizing flows on MNIST and on 2-D toy densities: NICE, RealNVP, Glow, DenseFlow.

Every flow is a Pyro model (``pyro.sample("x", TransformedDistribution(...), obs=x)``)
trained by maximum likelihood with ``probgen.fit``. On MNIST (uniformly
dequantized, logit preprocessing) it reports the test bits/dim -- counting every
preprocessing Jacobian; DenseFlow's is an upper bound from its importance-weighted
likelihood bound -- the training curve in bits/dim and samples at temperatures
0.5, 0.8 and 1.0. On the toy densities (two moons, rings, eight Gaussians) it
draws each flow's density on a grid next to the data: the quickest way to see
that a flow works.

Writes to --out: results.json, results.csv, bits_per_dim.png (MNIST training
curves), samples_<flow>.png, toy_densities.png, toy_samples_<data>.png and one
checkpoint per MNIST flow (``--resume`` continues from them). Besides bits/dim,
results.csv gives ``test_neg_log_density_nats``: -log p(x) in nats per example of
the continuous data the flow models -- toy points in R^2, and for MNIST the
dequantized images in [0, 1]^784, which is 784 ln 256 nats below the NLL of the
8-bit images (``8 + that / (784 ln 2)`` is the bits/dim; a bound where the
bits/dim is one).

    python examples/flows.py                                # MNIST, all four flows
    python examples/flows.py --flow glow --depth 8 --hidden 128 --epochs 30
    python examples/flows.py --data toy                      # 2-D densities (minutes)
    python examples/flows.py --smoke                         # seconds
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from probgen import checks, cli
from probgen.data import image_splits, recipes
from probgen.data.toy import TOY, toy_splits
from probgen.flows import FLOWS
from probgen.metrics.density import history_in_bits_per_dim, neg_log_density
from probgen.models.flow import FlowModel
from probgen.train import fit, set_seed
from probgen.viz import learning_curves
from probgen.viz.density import (
    density_on_grid,
    temperature_grid_figure,
    toy_density_figure,
    toy_samples_figure,
)

FLOW_NAMES = [n for n in ("nice", "realnvp", "glow", "denseflow") if n in FLOWS]
TEMPERATURES = (0.5, 0.8, 1.0)
TOY_EXTENT = (-4.0, 4.0, -4.0, 4.0)


def parse_args(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=10, out="results/flows", patience=5,
                          batch_size=64, val_size=5000)
    positive = checks.arg(checks.positive_int)
    p.add_argument("--flow", nargs="+", default=FLOW_NAMES, choices=FLOW_NAMES,
                   help="flows to train")
    p.add_argument("--data", nargs="+", default=["mnist"], choices=["mnist", "toy"],
                   help="data sets")
    p.add_argument("--toy", nargs="+", default=TOY.names(), choices=TOY.names(),
                   help="toy densities (with --data toy)")
    p.add_argument("--depth", type=positive, default=None,
                   help="NICE: couplings; RealNVP: couplings per stage; Glow: steps per "
                        "scale; DenseFlow: steps per unit (default: the builder's)")
    p.add_argument("--hidden", type=positive, nargs="+", default=None,
                   help="widths: conv channels of image flows (first value), MLP layer "
                        "sizes of NICE and toy flows (default: the builder's)")
    p.add_argument("--levels", type=positive, default=None, help="scales of image flows")
    p.add_argument("--toy-epochs", type=positive, default=40, help="epochs on each toy density")
    p.add_argument("--alpha", type=checks.arg(checks.real, low=0, high=0.5, low_open=True,
                                              high_open=True),
                   default=0.05, help="logit preprocessing margin")
    p.add_argument("--dequantization", default="uniform", choices=["uniform", "variational"],
                   help="MNIST: uniform noise, or a learned q(u | x) as the guide of the noise")
    p.add_argument("--train-size", type=positive, default=None,
                   help="MNIST training images (all)")
    p.add_argument("--eval-size", type=positive, default=None, help="MNIST test images (all)")
    p.add_argument("--iw-samples", type=positive, default=16,
                   help="noise draws of DenseFlow's bound at evaluation")
    p.add_argument("--num-samples", type=positive, default=32, help="images per temperature")
    args = cli.finish_args(p, argv, smoke=dict(
        epochs=1, toy_epochs=2, train_size=256, val_size=128, eval_size=128, depth=1,
        iw_samples=2, num_samples=8, patience=None))
    if args.smoke and args.hidden is None:
        args.hidden = [8]
    return args


def flow_kwargs(name: str, args, image: bool) -> dict:
    kw = {}
    if args.depth is not None:
        kw["depth"] = args.depth
    if args.hidden is not None:
        kw["hidden"] = args.hidden[0] if image and name != "nice" else tuple(args.hidden)
    elif not image:
        kw["hidden"] = (64, 64)
    if image and args.levels is not None and name != "nice":
        kw["levels"] = args.levels
    if not image and name == "denseflow":
        kw.setdefault("depth", 2)
    return kw


def run_mnist(args, device, out: Path):
    print(f"== MNIST ({args.dequantization} dequantization, logit preprocessing) ==", flush=True)
    splits = image_splits("mnist", val_size=args.val_size, seed=args.seed, device=device,
                          limit=args.train_size)
    variational = args.dequantization == "variational"
    if variational:  # the model dequantizes: its guide draws the noise
        train, val = splits["train"], splits["val"]
        test = splits["test"] if args.eval_size is None else \
            splits["test"].subset(slice(0, args.eval_size))
    else:   # training: a new dequantization every time an image is drawn
        d = recipes.dequantized_splits(splits, args.seed, args.eval_size)
        train, val, test = d["train"], d["val"], d["test"]
    results, curves = {}, {}
    for name in args.flow:
        set_seed(args.seed)
        model = FlowModel(name, alpha=args.alpha,
                          dequantization="variational" if variational else None,
                          **flow_kwargs(name, args, image=True)).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"\n-- {name}: {n_params:,} parameters --", flush=True)
        init = train.subset(slice(0, 512)).all()[0]
        model.initialize(init)
        cfg = cli.fit_config(args, checkpoint=str(out / f"{name}_mnist.pt"), clip_norm=100.0)
        res = fit(model, train, val, cfg, callbacks=cli.trackers(args, f"{name}_mnist"))
        seconds = res.train_seconds  # with --resume, the epochs before it too
        bound = variational or not model.exact
        k = args.iw_samples if bound else 1
        set_seed(args.seed)
        bpd = model.evaluate_bits_per_dim(test, batch_size=250, num_samples=k,
                                          progress=not args.no_progress)
        samples = {t: model.sample(args.num_samples, temperature=t).cpu() for t in TEMPERATURES}
        temperature_grid_figure(samples, out / f"samples_{name}.png",
                                title=f"{name}: samples at temperature T")
        hist = history_in_bits_per_dim(res.history, model.num_dims)
        curves[name] = hist
        results[name] = {"test_bits_per_dim": bpd, "bound": bound,
                         "test_neg_log_density_nats": neg_log_density(
                             bpd, model.num_dims, model.num_levels),
                         "dequantization": args.dequantization,
                         "iw_samples": k, "parameters": n_params, "epochs": res.epochs_run,
                         "train_seconds": seconds, "best_epoch": res.best_epoch,
                         "history": hist, "settings": flow_kwargs(name, args, image=True),
                         "test_images": len(test)}
        print(f"{name}: test bits/dim {'<= ' if bound else ''}{bpd:.4f} "
              f"({res.epochs_run} epochs, {seconds:.0f} s)", flush=True)
    learning_curves(curves, out / "bits_per_dim.png", ylabel="bits/dim (train dashed, val solid)")
    return results


def run_toy(args, device, out: Path):
    print("\n== 2-D toy densities ==", flush=True)
    sizes = (512, 128, 256) if args.smoke else (10000, 2000, 5000)
    resolution = 60 if args.smoke else 200
    results, data, densities, titles = {}, {}, {}, {}
    for toy in args.toy:
        splits = toy_splits(toy, *sizes, seed=args.seed, device=device)
        data[toy] = splits["test"].tensors[0].cpu()
        results[toy], densities[toy], samples = {}, {}, {}
        for name in args.flow:
            set_seed(args.seed)
            model = FlowModel(name, event_shape=(2,), preprocess="none",
                              **flow_kwargs(name, args, image=False)).to(device)
            model.initialize(splits["train"].tensors[0][:512])
            t0 = time.perf_counter()
            res = fit(model, splits["train"], splits["val"], epochs=args.toy_epochs,
                      batch_size=256, lr=2e-3, patience=None, device=str(device),
                      seed=args.seed, progress=False, verbose=False,
                      callbacks=cli.trackers(args, f"{name}_{toy}"))
            seconds = time.perf_counter() - t0
            k = 1 if model.exact else args.iw_samples
            with torch.no_grad():
                nll = -float(model.log_prob(splits["test"].tensors[0], num_samples=k).mean())
            k_grid = 1 if model.exact else max(k, 64)  # a smoother picture of DenseFlow's bound
            grid, area = density_on_grid(lambda p, m=model, k=k_grid: m.log_prob(p, num_samples=k),
                                         TOY_EXTENT, resolution, device=device)
            densities[toy][name] = grid
            titles[(toy, name)] = f"{name}  NLL {nll:.2f}"
            samples[name] = {t: model.sample(2000 if not args.smoke else 200, t).cpu()
                             for t in TEMPERATURES}
            results[toy][name] = {"test_nll": nll, "bound": not model.exact,
                                  "test_bits_per_dim": nll / (2 * math.log(2)),
                                  "grid_mass": float(grid.sum() * area),
                                  "train_seconds": seconds, "epochs": res.epochs_run,
                                  "parameters": sum(p.numel() for p in model.parameters())}
            print(f"{toy:10s} {name:10s} test NLL {nll:7.3f} nats "
                  f"(mass on the grid {grid.sum() * area:.3f}, {seconds:.0f} s)", flush=True)
        toy_samples_figure(samples, out / f"toy_samples_{toy}.png", TOY_EXTENT,
                           title=f"{toy}: samples at temperature T")
    toy_density_figure(data, densities, out / "toy_densities.png", TOY_EXTENT, titles)
    return results


def table(results):
    """One row per (data set, flow). ``test_neg_log_density_nats`` is -log p(x) per
    example of the continuous data the flow models (see the module docstring)."""
    rows = []
    for name, r in results.get("mnist", {}).items():
        rows.append({"data": "mnist", "flow": name, "parameters": r["parameters"],
                     "epochs": r["epochs"], "train_seconds": r["train_seconds"],
                     "test_bits_per_dim": r["test_bits_per_dim"],
                     "test_neg_log_density_nats": r["test_neg_log_density_nats"],
                     "bound": r["bound"]})
    for toy, flows in results.get("toy", {}).items():
        for name, r in flows.items():
            rows.append({"data": f"toy:{toy}", "flow": name, "parameters": r["parameters"],
                         "epochs": r["epochs"], "train_seconds": r["train_seconds"],
                         "test_bits_per_dim": r["test_bits_per_dim"],
                         "test_neg_log_density_nats": r["test_nll"], "bound": r["bound"]})
    return rows


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    started = time.perf_counter()
    results = {}
    if "mnist" in args.data:
        results["mnist"] = run_mnist(args, device, args.out)
    if "toy" in args.data:
        results["toy"] = run_toy(args, device, args.out)
    rows = table(results)
    title = "MNIST test bits/dim (published, large models: RealNVP 1.06, Glow 1.05)"
    return cli.finish_run(args, results, started, rows,
                          title=title if results.get("mnist") else None)


if __name__ == "__main__":
    sys.exit(cli.run(main))
