"""Evaluation beside the methods: it calls them only through their public API, as a user would."""

from .overlap import topk_agreement, topk_jaccard

__all__ = ["topk_agreement", "topk_jaccard"]
