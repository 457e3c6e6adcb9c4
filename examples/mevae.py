"""Multi-entity VAE on scenes of several MNIST digits, against a plain VAE on the same scenes
(Nash et al. 2017, "The Multi-Entity Variational Autoencoder").

Scenes: 64x64 canvases with 1 to 4 MNIST digits at random positions (centres at least
--min-distance pixels apart), dynamically binarized for training; the digits' masks,
count and classes are kept as ground truth (probgen.data.scenes). The MEVAE has K
entities, each a latent of --what-dim + 3 values (appearance, position, presence),
rendered by one shared decoder and composed by a noisy OR; its guide keeps the K
candidates of a convolutional grid with the largest KL from N(0, I). The plain VAE
(probgen.models.VAE, --baseline conv or mlp) has as many latent dimensions in one vector.

Reported on the test scenes: -ELBO (--elbo-particles samples) and importance-sampled NLL
(k = --iw-samples, on the first --iw-size scenes) of both models, in nats per scene; for
the MEVAE the adjusted Rand index of its entities against the digits on the foreground
pixels (each pixel labelled by the entity with the most ink there) and how often the
number of active entities (those drawing at least --min-ink pixels' worth of ink) equals
the number of digits, overall and by digit count.

Writes to --out: results.json / results.csv (one row per model), by_count.csv (per digit
count), decomposition.png (input, reconstructions, entities in their own colours, each
entity alone), kl_map.png (each candidate's KL on the grid, the K kept ones numbered),
samples.png (prior samples and their entities), learning_curves.png, and the trained
models (mevae.pt, vae.pt; probgen.load rebuilds them).

    python examples/mevae.py                               # K = 4, 1-4 digits, conv VAE baseline
    python examples/mevae.py --min-digits 1 --max-digits 1 # single-digit scenes
    python examples/mevae.py --entities 6 --what-dim 16 --baseline mlp
    python examples/mevae.py --smoke                       # seconds
"""

from __future__ import annotations

import sys
import time

from probgen import checks, cli
from probgen.data.scenes import images_only, scene_splits
from probgen.errors import ConfigError
from probgen.metrics.report import likelihood_report
from probgen.metrics.segmentation import decomposition_report
from probgen.models.mevae import MEVAE
from probgen.models.vae import VAE
from probgen.train import fit, save_model, set_seed
from probgen.viz import colourize, kl_map_figure, learning_curves, one_colour, rows_figure


def parse_args(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=30, out="results/mevae", patience=5)
    positive = checks.arg(checks.positive_int)
    p.add_argument("-K", "--entities", type=positive, default=4, help="entities per scene (K)")
    p.add_argument("--what-dim", type=positive, default=12,
                   help="appearance code per entity (its latent has 3 more values)")
    p.add_argument("--canvas", type=checks.arg(checks.integer, low=28,
                                               hint="a digit is 28x28 pixels"),
                   default=64, help="scene side in pixels")
    p.add_argument("--min-digits", type=positive, default=1)
    p.add_argument("--max-digits", type=positive, default=4)
    p.add_argument("--min-distance", type=checks.arg(checks.nonnegative_float), default=14.0,
                   help="least distance between digit centres, pixels")
    p.add_argument("--train-scenes", type=positive, default=20000)
    p.add_argument("--val-scenes", type=positive, default=2000)
    p.add_argument("--test-scenes", type=positive, default=2000)
    p.add_argument("--baseline", default="conv", choices=["conv", "mlp", "none"],
                   help="plain VAE network (none: MEVAE only)")
    p.add_argument("--baseline-z", type=positive, default=None,
                   help="plain VAE latent size (default: K x (what-dim + 3))")
    p.add_argument("--objective", default="meanfield", choices=["trace", "meanfield"],
                   help="trace: Monte Carlo KL, meanfield: analytic KL")
    p.add_argument("--elbo-particles", type=positive, default=10, help="samples per test -ELBO")
    p.add_argument("-k", "--iw-samples", type=checks.arg(checks.nonnegative_int), default=100,
                   help="importance samples of the test NLL (0: skip)")
    p.add_argument("--iw-size", type=positive, default=500, help="test scenes in the NLL estimate")
    p.add_argument("--min-ink", type=checks.arg(checks.nonnegative_float), default=20.0,
                   help="an entity is active when it draws this many pixels' worth of ink")
    args = cli.finish_args(p, argv, smoke=dict(train_scenes=128, val_scenes=32, test_scenes=32,
                                               iw_samples=4, iw_size=8, elbo_particles=2))
    return args


