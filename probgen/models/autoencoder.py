"""The autoencoder interface that the VAE family and the adversarial autoencoders share.

An autoencoder with a prior over its codes: an encoder ``q(z | x)``, a decoder
``p(x | z [, label])`` and a prior ``p(z [| label])``. :class:`probgen.models.VAE` (its
presets included), :class:`probgen.models.AAE`, :class:`probgen.models.CAAE` and
:class:`probgen.models.SemiSupervisedAAE` (its style code) have it, so one evaluation
(:func:`probgen.metrics.report.aae_report`), one figure (:func:`probgen.viz.aae_figures`)
or a user's own code reads them alike:

=====================================  ==================================================
``codes(x, labels=None, sample=True)``  ``(B, z_dim)`` draws of ``q(z | x)`` (over a data
                                        set: draws of the aggregated posterior ``q(z)``);
                                        ``sample=False``: the code :meth:`reconstruct`
                                        decodes (the centre of ``q(z | x)``)
``decode(z, labels=None)``              the likelihood's mean image of each code,
                                        ``(B, *image_shape)``
``prior_sample(n, labels=None)``        ``(n, z_dim)`` draws of ``p(z)`` (of each label's
                                        part, where the prior takes labels)
``reconstruct(x, labels=None)``         each image decoded from its central code
``reconstruction_loss(batch)``          ``-E_q log p(x | z)`` per image, the batch's mean:
                                        the ELBO's reconstruction term, differentiable
``sample(n=None, labels=None)``         decoded prior draws: ``n``, or one per label
``z_dim``, ``num_labels``               the code's size; the classes the model takes
``label_to_decoder``                    whether :meth:`decode` and :meth:`sample` need the
                                        label
``device``                              where the model's parameters live
=====================================  ==================================================

``batch`` is what the fit loop gives the model: ``(x,)`` or ``(x, labels, ...)``.
Labels a model does not read are ignored (its encoder may not take them, as an AAE's
does not).

Examples:
    >>> import torch
    >>> from probgen.models import AAE, VAE
    >>> from probgen.models.autoencoder import Autoencoder
    >>> vae, aae = VAE(z_dim=2, hidden=(8,)), AAE(z_dim=2, hidden=(8,), d_hidden=(8,))
    >>> x = torch.rand(3, 1, 28, 28)
    >>> [tuple(m.codes(x).shape) for m in (vae, aae)], isinstance(vae, Autoencoder)
    ([(3, 2), (3, 2)], True)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Autoencoder(Protocol):
    """An autoencoder whose codes have a prior (see the module docstring for each member).

    ``isinstance(model, Autoencoder)`` checks that the members are there (not their
    signatures).

    Attributes:
        z_dim: the code's size.
        num_labels: the classes the model takes (0: none).
        label_to_decoder: whether :meth:`decode` and :meth:`sample` take the label.
    """

    z_dim: int
    num_labels: int
    label_to_decoder: bool

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""

    def eval(self) -> Any:
        """Evaluation mode (``torch.nn.Module.eval``)."""

    def codes(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, *, sample: bool = True
    ) -> torch.Tensor:
        """``(B, z_dim)`` draws of ``q(z | x)``, or with ``sample=False`` its centre."""

    def prior_sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, z_dim)`` draws of ``p(z)`` (of each label's part with labels)."""

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's mean image of each code, ``(B, *image_shape)``."""

    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Each image decoded from its central code, ``(B, *image_shape)``."""

    def reconstruction_loss(self, batch: tuple) -> torch.Tensor:
        """``-E_q log p(x | z)`` per image, the batch's mean."""

    def sample(self, n: int | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded prior draws: ``n`` of them, or one per label."""


__all__ = ["Autoencoder"]
