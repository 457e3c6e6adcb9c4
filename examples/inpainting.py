"""Inpainting autoencoder on MNIST: the encoder sees the digit with a random square hole
(nothing marks where), the target is the whole digit.

Reports the test PSNR of the holed images and of their reconstructions, and the
error inside the holes, and writes holed.png (clean / holed / restored),
learning_curves.png, results.json and results.csv to --out.

    python examples/inpainting.py
    python examples/inpainting.py --block-size 12 --blocks 2
    python examples/inpainting.py --smoke
"""

import sys

import _restoration

from probgen import checks, cli


def main(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=30, out="results/inpainting",
                          patience=5, batch_size=128)
    _restoration.add_model_args(p)
    p.add_argument("--block-size", type=checks.arg(checks.int_in_range, low=1, high=28),
                   default=9, help="side of each square hole (pixels)")
    p.add_argument("--blocks", type=checks.arg(checks.positive_int), default=1,
                   help="holes per image")
    args = cli.finish_args(p, argv)
    return _restoration.run(args, "inpainting_ae", {"size": args.block_size,
                                                    "count": args.blocks}, "holed")


if __name__ == "__main__":
    sys.exit(cli.run(main))
