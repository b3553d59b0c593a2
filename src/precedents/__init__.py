"""precedents: explain a classifier's predictions by the training examples behind them.

Sign convention, everywhere: a positive score means the training example *supports* the model's output for
the test point (a proponent; RPS "excitatory"); for loss-based methods the score is the predicted increase
of the test loss if that training example were removed.
"""

from . import evaluate
from ._validation import PrecedentsError
from .attribution import Attribution, TopK
from .methods import GradientSimilarity, InfluenceFunction, RepresenterL2, RepresenterLJE, TracIn

__all__ = [
    "Attribution",
    "GradientSimilarity",
    "InfluenceFunction",
    "PrecedentsError",
    "RepresenterL2",
    "RepresenterLJE",
    "TopK",
    "TracIn",
    "evaluate",
]
__version__ = "0.1.0"
