"""Data-attribution methods: thin estimators over the functional core in :mod:`precedents.linalg`."""

from .influence import InfluenceFunction
from .perturbation import perturbation_influence, training_set_attack
from .representer import RepresenterL2, RepresenterLJE
from .tracin import GradientSimilarity, TracIn

__all__ = [
    "GradientSimilarity",
    "InfluenceFunction",
    "RepresenterL2",
    "RepresenterLJE",
    "TracIn",
    "perturbation_influence",
    "training_set_attack",
]
