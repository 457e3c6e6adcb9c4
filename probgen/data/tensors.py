"""Device-resident data sets and the batch iterator used by the fit loop.

A :class:`TensorData` holds a tuple of tensors that share their first
dimension (images, labels, ...), all on the training device. Batches are
slices of those tensors: no per-item Python, no PIL decoding in the hot loop.
A *transform* is applied per batch and receives the loader's random
generator, so stochastic preprocessing (dynamic binarization, noise) is
resampled every time an example is drawn and is reproducible from the
generator's state (which checkpoints store).

A TensorData may carry ``settings``: a small JSON-like dict saying how it was made
(data set, binarization, split seed, ...; :func:`probgen.data.image_splits` fills it).
The fit loop records the training data's settings in its checkpoints and a resumed
run refuses data made otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from probgen import checks
from probgen.errors import DataError

Batch = tuple
Transform = Callable[[Batch, torch.Generator | None], Batch]


class TensorData:
    """A data set of tensors sharing their first dimension.

    Args:
        *tensors: tensors of shape ``(N, ...)``.
        transform: optional ``f(batch, generator) -> batch`` applied to every batch.
        names: optional names of the tensors, for messages and ``repr``.
        settings: optional dict (numbers, strings, lists, dicts) of how the data was
            made; recorded in checkpoints so that a resumed run uses the same data.
            Kept by :meth:`to` and :meth:`with_transform`; :meth:`subset` adds the slice
            or indices it took.
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        transform: Transform | None = None,
        names: Sequence[str] | None = None,
        settings: dict[str, Any] | None = None,
    ):
        if not tensors:
            raise DataError("TensorData needs at least one tensor.")
        n = tensors[0].shape[0]
        for i, t in enumerate(tensors):
            if not torch.is_tensor(t):
                raise DataError(f"TensorData: item {i} is a {type(t).__name__}, not a tensor.")
            if t.shape[0] != n:
                raise DataError(
                    f"TensorData: all tensors need the same first dimension; tensor 0 has {n}, "
                    f"tensor {i} has {t.shape[0]}."
                )
        self.tensors = tuple(tensors)
        self.transform = transform
        self.names = tuple(names) if names is not None else None
        if settings is not None and not isinstance(settings, dict):
            raise DataError(f"TensorData: settings must be a dict, got {type(settings).__name__}.")
        self.settings = dict(settings) if settings is not None else None

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{(self.names[i] + '=') if self.names else ''}{tuple(t.shape)}"
            for i, t in enumerate(self.tensors)
        )
        return f"TensorData({shapes}, device={self.device})"

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TensorData:
        """The same data on ``device``; ``dtype`` converts the floating-point tensors only
        (labels and indices keep theirs)."""

        def move(t):
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device) if device is not None else t

        return TensorData(
            *(move(t) for t in self.tensors),
            transform=self.transform,
            names=self.names,
            settings=self.settings,
        )

    def subset(self, index: slice | Sequence[int] | torch.Tensor) -> TensorData:
        """The examples at ``index``: a slice, a boolean mask, a list or a tensor of
        indices. The settings, if any, keep how the subset was taken: a slice as
        ``[start, stop, step]``, other indices as their count and a digest of the
        positions (so a resumed run on another subset is told apart)."""
        settings = None
        if self.settings is not None:
            settings = dict(self.settings)
            settings["subsets"] = list(settings.get("subsets", [])) + [_describe_index(index)]
        return TensorData(
            *(t[index] for t in self.tensors),
            transform=self.transform,
            names=self.names,
            settings=settings,
        )

    def with_transform(self, transform: Transform | None) -> TensorData:
        """The same tensors with ``transform`` applied after the current one.

        Two transforms composed keep ``one_draw_checks`` (every draw passes a data check
        when one draw does, so the fit loop checks one draw instead of every batch) only
        when both have it."""
        if transform is None:
            return self
        first = self.transform
        if first is None:
            combined = transform
        else:

            def combined(batch, generator=None):
                return transform(first(batch, generator), generator)

            if getattr(first, "one_draw_checks", False) and getattr(
                transform, "one_draw_checks", False
            ):
                combined.one_draw_checks = True
        return TensorData(
            *self.tensors, transform=combined, names=self.names, settings=self.settings
        )

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> Iterator[Batch]:
        """Iterate over batches (tuples of tensors).

        Args:
            batch_size: examples per batch (the last one may be smaller).
            shuffle: a new order from ``generator`` (drawn on the CPU).
            generator: the order's and the transform's random generator.
            drop_last: leave out a last, smaller batch.
            device: where the batches go; ``None`` (the fast path): the data's own device,
                each batch a slice of the tensors there. Another device: each batch is
                gathered in host memory into a pinned (page-locked) buffer and copied to
                ``device`` asynchronously (``non_blocking``, safe from pinned memory:
                torch's pinned-memory allocator keeps a buffer until its copy is done);
                the transform runs after the copy, on ``device``. For data sets too large
                for the GPU (the fit loop's ``data_on_device``).

        Examples:
            >>> import torch
            >>> from probgen.data import TensorData
            >>> data = TensorData(torch.zeros(5, 2), torch.tensor([3, 1, 4, 1, 5]))
            >>> [labels.tolist() for images, labels in data.batches(2)]
            [[3, 1], [4, 1], [5]]
        """
        batch_size = checks.positive_int("batch_size", batch_size)
        n = len(self)
        target = torch.device(device) if device is not None else None
        staged = target is not None and not same_device(target, self.device)
        if shuffle:
            order = torch.randperm(n, generator=generator, device="cpu")
            if self.device.type != "cpu":
                order = order.to(self.device)
        else:
            order = None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if staged:
                index = (
                    slice(start, start + batch_size)
                    if order is None
                    else order[start : start + batch_size]
                )
                batch = tuple(_staged(t, index, target) for t in self.tensors)
            elif order is None:
                batch = tuple(t[start : start + batch_size] for t in self.tensors)
            else:
                idx = order[start : start + batch_size]
                batch = tuple(t.index_select(0, idx) for t in self.tensors)
            if self.transform is not None:
                batch = self.transform(batch, generator)
            yield batch

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    def all(self) -> Batch:
        """The whole data set as one batch (with the transform applied)."""
        batch = self.tensors
        if self.transform is not None:
            batch = self.transform(batch, None)
        return batch


