"""Conditional VAE for structured output prediction (Sohn, Lee & Yan 2015).

The task of Pyro's CVAE example: given some quadrants of an image ``x``
(hidden pixels marked :data:`probgen.data.MISSING`), predict the hidden
pixels ``y``. Three networks and a deterministic baseline:

* baseline ``y_hat = f(x)``: a plain MLP trained first with the masked
  Bernoulli loss (:class:`Baseline`);
* prior network ``p(z | x, y_hat)``: Gaussian, sees the input completed by the baseline;
* recognition network ``q(z | x, y)``: Gaussian, sees the full image (the guide);
* generation network ``p(y | x, z)``: Bernoulli on the hidden pixels only.

The conditional log-likelihood ``log p(y | x) >= E_q[log p(y|x,z)] - KL(q(z|x,y) || p(z|x))``.
At prediction time (no ``y``), the guide falls back to the prior network, so
``Predictive(model, guide)`` draws completions from ``p(y | x)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import Predictive
from torch import nn

from probgen import checks
from probgen.data.masks import MISSING
from probgen.data.tensors import TensorData
from probgen.errors import DataError
from probgen.infer.steps import Step
from probgen.models.checks import (
    CheckedLossStep,
    flat_images,
    found,
    loop_checked,
    outside_unit_interval,
)
from probgen.models.likelihoods import masked_bernoulli_nll
from probgen.models.registry import MODELS
from probgen.nn.mlp import MLP, GaussianMLP


def check_completion_batch(
    inputs: torch.Tensor,
    targets: torch.Tensor | None,
    image_shape: tuple[int, ...],
    values: bool = True,
) -> None:
    """Raise :class:`DataError` unless inputs/targets fit a completion model.

    Shapes are always checked; ``values=False`` skips the value checks, which read the
    data back to the host (the fit loop's steps over data it checked whole)."""
    flat_images(inputs, image_shape, what="inputs")  # the shape check the VAE and AAE use
    if targets is not None and (
        targets.shape[0] != inputs.shape[0]
        or math.prod(targets.shape[1:]) != math.prod(inputs.shape[1:])
    ):
        raise DataError(
            f"targets of shape {tuple(targets.shape)} do not match inputs of shape "
            f"{tuple(inputs.shape)}."
        )
    if not values:
        return
    bad = outside_unit_interval(inputs) & (inputs != MISSING)
    if found(bad):
        v = inputs[bad].flatten()[0].item()
        raise DataError(
            f"input pixels must be grey levels in [0, 1], or {MISSING} where hidden; found {v}. "
            f"Scale images to [0, 1] and mark hidden pixels with probgen.data.MISSING."
        )
    if targets is not None and found(outside_unit_interval(targets)):
        raise DataError(
            "the Bernoulli likelihood needs targets in [0, 1]; found values outside "
            f"(min {targets.min().item():.3g}, max {targets.max().item():.3g}). Scale images "
            "to [0, 1] (e.g. divide uint8 pixels by 255)."
        )


def _shared_columns(hidden: torch.Tensor) -> torch.Tensor | None:
    """The indices of the hidden pixels when every row of ``hidden`` (B, D) hides the
    same ones, else ``None``. Only on the CPU: finding them reads the mask back to the
    host (two synchronisations on a GPU, where they cost more than the quarter of the
    output layer they save), so on an accelerator every pixel's logit is computed and
    the likelihood masked -- the same value."""
    if hidden.device.type != "cpu":
        return None
    first = hidden[0]
    if hidden.shape[0] > 1 and not bool((hidden == first).all()):
        return None
    return first.nonzero().squeeze(1)


class Baseline(nn.Module):
    """The deterministic baseline: an MLP from the visible pixels to logits of every pixel.

    Trained with the masked Bernoulli loss on the hidden pixels (``loss``).
    """

    def __init__(
        self, image_shape: Sequence[int] = (1, 28, 28), hidden: Sequence[int] = (500, 500)
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        d = int(torch.Size(self.image_shape).numel())
        self.net = MLP([d, *hidden, d])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of every pixel, ``(B, D)``."""
        return self.net(inputs.reshape(inputs.shape[0], -1))

    def loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, *rest: torch.Tensor
    ) -> torch.Tensor:
        """Mean over the batch of the Bernoulli NLL of the hidden pixels."""
        check_completion_batch(inputs, targets, self.image_shape, values=not loop_checked())
        return self.nll(inputs, targets).mean()

    def check_data(self, inputs: torch.Tensor, targets: torch.Tensor, *rest: torch.Tensor) -> None:
        """Check a whole data set of ``(inputs, targets)`` (a clear error otherwise)."""
        check_completion_batch(inputs, targets, self.image_shape)

    def fit_step(self, config: Any = None) -> Step:
        """The step :func:`probgen.fit` runs: the masked Bernoulli loss (:meth:`loss`), the
        data checked once before the first step instead of in every step."""
        return CheckedLossStep(self, lambda module, *batch: module.loss(*batch))

    def nll(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example Bernoulli NLL of the hidden pixels, ``(B,)``."""
        hidden = inputs.reshape(inputs.shape[0], -1) == MISSING
        return masked_bernoulli_nll(self(inputs), targets, hidden)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Completed images: visible pixels kept, hidden ones the predicted probabilities."""
        probs = torch.sigmoid(self(inputs)).reshape(inputs.shape)
        return torch.where(inputs == MISSING, probs, inputs)


@MODELS.register("cvae")
class CVAE(nn.Module):
    """Conditional VAE as a Pyro model/guide pair.

    Args:
        baseline: a trained :class:`Baseline` (frozen here); a new one if ``None``.
        image_shape: shape of one image.
        z_dim: latent size.
        hidden: hidden layer sizes of every network.

    Model and guide arguments: ``inputs`` (B, *image_shape) with hidden pixels = MISSING;
    ``targets`` (the full images in [0, 1]) or ``None`` to predict; optionally
    ``completed``, the prior network's input from :meth:`with_completions` (computed
    from the baseline when ``None``).
    Sites: ``z`` (latent), ``y`` (observed hidden pixels, with targets) or ``probs``
    (deterministic pixel probabilities, which the model returns, when predicting).
    """

    def __init__(
        self,
        baseline: Baseline | None = None,
        image_shape: Sequence[int] = (1, 28, 28),
        z_dim: int = 200,
        hidden: Sequence[int] = (500, 500),
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        d = int(torch.Size(self.image_shape).numel())
        z_dim = checks.positive_int("z_dim", z_dim)
        self.baseline = baseline if baseline is not None else Baseline(self.image_shape, hidden)
        if tuple(self.baseline.image_shape) != self.image_shape:
            raise DataError(
                f"the baseline takes images {self.baseline.image_shape}, "
                f"the CVAE {self.image_shape}."
            )
        self.baseline.requires_grad_(False)
        self.prior_net = GaussianMLP([d, *hidden, z_dim])
        self.recognition_net = GaussianMLP([d, *hidden, z_dim])
        self.generation_net = MLP([z_dim, *hidden, d])
        self.z_dim = z_dim

    def train(self, mode: bool = True) -> CVAE:
        super().train(mode)
        self.baseline.eval()  # frozen: always in evaluation mode
        return self

    def _register(self):
        # Registering in the model covers the guide's networks too (pyro.infer.SVI
        # collects the parameters of both traces); the frozen baseline stays out.
        for name in ("prior_net", "recognition_net", "generation_net"):
            pyro.module(f"cvae_{name}", getattr(self, name))

    @torch.no_grad()
    def complete(self, inputs: torch.Tensor) -> torch.Tensor:
        """The prior network's input: ``inputs`` (flattened) with the hidden pixels
        filled in by the baseline's probabilities, ``(B, D)``."""
        x = inputs.reshape(inputs.shape[0], -1)
        return torch.where(x == MISSING, torch.sigmoid(self.baseline(x)), x)

    @torch.no_grad()
    def with_completions(self, data: TensorData, batch_size: int = 1000) -> TensorData:
        """``data`` of ``(inputs, targets)`` as ``(inputs, targets, completed)`` tensors.

        The baseline is frozen while the CVAE trains, so its completion of each
        example is computed once here instead of in every step (model and guide
        take it as their third argument); the tensors stay on ``data``'s device.
        Re-run it if the baseline changes.
        """
        was_training = self.baseline.training
        self.baseline.eval()
        try:
            parts = [(x, y, self.complete(x)) for x, y, *_ in data.batches(batch_size)]
        finally:
            self.baseline.train(was_training)
        if not parts:
            raise DataError("with_completions got an empty data set.")
        return TensorData(
            *(torch.cat(t) for t in zip(*parts)), names=("inputs", "targets", "completed")
        )

    def _prior_input(self, x: torch.Tensor, completed: torch.Tensor | None) -> torch.Tensor:
        if completed is None:
            return self.complete(x)
        if completed.shape != x.shape:
            raise DataError(
                f"completed inputs of shape {tuple(completed.shape)} do not match "
                f"inputs of shape {tuple(x.shape)}; build them with "
                f"CVAE.with_completions(data)."
            )
        return completed

    def check_data(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        completed: torch.Tensor | None = None,
    ) -> None:
        """Check a whole data set of ``(inputs, targets[, completed])`` once (the fit loop
        does, before the first step; the model then skips its per-batch value checks)."""
        check_completion_batch(inputs, targets, self.image_shape)
        if completed is not None:
            self._prior_input(inputs.reshape(inputs.shape[0], -1), completed)

    def model(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        completed: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        check_completion_batch(inputs, targets, self.image_shape, values=not loop_checked())
        self._register()
        x = inputs.reshape(inputs.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.prior_net(self._prior_input(x, completed))
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            if targets is None:  # predicting: every pixel's probability
                probs = torch.sigmoid(self.generation_net(z))
                return pyro.deterministic("probs", probs, event_dim=1)
            hidden = x == MISSING
            obs = targets.reshape(x.shape)
            cols = _shared_columns(hidden)
            if cols is not None:
                # Every image hides the same pixels (a quadrant task): the output layer
                # computes the logits of those pixels only -- the same likelihood with
                # less work (3/4 of the output layer saved with 3 quadrants visible).
                *body, out = self.generation_net
                h = z
                for layer in body:
                    h = layer(h)
                logits = F.linear(h, out.weight[cols], out.bias[cols])
                y = dist.Bernoulli(logits=logits, validate_args=False)
                obs = obs[:, cols]
            else:
                y = dist.Bernoulli(logits=self.generation_net(z), validate_args=False).mask(hidden)
            # Grey-level targets: the Bernoulli log-likelihood is the cross-entropy, as
            # in Pyro's example (hence no support check).
            pyro.sample("y", dist.Independent(y, 1, validate_args=False), obs=obs)
        return None

    def guide(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        completed: torch.Tensor | None = None,
    ) -> None:
        x = inputs.reshape(inputs.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            if targets is None:
                loc, scale = self.prior_net(self._prior_input(x, completed))
            else:
                t = targets.reshape(x.shape)
                loc, scale = self.recognition_net(torch.where(x == MISSING, t, x))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, num_samples: int = 10) -> torch.Tensor:
        """Completions drawn from ``p(y | x)`` with :class:`pyro.infer.Predictive`.

        Returns ``(num_samples, B, *image_shape)``: visible pixels kept, hidden
        pixels the generation network's probabilities for each sampled z.
        """
        pred = Predictive(
            self.model,
            guide=self.guide,
            num_samples=num_samples,
            return_sites=("probs",),
            parallel=True,
        )
        probs = pred(inputs)["probs"].reshape((num_samples,) + tuple(inputs.shape))
        return torch.where(inputs == MISSING, probs, inputs)
