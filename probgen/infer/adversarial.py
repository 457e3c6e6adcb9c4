"""Adversarial losses, written once for every adversarial family (GAN, adversarial
autoencoders, Flow-GAN).

A discriminator (or critic) ``D`` is any network returning one real number per example,
a *logit*: ``D(x) = sigmoid(logit)`` is "the probability that x came from the data"
(Goodfellow et al. 2014, "Generative Adversarial Nets"). Every loss here takes logits,
so the logarithms are computed stably (``softplus``) and never saturate in floating point.

==================  ==========================  ============================================
formulation         discriminator minimises     generator minimises
==================  ==========================  ============================================
``minimax``         ``-[log D(x) +               ``log(1 - D(G(z)))`` (saturating: its
                    log(1 - D(G(z)))]``          gradient vanishes where D(G(z)) -> 0)
``non_saturating``  the same                     ``-log D(G(z))`` (Goodfellow et al. 2014,
                                                 section 3: strong gradients early on)
``wgan_gp``         ``E[D(G(z))] - E[D(x)]`` +   ``-E[D(G(z))]`` (Gulrajani et al. 2017,
                    ``lambda (|grad D(x^)| - 1)^2``  "Improved Training of Wasserstein GANs")
``hinge``           ``E[relu(1 - D(x))] +        ``-E[D(G(z))]`` (Lim & Ye 2017, "Geometric
                    E[relu(1 + D(G(z)))]``       GAN"; Miyato et al. 2018, "Spectral
                                                 Normalization for GANs")
==================  ==========================  ============================================

One-sided label smoothing (Salimans et al. 2016, "Improved Techniques for Training
GANs") replaces the real label 1 by ``1 - smoothing`` in the discriminator's
cross-entropy and leaves the fake label at 0.

:func:`adversarial_phases` turns a discriminator, the generator's parameters and two
functions of the batch (``real`` and ``fake`` examples) into the fit loop's phases: ``k``
discriminator steps, each on a fresh batch of data and fresh noise, then one generator step
on fresh noise (Goodfellow et al. 2014, Algorithm 1). A GAN's fakes are ``G(z)``; an
adversarial autoencoder's "real" examples are prior draws and its fakes are codes
``q(z | x)``; Flow-GAN adds its likelihood term through ``generator_extra``.

The theory of the game (Goodfellow et al. 2014, Proposition 1 and Theorem 1) is here as
functions of two densities on a grid, so that it can be checked numerically:
:func:`optimal_discriminator` ``D*(x) = p_data / (p_data + p_g)`` and :func:`value_on_grid`
``V(D, G)``, which at ``D*`` equals ``-log 4 + 2 JSD(p_data || p_g)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from probgen import checks
from probgen.data.draws import rand_like
from probgen.errors import ConfigError
from probgen.infer.phases import Phase
from probgen.nn.gan_nets import inputs_checked
from probgen.registry import Registry

DISCRIMINATOR_KINDS = ("bce", "wasserstein", "hinge")
GENERATOR_KINDS = ("minimax", "non_saturating", "wasserstein")


# --------------------------------------------------------------------------- the losses


def _check_smoothing(smoothing: float) -> float:
    return checks.real(
        "label_smoothing",
        smoothing,
        low=0.0,
        high=1.0,
        high_open=True,
        hint="0.1 makes the real label 0.9",
    )


def discriminator_loss(
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    kind: str = "bce",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The discriminator's loss (mean over the batch), to minimise.

    Args:
        real_logits: ``D``'s logits (critic values) on data, any shape.
        fake_logits: on generated examples.
        kind: ``bce`` (the GAN value function: minimax and non-saturating GANs share it),
            ``wasserstein`` (WGAN critic; add :func:`gradient_penalty`) or ``hinge``.
        label_smoothing: one-sided smoothing of the real label (``bce`` only).

    ``bce`` is ``-(1/m) sum [log D(x) + log(1 - D(G(z)))]``, i.e. minus the
    minibatch estimate of ``V(D, G)`` (Algorithm 1, line 5, as a descent).
    """
    smoothing = _check_smoothing(label_smoothing)
    if kind == "bce":
        target = real_logits.new_full(real_logits.shape, 1.0 - smoothing)
        return (
            F.binary_cross_entropy_with_logits(real_logits, target) + F.softplus(fake_logits).mean()
        )  # -log(1 - sigmoid(l))
    if smoothing:
        raise ConfigError(
            f"label smoothing applies to the cross-entropy discriminator, not to "
            f"the {kind!r} loss; set label_smoothing=0."
        )
    if kind == "wasserstein":
        return fake_logits.mean() - real_logits.mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    raise ConfigError(
        f"discriminator loss kind must be one of {DISCRIMINATOR_KINDS}, got {kind!r}."
    )


