"""Shared body of the denoising and inpainting examples (not an example itself)."""

from __future__ import annotations

import time

import torch

from probgen import checks, cli
from probgen.data.corrupt import RandomBlocks
from probgen.metrics import restoration_psnr
from probgen.models import VAE
from probgen.train import fit, save_model, set_seed
from probgen.viz import learning_curves, rows_figure


def title(scores) -> str:
    whole = f"{scores['psnr_before']:.1f} dB -> {scores['psnr_after']:.1f} dB"
    if "region_psnr_before" in scores:  # inpainting: what matters is inside the holes
        return (f"test PSNR in the holes {scores['region_psnr_before']:.1f} dB -> "
                f"{scores['region_psnr_after']:.1f} dB (whole images {whole})")
    return f"test PSNR {whole}"


def add_model_args(p):
    p.add_argument("--z-dim", type=checks.arg(checks.positive_int), default=32, help="code size")
    p.add_argument("--net", default="conv", choices=["mlp", "conv"])
    p.add_argument("--hidden", type=checks.arg(checks.positive_int), nargs="+", default=None)


def run(args, preset: str, corruption_kwargs: dict, what: str):
    """Train ``preset`` (an AE whose encoder sees corrupted images), then measure PSNR of
    corrupted and restored test images against the clean ones; figure and JSON."""
    started = time.perf_counter()
    splits = cli.mnist(args)
    set_seed(args.seed)
    model = VAE.from_preset(preset, z_dim=args.z_dim, net=args.net, hidden=args.hidden,
                            likelihood="gaussian",
                            corruption_kwargs=corruption_kwargs).to(args.device)
    print(f"== {what}: {model.extra_repr()} ==", flush=True)
    result = fit(model, splits["train"], splits["val"], cli.fit_config(args),
                 checkpoint=str(args.out / "checkpoint.pt"), callbacks=cli.trackers(args))
    save_model(model, args.out / "model.pt")

    clean, _labels = splits["test"].all()
    g = torch.Generator().manual_seed(args.seed + 1)  # the same corrupted test set every run
    corrupt = model.corrupt
    region = None
    if isinstance(corrupt, RandomBlocks):
        region = corrupt.mask(clean.shape, clean.device, generator=g)
        corrupted = torch.where(region, clean.new_tensor(corrupt.fill), clean)
    else:
        corrupted = corrupt(clean.cpu(), generator=g).to(clean.device)
    model.eval()
    scores = restoration_psnr(model.reconstruct, clean, corrupted, region)
    n = 12
    rows_figure({"clean": clean[:n], what: corrupted[:n],
                 "restored": model.reconstruct(corrupted[:n]).reshape(clean[:n].shape)},
                path=args.out / f"{what}.png",
                title=title(scores))
    learning_curves({preset: result.history}, path=args.out / "learning_curves.png",
                    ylabel="-ELBO per image (Gaussian likelihood, sigma 0.1)")
    row = {"model": preset, **scores, "epochs": result.epochs_run,
           "train_min": result.train_seconds / 60}
    print("\nTest set:")
    cli.print_table([row])
    record = cli.write_results(args.out, {**row, "history": result.history}, args, started,
                               table=[row])
    print(f"wall time {record['wall_seconds'] / 60:.1f} min on {record['machine']}; "
          f"outputs in {args.out}/")
    return record
