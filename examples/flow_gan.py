"""Flow-GAN on MNIST (and CIFAR-10): a normalizing flow trained by likelihood and an
adversarial loss at once, over a sweep of the adversarial share.

Each setting trains one :class:`probgen.models.FlowGAN` from the same seed: the flow's
loss is ``(1 - w) * bits/dim + w * L_G`` for each ``--adv-weight`` w (0: plain maximum
likelihood, no discriminator; 1: a purely adversarial flow), with each ``--disc``
(``dcgan``: the thesis's DCGAN discriminator; ``resnet18``: its CIFAR-style ResNet-18;
``wgan_gp``: the DCGAN critic with layer norm, WGAN-GP loss and k = 5, as Grover et al.
2018 train Flow-GAN), and Grover et al.'s ``L_G + like_reg * bits/dim`` for each
``--like-reg``. Per batch: one flow step, then one discriminator step on the same,
detached, fakes (the thesis's order). It reports per setting the test bits/dim (every
preprocessing Jacobian counted, as examples/flows.py; DenseFlow's an upper bound from
``--iw-samples`` noise draws), on MNIST the FID and KID of ``--fid-samples`` samples
(temperature 1) with the MNIST-classifier features against the test set (not comparable
with published Inception FIDs; colour data get them with ``--inception-weights``), and
the wall and CPU seconds of training.

Writes to --out: results.json, results.csv (one row per setting), tradeoff.png (test
bits/dim against FID over the sweep), losses.png (the flow's two terms, the
discriminator's loss and the validation bits/dim per epoch), samples_<tag>.png and one
checkpoint per setting, flowgan_<tag>.pt (``probgen.load`` rebuilds it; ``--resume``
continues from it).

    python examples/flow_gan.py                                    # RealNVP, WGAN-GP, w = 0, 0.5, 1
    python examples/flow_gan.py --disc dcgan resnet18 --adv-weight 0.5
    python examples/flow_gan.py --disc wgan_gp --adv-weight 1 --like-reg 1
    python examples/flow_gan.py --flow nice --disc wgan_gp --adv-weight 0 0.01 --epochs 3 \
        --init results/flow_gan/flowgan_w0.pt                   # fine-tune a trained flow
    python examples/flow_gan.py --data cifar10 --data-root DIR     # downloads when online
    python examples/flow_gan.py --smoke                            # seconds
"""

from __future__ import annotations

import sys
import time

import probgen
from probgen import checks, cli
from probgen.data import recipes
from probgen.errors import CheckpointError
from probgen.infer.adversarial import player_optim
from probgen.models.flowgan import FlowGAN
from probgen.train import Metric, fit, set_seed
from probgen.train.callbacks import TrainingCPUTime
from probgen.viz import grid_figure, history_figure, tradeoff_figure

FLOWS = ("nice", "realnvp", "glow", "denseflow")
DISCS = ("dcgan", "resnet18", "wgan_gp")


def parse_args(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=5, out="results/flow_gan",
                          patience=None, lr=1e-3, batch_size=64, val_size=5000, need_val=False)
    positive = checks.arg(checks.positive_int)
    p.add_argument("--data", default="mnist", choices=["mnist", "cifar10"])
    p.add_argument("--flow", default="realnvp", choices=FLOWS, help="the generator")
    p.add_argument("--depth", type=positive, default=None,
                   help="flow depth (default: the builder's)")
    p.add_argument("--hidden", type=positive, default=None, help="flow conv channels")
    p.add_argument("--levels", type=positive, default=None, help="flow scales")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start every setting's flow from this trained flow's weights (a "
                        "checkpoint of this example, e.g. its likelihood-only flowgan_w0.pt, "
                        "or of examples/flows.py) instead of from scratch: adversarial "
                        "fine-tuning of a maximum-likelihood flow; --epochs more epochs")
    p.add_argument("--base", default=None, choices=["logistic", "normal"],
                   help="NICE's base distribution (default: logistic, as Dinh et al. 2015); "
                        "not part of the checkpoints' names: give each base its own --out")
    p.add_argument("--disc", nargs="+", default=["wgan_gp"], choices=DISCS,
                   help="discriminators (one run each per adversarial weight above 0). Default "
                        "wgan_gp, Grover et al.'s: measured on MNIST with NICE (README), the "
                        "thesis's dcgan collapsed the samples onto one image at every weight")
    p.add_argument("--adv-weight", nargs="+", type=checks.arg(checks.probability),
                   default=[0.0, 0.5, 1.0],
                   help="adversarial shares w of (1 - w) bits/dim + w L_G (the sweep)")
    p.add_argument("--like-reg", nargs="*", type=checks.arg(checks.nonnegative_float), default=[],
                   help="Grover et al.'s form L_G + like_reg * bits/dim, one run each")
    p.add_argument("--label-smoothing", type=checks.arg(checks.real, low=0, high=1, high_open=True),
                   default=0.1,
                   help="one-sided: real target 1 - this (dcgan, resnet18; chosen, 001 gives "
                        "no value)")
    p.add_argument("--k", type=positive, default=None,
                   help="discriminator steps per flow step (default 1; 5 for wgan_gp)")
    p.add_argument("--d-lr", type=checks.arg(checks.positive_float), default=2e-4,
                   help="discriminator learning rate")
    p.add_argument("--g-lr", type=checks.arg(checks.positive_float), default=None,
                   help="flow learning rate (--lr)")
    p.add_argument("--train-size", type=positive, default=None, help="training images (all)")
    p.add_argument("--eval-size", type=positive, default=None, help="test images (all)")
    p.add_argument("--iw-samples", type=positive, default=16,
                   help="noise draws of DenseFlow's bound at evaluation")
    p.add_argument("--fid-samples", default=10000, type=cli.sample_count(),
                   help="samples of FID and KID")
    cli.image_source_flags(p)
    args = cli.finish_args(p, argv, smoke=dict(
        train_size=256, eval_size=256, depth=1, hidden=8, iw_samples=2,
        fid_samples=300))
    cli.check_inception_samples(p, args, "fid_samples")
    if args.base is not None and args.flow != "nice":
        p.error(f"--base picks NICE's base; --flow {args.flow} has a normal base")
    return args


