"""Evaluation beside the methods: it calls them only through their public API, as a user would."""

from .flipset import FlipSetResult, FlipSets, UnlearningResult, exhaustive_flip_sets, flip_set, flip_sets, unlearn
from .lds import LDSResult, LDSTruth, datamodeling_truth, linear_datamodeling, linear_datamodeling_score
from .loo import LeaveOneOutResult, leave_one_out
from .metrics import pearson, spearman
from .mislabel import MislabelResult, detection_curve, detection_summary, fix_and_retrain, flip_labels, mislabel
from .overlap import topk_agreement, topk_jaccard
from .retrain import (
    FromScratchRetrainer,
    HeadRetrainer,
    LogisticRegressionRetrainer,
    Retrainer,
    WarmStartRetrainer,
    as_retrainer,
    fit_logistic_regression,
    warm_start_retrainer,
)
from .sanity import SanityResult, label_randomized_model, randomize_labels, reinitialize, sanity
from .stability import StabilityResult, stability

__all__ = [
    "LDSResult",
    "LDSTruth",
    "datamodeling_truth",
    "FlipSetResult",
    "FlipSets",
    "FromScratchRetrainer",
    "HeadRetrainer",
    "UnlearningResult",
    "exhaustive_flip_sets",
    "flip_set",
    "flip_sets",
    "unlearn",
    "LeaveOneOutResult",
    "LogisticRegressionRetrainer",
    "MislabelResult",
    "Retrainer",
    "SanityResult",
    "StabilityResult",
    "WarmStartRetrainer",
    "as_retrainer",
    "detection_curve",
    "detection_summary",
    "fix_and_retrain",
    "fit_logistic_regression",
    "flip_labels",
    "leave_one_out",
    "linear_datamodeling",
    "linear_datamodeling_score",
    "mislabel",
    "label_randomized_model",
    "pearson",
    "randomize_labels",
    "reinitialize",
    "sanity",
    "spearman",
    "stability",
    "topk_agreement",
    "topk_jaccard",
    "warm_start_retrainer",
]
