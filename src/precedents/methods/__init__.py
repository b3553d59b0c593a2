"""Data-attribution methods: thin estimators over the functional core in :mod:`precedents.linalg`, one contract
(:class:`~precedents.methods.base.Explainer`) and one registry (:mod:`precedents.methods.registry`)."""

from .base import Explainer, NotFittedError, clone
from .influence import InfluenceFunction
from .perturbation import perturbation_influence, training_set_attack
from .registry import MethodInfo, available_methods, explainer, load, method_info, register
from .representer import RepresenterL2, RepresenterLJE
from .tracin import GradientSimilarity, TracIn
from .trak import TRAK

__all__ = [
    "Explainer",
    "GradientSimilarity",
    "InfluenceFunction",
    "MethodInfo",
    "NotFittedError",
    "RepresenterL2",
    "RepresenterLJE",
    "TRAK",
    "TracIn",
    "available_methods",
    "clone",
    "explainer",
    "load",
    "method_info",
    "perturbation_influence",
    "register",
    "training_set_attack",
]