def generator_loss(fake_logits: torch.Tensor, kind: str = "non_saturating") -> torch.Tensor:
    """The generator's loss (mean over the batch), to minimise.

    Args:
        fake_logits: the discriminator's logits on ``G(z)``.
        kind: ``minimax`` (``log(1 - D(G(z)))``, the saturating form of the value
            function), ``non_saturating`` (``-log D(G(z))``) or ``wasserstein``
            (``-D(G(z))``, for WGAN-GP and hinge).

    With ``l`` the logit, ``d/dl log(1 - sigmoid(l)) = -sigmoid(l)`` vanishes as
    ``D(G(z)) -> 0`` while ``d/dl [-log sigmoid(l)] = -(1 - sigmoid(l))`` tends to -1:
    why the non-saturating form learns when the discriminator wins early on.
    """
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()  # log(1 - sigmoid(l))
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()  # -log sigmoid(l)
    if kind == "wasserstein":
        return -fake_logits.mean()
    raise ConfigError(f"generator loss kind must be one of {GENERATOR_KINDS}, got {kind!r}.")


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP's penalty ``E[(||grad_x D(x^)||_2 - 1)^2]`` at ``x^ = e x + (1 - e) x~``,
    ``e ~ U(0, 1)`` per example (Gulrajani et al. 2017, Algorithm 1). Differentiable in
    the critic's parameters (``create_graph``); multiply by the weight (10 in the paper).
    """
    if real.shape != fake.shape:
        raise ConfigError(
            f"gradient_penalty: real {tuple(real.shape)} and fake "
            f"{tuple(fake.shape)} examples must have the same shape."
        )
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    # drawn on real's device: from generator when it lives there (probgen.data.draws)
    eps = (
        rand_like(real.new_empty(shape), generator)
        if generator is not None
        else real.new_empty(shape).uniform_()
    )
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return (grad.reshape(grad.shape[0], -1).norm(2, dim=1) - 1.0).pow(2).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 regularization ``E_data[||grad_x D(x)||^2]`` (Mescheder et al. 2018, "Which Training
    Methods for GANs do actually Converge?"): the discriminator's gradient on the data,
    which makes the game's gradient dynamics converge locally instead of circling the
    equilibrium. ``real_logits`` must come from ``real`` with ``requires_grad``; multiply by
    ``gamma / 2``. Differentiable in the discriminator's parameters.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


@dataclass(frozen=True)
class AdversarialLoss:
    """One GAN formulation: a discriminator loss, a generator loss and their usual settings.

    Attributes:
        name: the formulation's name in :data:`ADVERSARIAL_LOSSES`.
        discriminator: a kind of :func:`discriminator_loss`.
        generator: a kind of :func:`generator_loss`.
        gradient_penalty: default weight of :func:`gradient_penalty` (0: none).
        k: default discriminator steps per generator step.
        betas: default Adam betas of both players.
        probability: whether ``sigmoid(D)`` is a probability (the cross-entropy game);
            a critic's values are not.
    """

    name: str
    discriminator: str
    generator: str
    gradient_penalty: float = 0.0
    k: int = 1
    betas: tuple[float, float] = (0.5, 0.999)
    probability: bool = True

    def d_loss(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        return discriminator_loss(real_logits, fake_logits, self.discriminator, label_smoothing)

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return generator_loss(fake_logits, self.generator)


ADVERSARIAL_LOSSES: Registry = Registry("adversarial loss")
# Radford et al. 2016 ("Unsupervised Representation Learning with Deep Convolutional GANs"):
# Adam with beta1 = 0.5; Gulrajani et al. 2017: n_critic = 5, Adam betas (0, 0.9), lambda = 10.
ADVERSARIAL_LOSSES.register("minimax", AdversarialLoss("minimax", "bce", "minimax"))
ADVERSARIAL_LOSSES.register(
    "non_saturating", AdversarialLoss("non_saturating", "bce", "non_saturating")
)
ADVERSARIAL_LOSSES.register(
    "wgan_gp",
    AdversarialLoss(
        "wgan_gp",
        "wasserstein",
        "wasserstein",
        gradient_penalty=10.0,
        k=5,
        betas=(0.0, 0.9),
        probability=False,
    ),
)
ADVERSARIAL_LOSSES.register(
    "hinge", AdversarialLoss("hinge", "hinge", "wasserstein", probability=False)
)


def adversarial_loss(name: str | AdversarialLoss) -> AdversarialLoss:
    """The :class:`AdversarialLoss` named ``name`` (or ``name`` itself)."""
    return name if isinstance(name, AdversarialLoss) else ADVERSARIAL_LOSSES.get(name)


# --------------------------------------------------------------------------- the phases


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Parameters of ``module`` need no gradient inside the block (restored after).

    The generator's step runs the discriminator without computing gradients for it:
    autograd decides at forward time, so the flags can be restored before backward.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


def check_k(k: Any) -> int:
    """``k``, the discriminator's steps per generator step, checked: an integer >= 1."""
    return checks.positive_int("k (discriminator steps per generator step)", k)


