"""Experiment trackers as callbacks: CSV files, TensorBoard, MLflow, Weights & Biases.

Each tracker is a :class:`~probgen.train.callbacks.Callback` that logs, on rank 0 only:

* **every figure of every epoch**: each numeric entry of the epoch's history entry
  (``train_loss``, ``val_loss``, ``lr``, ``seconds``, ``train_loss/<phase>`` and what
  :class:`~probgen.train.callbacks.Metric` and other callbacks add), under the entry's own
  key, at step ``epoch + 1``: the logged values are ``FitResult.history``'s;
* **per-step losses** every ``log_every_n_steps`` optimizer steps, from the loop's
  ``on_train_batch_end`` hook: ``batch/train_loss`` (and ``batch/train_loss/<phase>`` for
  a step of several phases) at the run's step count (1-based, resumed parts included).
  A loss is read from the device (a host sync) only on the steps that are logged;
* **image grids** every ``image_every`` epochs (and at the last one): ``images(run) ->
  {name: tensor (N, C, H, W) in [0, 1]}``, by default :func:`model_images`, which draws
  ``samples`` from a model's ``sample(n)`` and ``reconstructions`` (a row of inputs above
  a row of their reconstructions) from its ``reconstruct(x)`` where the model has them;
* **the run's settings** as hyperparameters: ``fit`` (``FitConfig.to_dict()``), ``model``
  (a registered probgen model's constructor settings, see
  :func:`probgen.models.registry.model_config`) and any ``hparams`` given.

Each library is an optional extra, imported when a tracker is built (a missing one is one
:class:`~probgen.errors.ConfigError` line naming the extra). :class:`CSVLogger` needs none.

Resuming (``FitConfig(resume=True)``) continues the same tracker run: MLflow and W&B keep
their run id in the checkpoint (``state_dict``); TensorBoard and the CSV files drop what
was logged after the checkpoint (TensorBoard's ``purge_step``), so an epoch that is
trained again is not logged twice.

Errors: a tracker that cannot *start* (a missing library, a store that refuses the path)
raises :class:`~probgen.errors.ConfigError` in ``on_fit_start``, before the first epoch.
An error while *logging* (a full disk, a library bug) does not stop training by default
(``on_error="warn"``): the tracker warns once, closes and logs nothing more, and training
goes on; ``FitResult.history`` and the checkpoint still hold every figure. Logging runs
after the epoch's checkpoint is written, so even ``on_error="raise"`` loses no checkpoint
(an error inside an epoch's per-step logging loses that epoch, not the checkpoint before it).

The RNG: drawing images must not change the training run, so it runs in
:func:`torch.random.fork_rng` with a fixed seed (``image_seed``): the global generators are
as they were afterwards, and every grid shows the same noise, epoch after epoch.

Example::

    from probgen.train import TensorBoard, MLflow, WandB, CSVLogger
    fit(vae, train, val, callbacks=[TensorBoard("runs/vae"), CSVLogger("out/log.csv")])
    fit(vae, train, val, callbacks=[WandB(project="probgen", dir="out", mode="offline")])
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import inspect
import json
import math
import numbers
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from probgen import checks, files
from probgen.data.tensors import TensorData
from probgen.errors import ConfigError
from probgen.models.registry import model_config
from probgen.registry import Registry
from probgen.train.config import FitResult
from probgen.train.hooks import Callback, RunView

ImagesFn = Callable[[Any], Mapping[str, torch.Tensor]]

ON_ERROR = ("warn", "raise")


def _require(module: str, tracker: str, extra: str, package: str):
    """Import ``module`` for ``tracker``, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the {tracker} tracker needs the {package} package: "
            f"pip install 'probgen[{extra}]' (or pip install {package})."
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'no detail'}"


# --------------------------------------------------------------------------- what is logged


