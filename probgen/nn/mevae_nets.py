"""Networks and tensor operations of the multi-entity VAE (plain PyTorch, no Pyro inside).

* :class:`CandidateEncoder`: a convolutional network from a scene to a grid of
  candidate entities, each grid location a diagonal Gaussian over one entity's latent.
* :func:`gaussian_kl` and :func:`select_topk_by_kl`: the KL divergence of each
  candidate from N(0, I) and the selection of the K largest (Nash et al. 2017,
  "The Multi-Entity Variational Autoencoder").
* :class:`EntityDecoder`: one entity's latent -> its ink probability on the canvas
  (a glimpse drawn by an MLP, placed by a spatial transformer, scaled by presence).
* :data:`COMPOSITIONS`: how the entity renders make one image (``noisy_or``, the
  default: the renders add in ``log(1 - p)`` space; ``max``: the pixel-wise maximum).

An entity's latent is laid out as ``[what (what_dim) | where (2) | presence (1)]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from probgen import checks
from probgen.errors import ConfigError
from probgen.nn.mlp import ACTIVATIONS, MLP
from probgen.registry import Registry

WHERE_DIM = 2
PRESENCE_DIM = 1
_EPS = 1e-6


def gaussian_kl(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``KL(N(loc, diag(scale^2)) || N(0, I))`` over the last dimension."""
    return 0.5 * (loc.pow(2) + scale.pow(2) - 1.0).sum(-1) - scale.log().sum(-1)


def select_topk_by_kl(
    loc: torch.Tensor, scale: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``k`` candidates farthest (in KL) from the standard normal prior.

    Args:
        loc: candidates' Gaussian means, ``(B, M, D)``.
        scale: candidates' Gaussian standard deviations, ``(B, M, D)``.
        k: candidates to keep (``1 <= k <= M``).

    Returns:
        ``(indices (B, k), loc (B, k, D), scale (B, k, D), kl (B, M))``: the kept
        candidates in decreasing order of KL, their parameters, and every candidate's
        KL. The choice of indices is not differentiable (it is piecewise constant in
        the encoder's weights); the kept parameters are gathered, so gradients reach
        exactly the kept candidates' outputs.
    """
    if loc.dim() != 3 or loc.shape != scale.shape:
        raise ConfigError(
            f"loc and scale must both be (B, M, D), got {tuple(loc.shape)} and "
            f"{tuple(scale.shape)}."
        )
    m = loc.shape[1]
    k = checks.int_in_range("k", k, 1, m, hint=f"at most the number of candidates, {m}")
    kl = gaussian_kl(loc, scale)
    idx = kl.detach().topk(k, dim=1).indices
    gather = idx.unsqueeze(-1).expand(-1, -1, loc.shape[-1])
    return idx, loc.gather(1, gather), scale.gather(1, gather), kl


def coordinate_channels(batch: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """Two channels holding each pixel's (row, column) in [-1, 1]: ``(B, 2, H, W)``."""
    rows = torch.linspace(-1, 1, height, device=like.device, dtype=like.dtype)
    cols = torch.linspace(-1, 1, width, device=like.device, dtype=like.dtype)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), 0)
    return grid.unsqueeze(0).expand(batch, -1, -1, -1)


def _canvas_grid(size: int, like: torch.Tensor) -> torch.Tensor:
    """Pixel centres of a ``size x size`` canvas as (x, y) in [-1, 1], ``(1, size, size, 2)``
    (``affine_grid`` of the identity, ``align_corners=False``)."""
    c = (torch.arange(size, device=like.device, dtype=like.dtype) * 2 + 1) / size - 1
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs, ys], -1).unsqueeze(0)


def where_to_centre(z_where: torch.Tensor, reach: float) -> torch.Tensor:
    """Map ``z_where ~ N(0, I)`` to a glimpse centre uniform on ``[-reach, reach]^2``
    (canvas coordinates, (x, y)): ``reach * (2 Phi(z) - 1)``."""
    return reach * (2 * torch.special.ndtr(z_where) - 1)


def centre_to_where(centre: torch.Tensor, reach: float) -> torch.Tensor:
    """The inverse of :func:`where_to_centre` (centres clamped inside the open range)."""
    u = (centre / reach).clamp(-1 + 1e-6, 1 - 1e-6)
    return torch.special.ndtri((u + 1) / 2)


