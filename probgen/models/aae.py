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
import math
from typing import Any, Callable, Dict, Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.infer import Predictive
from torch import nn

from probgen.data.corrupt import make_corruption
from probgen.errors import ConfigError, DataError
from probgen.infer.adversarial import adversarial_loss, adversarial_phases, check_k
from probgen.infer.context import current_step
from probgen.infer.phases import Phase
from probgen.infer.steps import ELBOLoss
from probgen.models.checks import CheckedStep, checked_labels, flat_images, found, loop_checked
from probgen.models.likelihoods import LIKELIHOODS
from probgen.models.registry import MODELS
from probgen.nn.coders import NETS
from probgen.nn.gan_nets import MLPDiscriminator
from probgen.registry import Registry

ENCODERS = ("deterministic", "gaussian", "universal")
PHASE_ORDERS = ("reconstruction_first", "regularization_first")


# --------------------------------------------------------------------------- priors

def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


class SwissRoll(dist.TorchDistribution):
    """Points on a 2-D swiss roll: ``u ~ U(low, high)``, angle ``2 pi turns u``, radius
    ``radius (0.2 + 0.8 u)``, plus ``N(0, noise^2 I)``. ``low``/``high`` select a segment of
    the roll (a class's own segment in a conditional AAE; the whole roll is ``[0, 1]``).

    Only sampling is defined: the roll has no density in closed form, and an adversarial
    autoencoder needs none (``log_prob`` raises :class:`NotImplementedError`).
    """

    arg_constraints: Dict[str, Any] = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, low, high, turns: float = 1.5, radius: float = 4.0, noise: float = 0.05,
                 validate_args=None):
        self.low, self.high = torch.broadcast_tensors(torch.as_tensor(low),
                                                      torch.as_tensor(high))
        self.turns, self.radius, self.noise = turns, radius, noise
        super().__init__(self.low.shape, torch.Size([2]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return SwissRoll(self.low.expand(batch_shape), self.high.expand(batch_shape),
                         self.turns, self.radius, self.noise)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        u = self.low + (self.high - self.low) * torch.rand(shape, dtype=self.low.dtype,
                                                           device=self.low.device)
        angle = 2 * math.pi * self.turns * u
        r = self.radius * (0.2 + 0.8 * u)
        point = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], -1)
        return point + self.noise * torch.randn_like(point)

    def log_prob(self, value):
        raise NotImplementedError("the swiss-roll prior has no density in closed form; an "
                                  "adversarial autoencoder needs only its samples.")


class CodePrior:
    """A prior over codes of ``z_dim`` values, built on the model's device and dtype.

    ``distribution(like)`` is ``p(z)`` (batch shape ``()``, event shape ``(z_dim,)``);
    ``conditional(labels, like, num_labels)`` is one distribution per example (batch
    ``(B,)``): the component of each label of ``num_labels`` classes, for priors with
    ``has_components`` (a conditional AAE with the label at the discriminator needs one).

    A prior holds its settings only: the number of classes comes with each call, so one
    prior object can serve several models.
    """

    num_components: Optional[int] = None
    has_components: bool = False

    def __init__(self, z_dim: int):
        self.z_dim = z_dim

    def distribution(self, like: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def conditional(self, labels: torch.Tensor, like: torch.Tensor,
                    num_labels: int) -> dist.Distribution:
        raise ConfigError(f"the {type(self).__name__} has no component per class.")

    def check_labels(self, num_labels: int) -> None:
        """Raise unless each of ``num_labels`` classes can have its own component."""
        if not self.has_components:
            raise ConfigError(
                f"label_to_discriminator maps each class to its own component of the prior, "
                f"but the {type(self).__name__} has none (every class would draw from the "
                f"whole prior): use prior='mixture' or 'swiss_roll', or give the label to the "
                f"decoder only (label_to_discriminator=False, label_to_decoder=True).")
        if self.num_components is not None and self.num_components != num_labels:
            raise ConfigError(
                f"the prior has {self.num_components} components but the model {num_labels} "
                f"classes; each class is mapped to its own component, so give the prior "
                f"num_components={num_labels} (prior_kwargs).")


PRIORS: Registry = Registry("AAE prior")


def _need_2d(z_dim: int, name: str) -> None:
    if z_dim != 2:
        raise ConfigError(f"the {name} prior lives in two dimensions; it needs z_dim=2, got "
                          f"z_dim={z_dim} (use prior='normal' or 'uniform' for other sizes).")


@PRIORS.register("normal")
class NormalPrior(CodePrior):
    """``N(0, scale^2 I)``."""

    def __init__(self, z_dim: int, scale: float = 1.0):
        super().__init__(z_dim)
        self.scale = _positive(scale, "the normal prior's scale")

    def distribution(self, like):
        zero = like.new_zeros(self.z_dim)
        return dist.Normal(zero, zero + self.scale).to_event(1)


@PRIORS.register("uniform")
class UniformPrior(CodePrior):
    """``U(low, high)`` in every coordinate."""

    def __init__(self, z_dim: int, low: float = -1.0, high: float = 1.0):
        super().__init__(z_dim)
        if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and high > low):
            raise ConfigError(f"the uniform prior needs numbers low < high, got {low!r}, {high!r}.")
        self.low, self.high = float(low), float(high)

    def distribution(self, like):
        zero = like.new_zeros(self.z_dim)
        return dist.Uniform(zero + self.low, zero + self.high).to_event(1)


