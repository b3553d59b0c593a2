"""Evaluation beside the methods: it calls them only through their public API, as a user would."""

from .loo import (
    LeaveOneOutResult,
    LogisticRegressionRetrainer,
    fit_logistic_regression,
    leave_one_out,
    linear_datamodeling,
    linear_datamodeling_score,
    warm_start_retrainer,
)
from .metrics import pearson, spearman
from .overlap import topk_agreement, topk_jaccard

__all__ = [
    "LeaveOneOutResult",
    "LogisticRegressionRetrainer",
    "fit_logistic_regression",
    "leave_one_out",
    "linear_datamodeling",
    "linear_datamodeling_score",
    "pearson",
    "spearman",
    "topk_agreement",
    "topk_jaccard",
    "warm_start_retrainer",
]
