"""Look at a VAE's posterior: flow guides, exact latent posteriors by NUTS, the inference gaps.

Three parts (``--parts``), on dynamically binarized MNIST with the family's default
networks (784-200-200-z tanh MLPs, Bernoulli likelihood):

* ``flows``: one VAE per guide (``--guides``: ``diag``, the encoder's Gaussian, and the
  flow guides ``planar``, ``iaf``, ``sylvester``, ``spline`` of ``--depth`` steps; zuko's
  ``zuko:nsf``, ``zuko:maf``, ``zuko:nice``, ``zuko:realnvp`` on request, with hidden
  layers as wide as the spline guide's), trained for the same epochs; test -ELBO,
  importance-sampled NLL and seconds per epoch in ``flows.csv``. Published ordering in
  -ELBO (Rezende & Mohamed 2015; Kingma et al. 2016; van den Berg et al. 2018):
  diagonal > planar > IAF >= Sylvester.
* ``nuts``: for ``--images`` test digits, p(z | x) with the decoder fixed, sampled by
  Pyro's NUTS (``--chains`` chains); R-hat and effective sample size through ArviZ in
  ``nuts.csv``, and pair plots of the exact posterior over the guides' q(z|x)
  (``pairs_<i>.png``).
* ``gaps``: the inference gaps of Cremer, Li & Duvenaud (2018) per guide: log p(x) (IS,
  ``--gap-k`` samples), the ELBO of the best per-image guide of the family (fitted with
  the decoder fixed) and the amortized ELBO, for ``--gap-images`` test digits
  (``gaps.csv``).

Models are saved in --out (``model_<guide>.pt``, ``zuko-nsf`` for ``zuko:nsf``);
``--resume`` continues or reuses them, so ``--parts nuts gaps --resume`` measures the
models a ``--parts flows`` run trained.

    python examples/posterior.py --epochs 10 --threads 1
    python examples/posterior.py --parts nuts gaps --resume --threads 1
    python examples/posterior.py --parts flows --guides spline zuko:nsf --threads 1
    python examples/posterior.py --smoke
"""

from __future__ import annotations

import sys
import time

from probgen import checks, cli
from probgen.flows.zuko_bridge import ZUKO_FLOWS
from probgen.infer.guides import GUIDE_FLOWS
from probgen.metrics.likelihood import elbo_and_iw_nll
from probgen.models.vae import VAE
from probgen.train import fit, load, save_model, set_seed

PARTS = ("flows", "nuts", "gaps")
GUIDES = ["diag"] + GUIDE_FLOWS.names()
# zuko's guides need the zuko extra: asked for by name, not run by default
DEFAULT_GUIDES = [g for g in GUIDES if g not in ZUKO_FLOWS]


def parse_args(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=10, out="results/posterior")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--guides", nargs="+", default=DEFAULT_GUIDES, choices=GUIDES,
                   help="diag: the encoder's Gaussian; the others: flow guides (zuko:*: "
                        "zuko's flows, pip install 'probgen[zuko]')")
    positive = checks.arg(checks.positive_int)
    p.add_argument("--depth", type=positive, default=4, help="flow steps of each flow guide")
    p.add_argument("--z-dim", type=positive, default=50, help="latent size")
    p.add_argument("-k", "--iw-samples", type=positive, default=1000,
                   help="importance samples of the test NLL")
    p.add_argument("--eval-size", type=positive, default=1000,
                   help="test images of the -ELBO and NLL")
    p.add_argument("--images", type=positive, default=4, help="test images sampled by NUTS")
    p.add_argument("--chains", type=positive, default=4, help="NUTS chains")
    p.add_argument("--warmup", type=checks.arg(checks.nonnegative_int), default=500,
                   help="NUTS warm-up steps per chain")
    p.add_argument("--draws", type=positive, default=500, help="NUTS draws per chain")
    p.add_argument("--nuts-guides", nargs="+", default=["diag", "iaf"], choices=GUIDES,
                   help="the models whose decoders NUTS samples under, and whose guides "
                        "the pair plots overlay")
    p.add_argument("--gap-images", type=positive, default=100,
                   help="test images of the gap table")
    p.add_argument("--gap-k", type=positive, default=5000, help="importance samples of log p(x)")
    p.add_argument("--gap-steps", type=positive, default=2000,
                   help="Adam steps of each per-image guide")
    p.add_argument("--gap-guides", nargs="+", default=["diag", "iaf"], choices=GUIDES)
    args = cli.finish_args(p, argv, smoke=dict(
        z_dim=2, depth=2, iw_samples=16, eval_size=32, images=2, chains=2, warmup=30,
        draws=30, gap_images=4, gap_k=64, gap_steps=30))
    return args


def build(args, guide: str) -> VAE:
    if guide == "diag":
        return VAE(z_dim=args.z_dim)
    # a zuko flow's networks as wide as the spline guide's (one hidden layer of 10 z_dim);
    # zuko's NSF keeps its own splines (8 rational-quadratic bins on [-5, 5])
    kwargs = {"hidden_features": [10 * args.z_dim]} if guide in ZUKO_FLOWS else None
    return VAE(z_dim=args.z_dim, guide_flow=guide, guide_flow_depth=args.depth,
               guide_flow_kwargs=kwargs)


