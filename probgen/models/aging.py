"""Attribute editing and aging: a conditional GAN with latent inversion (Age-cGAN), a
conditional adversarial autoencoder (CAAE) and recurrent aging.

Three ways to move an image ``x`` of level (age group) ``y0`` to a level ``y``:

* :class:`AgeCGAN` (Antipov, Baccouche & Dugelay 2017, "Face Aging with Conditional
  Generative Adversarial Networks"): a conditional DCGAN ``G(z, y)``, ``D(x, y)`` (the level
  one-hot, into G's input and as constant channels of D's); then an encoder ``E`` trained on
  generated pairs ``(z_i, G(z_i, y_i))``, ``z_i ~ N(0, I)``, ``y_i`` uniform, to minimise
  ``||E(x_i) - z_i||^2`` (:meth:`AgeCGAN.encoder_pairs`, :meth:`AgeCGAN.encoder_step`);
  then, per image, ``z0 = E(x)`` refined by L-BFGS-B (SciPy) minimising the pixel distance
  ``||x - G(z, y0)||^2`` or the identity-preserving distance ``||FR(x) - FR(G(z, y0))||^2``
  in the features of a recognition network ``FR`` (:meth:`AgeCGAN.invert`; all images of a
  batch at once); then ``x_y = G(z*, y)`` (:meth:`AgeCGAN.edit`). For digits ``FR`` is the
  shipped MNIST classifier's penultimate layer (:func:`mnist_identity_features`); for faces
  any feature network the user passes.
* :class:`CAAE` (Zhang, Song & Qi 2017, "Age Progression/Regression by Conditional
  Adversarial Autoencoder"): an adversarial autoencoder (:class:`probgen.models.AAE`) whose
  decoder ``G(z, y)`` takes the level, whose code discriminator ``D_z`` matches ``E(x)`` to a
  uniform prior on [-1, 1]^z_dim, plus an image discriminator ``D_img(x, y)`` and a total-
  variation term. Phases: ``encoder_generator`` (E and G: reconstruction + ``z_weight`` x
  fooling ``D_z`` + ``img_weight`` x fooling ``D_img`` + ``tv_weight`` x TV, one optimizer
  as in the authors' code), ``discriminator_z``, ``discriminator_img``. Aging is
  ``G(E(x), y)`` (:meth:`CAAE.edit`).
* :class:`RecurrentAger` (Wang et al. 2016, "Recurrent Face Aging"): a two-layer GRU
  (:class:`probgen.nn.aging_nets.GRUAger`) stepping through the groups in order, trained
  on whole progressions of the same identity (each step a pair of neighbouring groups) with
  loss weights that grow towards the oldest group. It only ages forward.

Choices the source text leaves open (and what is chosen here): the condition is a one-hot
level into G's input and as ``K`` constant channels of D's input; ``E`` sees the image only;
the squared distances; L-BFGS-B without bounds and ``maxiter`` iterations (default 50);
the CAAE's reconstruction is its Gaussian likelihood's negative log-likelihood (a squared
error; the authors' code used L1) and its adversarial and TV weights are per-image terms
added to that per-image NLL (settings; defaults 1, 1, 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from probgen import checks
from probgen.data.tensors import TensorData
from probgen.errors import ConfigError, DataError
from probgen.infer.adversarial import adversarial_loss, adversarial_phases, check_k, frozen
from probgen.infer.phases import Phase
from probgen.infer.steps import LossStep, PhasedStep
from probgen.models.aae import AAE, AAEStep
from probgen.models.checks import CheckedStep, found, loop_checked
from probgen.models.registry import MODELS, rebuildable
from probgen.nn.aging_nets import (
    ConditionalDiscriminator,
    ConditionalGenerator,
    ConvEncoder,
    GRUAger,
    label_maps,
)
from probgen.nn.classifier import load_classifier
from probgen.nn.gan_nets import check_input, inputs_checked

REFINEMENTS = ("none", "pixel", "identity")
WEIGHTINGS = ("linear", "uniform")
FAKE_LEVELS = ("own", "random")


def check_levels(
    levels: int | torch.Tensor,
    n: int,
    num_levels: int,
    what: str = "levels",
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``(n,)`` integer levels in ``0..num_levels-1`` (an int is broadcast, on ``device``:
    the CPU by default). The range of a tensor's levels is not read inside the fit loop's
    steps over data the loop checked (a host-device synchronisation on a GPU)."""
    if isinstance(levels, int) and not isinstance(levels, bool):
        if not 0 <= levels < num_levels:
            raise ConfigError(
                f"{what} {levels} is out of range: this model has levels 0..{num_levels - 1}."
            )
        return torch.full((n,), levels, dtype=torch.long, device=device)
    if not torch.is_tensor(levels) or levels.dim() != 1 or levels.shape[0] != n:
        shape = tuple(levels.shape) if torch.is_tensor(levels) else type(levels).__name__
        raise DataError(
            f"{what} must be an int or one integer per image, shape ({n},); got {shape}."
        )
    if levels.dtype.is_floating_point or levels.dtype == torch.bool:
        raise DataError(f"{what} must be integers, got {levels.dtype}.")
    if n and not loop_checked() and found((levels < 0) | (levels >= num_levels)):
        raise ConfigError(
            f"{what} must lie in 0..{num_levels - 1} (this model's levels); "
            f"found {levels.min().item()}..{levels.max().item()}."
        )
    return levels


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Per-image total variation as in the CAAE authors' code, mean over the batch:
    ``sum(dy^2) / (2 H) + sum(dx^2) / (2 W)``."""
    h, w = images.shape[-2:]
    dy = (images[..., 1:, :] - images[..., :-1, :]).pow(2).flatten(1).sum(1) / (2 * h)
    dx = (images[..., :, 1:] - images[..., :, :-1]).pow(2).flatten(1).sum(1) / (2 * w)
    return (dy + dx).mean()


def mnist_identity_features(device: str | torch.device = "cpu") -> nn.Module:
    """The recognition network for digits: the shipped MNIST classifier's penultimate layer
    (128 features), in eval mode with frozen weights, differentiable in its input."""
    net = load_classifier(device=device).eval().requires_grad_(False)

    class _Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def train(self, mode: bool = True):
            return super().train(False)

        def forward(self, x):
            return self.net.features(x)

    return _Features().eval()


def check_feature_network(features: Callable, x: torch.Tensor) -> torch.Tensor:
    """``features(x)`` as ``(B, F)``, with gradients to ``x``; a clear error otherwise."""
    if not callable(features):
        raise ConfigError(
            f"the feature network must be callable on images, got {type(features).__name__}."
        )
    probe = x[:2].detach().clone().requires_grad_(True)
    try:
        out = features(probe)
    except Exception as err:  # any failure of a user's network on these images
        raise ConfigError(
            f"the feature network does not accept images of shape "
            f"{tuple(probe.shape[1:])} in [0, 1] ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:200]}); pass one that does."
        ) from None
    if not torch.is_tensor(out) or out.dim() < 2 or out.shape[0] != probe.shape[0]:
        raise ConfigError(
            f"the feature network must return (B, features) for B images, got "
            f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}."
        )
    try:
        (grad,) = torch.autograd.grad(out.float().sum(), probe, allow_unused=True)
    except RuntimeError:
        grad = None
    if grad is None:
        raise ConfigError(
            "the feature network gives no gradient with respect to its input "
            "(does it run under torch.no_grad?); the identity distance needs one."
        )
    return out


def unchanged(x: torch.Tensor, num_levels: int) -> torch.Tensor:
    """``(B, K, *shape)``: the images ``x`` as they are at each of ``K = num_levels``
    levels, the no-change baseline of an edit's scores (what :meth:`AgeCGAN.at_every_level`,
    :meth:`CAAE.at_every_level` and :meth:`RecurrentAger.at_every_level` return for a
    model that changes nothing)."""
    num_levels = checks.positive_int("num_levels", num_levels)
    return x[:, None].expand(x.shape[0], num_levels, *x.shape[1:]).clone()


class _EvalMode:
    """Modules in eval mode inside the block, their modes restored after."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules

    def __enter__(self):
        self.was = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc):
        for m, w in zip(self.modules, self.was):
            m.train(w)