def epoch_scalars(entry: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric figure of a history entry (not ``epoch``, not ``None``/NaN/bools)."""
    out = {}
    for k, v in entry.items():
        if k == "epoch" or isinstance(v, bool) or not isinstance(v, numbers.Real):
            continue
        v = float(v)
        if math.isfinite(v):
            out[k] = v
    return out


def step_scalars(losses: Mapping[str, Any]) -> dict[str, float]:
    """Per-step names of the phases' losses, named as the epoch entry names them:
    ``batch/train_loss`` for the first phase, and ``batch/train_loss/<phase>`` for each
    phase of a step with several."""
    names = list(losses)
    if not names:
        return {}
    out = {"batch/train_loss": float(losses[names[0]])}
    if len(names) > 1:
        for n in names:
            out[f"batch/train_loss/{n}"] = float(losses[n])
    return out


def run_hparams(run, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run's settings as a nested dict: ``fit`` (the :class:`FitConfig`), ``model``
    (a registered probgen model's constructor settings, with ``class``) and ``extra``."""
    out: dict[str, Any] = {"fit": run.config.to_dict()}
    if getattr(run, "module", None) is not None:
        # not a registered probgen model (TypeError): no settings to record
        with contextlib.suppress(TypeError):
            out["model"] = _model_dict(model_config(run.module))
    if extra:
        out.update(dict(extra))
    return out


def _model_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    out = {"class": cfg["__probgen_model__"]}
    for k, v in cfg["args"].items():
        out[k] = _model_dict(v) if isinstance(v, dict) and "__probgen_model__" in v else v
    return out


def flatten(nested: Mapping[str, Any], sep: str = ".") -> dict[str, str | int | float | bool]:
    """``{"fit": {"lr": 0.1}}`` -> ``{"fit.lr": 0.1}``; lists and ``None`` as text."""
    out: dict[str, str | int | float | bool] = {}

    def walk(prefix, value):
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = json.dumps(value, default=str) if value is not None else "None"

    walk("", nested)
    return out


# --------------------------------------------------------------------------- images


def _count_param(fn) -> bool:
    """Whether ``fn``'s first argument is a number of samples (``n``, ``num_samples``)."""
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0].name in ("n", "num_samples")


def _is_image_batch(x) -> bool:
    return torch.is_tensor(x) and x.dim() == 4 and x.shape[1] in (1, 3) and x.is_floating_point()


def first_images(run, n: int) -> torch.Tensor | None:
    """The first ``n`` images of the validation data (else of the training data), when it
    is a :class:`~probgen.data.TensorData` whose first tensor is ``(N, C, H, W)``."""
    for data in (getattr(run, "val_data", None), getattr(run, "train_data", None)):
        if isinstance(data, TensorData) and _is_image_batch(data.tensors[0]):
            return data.tensors[0][:n]
    return None


IMAGE_KINDS = ("samples", "reconstructions")


