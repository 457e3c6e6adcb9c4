"""Step functions: what one training step computes, apart from the loop that runs it.

A *step* is a list of :class:`Phase` objects and, optionally, a validation loss.
Each phase has its own parameters, optimizer settings, loss and number of runs per
batch, so the one fit loop (:func:`probgen.train.fit`) trains

* a Pyro model/guide pair by stochastic variational inference (:class:`SVIStep`,
  one phase whose loss is a Pyro ELBO),
* a plain PyTorch network (:class:`LossStep`, one phase),
* adversarial games (:class:`PhasedStep`): a GAN's k discriminator steps per generator
  step, an adversarial autoencoder's reconstruction -> discriminator -> encoder order,
  a flow's likelihood plus an adversarial term.

A phase's loss is called as ``loss(batch, ctx)``: ``batch`` is a tuple of tensors and
``ctx`` a dict shared by the phases of one batch (a generator phase can leave its
detached fakes there for the discriminator phase that follows). It returns the scalar
to minimise, or ``(scalar_to_minimise, value_to_report)`` when the two differ (Pyro's
ELBO is a sum over the batch; probgen reports per-example figures).

Parameters are found the way :class:`pyro.infer.SVI` finds them: every loss runs
under ``poutine.trace(param_only=True)`` and each ``pyro.param`` site it touched
(``pyro.module``, ``PyroParam``, AutoGuides, ...) joins the phase's optimizer the
first time it is seen. A phase can also name its parameters up front (a module's
``parameters()``); then only those are optimised by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
from pyro import poutine
from torch import nn

from probgen.errors import ConfigError
from probgen.infer.objectives import make_elbo

LossFn = Callable[[tuple, Dict[str, Any]], Any]


def _batch_size(batch) -> int:
    for item in batch:
        if torch.is_tensor(item):
            return item.shape[0]
    raise ConfigError("a batch needs at least one tensor (its first dimension is the batch).")


@dataclass
class Phase:
    """One part of a training step: its parameters, optimizer, loss and repeats.

    Args:
        name: shown in the progress bar and the history (``train_loss/<name>``).
        loss: ``loss(batch, ctx)`` -> scalar tensor, or ``(scalar, reported)``.
        params: the parameters this phase optimises: an iterable of tensors, a module,
            or a callable returning either. ``None``: every parameter the loss touches
            through Pyro (``pyro.param`` / ``pyro.module`` sites), found as it runs.
        optimizer: a name in :data:`probgen.train.OPTIMIZERS` (default: the run's).
        lr: learning rate (default: the run's ``lr``).
        optim_kwargs: other optimizer settings, e.g. ``{"betas": (0.5, 0.999)}``.
        repeats: runs per batch (k discriminator steps per generator step).
        fresh_batch: each repeat after the first draws the next batch of data
            (Goodfellow et al. 2014, Algorithm 1); ``False`` reuses the batch.
        owns_backward: the loss calls ``backward`` itself (Pyro objectives that only
            offer ``loss_and_grads``); the loop then skips it.
        clip_norm: gradient-norm clipping for this phase (default: the run's).
        discover: also optimise the Pyro param sites the loss touches that are not in
            ``params`` (default: only when ``params`` is ``None``); ``"first"`` looks on
            the run's first step only (a probgen model, whose module holds everything
            its ``pyro.module`` sites register: the trace would cost every step for
            nothing). Leave it off for a phase whose loss runs networks it must not move
            (a discriminator phase that samples the generator).
    """

    name: str
    loss: LossFn
    params: Any = None
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    optim_kwargs: Dict[str, Any] = field(default_factory=dict)
    repeats: int = 1
    fresh_batch: bool = True
    owns_backward: bool = False
    clip_norm: Optional[float] = None
    discover: Union[bool, str, None] = None

    def __post_init__(self):
        if self.discover is None:
            self.discover = self.params is None
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ConfigError(f"phase {self.name!r}: repeats (k) must be a positive integer, "
                              f"got {self.repeats!r}.")
        if not callable(self.loss):
            raise ConfigError(f"phase {self.name!r}: loss must be callable as loss(batch, ctx).")

    def declared_params(self) -> Optional[List[torch.Tensor]]:
        """The parameters named up front (``None`` when they are found by tracing)."""
        p = self.params
        if p is None:
            return None
        if callable(p) and not isinstance(p, nn.Module):
            p = p()
        if isinstance(p, nn.Module):
            p = p.parameters()
        return [t for t in p if t.requires_grad]


def traced_params(fn: Callable[[], Any]):
    """Run ``fn()`` and return ``(result, {name: unconstrained tensor})`` of the Pyro
    param sites it touched, in the order they were first touched (as ``SVI.step``)."""
    with poutine.trace(param_only=True) as capture:
        out = fn()
    found = {}
    for name, site in capture.trace.nodes.items():
        value = site["value"]
        unconstrained = getattr(value, "unconstrained", None)
        t = unconstrained() if unconstrained is not None else value
        if torch.is_tensor(t) and t.requires_grad:
            found[name] = t
    return out, found


class Step:
    """Base class of steps: a module (optional) and a list of phases.

    Attributes:
        module: the ``nn.Module`` whose state is checkpointed, moved to the device and
            switched between train and eval mode; ``None`` for a Pyro model whose
            parameters all live in Pyro's param store.
        phases: the :class:`Phase` list run, in order, on every batch.
        isolate_param_store: run training inside a fresh scope of Pyro's param store
            (probgen's own models, whose ``pyro.module`` names would collide between
            two models of one class); the user's store is left as it was.
    """

    module: Optional[nn.Module] = None
    phases: Sequence[Phase] = ()
    isolate_param_store: bool = False

    def eval_loss(self, batch) -> Optional[torch.Tensor]:
        """Validation loss per example (``None``: this step has none)."""
        return None

    def check_data(self, tensors) -> bool:
        """Check a whole data set's tensors once before training; True when checked
        (models may then skip their per-batch checks inside the loop)."""
        return False

    @property
    def declared_module(self) -> Optional[nn.Module]:
        """The module every phase optimizes by declaration, whose model may then skip
        ``pyro.module`` inside the loop (:mod:`probgen.train.context`); else ``None``."""
        return None

    @property
    def loss(self) -> LossFn:
        """The first phase's loss (for one-phase steps: *the* loss)."""
        return self.phases[0].loss

    def describe(self) -> str:
        return type(self.module).__qualname__ if self.module is not None else type(self).__name__


class LossStep(Step):
    """A plain PyTorch loss: ``loss_fn(module, *batch)`` -> mean loss per example.

    Args:
        module: the network.
        loss_fn: the loss; its value is also the validation loss.
        **phase_kwargs: optimizer settings of the one phase (``lr``, ``optim_kwargs``...).
    """

    def __init__(self, module: nn.Module, loss_fn: Callable[..., torch.Tensor], **phase_kwargs):
        self.module = module
        self.loss_fn = loss_fn
        self.phases = [Phase("loss", self._loss, params=module, **phase_kwargs)]

    def _loss(self, batch, ctx=None):
        return self.loss_fn(self.module, *batch)

    def eval_loss(self, batch):
        return self.loss_fn(self.module, *batch)


_ELBO = Union[str, Any]


class SVIStep(Step):
    """Stochastic variational inference of any Pyro model/guide pair, as ``pyro.infer.SVI``.

    Two ways to call it::

        SVIStep(model, guide, loss="trace")     # Pyro's order; any Pyro callables
        SVIStep(vae)                            # a module with .model and .guide
        SVIStep(module, model, guide)           # a module holding their networks

    Args:
        model, guide: Pyro callables taking the batch's tensors as arguments.
        loss: an objective name in :data:`probgen.infer.OBJECTIVES` (``trace``,
            ``meanfield``, ``iwae``, ...) or any Pyro ELBO instance (``Trace_ELBO``,
            ``TraceGraph_ELBO``, ``TraceEnum_ELBO``, ``RenyiELBO``, ...). A name builds
            the ELBO with ``num_particles`` vectorized particles; ``max_plate_nesting``
            is inferred from the model unless given.
        module: the ``nn.Module`` holding the networks (optional: parameters are found
            wherever Pyro keeps them).
        num_particles, eval_particles: particles of the training and validation bound.
        max_plate_nesting: plates the model nests (``None``: inferred by Pyro).
        per_example: divide the loss by the batch size before the gradient (probgen's
            models, tuned so). ``False`` (the default for a bare model/guide pair)
            minimises the ELBO exactly as ``pyro.infer.SVI`` does; the history still
            reports the loss per example.
        objective: old name of ``loss``.
    """

    def __init__(self, model=None, guide=None, loss: _ELBO = None, *, module=None,
                 objective: Optional[str] = None, num_particles: int = 1,
                 eval_particles: Optional[int] = None,
                 max_plate_nesting: Optional[int] = None,
                 per_example: Optional[bool] = None, **phase_kwargs):
        if loss is not None and objective is not None:
            raise ConfigError("give the objective once: loss= (or its old name objective=).")
        # The older, module-first form: SVIStep(module[, model, guide]).
        # (A Pyro ELBO is callable too, so the third argument is a guide only when it is
        # not an objective.)
        third_is_guide = callable(loss) and not hasattr(loss, "loss") and not isinstance(loss, str)
        if isinstance(model, nn.Module) and module is None and (
                guide is None or (callable(guide) and third_is_guide)):
            if guide is None and hasattr(model, "model") and hasattr(model, "guide"):
                module, model, guide = model, model.model, model.guide
            elif guide is not None:
                module, model, guide, loss = model, guide, loss, None
        if model is None or guide is None:
            raise ConfigError("SVIStep needs a Pyro model and guide: SVIStep(model, guide, "
                              "loss=...) or SVIStep(module) for a module with .model and .guide.")
        if not callable(model) or not callable(guide):
            raise ConfigError("SVIStep: model and guide must be callables that take the "
                              "batch's tensors.")
        self.module = module
        self.model, self.guide = model, guide
        loss = objective if loss is None else loss
        loss = "trace" if loss is None else loss
        # A module's own model/guide methods (probgen's models, a tutorial-style VAE
        # class): per-example loss, as probgen reports it. probgen's own models also nest
        # exactly one data plate and train in a scope of the param store of their own.
        own_methods = module is not None and getattr(model, "__self__", None) is module
        isolated = own_methods and bool(getattr(module, "isolate_param_store", False))
        if max_plate_nesting is None and isolated:
            max_plate_nesting = getattr(module, "max_plate_nesting", 1)
        if isinstance(loss, str):
            self.objective = loss
            self.elbo = make_elbo(loss, num_particles, max_plate_nesting)
            self.eval_elbo = make_elbo(loss, eval_particles or num_particles,
                                       max_plate_nesting, eager=True)
        else:
            if not hasattr(loss, "loss") or not (hasattr(loss, "differentiable_loss")
                                                 or hasattr(loss, "loss_and_grads")):
                raise ConfigError(f"loss must be an objective name or a Pyro ELBO instance, "
                                  f"got {type(loss).__name__}.")
            self.objective = type(loss).__name__
            self.elbo = self.eval_elbo = loss
        self.per_example = own_methods if per_example is None else bool(per_example)
        self.isolate_param_store = isolated
        self._own_methods = own_methods
        owns = not hasattr(self.elbo, "differentiable_loss")
        # The module's parameters, and whatever else the ELBO touches through Pyro
        # (looked for on every step, as SVI.step does; once for probgen's own models).
        self.phases = [Phase("elbo", self._loss, params=module,
                             discover="first" if isolated else True,
                             owns_backward=owns, **phase_kwargs)]

    def _loss(self, batch, ctx=None):
        n = _batch_size(batch)
        if self.phases[0].owns_backward:
            # Pyro objectives without differentiable_loss (TraceGraph_ELBO, RenyiELBO)
            # compute their own surrogate gradients; SVI calls them the same way.
            value = torch.as_tensor(float(self.elbo.loss_and_grads(self.model, self.guide,
                                                                    *batch)))
            return value, value / n
        loss = self.elbo.differentiable_loss(self.model, self.guide, *batch)
        if self.per_example:
            loss = loss / n
            return loss
        return loss, loss.detach() / n

    @property
    def declared_module(self) -> Optional[nn.Module]:
        # The one phase declares params=module; its own model/guide methods see it. A
        # compiled (Jit*) ELBO traces the parameters through pyro.module: never skipped.
        if not self._own_methods or type(self.elbo).__name__.startswith("Jit"):
            return None
        return self.module

    def check_data(self, tensors) -> bool:
        """Check a whole data set once, before the first step, with the module's own
        ``check_data(*tensors)`` (called as its ``model`` is, on the batch's tensors).
        True when it did: the model may then skip its per-batch check inside the loop
        (:func:`probgen.train.context.current_step`). False for a bare model/guide pair or
        a module without ``check_data``; a data error propagates, before any update."""
        check = getattr(self.module, "check_data", None) if self._own_methods else None
        if check is None:
            return False
        check(*tensors)
        return True

    def eval_loss(self, batch):
        n = _batch_size(batch)
        elbo = self.eval_elbo
        if hasattr(elbo, "differentiable_loss"):
            return elbo.differentiable_loss(self.model, self.guide, *batch) / n
        return torch.as_tensor(float(elbo.loss(self.model, self.guide, *batch))) / n

    def describe(self) -> str:
        return type(self.module).__qualname__ if self.module is not None else \
            getattr(self.model, "__name__", type(self.model).__name__)


class ELBOLoss:
    """The negative ELBO of a Pyro model/guide pair as a term of any phase's loss.

    How an adversarial family adds its custom loss to a Pyro objective::

        neg_elbo = ELBOLoss(aae.model, aae.guide, "meanfield")
        Phase("generator", lambda batch, ctx: neg_elbo(batch) + lam * adversarial(batch),
              params=aae.decoder, discover=False)

    Args:
        model, guide: Pyro callables taking the batch's tensors.
        loss: an objective name or a Pyro ELBO instance with ``differentiable_loss``.
        num_particles, max_plate_nesting: as for :class:`SVIStep`.
        per_example: divide by the batch size (the default) or return Pyro's sum.
    """

    def __init__(self, model, guide, loss: _ELBO = "trace", num_particles: int = 1,
                 max_plate_nesting: Optional[int] = 1, per_example: bool = True):
        self.model, self.guide = model, guide
        self.elbo = make_elbo(loss, num_particles, max_plate_nesting) if isinstance(loss, str) \
            else loss
        if not hasattr(self.elbo, "differentiable_loss"):
            raise ConfigError(f"{type(self.elbo).__name__} has no differentiable_loss, so it cannot "
                              f"be one term of a sum; use an SVIStep for it alone.")
        self.per_example = per_example

    def __call__(self, batch) -> torch.Tensor:
        loss = self.elbo.differentiable_loss(self.model, self.guide, *batch)
        return loss / _batch_size(batch) if self.per_example else loss


class PhasedStep(Step):
    """A step made of several phases: the adversarial families' training step.

    Args:
        module: the module holding every network of the game (checkpointed as one).
        phases: the phases, in the order they run on each batch.
        eval_loss: optional validation loss ``f(batch) -> per-example scalar``.

    Example (a GAN: k discriminator steps, then one generator step)::

        PhasedStep(gan, [
            Phase("D", d_loss, params=gan.discriminator, repeats=k,
                  optim_kwargs={"betas": (0.5, 0.999)}),
            Phase("G", g_loss, params=gan.generator, optim_kwargs={"betas": (0.5, 0.999)}),
        ])
    """

    def __init__(self, module: Optional[nn.Module], phases: Iterable[Phase],
                 eval_loss: Optional[Callable] = None, isolate_param_store: bool = True):
        self.module = module
        self.phases = list(phases)
        if not self.phases:
            raise ConfigError("a PhasedStep needs at least one Phase.")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ConfigError(f"phase names must differ, got {names}.")
        self._eval_loss = eval_loss
        self.isolate_param_store = isolate_param_store

    def eval_loss(self, batch):
        return None if self._eval_loss is None else self._eval_loss(batch)
