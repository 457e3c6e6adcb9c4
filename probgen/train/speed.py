"""Speed settings of a run on a GPU: all opt-in, all undone when ``fit`` returns.

Four settings of :class:`~probgen.train.FitConfig`, none of them on by default: no GPU
has measured them for probgen's models yet, and a setting becomes a default only once it
has been measured (``benchmarks/gpu_check.sh``).

* ``matmul_precision`` (``"highest"``, ``"high"``, ``"medium"``): torch's internal
  precision of float32 matrix products (:func:`torch.set_float32_matmul_precision`;
  ``"high"`` lets an Ampere or later GPU use TensorFloat-32), for the duration of ``fit``
  only: :func:`matmul_precision` puts the user's setting back exactly as it was.
* ``precision="bf16"``: the step's *networks* (the plain ``nn.Module`` parts of the
  model: encoders, decoders, discriminators, a flow's coupling networks) run under
  :func:`torch.autocast` with bfloat16, and their outputs come back in float32. Every
  probabilistic computation after them (distributions, log-densities, the ELBO's sums,
  a flow's log-determinant, the loss) stays in float32: the networks' matrix products are
  where mixed precision pays, and a bfloat16 sum over hundreds of log-density terms keeps
  about three significant digits. Parameters, gradients and optimizer states stay
  float32; bfloat16 needs no loss scaling (it has float32's exponent range).
* ``compile``: :func:`torch.compile` of the same networks, after a first eager step
  (Pyro creates parameters lazily on the first step, and the loop finds them by tracing
  it; lazy torch modules initialise there too). Pyro callables (a ``PyroModule``, an
  AutoGuide, a flow's transforms) are not compiled: only what a network's ``forward``
  computes.
* ``data_on_device``: where a :class:`~probgen.data.TensorData` lives during the run.
  The fast path, and the default, is the whole data set on the GPU (MNIST-size data
  takes a few hundred MB): batches are slices there, with no copy per batch. A data set
  too large for that (``"auto"``: more than half of the GPU's free memory) stays in host
  memory, and each batch is gathered into pinned (page-locked) memory and copied to the
  GPU asynchronously (:meth:`probgen.data.TensorData.batches`).

How a network runs differently during ``fit``: its ``forward`` is replaced, on the
instance, by a small callable (:class:`NetworkCall`) that enters autocast and/or calls
the compiled function, and the instance attribute is removed when ``fit`` returns (a
``forward`` the user had set on the instance is put back). ``state_dict``, parameters and
module structure never change, so checkpoints are those of an eager float32 run. A deep
copy of a network made during ``fit`` (a weight-averaging callback) runs like it until
``fit`` returns and is restored with it; a network pickled during ``fit`` is stored as a
plain one.

Why not ``nn.Module.compile()`` or ``torch.compile(module)``: the first stores the
compiled function in a private attribute, the second returns a wrapper module whose
``state_dict`` keys differ (``_orig_mod.``); and neither runs the network alone under
autocast while leaving the rest of a Pyro model in float32.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from probgen import checks
from probgen.errors import ConfigError
from probgen.train.checkpoint import callable_modules

__all__ = [
    "COMPILE_OPTIONS",
    "DEVICE_DATA_SHARE",
    "MATMUL_PRECISIONS",
    "PRECISIONS",
    "NetworkCall",
    "NetworkSpeed",
    "device_free_memory",
    "find_networks",
    "matmul_precision",
    "place_on_device",
    "speed_plan",
]

MATMUL_PRECISIONS = ("highest", "high", "medium")
"""Values of ``FitConfig.matmul_precision`` (``None``: leave torch's setting alone)."""

PRECISIONS = {"bf16": torch.bfloat16}
"""Values of ``FitConfig.precision`` (``None``: float32 throughout). float16 is not
offered: it needs loss scaling, and bfloat16 runs wherever float16 autocast would pay."""

DEVICE_DATA_SHARE = 0.5
"""``data_on_device="auto"`` keeps a data set on the GPU when it takes at most this share
of the GPU's free memory (measured when ``fit`` starts; training data first)."""


def _compile_options() -> frozenset:
    try:
        return frozenset(inspect.signature(torch.compile).parameters) - {"model"}
    except (TypeError, ValueError):  # pragma: no cover - a torch without a signature
        return frozenset({"fullgraph", "dynamic", "backend", "mode", "options", "disable"})


COMPILE_OPTIONS = _compile_options()
"""The keyword arguments of :func:`torch.compile` that ``FitConfig.compile`` may hold."""


# --------------------------------------------------------------------------- TF32


# torch >= 2.9 keeps the float32 precision per backend (``torch.backends.<b>.<op>
# .fp32_precision``) next to the older global setting; the two are kept apart by torch,
# and reading the old one after a new one was set raises. So the setting is saved in both
# forms and each is put back through its own interface: after fit, every getter returns
# what it returned before (tested in tests/test_speed.py).
def _fp32_slots() -> list[Any]:
    b = torch.backends
    slots = [b]
    for backend in ("cuda", "cudnn", "mkldnn"):
        mod = getattr(b, backend, None)
        if mod is None:
            continue
        if backend != "cuda" and hasattr(mod, "fp32_precision"):
            slots.append(mod)
        for op in ("matmul", "conv", "rnn"):
            obj = getattr(mod, op, None)
            if obj is not None and hasattr(obj, "fp32_precision"):
                slots.append(obj)
    return [s for s in slots if _readable(s)]


def _readable(slot) -> bool:
    try:
        return isinstance(slot.fp32_precision, str)
    except (AttributeError, RuntimeError):
        return False


def _legacy_precision() -> str | None:
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:  # the newer per-backend setting was used: the old one is unset
        return None


@contextlib.contextmanager
def matmul_precision(value: str | None) -> Iterator[None]:
    """Set torch's float32 matrix-product precision for the ``with`` block only.

    ``None`` changes nothing. ``"high"`` allows TensorFloat-32 on Ampere or later GPUs
    (10 mantissa bits instead of 23 in the products, sums in float32), ``"medium"``
    bfloat16 products where the hardware has them (on the CPU too, through oneDNN),
    ``"highest"`` full float32. Convolutions follow cuDNN's own setting, which torch
    leaves at TF32 by default. On exit the user's setting is restored exactly, in the
    form (old global or per-backend) it was made.
    """
    if value is None:
        yield
        return
    checks.choice("matmul_precision", value, MATMUL_PRECISIONS, hint="or None")
    slots = _fp32_slots()
    saved = [s.fp32_precision for s in slots]
    previous = _legacy_precision()
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        if previous is not None:
            torch.set_float32_matmul_precision(previous)
        for slot, old in zip(slots, saved):
            if slot.fp32_precision != old:
                slot.fp32_precision = old


# --------------------------------------------------------------------------- networks


def _is_pyro_part(m: nn.Module) -> bool:
    """A Pyro callable or object: a ``PyroModule`` (an AutoGuide too) or a transform."""
    from pyro.nn import PyroModule

    return isinstance(m, (PyroModule, torch.distributions.Transform))


def _has_forward(m: nn.Module) -> bool:
    return getattr(type(m), "forward", None) is not getattr(nn.Module, "forward", None)


def _trainable(m: nn.Module) -> bool:
    return any(p.requires_grad for p in m.parameters())


def find_networks(roots: Iterable[nn.Module]) -> list[nn.Module]:
    """The networks of a model: the largest plain ``nn.Module`` parts with a ``forward``
    and trainable parameters, holding no Pyro callable (``PyroModule``, AutoGuide,
    transform) anywhere inside; in the order ``named_modules`` meets them.

    A root that is itself such a network (a plain network trained by a ``LossStep``) is
    one network; a root with ``model``/``guide`` or ``fit_step`` (a Pyro model) is not,
    and its parts are looked at.
    """
    out: list[nn.Module] = []
    seen = set()

    def plain(m: nn.Module) -> bool:
        return not any(_is_pyro_part(s) for s in m.modules())

    def visit(m: nn.Module, root: bool) -> None:
        if id(m) in seen:
            return
        seen.add(id(m))
        model_like = root and (
            (hasattr(m, "model") and hasattr(m, "guide")) or hasattr(m, "fit_step")
        )
        if not model_like and _has_forward(m) and plain(m):
            if _trainable(m):
                out.append(m)
            return
        for child in m.children():
            visit(child, False)

    for r in roots:
        if isinstance(r, nn.Module):
            visit(r, True)
    return out


def _cast_back(out, low: torch.dtype, want: torch.dtype):
    """Floating tensors that autocast made ``low`` back in ``want`` (tuples, lists and
    dicts of them too); anything else as it is."""
    if torch.is_tensor(out):
        return out.to(want) if out.dtype == low else out
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a named tuple
        return type(out)(*(_cast_back(o, low, want) for o in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_cast_back(o, low, want) for o in out)
    if isinstance(out, dict):
        return {k: _cast_back(v, low, want) for k, v in out.items()}
    return out


def _itself(x):
    return x


class NetworkCall:
    """A network's ``forward`` during ``fit``: the original under autocast (outputs
    back in float32) and/or compiled. Installed on the instance, removed when ``fit``
    returns (:class:`NetworkSpeed`)."""

    def __init__(self, speed: NetworkSpeed, module: nn.Module, original, user: bool):
        self.speed = speed
        self.module = weakref.ref(module)
        self.original = original  # the class's forward bound to module, or the user's
        self.user = user  # the user had set a forward on the instance
        self.call = self._run

    def _run(self, *args, **kwargs):
        s = self.speed
        if s.autocast is None:
            return self.original(*args, **kwargs)
        with torch.autocast(s.device_type, dtype=s.autocast):
            out = self.original(*args, **kwargs)
        return _cast_back(out, s.autocast, s.dtype)

    def __call__(self, *args, **kwargs):
        return self.call(*args, **kwargs)

    def __reduce__(self):
        # A module pickled during fit (torch.save(model) in a callback) is stored as a
        # plain one: its forward as the class's (or the user's own), no autocast.
        module = self.module()
        if self.user or module is None:
            return (_itself, (self.original,))
        return (functools.partial, (type(module).forward, module))

    def __deepcopy__(self, memo):
        # A copy of the network made during fit (copy.deepcopy(module), as a weight
        # average does): it runs like the original, eagerly, until fit returns and
        # restores it too. (deepcopy registers the copy in memo before its attributes.)
        module = self.module()
        twin = memo.get(id(module)) if module is not None else None
        if twin is None:
            return self
        original = copy.deepcopy(self.original, memo) if self.user else None
        return self.speed._attach(twin, original, self.user)


class NetworkSpeed:
    """Installs and removes the run's :class:`NetworkCall` on each network.

    Args:
        networks: from :func:`find_networks`.
        device_type: ``"cuda"`` or ``"cpu"`` (autocast's device).
        autocast: the lower-precision dtype (``torch.bfloat16``) or ``None``.
        compile: ``None`` (no compile) or :func:`torch.compile`'s keyword arguments.
        dtype: the networks' parameters' dtype, which outputs come back in.
    """

    def __init__(
        self,
        networks: list[nn.Module],
        device_type: str,
        autocast: torch.dtype | None = None,
        compile: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.networks = list(networks)
        self.device_type = device_type
        self.autocast = autocast
        self.compile_kwargs = compile
        self.dtype = dtype
        self.compile_pending = compile is not None
        self._installed: list[NetworkCall] = []

    def _attach(self, module: nn.Module, original=None, user: bool = False) -> NetworkCall:
        if original is None:
            original = type(module).forward.__get__(module)
        call = NetworkCall(self, module, original, user)
        self._installed.append(call)
        return call

    def install(self) -> None:
        for m in self.networks:
            user = "forward" in m.__dict__
            m.forward = self._attach(m, m.__dict__["forward"] if user else None, user)

    def compile_now(self) -> None:
        """Compile every network's call (after the warm-up step); copies stay eager."""
        self.compile_pending = False
        mine = {id(m) for m in self.networks}
        for call in self._installed:
            if id(call.module()) in mine:
                call.call = torch.compile(call._run, **dict(self.compile_kwargs or {}))

    def restore(self) -> None:
        """Every network (and copy) back to its own ``forward``."""
        for call in reversed(self._installed):
            m = call.module()
            if m is None or m.__dict__.get("forward") is not call:
                continue
            if call.user:
                m.forward = call.original
            else:
                del m.__dict__["forward"]
        self._installed.clear()

    @contextlib.contextmanager
    def active(self) -> Iterator[NetworkSpeed]:
        self.install()
        try:
            yield self
        finally:
            self.restore()


# --------------------------------------------------------------------------- data


def device_free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (a CUDA device), ``None`` where that is not known."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def data_bytes(data) -> int:
    return int(sum(t.numel() * t.element_size() for t in data.tensors))


def place_on_device(
    sizes: dict[str, int], device: torch.device, setting: bool | str
) -> dict[str, bool]:
    """Which data sets (``name -> bytes``, in order) go to ``device`` whole: all with
    ``True``, none with ``False``; with ``"auto"``, each while it takes at most
    :data:`DEVICE_DATA_SHARE` of the free memory left (all of them on a device whose
    free memory is not known: the CPU)."""
    if isinstance(setting, bool):
        return dict.fromkeys(sizes, setting)
    free = device_free_memory(device)
    out = {}
    for k, n in sizes.items():
        if free is None:
            out[k] = True
        elif n <= DEVICE_DATA_SHARE * free:
            out[k] = True
            free -= n
        else:
            out[k] = False
    return out


def speed_plan(config, module, step, device: torch.device) -> NetworkSpeed | None:
    """The networks of a run's ``step`` (its ``module``, or the modules of its model/guide
    pair) that ``precision`` and ``compile`` concern, checked before any training; ``None``
    when neither is asked for in ``config``.

    Raises:
        ConfigError: no network to speed up, networks of another dtype than float32 for
            bfloat16, a GPU without native bfloat16.
    """
    c = config
    if c.precision is None and not c.compile:
        return None
    asked = " and ".join(
        x
        for x in (
            f"precision={c.precision!r}" if c.precision else "",
            "compile" if c.compile else "",
        )
        if x
    )
    roots = (
        [module]
        if module is not None
        else list(
            callable_modules(getattr(step, "model", None), getattr(step, "guide", None)).values()
        )
    )
    networks = find_networks(roots)
    if not networks:
        raise ConfigError(
            f"{asked} concerns the networks of the model (plain nn.Modules with trainable "
            f"parameters: encoders, decoders, coupling networks), and "
            f"{step.describe()} has none that fit holds; give the step a module "
            f"holding them (SVIStep(model, guide, module=net)), or leave {asked} unset."
        )
    low = PRECISIONS.get(c.precision) if c.precision is not None else None
    dtypes = sorted(
        {
            str(p.dtype).replace("torch.", "")
            for n in networks
            for p in n.parameters()
            if p.is_floating_point()
        }
    )
    if low is not None:
        if dtypes != ["float32"]:
            raise ConfigError(
                f"precision={c.precision!r} runs float32 networks in "
                f"bfloat16, and {step.describe()}'s networks hold "
                f"{'/'.join(dtypes)} parameters; give float32 ones or leave "
                f"precision unset."
            )
        # emulated bfloat16 (GPUs before Ampere) runs, but slower than float32
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ConfigError(
                f"precision={c.precision!r}: {device} "
                f"({torch.cuda.get_device_name(device)}) has no native "
                f"bfloat16 support; leave precision unset on this GPU."
            )
    options = None
    if c.compile:
        options = dict(c.compile) if isinstance(c.compile, dict) else {}
    return NetworkSpeed(networks, device.type, autocast=low, compile=options, dtype=torch.float32)
