"""The semi-supervised adversarial autoencoder (Makhzani et al. 2015, "Adversarial
Autoencoders", section 5): a class code and a style code, each matched to its own prior
by its own discriminator, and a classification phase on the few labelled examples.

The training data are ``(images, labels)`` with :data:`~probgen.data.labels.UNLABELLED`
for the examples whose label is withheld (:func:`probgen.data.labels.labelled_split`
keeps a balanced few).

Example::

    semi = labelled_split(train.tensors[1], 100, 10)
    model = SemiSupervisedAAE(num_classes=10, z_dim=10)
    probgen.fit(model, TensorData(train.tensors[0], semi), val, epochs=100, lr=1e-3,
                phase_optim=regularization_optim(model, lr=1e-3))
    predicted = model.predict(test_images)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from probgen import checks
from probgen.data.labels import UNLABELLED
from probgen.errors import DataError
from probgen.infer.adversarial import adversarial_phases, player_optim
from probgen.infer.context import current_step
from probgen.infer.phases import Phase
from probgen.models.aae import AAE
from probgen.models.checks import checked_labels, found, generated_count
from probgen.models.registry import MODELS
from probgen.nn.coders import NETS
from probgen.nn.gan_nets import MLPDiscriminator


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
    (the others carry the label :data:`~probgen.data.labels.UNLABELLED`; build such labels
    with :func:`~probgen.data.labels.labelled_split`).

    The arguments other than ``num_classes`` and ``z_dim`` are :class:`AAE`'s (no labels
    reach the networks as inputs; with ``corruption`` the classification phase, too, sees
    corrupted labelled images). The learning rates of the phases are the run's:
    :func:`regularization_optim` gives the regularization phases a tenth of it.

    Args:
        num_classes: classes of ``y``.
        z_dim: the style's size.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        z_dim: int = 10,
        hidden: Sequence[int] | None = None,
        net: str = "mlp",
        likelihood: str = "gaussian",
        encoder: str = "deterministic",
        noise_dim: int | None = None,
        prior: str | Any = "normal",
        prior_kwargs: dict[str, Any] | None = None,
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
        num_classes = checks.integer("num_classes", num_classes, low=2)
        super().__init__(
            image_shape,
            z_dim,
            hidden,
            net,
            likelihood,
            encoder,
            noise_dim,
            prior,
            prior_kwargs,
            0,
            True,
            False,
            d_hidden,
            loss,
            k,
            label_smoothing,
            gp_weight,
            phase_order,
            activation,
            likelihood_kwargs,
            corruption=corruption,
            corruption_kwargs=corruption_kwargs,
        )
        self.num_classes = num_classes
        _, self.decoder = NETS.get(net)(
            self.image_shape, z_dim, num_labels=num_classes, **self._net_kwargs
        )
        self.class_head = nn.Linear(self.encoder.loc.in_features, num_classes)
        self.discriminator_y = MLPDiscriminator((num_classes,), hidden=tuple(d_hidden))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, " + super().extra_repr()

    @property
    def reads_labels(self) -> bool:
        return True

    # -- checks --------------------------------------------------------------------------
    def _labels(self, labels, n):
        return checked_labels(labels, n, self.num_classes, unlabelled=UNLABELLED)

    def check_dataset(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`check_data` of a whole data set; one with unlabelled examples (a training
        set) must hold at least one labelled example of every class."""
        flat, labels = self.check_data(x, labels)
        if labels is None:
            raise DataError(
                f"semi-supervised training reads (images, labels) with label "
                f"{UNLABELLED} for the unlabelled images; pass labels too."
            )
        counts = torch.bincount(labels[labels >= 0], minlength=self.num_classes)
        missing = [c for c in range(self.num_classes) if int(counts[c]) == 0]
        if missing and found(labels < 0):  # (a fully labelled split: validation)
            raise DataError(
                f"too few labelled examples per class: classes {missing} have none; "
                f"label at least one example of every class (labelled_split)."
            )
        return flat, labels

    def _onehot(self, labels, like):
        return None if labels is None else F.one_hot(labels, self.num_classes).to(like.dtype)

    # -- the encoder's two codes ---------------------------------------------------------------
    def _features(self, flat, noise=None):
        return self.encoder.body(flat, self._noise(noise, flat))

    def _style(self, h) -> dist.Distribution:
        loc, scale = self.encoder.gaussian(h)
        if scale is None:
            return dist.Delta(loc, event_dim=1)
        return dist.Normal(loc, scale).to_event(1)

    def posterior(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dist.Distribution:
        """``q(z | x)``, the style's distribution."""
        return self._style(self._features(self._flat(x), noise))

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The class head's logits ``(B, num_classes)`` (universal encoder: at ``eta = 0``)."""
        flat = self._flat(x)
        noise = (
            flat.new_zeros(flat.shape[0], self.noise_dim)
            if self.encoder_kind == "universal"
            else None
        )
        return self.class_head(self._features(flat, noise))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The most probable class of each image, ``(B,)``."""
        return torch.cat(
            [
                self.class_logits(x[i : i + batch_size]).argmax(-1)
                for i in range(0, x.shape[0], batch_size)
            ]
        )

    def decoder_output(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The decoder's output for style ``z`` and class ``y`` (one-hot or softmax
        ``(B, num_classes)``, or integer labels ``(B,)``)."""
        if y is not None and y.dim() == 1:
            y = self._onehot(y, z)
        return self.decoder(z, y)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images of styles ``z`` with the classes ``labels``: integers ``(B,)``, or
        class probabilities ``(B, num_classes)`` as the decoder sees them in training (the
        class head's softmax: what :meth:`reconstruct` decodes)."""
        if labels is None:
            raise DataError(
                "the semi-supervised AAE's decoder takes a class: pass labels (B,) "
                "or class probabilities (B, num_classes)."
            )
        if torch.is_tensor(labels) and labels.dtype.is_floating_point and labels.dim() == 2:
            if tuple(labels.shape) != (z.shape[0], self.num_classes):
                raise DataError(
                    f"class probabilities must be ({z.shape[0]}, "
                    f"{self.num_classes}), one row per code; got "
                    f"{tuple(labels.shape)}."
                )
        else:
            labels = self._labels(labels, z.shape[0])
            if found(labels < 0):
                raise DataError("decode needs a class for every code, not the unlabelled mark.")
        out = self.decoder_output(z, labels)
        return self.likelihood.mean(out).reshape((z.shape[0],) + self.image_shape)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode each image's style centre with its predicted class softmax."""
        flat = self._flat(x)
        noise = (
            flat.new_zeros(flat.shape[0], self.noise_dim)
            if self.encoder_kind == "universal"
            else None
        )
        h = self._features(flat, noise)
        q = self._style(h)
        z = q.mean if isinstance(q, dist.Independent) else q.v
        out = self.decoder_output(z, torch.softmax(self.class_head(h), -1))
        return self.likelihood.mean(out).reshape((flat.shape[0],) + self.image_shape)

    def _class_labels(self, labels, n):
        """Labels to generate with: a class for each (the unlabelled mark is refused)."""
        labels = self._labels(labels, n)
        if found(labels < 0):
            raise DataError(
                f"to generate, every label must be a class in 0.."
                f"{self.num_classes - 1}; {UNLABELLED} (unlabelled) has none: "
                f"pass size=... instead to draw the classes."
            )
        return labels

    @torch.no_grad()
    def sample(self, n: int | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images of ``y ~ p(y)`` (or ``labels``), ``z ~ p(z)``: ``(n, *image_shape)``,
        or one per label."""
        if labels is not None:  # checked here too: an error inside Predictive gains lines
            self._class_labels(
                labels, labels.shape[0] if torch.is_tensor(labels) and labels.dim() == 1 else -1
            )
        return super().sample(n, labels)

    # -- Pyro model and guide ---------------------------------------------------------
    def model(
        self,
        x: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        size: int | None = None,
        *,
        reconstruction_only: bool = False,
    ) -> torch.Tensor:
        """``y ~ OneHotCategorical(uniform)``, ``z ~ p(z)``, ``x ~ p(x | decoder(z, y))``;
        generating with ``labels`` fixes ``y``."""
        observed_y = None
        if x is not None:
            flat, _ = self.check_data(x, labels)  # the labels are data, not model inputs
            n = flat.shape[0]
        else:
            flat = None
            n = generated_count(labels, size)
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

    def guide(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        size: int | None = None,
        *,
        reconstruction_only: bool = False,
    ) -> torch.Tensor:
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
    def real(self, batch: tuple) -> torch.Tensor:
        """Style prior draws, one per example."""
        return self.prior_sample(batch[0].shape[0])

    def fake(self, batch: tuple) -> torch.Tensor:
        """Styles ``z ~ q(z | x)`` of the batch."""
        flat, _ = self._batch(batch)
        return self.posterior(self._seen(flat)).rsample()

    def real_y(self, batch: tuple) -> torch.Tensor:
        """One-hot draws of the uniform categorical prior, one per example."""
        n = batch[0].shape[0]
        draws = torch.randint(0, self.num_classes, (n,), device=self._anchor.device)
        return F.one_hot(draws, self.num_classes).to(self._anchor.dtype)

    def fake_y(self, batch: tuple) -> torch.Tensor:
        """The class head's softmax of the batch."""
        flat, _ = self._batch(batch)
        return torch.softmax(self.class_head(self._features(self._seen(flat))), -1)

    def classification_loss(self, batch: tuple) -> torch.Tensor:
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
        return (
            list(self.encoder.parameters())
            + list(self.class_head.parameters())
            + list(self.decoder.parameters())
            + list(self.likelihood.parameters())
        )

    def phases(self) -> list[Phase]:
        """``reconstruction``, ``discriminator_z``, ``generator_z``, ``discriminator_y``,
        ``generator_y`` (reconstruction first or last, as ``phase_order`` says), then
        ``classification``."""
        kw = dict(k=self.k, label_smoothing=self.label_smoothing, gp_weight=self.gp_weight)
        z_phases = adversarial_phases(
            self.discriminator,
            self._style_parameters,
            self.real,
            self.fake,
            self.spec,
            names=("discriminator_z", "generator_z"),
            **kw,
        )
        y_phases = adversarial_phases(
            self.discriminator_y,
            self._class_parameters,
            self.real_y,
            self.fake_y,
            self.spec,
            names=("discriminator_y", "generator_y"),
            **kw,
        )
        rec = Phase(
            "reconstruction",
            lambda batch, ctx: self.reconstruction_loss(batch),
            params=self._autoencoder_parameters,
            discover=False,
        )
        cls = Phase(
            "classification",
            lambda batch, ctx: self.classification_loss(batch),
            params=self._class_parameters,
            discover=False,
        )
        regularization = z_phases + y_phases
        if self.phase_order == "reconstruction_first":
            return [rec] + regularization + [cls]
        return regularization + [rec, cls]


REGULARIZATION_LR_SHARE = 0.1
"""The share of the run's learning rate that :func:`regularization_optim` gives the
regularization phases by default."""


def regularization_optim(
    model: SemiSupervisedAAE, lr: float, *, d_lr: float | None = None, g_lr: float | None = None
) -> dict[str, dict[str, Any]]:
    """A ``phase_optim`` (:class:`~probgen.train.FitConfig`) that trains the four
    regularization phases (``discriminator_z``, ``discriminator_y``, ``generator_z``,
    ``generator_y``) slower than the reconstruction and classification: at ``d_lr`` and
    ``g_lr``, by default a tenth of the run's ``lr`` (:data:`REGULARIZATION_LR_SHARE`).
    Measured on 512 MNIST images, 10 epochs: regularization at the run's learning rate
    left the class head at 10-22% test accuracy, at a tenth of it at 69-71% (the
    classifier alone: 73%).

    Args:
        model: the semi-supervised AAE.
        lr: the run's learning rate.
        d_lr: the discriminators' learning rate (default: ``lr`` / 10).
        g_lr: the generators' (the encoder's codes') learning rate (default: ``lr`` / 10).

    Returns:
        ``{phase name: {"lr": ...}}`` for the four regularization phases.
    """
    lr = checks.positive_float("lr", lr)
    share = REGULARIZATION_LR_SHARE * lr
    return player_optim(
        model, d_lr=share if d_lr is None else d_lr, g_lr=share if g_lr is None else g_lr
    )


__all__ = ["REGULARIZATION_LR_SHARE", "SemiSupervisedAAE", "regularization_optim"]
