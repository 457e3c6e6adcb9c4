"""Adversarial autoencoders on MNIST: the three encoder kinds, any prior, label-conditional
variants (Makhzani et al. 2015, "Adversarial Autoencoders").

Each AAE is a Pyro model/guide pair (probgen.models.AAE) trained by ``probgen.fit`` in three
phases per batch: reconstruction (encoder + decoder), regularization-discriminator (prior
draws real, codes fake) and regularization-generator (the encoder fools the discriminator),
in the order ``--phase-order`` gives. Several ``--encoder`` kinds train one AAE each from the
same seed. Each is measured on the test set by probgen.metrics.report.aae_report: the
Parzen-window log-likelihood of ``--parzen-samples`` decoded prior draws, the window chosen
on ``--parzen-val`` validation images (Makhzani et al. Table 1: 340 +- 2 nats for the AAE,
225 +- 2 for the GAN of Goodfellow et al. 2014, "Generative Adversarial Nets"; see
probgen.metrics.parzen for why the estimator is a poor one); the reconstruction error; the
MMD^2 between the test codes and as many prior draws; "FID, MNIST-classifier features" and
KID of ``--fid-samples`` samples; and with ``--labels semi_supervised`` (a class code and a
style code, each with its discriminator, ``--num-labelled`` labelled training images) the
test error of the class code (Makhzani et al. Table 2: about 1.9% with 100 labels; Pyro's
semi-supervised VAE tutorial, which follows Kingma et al. 2014, "Semi-supervised Learning
with Deep Generative Models": 93.2% accuracy).

Writes to --out: results.json and results.csv (one row per encoder kind), codes_<tag>.png
(test codes coloured by digit next to prior draws), samples_<tag>.png, manifold_<tag>.png
(2-D codes only), style_<tag>.png (a decoder-conditional or semi-supervised AAE: style
fixed along each row, label along the columns), losses.png and one checkpoint per AAE, aae_<tag>.pt
(``probgen.load`` rebuilds the model from it; ``--resume`` continues it). With ``--average``
every figure is of the averaged weights (the trained weights' test error is reported beside
them), saved as aae_<tag>_averaged.pt; the checkpoint holds both. ``--vae`` adds a
VAE of the same networks to the table (vae_normal.pt). ``--augment-shift N`` moves every
training image (``--augment-which labelled``: the labelled ones alone) by a random offset
of up to N pixels per batch (probgen.data.RandomShift).

    python examples/aae.py                                        # deterministic, N(0, I)
    python examples/aae.py --encoder deterministic gaussian universal --prior mixture
    python examples/aae.py --labels conditional                   # mixture, a digit each
    python examples/aae.py --prior swiss_roll --labels conditional
    python examples/aae.py --labels conditional --label-to decoder --z-dim 8
    python examples/aae.py --phase-order regularization_first
    python examples/aae.py --labels semi_supervised --num-labelled 100 --z-dim 10
    python examples/aae.py --labels semi_supervised --z-dim 10 --average ema   # averaged
    python examples/aae.py --labels semi_supervised --z-dim 10 --g-lr 1e-3 --epochs 300 \
        --average ema --augment-shift 2 --augment-which labelled   # the README's best
    python examples/aae.py --encoder deterministic gaussian universal --vae --z-dim 8
    python examples/aae.py --smoke                                # seconds
"""

from __future__ import annotations

import sys
import time
from typing import Dict, List

import torch

from probgen import checks, cli
from probgen.data import TensorData, recipes
from probgen.infer.adversarial import ADVERSARIAL_LOSSES
from probgen.metrics.quality import quality_scorer
from probgen.metrics.report import aae_report, class_error
from probgen.models import VAE
from probgen.data.labels import labelled_split
from probgen.models.aae import AAE, ENCODERS, PHASE_ORDERS
from probgen.models.priors import PRIORS
from probgen.models.semi_supervised_aae import SemiSupervisedAAE
from probgen.models.likelihoods import LIKELIHOODS
from probgen.nn.coders import NETS
from probgen.train import AVERAGES, Metric, WeightAverage, fit, save_model, set_seed
from probgen.viz import aae_figures, history_figure

