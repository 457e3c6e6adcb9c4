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
from pathlib import Path
from typing import Dict, List, Optional

import torch

from probgen import checks, cli
from probgen.data import TensorData, image_splits
from probgen.errors import DataNotFoundError
from probgen.infer.adversarial import ADVERSARIAL_LOSSES
from probgen.models import GAN
from probgen.train import Callback, fit, set_seed
from probgen.viz import grid_figure, rows_figure
from probgen.viz.images import new_figure, save

DATA = ("mnist", "toy1d", "cifar10")
ARCHS = ("mlp", "dcgan")
TOY_MEAN, TOY_STD = -1.0, 1.0
# The toy's recipe, measured over seeds: without the R1 penalty the game circles its
# equilibrium and where the decaying learning rate leaves it differs from seed to seed.
TOY = dict(hidden=(64, 64), lr=1e-3, batch_size=256, epochs=40, size=16384, schedule="cosine",
           r1=1.0)


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
    fid_samples = checks.arg(checks.integer, low=cli.MIN_FID_SAMPLES,
                             hint="FID on the classifier's 128 features")
    p.add_argument("--fid-samples", type=fid_samples, default=10000, help="samples per FID")
    p.add_argument("--eval-samples", type=fid_samples, default=10000,
                   help="samples of the final FID, KID, precision/recall, coverage")
    p.add_argument("--keep-best", action="store_true",
                   help="keep the weights of the epoch with the lowest FID (and stop after "
                        "--patience FIDs without improvement)")
    p.add_argument("--snapshots", type=positive, default=5,
                   help="epochs at which samples (and the toy's D) are drawn")
    p.add_argument("--toy-size", type=positive, default=None,
                   help=f"toy1d: data points (default {TOY['size']})")
    p.add_argument("--data-root", default=None,
                   help="folder of torchvision data sets (default: probgen's cache)")
    p.add_argument("--no-download", action="store_true",
                   help="never download (CIFAR-10 downloads with torchvision when missing)")
    p.add_argument("--inception-weights", default=None,
                   help="Inception-v3 FID weights (a path, or 'download') for colour data")
    args = cli.finish_args(p, argv, smoke=dict(
        fid_samples=300, eval_samples=1000, snapshots=2, toy_size=1024, width=[8, 8],
        hidden=[16, 16]))
    if args.inception_weights:
        for name in ("fid_samples", "eval_samples"):
            if getattr(args, name) < cli.MIN_INCEPTION_FID_SAMPLES:
                p.error(f"--{name.replace('_', '-')} must be at least "
                        f"{cli.MIN_INCEPTION_FID_SAMPLES} for an FID on Inception's 2048 "
                        f"features, got {getattr(args, name)}")
    if args.data == "toy1d":
        if args.arch == "dcgan":
            p.error("the 1-D toy takes --arch mlp")
        args.arch = "mlp"
        # the toy's recipe, where the command line does not say otherwise
        for name, flag_default in (("lr", 2e-4), ("batch_size", 64), ("epochs", 5)):
            if getattr(args, name) == flag_default:
                setattr(args, name, TOY[name])
        if args.smoke:
            args.epochs = 2
        if args.schedule is None:
            args.schedule = TOY["schedule"]
        if args.hidden is None:
            args.hidden = list(TOY["hidden"])
        if args.toy_size is None:
            args.toy_size = TOY["size"]
        if args.r1 is None:
            args.r1 = TOY["r1"]
    if args.arch is None:
        args.arch = "dcgan"
    if args.r1 is None:
        args.r1 = 0.0
    if args.keep_best and args.fid_every == 0:
        p.error("--keep-best follows the FID: give --fid-every >= 1")
    return args


# --------------------------------------------------------------------------- data

def load_data(args):
    """``(train TensorData, test images or None, data_shape, data_range)``."""
    if args.data == "toy1d":
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.toy_size, 1, generator=g) * TOY_STD + TOY_MEAN
        data = cli.with_settings(TensorData(x.to(args.device)), dataset="toy1d",
                                 size=args.toy_size, seed=args.seed)
        return data, None, (1,), None
    try:
        splits = image_splits(args.data, val_size=args.val_size, seed=args.seed,
                              device=args.device, root=args.data_root,
                              download=not args.no_download and args.data != "mnist",
                              limit=cli.SMOKE_LIMIT if args.smoke else None)
    except OSError as err:   # a download that could not reach the network
        raise DataNotFoundError(f"{args.data} is not under {args.data_root or 'the cache folder'} "
                                f"and could not be downloaded ({err}); copy the files there, "
                                f"or run where the network is reachable.") from None
    train = splits["train"]
    return train, splits["test"].tensors[0], tuple(train.tensors[0].shape[1:]), (0.0, 1.0)


