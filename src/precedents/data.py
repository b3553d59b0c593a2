"""Turn what users pass as data (arrays, tensors, Datasets, DataLoaders) into batches of tensors.

Accepted forms, and how ambiguous ones are read:

* ``(X, y)``: a **tuple** of length 2 is inputs and labels. A list is never read as a pair: a list of rows (or of
  per-example tensors) is ``X``.
* ``X`` alone, with ``y`` passed separately or not at all.
* a map-style ``torch.utils.data.Dataset`` whose items are ``(x, y)`` (or ``x`` alone when no labels are needed);
* a ``DataLoader`` over such a Dataset that visits it **in order** (no shuffling, no custom sampler, no
  ``drop_last``): the scores' columns are numbered by position in the training set, so a shuffled loader would
  make every returned index refer to a random order.

:class:`Batches` checks inputs as it yields them (finite values, the model's floating dtype) and converts labels
to tensors with a clear error for strings. :class:`Fingerprint` hashes a canonical form of the data, independent
of batch boundaries and of the integer dtype of the labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

from ._validation import PrecedentsError, check_finite, check_scalar

DataLike = Any  # (X, y) tuple, array/tensor X, torch Dataset of (x, y), or DataLoader of (x, y) batches

_STRING_LABELS_HINT = ("A torch model's labels are class indices 0..C-1 in the order of its outputs: map them "
                       "first, e.g. classes, y_idx = np.unique(y, return_inverse=True), and check that this order "
                       "is the one the model was trained with.")


def _is_text(array: np.ndarray) -> bool:
    return array.dtype.kind in "USO"


def as_tensor(values: Any, name: str) -> torch.Tensor:
    """Convert an array-like to a tensor without copying when possible; strings and ragged rows get a clear error.

    A list or tuple of tensors (one per example) is stacked.
    """
    if isinstance(values, torch.Tensor):
        return values
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):     # pandas
        values = values.to_numpy()
    elif hasattr(values, "toarray") and hasattr(values, "nnz"):                # scipy sparse
        values = values.toarray()
    if isinstance(values, (list, tuple)) and values and all(isinstance(v, torch.Tensor) for v in values):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise PrecedentsError(f"{name} is a list of tensors of different shapes ({sorted(shapes)[:3]}...): pad "
                                  "or resize them to one shape, or pass forward_fn for variable-size inputs.")
        return torch.stack(list(values))
    if isinstance(values, np.ndarray):
        if _is_text(values):
            raise PrecedentsError(f"{name} holds {'strings' if values.dtype.kind in 'US' else 'Python objects'} "
                                  f"(e.g. {values.reshape(-1)[:3].tolist()}); convert it to numbers first.")
        return torch.from_numpy(values if values.flags.c_contiguous else np.ascontiguousarray(values))
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as err:
        if "inhomogeneous" in str(err) or "sequence" in str(err):
            raise PrecedentsError(f"{name} has rows of different lengths: pass a rectangular array, one row per "
                                  "example.") from err
        raise PrecedentsError(f"{name} could not be read as an array ({type(values).__name__}): {err}. Pass a "
                              "numpy array or tensor with one row per example.") from err
    if array.dtype == object and array.ndim >= 1 and len(array) and all(hasattr(v, "__len__") for v in array.flat):
        raise PrecedentsError(f"{name} has rows of different lengths: pass a rectangular array, one row per example.")
    return as_tensor(array, name)


def as_labels(values: Any, name: str = "y") -> torch.Tensor:
    """Labels as a tensor; strings or objects get an error that says how to map them to class indices."""
    if isinstance(values, torch.Tensor):
        return values
    array = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
    if _is_text(array):
        shown = list(dict.fromkeys(array.reshape(-1).tolist()))[:4]
        raise PrecedentsError(f"{name} holds class names or other non-numbers ({shown}...). {_STRING_LABELS_HINT}")
    return as_tensor(array, name)


def labels_to_indices(y: Any, classes: Any, n: int, name: str = "y") -> torch.Tensor:
    """Map an estimator's class labels (``classes_``: strings or numbers) to indices 0..C-1 in that order (n,)."""
    classes = np.asarray(classes)
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    values = y.to_numpy().reshape(-1) if hasattr(y, "to_numpy") else np.asarray(y).reshape(-1)
    if len(values) != n:
        raise PrecedentsError(f"X and {name} have different lengths: {n} examples but {len(values)} labels.")
    try:
        known = np.isin(values, classes)
    except TypeError:
        known = np.zeros(len(values), dtype=bool)
    if not known.all():
        bad = list(dict.fromkeys(values[~known].tolist()))[:5]
        raise PrecedentsError(f"{name} holds labels {bad} that the model does not know; its classes are "
                              f"{classes.tolist()}. Pass the labels the model was fitted with.")
    order = np.argsort(classes, kind="stable")
    index = order[np.searchsorted(classes[order], values)]
    return torch.from_numpy(index.astype(np.int64))


