"""Every example, trained "on a GPU" on this CPU-only machine: device mixes after training.

Two checks, each able to fail where the other cannot:

* **The whole ``--smoke`` run on fake CUDA** (:func:`fake_cuda_run`). ``--device cuda``
  is accepted, and every tensor moved to CUDA (``.to("cuda")``, ``Module.to``, a factory
  with ``device="cuda"``) becomes one of torch's ``FakeTensor``\\ s on ``cuda:0``: it has a
  shape, a dtype and a device but no data, and each operator on it runs through the same
  device rules as on a GPU. A tensor made on the CPU (``torch.zeros(n)``, a model built
  on the CPU and handed back there by ``fit``, a figure's grid) is a real CPU tensor; the
  first operator that meets it with a CUDA one raises, as CUDA would
  (``FakeTensorDeviceMismatchError``). The run is the script's own ``main``: data
  loading, ``fit`` (its loop, callbacks, checkpoints), evaluation, figures and results.
* **A static check** (:func:`test_no_tensor_factory_without_a_device_in_the_examples`):
  tensor factories in ``examples/*.py`` name a device (or are ``x.new_*``/``*_like``),
  except lines listed, with the reason, in :data:`CPU_ONLY`. It sees the code paths that a
  ``--smoke`` run with default flags does not take.

**What the fake run cannot see**, and how it stands in. No kernel runs. The backward pass
needs autograd's engine on a real device: for fake outputs ``backward`` sets no gradient
(so optimisers skip every parameter) and ``torch.autograd.grad`` gives zeros; the weights
stay as drawn. A value read back to the host (``.item()``, ``bool``, ``float``) has no data:
it answers "nothing found" (``False``/``0``), as probgen's checks ask ("is anything
bad?"), and ``True`` for an ``all()`` ("is everything fine?"); ``.numpy()`` gives zeros.
An operator whose output size depends on the data (``nonzero``, a boolean mask) selects
everything. Checkpoints are written with zeros in place of fake tensors. So the numbers of
these runs mean nothing; only that they finish does. cuDNN/cuBLAS, streams and memory are
``benchmarks/gpu_check.sh``'s, on a lent GPU.
"""

from __future__ import annotations

import ast
import contextlib
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves, tree_map

ROOT = Path(__file__).resolve().parents[1]
aten = torch.ops.aten


# --------------------------------------------------------------------------- the harness


def _is_cuda(device) -> bool:
    if device is None or isinstance(device, (torch.Tensor, torch.dtype, bool, int)):
        return False
    try:
        return torch.device(device).type == "cuda"
    except (TypeError, RuntimeError, ValueError):
        return False


def _fake_leaf(x) -> bool:
    return isinstance(x, FakeTensor)


class _ToFakeCuda(TorchFunctionMode):
    """Runs under the fake mode every torch call that makes or touches a CUDA tensor: a
    move to CUDA, a factory with ``device="cuda"``, any call with a fake argument. Real
    CPU tensors stay real (and meet a fake CUDA one as a device mix)."""

    def __init__(self, mode: FakeTensorMode):
        super().__init__()
        self.mode = mode
        self.answers = _Answers(mode)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "pin_memory":  # page-locked host memory needs a CUDA driver
            return args[0]
        if name == "is_pinned":
            return False
        fake = _is_cuda(kwargs.get("device")) or (
            name in ("to", "cuda")
            and (
                name == "cuda"
                or any(_is_cuda(a) or (_fake_leaf(a) and a.device.type == "cuda") for a in args[1:])
            )
        )
        if fake or any(_fake_leaf(a) for a in tree_leaves((args, kwargs))):
            with self.mode, self.answers:  # the answers first, then the fake kernels
                out = func(*args, **kwargs)
            if name == "isfinite":  # (a composite of other operators)
                out._known = True
            return out
        return func(*args, **kwargs)


def _real_value(t: torch.Tensor):
    """A real one-element tensor's value, read with no mode in the way."""
    with _disable_current_modes():
        return t.item()


