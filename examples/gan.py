"""GANs on MNIST, CIFAR-10 and the 1-D toy: minimax vs non-saturating, WGAN-GP and hinge losses,
MLP or DCGAN networks (Goodfellow et al. 2014; Radford et al. 2016).

Each GAN is a Pyro model (``z ~ p(z)``, ``x = G(z)`` a deterministic site) trained by
``probgen.fit`` as a two-player game: k discriminator steps, each on a fresh batch and fresh
noise, then one generator step. Several ``--loss`` values train one GAN each from the same
seed, so their curves compare directly (the minimax loss's slow start against the
non-saturating one's). On MNIST the sample quality is "FID, MNIST-classifier features"
(probgen.metrics.quality: not comparable with published Inception FIDs), computed every
``--fid-every`` epochs on ``--fid-samples`` samples against the MNIST test set, and at the
end FID, KID, precision/recall and the classes covered on ``--eval-samples`` samples.
CIFAR-10 (and other colour data) get an FID only with Inception weights
(``--inception-weights PATH``). The 1-D toy (z ~ U(0, 1), data N(-1, 1)) reports the mean
and standard deviation of G(z) and draws the histogram of G(z) over the target density with
D(x) over [-5, 5] at several points of training; its recipe adds the R1 penalty (``--r1 1``,
Mescheder et al. 2018), without which the game circles its equilibrium and the moments
land where the decaying learning rate leaves them. ``--ema 0.999`` draws the samples from a
moving average of the generator's weights (the live generator's FID is recorded beside it).
Training time is recorded as wall seconds and, per epoch, this process's CPU seconds
(``cpu_seconds``: with ``--threads 1``, the cost whatever else the machine runs).

Writes to --out: results.json, results.csv, losses.png (G and D losses per epoch),
fid.png (the FID curve), samples_<data>_<loss>.png (final samples),
over_training_<data>_<loss>.png (the same noise through G at several epochs),
toy1d_<loss>.png (the toy's figure) and one checkpoint per GAN, gan_<data>_<loss>.pt
(``--resume`` continues from them; ``probgen.load`` rebuilds the GAN from one).

    python examples/gan.py                                   # DCGAN, non-saturating, MNIST
    python examples/gan.py --loss minimax non_saturating     # both from the same seed
    python examples/gan.py --loss wgan_gp --epochs 10        # k = 5 critic steps by default
    python examples/gan.py --ema 0.999 --label-smoothing 0.1
    python examples/gan.py --width 16 16 --lr 1e-3 --ema 0.99   # the CPU's recipe (README)
    python examples/gan.py --data toy1d                      # the 1-D toy (R1 penalty 1)
    python examples/gan.py --data cifar10 --data-root DIR    # downloads when online
    python examples/gan.py --smoke                           # seconds
"""

from __future__ import annotations

import sys
import time

import torch

from probgen import checks, cli
from probgen.data import recipes
from probgen.infer.adversarial import ADVERSARIAL_LOSSES, player_optim
from probgen.metrics.quality import FIDCurve, report_line
from probgen.models import GAN
from probgen.train import fit, set_seed
from probgen.train.callbacks import Snapshots, TrainingCPUTime, training_seconds
from probgen.viz import (
    discriminator_figure,
    discriminator_snapshot,
    fid_curve_figure,
    grid_figure,
    history_figure,
    rows_figure,
)

DATA = ("mnist", "toy1d", "cifar10")
ARCHS = ("mlp", "dcgan")
# The toy's recipe, measured over seeds: without the R1 penalty the game circles its
# equilibrium and where the decaying learning rate leaves it differs from seed to seed.
TOY = dict(hidden=[64, 64], lr=1e-3, batch_size=256, epochs=40, toy_size=16384,
           schedule="cosine", r1=1.0)