def model_images(run, n: int = 16, kinds=IMAGE_KINDS) -> dict[str, torch.Tensor]:
    """Image grids of a probgen model, as far as it has the methods:

    * ``samples``: ``module.sample(n)`` where ``sample``'s first argument is a count
      (VAE, AAE, GAN, FlowModel, FlowGAN, MEVAE);
    * ``reconstructions``: the first ``n`` validation (else training) images above
      ``module.reconstruct`` of them (VAE and its settings, AAE, MEVAE).

    A module with neither gives ``{}``; so does data that are not images.
    """
    module = getattr(run, "module", None)
    out: dict[str, torch.Tensor] = {}
    if module is None:
        return out
    sample = getattr(module, "sample", None)
    if "samples" in kinds and callable(sample) and _count_param(sample):
        x = sample(n)
        if _is_image_batch(x):
            out["samples"] = x
    reconstruct = getattr(module, "reconstruct", None)
    if "reconstructions" in kinds and callable(reconstruct):
        x = first_images(run, n)
        if x is not None:
            r = reconstruct(x)
            if torch.is_tensor(r) and r.shape == x.shape:
                out["reconstructions"] = torch.cat([x, r.to(x.dtype)])
    return out


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """A ``(N, C, H, W)`` batch as one ``(3, H', W')`` grid in [0, 1] (on the CPU), ``nrow``
    images per row (default: a square grid), ``padding`` white pixels around each.

    The layout of torchvision's ``make_grid`` (for two images or more), written out here
    because importing torchvision takes about 3 s and probgen's training path does not
    otherwise need it."""
    if not _is_image_batch(images):
        raise ConfigError(
            f"an image grid needs a float tensor (N, C, H, W) with 1 or 3 "
            f"channels, got {tuple(images.shape)} {images.dtype}."
        )
    x = images.detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, _, h, w = x.shape
    if nrow is not None:
        nrow = checks.positive_int("nrow", nrow)
    cols = min(max(1, math.ceil(math.sqrt(n))) if nrow is None else nrow, n)
    rows = -(-n // cols)
    grid = x.new_ones(3, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for k in range(n):
        top, left = (k // cols) * (h + padding) + padding, (k % cols) * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = x[k]
    return grid


def to_uint8_hwc(grid: torch.Tensor):
    """A ``(C, H, W)`` grid in [0, 1] as a ``(H, W, C)`` uint8 numpy array."""
    return grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- the base class


class Tracker(Callback):
    """What every tracker logs and when; a backend says how (``_open``, ``_log_scalars``,
    ``_log_images``, ``_log_hparams``, ``_flush``, ``_close``).

    Args:
        log_every_n_steps: log the per-step losses every this many optimizer steps
            (``None``: per epoch only). Needs a loop that calls ``on_train_batch_end``.
        images: ``"auto"`` (:func:`model_images`), ``None`` (no images) or a function
            ``images(run) -> {name: tensor (N, C, H, W) in [0, 1]}``, called in eval mode
            without gradients, with the global RNG forked and seeded by ``image_seed``.
        image_every: log images every this many epochs (and at the last one).
        num_images: images per grid for ``images="auto"``.
        hparams: extra settings to log with the run's (``{"dataset": "mnist"}``).
        on_error: ``"warn"`` (a logging error stops this tracker, not training) or
            ``"raise"``.
        image_seed: the seed of the images' forked RNG.
    """

    #: the library's name in messages
    library = "tracker"

    def __init__(
        self,
        log_every_n_steps: int | None = 50,
        images: str | ImagesFn | None = "auto",
        image_every: int = 1,
        num_images: int = 16,
        hparams: Mapping[str, Any] | None = None,
        on_error: str = "warn",
        image_seed: int = 0,
    ):
        who = type(self).__name__
        checks.optional(
            checks.positive_int, f"{who}: log_every_n_steps", log_every_n_steps, hint="or None"
        )
        checks.positive_int(f"{who}: image_every", image_every)
        checks.positive_int(f"{who}: num_images", num_images)
        if not (images is None or images == "auto" or callable(images)):
            raise ConfigError(
                f"{type(self).__name__}: images must be 'auto', None or a "
                f"function run -> {{name: tensor (N, C, H, W)}}, got {images!r}."
            )
        checks.choice(f"{who}: on_error", on_error, ON_ERROR)
        if hparams is not None and not isinstance(hparams, Mapping):
            raise ConfigError(
                f"{type(self).__name__}: hparams must be a dict, got {type(hparams).__name__}."
            )
        self.log_every_n_steps = log_every_n_steps
        self.images = images
        self.image_every = image_every
        self.num_images = num_images
        self.hparams = dict(hparams or {})
        self.on_error = on_error
        self.image_seed = image_seed
        self._live = False  # open on rank 0, between on_fit_start and the end
        self._skip: set = set()  # image kinds images="auto" cannot draw for this model
        self._resume: dict[str, Any] = {}  # a checkpoint's state, used by the next start

    # ------------------------------------------------------------------ backend interface
    def _open(self, run, resume: dict[str, Any], purge_step: int | None) -> None:
        """Start (or, with ``resume``, continue) the tracker run. ``purge_step``: on a
        resume, the first global step whose earlier logs are stale (or ``None``)."""

    def _log_scalars(self, scalars: dict[str, float], step: int, axis: str) -> None:
        """``axis`` is ``"epoch"`` (step = epoch + 1) or ``"batch"`` (global step + 1)."""

    def _log_images(self, grids: dict[str, torch.Tensor], step: int) -> None:
        """``grids``: name -> ``(3, H, W)`` float grid in [0, 1]; step = epoch + 1."""

    def _log_hparams(self, nested: dict[str, Any], run, resumed: bool) -> None:
        pass

    def _flush(self) -> None:
        pass

    def _close(self, failed: bool) -> None:
        pass

    def _state(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ guard
    def _guard(self, what: str, fn, *args) -> None:
        if not self._live:
            return
        try:
            fn(*args)
        except Exception as err:
            if self.on_error == "raise":
                raise
            self._live = False
            warnings.warn(
                f"probgen: the {self.library} tracker stopped logging after an error "
                f"while {what} ({_first_line(err)}); training goes on, and "
                f"FitResult.history and the checkpoint keep every figure.",
                RuntimeWarning,
                stacklevel=3,
            )
            with contextlib.suppress(Exception):
                self._close(failed=True)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, run: RunView) -> None:
        self._live = False
        self._skip = set()
        if not getattr(run, "is_main", True):
            return
        resume, self._resume = self._resume, {}
        start = int(getattr(run, "start_epoch", 0) or 0)
        # per-step figures are logged at the run's step count (1-based): a resumed run
        # drops what an earlier run logged after the checkpoint's step
        steps = int(getattr(getattr(run, "result", None), "steps", 0) or 0)
        purge = steps + 1 if start else None
        try:
            self._open(run, resume, purge)
        except ConfigError:
            raise
        except Exception as err:
            raise ConfigError(
                f"the {self.library} tracker could not start: {_first_line(err)}."
            ) from err
        self._live = True
        self._guard(
            "logging the hyperparameters",
            self._log_hparams,
            run_hparams(run, self.hparams),
            run,
            start > 0,
        )

    def on_train_batch_end(self, run: RunView, step_index: int, losses: Mapping[str, Any]) -> None:
        every = self.log_every_n_steps
        if not self._live or every is None or (step_index + 1) % every:
            return
        self._guard(
            f"logging step {step_index + 1}",
            lambda: self._log_scalars(step_scalars(losses), step_index + 1, "batch"),
        )

    def on_epoch_end(self, run: RunView, entry: dict[str, Any]) -> None:
        if not self._live:
            return
        epoch = entry["epoch"] + 1
        self._guard(
            f"logging epoch {epoch}", self._log_scalars, epoch_scalars(entry), epoch, "epoch"
        )
        if self.images is not None and self._live and self._image_epoch(run, epoch):
            self._guard(f"logging the images of epoch {epoch}", self._images, run, epoch)
        self._guard("flushing", self._flush)

    def on_fit_end(self, run: RunView, result: FitResult) -> None:
        self._guard("closing the run", self._close, False)  # the last checkpoint is written
        self._live = False

    def on_exception(self, run: RunView, error: BaseException) -> None:
        if self._live:
            self._live = False
            with contextlib.suppress(Exception):  # the training error is the one to report
                self._close(failed=True)

    def state_dict(self) -> dict[str, Any]:
        # the run id also after a logging error stopped the tracker: a resume may log again
        return self._state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state or {})

    # ------------------------------------------------------------------ images
    def _image_epoch(self, run, epoch: int) -> bool:
        last = epoch == run.config.epochs or bool(getattr(run.result, "stopped_early", False))
        return epoch % self.image_every == 0 or last

    def _images(self, run, epoch: int) -> None:
        grids = self.draw_images(run)
        if grids:
            self._log_images(grids, epoch)

    def _auto_images(self, run) -> dict[str, torch.Tensor]:
        """:func:`model_images`, each kind on its own: a kind the model cannot draw without
        more arguments (labels, levels) is skipped from then on, with one warning."""
        out = {}
        for kind in IMAGE_KINDS:
            if kind in self._skip:
                continue
            try:
                out.update(model_images(run, self.num_images, kinds=(kind,)))
            except Exception as err:
                self._skip.add(kind)
                warnings.warn(
                    f"probgen: the {self.library} tracker logs no {kind} of this "
                    f"{type(run.module).__name__} ({_first_line(err)}); pass "
                    f"images=fn(run) -> {{name: images}} to draw them.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return out

    def draw_images(self, run: RunView) -> dict[str, torch.Tensor]:
        """``images(run)`` as grids, drawn in eval mode, without gradients and with the
        global RNG forked (seeded by ``image_seed``), the module's mode restored."""
        fn = self._auto_images if self.images == "auto" else self.images
        module = getattr(run, "module", None)
        was = module.training if module is not None else None
        device = getattr(run, "device", None)
        cuda = [device] if device is not None and torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            # seed only what was forked (torch.manual_seed would reseed every GPU)
            torch.default_generator.manual_seed(self.image_seed)
            for d in cuda:
                with torch.cuda.device(d):
                    torch.cuda.manual_seed(self.image_seed)
            if module is not None:
                module.eval()
            try:
                with torch.no_grad():
                    images = fn(run) or {}
            finally:
                if module is not None:
                    module.train(was)
        grids = {}
        for name, x in images.items():
            if self.images == "auto" and not _is_image_batch(x):
                continue
            nrow = None
            if name == "reconstructions" and self.images == "auto":
                nrow = x.shape[0] // 2  # inputs above their reconstructions
            grids[name] = image_grid(x, nrow)
        return grids


# --------------------------------------------------------------------------- CSV


class CSVLogger(Tracker):
    """CSV files (no extra needed).

    ``path`` holds one row per epoch (rewritten from the run's history every epoch, so a
    resumed run's file is whole); next to it ``<stem>_steps.csv`` holds the per-step
    losses, ``<stem>_config.json`` the run's settings and ``<stem>_images/`` the image
    grids as PNG files (``<name>_epoch0003.png``).
    """

    library = "CSV"

    def __init__(self, path: str | Path, **kwargs: Any):
        super().__init__(**kwargs)
        self.path = Path(path)
        stem = self.path.with_suffix("")
        self.steps_path = stem.with_name(stem.name + "_steps.csv")
        self.config_path = stem.with_name(stem.name + "_config.json")
        self.image_dir = stem.with_name(stem.name + "_images")
        self._steps_fields: list[str] | None = None
        self._run = None

    def _open(self, run, resume, purge_step):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._run = run
        kept: list[dict[str, str]] = []
        if purge_step is not None and self.steps_path.exists():
            with open(self.steps_path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) < purge_step]
        self._steps_fields = None
        if kept:
            self._steps_fields = list(kept[0])
            self._write_steps(kept, "w")
        elif self.steps_path.exists():
            self.steps_path.unlink()

    def _write_steps(self, rows, mode):
        new = mode == "w" or not self.steps_path.exists()
        with open(self.steps_path, mode, newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._steps_fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerows(rows)

    def _log_scalars(self, scalars, step, axis):
        if axis == "epoch":
            rows = self._run.result.history
            keys: list[str] = []
            for row in rows:
                keys += [k for k in row if k not in keys and not isinstance(row[k], (dict, list))]
            with open(self.path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
                w.writeheader()
                for row in rows:
                    w.writerow({k: row.get(k) for k in keys})
            return
        row = {"step": step, "epoch": self._run.epoch + 1, **scalars}
        if self._steps_fields is None:
            self._steps_fields = list(row)
        self._write_steps([row], "a")

    def _log_images(self, grids, step):
        from PIL import Image

        self.image_dir.mkdir(parents=True, exist_ok=True)
        for name, grid in grids.items():
            safe = name.replace("/", "_")
            Image.fromarray(to_uint8_hwc(grid)).save(self.image_dir / f"{safe}_epoch{step:04d}.png")

    def _log_hparams(self, nested, run, resumed):
        files.write_text(self.config_path, json.dumps(nested, indent=2, default=str))

    def _close(self, failed):
        self._run = None


# --------------------------------------------------------------------------- TensorBoard


class TensorBoard(Tracker):
    """TensorBoard event files in ``log_dir`` (extra ``tensorboard``).

    Scalars with ``add_scalar`` (epoch figures at step ``epoch + 1``, per-step losses at
    the global step), grids with ``add_image``, the settings as the HParams plugin's
    session (flattened, ``fit.lr``) and as a ``config`` text. A resumed run writes to the
    same folder with ``purge_step``, so TensorBoard drops what was logged after the
    checkpoint.
    """

    library = "TensorBoard"

    def __init__(self, log_dir: str | Path, **kwargs: Any):
        super().__init__(**kwargs)
        self._tb = _require("torch.utils.tensorboard", "TensorBoard", "tensorboard", "tensorboard")
        self.log_dir = str(log_dir)
        self._writer = None

    @property
    def writer(self) -> Any:
        """The ``SummaryWriter`` while a fit runs (``None`` otherwise)."""
        return self._writer

    def _open(self, run, resume, purge_step):
        self._writer = self._tb.SummaryWriter(self.log_dir, purge_step=purge_step)

    def _log_scalars(self, scalars, step, axis):
        for k, v in scalars.items():
            self._writer.add_scalar(k, v, step)

    def _log_images(self, grids, step):
        for name, grid in grids.items():
            self._writer.add_image(name, grid, step, dataformats="CHW")

    def _log_hparams(self, nested, run, resumed):
        from torch.utils.tensorboard.summary import hparams

        metrics = {"train_loss": 0.0}
        if getattr(run, "val_data", None) is not None:
            metrics["val_loss"] = 0.0
        metrics[run.config.monitor] = 0.0
        # SummaryWriter.add_hparams would open a second run folder; the three summaries
        # go into this run's file instead, where the scalars of the same names are.
        for summary in hparams(flatten(nested), metrics):
            self._writer.file_writer.add_summary(summary)
        text = json.dumps(nested, indent=2, default=str)
        self._writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)

    def _flush(self):
        self._writer.flush()

    def _close(self, failed):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# --------------------------------------------------------------------------- MLflow


class MLflow(Tracker):
    """An MLflow run in a local store, no server (extra ``mlflow``).

    By default the store is ``sqlite:///<save_dir>/mlflow.db`` with the artifacts (image
    grids, ``config.json``) in ``<save_dir>/artifacts``: MLflow 3 refuses the plain file
    store (``file:``) unless ``MLFLOW_ALLOW_FILE_STORE=true``, and its SQL store is the
    one it maintains. Any other ``tracking_uri`` (``file:...``, a server) is passed on.
    Epoch figures at step ``epoch + 1``, per-step losses at the global step, the settings
    as params (flattened, ``fit.lr``), images as ``images/<name>/epoch_0003.png``.

    The client API (``MlflowClient``) is used, not ``mlflow.start_run``: no active run
    is left in the caller's MLflow state. A resumed fit logs into the same run (its id
    is in the checkpoint); settings a resume may change (``fit.epochs``, ``fit.lr``) are
    recorded as tags ``resume.<name>``, since MLflow params cannot change.
    """

    library = "MLflow"

    def __init__(
        self,
        save_dir: str | Path = "mlruns",
        tracking_uri: str | None = None,
        experiment: str = "probgen",
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self._mlflow = _require("mlflow", "MLflow", "mlflow", "mlflow-skinny")
        self.save_dir = Path(save_dir)
        if tracking_uri is None:
            _require("sqlalchemy", "MLflow", "mlflow", "sqlalchemy")
            _require("alembic", "MLflow", "mlflow", "alembic")
        self.tracking_uri = tracking_uri
        self.experiment, self.run_name = experiment, run_name
        self.tags = dict(tags or {})
        self.client = None
        self.uri: str | None = None  # the store's URI, once a fit has started
        self.run_id: str | None = None

    def _open(self, run, resume, purge_step):
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri
        artifacts = None
        if uri is None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(self.save_dir / 'mlflow.db').resolve()}"
            artifacts = (self.save_dir / "artifacts").resolve().as_uri()
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = None
        rid = resume.get("run_id")
        if rid is not None:
            try:
                found = self.client.get_run(rid)
            except Exception:
                found = None
            if found is not None and found.info.lifecycle_stage == "active":
                self.client.update_run(rid, status="RUNNING")
                self.run_id = rid
            else:
                warnings.warn(
                    f"probgen: the checkpoint's MLflow run {rid} is not in {uri}; "
                    f"logging the resumed fit to a new run.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            eid = (
                exp.experiment_id
                if exp is not None
                else self.client.create_experiment(self.experiment, artifact_location=artifacts)
            )
            self.run_id = self.client.create_run(
                eid, run_name=self.run_name, tags=self.tags
            ).info.run_id

    def _log_scalars(self, scalars, step, axis):
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, ms, step) for k, v in scalars.items()]
        )

    def _log_images(self, grids, step):
        for name, grid in grids.items():
            self.client.log_image(
                self.run_id, to_uint8_hwc(grid), artifact_file=f"images/{name}/epoch_{step:04d}.png"
            )

    def _log_hparams(self, nested, run, resumed):
        from mlflow.entities import Param, RunTag

        flat = {k: str(v)[:500] for k, v in flatten(nested).items()}
        old = self.client.get_run(self.run_id).data.params if resumed else {}
        params = [Param(k, v) for k, v in flat.items() if k not in old]
        tags = [RunTag(f"resume.{k}", v) for k, v in flat.items() if k in old and old[k] != v]
        for i in range(0, max(len(params), len(tags)), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i : i + 100], tags=tags[i : i + 100])
        if not resumed:
            self.client.log_dict(self.run_id, nested, "config.json")

    def _close(self, failed):
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

    def _state(self):
        return {"run_id": self.run_id} if self.run_id is not None else {}


