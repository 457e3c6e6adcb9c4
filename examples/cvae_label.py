"""Label-conditional VAE on MNIST: the digit's one-hot label goes to encoder and decoder.

Generate a chosen digit (decode z ~ N(0, I) with that label) and re-style a
digit (encode it with its own label, decode the code with every other label:
the code keeps the handwriting, the label picks the digit). Writes
generated.png (one row per digit), restyle.png, learning_curves.png,
results.json and results.csv (test -ELBO, IS NLL, KL) to --out.

    python examples/cvae_label.py
    python examples/cvae_label.py --z-dim 2 --epochs 50
    python examples/cvae_label.py --smoke
"""

import sys
import time

import torch

from probgen import checks, cli
from probgen.metrics.report import autoencoder_report
from probgen.models import VAE
from probgen.train import fit, save_model, set_seed
from probgen.viz import grid_figure, learning_curves


def main(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=50, out="results/cvae_label",
                          patience=10)
    positive = checks.arg(checks.positive_int)
    p.add_argument("--z-dim", type=positive, default=16)
    p.add_argument("--hidden", type=positive, nargs="+", default=[500, 500])
    p.add_argument("-k", "--iw-samples", type=checks.arg(checks.nonnegative_int), default=500,
                   help="importance samples (NLL; 0: skip)")
    p.add_argument("--iw-size", type=positive, default=2000,
                   help="test images in the NLL estimate")
    args = cli.finish_args(p, argv, smoke=dict(iw_samples=8, iw_size=32))
    started = time.perf_counter()
    splits = cli.mnist(args, binarize="dynamic")
    set_seed(args.seed)
    model = VAE.from_preset("conditional_vae", z_dim=args.z_dim,
                            hidden=args.hidden).to(args.device)
    result = fit(model, splits["train"], splits["val"], cli.fit_config(args),
                 checkpoint=str(args.out / "checkpoint.pt"), callbacks=cli.trackers(args))
    save_model(model, args.out / "model.pt")
    set_seed(args.seed)
    report = autoencoder_report(model, splits["test"], iw_samples=args.iw_samples,
                                iw_size=args.iw_size, progress=not args.no_progress)

    dev = next(model.parameters()).device
    per_digit = 10
    labels = torch.arange(10, device=dev).repeat_interleave(per_digit)
    grid_figure(model.sample(labels=labels), nrow=per_digit, path=args.out / "generated.png",
                title="row d: decoded z ~ N(0, I) with label d")
    x, y = splits["test"].subset(slice(0, 8)).all()
    loc, _ = model.encode(x, y)
    styled = torch.stack([model.decode(loc, torch.full_like(y, d)) for d in range(10)], 1)
    grid = torch.cat([x.unsqueeze(1), styled], 1).reshape((-1,) + x.shape[1:])
    grid_figure(grid, nrow=11, path=args.out / "restyle.png",
                title="left: test digit; then its code decoded with labels 0..9")
    learning_curves({"conditional VAE": result.history}, path=args.out / "learning_curves.png",
                    ylabel="-ELBO per image (nats)")
    row = {"model": "conditional_vae", "neg_elbo": report["neg_elbo"],
           f"iw_nll_k{args.iw_samples}": report.get("iw_nll", float("nan")), "kl": report["kl"],
           "active_units": report["active_units"], "epochs": result.epochs_run,
           "train_min": result.train_seconds / 60}
    print("\nTest set (nats per image):")
    cli.print_table([row])
    record = cli.write_results(args.out, report, args, started, table=[row])
    print(f"wall time {record['wall_seconds'] / 60:.1f} min on {record['machine']}; "
          f"outputs in {args.out}/")
    return record


if __name__ == "__main__":
    sys.exit(cli.run(main))