# --------------------------------------------------------------------------- Age-cGAN


@MODELS.register("age_cgan")
class AgeCGAN(nn.Module):
    """Age-cGAN: a conditional DCGAN with a latent encoder, for inversion and editing.

    Args:
        image_shape: ``(C, H, H)``, side 4-7 times a power of two (28, 32, 64, ...).
        num_levels: ``K``, the number of levels (age groups).
        z_dim: noise size (100 in the thesis).
        g_width: base width of G (default: the DCGAN nets').
        d_width: base width of D (default: the DCGAN nets').
        e_width: base width of E (default: the DCGAN nets').
        loss: the game, a name in :data:`probgen.infer.adversarial.ADVERSARIAL_LOSSES`.
        k: discriminator steps per generator step (default: the loss's).
        label_smoothing: one-sided label smoothing.

    Model: ``z ~ N(0, I)`` (site ``z``), ``y ~ U{0..K-1}`` (site ``y``, observed when
    ``levels`` are given), ``x = G(z, y)`` (deterministic site ``x``), images in [0, 1].
    Training data: ``(images, levels, ...)`` batches, images in [0, 1].
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        num_levels: int = 6,
        z_dim: int = 100,
        g_width: int | None = None,
        d_width: int | None = None,
        e_width: int | None = None,
        loss: str = "non_saturating",
        k: int | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.num_levels = checks.integer("num_levels", num_levels, low=2)
        self.z_dim = checks.positive_int("z_dim", z_dim)
        self.spec = adversarial_loss(loss)
        self.k = check_k(self.spec.k if k is None else k)
        self.label_smoothing = label_smoothing
        norm = "layer" if self.spec.gradient_penalty else "batch"
        self.generator = ConditionalGenerator(self.image_shape, z_dim, num_levels, g_width)
        self.discriminator = ConditionalDiscriminator(self.image_shape, num_levels, d_width, norm)
        self.encoder = ConvEncoder(self.image_shape, z_dim, e_width)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        self.phases()  # the adversarial settings' checks

    def extra_repr(self) -> str:
        return (
            f"image_shape={self.image_shape}, num_levels={self.num_levels}, "
            f"z_dim={self.z_dim}, loss={self.spec.name}, k={self.k}"
        )

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    # -- data and the networks' space ------------------------------------------------------
    @staticmethod
    def to_net(x: torch.Tensor) -> torch.Tensor:
        return 2 * x - 1

    @staticmethod
    def from_net(y: torch.Tensor) -> torch.Tensor:
        return (y + 1) / 2

    def check_images(self, x: torch.Tensor, who: str = "Age-cGAN's images") -> torch.Tensor:
        """``x`` after checking its shape and (outside the fit loop's steps over data it
        checked) that its values lie in [0, 1]."""
        check_input(x, self.image_shape, (0.0, 1.0), who, values=not loop_checked())
        return x

    def _levels(self, levels, n: int, what: str = "levels") -> torch.Tensor:
        return check_levels(levels, n, self.num_levels, what, self.device).to(self.device)

    def check_data(self, x: torch.Tensor, levels: torch.Tensor | None = None, *rest: Any) -> None:
        """A whole data set of ``(images, levels, ...)``: images ``(B, *image_shape)`` in
        [0, 1] and levels in ``0..num_levels-1`` (the fit loop checks so once, before the
        first step)."""
        if levels is None:
            raise DataError("Age-cGAN trains on (images, levels) batches; the data have no levels.")
        check_input(x, self.image_shape, (0.0, 1.0), "Age-cGAN's images", values=True)
        check_levels(levels, x.shape[0], self.num_levels, "the data's levels")

    def _check_pairs(self, x: torch.Tensor, levels=None, z=None, *rest) -> None:
        self.check_data(x, levels)
        if z is None or not torch.is_tensor(z) or tuple(z.shape) != (x.shape[0], self.z_dim):
            raise DataError(
                f"the encoder trains on (images, levels, z) pairs with z of shape "
                f"({x.shape[0]}, {self.z_dim}); build them with encoder_pairs."
            )

    def _onehot(self, levels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(levels, self.num_levels).to(like.dtype)

    def generate(self, z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """``G(z, y)`` in [-1, 1] (tanh), ``(B, *image_shape)``."""
        if not torch.is_tensor(z) or z.dim() != 2 or z.shape[1] != self.z_dim:
            raise DataError(
                f"z must be a tensor (B, {self.z_dim}), got "
                f"{tuple(z.shape) if torch.is_tensor(z) else type(z).__name__}."
            )
        return torch.tanh(self.generator(z, self._onehot(levels, z)))

    def decode(self, z: torch.Tensor, levels: int | torch.Tensor) -> torch.Tensor:
        """``G(z, y)`` as images in [0, 1]; ``levels`` an int or ``(B,)``."""
        return self.from_net(self.generate(z, self._levels(levels, z.shape[0])))

    def _with_maps(self, x_net: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return torch.cat([x_net, label_maps(levels, self.num_levels, x_net)], 1)

    # -- the Pyro model ---------------------------------------------------------------------
    def model(
        self,
        x: torch.Tensor | None = None,
        levels: torch.Tensor | None = None,
        *args: Any,
        size: int | None = None,
    ) -> torch.Tensor:
        """``z ~ N(0, I)``, ``y ~ U{0..K-1}`` (observed ``levels`` when given), ``x = G(z, y)``
        (deterministic site), one per row of ``x`` or ``levels``, or ``size`` (default 1).
        The generator runs in eval mode."""
        n = (
            x.shape[0]
            if torch.is_tensor(x)
            else (levels.shape[0] if torch.is_tensor(levels) else (1 if size is None else size))
        )
        n = checks.positive_int("size", n)
        if levels is not None:
            levels = self._levels(levels, n)
        with _EvalMode(self.generator), pyro.plate("data", n):
            zero = self._anchor.new_zeros(self.z_dim)
            z = pyro.sample("z", dist.Normal(zero, 1.0).to_event(1))
            y = pyro.sample(
                "y", dist.Categorical(logits=self._anchor.new_zeros(self.num_levels)), obs=levels
            )
            out = self.from_net(self.generate(z, y))
            pyro.deterministic("x", out, event_dim=len(self.image_shape))
        return out

    @torch.no_grad()
    def sample(self, levels: int | torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Images ``G(z, y)``, ``z ~ N(0, I)``: ``levels`` ``(B,)``, or an int with ``n``."""
        if isinstance(levels, int) and not isinstance(levels, bool):
            levels = self._levels(levels, n or 1)
        levels = self._levels(levels, levels.shape[0])
        with _EvalMode(self.generator):
            return self.decode(torch.randn(levels.shape[0], self.z_dim, device=self.device), levels)

    # -- the game ---------------------------------------------------------------------------
    def _batch(self, batch: tuple):
        if len(batch) < 2:
            raise DataError("Age-cGAN trains on (images, levels) batches; the data have no levels.")
        x = self.check_images(batch[0])
        return x, self._levels(batch[1], x.shape[0], "the batch's levels")

    def real(self, batch: tuple) -> torch.Tensor:
        """The data with their level maps, in the networks' space."""
        x, levels = self._batch(batch)
        return self._with_maps(self.to_net(x), levels)

    def fake(self, batch: tuple) -> torch.Tensor:
        """``G(z, y)`` for fresh ``z`` and the batch's levels, with their level maps."""
        x, levels = self._batch(batch)
        z = torch.randn(x.shape[0], self.z_dim, device=x.device, dtype=x.dtype)
        return self._with_maps(self.generate(z, levels), levels)

    def phases(self) -> list[Phase]:
        """``D`` (``k`` times, each on a fresh batch) then ``G``."""
        return adversarial_phases(
            self.discriminator,
            self.generator,
            self.real,
            self.fake,
            self.spec,
            k=self.k,
            label_smoothing=self.label_smoothing,
        )

    def fit_step(self, config: Any = None) -> CheckedStep:
        """The conditional GAN's training step (the encoder has its own:
        :meth:`encoder_step`). As for the GAN, early stopping needs a figure a callback
        computes, not the players' losses."""
        if config is not None:
            monitor = config.monitor
            if (monitor in ("val_loss", "train_loss") or monitor.startswith("train_loss/")) and (
                config.patience is not None or config.restore_best
            ):
                raise ConfigError(
                    f"Age-cGAN's {monitor} (a discriminator or generator loss) does not measure "
                    f"sample quality: pass patience=None and restore_best=False, or monitor a "
                    f"figure computed by a Metric callback."
                )
        return CheckedStep(self, self.phases())

    # -- the encoder ------------------------------------------------------------------------
    @torch.no_grad()
    def encoder_pairs(
        self, n: int, batch_size: int = 1000, generator: torch.Generator | None = None
    ) -> TensorData:
        """``TensorData(images, levels, z)``: ``n`` pairs ``x_i = G(z_i, y_i)``,
        ``z_i ~ N(0, I)``, ``y_i`` uniform (100,000 in the thesis), generator in eval mode."""
        n = checks.positive_int("the number of pairs n", n)
        kw = (
            dict(generator=generator, device=generator.device)
            if generator is not None
            else dict(device=self.device)
        )
        z = torch.randn(n, self.z_dim, **kw).to(self.device)
        y = torch.randint(0, self.num_levels, (n,), **kw).to(self.device)
        with _EvalMode(self.generator):
            x = torch.cat(
                [
                    self.decode(z[i : i + batch_size], y[i : i + batch_size])
                    for i in range(0, n, batch_size)
                ]
            )
        return TensorData(x, y, z, names=("images", "levels", "z"))

    def encoder_loss(self, batch: tuple) -> torch.Tensor:
        """``||E(x_i) - z_i||^2`` summed over ``z``'s coordinates, mean over the pairs."""
        x, _, z = batch[:3]
        x = self.check_images(x)
        with inputs_checked():  # checked just above (or by the fit loop, once)
            return (self.encoder(self.to_net(x)) - z).pow(2).sum(1).mean()

    def encoder_step(self, lr: float | None = None) -> PhasedStep:
        """The encoder's training step on :meth:`encoder_pairs` (one phase, the encoder's
        parameters only; the validation loss is the same distance)."""
        return CheckedStep(
            self,
            [Phase("encoder", lambda b, ctx: self.encoder_loss(b), params=self.encoder, lr=lr)],
            eval_loss=self.encoder_loss,
            check=self._check_pairs,
        )

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``z0 = E(x)`` (eval mode), ``(B, z_dim)``."""
        x = self.check_images(x)
        with _EvalMode(self.encoder), inputs_checked():
            return self.encoder(self.to_net(x))

    # -- inversion and editing --------------------------------------------------------------
    def distance(
        self,
        x: torch.Tensor,
        levels: int | torch.Tensor,
        refine: str = "pixel",
        features: Callable | None = None,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``d(z) -> (B,)``: the squared distance between each image and ``G(z, y0)``, in
        pixels (``pixel``) or in ``features`` (``identity``)."""
        checks.choice("the distance", refine, ("pixel", "identity"))
        x = self.check_images(x)
        levels = self._levels(levels, x.shape[0])
        if refine == "pixel":
            return lambda z: (self.decode(z, levels) - x).pow(2).flatten(1).sum(1)
        if features is None:
            if self.image_shape != (1, 28, 28):
                raise ConfigError(
                    f"the identity distance needs a feature network for "
                    f"{self.image_shape} images: pass features=... (the digits' "
                    f"default, the MNIST classifier, takes (1, 28, 28))."
                )
            features = mnist_identity_features(self.device)
        check_feature_network(features, x)
        with torch.no_grad():
            target = features(x).flatten(1)
        return lambda z: (features(self.decode(z, levels)).flatten(1) - target).pow(2).sum(1)

    def invert(
        self,
        x: torch.Tensor,
        levels: int | torch.Tensor,
        refine: str = "none",
        features: Callable | None = None,
        maxiter: int = 50,
        bounds: float | None = None,
        z0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The latent ``z*`` of each image at its level ``levels`` (int or ``(B,)``).

        ``z0 = E(x)`` (or ``z0``); ``refine``: ``none`` (the encoder alone), ``pixel`` or
        ``identity`` -- L-BFGS-B (``scipy.optimize.minimize``, torch gradients) on the sum
        of the images' distances (independent images: the sum's minimum is each image's),
        at most ``maxiter`` iterations, ``|z_j| <= bounds`` when given. Networks in eval
        mode, their weights untouched.
        """
        checks.choice("refine", refine, REFINEMENTS)
        x = self.check_images(x)
        levels = self._levels(levels, x.shape[0])
        z = self.encode(x) if z0 is None else z0.detach().to(x)
        if refine == "none":
            return z
        maxiter = checks.positive_int("maxiter", maxiter)
        import numpy as np
        from scipy.optimize import minimize

        with _EvalMode(self.generator):
            d = self.distance(x, levels, refine, features)
            shape = z.shape

            def f(v):
                zz = torch.from_numpy(v).to(z).reshape(shape).requires_grad_(True)
                total = d(zz).sum()
                (g,) = torch.autograd.grad(total, zz)
                return float(total.detach()), g.detach().double().cpu().numpy().ravel()

            box = None if bounds is None else [(-float(bounds), float(bounds))] * z.numel()
            res = minimize(
                f,
                z.double().cpu().numpy().ravel(),
                jac=True,
                method="L-BFGS-B",
                bounds=box,
                options={"maxiter": int(maxiter)},
            )
        return torch.from_numpy(np.asarray(res.x)).to(z).reshape(shape)

    @torch.no_grad()
    def regenerate(self, z: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
        """``G(z, target)`` in [0, 1] (eval mode)."""
        with _EvalMode(self.generator):
            return self.decode(z, self._levels(target, z.shape[0], "target level"))

    def edit(
        self,
        x: torch.Tensor,
        levels: int | torch.Tensor,
        target: int | torch.Tensor,
        **invert_kw: Any,
    ) -> torch.Tensor:
        """``G(z*, target)``: each image moved from its level to ``target`` (int or
        ``(B,)``); ``invert_kw`` as :meth:`invert`."""
        self._levels(target, x.shape[0], "target level")
        return self.regenerate(self.invert(x, levels, **invert_kw), target)

    def at_every_level(
        self, x: torch.Tensor, level: int | torch.Tensor, **invert_kw: Any
    ) -> torch.Tensor:
        """``(B, K, *image_shape)``: each image of level ``level`` (int or ``(B,)``) moved to
        every level ``t``, ``G(z*, t)`` from one inversion (``invert_kw`` as
        :meth:`invert`: ``refine``, ``features``, ``maxiter``, ...); level ``level`` itself
        is the reconstruction. (The interface of the three aging models.)"""
        z = self.invert(x, level, **invert_kw)
        return torch.stack([self.regenerate(z, t) for t in range(self.num_levels)], 1)


# --------------------------------------------------------------------------- CAAE


@MODELS.register("caae")
class CAAE(AAE):
    """Conditional adversarial autoencoder for age progression and regression.

    Args:
        image_shape: shape of one image (``(1, 28, 28)``; ``(3, 128, 128)`` for faces).
        num_levels: ``K``, the number of levels (age groups; 10 in Zhang et al.).
        z_dim: code size (50 in Zhang et al.).
        hidden: the encoder's and decoder's hidden sizes.
        net: the encoder/decoder networks, a name in :data:`probgen.nn.coders.NETS`.
        likelihood: the reconstruction term (``gaussian``: a squared error).
        prior: the code prior (``uniform`` on [-1, 1], as Zhang et al.).
        d_hidden: ``D_z``'s hidden sizes.
        d_img_width: ``D_img``'s base width (a conditional DCGAN discriminator; needs a
            square image whose side is 4-7 times a power of two).
        z_weight: weight of fooling ``D_z`` in the encoder-generator loss.
        img_weight: weight of fooling ``D_img`` in the encoder-generator loss.
        tv_weight: weight of the total variation in the encoder-generator loss.
        fake_levels: the levels of the images ``D_img`` is shown as fake: ``"own"`` (Zhang et
            al.: ``G(E(x), y)`` at each image's own level ``y``) or ``"random"``
            (``G(E(x), y')`` at a level ``y'`` drawn uniformly, with ``y'`` as its label). With
            ``"own"`` no loss ever asks ``G`` for a level other than the input's, so nothing
            stops the code from keeping the attribute and ``G`` from ignoring the level (on
            graded digits the edits then keep the input's thickness: the level classifier
            finds the asked level below chance, near the unchanged input's rate);
            ``"random"`` makes fooling ``D_img`` a matter of drawing the asked level. The
            reconstruction term stays at the own level.
        loss: as :class:`probgen.models.AAE`.
        k: as :class:`probgen.models.AAE`.
        label_smoothing: as :class:`probgen.models.AAE`.
        activation: encoder/decoder hidden activation, as :class:`probgen.models.AAE`.
        likelihood_kwargs: as :class:`probgen.models.AAE`.

    Model and guide are the AAE's with the level as the decoder's label (``labels``:
    the batch's second tensor); generating without levels draws them uniformly (site ``y``).
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        num_levels: int = 6,
        z_dim: int = 50,
        hidden: Sequence[int] | None = None,
        net: str = "conv",
        likelihood: str = "gaussian",
        prior: str = "uniform",
        d_hidden: Sequence[int] = (64, 64),
        d_img_width: int | None = None,
        z_weight: float = 1.0,
        img_weight: float = 1.0,
        tv_weight: float = 1.0,
        loss: str = "non_saturating",
        k: int | None = None,
        label_smoothing: float = 0.0,
        activation: str | None = None,
        likelihood_kwargs: dict | None = None,
        fake_levels: str = "own",
    ):
        num_levels = checks.integer("num_levels", num_levels, low=2)
        super().__init__(
            image_shape,
            z_dim,
            hidden=hidden,
            net=net,
            likelihood=likelihood,
            encoder="deterministic",
            prior=prior,
            num_labels=num_levels,
            label_to_discriminator=False,
            label_to_decoder=True,
            d_hidden=d_hidden,
            loss=loss,
            k=k,
            label_smoothing=label_smoothing,
            activation=activation,
            likelihood_kwargs=likelihood_kwargs,
        )
        self.num_levels = num_levels
        self.z_weight = checks.nonnegative_float("z_weight", z_weight)
        self.img_weight = checks.nonnegative_float("img_weight", img_weight)
        self.tv_weight = checks.nonnegative_float("tv_weight", tv_weight)
        self.fake_levels = checks.choice("fake_levels", fake_levels, FAKE_LEVELS)
        self.image_discriminator = ConditionalDiscriminator(
            self.image_shape, num_levels, d_img_width
        )
        self.phases()

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", num_levels={self.num_levels}, z_weight="
            f"{self.z_weight}, img_weight={self.img_weight}, tv_weight={self.tv_weight}, "
            f"fake_levels={self.fake_levels!r}"
        )

    def model(
        self,
        x: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        size: int | None = None,
        *,
        reconstruction_only: bool = False,
    ) -> torch.Tensor:
        """The AAE's model; generating without ``labels`` draws the levels (site ``y``)."""
        if x is None and labels is None:
            n = checks.positive_int("size", 1 if size is None else size)
            with pyro.plate("levels", n):
                labels = pyro.sample(
                    "y", dist.Categorical(logits=self._anchor.new_zeros(self.num_levels))
                )
        return super().model(x, labels, size, reconstruction_only=reconstruction_only)

    # -- the image discriminator and the encoder-generator loss -----------------------------
    def _image_input(self, images: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        x = 2 * images.reshape((images.shape[0],) + self.image_shape) - 1
        return torch.cat([x, label_maps(levels, self.num_levels, x)], 1)

    def real_image(self, batch: tuple) -> torch.Tensor:
        """The data with their level maps (what ``D_img`` should call real)."""
        flat, levels = self._batch(batch)
        return self._image_input(flat, levels)

    def _fake_levels(self, levels: torch.Tensor) -> torch.Tensor:
        if self.fake_levels == "own":
            return levels
        return torch.randint(0, self.num_levels, levels.shape, device=levels.device)

    def fake_image(self, batch: tuple) -> torch.Tensor:
        """``G(E(x), y)`` with the batch's levels (``fake_levels="random"``: drawn levels),
        with those levels' maps (differentiable in E and G)."""
        flat, levels = self._batch(batch)
        z = self.posterior(flat).rsample()
        levels = self._fake_levels(levels)
        return self._image_input(self.decode(z, levels), levels)

    def encoder_generator_loss(self, batch: tuple) -> torch.Tensor:
        """Reconstruction (per-image NLL) + ``z_weight`` x fooling ``D_z`` + ``img_weight``
        x fooling ``D_img`` (with ``G(E(x), y)``, or ``G(E(x), y')`` at drawn levels ``y'``
        when ``fake_levels="random"``) + ``tv_weight`` x total variation of the images
        shown to ``D_img``."""
        flat, levels = self._batch(batch)
        value = self.reconstruction_loss(batch)
        z = self.posterior(flat).rsample()
        levels = self._fake_levels(levels)
        out = self.decode(z, levels)
        if self.z_weight:
            with frozen(self.discriminator):
                value = value + self.z_weight * self.spec.g_loss(self.discriminator(z))
        if self.img_weight:
            with frozen(self.image_discriminator), inputs_checked():  # G's own images
                value = value + self.img_weight * self.spec.g_loss(
                    self.image_discriminator(self._image_input(out, levels))
                )
        if self.tv_weight:
            value = value + self.tv_weight * total_variation(out)
        return value

    def phases(self) -> list[Phase]:
        """``encoder_generator`` (E, G), ``discriminator_z`` (``D_z``, ``k`` times),
        ``discriminator_img`` (``D_img``, ``k`` times)."""
        d_z, _ = adversarial_phases(
            self.discriminator,
            self.encoder,
            self.real,
            self.fake,
            self.spec,
            k=self.k,
            label_smoothing=self.label_smoothing,
            gp_weight=self.gp_weight,
            names=("discriminator_z", "unused"),
        )
        d_img, _ = adversarial_phases(
            self.image_discriminator,
            self.decoder,
            self.real_image,
            self.fake_image,
            self.spec,
            k=self.k,
            label_smoothing=self.label_smoothing,
            gp_weight=self.gp_weight,
            names=("discriminator_img", "unused"),
        )
        eg = Phase(
            "encoder_generator",
            lambda batch, ctx: self.encoder_generator_loss(batch),
            params=self._autoencoder_parameters,
            optim_kwargs={"betas": tuple(self.spec.betas)},
            discover=False,
            player="generator",
        )
        return [eg, d_z, d_img]

    def fit_step(self, config: Any = None) -> AAEStep:
        """The three phases; the validation loss is the reconstruction term per image."""
        return AAEStep(self, self.phases(), eval_loss=self.reconstruction_loss)

    @torch.no_grad()
    def edit(self, x: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
        """``G(E(x), target)``: each image at level ``target`` (int or ``(B,)``), eval mode.
        (The CAAE's encoder does not read the input's level.)"""
        target = check_levels(target, x.shape[0], self.num_levels, "target level", x.device).to(
            x.device
        )
        with _EvalMode(self):
            return self.decode(self.codes(x, sample=False), target)

    @torch.no_grad()
    def at_every_level(self, x: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
        """``(B, K, *image_shape)``: each image moved to every level, ``G(E(x), t)`` (eval
        mode; the code is computed once). ``level``, the images' own level (int or
        ``(B,)``), is checked but not read: the CAAE's encoder does not take it."""
        check_levels(level, x.shape[0], self.num_levels, "level", x.device)
        with _EvalMode(self):
            z = self.codes(x, sample=False)
            return torch.stack(
                [
                    self.decode(
                        z, check_levels(t, x.shape[0], self.num_levels, "target level", x.device)
                    )
                    for t in range(self.num_levels)
                ],
                1,
            )


# --------------------------------------------------------------------------- recurrent


def loss_weights(num_levels: int, weighting: str | Sequence[float] = "linear") -> torch.Tensor:
    """Weights of the ``K - 1`` transitions' errors, for the groups ``1..K-1`` reached:
    ``linear`` (proportional to the group, the oldest the largest), ``uniform``, or given;
    normalised to sum 1."""
    n = (
        checks.integer(
            "num_levels", num_levels, low=2, hint="recurrent aging steps from one level to the next"
        )
        - 1
    )
    if isinstance(weighting, str):
        checks.choice("weights", weighting, WEIGHTINGS, hint=f"or give {n} numbers")
        w = torch.arange(1, n + 1, dtype=torch.float32) if weighting == "linear" else torch.ones(n)
    else:
        w = torch.as_tensor(list(weighting), dtype=torch.float32)
        if w.shape != (n,) or not bool((w >= 0).all()) or not float(w.sum()) > 0:
            raise ConfigError(
                f"weights must be {n} numbers >= 0 (one per transition), not all "
                f"0; got {list(weighting)!r}."
            )
    return w / w.sum()


@rebuildable
class RecurrentAger(nn.Module):
    """Recurrent aging: a two-layer GRU that steps an image through the following groups.

    Args:
        image_shape: shape of one image.
        num_levels: ``K``.
        hidden: the GRU's hidden size.
        embed: the image embedding's size.
        weights: the transitions' loss weights (:func:`loss_weights`): ``linear`` (growing
            towards the oldest group), ``uniform`` or ``K - 1`` numbers.
        teacher_forcing: feed the true image of each group to the next step in training.

    Training data: whole progressions ``(B, K, *image_shape)`` (identity ``i`` at every
    level). Each batch starts at a random level ``s`` and predicts groups ``s+1..K-1``;
    the error of group ``g`` (summed squared error per image) is weighted by ``w_g``.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        num_levels: int = 6,
        hidden: int = 256,
        embed: int = 256,
        weights: str | Sequence[float] = "linear",
        teacher_forcing: bool = False,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.num_levels = checks.integer("num_levels", num_levels, low=2)
        self.net = GRUAger(self.image_shape, hidden, embed)
        self.register_buffer("weights", loss_weights(num_levels, weights))
        self.teacher_forcing = bool(teacher_forcing)

    def extra_repr(self) -> str:
        return f"num_levels={self.num_levels}, weights={[round(float(w), 3) for w in self.weights]}"

    def _sequences(self, seq: torch.Tensor) -> torch.Tensor:
        want = (self.num_levels,) + self.image_shape
        if not torch.is_tensor(seq) or seq.dim() != len(want) + 1 or tuple(seq.shape[1:]) != want:
            raise DataError(
                f"the recurrent ager trains on progressions (B, "
                f"{', '.join(map(str, want))}), got "
                f"{tuple(seq.shape) if torch.is_tensor(seq) else type(seq).__name__}."
            )
        return seq

    def sequence_loss(self, seq: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """``sum_g w_g ||x^_g - x_g||^2`` (per image, mean over the batch) for the groups
        after ``start`` (default: a random start level in ``0..K-2``)."""
        seq = self._sequences(seq)
        if start is None:
            start = int(torch.randint(0, self.num_levels - 1, ()))
        steps = self.num_levels - 1 - start
        truth = seq[:, start + 1 :]
        pred = self.net(seq[:, start], steps, truth if self.teacher_forcing else None)
        err = (pred - truth).pow(2).flatten(2).sum(2)  # (B, steps)
        return (err * self.weights[start:].to(err)).sum(1).mean()

    def loss(self, seq: torch.Tensor, *rest: Any) -> torch.Tensor:
        """The fit loop's loss (a :class:`~probgen.train.LossStep`)."""
        return self.sequence_loss(seq)

    def fit_step(self, config: Any = None) -> LossStep:
        return LossStep(self, lambda module, seq, *rest: module.sequence_loss(seq))

    @torch.no_grad()
    def progression(self, x: torch.Tensor, levels: int) -> torch.Tensor:
        """From images at level ``levels`` (an int), the images of every later group:
        ``(B, K - levels - 1, *image_shape)`` (eval mode)."""
        check_levels(levels, x.shape[0], self.num_levels)
        with _EvalMode(self):
            return self.net(x, self.num_levels - 1 - int(levels))

    @torch.no_grad()
    def edit(self, x: torch.Tensor, level: int, target: int) -> torch.Tensor:
        """Images at level ``level`` aged to ``target >= level`` (the input itself when equal)."""
        check_levels(target, x.shape[0], self.num_levels, "target level")
        check_levels(level, x.shape[0], self.num_levels)
        if target < level:
            raise ConfigError(
                f"the recurrent model only ages forward: target level {target} is "
                f"below the input's level {level}."
            )
        if target == level:
            return x.clone()
        with _EvalMode(self):
            return self.net(x, target - level)[:, -1]

    @torch.no_grad()
    def at_every_level(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """``(B, K, *image_shape)``: images of level ``level`` (an int) at every level: NaN
        below it (the model only ages forward), the input at ``level``, and
        :meth:`progression` after it (eval mode)."""
        level = checks.int_in_range(
            "level",
            level,
            0,
            self.num_levels - 1,
            hint="the recurrent model starts every image at one level",
        )
        out = x.new_full((x.shape[0], self.num_levels) + tuple(x.shape[1:]), float("nan"))
        out[:, level] = x
        if level < self.num_levels - 1:
            out[:, level + 1 :] = self.progression(x, level)
        return out


__all__ = [
    "CAAE",
    "REFINEMENTS",
    "AgeCGAN",
    "RecurrentAger",
    "check_feature_network",
    "check_levels",
    "loss_weights",
    "mnist_identity_features",
    "total_variation",
    "unchanged",
]
