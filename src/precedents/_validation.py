"""Input checks shared by every estimator: each error names what was passed and how to fix it."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class PrecedentsError(ValueError):
    """Raised for input that cannot be explained as given (wrong shapes, labels, models or indexes)."""


def check_finite(name: str, values: torch.Tensor, offset: int = 0) -> None:
    """Refuse NaN or infinite entries, naming the first offending rows (numbered from ``offset``)."""
    bad = ~torch.isfinite(values)
    if bad.any():
        rows = bad.reshape(len(values), -1).any(dim=1).nonzero().flatten() + offset
        shown = ", ".join(str(int(r)) for r in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise PrecedentsError(
            f"{name} contain NaN or infinite values (rows {shown}{more}). Clean or drop these examples "
            "(or check the model for overflow) before explaining."
        )


def check_labels(labels: torch.Tensor, n_classes: int, n_examples: int, name: str = "y") -> torch.Tensor:
    """Return labels as int64 class indices in [0, n_classes), or raise a clear error.

    A one-output (sigmoid) head has ``n_classes == 2``: labels must be 0 or 1.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise PrecedentsError(f"{name} must be a 1-D vector of class indices, got shape {tuple(labels.shape)}.")
    if len(labels) != n_examples:
        raise PrecedentsError(
            f"X and {name} have different lengths: {n_examples} examples but {len(labels)} labels."
        )
    if labels.is_floating_point():
        if not torch.isfinite(labels).all() or not torch.equal(labels, labels.round()):
            raise PrecedentsError(f"{name} must hold integer class indices; got non-integer values.")
    elif labels.dtype == torch.bool:
        labels = labels.long()
    labels = labels.long()
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise PrecedentsError(
            f"{name} holds labels from {int(labels.min())} to {int(labels.max())}, but the model has "
            f"{n_classes} classes: labels must lie in [0, {n_classes - 1}]. Map your labels to class "
            "indices in the order of the model's outputs."
        )
    return labels


def parse_methods(methods: str | Iterable[str], known: Iterable[str], what: str = "method") -> list[str]:
    """Method keys from a comma-separated string or a list: each known, none twice, at least one."""
    keys = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else [str(m).strip() for m in methods]
    keys = [k for k in keys if k]
    known = list(known)
    unknown = [k for k in keys if k not in known]
    if not keys or unknown:
        raise PrecedentsError(f"Unknown {what}(s) {', '.join(unknown) or '(none given)'}; choose from "
                              f"{', '.join(known)}.")
    if len(set(keys)) != len(keys):
        raise PrecedentsError(f"A {what} is named twice in {', '.join(keys)}.")
    return keys


def check_scalar(name: str, value: object, *, kind: type = float, low: float | None = None,
                 high: float | None = None, low_inclusive: bool = True, allow_none: bool = False,
                 why: str = "") -> object:
    """Return ``value`` if it is a finite number of ``kind`` (int or float) within ``[low, high]``, else raise a
    :class:`PrecedentsError` naming the parameter, the value and the allowed range (``why`` says what it is for).
    Booleans are refused as numbers; an int is accepted where a float is asked for."""
    if value is None and allow_none:
        return value
    reason = f" ({why})" if why else ""
    numeric = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric):
        try:                                       # numpy / torch scalars
            import numbers

            ok = isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
        except ImportError:  # pragma: no cover
            ok = False
        if not ok:
            raise PrecedentsError(f"{name} must be {'an integer' if kind is int else 'a number'}"
                                  f"{' or None' if allow_none else ''}, got {value!r}{reason}.")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise PrecedentsError(f"{name} must be a finite number, got {value!r}{reason}.")
    if low is not None and (number < low or (number == low and not low_inclusive)):
        raise PrecedentsError(f"{name} must be {'>=' if low_inclusive else '>'} {low:g}, got {value!r}{reason}.")
    if high is not None and number > high:
        raise PrecedentsError(f"{name} must be <= {high:g}, got {value!r}{reason}.")
    return value


def check_choice(name: str, value: object, choices: Iterable[object]) -> object:
    """Return ``value`` if it is one of ``choices``, else a :class:`PrecedentsError` listing them."""
    choices = list(choices)
    if not isinstance(value, (str, int, float, type(None))) or value not in choices:
        raise PrecedentsError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}.")
    return value