# what answers "yes": everything is (finite, true); an any() of what is known answers as it
_TRUE = {aten.all.default, aten.all.dim, aten.all.dims, aten.equal.default, aten.isfinite.default}
_ANY = {aten.any.default, aten.any.dim, aten.any.dims}


class _Answers(TorchDispatchMode):
    """Answers what needs data. A host read of a fake tensor gives the value the tensor is
    known to hold (a small real tensor moved to CUDA, ``fill_``, copies of those: a
    module's flags such as ActNorm's ``initialized``; ``True`` for what ``all`` or
    ``isfinite`` made: "everything is fine"), else ``False`` for a boolean ("nothing
    found") and 1 for a number (a size or a scale: not 0, which divides). A
    data-dependent result selects everything."""

    def __init__(self, mode: FakeTensorMode):
        super().__init__()
        self.mode = mode

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not any(_fake_leaf(a) for a in tree_leaves((args, kwargs))):
            out = func(*args, **kwargs)
            if func is aten._to_copy.default and _fake_leaf(out) and args[0].numel() == 1:
                out._known = _real_value(args[0])  # a real scalar moved to CUDA
            return out
        if func is aten._local_scalar_dense.default:
            t = args[0]
            if hasattr(t, "_known"):
                return t._known
            if t.dtype == torch.bool:
                return False
            return 1.0 if t.is_floating_point() else 1
        if func is aten.nonzero.default:
            x = args[0]
            with self.mode:
                return torch.empty((x.numel(), x.dim()), dtype=torch.long, device=x.device)
        if func is aten.bincount.default:
            minlength = kwargs.get("minlength", args[2] if len(args) > 2 else 0)
            with self.mode:
                return torch.zeros((max(minlength, 1),), dtype=torch.long, device=args[0].device)
        if func in (
            aten._unique2.default,
            aten.unique_dim.default,
            aten.unique_consecutive.default,
        ):
            x = args[0]
            with self.mode:
                return (
                    x.new_empty((x.numel(),)),
                    x.new_zeros(x.shape, dtype=torch.long),
                    x.new_ones((x.numel(),), dtype=torch.long),
                )
        if func is aten.masked_select.default:
            x, mask = args[0], args[1]
            n = torch.broadcast_shapes(x.shape, mask.shape).numel()
            with self.mode:
                return torch.empty((n,), dtype=x.dtype, device=x.device)
        if func in (
            aten.index.Tensor,
            aten.index_put.default,
            aten.index_put_.default,
            aten._index_put_impl_.default,
        ):
            indices = list(args[1])
            if any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in indices):
                new = []
                for i in indices:
                    if torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8):
                        with self.mode:
                            new += [
                                torch.zeros(i.numel(), dtype=torch.long, device=i.device)
                                for _ in range(i.dim())
                            ]
                    else:
                        new.append(i)
                return func(args[0], new, *args[2:], **kwargs)
        out = func(*args, **kwargs)
        if func in _TRUE:
            out._known = True
        elif func in _ANY and hasattr(args[0], "_known"):
            out._known = args[0]._known
        elif func is aten.fill_.Scalar:
            args[0]._known = args[1]
        elif func is aten.copy_.default:
            src = args[1]
            if hasattr(src, "_known"):
                args[0]._known = src._known
            elif not _fake_leaf(src) and src.numel() == 1:
                args[0]._known = _real_value(src)
            elif hasattr(args[0], "_known"):
                del args[0]._known
        elif func in (
            aten.clone.default,
            aten.detach.default,
            aten._to_copy.default,
            aten.alias.default,
        ) and hasattr(args[0], "_known"):
            out._known = args[0]._known
        elif (
            getattr(func, "_schema", None) is not None
            and func._schema.name.endswith("_")
            and _fake_leaf(args[0])
            and hasattr(args[0], "_known")
        ):
            del args[0]._known  # changed in place: no longer known
        return out


