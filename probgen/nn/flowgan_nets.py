"""Discriminators of the Flow-GAN hybrid (plain PyTorch, no Pyro inside).

Two networks, each ``(B, C, H, H) -> logits (B,)`` for 28x28 or 32x32 images, picked by
name from :data:`FLOWGAN_DISCRIMINATORS`:

* ``dcgan``: the DCGAN discriminator of :mod:`probgen.nn.gan_nets` with base width 32,
  the network of the Flow-GAN thesis (document 001, its figure 3.2): 32 -> 64 -> 128 -> 1
  for 3x32x32 (167,808 parameters), and the same pattern, 32 -> 64 -> 1, for 1x28x28.
  Batch norm, or one group norm over channels and pixels for a critic with a gradient
  penalty (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs", section 4).
* ``resnet18``: the CIFAR-style ResNet-18 of the thesis (its figure 3.3; He et al. 2016,
  "Deep Residual Learning for Image Recognition"): a 3x3 stride-1 stem and no max-pool,
  then torchvision's ``[2, 2, 2, 2]`` basic blocks, global average pooling and one logit
  (11,169,345 parameters for colour images). It is torchvision's ``resnet18`` with the
  stem replaced, so the blocks are torchvision's own; torchvision's adaptive average pool
  equals the thesis's ``avg_pool2d(out, 4)`` on the 4x4 map of a 32x32 image and also
  takes the 4x4 map of a 28x28 one. The thesis ends both networks in a sigmoid; here they
  return logits and the losses apply the sigmoid stably.

Both check their input: another shape raises :class:`~probgen.errors.DataError`, and
images other than 28x28 or 32x32 are refused when the network is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from probgen.errors import ConfigError
from probgen.nn.gan_nets import DCGANDiscriminator, check_input
from probgen.registry import Registry

FLOWGAN_DISCRIMINATORS: Registry = Registry("Flow-GAN discriminator")
SIDES = (28, 32)
NORMS = ("batch", "layer")


def check_image_shape(image_shape: Sequence[int], who: str) -> tuple[int, int, int]:
    """``(C, H, H)`` with ``H`` 28 or 32, else a :class:`ConfigError` saying so."""
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"{who} takes an image shape (C, H, W), got {image_shape!r}.") from None
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] not in SIDES or shape[0] < 1:
        raise ConfigError(
            f"{who} takes square images of side 28 (MNIST) or 32 (CIFAR-10), "
            f"(C, 28, 28) or (C, 32, 32), got image shape {shape}."
        )
    return shape


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ConfigError(
            f"the discriminator's norm must be one of {NORMS} (layer: for a "
            f"critic with a gradient penalty), got {norm!r}."
        )
    return norm


class ResNet18Discriminator(nn.Module):
    """CIFAR-style ResNet-18 with one logit, from torchvision's ``resnet18``.

    Args:
        image_shape: ``(C, 28, 28)`` or ``(C, 32, 32)``.
        norm: ``batch`` (the thesis) or ``layer`` (``GroupNorm(1, c)``: a critic with a
            gradient penalty should not use batch norm).
        value_range: the range inputs must lie in (``None``: unchecked).
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (3, 32, 32),
        norm: str = "batch",
        value_range: tuple[float, float] | None = None,
    ):
        super().__init__()
        from torchvision.models import resnet18

        self.image_shape = check_image_shape(image_shape, "the ResNet-18 discriminator")
        self.norm = _check_norm(norm)
        self.value_range = tuple(value_range) if value_range is not None else None
        norm_layer = None if norm == "batch" else (lambda c: nn.GroupNorm(1, c))
        net = resnet18(weights=None, num_classes=1, norm_layer=norm_layer)
        # the CIFAR stem: 3x3, stride 1, no max-pool (torchvision's is 7x7/2 + max-pool)
        net.conv1 = nn.Conv2d(self.image_shape[0], 64, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.image_shape, self.value_range, "the ResNet-18 discriminator")
        return self.net(x).reshape(x.shape[0])


@FLOWGAN_DISCRIMINATORS.register("dcgan")
def dcgan_discriminator(
    image_shape: Sequence[int],
    *,
    width: int | None = None,
    norm: str = "batch",
    value_range: tuple[float, float] | None = None,
) -> nn.Module:
    """The thesis's DCGAN discriminator (base width 32 unless ``width`` is given)."""
    shape = check_image_shape(image_shape, "the DCGAN discriminator")
    return DCGANDiscriminator(shape, 32 if width is None else width, _check_norm(norm), value_range)


@FLOWGAN_DISCRIMINATORS.register("resnet18")
def resnet18_discriminator(
    image_shape: Sequence[int],
    *,
    width: int | None = None,
    norm: str = "batch",
    value_range: tuple[float, float] | None = None,
) -> nn.Module:
    """:class:`ResNet18Discriminator` (its widths are ResNet-18's: ``width`` is refused)."""
    if width is not None:
        raise ConfigError(
            "the ResNet-18 discriminator has ResNet-18's widths; leave d_width "
            "unset (it sets the DCGAN discriminator's base width)."
        )
    return ResNet18Discriminator(image_shape, norm, value_range)


def build_discriminator(name: str, image_shape: Sequence[int], **kwargs) -> nn.Module:
    """The discriminator ``name`` of :data:`FLOWGAN_DISCRIMINATORS` for ``image_shape``."""
    return FLOWGAN_DISCRIMINATORS.get(name)(image_shape, **kwargs)


__all__ = [
    "FLOWGAN_DISCRIMINATORS",
    "ResNet18Discriminator",
    "build_discriminator",
    "check_image_shape",
    "dcgan_discriminator",
    "resnet18_discriminator",
]
