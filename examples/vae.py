"""Train a model of the autoencoder family on MNIST and measure it with the papers' metrics.

The default is the IWAE paper's setting (Burda et al. 2016, Table 1): a VAE
784-200-200-50 (tanh) on dynamically binarized MNIST, Bernoulli likelihood,
test NLL estimated with k = 5000 importance samples, trained on the ELBO with
its KL term in closed form (``--objective meanfield``, Pyro's
TraceMeanField_ELBO: at equal epochs it converged at least as fast as the Monte
Carlo KL of ``--objective trace``, at the same cost per step). ``--model iwae`` trains
the same network on the importance-weighted bound with k = 50 (Pyro's
RenyiELBO, alpha = 0). ``--betas 0 1 2 4`` trains one model per beta and
writes the beta sweep table (beta vs NLL, KL, active units).

Writes to --out: results.json / results.csv (test -ELBO, IS NLL, KL, active
units, reconstruction error, wall times), learning_curves.png,
reconstructions.png, samples.png, latent.png and the trained model(s).

    python examples/vae.py                          # VAE, as in the IWAE paper's table
    python examples/vae.py --model iwae             # IWAE, k = 50
    python examples/vae.py --betas 0 1 2 4 --epochs 30 --iw-samples 500
    python examples/vae.py --likelihood continuous_bernoulli --net conv
    python examples/vae.py --smoke                  # seconds
"""

from __future__ import annotations

import sys
import time

from probgen import checks, cli
from probgen.infer import OBJECTIVES
from probgen.metrics.report import autoencoder_report
from probgen.models import LIKELIHOODS, PRESETS, VAE
from probgen.nn.coders import NETS
from probgen.train import fit, save_model, set_seed
from probgen.viz import learning_curves, vae_figures

# Burda et al. 2016, Table 1 (MNIST, one stochastic layer, k = 5000 test samples):
# the VAE (k = 1) and the IWAE trained with k = 5 and k = 50 samples.
PAPER = {"vae": 86.76, "iwae k=5": 85.54, "iwae k=50": 84.78}


def paper_key(args) -> str:
    return f"iwae k={args.particles}" if args.objective == "iwae" else args.model


def parse_args(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=200, out="results/vae", patience=20)
    p.add_argument("--model", default="vae", choices=PRESETS.names() + ["iwae"],
                   help="model preset; 'iwae' is a vae trained on the IWAE bound")
    p.add_argument("--z-dim", type=checks.arg(checks.positive_int), default=50,
                   help="latent size")
    p.add_argument("--hidden", type=checks.arg(checks.positive_int), nargs="+", default=None,
                   help="hidden sizes (default: 200 200 for mlp, 256 for conv)")
    p.add_argument("--activation", default=None, help="hidden activation (default: tanh for mlp)")
    p.add_argument("--beta", type=checks.arg(checks.nonnegative_float), default=None,
                   help="KL weight (default: the preset's)")
    p.add_argument("--betas", type=checks.arg(checks.nonnegative_float), nargs="+", default=None,
                   help="train one model per beta and write the beta sweep table")
    p.add_argument("--likelihood", default="bernoulli", choices=LIKELIHOODS.names(),
                   help="bernoulli trains on binarized images (--binarize), "
                        "the others on grey levels")
    p.add_argument("--binarize", default="dynamic", choices=["dynamic", "static"],
                   help="bernoulli likelihood: a new draw of binary pixels every time an image "
                        "is used (dynamic), or one fixed draw per split (static)")
    p.add_argument("--net", default="mlp", choices=NETS.names())
    p.add_argument("--objective", default=None, choices=OBJECTIVES.names(),
                   help="meanfield: analytic KL (default), trace: Monte Carlo KL, iwae: "
                        "importance weighted (default with --model iwae)")
    p.add_argument("-p", "--particles", type=checks.arg(checks.positive_int), default=None,
                   help="samples per example while training (default 1; 50 for iwae)")
    p.add_argument("-k", "--iw-samples", type=checks.arg(checks.nonnegative_int), default=5000,
                   help="importance samples of the test NLL (0: skip)")
    p.add_argument("--iw-size", type=checks.arg(checks.positive_int), default=None,
                   help="test images in the NLL estimate (default: all)")
    args = cli.finish_args(p, argv, smoke=dict(iw_samples=16, iw_size=64))
    iwae = args.model == "iwae"
    if args.objective is None:
        args.objective = "iwae" if iwae else "meanfield"
    if args.particles is None:
        args.particles = 50 if iwae else 1
    return args


