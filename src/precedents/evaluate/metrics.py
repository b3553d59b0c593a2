r"""Correlation coefficients for comparing attribution scores with ground truth (no scipy needed).

Both take two tensors or arrays of the same number of elements, flatten them, and compute in float64:

* :func:`pearson`: ``r = sum (a - mean a)(b - mean b) / sqrt(sum (a - mean a)^2 sum (b - mean b)^2)``;
* :func:`spearman`: the Pearson correlation of the ranks, ties receiving the average of the ranks they span
  (the same definition as ``scipy.stats.spearmanr``).

Either returns ``nan`` when it is undefined: fewer than two elements, a constant input, or a non-finite value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["pearson", "rankdata", "spearman"]


def _as_flat(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_flat(a), _as_flat(b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same number of elements, got {a.size} and {b.size}")
    return a, b


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    if denom == 0:
        return float("nan")
    return float(np.clip((a @ b) / denom, -1.0, 1.0))


def rankdata(x: Any) -> np.ndarray:
    """Ranks 1..n of the flattened input (float64), ties receiving the average of the ranks they span."""
    x = _as_flat(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts_flag = np.concatenate(([True], xs[1:] != xs[:-1])) if x.size else np.zeros(0, dtype=bool)
    group = np.cumsum(starts_flag) - 1
    starts = np.flatnonzero(starts_flag)
    stops = np.append(starts[1:], x.size)
    average = (starts + stops - 1) / 2.0 + 1.0          # mean of ranks start+1 .. stop
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = average[group]
    return ranks


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation of the flattened ``a`` and ``b`` (``nan`` if undefined)."""
    return _pearson(*_pair(a, b))


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of the flattened ``a`` and ``b``, average ranks for ties (``nan`` if undefined)."""
    a, b = _pair(a, b)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    return _pearson(rankdata(a), rankdata(b))
