"""Time one training step of the fit loop against the same math hand-written in PyTorch.

Two models: probgen's CVAE at the size of the main example (784-500-500-200 networks,
batch 128, one quadrant visible) and the autoencoder family's default VAE (784-200-200-50
tanh MLPs, Bernoulli likelihood, batch 100). The loop's step is what ``fit`` runs for
every batch (``Run.run_phase``: the ELBO under Pyro's param trace, backward, Adam,
gradients cleared, the loss read back); the hand-written step uses the *same* network
objects, batch and Adam settings: reparameterised z, the Bernoulli likelihood, the KL by
Monte Carlo (``trace``/``jit``) or in closed form (``meanfield``/``jit_meanfield``). Both
are timed in interleaved blocks and the median per-step time of each is reported; the last
line prints the ratios for the default objective.

Run it from a checkout of an older probgen (``PYTHONPATH=old/ python ...``) to time that
version's loop step: without ``Run`` it times the first edition's step (loss, backward,
Adam, loss read back).

    python benchmarks/svi_step_overhead.py [--models cvae vae] [--objectives trace meanfield]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import pyro
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

import probgen.train.loop as loop
from probgen import checks
from probgen.data import MISSING, image_splits, quadrant_task
from probgen.infer import OBJECTIVES
from probgen.models import CVAE, VAE, Baseline
from probgen.train import FitConfig, SVIStep, resolve_device


def cvae_loss(cvae: CVAE, inputs, targets, analytic_kl: bool):
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


def vae_loss(vae: VAE, x, analytic_kl: bool):
    flat = x.reshape(x.shape[0], -1)
    loc, scale = vae.encoder(flat, None)
    z = loc + scale * torch.randn_like(loc)
    logits = vae.decoder(z, None)
    nll = F.binary_cross_entropy_with_logits(logits, flat, reduction="none").sum(1)
    q, p = Normal(loc, scale), Normal(torch.zeros_like(loc), torch.ones_like(scale))
    kl = kl_divergence(q, p).sum(1) if analytic_kl else (q.log_prob(z) - p.log_prob(z)).sum(1)
    return (nll + kl).mean()


def time_steps(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def build(model_name, device, batch_size):
    torch.manual_seed(0)
    if model_name == "cvae":
        data = quadrant_task(
            image_splits("mnist", val_size=0, limit=batch_size, device=device)["train"], 1
        )
        return CVAE(Baseline()).to(device), data, cvae_loss
    data = image_splits("mnist", val_size=0, limit=batch_size, binarize="static", device=device)[
        "train"
    ]
    data = probgen.data.TensorData(data.tensors[0])
    return VAE(z_dim=50, hidden=(200, 200)).to(device), data, vae_loss


def loop_step_fn(model, data, objective, batch, stack):
    """The fit loop's own step for ``model`` (or the first edition's, on an old checkout).

    ``stack`` (a :class:`contextlib.ExitStack`) holds the step context open for the whole
    timing, as ``train_epoch`` holds it for a whole epoch."""
    if hasattr(loop, "Run"):
        run = loop.Run(
            model,
            data,
            None,
            FitConfig(
                objective=objective, device=str(batch[0].device), progress=False, verbose=False
            ).check(),
        )
        run.set_up()
        state = run.phases[0]
        try:  # the step context train_epoch runs its steps in (once per epoch there)
            from probgen.train.context import running_steps
        except ImportError:  # an older checkout
            running_steps = lambda **kw: contextlib.nullcontext()
        kw = dict(data_checked=getattr(run, "train_checked", False))
        if hasattr(run, "declared"):
            kw["module"] = run.declared
        stack.enter_context(running_steps(**kw))

        def step():
            float(run.run_phase(state, batch, {}))

        return step
    step = SVIStep(model, objective=objective)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)

    def old_step():
        loss = step.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())

    return old_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["cvae", "vae"], choices=["cvae", "vae"])
    ap.add_argument(
        "--objectives", nargs="+", default=["trace", "meanfield"], choices=OBJECTIVES.names()
    )
    positive = checks.arg(checks.positive_int)
    ap.add_argument("--blocks", type=positive, default=7, help="interleaved timing blocks")
    ap.add_argument("--steps", type=positive, default=30, help="steps per block")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true", help="a few steps only")
    args = ap.parse_args(argv)
    if args.smoke:
        args.blocks, args.steps = 2, 2
    device = resolve_device(args.device)
    default = FitConfig().objective
    print(
        f"device {device}, {torch.get_num_threads()} threads, {args.blocks} blocks x "
        f"{args.steps} steps, loop: {'second edition' if hasattr(loop, 'Run') else 'first edition'}"
    )
    ratios = {}
    for model_name in args.models:
        batch_size = 128 if model_name == "cvae" else 100
        for name in args.objectives:
            model, data, handwritten = build(model_name, device, batch_size)
            batch = data.all()
            analytic = "meanfield" in name
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=1e-3)

            # the loop's values bound now, as the step runs in this iteration only
            def torch_step(
                handwritten=handwritten, model=model, batch=batch, analytic=analytic, opt=opt
            ):
                loss = handwritten(model, *batch, analytic)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                float(loss.detach())

            with (
                pyro.get_param_store().scope(),
                pyro.validation_enabled(False),
                contextlib.ExitStack() as stack,
            ):
                probgen_step = loop_step_fn(model, data, name, batch, stack)
                for _ in range(5):
                    probgen_step(), torch_step()
                a, b = [], []
                for _ in range(args.blocks):
                    a.append(time_steps(probgen_step, args.steps))
                    b.append(time_steps(torch_step, args.steps))
            ta, tb = statistics.median(a), statistics.median(b)
            ratios[(model_name, name)] = ta / tb
            print(
                f"{model_name:5s} {name:14s} probgen {ta * 1e3:7.2f} ms/step   plain torch "
                f"{tb * 1e3:7.2f} ms/step   ratio {ta / tb:.3f}",
                flush=True,
            )
    key = default if default in args.objectives else args.objectives[0]
    print(
        "ratio probgen/plain-torch ("
        + key
        + ", the default objective): "
        + ", ".join(f"{m} {ratios[(m, key)]:.3f}" for m in args.models)
    )


import probgen  # noqa: E402  (TensorData, after the functions that use it by name)

if __name__ == "__main__":
    main()
