"""Wall time of "FID, MNIST-classifier features" for 10,000 samples against the MNIST test set.

Stand-in samples are ``--num-samples`` MNIST training images with a little Gaussian
noise (the network's cost does not depend on what the images show). Timed, each
``--repeats`` times, median reported:

* ``reference``: the MNIST test set's features (10,000 images), what
  :func:`probgen.metrics.quality.mnist_reference` computes once per process;
* ``fid``: :func:`probgen.metrics.quality.fid` of the samples against that cached
  reference (the samples' features plus torchmetrics' Frechet distance);
* ``fid from scratch``: the same with the reference's features recomputed (real
  images passed instead of a reference);
* ``torchmetrics streaming``: ``fid_metric()`` (torchmetrics' FrechetInceptionDistance
  with the classifier as its feature network) updated with both image sets;
* ``sample_quality``: FID, KID (100 subsets of 1000), precision/recall (k = 3) and
  class coverage, against the cached reference (its k-NN radii cached too after the
  first call).

The load average of the machine is printed with the timings: other processes slow them.

    python benchmarks/fid_speed.py                      # one torch thread
    python benchmarks/fid_speed.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from probgen import checks
from probgen.data import image_splits
from probgen.metrics import quality


def timed(fn, repeats):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--num-samples",
        default=10000,
        type=checks.arg(checks.integer, low=quality.min_fid_samples("mnist")),
    )
    parser.add_argument("--repeats", type=checks.arg(checks.positive_int), default=3)
    parser.add_argument("--threads", type=checks.arg(checks.positive_int), default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    splits = image_splits("mnist", val_size=0)
    test = splits["test"].tensors[0]
    gen = torch.Generator().manual_seed(0)
    train = splits["train"].tensors[0][: args.num_samples]
    samples = (train + 0.05 * torch.randn(train.shape, generator=gen)).clamp(0, 1)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {args.threads} thread(s), device {args.device}; "
        f"{len(samples)} samples vs {len(test)} MNIST test images"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}")

    quality.extract_features(test[:200], device=args.device)  # load the network once
    rows = []
    t, tmin, ref = timed(
        lambda: quality.reference_statistics(test, device=args.device), args.repeats
    )
    rows.append(("reference (10k test features)", t, tmin, None))
    t, tmin, value = timed(lambda: quality.fid(samples, ref, device=args.device), args.repeats)
    rows.append(("fid, cached reference", t, tmin, value))
    t, tmin, value = timed(lambda: quality.fid(samples, test, device=args.device), args.repeats)
    rows.append(("fid from scratch", t, tmin, value))

    def streaming():
        metric = quality.fid_metric().to(args.device)
        for i in range(0, len(test), 100):
            metric.update(test[i : i + 100].to(args.device), real=True)
        for i in range(0, len(samples), 100):
            metric.update(samples[i : i + 100].to(args.device), real=False)
        return float(metric.compute())

    t, tmin, value = timed(streaming, args.repeats)
    rows.append(("torchmetrics streaming fid_metric()", t, tmin, value))
    t, tmin, value = timed(
        lambda: quality.sample_quality(samples, ref, device=args.device), args.repeats
    )
    rows.append(("sample_quality (FID, KID, P/R, classes)", t, tmin, value["fid"]))

    print(f"{'what':42s} {'median s':>9s} {'min s':>7s}  {quality.FID_NAME}")
    for name, t, tmin, value in rows:
        print(f"{name:42s} {t:9.2f} {tmin:7.2f}  {'' if value is None else f'{value:.4f}'}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        f"FID of {len(samples)} samples against the MNIST test set: {rows[1][1]:.2f} s with the "
        f"reference cached, {rows[2][1]:.2f} s from scratch (target < 30 s): "
        f"{'met' if max(rows[1][1], rows[2][1]) < 30 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
