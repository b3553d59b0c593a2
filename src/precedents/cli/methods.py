"""The registry as the commands use it: the keys argparse offers, and the estimator a key and options build."""

from __future__ import annotations

from typing import Any

from .._validation import PrecedentsError
from ..methods.registry import available_methods, explainer, method_info

__all__ = ["KEYS", "build", "loss_based"]

#: every registered method (``precedents.available_methods()``)
KEYS: tuple[str, ...] = tuple(available_methods())


def build(key: str, model: Any, **options: Any) -> Any:
    """``precedents.explainer(key, model)`` with those command options the method takes (None: its default)."""
    info = method_info(key)
    try:
        est = explainer(key, model)
    except TypeError as err:            # a required argument no option of the command gives (TracIn's checkpoints)
        raise PrecedentsError(f"{key} cannot be built from this command's options ({err}); use the Python API "
                              "precedents.explainer(key, model, ...) or another method.") from err
    names = est.get_params()
    return est.set_params(**{k: v for k, v in options.items()
                             if v is not None and k in names and k not in info.fixed})


def loss_based(key: str) -> bool:
    """Whether the method of ``key`` explains a loss (and so needs the labels whose loss it explains)."""
    return method_info(key).loss_based