def build(args, loss: str, data_shape, data_range) -> GAN:
    kw = dict(data_shape=data_shape, net=args.arch, loss=loss, k=args.k,
              label_smoothing=args.label_smoothing, r1_weight=args.r1, d_lr=args.d_lr,
              g_lr=args.g_lr, ema=args.ema)
    toy = args.data == "toy1d"

    def given(value, default):
        return default if value is None else value

    if toy:
        kw.update(z_dim=given(args.z_dim, 1), prior=given(args.prior, "uniform"),
                  output="identity", data_range=None)
    else:
        kw.update(z_dim=given(args.z_dim, 100), prior=given(args.prior, "normal"),
                  output=args.output, data_range=data_range)
    if args.arch == "mlp" and args.hidden:
        kw.update(g_hidden=tuple(args.hidden), d_hidden=tuple(args.hidden))
    if args.arch == "dcgan" and args.width:
        kw.update(g_width=args.width[0], d_width=args.width[1])
    return GAN(**kw)


# --------------------------------------------------------------------------- callbacks

class FIDCurve(Callback):
    """The FID every ``every`` epochs (and at the last), on fixed noise, and its time.

    The noise comes from a generator of its own, so the curve compares the same ``z``
    over training and the training's random stream is left alone.
    """

    def __init__(self, score, n: int, every: int, seed: int):
        self.score, self.n, self.every, self.seed = score, n, every, seed

    def on_validation_end(self, run, entry):
        last = entry["epoch"] + 1 == run.config.epochs
        if (entry["epoch"] + 1) % self.every and not last:
            return
        t0, c0 = time.perf_counter(), time.process_time()
        gen = torch.Generator().manual_seed(self.seed)
        entry["fid"] = self.score(run.module.sample(self.n, generator=gen))
        if run.module.ema:   # the live generator's, from the same noise
            gen = torch.Generator().manual_seed(self.seed)
            entry["fid_live"] = self.score(run.module.sample(self.n, generator=gen,
                                                             averaged=False))
        entry["fid_seconds"] = time.perf_counter() - t0
        entry["fid_cpu_seconds"] = time.process_time() - c0


class CPUClock(Callback):
    """This process's CPU seconds of training per epoch (``cpu_seconds``), FIDs left out.

    On a shared machine the wall clock counts the other jobs too; with one torch thread the
    process's CPU time is what the training itself cost. Put it after :class:`FIDCurve`.
    """

    def on_fit_start(self, run):
        self.last = time.process_time()

    def on_validation_end(self, run, entry):
        now = time.process_time()
        entry["cpu_seconds"] = now - self.last - entry.get("fid_cpu_seconds", 0.0)
        self.last = now


class Snapshots(Callback):
    """Samples from fixed noise at chosen epochs (and, for the toy, D(x) on a grid)."""

    def __init__(self, epochs: List[int], n: int, seed: int, grid: Optional[torch.Tensor] = None):
        self.epochs, self.n, self.seed, self.grid = set(epochs), n, seed, grid
        self.taken: Dict[str, Dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, run, entry):
        if entry["epoch"] + 1 not in self.epochs or not run.is_main:
            return
        gan = run.module
        noise = torch.Generator().manual_seed(self.seed)
        shot = {"samples": gan.sample(self.n, generator=noise).cpu()}
        if self.grid is not None:
            d = gan.discriminate(self.grid[:, None]).cpu()
            if not gan.spec.probability:   # a critic's values: rescaled to [0, 1] to draw
                d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-12)
            shot["d"] = d
        self.taken[f"epoch {entry['epoch'] + 1}"] = shot

    def state_dict(self):
        return {"taken": self.taken}

    def load_state_dict(self, state):
        self.taken = dict(state.get("taken", {}))


def snapshot_epochs(epochs: int, n: int) -> List[int]:
    picks = {max(1, round(epochs * (i + 1) / n)) for i in range(n)}
    return sorted(picks | {1, epochs})


# --------------------------------------------------------------------------- figures

