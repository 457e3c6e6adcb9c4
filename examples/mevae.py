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

import csv
import math
import sys
import time

import torch

from probgen import checks, cli
from probgen.data.scenes import images_only, scene_splits
from probgen.errors import ConfigError
from probgen.metrics.likelihood import elbo_and_iw_nll, elbo_per_example
from probgen.metrics.segmentation import decomposition_scores
from probgen.models.mevae import MEVAE
from probgen.models.vae import VAE
from probgen.train import fit, save_model, set_seed
from probgen.viz import learning_curves, rows_figure
from probgen.viz.images import new_figure, save

COLOURS = torch.tensor([[0.95, 0.25, 0.2], [0.2, 0.6, 1.0], [0.3, 0.85, 0.3], [1.0, 0.8, 0.1],
                        [0.8, 0.35, 0.95], [0.1, 0.9, 0.9], [1.0, 0.5, 0.0], [0.9, 0.9, 0.9]])


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


def colourize(ink: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)`` entity inks -> ``(B, 3, H, W)``, each entity in its own colour."""
    k = ink.shape[1]
    colours = COLOURS.to(ink)[torch.arange(k, device=ink.device) % len(COLOURS)]
    return torch.einsum("bkhw,kc->bchw", ink, colours).clamp(0, 1)


def one_colour(ink: torch.Tensor, k: int) -> torch.Tensor:
    """One entity's ink ``(B, H, W)`` in entity k's colour, ``(B, 3, H, W)``."""
    return ink.unsqueeze(1) * COLOURS[k % len(COLOURS)].to(ink).view(1, 3, 1, 1)


def kl_map_figure(x, parts, grid, path, n=6):
    """Top: scenes with the kept cells boxed and their entities' centres crossed, in the
    entities' colours; bottom: every candidate's KL on the grid, the kept ones numbered."""
    from matplotlib.patches import Rectangle

    n = min(n, x.shape[0])
    fig, axes = new_figure(2, n, figsize=(1.8 * n, 3.7), squeeze=False)
    canvas = x.shape[-1]
    cell = canvas / grid
    for j in range(n):
        top, bottom = axes[0, j], axes[1, j]
        top.imshow(x[j, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        im = bottom.imshow(parts["kl"][j].cpu().numpy(), cmap="magma", interpolation="nearest")
        for r, idx in enumerate(parts["indices"][j].tolist()):
            colour = COLOURS[r % len(COLOURS)].tolist()
            gy, gx = divmod(idx, grid)
            top.add_patch(Rectangle((gx * cell - 0.5, gy * cell - 0.5), cell, cell, fill=False,
                                    edgecolor=colour, lw=1.2))
            cx, cy = ((parts["centres"][j, r].cpu() + 1) * canvas / 2 - 0.5).tolist()
            top.plot([cx], [cy], "+", color=colour, ms=7, mew=1.5)
            bottom.text(gx, gy, str(r + 1), ha="center", va="center", fontsize=7, color=colour,
                        fontweight="bold")
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
        top.set_xlim(-0.5, canvas - 0.5)
        top.set_ylim(canvas - 0.5, -0.5)
        fig.colorbar(im, ax=bottom, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel("kept cells (boxes),\nentity centres (+)", fontsize=7)
    axes[1, 0].set_ylabel("KL(q || N(0, I)), nats", fontsize=7)
    fig.suptitle(f"candidate grid {grid}x{grid}: the K largest KL are kept (numbered by rank)",
                 fontsize=9)
    fig.tight_layout(pad=0.3)
    return save(fig, path)


def train(model, splits, args, name):
    set_seed(args.seed)
    print(f"\n== {name}: {model.extra_repr()} | {sum(p.numel() for p in model.parameters())} "
          f"parameters ==", flush=True)
    result = fit(model, splits["train"], splits["val"], cli.fit_config(args),
                 objective=args.objective, checkpoint=str(args.out / f"checkpoint_{name}.pt"),
                 callbacks=cli.trackers(args, name))
    save_model(model, args.out / f"{name}.pt")
    return result


def likelihood_metrics(model, test, counts, args):
    """-ELBO and IS NLL (nats per scene) and the -ELBO by digit count."""
    t0 = time.perf_counter()
    set_seed(args.seed)
    per_scene = -elbo_per_example(model.model, model.guide, test, num_particles=args.elbo_particles,
                                  batch_size=100)
    out = {"neg_elbo": float(per_scene.mean())}
    if args.iw_samples:
        set_seed(args.seed)
        sub = test.subset(slice(0, args.iw_size))
        both = elbo_and_iw_nll(model.model, model.guide, sub, elbo_particles=args.elbo_particles,
                               iw_samples=args.iw_samples, batch_size=50,
                               progress=not args.no_progress)
        out.update(iw_nll=both["iw_nll"], neg_elbo_iw_subset=both["neg_elbo"])
    out["neg_elbo_by_count"] = {int(c): float(per_scene[counts == c].mean())
                                for c in counts.unique().tolist()}
    out["eval_seconds"] = time.perf_counter() - t0
    return out


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
        rec = likelihood_metrics(model, data["test"], counts, args)
        rec.update(latent_dims=model.num_entities * model.latent_dim if name == "mevae"
                   else model.z_dim, parameters=sum(p.numel() for p in model.parameters()),
                   epochs_run=fits[name].epochs_run, best_epoch=fits[name].best_epoch + 1,
                   train_seconds=fits[name].train_seconds)
        results[name] = rec

    # decomposition quality (MEVAE only)
    scores = {"ari": [], "active": [], "count_correct": []}
    for (xb,), segb, cb in zip(data["test"].batches(200), seg.split(200), counts.split(200)):
        parts = mevae.decompose(xb)
        for k, v in decomposition_scores(parts["ink"], segb, cb, args.min_ink).items():
            scores[k].append(v.cpu())
    scores = {k: torch.cat(v) for k, v in scores.items()}
    cnt = counts.cpu()
    results["mevae"].update(ari=float(scores["ari"].mean()),
                            count_accuracy=float(scores["count_correct"].float().mean()))
    by_count = []
    for c in cnt.unique().tolist():
        sel = cnt == c
        by_count.append({"digits": c, "scenes": int(sel.sum()),
                         "mevae_ari": float(scores["ari"][sel].mean()),
                         "mevae_count_accuracy": float(scores["count_correct"][sel].float().mean()),
                         "mevae_mean_active": float(scores["active"][sel].float().mean()),
                         "mevae_neg_elbo": results["mevae"]["neg_elbo_by_count"][c],
                         "vae_neg_elbo": results["vae"]["neg_elbo_by_count"][c]
                         if "vae" in results else float("nan")})
    results["by_count"] = by_count

    for name, model in models.items():
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
    with open(args.out / "by_count.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(by_count[0]))
        w.writeheader()
        for row in by_count:
            w.writerow({k: f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else v
                        for k, v in row.items()})
    record = cli.write_results(args.out, results, args, started, table=rows)
    print(f"wall time {record['wall_seconds'] / 60:.1f} min on {record['machine']} "
          f"({args.device}); outputs in {args.out}/")
    return record


if __name__ == "__main__":
    sys.exit(cli.run(main))
