"""precedents: explain a classifier's predictions by the training examples behind them.

Sign convention, everywhere: a positive score means the training example *supports* the model's output for
the test point (a proponent; RPS "excitatory"); for loss-based methods the score is the predicted increase
of the test loss if that training example were removed.
"""

from . import evaluate, glassbox
from ._validation import PrecedentsError
from .attribution import Attribution, TopK
from .counterfactual import counterfactuals
from .features import feature_attributions, tcav
from .methods import GradientSimilarity, InfluenceFunction, RepresenterL2, RepresenterLJE, TracIn
from .sensitivity import sensitivity_maps

__all__ = [
    "Attribution",
    "GradientSimilarity",
    "InfluenceFunction",
    "PrecedentsError",
    "RepresenterL2",
    "RepresenterLJE",
    "TopK",
    "TracIn",
    "counterfactuals",
    "evaluate",
    "feature_attributions",
    "glassbox",
    "sensitivity_maps",
    "tcav",
]
__version__ = "0.1.0"
