"""Input checks shared by every estimator: each error names what was passed and how to fix it."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch


class PrecedentsError(ValueError):
    """Raised for input that cannot be explained as given (wrong shapes, labels, models or indexes)."""


def all_finite(values: torch.Tensor) -> bool:
    """Whether every entry is finite, in one pass without a full-size temporary: the smallest and largest entries
    (``torch.aminmax``, which propagates NaN) are both finite exactly when every entry is."""
    if values.is_complex():
        values = torch.view_as_real(values)
    if not values.is_floating_point() or values.numel() == 0:
        return True
    low, high = torch.aminmax(values.detach())
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def check_finite(name: str, values: torch.Tensor, offset: int = 0) -> None:
    """Refuse NaN or infinite entries, naming the first offending rows (numbered from ``offset``).

    Integer tensors are always finite; a finite tensor is checked without copying it (see :func:`all_finite`)."""
    if all_finite(values):
        return
    bad = ~torch.isfinite(values)
    rows = bad.reshape(len(values), -1).any(dim=1).nonzero().flatten() + offset if values.ndim else torch.tensor([0])
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
    if labels is None:
        raise PrecedentsError(f"{name} is missing: pass one class index per example.")
    if not isinstance(labels, torch.Tensor):
        array = np.asarray(labels)
        if array.dtype.kind in "USO":
            raise PrecedentsError(f"{name} must hold class indices 0..{n_classes - 1}; got "
                                  f"{array.reshape(-1)[:3].tolist()}... Map class names to the indices of the "
                                  "model's outputs.")
        labels = torch.as_tensor(array)
    if labels.is_complex():
        raise PrecedentsError(f"{name} must hold integer class indices; got complex values.")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 2 and labels.shape == (n_examples, n_classes):
        raise PrecedentsError(f"{name} has shape {tuple(labels.shape)}: one-hot or probability rows. Pass the class "
                              f"indices instead, e.g. {name}.argmax(1).")
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


def _describe_range(low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool) -> str:
    if low is not None and high is not None:
        return f" in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
    if low is not None:
        return f" {'>=' if low_inclusive else '>'} {low:g}"
    if high is not None:
        return f" {'<=' if high_inclusive else '<'} {high:g}"
    return ""


def check_scalar(name: str, value: Any, *, kind: type = float, low: float | None = None, high: float | None = None,
                 low_inclusive: bool = True, high_inclusive: bool = True, allow_none: bool = False,
                 why: str = "") -> Any:
    """Return ``value`` as a ``kind`` (``float`` or ``int``) if it is a finite number in the allowed range, else
    raise a :class:`PrecedentsError` naming the parameter, the value and the range. NaN and infinity are refused;
    booleans are not numbers here; an ``int`` parameter refuses 2.5 but accepts 2.0 and numpy/torch integers.
    ``allow_none``: None is returned as is (an option's "automatic" setting); ``why`` says what the option is for.
    """
    if value is None and allow_none:
        return None
    expected = (f"{name} must be a finite {'integer' if kind is int else 'number'}"
                f"{_describe_range(low, high, low_inclusive, high_inclusive)}{' or None' if allow_none else ''}"
                f"{f' ({why})' if why else ''}")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    elif isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise PrecedentsError(f"{expected}; got {value!r} ({type(value).__name__}).")
    number = float(value)
    if not math.isfinite(number) or (kind is int and number != int(number)):
        raise PrecedentsError(f"{expected}; got {value!r}.")
    too_low = low is not None and (number < low or (not low_inclusive and number == low))
    too_high = high is not None and (number > high or (not high_inclusive and number == high))
    if too_low or too_high:
        raise PrecedentsError(f"{expected}; got {value!r}.")
    return int(number) if kind is int else number


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else a :class:`PrecedentsError` listing them (and the nearest
    one for a misspelt string)."""
    choices = list(choices)
    for choice in choices:
        try:
            if isinstance(choice, bool) == isinstance(value, (bool, np.bool_)) and bool(value == choice):
                return value
        except (TypeError, ValueError, RuntimeError):      # arrays, incomparable values
            continue
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
    raise PrecedentsError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}.{hint}")


def check_param_names(model: torch.nn.Module, params: Any, keywords: Iterable[str] = ("head", "all")) -> Any:
    """Check a ``params`` option: one of ``keywords`` (returned as is), one parameter name, or a non-empty list of
    distinct parameter names of ``model`` (returned as a list). A string is never split into letters; unknown names
    are listed with the model's parameter names (and the nearest match)."""
    named = [n for n, _ in model.named_parameters()]
    keywords = list(keywords)
    if isinstance(params, str):
        if params in keywords:
            return params
        if params in named:
            return [params]
        close = difflib.get_close_matches(params, keywords + named, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PrecedentsError(f"params={params!r} is neither {' nor '.join(repr(k) for k in keywords)} nor the name "
                              f"of one of the model's parameters ({_list_names(named)}).{hint} Pass a list of names "
                              "to choose several.")
    try:
        names = list(params)
    except TypeError as err:
        raise PrecedentsError(f"params must be {' or '.join(repr(k) for k in keywords)} or a list of parameter names; "
                              f"got {params!r}.") from err
    if not names:
        raise PrecedentsError(f"params=[] selects no parameters. Pass {' or '.join(repr(k) for k in keywords)}, or "
                              f"names from: {_list_names(named)}.")
    bad_type = [n for n in names if not isinstance(n, str)]
    if bad_type:
        raise PrecedentsError(f"params must list parameter names as strings; got {bad_type[:3]!r}. (To pass the "
                              "tensors themselves, use their names from model.named_parameters().)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PrecedentsError(f"params names {repeated} more than once; list each parameter once.")
    unknown = [n for n in names if n not in named]
    if unknown:
        hints = [f"{u!r} (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(u, named, n=1)) else repr(u)
                 for u in unknown]
        raise PrecedentsError(f"The model has no parameters named {', '.join(hints)}. Its parameters are: "
                              f"{_list_names(named)}.")
    return names


def _list_names(names: list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
