"""Evaluation reports: one call that measures a model with the papers' metrics.

* :func:`autoencoder_report`: a VAE's likelihood figures (-ELBO, importance-weighted NLL,
  KL, active units, reconstruction error);
* :func:`likelihood_report`: any model/guide pair's -ELBO and importance-weighted NLL, and
  the -ELBO by group (scenes by their number of objects);
* :func:`edit_report`: edits of an attribute (aging) against the true image at every
  level;
* :func:`aae_report`: an adversarial autoencoder's (Makhzani et al. 2015, "Adversarial
  Autoencoders"), for any :class:`~probgen.models.autoencoder.Autoencoder` (an AAE, a VAE
  of the same networks):
  reconstruction, how well the codes match the prior, the Parzen window, FID/KID, and a
  semi-supervised model's class error (:func:`class_error`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from probgen import checks
from probgen.data.tensors import TensorData
from probgen.errors import ConfigError
from probgen.metrics.images import mse_per_image
from probgen.metrics.latent import active_units, collect_codes, kl_per_dimension
from probgen.metrics.likelihood import elbo_and_iw_nll, elbo_per_example, iw_nll
from probgen.metrics.parzen import mmd, parzen_score

# the interface aae_report reads; importable from here as before
from probgen.models.autoencoder import Autoencoder


@torch.no_grad()
def autoencoder_report(
    model,
    data: TensorData,
    elbo_particles: int = 10,
    iw_samples: int = 0,
    iw_size: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of a :class:`probgen.models.VAE` (or any model with ``encode``/``reconstruct``
    and a Pyro ``model``/``guide``) on ``data``, per example, in nats:

    * ``neg_elbo``: ``-ELBO`` with ``elbo_particles`` samples and beta = 1 (the bound on
      ``-log p(x)``, whatever beta the model was trained with): the number
      :func:`probgen.metrics.negative_elbo` gives; skipped for a point-mass encoder
      (an autoencoder), whose ``log q(z|x)`` is no density;
    * ``iw_nll``: importance-sampled ``-log p(x)`` with ``k = iw_samples`` on the first
      ``iw_size`` examples (skipped for ``iw_samples = 0`` or a point-mass encoder);
    * ``kl``, ``kl_per_dim``: ``KL(q(z|x) || p(z))`` in total and per latent dimension;
    * ``active_units``: dimensions whose code mean varies over the data (> 0.01);
    * ``recon_mse``: mean squared error per pixel of the mean reconstruction.

    ``data`` is moved to the model's device first.
    """
    elbo_particles = checks.positive_int("elbo_particles", elbo_particles)
    iw_samples = checks.nonnegative_int("iw_samples", iw_samples)
    iw_size = checks.optional(checks.positive_int, "iw_size", iw_size, hint="or None for all")
    model.eval()
    param = next(model.parameters(), None)
    if param is not None and data.device != param.device:
        data = data.to(param.device)  # e.g. trained on a GPU, test set on the CPU
    out: dict[str, Any] = {}
    codes = collect_codes(model.encode, data)
    au = active_units(codes["loc"])
    out["active_units"] = int(au.sum())
    if codes["scale"] is not None:
        kl = kl_per_dimension(codes["loc"], codes["scale"])
        out["kl"] = float(kl.sum())
        out["kl_per_dim"] = [float(v) for v in kl]
        # unscaled densities: the bound on log p(x), not the (beta-weighted) training objective
        out["neg_elbo"] = -float(
            elbo_per_example(model.model, model.guide, data, num_particles=elbo_particles).mean()
        )
    mse, n = 0.0, 0
    for batch in data.batches(1000):
        rec = model.reconstruct(*batch)
        mse += float(mse_per_image(rec, batch[0].reshape(rec.shape)).sum())
        n += batch[0].shape[0]
    out["recon_mse"] = mse / n
    if iw_samples and codes["scale"] is not None:
        subset = data if iw_size is None or iw_size >= len(data) else data.subset(slice(0, iw_size))
        t0 = time.perf_counter()
        out["iw_nll"] = iw_nll(
            model.model, model.guide, subset, num_samples=iw_samples, progress=progress
        )
        out["iw_samples"], out["iw_size"] = iw_samples, len(subset)
        out["iw_seconds"] = time.perf_counter() - t0
    return out