def _file(guide: str) -> str:
    return guide.replace(":", "-")   # "zuko:nsf" -> "zuko-nsf": a portable file name


def train(args, splits, guide: str):
    """Train (or, with --resume, continue / reuse) the VAE with this guide."""
    set_seed(args.seed)
    model = build(args, guide).to(args.device)   # fit hands it back where it was built
    print(f"\n== {guide}: {model.extra_repr()} ==", flush=True)
    result = fit(model, splits["train"], splits["val"], cli.fit_config(args),
                 checkpoint=str(args.out / f"checkpoint_{_file(guide)}.pt"),
                 callbacks=cli.trackers(args, _file(guide)))
    save_model(model, args.out / f"model_{_file(guide)}.pt")
    return model, result


def trained(args, guide: str) -> VAE:
    path = args.out / f"model_{_file(guide)}.pt"
    if not path.exists():
        from probgen.errors import ConfigError

        raise ConfigError(f"{path} does not exist: train the {guide!r} guide first "
                          f"(--parts flows --guides {guide}).")
    return load(path, map_location=args.device).eval()


def part_flows(args, splits):
    rows = []
    test = splits["test"].subset(slice(0, args.eval_size))
    for guide in args.guides:
        model, result = train(args, splits, guide)
        t0 = time.perf_counter()
        set_seed(args.seed)
        m = elbo_and_iw_nll(model.model, model.guide, test, elbo_particles=10,
                            iw_samples=args.iw_samples, progress=not args.no_progress)
        rows.append({"guide": guide, "depth": 0 if guide == "diag" else args.depth,
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "neg_elbo": m["neg_elbo"], f"iw_nll_k{args.iw_samples}": m["iw_nll"],
                     "epochs": result.epochs_run,
                     "seconds_per_epoch": result.train_seconds / max(result.epochs_run, 1),
                     "eval_seconds": time.perf_counter() - t0})
    print(f"\nTest set, first {len(test)} images (nats per image):")
    cli.print_table(rows)
    return rows


def part_nuts(args, splits):
    """NUTS on p(z | x) under each model's decoder; R-hat, ESS, pair plots against q."""
    from probgen.infer.mcmc import vae_nuts
    from probgen.inspect import arviz, from_vae
    from probgen.inspect.plots import informative_latents, pair_overlay

    az = arviz()
    x, _ = splits["test"].subset(slice(0, args.images)).all()   # one binarization, kept
    index = list(range(args.images))
    rows = []
    for guide in args.nuts_guides:
        model = trained(args, guide)
        set_seed(args.seed)
        chains = vae_nuts(model, x, num_chains=args.chains, num_samples=args.draws,
                          warmup_steps=args.warmup, jit_compile=True,
                          progress=not args.no_progress)
        exact = from_vae(model, x, mcmc=chains, index=index)
        q = from_vae(model, x, num_samples=args.chains * args.draws, index=index)
        summary = az.summary(exact, var_names=["z"], kind="diagnostics", round_to="none")
        active = []
        for i in index:
            lat = informative_latents(exact, i, count=3)
            active.append(lat)
            pair_overlay({"NUTS p(z|x)": exact, f"{guide} q(z|x)": q}, i, lat,
                         title=f"{guide} model, test image {i}",
                         path=args.out / f"pairs_{_file(guide)}_{i}.png")
        rows.append({"model": guide, "images": args.images, "chains": args.chains,
                     "draws": args.draws, "warmup": args.warmup,
                     "max_rhat": float(summary["r_hat"].max()),
                     "share_rhat_below_1.01": float((summary["r_hat"] < 1.01).mean()),
                     "min_ess_bulk": float(summary["ess_bulk"].min()),
                     "divergences": int(chains.diverging.sum()),
                     "nuts_seconds": float(sum(chains.seconds))})
        exact.to_netcdf(str(args.out / f"nuts_{_file(guide)}.nc"))
        print(f"{guide}: pair plots of latents {active}", flush=True)
    print("\nNUTS on p(z | x), decoder fixed:")
    cli.print_table(rows)
    return rows


def part_gaps(args, splits):
    """The gap table of Cremer et al. (2018) for the --gap-guides models."""
    from probgen.metrics.gaps import vae_gap_table

    x, _ = splits["test"].subset(slice(0, args.gap_images)).all()
    models = {guide: trained(args, guide) for guide in args.gap_guides}
    set_seed(args.seed)
    rows = vae_gap_table(models, x, steps=args.gap_steps, lr=1e-2, opt_particles=10,
                         elbo_particles=1000 if not args.smoke else 32,
                         iw_samples=args.gap_k)
    print(f"\nInference gaps on {args.gap_images} test images (nats; log p(x) by IS, "
          f"k = {args.gap_k} per guide):")
    cli.print_table(rows)
    return rows


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    splits = cli.mnist(args, "dynamic")
    results = {}
    for part, run in (("flows", part_flows), ("nuts", part_nuts), ("gaps", part_gaps)):
        if part in args.parts:
            rows = run(args, splits)
            results[part] = rows
            cli.write_results(args.out, {part: rows}, args, started, table=rows, name=part)
    record = cli.write_results(args.out, results, args, started)
    print(f"wall time {record['wall_seconds'] / 60:.1f} min on {record['machine']} "
          f"({args.device}); outputs in {args.out}/")
    return record


if __name__ == "__main__":
    sys.exit(cli.run(main))