# --------------------------------------------------------------------------- settings

def settings(args) -> list[dict]:
    """One dict of FlowGAN arguments (and a tag) per run of the sweep."""
    out = []
    for w in dict.fromkeys(args.adv_weight):
        for disc in (args.disc[:1] if w == 0 else args.disc):
            out.append(dict(tag=f"w{w:g}" if w == 0 else f"{disc}_w{w:g}",
                            disc="-" if w == 0 else disc, adv_weight=w, like_reg=None))
    for r in dict.fromkeys(args.like_reg):
        for disc in args.disc:
            out.append(dict(tag=f"{disc}_grover{r:g}", disc=disc, adv_weight=None, like_reg=r))
    return out


def build(args, s: dict, shape) -> FlowGAN:
    disc = args.disc[0] if s["disc"] == "-" else s["disc"]
    wgan = disc == "wgan_gp"
    kw = {k: v for k, v in (("depth", args.depth), ("hidden", args.hidden),
                            ("levels", args.levels), ("base", args.base)) if v is not None}
    return FlowGAN(args.flow, event_shape=shape, adv_weight=s["adv_weight"],
                   like_reg=s["like_reg"], discriminator="dcgan" if wgan else disc,
                   loss="wgan_gp" if wgan else "non_saturating", k=args.k,
                   label_smoothing=0.0 if wgan else args.label_smoothing, **kw)


# --------------------------------------------------------------------------- data

def load_data(args):
    """``(train, val, test)`` dequantized TensorData and the test images for FID."""
    d = recipes.dequantized_splits(cli.data_splits(args, limit=args.train_size), args.seed,
                                   args.eval_size)
    return d["train"], d["val"], d["test"], d["test_images"]


# --------------------------------------------------------------------------- training

def term_means(fg: FlowGAN) -> dict:
    """The epoch's means of the flow's two loss terms (``train_bpd``, ``train_adv``)."""
    return {f"train_{k}": v for k, v in fg.pop_term_means().items()}


def start_from(fg: FlowGAN, path) -> None:
    """Copy a trained flow's weights (a FlowGAN or FlowModel checkpoint; its best weights,
    as ``probgen.load`` gives them) into ``fg``'s flow."""
    src = probgen.load(path, map_location=next(fg.flow_model.parameters()).device)
    try:
        fg.flow_model.load_state_dict(getattr(src, "flow_model", src).state_dict())
    except RuntimeError as err:   # another flow's weights: one line, not a traceback
        raise CheckpointError(f"--init {path} does not fit this flow: {str(err).splitlines()[0]}"
                              f" ... give the --flow, --depth, --hidden and --levels it was "
                              f"trained with.") from None
    print(f"flow weights from {path}", flush=True)