def same_device(a, b) -> bool:
    """Whether two devices are the same place (``cuda`` without an index is the current
    CUDA device, as torch reads it)."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _describe_index(index):
    """How :meth:`TensorData.subset` records an index in the data's settings."""
    if isinstance(index, slice):
        return [index.start, index.stop, index.step]
    idx = torch.as_tensor(index)
    if idx.dtype == torch.bool:
        idx = idx.nonzero().flatten()
    idx = idx.detach().to("cpu", torch.int64).contiguous()
    digest = hashlib.sha256(idx.numpy().tobytes()).hexdigest()[:16]
    return {"indices": int(idx.numel()), "sha256": digest}


def _pinned_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An empty host tensor in pinned memory (torch's caching pinned-memory allocator)."""
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def _staged(t: torch.Tensor, index, device: torch.device) -> torch.Tensor:
    """``t[index]`` on ``device``: gathered on the host into a pinned buffer, then copied
    without blocking (only a pinned source makes ``non_blocking`` a real async copy)."""
    if t.device.type != "cpu":
        return t[index].to(device)
    if isinstance(index, slice):
        part = t[index]
        buf = _pinned_empty(part.shape, t.dtype)
        buf.copy_(part)
    else:
        buf = _pinned_empty((index.numel(),) + tuple(t.shape[1:]), t.dtype)
        torch.index_select(t, 0, index, out=buf)
    # buf is pinned: the copy is queued on the current stream and the host goes on; the
    # allocator keeps buf until the copy is done, even once buf is no longer referenced
    return buf.to(device, non_blocking=True)
