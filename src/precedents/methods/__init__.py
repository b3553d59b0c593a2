"""Data-attribution methods: thin estimators over the functional core in :mod:`precedents.linalg`."""

from .representer import RepresenterL2, RepresenterLJE

__all__ = ["RepresenterL2", "RepresenterLJE"]