def train_one(args, s: dict, data, scorer) -> dict:
    train, val, test, _ = data
    shape = tuple(train.tensors[0].shape[1:])
    set_seed(args.seed)
    fg = build(args, s, shape).to(args.device)
    n_flow = sum(p.numel() for p in fg.flow_model.parameters())
    n_disc = sum(p.numel() for p in fg.discriminator.parameters())
    print(f"\n== {s['tag']}: {args.flow} ({n_flow:,} parameters), {fg.extra_repr()}"
          + (f", D {n_disc:,} parameters" if s["disc"] != "-" else "") + " ==", flush=True)
    fg.initialize(train.subset(slice(0, 512)).all()[0])
    if args.init is not None:
        start_from(fg, args.init)
    # (at adv_weight 0, maximum likelihood, there is no discriminator to give --d-lr)
    lrs = player_optim(fg, d_lr=args.d_lr if fg.adv_weight != 0 else None, g_lr=args.g_lr)
    cfg = cli.fit_config(args, checkpoint=str(args.out / f"flowgan_{s['tag']}.pt"),
                         patience=None, restore_best=False, clip_norm=100.0, phase_optim=lrs)
    res = fit(fg, train, val, cfg, callbacks=[Metric("terms", term_means), TrainingCPUTime(),
                                              *cli.trackers(args, s["tag"])])
    k = args.iw_samples if not fg.exact else 1
    set_seed(args.seed)
    bpd = fg.evaluate_bits_per_dim(test, batch_size=250, num_samples=k,
                                   progress=not args.no_progress)
    record = {**{key: s[key] for key in ("tag", "disc", "adv_weight", "like_reg")},
              "test_bits_per_dim": bpd, "bound": not fg.exact, "iw_samples": k,
              "flow_parameters": n_flow, "discriminator_parameters": n_disc,
              "epochs": res.epochs_run, "train_seconds": res.train_seconds,
              "train_cpu_seconds": sum(h.get("cpu_seconds", 0.0) for h in res.history),
              "history": [dict(h) for h in res.history]}
    set_seed(args.seed + 5)
    grid_figure(fg.sample(64).cpu(), nrow=8, path=args.out / f"samples_{s['tag']}.png",
                title=f"{args.flow}, {s['tag']}: samples (T = 1)")
    if scorer is not None:
        set_seed(args.seed + 13)
        t0 = time.perf_counter()
        q = scorer.report(fg.sample(args.fid_samples))
        record.update(fid=q["fid"], kid_mean=q["kid_mean"], kid_std=q.get("kid_std"),
                      precision=q.get("precision"), recall=q.get("recall"),
                      eval_seconds=time.perf_counter() - t0)
    print(f"{s['tag']}: test bits/dim {'<= ' if record['bound'] else ''}{bpd:.4f}"
          + (f", {scorer.fid_name} {record['fid']:.2f}, KID {record['kid_mean']:.4f}"
             if scorer is not None else "")
          + f" ({res.epochs_run} epochs, {res.train_seconds:.0f} s)", flush=True)
    return record


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    data = load_data(args)
    scorer = cli.quality_scorer(args, data[3])
    records = {}
    for s in settings(args):
        records[s["tag"]] = train_one(args, s, data, scorer)
    history_figure({tag: r["history"] for tag, r in records.items()},
                   ["train_bpd", "train_adv", "train_loss/D", "val_loss"], args.out / "losses.png",
                   titles={"train_bpd": "flow: bits/dim term (train)",
                           "train_adv": "flow: adversarial term L_G",
                           "train_loss/D": "discriminator loss", "val_loss": "validation bits/dim"},
                   styles="o-", markersize=3, figsize=(15, 3.4))
    if scorer is not None:
        tradeoff_figure({tag: (r["test_bits_per_dim"], r["fid"]) for tag, r in records.items()},
                        args.out / "tradeoff.png", xlabel="test bits/dim (lower: better "
                        "likelihood)", ylabel="FID (lower: better samples)", title=scorer.fid_name)
    rows = [{"setting": r["tag"], "disc": r["disc"],
             "adv_weight": "-" if r["adv_weight"] is None else r["adv_weight"],
             "like_reg": "-" if r["like_reg"] is None else r["like_reg"],
             "test_bits_per_dim": r["test_bits_per_dim"], "bound": r["bound"],
             "fid": r.get("fid"), "kid_mean": r.get("kid_mean"), "epochs": r["epochs"],
             "train_seconds": r["train_seconds"], "train_cpu_seconds": r["train_cpu_seconds"]}
            for r in records.values()]
    return cli.finish_run(args, {"data": args.data, "flow": args.flow, "fid_name":
                                 scorer.fid_name if scorer else None, "settings": records},
                          started, rows)


if __name__ == "__main__":
    sys.exit(cli.run(main))
