"""Time one SVI training step of a probgen model against the same math in plain PyTorch.

The model is probgen's CVAE at the size of the main example (784-500-500-200
networks, batch 128, one quadrant visible). The hand-written step uses the
*same* network objects, the same batch and the same Adam optimizer settings:
reparameterised z, masked Bernoulli likelihood, KL by Monte Carlo (for the
``trace``/``jit`` objectives) or in closed form (``meanfield``/``jit_meanfield``).
Both sides are timed in interleaved blocks; the median per-step time of each is
reported, and the last line prints the ratio for the fit loop's default objective.

    python benchmarks/svi_step_overhead.py [--objectives trace meanfield] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from probgen.data import MISSING, image_splits, quadrant_task
from probgen.infer import OBJECTIVES
from probgen.models import CVAE, Baseline
from probgen.train import FitConfig, SVIStep, resolve_device


def handwritten_loss(cvae: CVAE, inputs, targets, analytic_kl: bool):
    x = inputs.reshape(inputs.shape[0], -1)
    t = targets.reshape(x.shape)
    hidden = x == MISSING
    with torch.no_grad():
        y_hat = torch.sigmoid(cvae.baseline(x))
    p_loc, p_scale = cvae.prior_net(torch.where(hidden, y_hat, x))
    q_loc, q_scale = cvae.recognition_net(torch.where(hidden, t, x))
    z = q_loc + q_scale * torch.randn_like(q_loc)
    logits = cvae.generation_net(z)
    nll = (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * hidden).sum(1)
    q, p = Normal(q_loc, q_scale), Normal(p_loc, p_scale)
    kl = kl_divergence(q, p).sum(1) if analytic_kl else (q.log_prob(z) - p.log_prob(z)).sum(1)
    return (nll + kl).mean()


def time_steps(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objectives", nargs="+", default=["trace", "meanfield", "jit",
                                                        "jit_meanfield"],
                    choices=OBJECTIVES.names())
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=7, help="interleaved timing blocks")
    ap.add_argument("--steps", type=int, default=30, help="steps per block")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true", help="a few steps only")
    args = ap.parse_args(argv)
    if args.smoke:
        args.blocks, args.steps = 2, 2
    device = resolve_device(args.device)
    torch.manual_seed(0)
    data = quadrant_task(image_splits("mnist", val_size=0, limit=args.batch_size,
                                      device=device)["train"], 1)
    batch = data.all()
    default = FitConfig().objective
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.blocks} blocks x {args.steps} steps")
    ratios = {}
    for name in args.objectives:
        torch.manual_seed(0)
        cvae = CVAE(Baseline()).to(device)
        params = [p for p in cvae.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-3)
        step = SVIStep(cvae, objective=name)
        analytic = "meanfield" in name

        def probgen_step():
            loss = step.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            float(loss.detach())

        def torch_step():
            loss = handwritten_loss(cvae, *batch, analytic)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            float(loss.detach())

        with pyro.get_param_store().scope(), pyro.validation_enabled(False):
            for _ in range(5):
                probgen_step(), torch_step()
            a, b = [], []
            for _ in range(args.blocks):
                a.append(time_steps(probgen_step, args.steps))
                b.append(time_steps(torch_step, args.steps))
        ta, tb = statistics.median(a), statistics.median(b)
        ratios[name] = ta / tb
        print(f"{name:14s} probgen {ta * 1e3:7.2f} ms/step   plain torch {tb * 1e3:7.2f} ms/step"
              f"   ratio {ta / tb:.3f}")
    key = default if default in ratios else args.objectives[0]
    print(f"ratio probgen/plain-torch ({key}, the default objective): {ratios[key]:.3f}")


if __name__ == "__main__":
    main()