# Makhzani et al. 2015, Table 1 (MNIST, Parzen window on 10,000 samples, nats); the
# semi-supervised test error with 100 labels, their Table 2 and Pyro's ss-vae tutorial (see
# the docstring; 93.2% accuracy is 6.8% error)
PAPER = {"aae": 340.0, "gan (Goodfellow et al. 2014)": 225.0}
SEMI_SUPERVISED = {"aae (Makhzani et al. 2015), 100 labels": 1.9,
                   "pyro ss-vae tutorial, 100 labels": 6.8}
LABEL_TO = {"discriminator": (True, False), "decoder": (False, True), "both": (True, True)}


def parse_args(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=50, out="results/aae", patience=None,
                          lr=1e-3, batch_size=100)
    p.add_argument("--encoder", nargs="+", default=["deterministic"], choices=ENCODERS,
                   help="one AAE per encoder kind, same seed")
    p.add_argument("--prior", default=None, choices=PRIORS.names(),
                   help="p(z) (default: mixture when the label reaches the discriminator, "
                        "which maps each digit to its own component; normal otherwise)")
    p.add_argument("--labels", default="none", choices=["none", "conditional", "semi_supervised"],
                   help="conditional: the digit label reaches the networks --label-to names; "
                        "semi_supervised: a class code y and a style code z (--z-dim), "
                        "--num-labelled training labels")
    positive = checks.arg(checks.positive_int)
    p.add_argument("--num-labelled", type=checks.arg(checks.integer, low=10,
                                                     hint="one labelled image of each digit"),
                   default=100,
                   help="semi_supervised: labelled training images, as many of each digit")
    p.add_argument("--labelled-share", type=checks.arg(checks.fraction), default=0.1,
                   help="semi_supervised: the labelled images are repeated to make about this "
                        "share of the training set (so most batches hold some)")
    p.add_argument("--label-to", default="discriminator", choices=sorted(LABEL_TO),
                   help="with --labels conditional: the discriminator (each digit its own "
                        "component of the prior), the decoder, or both")
    p.add_argument("--phase-order", default="reconstruction_first", choices=PHASE_ORDERS)
    p.add_argument("--z-dim", type=positive, default=2,
                   help="code size (2 for mixture, swiss_roll)")
    p.add_argument("--net", default="mlp", choices=NETS.names())
    p.add_argument("--hidden", type=positive, nargs="+", default=None,
                   help="encoder/decoder hidden sizes (default: the network's)")
    p.add_argument("--corruption", default=None, choices=["noise", "blocks"],
                   help="what the encoder sees while training instead of the image (noise: "
                        "Gaussian noise of --noise-std, clipped to [0, 1]); the target stays "
                        "clean (default: none). The table scores clean test images; the "
                        "--vae row's VAE trains on clean images")
    p.add_argument("--noise-std", type=checks.arg(checks.nonnegative_float), default=None,
                   help="std of --corruption noise (default 0.3)")
    p.add_argument("--augment-shift", type=checks.arg(checks.nonnegative_int), default=0,
                   metavar="PIXELS",
                   help="translate every training image by a random offset of up to this many "
                        "pixels per axis, input and target alike (0: none)")
    p.add_argument("--augment-which", default="all", choices=["all", "labelled"],
                   help="semi_supervised: shift every training image, or the labelled ones only")
    p.add_argument("--d-hidden", type=positive, nargs="+", default=[256, 256],
                   help="discriminator hidden sizes")
    p.add_argument("--likelihood", default="gaussian", choices=LIKELIHOODS.names(),
                   help="gaussian: squared error; bernoulli trains on binarized images")
    p.add_argument("--loss", default="non_saturating", choices=ADVERSARIAL_LOSSES.names(),
                   help="the regularization game")
    p.add_argument("--k", type=positive, default=None,
                   help="discriminator steps per encoder step")
    p.add_argument("--d-lr", type=checks.arg(checks.positive_float), default=None,
                   help="discriminator lr (default --lr; --lr / 10 for semi_supervised)")
    p.add_argument("--g-lr", type=checks.arg(checks.positive_float), default=None,
                   help="encoder (generator) lr (default --lr; --lr / 10 for semi_supervised)")
    p.add_argument("--parzen-samples", type=checks.arg(checks.nonnegative_int), default=10000,
                   help="decoded prior draws of the Parzen window (0: skip)")
    p.add_argument("--parzen-val", type=positive, default=1000,
                   help="validation images that choose the window width")
    p.add_argument("--eval-size", type=checks.arg(checks.integer, low=2), default=None,
                   help="test images measured (default: all)")
    p.add_argument("--fid-samples", default=10000, type=cli.sample_count(zero="skip"),
                   help="samples of the FID (0: skip)")
    p.add_argument("--average", default="none", choices=("none",) + AVERAGES,
                   help="measure (and save, aae_<tag>_averaged.pt) a running average of the "
                        "weights, one update per epoch (probgen.train.WeightAverage): ema, "
                        "or the uniform mean of the epochs from --average-start")
    p.add_argument("--average-decay", type=checks.arg(checks.fraction), default=0.8,
                   help="the exponential average's decay per epoch (0.8: about the last 5 "
                        "epochs)")
    p.add_argument("--average-start", type=positive, default=1,
                   help="the first epoch (from 1) whose weights enter the average")
    p.add_argument("--vae", action="store_true",
                   help="also train a VAE of the same encoder/decoder networks (Gaussian "
                        "encoder, N(0, I) prior, analytic-KL ELBO) and measure it alike")
    args = cli.finish_args(p, argv, smoke=dict(
        hidden=[32], d_hidden=[32], parzen_samples=200, parzen_val=64, eval_size=200,
        fid_samples=300))
    if args.noise_std is not None and args.corruption != "noise":
        p.error("--noise-std sets the noise of --corruption noise; add --corruption noise")
    if args.augment_which == "labelled" and args.labels != "semi_supervised":
        p.error("--augment-which labelled shifts the labelled images of --labels semi_supervised")
    if args.labels == "semi_supervised":
        # measured on 512 images, 10 epochs: regularization at the run's lr left the class
        # head at 10-22% test accuracy, at a tenth of it 69-71% (the classifier alone: 73%)
        args.d_lr = args.lr / 10 if args.d_lr is None else args.d_lr
        args.g_lr = args.lr / 10 if args.g_lr is None else args.g_lr
    if args.prior is None:
        to_discriminator = args.labels == "conditional" and LABEL_TO[args.label_to][0]
        args.prior = "mixture" if to_discriminator else "normal"
    if args.vae and (args.prior != "normal" or args.labels != "none"):
        p.error("--vae compares with an unconditional VAE, whose prior is N(0, I): use it with "
                "--prior normal --labels none")
    return args


