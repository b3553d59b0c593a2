"""Evaluation beside the methods: it calls them only through their public API, as a user would."""

from .overlap import topk_jaccard

__all__ = ["topk_jaccard"]
