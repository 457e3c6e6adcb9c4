"""Figures of training histories: any recorded figure against epoch or training time, and
one setting against another over a sweep.

A history is what :func:`probgen.fit` returns as ``FitResult.history``: one dict per epoch
with ``epoch`` (from 0), ``train_loss``, ``val_loss``, each phase's ``train_loss/<phase>``
and whatever callbacks added (a :class:`~probgen.train.Metric`'s figures, ``cpu_seconds``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
)

from probgen.errors import DataError
from probgen.viz.images import new_figure, save

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
else:  # matplotlib is imported when a figure is drawn; at run time these hints read Any
    Axes = Figure = Any

PathLike = str | Path | None
History = Sequence[Mapping]
Panel = str | tuple[str, ...]


def _runs(histories: History | Mapping[str, History]) -> dict[str, History]:
    """``{label: history}``; one bare history is the run ``""``."""
    if isinstance(histories, Mapping):
        return dict(histories)
    return {"": histories}


def epochs(history: History) -> list[int]:
    """The x of :func:`history_figure` by default: each entry's epoch, counted from 1."""
    return [h["epoch"] + 1 for h in history]


def training_minutes(history: History, leave_out: Sequence[str] = ("fid",)) -> list[float]:
    """Minutes of training at the end of each epoch, one value per entry: the sum of the
    entries' ``cpu_seconds`` (:class:`~probgen.train.callbacks.TrainingCPUTime`) where every
    entry has them, else of their wall ``seconds`` less the ``<name>_seconds`` of the metrics
    in ``leave_out``.

    Examples:
        Without ``cpu_seconds`` the wall clock counts, the FID's time left out:

        >>> from probgen.viz import training_minutes
        >>> history = [{"epoch": 0, "seconds": 90.0, "fid_seconds": 30.0},
        ...            {"epoch": 1, "seconds": 60.0}]
        >>> training_minutes(history)
        [1.0, 2.0]
    """
    cpu = bool(history) and all("cpu_seconds" in h for h in history)
    out, t = [], 0.0
    for h in history:
        t += (
            h["cpu_seconds"]
            if cpu
            else h["seconds"] - sum(h.get(f"{name}_seconds", 0.0) for name in leave_out)
        )
        out.append(t / 60)
    return out


def plot_history(
    ax: Axes,
    histories: History | Mapping[str, History],
    keys: Panel,
    x: Callable[[History], Sequence[float]] = epochs,
    styles: str | Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
    markersize: float | None = None,
) -> int:
    """Draw ``keys`` of every run's history on the matplotlib axes ``ax``; return the
    number of lines drawn.

    Run ``i`` is drawn in colour ``C{i}``; key ``keys[j]`` in ``styles[key]`` (one format
    string for every key; default: solid, dashed, dotted, dash-dot in turn) with the
    legend label ``names[key]`` in which ``{run}`` stands for the run's label (default
    ``"{run}"`` for one key, ``"{run} {key}"`` for several; the key where that is empty).
    Entries that lack a key or hold ``None`` there (a metric computed every few epochs)
    are skipped; a run with no value of a key draws no line for it.
    """
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    default_styles = ("-", "--", ":", "-.")
    drawn = 0
    for i, (label, hist) in enumerate(_runs(histories).items()):
        xs = list(x(hist))
        for j, key in enumerate(keys):
            points = [(xv, h[key]) for xv, h in zip(xs, hist) if h.get(key) is not None]
            if not points:
                continue
            name = (names or {}).get(key, "{run}" if len(keys) == 1 else "{run} {key}")
            style = (
                styles
                if isinstance(styles, str)
                else (styles or {}).get(key, default_styles[j % len(default_styles)])
            )
            kw = {} if markersize is None else {"ms": markersize}
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                style,
                color=f"C{i}",
                label=name.format(run=label, key=key).strip() or key,
                **kw,
            )
            drawn += 1
    return drawn


def history_figure(
    histories: History | Mapping[str, History],
    keys: Sequence[Panel],
    path: PathLike = None,
    *,
    titles: Mapping[Panel, str] | None = None,
    ylabel: str | None = None,
    xlabel: str = "epoch",
    x: Callable[[History], Sequence[float]] = epochs,
    styles: str | Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
    markersize: float | None = None,
    logy: bool = False,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
) -> Figure:
    """One panel per entry of ``keys``: what the runs recorded under it, against epoch.

    Args:
        histories: one run's history (``FitResult.history``) or ``{label: history}``, one
            colour per run.
        keys: the panels, each a key of the entries (``"train_loss/D"``, ``"fid"``) or a
            tuple of keys drawn in one panel (``("train_loss", "val_loss")``).
        titles: a panel's title, by its entry of ``keys`` (default: the key).
        x: the x values of a history, one per entry (default :func:`epochs`; e.g.
            :func:`training_minutes`), named by ``xlabel``.
        path: where to write the figure (``None``: not written).
        ylabel: the panels' y label.
        xlabel: the name of ``x``.
        styles: the lines' formats, see :func:`plot_history`.
        names: the legend labels, see :func:`plot_history`.
        markersize: of the lines' markers.
        logy: a logarithmic y axis.
        figsize: the figure's size in inches (default: 4.5 wide a panel, 3.8 high).
        title: the figure's title.

    Returns:
        The figure (written to ``path`` when given).

    Example::

        history_figure({"minimax": a.history, "non-saturating": b.history},
                       ["train_loss/D", "train_loss/G"], "losses.png")
    """
    keys = list(keys)
    fig, axes = new_figure(
        1, len(keys), figsize=figsize or (max(6.0, 4.5 * len(keys)), 3.8), squeeze=False
    )
    for ax, key in zip(axes[0], keys):
        drawn = plot_history(ax, histories, key, x, styles, names, markersize)
        default = key if isinstance(key, str) else ""
        ax.set_title((titles or {}).get(key, default), fontsize=9)
        ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both" if logy else "major")
        if drawn:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def learning_curves(
    histories: Mapping[str, History], path: PathLike = None, ylabel: str = "loss per example"
) -> Figure:
    """Train (dashed) and validation (solid) loss against epoch, one colour per run."""
    return history_figure(
        histories,
        [("train_loss", "val_loss")],
        path,
        ylabel=ylabel,
        titles={("train_loss", "val_loss"): ""},
        styles={"train_loss": "--", "val_loss": "-"},
        names={"train_loss": "{run} train", "val_loss": "{run} val"},
        figsize=(6, 4),
    )