class CandidateEncoder(nn.Module):
    """Scene ``(B, C, H, W)`` -> a ``G x G`` grid of Gaussian candidates.

    Stride-2 convolutions (4x4 kernels) take the canvas down to the grid, with two
    coordinate channels appended to the input so that a candidate knows where on the
    canvas it sits; a 3x3 convolution on the grid lets neighbouring candidates see
    each other (a digit straddling two cells is claimed by one of them;
    ``context_layers`` of them); 1x1
    convolutions give each location's ``loc`` and ``scale``. No candidate is anchored
    at its cell: a background candidate can give the prior itself (KL 0), and a
    candidate's ``where`` is whatever the network reads from the coordinates it sees
    (an anchor at the cell's centre would give the border cells a KL of several nats
    for their position alone, and the top-K rule would keep them first).

    Returns ``(loc (B, G*G, D), scale (B, G*G, D))``, candidates in row-major order.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (16, 32, 64, 64),
        hidden: int = 128,
        activation: str = "relu",
        context_layers: int = 2,
    ):
        super().__init__()
        c, h, w = image_shape
        f = 2 ** len(channels)
        context_layers = checks.nonnegative_int("context_layers", context_layers)
        if h != w or h % f:
            raise ConfigError(
                f"the candidate encoder halves a square canvas {len(channels)} "
                f"times, so its side must be divisible by {f}; got {h}x{w}."
            )
        act = ACTIVATIONS[activation]
        layers, prev = [], c + 2
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), act()]
            prev = ch
        for _ in range(context_layers):
            layers += [nn.Conv2d(prev, hidden, 3, padding=1), act()]
            prev = hidden
        self.body = nn.Sequential(*layers)
        # A Gaussian per cell of the grid, not probgen.nn.heads.GaussianHead: 1x1
        # convolutions over the feature map and a softplus scale (floored at 1e-4), the
        # parametrization the MEVAE's results were measured with.
        self.loc = nn.Conv2d(prev, latent_dim, 1)
        self.log_scale = nn.Conv2d(prev, latent_dim, 1)
        self.grid = h // f
        self.image_shape = (c, h, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.reshape((x.shape[0],) + self.image_shape)
        h = self.body(torch.cat([x, coordinate_channels(x.shape[0], *x.shape[2:], x)], 1))
        loc = self.loc(h).flatten(2).transpose(1, 2)  # (B, G*G, D)
        scale = F.softplus(self.log_scale(h)).flatten(2).transpose(1, 2) + 1e-4
        return loc, scale


class EntityDecoder(nn.Module):
    """One entity's latent -> its ink probability on the canvas, ``(..., H, W)``.

    ``what`` goes through an MLP to a ``glimpse x glimpse`` window of pixel
    probabilities; ``where`` places the window's centre (uniform over the
    positions that keep it inside the canvas under the prior, see
    :func:`where_to_centre`) with a spatial transformer (bilinear, zero outside);
    ``presence`` scales it by ``sigmoid(a * presence + b)`` (``a, b`` learned), so an
    entity can draw nothing. The decoder is shared by every entity.
    """

    def __init__(
        self,
        what_dim: int,
        canvas: int,
        glimpse: int = 28,
        hidden: Sequence[int] = (256, 512),
        activation: str = "relu",
    ):
        super().__init__()
        if glimpse > canvas:
            raise ConfigError(f"the glimpse ({glimpse} pixels) must fit on the canvas ({canvas}).")
        self.what_dim, self.canvas, self.glimpse = what_dim, canvas, glimpse
        self.reach = 1.0 - glimpse / canvas
        self.net = MLP([what_dim, *hidden, glimpse * glimpse], activation)
        with torch.no_grad():
            self.net[-1].bias.fill_(-2.0)  # start near MNIST's mean ink, not a grey square
        self.presence = nn.Linear(1, 1)
        with torch.no_grad():
            self.presence.weight.fill_(3.0)
            self.presence.bias.zero_()

    def split(self, z: torch.Tensor):
        w0 = self.what_dim
        return z[..., :w0], z[..., w0 : w0 + WHERE_DIM], z[..., w0 + WHERE_DIM :]

    def alpha(self, z: torch.Tensor) -> torch.Tensor:
        """Each entity's presence in (0, 1), ``z.shape[:-1]``."""
        return torch.sigmoid(self.presence(self.split(z)[2])).squeeze(-1)

    def centre(self, z: torch.Tensor) -> torch.Tensor:
        """Each entity's glimpse centre in canvas coordinates (x, y) in [-1, 1]."""
        return where_to_centre(self.split(z)[1], self.reach)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        what, _, _ = self.split(flat)
        n, g, c = flat.shape[0], self.glimpse, self.canvas
        window = torch.sigmoid(self.net(what)).view(n, 1, g, g)
        # output pixel u (canvas coordinates) reads the window at (u - centre) * canvas / glimpse
        # (a translation and a fixed zoom: affine_grid's batched matrix product is not needed)
        grid = (_canvas_grid(c, flat) - self.centre(flat).view(n, 1, 1, 2)) * (c / g)
        ink = F.grid_sample(
            window, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        ink = ink.view(n, c, c) * self.alpha(flat).view(n, 1, 1)
        return ink.view(*lead, c, c)


COMPOSITIONS: Registry = Registry("composition")


@COMPOSITIONS.register("noisy_or")
def noisy_or_logits(
    ink: torch.Tensor, background_logit: torch.Tensor, dim: int = -3
) -> torch.Tensor:
    """Compose entity renders by a noisy OR, as Bernoulli logits.

    A pixel is off only if the background and every entity leave it off:
    ``1 - p = sigmoid(-b) * prod_k (1 - p_k)``, i.e. the renders add in
    ``log(1 - p)`` space. Returns ``log p - log(1 - p)`` with the entity dimension
    ``dim`` of ``ink`` (probabilities in [0, 1]) reduced.
    """
    log_off = F.logsigmoid(-background_logit) + torch.log1p(-ink.clamp(max=1 - _EPS)).sum(dim)
    return torch.log(-torch.expm1(log_off)) - log_off


@COMPOSITIONS.register("max")
def max_logits(ink: torch.Tensor, background_logit: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Compose entity renders by their pixel-wise maximum (and the background's
    ``sigmoid(b)``), as Bernoulli logits: each pixel is the strongest entity's, and only
    that entity gets its gradient."""
    p = torch.maximum(ink.amax(dim), torch.sigmoid(background_logit)).clamp(_EPS, 1 - _EPS)
    return torch.log(p) - torch.log1p(-p)
