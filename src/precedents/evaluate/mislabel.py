r"""Dataset debugging: find flipped training labels by each method's *self-score*, then fix and retrain.

The experiment of Representer Point Selection (Yeh et al., NeurIPS 2018, "Dataset Debugging") and Koh & Liang
(ICML 2017, "targeted training-set debugging"): flip a known fraction of training labels, rank the training set
by a per-example score (largest first), let a person check the examples in that order, and measure

* the **detection curve**: fraction of the flipped labels found after checking a fraction of the training set
  (``found(k / n) = #flipped among the first k / #flipped``), with its area (``auc``; random ranking gives
  0.5, a perfect one ``1 - p/2`` at flip rate p) and the ROC AUC of the score as a detector of flipped labels
  (``roc_auc``; random 0.5, perfect 1; the area in the dattri benchmark; ``auc = p/2 + (1 - p) roc_auc``);
* the **test accuracy after fixing** the labels of the checked examples and retraining.

Self-scores (larger = check first, every score a function of the *given* labels): every registered method
(``precedents.available_methods()``), as ``precedents.explainer(key, model, **params).fit(X, y).self_influence()``
with the settings of :class:`SelfScoreOptions` (:func:`method_params`), and the baselines of :data:`SELF_SCORES`:

* ``rps-l2``: ``|alpha^y_{i, y_i}|`` of :meth:`RepresenterL2.self_influence`: the alpha of a head trained with
  the l2 objective on the given labels, ``(softmax(f_i W_y) - y_i) / (-2 lambda n)`` (logit per unit feature
  similarity). The post-hoc ``alpha_`` (fitted to the model's own outputs) never sees the labels and could not
  find a flipped one.
* ``rps-lje``: ``|(alpha_i f_i)_{y_i}|`` of :meth:`RepresenterLJE.self_influence` (logit units).
* ``influence-<solver>`` (exact, cg, lissa, arnoldi): ``(1/n) g_i^T H^-1 g_i`` of
  :meth:`InfluenceFunction.self_influence`, the predicted rise of example i's own loss if it were removed (nats).
* ``tracin``: ``sum_k lr_k |g_i(theta_k)|^2`` of :meth:`TracIn.self_influence` over the given checkpoints (with
  none given: the final weights only, i.e. grad-dot's diagonal); units: loss-gradient dot product.
* ``grad-dot`` / ``grad-cos`` and any method registered later: its own ``self_influence``.
* ``loss``: the training loss ``l(f(x_i), y_i)`` under the given model (nats): the baseline.
* ``random``: uniform random scores (seeded): the floor.

All methods are called through their public API, as a user would.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import PrecedentsError, parse_methods
from ..linalg.head import predicted_classes
from ..methods.registry import available_methods, explainer, method_info
from .metrics import rankdata
from .retrain import HeadRetrainer, Retrainer

__all__ = [
    "DEFAULT_METHODS",
    "SELF_SCORES",
    "FixResult",
    "HeadRetrainer",
    "MislabelResult",
    "SelfScoreOptions",
    "apply_corrections",
    "detection_curve",
    "detection_summary",
    "fix_and_retrain",
    "flip_labels",
    "method_params",
    "mislabel",
    "oracle_corrections",
    "read_corrections",
    "self_score_methods",
    "self_scores",
    "write_corrections",
]

#: The methods :func:`mislabel` runs when none are named (those that need nothing beyond the model and data).
DEFAULT_METHODS = ("rps-l2", "rps-lje", "influence-cg", "tracin", "loss", "random")


# ---------------------------------------------------------------------------------------------------------
# Flipping labels
# ---------------------------------------------------------------------------------------------------------

def flip_labels(y: Any, fraction: float, n_classes: int, seed: int = 0) -> tuple[Any, Any]:
    """Flip exactly ``round(fraction * n)`` labels, chosen uniformly without replacement (seeded).

    Each chosen label ``c`` becomes ``(c + k) mod n_classes`` with ``k`` uniform in ``1..n_classes-1``: a
    uniformly random *other* class. Returns ``(noisy_y, flipped)`` (flipped: boolean mask, n), as torch
    tensors when ``y`` is a tensor, numpy arrays otherwise; ``y`` itself is not modified. The same seed gives
    the same flips.
    """
    is_tensor = isinstance(y, torch.Tensor)
    labels = y.detach().cpu().numpy() if is_tensor else np.asarray(y)
    if labels.ndim != 1:
        raise PrecedentsError(f"y must be a 1-D vector of labels, got shape {labels.shape}.")
    labels = labels.astype(np.int64)
    if n_classes < 2:
        raise PrecedentsError(f"n_classes must be >= 2 to flip a label, got {n_classes}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise PrecedentsError(f"y holds labels {labels.min()}..{labels.max()}, outside [0, {n_classes - 1}].")
    if not 0.0 <= fraction <= 1.0:
        raise PrecedentsError(f"fraction must lie in [0, 1], got {fraction}.")
    n = len(labels)
    k = int(round(fraction * n))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=k, replace=False)
    noisy = labels.copy()
    noisy[chosen] = (labels[chosen] + rng.integers(1, n_classes, size=k)) % n_classes
    flipped = np.zeros(n, dtype=bool)
    flipped[chosen] = True
    if is_tensor:
        return torch.from_numpy(noisy), torch.from_numpy(flipped)
    return noisy, flipped


# ---------------------------------------------------------------------------------------------------------
# Detection curves
# ---------------------------------------------------------------------------------------------------------

def _flat(x: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise PrecedentsError(f"{name} must be 1-D (one value per training example), got shape {arr.shape}.")
    return arr.astype(dtype)


def _checked(scores: Any, flipped: Any) -> tuple[np.ndarray, np.ndarray]:
    s, f = _flat(scores, "scores"), _flat(flipped, "flipped", bool)
    if len(s) != len(f):
        raise PrecedentsError(f"scores and flipped differ in length: {len(s)} and {len(f)}.")
    if not np.isfinite(s).all():
        raise PrecedentsError(f"scores hold {int((~np.isfinite(s)).sum())} NaN or infinite values; a ranking "
                              "needs finite scores.")
    if not f.any():
        raise PrecedentsError("flipped marks no example: a detection curve needs at least one flipped label.")
    return s, f


def review_order(scores: Any) -> np.ndarray:
    """Training indices in the order a person checks them: score descending, ties by index (stable)."""
    s = _flat(scores, "scores")
    return np.argsort(-s, kind="stable")


def detection_curve(scores: Any, flipped: Any) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of the training set checked vs fraction of the flipped labels found, checking by score.

    Returns ``(checked, found)``, each of length n + 1 starting at (0, 0): after checking the ``k`` examples with
    the largest scores (ties broken by index), ``checked[k] = k / n`` and ``found[k] = #flipped among them /
    #flipped`` (both dimensionless fractions).
    """
    s, f = _checked(scores, flipped)
    hits = f[review_order(s)]
    found = np.concatenate(([0.0], np.cumsum(hits) / hits.sum()))
    checked = np.arange(len(s) + 1, dtype=np.float64) / len(s)
    return checked, found


