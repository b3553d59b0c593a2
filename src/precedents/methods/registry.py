"""The one registry of methods: a key names an estimator class and the parameters that make it that method.

``available_methods()`` lists the keys; ``explainer(key, model, **params)`` builds an unfitted estimator;
``load(directory, model)`` rebuilds any saved index; ``method_info(key)`` says what a method is (its paper, what
its scores measure, whether it needs labels). The CLI, the evaluation harnesses, the demos, the report and the
explorer all go through here: adding a method is one :func:`register` call.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._validation import PrecedentsError
from .base import Explainer


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its estimator class, the parameters that define it, and a one-line summary."""

    key: str
    cls: type[Explainer]
    fixed: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    paper: str = ""

    def build(self, model: Any, **params: Any) -> Explainer:
        clash = [k for k in params if k in self.fixed and params[k] != self.fixed[k]]
        if clash:
            raise PrecedentsError(f"{self.key} fixes {clash[0]}={self.fixed[clash[0]]!r}; choose another method "
                                  f"key for {clash[0]}={params[clash[0]]!r} (see available_methods()).")
        allowed = self.cls._param_names()
        unknown = [k for k in params if k not in allowed]
        if unknown:
            raise PrecedentsError(f"{self.key} ({self.cls.__name__}) has no parameter {unknown[0]!r}; its "
                                  f"parameters are {', '.join(allowed)}.")
        return self.cls(model, **{**self.fixed, **params})

    @property
    def loss_based(self) -> bool:
        return bool(self.cls.loss_based)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "class": self.cls.__name__, "fixed": dict(self.fixed), "summary": self.summary,
                "paper": self.paper, "loss_based": self.loss_based}


_REGISTRY: dict[str, MethodInfo] = {}


def register(key: str, cls: type[Explainer], *, summary: str = "", paper: str = "", **fixed: Any) -> MethodInfo:
    """Register ``cls`` (with the parameters ``fixed``) under ``key``; a key can be registered once."""
    if key in _REGISTRY and _REGISTRY[key].cls is not cls:
        raise PrecedentsError(f"A method is already registered as {key!r} ({_REGISTRY[key].cls.__name__}).")
    info = MethodInfo(key, cls, dict(fixed), summary, paper)
    _REGISTRY[key] = info
    return info


def available_methods() -> list[str]:
    """The keys of every registered method, in registration order."""
    return list(_REGISTRY)


def method_info(key: str) -> MethodInfo:
    """The registration of ``key``; a clear error lists the keys when it is unknown."""
    if not isinstance(key, str) or key not in _REGISTRY:
        raise PrecedentsError(f"Unknown method {key!r}; choose from {', '.join(_REGISTRY)}.")
    return _REGISTRY[key]


def explainer(key: str, model: Any, **params: Any) -> Explainer:
    """An unfitted estimator of method ``key`` for ``model`` (``params``: the class's other parameters)."""
    return method_info(key).build(model, **params)


def load(directory: str | os.PathLike, model: Any, train: Any = None, **runtime: Any) -> Explainer:
    """Rebuild any saved index (of any registered method) for ``model``; see :meth:`Explainer.load`."""
    manifest_path = Path(directory) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        key = manifest["method"]
    except FileNotFoundError as err:
        raise PrecedentsError(f"{directory} is not a precedents index: it has no manifest.json. Build one with "
                              "fit(...) then save(directory).") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PrecedentsError(f"The manifest of the index in {directory} is unreadable ({err}). Rebuild the "
                              "index.") from err
    return method_info(key).cls.load(directory, model, train, **runtime)


def _register_builtin() -> None:
    from .influence import InfluenceFunction
    from .representer import RepresenterL2, RepresenterLJE
    from .tracin import GradientSimilarity, TracIn
    from .trak import TRAK

    register("rps-l2", RepresenterL2, summary="representer points of the last layer refit with an l2 penalty",
             paper="Yeh et al., NeurIPS 2018")
    register("rps-lje", RepresenterLJE, summary="representer points by local Jacobian expansion of the head",
             paper="Sui, Wu & Sanner, NeurIPS 2021")
    for solver, what in (("exact", "explicit Hessian, eigendecomposed"), ("cg", "conjugate gradients"),
                         ("lissa", "LiSSA stochastic recursion"), ("arnoldi", "top eigenpairs by Arnoldi/Lanczos")):
        register(f"influence-{solver}", InfluenceFunction, solver=solver,
                 summary=f"influence functions, {what}", paper="Koh & Liang, ICML 2017")
    for solver, what in (("kfac", "K-FAC"), ("ekfac", "EK-FAC")):
        register(f"influence-{solver}", InfluenceFunction, solver=solver, params="all",
                 summary=f"influence functions over every nn.Linear / nn.Conv2d, {what} Gauss-Newton layer by layer",
                 paper="Grosse et al. 2023 (George et al. 2018 for EK-FAC)")
    register("trak", TRAK, summary="TRAK: projected margin gradients, kernel regression, ensembles of models",
             paper="Park et al., ICML 2023")
    register("tracin", TracIn, summary="TracInCP: loss-gradient products summed over checkpoints",
             paper="Pruthi et al., NeurIPS 2020")
    register("grad-dot", GradientSimilarity, kind="dot", summary="loss-gradient dot product at the final weights")
    register("grad-cos", GradientSimilarity, kind="cos", summary="cosine of loss gradients at the final weights")


_register_builtin()