def adversarial_phases(
    discriminator: nn.Module,
    generator_params: Any,
    real: Callable[[tuple], torch.Tensor],
    fake: Callable[[tuple], torch.Tensor],
    loss: str | AdversarialLoss = "non_saturating",
    *,
    k: int | None = None,
    label_smoothing: float = 0.0,
    gp_weight: float | None = None,
    r1_weight: float = 0.0,
    d_lr: float | None = None,
    g_lr: float | None = None,
    betas: Sequence[float] | None = None,
    generator_extra: Callable[[tuple, dict[str, Any]], torch.Tensor] | None = None,
    adversarial_weight: float = 1.0,
    names: tuple[str, str] = ("D", "G"),
) -> list:
    """The two phases of an adversarial game for :class:`~probgen.infer.PhasedStep`.

    Args:
        discriminator: the network ``D`` (logits, one per example).
        generator_params: what the generator phase optimises (a module, parameters, or a
            callable returning either).
        real: ``real(batch)`` -> the examples ``D`` should call real (a GAN: the data).
        fake: ``fake(batch)`` -> generated examples, differentiable in the generator's
            parameters and drawing fresh noise on each call (a GAN: ``G(z)``).
        loss: a name in :data:`ADVERSARIAL_LOSSES` or an :class:`AdversarialLoss`.
        k: discriminator steps per generator step, each on a fresh batch (default: the
            loss's, 1 or 5 for WGAN-GP).
        label_smoothing: one-sided smoothing of the real label.
        gp_weight: weight of the gradient penalty (default: the loss's).
        r1_weight: ``gamma`` of the R1 penalty ``gamma / 2 E[||grad D(x)||^2]`` on the real
            examples (0: none).
        d_lr: learning rate of the discriminator phase (default: the run's; a run's
            ``phase_optim`` takes precedence).
        g_lr: learning rate of the generator phase (default: the run's).
        betas: Adam betas of both players (default: the loss's).
        generator_extra: ``f(batch, ctx)`` -> a term added to the generator's loss (a
            Flow-GAN's likelihood term).
        adversarial_weight: weight of the adversarial term in the generator's loss.
        names: the phases' names in the history (``train_loss/D``, ``train_loss/G``).

    Returns:
        ``[Phase(D, repeats=k, fresh_batch=True), Phase(G)]``.
    """
    spec = adversarial_loss(loss)
    k = check_k(spec.k if k is None else k)
    smoothing = _check_smoothing(label_smoothing)
    if smoothing and spec.discriminator != "bce":
        raise ConfigError(
            f"label smoothing applies to the cross-entropy losses (minimax, "
            f"non_saturating), not to {spec.name!r}."
        )
    gp = spec.gradient_penalty if gp_weight is None else gp_weight
    gp = checks.nonnegative_float("gp_weight", gp)
    r1_weight = checks.nonnegative_float("r1_weight", r1_weight)
    betas = tuple(spec.betas if betas is None else betas)
    if len(betas) != 2:
        raise ConfigError(f"betas must be two numbers in [0, 1), got {betas!r}.")
    betas = tuple(
        checks.real(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True)
        for i, b in enumerate(betas)
    )

    # The discriminator sees what real() and fake() return: the model's checked data and
    # its own outputs. It checks their shapes, not their values (each value check would
    # be a host-device synchronisation every step on a GPU).
    def d_loss(batch, ctx):
        x = real(batch)
        with torch.no_grad():
            x_fake = fake(batch)
        if r1_weight:
            x = x.detach().requires_grad_(True)
        with inputs_checked():
            real_logits = discriminator(x)
            value = spec.d_loss(real_logits, discriminator(x_fake), smoothing)
            if r1_weight:
                value = value + 0.5 * r1_weight * r1_penalty(real_logits, x)
            if gp:
                value = value + gp * gradient_penalty(discriminator, x, x_fake)
        return value

    def g_loss(batch, ctx):
        x_fake = fake(batch)
        with frozen(discriminator), inputs_checked():
            value = spec.g_loss(discriminator(x_fake))
        if generator_extra is not None:
            value = adversarial_weight * value + generator_extra(batch, ctx)
        elif adversarial_weight != 1.0:
            value = adversarial_weight * value
        return value

    return [
        Phase(
            names[0],
            d_loss,
            params=discriminator,
            lr=d_lr,
            optim_kwargs={"betas": betas},
            repeats=k,
            fresh_batch=True,
            player="discriminator",
        ),
        Phase(
            names[1],
            g_loss,
            params=generator_params,
            lr=g_lr,
            optim_kwargs={"betas": betas},
            player="generator",
        ),
    ]


