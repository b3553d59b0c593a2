r"""Head view of fitted scikit-learn classifiers: each is converted into an equivalent float64 torch module.

Supported (everything else gets a :class:`~precedents.PrecedentsError` naming these):

* ``LogisticRegression`` with an l2 penalty or none: binary problems are one output with a sigmoid link,
  three or more classes the multinomial (softmax) model scikit-learn fits. Its objective is
  ``C sum_i l_i + 1/2 ||w||^2`` (scikit-learn >= 1.2 minimises the same thing scaled by ``1 / (C n)``), so in
  mean-loss units the weight decay is ``1 / (C n)`` on the coefficients and 0 on the intercept, except with
  ``solver="liblinear"``, which penalises the intercept as the weight of a synthetic feature of value
  ``intercept_scaling`` s: ``1 / (C n s^2)``.
* ``SGDClassifier(loss="log_loss")``, binary, penalty l2 (``mean loss + alpha/2 ||w||^2``: weight decay
  ``alpha`` on the coefficients, 0 on the intercept) or none. Its optimum is stochastic: the iterate it stops
  at is near, not at, the optimum (``relative_stationarity_`` of the influence function says how near).
* ``MLPClassifier``: ``Linear`` + activation layers, the last ``Linear`` (``"out"``) is the head and its input
  the features. scikit-learn's loss is ``mean loss + alpha / (2 n) sum ||W||^2`` over the coefficient matrices:
  weight decay ``alpha / n`` on coefficients, 0 on intercepts (``parameter_weight_decay`` gives it per parameter
  for ``InfluenceFunction(params="all")``). With ``early_stopping=True`` it was trained on a subset that is not
  stored, so the objective given here is only approximately the one it was trained on.
* ``LinearSVC``, binary, ``loss="squared_hinge"`` (its default), ``penalty="l2"``: one output with the link
  ``"squared_hinge"``, ``l_i = max(0, 1 - s_i z_i)^2`` with ``s_i = +-1`` and ``z`` the ``decision_function``
  (see :mod:`precedents.linalg.head`). liblinear minimises ``C sum_i l_i + 1/2 ||w||^2`` with the intercept the
  weight of a synthetic feature of value ``intercept_scaling`` s, so it is penalised: weight decay ``1 / (C n)``
  on the coefficients and ``1 / (C n s^2)`` on the intercept, exactly as for liblinear's LogisticRegression.
  Influence scores are then in squared-margin units (the test loss is the squared hinge), representer scores in
  decision-function units. RPS-l2 is refused (it refits to probabilities, which a max-margin model has none of).

Refused, with the reason: ``LinearSVC`` with ``loss="hinge"`` (no second derivative: its curvature is zero
almost everywhere and a Dirac at the margin) or with several classes (one-vs-rest: one binary problem per class,
not one softmax model), l1 and elastic-net penalties (not twice
differentiable), one-vs-rest models (``OneVsRestClassifier``, multi-class ``SGDClassifier``: not a softmax model,
each class is its own binary problem), ``class_weight`` (a weighted objective; sample weights passed to ``fit``
are not stored by scikit-learn and cannot be detected: the objective here assumes none), pipelines, regressors
and any other estimator.

Inputs are numpy arrays, tensors, or DataFrames whose columns must be the model's ``feature_names_in_`` in the
same order; the number of features is checked against ``n_features_in_``. Labels are the estimator's class
labels (``classes_``), mapped to indices ``0..C-1`` in that order; ``target=`` of representer methods is such an
index.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import PrecedentsError
from ..data import Batches, DataLike, labels_to_indices, target_indices
from .torch import TorchHead

SKLEARN_SUPPORTED = ("LogisticRegression (l2 or no penalty; binary or multinomial), SGDClassifier "
                     "(loss='log_loss', binary, l2 or no penalty), LinearSVC (binary, loss='squared_hinge', "
                     "penalty='l2') and MLPClassifier (single-label)")

#: Name of the converted module's final linear layer (the head).
HEAD_LAYER = "out"


def _refuse(model: Any, why: str) -> PrecedentsError:
    return PrecedentsError(f"Cannot explain this {type(model).__name__}: {why} Supported scikit-learn models: "
                           f"{SKLEARN_SUPPORTED}.")


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    weight = np.asarray(weight, dtype=np.float64)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        if bias is not None:
            layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float64).reshape(-1)))
    return layer


def _l2_penalty_of_logistic(model: Any) -> float:
    """1/C for an l2-penalised LogisticRegression, 0 without penalty; refuses l1 and elastic-net."""
    penalty = getattr(model, "penalty", "deprecated")
    l1_ratio = getattr(model, "l1_ratio", None)
    if penalty in ("l1", "elasticnet") and not (penalty == "elasticnet" and not l1_ratio):
        raise _refuse(model, f"penalty={penalty!r} is not twice differentiable, so it has no Hessian for influence "
                             "or RPS-LJE. Refit with the l2 penalty (l1_ratio=0).")
    if penalty == "deprecated" and l1_ratio:
        raise _refuse(model, f"l1_ratio={l1_ratio} adds an l1 penalty, which is not twice differentiable. Refit "
                             "with l1_ratio=0 (l2 penalty).")
    if penalty is None or penalty == "none" or not np.isfinite(model.C):
        return 0.0
    return 1.0 / float(model.C)


def _check_no_class_weight(model: Any) -> None:
    if getattr(model, "class_weight", None) is not None:
        raise _refuse(model, f"class_weight={model.class_weight!r} weights the training loss per class; "
                             "precedents explains the unweighted objective. Refit without class_weight.")


def _convert_logistic(model: Any) -> tuple[nn.Module, dict[str, Callable[[int], float]], str]:
    _check_no_class_weight(model)
    inv_c = _l2_penalty_of_logistic(model)
    n_classes = len(model.classes_)
    multi_class = getattr(model, "multi_class", "auto")
    if n_classes > 2 and (multi_class == "ovr" or (multi_class == "auto" and model.solver == "liblinear")):
        raise _refuse(model, "it was fitted one-vs-rest (multi_class='ovr' or solver='liblinear'): each class is a "
                             "separate binary problem, not a softmax model. Refit with a multinomial solver "
                             "(e.g. 'lbfgs').")
    module, decay = _linear_head(model, inv_c, liblinear=model.solver == "liblinear")
    link = "sigmoid" if n_classes == 2 else "softmax"
    return module, decay, f"LogisticRegression ({link})"


def _linear_head(model: Any, inv_c: float, *, liblinear: bool) -> tuple[nn.Module, dict[str, Callable[[int], float]]]:
    """The one-layer module of a ``C sum_i l_i + 1/2 ||w||^2`` linear model and its weight decay in mean-loss units:
    ``inv_c / n`` (``inv_c = 1/C``) on the coefficients; on the intercept 0, or for liblinear, which penalises it as
    the weight of a synthetic feature of value ``intercept_scaling`` s, ``inv_c / (n s^2)``."""
    fit_intercept = bool(model.fit_intercept)
    layer = _linear(model.coef_, model.intercept_ if fit_intercept else None)
    decay = {f"{HEAD_LAYER}.weight": lambda n: inv_c / n}
    if fit_intercept:
        scale = float(getattr(model, "intercept_scaling", 1.0))
        intercept = inv_c / scale**2 if liblinear else 0.0
        decay[f"{HEAD_LAYER}.bias"] = lambda n: intercept / n
    return nn.Sequential(OrderedDict([(HEAD_LAYER, layer)])), decay


def _convert_linear_svc(model: Any) -> tuple[nn.Module, dict[str, Callable[[int], float]], str]:
    if model.loss != "squared_hinge":
        raise _refuse(model, f"loss={model.loss!r}: the hinge loss has no second derivative (its curvature is zero "
                             "almost everywhere and infinite at the margin), so it has no Hessian for influence or "
                             "RPS-LJE. Refit with loss='squared_hinge' (the default).")
    if model.penalty != "l2":
        raise _refuse(model, f"penalty={model.penalty!r} is not twice differentiable. Refit with penalty='l2'.")
    _check_no_class_weight(model)
    if len(model.classes_) > 2:
        raise _refuse(model, f"with {len(model.classes_)} classes LinearSVC is one-vs-rest "
                             f"(multi_class={model.multi_class!r}): independent binary problems, not one softmax "
                             "model. Explain a binary LinearSVC per class, or use LogisticRegression.")
    if model.multi_class != "ovr":
        raise _refuse(model, f"multi_class={model.multi_class!r} optimises the Crammer-Singer objective, not the "
                             "squared hinge. Refit with multi_class='ovr' (the default).")
    module, decay = _linear_head(model, 1.0 / float(model.C), liblinear=True)
    return module, decay, "LinearSVC (squared hinge)"


def _convert_sgd(model: Any) -> tuple[nn.Module, dict[str, Callable[[int], float]], str]:
    loss = getattr(model, "loss", None)
    if loss not in ("log_loss", "log"):
        raise _refuse(model, f"loss={loss!r}: only loss='log_loss' (logistic regression) has the smooth, "
                             "probabilistic loss the methods need.")
    _check_no_class_weight(model)
    if len(model.classes_) > 2:
        raise _refuse(model, f"with {len(model.classes_)} classes SGDClassifier is one-vs-rest (one binary problem "
                             "per class), not a softmax model. Use LogisticRegression (multinomial) instead.")
    penalty = model.penalty
    if penalty == "l1" or (penalty == "elasticnet" and model.l1_ratio > 0):
        raise _refuse(model, f"penalty={penalty!r} is not twice differentiable. Refit with penalty='l2'.")
    alpha = 0.0 if penalty is None else float(model.alpha) * (1.0 - float(model.l1_ratio)
                                                              if penalty == "elasticnet" else 1.0)
    layer = _linear(model.coef_, model.intercept_ if model.fit_intercept else None)
    decay = {f"{HEAD_LAYER}.weight": lambda n: alpha}
    if model.fit_intercept:
        decay[f"{HEAD_LAYER}.bias"] = lambda n: 0.0
    return nn.Sequential(OrderedDict([(HEAD_LAYER, layer)])), decay, "SGDClassifier (sigmoid)"


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "logistic": nn.Sigmoid, "identity": nn.Identity}


def _convert_mlp(model: Any) -> tuple[nn.Module, dict[str, Callable[[int], float]], str]:
    if getattr(model, "out_activation_", None) not in ("softmax", "logistic") or (
            model.out_activation_ == "logistic" and model.n_outputs_ != 1):
        raise _refuse(model, "it is a multi-label MLP (one sigmoid per label); only single-label classification "
                             "(softmax, or one sigmoid output for two classes) is supported.")
    if model.activation not in _ACTIVATIONS:
        raise _refuse(model, f"activation {model.activation!r} is unknown to precedents.")
    layers: list[tuple[str, nn.Module]] = []
    n_layers = len(model.coefs_)
    decay: dict[str, Callable[[int], float]] = {}
    alpha = float(model.alpha)
    for i, (w, b) in enumerate(zip(model.coefs_, model.intercepts_, strict=True)):
        name = HEAD_LAYER if i == n_layers - 1 else f"fc{i}"
        layers.append((name, _linear(np.asarray(w).T, b)))
        decay[f"{name}.weight"] = lambda n: alpha / n
        decay[f"{name}.bias"] = lambda n: 0.0
        if i < n_layers - 1:
            layers.append((f"act{i}", _ACTIVATIONS[model.activation]()))
    link = "sigmoid" if model.out_activation_ == "logistic" else "softmax"
    return nn.Sequential(OrderedDict(layers)), decay, f"MLPClassifier ({link})"


def _convert(model: Any) -> tuple[nn.Module, dict[str, Callable[[int], float]], str]:
    from sklearn.base import is_classifier
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import LinearSVC

    name = type(model).__name__
    if type(model).__module__.startswith("sklearn.multiclass"):
        raise _refuse(model, f"{name} combines one binary model per class (or pair): not a softmax model.")
    if type(model).__module__.startswith("sklearn.pipeline") or hasattr(model, "steps"):
        raise _refuse(model, "a Pipeline has no single linear head. Explain its final step on the transformed "
                             "features: pipe[-1] with pipe[:-1].transform(X).")
    if not is_classifier(model):
        raise _refuse(model, "it is not a classifier (precedents explains classifiers' logits).")
    kinds = ((LogisticRegression, "coef_", _convert_logistic), (SGDClassifier, "coef_", _convert_sgd),
             (MLPClassifier, "coefs_", _convert_mlp), (LinearSVC, "coef_", _convert_linear_svc))
    for cls, fitted_attr, convert in kinds:
        if isinstance(model, cls):
            if not hasattr(model, fitted_attr):
                raise PrecedentsError(f"This {name} is not fitted yet: call its fit(X, y) before explaining it.")
            return convert(model)
    raise _refuse(model, "precedents needs a model whose logits are a linear head on features and whose training "
                         "loss is smooth.")


class SklearnHead(TorchHead):
    """Adapter for a fitted scikit-learn classifier, through an equivalent float64 torch module.

    ``model`` is the converted module (so ``params="all"`` differentiates an MLP through torch.func),
    ``estimator`` the scikit-learn object. ``weight_decay(n)`` and ``parameter_weight_decay(n)`` give the
    estimator's regularisation in mean-loss units (see the module docstring for each family). ``link`` is
    ``"squared_hinge"`` for a LinearSVC, else derived from the number of outputs (sigmoid or softmax).
    """

    def __init__(self, estimator: Any, module: nn.Module, decay: dict[str, Callable[[int], float]],
                 description: str, *, batch_size: int = 256, progress: bool = True) -> None:
        super().__init__(module.eval(), HEAD_LAYER, batch_size=batch_size, progress=progress)
        self.estimator = estimator
        self.description = description
        self._decay = decay
        self.classes = np.asarray(estimator.classes_)
        self.n_features = int(estimator.n_features_in_)
        names = getattr(estimator, "feature_names_in_", None)
        self.feature_names = None if names is None else [str(c) for c in names]

    @property
    def link(self) -> str:
        from sklearn.svm import LinearSVC

        return "squared_hinge" if isinstance(self.estimator, LinearSVC) else super().link

    def parameter_weight_decay(self, n_train: int) -> dict[str, float]:
        """The l2 strength of each converted parameter in mean-loss units, ``{name: wd}`` (0: not penalised)."""
        return {name: float(f(n_train)) for name, f in self._decay.items()}

    def weight_decay(self, n_train: int) -> torch.Tensor:
        """The head's l2 strength (C, d) in mean-loss units: coefficients' columns, then the intercept column."""
        decay = self.parameter_weight_decay(n_train)
        wd = torch.full((self.layer.out_features, self.layer.in_features), decay[f"{HEAD_LAYER}.weight"],
                        dtype=torch.float64)
        if self.has_bias:
            bias = torch.full((self.layer.out_features, 1), decay[f"{HEAD_LAYER}.bias"], dtype=torch.float64)
            wd = torch.cat([wd, bias], dim=1)
        return wd

    # -- data ------------------------------------------------------------------------------------------
    def _inputs(self, X: Any, name: str) -> torch.Tensor:
        if isinstance(X, (torch.utils.data.Dataset, torch.utils.data.DataLoader)) and not isinstance(X, torch.Tensor):
            raise PrecedentsError(f"{name}: a scikit-learn model takes an array or DataFrame of features, not a "
                                  f"{type(X).__name__}.")
        if hasattr(X, "columns"):
            columns = [str(c) for c in X.columns]
            if self.feature_names is not None and columns != self.feature_names:
                missing = [c for c in self.feature_names if c not in columns]
                extra = [c for c in columns if c not in self.feature_names]
                what = (f"missing {missing[:5]}" if missing else "") + ("; " if missing and extra else "") + (
                    f"unexpected {extra[:5]}" if extra else "")
                raise PrecedentsError(
                    f"{name}'s columns do not match the columns the {type(self.estimator).__name__} was fitted on "
                    f"({what or 'same names in another order'}). Pass X[model.feature_names_in_].")
            try:
                X = X.to_numpy(dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise PrecedentsError(f"{name} has non-numeric columns ({err}); encode them as the model's "
                                      "training data was (e.g. precedents.datasets.one_hot).") from err
        elif hasattr(X, "toarray"):                       # scipy sparse
            X = X.toarray()
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        try:
            array = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise PrecedentsError(f"{name} could not be read as a numeric array: {err}") from err
        if array.ndim != 2 or array.shape[1] != self.n_features:
            hint = (f" For one example, add the batch axis: {name}.reshape(1, -1)."
                    if array.ndim == 1 and len(array) == self.n_features else "")
            raise PrecedentsError(f"{name} has shape {array.shape}, but the {type(self.estimator).__name__} expects "
                                  f"(n, {self.n_features}): one row per example, {self.n_features} features.{hint}")
        return torch.from_numpy(np.ascontiguousarray(array))

    def target_indices(self, target: Any, n: int) -> torch.Tensor:
        """The explained class per test point as indices into ``classes_`` (n,): a class label of the estimator
        (e.g. ``"setosa"``) is mapped through ``classes_``; a number is an index 0..C-1, as for every model."""
        return target_indices(target, n, len(self.classes), self.classes)

    def batches(self, data: DataLike, y: object = None, *, name: str = "X", require_labels: bool = False) -> Batches:
        """Features as float64 (columns checked against the estimator), labels mapped to class indices through the
        estimator's ``classes_`` (so string labels work). Only a tuple is read as ``(X, y)``; a list is rows."""
        if isinstance(data, tuple) and y is None:
            if len(data) != 2:
                raise PrecedentsError(f"{name} as a tuple must be (X, y); got a tuple of length {len(data)}. Pass "
                                      "a list or an array for rows of inputs.")
            data, y = data
        X = self._inputs(data, name)
        labels = None if y is None else labels_to_indices(y, self.classes, len(X))
        if require_labels and labels is None:
            raise PrecedentsError(f"{name} needs labels: pass (X, y) as a tuple, or fit(X, y).")
        return Batches((X, labels), self.batch_size, len(X), has_labels=labels is not None, name=name,
                       dtype=torch.float64, finite=True, require_labels=require_labels, tensors=True)


def sklearn_head(model: Any, layer: str | None = None, *, batch_size: int = 256, progress: bool = True) -> SklearnHead:
    """The head view of a fitted scikit-learn classifier (see the module docstring for what is supported)."""
    if layer not in (None, HEAD_LAYER):
        raise PrecedentsError(f"layer={layer!r}: a scikit-learn model is explained at its last layer; leave layer "
                              "unset.")
    module, decay, description = _convert(model)
    return SklearnHead(model, module, decay, description, batch_size=batch_size, progress=progress)


__all__ = ["HEAD_LAYER", "SKLEARN_SUPPORTED", "SklearnHead", "sklearn_head"]