def _fake_resolve(device):
    if str(device) in ("auto", "cuda"):
        return torch.device("cuda")
    return torch.device(str(device))


def _swap_fake(real_swap):
    """``Module.to`` swaps a fake parameter for its moved copy; the fake mode keeps a weak
    reference to each of its tensors, which ``swap_tensors`` refuses: the data (and the
    fake's device) are set in place instead, as ``param.data = ...`` does for real ones."""

    def swap(t1, t2):
        if not (_fake_leaf(t1) or _fake_leaf(t2)):
            return real_swap(t1, t2)
        with torch.no_grad():
            t1.data = t2.detach()
        if _fake_leaf(t1) and _fake_leaf(t2):
            t1.fake_device = t2.fake_device

    return swap


def _save_zeros(real_save):
    """``torch.save`` with zeros in place of fake tensors (which have no data)."""

    def save(obj, f, *args, **kwargs):
        def real(t):
            if _fake_leaf(t):
                return torch.zeros(t.shape, dtype=t.dtype)
            return t

        return real_save(tree_map(real, obj), f, *args, **kwargs)

    return save


def _zeros_like_numpy(t, *args, **kwargs):
    """A fake tensor's ``.numpy()``: zeros of its shape and dtype."""
    with _disable_current_modes():
        dtype = torch.empty((), dtype=t.dtype).numpy().dtype
    return np.zeros(tuple(t.shape), dtype=dtype)


def _no_backward(real_engine):
    """Autograd's engine for fake outputs: ``backward`` leaves every gradient unset (the
    optimisers then skip the parameters), ``autograd.grad`` gives zeros."""

    def run(t_outputs, *args, **kwargs):
        if not any(_fake_leaf(t) for t in t_outputs):
            return real_engine(t_outputs, *args, **kwargs)
        if kwargs.get("accumulate_grad", True):
            return ()
        return tuple(torch.zeros_like(i) for i in args[3])

    return run


def _load_to_fake(real_load):
    """``torch.load(..., map_location="cuda")``: read on the CPU, then moved to CUDA (fake)."""

    def load(f, map_location=None, *args, **kwargs):
        if not _is_cuda(map_location):
            return real_load(f, *args, map_location=map_location, **kwargs)
        obj = real_load(f, *args, map_location="cpu", **kwargs)
        return tree_map(lambda t: t.to("cuda") if torch.is_tensor(t) else t, obj)

    return load