@PRIORS.register("mixture")
class CircleMixturePrior(CodePrior):
    """A mixture of ``num_components`` equally weighted 2-D Gaussians whose means lie on a
    circle of ``radius``, each elongated along its radius (standard deviations
    ``radial_scale`` along it, ``tangential_scale`` across): the prior of Makhzani et al.'s
    figure 4 (10 components; the paper gives no sizes, these are probgen's)."""

    has_components = True

    def __init__(self, z_dim: int, num_components: int = 10, radius: float = 4.0,
                 radial_scale: float = 1.0, tangential_scale: float = 0.25):
        super().__init__(z_dim)
        _need_2d(z_dim, "mixture")
        if isinstance(num_components, bool) or not isinstance(num_components, int) or \
                num_components < 1:
            raise ConfigError(f"num_components must be a positive integer, got "
                              f"{num_components!r}.")
        self.num_components = num_components
        self.radius = _positive(radius, "radius")
        self.radial_scale = _positive(radial_scale, "radial_scale")
        self.tangential_scale = _positive(tangential_scale, "tangential_scale")

    def components(self, like) -> dist.MultivariateNormal:
        """The components as one MultivariateNormal of batch shape ``(num_components,)``."""
        angle = torch.arange(self.num_components, dtype=like.dtype, device=like.device) * (
            2 * math.pi / self.num_components)
        radial = torch.stack([torch.cos(angle), torch.sin(angle)], -1)        # (K, 2)
        tangent = torch.stack([-torch.sin(angle), torch.cos(angle)], -1)
        loc = self.radius * radial
        # covariance R diag(s_r^2, s_t^2) R^T, R = [radial, tangent] as columns
        rot = torch.stack([radial, tangent], -1)                              # (K, 2, 2)
        variances = torch.cat([like.new_full((1,), self.radial_scale ** 2),   # (filled on the
                               like.new_full((1,), self.tangential_scale ** 2)])  # device)
        cov = rot @ torch.diag_embed(variances).expand(
            self.num_components, 2, 2) @ rot.transpose(-1, -2)
        return dist.MultivariateNormal(loc, covariance_matrix=cov)

    def distribution(self, like):
        mix = dist.Categorical(logits=like.new_zeros(self.num_components))
        return dist.MixtureSameFamily(mix, self.components(like))

    def conditional(self, labels, like, num_labels=None):
        comps = self.components(like)
        return dist.MultivariateNormal(comps.loc[labels], scale_tril=comps.scale_tril[labels])


@PRIORS.register("swiss_roll")
class SwissRollPrior(CodePrior):
    """The 2-D swiss roll of Makhzani et al.'s figure 4 (:class:`SwissRoll`); with labels,
    class ``k`` of ``K`` takes the segment ``u in [k/K, (k+1)/K]``."""

    has_components = True

    def __init__(self, z_dim: int, turns: float = 1.5, radius: float = 4.0, noise: float = 0.05):
        super().__init__(z_dim)
        _need_2d(z_dim, "swiss_roll")
        self.turns = _positive(turns, "turns")
        self.radius = _positive(radius, "radius")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
            raise ConfigError(f"noise must be a number >= 0, got {noise!r}.")
        self.noise = float(noise)

    def distribution(self, like):
        return SwissRoll(like.new_zeros(()), like.new_ones(()), self.turns, self.radius,
                         self.noise)

    def conditional(self, labels, like, num_labels=None):
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ConfigError(f"the swiss roll's segments need the number of classes: pass "
                              f"num_labels (a positive integer), got {num_labels!r}.")
        k = labels.to(like.dtype)
        n = float(num_labels)
        return SwissRoll(k / n, (k + 1) / n, self.turns, self.radius, self.noise)


