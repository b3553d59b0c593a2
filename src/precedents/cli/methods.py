"""The method keys the commands accept, and the estimator a key and the command's options build.

TODO(issue 9): this is the bridge until ``precedents.available_methods()`` / ``precedents.explainer()`` land on
main; then the keys come from the registry and :func:`build` is ``explainer(key, model)`` + ``set_params``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["KEYS", "build"]

KEYS = ("rps-l2", "rps-lje", "influence-exact", "influence-cg", "influence-lissa", "influence-arnoldi", "grad-dot",
        "grad-cos")


def _make(key: str, model: torch.nn.Module) -> Any:
    from ..methods import GradientSimilarity, InfluenceFunction, RepresenterL2, RepresenterLJE

    if key.startswith("influence-"):
        return InfluenceFunction(model, solver=key.split("-", 1)[1])
    if key == "rps-l2":
        return RepresenterL2(model)
    if key == "rps-lje":
        return RepresenterLJE(model)
    return GradientSimilarity(model, kind=key.split("-", 1)[1])


def build(key: str, model: torch.nn.Module, **options: Any) -> Any:
    """The estimator of ``key`` for ``model`` with those of ``options`` it takes (None: keep its default)."""
    est = _make(key, model)
    names = est.get_params()
    for name, value in options.items():
        if value is not None and name in names:
            setattr(est, name, value)
    return est


def loss_based(key: str) -> bool:
    """Whether the method of ``key`` explains a loss (and so needs the labels whose loss it explains)."""
    return not key.startswith("rps-")
