"""Adapters turn a user's model into a *head view*: features phi(x), head weights Theta and the link.

The adapters are the only place that knows a model family. Every adapter offers the same interface (see
:class:`~precedents.adapters.torch.TorchHead`, the reference implementation):

* ``batches(data, y, *, name, require_labels)``: the user's data as :class:`~precedents.data.Batches`, checked as
  they are read (NaN/inf inputs, missing labels, text labels, a shuffled DataLoader); floating inputs cast to the
  model's dtype; estimators with ``classes_`` (scikit-learn, tree ensembles) map labels through it;
* ``target_indices(target, n)``: the class to explain per test point as indices (n,), a class name mapped through
  ``classes_`` where the estimator has them, else refused with the reason;
* ``run(batches, what=...) -> HeadFeatures``: features (n, d) float64 with the constant column, the model's own
  logits (n, C), labels and a data fingerprint;
* ``theta()``: the (C, d) head, ``logits = features @ theta.T``;
* ``link`` (``"softmax"``/``"sigmoid"``, or ``"squared_hinge"`` for a LinearSVC), ``n_outputs``, ``n_classes``,
  ``layer_name``, ``fingerprint()``;
* ``weight_decay(n_train)``: the training objective's l2 strength in *mean-loss* units (objective
  ``mean loss + 1/2 sum wd * theta^2``) for a training set of ``n_train`` examples, a (C, d) tensor (0 where a
  parameter is not penalised, e.g. an intercept), or None when the adapter cannot know it;
* ``model``: a ``torch.nn.Module`` computing the logits from the batches' inputs, or None (tree ensembles),
  for methods that differentiate through the whole network.

Methods that differentiate through ``model`` start at :class:`~precedents.linalg.functional.LossGradients`, which
makes the head path's checks on the model (:func:`~precedents.adapters.torch.check_gradient_model`: finite
weights, logits not probabilities, the head last, eval mode); :func:`~precedents.adapters.torch.probe_logits` runs
the model on a few examples with errors that name the given and the expected input.
"""

from __future__ import annotations

from typing import Any

from .._validation import PrecedentsError
from .torch import ForwardFn, HeadFeatures, TorchHead, TorchModel

SUPPORTED_FAMILIES = (
    "torch.nn.Module classifiers ending in nn.Linear; "
    "scikit-learn LogisticRegression, SGDClassifier (loss='log_loss'), LinearSVC (binary, loss='squared_hinge') "
    "and MLPClassifier; "
    "XGBoost (XGBClassifier or Booster), LightGBM (LGBMClassifier or Booster), scikit-learn "
    "GradientBoostingClassifier and HistGradientBoostingClassifier (random forests are refused: they average "
    "probabilities and have no logit head)"
)


def model_family(model: Any) -> str:
    """``"torch"``, ``"sklearn"`` (linear models and MLPs), ``"trees"`` or ``"unknown"``; nothing is imported."""
    module = type(model).__module__ or ""
    if module.startswith(("xgboost", "lightgbm")) or module.startswith("sklearn.ensemble"):
        return "trees"
    if module.startswith("sklearn."):
        return "sklearn"
    try:
        from torch import nn
    except ImportError:  # pragma: no cover - torch is a dependency
        return "unknown"
    return "torch" if isinstance(model, nn.Module) else "unknown"


def head_adapter(model: Any, layer: str | None = None, *, forward_fn: ForwardFn | None = None,
                 batch_size: int = 256, progress: bool = True) -> Any:
    """The head view of ``model``, whatever its family; a clear error names the supported ones."""
    family = model_family(model)
    if family == "torch":
        return TorchHead(model, layer, forward_fn=forward_fn, batch_size=batch_size, progress=progress)
    if family == "sklearn":
        from .sklearn import sklearn_head

        return sklearn_head(model, layer, batch_size=batch_size, progress=progress)
    if family == "trees":
        from .trees import TreeHead

        if layer is not None or forward_fn is not None:
            raise PrecedentsError("layer= and forward_fn= apply to neural networks; a tree ensemble has neither.")
        return TreeHead(model, batch_size=batch_size, progress=progress)
    raise PrecedentsError(f"precedents cannot explain a {type(model).__module__}.{type(model).__name__}. "
                          f"Supported: {SUPPORTED_FAMILIES}.")


def gradient_adapter(model: Any, what: str, *, batch_size: int = 256, progress: bool = True) -> Any:
    """The adapter of methods that differentiate through the model's parameters (TracIn, gradient similarity):
    ``model`` (a torch module computing the logits), ``link`` (None for a torch model: read from its outputs),
    ``batches(...)`` (for scikit-learn models labels are mapped through ``classes_``), ``fingerprint()`` and
    ``data_fingerprint(batches)``. A tree ensemble has no differentiable parameters: refused, naming ``what``."""
    family = model_family(model)
    if family == "torch":
        return TorchModel(model, batch_size=batch_size, progress=progress)
    if family == "sklearn":
        return head_adapter(model, batch_size=batch_size, progress=progress)
    as_torch_module(model, what)              # raises the family's error
    raise AssertionError("unreachable")  # pragma: no cover


def as_torch_module(model: Any, what: str) -> Any:
    """``(module, link)``: the torch module computing ``model``'s logits, for methods that differentiate through the
    model's parameters or inputs (``what`` names the method in the error). A torch model is returned as is; a
    scikit-learn model as its equivalent converted module; a tree ensemble has no differentiable parameters."""
    family = model_family(model)
    if family == "torch":
        return model, None
    if family == "sklearn":
        head = head_adapter(model, progress=False)
        return head.model, head.link
    if family == "trees":
        raise PrecedentsError(f"{what} differentiates through the model's parameters or inputs; a tree ensemble "
                              f"({type(model).__name__}) has neither. Use RepresenterLJE or InfluenceFunction "
                              "(params='head'), which work on its per-tree head.")
    raise PrecedentsError(f"precedents cannot explain a {type(model).__module__}.{type(model).__name__}. "
                          f"Supported: {SUPPORTED_FAMILIES}.")


__all__ = ["HeadFeatures", "SUPPORTED_FAMILIES", "TorchHead", "TorchModel", "as_torch_module", "gradient_adapter",
           "head_adapter", "model_family"]