@contextlib.contextmanager
def fake_cuda_run():
    """The context in which a script's ``main(["--device", "cuda", ...])`` runs on fake
    CUDA (see the module docstring). Everything it patches is undone on exit."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    mp = pytest.MonkeyPatch()
    lib = torch.library.Library("aten", "FRAGMENT")

    def gru_cell(input_gates, hidden_gates, hx, input_bias=None, hidden_bias=None):
        # a GPU runs nn.GRUCell as one fused kernel, which has no fake implementation
        return hx.new_empty(hx.shape), hx.new_empty((hx.shape[0], 5 * hx.shape[1]))

    try:
        torch.library.register_fake("aten::_thnn_fused_gru_cell", gru_cell, lib=lib)
        # every probgen module that holds the device resolver (the cli, the loop, wherever
        # the training layers keep it) resolves "auto" and "cuda" to the fake device
        import probgen.cli  # imported first: it binds the resolver

        real_resolve = probgen.train.resolve_device
        for name, module in list(sys.modules.items()):
            if (
                name.startswith("probgen")
                and getattr(module, "resolve_device", None) is real_resolve
            ):
                mp.setattr(module, "resolve_device", _fake_resolve)
        mp.setattr(
            torch.autograd,
            "_engine_run_backward",
            _no_backward(torch.autograd._engine_run_backward),
        )
        mp.setattr(torch, "save", _save_zeros(torch.save))
        mp.setattr(torch, "load", _load_to_fake(torch.load))
        mp.setattr(torch.utils, "swap_tensors", _swap_fake(torch.utils.swap_tensors))
        for name in ("get_rng_state", "get_rng_state_all"):
            mp.setattr(torch.cuda, name, lambda *a, **k: torch.zeros(16, dtype=torch.uint8))
        for name in ("set_rng_state", "manual_seed", "manual_seed_all", "synchronize"):
            mp.setattr(torch.cuda, name, lambda *a, **k: None)
        mp.setattr(torch.cuda, "current_device", lambda: 0)
        mp.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
        mp.setattr(torch.cuda, "default_generators", (torch.Generator(),))
        # KID's 100 random subsets are torchmetrics' own code on the features' device; on
        # fake tensors each operator costs the fake mode's overhead, so two are computed
        from torchmetrics.image.kid import KernelInceptionDistance

        init = KernelInceptionDistance.__init__
        mp.setattr(
            KernelInceptionDistance,
            "__init__",
            lambda self, *a, subsets=100, **k: init(self, *a, subsets=min(subsets, 2), **k),
        )
        mp.setattr(FakeTensor, "numpy", _zeros_like_numpy, raising=False)
        mp.setattr(
            FakeTensor,
            "__format__",
            lambda self, spec: (
                format(self.item(), spec) if self.dim() == 0 else object.__format__(self, spec)
            ),
        )
        mp.setattr(
            FakeTensor, "tolist", lambda self: np.zeros(tuple(self.shape)).tolist(), raising=False
        )
        with _ToFakeCuda(mode), pyro.validation_enabled(False):
            validate = torch.distributions.Distribution._validate_args
            torch.distributions.Distribution.set_default_validate_args(False)
            try:
                yield mode
            finally:
                torch.distributions.Distribution.set_default_validate_args(validate)
    finally:
        mp.undo()
        lib._destroy()


def run_on_fake_cuda(script: str, *argv, out: Path) -> int:
    """``examples/script --smoke --device cuda argv`` in this process on fake CUDA; its exit
    status (a device mix raises through: :func:`probgen.cli.run` keeps the traceback of
    what is no probgen error)."""
    from tests.conftest import load_example

    if str(ROOT / "examples") not in sys.path:
        sys.path.insert(0, str(ROOT / "examples"))  # the examples' shared helpers
    example = load_example(Path(script).stem)
    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    try:
        with (
            pyro.get_param_store().scope(),
            fake_cuda_run(),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            # a tracker stops logging after an error and only warns: here that fails
            warnings.filterwarnings("error", message=".*tracker stopped logging.*")
            return example.cli.run(
                example.main,
                [
                    "--smoke",
                    "--no-progress",
                    "--threads",
                    "1",
                    "--device",
                    "cuda",
                    "--epochs",
                    "1",
                    "--out",
                    str(out),
                    *argv,
                ],
            )
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(state)


# --------------------------------------------------------------------------- the tests

EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
# Other paths than a default --smoke run takes, whose post-training code differs.
VARIANTS = [
    ("gan.py", ["--data", "toy1d"]),  # the toy's grid, D(x) snapshots
    ("aging.py", ["--score-features", "shipped"]),
    ("aae.py", ["--vae"]),
    ("aae.py", ["--labels", "conditional", "--average", "ema"]),
    ("vae.py", ["--model", "conditional_vae", "--net", "conv"]),  # labelled figures
    ("flows.py", ["--data", "toy", "--toy", "moons", "--flow", "realnvp"]),
    ("vae.py", ["--log", "csv"]),
]  # a tracker's samples and reconstructions
# NUTS runs under torch.jit's tracer, which fake tensors do not pass: posterior.py's
# other parts (its models trained, scored, reloaded for the gap table)
ARGV = {"posterior.py": ["--parts", "flows", "gaps"]}
CASES = [(name, ARGV.get(name, [])) for name in EXAMPLES] + VARIANTS
# examples whose owner has yet to build the models on --device
PENDING: dict = {}  # script -> why it still mixes devices (empty: none does)


@pytest.mark.parametrize(
    "script, argv",
    [
        pytest.param(s, a, marks=pytest.mark.xfail(reason=PENDING[s], strict=True))
        if s in PENDING
        else (s, a)
        for s, a in CASES
    ],
    ids=[" ".join([s[:-3], *a]) for s, a in CASES],
)
def test_example_trained_on_fake_cuda_runs_to_the_end(script, argv, tmp_path):
    """The whole --smoke run with --device cuda: no device mix from data loading to the
    last figure (see the module docstring)."""
    status = run_on_fake_cuda(script, *argv, out=tmp_path)
    assert status == 0
    assert (tmp_path / "results.json").exists()


# --------------------------------------------------------------------------- static check

FACTORIES = {
    "zeros",
    "ones",
    "full",
    "empty",
    "arange",
    "linspace",
    "logspace",
    "eye",
    "rand",
    "randn",
    "randint",
    "randperm",
    "normal",
    "tensor",
    "as_tensor",
    "from_numpy",
    "zeros_like",
    "ones_like",
    "full_like",
    "empty_like",
    "rand_like",
    "randn_like",
    "randint_like",
}
LIKE = {name for name in FACTORIES if name.endswith("_like")}  # the input's device

# Factory calls that make a CPU tensor on purpose, each with the reason (file, the start
# of the call's source text). Everything else names its device, or is moved at once
# (``torch.randn(..., generator=g).to(dev)``).
CPU_ONLY: dict = {
    # (none left: the gan toy's data and mevae's colour table moved into the library,
    # probgen.data.recipes.toy1d and probgen.viz.scenes)
}


def factory_calls(path: Path):
    """``(call source, line)`` of each tensor factory in ``path`` that names no device:
    ``torch.<factory>(...)`` without ``device=`` (``*_like`` excepted), not directly
    followed by ``.to(...)``/``.cuda()``."""
    source = path.read_text()
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
            and node.func.attr in FACTORIES - LIKE
        ):
            continue
        if any(k.arg == "device" for k in node.keywords):
            continue
        up = parents.get(node)
        if (
            isinstance(up, ast.Attribute)
            and up.attr in ("to", "cuda")
            and isinstance(parents.get(up), ast.Call)
        ):
            continue
        found.append((" ".join(ast.get_source_segment(source, node).split()), node.lineno))
    return found


def test_no_tensor_factory_without_a_device_in_the_examples():
    """Tensors an example makes after training live where the model and data do:
    ``torch.zeros(n, device=x.device)``, ``x.new_full(...)``, ``torch.zeros_like(x)``,
    or a CPU draw moved at once. A bare ``torch.full(...)`` fails on a GPU at the first
    operator that meets the model's output (examples/aging.py once did)."""
    bad, used = [], set()
    for path in sorted((ROOT / "examples").glob("*.py")):
        for call, line in factory_calls(path):
            listed = [k for k in CPU_ONLY if k[0] == path.name and call.startswith(k[1])]
            if listed:
                used.update(listed)
            else:
                bad.append(f"examples/{path.name}:{line}: {call}")
    assert not bad, (
        "tensor factories without a device (name one, or list the call in "
        "CPU_ONLY with the reason):\n" + "\n".join(bad)
    )
    assert used == set(CPU_ONLY), f"CPU_ONLY lists calls no example makes: {set(CPU_ONLY) - used}"


def test_the_static_check_finds_bare_factories(tmp_path):
    """What the check reports and what it lets through."""
    f = tmp_path / "x.py"
    f.write_text(
        "import torch\n"
        "a = torch.full((n, k), float('nan'))\n"  # reported
        "b = torch.arange(n) == i\n"  # reported
        "c = torch.zeros(3, device=x.device)\n"
        "d = torch.randn(4, generator=g).to(x.device)\n"
        "e = torch.zeros_like(x)\n"
        "f = x.new_full((2,), 0.0)\n"
    )
    assert factory_calls(f) == [("torch.full((n, k), float('nan'))", 2), ("torch.arange(n)", 3)]
