"""Adversarial autoencoders on MNIST: the three encoder kinds, any prior, label-conditional
variants (Makhzani et al. 2015, "Adversarial Autoencoders").

Each AAE is a Pyro model/guide pair (probgen.models.AAE) trained by ``probgen.fit`` in three
phases per batch: reconstruction (encoder + decoder), regularization-discriminator (prior
draws real, codes fake) and regularization-generator (the encoder fools the discriminator),
in the order ``--phase-order`` gives. Several ``--encoder`` kinds train one AAE each from the
same seed. Each is measured on the test set by

* the Parzen-window log-likelihood of ``--parzen-samples`` decoded prior draws (the mean
  images), the window chosen on ``--parzen-val`` validation images (Makhzani et al. Table 1
  reports 340 +- 2 nats for the AAE, and 225 +- 2 for the GAN of Goodfellow et al. 2014,
  "Generative Adversarial Nets"; see probgen.metrics.parzen for why the estimator is a
  poor one);
* the reconstruction error (mean squared error per pixel of the decoded code centre, and
  ``-log p(x | z)`` per image, the validation loss);
* how well the codes match the prior: the unbiased MMD^2 between codes of the test images
  (draws of q(z)) and as many prior draws (Gaussian kernel, median bandwidth);
* "FID, MNIST-classifier features" and KID (the same features) of ``--fid-samples``
  samples against the test images (probgen.metrics.quality.sample_quality);
* with ``--labels semi_supervised`` (the semi-supervised AAE: a class code and a style
  code, each with its discriminator, ``--num-labelled`` labelled training images), the test
  error of the class code (Makhzani et al. Table 2: about 1.9% with 100 labels; Pyro's
  semi-supervised VAE tutorial, which follows Kingma et al. 2014, "Semi-supervised
  Learning with Deep Generative Models": 93.2% accuracy).

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

import contextlib
import sys
import time
from typing import Dict, List

import torch

from probgen import checks, cli
from probgen.infer.adversarial import ADVERSARIAL_LOSSES
from probgen.metrics.images import mse_per_image
from probgen.metrics.parzen import mmd, parzen_score
from probgen.data import RandomShift, TensorData
from probgen.models.aae import (AAE, ENCODERS, PHASE_ORDERS, PRIORS, SemiSupervisedAAE,
                                labelled_split)
from probgen.models import VAE
from probgen.models.likelihoods import LIKELIHOODS
from probgen.nn.coders import NETS
from probgen.train import AVERAGES, Callback, WeightAverage, fit, save_model, set_seed
from probgen.viz import grid_figure
from probgen.viz.images import image_grid, new_figure, save

# Makhzani et al. 2015, "Adversarial Autoencoders", Table 1 (MNIST, Parzen window on
# 10,000 samples, nats): their AAE, and the GAN of Goodfellow et al. 2014, "Generative
# Adversarial Nets"
PAPER = {"aae": 340.0, "gan (Goodfellow et al. 2014)": 225.0}
# semi-supervised MNIST with 100 labels: Makhzani et al. 2015, Table 2 (test error, about
# 1.9%); Pyro's semi-supervised VAE tutorial, which follows Kingma et al. 2014,
# "Semi-supervised Learning with Deep Generative Models" (test accuracy 93.2%, i.e. 6.8%
# error)
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
    p.add_argument("--fid-samples", default=10000,
                   type=checks.arg(checks.integer, low=cli.MIN_FID_SAMPLES, zero="skip",
                                   hint="FID on the classifier's 128 features"),
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
    corrupt = dict(corruption=args.corruption,
                   corruption_kwargs={"std": 0.3 if args.noise_std is None else args.noise_std}
                   if args.corruption == "noise" else None)
    if args.labels == "semi_supervised":
        return SemiSupervisedAAE(image_shape=(1, 28, 28), num_classes=10, z_dim=args.z_dim,
                                 hidden=args.hidden, net=args.net, likelihood=args.likelihood,
                                 encoder=encoder, prior=args.prior, d_hidden=tuple(args.d_hidden),
                                 loss=args.loss, k=args.k, phase_order=args.phase_order,
                                 d_lr=args.d_lr, g_lr=args.g_lr, **corrupt)
    to_d, to_dec = LABEL_TO[args.label_to]
    return AAE(image_shape=(1, 28, 28), z_dim=args.z_dim, hidden=args.hidden, net=args.net,
               likelihood=args.likelihood, encoder=encoder, prior=args.prior,
               num_labels=10 if args.labels == "conditional" else 0,
               label_to_discriminator=to_d, label_to_decoder=to_dec,
               d_hidden=tuple(args.d_hidden), loss=args.loss, k=args.k,
               phase_order=args.phase_order, d_lr=args.d_lr, g_lr=args.g_lr, **corrupt)


# --------------------------------------------------------------------------- figures

def codes_figure(codes, labels, prior_draws, prior_labels, path, title):
    """Test codes coloured by digit, next to prior draws (coloured by their class when the
    prior is conditional); codes of more than two values on their first two coordinates."""
    fig, axes = new_figure(1, 2, figsize=(10, 4.6))
    panels = (("codes of test digits, z ~ q(z|x)", codes, labels),
              ("prior draws, z ~ p(z)", prior_draws, prior_labels))
    sc = None
    for ax, (name, z, lab) in zip(axes, panels):
        z = z.detach().float().cpu()
        if lab is None:
            ax.scatter(z[:, 0], z[:, 1], s=3, alpha=0.5, color="0.4")
        else:
            sc = ax.scatter(z[:, 0], z[:, 1], c=lab.cpu(), cmap="tab10", s=3, alpha=0.7,
                            vmin=-0.5, vmax=9.5)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
    lo = min(min(a.get_xlim()[0], a.get_ylim()[0]) for a in axes)
    hi = max(max(a.get_xlim()[1], a.get_ylim()[1]) for a in axes)
    for a in axes:   # one square frame for both panels
        a.set_xlim(lo, hi)
        a.set_ylim(lo, hi)
        a.set_aspect("equal", adjustable="box")
    if sc is not None:
        cb = fig.colorbar(sc, ax=axes.tolist(), ticks=range(10), shrink=0.85)
        cb.set_label("digit")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def manifold_figure(model: AAE, prior_draws, path, title, n: int = 15):
    """Decoded codes on an n x n grid spanning the central 98% of the prior's draws."""
    lo = torch.quantile(prior_draws[:, :2].float().cpu(), 0.01, dim=0)
    hi = torch.quantile(prior_draws[:, :2].float().cpu(), 0.99, dim=0)
    xs = torch.linspace(float(lo[0]), float(hi[0]), n, device=model.device)
    ys = torch.linspace(float(hi[1]), float(lo[1]), n, device=model.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    z = torch.stack([gx.flatten(), gy.flatten()], 1)
    with torch.no_grad():
        images = model.decode(z).cpu()
    fig, ax = new_figure(1, 1, figsize=(6, 6.3))
    ax.imshow(image_grid(images, nrow=n, pad=0), interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


@contextlib.contextmanager
def seeded(device: torch.device, seed: int):
    """Seed the CPU's and ``device``'s random numbers inside a forked random state: the
    process's global random state is as it was afterwards (the example may run inside
    another program, a test for one)."""
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def style_codes(model: AAE, styles: int, seed: int = 0):
    """``(styles * classes, z_dim)`` prior draws and their labels: row ``s`` holds style ``s``
    for every class. A style is a set of random numbers: each class's code is drawn with the
    same ones, so with the label at the discriminator it sits at the same place of that
    class's component (a mixture component rotated, the same share of a swiss-roll
    segment), and without it it is the same code for every class."""
    classes = getattr(model, "num_classes", model.num_labels)
    z, labels = [], []
    for s in range(styles):
        for c in range(classes):
            label = torch.tensor([c], device=model.device)
            with seeded(model.device, seed + s):
                z.append(model.prior_sample(1, label))
            labels.append(label)
    return torch.cat(z), torch.cat(labels)


def style_figure(model: AAE, path, styles: int = 8, seed: int = 0):
    """Rows: one style each (:func:`style_codes`); columns: the digit label given to the
    decoder."""
    classes = getattr(model, "num_classes", model.num_labels)
    z, labels = style_codes(model, styles, seed)
    with torch.no_grad():
        images = model.decode(z, labels).cpu()
    return grid_figure(images, nrow=classes, path=path,
                       title="style z fixed along each row, label 0-9 along the columns")


class VAEView:
    """What :func:`measure` reads of a model, for a :class:`~probgen.models.VAE` of the same
    networks: codes are draws of its q(z|x), its prior N(0, I)."""

    num_labels, label_to_decoder, encoder_kind, prior_name = 0, False, "vae", "normal"

    def __init__(self, vae: VAE):
        self.vae, self.z_dim = vae, vae.z_dim

    @property
    def device(self):
        return next(self.vae.parameters()).device

    def eval(self):
        self.vae.eval()

    @torch.no_grad()
    def codes(self, x):
        return self.vae.posterior(x).sample()

    def prior_sample(self, n, labels=None):
        return torch.randn(n, self.z_dim, device=self.device)

    def reconstruct(self, x, labels=None):
        return self.vae.reconstruct(x)

    @torch.no_grad()
    def reconstruction_loss(self, batch):
        x = batch[0]
        z = self.vae.posterior(x).sample()
        flat = x.reshape(x.shape[0], -1)
        return -self.vae.likelihood(self.vae.decoder(z)).log_prob(flat).mean()

    def decode(self, z, labels=None):
        return self.vae.decode(z)

    def sample(self, n=None, labels=None):
        return self.vae.sample(n)


def losses_figure(histories: Dict[str, list], path):
    """One panel per phase: its loss (epoch mean) for every model; and the class error on
    the validation images of a semi-supervised AAE."""
    keys = sorted({k for hist in histories.values() for k in hist[0]
                   if k.startswith("train_loss/")})
    keys += ["val_error"] if any("val_error" in hist[0] for hist in histories.values()) else []
    fig, axes = new_figure(1, len(keys), figsize=(4.3 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (label, hist) in enumerate(histories.items()):
            if key in hist[0]:
                ax.plot([h["epoch"] + 1 for h in hist], [h[key] for h in hist],
                        color=f"C{i}", label=label)
        ax.set_title("class error on validation images (%)" if key == "val_error" else
                     f"{key.split('/', 1)[1]} loss (epoch mean)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


# --------------------------------------------------------------------------- measuring

def draw_labels(model: AAE, n: int, generator: torch.Generator):
    """Uniform digit labels for a conditional model's samples (``None`` otherwise)."""
    if not model.num_labels:
        return None
    return torch.randint(0, model.num_labels, (n,), generator=generator).to(model.device)


@torch.no_grad()
def measure(model: AAE, splits, args, tag: str) -> dict:
    """The metrics and figures of one trained model; its random numbers come from
    ``--seed + 17`` in a forked random state (the caller's is left alone)."""
    corrupt, model.corrupt = getattr(model, "corrupt", None), None   # scored on clean images
    try:
        with seeded(model.device, args.seed + 17):
            return _measure(model, splits, args, tag)
    finally:
        if corrupt is not None:
            model.corrupt = corrupt


def _measure(model: AAE, splits, args, tag: str) -> dict:
    model.eval()
    x, y = splits["test"].all()
    if args.eval_size is not None:
        x, y = x[:args.eval_size], y[:args.eval_size]
    y_in = y if model.num_labels else None
    out: dict = {}
    # reconstruction
    rec, nll, n = 0.0, 0.0, 0
    for i in range(0, x.shape[0], 1000):
        xb = x[i:i + 1000]
        yb = y_in[i:i + 1000] if y_in is not None else None
        r = model.reconstruct(xb, yb)
        rec += float(mse_per_image(r, xb.reshape(r.shape)).sum())
        batch = (xb, yb) if yb is not None else (xb,)
        nll += float(model.reconstruction_loss(batch)) * xb.shape[0]
        n += xb.shape[0]
    out["recon_mse"], out["recon_nll"] = rec / n, nll / n
    # q(z) against p(z)
    gen = torch.Generator().manual_seed(args.seed + 17)
    codes = torch.cat([model.codes(x[i:i + 1000]) for i in range(0, x.shape[0], 1000)])
    prior_draws = model.prior_sample(codes.shape[0], y_in)
    match = mmd(codes, prior_draws)
    out.update(mmd2=match["mmd2"], mmd_bandwidth=match["bandwidth"], mmd_points=match["n"])
    semi = isinstance(model, SemiSupervisedAAE)
    if semi:
        pred = model.predict(x)
        out["test_error"] = 100.0 * float((pred != y).float().mean())
    if model.z_dim >= 2:
        codes_figure(codes, y, prior_draws, y_in, args.out / f"codes_{tag}.png",
                     f"{model.encoder_kind} encoder, {model.prior_name} prior"
                     + (" (the style code)" if semi else ""))
        if model.z_dim == 2 and not model.label_to_decoder and not semi:
            manifold_figure(model, prior_draws, args.out / f"manifold_{tag}.png",
                            f"decoded 2-D codes ({model.encoder_kind}, {model.prior_name})")
    if model.label_to_decoder or semi:   # the decoder takes the label (the class code)
        style_figure(model, args.out / f"style_{tag}.png", seed=args.seed)
    # samples: decoded prior draws (mean images)
    labels = (torch.arange(10, device=model.device).repeat_interleave(10)
              if model.label_to_decoder else None)
    grid_figure(model.sample(100 if labels is None else None, labels=labels).cpu(), nrow=10,
                path=args.out / f"samples_{tag}.png",
                title="decoded z ~ p(z)" + (" (one row per digit)" if labels is not None else ""))
    if args.parzen_samples:
        t0 = time.perf_counter()
        samples = model.sample(labels=draw_labels(model, args.parzen_samples, gen)) \
            if model.label_to_decoder else model.sample(args.parzen_samples)
        val = splits["val"].tensors[0][:args.parzen_val]
        p = parzen_score(samples.reshape(samples.shape[0], -1), x.reshape(x.shape[0], -1),
                         val.reshape(val.shape[0], -1))
        out.update(parzen_ll=p["log_likelihood"], parzen_std_error=p["std_error"],
                   parzen_sigma=p["sigma"], parzen_sigma_at_grid_edge=p["sigma_at_grid_edge"],
                   parzen_samples=p["num_samples"], parzen_seconds=time.perf_counter() - t0)
    if args.fid_samples:
        from probgen.metrics import quality

        t0 = time.perf_counter()
        samples = model.sample(labels=draw_labels(model, args.fid_samples, gen)) \
            if model.label_to_decoder else model.sample(args.fid_samples)
        ref = splits["test"].tensors[0]
        # KID's subsets of 1000 images, fewer in a smoke run (both sets must hold a subset)
        q = quality.sample_quality(samples.clamp(0, 1), ref, seed=args.seed,
                                   kid_subset_size=min(1000, ref.shape[0], samples.shape[0]))
        out.update(fid=q["fid"], fid_name=q["fid_name"], kid_mean=q["kid_mean"],
                   kid_std=q["kid_std"], kid_name=q["kid_name"],
                   kid_subset_size=q["kid_subset_size"], quality_samples=q["num_samples"],
                   quality_reference=q["num_reference"], fid_seconds=time.perf_counter() - t0)
    return out


def semi_supervised_data(args, train: TensorData) -> TensorData:
    """The training images with all but ``--num-labelled`` labels set to -1 (as many of
    each digit), the labelled ones repeated to about ``--labelled-share`` of the set."""
    x, y = train.tensors[:2]
    semi = labelled_split(y.cpu(), args.num_labelled, 10,
                          torch.Generator().manual_seed(args.seed)).to(y.device)
    keep = semi >= 0
    n_lab = int(keep.sum())
    repeats = max(1, round(args.labelled_share * x.shape[0] / ((1 - args.labelled_share) * n_lab)))
    xs = torch.cat([x[~keep]] + [x[keep]] * repeats)
    ys = torch.cat([semi[~keep]] + [semi[keep]] * repeats)
    print(f"semi-supervised: {n_lab} labelled images ({n_lab // 10} per digit) repeated "
          f"{repeats} times among {int((~keep).sum())} unlabelled", flush=True)
    return cli.with_settings(TensorData(xs, ys, transform=train.transform),
                             getattr(train, "settings", None), num_labelled=args.num_labelled,
                             labelled_share=args.labelled_share)


def augmented(args, train: TensorData) -> TensorData:
    """The training images with ``--augment-shift`` random translations drawn per batch
    (with ``--augment-which labelled``, of the labelled images alone)."""
    if not args.augment_shift:
        return train
    shifted = train.with_transform(RandomShift(args.augment_shift, train.tensors[0].shape[1:],
                                               only_labelled=args.augment_which == "labelled"))
    return cli.with_settings(shifted, getattr(train, "settings", None),
                             augment_shift=args.augment_shift, augment_which=args.augment_which)


class ClassError(Callback):
    """The class head's error (%) on the validation images after every epoch
    (``val_error``): a learning curve only. It never chooses the weights: a run that kept
    its best epoch by 10,000 validation labels would use far more labels than it claims
    (Oliver et al. 2018, "Realistic Evaluation of Deep Semi-Supervised Learning
    Algorithms")."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    @torch.no_grad()
    def error(self, model) -> float:
        was = model.training
        model.eval()
        try:
            pred = model.predict(self.images)
        finally:
            model.train(was)
        return 100.0 * float((pred != self.labels).float().mean())

    def on_validation_end(self, run, entry):
        entry["val_error"] = self.error(run.module)


def train_one(args, encoder: str, splits):
    set_seed(args.seed)
    model = build(args, encoder).to(args.device)
    tag = f"{encoder}_{args.prior}" + ("" if args.labels == "none" else f"_{args.labels}")
    print(f"\n== {model.extra_repr()} ==", flush=True)
    train = splits["train"]
    if args.labels == "semi_supervised":
        train = semi_supervised_data(args, train)
    train = augmented(args, train)
    callbacks, average, val_error = [], None, None
    if args.labels == "semi_supervised":
        val_error = ClassError(*splits["val"].tensors[:2])
        callbacks.append(val_error)
    if args.average != "none":
        # the averaged copy's validation error is a learning curve too (val_error_avg)
        metrics = {"val_error_avg": val_error.error} if val_error is not None else {}
        average = WeightAverage(args.average, decay=args.average_decay,
                                start=args.average_start, metrics=metrics, swap=False)
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
        if isinstance(model, SemiSupervisedAAE):
            x, y = splits["test"].tensors[:2]
            n = x.shape[0] if args.eval_size is None else args.eval_size   # as measure() scores
            record["test_error_trained"] = ClassError(x[:n], y[:n]).error(model)
        average.copy_to(model)
        record.update(average_decay=args.average_decay if args.average == "ema" else None,
                      average_start=args.average_start, epochs_averaged=average.num_averaged)
        save_model(model, args.out / f"aae_{tag}_averaged.pt")
    t0 = time.perf_counter()
    record.update(measure(model, splits, args, tag))
    record["eval_seconds"] = time.perf_counter() - t0
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


def train_vae(args, splits):
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
    t0 = time.perf_counter()
    record.update(measure(VAEView(vae), splits, args, "vae_normal"))
    record["eval_seconds"] = time.perf_counter() - t0
    return record


def table(records: Dict[str, dict]) -> List[dict]:
    rows = []
    for enc, r in records.items():
        rows.append({"encoder": enc, "prior": r["prior"], "labels": r["labels"],
                     "phase_order": r["phase_order"], "epochs": r["epochs"],
                     "parzen_ll": r.get("parzen_ll"), "parzen_se": r.get("parzen_std_error"),
                     "recon_mse": r["recon_mse"], "recon_nll": r["recon_nll"],
                     "mmd2": r["mmd2"], "fid": r.get("fid"), "kid_mean": r.get("kid_mean"),
                     "test_error_pct": r.get("test_error"),
                     "test_error_trained_pct": r.get("test_error_trained"),
                     "average": r.get("average"),
                     "train_seconds": r["train_seconds"]})
    return rows


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    splits = cli.mnist(args, "dynamic" if args.likelihood == "bernoulli" else "none")
    records, histories = {}, {}
    for encoder in args.encoder:
        _, records[encoder] = train_one(args, encoder, splits)
        histories[encoder] = records[encoder]["history"]
    losses_figure(histories, args.out / "losses.png")
    if args.vae:
        records["vae"] = train_vae(args, splits)
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
