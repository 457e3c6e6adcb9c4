"""Aging measured against ground truth: Age-cGAN (conditional GAN + latent inversion), CAAE and
recurrent aging on digits drawn at every level of one attribute.

Face-aging papers can only show pictures and user studies: nobody has the same face photographed
at every age. Here every test digit exists at every level (stroke thickness, or slant; the level
plays the age group and the digit with its style the identity; probgen.data.faces.graded_mnist).
Each method moves the test image of every input level ``s`` to every level ``t`` (the models'
``at_every_level``; NaN where a method cannot go: the recurrent model only ages forward), and
probgen.metrics.report.edit_report scores the edits against the truth at ``t``: reconstruction
(``t = s``), identity kept (the nearest true image in recognition features is the input's own:
the analogue of Age-cGAN's face-verification rates), attribute accuracy (a level classifier
trained on the true levels), MSE and SSIM, seconds per image.

Rows: no-change (the input as is), Age-cGAN with the encoder only / + pixel / + identity
refinement (L-BFGS-B), CAAE, recurrent (two-layer GRU). The identity refinement recognises with
the shipped MNIST classifier's penultimate layer; the table scores with another network
(``--score-features trained``: a digit classifier trained here, as face-aging evaluations verify
with a network other than the one that refined), or with the same one (``shipped``).

The CAAE departs from Zhang et al. in two measured settings: its image discriminator's fakes are
drawn at random levels (``--caae-fake-levels random``; with their ``own`` the edits keep the
input's thickness, see probgen.models.CAAE) and fooling it weighs 300 (``--caae-img-weight``,
chosen on digits, whose reconstruction term is a summed Gaussian NLL of hundreds of nats per
image; not measured on faces). ``--caae-fake-levels own --caae-img-weight 1`` is their form.

``--data faces --faces-dir DIR`` trains the cGAN and the CAAE on a UTKFace-style folder
(``{age}_{gender}_{race}_{datetime}.jpg``), streamed from disk, and draws edits (no ground
truth, so no table; the example refines by pixels, having no recognition network for faces:
``AgeCGAN.invert(..., refine="identity", features=net)`` takes one).

Writes to --out: results.json, results.csv (the table), progression.png (true progression above
each method's; with faces: the cGAN's edits, and the CAAE's in progression_caae.png),
recurrent.png (the GRU's sequences), checkpoints age_cgan.pt, caae.pt, recurrent.pt
(``probgen.load`` rebuilds the first two).

    python examples/aging.py --smoke
    python examples/aging.py --method cgan --refine none pixel identity --pairs 100000
    python examples/aging.py --data slant --levels 5
    python examples/aging.py --data faces --faces-dir UTKFace --method cgan caae
"""

from __future__ import annotations

import functools
import sys
import time

import torch

from probgen import checks, cli
from probgen.data.faces import AgeFolder, faces_loader, graded_mnist
from probgen.errors import ConfigError
from probgen.metrics.classifier_training import train_classifier
from probgen.metrics.report import edit_report
from probgen.models.aging import (
    CAAE,
    FAKE_LEVELS,
    REFINEMENTS,
    AgeCGAN,
    RecurrentAger,
    mnist_identity_features,
    unchanged,
)
from probgen.train import fit, save_model
from probgen.viz import progression_figure, rows_figure

METHODS = ("cgan", "caae", "recurrent")
NO_MONITOR = dict(patience=None, restore_best=False)