def _roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg)), ties counted one half."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detection_summary(scores: Any, flipped: Any, at: Sequence[float] = (0.1, 0.2)) -> dict[str, float]:
    """``auc`` (area under :func:`detection_curve`, trapezoid), ``roc_auc`` and ``found@X%`` for X in ``at``.

    ``found@10%`` is the fraction of the flipped labels among the ``round(0.1 n)`` highest-scored examples.
    """
    s, f = _checked(scores, flipped)
    checked, found = detection_curve(s, f)
    out = {"auc": float(np.trapezoid(found, checked)), "roc_auc": _roc_auc(s, f)}
    for fraction in at:
        if not 0 <= fraction <= 1:
            raise PrecedentsError(f"'at' fractions must lie in [0, 1], got {fraction}.")
        out[f"found@{fraction:.0%}"] = float(found[int(round(fraction * len(s)))])
    return out


# ---------------------------------------------------------------------------------------------------------
# Self-scores: a small registry
# ---------------------------------------------------------------------------------------------------------

@dataclass
class SelfScoreOptions:
    """Settings of the self-score methods (all optional).

    l2: RPS-l2's regularisation ``lambda`` (objective mean CE + lambda ||W||^2); for a model trained with weight
        decay wd (objective mean loss + wd/2 ||theta||^2), ``wd / 2`` makes the label-refit head the model's own.
    lje_step, lje_damping: RPS-LJE's anchor step and damping.
    weight_decay, damping, params, solver_options: :class:`InfluenceFunction`'s (``weight_decay=None`` reads it
        from the model where the adapter knows it, e.g. scikit-learn's ``C``; ``solver_options`` maps a solver
        name to its options, e.g. ``{"lissa": {"depth": 200}, "arnoldi": {"rank": 50}}``).
    checkpoints, learning_rates, tracin_params: :class:`TracIn`'s; ``checkpoints=None`` uses the final weights.
    layer: dotted name of the final ``nn.Linear``; seed: of ``random`` (and LiSSA/Arnoldi unless given).
    method_params: per registered method key, parameters of its estimator given as they are (they win over the
        settings above), e.g. ``{"grad-cos": {"params": "head"}}``.
    """

    l2: float = 0.003
    lje_step: float = 0.01
    lje_damping: float = 0.0
    weight_decay: float | None = None
    damping: float = 0.0
    params: str = "head"
    solver_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: Sequence[Any] | None = None
    learning_rates: Sequence[float] | float | None = None
    tracin_params: str = "all"
    layer: str | None = None
    seed: int = 0
    batch_size: int = 256
    progress: bool = False
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)


