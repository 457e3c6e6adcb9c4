"""Flow-GAN: a normalizing flow trained by likelihood and an adversarial loss at once.

A flow is a generator whose likelihood is exact (Grover, Dhar & Ermon 2018, "Flow-GAN:
Combining Maximum Likelihood and Adversarial Learning in Generative Models"): its
inverse pass ``x = f(z)``, ``z ~ N(0, I)``, draws samples differentiably, so a
discriminator can judge them, while ``log p(x)`` keeps its change-of-variables value.
The generator's loss mixes the two (the thesis "document 001", its chapter 3)::

    hybrid:  (1 - adv_weight) * bits/dim(x) + adv_weight * L_G(D(f(z)))
    grover:  L_G(D(f(z))) + like_reg * bits/dim(x)            (like_reg >= 0, unbounded)

where ``bits/dim`` is the flow's own training loss in bits per dimension (the negative
ELBO of :class:`~probgen.models.flow.FlowModel` through the spine's
:class:`~probgen.train.ELBOLoss`, every preprocessing Jacobian counted; for DenseFlow a
bound) and ``L_G`` the generator loss of the chosen formulation
(:mod:`probgen.infer.adversarial`: non-saturating ``-log D(f(z))`` by default, or the
WGAN-GP critic's ``-D(f(z))`` that Grover et al. use). The two terms are added raw, in
their own units (bits/dim about 1-8, cross-entropy about 0.7), as the thesis does.

How 001 is read (its section 3.2.2, see SPEC-adversarial section 6):

* its code weights the *likelihood* by ``alpha`` while its table's "regularisation
  factor" and its conclusion are the *adversarial* share; ``adv_weight`` is the table's
  factor, ``adv_weight = 1 - (001 code's alpha)``: 0 is plain maximum likelihood (no
  discriminator is trained), 1 is a purely adversarial flow;
* per batch: one generator step on the hybrid loss, then one discriminator step on the
  real batch and the *same* fakes, detached (``order="generator_first"``; the missing
  ``detach`` of its code is added); ``order="discriminator_first"`` runs Goodfellow's
  Algorithm 1 order (k discriminator steps on fresh batches and fakes, then the generator);
* label smoothing is one-sided: real target ``1 - label_smoothing``, fake target 0 (its
  fake-side "smoothing" ``fake_label * (1 - ls / 2)`` is a no-op with ``fake_label = 0``);
* samples are drawn at temperature 1; nothing else is said.

The flow stays a Pyro model (:meth:`FlowGAN.model` is the flow's, with sample and latent
sites), so ``Predictive``, traces and ``probgen.load`` work; the discriminator is a plain
network that only the training phases see.

    fg = FlowGAN("realnvp", event_shape=(1, 28, 28), adv_weight=0.5, discriminator="dcgan")
    fg.initialize(x_batch)
    probgen.fit(fg, train, val, epochs=5)     # val_loss: bits/dim
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from probgen import checks
from probgen.errors import ConfigError
from probgen.infer.adversarial import adversarial_loss, adversarial_phases, check_k, frozen
from probgen.infer.likelihood import bits_per_dim
from probgen.infer.phases import Phase
from probgen.infer.steps import ELBOLoss
from probgen.models.checks import CheckedStep, loop_checked
from probgen.models.flow import FlowModel
from probgen.models.registry import MODELS
from probgen.nn.flowgan_nets import FLOWGAN_DISCRIMINATORS, check_image_shape

ORDERS = ("generator_first", "discriminator_first")


@MODELS.register("flowgan")
class FlowGAN(nn.Module):
    """A flow (the generator) and a discriminator, trained by ``probgen.fit`` in phases.

    Args:
        flow: a flow builder name (``nice``, ``realnvp``, ``glow``, ``denseflow``) or a
            :class:`~probgen.models.flow.FlowModel` of images.
        event_shape: ``(C, H, H)`` with ``H`` 28 or 32 (when ``flow`` is a name).
        adv_weight: the adversarial share ``lambda`` in [0, 1] of the hybrid loss
            (001's table's factor; default 0.5).
        like_reg: Grover et al.'s form instead: the adversarial loss plus ``like_reg``
            times bits/dim (``adv_weight`` must then be left unset).
        discriminator: ``dcgan`` or ``resnet18`` (:mod:`probgen.nn.flowgan_nets`).
        loss: the adversarial formulation (:data:`probgen.infer.ADVERSARIAL_LOSSES`):
            ``non_saturating`` (001), ``minimax``, ``wgan_gp`` (Grover et al.), ``hinge``.
        k: discriminator steps per generator step (default: the loss's, 5 for WGAN-GP).
        label_smoothing: one-sided: the real target becomes ``1 - label_smoothing``.
        gp_weight: weight of WGAN-GP's gradient penalty (default: the loss's, 10).
        d_width: the DCGAN discriminator's base width (default 32, the thesis's).
        d_norm: ``batch`` or ``layer`` (default: ``layer`` with a gradient penalty).
        order: ``generator_first`` (001) or ``discriminator_first`` (Algorithm 1).
        alpha: the flow's logit preprocessing margin (see ``FlowModel``).
        num_levels: the images' grey levels (see ``FlowModel``).
        dequantization: how the levels are dequantized (see ``FlowModel``).
        **flow_kwargs: builder settings (``depth``, ``hidden``, ``levels``, ...).
    """

    def __init__(
        self,
        flow: str | FlowModel = "realnvp",
        event_shape: Sequence[int] = (1, 28, 28),
        adv_weight: float | None = None,
        like_reg: float | None = None,
        discriminator: str = "dcgan",
        loss: str = "non_saturating",
        k: int | None = None,
        label_smoothing: float = 0.0,
        gp_weight: float | None = None,
        d_width: int | None = None,
        d_norm: str | None = None,
        order: str = "generator_first",
        alpha: float = 0.05,
        num_levels: int | None = -1,
        dequantization: str | None = None,
        **flow_kwargs: Any,
    ):
        super().__init__()
        if isinstance(flow, FlowModel):
            if flow_kwargs:
                raise ConfigError(
                    f"flow settings {sorted(flow_kwargs)} apply only when the flow "
                    f"is given by name."
                )
            self.flow_model = flow
        elif isinstance(flow, str):
            check_image_shape(event_shape, "Flow-GAN")
            self.flow_model = FlowModel(
                flow,
                event_shape,
                alpha=alpha,
                num_levels=num_levels,
                dequantization=dequantization,
                **flow_kwargs,
            )
        else:
            raise ConfigError(
                f"flow must be a flow builder name or a FlowModel, got {type(flow).__name__}."
            )
        shape = check_image_shape(self.flow_model.event_shape, "Flow-GAN")
        if self.flow_model.preprocess != "logit" and self.flow_model.num_levels is None:
            raise ConfigError(
                "Flow-GAN models images in [0, 1]: give the flow logit "
                "preprocessing or a number of grey levels."
            )
        if like_reg is not None:
            if adv_weight is not None:
                raise ConfigError(
                    "give either adv_weight (the hybrid (1 - w) bits/dim + w "
                    "adversarial) or like_reg (Grover et al.: adversarial + "
                    "like_reg bits/dim), not both."
                )
            self.form = "grover"
            self.like_reg = checks.nonnegative_float("like_reg", like_reg)
            self.adv_weight = None
            self._like_w, self._adv_w = self.like_reg, 1.0
        else:
            self.form = "hybrid"
            self.adv_weight = checks.probability(
                "adv_weight", 0.5 if adv_weight is None else adv_weight
            )
            self.like_reg = None
            self._like_w, self._adv_w = 1.0 - self.adv_weight, self.adv_weight
        self.order = checks.choice("order", order, ORDERS)
        self.spec = adversarial_loss(loss)
        self.k = check_k(self.spec.k if k is None else k)
        self.label_smoothing, self.gp_weight = label_smoothing, gp_weight
        penalty = self.spec.gradient_penalty if gp_weight is None else gp_weight
        self.disc_kind = discriminator
        self.discriminator = FLOWGAN_DISCRIMINATORS.get(discriminator)(
            shape, width=d_width, norm=d_norm or ("layer" if penalty else "batch"), value_range=None
        )  # a flow's samples may leave [0, 1] slightly (logit margin)
        self._reuse: torch.Tensor | None = None
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        # the settings checks of the game (smoothing, penalty)
        adversarial_phases(
            self.discriminator,
            self.flow_model,
            self.real,
            self.real,
            self.spec,
            k=self.k,
            label_smoothing=label_smoothing,
            gp_weight=gp_weight,
        )

    def extra_repr(self) -> str:
        weight = (
            f"adv_weight={self.adv_weight}"
            if self.form == "hybrid"
            else f"like_reg={self.like_reg}"
        )
        return (
            f"{weight}, discriminator={self.disc_kind}, loss={self.spec.name}, k={self.k}, "
            f"label_smoothing={self.label_smoothing}, order={self.order}"
        )

    # -- the flow ------------------------------------------------------------------------
    @property
    def flow(self) -> Any:
        return self.flow_model.flow

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.flow_model.event_shape

    @property
    def num_dims(self) -> int:
        return self.flow_model.num_dims

    @property
    def exact(self) -> bool:
        """Whether bits/dim is exact (False for DenseFlow and dequantization models: a bound)."""
        return self.flow_model.exact and self.flow_model.dequantization is None

    @property
    def device(self) -> torch.device:
        return self.flow._anchor.device

    def check_data(self, x: torch.Tensor, *rest: Any) -> None:
        self.flow_model.check_data(x)

    def initialize(self, x: torch.Tensor) -> FlowGAN:
        """The flow's data-dependent initialisation (ActNorm) from one batch."""
        self.flow_model.initialize(x)
        return self

    def model(
        self,
        x: torch.Tensor | None = None,
        *rest: Any,
        size: int | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """The flow's Pyro model (sites ``x`` and ``z``): scores ``x``, or draws ``size``
        examples (1 without either)."""
        if x is None:
            return self.flow_model.model(
                None, num_samples=1 if size is None else size, temperature=temperature
            )
        return self.flow_model.model(x, *rest)

    def guide(self, x: torch.Tensor | None = None, *rest: Any, **kwargs: Any) -> Any:
        return self.flow_model.guide(x, *rest, **kwargs)

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images from the flow (no gradients), clamped to [0, 1]."""
        return self.flow_model.sample(n, temperature)

    def bits_per_dim(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        return self.flow_model.bits_per_dim(x, num_samples)

    def evaluate_bits_per_dim(
        self, data: Any, batch_size: int = 500, num_samples: int = 1, progress: bool = False
    ) -> float:
        return self.flow_model.evaluate_bits_per_dim(data, batch_size, num_samples, progress)

    # -- the terms -----------------------------------------------------------------------
    def likelihood_term(self, batch: tuple) -> torch.Tensor:
        """The flow's own training loss in bits/dim, mean over the batch (differentiable):
        the negative ELBO of ``FlowModel`` (``log p(x)`` for an exact flow on continuous
        data) plus ``D log L``, over ``D log 2``."""
        nll = ELBOLoss(self.flow_model.model, self.flow_model.guide, "trace")(tuple(batch))
        return bits_per_dim(-nll, self.num_dims, self.flow_model.num_levels)

    def real(self, batch: tuple) -> torch.Tensor:
        """The batch's images, checked (their values outside the fit loop's steps over data
        the loop checked), in the discriminator's space [-1, 1]."""
        x = batch[0]
        self.flow_model.check_data(x, values=not loop_checked())
        return 2.0 * x - 1.0

    def fake(self, batch: tuple) -> torch.Tensor:
        """Images from the flow's inverse pass at temperature 1, one per example of the
        batch, differentiable in the flow's parameters, in [-1, 1] (up to the logit margin)."""
        self.flow.check_initialized()
        n = batch[0].shape[0]
        return 2.0 * self.flow_model.distribution(1.0).rsample((n,)) - 1.0

    def _d_fake(self, batch) -> torch.Tensor:
        reuse = self._reuse
        if reuse is not None and reuse.shape[0] == batch[0].shape[0]:
            return reuse
        return self.fake(batch)

    def _record(self, name: str, value: torch.Tensor) -> None:
        v = value.detach()
        self._sums[name] = self._sums[name] + v if name in self._sums else v
        self._counts[name] = self._counts.get(name, 0) + 1

    def pop_term_means(self) -> dict[str, float]:
        """Means of the generator loss's terms (``bpd``, ``adv``) since the last call."""
        out = {k: float(v) / self._counts[k] for k, v in self._sums.items()}
        self._sums, self._counts = {}, {}
        return out

    def generator_loss(self, batch: tuple, ctx: dict[str, Any] | None = None) -> torch.Tensor:
        """The flow's loss: the hybrid (or Grover's) sum; a term whose weight is 0 is not
        computed at all (no discriminator at ``adv_weight=0``, no likelihood at 1). Leaves
        the detached fakes in ``ctx["fake"]`` for the discriminator step that follows."""
        total = None
        if self._like_w:
            bpd = self.likelihood_term(batch)
            self._record("bpd", bpd)
            total = self._like_w * bpd
        if self._adv_w:
            x_fake = self.fake(batch)
            if ctx is not None:
                ctx["fake"] = x_fake.detach()
            with frozen(self.discriminator):
                adv = self.spec.g_loss(self.discriminator(x_fake))
            self._record("adv", adv)
            total = self._adv_w * adv if total is None else total + self._adv_w * adv
        return total

    # -- the phases ----------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        """``[G, D]`` (``generator_first``) or ``[D, G]``; only ``G`` at ``adv_weight=0``.

        The discriminator phase is :func:`probgen.infer.adversarial.adversarial_phases`'s
        (its loss, label smoothing, gradient penalty, k repeats on fresh batches); its
        first repeat after a generator step judges that step's fakes, detached."""
        g_phase = Phase(
            "G",
            self.generator_loss,
            params=self.flow_model,
            optim_kwargs={"betas": tuple(self.spec.betas)},
            player="generator",
        )
        if not self._adv_w:
            return [g_phase]
        d_phase, _ = adversarial_phases(
            self.discriminator,
            self.flow_model,
            self.real,
            self._d_fake,
            self.spec,
            k=self.k,
            label_smoothing=self.label_smoothing,
            gp_weight=self.gp_weight,
        )
        d_loss = d_phase.loss

        def discriminator_loss(batch, ctx):
            self._reuse = ctx.pop("fake", None) if ctx is not None else None
            try:
                return d_loss(batch, ctx)
            finally:
                self._reuse = None

        d_phase.loss = discriminator_loss
        return [g_phase, d_phase] if self.order == "generator_first" else [d_phase, g_phase]

    def eval_loss(self, batch: tuple) -> torch.Tensor:
        """Validation loss: the flow's bits/dim (a bound for DenseFlow)."""
        return self.likelihood_term(batch)

    def fit_step(self, config: Any) -> CheckedStep:
        """``PhasedStep(self, self.phases(), eval_loss=bits/dim)`` for ``probgen.fit``."""
        return CheckedStep(self, self.phases(), eval_loss=self.eval_loss)


__all__ = ["ORDERS", "FlowGAN"]
