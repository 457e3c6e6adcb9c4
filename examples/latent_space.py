"""Why a plain autoencoder cannot generate and a VAE can: the source documents' figures.

Trains, with 2-D codes on dynamically binarized MNIST, an autoencoder (point
code, no KL) and VAEs with beta = 1 and beta = 2, then draws:

* latent.png: test codes of AE and VAE side by side, coloured by digit (the AE's
  code space is stretched, with holes and overlapping classes; the VAE's sits
  close to N(0, I), dashed circle = 2 standard deviations);
* prior_samples.png: decoded z ~ N(0, I) through each decoder (the AE's are
  mostly not digits);
* manifold.png: decoded grid of codes at normal quantiles for beta = 1 and 2;
* interpolation.png: decoding along the straight line between two digits' codes;
* pca.png: PCA's explained variance on MNIST (about 80 components for 90%) next to
  the test reconstruction error of PCA and of autoencoders at the same code sizes
  (grey levels, squared error).

Also writes results.json / results.csv (reconstruction MSE by code size).

    python examples/latent_space.py
    python examples/latent_space.py --epochs 40 --pca-sizes 2 4 8 16 32 64
    python examples/latent_space.py --smoke
"""

import re
import sys
import time

import torch

from probgen import checks, cli
from probgen.metrics import mse_per_image, pca, pca_reconstruction
from probgen.models import VAE
from probgen.train import fit, set_seed
from probgen.viz import (
    grid_figure,
    interpolation_figure,
    latent_scatter,
    manifold_grids,
    pca_vs_autoencoder,
)


def train(splits, args, name, preset, **settings):
    """Seed, then build ``VAE.from_preset(preset, **settings)`` and train it: each model
    starts from the same seed whatever was trained before it."""
    set_seed(args.seed)
    model = VAE.from_preset(preset, **settings).to(args.device)
    print(f"\n== {name}: {model.extra_repr()} ==", flush=True)
    tag = re.sub(r"\W+", "_", name).strip("_")
    fit(model, splits["train"], splits["val"], cli.fit_config(args, verbose=False),
        checkpoint=str(args.out / f"checkpoint_{tag}.pt"), callbacks=cli.trackers(args, tag))
    return model.eval()


def main(argv=None):
    p = cli.common_parser(__doc__.split("\n\n")[0], epochs=20, out="results/latent_space",
                          patience=5)
    p.add_argument("--pca-sizes", type=checks.arg(checks.int_in_range, low=1, high=784),
                   nargs="+", default=[2, 8, 32, 80],
                   help="code sizes of the PCA / autoencoder comparison")
    args = cli.finish_args(p, argv, smoke=dict(pca_sizes=[2, 8]))
    started = time.perf_counter()
    binary = cli.mnist(args, binarize="dynamic")
    grey = cli.mnist(args)

    models = {"autoencoder": train(binary, args, "autoencoder", "ae", z_dim=2),
              "VAE (beta = 1)": train(binary, args, "VAE (beta = 1)", "vae", z_dim=2),
              "VAE (beta = 2)": train(binary, args, "VAE (beta = 2)", "vae", z_dim=2, beta=2.0)}
    x, y = binary["test"].subset(slice(0, 5000)).all()
    codes = {name: m.encode(x)[0].detach() for name, m in models.items()}
    latent_scatter({k: codes[k] for k in ("autoencoder", "VAE (beta = 1)")}, y,
                   path=args.out / "latent.png", title="test digits, 2-D codes")
    z = torch.randn(40, 2, generator=torch.Generator().manual_seed(args.seed)).to(x.device)
    prior = torch.cat([m.decode(z) for m in models.values()])
    grid_figure(prior, nrow=20, path=args.out / "prior_samples.png",
                title="decoded z ~ N(0, I): rows 1-2 autoencoder, 3-4 VAE beta=1, "
                      "5-6 VAE beta=2")
    manifold_grids({k: models[k].decode for k in ("VAE (beta = 1)", "VAE (beta = 2)")},
                   path=args.out / "manifold.png")
    a, b = x[(y == 1).nonzero()[0, 0]], x[(y == 7).nonzero()[0, 0]] if (y == 7).any() else x[1]
    t = torch.linspace(0, 1, 10, device=x.device).unsqueeze(1)
    rows = {}
    for name, m in models.items():
        za, zb = m.encode(a[None])[0], m.encode(b[None])[0]
        rows[name] = m.decode((1 - t) * za + t * zb)
    interpolation_figure(rows, path=args.out / "interpolation.png",
                         title="decoding the straight line between two codes")

    train_x = grey["train"].tensors[0]
    test_x = grey["test"].tensors[0]
    mean, comps, explained = pca(train_x)
    table = []
    pca_err, ae_err = {}, {}
    for k in args.pca_sizes:
        pca_err[k] = float(mse_per_image(pca_reconstruction(test_x, mean, comps, k), test_x).mean())
        ae = train(grey, args, f"autoencoder, code size {k}", "ae", z_dim=k,
                   likelihood="gaussian")
        ae_err[k] = float(mse_per_image(ae.reconstruct(test_x), test_x).mean())
        table.append({"code_size": k, "pca_mse": pca_err[k], "ae_mse": ae_err[k],
                      "pca_explained_variance": float(explained[:k].sum())})
    pca_vs_autoencoder(explained, pca_err, ae_err, path=args.out / "pca.png")
    k90 = int((explained.cumsum(0) < 0.9).sum()) + 1
    print(f"\nPCA: {k90} components explain 90% of the variance of the training images")
    print("Test reconstruction MSE per pixel:")
    cli.print_table(table)
    spread = {name: [float(v) for v in c.std(0)] for name, c in codes.items()}
    record = cli.write_results(args.out, {"pca_components_for_90pct": k90, "by_code_size": table,
                                          "code_std": spread}, args, started, table=table)
    print(f"wall time {record['wall_seconds'] / 60:.1f} min on {record['machine']}; "
          f"outputs in {args.out}/")
    return record


if __name__ == "__main__":
    sys.exit(cli.run(main))