#: A baseline self-score: ``fn(model, X, y, options) -> ((n,) float64 tensor, units)``.
SelfScoreFn = Callable[[Any, Any, torch.Tensor, SelfScoreOptions], tuple[torch.Tensor, str]]
#: The baselines beside the registered methods (``loss``, ``random``); :func:`register_self_score` adds one.
SELF_SCORES: dict[str, SelfScoreFn] = {}


def register_self_score(name: str) -> Callable[[SelfScoreFn], SelfScoreFn]:
    """Decorator adding a baseline ``fn(model, X, y, options) -> (scores, units)`` to :data:`SELF_SCORES`."""
    if name in available_methods():
        raise PrecedentsError(f"{name!r} is a registered method; its self-score is its self_influence().")

    def add(fn: SelfScoreFn) -> SelfScoreFn:
        SELF_SCORES[name] = fn
        return fn
    return add


def self_score_methods() -> list[str]:
    """Every name :func:`mislabel` accepts: the registered methods, then the baselines."""
    return [*available_methods(), *SELF_SCORES]


def method_params(key: str, model: Any, options: SelfScoreOptions) -> dict[str, Any]:
    """The parameters :func:`mislabel` builds the registered method ``key`` with, from ``options``: those of its
    estimator's parameters that an option sets (``l2``; ``step``/``damping`` from ``lje_step``/``lje_damping`` for
    RPS-LJE; ``damping``, ``weight_decay``, ``params`` and the solver's ``solver_options`` (seeded) for influence;
    ``checkpoints`` (default: the final weights), ``learning_rates`` and ``params`` from ``tracin_params`` for the
    gradient methods; ``layer``, ``batch_size``, ``progress`` for all), then ``options.method_params[key]``."""
    info = method_info(key)
    accepted = set(inspect.signature(info.cls.__init__).parameters) - {"self", "model"} - set(info.fixed)
    solver = info.fixed.get("solver")
    influence = "solver" in inspect.signature(info.cls.__init__).parameters
    o = options
    values: dict[str, Any] = {"layer": o.layer, "batch_size": o.batch_size, "progress": o.progress, "l2": o.l2,
                              "step": o.lje_step, "damping": o.lje_damping if key == "rps-lje" else o.damping,
                              "params": o.params if influence else o.tracin_params,
                              "learning_rates": o.learning_rates}
    if o.weight_decay is not None:
        values["weight_decay"] = o.weight_decay
    if solver is not None:
        solver_options = dict(o.solver_options.get(solver, {}))
        if solver in ("lissa", "arnoldi"):
            solver_options.setdefault("seed", o.seed)
        values["solver_options"] = solver_options
    if "checkpoints" in accepted:
        values["checkpoints"] = list(o.checkpoints) if o.checkpoints is not None else [model.state_dict()]
    params = {k: v for k, v in values.items() if k in accepted}
    return {**params, **o.method_params.get(key, {})}


def _registered_self_score(key: str, model: Any, X: Any, y: torch.Tensor,
                           o: SelfScoreOptions) -> tuple[torch.Tensor, str]:
    params = method_params(key, model, o)
    ex = explainer(key, model, **params).fit(X, y)
    units = ex.measurement.units
    if "checkpoints" in params and o.checkpoints is None:
        units += "; final weights only"
    return ex.self_influence(), f"self-influence ({units})"