def target_indices(target: Any, n: int, n_classes: int, classes: Any = None) -> torch.Tensor:
    """The class to explain per test point as indices (n,): one for all points (a scalar or a length-1 list) or
    one each. A number is an index 0..C-1 (checked later against the model); a class name is mapped through the
    estimator's ``classes`` (scikit-learn ``classes_``) and refused with the reason for a model without them."""
    values = np.asarray(target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else target)
    if values.dtype.kind in "USO":
        if classes is None:
            raise PrecedentsError(f"target={target!r} is a class name, but this model's classes are the indices "
                                  f"0..{n_classes - 1} of its outputs: pass the index of the class to explain.")
        flat = values.reshape(-1)
        out = labels_to_indices(flat, classes, len(flat), name="target")
    else:
        out = as_labels(values, "target")
    if out.ndim == 0 or (out.ndim == 1 and len(out) == 1 and n != 1):
        return out.reshape(()).expand(n)
    return out


@dataclass
class Batches:
    """A re-iterable source of ``(x, y)`` batches; ``y`` is None when the data carry no labels.

    ``dtype``: floating inputs are cast to it (the model's dtype); ``finite``: NaN or infinite inputs are refused
    (numbered by position); ``require_labels``: a batch without labels is refused; ``tensors``: inputs are
    converted to tensors (a clear error for text or ragged batches). ``name`` names the data in errors.
    """

    source: Any
    batch_size: int
    n_examples: int
    has_labels: bool
    name: str = "X"
    dtype: torch.dtype | None = None
    finite: bool = False
    require_labels: bool = False
    tensors: bool = False

    def _raw(self) -> Iterator[tuple[Any, Any]]:
        src = self.source
        if isinstance(src, tuple):
            X, y = src
            for start in range(0, self.n_examples, self.batch_size):
                stop = start + self.batch_size
                yield X[start:stop], (None if y is None else y[start:stop])
        else:
            for batch in src:
                if isinstance(batch, dict):
                    raise PrecedentsError(f"The batches of {self.name} are dicts (keys {sorted(batch)[:5]}); "
                                          "precedents reads batches (x, y). Return (inputs, labels) from the "
                                          "Dataset or the collate_fn.")
                if isinstance(batch, (tuple, list)):
                    yield batch[0], (batch[1] if len(batch) > 1 else None)
                else:
                    yield batch, None

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor | None]]:
        seen = 0
        for x, y in self._raw():
            if self.tensors and not isinstance(x, torch.Tensor):
                x = as_tensor(x, f"a batch of {self.name}")
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                if self.finite:
                    check_finite(f"The inputs of {self.name}", x, offset=seen)
                if self.dtype is not None and x.dtype != self.dtype:
                    x = x.to(self.dtype)
            if y is None and self.require_labels:
                raise PrecedentsError(f"The examples of {self.name} carry no labels. Pass (X, y), fit(X, y), or a "
                                      "Dataset whose items are (x, y).")
            if y is not None:
                y = as_labels(y, f"the labels of {self.name}")
            seen += len(x)
            yield x, y


def _length(obj: Any, name: str) -> int:
    try:
        return len(obj)
    except TypeError as err:
        raise PrecedentsError(f"{name} has no length; pass a sized Dataset or DataLoader.") from err


