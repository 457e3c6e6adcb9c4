"""Anomaly detection with a VAE: train on MNIST without one digit, score test images by
their -ELBO, and report the ROC-AUC of finding the left-out digit.

A VAE trained only on "normal" digits gives unseen kinds of images a low ELBO
(a high -ELBO score). Writes anomaly_digit{d}.png (score histograms),
results.json and results.csv (one row per left-out digit) to --out.

    python examples/anomaly.py                 # leave out digit 2 (default)
    python examples/anomaly.py --digits 0 2 7  # one model per left-out digit
    python examples/anomaly.py --smoke
"""

import sys
import time

from probgen import checks, cli
from probgen.metrics import elbo_per_example, roc_auc
from probgen.models import VAE
from probgen.train import fit, set_seed
from probgen.viz import anomaly_figure


def main(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=30, out="results/anomaly", patience=5)
    p.add_argument("--digits", type=checks.arg(checks.int_in_range, low=0, high=9), nargs="+",
                   default=[2], help="digit classes to leave out of training (one model each)")
    p.add_argument("--z-dim", type=checks.arg(checks.positive_int), default=20)
    p.add_argument("-p", "--particles", type=checks.arg(checks.positive_int), default=10,
                   help="ELBO samples per test image")
    args = cli.finish_args(p, argv)
    started = time.perf_counter()
    splits = cli.mnist(args, binarize="dynamic")
    rows = []
    for d in args.digits:
        keep = {k: cli.with_settings(v.subset(v.tensors[1] != d), getattr(v, "settings", None),
                                     without_digit=d)
                for k, v in splits.items() if k != "test"}
        set_seed(args.seed)
        model = VAE(z_dim=args.z_dim).to(args.device)
        print(f"\n== VAE trained without digit {d} ({len(keep['train'])} images) ==", flush=True)
        result = fit(model, keep["train"], keep["val"], cli.fit_config(args),
                     checkpoint=str(args.out / f"checkpoint_digit{d}.pt"),
                     callbacks=cli.trackers(args, f"digit{d}"))
        set_seed(args.seed)
        test = splits["test"]
        scores = -elbo_per_example(model.model, model.guide, test, num_particles=args.particles)
        is_anomaly = test.tensors[1] == d
        auc = roc_auc(scores, is_anomaly)
        anomaly_figure(scores, is_anomaly, auc, label=f"digit {d} (left out)",
                       path=args.out / f"anomaly_digit{d}.png")
        rows.append({"left_out_digit": d, "roc_auc": auc,
                     "score_normal": float(scores[~is_anomaly].mean()),
                     "score_anomalous": float(scores[is_anomaly].mean()),
                     "epochs": result.epochs_run, "train_min": result.train_seconds / 60})
    print("\nTest set (score = -ELBO in nats, higher = more anomalous):")
    cli.print_table(rows)
    record = cli.write_results(args.out, {"rows": rows}, args, started, table=rows)
    print(f"wall time {record['wall_seconds'] / 60:.1f} min on {record['machine']}; "
          f"outputs in {args.out}/")
    return record


if __name__ == "__main__":
    sys.exit(cli.run(main))