# --------------------------------------------------------------------------- W&B


class WandB(Tracker):
    """A Weights & Biases run, offline by default (extra ``wandb``).

    ``wandb.init(project=..., dir=..., mode="offline")``: the run is written under
    ``<dir>/wandb/offline-run-*`` and uploaded later, if ever, with ``wandb sync``;
    ``mode="online"`` logs to the server. Epoch figures are logged against an ``epoch``
    step metric (``epoch + 1``), per-step losses against ``global_step``; images as
    ``wandb.Image``; the settings as the run's (nested) config.

    The run is started with ``reinit="create_new"`` (it leaves a run of the caller's
    alone) and ``console="off"`` (the caller's stdout is not captured). A resumed fit
    passes the checkpoint's run id with ``resume="allow"``; offline, each process writes
    its own ``offline-run-*`` folder with that id and ``wandb sync`` joins them.
    ``init_kwargs`` go to ``wandb.init`` (``entity``, ``tags``, ``settings``, ...).
    """

    library = "W&B"

    def __init__(
        self,
        project: str = "probgen",
        dir: str | Path = ".",
        mode: str = "offline",
        run_name: str | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if mode not in ("offline", "online", "disabled"):
            raise ConfigError(
                f"WandB: mode must be 'offline', 'online' or 'disabled', got {mode!r}."
            )
        self._wandb = _require("wandb", "W&B", "wandb", "wandb")
        self.project, self.dir, self.mode, self.run_name = project, Path(dir), mode, run_name
        self.init_kwargs = dict(init_kwargs or {})
        self.settings = self.init_kwargs.pop("settings", None)
        self.run = None
        self.run_id: str | None = None
        self._defined: set = set()

    def _open(self, run, resume, purge_step):
        wandb = self._wandb
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = self.settings
        if settings is None or isinstance(settings, Mapping):
            # the caller's stdout is left alone, and the run says nothing on it
            settings = wandb.Settings(**{"console": "off", "silent": True, **(settings or {})})
        kwargs = dict(
            project=self.project,
            dir=str(self.dir),
            mode=self.mode,
            name=self.run_name,
            config=run_hparams(run, self.hparams),
            reinit="create_new",
            settings=settings,
        )
        if resume.get("run_id"):
            kwargs.update(id=resume["run_id"], resume="allow")
        kwargs.update(self.init_kwargs)
        self.run = wandb.init(**kwargs)
        self.run_id = self.run.id
        self._defined = set()
        self.run.define_metric("epoch")
        self.run.define_metric("global_step")

    def _log_scalars(self, scalars, step, axis):
        key = "epoch" if axis == "epoch" else "global_step"
        for k in scalars:
            if k not in self._defined:
                self.run.define_metric(k, step_metric=key)
                self._defined.add(k)
        self.run.log({**scalars, key: step})

    def _log_images(self, grids, step):
        wandb = self._wandb
        for k in grids:
            if k not in self._defined:
                self.run.define_metric(k, step_metric="epoch")
                self._defined.add(k)
        self.run.log({**{k: wandb.Image(to_uint8_hwc(g)) for k, g in grids.items()}, "epoch": step})

    def _log_hparams(self, nested, run, resumed):
        if resumed:  # the settings a resume may change (epochs, lr)
            self.run.config.update(nested, allow_val_change=True)

    def _close(self, failed):
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None

    def _state(self):
        return {"run_id": self.run_id} if self.run_id is not None else {}


# --------------------------------------------------------------------------- by name

#: tracker name -> ``factory(out_dir, run_name, **kwargs)``, for command lines (``--log NAME``)
TRACKERS: Registry = Registry("tracker")
TRACKERS.register(
    "csv",
    lambda out, name, **kw: CSVLogger(Path(out) / (f"log_{name}.csv" if name else "log.csv"), **kw),
)
TRACKERS.register(
    "tensorboard",
    lambda out, name, **kw: TensorBoard(Path(out) / "tensorboard" / (name or ""), **kw),
)
TRACKERS.register(
    "mlflow", lambda out, name, **kw: MLflow(save_dir=Path(out) / "mlruns", run_name=name, **kw)
)
TRACKERS.register("wandb", lambda out, name, **kw: WandB(dir=out, run_name=name, **kw))


def make_trackers(
    names: Sequence[str] | None, out_dir: str | Path, run_name: str | None = None, **kwargs: Any
) -> list[Tracker]:
    """One tracker per name in ``names`` (``csv``, ``tensorboard``, ``mlflow``, ``wandb``),
    each writing under ``out_dir``: ``log.csv``, ``tensorboard/``, ``mlruns/``, ``wandb/``.

    A script that trains several models gives each fit its own ``run_name``: the CSV file
    becomes ``log_<run_name>.csv``, TensorBoard's folder ``tensorboard/<run_name>``, and
    MLflow and W&B name their runs so. ``kwargs`` go to each tracker
    (``log_every_n_steps``, ``images``, ``hparams``, ...). Unknown names and missing
    libraries fail here, before any training."""
    names = list(dict.fromkeys(names or ()))
    return [TRACKERS.get(n)(out_dir, run_name, **kwargs) for n in names]