def check_loader_order(loader: DataLoader, name: str) -> None:
    """Refuse a DataLoader that does not visit its dataset once, in order: returned indices number positions."""
    if isinstance(loader.dataset, IterableDataset):
        return
    if loader.batch_size is None and loader.batch_sampler is None:
        raise PrecedentsError(f"{name}: this DataLoader has batch_size=None, so it yields single examples without "
                              "the batch axis. Pass the Dataset itself, or a DataLoader with a batch_size.")
    sampler = getattr(loader.batch_sampler, "sampler", None) or loader.sampler
    if not isinstance(sampler, SequentialSampler):
        why = ("shuffles its dataset (shuffle=True)" if isinstance(sampler, torch.utils.data.RandomSampler)
               else f"draws examples with a {type(sampler).__name__}, not in order")
        raise PrecedentsError(f"{name}: this DataLoader {why}, so every returned index would refer to a random "
                              "order. Pass DataLoader(dataset, batch_size=..., shuffle=False), or the Dataset itself.")
    if getattr(loader.batch_sampler, "drop_last", False) or loader.drop_last:
        raise PrecedentsError(f"{name}: this DataLoader has drop_last=True and would skip the last examples. Pass "
                              "drop_last=False, or the Dataset itself.")


def _first_item_has_labels(dataset: Dataset, name: str) -> bool:
    """Whether a map-style dataset's items are ``(x, y, ...)`` (peeks at item 0)."""
    if isinstance(dataset, IterableDataset) or _length(dataset, name) == 0:
        return True
    try:
        item = dataset[0]
    except Exception as err:  # noqa: BLE001 - the user's __getitem__ may raise anything
        raise PrecedentsError(f"{name}[0] failed ({type(err).__name__}: {err}): the Dataset cannot be read.") from err
    if isinstance(item, dict):
        raise PrecedentsError(f"{name}'s items are dicts (keys {sorted(item)[:5]}); precedents reads items (x, y). "
                              "Wrap the Dataset so its __getitem__ returns (inputs, label).")
    return isinstance(item, (tuple, list)) and len(item) >= 2


def make_batches(data: DataLike, y: Any = None, *, batch_size: int = 256, name: str = "X",
                 require_labels: bool = False, dtype: torch.dtype | None = None, finite: bool = True) -> Batches:
    """Normalise any supported data format into :class:`Batches` (see the module docstring for the forms).

    ``dtype``: cast floating inputs to the model's dtype; ``finite``: refuse NaN/inf inputs.
    """
    batch_size = check_scalar("batch_size", batch_size, kind=int, low=1)
    opts = {"name": name, "dtype": dtype, "finite": finite, "require_labels": require_labels, "tensors": True}
    if isinstance(data, DataLoader):
        if y is not None:
            raise PrecedentsError("Pass labels inside the DataLoader's batches, not as a separate y.")
        check_loader_order(data, name)
        n = _length(data.dataset, name)
        has = _first_item_has_labels(data.dataset, name)
        if require_labels and not has:
            raise PrecedentsError(f"The items of {name}'s dataset carry no labels, and labels are needed: make its "
                                  "__getitem__ return (x, y), e.g. TensorDataset(X, y).")
        return Batches(data, batch_size, n, has_labels=has, **opts)
    if isinstance(data, Dataset) and not isinstance(data, torch.Tensor):
        if y is not None:
            raise PrecedentsError("Pass labels inside the Dataset's items (x, y), not as a separate y.")
        n = _length(data, name)
        has = _first_item_has_labels(data, name)
        if require_labels and not has:
            raise PrecedentsError(f"The items of {name} (a {type(data).__name__}) carry no labels, and labels are "
                                  "needed: make its __getitem__ return (x, y), e.g. TensorDataset(X, y).")
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        return Batches(loader, batch_size, n, has_labels=has, **opts)
    if isinstance(data, tuple) and y is None:
        if len(data) != 2:
            raise PrecedentsError(
                f"{name} as a tuple must be (X, y); got a tuple of length {len(data)}. Pass a list or an array "
                "for rows of inputs."
            )
        data, y = data
    X = as_tensor(data, name)
    if X.ndim == 0:
        raise PrecedentsError(f"{name} must have one row per example; got a scalar.")
    labels = None if y is None else as_labels(y, "y")
    if labels is not None and labels.ndim == 0:
        raise PrecedentsError(f"y is a single number; pass one label per example (y of shape ({len(X)},)).")
    if labels is not None and len(labels) != len(X):
        hint = (f" If {name} is one example, add the batch axis: {name}[None] (shape (1, {len(X)}))."
                if X.ndim == 1 and len(labels) == 1 else "")
        raise PrecedentsError(
            f"{name} and y have different lengths: {len(X)} examples but {len(labels)} labels.{hint}"
        )
    if require_labels and labels is None:
        raise PrecedentsError(f"{name} needs labels: pass (X, y) as a tuple, fit(X, y), or a Dataset of (x, y).")
    return Batches((X, labels), batch_size, len(X), has_labels=labels is not None, **opts)


