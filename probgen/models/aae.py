"""Adversarial autoencoders as a Pyro model/guide pair (Makhzani et al. 2015, "Adversarial
Autoencoders").

An adversarial autoencoder is an autoencoder whose *aggregated posterior*
``q(z) = E_{p_d(x)} q(z | x)`` is matched to a prior ``p(z)`` by a discriminator on codes
instead of a KL term. In Pyro terms:

Generative model (``model``), for each image in the data plate::

    z ~ p(z [| label])                a prior from :data:`PRIORS` (or any Pyro distribution)
    x ~ p(x | decoder(z [, label]))   a likelihood from probgen.models.likelihoods

Guide (``guide``): the encoder, ``z ~ q(z | x)``, of one of three kinds (the three choices of
Makhzani et al. 2015, section 2):

=================  ===========================================================  ==============
``encoder``        q(z | x)                                                     randomness of
                                                                                q(z)
=================  ===========================================================  ==============
``deterministic``  a point mass at ``f(x)``                                     the data only
``gaussian``       ``N(mu(x), diag sigma(x)^2)``, reparameterized               data + Normal
``universal``      a point mass at ``f(x, eta)``, ``eta ~ N(0, I_noise_dim)``   data + eta
                   drawn afresh at every call: q(z | x) is whatever
                   distribution ``f(x, .)`` makes of the noise (not Gaussian)
=================  ===========================================================  ==============

The universal approximator's noise enters the encoder where :mod:`probgen.nn.coders` feeds
a conditioning vector: next to the flattened image (``net="mlp"``) or next to the
convolutional features before the dense layer (``net="conv"``).

Training (``fit_step``) runs three phases per batch through the fit loop
(:class:`probgen.train.PhasedStep`), each with its own optimizer and parameters:

1. ``reconstruction`` -- encoder and decoder minimise ``-E_q log p(x | z)`` per image: the
   ELBO of this model/guide pair with the latent site's densities masked out (Pyro's
   ``MaskedDistribution(mask=False)``; the prior needs no density, so a swiss roll serves).
   With ``likelihood="gaussian"`` it is the squared error up to scale and constant.
2. ``discriminator`` -- prior draws labelled real, codes ``z ~ q(z | x)`` labelled fake,
   binary cross-entropy (:func:`probgen.infer.adversarial.adversarial_phases`; the codes
   are computed without gradient, so the encoder does not move).
3. ``generator`` -- the encoder (the adversarial game's generator) is updated to make the
   discriminator call its codes real; the discriminator is frozen, the decoder untouched.

``phase_order="reconstruction_first"`` runs them 1, 2, 3 (the order of the lecture slides
and of Makhzani et al.); ``"regularization_first"`` runs 2, 3, 1 (the order the other source
text gives). Any adversarial formulation of :data:`probgen.infer.ADVERSARIAL_LOSSES` plays
the regularization game (``loss``; non-saturating by default).

Label-conditional variants (``num_labels > 0``):

* ``label_to_discriminator`` (Makhzani et al. 2015, section 2.2, incorporating label
  information in the adversarial regularization): the discriminator sees
  ``[z, onehot(y)]``; prior draws of an example of class ``y`` come from the prior's
  component ``y`` (a mixture's own component, a swiss roll's ``y``-th segment). It needs a
  prior with one component per class: a prior without components (``normal``, ``uniform``,
  a given distribution) is refused, since every class would draw from the whole prior;
* ``label_to_decoder`` (Makhzani et al. 2015, section 4, the supervised adversarial
  autoencoder): the decoder sees ``[z, onehot(y)]``, so the code is free to carry the
  style alone.

The semi-supervised form (Makhzani et al. 2015, section 5) is :class:`SemiSupervisedAAE`: a
class code ``y`` and a style code ``z``, each matched to its own prior by its own
discriminator, and a classification phase on the few labelled examples of each batch.

The networks are not registered in Pyro's param store (as the GAN's): each phase names the
parameters it optimises.

Example::

    aae = AAE(z_dim=2, encoder="gaussian", prior="mixture", num_labels=10)
    probgen.fit(aae, splits["train"], splits["val"], epochs=20)
    z = aae.codes(x)                      # draws from q(z | x)
    images = aae.sample(64)               # decoded prior draws
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import Predictive
from torch import nn

from probgen import checks
from probgen.data.corrupt import make_corruption
from probgen.data.labels import UNLABELLED, labelled_split  # noqa: F401  (their old path)
from probgen.errors import ConfigError, DataError
from probgen.infer.adversarial import adversarial_loss, adversarial_phases, check_k
from probgen.infer.context import current_step
from probgen.infer.phases import Phase
from probgen.infer.steps import ELBOLoss
from probgen.models.checks import (
    CheckedStep,
    checked_labels,
    flat_images,
    generated_count,
    loop_checked,
)
from probgen.models.likelihoods import LIKELIHOODS
from probgen.models.priors import (  # noqa: F401
    PRIORS,
    CircleMixturePrior,
    CodePrior,
    GivenPrior,
    NormalPrior,
    SwissRoll,
    SwissRollPrior,
    UniformPrior,
    make_prior,
)
from probgen.models.registry import MODELS
from probgen.nn.coders import NETS
from probgen.nn.gan_nets import MLPDiscriminator

ENCODERS = ("deterministic", "gaussian", "universal")
PHASE_ORDERS = ("reconstruction_first", "regularization_first")


@MODELS.register("aae")
class AAE(nn.Module):
    """Adversarial autoencoder as a Pyro model/guide pair with a discriminator on codes.

    Args:
        image_shape: shape of one image, e.g. ``(1, 28, 28)``.
        z_dim: code size (2 for the mixture and swiss-roll priors and the classic figures).
        hidden: encoder/decoder hidden sizes (``None``: the network's default).
        net: encoder/decoder architecture, a name in :data:`probgen.nn.coders.NETS`.
        likelihood: a name in :data:`probgen.models.likelihoods.LIKELIHOODS` (``gaussian``:
            the squared error up to scale).
        encoder: ``deterministic``, ``gaussian`` or ``universal`` (see the module docstring).
        noise_dim: size of the universal encoder's noise ``eta ~ N(0, I)`` (default: z_dim).
        prior: a name in :data:`PRIORS` (``normal``, ``uniform``, ``mixture``,
            ``swiss_roll``), a Pyro distribution with event shape ``(z_dim,)``, an object with
            ``sample(sample_shape)`` or a callable ``f(n) -> (n, z_dim)``. A distribution is
            used as given (build it on the model's device). Only a named prior is recorded
            in checkpoints (an object is not rebuilt by ``probgen.load``).
        prior_kwargs: the named prior's settings (``scale``, ``num_components``, ``radius``...).
        num_labels: classes of a label-conditional model (0: unconditional).
        label_to_discriminator: the discriminator sees the one-hot label, and prior draws
            of class ``y`` come from the prior's component ``y`` (a prior with components:
            ``mixture``, ``swiss_roll``; others are refused).
        label_to_decoder: the decoder sees the one-hot label next to ``z``.
        d_hidden: the discriminator's hidden sizes (an MLP, LeakyReLU 0.2).
        loss: the regularization game, a name in
            :data:`probgen.infer.adversarial.ADVERSARIAL_LOSSES`.
        k: discriminator steps per generator step (default: the loss's).
        label_smoothing: one-sided label smoothing, as for :class:`probgen.models.GAN`.
        gp_weight: the gradient penalty's weight, as for :class:`probgen.models.GAN`.
        phase_order: ``reconstruction_first`` or ``regularization_first``.
        activation: encoder/decoder hidden activation (``None``: the network's default).
        likelihood_kwargs: the likelihood's settings.
        corruption: what the encoder sees instead of ``x`` while training, a name in
            :data:`probgen.data.corrupt.CORRUPTIONS` (``noise``: Gaussian noise, the
            denoising autoencoder's input; ``blocks``), or ``None``; the reconstruction
            target stays the clean image. The guide, and so every training phase and
            :meth:`reconstruction_loss` (the fit loop's validation loss too, as the VAE's),
            sees it: the prior is matched by codes of corrupted images. :meth:`posterior`,
            :meth:`codes`, :meth:`reconstruct`, :meth:`sample` and the semi-supervised
            :meth:`predict` take the images as given.
        corruption_kwargs: its settings (``std`` of ``noise``...).

    Model arguments: ``x`` ``(B, *image_shape)`` or ``(B, D)``; ``labels`` ``(B,)`` integers
    (needed when ``num_labels > 0``, ignored otherwise); with ``x=None`` the model generates
    ``size`` images (or one per label). Sites: ``z`` (latent), ``x`` (observed), ``mean``
    (deterministic: the image the likelihood stands for, ``(B, D)``).
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        z_dim: int = 2,
        hidden: Sequence[int] | None = None,
        net: str = "mlp",
        likelihood: str = "gaussian",
        encoder: str = "deterministic",
        noise_dim: int | None = None,
        prior: str | Any = "normal",
        prior_kwargs: dict[str, Any] | None = None,
        num_labels: int = 0,
        label_to_discriminator: bool = True,
        label_to_decoder: bool = False,
        d_hidden: Sequence[int] = (256, 256),
        loss: str = "non_saturating",
        k: int | None = None,
        label_smoothing: float = 0.0,
        gp_weight: float | None = None,
        phase_order: str = "reconstruction_first",
        activation: str | None = None,
        likelihood_kwargs: dict[str, Any] | None = None,
        corruption: str | None = None,
        corruption_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        checks.choice("encoder", encoder, ENCODERS)
        checks.choice("phase_order", phase_order, PHASE_ORDERS)
        z_dim = checks.positive_int("the code size z_dim", z_dim)
        num_labels = checks.nonnegative_int("num_labels", num_labels)
        checks.flag("label_to_discriminator", label_to_discriminator)
        checks.flag("label_to_decoder", label_to_decoder)
        if num_labels and not (label_to_discriminator or label_to_decoder):
            raise ConfigError(
                "a conditional AAE (num_labels > 0) gives the label to the "
                "discriminator, the decoder or both: set label_to_discriminator "
                "or label_to_decoder."
            )
        if encoder == "universal":
            noise_dim = z_dim if noise_dim is None else noise_dim
            noise_dim = checks.positive_int("noise_dim", noise_dim)
        elif noise_dim is not None:
            raise ConfigError(
                f"noise_dim is the universal encoder's noise size; encoder={encoder!r} takes none."
            )
        self.image_shape = tuple(image_shape)
        self.z_dim, self.num_labels = z_dim, num_labels
        self.encoder_kind, self.noise_dim = encoder, noise_dim or 0
        self.phase_order = phase_order
        self.label_to_discriminator = bool(num_labels) and label_to_discriminator
        self.label_to_decoder = bool(num_labels) and label_to_decoder
        self.prior_spec = make_prior(prior, z_dim, prior_kwargs)
        self.prior_name = prior if isinstance(prior, str) else type(prior).__name__
        if self.label_to_discriminator:
            self.prior_spec.check_labels(num_labels)
        self.net_kind, self.likelihood_name = net, likelihood
        kw = {}
        if hidden is not None:
            kw["hidden"] = tuple(hidden)
        if activation is not None:
            kw["activation"] = activation
        self._net_kwargs = kw  # (the semi-supervised AAE builds its decoder alike)
        build = NETS.get(net)
        # the encoder's conditioning input carries the universal encoder's noise; the
        # decoder's the label (two builds: the two networks condition on different things)
        self.encoder, decoder = build(
            self.image_shape,
            z_dim,
            num_labels=self.noise_dim,
            stochastic=encoder == "gaussian",
            **kw,
        )
        decoder_labels = num_labels if self.label_to_decoder else 0
        if decoder_labels != self.noise_dim:
            _, decoder = build(self.image_shape, z_dim, num_labels=decoder_labels, **kw)
        self.decoder = decoder
        self.likelihood = LIKELIHOODS.get(likelihood)(**(likelihood_kwargs or {}))
        if corruption is None and corruption_kwargs:
            raise ConfigError(
                f"corruption_kwargs {sorted(corruption_kwargs)} set a corruption, "
                f"but corruption=None: name one ('noise' or 'blocks')."
            )
        self.corruption = corruption
        self.corrupt = make_corruption(corruption, self.image_shape, **(corruption_kwargs or {}))
        d_in = z_dim + (num_labels if self.label_to_discriminator else 0)
        self.discriminator = MLPDiscriminator((d_in,), hidden=tuple(d_hidden))
        self.spec = adversarial_loss(loss)
        self.k = check_k(self.spec.k if k is None else k)
        self.label_smoothing, self.gp_weight = label_smoothing, gp_weight
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        AAE.phases(self)  # the adversarial settings' checks (smoothing, gp weight)

    def extra_repr(self) -> str:
        labels = ""
        if self.num_labels:
            to = [
                n
                for n, on in (
                    ("discriminator", self.label_to_discriminator),
                    ("decoder", self.label_to_decoder),
                )
                if on
            ]
            labels = f", num_labels={self.num_labels} -> {'+'.join(to)}"
        noise = f", noise_dim={self.noise_dim}" if self.encoder_kind == "universal" else ""
        return (
            f"z_dim={self.z_dim}, net={self.net_kind}, likelihood={self.likelihood_name}, "
            f"encoder={self.encoder_kind}{noise}, prior={self.prior_name}{labels}, "
            f"loss={self.spec.name}, k={self.k}, phase_order={self.phase_order}"
            + (f", corruption={self.corrupt!r}" if self.corrupt is not None else "")
        )

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    # -- input checks ---------------------------------------------------------------
    @property
    def data_dim(self) -> int:
        return int(torch.Size(self.image_shape).numel())

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return flat_images(x, self.image_shape)

    def _labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """The checked labels of a conditional model (``None`` for an unconditional one)."""
        return checked_labels(labels, n, self.num_labels)

    def check_data(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Flat images and checked labels (clear errors otherwise); the likelihood's support
        is checked outside the fit loop's steps (which check the whole data once)."""
        flat = self._flat(x)
        if not loop_checked():
            self.likelihood.check(flat)
        return flat, self._labels(labels, flat.shape[0])

    def _onehot(self, labels: torch.Tensor | None, like: torch.Tensor):
        return None if labels is None else F.one_hot(labels, self.num_labels).to(like.dtype)

    # -- the prior, the encoder, the decoder ----------------------------------------
    def prior(self, labels: torch.Tensor | None = None) -> dist.Distribution:
        """``p(z)`` (event shape ``(z_dim,)``); with labels and ``label_to_discriminator``,
        each label's own component (batch shape ``(B,)``)."""
        if labels is not None and self.label_to_discriminator:
            return self.prior_spec.conditional(labels, self._anchor, self.num_labels)
        return self.prior_spec.distribution(self._anchor)

    def prior_sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, z_dim)`` draws of ``p(z)`` (of each label's component, with labels)."""
        p = self.prior(labels)
        z = p.sample() if labels is not None and self.label_to_discriminator else p.sample((n,))
        return z.to(self._anchor.dtype)

    def _noise(self, noise: torch.Tensor | None, flat: torch.Tensor) -> torch.Tensor | None:
        """The universal encoder's ``eta``: ``noise`` checked, or a fresh ``N(0, I)`` draw;
        ``None`` for the other kinds (which refuse a ``noise``)."""
        if self.encoder_kind != "universal":
            if noise is not None:
                raise ConfigError(
                    f"noise feeds the universal encoder only; this AAE's "
                    f"encoder={self.encoder_kind!r} takes none (pass noise=None)."
                )
            return None
        n = flat.shape[0]
        if noise is None:
            return torch.randn(n, self.noise_dim, dtype=flat.dtype, device=flat.device)
        if (
            not torch.is_tensor(noise)
            or tuple(noise.shape) != (n, self.noise_dim)
            or not noise.dtype.is_floating_point
        ):
            got = (
                f"{tuple(noise.shape)} {noise.dtype}"
                if torch.is_tensor(noise)
                else type(noise).__name__
            )
            raise DataError(
                f"noise must be a float tensor of shape ({n}, {self.noise_dim}): one "
                f"eta of noise_dim={self.noise_dim} values per image; got {got}."
            )
        return noise.to(flat)

    def _seen(self, flat: torch.Tensor) -> torch.Tensor:
        """What the guide's encoder sees: the flat images corrupted by ``corruption``
        (the target stays clean), or as given."""
        return flat if self.corrupt is None else self.corrupt(flat)

    def posterior(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dist.Distribution:
        """``q(z | x)`` for flat or shaped images (batch ``(B,)``, event ``(z_dim,)``): a
        point mass, a diagonal Gaussian, or for the universal encoder a point mass at
        ``f(x, eta)`` with ``eta`` = ``noise`` (``(B, noise_dim)``; the universal encoder
        only) or a fresh ``N(0, I)`` draw."""
        flat = self._flat(x)
        noise = self._noise(noise, flat)
        if self.encoder_kind == "universal":
            loc, _ = self.encoder(flat, noise)
            return dist.Delta(loc, event_dim=1)
        loc, scale = self.encoder(flat)
        if scale is None:
            return dist.Delta(loc, event_dim=1)
        return dist.Normal(loc, scale).to_event(1)

    def decoder_output(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's ``(B, D)`` output (the likelihood's parameters)."""
        onehot = self._onehot(labels, z) if self.label_to_decoder else None
        return self.decoder(z, onehot)

    # -- Pyro model and guide ---------------------------------------------------------
    def model(
        self,
        x: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        size: int | None = None,
        *,
        reconstruction_only: bool = False,
    ) -> torch.Tensor:
        """The generative model. ``reconstruction_only`` masks the latent site's density
        out (the reconstruction phase's objective: no prior density is needed)."""
        if x is not None:
            flat, labels = self.check_data(x, labels)
            n = flat.shape[0]
        else:
            flat = None
            n = generated_count(labels, size)
            if labels is not None:
                labels = self._labels(labels, n)
            elif self.label_to_decoder:
                raise DataError(
                    f"this AAE's decoder takes a label: pass labels (B,) in "
                    f"0..{self.num_labels - 1} to generate."
                )
        with pyro.plate("data", n):
            p_z = self.prior(labels)
            if reconstruction_only:
                p_z = p_z.mask(False)
            z = pyro.sample("z", p_z)
            out = self.decoder_output(z, labels)
            if current_step() is None:  # no loss reads it: skipped in fit's own steps
                pyro.deterministic("mean", self.likelihood.mean(out), event_dim=1)
            return pyro.sample("x", self.likelihood(out), obs=flat)

    def guide(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        size: int | None = None,
        *,
        reconstruction_only: bool = False,
    ) -> torch.Tensor:
        """The encoder ``z ~ q(z | x)`` (labels do not reach it; with ``corruption`` it
        sees the corrupted images)."""
        flat = self._flat(x)
        with pyro.plate("data", flat.shape[0]):
            q = self.posterior(self._seen(flat))
            if reconstruction_only:
                q = q.mask(False)
            return pyro.sample("z", q)

    # -- the three phases ------------------------------------------------------------------
    @property
    def reads_labels(self) -> bool:
        """Whether the model reads a batch's second tensor (the labels)."""
        return bool(self.num_labels)

    def _batch(self, batch: tuple):
        x = batch[0]
        labels = batch[1] if len(batch) > 1 and self.reads_labels else None
        return self.check_data(x, labels)

    def _discriminator_input(self, z: torch.Tensor, labels: torch.Tensor | None):
        if not self.label_to_discriminator:
            return z
        return torch.cat([z, self._onehot(labels, z)], -1)

    def real(self, batch: tuple) -> torch.Tensor:
        """Prior draws, one per example of the batch (of its label's component), with the
        labels when the discriminator sees them: what the discriminator should call real."""
        flat, labels = self._batch(batch)
        z = self.prior_sample(flat.shape[0], labels)
        return self._discriminator_input(z, labels)

    def fake(self, batch: tuple) -> torch.Tensor:
        """Codes ``z ~ q(z | x)`` of the batch (differentiable in the encoder), with labels."""
        flat, labels = self._batch(batch)
        z = self.posterior(self._seen(flat)).rsample()
        return self._discriminator_input(z, labels)

    def reconstruction_loss(self, batch: tuple) -> torch.Tensor:
        """``-E_{q(z|x)} log p(x | z)`` per image (mean over the batch): Pyro's
        ``Trace_ELBO`` of this model/guide pair with the latent site masked out."""
        loss = ELBOLoss(
            functools.partial(self.model, reconstruction_only=True),
            functools.partial(self.guide, reconstruction_only=True),
            "trace",
        )
        args = tuple(batch[:2]) if self.reads_labels else (batch[0],)
        return loss(args)

    def _autoencoder_parameters(self):
        return (
            list(self.encoder.parameters())
            + list(self.decoder.parameters())
            + list(self.likelihood.parameters())
        )

    def phases(self) -> list[Phase]:
        """The three phases in ``phase_order``: ``reconstruction`` (encoder + decoder),
        ``discriminator`` (the discriminator, ``k`` times) and ``generator`` (the encoder)."""
        d_phase, g_phase = adversarial_phases(
            self.discriminator,
            self.encoder,
            self.real,
            self.fake,
            self.spec,
            k=self.k,
            label_smoothing=self.label_smoothing,
            gp_weight=self.gp_weight,
            names=("discriminator", "generator"),
        )
        rec = Phase(
            "reconstruction",
            lambda batch, ctx: self.reconstruction_loss(batch),
            params=self._autoencoder_parameters,
            discover=False,
        )
        if self.phase_order == "reconstruction_first":
            return [rec, d_phase, g_phase]
        return [d_phase, g_phase, rec]

    def fit_step(self, config: Any = None) -> AAEStep:
        """The training step ``probgen.fit`` runs: the three phases; the validation loss is
        the reconstruction term per image (it says nothing about how well q(z) matches
        p(z): measure that with :func:`probgen.metrics.parzen.mmd` on codes and prior
        draws)."""
        return AAEStep(self, self.phases(), eval_loss=self.reconstruction_loss)

    # -- using a trained model ------------------------------------------------------------
    @torch.no_grad()
    def codes(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        sample: bool = True,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, z_dim)`` codes of the images: draws of ``q(z | x)`` (so that codes of a data
        set are draws of the aggregated posterior ``q(z)``), or with ``sample=False`` its
        centre: the point, the Gaussian's mean, or ``f(x, 0)`` for the universal encoder.
        ``labels`` are not read (the encoder does not take them; the argument is the
        autoencoder interface's, :mod:`probgen.models.autoencoder`)."""
        if not sample and self.encoder_kind == "universal" and noise is None:
            noise = x.new_zeros(x.shape[0], self.noise_dim)
        q = self.posterior(x, noise)
        if sample:
            return q.sample()
        return q.mean if isinstance(q, dist.Independent) else q.v

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's mean image for each code, ``(B, *image_shape)``."""
        if self.label_to_decoder:
            labels = self._labels(labels, z.shape[0])
        out = self.decoder_output(z, labels)
        return self.likelihood.mean(out).reshape((z.shape[0],) + self.image_shape)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the centre of each image's code, ``(B, *image_shape)``."""
        return self.decode(self.codes(x, sample=False), labels)

    @torch.no_grad()
    def sample(self, n: int | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images of ``z ~ p(z)`` (of each label's component) drawn with
        :class:`pyro.infer.Predictive`: ``(n, *image_shape)``, or one per label."""
        pred = Predictive(self.model, num_samples=1, return_sites=("mean",))
        mean = pred(None, labels, size=n)["mean"][0]
        return mean.reshape((mean.shape[0],) + self.image_shape)

    @torch.no_grad()
    def discriminate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The discriminator's probability that codes come from the prior (a critic's raw
        value for WGAN-GP and hinge), in eval mode."""
        if self.label_to_discriminator:
            labels = self._labels(labels, z.shape[0])
        was = self.training
        self.eval()
        try:
            logits = self.discriminator(self._discriminator_input(z, labels))
        finally:
            self.train(was)
        return torch.sigmoid(logits) if self.spec.probability else logits


class AAEStep(CheckedStep):
    """The AAE's phases; the whole data set is checked once before the first step (the
    model then skips its per-batch checks inside the fit loop)."""

    def check_data(self, tensors: Sequence[torch.Tensor]) -> bool:
        x = tensors[0]
        labels = tensors[1] if len(tensors) > 1 and self.module.reads_labels else None
        check = getattr(self.module, "check_dataset", self.module.check_data)
        check(x, labels)
        return True


# The priors (probgen.models.priors) and the semi-supervised labels (probgen.data.labels)
# lived in this module; they are imported above, so their old paths still work. The
# semi-supervised AAE moved to probgen.models.semi_supervised_aae, which imports this
# module: its old path probgen.models.aae:SemiSupervisedAAE is read by the registry's table
# of moved classes (probgen.models.registry.MOVED), for checkpoints that record it.
__all__ = ["AAE", "ENCODERS", "PHASE_ORDERS", "AAEStep"]