def _model_outputs(model: Any, X: Any, y: torch.Tensor, o: SelfScoreOptions) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The model's logits (n, outputs), predicted classes (n,) and link on the training set, via the head adapter."""
    from ..adapters import head_adapter

    head = head_adapter(model, o.layer, batch_size=o.batch_size, progress=o.progress)
    run = head.run(head.batches(X, y, name="train", require_labels=True), what="training")
    logits = run.logits
    pred = predicted_classes(logits)
    return logits, pred, head.link


@register_self_score("loss")
def _loss(model: Any, X: Any, y: torch.Tensor, o: SelfScoreOptions) -> tuple[torch.Tensor, str]:
    from ..linalg.functional import loss_for_link

    logits, _, link = _model_outputs(model, X, y, o)
    units = "squared hinge" if link == "squared_hinge" else "nats"
    return loss_for_link(link)(logits, y.to(logits.device)).to(torch.float64).cpu(), f"training loss ({units})"


@register_self_score("random")
def _random(model: Any, X: Any, y: torch.Tensor, o: SelfScoreOptions) -> tuple[torch.Tensor, str]:
    g = torch.Generator().manual_seed(o.seed)
    return torch.rand(len(y), generator=g, dtype=torch.float64), "uniform random (dimensionless)"


def _options(options: SelfScoreOptions | None, kwargs: dict[str, Any]) -> SelfScoreOptions:
    if options is not None and kwargs:
        raise PrecedentsError("Pass either options=SelfScoreOptions(...) or keyword settings, not both.")
    if options is not None:
        return options
    try:
        return SelfScoreOptions(**kwargs)
    except TypeError as err:
        names = ", ".join(SelfScoreOptions.__dataclass_fields__)
        raise PrecedentsError(f"Unknown self-score setting: {err}. Settings: {names}.") from err


def _methods(methods: Iterable[str] | str) -> list[str]:
    return parse_methods(methods, self_score_methods(), "self-score method")


def _labels(y: Any) -> torch.Tensor:
    if y is None:
        raise PrecedentsError("Dataset debugging needs the given training labels y.")
    labels = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).reshape(-1)
    return labels.long()


def self_scores(model: Any, X: Any, y: Any, methods: Iterable[str] | str = DEFAULT_METHODS, *,
                options: SelfScoreOptions | None = None, **settings: Any) -> dict[str, np.ndarray]:
    """Each method's self-score (n,) of every training example (larger = check first), as float64 arrays.

    ``settings`` are the fields of :class:`SelfScoreOptions` (or pass ``options=``). See :data:`SELF_SCORES`.
    """
    return {k: v for k, v in mislabel(model, X, y, methods, options=options, **settings).scores.items()}


# ---------------------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------------------