def _canonical_labels(y: torch.Tensor) -> tuple[str, np.ndarray]:
    """Labels as int64 (any integer or bool dtype, or integral floats), else float64; one value per example."""
    t = y.detach().cpu()
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.is_floating_point():
        if bool(torch.isfinite(t).all()) and torch.equal(t, t.round()):
            return f"int{tuple(t.shape[1:])}", t.to(torch.int64).contiguous().numpy()
        return f"float{tuple(t.shape[1:])}", t.to(torch.float64).contiguous().numpy()
    return f"int{tuple(t.shape[1:])}", t.to(torch.int64).contiguous().numpy()


class Fingerprint:
    """Streaming SHA-256 of a dataset's inputs and labels, to recognise the training set of an index.

    The hash is of a canonical form, so it depends on the data only: inputs as the bytes of float64 (any floating
    dtype) or int64 (integers, booleans) values, labels as int64 class indices, concatenated over examples. Batch
    boundaries, the integer dtype of the labels (int32, int64, uint8...) and the floating precision of values that
    are exactly representable do not change it; the per-example shape does.
    """

    def __init__(self) -> None:
        self._inputs = hashlib.sha256()
        self._labels = hashlib.sha256()
        self._layout: str | None = None
        self._label_layout: str | None = None
        self._n = 0
        self._n_labels = 0

    def _layout_change(self, h: Any, layout: str, current: str | None, n: int) -> None:
        if layout != current:   # recorded with the position where it starts, so it does not depend on batches
            h.update(f"|{n}:{layout}|".encode())

    def update(self, x: Any, y: Any = None) -> None:
        """Add one batch: inputs ``x`` (n, ...) and labels ``y`` (n,) or None."""
        t = torch.as_tensor(x).detach().cpu()
        if t.is_complex():
            kind, canon = "complex", torch.complex128
        elif t.is_floating_point():
            kind, canon = "float", torch.float64
        else:
            kind, canon = "int", torch.int64
        layout = f"{kind}{tuple(t.shape[1:])}"
        self._layout_change(self._inputs, layout, self._layout, self._n)
        self._layout = layout
        self._inputs.update(t.to(canon).contiguous().numpy().data)
        self._n += len(t) if t.ndim else 1
        if y is not None:
            self.update_labels(y)

    def update_rows(self, data: bytes | memoryview, layout: str, n: int) -> None:
        """Add ``n`` rows already in a canonical byte form (e.g. a DataFrame's row hashes) described by ``layout``."""
        self._layout_change(self._inputs, layout, self._layout, self._n)
        self._layout = layout
        self._inputs.update(data)
        self._n += n

    def update_labels(self, y: Any) -> None:
        layout, values = _canonical_labels(torch.as_tensor(y))
        self._layout_change(self._labels, layout, self._label_layout, self._n_labels)
        self._label_layout = layout
        self._labels.update(values.data)
        self._n_labels += len(values)

    def hexdigest(self) -> str:
        h = hashlib.sha256(b"precedents-data-v2")
        h.update(f"{self._n}:".encode() + self._inputs.digest())
        h.update(f"{self._n_labels}:".encode() + self._labels.digest())
        return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer of a module (names, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.float().numpy().data if t.dtype == torch.bfloat16 else t.numpy().data)
    return h.hexdigest()
