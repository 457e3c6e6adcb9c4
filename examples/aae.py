"""Adversarial autoencoders on MNIST: the three encoder kinds, any prior, label-conditional
variants (Makhzani et al. 2015, "Adversarial Autoencoders").

One AAE (probgen.models.AAE, or SemiSupervisedAAE with ``--labels semi_supervised``) per
``--encoder`` kind, from the same seed, trained by ``probgen.fit`` in its phases and measured
on the test set by probgen.metrics.report.aae_report (Parzen window of ``--parzen-samples``
decoded prior draws, reconstruction, MMD^2 of codes and prior, FID/KID, a semi-supervised
model's test error), beside the paper's figures (PAPER, SEMI_SUPERVISED below).

Writes to --out: results.json and results.csv (one row per AAE), probgen.viz.aae_figures'
figures per AAE, losses.png, checkpoints aae_<tag>.pt (``probgen.load`` rebuilds them;
``--resume`` continues them); with ``--average`` the averaged weights' aae_<tag>_averaged.pt,
with ``--vae`` a VAE of the same networks (vae_normal.pt).

    python examples/aae.py                                        # deterministic, N(0, I)
    python examples/aae.py --encoder deterministic gaussian universal --prior mixture
    python examples/aae.py --labels conditional                   # mixture, a digit each
    python examples/aae.py --prior swiss_roll --labels conditional
    python examples/aae.py --labels conditional --label-to decoder --z-dim 8
    python examples/aae.py --phase-order regularization_first
    python examples/aae.py --labels semi_supervised --num-labelled 100 --z-dim 10
    python examples/aae.py --labels semi_supervised --z-dim 10 --g-lr 1e-3 --epochs 300 \
        --average ema --augment-shift 2 --augment-which labelled   # the README's best
    python examples/aae.py --encoder deterministic gaussian universal --vae --z-dim 8
    python examples/aae.py --smoke                                # seconds
"""

from __future__ import annotations

import sys
import time

from probgen import checks, cli
from probgen.data import TensorData, recipes
from probgen.infer.adversarial import ADVERSARIAL_LOSSES, player_optim
from probgen.metrics.quality import quality_scorer
from probgen.metrics.report import aae_line, aae_report, class_error
from probgen.models import VAE
from probgen.models.aae import AAE, ENCODERS, PHASE_ORDERS
from probgen.models.likelihoods import LIKELIHOODS
from probgen.models.priors import PRIORS
from probgen.models.semi_supervised_aae import SemiSupervisedAAE, regularization_optim
from probgen.nn.coders import NETS
from probgen.train import AVERAGES, Metric, WeightAverage, fit, save_model, set_seed
from probgen.viz import aae_figures, phase_losses_figure

# Makhzani et al. 2015, Table 1 (MNIST, Parzen window on 10,000 samples, nats; the AAE and
# the GAN of Goodfellow et al. 2014, "Generative Adversarial Nets"); the semi-supervised test
# error with 100 labels, their Table 2 and Pyro's ss-vae tutorial (Kingma et al. 2014,
# "Semi-supervised Learning with Deep Generative Models"; 93.2% accuracy is 6.8% error)
PAPER = {"aae": 340.0, "gan (Goodfellow et al. 2014)": 225.0}
SEMI_SUPERVISED = {"aae (Makhzani et al. 2015), 100 labels": 1.9,
                   "pyro ss-vae tutorial, 100 labels": 6.8}
LABEL_TO = {"discriminator": (True, False), "decoder": (False, True), "both": (True, True)}


