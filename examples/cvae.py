"""Quadrant completion on MNIST with a conditional VAE (the main probgen example).

Given 1, 2 or 3 visible quadrants of a digit, predict the rest: the task of
Pyro's CVAE example (Sohn et al. 2015). For each setting it trains the MLP
baseline, then the CVAE (Pyro model/guide pair) on top of it, and reports on
the MNIST test set:

* NN baseline NLL: Bernoulli cross-entropy of the hidden pixels (nats per image);
* CVAE -ELBO with 10 particles (what Pyro's tutorial reports);
* CVAE importance-sampled NLL, -log p(y|x) estimated with k samples of q(z|x,y);
* the gap between the baseline and the CVAE -ELBO.

Writes results.csv, results.json, one figure per setting (inputs / truth / NN /
CVAE samples), learning curves, and checkpoints to --out. ``--resume`` continues
an interrupted run from its checkpoints.

    python examples/cvae.py                   # full run (about an hour on 2 CPU cores)
    python examples/cvae.py --quadrants 2 --epochs 20
    python examples/cvae.py --smoke           # seconds
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import torch

import probgen
from probgen.data import image_splits, quadrant_task
from probgen.metrics import iw_nll, negative_elbo
from probgen.models import CVAE, Baseline
from probgen.train import FitConfig, evaluate, fit, resolve_device, set_seed
from probgen.viz import completion_figure, learning_curves

# Pyro's tutorial table (examples/cvae, cvae.ipynb): negative log-likelihood /
# negative ELBO in nats, columns 1, 2, 3 visible quadrants.
PYRO_REFERENCE = {"NN baseline NLL": [100.4, 61.9, 25.4],
                  "CVAE -ELBO": [71.8, 51.0, 24.2]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-q", "--quadrants", type=int, nargs="+", default=[1, 2, 3],
                   help="numbers of visible quadrants to run (each in 1..3)")
    p.add_argument("-n", "--epochs", type=int, default=101, help="most epochs per network")
    p.add_argument("--patience", type=int, default=5,
                   help="early stopping: epochs without validation improvement")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("-p", "--particles", type=int, default=10,
                   help="particles of the reported -ELBO")
    p.add_argument("--train-particles", type=int, default=1, help="particles while training")
    p.add_argument("--objective", default="trace", choices=probgen.infer.OBJECTIVES.names(),
                   help="Pyro objective for training")
    p.add_argument("-k", "--iw-samples", type=int, default=100,
                   help="importance samples of the CVAE NLL")
    p.add_argument("--z-dim", type=int, default=200)
    p.add_argument("--hidden", type=int, nargs="+", default=[500, 500])
    p.add_argument("--val-size", type=int, default=10000,
                   help="training images held out for early stopping")
    p.add_argument("--num-images", type=int, default=10, help="digits in each figure")
    p.add_argument("--num-samples", type=int, default=5, help="CVAE samples per digit in figures")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/cvae", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long run on a small slice (used by the tests)")
    args = p.parse_args(argv)
    if args.threads < 0:
        p.error(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    for q in args.quadrants:
        if not 1 <= q <= 3:
            p.error(f"--quadrants takes numbers in 1..3, got {q}")
    if args.smoke:
        args.epochs, args.particles, args.iw_samples = min(args.epochs, 2), 2, 8
        args.num_images, args.num_samples = 4, 2
    return args


def column(q: int) -> str:
    return f"{q} quadrant{'s' if q > 1 else ''}"


def run_setting(q, splits, args, device, out: Path):
    task = {k: quadrant_task(v, q) for k, v in splits.items()}
    base_cfg = FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         patience=args.patience, device=str(device), seed=args.seed,
                         progress=not args.no_progress, resume=args.resume)

    print(f"\n== {column(q)} visible: baseline ==", flush=True)
    baseline = Baseline(hidden=args.hidden)
    base_fit = fit(baseline, task["train"], task["val"], base_cfg,
                   checkpoint=str(out / f"baseline_q{q}.pt"))
    t_base = base_fit.train_seconds  # with --resume, the epochs before it too

    print(f"== {column(q)} visible: CVAE ==", flush=True)
    cvae = CVAE(baseline, z_dim=args.z_dim, hidden=args.hidden)
    cvae_fit = fit(cvae, task["train"], task["val"], base_cfg,
                   checkpoint=str(out / f"cvae_q{q}.pt"), objective=args.objective,
                   num_particles=args.train_particles)
    t_cvae = cvae_fit.train_seconds

    print(f"== {column(q)} visible: evaluation on the test set ==", flush=True)
    t0 = time.perf_counter()
    set_seed(args.seed)
    test = task["test"]
    nn_nll = evaluate(probgen.LossStep(baseline, lambda m, x, y: m.nll(x, y).mean()), test)
    elbo = negative_elbo(cvae.model, cvae.guide, test, num_particles=args.particles)
    nll = iw_nll(cvae.model, cvae.guide, test, num_samples=args.iw_samples, batch_size=100,
                 progress=not args.no_progress)
    t_eval = time.perf_counter() - t0

    inputs, truth = test.subset(slice(0, args.num_images)).all()
    completion_figure(inputs, truth,
                      {"NN": baseline.predict(inputs),
                       "CVAE": cvae.predict(inputs, num_samples=args.num_samples)},
                      path=out / f"cvae_q{q}.png",
                      title=f"{column(q)} visible")
    return {"nn_nll": nn_nll, "cvae_elbo": elbo, "cvae_iw_nll": nll,
            "baseline_epochs": base_fit.epochs_run, "cvae_epochs": cvae_fit.epochs_run,
            "baseline_seconds": t_base, "cvae_seconds": t_cvae, "eval_seconds": t_eval,
            "baseline_history": base_fit.history, "cvae_history": cvae_fit.history}


def write_table(results, args, out: Path):
    cols = [column(q) for q in args.quadrants]
    rows = {
        "NN baseline NLL": [results[q]["nn_nll"] for q in args.quadrants],
        f"CVAE -ELBO ({args.particles} particles)": [results[q]["cvae_elbo"] for q in args.quadrants],
        f"CVAE IS NLL (k={args.iw_samples})": [results[q]["cvae_iw_nll"] for q in args.quadrants],
        "gap (NN NLL - CVAE -ELBO)": [results[q]["nn_nll"] - results[q]["cvae_elbo"]
                                      for q in args.quadrants],
    }
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([""] + cols)
        for name, vals in rows.items():
            w.writerow([name] + [f"{v:.2f}" for v in vals])
    width = max(len(r) for r in list(rows) + [f"Pyro tutorial: {n}" for n in PYRO_REFERENCE]) + 2
    lines = ["".ljust(width) + "".join(c.rjust(14) for c in cols)]
    for name, vals in rows.items():
        lines.append(name.ljust(width) + "".join(f"{v:14.2f}" for v in vals))
    for name, ref in PYRO_REFERENCE.items():
        lines.append(f"Pyro tutorial: {name}".ljust(width)
                     + "".join(f"{ref[q - 1]:14.1f}" for q in args.quadrants))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    limit = 512 if args.smoke else None
    t_start = time.perf_counter()
    splits = image_splits("mnist", val_size=256 if args.smoke else args.val_size,
                          seed=args.seed, device=device, limit=limit)
    results = {}
    for q in args.quadrants:
        results[q] = run_setting(q, splits, args, device, out)
    wall = time.perf_counter() - t_start
    table = write_table(results, args, out)
    learning_curves({f"{kind} q={q}": results[q][f"{kind.lower()}_history"]
                     for q in args.quadrants for kind in ("Baseline", "CVAE")},
                    path=out / "learning_curves.png",
                    ylabel="loss per image (nats): NN NLL / CVAE -ELBO")
    summary = {
        "results": {column(q): {k: v for k, v in r.items() if not k.endswith("history")}
                    for q, r in results.items()},
        "pyro_reference": PYRO_REFERENCE, "wall_seconds": wall, "args": vars(args),
        "device": str(device), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "versions": {"probgen": probgen.__version__, "torch": torch.__version__},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print("\nTest-set results (nats per image)\n" + table)
    print(f"\nwall time {wall / 60:.1f} min on {summary['machine']} ({device}); "
          f"outputs in {out}/")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
