"""The multi-entity VAE (Nash et al. 2017, "The Multi-Entity Variational Autoencoder").

A scene is explained by ``K`` entities, each with its own latent vector; the guide
proposes a grid of candidate entities and keeps the ``K`` most informative.

Generative model (``model``), for each scene in the data plate::

    z_k ~ N(0, I),  k = 1..K           (plate "entities"; z_k = [what | where | presence])
    p_k = render(z_k)                   one shared decoder per entity: an MLP draws
                                        `what` into a 28x28 glimpse of ink probabilities,
                                        a spatial transformer puts it at `where` (uniform
                                        over the canvas under the prior), and
                                        sigmoid(a * presence + b) scales it
    x ~ Bernoulli(1 - sigmoid(-c) prod_k (1 - p_k))   per pixel

The composition is a **noisy OR** (setting ``composition``): a pixel is off only if
the background (a learned logit ``c``) and every entity leave it off, i.e. the entity
renders *add in ``log(1 - p)`` space*. Every entity's render gets gradient
everywhere it draws, an entity that draws nothing changes nothing, and each pixel's
owner is the entity with the most ink there. Two entities drawing the same stroke
raise its probability rather than compete for it; what stops such duplicates is their
KL cost. (``composition="max"`` takes the pixel-wise maximum instead.)

Guide (``guide``): a convolutional encoder (coordinate channels appended) maps the
scene to a ``G x G`` grid of candidates, each location a diagonal Gaussian over one
entity's latent. For every candidate the guide computes ``KL(q_m || N(0, I))`` and
keeps the ``K`` largest (:func:`~probgen.nn.mevae_nets.select_topk_by_kl`), in
decreasing order of KL, as ``q(z_1..K | x)``.

**Unselected candidates and the KL term.** The selection is a deterministic function
of ``x``: the guide is the product of the ``K`` kept Gaussians, and the unselected
candidates are no latent variables of the model at all. They add nothing to the KL
term (equivalently: regard them as auxiliary variables whose posterior equals their
prior, KL = 0) and get no gradient through it; they are shaped only through the
weights they share with the kept ones. The ELBO is therefore the ordinary ELBO of the
``K``-entity model, a lower bound on its ``log p(x)`` that the importance-sampled
metrics of :mod:`probgen.metrics.likelihood` tighten. The prior and the composition
are exchangeable, so the posterior gives the ``K!`` orders of the entities equal mass;
the guide puts its mass on one order (by KL rank), so its ELBO, and its importance-
sampled NLL however many samples it takes, can sit up to ``log K!`` nats (3.2 for
``K = 4``) above what a guide spread over the orders would give. A plain VAE has no
such gap; a fixed-order guide (AIR's sequential one too) pays it.

Sites: ``z`` ``(B, K, D)`` in plates ``data`` (dim -2) and ``entities`` (dim -1);
``x`` the flattened scene, ``(B, 1, H*W)``; ``mean`` (deterministic) the composed
image's pixel probabilities, same shape. ``fit`` trains it with
``max_plate_nesting=2`` (:meth:`fit_step`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive
from torch import nn

from probgen import checks
from probgen.errors import ConfigError, DataError
from probgen.infer.steps import SVIStep
from probgen.models.checks import loop_checked
from probgen.models.likelihoods import BernoulliLikelihood
from probgen.models.registry import MODELS
from probgen.nn.mevae_nets import (
    COMPOSITIONS,
    PRESENCE_DIM,
    WHERE_DIM,
    CandidateEncoder,
    EntityDecoder,
    select_topk_by_kl,
)


@MODELS.register("mevae")
class MEVAE(nn.Module):
    """Multi-entity VAE on binary scenes, as a Pyro model/guide pair.

    Args:
        image_shape: ``(1, H, W)`` with ``H = W`` divisible by ``2 ** len(encoder_channels)``.
        num_entities: ``K``, entities per scene (at most the number of grid candidates).
        what_dim: size of each entity's appearance code; the entity's latent has
            ``what_dim + 3`` values (2 for its position, 1 for its presence).
        glimpse: side of the window an entity draws, in pixels.
        encoder_channels: channels of the encoder's stride-2 convolutions; the grid
            has side ``H / 2 ** len(encoder_channels)``.
        encoder_hidden: channels of the encoder's 3x3 convolution on the grid.
        decoder_hidden: hidden sizes of the glimpse MLP.
        activation: hidden activation of both networks.
        composition: how the entity renders make one image, a name in
            :data:`~probgen.nn.mevae_nets.COMPOSITIONS`: ``noisy_or`` (the default, above)
            or ``max`` (each pixel the strongest entity's).
        context_layers: 3x3 convolutions on the candidate grid (neighbours' context).
    """

    max_plate_nesting = 2  # data x entities (read by SVIStep when the model is fit as it is)

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 64, 64),
        num_entities: int = 4,
        what_dim: int = 12,
        glimpse: int = 28,
        encoder_channels: Sequence[int] = (16, 32, 64, 64),
        encoder_hidden: int = 128,
        decoder_hidden: Sequence[int] = (256, 512),
        activation: str = "relu",
        composition: str = "noisy_or",
        context_layers: int = 2,
    ):
        super().__init__()
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or image_shape[0] != 1:
            raise ConfigError(f"the MEVAE takes one-channel scenes (1, H, W), got {image_shape}.")
        num_entities = checks.positive_int("num_entities", num_entities)
        what_dim = checks.positive_int("what_dim", what_dim)
        glimpse = checks.positive_int("glimpse", glimpse)
        self.image_shape = image_shape
        self.num_entities, self.what_dim = num_entities, what_dim
        self.latent_dim = what_dim + WHERE_DIM + PRESENCE_DIM
        canvas = image_shape[1]
        self.decoder = EntityDecoder(what_dim, canvas, glimpse, tuple(decoder_hidden), activation)
        self.encoder = CandidateEncoder(
            image_shape,
            self.latent_dim,
            tuple(encoder_channels),
            encoder_hidden,
            activation,
            context_layers,
        )
        self.compose = COMPOSITIONS.get(composition)
        self.grid = self.encoder.grid
        if num_entities > self.grid**2:
            raise ConfigError(
                f"num_entities (K = {num_entities}) is larger than the encoder's grid of "
                f"{self.grid}x{self.grid} = {self.grid**2} candidates; lower K or use fewer "
                f"encoder_channels (a finer grid)."
            )
        self.background = nn.Parameter(torch.tensor(-4.0))  # logit of a pixel no entity inks
        self._likelihood = BernoulliLikelihood()

    def extra_repr(self) -> str:
        return (
            f"K={self.num_entities}, latent per entity={self.latent_dim} "
            f"(what {self.what_dim} + where {WHERE_DIM} + presence {PRESENCE_DIM}), "
            f"grid={self.grid}x{self.grid}"
        )

    # -- input checks -------------------------------------------------------------------
    @property
    def data_dim(self) -> int:
        return int(torch.Size(self.image_shape).numel())

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x):
            raise DataError(f"scenes must be a tensor, got {type(x).__name__}.")
        if x.dim() < 2 or x[0].numel() != self.data_dim:
            raise DataError(
                f"scenes of shape {tuple(x.shape)} do not fit this model, which takes scenes of "
                f"shape {self.image_shape} (batch first: "
                f"(B, {', '.join(map(str, self.image_shape))}) or (B, {self.data_dim}))."
            )
        return x.reshape(x.shape[0], -1)

    def check_data(self, x: torch.Tensor, *rest: torch.Tensor) -> None:
        """Scenes of this model's shape with binary pixels (a clear error otherwise); the
        fit loop checks a whole data set so once, and the model then skips its per-batch
        check inside the loop's steps."""
        self._likelihood.check(self._flat(x))

    # -- the pieces -----------------------------------------------------------------------
    def candidates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every candidate's Gaussian: ``(loc, scale)``, each ``(B, G*G, D)``."""
        return self.encoder(self._flat(x))

    def select(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(indices (B, K), loc (B, K, D), scale (B, K, D), kl (B, G*G))``: the kept
        candidates (largest KL first) and every candidate's KL."""
        loc, scale = self.candidates(x)
        return select_topk_by_kl(loc, scale, self.num_entities)

    def entity_ink(self, z: torch.Tensor) -> torch.Tensor:
        """Each entity's ink probability ``(..., K, H, W)`` for latents ``(..., K, D)``."""
        return self.decoder(z)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of the composed scene, ``(..., H*W)``, for ``(..., K, D)``."""
        out = self.compose(self.entity_ink(z), self.background, dim=-3)
        return out.flatten(-2)

    # -- Pyro model and guide ----------------------------------------------------------------
    def model(self, x: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        pyro.module("mevae", self)
        if x is not None:
            flat = self._flat(x)
            if not loop_checked():
                self._likelihood.check(flat)
            n, obs = flat.shape[0], flat.unsqueeze(-2)
        else:
            if size is None:
                raise ConfigError("to generate, pass size (how many scenes).")
            n, obs = checks.positive_int("size", size), None
        p = self.background
        with pyro.plate("data", n, dim=-2):
            with pyro.plate("entities", self.num_entities, dim=-1):
                prior = dist.Normal(p.new_zeros(()), p.new_ones(())).expand([self.latent_dim])
                z = pyro.sample("z", prior.to_event(1))
            logits = self.logits(z).unsqueeze(-2)  # (..., B, 1, H*W)
            pyro.deterministic("mean", torch.sigmoid(logits), event_dim=1)
            return pyro.sample(
                "x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=obs
            )

    def guide(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        pyro.module("mevae", self)
        _, loc, scale, _ = self.select(x)
        with (
            pyro.plate("data", loc.shape[0], dim=-2),
            pyro.plate("entities", self.num_entities, dim=-1),
        ):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def fit_step(self, config: Any) -> SVIStep:
        """The SVI step :func:`probgen.fit` trains this model with: the run's objective
        and particles, two plates (scenes and entities)."""
        return SVIStep(
            self,
            loss=config.objective,
            num_particles=config.num_particles,
            eval_particles=config.eval_particles,
            max_plate_nesting=2,
        )

    # -- using a trained model ---------------------------------------------------------------
    @torch.no_grad()
    def decompose(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The scene explained by its posterior means.

        Returns ``indices`` (B, K) the kept candidates (row-major on the grid, largest KL
        first); ``kl`` (B, G, G) every candidate's KL; ``z`` (B, K, D) the kept means;
        ``ink`` (B, K, H, W) each entity's ink probability; ``presence`` (B, K);
        ``centres`` (B, K, 2) glimpse centres (x, y) in [-1, 1]; ``reconstruction``
        (B, 1, H, W) the composed image's pixel probabilities.
        """
        idx, loc, _, kl = self.select(x)
        ink = self.entity_ink(loc)
        recon = torch.sigmoid(self.compose(ink, self.background, dim=-3))
        return {
            "indices": idx,
            "kl": kl.view(-1, self.grid, self.grid),
            "z": loc,
            "ink": ink,
            "presence": self.decoder.alpha(loc),
            "centres": self.decoder.centre(loc),
            "reconstruction": recon.unsqueeze(1),
        }

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities of the scene decoded from the kept posterior means."""
        return self.decompose(x)["reconstruction"]

    @torch.no_grad()
    def generate(self, n: int) -> dict[str, torch.Tensor]:
        """``n`` scenes from the prior, drawn with :class:`pyro.infer.Predictive`:
        ``z`` (n, K, D), ``ink`` (n, K, H, W), ``mean`` (n, 1, H, W)."""
        pred = Predictive(self.model, num_samples=1, return_sites=("z", "mean"))
        out = pred(None, size=n)
        z = out["z"][0]
        mean = out["mean"][0].reshape((n,) + self.image_shape)
        return {"z": z, "ink": self.entity_ink(z), "mean": mean}

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Pixel probabilities of ``n`` scenes drawn from the prior, ``(n, 1, H, W)``."""
        return self.generate(n)["mean"]