def parse_args(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=50, out="results/aae", patience=None,
                          lr=1e-3, batch_size=100)
    positive, add = checks.arg(checks.positive_int), p.add_argument
    add("--encoder", nargs="+", default=["deterministic"], choices=ENCODERS,
        help="one AAE per encoder kind, same seed")
    add("--prior", default=None, choices=PRIORS.names(), help="p(z) (default: mixture when "
        "the label reaches the discriminator, a component per digit; else normal)")
    add("--labels", default="none", choices=["none", "conditional", "semi_supervised"],
        help="conditional: the digit goes where --label-to says; semi_supervised: a class "
             "code y and a style code z (--z-dim), --num-labelled training labels")
    add("--num-labelled", default=100, help="semi_supervised: labelled training images, as "
        "many of each digit", type=checks.arg(checks.integer, low=10,
                                              hint="one labelled image of each digit"))
    add("--labelled-share", type=checks.arg(checks.fraction), default=0.1, help="semi_"
        "supervised: the labelled images, repeated, make about this share of the training set")
    add("--label-to", default="discriminator", choices=sorted(LABEL_TO),
        help="--labels conditional: the discriminator, the decoder, or both")
    add("--phase-order", default="reconstruction_first", choices=PHASE_ORDERS)
    add("--z-dim", type=positive, default=2, help="code size (2 for mixture, swiss_roll)")
    add("--net", default="mlp", choices=NETS.names())
    add("--hidden", type=positive, nargs="+", default=None, help="encoder/decoder hidden sizes")
    add("--corruption", default=None, choices=["noise", "blocks"], help="what the encoder sees "
        "in training instead of the image (noise: of --noise-std, clipped to [0, 1]); the "
        "target stays clean, the table scores clean test images, --vae trains on clean ones")
    add("--noise-std", type=checks.arg(checks.nonnegative_float), default=None,
        help="std of --corruption noise (default 0.3)")
    add("--augment-shift", type=checks.arg(checks.nonnegative_int), default=0, metavar="PIXELS",
        help="translate training images by up to this many pixels per axis (0: none)")
    add("--augment-which", default="all", choices=["all", "labelled"],
        help="semi_supervised: shift every training image, or the labelled ones only")
    add("--d-hidden", type=positive, nargs="+", default=[256, 256],
        help="discriminator hidden sizes")
    add("--likelihood", default="gaussian", choices=LIKELIHOODS.names(),
        help="gaussian: squared error; bernoulli trains on binarized images")
    add("--loss", default="non_saturating", choices=ADVERSARIAL_LOSSES.names(),
        help="the regularization game")
    add("--k", type=positive, default=None, help="discriminator steps per encoder step")
    add("--d-lr", type=checks.arg(checks.positive_float), default=None,
        help="discriminator lr (default --lr; --lr / 10 for semi_supervised: "
             "probgen.models.semi_supervised_aae.regularization_optim)")
    add("--g-lr", type=checks.arg(checks.positive_float), default=None,
        help="encoder (generator) lr (default --lr; --lr / 10 for semi_supervised)")
    add("--parzen-samples", type=checks.arg(checks.nonnegative_int), default=10000,
        help="decoded prior draws of the Parzen window (0: skip)")
    add("--parzen-val", type=positive, default=1000, help="images that choose its width")
    add("--eval-size", type=checks.arg(checks.integer, low=2), default=None,
        help="test images measured (default: all)")
    add("--fid-samples", default=10000, type=cli.sample_count(zero="skip"),
        help="samples of the FID (0: skip)")
    add("--average", default="none", choices=("none",) + AVERAGES, help="measure a running "
        "average of the weights, one update per epoch (probgen.train.WeightAverage)")
    add("--average-decay", type=checks.arg(checks.fraction), default=0.8,
        help="the exponential average's decay per epoch (0.8: about the last 5 epochs)")
    add("--average-start", type=positive, default=1,
        help="the first epoch (from 1) whose weights enter the average")
    add("--vae", action="store_true", help="also train and measure a VAE of the same "
        "encoder/decoder networks (Gaussian encoder, N(0, I) prior, analytic-KL ELBO)")
    args = cli.finish_args(p, argv, smoke=dict(
        hidden=[32], d_hidden=[32], parzen_samples=200, parzen_val=64, eval_size=200,
        fid_samples=300))
    if args.noise_std is not None and args.corruption != "noise":
        p.error("--noise-std sets the noise of --corruption noise; add --corruption noise")
    if args.augment_which == "labelled" and args.labels != "semi_supervised":
        p.error("--augment-which labelled shifts the labelled images of --labels semi_supervised")
    if args.prior is None:
        to_discriminator = args.labels == "conditional" and LABEL_TO[args.label_to][0]
        args.prior = "mixture" if to_discriminator else "normal"
    if args.vae and (args.prior != "normal" or args.labels != "none"):
        p.error("--vae compares with an unconditional VAE, whose prior is N(0, I): use it with "
                "--prior normal --labels none")
    return args


