"""What every head-based estimator shares: the scikit-learn contract, fitting features, attributing, I/O."""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._validation import PrecedentsError, check_finite, check_labels
from ..adapters import head_adapter
from ..adapters.torch import ForwardFn
from ..attribution import Attribution, BlockScorer
from ..data import Batches, DataLike
from ..index import load_index, save_index
from ..linalg import link_probabilities
from ..linalg.head import ONE_OUTPUT_LINKS

log = logging.getLogger(__name__)


class Estimator:
    """The scikit-learn contract: ``__init__`` stores parameters, ``fit`` returns self, learned state ends in _."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p not in ("self", "model")]

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if k != "forward_fn")
        return f"{type(self).__name__}({args})"

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_train_"):
            raise PrecedentsError(f"This {type(self).__name__} is not fitted yet: call fit(train) first.")


class HeadExplainer(Estimator):
    """Base of estimators that explain a model through its final linear layer.

    Subclasses implement ``_fit_head()``, ``_test_side(features, column, sign)`` and the arrays they keep.
    Learned state ends in ``_``; ``__init__`` only stores parameters.
    """

    method_name = "head"
    _state_arrays: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, layer: str | None = None, *, batch_size: int = 256,
                 progress: bool = True, forward_fn: ForwardFn | None = None) -> None:
        self.model = model
        self.layer = layer
        self.batch_size = batch_size
        self.progress = progress
        self.forward_fn = forward_fn

    # -- fitting ---------------------------------------------------------------------------------------
    def _adapter(self) -> Any:
        return head_adapter(self.model, self.layer, forward_fn=self.forward_fn, batch_size=self.batch_size,
                            progress=self.progress)

    def fit(self, train: DataLike, y: Any = None) -> HeadExplainer:
        """Compute training features and the method's training-side state.

        ``train``: ``(X, y)``, or ``X`` with ``y`` given separately, a Dataset of ``(x, y)`` or a DataLoader.
        """
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
        return self

    def _fit_head(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- attribution -----------------------------------------------------------------------------------
    def _columns(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head column and sign per target class: a one-output head (sigmoid, squared hinge) explains +logit for 1
        and -logit for 0."""
        if self.link_ in ONE_OUTPUT_LINKS:
            return torch.zeros_like(target), target.to(torch.float64) * 2 - 1
        return target, torch.ones(len(target), dtype=torch.float64)

    def attribute(self, X: DataLike, target: Any = None) -> Attribution:
        """Scores of every training example for each test point of ``X``.

        ``target``: None explains each point's predicted class; otherwise a class index per test point (or
        one for all). Returns an :class:`~precedents.Attribution` whose ``scores`` are in logit units.
        """
        self._check_fitted()
        run = self.head_.run(self.head_.batches(X, name="X"), what="test")
        target = self._targets(target, run.logits)
        column, sign = self._columns(target)
        scorer, explained = self._test_side(run.features, column, sign)
        model_output = sign * run.logits.gather(1, column[:, None])[:, 0]
        return Attribution(self.method_name, target, explained, model_output, len(self.features_), scorer,
                           train_labels=self.labels_)

    def _targets(self, target: Any, logits: torch.Tensor) -> torch.Tensor:
        """The explained class per test point: the predicted one (``target=None``), or the given class index
        (one for all test points, or one each), checked against the number of classes."""
        n = len(logits)
        if target is None:
            return self._predict_from_logits(logits)
        target = torch.as_tensor(target)
        if target.ndim == 0:
            target = target.expand(n)
        return check_labels(target, self.n_classes_, n, name="target")

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

    # -- index I/O -------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the training-side state to ``directory`` (see :mod:`precedents.index`)."""
        self._check_fitted()
        params = {k: v for k, v in self.get_params().items() if k not in ("forward_fn",)}
        arrays = {"features": self.features_, "labels": self.labels_, "model_logits": self.model_logits_,
                  "theta": self.theta_}
        arrays.update({name: getattr(self, name + "_") for name in self._state_arrays
                       if getattr(self, name + "_", None) is not None})
        meta = {"model_fingerprint": self.model_fingerprint_, "data_fingerprint": self.data_fingerprint_,
                "layer_name": self.layer_name_, "link": self.link_, "n_classes": self.n_classes_,
                "info": self._info()}
        return save_index(directory, method=self.method_name, params=params, arrays=arrays, meta=meta)

    def _info(self) -> dict[str, Any]:
        return {}

    @classmethod
    def load(cls, directory: str | os.PathLike, model: nn.Module, train: DataLike | None = None, *,
             forward_fn: ForwardFn | None = None) -> HeadExplainer:
        """Rebuild a fitted estimator from an index without re-running the model over the training set.

        The index is refused if it was built for another method, another model (fingerprint of every
        parameter) or, when ``train`` is given, other training data.
        """
        manifest, arrays = load_index(directory)
        if manifest["method"] != cls.method_name:
            raise PrecedentsError(f"{directory} holds a {manifest['method']} index, not {cls.method_name}: "
                                  f"load it with the matching class.")
        params = dict(manifest["params"])
        est = cls(model, **params, forward_fn=forward_fn)
        head = est._adapter()
        fingerprint = head.fingerprint()
        if fingerprint != manifest["model_fingerprint"]:
            raise PrecedentsError(
                f"The index in {directory} was built for another model (fingerprint "
                f"{manifest['model_fingerprint'][:12]}, this model's is {fingerprint[:12]}): its weights differ. "
                "Rebuild the index with fit() for this model.")
        if train is not None:
            run_fp = head.data_fingerprint(head.batches(train, name="train", require_labels=True))
            if run_fp != manifest["data_fingerprint"]:
                raise PrecedentsError(f"The index in {directory} was built on other training data than the "
                                      "data passed: rebuild it with fit() on this data.")
        est.head_ = head
        est.layer_name_ = manifest["layer_name"]
        est.link_ = manifest["link"]
        est.n_classes_ = manifest["n_classes"]
        est.features_ = arrays["features"]
        est.labels_ = arrays["labels"]
        est.model_logits_ = arrays["model_logits"]
        est.theta_ = arrays["theta"]
        est.model_fingerprint_ = manifest["model_fingerprint"]
        est.data_fingerprint_ = manifest["data_fingerprint"]
        est.n_train_ = len(est.features_)
        for name in cls._state_arrays:
            setattr(est, name + "_", arrays.get(name))
        est._restore(manifest.get("info", {}))
        return est

    def _restore(self, info: dict[str, Any]) -> None:
        """Recreate derived state after loading (e.g. the Hessian factorisation)."""


def collect_labelled(batches: Batches, model: nn.Module, forward_fn: ForwardFn | None, what: str,
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
    first = X[:1]
    for p in model.parameters():                         # run the probe on the model's device
        first = first.to(p.device)
        break
    with torch.no_grad():
        out = model(first) if forward_fn is None else forward_fn(model, first)
    if not isinstance(out, torch.Tensor):
        raise PrecedentsError(f"The model returned a {type(out).__name__}, not a logits tensor. Pass "
                              "forward_fn=lambda model, x: model(x)[0] (or whatever selects the logits).")
    n_classes = 2 if out.ndim < 2 or out.shape[-1] == 1 else out.shape[-1]
    return X, check_labels(torch.cat(ys), n_classes, len(X))