@dataclass
class MislabelResult:
    """Self-scores of every training example under several methods, with the given and predicted labels.

    ``scores[m]`` (n,): larger = check first; ``units[m]`` says what the number is; ``seconds[m]`` the time the
    method took (fit + self-score). ``flipped`` (n,) is the ground truth when labels were flipped on purpose.
    """

    scores: dict[str, np.ndarray]
    labels: np.ndarray
    predictions: np.ndarray
    units: dict[str, str]
    seconds: dict[str, float]
    flipped: np.ndarray | None = None

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    def order(self, method: str) -> np.ndarray:
        """Training indices in review order for ``method`` (score descending, ties by index)."""
        return review_order(self._scores(method))

    def _scores(self, method: str) -> np.ndarray:
        if method not in self.scores:
            raise PrecedentsError(f"No scores for {method!r}; this result has {', '.join(self.scores)}.")
        return self.scores[method]

    def _truth(self) -> np.ndarray:
        if self.flipped is None:
            raise PrecedentsError("The ground truth is unknown: pass flipped= (the mask of flipped labels) to "
                                  "mislabel() to measure detection.")
        return self.flipped

    def curve(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """:func:`detection_curve` of ``method`` (needs ``flipped``)."""
        return detection_curve(self._scores(method), self._truth())

    def summary(self, at: Sequence[float] = (0.1, 0.2)) -> Any:
        """A pandas DataFrame, one row per method: auc, roc_auc, found@X% (needs ``flipped``), seconds, units."""
        import pandas as pd

        rows = [{"method": m, **detection_summary(s, self._truth(), at), "seconds": self.seconds.get(m),
                 "units": self.units.get(m)} for m, s in self.scores.items()]
        return pd.DataFrame(rows)

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per training example: index, given/predicted label, flipped, then per
        method its score and its rank (1 = checked first)."""
        import pandas as pd

        data: dict[str, Any] = {"index": np.arange(len(self.labels)), "given_label": self.labels,
                                "predicted_label": self.predictions}
        if self.flipped is not None:
            data["flipped"] = self.flipped
        for m, s in self.scores.items():
            rank = np.empty(len(s), dtype=np.int64)
            rank[review_order(s)] = np.arange(1, len(s) + 1)
            data[f"{m} score"] = s
            data[f"{m} rank"] = rank
        return pd.DataFrame(data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_train": len(self.labels), "methods": self.methods, "units": self.units, "seconds": self.seconds,
            "labels": self.labels.tolist(), "predictions": self.predictions.tolist(),
            "scores": {m: s.tolist() for m, s in self.scores.items()}}
        if self.flipped is not None:
            out["flipped"] = self.flipped.tolist()
            out["summary"] = {m: detection_summary(s, self.flipped) for m, s in self.scores.items()}
        return out

    def to_json(self, path: str | os.PathLike) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")
        return target


def mislabel(model: Any, X: Any, y: Any, methods: Iterable[str] | str = DEFAULT_METHODS, *, flipped: Any = None,
             options: SelfScoreOptions | None = None, **settings: Any) -> MislabelResult:
    """Rank the training set ``(X, y)`` of ``model`` by each method's self-score, for a person to check.

    ``methods``: registered method keys and baselines (:func:`self_score_methods`; a list or a comma-separated
    string). ``settings``: the fields
    of :class:`SelfScoreOptions` (e.g. ``l2=``, ``weight_decay=``, ``damping=``, ``checkpoints=``).
    ``flipped``: the mask of flipped labels, when known, for :meth:`MislabelResult.summary` and curves.
    """
    keys = _methods(methods)
    opts = _options(options, settings)
    labels = _labels(y)
    if flipped is not None:
        flipped = _flat(flipped, "flipped", bool)
        if len(flipped) != len(labels):
            raise PrecedentsError(f"flipped has {len(flipped)} entries but there are {len(labels)} labels.")
    _, pred, _ = _model_outputs(model, X, labels, opts)
    scores, units, seconds = {}, {}, {}
    for key in keys:
        start = time.perf_counter()
        if key in SELF_SCORES:
            values, unit = SELF_SCORES[key](model, X, labels, opts)
        else:
            values, unit = _registered_self_score(key, model, X, labels, opts)
        seconds[key] = time.perf_counter() - start
        values = values.detach().to(torch.float64).cpu().numpy().reshape(-1)
        if len(values) != len(labels):
            raise PrecedentsError(f"{key} returned {len(values)} scores for {len(labels)} training examples.")
        scores[key], units[key] = values, unit
    return MislabelResult(scores, labels.numpy(), pred.cpu().numpy(), units, seconds, flipped)


# ---------------------------------------------------------------------------------------------------------
# Corrections and retraining
# ---------------------------------------------------------------------------------------------------------

def _check_corrections(corrections: Mapping[int, int], n_train: int, n_classes: int) -> dict[int, int]:
    out = {}
    for index, label in corrections.items():
        i, c = int(index), int(label)
        if not 0 <= i < n_train:
            raise PrecedentsError(f"Correction for index {i}: out of range, the training set has {n_train} examples "
                                  f"(indices 0..{n_train - 1}).")
        if not 0 <= c < n_classes:
            raise PrecedentsError(f"Correction for index {i}: label {c} is out of range; the model has {n_classes} "
                                  f"classes (labels 0..{n_classes - 1}).")
        out[i] = c
    return out


def apply_corrections(y: Any, corrections: Mapping[int, int], n_classes: int) -> torch.Tensor:
    """A copy of the labels ``y`` with ``corrections`` (training index -> corrected label) applied."""
    labels = _labels(y).clone()
    for i, c in _check_corrections(corrections, len(labels), n_classes).items():
        labels[i] = c
    return labels


def oracle_corrections(order: Any, given: Any, true: Any, n_checked: int) -> dict[int, int]:
    """What a perfect checker fixes after looking at the first ``n_checked`` examples of ``order``: the
    checked examples whose given label differs from the true one, mapped to the true label."""
    order_, given_, true_ = (_flat(a, name, np.int64) for a, name in ((order, "order"), (given, "given"),
                                                                       (true, "true")))
    checked = order_[:n_checked]
    wrong = checked[given_[checked] != true_[checked]]
    return {int(i): int(true_[i]) for i in wrong}


def read_corrections(path: str | os.PathLike, n_train: int, n_classes: int) -> dict[int, int]:
    """Read a corrections CSV (header ``index,label``: training index, corrected class) and check every row."""
    p = Path(path)
    if not p.is_file():
        raise PrecedentsError(f"Corrections file {path} does not exist.")
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"index", "label"} <= {f.strip() for f in reader.fieldnames}:
            raise PrecedentsError(f"Corrections file {path} must have the header 'index,label' (training index, "
                                  f"corrected class); it has {reader.fieldnames}.")
        out: dict[int, int] = {}
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            try:
                i, c = int(str(row["index"]).strip()), int(str(row["label"]).strip())
            except (TypeError, ValueError) as err:
                raise PrecedentsError(f"Corrections file {path}, line {line}: index and label must be integers, "
                                      f"got {row.get('index')!r}, {row.get('label')!r}.") from err
            if i in out and out[i] != c:
                raise PrecedentsError(f"Corrections file {path}, line {line}: index {i} is corrected twice, to "
                                      f"{out[i]} and {c}.")
            out[i] = c
    return _check_corrections(out, n_train, n_classes)


def write_corrections(path: str | os.PathLike, corrections: Mapping[int, int]) -> Path:
    """Write ``corrections`` as a CSV with header ``index,label`` (what :func:`read_corrections` reads)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "label"])
        writer.writerows(sorted((int(i), int(c)) for i, c in corrections.items()))
    return p