class _Sampled(dist.TorchDistribution):
    """A distribution known by a sampler alone: ``fn(n) -> (n, z_dim)``."""

    arg_constraints: Dict[str, Any] = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, fn: Callable[[int], torch.Tensor], z_dim: int, like: torch.Tensor,
                 batch_shape=torch.Size()):
        self.fn, self.like = fn, like
        super().__init__(torch.Size(batch_shape), torch.Size([z_dim]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return _Sampled(self.fn, self.event_shape[0], self.like, batch_shape)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        n = shape.numel()
        z = self.fn(n)
        if not torch.is_tensor(z) or tuple(z.shape) != (n,) + tuple(self.event_shape):
            got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise DataError(f"the prior's sampler, asked for {n} draws, returned {got}; it must "
                            f"return a tensor ({n}, {self.event_shape[0]}).")
        return z.to(self.like).reshape(shape + self.event_shape)

    def log_prob(self, value):
        raise NotImplementedError("this prior is known by its sampler alone; it has no density.")


class GivenPrior(CodePrior):
    """A prior the user passes: a Pyro distribution with event shape ``(z_dim,)``, an object
    with ``sample(sample_shape)``, or a callable ``f(n) -> (n, z_dim)``."""

    def __init__(self, z_dim: int, prior: Any):
        super().__init__(z_dim)
        if isinstance(prior, torch.distributions.Distribution):
            if not isinstance(prior, TorchDistributionMixin):
                raise ConfigError(f"the prior {type(prior).__name__} is a torch distribution; "
                                  f"pass its pyro.distributions version (Pyro's plates need it).")
            if tuple(prior.event_shape) != (z_dim,) or tuple(prior.batch_shape) != ():
                raise ConfigError(
                    f"the prior must have batch shape () and event shape ({z_dim},), got "
                    f"{tuple(prior.batch_shape)} and {tuple(prior.event_shape)}; e.g. "
                    f"dist.Normal(torch.zeros({z_dim}), 1).to_event(1).")
            self.prior, self.fn = prior, None
        elif callable(getattr(prior, "sample", None)):
            self.prior, self.fn = None, lambda n: prior.sample((n,))
        elif callable(prior):
            self.prior, self.fn = None, prior
        else:
            raise ConfigError(f"prior must be a name in {PRIORS.names()}, a Pyro distribution or "
                              f"a sampler, got {type(prior).__name__}.")

    def distribution(self, like):
        return self.prior if self.prior is not None else _Sampled(self.fn, self.z_dim, like)


def make_prior(prior: Union[str, Any], z_dim: int,
               prior_kwargs: Optional[Dict[str, Any]] = None) -> CodePrior:
    """A :class:`CodePrior` from a name in :data:`PRIORS` (with its settings) or an object."""
    if isinstance(prior, str):
        try:
            return PRIORS.get(prior)(z_dim, **(prior_kwargs or {}))
        except TypeError as err:
            raise ConfigError(f"prior {prior!r}: bad prior_kwargs {prior_kwargs!r} ({err}).") \
                from None
    if prior_kwargs:
        raise ConfigError("prior_kwargs are settings of a named prior; pass them to the object "
                          "you give as prior instead.")
    return prior if isinstance(prior, CodePrior) else GivenPrior(z_dim, prior)


# --------------------------------------------------------------------------- the model

def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}.")
    return value


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
        label_smoothing, gp_weight: as for :class:`probgen.models.GAN`.
        phase_order: ``reconstruction_first`` or ``regularization_first``.
        lr, d_lr, g_lr: learning rates of the reconstruction, discriminator and generator
            phases (default: the run's).
        betas: Adam betas of the two adversarial phases (default: the loss's).
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

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), z_dim: int = 2,
                 hidden: Optional[Sequence[int]] = None, net: str = "mlp",
                 likelihood: str = "gaussian", encoder: str = "deterministic",
                 noise_dim: Optional[int] = None, prior: Union[str, Any] = "normal",
                 prior_kwargs: Optional[Dict[str, Any]] = None, num_labels: int = 0,
                 label_to_discriminator: bool = True, label_to_decoder: bool = False,
                 d_hidden: Sequence[int] = (256, 256), loss: str = "non_saturating",
                 k: Optional[int] = None, label_smoothing: float = 0.0,
                 gp_weight: Optional[float] = None,
                 phase_order: str = "reconstruction_first", lr: Optional[float] = None,
                 d_lr: Optional[float] = None, g_lr: Optional[float] = None,
                 betas: Optional[Sequence[float]] = None, activation: Optional[str] = None,
                 likelihood_kwargs: Optional[Dict[str, Any]] = None,
                 corruption: Optional[str] = None,
                 corruption_kwargs: Optional[Dict[str, Any]] = None):
        super().__init__()
        if encoder not in ENCODERS:
            raise ConfigError(f"encoder must be one of {ENCODERS}, got {encoder!r}.")
        if phase_order not in PHASE_ORDERS:
            raise ConfigError(f"phase_order must be one of {PHASE_ORDERS}, got {phase_order!r}.")
        if isinstance(z_dim, bool) or not isinstance(z_dim, int) or z_dim < 1:
            raise ConfigError(f"the code size z_dim must be a positive integer, got {z_dim!r}.")
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 0:
            raise ConfigError(f"num_labels must be a non-negative integer, got {num_labels!r}.")
        _flag(label_to_discriminator, "label_to_discriminator")
        _flag(label_to_decoder, "label_to_decoder")
        if num_labels and not (label_to_discriminator or label_to_decoder):
            raise ConfigError("a conditional AAE (num_labels > 0) gives the label to the "
                              "discriminator, the decoder or both: set label_to_discriminator "
                              "or label_to_decoder.")
        if encoder == "universal":
            noise_dim = z_dim if noise_dim is None else noise_dim
            if isinstance(noise_dim, bool) or not isinstance(noise_dim, int) or noise_dim < 1:
                raise ConfigError(f"noise_dim must be a positive integer, got {noise_dim!r}.")
        elif noise_dim is not None:
            raise ConfigError(f"noise_dim is the universal encoder's noise size; encoder="
                              f"{encoder!r} takes none.")
        for name, v in (("lr", lr), ("d_lr", d_lr), ("g_lr", g_lr)):
            if v is not None:
                _positive(v, name)
        self.image_shape = tuple(image_shape)
        self.z_dim, self.num_labels = z_dim, num_labels
        self.encoder_kind, self.noise_dim = encoder, noise_dim or 0
        self.phase_order, self.lr, self.d_lr, self.g_lr = phase_order, lr, d_lr, g_lr
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
        build = NETS.get(net)
        # the encoder's conditioning input carries the universal encoder's noise; the
        # decoder's the label (two builds: the two networks condition on different things)
        self.encoder, decoder = build(self.image_shape, z_dim, num_labels=self.noise_dim,
                                      stochastic=encoder == "gaussian", **kw)
        decoder_labels = num_labels if self.label_to_decoder else 0
        if decoder_labels != self.noise_dim:
            _, decoder = build(self.image_shape, z_dim, num_labels=decoder_labels, **kw)
        self.decoder = decoder
        self.likelihood = LIKELIHOODS.get(likelihood)(**(likelihood_kwargs or {}))
        if corruption is None and corruption_kwargs:
            raise ConfigError(f"corruption_kwargs {sorted(corruption_kwargs)} set a corruption, "
                              f"but corruption=None: name one ('noise' or 'blocks').")
        self.corruption = corruption
        self.corrupt = make_corruption(corruption, self.image_shape, **(corruption_kwargs or {}))
        d_in = z_dim + (num_labels if self.label_to_discriminator else 0)
        self.discriminator = MLPDiscriminator((d_in,), hidden=tuple(d_hidden))
        self.spec = adversarial_loss(loss)
        self.k = check_k(self.spec.k if k is None else k)
        self.label_smoothing, self.gp_weight = label_smoothing, gp_weight
        self.betas = tuple(betas) if betas is not None else None
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        AAE.phases(self)   # the adversarial settings' checks (smoothing, gp weight, betas)

    def extra_repr(self) -> str:
        labels = ""
        if self.num_labels:
            to = [n for n, on in (("discriminator", self.label_to_discriminator),
                                  ("decoder", self.label_to_decoder)) if on]
            labels = f", num_labels={self.num_labels} -> {'+'.join(to)}"
        noise = f", noise_dim={self.noise_dim}" if self.encoder_kind == "universal" else ""
        return (f"z_dim={self.z_dim}, net={self.net_kind}, likelihood={self.likelihood_name}, "
                f"encoder={self.encoder_kind}{noise}, prior={self.prior_name}{labels}, "
                f"loss={self.spec.name}, k={self.k}, phase_order={self.phase_order}"
                + (f", corruption={self.corrupt!r}" if self.corrupt is not None else ""))

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    # -- input checks ---------------------------------------------------------------
    @property
    def data_dim(self) -> int:
        return int(torch.Size(self.image_shape).numel())

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return flat_images(x, self.image_shape)

    def _labels(self, labels: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
        """The checked labels of a conditional model (``None`` for an unconditional one)."""
        return checked_labels(labels, n, self.num_labels)

    def check_data(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """Flat images and checked labels (clear errors otherwise); the likelihood's support
        is checked outside the fit loop's steps (which check the whole data once)."""
        flat = self._flat(x)
        if not loop_checked():
            self.likelihood.check(flat)
        return flat, self._labels(labels, flat.shape[0])

    def _onehot(self, labels: Optional[torch.Tensor], like: torch.Tensor):
        return None if labels is None else F.one_hot(labels, self.num_labels).to(like.dtype)

    # -- the prior, the encoder, the decoder ----------------------------------------
    def prior(self, labels: Optional[torch.Tensor] = None) -> dist.Distribution:
        """``p(z)`` (event shape ``(z_dim,)``); with labels and ``label_to_discriminator``,
        each label's own component (batch shape ``(B,)``)."""
        if labels is not None and self.label_to_discriminator:
            return self.prior_spec.conditional(labels, self._anchor, self.num_labels)
        return self.prior_spec.distribution(self._anchor)

    def prior_sample(self, n: int, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(n, z_dim)`` draws of ``p(z)`` (of each label's component, with labels)."""
        p = self.prior(labels)
        z = p.sample() if labels is not None and self.label_to_discriminator else p.sample((n,))
        return z.to(self._anchor.dtype)

    def _noise(self, noise: Optional[torch.Tensor], flat: torch.Tensor
               ) -> Optional[torch.Tensor]:
        """The universal encoder's ``eta``: ``noise`` checked, or a fresh ``N(0, I)`` draw;
        ``None`` for the other kinds (which refuse a ``noise``)."""
        if self.encoder_kind != "universal":
            if noise is not None:
                raise ConfigError(f"noise feeds the universal encoder only; this AAE's "
                                  f"encoder={self.encoder_kind!r} takes none (pass noise=None).")
            return None
        n = flat.shape[0]
        if noise is None:
            return torch.randn(n, self.noise_dim, dtype=flat.dtype, device=flat.device)
        if not torch.is_tensor(noise) or tuple(noise.shape) != (n, self.noise_dim) or \
                not noise.dtype.is_floating_point:
            got = f"{tuple(noise.shape)} {noise.dtype}" if torch.is_tensor(noise) else \
                type(noise).__name__
            raise DataError(f"noise must be a float tensor of shape ({n}, {self.noise_dim}): one "
                            f"eta of noise_dim={self.noise_dim} values per image; got {got}.")
        return noise.to(flat)

    def _seen(self, flat: torch.Tensor) -> torch.Tensor:
        """What the guide's encoder sees: the flat images corrupted by ``corruption``
        (the target stays clean), or as given."""
        return flat if self.corrupt is None else self.corrupt(flat)

    def posterior(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None
                  ) -> dist.Distribution:
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

    def decoder_output(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """The decoder's ``(B, D)`` output (the likelihood's parameters)."""
        onehot = self._onehot(labels, z) if self.label_to_decoder else None
        return self.decoder(z, onehot)

    # -- Pyro model and guide ---------------------------------------------------------
    def model(self, x: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
              size: Optional[int] = None, *, reconstruction_only: bool = False):
        """The generative model. ``reconstruction_only`` masks the latent site's density
        out (the reconstruction phase's objective: no prior density is needed)."""
        if x is not None:
            flat, labels = self.check_data(x, labels)
            n = flat.shape[0]
        else:
            flat = None
            n = labels.shape[0] if labels is not None else size
            if n is None:
                raise ConfigError("to generate, pass labels or size (how many images).")
            if labels is not None:
                labels = self._labels(labels, n)
            elif self.label_to_decoder:
                raise DataError(f"this AAE's decoder takes a label: pass labels (B,) in "
                                f"0..{self.num_labels - 1} to generate.")
        with pyro.plate("data", n):
            p_z = self.prior(labels)
            if reconstruction_only:
                p_z = p_z.mask(False)
            z = pyro.sample("z", p_z)
            out = self.decoder_output(z, labels)
            if current_step() is None:   # no loss reads it: skipped in fit's own steps
                pyro.deterministic("mean", self.likelihood.mean(out), event_dim=1)
            return pyro.sample("x", self.likelihood(out), obs=flat)

    def guide(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
              size: Optional[int] = None, *, reconstruction_only: bool = False):
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

    def _discriminator_input(self, z: torch.Tensor, labels: Optional[torch.Tensor]):
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
        loss = ELBOLoss(functools.partial(self.model, reconstruction_only=True),
                        functools.partial(self.guide, reconstruction_only=True), "trace")
        args = tuple(batch[:2]) if self.reads_labels else (batch[0],)
        return loss(args)

    def _autoencoder_parameters(self):
        return (list(self.encoder.parameters()) + list(self.decoder.parameters())
                + list(self.likelihood.parameters()))

    def phases(self):
        """The three phases in ``phase_order``: ``reconstruction`` (encoder + decoder),
        ``discriminator`` (the discriminator, ``k`` times) and ``generator`` (the encoder)."""
        d_phase, g_phase = adversarial_phases(
            self.discriminator, self.encoder, self.real, self.fake, self.spec, k=self.k,
            label_smoothing=self.label_smoothing, gp_weight=self.gp_weight, d_lr=self.d_lr,
            g_lr=self.g_lr, betas=self.betas, names=("discriminator", "generator"))
        rec = Phase("reconstruction", lambda batch, ctx: self.reconstruction_loss(batch),
                    params=self._autoencoder_parameters, lr=self.lr, discover=False)
        if self.phase_order == "reconstruction_first":
            return [rec, d_phase, g_phase]
        return [d_phase, g_phase, rec]

    def fit_step(self, config=None):
        """The training step ``probgen.fit`` runs: the three phases; the validation loss is
        the reconstruction term per image (it says nothing about how well q(z) matches
        p(z): measure that with :func:`probgen.metrics.parzen.mmd` on codes and prior
        draws)."""
        return AAEStep(self, self.phases(), eval_loss=self.reconstruction_loss)

    # -- using a trained model ------------------------------------------------------------
    @torch.no_grad()
    def codes(self, x: torch.Tensor, sample: bool = True,
              noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, z_dim)`` codes of the images: draws of ``q(z | x)`` (so that codes of a data
        set are draws of the aggregated posterior ``q(z)``), or with ``sample=False`` its
        centre: the point, the Gaussian's mean, or ``f(x, 0)`` for the universal encoder."""
        if not sample and self.encoder_kind == "universal" and noise is None:
            noise = x.new_zeros(x.shape[0], self.noise_dim)
        q = self.posterior(x, noise)
        if sample:
            return q.sample()
        return q.mean if isinstance(q, dist.Independent) else q.v

    def decode(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The likelihood's mean image for each code, ``(B, *image_shape)``."""
        if self.label_to_decoder:
            labels = self._labels(labels, z.shape[0])
        out = self.decoder_output(z, labels)
        return self.likelihood.mean(out).reshape((z.shape[0],) + self.image_shape)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decode the centre of each image's code, ``(B, *image_shape)``."""
        return self.decode(self.codes(x, sample=False), labels)

    @torch.no_grad()
    def sample(self, n: Optional[int] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean images of ``z ~ p(z)`` (of each label's component) drawn with
        :class:`pyro.infer.Predictive`: ``(n, *image_shape)``, or one per label."""
        pred = Predictive(self.model, num_samples=1, return_sites=("mean",))
        mean = pred(None, labels, size=n)["mean"][0]
        return mean.reshape((mean.shape[0],) + self.image_shape)

    @torch.no_grad()
    def discriminate(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
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

    def check_data(self, tensors) -> bool:
        x = tensors[0]
        labels = tensors[1] if len(tensors) > 1 and self.module.reads_labels else None
        check = getattr(self.module, "check_dataset", self.module.check_data)
        check(x, labels)
        return True


# --------------------------------------------------------------------------- semi-supervised

UNLABELLED = -1
"""The label of an unlabelled example in a semi-supervised data set."""


def labelled_split(labels: torch.Tensor, num_labelled: int, num_classes: int = 10,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Labels with all but ``num_labelled`` examples set to :data:`UNLABELLED`: the same
    number of each class (``num_labelled / num_classes``, the remainder to the first
    classes), drawn at random (Makhzani et al. 2015, section 5, keep a balanced subset).

    Raises :class:`DataError` when ``num_labelled`` is smaller than ``num_classes`` or a
    class has fewer examples than its share.
    """
    if isinstance(num_labelled, bool) or not isinstance(num_labelled, int) or \
            num_labelled < num_classes:
        raise DataError(f"semi-supervised training needs at least one labelled example per "
                        f"class: num_labelled={num_labelled!r} for {num_classes} classes.")
    if not torch.is_tensor(labels) or labels.dim() != 1:
        raise DataError("labels must be a 1-D tensor of class indices.")
    out = torch.full_like(labels, UNLABELLED)
    base, extra = divmod(num_labelled, num_classes)
    for c in range(num_classes):
        want = base + (1 if c < extra else 0)
        idx = (labels == c).nonzero().flatten()
        if idx.numel() < want:
            raise DataError(f"too few examples of class {c} to label {want} of them: the data "
                            f"have {idx.numel()}; ask for fewer labelled examples.")
        pick = torch.randperm(idx.numel(), generator=generator)[:want].to(idx.device)
        out[idx[pick]] = c
    return out


@MODELS.register("semi_supervised_aae")
class SemiSupervisedAAE(AAE):
    """The semi-supervised adversarial autoencoder (Makhzani et al. 2015, section 5): the
    encoder splits each image into a class ``y`` (a softmax over ``num_classes``) and a style
    ``z``; each code has its own discriminator, ``y`` against one-hot draws of a uniform
    categorical prior, ``z`` against the style prior; the decoder sees ``[z, y]``; and the
    few labelled examples train ``q(y | x)`` as a classifier.

    Generative model: ``y ~ OneHotCategorical(uniform)``, ``z ~ p(z)``,
    ``x ~ p(x | decoder(z, y))``. Guide: ``z ~ q(z | x)`` (the encoder kinds of
    :class:`AAE`) and ``y`` a point at the softmax of the class head (the continuous ``y``
    the decoder and the discriminator see while training): the pair's densities are
    masked in the reconstruction phase, the only place they meet.

    Phases per batch: ``reconstruction`` (encoder, class head, decoder),
    ``discriminator_z``/``generator_z`` and ``discriminator_y``/``generator_y`` (in
    ``phase_order``: reconstruction first, or the four regularization phases first), then
    ``classification``: cross-entropy of the class head on the batch's labelled examples
    (the others carry the label :data:`UNLABELLED`; build such labels with
    :func:`labelled_split`).

    Args:
        num_classes: classes of ``y``.
        z_dim: the style's size.
        c_lr: learning rate of the classification phase (default: the run's).
        Other arguments as for :class:`AAE` (no labels reach the networks as inputs; with
        ``corruption`` the classification phase, too, sees corrupted labelled images).
    """

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 z_dim: int = 10, hidden: Optional[Sequence[int]] = None, net: str = "mlp",
                 likelihood: str = "gaussian", encoder: str = "deterministic",
                 noise_dim: Optional[int] = None, prior: Union[str, Any] = "normal",
                 prior_kwargs: Optional[Dict[str, Any]] = None,
                 d_hidden: Sequence[int] = (256, 256), loss: str = "non_saturating",
                 k: Optional[int] = None, label_smoothing: float = 0.0,
                 gp_weight: Optional[float] = None, phase_order: str = "reconstruction_first",
                 lr: Optional[float] = None, d_lr: Optional[float] = None,
                 g_lr: Optional[float] = None, c_lr: Optional[float] = None,
                 betas: Optional[Sequence[float]] = None, activation: Optional[str] = None,
                 likelihood_kwargs: Optional[Dict[str, Any]] = None,
                 corruption: Optional[str] = None,
                 corruption_kwargs: Optional[Dict[str, Any]] = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer of at least 2, got "
                              f"{num_classes!r}.")
        if c_lr is not None:
            _positive(c_lr, "c_lr")
        super().__init__(image_shape, z_dim, hidden, net, likelihood, encoder, noise_dim, prior,
                         prior_kwargs, 0, True, False, d_hidden, loss, k, label_smoothing,
                         gp_weight, phase_order, lr, d_lr, g_lr, betas, activation,
                         likelihood_kwargs, corruption=corruption,
                         corruption_kwargs=corruption_kwargs)
        self.num_classes, self.c_lr = num_classes, c_lr
        kw = {}
        if hidden is not None:
            kw["hidden"] = tuple(hidden)
        if activation is not None:
            kw["activation"] = activation
        _, self.decoder = NETS.get(net)(self.image_shape, z_dim, num_labels=num_classes, **kw)
        self.class_head = nn.Linear(self.encoder.loc.in_features, num_classes)
        self.discriminator_y = MLPDiscriminator((num_classes,), hidden=tuple(d_hidden))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, " + super().extra_repr()

    @property
    def reads_labels(self) -> bool:
        return True

    # -- checks --------------------------------------------------------------------------
    def _labels(self, labels, n):
        if labels is None:
            return None
        if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != n:
            shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
            raise DataError(f"got {n} images but labels of shape {shape}: pass one integer label "
                            f"per image ({UNLABELLED} for an unlabelled one), shape ({n},).")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise DataError(f"labels must be integers, got {labels.dtype}.")
        if not loop_checked() and found((labels < UNLABELLED) | (labels >= self.num_classes)):
            raise DataError(f"labels must lie in 0..{self.num_classes - 1}, or be {UNLABELLED} "
                            f"for an unlabelled example; found {labels.min().item()}.."
                            f"{labels.max().item()}.")
        return labels

    def check_dataset(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """:meth:`check_data` of a whole data set; one with unlabelled examples (a training
        set) must hold at least one labelled example of every class."""
        flat, labels = self.check_data(x, labels)
        if labels is None:
            raise DataError(f"semi-supervised training reads (images, labels) with label "
                            f"{UNLABELLED} for the unlabelled images; pass labels too.")
        counts = torch.bincount(labels[labels >= 0], minlength=self.num_classes)
        missing = [c for c in range(self.num_classes) if int(counts[c]) == 0]
        if missing and found(labels < 0):   # (a fully labelled split: validation)
            raise DataError(f"too few labelled examples per class: classes {missing} have none; "
                            f"label at least one example of every class (labelled_split).")
        return flat, labels

    def _onehot(self, labels, like):
        return None if labels is None else F.one_hot(labels, self.num_classes).to(like.dtype)

    # -- the encoder's two codes ---------------------------------------------------------------
    def _features(self, flat, noise=None):
        return self.encoder.body(flat, self._noise(noise, flat))

    def _style(self, h) -> dist.Distribution:
        loc = self.encoder.loc(h)
        if self.encoder.log_scale is None:
            return dist.Delta(loc, event_dim=1)
        return dist.Normal(loc, self.encoder.log_scale(h).exp()).to_event(1)

    def posterior(self, x, noise=None):
        """``q(z | x)``, the style's distribution."""
        return self._style(self._features(self._flat(x), noise))

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The class head's logits ``(B, num_classes)`` (universal encoder: at ``eta = 0``)."""
        flat = self._flat(x)
        noise = flat.new_zeros(flat.shape[0], self.noise_dim) \
            if self.encoder_kind == "universal" else None
        return self.class_head(self._features(flat, noise))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The most probable class of each image, ``(B,)``."""
        return torch.cat([self.class_logits(x[i:i + batch_size]).argmax(-1)
                          for i in range(0, x.shape[0], batch_size)])

    def decoder_output(self, z, y):
        """The decoder's output for style ``z`` and class ``y`` (one-hot or softmax
        ``(B, num_classes)``, or integer labels ``(B,)``)."""
        if y is not None and y.dim() == 1:
            y = self._onehot(y, z)
        return self.decoder(z, y)

    def decode(self, z, labels=None):
        """Mean images of styles ``z`` with the classes ``labels`` ``(B,)``."""
        if labels is None:
            raise DataError("the semi-supervised AAE's decoder takes a class: pass labels (B,).")
        labels = self._labels(labels, z.shape[0])
        if found(labels < 0):
            raise DataError("decode needs a class for every code, not the unlabelled mark.")
        out = self.decoder_output(z, labels)
        return self.likelihood.mean(out).reshape((z.shape[0],) + self.image_shape)

    @torch.no_grad()
    def reconstruct(self, x, labels=None):
        """Decode each image's style centre with its predicted class softmax."""
        flat = self._flat(x)
        noise = flat.new_zeros(flat.shape[0], self.noise_dim) \
            if self.encoder_kind == "universal" else None
        h = self._features(flat, noise)
        q = self._style(h)
        z = q.mean if isinstance(q, dist.Independent) else q.v
        out = self.decoder_output(z, torch.softmax(self.class_head(h), -1))
        return self.likelihood.mean(out).reshape((flat.shape[0],) + self.image_shape)

    def _class_labels(self, labels, n):
        """Labels to generate with: a class for each (the unlabelled mark is refused)."""
        labels = self._labels(labels, n)
        if found(labels < 0):
            raise DataError(f"to generate, every label must be a class in 0.."
                            f"{self.num_classes - 1}; {UNLABELLED} (unlabelled) has none: "
                            f"pass size=... instead to draw the classes.")
        return labels

    @torch.no_grad()
    def sample(self, n: Optional[int] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean images of ``y ~ p(y)`` (or ``labels``), ``z ~ p(z)``: ``(n, *image_shape)``,
        or one per label."""
        if labels is not None:   # checked here too: an error inside Predictive gains lines
            self._class_labels(labels, labels.shape[0] if torch.is_tensor(labels)
                               and labels.dim() == 1 else -1)
        return super().sample(n, labels)

    # -- Pyro model and guide ---------------------------------------------------------
    def model(self, x=None, labels=None, size=None, *, reconstruction_only: bool = False):
        """``y ~ OneHotCategorical(uniform)``, ``z ~ p(z)``, ``x ~ p(x | decoder(z, y))``;
        generating with ``labels`` fixes ``y``."""
        observed_y = None
        if x is not None:
            flat, _ = self.check_data(x, labels)   # the labels are data, not model inputs
            n = flat.shape[0]
        else:
            flat = None
            n = labels.shape[0] if labels is not None else size
            if n is None:
                raise ConfigError("to generate, pass labels or size (how many images).")
            if labels is not None:
                observed_y = self._onehot(self._class_labels(labels, n), self._anchor)
        with pyro.plate("data", n):
            p_y = dist.OneHotCategorical(logits=self._anchor.new_zeros(self.num_classes))
            p_z = self.prior_spec.distribution(self._anchor)
            if reconstruction_only:
                p_y, p_z = p_y.mask(False), p_z.mask(False)
            y = pyro.sample("y", p_y, obs=observed_y)
            z = pyro.sample("z", p_z)
            out = self.decoder_output(z, y)
            if current_step() is None:
                pyro.deterministic("mean", self.likelihood.mean(out), event_dim=1)
            return pyro.sample("x", self.likelihood(out), obs=flat)

    def guide(self, x, labels=None, size=None, *, reconstruction_only: bool = False):
        """``y`` a point at the class head's softmax, ``z ~ q(z | x)``."""
        flat = self._flat(x)
        h = self._features(self._seen(flat))
        with pyro.plate("data", flat.shape[0]):
            q_y = dist.Delta(torch.softmax(self.class_head(h), -1), event_dim=1)
            q_z = self._style(h)
            if reconstruction_only:
                q_y, q_z = q_y.mask(False), q_z.mask(False)
            pyro.sample("y", q_y)
            return pyro.sample("z", q_z)

    # -- the phases ------------------------------------------------------------------------
    def real(self, batch):
        """Style prior draws, one per example."""
        return self.prior_sample(batch[0].shape[0])

    def fake(self, batch):
        """Styles ``z ~ q(z | x)`` of the batch."""
        flat, _ = self._batch(batch)
        return self.posterior(self._seen(flat)).rsample()

    def real_y(self, batch):
        """One-hot draws of the uniform categorical prior, one per example."""
        n = batch[0].shape[0]
        draws = torch.randint(0, self.num_classes, (n,), device=self._anchor.device)
        return F.one_hot(draws, self.num_classes).to(self._anchor.dtype)

    def fake_y(self, batch):
        """The class head's softmax of the batch."""
        flat, _ = self._batch(batch)
        return torch.softmax(self.class_head(self._features(self._seen(flat))), -1)

    def classification_loss(self, batch):
        """Cross-entropy of the class head on the batch's labelled examples.

        A batch without any labelled example gives a zero loss that no parameter takes
        part in: its backward pass leaves every parameter's gradient ``None``, and torch's
        optimizers skip a parameter without a gradient, so the class head stays where it
        is (a zero *gradient*, as ``0 * weight.sum()`` gives, would let Adam step along its
        momentum). In a distributed run the fit loop's gradient average keeps a gradient
        that no process has as ``None`` (a batch unlabelled on every process does not step
        the class head there either). On a GPU the rule costs this phase host reads every
        step (whether the batch has a labelled example, then their selection): the semi-
        supervised AAE's step is not free of synchronisations (``tests/test_device.py``)."""
        flat, labels = self._batch(batch)
        keep = labels >= 0 if labels is not None else None
        if keep is None or not found(keep):
            return self._anchor.new_zeros((), requires_grad=True)
        return F.cross_entropy(self.class_logits(self._seen(flat[keep])), labels[keep])

    def _style_parameters(self):
        e = self.encoder
        heads = [e.loc] + ([e.log_scale] if e.log_scale is not None else [])
        return list(e.body.parameters()) + [p for h in heads for p in h.parameters()]

    def _class_parameters(self):
        return list(self.encoder.body.parameters()) + list(self.class_head.parameters())

    def _autoencoder_parameters(self):
        return (list(self.encoder.parameters()) + list(self.class_head.parameters())
                + list(self.decoder.parameters()) + list(self.likelihood.parameters()))

    def phases(self):
        """``reconstruction``, ``discriminator_z``, ``generator_z``, ``discriminator_y``,
        ``generator_y`` (reconstruction first or last, as ``phase_order`` says), then
        ``classification``."""
        kw = dict(k=self.k, label_smoothing=self.label_smoothing, gp_weight=self.gp_weight,
                  d_lr=self.d_lr, g_lr=self.g_lr, betas=self.betas)
        z_phases = adversarial_phases(self.discriminator, self._style_parameters, self.real,
                                      self.fake, self.spec, names=("discriminator_z",
                                                                   "generator_z"), **kw)
        y_phases = adversarial_phases(self.discriminator_y, self._class_parameters, self.real_y,
                                      self.fake_y, self.spec, names=("discriminator_y",
                                                                     "generator_y"), **kw)
        rec = Phase("reconstruction", lambda batch, ctx: self.reconstruction_loss(batch),
                    params=self._autoencoder_parameters, lr=self.lr, discover=False)
        cls = Phase("classification", lambda batch, ctx: self.classification_loss(batch),
                    params=self._class_parameters, lr=self.c_lr, discover=False)
        regularization = z_phases + y_phases
        if self.phase_order == "reconstruction_first":
            return [rec] + regularization + [cls]
        return regularization + [rec, cls]


__all__ = ["AAE", "AAEStep", "ENCODERS", "PHASE_ORDERS", "PRIORS", "UNLABELLED",
           "CircleMixturePrior", "CodePrior", "GivenPrior", "NormalPrior", "SemiSupervisedAAE",
           "SwissRoll", "SwissRollPrior", "UniformPrior", "labelled_split", "make_prior"]