def parse_args(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=10, out="results/aging",
                          patience=None, lr=2e-4, batch_size=64, need_val=False)
    positive, add = checks.arg(checks.positive_int), p.add_argument
    add("--method", nargs="+", default=["all"], choices=METHODS + ("all",))
    add("--refine", nargs="+", default=list(REFINEMENTS), choices=REFINEMENTS,
        help="Age-cGAN inversions to score (encoder only, + pixel, + identity)")
    add("--data", default="thickness", choices=["thickness", "slant", "faces"])
    add("--faces-dir", default=None, help="UTKFace-style folder (--data faces)")
    add("--face-size", type=positive, default=64, help="side of the face images (Age-cGAN)")
    add("--caae-face-size", type=positive, default=128,
        help="side of the face images the CAAE trains on")
    add("--score-features", default="trained", choices=["trained", "shipped"],
        help="recognition features that score the table (see above)")
    add("--age-groups", default="agecgan", choices=["agecgan", "caae"])
    add("--levels", type=checks.arg(checks.integer, low=2), default=6,
        help="levels of the attribute (K)")
    add("--pairs", type=positive, default=100000,
        help="generated (z, G(z, y)) pairs that train Age-cGAN's encoder")
    add("--encoder-epochs", type=positive, default=5)
    add("--recurrent-epochs", type=positive, default=50, help="epochs of the recurrent model "
        "(its GRU is cheap: 50 take a minute on 3,000 digits; after 5 it draws a blur)")
    add("--maxiter", type=positive, default=50, help="L-BFGS-B iterations")
    add("--z-dim", type=positive, default=100, help="Age-cGAN's noise size")
    add("--caae-z-dim", type=positive, default=50)
    add("--caae-img-weight", type=checks.arg(checks.nonnegative_float), default=300.0,
        help="weight of fooling the CAAE's image discriminator (see above)")
    add("--caae-fake-levels", default="random", choices=FAKE_LEVELS, help="levels of the "
        "CAAE's fakes shown to its image discriminator: own (Zhang et al.) or random")
    add("--width", type=positive, default=None, help="DCGAN base widths")
    add("--eval-identities", type=positive, default=500, help="test identities in the table")
    add("--classifier-epochs", type=positive, default=3, help="epochs of the level classifier")
    add("--limit", type=positive, default=None, help="digits per split (default: all)")
    args = cli.finish_args(p, argv, smoke=dict(
        pairs=512, encoder_epochs=1, recurrent_epochs=1, maxiter=5, z_dim=16, caae_z_dim=8,
        width=8, eval_identities=32, classifier_epochs=1, limit=256, levels=3, val_size=0))
    if args.smoke:
        args.epochs = 1
    if args.data == "faces" and not args.faces_dir:
        p.error("--data faces needs --faces-dir")
    args.method = list(METHODS) if "all" in args.method else args.method
    return args


# --------------------------------------------------------------------------- training

def fitted(args, model, data, name: str, **over):
    """``(FitResult, seconds)`` of ``model`` trained quietly without early stopping."""
    start = time.perf_counter()
    res = fit(model, data, config=cli.fit_config(args, **NO_MONITOR, progress=False,
                                                 verbose=False, **over),
              callbacks=cli.trackers(args, name))
    return res, time.perf_counter() - start


def train_cgan(args, data, image_shape, levels, log):
    cgan = AgeCGAN(image_shape, levels, z_dim=args.z_dim, g_width=args.width,
                   d_width=args.width, e_width=args.width).to(args.device)
    _, gan_s = fitted(args, cgan, data, "age_cgan")
    pairs = cgan.encoder_pairs(args.pairs, generator=torch.Generator().manual_seed(args.seed))
    res, enc_s = fitted(args, cgan.encoder_step(), pairs, "age_cgan_encoder",
                        epochs=args.encoder_epochs)
    log["cgan"] = {"train_seconds": gan_s, "encoder_seconds": enc_s,
                   "encoder_loss": res.train_loss[-1], "pairs": args.pairs}
    save_model(cgan, args.out / "age_cgan.pt")
    return cgan


def train_caae(args, data, image_shape, levels, log):
    caae = CAAE(image_shape, levels, z_dim=args.caae_z_dim,
                net="conv" if image_shape[-1] % 4 == 0 else "mlp", d_img_width=args.width,
                img_weight=args.caae_img_weight,
                fake_levels=args.caae_fake_levels).to(args.device)
    res, seconds = fitted(args, caae, data, "caae")
    log["caae"] = {"train_seconds": seconds,
                   "reconstruction": res.history[-1].get("train_loss/encoder_generator")}
    save_model(caae, args.out / "caae.pt")
    return caae


def train_recurrent(args, sequences, image_shape, levels, log):
    rec = RecurrentAger(image_shape, levels, hidden=32 if args.smoke else 256,
                        embed=32 if args.smoke else 256).to(args.device)
    res, seconds = fitted(args, rec, sequences, "recurrent", epochs=args.recurrent_epochs,
                          lr=max(args.lr, 1e-3))
    log["recurrent"] = {"train_seconds": seconds, "epochs": args.recurrent_epochs,
                        "loss": res.train_loss[-1], "weights": rec.weights.tolist()}
    save_model(rec, args.out / "recurrent.pt")
    return rec


# --------------------------------------------------------------------------- faces