def build(args, encoder: str) -> AAE:
    kw = dict(image_shape=(1, 28, 28), z_dim=args.z_dim, hidden=args.hidden, net=args.net,
              likelihood=args.likelihood, encoder=encoder, prior=args.prior,
              d_hidden=tuple(args.d_hidden), loss=args.loss, k=args.k,
              phase_order=args.phase_order, d_lr=args.d_lr, g_lr=args.g_lr,
              corruption=args.corruption, corruption_kwargs={"std": 0.3 if args.noise_std is None
                                                             else args.noise_std}
              if args.corruption == "noise" else None)
    if args.labels == "semi_supervised":
        return SemiSupervisedAAE(num_classes=10, **kw)
    to_d, to_dec = LABEL_TO[args.label_to]
    return AAE(num_labels=10 if args.labels == "conditional" else 0,
               label_to_discriminator=to_d, label_to_decoder=to_dec, **kw)


def semi_supervised_data(args, train: TensorData) -> TensorData:
    """The training images with all but ``--num-labelled`` labels set to -1 (as many of
    each digit), the labelled ones repeated to about ``--labelled-share`` of the set."""
    y = train.tensors[1]
    semi = labelled_split(y.cpu(), args.num_labelled, 10, torch.Generator().manual_seed(args.seed))
    data, repeats = recipes.semi_supervised(train, semi, args.labelled_share)
    n_lab = data.settings["num_labelled"]
    print(f"semi-supervised: {n_lab} labelled images ({n_lab // 10} per digit) repeated "
          f"{repeats} times among {len(data) - n_lab * repeats} unlabelled", flush=True)
    return data


