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

from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch

from probgen.errors import DataError

Batch = tuple
Transform = Callable[[Batch, Optional[torch.Generator]], Batch]


class TensorData:
    """A data set of tensors sharing their first dimension.

    Args:
        *tensors: tensors of shape ``(N, ...)``.
        transform: optional ``f(batch, generator) -> batch`` applied to every batch.
        names: optional names of the tensors, for messages and ``repr``.
        settings: optional dict (numbers, strings, lists, dicts) of how the data was
            made; recorded in checkpoints so that a resumed run uses the same data.
            Kept by :meth:`to` and :meth:`with_transform`; :meth:`subset` adds the slice
            it took (and drops them for other indices, which it cannot describe).
    """

    def __init__(self, *tensors: torch.Tensor, transform: Optional[Transform] = None,
                 names: Optional[Sequence[str]] = None,
                 settings: Optional[Dict[str, Any]] = None):
        if not tensors:
            raise DataError("TensorData needs at least one tensor.")
        n = tensors[0].shape[0]
        for i, t in enumerate(tensors):
            if not torch.is_tensor(t):
                raise DataError(f"TensorData: item {i} is a {type(t).__name__}, not a tensor.")
            if t.shape[0] != n:
                raise DataError(
                    f"TensorData: all tensors need the same first dimension; tensor 0 has {n}, "
                    f"tensor {i} has {t.shape[0]}.")
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
            for i, t in enumerate(self.tensors))
        return f"TensorData({shapes}, device={self.device})"

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    def to(self, device=None, dtype=None) -> "TensorData":
        """The same data on ``device``; ``dtype`` converts the floating-point tensors only
        (labels and indices keep theirs)."""
        def move(t):
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device) if device is not None else t
        return TensorData(*(move(t) for t in self.tensors), transform=self.transform,
                          names=self.names, settings=self.settings)

    def subset(self, index) -> "TensorData":
        """The examples at ``index`` (a slice, a list or a tensor of indices)."""
        settings = None
        if self.settings is not None and isinstance(index, slice):
            settings = dict(self.settings)
            settings["subsets"] = list(settings.get("subsets", [])) + [
                [index.start, index.stop, index.step]]
        return TensorData(*(t[index] for t in self.tensors), transform=self.transform,
                          names=self.names, settings=settings)

    def with_transform(self, transform: Optional[Transform]) -> "TensorData":
        """The same tensors with ``transform`` applied after the current one."""
        if transform is None:
            return self
        first = self.transform
        if first is None:
            combined = transform
        else:
            def combined(batch, generator=None):
                return transform(first(batch, generator), generator)
        return TensorData(*self.tensors, transform=combined, names=self.names,
                          settings=self.settings)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None,
                drop_last: bool = False) -> Iterator[Batch]:
        """Iterate over batches (tuples of tensors) on the data's device."""
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}.")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator, device="cpu")
            if self.device.type != "cpu":
                order = order.to(self.device)
        else:
            order = None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                batch = tuple(t[start:start + batch_size] for t in self.tensors)
            else:
                idx = order[start:start + batch_size]
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