def _predict(predictor: Callable[[Any], Any], X: Any) -> np.ndarray:
    with torch.no_grad():
        logits = predictor(X)
    return predicted_classes(torch.as_tensor(logits)).cpu().numpy()


def accuracy(predictor: Callable[[Any], Any], X: Any, y: Any) -> float:
    """Fraction of ``X`` whose predicted class (argmax, or logit > 0 for one output) equals ``y``."""
    return float((_predict(predictor, X) == _labels(y).numpy()).mean())


@dataclass
class FixResult:
    """Test accuracy (fractions) before and after fixing ``n_changed`` labels and retraining."""

    n_changed: int
    accuracy_before: float
    accuracy_after: float

    @property
    def change(self) -> float:
        return self.accuracy_after - self.accuracy_before

    def to_dict(self) -> dict[str, float]:
        return {"n_changed": self.n_changed, "accuracy_before": self.accuracy_before,
                "accuracy_after": self.accuracy_after, "change": self.change}


def fix_and_retrain(retrain: Retrainer, y: Any, corrections: Mapping[int, int], X_test: Any, y_test: Any, *,
                    n_classes: int, before: Callable[[Any], Any] | None = None) -> FixResult:
    """Apply ``corrections`` to the training labels ``y``, retrain, and compare test accuracy.

    ``retrain``: a :class:`~precedents.evaluate.retrain.Retrainer` over the training inputs; ``retrain.retrain(
    y=labels)`` trains on them with these labels and returns a predictor (``predictor(X) -> logits``, e.g. an
    ``nn.Module``): :class:`HeadRetrainer` (the last layer refit), :class:`LogisticRegressionRetrainer`,
    :class:`FromScratchRetrainer`. ``before``: the predictor trained on ``y`` (default: ``retrain.retrain(y=y)``,
    so that both sides come from the same procedure). Accuracies are fractions of ``X_test``.
    """
    if not isinstance(retrain, Retrainer):
        raise PrecedentsError(f"retrain must be a Retrainer (e.g. HeadRetrainer, LogisticRegressionRetrainer, "
                              f"FromScratchRetrainer(train_fn, X, y)), got {type(retrain).__name__}.")
    fixed = apply_corrections(y, corrections, n_classes)
    given = _labels(y)
    changed = int((fixed != given).sum())
    before = retrain.retrain(y=given) if before is None else before
    return FixResult(changed, accuracy(before, X_test, y_test), accuracy(retrain.retrain(y=fixed), X_test, y_test))