@torch.no_grad()
def likelihood_report(
    model,
    data: TensorData,
    *,
    elbo_particles: int = 10,
    iw_samples: int = 0,
    iw_size: int | None = None,
    groups: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 100,
    iw_batch_size: int = 50,
    progress: bool = False,
) -> dict[str, Any]:
    """The likelihood bounds of a Pyro ``model``/``guide`` pair on ``data``, in nats per
    example:

    * ``neg_elbo``: ``-ELBO`` with ``elbo_particles`` samples over all of ``data``;
    * with ``iw_samples``: ``iw_nll``, importance-sampled ``-log p(x)`` with that many
      samples on the first ``iw_size`` examples, and ``neg_elbo_iw_subset``, the -ELBO of
      the same examples from the same draws (:func:`probgen.metrics.elbo_and_iw_nll`);
    * with ``groups`` (one integer per example, e.g. the number of objects in a scene):
      ``neg_elbo_by_group``, the -ELBO's mean per group value.

    Each estimate draws its random numbers from ``seed`` in a forked random state
    (:func:`seeded`): the caller's stream is left alone.

    Examples:
        The linear-Gaussian model of :func:`probgen.metrics.iw_nll`'s example with its
        exact posterior as the guide: each group's -ELBO is its exact ``-log p(x)``,
        ``-log N(x; 0, 2)``:

        >>> import math, types, pyro, pyro.distributions as dist, torch
        >>> from probgen.data import TensorData
        >>> from probgen.metrics.report import likelihood_report
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))
        >>> pair = types.SimpleNamespace(model=model, guide=guide)
        >>> data = TensorData(torch.tensor([0.0, 0.0, 2.0]))
        >>> report = likelihood_report(pair, data, groups=torch.tensor([0, 0, 2]))
        >>> {g: round(v, 4) for g, v in report["neg_elbo_by_group"].items()}
        {0: 1.2655, 2: 2.2655}
    """
    iw_samples = checks.nonnegative_int("iw_samples", iw_samples)
    iw_size = checks.optional(checks.positive_int, "iw_size", iw_size, hint="or None for all")
    iw_batch_size = checks.positive_int("iw_batch_size", iw_batch_size)
    with seeded(seed):
        per_example = -elbo_per_example(
            model.model, model.guide, data, num_particles=elbo_particles, batch_size=batch_size
        )
    out: dict[str, Any] = {"neg_elbo": float(per_example.mean())}
    if iw_samples:
        sub = data if iw_size is None else data.subset(slice(0, iw_size))
        with seeded(seed):
            both = elbo_and_iw_nll(
                model.model,
                model.guide,
                sub,
                elbo_particles=elbo_particles,
                iw_samples=iw_samples,
                batch_size=iw_batch_size,
                progress=progress,
            )
        out.update(iw_nll=both["iw_nll"], neg_elbo_iw_subset=both["neg_elbo"])
    if groups is not None:
        groups = groups.to(per_example.device)
        out["neg_elbo_by_group"] = {
            int(g): float(per_example[groups == g].mean()) for g in groups.unique().tolist()
        }
    return out


# --------------------------------------------------------------------------- aging


