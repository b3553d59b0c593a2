"""precedents: explain a classifier's predictions by the training examples behind them.

Sign convention, everywhere: a positive score means the training example *supports* the model's output for
the test point (a proponent; RPS "excitatory"); for loss-based methods the score is the predicted increase
of the test loss if that training example were removed.
"""

from . import evaluate, glassbox
from ._validation import PrecedentsError
from .attribution import Attribution, Measurement, TopK
from .counterfactual import counterfactuals
from .features import feature_attributions, tcav
from .methods import (
    TRAK,
    Explainer,
    GradientSimilarity,
    InfluenceFunction,
    NotFittedError,
    RepresenterL2,
    RepresenterLJE,
    TracIn,
    available_methods,
    clone,
    explainer,
    load,
    method_info,
)
from .sensitivity import sensitivity_maps

__all__ = [
    "Attribution",
    "Explainer",
    "GradientSimilarity",
    "InfluenceFunction",
    "Measurement",
    "NotFittedError",
    "PrecedentsError",
    "RepresenterL2",
    "RepresenterLJE",
    "TRAK",
    "TopK",
    "TracIn",
    "available_methods",
    "clone",
    "counterfactuals",
    "evaluate",
    "explainer",
    "feature_attributions",
    "glassbox",
    "load",
    "method_info",
    "sensitivity_maps",
    "tcav",
]
__version__ = "0.1.0"
