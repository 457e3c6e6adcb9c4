"""Networks of the aging models (plain PyTorch, no Pyro inside).

* :class:`ConditionalGenerator` -- Age-cGAN's ``G(z, y)``: the DCGAN generator of
  :mod:`probgen.nn.gan_nets` fed ``[z, onehot(y)]`` (the condition added to the generator's
  input, the rule for conditional GANs).
* :class:`ConditionalDiscriminator` -- ``D(x, y)``: the DCGAN discriminator fed the image
  with ``K`` extra channels, the one-hot level broadcast over the pixels.
* :class:`ConvEncoder` -- Age-cGAN's latent encoder ``E(x) -> z`` (and a CAAE image
  encoder): the DCGAN discriminator's strided convolutions ending in ``z_dim`` outputs.
* :class:`GRUAger` -- the recurrent aging network: a two-layer GRU whose lower cell encodes
  the (flattened, embedded) image into a hidden state and whose upper cell decodes the next
  group's image from it (Wang et al. 2016, "Recurrent Face Aging", as sketched in the
  aging chapter of the source thesis).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from probgen import checks
from probgen.errors import DataError
from probgen.nn.gan_nets import (
    DCGANDiscriminator,
    DCGANGenerator,
    check_input,
    dcgan_plan,
    default_width,
)


def label_maps(levels: torch.Tensor, num_levels: int, like: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)``: the one-hot level of each image broadcast over its pixels."""
    onehot = F.one_hot(levels, num_levels).to(like.dtype)
    return onehot[:, :, None, None].expand(-1, -1, like.shape[-2], like.shape[-1])


class ConditionalGenerator(nn.Module):
    """``G(z, onehot) -> image`` (no output activation): a DCGAN generator of
    ``z_dim + num_levels`` inputs."""

    def __init__(
        self, image_shape: Sequence[int], z_dim: int, num_levels: int, width: int | None = None
    ):
        super().__init__()
        self.z_dim = checks.positive_int("z_dim", z_dim)
        self.num_levels = checks.positive_int("num_levels", num_levels)
        self.net = DCGANGenerator(image_shape, z_dim + num_levels, width)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, onehot.to(z.dtype)], -1))


class ConditionalDiscriminator(DCGANDiscriminator):
    """``D([x, label maps]) -> logits (B,)``: a DCGAN discriminator of ``C + K`` input
    channels (one tensor in, so that :func:`probgen.infer.adversarial.adversarial_phases`
    serves it as any discriminator). Image values in [-1, 1]; the label maps in {0, 1}."""

    def __init__(
        self,
        image_shape: Sequence[int],
        num_levels: int,
        width: int | None = None,
        norm: str = "batch",
    ):
        shape = checks.sizes("image_shape", image_shape)
        self.num_levels = checks.positive_int("num_levels", num_levels)
        super().__init__((shape[0] + num_levels,) + shape[1:], width, norm, (-1.0, 1.0))


class ConvEncoder(nn.Module):
    """``image (B, C, H, H) -> (B, z_dim)``: stride-2 convolutions (kernel 4, batch norm after
    the first, LeakyReLU 0.2) as the DCGAN discriminator, then a convolution over the last
    ``s x s`` map to ``z_dim`` outputs (a fully connected layer).

    Args:
        image_shape: ``(C, H, H)``, side 4-7 times a power of two.
        z_dim: output size.
        width: channels of the first feature map (default as the DCGAN discriminator).
        value_range: the range inputs must lie in (``None``: unchecked).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        z_dim: int,
        width: int | None = None,
        value_range: tuple[float, float] | None = (-1.0, 1.0),
    ):
        super().__init__()
        self.image_shape = checks.sizes("image_shape", image_shape)
        self.z_dim = checks.positive_int("z_dim", z_dim)
        start, stages = dcgan_plan(self.image_shape)
        width = checks.positive_int(
            "width",
            width if width is not None else default_width(self.image_shape, "discriminator"),
        )
        self.value_range = value_range
        layers, channels = [], self.image_shape[0]
        for i in range(stages):
            out = width * 2**i
            layers.append(nn.Conv2d(channels, out, 4, 2, 1, bias=False))
            if i > 0:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2))
            channels = out
        layers.append(nn.Conv2d(channels, z_dim, start, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.image_shape, self.value_range, "the encoder")
        return self.net(x).reshape(x.shape[0], self.z_dim)


class GRUAger(nn.Module):
    """Two stacked GRU cells stepping through the age groups.

    At each step the lower cell reads the current image (flattened, through a linear
    embedding) into its hidden state ``h1``; the upper cell reads ``h1`` into ``h2``; a linear
    decoder of ``h2`` gives the next group's image (logits). The images of the following
    steps are the network's own outputs (or, in training, optionally the true ones).

    Args:
        image_shape: shape of one image.
        hidden: size of both hidden states.
        embed: size of the image embedding fed to the lower cell.
    """

    def __init__(self, image_shape: Sequence[int], hidden: int = 256, embed: int = 256):
        super().__init__()
        self.image_shape = checks.sizes("image_shape", image_shape)
        self.hidden = checks.positive_int("hidden", hidden)
        checks.positive_int("embed", embed)
        d = int(torch.Size(self.image_shape).numel())
        self.embed = nn.Sequential(nn.Linear(d, embed), nn.ReLU())
        self.lower = nn.GRUCell(embed, hidden)
        self.upper = nn.GRUCell(hidden, hidden)
        self.decode = nn.Linear(hidden, d)

    def forward(
        self, x: torch.Tensor, steps: int, teacher: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x (B, *image_shape)`` in [0, 1] -> the next ``steps`` images ``(B, steps,
        *image_shape)`` in [0, 1]. ``teacher (B, steps, ...)``: feed the true image of each
        step to the next one instead of the network's own output (teacher forcing)."""
        if x.dim() != len(self.image_shape) + 1 or tuple(x.shape[1:]) != self.image_shape:
            raise DataError(
                f"the recurrent ager takes images (B, "
                f"{', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}."
            )
        steps = checks.nonnegative_int("steps", steps)
        b = x.shape[0]
        h1 = x.new_zeros(b, self.hidden)
        h2 = x.new_zeros(b, self.hidden)
        cur = x.reshape(b, -1)
        outs = []
        for t in range(steps):
            h1 = self.lower(self.embed(cur), h1)
            h2 = self.upper(h1, h2)
            out = torch.sigmoid(self.decode(h2))
            outs.append(out)
            cur = teacher[:, t].reshape(b, -1) if teacher is not None else out
        if not outs:
            return x.new_zeros((b, 0) + self.image_shape)
        return torch.stack(outs, 1).reshape((b, steps) + self.image_shape)


__all__ = [
    "ConditionalDiscriminator",
    "ConditionalGenerator",
    "ConvEncoder",
    "GRUAger",
    "label_maps",
]
