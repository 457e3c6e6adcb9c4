"""probgen's RealNVP and Glow against normflows' own Glow: test bits/dim on MNIST at equal time.

Every model is trained for the same wall-clock budget on the same data (uniformly
dequantized MNIST, a new draw per batch), batch size, optimizer and learning rate.
The machine may be busy, so training is interleaved: each model in turn runs for a
fixed slice of time (``--slice`` seconds, whole steps), round after round, until it
has used ``--budget`` seconds; load then falls on every model alike. Afterwards each
is scored on the same fixed dequantization of ``--eval-size`` test images, with
every preprocessing Jacobian counted: bits/dim = (-log p(x) + D log 256) / (D log 2).

The models (sizes printed at the start):

* ``probgen-glow``: ``FlowModel("glow", levels=2, depth=K, hidden=H)`` -- normflows'
  ActNorm and 1x1 convolution, Pyro's affine coupling (also as the learned split
  prior), logit preprocessing; trained through probgen's Pyro step (``SVIStep``,
  the step ``probgen.fit`` runs).
* ``probgen-realnvp``: ``FlowModel("realnvp", levels=2, depth=3, hidden=H)``.
* ``normflows-glow``: normflows' ``MultiscaleFlow`` of ``GlowBlock`` s (its Glow
  example, unconditional ``GlowBase`` per level), same K and H, on [0, 1] data as
  in that example.
* ``normflows-glow-logit``: the same with normflows' own ``Logit`` preprocessing
  (``MultiscaleFlow(transform=Logit(alpha))``), to separate the model from the
  preprocessing.

The last line says whether probgen's best is at least as good as normflows' Glow.

    python benchmarks/flows_vs_normflows.py --budget 240            # about 4 x 240 s
    python benchmarks/flows_vs_normflows.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from pathlib import Path

import torch

import probgen
from probgen import checks
from probgen.data import image_splits
from probgen.data.dequantize import dequantized
from probgen.metrics.density import bits_per_dim
from probgen.models.flow import FlowModel
from probgen.train import set_seed

D = 784
warnings.filterwarnings("ignore", message=".*torch.lu is deprecated.*")  # inside normflows
MODELS = ("probgen-glow", "probgen-realnvp", "normflows-glow", "normflows-glow-logit")


def normflows_glow(depth: int, hidden: int, levels: int = 2, logit_alpha=None):
    """normflows' Glow for 1x28x28 images, built as in its Glow example (unconditional)."""
    import normflows as nf

    q0, merges, flows = [], [], []
    shape = (1, 28, 28)
    for i in range(levels):
        flows_ = [
            nf.flows.GlowBlock(
                shape[0] * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True
            )
            for _ in range(depth)
        ]
        flows_ += [nf.flows.Squeeze()]
        flows += [flows_]
        if i > 0:
            merges += [nf.flows.Merge()]
            latent = (
                shape[0] * 2 ** (levels - i),
                shape[1] // 2 ** (levels - i),
                shape[2] // 2 ** (levels - i),
            )
        else:
            latent = (shape[0] * 2 ** (levels + 1), shape[1] // 2**levels, shape[2] // 2**levels)
        q0 += [nf.distributions.GlowBase(latent)]
    transform = nf.transforms.Logit(alpha=logit_alpha) if logit_alpha else None
    return nf.MultiscaleFlow(q0, flows, merges, transform=transform, class_cond=False)


class Contender:
    """One model, its optimizer, its own batch order, and the time it has used."""

    def __init__(self, name, module, loss_fn, log_prob_fn, train, args, seed):
        self.name, self.module, self.loss_fn, self.log_prob_fn = name, module, loss_fn, log_prob_fn
        self.opt = torch.optim.Adam(module.parameters(), lr=args.lr)
        self.train, self.batch_size = train, args.batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.batches = iter(())
        self.used = 0.0
        self.steps = self.skipped = 0
        self.curve = []  # (seconds used, mean train bits/dim over the slice)

    def _next(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = self.train.batches(
                self.batch_size, shuffle=True, generator=self.gen, drop_last=True
            )
            return next(self.batches)

    def run(self, seconds: float, budget: float):
        self.module.train()
        stop = min(self.used + seconds, budget)
        total, n = 0.0, 0
        while self.used < stop:
            t0 = time.perf_counter()
            batch = self._next()
            loss = self.loss_fn(batch)
            value = float(loss.detach())
            if math.isfinite(value):
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                total, n = total + value, n + 1
            else:
                self.skipped += 1  # the rule of normflows' examples: skip a NaN batch
            self.steps += 1
            self.used += time.perf_counter() - t0
        if n:
            self.curve.append((self.used, (total / n) / (D * math.log(2)) + 8))

    @torch.no_grad()
    def evaluate(self, test, batch_size=500) -> float:
        self.module.eval()
        total, count = 0.0, 0
        for x, *_ in test.batches(batch_size):
            total += float(bits_per_dim(self.log_prob_fn(x), D, 256).sum())
            count += x.shape[0]
        return total / count


def build(name, args, train):
    if name.startswith("probgen"):
        kind = name.split("-")[1]
        kw = (
            dict(levels=2, depth=args.depth, hidden=args.hidden)
            if kind == "glow"
            else dict(levels=2, depth=args.realnvp_depth, hidden=args.hidden)
        )
        model = FlowModel(kind, alpha=args.alpha, **kw)
        step = probgen.SVIStep(model)
        return model, step.loss, model.log_prob
    model = normflows_glow(
        args.depth, args.hidden, logit_alpha=args.alpha if name.endswith("logit") else None
    )
    return model, (lambda batch: model.forward_kld(batch[0])), (lambda x: model.log_prob(x, None))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    positive, seconds = checks.arg(checks.positive_int), checks.arg(checks.positive_float)
    ap.add_argument("--budget", type=seconds, default=300, help="training seconds per model")
    ap.add_argument("--slice", type=seconds, default=15, help="seconds per turn")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--depth", type=positive, default=4, help="Glow steps per scale (both Glows)")
    ap.add_argument("--realnvp-depth", type=positive, default=3, help="RealNVP couplings per stage")
    ap.add_argument("--hidden", type=positive, default=64, help="conv channels of every network")
    ap.add_argument("--batch-size", type=positive, default=64)
    ap.add_argument("--lr", type=checks.arg(checks.positive_float), default=1e-3)
    ap.add_argument(
        "--alpha",
        default=0.05,
        help="logit margin (logit models)",
        type=checks.arg(checks.real, low=0, high=0.5, low_open=True, high_open=True),
    )
    ap.add_argument("--eval-size", type=positive, default=2000, help="test images scored")
    ap.add_argument(
        "--threads",
        type=positive,
        default=1,
        help="torch threads (1: fastest for these sizes on a busy 2-core machine)",
    )
    ap.add_argument("--seed", type=checks.arg(checks.seed), default=0)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--smoke", action="store_true", help="seconds: tiny models and budget")
    args = ap.parse_args(argv)
    if args.smoke:
        args.budget, args.slice, args.eval_size = 2.0, 1.0, 100
        args.depth, args.realnvp_depth, args.hidden = 1, 1, 8
    torch.set_num_threads(args.threads)

    splits = image_splits("mnist", val_size=0, limit=2048 if args.smoke else None)
    train = dequantized(splits["train"])
    test = dequantized(splits["test"].subset(slice(0, args.eval_size)), seed=args.seed + 2)
    init = dequantized(splits["train"].subset(slice(0, 512)), seed=args.seed + 3).tensors[0]

    contenders = []
    for name in args.models:
        set_seed(args.seed)
        module, loss_fn, log_prob_fn = build(name, args, train)
        with torch.no_grad():  # data-dependent ActNorm start, the same 512 images for all
            log_prob_fn(init)
        contenders.append(
            Contender(name, module, loss_fn, log_prob_fn, train, args, seed=args.seed)
        )
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}; "
        f"budget {args.budget:.0f} s per model in {args.slice:.0f} s slices, batch "
        f"{args.batch_size}, Adam lr {args.lr}"
    )
    for c in contenders:
        print(f"  {c.name:22s} {sum(p.numel() for p in c.module.parameters()):>9,} parameters")

    t_start = time.perf_counter()
    while any(c.used < args.budget for c in contenders):
        for c in contenders:
            if c.used < args.budget:
                c.run(args.slice, args.budget)
        done = min(c.used for c in contenders)
        print(
            f"  [{time.perf_counter() - t_start:6.0f} s wall] "
            + "  ".join(
                f"{c.name} {c.curve[-1][1]:.3f}" if c.curve else f"{c.name} -" for c in contenders
            )
            + f"   (train bits/dim; {done:.0f} s each so far)",
            flush=True,
        )

    rows = []
    for c in contenders:
        set_seed(args.seed)
        bpd = c.evaluate(test)
        rows.append(
            {
                "model": c.name,
                "parameters": sum(p.numel() for p in c.module.parameters()),
                "train_seconds": c.used,
                "steps": c.steps,
                "skipped": c.skipped,
                "images": c.steps * args.batch_size,
                "test_bits_per_dim": bpd,
                "curve": c.curve,
            }
        )
    print(
        f"\nMNIST test bits/dim on {len(test)} test images (dequantized once, seed "
        f"{args.seed + 2}); wall {time.perf_counter() - t_start:.0f} s"
    )
    print(
        f"{'model':22s} {'parameters':>10s} {'train s':>8s} {'steps':>6s} {'images':>8s} "
        f"{'bits/dim':>9s}"
    )
    for r in rows:
        print(
            f"{r['model']:22s} {r['parameters']:>10,} {r['train_seconds']:>8.0f} "
            f"{r['steps']:>6d} {r['images']:>8,} {r['test_bits_per_dim']:>9.4f}"
            + (f"  ({r['skipped']} NaN batches skipped)" if r["skipped"] else "")
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "results": rows}, indent=2))
    ours = [r for r in rows if r["model"].startswith("probgen")]
    ref = [r for r in rows if r["model"] == "normflows-glow"]
    if ours and ref:
        best = min(ours, key=lambda r: r["test_bits_per_dim"])
        ok = best["test_bits_per_dim"] <= ref[0]["test_bits_per_dim"]
        print(
            f"probgen's best ({best['model']}, {best['test_bits_per_dim']:.4f}) is "
            f"{'at least as good as' if ok else 'WORSE than'} normflows' Glow "
            f"({ref[0]['test_bits_per_dim']:.4f}) at equal time: {'yes' if ok else 'no'}"
        )


if __name__ == "__main__":
    main()