def run_faces(args, log):
    """Age-cGAN (``--face-size``) and the CAAE (``--caae-face-size``) trained on the face
    folder, streamed from disk; each draws four faces at every age group."""
    if "recurrent" in args.method:
        raise ConfigError("recurrent aging trains on progressions of one identity, which a "
                          "face folder does not have: use --method cgan caae with --data faces.")
    for method, size, figure in (("cgan", args.face_size, "progression.png"),
                                 ("caae", args.caae_face_size, "progression_caae.png")):
        folder = AgeFolder(args.faces_dir, size, args.age_groups)
        if method not in args.method:
            continue
        loader = faces_loader(args.faces_dir, size, args.age_groups, args.batch_size,
                              generator=torch.Generator().manual_seed(args.seed))
        x, y = folder.first(4, args.device)
        if method == "cgan":
            edits = train_cgan(args, loader, (3, size, size), folder.num_groups, log) \
                .at_every_level(x, y, refine="pixel" if "pixel" in args.refine else "none",
                                maxiter=args.maxiter)
        else:
            edits = train_caae(args, loader, (3, size, size), folder.num_groups,
                               log).at_every_level(x, y)
        rows_figure({f"#{i} {'cGAN' if method == 'cgan' else 'CAAE'}":
                     torch.cat([x[i:i + 1], edits[i]]) for i in range(x.shape[0])},
                    args.out / figure, title="input, then every age group")
    return {"faces": len(folder), "groups": folder.num_groups}


# --------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    log: dict[str, dict] = {}
    if args.data == "faces":
        results = run_faces(args, log)
        results["training"] = log
        cli.write_results(args.out, results, args, started)
        print(f"trained on {results['faces']} faces; figure in {args.out}")
        return results
    splits = graded_mnist(args.data, args.levels, val_size=args.val_size, seed=args.seed,
                          limit=args.limit, device=args.device)
    train, test = splits["train"], splits["test"]
    k, shape = train.levels, tuple(train.images.shape[2:])
    models = {}
    if "cgan" in args.method:
        models["cgan"] = train_cgan(args, train.flat(), shape, k, log)
    if "caae" in args.method:
        models["caae"] = train_caae(args, train.flat(), shape, k, log)
    if "recurrent" in args.method:
        models["recurrent"] = train_recurrent(args, train.sequences(), shape, k, log)

    flat = train.flat()
    level_net = train_classifier(flat.tensors[0], flat.tensors[1], epochs=args.classifier_epochs,
                                 seed=args.seed, log=lambda *a: None)
    if args.score_features == "shipped":
        features = mnist_identity_features(args.device)
    else:
        digits = train.digits.repeat_interleave(k)
        features = train_classifier(flat.tensors[0], digits, epochs=args.classifier_epochs,
                                    seed=args.seed + 1, log=lambda *a: None).features
    truth = test.images[:args.eval_identities]
    # each method moves the images of level s to every level (NaN where it cannot go)
    producers = {"no-change": lambda x, s: unchanged(x, k)}
    if "cgan" in models:
        for r in args.refine:
            producers[f"cgan+{r}" if r != "none" else "cgan encoder"] = functools.partial(
                models["cgan"].at_every_level, refine=r, maxiter=args.maxiter)
    for name in ("caae", "recurrent"):
        if name in models:
            producers[name] = models[name].at_every_level
    table: list[dict] = [{"method": name, **edit_report(produce, truth, features, level_net)}
                         for name, produce in producers.items()]
    progression_figure(truth, producers, level=1, path=args.out / "progression.png",
                       title=f"true progression (input: level 1) above each method's "
                             f"({args.data})")
    if "recurrent" in models:
        progression_figure(truth, {"GRU": producers["recurrent"]}, level=0, n=4,
                           path=args.out / "recurrent.png",
                           title="the GRU's sequence from level 0")
    results = {"table": {r["method"]: {k2: v for k2, v in r.items() if k2 != "method"}
                         for r in table},
               "training": log, "levels": k, "attribute": args.data,
               "eval_identities": int(truth.shape[0]), "train_identities": len(train)}
    cli.write_results(args.out, results, args, started, table=table)
    cli.print_table(table)
    print(f"{args.data}, {k} levels, {truth.shape[0]} test identities; "
          f"{time.perf_counter() - started:.1f} s on {cli.machine()}")
    return results


if __name__ == "__main__":
    sys.exit(cli.run(main))
