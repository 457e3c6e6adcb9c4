"""Generative adversarial networks as Pyro models (Goodfellow et al. 2014, "Generative
Adversarial Nets"; Radford et al. 2016, DCGAN).

Generative model (``model``), for each example in the data plate::

    z ~ p(z)                  noise: N(0, I) or U(0, 1)^z_dim, a sample site
    x = G(z)                  the generator's output, a deterministic site

so ``pyro.infer.Predictive(gan.model, num_samples=S)(size=n)`` draws samples and a trace
shows the latent. A GAN has no likelihood and no guide: it is trained as a two-player
game whose losses are plain PyTorch (:mod:`probgen.infer.adversarial`), run by the fit
loop as phases (``fit_step``): ``k`` discriminator steps, each on a fresh batch of data and
fresh noise, then one generator step (Algorithm 1)::

    gan = GAN(net="dcgan", loss="non_saturating")
    probgen.fit(gan, splits["train"], epochs=5, patience=None, restore_best=False)
    images = gan.sample(64)                     # (64, 1, 28, 28) in [0, 1]

Formulations (``loss``): ``minimax``, ``non_saturating`` (the default), ``wgan_gp``,
``hinge``; one-sided ``label_smoothing`` for the cross-entropy two.

Data live in ``data_range`` (``(0, 1)`` for images; ``None`` for unbounded data such as
the 1-D toy). The networks work in [-1, 1]: the discriminator sees data mapped there, and
the generator's output passes through ``tanh`` (or ``2 sigmoid - 1``) before it is mapped
back, so the deterministic site and :meth:`GAN.sample` are in the data's own range.

The generator and discriminator are not registered in Pyro's param store: the game's
phases name the parameters each player optimises, and the model uses the generator as a
fixed function (as latent inversion by MCMC or optimisation wants it).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from probgen import checks
from probgen.errors import ConfigError, DataError
from probgen.infer.adversarial import adversarial_loss, adversarial_phases, check_k
from probgen.infer.phases import Phase
from probgen.models.checks import CheckedStep, loop_checked
from probgen.models.registry import MODELS
from probgen.nn.gan_nets import GAN_NETS, check_input, inputs_checked

PRIORS = ("normal", "uniform")
OUTPUTS = ("tanh", "sigmoid", "identity")


@MODELS.register("gan")
class GAN(nn.Module):
    """A GAN: a Pyro model of ``x = G(z)`` and a discriminator, trained by ``probgen.fit``.

    Args:
        data_shape: shape of one example: ``(1, 28, 28)`` (MNIST), ``(3, 32, 32)``,
            ``(3, 64, 64)``, or ``(1,)`` for the 1-D toy.
        z_dim: noise size.
        net: a name in :data:`probgen.nn.gan_nets.GAN_NETS` (``mlp``, ``dcgan``).
        loss: a name in :data:`probgen.infer.adversarial.ADVERSARIAL_LOSSES`.
        k: discriminator steps per generator step (default: the loss's, 5 for WGAN-GP,
            else 1).
        label_smoothing: one-sided label smoothing (real label ``1 - label_smoothing``).
        gp_weight: weight of WGAN-GP's gradient penalty (default: the loss's, 10).
        r1_weight: ``gamma`` of the R1 penalty on the discriminator's gradient at the data
            (Mescheder et al. 2018; 0: none).
        prior: ``normal`` (N(0, I)) or ``uniform`` (U(0, 1) per coordinate).
        output: the generator's output activation: ``tanh``, ``sigmoid`` or ``identity``
            (unbounded data only).
        data_range: ``(low, high)`` of the data (checked on every real batch), or ``None``.
        g_hidden: the generator's MLP layer sizes (``mlp`` only).
        d_hidden: the discriminator's MLP layer sizes (``mlp`` only).
        g_width: base width of the DCGAN generator (``dcgan`` only).
        d_width: base width of the DCGAN discriminator (``dcgan`` only).
        d_norm: discriminator normalization for ``dcgan``: ``batch``, ``layer``, ``none``
            (default: ``layer`` with a gradient penalty, else ``batch``).
        ema: decay of an exponential moving average of the generator's weights, updated
            at every generator step (0: none). With it, :meth:`sample`, :meth:`decode` and
            the Pyro model use the averaged generator (Yazici et al. 2019, "The Unusual
            Effectiveness of Averaging in GAN Training"; 0.999 averages over about a
            thousand steps); training uses the live one.
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (1, 28, 28),
        z_dim: int = 100,
        net: str = "dcgan",
        loss: str = "non_saturating",
        k: int | None = None,
        label_smoothing: float = 0.0,
        gp_weight: float | None = None,
        r1_weight: float = 0.0,
        prior: str = "normal",
        output: str = "tanh",
        data_range: tuple[float, float] | None = (0.0, 1.0),
        g_hidden: Sequence[int] | None = None,
        d_hidden: Sequence[int] | None = None,
        g_width: int | None = None,
        d_width: int | None = None,
        d_norm: str | None = None,
        ema: float = 0.0,
    ):
        super().__init__()
        self.spec = adversarial_loss(loss)
        self.k = check_k(self.spec.k if k is None else k)
        checks.choice("prior", prior, PRIORS)
        checks.choice("output", output, OUTPUTS)
        if data_range is not None:
            if not isinstance(data_range, (tuple, list)) or len(data_range) != 2:
                raise ConfigError(f"data_range must be (low, high) or None, got {data_range!r}.")
            lo, hi = data_range
            lo = checks.real("data_range's low", lo)
            hi = checks.real(
                "data_range's high",
                hi,
                low=lo,
                low_open=True,
                hint="data_range is (low, high) with low < high",
            )
            self.data_range = (lo, hi)
            if output == "identity":
                raise ConfigError(
                    "output='identity' is for unbounded data (data_range=None); "
                    "bounded data need output='tanh' or 'sigmoid'."
                )
        else:
            self.data_range = None
        self.data_shape = tuple(data_shape)
        self.z_dim, self.prior_kind, self.output = z_dim, prior, output
        self.label_smoothing, self.gp_weight, self.r1_weight = label_smoothing, gp_weight, r1_weight
        if (
            d_norm is None
            and net == "dcgan"
            and (self.spec.gradient_penalty if gp_weight is None else gp_weight)
        ):
            d_norm = "layer"  # no batch norm in a critic with a gradient penalty
        self.net_kind = net
        self.generator, self.discriminator = GAN_NETS.get(net)(
            self.data_shape,
            z_dim,
            g_hidden=g_hidden,
            d_hidden=d_hidden,
            g_width=g_width,
            d_width=d_width,
            d_norm=d_norm,
            value_range=(-1.0, 1.0) if self.data_range is not None else None,
        )
        self.ema = checks.real(
            "ema", ema, low=0.0, high=1.0, high_open=True, hint="a decay (0.999 is usual; 0: none)"
        )
        self.generator_ema = (
            copy.deepcopy(self.generator).requires_grad_(False).eval() if self.ema else None
        )
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        # settings checks that need the networks (k, smoothing, gp weight)
        adversarial_phases(
            self.discriminator,
            self.generator,
            lambda b: b,
            lambda b: b,
            self.spec,
            k=self.k,
            label_smoothing=label_smoothing,
            gp_weight=gp_weight,
            r1_weight=r1_weight,
        )

    def extra_repr(self) -> str:
        return (
            f"data_shape={self.data_shape}, z_dim={self.z_dim}, net={self.net_kind}, "
            f"loss={self.spec.name}, k={self.k}, label_smoothing={self.label_smoothing}, "
            f"prior={self.prior_kind}, output={self.output}"
            + (f", ema={self.ema}" if self.ema else "")
        )

    @property
    def device(self) -> torch.device:
        """Where the networks are."""
        return self._anchor.device

    # -- the generative model ------------------------------------------------------------
    def prior(self) -> dist.Distribution:
        """``p(z)`` of one example (event shape ``(z_dim,)``) on the model's device."""
        zero = self._anchor.new_zeros(self.z_dim)
        if self.prior_kind == "normal":
            return dist.Normal(zero, 1.0).to_event(1)
        return dist.Uniform(zero, zero + 1.0).to_event(1)

    def _sample_z(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        draw = torch.randn if self.prior_kind == "normal" else torch.rand
        if generator is not None:  # a caller's own stream (fixed noise for figures, FID)
            return draw(n, self.z_dim, generator=generator, device=generator.device).to(
                self._anchor.device
            )
        return draw(n, self.z_dim, device=self._anchor.device)

    @property
    def sampler(self) -> nn.Module:
        """The generator that draws samples: the averaged one with ``ema``, else the live one."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    @torch.no_grad()
    def update_average(self) -> None:
        """One step of the generator's moving average (weights averaged, batch-norm
        statistics copied)."""
        if self.generator_ema is None:
            return
        for avg, live in zip(self.generator_ema.parameters(), self.generator.parameters()):
            avg.lerp_(live, 1.0 - self.ema)
        for avg, live in zip(self.generator_ema.buffers(), self.generator.buffers()):
            avg.copy_(live)

    def generate(self, z: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        """``G(z)`` in the networks' space ([-1, 1] for bounded data); ``z`` is ``(..., z_dim)``.
        ``net``: the generator to run (default: the live one, which training moves)."""
        if not torch.is_tensor(z) or z.shape[-1:] != (self.z_dim,):
            raise DataError(
                f"z must be a tensor (..., {self.z_dim}), got "
                f"{tuple(z.shape) if torch.is_tensor(z) else type(z).__name__}."
            )
        lead = z.shape[:-1]
        out = (net or self.generator)(z.reshape(-1, self.z_dim))
        if self.output == "tanh":
            out = torch.tanh(out)
        elif self.output == "sigmoid":
            out = 2 * torch.sigmoid(out) - 1
        return out.reshape(lead + self.data_shape)

    def to_net(self, x: torch.Tensor) -> torch.Tensor:
        """Data -> the networks' space (``data_range`` -> [-1, 1])."""
        if self.data_range is None:
            return x
        lo, hi = self.data_range
        return (x - lo) * (2.0 / (hi - lo)) - 1.0

    def from_net(self, y: torch.Tensor) -> torch.Tensor:
        """The networks' space -> data."""
        if self.data_range is None:
            return y
        lo, hi = self.data_range
        return lo + (y + 1.0) * ((hi - lo) / 2.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``G(z)`` in the data's range, by :attr:`sampler`."""
        return self.from_net(self.generate(z, self.sampler))

    def model(
        self, x: torch.Tensor | None = None, *args: Any, size: int | None = None
    ) -> torch.Tensor:
        """The Pyro model: ``z ~ p(z)`` (site ``z``), ``x = G(z)`` (deterministic site ``x``),
        the generator in eval mode.

        Generates one example per row of ``x`` (a GAN has no likelihood: the data only set
        the plate's size) or ``size`` examples (1 without either). Returns ``G(z)``.
        """
        n = x.shape[0] if torch.is_tensor(x) else (1 if size is None else size)
        n = checks.positive_int("size", n)
        # The generator runs in eval mode here (batch norm's running statistics): samples
        # do not depend on the other examples drawn with them, and drawing them leaves
        # those statistics as they were.
        sampler = self.sampler
        was = sampler.training
        sampler.eval()
        try:
            with pyro.plate("data", n):
                z = pyro.sample("z", self.prior())
                out = self.decode(z)
                pyro.deterministic("x", out, event_dim=len(self.data_shape))
        finally:
            sampler.train(was)
        return out

    @torch.no_grad()
    def sample(
        self,
        n: int,
        batch_size: int = 1000,
        generator: torch.Generator | None = None,
        averaged: bool = True,
    ) -> torch.Tensor:
        """``n`` examples ``G(z)``, ``z ~ p(z)``, in the data's range (eval mode: batch norm
        uses its running statistics; the module's mode is restored). ``z`` is drawn from
        ``generator`` when given (the same noise every call), else from torch's global
        generator. ``averaged=False`` draws from the live generator of a GAN with ``ema``."""
        n = checks.positive_int("the number of samples n", n)
        net = self.sampler if averaged else self.generator
        was = self.training
        self.eval()
        try:
            return torch.cat(
                [
                    self.from_net(
                        self.generate(self._sample_z(min(batch_size, n - i), generator), net)
                    )
                    for i in range(0, n, batch_size)
                ]
            )
        finally:
            self.train(was)

    @torch.no_grad()
    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """``D(x)`` for data ``x``: the discriminator's probability that ``x`` is real
        (a critic's raw value for WGAN-GP and hinge), in eval mode."""
        self.check_data(x)
        was = self.training
        self.eval()
        try:
            with inputs_checked():
                logits = self.discriminator(self.to_net(x))
        finally:
            self.train(was)
        return torch.sigmoid(logits) if self.spec.probability else logits

    # -- the game ------------------------------------------------------------------------
    def check_data(self, x: torch.Tensor, *rest: Any) -> None:
        """Examples ``(B, *data_shape)`` in ``data_range`` (a clear error otherwise); the
        fit loop checks a whole data set so once, before the first step."""
        check_input(x, self.data_shape, self.data_range, "the GAN's data", values=True)

    def real(self, batch: tuple) -> torch.Tensor:
        """The batch's data (its first tensor), checked (its values outside the fit loop's
        steps over data the loop checked) and mapped to the networks' space."""
        x = batch[0]
        check_input(
            x, self.data_shape, self.data_range, "the GAN's data", values=not loop_checked()
        )
        return self.to_net(x)

    def fake(self, batch: tuple) -> torch.Tensor:
        """``G(z)`` for fresh ``z``, one per example of the batch, in the networks' space."""
        return self.generate(self._sample_z(batch[0].shape[0]))

    def phases(self) -> list[Phase]:
        """The discriminator and generator phases (see :func:`adversarial_phases`); with
        ``ema``, each generator step first folds the weights its last step left into the
        average."""
        d_phase, g_phase = adversarial_phases(
            self.discriminator,
            self.generator,
            self.real,
            self.fake,
            self.spec,
            k=self.k,
            label_smoothing=self.label_smoothing,
            gp_weight=self.gp_weight,
            r1_weight=self.r1_weight,
        )
        if self.generator_ema is not None:
            g_loss = g_phase.loss

            def averaged_then_loss(batch, ctx):
                self.update_average()
                return g_loss(batch, ctx)

            g_phase.loss = averaged_then_loss
        return [d_phase, g_phase]

    def fit_step(self, config: Any) -> CheckedStep:
        """The training step ``probgen.fit`` runs: ``PhasedStep(self, self.phases())``.

        A GAN has no validation loss, and the discriminator's loss says nothing about the
        samples, so early stopping and the best weights must follow a figure a callback
        computes (``monitor="fid"`` with a :class:`probgen.train.Metric`), or be off
        (``patience=None, restore_best=False``).
        """
        monitor = config.monitor
        if (monitor in ("val_loss", "train_loss") or monitor.startswith("train_loss/")) and (
            config.patience is not None or config.restore_best
        ):
            raise ConfigError(
                f"a GAN has no validation loss and its {monitor} (a discriminator or "
                f"generator loss) does not measure sample quality: pass patience=None and "
                f"restore_best=False, or monitor a figure such as an FID computed by a "
                f"Metric callback (monitor='fid', mode='min')."
            )
        return CheckedStep(self, self.phases())


__all__ = ["GAN", "OUTPUTS", "PRIORS"]