def augmented(args, train: TensorData) -> TensorData:
    """The training images with ``--augment-shift`` random translations drawn per batch
    (with ``--augment-which labelled``, of the labelled images alone)."""
    return recipes.shifted(train, args.augment_shift, args.augment_which == "labelled")


def measure(model, splits, args, scorer, tag: str, record: dict) -> dict:
    """``record`` with :func:`probgen.metrics.report.aae_report` of one trained model on the
    test images (its random numbers from ``--seed + 17``, the caller's left alone) and its
    time; the figures."""
    t0 = time.perf_counter()
    x, y = splits["test"].all()[:2]
    n = x.shape[0] if args.eval_size is None else args.eval_size
    report = aae_report(model, (x[:n], y[:n]), splits["val"].tensors[0],
                        parzen_samples=args.parzen_samples, parzen_val=args.parzen_val,
                        scorer=scorer, fid_samples=args.fid_samples, seed=args.seed + 17)
    aae_figures(model, report, args.out, tag, seed=args.seed)
    record.update(report.metrics, eval_seconds=time.perf_counter() - t0)
    return record


def train_one(args, encoder: str, splits, scorer):
    set_seed(args.seed)
    model = build(args, encoder).to(args.device)
    tag = f"{encoder}_{args.prior}" + ("" if args.labels == "none" else f"_{args.labels}")
    print(f"\n== {model.extra_repr()} ==", flush=True)
    semi = args.labels == "semi_supervised"
    train = augmented(args, semi_supervised_data(args, splits["train"]) if semi
                      else splits["train"])
    xv, yv = splits["val"].tensors[:2]
    # the class head's validation error, a learning curve only: it never chooses the
    # weights (a run that kept its best epoch by 10,000 validation labels would use far
    # more labels than it claims; Oliver et al. 2018, "Realistic Evaluation of Deep
    # Semi-Supervised Learning Algorithms")
    callbacks = [Metric("val_error", lambda m: class_error(m, xv, yv))] if semi else []
    average = None
    if args.average != "none":   # the averaged copy's validation error is a curve too
        average = WeightAverage(args.average, decay=args.average_decay,
                                start=args.average_start, swap=False,
                                metrics={"val_error_avg": lambda m: class_error(m, xv, yv)}
                                if semi else {})
        callbacks.append(average)
    result = fit(model, train, splits["val"], cli.fit_config(
        args, checkpoint=str(args.out / f"aae_{tag}.pt"), restore_best=False),
        callbacks=callbacks + cli.trackers(args, tag))
    record = {"encoder": encoder, "prior": args.prior, "labels": args.labels,
              "label_to": args.label_to if args.labels == "conditional" else None,
              "phase_order": args.phase_order, "z_dim": args.z_dim,
              "epochs": result.epochs_run, "train_seconds": result.train_seconds,
              "history": result.history, "average": args.average}
    if average is not None and average.num_averaged:
        # the trained weights' test error first, then every figure of the averaged ones
        if semi:
            x, y = splits["test"].tensors[:2]
            n = x.shape[0] if args.eval_size is None else args.eval_size   # as measured
            record["test_error_trained"] = class_error(model, x[:n], y[:n])
        average.copy_to(model)
        record.update(average_decay=args.average_decay if args.average == "ema" else None,
                      average_start=args.average_start, epochs_averaged=average.num_averaged)
        save_model(model, args.out / f"aae_{tag}_averaged.pt")
    measure(model, splits, args, scorer, tag, record)
    parzen = (f", Parzen LL {record['parzen_ll']:.1f} +- {record['parzen_std_error']:.1f} "
              f"(sigma {record['parzen_sigma']:.3f})" if "parzen_ll" in record else "")
    fid = f", FID {record['fid']:.2f}, KID {record['kid_mean']:.4f}" if "fid" in record else ""
    if "test_error" in record:
        fid += f", test error {record['test_error']:.2f}% with {args.num_labelled} labels"
        if "test_error_trained" in record:
            fid += (f" ({args.average} average of {record['epochs_averaged']} epochs; the "
                    f"trained weights {record['test_error_trained']:.2f}%)")
    print(f"{encoder}: recon MSE {record['recon_mse']:.4f}, MMD^2(q(z), p(z)) "
          f"{record['mmd2']:.4f}{parzen}{fid} ({record['train_seconds']:.0f} s of training)",
          flush=True)
    return model, record