def build(args, encoder: str) -> AAE:
    noise = {"std": 0.3 if args.noise_std is None else args.noise_std}
    kw = dict(image_shape=(1, 28, 28), z_dim=args.z_dim, hidden=args.hidden, net=args.net,
              likelihood=args.likelihood, encoder=encoder, prior=args.prior,
              d_hidden=tuple(args.d_hidden), loss=args.loss, k=args.k,
              phase_order=args.phase_order, corruption=args.corruption,
              corruption_kwargs=noise if args.corruption == "noise" else None)
    if args.labels == "semi_supervised":
        return SemiSupervisedAAE(num_classes=10, **kw)
    to_d, to_dec = LABEL_TO[args.label_to]
    return AAE(num_labels=10 if args.labels == "conditional" else 0,
               label_to_discriminator=to_d, label_to_decoder=to_dec, **kw)


def training_data(args, train: TensorData) -> TensorData:
    """The training images; with ``--labels semi_supervised`` all but ``--num-labelled``
    labels withheld (as many of each digit), the labelled images repeated to about
    ``--labelled-share`` of the set; ``--augment-shift`` translations drawn per batch."""
    if args.labels == "semi_supervised":
        train, repeats = recipes.semi_supervised(train, args.num_labelled, args.labelled_share,
                                                 seed=args.seed)
        n_lab = train.settings["num_labelled"]
        print(f"semi-supervised: {n_lab} labelled images ({n_lab // 10} per digit) repeated "
              f"{repeats} times among {len(train) - n_lab * repeats} unlabelled", flush=True)
    return recipes.shifted(train, args.augment_shift, args.augment_which == "labelled")


def fit_and_measure(args, model, name: str, tag: str, train, splits, scorer, record: dict,
                    callbacks=(), average=None, **fit_kw) -> dict:
    """``record`` with the run (checkpoint ``<name>.pt``, ``fit_kw`` over the run's
    settings), the averaged weights swapped in (after the trained weights' test error), and
    aae_report of the first ``--eval-size`` test images (seed ``--seed + 17``) with its
    time; the figures."""
    result = fit(model, train, splits["val"], cli.fit_config(
        args, checkpoint=str(args.out / f"{name}.pt"), restore_best=False),
        callbacks=list(callbacks) + cli.trackers(args, tag), **fit_kw)
    record.update(epochs=result.epochs_run, train_seconds=result.train_seconds,
                  history=result.history)
    x, y = splits["test"].subset(slice(0, args.eval_size)).all()[:2]
    if average is not None and average.num_averaged:
        if hasattr(model, "predict"):
            record["test_error_trained"] = class_error(model, x, y)
        average.copy_to(model)
        record.update(average_decay=args.average_decay if args.average == "ema" else None,
                      average_start=args.average_start, epochs_averaged=average.num_averaged)
        save_model(model, args.out / f"{name}_averaged.pt")
    t0 = time.perf_counter()
    report = aae_report(model, (x, y), splits["val"].tensors[0],
                        parzen_samples=args.parzen_samples, parzen_val=args.parzen_val,
                        scorer=scorer, fid_samples=args.fid_samples, seed=args.seed + 17)
    aae_figures(model, report, args.out, tag, seed=args.seed)
    record.update(report.metrics, eval_seconds=time.perf_counter() - t0)
    return record