def phase_losses_figure(
    histories: History | Mapping[str, History],
    path: PathLike = None,
    *,
    extra: Mapping[str, str] | None = None,
) -> Figure:
    """One panel per training phase whose loss the runs recorded (``train_loss/<phase>``,
    the epoch's mean; a phased step's D, G, reconstruction...), in name order, then a
    panel for each key of ``extra`` that some run recorded (key -> the panel's title).

    Args:
        histories: one run's history or ``{label: history}``, one colour per run.
        path: where to write the figure (``None``: not written).
        extra: other figures of the entries to draw after the losses (e.g.
            ``{"val_error": "class error on validation images (%)"}``).

    Returns:
        The figure (written to ``path`` when given).

    Raises:
        DataError: no run recorded a phase's loss or one of ``extra``'s keys.
    """
    runs, extra = _runs(histories), dict(extra or {})
    seen = {k for history in runs.values() for entry in history for k in entry}
    keys = sorted(k for k in seen if k.startswith("train_loss/"))
    keys += [k for k in extra if k in seen and k not in keys]
    if not keys:
        raise DataError(
            "phase_losses_figure: the histories record no train_loss/<phase> (a run of one "
            "phase records train_loss alone: draw it with learning_curves) and none of "
            f"extra's keys {sorted(extra)}."
        )
    titles = {k: extra.get(k) or f"{k.split('/', 1)[1]} loss (epoch mean)" for k in keys}
    return history_figure(runs, keys, path, titles=titles)


def fid_curve_figure(
    histories: Mapping[str, History], path: PathLike = None, name: str = "FID", key: str = "fid"
) -> Figure:
    """``key`` (an FID) against epochs and against training time, log scale: this process's
    CPU minutes where every epoch recorded them (``cpu_seconds``: with one thread, what the
    training cost whatever else ran), else wall minutes; the FID computations left out of
    both (:func:`training_minutes`). With ``<key>_live`` recorded at every FID (a model
    that samples from averaged weights: the live weights' FID), that is drawn dashed."""
    fig, axes = new_figure(1, 2, figsize=(10, 3.6))
    cpu = all("cpu_seconds" in h for hist in histories.values() for h in hist)
    live = f"{key}_live"
    with_live = {
        label: hist
        for label, hist in histories.items()
        if any(h.get(key) is not None for h in hist)
        and all(live in h for h in hist if h.get(key) is not None)
    }
    for ax, x in zip(axes, (epochs, lambda h: training_minutes(h, (key,)))):
        plot_history(ax, histories, key, x, styles={key: "o-"})
        plot_history(
            ax,
            {label: (hist if label in with_live else []) for label, hist in histories.items()},
            live,
            x,
            styles={live: "x--"},
            names={live: "{run}, live G"},
        )
        ax.set_ylabel(name)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training CPU minutes (one thread)" if cpu else "training minutes")
    fig.tight_layout()
    return save(fig, path)


def tradeoff_figure(
    points: Mapping[str, tuple[float, float]],
    path: PathLike = None,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
) -> Figure:
    """One labelled point per setting of a sweep (``label -> (x, y)``): what one figure
    costs in another (test bits/dim against FID). The x axis turns logarithmic when its
    values span more than a factor of ten (a purely adversarial flow's bits/dim can be
    huge)."""
    fig, ax = new_figure(figsize=(5.5, 4))
    for i, (label, (xv, yv)) in enumerate(points.items()):
        ax.plot(xv, yv, "o", color=f"C{i}")
        ax.annotate(label, (xv, yv), fontsize=7, textcoords="offset points", xytext=(4, 3))
    xs = [p[0] for p in points.values()]
    if xs and min(xs) > 0 and max(xs) > 10 * min(xs):
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return save(fig, path)


__all__ = [
    "epochs",
    "fid_curve_figure",
    "history_figure",
    "learning_curves",
    "phase_losses_figure",
    "plot_history",
    "tradeoff_figure",
    "training_minutes",
]