def loss_figure(histories: Dict[str, list], path: Path):
    fig, axes = new_figure(1, 2, figsize=(10, 3.6))
    for i, (label, hist) in enumerate(histories.items()):
        ep = [h["epoch"] + 1 for h in hist]
        axes[0].plot(ep, [h["train_loss/D"] for h in hist], color=f"C{i}", label=label)
        axes[1].plot(ep, [h["train_loss/G"] for h in hist], color=f"C{i}", label=label)
    axes[0].set_title("discriminator loss (per step, epoch mean)", fontsize=9)
    axes[1].set_title("generator loss (per step, epoch mean)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def fid_figure(histories: Dict[str, list], path: Path, name: str):
    """FID against epochs and against training time: this process's CPU minutes where
    every epoch recorded them (one thread: what the training cost, whatever else ran),
    else wall minutes; FID computations left out of both."""
    fig, axes = new_figure(1, 2, figsize=(10, 3.6))
    cpu = all("cpu_seconds" in h for hist in histories.values() for h in hist)
    for i, (label, hist) in enumerate(histories.items()):
        rows = [h for h in hist if h.get("fid") is not None]
        if not rows:
            continue
        elapsed, t = [], 0.0
        for h in hist:
            t += h["cpu_seconds"] if cpu else h["seconds"] - h.get("fid_seconds", 0.0)
            if h.get("fid") is not None:
                elapsed.append(t / 60)
        axes[0].plot([h["epoch"] + 1 for h in rows], [h["fid"] for h in rows], "o-",
                     color=f"C{i}", label=label)
        axes[1].plot(elapsed, [h["fid"] for h in rows], "o-", color=f"C{i}", label=label)
        if all("fid_live" in h for h in rows):   # with --ema: the live generator dashed
            axes[0].plot([h["epoch"] + 1 for h in rows], [h["fid_live"] for h in rows], "x--",
                         color=f"C{i}", label=f"{label}, live G")
            axes[1].plot(elapsed, [h["fid_live"] for h in rows], "x--", color=f"C{i}",
                         label=f"{label}, live G")
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training CPU minutes (one thread)" if cpu else "training minutes")
    for ax in axes:
        ax.set_ylabel(name)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def toy_figure(shots: Dict[str, Dict[str, torch.Tensor]], grid: torch.Tensor, path: Path,
               title: str):
    n = len(shots)
    grid = grid.cpu()   # (drawn by matplotlib)
    fig, axes = new_figure(1, n, figsize=(3.2 * n, 3.0), squeeze=False)
    target = torch.distributions.Normal(TOY_MEAN, TOY_STD).log_prob(grid).exp()
    for ax, (label, shot) in zip(axes[0], shots.items()):
        x = shot["samples"].reshape(-1)
        ax.hist(x.clamp(-5, 5).numpy(), bins=80, range=(-5, 5), density=True, alpha=0.5,
                color="C0", label="G(z)")
        ax.plot(grid.numpy(), target.numpy(), color="k", lw=1, label="N(-1, 1)")
        ax.plot(grid.numpy(), shot["d"].numpy(), color="C3", lw=1.2, label="D(x)")
        ax.axhline(0.5, color="C3", lw=0.6, ls=":")
        ax.set_xlim(-5, 5)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{label}: mean {x.mean():.3f}, std {x.std():.3f}", fontsize=8)
        ax.set_xlabel("x")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


# --------------------------------------------------------------------------- training

def quality_scorer(args, test_images):
    """``(fid(samples), full report(samples), name)``, or ``None`` where no features fit."""
    try:
        from probgen.metrics import quality
    except ImportError:
        return None
    if args.data == "mnist":
        kw = {}
        ref = quality.reference_statistics(test_images)
        name = quality.FID_NAME
    elif args.inception_weights:
        kw = dict(feature="inception", inception_weights=args.inception_weights)
        ref = quality.reference_statistics(test_images, **kw)
        name = quality.INCEPTION_FID_NAME
    else:
        return None

    def report(samples):   # KID's subsets of 1000, fewer in a smoke run
        return quality.sample_quality(samples, ref, kid_subset_size=min(
            1000, len(ref), samples.shape[0]), **kw)

    return (lambda s: quality.fid(s, ref, **kw)), report, name


def train_one(args, loss, data, scorer):
    train, test_images, data_shape, data_range = data
    set_seed(args.seed)
    gan = build(args, loss, data_shape, data_range).to(args.device)
    n_params = {k: sum(p.numel() for p in getattr(gan, k).parameters())
                for k in ("generator", "discriminator")}
    print(f"\n== {args.data}: {gan.extra_repr()} | G {n_params['generator']:,} / "
          f"D {n_params['discriminator']:,} parameters ==", flush=True)
    callbacks = []
    grid = torch.linspace(-5, 5, 401, device=gan.device) if args.data == "toy1d" else None
    n_shot = (1000 if args.smoke else 20000) if args.data == "toy1d" else 10
    shots = Snapshots(snapshot_epochs(args.epochs, args.snapshots), n_shot, args.seed + 7, grid)
    callbacks.append(shots)
    if scorer is not None and args.fid_every:
        callbacks.append(FIDCurve(scorer[0], args.fid_samples, args.fid_every, args.seed + 11))
    callbacks.append(CPUClock())
    over = dict(checkpoint=str(args.out / f"gan_{args.data}_{loss}.pt"), lr_schedule=args.schedule)
    if args.keep_best:
        over.update(monitor="fid", mode="min", restore_best=True)
    else:
        over.update(patience=None, restore_best=False)
    callbacks += cli.trackers(args, f"{args.data}_{loss}")
    result = fit(gan, train, None, cli.fit_config(args, **over), callbacks=callbacks)
    fid_seconds = sum(h.get("fid_seconds", 0.0) for h in result.history)
    record = {"loss": loss, "arch": args.arch, "k": gan.k, "label_smoothing": gan.label_smoothing,
              "r1_weight": gan.r1_weight, "ema": gan.ema,
              "epochs": result.epochs_run, "parameters": n_params,
              "train_seconds": result.train_seconds - fid_seconds, "fid_seconds": fid_seconds,
              "train_cpu_seconds": sum(h.get("cpu_seconds", 0.0) for h in result.history),
              "best_epoch": (result.best_epoch + 1) if args.keep_best and
              result.best_epoch is not None else None,
              "history": [{k: v for k, v in h.items()} for h in result.history]}
    tag = f"{args.data}_{loss}"
    if args.data == "toy1d":
        set_seed(args.seed + 3)
        x = gan.sample(100000 if not args.smoke else 2000)
        record.update(mean=float(x.mean()), std=float(x.std()),
                      mean_error=float(x.mean()) - TOY_MEAN, std_error=float(x.std()) - TOY_STD)
        toy_figure(shots.taken, grid, args.out / f"toy1d_{loss}.png",
                   f"1-D toy, {loss} loss: G(z) (histogram) over N(-1, 1), D(x) in red"
                   + ("" if gan.spec.probability else " (a critic: rescaled to [0, 1])"))
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
        t0 = time.perf_counter()
        q = scorer[1](gan.sample(args.eval_samples,
                                 generator=torch.Generator().manual_seed(args.seed + 13)))
        # (the report's own "k" is precision/recall's neighbour, not the GAN's k)
        record.update({key: v for key, v in q.items() if key not in ("k", "class_histogram")},
                      pr_neighbour=q.get("k"), class_histogram=q.get("class_histogram"),
                      eval_seconds=time.perf_counter() - t0)
        cov = (f", classes covered {q['classes_covered']}/10 (KL to uniform "
               f"{q['class_kl']:.3f})" if q.get("classes_covered") is not None else "")
        print(f"{loss}: {q['fid_name']} {q['fid']:.2f}, KID {q['kid_mean']:.4f}, precision "
              f"{q['precision']:.3f}, recall {q['recall']:.3f}{cov} ({args.eval_samples} "
              f"samples; {record['train_seconds']:.0f} s of training)", flush=True)
    return gan, record


def table(records: Dict[str, dict], data: str) -> List[dict]:
    rows = []
    for loss, r in records.items():
        row = {"data": data, "loss": loss, "arch": r["arch"], "k": r["k"],
               "label_smoothing": r["label_smoothing"], "epochs": r["epochs"],
               "train_seconds": r["train_seconds"], "train_cpu_seconds": r["train_cpu_seconds"]}
        if data == "toy1d":
            row.update(mean=r["mean"], std=r["std"])
        else:
            for key in ("fid", "kid_mean", "precision", "recall", "classes_covered"):
                row[key] = r.get(key)
        rows.append(row)
    return rows


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    data = load_data(args)
    scorer = quality_scorer(args, data[1]) if data[1] is not None else None
    if scorer is None and args.data != "toy1d":
        print("no FID for this data: MNIST-classifier features take grey 28x28 digits; give "
              "--inception-weights for colour images", flush=True)
    records, histories = {}, {}
    for loss in args.loss:
        _, records[loss] = train_one(args, loss, data, scorer)
        histories[loss] = records[loss]["history"]
    loss_figure(histories, args.out / "losses.png")
    if scorer is not None:
        fid_figure(histories, args.out / "fid.png", scorer[2])
    rows = table(records, args.data)
    print()
    cli.print_table(rows)
    record = cli.write_results(args.out, {"data": args.data, "fid_name": scorer[2] if scorer
                                          else None, "gans": records}, args, started, table=rows)
    print(f"\nwrote {args.out}/results.json, results.csv and figures "
          f"({record['wall_seconds']:.0f} s on {record['machine']}, {args.device})")
    return record


if __name__ == "__main__":
    sys.exit(cli.run(main))