def train_one(args, encoder: str, splits, scorer) -> dict:
    set_seed(args.seed)
    model = build(args, encoder).to(args.device)
    tag = f"{encoder}_{args.prior}" + ("" if args.labels == "none" else f"_{args.labels}")
    print(f"\n== {model.extra_repr()} ==", flush=True)
    train = training_data(args, splits["train"])
    xv, yv = splits["val"].tensors[:2]
    # the class head's validation error (and the averaged copy's) is a learning curve only:
    # it never chooses the weights (keeping the best epoch by 10,000 validation labels would
    # use far more labels than claimed; Oliver et al. 2018, "Realistic Evaluation of Deep
    # Semi-Supervised Learning Algorithms")
    semi = args.labels == "semi_supervised"
    # --d-lr and --g-lr; the semi-supervised regularization at a tenth of --lr by default
    lrs = regularization_optim(model, args.lr, d_lr=args.d_lr, g_lr=args.g_lr) if semi \
        else player_optim(model, d_lr=args.d_lr, g_lr=args.g_lr)
    callbacks = [Metric("val_error", lambda m: class_error(m, xv, yv))] if semi else []
    average = None if args.average == "none" else WeightAverage(
        args.average, decay=args.average_decay, start=args.average_start, swap=False,
        metrics={"val_error_avg": lambda m: class_error(m, xv, yv)} if semi else {})
    record = {"encoder": encoder, "prior": args.prior, "labels": args.labels,
              "label_to": args.label_to if args.labels == "conditional" else None,
              "phase_order": args.phase_order, "z_dim": args.z_dim, "average": args.average,
              "num_labelled": args.num_labelled if semi else None}
    fit_and_measure(args, model, f"aae_{tag}", tag, train, splits, scorer, record,
                    callbacks + [average] * (average is not None), average, phase_optim=lrs)
    print(f"{encoder}: {aae_line(record)} ({record['train_seconds']:.0f} s of training)",
          flush=True)
    return record


def train_vae(args, splits, scorer) -> dict:
    """A VAE of the same encoder/decoder networks, measured as the AAEs are."""
    set_seed(args.seed)
    vae = VAE(image_shape=(1, 28, 28), z_dim=args.z_dim, hidden=args.hidden, net=args.net,
              likelihood=args.likelihood, encoder="gaussian").to(args.device)
    print(f"\n== VAE of the same networks: {vae.extra_repr()} ==", flush=True)
    record = {"encoder": "vae", "prior": "normal", "labels": "none", "label_to": None,
              "phase_order": None, "z_dim": args.z_dim}
    return fit_and_measure(args, vae, "vae_normal", "vae_normal", recipes.shifted(
        splits["train"], args.augment_shift, False), splits, scorer, record,
        objective="meanfield")


def table(records: dict[str, dict]) -> list[dict]:
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
    records = {encoder: train_one(args, encoder, splits, scorer) for encoder in args.encoder}
    phase_losses_figure({encoder: r["history"] for encoder, r in records.items()},
                        args.out / "losses.png",
                        extra={"val_error": "class error on validation images (%)"})
    if args.vae:
        records["vae"] = train_vae(args, splits, scorer)
    paper = (f"Makhzani et al. 2015, Table 1 (Parzen window, 10,000 samples): AAE "
             f"{PAPER['aae']:.0f} nats, GAN {PAPER['gan (Goodfellow et al. 2014)']:.0f} nats")
    if args.labels == "semi_supervised":
        paper += ("\nsemi-supervised MNIST test error, 100 labels: "
                  + "; ".join(f"{k} {v}%" for k, v in SEMI_SUPERVISED.items()))
    return cli.finish_run(args, {"aaes": records, "paper": PAPER, "paper_semi_supervised":
                                 SEMI_SUPERVISED}, started, table(records), title=paper)


if __name__ == "__main__":
    sys.exit(cli.run(main))