def edit_report(produce, truth: torch.Tensor, features, level_net) -> dict[str, float]:
    """Edits of an attribute (aging) scored against ground truth at every level.

    ``truth`` ``(N, K, C, H, W)`` holds each of ``N`` identities at each of ``K`` levels
    (:func:`probgen.data.faces.graded_mnist`); ``produce(x, s)`` moves the images ``x`` of
    level ``s`` to every level, ``(N, K, C, H, W)`` (NaN where it cannot go: a model that
    only ages forward). For each input level ``s`` and target ``t``:

    * ``rec_mse``, ``rec_feature`` (``t = s``): pixel MSE and squared distance in the
      recognition ``features`` (images -> ``(N, F)``) of the reconstruction;
    * ``identity`` (``t != s``): the share of edits whose nearest neighbour in the
      features, among all identities' true images at ``t``, is their own;
    * ``attribute_acc``: the share of edits that ``level_net`` (images -> ``(N, K)``
      logits) puts at ``t``;
    * ``target_mse``, ``target_ssim`` (torchmetrics): against the truth at ``t``;
      ``target_mse_forward`` over ``t > s`` only;
    * ``seconds_per_image``: the time of ``produce`` per input image and level.

    Each figure is the mean over the pairs ``(s, t)`` that have it (NaN when none has).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    n, levels = truth.shape[:2]
    with torch.no_grad():
        truth_f = torch.stack([features(truth[:, t]) for t in range(levels)], 1)  # (N, K, F)
    acc: dict[str, list] = {
        k: [] for k in ("rec_mse", "rec_feat", "ident", "attr", "mse", "mse_fwd", "ssim")
    }
    seconds = 0.0
    for s in range(levels):
        start = time.perf_counter()
        out = produce(truth[:, s], s)
        seconds += time.perf_counter() - start
        acc["rec_mse"].append((out[:, s] - truth[:, s]).pow(2).mean().item())
        with torch.no_grad():
            acc["rec_feat"].append(
                (features(out[:, s]) - truth_f[:, s]).pow(2).sum(1).mean().item()
            )
        for t in range(levels):
            if t == s or torch.isnan(out[:, t]).any():
                continue
            e = out[:, t]
            with torch.no_grad():
                nearest = torch.cdist(features(e), truth_f[:, t]).argmin(1)
                acc["ident"].append(
                    (nearest == torch.arange(n, device=nearest.device)).float().mean().item()
                )
                acc["attr"].append((level_net(e).argmax(1) == t).float().mean().item())
            err = (e - truth[:, t]).pow(2).mean().item()
            acc["mse"].append(err)
            if t > s:
                acc["mse_fwd"].append(err)
            acc["ssim"].append(float(ssim(e, truth[:, t], data_range=1.0)))

    def mean(v):
        return sum(v) / len(v) if v else float("nan")

    return {
        "rec_mse": mean(acc["rec_mse"]),
        "rec_feature": mean(acc["rec_feat"]),
        "identity": mean(acc["ident"]),
        "attribute_acc": mean(acc["attr"]),
        "target_mse": mean(acc["mse"]),
        "target_mse_forward": mean(acc["mse_fwd"]),
        "target_ssim": mean(acc["ssim"]),
        "seconds_per_image": seconds / (n * levels),
    }


# ------------------------------------------------------------------ adversarial autoencoders


def as_autoencoder(model) -> Autoencoder:
    """``model`` when it is an :class:`~probgen.models.autoencoder.Autoencoder` (a VAE, an
    AAE, a CAAE, a semi-supervised AAE, or a user's model with the same members); anything
    else is refused with a :class:`~probgen.errors.ConfigError` naming what it lacks."""
    if isinstance(model, Autoencoder):
        return model
    missing = [
        name
        for name in (
            "codes",
            "prior_sample",
            "decode",
            "reconstruct",
            "reconstruction_loss",
            "sample",
            "z_dim",
            "num_labels",
            "label_to_decoder",
            "device",
        )
        if not hasattr(model, name)
    ]
    raise ConfigError(
        f"{type(model).__name__} is no autoencoder with a prior: it lacks "
        f"{', '.join(missing)} (see probgen.models.autoencoder.Autoencoder)."
    )


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed the CPU's (and a CUDA ``device``'s) random numbers inside a forked random
    state: afterwards the process's random state is as it was, so a report or a figure
    that draws numbers leaves the caller's stream alone.

    Examples:
        >>> import torch
        >>> from probgen.metrics.report import seeded
        >>> before = torch.get_rng_state()
        >>> with seeded(0):
        ...     a = torch.rand(3)
        >>> with seeded(0):
        ...     b = torch.rand(3)
        >>> torch.equal(a, b), torch.equal(torch.get_rng_state(), before)
        (True, True)
    """
    seed = checks.seed("seed", seed)
    device = torch.device("cpu") if device is None else torch.device(device)
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


@torch.no_grad()
def class_error(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The error (%) of ``model.predict(images)`` against ``labels``, in eval mode (the
    model's mode is given back). A semi-supervised model's test or validation error."""
    was = model.training
    model.eval()
    try:
        pred = model.predict(images)
    finally:
        model.train(was)
    return 100.0 * float((pred != labels).float().mean())


@dataclass
class AAEReport:
    """What :func:`aae_report` measured, and the draws behind it for figures.

    Attributes:
        metrics: the numbers (see :func:`aae_report`).
        codes, labels: the test images' codes and their labels.
        prior_draws, prior_labels: as many prior draws (of the images' labels' parts when
            the prior takes labels; ``prior_labels`` ``None`` otherwise).
        samples: ``grid`` decoded prior draws (for a decoder that takes the label,
            ``grid / num_labels`` of each label in turn), on the CPU.
    """

    metrics: dict[str, Any]
    codes: torch.Tensor
    labels: torch.Tensor
    prior_draws: torch.Tensor
    prior_labels: torch.Tensor | None
    samples: torch.Tensor


def _samples(model: Autoencoder, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` decoded prior draws; uniform labels from ``generator`` for a decoder that
    takes the label."""
    if not model.label_to_decoder:
        return model.sample(n)
    labels = torch.randint(0, model.num_labels, (n,), generator=generator).to(model.device)
    return model.sample(labels=labels)


@torch.no_grad()
def aae_report(
    model,
    test: tuple[torch.Tensor, torch.Tensor],
    val_images: torch.Tensor,
    *,
    parzen_samples: int = 10000,
    parzen_val: int = 1000,
    scorer=None,
    fid_samples: int = 10000,
    seed: int = 0,
    grid: int = 100,
    batch_size: int = 1000,
) -> AAEReport:
    """An adversarial autoencoder measured as Makhzani et al. 2015 ("Adversarial
    Autoencoders") do, and more. On the test ``(images, labels)``:

    * ``recon_mse``: mean squared error per pixel of each image decoded from the centre of
      its code; ``recon_nll``: ``-log p(x | z)`` per image (the model's
      ``reconstruction_loss``);
    * ``mmd2``: how well the codes (draws of ``q(z)``) match the prior: the unbiased MMD^2
      between them and as many prior draws (Gaussian kernel, median bandwidth;
      ``mmd_bandwidth``, ``mmd_points``);
    * ``test_error``: a model with ``predict`` (the semi-supervised AAE): its class error
      in % (:func:`class_error`);
    * ``parzen_ll`` (``parzen_std_error``, ``parzen_sigma``, ``parzen_sigma_at_grid_edge``,
      ``parzen_samples``, ``parzen_seconds``): the Parzen-window log-likelihood of
      ``parzen_samples`` decoded prior draws, the width chosen on the first
      ``parzen_val`` of ``val_images`` (0 samples: skipped; see
      :mod:`probgen.metrics.parzen` for why the estimator is a poor one);
    * with a ``scorer`` (:func:`probgen.metrics.quality.quality_scorer`) and
      ``fid_samples``: ``fid``, ``kid_mean``, ``kid_std`` (``fid_name``, ``kid_name``,
      ``kid_subset_size``, ``quality_samples``, ``quality_reference``, ``fid_seconds``) of
      that many samples, clamped to [0, 1].

    A decoder that takes the label draws uniform labels for its samples. A model that
    corrupts its encoder's input while training (``corrupt``) is scored on clean images
    (its corruption is given back). Every random number comes from ``seed`` in a forked
    random state (:func:`seeded`): the caller's stream is left alone. A model without
    the autoencoder interface is refused (:func:`as_autoencoder`).

    Returns:
        An :class:`AAEReport`: the numbers and the draws behind them.
    """
    parzen_samples = checks.nonnegative_int(
        "parzen_samples", parzen_samples, hint="0 skips the Parzen window"
    )
    parzen_val = checks.positive_int("parzen_val", parzen_val)
    fid_samples = checks.nonnegative_int("fid_samples", fid_samples)
    seed = checks.seed("seed", seed)
    grid = checks.positive_int("grid", grid)
    batch_size = checks.positive_int("batch_size", batch_size)
    model = as_autoencoder(model)
    corrupt = getattr(model, "corrupt", None)
    if corrupt is not None:
        model.corrupt = None
    try:
        with seeded(seed, model.device):
            return _aae_report(
                model,
                test,
                val_images,
                parzen_samples,
                parzen_val,
                scorer,
                fid_samples,
                seed,
                grid,
                batch_size,
            )
    finally:
        if corrupt is not None:
            model.corrupt = corrupt


def _aae_report(
    model, test, val_images, parzen_samples, parzen_val, scorer, fid_samples, seed, grid, batch_size
) -> AAEReport:
    model.eval()
    x, y = test
    y_in = y if model.num_labels else None
    out: dict[str, Any] = {}
    rec, nll, n = 0.0, 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        yb = y_in[i : i + batch_size] if y_in is not None else None
        r = model.reconstruct(xb, yb)
        rec += float(mse_per_image(r, xb.reshape(r.shape)).sum())
        nll += float(model.reconstruction_loss((xb, yb) if yb is not None else (xb,))) * xb.shape[0]
        n += xb.shape[0]
    out["recon_mse"], out["recon_nll"] = rec / n, nll / n
    gen = torch.Generator().manual_seed(seed)
    codes = torch.cat(
        [model.codes(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    )
    prior_draws = model.prior_sample(codes.shape[0], y_in)
    match = mmd(codes, prior_draws)
    out.update(mmd2=match["mmd2"], mmd_bandwidth=match["bandwidth"], mmd_points=match["n"])
    if hasattr(model, "predict"):
        out["test_error"] = class_error(model, x, y)
    labels = (
        torch.arange(model.num_labels, device=model.device).repeat_interleave(
            grid // model.num_labels
        )
        if model.label_to_decoder
        else None
    )
    samples = model.sample(grid if labels is None else None, labels=labels).cpu()
    if parzen_samples:
        t0 = time.perf_counter()
        s = _samples(model, parzen_samples, gen)
        val = val_images[:parzen_val]
        p = parzen_score(
            s.reshape(s.shape[0], -1), x.reshape(x.shape[0], -1), val.reshape(val.shape[0], -1)
        )
        out.update(
            parzen_ll=p["log_likelihood"],
            parzen_std_error=p["std_error"],
            parzen_sigma=p["sigma"],
            parzen_sigma_at_grid_edge=p["sigma_at_grid_edge"],
            parzen_samples=p["num_samples"],
            parzen_seconds=time.perf_counter() - t0,
        )
    if scorer is not None and fid_samples:
        t0 = time.perf_counter()
        q = scorer.report(_samples(model, fid_samples, gen).clamp(0, 1))
        out.update(
            fid=q["fid"],
            fid_name=q["fid_name"],
            kid_mean=q["kid_mean"],
            kid_std=q["kid_std"],
            kid_name=q["kid_name"],
            kid_subset_size=q["kid_subset_size"],
            quality_samples=q["num_samples"],
            quality_reference=q["num_reference"],
            fid_seconds=time.perf_counter() - t0,
        )
    return AAEReport(out, codes, y, prior_draws, y_in, samples)


def aae_line(metrics: dict[str, Any]) -> str:
    """One line of what :func:`aae_report` measured, for a log or a script's output: the
    reconstruction's mean squared error, the MMD^2 of the codes and the prior, and where
    measured the Parzen-window log-likelihood (with its standard error and width), FID and
    KID, and a semi-supervised model's test error (with ``num_labelled`` labels, and the
    trained weights' error beside an average's: ``test_error_trained``, ``average``,
    ``epochs_averaged``, when the record holds them).

    Args:
        metrics: an :class:`AAEReport`'s ``metrics``, or a record holding them.

    Returns:
        The line, without a trailing full stop.

    Examples:
        >>> from probgen.metrics.report import aae_line
        >>> aae_line({"recon_mse": 0.0312, "mmd2": 0.00412, "parzen_ll": 301.24,
        ...           "parzen_std_error": 1.93, "parzen_sigma": 0.2,
        ...           "test_error": 7.31, "num_labelled": 100, "test_error_trained": 7.79,
        ...           "average": "ema", "epochs_averaged": 60})
        ...           # doctest: +NORMALIZE_WHITESPACE
        'recon MSE 0.0312, MMD^2(q(z), p(z)) 0.0041, Parzen LL 301.2 +- 1.9
        (sigma 0.200), test error 7.31% with 100 labels (ema average of 60 epochs; the
        trained weights 7.79%)'
    """
    parts = [f"recon MSE {metrics['recon_mse']:.4f}", f"MMD^2(q(z), p(z)) {metrics['mmd2']:.4f}"]
    if "parzen_ll" in metrics:
        parts.append(
            f"Parzen LL {metrics['parzen_ll']:.1f} +- "
            f"{metrics['parzen_std_error']:.1f} (sigma {metrics['parzen_sigma']:.3f})"
        )
    if "fid" in metrics:
        parts.append(f"FID {metrics['fid']:.2f}, KID {metrics['kid_mean']:.4f}")
    if "test_error" in metrics:
        error = f"test error {metrics['test_error']:.2f}%"
        if metrics.get("num_labelled") is not None:
            error += f" with {metrics['num_labelled']} labels"
        if "test_error_trained" in metrics:
            n = metrics.get("epochs_averaged")
            over = "" if n is None else f" of {n} epochs"
            error += (
                f" ({metrics.get('average') or 'weight'} average{over}; the trained weights "
                f"{metrics['test_error_trained']:.2f}%)"
            )
        parts.append(error)
    return ", ".join(parts)


__all__ = [
    "AAEReport",
    "Autoencoder",
    "aae_line",
    "aae_report",
    "as_autoencoder",
    "autoencoder_report",
    "class_error",
    "edit_report",
    "likelihood_report",
    "seeded",
]