def train_vae(args, splits, scorer):
    """A VAE of the same encoder/decoder networks, measured as the AAEs are."""
    set_seed(args.seed)
    vae = VAE(image_shape=(1, 28, 28), z_dim=args.z_dim, hidden=args.hidden, net=args.net,
              likelihood=args.likelihood, encoder="gaussian").to(args.device)
    print(f"\n== VAE of the same networks: {vae.extra_repr()} ==", flush=True)
    result = fit(vae, augmented(args, splits["train"]), splits["val"], cli.fit_config(
        args, checkpoint=str(args.out / "vae_normal.pt"), restore_best=False),
        objective="meanfield", callbacks=cli.trackers(args, "vae_normal"))
    record = {"encoder": "vae", "prior": "normal", "labels": "none", "label_to": None,
              "phase_order": None, "z_dim": args.z_dim, "epochs": result.epochs_run,
              "train_seconds": result.train_seconds, "history": result.history}
    return measure(vae, splits, args, scorer, "vae_normal", record)


def table(records: Dict[str, dict]) -> List[dict]:
    names = {"parzen_se": "parzen_std_error", "test_error_pct": "test_error",
             "test_error_trained_pct": "test_error_trained"}
    keys = ("prior", "labels", "phase_order", "epochs", "parzen_ll", "parzen_se", "recon_mse",
            "recon_nll", "mmd2", "fid", "kid_mean", "test_error_pct", "test_error_trained_pct",
            "average", "train_seconds")
    return [{"encoder": enc, **{k: r.get(names.get(k, k)) for k in keys}}
            for enc, r in records.items()]


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    splits = cli.mnist(args, "dynamic" if args.likelihood == "bernoulli" else "none")
    scorer = quality_scorer(splits["test"].tensors[0], seed=args.seed) \
        if args.fid_samples else None   # (KID on subsets of up to 1000 images)
    records, histories = {}, {}
    for encoder in args.encoder:
        _, records[encoder] = train_one(args, encoder, splits, scorer)
        histories[encoder] = records[encoder]["history"]
    keys = sorted({k for hist in histories.values() for k in hist[0]     # phases, val_error
                   if k.startswith("train_loss/") or k == "val_error"})
    history_figure(histories, keys, args.out / "losses.png",
                   titles={k: "class error on validation images (%)" if k == "val_error" else
                           f"{k.split('/', 1)[1]} loss (epoch mean)" for k in keys})
    if args.vae:
        records["vae"] = train_vae(args, splits, scorer)
    rows = table(records)
    print()
    cli.print_table(rows)
    print(f"Makhzani et al. 2015, Table 1 (Parzen window, 10,000 samples): AAE "
          f"{PAPER['aae']:.0f} nats, GAN {PAPER['gan (Goodfellow et al. 2014)']:.0f} nats",
          flush=True)
    if args.labels == "semi_supervised":
        print("semi-supervised MNIST test error, 100 labels: "
              + "; ".join(f"{k} {v}%" for k, v in SEMI_SUPERVISED.items()), flush=True)
    record = cli.write_results(args.out, {"aaes": records, "paper": PAPER,
                                          "paper_semi_supervised": SEMI_SUPERVISED},
                               args, started, table=rows)
    print(f"\nwrote {args.out}/results.json, results.csv and figures "
          f"({record['wall_seconds']:.0f} s on {record['machine']}, {args.device})")
    return record


if __name__ == "__main__":
    sys.exit(cli.run(main))