def build(args, beta=None) -> VAE:
    preset = "vae" if args.model == "iwae" else args.model
    kw = dict(z_dim=args.z_dim, net=args.net, likelihood=args.likelihood,
              hidden=args.hidden, activation=args.activation)
    b = beta if beta is not None else args.beta
    if b is not None:
        kw["beta"] = b
    if preset in ("denoising_ae", "inpainting_ae") and args.likelihood == "bernoulli":
        kw["likelihood"] = "gaussian"  # restoration targets are grey levels
    return VAE.from_preset(preset, **kw).to(args.device)


def train_one(args, splits, beta=None, tag=""):
    set_seed(args.seed)
    model = build(args, beta)
    print(f"\n== {model.extra_repr()} | objective {args.objective}, {args.particles} "
          f"particle(s) ==", flush=True)
    result = fit(model, splits["train"], splits["val"], cli.fit_config(args),
                 objective=args.objective, num_particles=args.particles,
                 checkpoint=str(args.out / f"checkpoint{tag}.pt"),
                 callbacks=cli.trackers(args, tag.lstrip("_") or None))
    train_s = result.train_seconds  # a --resume run counts the epochs before it too
    save_model(model, args.out / f"model{tag}.pt")
    t0 = time.perf_counter()
    set_seed(args.seed)
    report = autoencoder_report(model, splits["test"], iw_samples=args.iw_samples,
                                iw_size=args.iw_size, progress=not args.no_progress)
    report.update(train_seconds=train_s, eval_seconds=time.perf_counter() - t0,
                  epochs_run=result.epochs_run, best_epoch=result.best_epoch + 1,
                  seconds_per_epoch=train_s / max(result.epochs_run, 1))
    return model, result, report


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    binarize = args.binarize if args.likelihood == "bernoulli" and args.model not in (
        "denoising_ae", "inpainting_ae") else "none"
    splits = cli.mnist(args, binarize)
    betas = [None] if args.betas is None else args.betas
    rows, results, histories = [], {}, {}
    for beta in betas:
        tag = "" if args.betas is None else f"_beta{beta:g}"
        model, result, report = train_one(args, splits, beta, tag)
        vae_figures(model, *splits["test"].subset(slice(0, 2000)).all()[:2], args.out, tag)
        name = args.model if beta is None else f"beta={beta:g}"
        results[name] = report
        histories[name] = result.history
        rows.append({"model": name, "beta": model.beta,
                     "neg_elbo": report.get("neg_elbo", float("nan")),
                     f"iw_nll_k{args.iw_samples}": report.get("iw_nll", float("nan")),
                     "kl": report.get("kl", float("nan")),
                     "active_units": report["active_units"],
                     "recon_mse": report["recon_mse"], "epochs": report["epochs_run"],
                     "train_min": report["train_seconds"] / 60})
    learning_curves(histories, path=args.out / "learning_curves.png",
                    ylabel=f"{args.objective} loss per image (nats)")
    print("\nTest set (nats per image; beta = 1 for the bound):")
    cli.print_table(rows)
    ref = PAPER.get(paper_key(args))
    if ref is not None and args.betas is None:
        name = paper_key(args).replace("iwae", "IWAE").replace("vae", "VAE")
        print(f"Burda et al. 2016, Table 1: {name} test NLL {ref} "
              f"(k = 5000 test samples)")
    record = cli.write_results(args.out, {"models": results, "paper": PAPER}, args, started,
                               table=rows)
    print(f"wall time {record['wall_seconds'] / 60:.1f} min on {record['machine']} "
          f"({args.device}); outputs in {args.out}/")
    return record


if __name__ == "__main__":
    sys.exit(cli.run(main))