def parse_args(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=5, out="results/gan", patience=None,
                          lr=2e-4, batch_size=64, val_size=0, need_val=False)
    positive = checks.arg(checks.positive_int)
    below_one = checks.arg(checks.real, low=0, high=1, high_open=True)
    p.add_argument("--data", default="mnist", choices=DATA)
    p.add_argument("--loss", nargs="+", default=["non_saturating"],
                   choices=ADVERSARIAL_LOSSES.names(), help="one GAN per loss, same seed")
    p.add_argument("--k", type=positive, default=None,
                   help="discriminator steps per generator step (default: 1; 5 for wgan_gp)")
    p.add_argument("--label-smoothing", type=below_one, default=0.0,
                   help="one-sided: the real label becomes 1 - this (minimax, non_saturating)")
    p.add_argument("--arch", default=None, choices=ARCHS,
                   help="networks (default: dcgan for images, mlp for toy1d)")
    p.add_argument("--z-dim", type=positive, default=None, help="noise size (100; 1 for toy1d)")
    p.add_argument("--prior", default=None, choices=["normal", "uniform"],
                   help="p(z) (default: normal; uniform for toy1d)")
    p.add_argument("--output", default="tanh", choices=["tanh", "sigmoid"],
                   help="the generator's output activation (images)")
    p.add_argument("--width", type=positive, nargs=2, default=None, metavar=("G", "D"),
                   help="DCGAN base widths of the generator and discriminator")
    p.add_argument("--hidden", type=positive, nargs="+", default=None,
                   help="MLP hidden sizes of both networks")
    p.add_argument("--r1", type=checks.arg(checks.nonnegative_float), default=None,
                   help="gamma of the R1 penalty on D's gradient at the data (Mescheder et al. "
                        "2018; default 0, 1 for toy1d)")
    p.add_argument("--ema", type=below_one, default=0.0,
                   help="decay of a moving average of G's weights that draws the samples "
                        "(0: none; 0.999 is usual)")
    p.add_argument("--d-lr", type=checks.arg(checks.positive_float), default=None,
                   help="discriminator lr (default --lr)")
    p.add_argument("--g-lr", type=checks.arg(checks.positive_float), default=None,
                   help="generator lr (default --lr)")
    p.add_argument("--schedule", default=None,
                   help="learning-rate schedule (cosine, linear, ...; default none, cosine "
                        "for toy1d)")
    p.add_argument("--fid-every", type=checks.arg(checks.nonnegative_int), default=1,
                   help="epochs between FIDs (0: never)")
    p.add_argument("--fid-samples", type=cli.sample_count(), default=10000,
                   help="samples per FID")
    p.add_argument("--eval-samples", type=cli.sample_count(), default=10000,
                   help="samples of the final FID, KID, precision/recall, coverage")
    p.add_argument("--keep-best", action="store_true",
                   help="keep the weights of the epoch with the lowest FID (and stop after "
                        "--patience FIDs without improvement)")
    p.add_argument("--snapshots", type=positive, default=5,
                   help="epochs at which samples (and the toy's D) are drawn")
    p.add_argument("--toy-size", type=positive, default=None,
                   help=f"toy1d: data points (default {TOY['toy_size']})")
    cli.image_source_flags(p)
    args = cli.finish_args(p, argv, smoke=dict(
        fid_samples=300, eval_samples=1000, snapshots=2, toy_size=1024, width=[8, 8],
        hidden=[16, 16]))
    cli.check_inception_samples(p, args, "fid_samples", "eval_samples")
    if args.data == "toy1d":
        if args.arch == "dcgan":
            p.error("the 1-D toy takes --arch mlp")
        args.arch = "mlp"
        cli.apply_defaults(p, args, TOY)   # the toy's recipe, where the command line is silent
    args.arch = args.arch or "dcgan"
    args.r1 = args.r1 or 0.0
    if args.keep_best and args.fid_every == 0:
        p.error("--keep-best follows the FID: give --fid-every >= 1")
    return args


def load_data(args):
    """``(train TensorData, test images or None, data_shape, data_range)``."""
    if args.data == "toy1d":
        return recipes.toy1d(args.toy_size, args.seed, args.device), None, (1,), None
    splits = cli.data_splits(args, limit=cli.SMOKE_LIMIT if args.smoke else None)
    train = splits["train"]
    return train, splits["test"].tensors[0], tuple(train.tensors[0].shape[1:]), (0.0, 1.0)


def build(args, loss: str, data_shape, data_range) -> GAN:
    toy = args.data == "toy1d"
    kw = dict(data_shape=data_shape, net=args.arch, loss=loss, k=args.k,
              label_smoothing=args.label_smoothing, r1_weight=args.r1, ema=args.ema,
              output="identity" if toy else args.output,
              data_range=None if toy else data_range,
              z_dim=args.z_dim or (1 if toy else 100),
              prior=args.prior or ("uniform" if toy else "normal"))
    if args.arch == "mlp" and args.hidden:
        kw.update(g_hidden=tuple(args.hidden), d_hidden=tuple(args.hidden))
    if args.arch == "dcgan" and args.width:
        kw.update(g_width=args.width[0], d_width=args.width[1])
    return GAN(**kw)


