"""Adapters turn a user's model into a *head view*: features phi(x), head weights Theta and the link."""

from .torch import HeadFeatures, TorchHead

__all__ = ["HeadFeatures", "TorchHead"]
