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

from typing import Optional, Sequence, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive
from torch import nn

from probgen.data.masks import MISSING
from probgen.errors import DataError
from probgen.metrics.likelihood import masked_bernoulli_nll
from probgen.models.registry import MODELS
from probgen.nn.mlp import MLP, GaussianMLP


def check_completion_batch(inputs: torch.Tensor, targets: Optional[torch.Tensor],
                           image_shape: Tuple[int, ...]) -> None:
    """Raise :class:`DataError` unless inputs/targets fit a completion model."""
    d = 1
    for s in image_shape:
        d *= s
    if not torch.is_tensor(inputs):
        raise DataError(f"inputs must be a tensor, got {type(inputs).__name__}.")
    if inputs.dim() < 2 or inputs[0].numel() != d:
        raise DataError(
            f"inputs of shape {tuple(inputs.shape)} do not fit this model, which takes "
            f"images of shape {tuple(image_shape)} (batch first: (B, {', '.join(map(str, image_shape))}) "
            f"or (B, {d})).")
    if torch.jit.is_tracing():
        return
    bad = ~(((inputs >= 0) & (inputs <= 1)) | (inputs == MISSING))
    if bool(bad.any()):
        v = inputs[bad].flatten()[0].item()
        raise DataError(
            f"input pixels must be grey levels in [0, 1], or {MISSING} where hidden; found {v}. "
            f"Scale images to [0, 1] and mark hidden pixels with probgen.data.MISSING.")
    if targets is not None:
        if targets.shape[0] != inputs.shape[0] or targets[0].numel() != d:
            raise DataError(
                f"targets of shape {tuple(targets.shape)} do not match inputs of shape "
                f"{tuple(inputs.shape)}.")
        if not bool(((targets >= 0) & (targets <= 1)).all()):
            raise DataError(
                "the Bernoulli likelihood needs targets in [0, 1]; found values outside "
                f"(min {targets.min().item():.3g}, max {targets.max().item():.3g}). Scale images "
                "to [0, 1] (e.g. divide uint8 pixels by 255).")


class Baseline(nn.Module):
    """The deterministic baseline: an MLP from the visible pixels to logits of every pixel.

    Trained with the masked Bernoulli loss on the hidden pixels (``loss``).
    """

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28),
                 hidden: Sequence[int] = (500, 500)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        d = int(torch.Size(self.image_shape).numel())
        self.net = MLP([d, *hidden, d])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of every pixel, ``(B, D)``."""
        return self.net(inputs.reshape(inputs.shape[0], -1))

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of the Bernoulli NLL of the hidden pixels."""
        check_completion_batch(inputs, targets, self.image_shape)
        return self.nll(inputs, targets).mean()

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

    Model arguments: ``inputs`` (B, *image_shape) with hidden pixels = MISSING, and
    ``targets`` (the full images in [0, 1]) or ``None`` to predict.
    Sites: ``z`` (latent), ``y`` (observed hidden pixels), ``probs`` (deterministic
    pixel probabilities).
    """

    def __init__(self, baseline: Optional[Baseline] = None,
                 image_shape: Sequence[int] = (1, 28, 28), z_dim: int = 200,
                 hidden: Sequence[int] = (500, 500)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        d = int(torch.Size(self.image_shape).numel())
        if isinstance(z_dim, bool) or not isinstance(z_dim, int) or z_dim < 1:
            from probgen.errors import ConfigError
            raise ConfigError(f"z_dim must be a positive integer, got {z_dim!r}.")
        self.baseline = baseline if baseline is not None else Baseline(self.image_shape, hidden)
        if tuple(self.baseline.image_shape) != self.image_shape:
            raise DataError(f"the baseline takes images {self.baseline.image_shape}, "
                            f"the CVAE {self.image_shape}.")
        self.baseline.requires_grad_(False)
        self.prior_net = GaussianMLP([d, *hidden, z_dim])
        self.recognition_net = GaussianMLP([d, *hidden, z_dim])
        self.generation_net = MLP([z_dim, *hidden, d])
        self.z_dim = z_dim

    def train(self, mode: bool = True):
        super().train(mode)
        self.baseline.eval()  # frozen: always in evaluation mode
        return self

    def _register(self):
        # Registering in the model covers the guide's networks too (pyro.infer.SVI
        # collects the parameters of both traces); the frozen baseline stays out.
        for name in ("prior_net", "recognition_net", "generation_net"):
            pyro.module(f"cvae_{name}", getattr(self, name))

    def _prior_input(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y_hat = torch.sigmoid(self.baseline(x))
        return torch.where(x == MISSING, y_hat, x)

    def model(self, inputs: torch.Tensor, targets: Optional[torch.Tensor] = None):
        check_completion_batch(inputs, targets, self.image_shape)
        self._register()
        x = inputs.reshape(inputs.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.prior_net(self._prior_input(x))
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            logits = self.generation_net(z)
            probs = pyro.deterministic("probs", torch.sigmoid(logits), event_dim=1)
            if targets is not None:
                hidden = x == MISSING
                # Grey-level targets: the Bernoulli log-likelihood is the
                # cross-entropy, as in Pyro's example (hence no support check).
                y = dist.Bernoulli(logits=logits, validate_args=False).mask(hidden)
                pyro.sample("y", dist.Independent(y, 1, validate_args=False),
                            obs=targets.reshape(x.shape))
        return probs

    def guide(self, inputs: torch.Tensor, targets: Optional[torch.Tensor] = None):
        x = inputs.reshape(inputs.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            if targets is None:
                loc, scale = self.prior_net(self._prior_input(x))
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
        pred = Predictive(self.model, guide=self.guide, num_samples=num_samples,
                          return_sites=("probs",), parallel=True)
        probs = pred(inputs)["probs"].reshape((num_samples,) + tuple(inputs.shape))
        return torch.where(inputs == MISSING, probs, inputs)
