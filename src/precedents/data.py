"""Turn what users pass as data (arrays, tensors, Datasets, DataLoaders) into batches of tensors."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ._validation import PrecedentsError

DataLike = Any  # (X, y) tuple, array/tensor X, torch Dataset of (x, y), or DataLoader of (x, y) batches


def as_tensor(values: Any, name: str) -> torch.Tensor:
    """Convert an array-like to a tensor without copying when possible."""
    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, np.ndarray):
        if values.dtype == object:
            raise PrecedentsError(f"{name} is a numpy array of Python objects; convert it to numbers first.")
        return torch.from_numpy(np.ascontiguousarray(values))
    try:
        return torch.as_tensor(np.asarray(values))
    except (TypeError, ValueError) as err:
        raise PrecedentsError(f"{name} could not be read as an array ({type(values).__name__}): {err}") from err


@dataclass
class Batches:
    """A re-iterable source of ``(x, y)`` batches; ``y`` is None when the data carry no labels."""

    source: Any
    batch_size: int
    n_examples: int
    has_labels: bool

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor | None]]:
        src = self.source
        if isinstance(src, tuple):
            X, y = src
            for start in range(0, self.n_examples, self.batch_size):
                stop = start + self.batch_size
                yield X[start:stop], (None if y is None else y[start:stop])
        else:
            for batch in src:
                if isinstance(batch, (tuple, list)):
                    x = batch[0]
                    y = batch[1] if len(batch) > 1 else None
                else:
                    x, y = batch, None
                yield x, (None if y is None else torch.as_tensor(y))


def _length(obj: Any, name: str) -> int:
    try:
        return len(obj)
    except TypeError as err:
        raise PrecedentsError(f"{name} has no length; pass a sized Dataset or DataLoader.") from err


def make_batches(data: DataLike, y: Any = None, *, batch_size: int = 256, name: str = "X",
                 require_labels: bool = False) -> Batches:
    """Normalise any supported data format into :class:`Batches`.

    Accepted: ``(X, y)`` tuple; ``X`` with ``y`` passed separately; ``X`` alone (no labels); a
    ``torch.utils.data.Dataset`` yielding ``(x, y)``; a ``DataLoader`` yielding ``(x, y)`` batches.
    """
    if isinstance(data, DataLoader):
        if y is not None:
            raise PrecedentsError("Pass labels inside the DataLoader's batches, not as a separate y.")
        n = _length(data.dataset, name)
        return Batches(data, batch_size, n, has_labels=True)
    if isinstance(data, Dataset) and not isinstance(data, torch.Tensor):
        n = _length(data, name)
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        return Batches(loader, batch_size, n, has_labels=True)
    if isinstance(data, (tuple, list)) and y is None:
        if len(data) != 2:
            raise PrecedentsError(
                f"{name} as a tuple must be (X, y); got a {type(data).__name__} of length {len(data)}."
            )
        data, y = data
    X = as_tensor(data, name)
    if X.ndim == 0:
        raise PrecedentsError(f"{name} must have one row per example; got a scalar.")
    labels = None if y is None else as_tensor(y, "y")
    if labels is not None and len(labels) != len(X):
        raise PrecedentsError(
            f"{name} and y have different lengths: {len(X)} examples but {len(labels)} labels."
        )
    if require_labels and labels is None:
        raise PrecedentsError(f"{name} needs labels: pass (X, y), fit(X, y), or a Dataset of (x, y).")
    return Batches((X, labels), batch_size, len(X), has_labels=labels is not None)


class Fingerprint:
    """Streaming SHA-256 of a dataset's inputs and labels, to recognise the training set of an index."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, *tensors: torch.Tensor | None) -> None:
        for t in tensors:
            if t is not None:
                t = t.detach().cpu().contiguous()
                self._hash.update(str((t.dtype, tuple(t.shape[1:]))).encode())
                self._hash.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer of a module (names, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.float().numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return h.hexdigest()