def train(model, splits, args, name):
    set_seed(args.seed)
    print(f"\n== {name}: {model.extra_repr()} | {sum(p.numel() for p in model.parameters())} "
          f"parameters ==", flush=True)
    result = fit(model, splits["train"], splits["val"], cli.fit_config(args),
                 objective=args.objective, checkpoint=str(args.out / f"checkpoint_{name}.pt"),
                 callbacks=cli.trackers(args, name))
    save_model(model, args.out / f"{name}.pt")
    return result


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    splits = scene_splits(args.train_scenes, args.val_scenes, args.test_scenes, canvas=args.canvas,
                          min_digits=args.min_digits, max_digits=args.max_digits,
                          min_distance=args.min_distance, val_size=args.val_size,
                          binarize="dynamic", seed=args.seed, truth=("test",), device=args.device)
    if "val" not in splits:
        raise ConfigError("the scenes need a validation split: --val-size must be > 0.")
    truth = splits["test"]
    x_test, _, seg, counts = truth.tensors[:4]
    made = dict(dataset="mnist_scenes", canvas=args.canvas, min_digits=args.min_digits,
                max_digits=args.max_digits, min_distance=args.min_distance, binarize="dynamic",
                scenes=[args.train_scenes, args.val_scenes, args.test_scenes],
                val_size=args.val_size, seed=args.seed)
    data = {k: cli.with_settings(images_only(v), getattr(v, "settings", None), split=k, **made)
            for k, v in splits.items()}
    image_shape = (1, args.canvas, args.canvas)
    print(f"scenes: {len(data['train'])} train / {len(data['val'])} val / "
          f"{len(data['test'])} test, {args.canvas}x{args.canvas}, "
          f"{args.min_digits}-{args.max_digits} digits", flush=True)

    set_seed(args.seed)
    mevae = MEVAE(image_shape, num_entities=args.entities,
                  what_dim=args.what_dim).to(args.device)
    models = {"mevae": mevae}
    if args.baseline != "none":
        set_seed(args.seed)
        z_dim = args.entities * mevae.latent_dim if args.baseline_z is None else args.baseline_z
        models["vae"] = VAE(image_shape, z_dim=z_dim, net=args.baseline).to(args.device)
    fits = {name: train(model, data, args, name) for name, model in models.items()}
    results, rows = {}, []
    for name, model in models.items():
        model.eval()
        t0 = time.perf_counter()
        rec = likelihood_report(model, data["test"], elbo_particles=args.elbo_particles,
                                iw_samples=args.iw_samples, iw_size=args.iw_size, groups=counts,
                                seed=args.seed, progress=not args.no_progress)
        rec["neg_elbo_by_count"] = rec.pop("neg_elbo_by_group")
        rec["eval_seconds"] = time.perf_counter() - t0
        rec.update(latent_dims=model.num_entities * model.latent_dim if name == "mevae"
                   else model.z_dim, parameters=sum(p.numel() for p in model.parameters()),
                   epochs_run=fits[name].epochs_run, best_epoch=fits[name].best_epoch + 1,
                   train_seconds=fits[name].train_seconds)
        results[name] = rec

    # decomposition quality (MEVAE only)
    dec = decomposition_report(mevae.decompose, data["test"], seg, counts, args.min_ink)
    results["mevae"].update(ari=dec["ari"], count_accuracy=dec["count_accuracy"])
    results["by_count"] = [
        {"digits": c["digits"], "scenes": c["scenes"], "mevae_ari": c["ari"],
         "mevae_count_accuracy": c["count_accuracy"], "mevae_mean_active": c["mean_active"],
         "mevae_neg_elbo": results["mevae"]["neg_elbo_by_count"][c["digits"]],
         "vae_neg_elbo": results["vae"]["neg_elbo_by_count"][c["digits"]]
         if "vae" in results else float("nan")} for c in dec["by_count"]]
    by_count = results["by_count"]

    for name in models:
        r = results[name]
        rows.append({"model": "MEVAE" if name == "mevae" else f"VAE ({args.baseline})",
                     "latent_dims": r["latent_dims"], "parameters": r["parameters"],
                     "neg_elbo": r["neg_elbo"],
                     f"iw_nll_k{args.iw_samples}": r.get("iw_nll", float("nan")),
                     "ari": r.get("ari", float("nan")),
                     "count_accuracy": r.get("count_accuracy", float("nan")),
                     "epochs": r["epochs_run"], "train_min": r["train_seconds"] / 60})

    # figures
    n = min(10, x_test.shape[0])
    parts = mevae.decompose(x_test[:n])
    fig_rows = {"input": x_test[:n], "MEVAE": parts["reconstruction"],
                "entities": colourize(parts["ink"])}
    if "vae" in models:
        fig_rows["VAE"] = models["vae"].reconstruct(x_test[:n])
    for k in range(args.entities):
        fig_rows[f"entity {k + 1}"] = one_colour(parts["ink"][:, k], k)
    rows_figure(fig_rows, path=args.out / "decomposition.png",
                title="test scenes: reconstructions from the posterior means, entities by KL rank")
    kl_map_figure(x_test[:n], parts, mevae.grid, args.out / "kl_map.png")
    set_seed(args.seed)
    gen = mevae.generate(n)
    sample_rows = {"MEVAE": gen["mean"], "entities": colourize(gen["ink"])}
    if "vae" in models:
        set_seed(args.seed)
        sample_rows["VAE"] = models["vae"].sample(n)
    rows_figure(sample_rows, path=args.out / "samples.png", title="scenes drawn from the prior")
    learning_curves({("MEVAE" if k == "mevae" else "VAE"): f.history for k, f in fits.items()},
                    path=args.out / "learning_curves.png",
                    ylabel=f"{args.objective} loss per scene (nats)")

    print(f"\nTest scenes (nats per scene; NLL on the first {args.iw_size}):")
    cli.print_table(rows)
    print("\nBy number of digits:")
    cli.print_table(by_count)
    cli.write_table(args.out / "by_count.csv", by_count)
    record = cli.write_results(args.out, results, args, started, table=rows)
    print(f"wall time {record['wall_seconds'] / 60:.1f} min on {record['machine']} "
          f"({args.device}); outputs in {args.out}/")
    return record


if __name__ == "__main__":
    sys.exit(cli.run(main))
