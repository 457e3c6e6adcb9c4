"""Denoising autoencoder on MNIST: the encoder sees clip(x + 0.4 N(0,1)), the target is x.

Reports the test PSNR of the noisy images and of their reconstructions against
the clean digits, and writes denoising.png (clean / noisy / restored),
learning_curves.png, results.json and results.csv to --out.

    python examples/denoising.py
    python examples/denoising.py --noise-std 0.6 --net mlp
    python examples/denoising.py --smoke
"""

import sys

import _restoration

from probgen import checks, cli


def main(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=30, out="results/denoising",
                          patience=5, batch_size=128)
    _restoration.add_model_args(p)
    p.add_argument("--noise-std", type=checks.arg(checks.nonnegative_float), default=0.4,
                   help="std of the added noise")
    args = cli.finish_args(p, argv)
    return _restoration.run(args, "denoising_ae", {"std": args.noise_std}, "noisy")


if __name__ == "__main__":
    sys.exit(cli.run(main))
