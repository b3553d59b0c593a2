r"""The one contract every data-attribution method follows, and the head-based estimators' shared machinery.

Every method is an :class:`Explainer` (scikit-learn's estimator contract):

* ``__init__(model, **params)`` stores its arguments and nothing else; ``get_params()`` / ``set_params(**p)``;
  :func:`clone` gives an unfitted copy with the same parameters;
* ``fit(train, y=None) -> self`` computes the training-side state; learned state ends in ``_``;
* ``attribute(X, y=None, *, target=None) -> Attribution``: one score per (test point, training example).
  Logit-based methods (representer points) explain ``target`` (a class per test point; default: the predicted
  one) and ignore ``y``. Loss-based methods (influence, TracIn, gradient similarity) explain the test loss of a
  label: ``target`` if given, else ``y``; without either they raise a :class:`~precedents.PrecedentsError`;
* ``self_influence() -> (n_train,)``: each training example scored against itself (dataset debugging: check
  the largest first);
* ``diagnostics() -> dict``: everything the method knows about its own faithfulness and cost (JSON values);
* ``save(directory)`` / ``Class.load(directory, model)``: an index that reproduces ``attribute()`` bit for bit
  without the training set, refused for another model or (when given) other training data;
* ``measurement``: what the scores measure (:class:`~precedents.attribution.Measurement`: quantity, units,
  sign), shared by the :class:`~precedents.Attribution` it returns.

Sign convention, everywhere: a positive score means the training example *supports* the model's output for the
test point (a proponent); for loss-based methods, the predicted increase of the test loss if it were removed.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .._validation import PrecedentsError, check_choice, check_finite, check_labels, check_scalar
from ..adapters import head_adapter, model_family
from ..adapters.torch import ForwardFn, probe_logits
from ..attribution import LOGIT, Attribution, BlockScorer, Measurement
from ..data import DataLike, model_fingerprint
from ..index import load_index, save_index
from ..linalg import link_probabilities
from ..linalg.head import ONE_OUTPUT_LINKS, n_classes_for_outputs


class NotFittedError(PrecedentsError, AttributeError):
    """An explainer was used before ``fit`` (or ``load``)."""


#: Parameters that hold code or live objects: never written to an index; ``load`` asks for them again.
RUNTIME_PARAMS = ("forward_fn", "loss_fn")


def _json_value(value: Any) -> tuple[bool, Any]:
    """``(True, json_value)`` when ``value`` can be stored in a manifest as JSON, else ``(False, None)``."""
    if value is None or isinstance(value, (bool, int, str)):
        return True, value
    if isinstance(value, float):
        return (True, value) if math.isfinite(value) else (False, None)
    if isinstance(value, (list, tuple)):
        items = [_json_value(v) for v in value]
        return (all(ok for ok, _ in items), [v for _, v in items])
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: _json_value(v) for k, v in value.items()}
        return (all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()})
    return False, None


class Explainer:
    """Base class of every data-attribution method (see the module docstring for the contract).

    Subclasses implement ``_fit(train, y)`` (setting ``n_train_`` and ``labels_``), ``_attribute(X, labels,
    target)``, ``_self_influence()``, ``_diagnostics()``, ``_state()`` / ``_set_state(arrays, info)`` (the
    index), and ``_check_params()`` (numeric options, called before anything runs).
    """

    #: registry key of the method (a property where the parameters decide it, e.g. the influence solver)
    key: ClassVar[str] = ""
    #: what the scores measure
    measurement: ClassVar[Measurement] = LOGIT
    #: True for methods that explain a test *loss* (they need the label whose loss is explained)
    loss_based: ClassVar[bool] = False

    # -- the scikit-learn contract ---------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p not in ("self", "model")]

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        """The constructor's arguments (except the model), as passed."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Explainer:
        """Change constructor arguments; the explainer must be fitted again for them to take effect."""
        names = self._param_names()
        unknown = [k for k in params if k not in names]
        if unknown:
            raise PrecedentsError(f"{type(self).__name__} has no parameter {unknown[0]!r}; its parameters are "
                                  f"{', '.join(names)}.")
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        def shown(v: Any) -> str:
            if callable(v) and not isinstance(v, type):
                return getattr(v, "__name__", type(v).__name__)
            text = repr(v)
            return text if len(text) <= 60 else text[:57] + "..."
        args = ", ".join(f"{k}={shown(v)}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "n_train_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet: call fit(train) first (or load a "
                                 "saved index with load(directory, model)).")

    def _check_params(self) -> None:
        """Validate numeric and choice parameters before any computation (subclasses extend)."""

    # -- the public API --------------------------------------------------------------------------------
    def fit(self, train: DataLike, y: Any = None) -> Explainer:
        """Compute the training-side state from ``train``: ``(X, y)``, ``X`` with ``y`` given separately, a torch
        Dataset of ``(x, y)`` or a DataLoader of ``(x, y)`` batches (not shuffled: scores are returned in the
        order the training examples are read). Returns self."""
        self._check_params()
        start = time.perf_counter()
        self._fit(train, y)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def attribute(self, X: DataLike, y: Any = None, *, target: Any = None) -> Attribution:
        """Scores of every training example for each test point of ``X`` (an :class:`~precedents.Attribution`).

        ``target``: the explained class per test point (one for all, or one each). Logit-based methods explain
        the target class's logit (default: the predicted class); loss-based methods explain the loss of label
        ``target`` if given, else of ``y`` (the true labels, or the predictions to explain those).
        """
        self._check_fitted()
        if self.loss_based:
            labels = target if target is not None else y
            if labels is None and not isinstance(X, tuple):
                raise PrecedentsError(
                    f"{type(self).__name__} explains a test loss: attribute(X, y) needs the labels whose loss is "
                    "explained (the true labels, or the model's predictions to explain those), or target=.")
            return self._attribute(X, _broadcast_labels(X, labels), None)
        return self._attribute(X, None, target)

    def self_influence(self) -> torch.Tensor:
        """Each training example scored against itself, (n_train,) float64, in the method's units. Larger =
        the example is more unusual for the model (hard, atypical or mislabelled): review those first."""
        self._check_fitted()
        return self._self_influence()

    def diagnostics(self) -> dict[str, Any]:
        """What the method knows about its own faithfulness and cost, as JSON-ready values: the method, the
        measurement, the number of training examples, the seconds ``fit`` took, and the method's own facts
        (refit fidelity, condition number, stationarity, solver residuals, damping chosen and why)."""
        self._check_fitted()
        out: dict[str, Any] = {"method": self.key, "measurement": self.measurement.to_dict(),
                               "n_train": int(self.n_train_),
                               "fit_seconds": float(getattr(self, "fit_seconds_", float("nan")))}
        out.update(self._diagnostics())
        return out

    # -- the index -------------------------------------------------------------------------------------
    def _stored_params(self) -> tuple[dict[str, Any], list[str]]:
        """The parameters written to the manifest, and the names of those ``load`` must be given again."""
        stored, runtime = {}, []
        for name, value in self.get_params().items():
            if name in RUNTIME_PARAMS or name in self._state_params():
                if value is not None and name in RUNTIME_PARAMS:
                    runtime.append(name)
                continue
            ok, as_json = _json_value(value.tolist() if isinstance(value, torch.Tensor) else value)
            if not ok:
                raise PrecedentsError(f"{type(self).__name__}.save: parameter {name}={value!r} cannot be stored "
                                      "in the index; pass a number, string or list.")
            stored[name] = as_json
        return stored, runtime

    @classmethod
    def _state_params(cls) -> tuple[str, ...]:
        """Parameters kept as arrays by ``_state`` (e.g. TracIn's checkpoints) rather than in the manifest."""
        return ()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the fitted state to ``directory`` as an index (see :mod:`precedents.index`).

        Parameters holding code (``forward_fn``, ``loss_fn``) are not stored: ``load`` must be given them again.
        """
        self._check_fitted()
        params, runtime = self._stored_params()
        arrays, info = self._state()
        meta = {"class": type(self).__name__, "runtime_params": runtime,
                "model_fingerprint": self.model_fingerprint_, "data_fingerprint": self.data_fingerprint_,
                "n_train": int(self.n_train_), "info": info, "diagnostics": self.diagnostics(),
                "measurement": self.measurement.to_dict()}
        return save_index(directory, method=self.key, params=params, arrays=arrays, meta=meta)

    @classmethod
    def load(cls, directory: str | os.PathLike, model: Any, train: DataLike | None = None,
             **runtime: Any) -> Explainer:
        """Rebuild a fitted explainer from an index, without the training set.

        Refused when the index holds another method, was built for another model (a fingerprint of every
        parameter), or, when ``train`` is given, on other training data. ``runtime``: the parameters that hold
        code (``forward_fn``, ``loss_fn``) when the index was built with them.
        """
        manifest, arrays = load_index(directory)
        if manifest.get("class") != cls.__name__ and cls is not Explainer:
            raise PrecedentsError(f"{directory} holds a {manifest.get('method')} index "
                                  f"({manifest.get('class')}), not a {cls.__name__}: load it with "
                                  "precedents.load(directory, model) or the matching class.")
        unknown = [k for k in runtime if k not in RUNTIME_PARAMS]
        if unknown:
            raise PrecedentsError(f"load() takes the parameters holding code ({', '.join(RUNTIME_PARAMS)}); "
                                  f"{unknown[0]!r} is stored in the index.")
        missing = [k for k in manifest.get("runtime_params", []) if k not in runtime]
        if missing:
            raise PrecedentsError(f"The index in {directory} was built with {missing[0]}=...; pass the same "
                                  f"{missing[0]} to load() (code is not stored in an index).")
        params = dict(manifest["params"])
        accepted = cls._param_names()
        kept_as_arrays = {k: None for k in cls._state_params() if k in accepted}   # restored by _set_state
        est = cls(model, **{k: v for k, v in params.items() if k in accepted},
                  **{k: v for k, v in runtime.items() if k in accepted}, **kept_as_arrays)
        fingerprint = est._model_fingerprint()
        if fingerprint != manifest["model_fingerprint"]:
            raise PrecedentsError(
                f"The index in {directory} was built for another model (fingerprint "
                f"{manifest['model_fingerprint'][:12]}, this model's is {fingerprint[:12]}): its weights differ. "
                "Rebuild the index with fit() for this model.")
        if train is not None and est._data_fingerprint(train) != manifest["data_fingerprint"]:
            raise PrecedentsError(f"The index in {directory} was built on other training data than the data "
                                  "passed: rebuild it with fit() on this data.")
        est.model_fingerprint_ = manifest["model_fingerprint"]
        est.data_fingerprint_ = manifest["data_fingerprint"]
        est._set_state(arrays, manifest.get("info", {}))
        est.n_train_ = int(manifest.get("n_train", est.n_train_))
        est.fit_seconds_ = float(manifest.get("diagnostics", {}).get("fit_seconds", float("nan")))
        return est

    def _model_fingerprint(self) -> str:
        """SHA-256 of the model's weights (every parameter and buffer, or the adapter's own for other families)."""
        if model_family(self.model) == "torch":
            return model_fingerprint(self.model)
        return head_adapter(self.model, progress=False).fingerprint()

    def _data_fingerprint(self, train: DataLike) -> str:
        head = head_adapter(self.model, getattr(self, "layer", None), forward_fn=getattr(self, "forward_fn", None),
                            progress=False)
        return head.data_fingerprint(head.batches(train, name="train", require_labels=True))

    # -- for subclasses --------------------------------------------------------------------------------
    def _fit(self, train: DataLike, y: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _attribute(self, X: DataLike, labels: Any, target: Any) -> Attribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def _self_influence(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _diagnostics(self) -> dict[str, Any]:
        return {}

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_state(self, arrays: dict[str, torch.Tensor], info: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError


def _broadcast_labels(X: DataLike, labels: Any) -> Any:
    """One label for all test points (an int or a 0-d array) becomes one per test point."""
    if labels is None or getattr(labels, "ndim", 1 if isinstance(labels, (list, tuple)) else 0) != 0:
        return labels
    data = X.dataset if hasattr(X, "dataset") else (X[0] if isinstance(X, tuple) else X)
    try:
        n = len(data)
    except TypeError:
        return labels
    value = labels.item() if hasattr(labels, "item") else labels
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [value] * n
    return torch.full((n,), value)


def check_common(explainer: Explainer) -> None:
    """Validate the parameters most explainers share: ``batch_size``, ``progress``, ``layer``."""
    params = explainer.get_params()
    if "batch_size" in params:
        check_scalar("batch_size", params["batch_size"], kind=int, low=1)
    if "progress" in params:
        check_choice("progress", params["progress"], (True, False))
    layer = params.get("layer")
    if layer is not None and not isinstance(layer, str):
        raise PrecedentsError(f"layer must be the dotted name of the final nn.Linear (a string) or None, got "
                              f"{layer!r}.")
    forward_fn = params.get("forward_fn")
    if forward_fn is not None and not callable(forward_fn):
        raise PrecedentsError(f"forward_fn must be a function forward_fn(model, x) -> logits, got {forward_fn!r}.")


def check_params_spec(params: Any) -> None:
    """``params`` of the gradient methods: ``"head"``, ``"all"`` or a non-empty list of parameter names (the
    names themselves are checked against the model when it is read)."""
    if isinstance(params, str):
        if params not in ("head", "all"):
            raise PrecedentsError(f"params must be 'head', 'all' or a list of parameter names, got {params!r}.")
    elif not isinstance(params, (list, tuple)) or not params or not all(isinstance(p, str) for p in params):
        raise PrecedentsError(f"params must be 'head', 'all' or a non-empty list of parameter names, got "
                              f"{params!r}.")


def clone(explainer: Explainer) -> Explainer:
    """An unfitted explainer with the same model and parameters (parameters are deep-copied, the model is not)."""
    if not isinstance(explainer, Explainer):
        raise PrecedentsError(f"clone() takes a precedents explainer, got {type(explainer).__name__}.")
    params = {k: (v if callable(v) else copy.deepcopy(v)) for k, v in explainer.get_params().items()}
    return type(explainer)(explainer.model, **params)


class HeadExplainer(Explainer):
    """Base of the methods that explain a model through its final linear layer (representer points).

    Subclasses implement ``_fit_head()``, ``_test_side(features, column, sign)``, ``explained_head()`` and list
    the arrays they keep in ``_state_arrays``.
    """

    _state_arrays: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, layer: str | None = None, *, batch_size: int = 256,
                 progress: bool = True, forward_fn: ForwardFn | None = None) -> None:
        self.model = model
        self.layer = layer
        self.batch_size = batch_size
        self.progress = progress
        self.forward_fn = forward_fn

    def _adapter(self) -> Any:
        return head_adapter(self.model, self.layer, forward_fn=self.forward_fn, batch_size=self.batch_size,
                            progress=self.progress)

    def _fit(self, train: DataLike, y: Any) -> None:
        head = self._adapter()
        batches = head.batches(train, y, name="train", require_labels=True)
        run = head.run(batches, what="training")
        self.head_ = head
        self.layer_name_ = head.layer_name
        self.link_ = head.link
        self.n_classes_ = head.n_classes
        self.features_ = run.features
        self.labels_ = check_labels(run.labels, head.n_classes, len(run.features))
        self.model_logits_ = run.logits
        self.theta_ = head.theta()
        self.model_fingerprint_ = head.fingerprint()
        self.data_fingerprint_ = run.fingerprint
        self.n_train_ = len(run.features)
        self._fit_head()

    def _fit_head(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _columns(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head column and sign per target class: a one-output head (sigmoid, squared hinge) explains +logit for 1
        and -logit for 0."""
        if self.link_ in ONE_OUTPUT_LINKS:
            return torch.zeros_like(target), target.to(torch.float64) * 2 - 1
        return target, torch.ones(len(target), dtype=torch.float64)

    def _attribute(self, X: DataLike, labels: Any, target: Any) -> Attribution:
        """Scores in logit units: each training example's term of the explained head's logit for ``target``."""
        self.head_.progress = self.progress           # set_params(progress=...) after fit or load
        run = self.head_.run(self.head_.batches(X, name="X"), what="test")
        target = self._targets(target, run.logits)
        column, sign = self._columns(target)
        scorer, explained = self._test_side(run.features, column, sign)
        model_output = sign * run.logits.gather(1, column[:, None])[:, 0]
        return Attribution(method=self.key, target=target, explained=explained, model_output=model_output,
                           n_train=self.n_train_, score_block=scorer, train_labels=self.labels_,
                           measurement=self.measurement)

    def _targets(self, target: Any, logits: torch.Tensor) -> torch.Tensor:
        """The explained class per test point: the predicted one (``target=None``), or the given class (one for
        all test points, or one each; a class *name* is read through a scikit-learn model's ``classes_``)."""
        n = len(logits)
        if target is None:
            return self._predict_from_logits(logits)
        return check_labels(self.head_.target_indices(target, n), self.n_classes_, n, name="target")

    def _predict_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self.link_ in ONE_OUTPUT_LINKS:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=1)

    def _test_side(self, features: torch.Tensor, column: torch.Tensor,
                   sign: torch.Tensor) -> tuple[BlockScorer, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def explained_head(self) -> torch.Tensor:  # pragma: no cover - abstract
        """The (C, d) head whose logits the decomposition reproduces exactly."""
        raise NotImplementedError

    def fidelity(self, X: DataLike | None = None) -> dict[str, float]:
        """How close the explained head is to the given model, on the training set or on ``X``.

        Returns prediction agreement (fraction), the largest absolute difference of class probabilities, and
        the largest absolute difference of logits (centred across classes for softmax heads, where a shift
        shared by all classes changes nothing). A squared-hinge (max-margin) head has no probabilities: its
        ``max_probability_difference`` is NaN.
        """
        self._check_fitted()
        if X is None:
            features, logits = self.features_, self.model_logits_
        else:
            run = self.head_.run(self.head_.batches(X, name="X"), what="test")
            features, logits = run.features, run.logits
        explained = features @ self.explained_head().T
        if self.link_ == "softmax":
            explained = explained - explained.mean(1, keepdim=True)
            logits = logits - logits.mean(1, keepdim=True)
        agree = (self._predict_from_logits(explained) == self._predict_from_logits(logits)).double().mean()
        if self.link_ == "squared_hinge":
            probs_gap = float("nan")
        else:
            probs_gap = float((link_probabilities(explained, self.link_) - link_probabilities(logits, self.link_)
                               ).abs().max())
        return {"prediction_agreement": float(agree), "max_probability_difference": probs_gap,
                "max_logit_difference": float((explained - logits).abs().max())}

    def _diagnostics(self) -> dict[str, Any]:
        return {"layer": self.layer_name_, "link": self.link_, "n_classes": int(self.n_classes_),
                "fidelity_train": self.fidelity()}

    # -- index -----------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        arrays = {"features": self.features_, "labels": self.labels_, "model_logits": self.model_logits_,
                  "theta": self.theta_}
        arrays.update({name: getattr(self, name + "_") for name in self._state_arrays
                       if getattr(self, name + "_", None) is not None})
        info = {"layer_name": self.layer_name_, "link": self.link_, "n_classes": self.n_classes_}
        info.update(self._info())
        return arrays, info

    def _info(self) -> dict[str, Any]:
        return {}

    def _set_state(self, arrays: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self.head_ = self._adapter()
        self.layer_name_ = info["layer_name"]
        self.link_ = info["link"]
        self.n_classes_ = info["n_classes"]
        self.features_ = arrays["features"]
        self.labels_ = arrays["labels"]
        self.model_logits_ = arrays["model_logits"]
        self.theta_ = arrays["theta"]
        self.n_train_ = len(self.features_)
        for name in self._state_arrays:
            setattr(self, name + "_", arrays.get(name))
        self._restore(info)

    def _restore(self, info: dict[str, Any]) -> None:
        """Recreate derived state after loading (e.g. the Hessian factorisation)."""


def collect_labelled(batches: Any, model: nn.Module, forward_fn: ForwardFn | None, what: str,
                     labels_hint: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the batches into (X, labels), checking labels against the model's number of classes."""
    xs, ys = [], []
    for x, y in batches:
        if y is None:
            raise PrecedentsError(f"The {what} examples have no labels. {labels_hint}")
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y))
    X = torch.cat(xs) if xs else None
    if X is None or len(X) == 0:
        raise PrecedentsError(f"The {what} set is empty: pass at least one example.")
    if X.is_floating_point():
        check_finite(f"Inputs of the {what} examples", X)
    out = probe_logits(model, X[:8], forward_fn, what)  # shapes and dtypes checked before any gradient is taken
    n_classes = n_classes_for_outputs(1 if out.ndim < 2 else out.shape[-1])
    return X, check_labels(torch.cat(ys), n_classes, len(X))
