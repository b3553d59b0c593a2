"""Data-attribution methods: thin estimators over the functional core in :mod:`precedents.linalg`."""

from .influence import InfluenceFunction
from .representer import RepresenterL2, RepresenterLJE
from .tracin import GradientSimilarity, TracIn

__all__ = ["GradientSimilarity", "InfluenceFunction", "RepresenterL2", "RepresenterLJE", "TracIn"]
