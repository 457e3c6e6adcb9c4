"""One sample-quality table across every family: VAEs, flows and GANs scored with the same
feature network against the MNIST test set.

Each model draws ``--samples`` images (10,000) and is scored by probgen.metrics.quality with
the shipped MNIST classifier's features: "FID, MNIST-classifier features" and "KID, MNIST-
classifier features" (offline; not comparable with published Inception FIDs), precision and
recall of samples (Kynkaanniemi et al. 2019, k = 3) and the classes covered by the samples'
predicted digits (with the KL of that histogram to uniform). Models:

=================  =================================================================
``vae``            VAE 784-200-200-50 (Bernoulli, dynamic binarization, mean field)
``beta_vae``       the same with beta = 4
``iwae``           the same trained with the IWAE bound, k = 5
``cvae``           label-conditional VAE (samples: 1,000 of each digit)
``realnvp``        RealNVP, at temperatures 0.7 and 1.0 (two rows)
``glow``           Glow (depth 4, hidden 64), at temperatures 0.7 and 1.0
``gan_minimax``    MLP GAN, minimax loss
``gan_ns``         MLP GAN, non-saturating loss
``wgan_gp``        DCGAN networks, WGAN-GP (k = 5, layer-normed critic)
``dcgan``          DCGAN, non-saturating loss: base width 16, Adam lr 1e-3, samples
                   from a moving average of the generator's weights (decay 0.99)
``cdcgan``         class-conditional DCGAN, non-saturating loss (Mirza & Osindero 2014,
                   "Conditional Generative Adversarial Nets"): Age-cGAN's networks with
                   the ten digits as its levels, base width 16, Adam lr 5e-4 (samples:
                   1,000 of each digit, as the conditional VAE's)
=================  =================================================================

The two DCGAN recipes are made for this CPU: narrower networks than Radford et al.'s 64
(a width-16 epoch costs a fifth of a width-64 one) and a larger learning rate reach a
lower FID per CPU second than Radford et al.'s settings (measured in the README). The GANs of
``examples/gan.py`` keep the paper's settings by default.

Each VAE gives two rows from the same ``z ~ p(z)``: ``(mean)``, the decoder's mean image
(Bernoulli probabilities as grey levels: the picture VAE papers show, though no draw of
the model looks like it), and ``(draw)``, a binary image drawn from p(x | z): the model's
own samples.
Each model is loaded from ``--out/checkpoints/<name>.pt`` when there (or from a checkpoint
named with ``--load name=PATH``, e.g. one written by examples/gan.py), else trained for
``--epochs`` (the VAEs; ``--flow-epochs`` and ``--gan-epochs`` for the others) and
checkpointed there; ``--resume`` continues unfinished ones. The training time shown is the
wall time of its epochs (from the checkpoint's history) and, where recorded, the CPU time of
one thread.

Writes to --out: results.json, results.csv, samples.png (ten samples of every model side
by side) and the checkpoints.

    python examples/sample_quality.py                          # everything (hours on a CPU)
    python examples/sample_quality.py --models vae dcgan --load dcgan=gan_mnist.pt
    python examples/sample_quality.py --smoke                  # seconds
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import probgen
from probgen import checks, cli
from probgen.data import image_splits
from probgen.data.dequantize import dequantized
from probgen.data.recipes import balanced_labels
from probgen.metrics import quality
from probgen.models import GAN, VAE, AgeCGAN
from probgen.models.flow import FlowModel
from probgen.train import fit, load_checkpoint, set_seed
from probgen.train.callbacks import TrainingCPUTime, training_seconds
from probgen.viz import rows_figure

FAMILIES = {"vae": "likelihood (VAE)", "beta_vae": "likelihood (VAE)",
            "iwae": "likelihood (VAE)", "cvae": "likelihood (VAE)",
            "realnvp": "likelihood (flow)", "glow": "likelihood (flow)",
            "gan_minimax": "adversarial", "gan_ns": "adversarial", "wgan_gp": "adversarial",
            "dcgan": "adversarial", "cdcgan": "adversarial"}
# Adam learning rates of the GANs (the others': 2e-4).
GAN_LR = {"wgan_gp": 1e-4, "dcgan": 1e-3, "cdcgan": 5e-4}
TEMPERATURES = (0.7, 1.0)


def parse_args(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=30, out="results/sample_quality",
                          patience=None, batch_size=100, val_size=0, need_val=False)
    p.add_argument("--models", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--samples", default=10000, type=cli.sample_count(),
                   help="samples scored per model")
    p.add_argument("--flow-epochs", type=checks.arg(checks.positive_int), default=5)
    p.add_argument("--gan-epochs", type=checks.arg(checks.positive_int), default=5)
    p.add_argument("--load", nargs="+", default=[], metavar="NAME=PATH",
                   help="use these checkpoints instead of training")
    args = cli.finish_args(p, argv, smoke=dict(samples=1000, flow_epochs=1, gan_epochs=1))
    loads = {}
    for item in args.load:
        name, sep, path = item.partition("=")
        if not sep or name not in FAMILIES:
            p.error(f"--load takes NAME=PATH with NAME one of {', '.join(FAMILIES)}, got {item!r}")
        loads[name] = Path(path)
    args.load = loads
    return args


# --------------------------------------------------------------------------- the models

def build(name: str, smoke: bool):
    small = dict(hidden=(32,), z_dim=8) if smoke else dict(hidden=(200, 200), z_dim=50)
    flow = dict(depth=1, hidden=8) if smoke else dict(depth=4, hidden=64)
    mlp = dict(net="mlp", g_hidden=(32,), d_hidden=(32,), z_dim=8) if smoke else dict(net="mlp")
    w = 8 if smoke else 16
    builders = {
        "vae": lambda: VAE(**small),
        "beta_vae": lambda: VAE.from_preset("beta_vae", **small),
        "iwae": lambda: VAE(**small),
        "cvae": lambda: VAE.from_preset("conditional_vae", **small),
        "realnvp": lambda: FlowModel("realnvp", **flow),
        "glow": lambda: FlowModel("glow", **flow),
        "gan_minimax": lambda: GAN(loss="minimax", **mlp),
        "gan_ns": lambda: GAN(loss="non_saturating", **mlp),
        "wgan_gp": lambda: GAN(net="dcgan", loss="wgan_gp",
                               **(dict(g_width=8, d_width=8) if smoke else {})),
        "dcgan": lambda: GAN(net="dcgan", loss="non_saturating", ema=0.99, g_width=w, d_width=w),
        "cdcgan": lambda: AgeCGAN(num_levels=10, g_width=w, d_width=w, e_width=w),
    }
    return builders[checks.choice("model", name, FAMILIES)]()


def train(name: str, model, args, splits, ckpt: Path):
    """Train ``model`` (checkpointed to ``ckpt``, resumable); the fit settings per family."""
    set_seed(args.seed)
    base = cli.fit_config(args, checkpoint=str(ckpt), patience=None)
    clock = [TrainingCPUTime(), *cli.trackers(args, name)]
    if isinstance(model, VAE):
        train = splits["train_binary"]
        over = dict(epochs=args.epochs, objective="meanfield", restore_best=False)
        if name == "iwae":
            over.update(objective="iwae", num_particles=5)
        return fit(model, train, None, base, callbacks=clock, **over)
    if isinstance(model, FlowModel):
        train = dequantized(splits["train"])
        model.initialize(train.subset(slice(0, 512)).all()[0])
        # Best weights by training loss (no validation split here): one epoch whose loss
        # spikes (a Glow at lr 1e-3 can) does not decide what is scored.
        return fit(model, train, None, base, callbacks=clock, epochs=args.flow_epochs, lr=1e-3,
                   batch_size=64, clip_norm=100.0, restore_best=True)
    # (the conditional DCGAN trains on (images, labels): the digits are its levels)
    return fit(model, splits["train"], None, base, callbacks=clock, epochs=args.gan_epochs,
               lr=GAN_LR.get(name, 2e-4), batch_size=64, restore_best=False)


def obtain(name: str, args, splits):
    """``(model, checkpoint path)``: loaded when a checkpoint is given or finished, else trained."""
    ckpt = args.load.get(name, args.out / "checkpoints" / f"{name}.pt")
    if name in args.load or (ckpt.exists() and not args.resume):
        print(f"{name}: loading {ckpt}", flush=True)
        return probgen.load(ckpt, map_location=args.device), ckpt
    print(f"\n== {name}: training ==", flush=True)
    model = build(name, args.smoke).to(args.device)
    train(name, model, args, splits, ckpt)
    return model.eval(), ckpt


# --------------------------------------------------------------------------- sampling

@torch.no_grad()
def draw(name: str, model, n: int, args) -> dict[str, torch.Tensor]:
    """Samples as ``(n, 1, 28, 28)`` grey levels in [0, 1], one entry per row of the table."""
    if isinstance(model, FlowModel):
        return {f"{name} T={t}": model.sample(n, temperature=t).cpu() for t in TEMPERATURES}
    if isinstance(model, GAN):
        return {name: model.sample(n).cpu()}
    if isinstance(model, AgeCGAN):
        return {name: model.sample(balanced_labels(model.num_levels, n, args.device)).cpu()}
    model.eval()
    labels = balanced_labels(model.num_labels, n, args.device) if model.num_labels else None
    from pyro.infer import Predictive

    out = Predictive(model.model, num_samples=1, return_sites=["mean", "x"])(
        labels=labels, size=None if labels is not None else n)
    return {f"{name} ({kind})": out[site][0].reshape(n, 1, 28, 28).clamp(0, 1).float().cpu()
            for kind, site in (("mean", "mean"), ("draw", "x"))}


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    splits = image_splits("mnist", val_size=args.val_size, seed=args.seed, device=args.device,
                          limit=cli.SMOKE_LIMIT if args.smoke else None)
    splits["train_binary"] = image_splits("mnist", val_size=args.val_size, seed=args.seed,
                                          binarize="dynamic", device=args.device,
                                          limit=cli.SMOKE_LIMIT if args.smoke else None)["train"]
    ref = quality.reference_statistics(splits["test"].tensors[0])
    kid_size = min(1000, len(ref), args.samples)
    rows: list[dict] = []
    shown: dict[str, torch.Tensor] = {}
    for name in args.models:
        model, ckpt = obtain(name, args, splits)
        # (time spent on FIDs during training, recorded by examples/gan.py, left out)
        history = load_checkpoint(ckpt).get("history", [])
        epochs, (wall, cpu) = len(history), training_seconds(history)
        set_seed(args.seed)
        for label, x in draw(name, model, args.samples, args).items():
            t0 = time.perf_counter()
            q = quality.sample_quality(x, ref, kid_subset_size=kid_size)
            row = {"model": label, "family": FAMILIES[name], "epochs": epochs,
                   "train_seconds": wall, "train_cpu_seconds": cpu, "fid": q["fid"],
                   "kid": q["kid_mean"], "precision": q["precision"], "recall": q["recall"],
                   "classes_covered": q["classes_covered"], "class_kl": q["class_kl"]}
            rows.append(row)
            shown[label] = x[:10]
            print(f"{label}: FID {q['fid']:.2f}, KID {q['kid_mean']:.4f}, precision "
                  f"{q['precision']:.3f}, recall {q['recall']:.3f}, classes "
                  f"{q['classes_covered']}/10 ({epochs} epochs, {wall / 60:.1f} min of training;"
                  f" scored in {time.perf_counter() - t0:.0f} s)", flush=True)
    rows_figure(shown, args.out / "samples.png",
                title=f"{args.samples} samples each; first ten shown")
    return cli.finish_run(args, {"fid_name": quality.FID_NAME, "kid_name": quality.KID_NAME,
                                 "reference": "MNIST test", "samples": args.samples,
                                 "rows": rows}, started, rows,
                          wrote="results.csv, samples.png",
                          title=f"{quality.FID_NAME} / {quality.KID_NAME}, against the MNIST "
                                f"test set ({len(ref)} images)")


if __name__ == "__main__":
    sys.exit(cli.run(main))
