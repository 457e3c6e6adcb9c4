"""The autoencoder family as one Pyro model/guide pair: VAE, beta-VAE, AE, denoising and
inpainting AE, label-conditional VAE (Kingma & Welling 2014; Higgins et al. 2017).

Generative model (``model``), for each image in the data plate::

    z ~ p(z)                          latent code, z_dim values: N(0, I), or a learned
                                      zuko flow with ``prior_flow`` ("zuko:maf", ...)
    x ~ p(x | decoder(z [, label]))   a likelihood from probgen.models.likelihoods

Guide (``guide``): ``z ~ q(z | x~ [, label])`` with ``x~ = corrupt(x)`` (or ``x``);
a diagonal Gaussian from the encoder (``encoder="gaussian"``) or a point mass
at the encoder's output (``encoder="delta"``). With ``guide_flow`` set
(``"planar"``, ``"iaf"``, ``"sylvester"``, ``"spline"``, or a zuko flow such as
``"zuko:nsf"``), the Gaussian is pushed
through ``guide_flow_depth`` flow steps conditioned on the encoder's last hidden
layer (:mod:`probgen.infer.guides`): a flow-based q(z|x) that every objective,
IWAE included, trains.

The ELBO is ``E_q[log p(x|z)] - beta * KL(q(z|x) || p(z))``: ``beta`` scales the
latent site in model and guide alike (``poutine.scale``). The variants the
source documents compare are settings of this one class, one setting apart:

=====================  ==============================================================
preset                 settings
=====================  ==============================================================
``vae``                Gaussian encoder, ``beta = 1``
``beta_vae``           Gaussian encoder, ``beta = 4`` (any ``beta >= 0`` trains)
``ae``                 point-mass encoder, ``beta = 0``: the ELBO is the
                       reconstruction log-likelihood and nothing shapes the code
                       space (why a plain AE cannot generate)
``denoising_ae``       ``ae`` whose encoder sees ``clip(x + 0.4 N(0,1))``
``inpainting_ae``      ``ae`` whose encoder sees ``x`` with a random 9x9 hole
``conditional_vae``    ``vae`` with a one-hot digit label to encoder and decoder
=====================  ==============================================================

IWAE is a training objective, not a model: train a ``vae`` with
``objective="iwae"`` and ``num_particles=k`` (Pyro's ``RenyiELBO(alpha=0)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Predictive
from torch import nn

from probgen import checks
from probgen.data.corrupt import make_corruption
from probgen.errors import ConfigError
from probgen.flows.zuko_bridge import ZUKO_FLOWS, ZukoDistribution, zuko_flow, zuko_settings
from probgen.infer.context import current_step
from probgen.infer.guides import AmortizedFlow, flow_settings
from probgen.models.checks import checked_labels, flat_images, generated_count, loop_checked
from probgen.models.likelihoods import LIKELIHOODS
from probgen.models.registry import MODELS
from probgen.nn.coders import NETS
from probgen.registry import Registry

ENCODERS = ("gaussian", "delta")

PRESETS: Registry = Registry("autoencoder preset")
PRESETS.register("vae", {})
PRESETS.register("beta_vae", {"beta": 4.0})
PRESETS.register("ae", {"encoder": "delta", "beta": 0.0})
PRESETS.register("denoising_ae", {"encoder": "delta", "beta": 0.0, "corruption": "noise"})
PRESETS.register("inpainting_ae", {"encoder": "delta", "beta": 0.0, "corruption": "blocks"})
PRESETS.register("conditional_vae", {"num_labels": 10})


@MODELS.register("vae")
class VAE(nn.Module):
    """Variational (or plain) autoencoder as a Pyro model/guide pair.

    Args:
        image_shape: shape of one image, e.g. ``(1, 28, 28)``.
        z_dim: latent size.
        hidden: hidden layer sizes (``None``: the network's default).
        net: encoder/decoder architecture, a name in :data:`probgen.nn.coders.NETS`.
        likelihood: a name in :data:`probgen.models.likelihoods.LIKELIHOODS`.
        encoder: ``"gaussian"`` (a VAE) or ``"delta"`` (a point code: an AE).
        beta: weight of the KL term (``>= 0``).
        num_labels: classes of a label-conditional model (0: unconditional).
        corruption: what the encoder sees instead of ``x`` while training and
            scoring: a name in :data:`probgen.data.corrupt.CORRUPTIONS` or ``None``.
        activation: hidden activation (``None``: the network's default).
        likelihood_kwargs: settings of the likelihood.
        corruption_kwargs: settings of the corruption.
        guide_flow: ``None`` (the encoder's diagonal Gaussian is q(z|x)) or a flow
            family in :data:`probgen.infer.guides.GUIDE_FLOWS` (``"planar"``,
            ``"iaf"``, ``"sylvester"``, ``"spline"``; zuko's ``"zuko:maf"``,
            ``"zuko:nsf"``, ``"zuko:nice"``, ``"zuko:realnvp"``) that pushes it further.
        guide_flow_depth: flow steps (with ``guide_flow``).
        guide_flow_kwargs: the flow family's settings (``hidden``, ``householder``,
            ``count_bins``, ...; for a zuko flow zuko's settings such as
            ``hidden_features`` and ``bins``, and ``inverse``; see
            :mod:`probgen.infer.guides`).
        prior_flow: ``None`` (the prior is ``N(0, I)``) or a zuko flow in
            :data:`probgen.flows.zuko_bridge.ZUKO_FLOWS` (``"zuko:maf"``, ...): a learned
            prior p(z), trained with the rest of the model by the ELBO's ``log p(z)``
            term (Pyro's ``ZukoToPyro``; scoring a code is one pass of the flow, drawing
            one for generation ``z_dim`` passes for the autoregressive flows).
        prior_flow_depth: the prior flow's transformations.
        prior_flow_kwargs: zuko's settings of the prior flow, as JSON data
            (``hidden_features``, ``bins``, ...).

    Model arguments: ``x`` ``(B, *image_shape)`` or ``(B, D)``; ``labels`` ``(B,)``
    integers (needed when ``num_labels > 0``, ignored otherwise); with ``x=None``
    the model generates ``size`` images (or one per label).
    Sites: ``z`` (latent), ``x`` (observed), ``mean`` (deterministic: the image
    the likelihood stands for, ``(B, D)``).

    With ``prior_flow`` the closed-form tools that assume ``p(z) = N(0, I)`` (the
    ``meanfield`` objective's analytic KL, which then falls back to Monte Carlo;
    :func:`probgen.metrics.kl_per_dimension`) do not describe this model's prior.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        z_dim: int = 50,
        hidden: Sequence[int] | None = None,
        net: str = "mlp",
        likelihood: str = "bernoulli",
        encoder: str = "gaussian",
        beta: float = 1.0,
        num_labels: int = 0,
        corruption: str | None = None,
        activation: str | None = None,
        likelihood_kwargs: dict[str, Any] | None = None,
        corruption_kwargs: dict[str, Any] | None = None,
        guide_flow: str | None = None,
        guide_flow_depth: int = 2,
        guide_flow_kwargs: dict[str, Any] | None = None,
        prior_flow: str | None = None,
        prior_flow_depth: int = 3,
        prior_flow_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        checks.choice("encoder", encoder, ENCODERS)
        flow_kw = flow_settings(guide_flow, guide_flow_depth, guide_flow_kwargs)
        if guide_flow is not None and encoder != "gaussian":
            raise ConfigError(
                f"guide_flow={guide_flow!r} pushes the encoder's Gaussian through a "
                f"flow; it needs encoder='gaussian', got {encoder!r}."
            )
        beta = checks.nonnegative_float("beta", beta, hint="beta weights the KL term")
        if prior_flow is not None:
            if prior_flow not in ZUKO_FLOWS:
                raise ConfigError(
                    f"prior_flow must be None (N(0, I)) or one of "
                    f"{ZUKO_FLOWS.names()}, got {prior_flow!r}."
                )
            if beta == 0:
                raise ConfigError(
                    f"prior_flow={prior_flow!r} is learned from the ELBO's "
                    f"log p(z) term, which beta = 0 masks out; use beta > 0 "
                    f"or no prior flow."
                )
            zuko_settings(prior_flow_kwargs, "prior_flow_kwargs")
        self.image_shape = tuple(image_shape)
        self.z_dim, self.beta, self.num_labels = z_dim, float(beta), num_labels
        self.settings = dict(
            image_shape=list(self.image_shape),
            z_dim=z_dim,
            hidden=list(hidden) if hidden is not None else None,
            net=net,
            likelihood=likelihood,
            encoder=encoder,
            beta=float(beta),
            num_labels=num_labels,
            corruption=corruption,
            activation=activation,
            likelihood_kwargs=likelihood_kwargs,
            corruption_kwargs=corruption_kwargs,
        )
        if (
            guide_flow is not None
        ):  # recorded only when set: a plain VAE's settings stay as they were
            self.settings.update(
                guide_flow=guide_flow,
                guide_flow_depth=guide_flow_depth,
                guide_flow_kwargs=guide_flow_kwargs,
            )
        if prior_flow is not None:
            self.settings.update(
                prior_flow=prior_flow,
                prior_flow_depth=prior_flow_depth,
                prior_flow_kwargs=prior_flow_kwargs,
            )
        kw = {}
        if hidden is not None:
            kw["hidden"] = tuple(hidden)
        if activation is not None:
            kw["activation"] = activation
        self.encoder_kind = encoder
        self.encoder, self.decoder = NETS.get(net)(
            self.image_shape, z_dim, num_labels=num_labels, stochastic=encoder == "gaussian", **kw
        )
        self.likelihood = LIKELIHOODS.get(likelihood)(**(likelihood_kwargs or {}))
        self.corrupt = make_corruption(corruption, self.image_shape, **(corruption_kwargs or {}))
        self._plates: dict = {}
        self.guide_flow = None
        if guide_flow is not None:
            self.guide_flow = AmortizedFlow(
                guide_flow, z_dim, self._context_dim(), guide_flow_depth, **flow_kw
            )
        self.prior_flow = None
        if prior_flow is not None:
            self.prior_flow = zuko_flow(
                prior_flow, z_dim, 0, prior_flow_depth, **(prior_flow_kwargs or {})
            )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> VAE:
        """A model of the preset ``name`` (see :data:`PRESETS`), settings overridden."""
        return cls(**{**PRESETS.get(name), **overrides})

    def extra_repr(self) -> str:
        s = self.settings
        flow = (
            f", guide_flow={s['guide_flow']} x {s['guide_flow_depth']}"
            if s.get("guide_flow")
            else ""
        )
        if s.get("prior_flow"):
            flow += f", prior_flow={s['prior_flow']} x {s['prior_flow_depth']}"
        return (
            f"z_dim={s['z_dim']}, net={s['net']}, likelihood={s['likelihood']}, "
            f"encoder={s['encoder']}, beta={s['beta']}, num_labels={s['num_labels']}, "
            f"corruption={s['corruption']}{flow}"
        )

    @property
    def label_to_decoder(self) -> bool:
        """Whether the decoder takes the label (a label-conditional model's does)."""
        return bool(self.num_labels)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""
        return next(self.parameters()).device

    # -- input checks ---------------------------------------------------------------
    @property
    def data_dim(self) -> int:
        return int(torch.Size(self.image_shape).numel())

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return flat_images(x, self.image_shape)

    def _onehot(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        labels = checked_labels(labels, n, self.num_labels)
        return None if labels is None else F.one_hot(labels, self.num_labels)

    def check_data(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Flat images and one-hot labels, after checking both (clear errors otherwise)."""
        flat = self._flat(x)
        # Inside fit, data checked whole before the first step is not checked per batch.
        if not loop_checked():
            self.likelihood.check(flat)
        return flat, self._onehot(labels, flat.shape[0])

    # -- Pyro model and guide ---------------------------------------------------------
    def _kl_weight(self):
        # beta scales log p(z) in the model and log q(z|x) in the guide, hence the KL term.
        # Pyro's scale must be positive: beta = 0 masks the latent site out of the ELBO.
        if self.beta == 0:
            return poutine.mask(mask=False)
        if self.beta == 1:
            return contextlib.nullcontext()  # a scale of 1 would only cost a multiply per step
        return poutine.scale(scale=self.beta)

    # False: a fresh plate in every step as well (how the per-step cost was timed)
    reuse_plates: bool = True

    def _data_plate(self, n: int, step) -> pyro.plate:
        """The plate over the examples. In fit's own steps of this model (the step declares
        it) one plate per batch size is reused at dim -1: a new plate costs a message
        through Pyro's whole handler stack for its subsample site on every call, which the
        ELBO never reads. Elsewhere a fresh ``pyro.plate("data", n)``."""
        if self.reuse_plates and step is not None and step.module is self:
            plates = self.__dict__.setdefault("_plates", {})  # (a VAE pickled before it)
            plate = plates.get(n)
            if plate is None:  # made outside the handlers: no trace records its making
                with poutine.block():
                    plate = plates[n] = pyro.plate("data", n, dim=-1)
            return plate
        return pyro.plate("data", n)

    def model(
        self,
        x: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        size: int | None = None,
    ) -> torch.Tensor:
        step = current_step()
        if step is None or step.registers(self):
            pyro.module("vae", self)
        if x is not None:
            flat, onehot = self.check_data(x, labels)
            n = flat.shape[0]
        else:
            flat = None
            n = generated_count(labels, size)
            onehot = self._onehot(labels, n)
        with self._data_plate(n, step):
            prior = self.prior()
            with self._kl_weight():
                z = pyro.sample("z", prior)
            out = self.decoder(z, onehot)
            if step is None:  # no loss reads it: skipped in fit's own steps
                pyro.deterministic("mean", self.likelihood.mean(out), event_dim=1)
            return pyro.sample("x", self.likelihood(out), obs=flat)

    def prior(self) -> dist.TorchDistribution:
        """``p(z)``, event shape ``(z_dim,)``: ``N(0, I)``, or the learned zuko flow
        (a :class:`~probgen.flows.zuko_bridge.ZukoDistribution`, Pyro's ``ZukoToPyro``)."""
        if self.prior_flow is not None:
            return ZukoDistribution(self.prior_flow())
        p = next(self.parameters())
        return dist.Normal(p.new_zeros(()), p.new_ones(())).expand([self.z_dim]).to_event(1)

    def _context_dim(self) -> int:
        # The flow steps see the encoder's last hidden layer (the features its loc and
        # scale heads read), as in Kingma et al. (2016) and van den Berg et al. (2018).
        return self.encoder.loc.in_features

    def _q(self, seen: torch.Tensor, onehot: torch.Tensor | None):
        if self.guide_flow is None:
            loc, scale = self.encoder(seen, onehot)
            return (
                dist.Normal(loc, scale).to_event(1)
                if scale is not None
                else dist.Delta(loc, event_dim=1)
            )
        h = self.encoder.body(seen, onehot)
        loc, scale = self.encoder.gaussian(h)
        return self.guide_flow.distribution(loc, scale, h)

    def guide(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, size: int | None = None
    ) -> torch.Tensor:
        flat = self._flat(x)
        onehot = self._onehot(labels, flat.shape[0])
        seen = self.corrupt(flat) if self.corrupt is not None else flat
        with self._data_plate(flat.shape[0], current_step()):
            q = self._q(seen, onehot)
            with self._kl_weight():
                return pyro.sample("z", q)

    def posterior(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dist.TorchDistribution:
        """``q(z | x)`` for the images as given (no corruption added), as a distribution
        with batch shape ``(B,)`` and event shape ``(z_dim,)``: the encoder's Gaussian,
        or with ``guide_flow`` a :class:`~pyro.distributions.TransformedDistribution`
        (score its own draws; only invertible flows score other codes)."""
        flat = self._flat(x)
        return self._q(flat, self._onehot(labels, flat.shape[0]))

    # -- using a trained model ------------------------------------------------------------
    def encode(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``q(z | x)``'s ``(loc, scale)`` for the images as given (no corruption added);
        ``scale`` is ``None`` for a point-mass encoder. With ``guide_flow`` these are the
        flow's base Gaussian (:meth:`posterior` is the whole q)."""
        flat = self._flat(x)
        return self.encoder(flat, self._onehot(labels, flat.shape[0]))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's mean image for each code, ``(B, *image_shape)``."""
        out = self.decoder(z, self._onehot(labels, z.shape[0]))
        return self.likelihood.mean(out).reshape((z.shape[0],) + self.image_shape)

    def _centre(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's mean code of each image (with ``guide_flow``: the base mean pushed
        through the flow)."""
        loc = self.encode(x, labels)[0]
        if self.guide_flow is not None:
            flat = self._flat(x)
            h = self.encoder.body(flat, self._onehot(labels, flat.shape[0]))
            for t in self.guide_flow.transforms(h):
                loc = t(loc)
        return loc

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the encoder's mean code of each image: ``(B, *image_shape)`` (with
        ``guide_flow``: the base mean pushed through the flow)."""
        return self.decode(self._centre(x, labels), labels)

    # -- the autoencoder interface (probgen.models.autoencoder) -------------------------
    @torch.no_grad()
    def codes(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, *, sample: bool = True
    ) -> torch.Tensor:
        """``(B, z_dim)`` codes of the images as given (no corruption added): draws of
        ``q(z | x)`` (over a data set, draws of the aggregated posterior ``q(z)``), or with
        ``sample=False`` the code :meth:`reconstruct` decodes."""
        if not sample:
            return self._centre(x, labels)
        return self.posterior(x, labels).sample()

    @torch.no_grad()
    def prior_sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, z_dim)`` draws of ``p(z)`` (labels, checked, do not change it: a
        label-conditional VAE's prior is the same for every label)."""
        n = checks.positive_int("n", n)
        if labels is not None:
            checked_labels(labels, n, self.num_labels)
        return self.prior().sample((n,))

    def reconstruction_loss(self, batch: tuple) -> torch.Tensor:
        """``-E_{q(z|x)} log p(x | z)`` per image, the batch's mean: the ELBO's
        reconstruction term (one draw of ``q``, which sees the corrupted images when the
        model has a ``corruption``, as its guide does); differentiable."""
        x = batch[0]
        labels = batch[1] if len(batch) > 1 and self.num_labels else None
        flat, onehot = self.check_data(x, labels)
        seen = self.corrupt(flat) if self.corrupt is not None else flat
        q = self._q(seen, onehot)
        z = q.rsample() if q.has_rsample else q.sample()
        return -self.likelihood(self.decoder(z, onehot)).log_prob(flat).mean()

    @torch.no_grad()
    def sample(self, n: int | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images of ``z ~ p(z)`` drawn with :class:`pyro.infer.Predictive`:
        ``(n, *image_shape)``, or one per label.

        Examples:
            >>> import torch
            >>> from probgen.models import VAE
            >>> VAE(z_dim=2).sample(4).shape
            torch.Size([4, 1, 28, 28])
            >>> VAE(z_dim=2, num_labels=10).sample(labels=torch.tensor([3, 7])).shape
            torch.Size([2, 1, 28, 28])
        """
        pred = Predictive(self.model, num_samples=1, return_sites=("mean",))
        mean = pred(None, labels, size=n)["mean"][0]
        return mean.reshape((mean.shape[0],) + self.image_shape)