def player_optim(
    phases: Any,
    *,
    d_lr: float | None = None,
    g_lr: float | None = None,
    betas: Sequence[float] | None = None,
) -> dict[str, dict[str, Any]] | None:
    """Optimizer settings of the players of an adversarial game, by phase, as
    :class:`~probgen.train.FitConfig`'s ``phase_optim`` takes them: the learning rate
    ``d_lr`` for every discriminator phase, ``g_lr`` for every generator phase and Adam's
    ``betas`` for both (the players are the phases' ``player``).

    Example::

        fit(gan, data, lr=2e-4, phase_optim=player_optim(gan, d_lr=1e-4))
        # the same as phase_optim={"D": {"lr": 1e-4}}

    Args:
        phases: a model with ``phases()`` (GAN, FlowGAN, AAE, SemiSupervisedAAE,
            AgeCGAN, CAAE), or its phases.
        d_lr: learning rate of the discriminators (``None``: the run's ``lr``).
        g_lr: learning rate of the generators (``None``: the run's ``lr``).
        betas: Adam betas of both (``None``: the loss's, (0.5, 0.999) or (0, 0.9)).

    Returns:
        ``{phase name: settings}``, or ``None`` when nothing is set.

    Raises:
        ConfigError: a learning rate that is no positive number, betas that are no pair
            of numbers in [0, 1), or settings for a player the phases lack.
    """
    if callable(getattr(phases, "phases", None)):
        phases = phases.phases()
    if betas is not None:
        betas = _betas(betas)
    asked = {"discriminator": {}, "generator": {}}
    for player, lr in (("discriminator", d_lr), ("generator", g_lr)):
        if lr is not None:
            asked[player]["lr"] = checks.positive_float(f"{player[0]}_lr", lr)
        if betas is not None:
            asked[player]["betas"] = betas
    out = {
        ph.name: dict(asked[ph.player])
        for ph in phases
        if ph.player is not None and asked[ph.player]
    }
    players = {ph.player for ph in phases}
    names = ", ".join(ph.name for ph in phases)
    for player, lr in (("discriminator", d_lr), ("generator", g_lr)):
        if lr is not None and player not in players:
            raise ConfigError(f"{player[0]}_lr is set, but the phases ({names}) have no {player}.")
    if betas is not None and not players - {None}:
        raise ConfigError(
            f"betas is set, but the phases ({names}) have no player (no phase is a "
            f"discriminator or a generator); give the phases' settings by name in "
            f"phase_optim instead."
        )
    return out or None


def _betas(betas: Any) -> list[float]:
    """Adam's ``betas``: a pair of numbers in [0, 1) (as a list, JSON's form)."""
    if hasattr(betas, "tolist"):  # a numpy array or a tensor
        betas = betas.tolist()
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise ConfigError(
            f"betas must be a pair of numbers in [0, 1) (Adam's, such as (0.5, 0.999)), "
            f"got {betas!r}."
        )
    return [
        checks.real(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True)
        for i, b in enumerate(betas)
    ]


# --------------------------------------------------------------------------- theory on a grid


def optimal_discriminator(p_data: torch.Tensor, p_g: torch.Tensor) -> torch.Tensor:
    """``D*(x) = p_data(x) / (p_data(x) + p_g(x))`` (Goodfellow et al. 2014, Proposition 1),
    elementwise; 1/2 where both densities are 0."""
    total = p_data + p_g
    return torch.where(
        total > 0,
        p_data / total.clamp_min(torch.finfo(total.dtype).tiny),
        torch.full_like(total, 0.5),
    )


def value_on_grid(
    d: torch.Tensor, p_data: torch.Tensor, p_g: torch.Tensor, dx: float
) -> torch.Tensor:
    """``V(D, G) = int p_data log D + p_g log(1 - D) dx`` by a Riemann sum on a grid of
    spacing ``dx`` (``0 log 0 = 0``). At ``D = D*`` it is ``-log 4 + 2 JSD(p_data || p_g)``
    (Goodfellow et al. 2014, Theorem 1)."""
    return (torch.xlogy(p_data, d) + torch.xlogy(p_g, 1 - d)).sum() * dx


__all__ = [
    "ADVERSARIAL_LOSSES",
    "AdversarialLoss",
    "adversarial_loss",
    "adversarial_phases",
    "check_k",
    "discriminator_loss",
    "frozen",
    "generator_loss",
    "gradient_penalty",
    "optimal_discriminator",
    "player_optim",
    "r1_penalty",
    "value_on_grid",
]