def train_one(args, loss, data, scorer):
    train, _test_images, data_shape, data_range = data
    set_seed(args.seed)
    gan = build(args, loss, data_shape, data_range).to(args.device)
    n_params = {k: sum(p.numel() for p in getattr(gan, k).parameters())
                for k in ("generator", "discriminator")}
    print(f"\n== {args.data}: {gan.extra_repr()} | G {n_params['generator']:,} / "
          f"D {n_params['discriminator']:,} parameters ==", flush=True)
    toy, tag = args.data == "toy1d", f"{args.data}_{loss}"
    grid = torch.linspace(-5, 5, 401, device=gan.device) if toy else None
    n_shot = (1000 if args.smoke else 20000) if toy else 10
    shots = Snapshots(Snapshots.spread(args.epochs, args.snapshots),
                      lambda g: discriminator_snapshot(g, n_shot, args.seed + 7, grid))
    callbacks = [shots]
    if scorer is not None and args.fid_every:
        callbacks.append(FIDCurve(scorer.fid, args.fid_samples, args.fid_every, args.seed + 11))
    callbacks += [TrainingCPUTime(leave_out=["fid"]), *cli.trackers(args, tag)]
    over = dict(checkpoint=str(args.out / f"gan_{tag}.pt"), lr_schedule=args.schedule,
                phase_optim=player_optim(gan, d_lr=args.d_lr, g_lr=args.g_lr))
    over.update(dict(monitor="fid", mode="min", restore_best=True) if args.keep_best else
                dict(patience=None, restore_best=False))
    result = fit(gan, train, None, cli.fit_config(args, **over), callbacks=callbacks)
    wall, cpu = training_seconds(result.history)   # the FIDs left out
    record = {"loss": loss, "arch": args.arch, "k": gan.k, "label_smoothing": gan.label_smoothing,
              "r1_weight": gan.r1_weight, "ema": gan.ema,
              "epochs": result.epochs_run, "parameters": n_params, "train_seconds": wall,
              "fid_seconds": result.train_seconds - wall, "train_cpu_seconds": cpu,
              "best_epoch": (result.best_epoch + 1) if args.keep_best and
              result.best_epoch is not None else None,
              "history": [dict(h) for h in result.history]}
    if toy:
        set_seed(args.seed + 3)
        x = gan.sample(100000 if not args.smoke else 2000)
        record.update(mean=float(x.mean()), std=float(x.std()),
                      mean_error=float(x.mean()) - recipes.TOY1D_MEAN,
                      std_error=float(x.std()) - recipes.TOY1D_STD)
        target = torch.distributions.Normal(recipes.TOY1D_MEAN, recipes.TOY1D_STD)
        discriminator_figure(shots.taken, grid, target.log_prob(grid.cpu()).exp(),
                             args.out / f"toy1d_{loss}.png", target_label="N(-1, 1)",
                             title=f"1-D toy, {loss} loss: G(z) (histogram) over N(-1, 1), D(x) "
                             f"in red" + ("" if gan.spec.probability else
                                          " (a critic: rescaled to [0, 1])"))
        print(f"{loss}: G(z) mean {record['mean']:.4f} (target -1), std {record['std']:.4f} "
              f"(target 1) over {x.shape[0]} samples", flush=True)
        return gan, record
    final = gan.sample(64, generator=torch.Generator().manual_seed(args.seed + 5))
    grid_figure(final.cpu(), nrow=8, path=args.out / f"samples_{tag}.png",
                title=f"{args.data}, {args.arch}, {loss} loss: samples")
    rows = {label: s["samples"][:10] for label, s in shots.taken.items()}
    if rows:
        rows_figure(rows, args.out / f"over_training_{tag}.png",
                    title=f"{loss}: the same z through G over training")
    if scorer is not None:
        q = scorer.sample_report(gan, args.eval_samples, seed=args.seed + 13)
        # (the report's own "k" is precision/recall's neighbour, not the GAN's k)
        record.update({key: v for key, v in q.items() if key not in ("k", "class_histogram",
                                                                     "eval_seconds")},
                      pr_neighbour=q.get("k"), class_histogram=q.get("class_histogram"),
                      eval_seconds=q["eval_seconds"])
        print(f"{loss}: {report_line(q)} ({args.eval_samples} samples; "
              f"{record['train_seconds']:.0f} s of training)", flush=True)
    return gan, record


def table(records: dict[str, dict], data: str) -> list[dict]:
    keys = ("mean", "std") if data == "toy1d" else \
        ("fid", "kid_mean", "precision", "recall", "classes_covered")
    return [{"data": data, "loss": loss, **{k: r[k] for k in (
        "arch", "k", "label_smoothing", "epochs", "train_seconds", "train_cpu_seconds")},
             **{k: r.get(k) for k in keys}} for loss, r in records.items()]


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    data = load_data(args)
    scorer = cli.quality_scorer(args, data[1]) if args.data != "toy1d" else None
    records, histories = {}, {}
    for loss in args.loss:
        _, records[loss] = train_one(args, loss, data, scorer)
        histories[loss] = records[loss]["history"]
    history_figure(histories, ["train_loss/D", "train_loss/G"], args.out / "losses.png",
                   titles={"train_loss/D": "discriminator loss (per step, epoch mean)",
                           "train_loss/G": "generator loss (per step, epoch mean)"},
                   figsize=(10, 3.6))
    if scorer is not None:
        fid_curve_figure(histories, args.out / "fid.png", scorer.fid_name)
    return cli.finish_run(args, {"data": args.data, "fid_name": scorer.fid_name if scorer
                                 else None, "gans": records}, started, table(records, args.data))


if __name__ == "__main__":
    sys.exit(cli.run(main))
