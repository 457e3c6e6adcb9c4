"""Step functions: what one training step computes, apart from the loop that runs it.

A *step* is a list of :class:`~probgen.infer.phases.Phase` objects and, optionally, a
validation loss. Each phase has its own parameters, optimizer settings, loss and number of
runs per batch, so the one fit loop (:func:`probgen.train.fit`) trains

* a Pyro model/guide pair by stochastic variational inference (:class:`SVIStep`,
  one phase whose loss is a Pyro ELBO),
* a plain PyTorch network (:class:`LossStep`, one phase),
* adversarial games (:class:`PhasedStep`): a GAN's k discriminator steps per generator
  step, an adversarial autoencoder's reconstruction -> discriminator -> encoder order,
  a flow's likelihood plus an adversarial term.

A phase's loss is called as ``loss(batch, ctx)``: ``batch`` is what the data gave (a
tuple of tensors, or a dict of them) and ``ctx`` a dict shared by the phases of one batch
(a generator phase can leave its detached fakes there for the discriminator phase that
follows). It returns the scalar to minimise, or ``(scalar_to_minimise, value_to_report)``
when the two differ (Pyro's ELBO is a sum over the batch; probgen reports per-example
figures).

Parameters are found as :class:`pyro.infer.SVI` finds them (:mod:`probgen.infer.phases`);
batches become a model's arguments as in Pyro's own loops (:mod:`probgen.infer.batches`).
The steps live here, below the models, so that a model family can define its own step
(``fit_step``) without reaching up into the training loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from pyro.infer.elbo import ELBO
from pyro.optim import PyroOptim
from pyro.optim.lr_scheduler import PyroLRScheduler
from pyro.poutine.messenger import Messenger
from torch import nn

from probgen import checks
from probgen.errors import ConfigError
from probgen.infer.batches import (
    BatchArguments,
    BatchToArgs,
    batch_len,
    callable_name,
    default_batch_to_args,
)
from probgen.infer.objectives import make_elbo
from probgen.infer.phases import OPTIMIZERS, LossFn, Phase

__all__ = ["STEP_SETTINGS", "ELBOLoss", "LossStep", "PhasedStep", "SVIStep", "Step", "as_step"]


# Settings of FitConfig that only build the step of a probgen model.
STEP_SETTINGS = ("objective", "num_particles", "eval_particles")


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

    module: nn.Module | None = None
    phases: Sequence[Phase] = ()
    isolate_param_store: bool = False

    def eval_loss(self, batch: Any) -> torch.Tensor | None:
        """Validation loss per example (``None``: this step has none)."""
        return None

    def check_data(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Check a whole data set's tensors once before training; True when checked
        (models may then skip their per-batch checks inside the loop)."""
        return False

    @property
    def declared_module(self) -> nn.Module | None:
        """The module every phase optimizes by declaration, whose model may then skip
        ``pyro.module`` inside the loop (:mod:`probgen.infer.context`); else ``None``."""
        return None

    @property
    def loss(self) -> LossFn:
        """The first phase's loss (for one-phase steps: *the* loss)."""
        return self.phases[0].loss

    def describe(self) -> str:
        return type(self.module).__qualname__ if self.module is not None else type(self).__name__

    def ignored_settings(self) -> set:
        """The :class:`~probgen.train.FitConfig` settings this step, given to ``fit``
        ready-made, does not read (``fit`` refuses them when they are set)."""
        ignored = set(STEP_SETTINGS)
        phases = list(self.phases)
        if phases and all(ph.sets_lr for ph in phases):
            ignored.add("lr")
        if phases and all(ph.optimizer is not None for ph in phases):
            ignored.add("optimizer")
        return ignored

    def signature(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (checkpointed)."""
        return {"step": type(self).__name__}


class LossStep(Step):
    """A plain PyTorch loss: ``loss_fn(module, *args, **kwargs)`` -> mean loss per example,
    the batch's tensors as the arguments (a dict batch as keyword arguments).

    Args:
        module: the network.
        loss_fn: the loss; its value is also the validation loss.
        batch_to_args: ``f(batch) -> (args, kwargs)`` for batches of another form.
        **phase_kwargs: optimizer settings of the one phase (``lr``, ``optim_kwargs``...).
    """

    def __init__(
        self,
        module: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        *,
        batch_to_args: BatchToArgs | None = None,
        **phase_kwargs: Any,
    ):
        self.module = module
        self.loss_fn = loss_fn
        self.arguments = BatchArguments(
            {"loss_fn": loss_fn}, batch_to_args, leading=(module,), where="LossStep"
        )
        self.phases = [Phase("loss", self._loss, params=module, **phase_kwargs)]

    def _loss(self, batch, ctx=None):
        args, kwargs = self.arguments(batch)
        return self.loss_fn(self.module, *args, **kwargs)

    def eval_loss(self, batch: Any) -> torch.Tensor | None:
        return self._loss(batch)


_ELBO = str | Any


def _is_elbo(obj) -> bool:
    return isinstance(obj, ELBO) or (
        hasattr(obj, "loss")
        and (hasattr(obj, "differentiable_loss") or hasattr(obj, "loss_and_grads"))
    )


def _positional_refusal(model, guide, extra) -> str:
    first = extra[0]
    if isinstance(first, PyroOptim):
        return (
            "SVIStep takes the optimizer and the loss as keywords, after the model and "
            "guide: write SVIStep(model, guide, optim=pyro.optim.Adam({...}), "
            "loss=Trace_ELBO()) (pyro.infer.SVI's third and fourth positional arguments)."
        )
    if _is_elbo(first) or isinstance(first, str):
        return (
            f"SVIStep takes the objective as a keyword: write SVIStep(model, guide, "
            f"loss={first!r})."
        )
    if isinstance(model, nn.Module) and callable(guide) and callable(first):
        return (
            "SVIStep(module, model, guide) is no longer read positionally: write "
            "SVIStep(model, guide, module=module)."
        )
    return (
        f"SVIStep takes two positional arguments, the model and the guide (got "
        f"{2 + len(extra)}); give the rest as keywords: loss=..., optim=..., module=...."
    )


def _optim_phase_kwargs(optim) -> dict[str, Any]:
    """A Pyro optimizer, a torch optimizer class or a name, as a phase's settings."""
    if isinstance(optim, str):
        OPTIMIZERS.get(optim)
        return {"optimizer": optim}
    if isinstance(optim, type) and issubclass(optim, torch.optim.Optimizer):
        return {"optimizer": optim}
    if isinstance(optim, PyroLRScheduler):
        raise ConfigError(
            "SVIStep: a Pyro learning-rate scheduler is not an optimizer here; "
            "give optim=pyro.optim.<Optimizer>({...}) and lr_schedule=... to fit."
        )
    if isinstance(optim, PyroOptim):
        clip = optim.pt_clip_args
        if callable(clip) or clip:
            raise ConfigError(
                "SVIStep: Pyro's clip_args (clipping each parameter's gradient "
                "alone) are not supported; give fit clip_norm=..., which clips the "
                "norm over all the parameters together."
            )
        args = optim.pt_optim_args
        return {
            "optimizer": optim.pt_optim_constructor,
            "optim_kwargs": args if callable(args) else dict(args),
        }
    raise ConfigError(
        f"SVIStep: optim must be a Pyro optimizer (pyro.optim.Adam({{...}})), a "
        f"torch.optim optimizer class or a name in probgen.train.OPTIMIZERS, got "
        f"{type(optim).__name__}."
    )


class _SubsampleProbe(Messenger):
    """Sees the plates of a model's observed sites: the full size of a subsampled data
    plate (``pyro.plate(name, size, subsample_size)``), or ``None`` without one."""

    def __init__(self):
        super().__init__()
        self.seen = False
        self.full_size: int | None = None

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg.get("is_observed") and not self.seen:
            self.seen = True
            sizes = [
                f.full_size
                for f in msg["cond_indep_stack"]
                if f.full_size is not None and f.size is not None and int(f.full_size) > int(f.size)
            ]
            self.full_size = int(math.prod(int(s) for s in sizes)) if sizes else None


class SVIStep(Step):
    """Stochastic variational inference of any Pyro model/guide pair, as ``pyro.infer.SVI``.

    Pyro's order, with everything after the guide given by keyword::

        SVIStep(model, guide, optim=pyro.optim.Adam({"lr": 0.01}), loss=Trace_ELBO())
        SVIStep(model, guide, loss="trace")     # probgen's objective names; fit's lr
        SVIStep(vae)                            # a module with .model and .guide
        SVIStep(model, guide, module=net)       # a module holding their networks

    The gradient is exactly ``SVI.step``'s (the ELBO summed over the batch, as Pyro's
    loss), unless ``per_example``. The reported loss is per example: the ELBO divided by
    the batch's size, or, for a model that subsamples a data plate
    (``pyro.plate("data", N, subsample_size=B)``, whose loss Pyro scales by N/B), by the
    plate's full size N; so training and validation losses are on one scale whatever
    the batch size.

    Args:
        model: a Pyro callable. A batch becomes its arguments: a tuple positionally,
            a dict as keyword arguments, a tensor as one argument.
        guide: a Pyro callable, called as ``model``.
        loss: an objective name in :data:`probgen.infer.OBJECTIVES` (``trace``,
            ``meanfield``, ``iwae``, ...) or any Pyro ELBO instance (``Trace_ELBO``,
            ``TraceGraph_ELBO``, ``TraceEnum_ELBO``, ``RenyiELBO``, ...). A name builds
            the ELBO with ``num_particles`` vectorized particles; ``max_plate_nesting``
            is inferred from the model unless given.
        optim: a Pyro optimizer (``pyro.optim.Adam({"lr": 0.01})``, its arguments a dict
            or a per-parameter function), a ``torch.optim`` optimizer class or a name in
            :data:`probgen.train.OPTIMIZERS`; default: ``fit``'s ``optimizer`` and ``lr``.
        module: the ``nn.Module`` holding the networks (optional: parameters are found
            wherever Pyro keeps them). It is checkpointed, moved to the run's device and
            back; it does not change the gradient's scale.
        num_particles: particles of the training bound of an objective given by name
            (default 1; an ELBO instance has its own).
        eval_particles: particles of the validation bound, likewise.
        max_plate_nesting: plates the model nests (``None``: inferred by Pyro).
        per_example: divide the loss by the batch's size before the gradient (probgen's
            models, tuned so: the default of ``SVIStep(module)``). ``False`` (the default
            otherwise) minimises the ELBO exactly as ``pyro.infer.SVI`` does.
        batch_to_args: ``f(batch) -> (args, kwargs)`` for batches of another form (e.g.
            Pyro's CVAE example's ``{"input": x, "output": y}`` for ``model(xs, ys)``:
            ``lambda b: ((b["input"], b["output"]), {})``).
        objective: old name of ``loss``.
        **phase_kwargs: other settings of the one :class:`Phase` (``lr``, ``clip_norm``).

    Raises:
        ConfigError: Pyro's positional order (``SVIStep(model, guide, optim)``), an
            unknown objective or optimizer; and, at the first batch, a batch that does not
            fit the model's or guide's signature.
    """

    def __init__(
        self,
        model: Callable | None = None,
        guide: Callable | None = None,
        *extra: Any,
        loss: _ELBO | None = None,
        optim: PyroOptim | type | str | None = None,
        module: nn.Module | None = None,
        num_particles: int | None = None,
        eval_particles: int | None = None,
        max_plate_nesting: int | None = None,
        per_example: bool | None = None,
        batch_to_args: BatchToArgs | None = None,
        objective: str | None = None,
        **phase_kwargs: Any,
    ):
        if extra:
            raise ConfigError(_positional_refusal(model, guide, extra))
        if loss is not None and objective is not None:
            raise ConfigError("give the objective once: loss= (or its old name objective=).")
        module_form = (
            guide is None
            and module is None
            and isinstance(model, nn.Module)
            and hasattr(model, "model")
            and hasattr(model, "guide")
        )
        if module_form:
            module, model, guide = model, model.model, model.guide
        if model is None or guide is None:
            raise ConfigError(
                "SVIStep needs a Pyro model and guide: SVIStep(model, guide, "
                "loss=..., optim=...) or SVIStep(module) for a module with "
                ".model and .guide."
            )
        if not callable(model) or not callable(guide):
            raise ConfigError(
                "SVIStep: model and guide must be callables that take the batch's tensors."
            )
        if module is not None and not isinstance(module, nn.Module):
            raise ConfigError(f"SVIStep: module must be an nn.Module, got {type(module).__name__}.")
        if optim is not None:
            if "optimizer" in phase_kwargs or "optim_kwargs" in phase_kwargs:
                raise ConfigError("SVIStep: give the optimizer once, as optim=.")
            phase_kwargs.update(_optim_phase_kwargs(optim))
        self.module = module
        self.model, self.guide = model, guide
        loss = objective if loss is None else loss
        loss = "trace" if loss is None else loss
        # A module's own model/guide methods (probgen's models, a tutorial-style VAE
        # class): probgen's own models also nest exactly one data plate and train in a
        # scope of the param store of their own.
        own_methods = module is not None and getattr(model, "__self__", None) is module
        isolated = own_methods and bool(getattr(module, "isolate_param_store", False))
        if max_plate_nesting is None and isolated:
            max_plate_nesting = getattr(module, "max_plate_nesting", 1)
        if isinstance(loss, str):
            n = 1 if num_particles is None else checks.positive_int("num_particles", num_particles)
            m = (
                n
                if eval_particles is None
                else checks.positive_int("eval_particles", eval_particles)
            )
            self.objective = loss
            self.elbo = make_elbo(loss, n, max_plate_nesting)
            self.eval_elbo = make_elbo(loss, m, max_plate_nesting, eager=True)
        else:
            if not _is_elbo(loss):
                raise ConfigError(
                    f"loss must be an objective name or a Pyro ELBO instance, "
                    f"got {type(loss).__name__}."
                )
            if num_particles is not None or eval_particles is not None:
                raise ConfigError(
                    f"SVIStep: {type(loss).__name__} instance has its own "
                    f"num_particles; give them to it, not to SVIStep."
                )
            self.objective = type(loss).__name__
            self.elbo = self.eval_elbo = loss
        self.per_example = module_form if per_example is None else bool(per_example)
        self.isolate_param_store = isolated
        self._own_methods = own_methods
        self.arguments = BatchArguments({"model": model, "guide": guide}, batch_to_args)
        self._divisors: dict[Any, int | None] = {}
        owns = not hasattr(self.elbo, "differentiable_loss")
        # The module's parameters, and whatever else the ELBO touches through Pyro
        # (looked for on every step, as SVI.step does; once for probgen's own models).
        self.phases = [
            Phase(
                "elbo",
                self._loss,
                params=module,
                discover="first" if isolated else True,
                owns_backward=owns,
                **phase_kwargs,
            )
        ]

    def _divisor(self, n: int, key, run: Callable[[], Any]):
        """Run the ELBO (``run``) and return ``(its value, the number of examples it
        covers)``: the batch's ``n``, or a subsampled data plate's full size. Looked
        for on the first batch of each form only (a messenger on one call)."""
        if key in self._divisors:
            return run(), self._divisors[key] or n
        if type(self.elbo).__name__.startswith("Jit"):
            self._divisors[key] = None
            return run(), n
        probe = _SubsampleProbe()
        with probe:
            value = run()
        self._divisors[key] = probe.full_size
        return value, probe.full_size or n

    def _loss(self, batch, ctx=None):
        args, kwargs = self.arguments(batch)
        n = batch_len(batch)
        key = (len(args), tuple(kwargs))
        if self.phases[0].owns_backward:
            # Pyro objectives without differentiable_loss (TraceGraph_ELBO, RenyiELBO)
            # compute their own surrogate gradients; SVI calls them the same way.
            value, d = self._divisor(
                n, key, lambda: self.elbo.loss_and_grads(self.model, self.guide, *args, **kwargs)
            )
            value = torch.as_tensor(float(value))
            return value, value / d
        loss, d = self._divisor(
            n, key, lambda: self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
        )
        if self.per_example:
            loss = loss / d
            return loss
        return loss, loss.detach() / d

    @property
    def declared_module(self) -> nn.Module | None:
        # The one phase declares params=module; its own model/guide methods see it. A
        # compiled (Jit*) ELBO traces the parameters through pyro.module: never skipped.
        if not self._own_methods or type(self.elbo).__name__.startswith("Jit"):
            return None
        return self.module

    def check_data(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Check a whole data set once, before the first step, with the module's own
        ``check_data(*tensors)`` (called as its ``model`` is, on the batch's tensors).
        True when it did: the model may then skip its per-batch check inside the loop
        (:func:`probgen.infer.context.current_step`). False for a bare model/guide pair or
        a module without ``check_data``; a data error propagates, before any update."""
        check = getattr(self.module, "check_data", None) if self._own_methods else None
        if check is None:
            return False
        check(*tensors)
        return True

    def eval_loss(self, batch: Any) -> torch.Tensor | None:
        args, kwargs = self.arguments(batch)
        n = batch_len(batch)
        key = (len(args), tuple(kwargs))
        elbo = self.eval_elbo
        if hasattr(elbo, "differentiable_loss"):
            value, d = self._divisor(
                n, key, lambda: elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
            )
            return value / d
        value, d = self._divisor(n, key, lambda: elbo.loss(self.model, self.guide, *args, **kwargs))
        return torch.as_tensor(float(value)) / d

    def describe(self) -> str:
        return (
            type(self.module).__qualname__ if self.module is not None else callable_name(self.model)
        )

    def signature(self) -> dict[str, Any]:
        opt = self.phases[0].optimizer
        return {
            "step": "SVIStep",
            "elbo": type(self.elbo).__name__,
            "num_particles": getattr(self.elbo, "num_particles", None),
            "optimizer": opt if isinstance(opt, str) or opt is None else opt.__name__,
            "per_example": self.per_example,
        }


class ELBOLoss:
    """The negative ELBO of a Pyro model/guide pair as a term of any phase's loss.

    How an adversarial family adds its custom loss to a Pyro objective::

        neg_elbo = ELBOLoss(aae.model, aae.guide, "meanfield")
        Phase("generator", lambda batch, ctx: neg_elbo(batch) + lam * adversarial(batch),
              params=aae.decoder, discover=False)

    Args:
        model: a Pyro callable taking the batch's tensors (a dict batch as keyword
            arguments).
        guide: a Pyro callable, called as ``model``.
        loss: an objective name or a Pyro ELBO instance with ``differentiable_loss``.
        num_particles: as for :class:`SVIStep`.
        max_plate_nesting: as for :class:`SVIStep`.
        per_example: divide by the batch size (the default) or return Pyro's sum.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        loss: _ELBO = "trace",
        num_particles: int = 1,
        max_plate_nesting: int | None = 1,
        per_example: bool = True,
    ):
        self.model, self.guide = model, guide
        self.elbo = (
            make_elbo(loss, num_particles, max_plate_nesting) if isinstance(loss, str) else loss
        )
        if not hasattr(self.elbo, "differentiable_loss"):
            raise ConfigError(
                f"{type(self.elbo).__name__} has no differentiable_loss, so it cannot "
                f"be one term of a sum; use an SVIStep for it alone."
            )
        self.per_example = per_example

    def __call__(self, batch) -> torch.Tensor:
        args, kwargs = default_batch_to_args(batch)
        loss = self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
        return loss / batch_len(batch) if self.per_example else loss


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

    def __init__(
        self,
        module: nn.Module | None,
        phases: Iterable[Phase],
        eval_loss: Callable | None = None,
        isolate_param_store: bool = True,
    ):
        self.module = module
        self.phases = list(phases)
        if not self.phases:
            raise ConfigError("a PhasedStep needs at least one Phase.")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ConfigError(f"phase names must differ, got {names}.")
        self._eval_loss = eval_loss
        self.isolate_param_store = isolate_param_store

    def eval_loss(self, batch: Any) -> torch.Tensor | None:
        return None if self._eval_loss is None else self._eval_loss(batch)


def as_step(obj: Any, config: Any, batch_to_args: BatchToArgs | None = None) -> Step:
    """A :class:`Step` for ``obj``: a step already; a model with ``fit_step(config)``
    (the adversarial families); a module with ``model``/``guide`` (SVI); a network
    with a ``loss`` method.

    ``config`` is the run's :class:`~probgen.train.FitConfig`: its ``objective``,
    ``num_particles`` and ``eval_particles`` build an SVI step, and a model's
    ``fit_step(config)`` reads what it needs.
    """
    if isinstance(obj, Step):
        return obj
    if callable(getattr(obj, "fit_step", None)):
        if batch_to_args is not None:
            raise ConfigError(
                f"batch_to_args is for a model/guide pair or a network with a "
                f".loss; {type(obj).__name__} builds its own step."
            )
        step = obj.fit_step(config)
        if not isinstance(step, Step):
            raise ConfigError(f"{type(obj).__name__}.fit_step must return a probgen Step.")
        return step
    if isinstance(obj, nn.Module) and hasattr(obj, "model") and hasattr(obj, "guide"):
        return SVIStep(
            obj,
            objective=config.objective,
            num_particles=config.num_particles,
            eval_particles=config.eval_particles,
            batch_to_args=batch_to_args,
        )
    if isinstance(obj, nn.Module) and callable(getattr(obj, "loss", None)):
        step = LossStep(obj, lambda module, *args, **kwargs: module.loss(*args, **kwargs))
        step.arguments = BatchArguments(
            {"loss": obj.loss}, batch_to_args, where=f"{type(obj).__name__}.loss"
        )
        return step
    if hasattr(obj, "loss") and hasattr(obj, "module"):  # a step of the older, duck-typed form
        legacy = Step()
        legacy.module = obj.module
        legacy.phases = [Phase("loss", lambda b, ctx: obj.loss(b), params=obj.module)]
        legacy.eval_loss = getattr(obj, "eval_loss", lambda b: None)
        return legacy
    raise ConfigError(
        f"fit() needs a Pyro model with .model and .guide methods, a network with a .loss "
        f"method, an SVIStep, a LossStep or a PhasedStep; got {type(obj).__name__}. Wrap a "
        f"plain network as LossStep(net, loss_fn) and a model/guide pair as SVIStep(model, guide)."
    )
