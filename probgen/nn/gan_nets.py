"""Generators and discriminators for GANs (plain PyTorch, no Pyro inside).

Two architectures, each a generator ``z (B, z_dim) -> (B, *shape)`` and a discriminator
``(B, *shape) -> logits (B,)``, picked by name from :data:`GAN_NETS`:

* ``mlp``: fully connected (Goodfellow et al. 2014), ReLU in the generator, LeakyReLU 0.2
  in the discriminator; any data shape (the 1-D toy, flat or image data).
* ``dcgan`` (Radford et al. 2016, "Unsupervised Representation Learning with Deep
  Convolutional Generative Adversarial Networks"): no pooling -- strided convolutions in
  the discriminator and fractionally-strided (transposed) ones in the generator; batch
  norm in both (not on the generator's output nor the discriminator's input layer); ReLU
  in the generator, LeakyReLU 0.2 in the discriminator; 4x4 kernels, stride 2, as in
  PyTorch's DCGAN example (the paper's figure draws 5x5). Square images whose side is 4 to
  7 times a power of two:

  ===========  ===========================================  ==============================
  image        generator (``width`` w)                      discriminator (``width`` w)
  ===========  ===========================================  ==============================
  1 x 28 x 28  z -> FC 2w x 7 x 7 -> w x 14 x 14 -> 1 x 28   w x 14 -> 2w x 7 -> 1 (7x7
               x 28 (w = 64)                                conv: an FC of size 1; w = 64)
  3 x 32 x 32  z -> FC 4w x 4 x 4 -> ... -> 3 x 32 x 32     32 x 16 -> 64 x 8 -> 128 x 4
               (w = 64)                                     -> 1: the CIFAR-10 network of
                                                            the Flow-GAN thesis (w = 32,
                                                            167,808 parameters)
  3 x 64 x 64  z (100) -> FC 1024 x 4 x 4 -> 512 x 8 ->     symmetric: 128 x 32 -> 256 ->
               256 x 16 -> 128 x 32 -> 3 x 64 x 64          512 -> 1024 x 4 -> 1 (w = 128)
               (Radford et al.'s figure 1; w = 128)
  ===========  ===========================================  ==============================

The generator's last layer has no activation: the GAN model applies ``tanh`` or
``sigmoid`` (its ``output`` setting) and keeps the data's range. Discriminators return
logits (``D(x) = sigmoid(logit)``; a WGAN critic's value) and check their input: the
wrong shape, or values outside ``value_range``, raise :class:`~probgen.errors.DataError`.
A critic trained with a gradient penalty should not use batch norm (Gulrajani et al.
2017): ``norm="layer"`` (one group norm over channels and pixels) or ``"none"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from probgen import checks
from probgen.errors import ConfigError, DataError
from probgen.registry import Registry

GAN_NETS: Registry = Registry("GAN network architecture")
NORMS = ("batch", "layer", "none")


def _numel(shape: Sequence[int]) -> int:
    return int(torch.Size(shape).numel())


def check_input(
    x: torch.Tensor,
    shape: tuple[int, ...],
    value_range: tuple[float, float] | None,
    who: str,
    values: bool | None = None,
) -> None:
    """Raise :class:`DataError` unless ``x`` is ``(B, *shape)`` with values in ``value_range``.

    The value check reads one flag back to the host (a synchronisation on a GPU); it runs
    when ``values`` is True, or when ``values`` is ``None`` outside :func:`inputs_checked`.
    """
    if not torch.is_tensor(x):
        raise DataError(f"{who} takes a tensor, got {type(x).__name__}.")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise DataError(
            f"{who} takes examples of shape (B, {', '.join(map(str, shape))}), got "
            f"{tuple(x.shape)}."
        )
    if values is None:
        values = not _INPUTS_CHECKED.get()
    if value_range is not None and values and x.numel():
        lo, hi = torch.aminmax(x.detach())
        a, b = value_range
        tol = 1e-4 * (b - a)
        if bool(~((lo >= a - tol) & (hi <= b + tol))):  # also catches NaN
            raise DataError(
                f"{who} takes values in [{a:g}, {b:g}], got values in "
                f"[{float(lo):.4g}, {float(hi):.4g}]; rescale the data (images in "
                f"[0, 1] are mapped to [-1, 1] by the GAN model)."
            )


_INPUTS_CHECKED: ContextVar[bool] = ContextVar("probgen_inputs_checked", default=False)


@contextmanager
def inputs_checked() -> Iterator[None]:
    """Inside the block, probgen's networks check their inputs' shapes but not their values.

    For callers whose inputs are data they checked themselves or the networks' own outputs
    (the adversarial training losses): each value check would read the data back to the
    host, a synchronisation per call on a GPU. A context variable, so a network called by
    the user elsewhere (another thread, after the block) checks as before."""
    token = _INPUTS_CHECKED.set(True)
    try:
        yield
    finally:
        _INPUTS_CHECKED.reset(token)


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}.")
    return norm


# --------------------------------------------------------------------------- MLP


class MLPGenerator(nn.Module):
    """``z (B, z_dim) -> Linear -> ReLU -> ... -> Linear -> (B, *data_shape)`` (no output
    activation).

    Args:
        data_shape: shape of one example.
        z_dim: noise size.
        hidden: hidden layer sizes.
        batch_norm: batch norm after each hidden linear layer.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        z_dim: int,
        hidden: Sequence[int] = (256, 512),
        batch_norm: bool = False,
    ):
        super().__init__()
        self.data_shape = checks.sizes("data_shape", data_shape)
        self.z_dim = checks.positive_int("z_dim", z_dim)
        hidden = checks.sizes("hidden layer sizes", hidden)
        layers, prev = [], z_dim
        for h in hidden:
            layers += [nn.Linear(prev, h)]
            if batch_norm:
                layers += [nn.BatchNorm1d(h)]
            layers += [nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, _numel(self.data_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(z.shape[:-1] + self.data_shape)


class MLPDiscriminator(nn.Module):
    """``x (B, *data_shape) -> Linear -> LeakyReLU(0.2) -> ... -> Linear -> logits (B,)``.

    Args:
        data_shape: shape of one example.
        hidden: hidden layer sizes.
        value_range: the range inputs must lie in (``None``: unchecked).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden: Sequence[int] = (512, 256),
        value_range: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.data_shape = checks.sizes("data_shape", data_shape)
        hidden = checks.sizes("hidden layer sizes", hidden)
        self.value_range = tuple(value_range) if value_range is not None else None
        layers, prev = [], _numel(self.data_shape)
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.LeakyReLU(0.2)]
            prev = h
        layers.append(nn.Linear(prev, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.data_shape, self.value_range, "the discriminator")
        return self.net(x.reshape(x.shape[0], -1)).squeeze(-1)


# --------------------------------------------------------------------------- DCGAN


def dcgan_plan(image_shape: Sequence[int]) -> tuple[int, int]:
    """``(start, stages)``: the side of the first feature map and the number of stride-2
    stages (``side = start * 2**stages``, ``4 <= start <= 7``) for a square image."""
    shape = checks.sizes("data_shape", image_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(
            f"DCGAN networks take square images (C, H, H), got data_shape "
            f"{shape}; use net='mlp' for other data."
        )
    side, stages = shape[1], 0
    while side % 2 == 0 and side > 7:
        side //= 2
        stages += 1
    if stages == 0 or not 4 <= side <= 7:
        raise ConfigError(
            f"DCGAN networks take images whose side is 4 to 7 times a power of two "
            f"(28, 32, 64, ...), got {shape[1]}x{shape[2]}."
        )
    return side, stages


def default_width(image_shape: Sequence[int], part: str) -> int:
    """The default base width: 64 (28x28, 32x32 generator), 32 (32x32 discriminator, the
    Flow-GAN thesis's), 128 (64x64 and larger: Radford et al.'s 1024 x 4 x 4 start)."""
    side = tuple(image_shape)[-1]
    if side >= 64:
        return 128
    if side >= 32 and part == "discriminator":
        return 32
    return 64


class DCGANGenerator(nn.Module):
    """``z (B, z_dim) -> FC -> (width * 2**(stages-1), s, s) -> transposed convs -> image``.

    Each fractionally-strided convolution (kernel 4, stride 2, padding 1) doubles the side
    and halves the channels, with batch norm and ReLU; the last one gives the image's
    channels and no activation.

    Args:
        image_shape: ``(C, H, H)``; see :func:`dcgan_plan`.
        z_dim: noise size (100 in Radford et al.).
        width: channels of the last hidden feature map (default :func:`default_width`).
    """

    def __init__(self, image_shape: Sequence[int], z_dim: int = 100, width: int | None = None):
        super().__init__()
        self.image_shape = checks.sizes("image_shape", image_shape)
        self.z_dim = checks.positive_int("z_dim", z_dim)
        start, stages = dcgan_plan(self.image_shape)
        width = checks.positive_int(
            "width", width if width is not None else default_width(self.image_shape, "generator")
        )
        channels = width * 2 ** (stages - 1)
        self.start = (channels, start, start)
        self.project = nn.Sequential(
            nn.Linear(z_dim, channels * start * start, bias=False),
            nn.BatchNorm1d(channels * start * start),
            nn.ReLU(),
        )
        layers = []
        for i in range(stages):
            last = i == stages - 1
            out = self.image_shape[0] if last else channels // 2
            layers.append(nn.ConvTranspose2d(channels, out, 4, 2, 1, bias=last))
            if not last:
                layers += [nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise DataError(
                f"the generator takes noise of shape (B, {self.z_dim}), got {tuple(z.shape)}."
            )
        return self.net(self.project(z).reshape((z.shape[0],) + self.start))


class DCGANDiscriminator(nn.Module):
    """``image -> strided convs -> logits (B,)``.

    Each convolution (kernel 4, stride 2, padding 1) halves the side and doubles the
    channels, from ``width``; LeakyReLU 0.2 after each, normalization after each but the
    first; a last convolution over the whole ``s x s`` map (a fully connected layer of
    size 1) gives the logit.

    Args:
        image_shape: ``(C, H, H)``; see :func:`dcgan_plan`.
        width: channels of the first feature map (default :func:`default_width`).
        norm: ``batch`` (DCGAN), ``layer`` or ``none`` (critics with a gradient penalty).
        value_range: the range inputs must lie in (``None``: unchecked).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        width: int | None = None,
        norm: str = "batch",
        value_range: tuple[float, float] | None = (-1.0, 1.0),
    ):
        super().__init__()
        self.image_shape = checks.sizes("image_shape", image_shape)
        start, stages = dcgan_plan(self.image_shape)
        width = checks.positive_int(
            "width",
            width if width is not None else default_width(self.image_shape, "discriminator"),
        )
        _check_norm(norm)
        self.value_range = tuple(value_range) if value_range is not None else None
        layers, channels = [], self.image_shape[0]
        for i in range(stages):
            out = width * 2**i
            layers.append(nn.Conv2d(channels, out, 4, 2, 1, bias=False))
            if i > 0:
                layers.append(_norm2d(norm, out))
            layers.append(nn.LeakyReLU(0.2))
            channels = out
        layers.append(nn.Conv2d(channels, 1, start, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.image_shape, self.value_range, "the discriminator")
        return self.net(x).reshape(x.shape[0])


# --------------------------------------------------------------------------- builders


@GAN_NETS.register("mlp")
def mlp_nets(
    data_shape: Sequence[int],
    z_dim: int,
    *,
    g_hidden: Sequence[int] | None = None,
    d_hidden: Sequence[int] | None = None,
    d_norm: str | None = None,
    value_range: tuple[float, float] | None = None,
    **unused,
):
    """``(MLPGenerator, MLPDiscriminator)``; the MLP discriminator has no norm layers."""
    _reject(unused, "mlp")
    if d_norm not in (None, "none"):
        raise ConfigError(
            f"the MLP discriminator has no normalization layers; d_norm={d_norm!r} "
            f"needs net='dcgan' (or leave it unset)."
        )
    g = MLPGenerator(data_shape, z_dim, **({} if g_hidden is None else {"hidden": g_hidden}))
    d = MLPDiscriminator(
        data_shape, value_range=value_range, **({} if d_hidden is None else {"hidden": d_hidden})
    )
    return g, d


@GAN_NETS.register("dcgan")
def dcgan_nets(
    data_shape: Sequence[int],
    z_dim: int,
    *,
    g_width: int | None = None,
    d_width: int | None = None,
    d_norm: str | None = None,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    **unused,
):
    """``(DCGANGenerator, DCGANDiscriminator)``; ``d_norm`` defaults to batch norm."""
    _reject(unused, "dcgan")
    return (
        DCGANGenerator(data_shape, z_dim, g_width),
        DCGANDiscriminator(data_shape, d_width, d_norm or "batch", value_range),
    )


def _reject(unused: dict, net: str) -> None:
    given = sorted(k for k, v in unused.items() if v is not None)
    if given:
        raise ConfigError(f"net={net!r} takes no setting {', '.join(given)}.")


__all__ = [
    "GAN_NETS",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
    "check_input",
    "dcgan_nets",
    "dcgan_plan",
    "default_width",
    "inputs_checked",
    "mlp_nets",
]
