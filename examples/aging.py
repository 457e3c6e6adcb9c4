"""Aging measured against ground truth: Age-cGAN (conditional GAN + latent inversion), CAAE and
recurrent aging on digits drawn at every level of one attribute.

Face-aging papers can only show pictures and user studies: nobody has the same face photographed
at every age. Here every test digit exists at every level (stroke thickness, or slant; the level
plays the age group and the digit with its style the identity; probgen.data.faces.graded_mnist),
so each method is scored against the true image at the target level. For each test identity and
each input level ``s``, the image at ``s`` is moved to every level ``t`` and compared with the
truth:

* reconstruction at ``t = s``: pixel MSE and squared distance in the scoring features;
* identity preserved (``t != s``): the share of edited images whose nearest neighbour, in the
  recognition features, among all test identities at level ``t`` is their own truth (the
  analogue of Age-cGAN's face-verification rates);
* attribute accuracy: a level classifier trained on the true levels finds ``t``;
* MSE and SSIM (torchmetrics) to the truth at ``t``; ``target_mse_forward`` over ``t > s`` only
  (the recurrent model only ages forward: its figures are over ``t > s``);
* seconds per input image (all its targets).

Rows: no-change (the input returned as is), Age-cGAN with the encoder only / + pixel refinement /
+ identity refinement (L-BFGS-B), CAAE, recurrent (two-layer GRU). The identity refinement uses
the shipped MNIST classifier's penultimate layer as its recognition network; the table scores
with another one (``--score-features trained``, the default: a digit classifier the script
trains on the graded training images, as face-aging evaluations score verification with a
recognition network other than the one that refined), or with the same one (``shipped``).

The CAAE departs from Zhang et al. in two settings, measured: their image discriminator sees
reconstructions at each image's own level only, so no loss ever asks the generator for another
level, and on graded digits the code keeps the thickness (the level classifier finds the asked
level in 8% of the edits, below chance, 1/6). Here its fakes are drawn at random levels
(``--caae-fake-levels random``) and fooling it weighs 300 (``--caae-img-weight``; the
reconstruction term is a summed Gaussian NLL of hundreds of nats per image): the edits then
reach the asked level (see the README for the table). ``--caae-fake-levels own
--caae-img-weight 1`` gives the library's default, their form. The weight was chosen on digits;
faces (3 x 128 x 128) have a reconstruction term about 60 times larger and it was not measured
there.

The recurrent model trains for ``--recurrent-epochs`` (50: a minute on 3,000 digits; it is
cheap, and after 5 epochs its images are a blur that keeps 1% of identities).

``--data faces --faces-dir DIR`` trains the cGAN and the CAAE on a UTKFace-style folder
(``{age}_{gender}_{race}_{datetime}.jpg``; 64x64 for the cGAN, ``--caae-face-size`` 128 for the
CAAE), streaming it from disk, and draws edits (no ground truth, so no table; no recognition
network for faces ships with probgen, so the example refines by pixels; the library takes one as
``AgeCGAN.invert(..., refine="identity", features=net)``).

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
from typing import Dict, List

import torch

from probgen import checks, cli
from probgen.data.faces import AgeFolder, faces_loader, graded_mnist
from probgen.errors import ConfigError
from probgen.metrics.classifier_training import train_classifier
from probgen.metrics.report import edit_report
from probgen.models.aging import (CAAE, FAKE_LEVELS, REFINEMENTS, AgeCGAN, RecurrentAger,
                                  mnist_identity_features, unchanged)
from probgen.train import fit, save_model
from probgen.viz import progression_figure, rows_figure

METHODS = ("cgan", "caae", "recurrent")
NO_MONITOR = dict(patience=None, restore_best=False)


def parse_args(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=10, out="results/aging",
                          patience=None, lr=2e-4, batch_size=64, need_val=False)
    positive = checks.arg(checks.positive_int)
    p.add_argument("--method", nargs="+", default=["all"], choices=METHODS + ("all",))
    p.add_argument("--refine", nargs="+", default=list(REFINEMENTS), choices=REFINEMENTS,
                   help="Age-cGAN inversions to score (encoder only, + pixel, + identity)")
    p.add_argument("--data", default="thickness", choices=["thickness", "slant", "faces"])
    p.add_argument("--faces-dir", default=None, help="UTKFace-style folder (--data faces)")
    p.add_argument("--face-size", type=positive, default=64,
                   help="side of the face images (Age-cGAN)")
    p.add_argument("--caae-face-size", type=positive, default=128,
                   help="side of the face images the CAAE trains on")
    p.add_argument("--score-features", default="trained", choices=["trained", "shipped"],
                   help="recognition features that score the table (see above)")
    p.add_argument("--age-groups", default="agecgan", choices=["agecgan", "caae"])
    p.add_argument("--levels", type=checks.arg(checks.integer, low=2), default=6,
                   help="levels of the attribute (K)")
    p.add_argument("--pairs", type=positive, default=100000,
                   help="generated (z, G(z, y)) pairs that train Age-cGAN's encoder")
    p.add_argument("--encoder-epochs", type=positive, default=5)
    p.add_argument("--recurrent-epochs", type=positive, default=50,
                   help="epochs of the recurrent model (its GRU is cheap: 50 epochs take about "
                        "a minute on 3,000 digits; 5 leave it a blur)")
    p.add_argument("--maxiter", type=positive, default=50, help="L-BFGS-B iterations")
    p.add_argument("--z-dim", type=positive, default=100, help="Age-cGAN's noise size")
    p.add_argument("--caae-z-dim", type=positive, default=50)
    p.add_argument("--caae-img-weight", type=checks.arg(checks.nonnegative_float), default=300.0,
                   help="weight of fooling the CAAE's image discriminator (chosen on digits, "
                        "whose reconstruction term is a summed Gaussian NLL of hundreds of "
                        "nats per image; not measured on faces)")
    p.add_argument("--caae-fake-levels", default="random", choices=FAKE_LEVELS,
                   help="levels of the CAAE's fakes shown to its image discriminator: own "
                        "(Zhang et al.; the edits then keep the input's level) or random (each "
                        "fake at a drawn level, which asks the generator for that level)")
    p.add_argument("--width", type=positive, default=None, help="DCGAN base widths")
    p.add_argument("--eval-identities", type=positive, default=500,
                   help="test identities in the table")
    p.add_argument("--classifier-epochs", type=positive, default=3,
                   help="epochs of the level classifier")
    p.add_argument("--limit", type=positive, default=None, help="digits per split (default: all)")
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
    if "recurrent" in args.method:
        raise ConfigError("recurrent aging trains on progressions of one identity, which a "
                          "face folder does not have: use --method cgan caae with --data faces.")
    folder = AgeFolder(args.faces_dir, args.face_size, args.age_groups)
    loader = faces_loader(args.faces_dir, args.face_size, args.age_groups, args.batch_size,
                          generator=torch.Generator().manual_seed(args.seed))
    shape, k = (3, args.face_size, args.face_size), folder.num_groups
    x = torch.stack([folder[i][0] for i in range(min(4, len(folder)))]).to(args.device)
    y = folder.groups[:x.shape[0]].to(args.device)
    rows = {}
    if "cgan" in args.method:
        cgan = train_cgan(args, loader, shape, k, log)
        z = cgan.invert(x, y, refine="pixel" if "pixel" in args.refine else "none",
                        maxiter=args.maxiter)
        for i in range(x.shape[0]):
            rows[f"#{i} cGAN"] = torch.cat([x[i:i + 1]] + [cgan.regenerate(z[i:i + 1], t)
                                                           for t in range(k)])
        rows_figure(rows, args.out / "progression.png", title="input, then every age group")
    if "caae" in args.method:
        size = args.caae_face_size
        loader = faces_loader(args.faces_dir, size, args.age_groups, args.batch_size,
                              generator=torch.Generator().manual_seed(args.seed))
        caae = train_caae(args, loader, (3, size, size), k, log)
        big = AgeFolder(args.faces_dir, size, args.age_groups)
        xb = torch.stack([big[i][0] for i in range(x.shape[0])]).to(args.device)
        rows = {f"#{i} CAAE": torch.cat([xb[i:i + 1]] + [caae.edit(xb[i:i + 1], t)
                                                         for t in range(k)])
                for i in range(x.shape[0])}
        rows_figure(rows, args.out / "progression_caae.png",
                    title="input, then every age group")
    return {"faces": len(folder), "groups": k}


# --------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    log: Dict[str, dict] = {}
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
    table: List[dict] = [{"method": name, **edit_report(produce, truth, features, level_net)}
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
