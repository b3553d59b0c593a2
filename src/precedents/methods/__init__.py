"""Data-attribution methods: thin estimators over the functional core in :mod:`precedents.linalg`."""

from .influence import InfluenceFunction
from .representer import RepresenterL2, RepresenterLJE

__all__ = ["InfluenceFunction", "RepresenterL2", "RepresenterLJE"]
