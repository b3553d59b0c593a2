"""The computing half of a report: fit, attribute, measure; shared by ``precedents explain`` and the demos.

The library's steps in order (adapt, fit, attribute, measure), for a few shown test points and several
methods, returning :class:`MethodRun` results that :mod:`precedents.report` renders. Nothing here writes
a file or prints.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._validation import PrecedentsError
from .evaluate import topk_jaccard
from .report.build import MethodResult, feature_strip, sensitivity_strip
from .report.html import ImageStrip, Table

__all__ = ["LJE_STEP", "MethodRun", "explain_tabular", "explanation_strips", "fit_timed", "rows_of", "run_method",
           "transparency_tables"]

#: the anchor step the RPS-LJE authors use for XGBoost
LJE_STEP = 1e-4


@dataclass
class MethodRun(MethodResult):
    """A :class:`~precedents.report.MethodResult` together with the fitted explainer that produced it."""

    explainer: Any = None


def fit_timed(explainer: Any, X: Any, y: Any = None) -> tuple[Any, float]:
    """``explainer.fit(X, y)`` and the seconds it took."""
    start = time.perf_counter()
    explainer.fit(X, y)
    return explainer, time.perf_counter() - start


def run_method(name: str, explainer: Any, fit_seconds: float, X: Any, *, y: Any = None, k: int = 5,
               overlap_X: Any = None, fidelity_X: Any = None) -> MethodRun:
    """Attribute the shown test points ``X`` with a fitted explainer and measure what the report shows.

    ``y``: labels for loss-based methods (explain the loss of ``y``); ``overlap_X``: test points on which the
    top-k Jaccard overlap within a predicted class is measured; ``fidelity_X``: test points on which the
    explained head's agreement with the model is measured (head methods).
    """
    start = time.perf_counter()
    res = explainer.attribute(X, y)
    res.top(k)
    seconds = time.perf_counter() - start
    overlap = {}
    if overlap_X is not None:
        many = explainer.attribute(overlap_X)
        overlap = topk_jaccard(many.top(k), many.target)
    facts = dict(explainer.diagnostics())
    fidelity, decomposition = {}, {}
    if "fidelity_train" in facts:              # the method explains a head: how close it is to the model
        fidelity = {"train": facts["fidelity_train"]}
        if fidelity_X is not None:
            fidelity["test"] = explainer.fidelity(fidelity_X)
    if res.measurement.additive:               # the scores add up to the explained head's output
        decomposition = {"sum_gap": float((res.scores.sum(1) - res.explained).abs().max()),
                         "head_gap": float((res.explained - res.model_output).abs().max())}
    return MethodRun(name, res, fit_seconds, seconds, diagnostics=facts, fidelity=fidelity,
                     decomposition=decomposition, overlap=overlap, explainer=explainer)


def _class_name(value: Any, names: Sequence[str] | None) -> str:
    value = int(value)
    return names[value] if names is not None and 0 <= value < len(names) else str(value)


def explanation_strips(model: Any, runs: Sequence[MethodRun], X_shown: Any, *, features: Sequence[str] = (),
                       sensitivity: bool = True, train_display: Any = None, train_labels: Any = None,
                       class_names: Sequence[str] | None = None, k: int = 2,
                       feature_options: dict[str, Any] | None = None) -> list[list[ImageStrip]]:
    """Per shown (image) test point: a feature-attribution strip, and per representer run a sensitivity figure.

    Feature attribution (:func:`precedents.features.feature_attributions`) explains the class the first run
    explains. The sensitivity figure follows seed 001's zebra/moose figure: the test image, the gradient of the
    explained logit (its whole sensitivity map), and the ``k`` most positive and ``k`` most negative training
    examples, each beside its decomposed map ``J_f(x_t)^T w_i`` (:mod:`precedents.sensitivity`). Returns one
    list per test point; tabular points get none.
    """
    X_shown = torch.as_tensor(X_shown)
    strips: list[list[ImageStrip]] = [[] for _ in range(len(X_shown))]
    if X_shown.ndim < 3 or not runs:      # images only: a tabular point's maps are not pictures
        return strips
    target = runs[0].attribution.target
    if features:
        from .features import FEATURE_METHODS, feature_attributions

        maps = feature_attributions(model, X_shown, target, list(features), **(feature_options or {}))
        for t in range(len(X_shown)):
            strips[t].append(feature_strip(X_shown[t], {name: m[t] for name, m in maps.items()},
                                           _class_name(target[t], class_names), FEATURE_METHODS))
    if sensitivity:
        from .sensitivity import top_sensitivity_maps

        for run in runs:
            if not run.decomposition:      # only methods whose scores decompose a logit split its gradient
                continue
            pos, neg = top_sensitivity_maps(run.explainer, X_shown, k, run.attribution.target)
            for t in range(len(X_shown)):
                groups = [(name, [(i, float(sm.scores[t, j]), sm.maps[t, j])
                                  for j, i in enumerate(sm.train_indices[t].tolist())])
                          for name, sm in (("POSITIVE", pos), ("NEGATIVE", neg))]
                strips[t].append(sensitivity_strip(run.name, _class_name(pos.target[t], class_names), X_shown[t],
                                                   pos.total[t], run.attribution.n_train, groups,
                                                   train_display=train_display, train_labels=train_labels,
                                                   class_names=class_names))
    return strips


def rows_of(X: Any) -> list[dict[str, Any]]:
    """Each row of a DataFrame as {column: value} (for the report's table cards)."""
    return [{str(k): (v if not isinstance(v, (np.generic,)) else v.item()) for k, v in row.items()}
            for row in X.to_dict(orient="records")]


def explain_tabular(model: Any, Xtr: Any, ytr: np.ndarray, Xte: Any, shown: Sequence[int], *, k: int = 5,
                    progress: bool = True, damping: float | None = None, step: float = LJE_STEP,
                    methods: Sequence[str] = ("rps-lje", "influence-exact")) -> tuple[list[MethodRun], dict]:
    """Fit RPS-LJE and/or head influence on a tree ensemble and attribute the test rows ``shown``.

    ``damping`` None: ``SUGGESTED_DAMPING`` times the largest eigenvalue of the head's Hessian (at the anchor).
    Influence explains the loss of the *predicted* class. Returns the runs and diagnostics (lambda_max, damping,
    stationarity, the warnings the fits raised).
    """
    from .adapters.trees import SUGGESTED_DAMPING
    from .methods.registry import explainer

    unknown = [m for m in methods if m not in ("rps-lje", "influence-exact")]
    if unknown or not methods:
        raise PrecedentsError(f"Method(s) {', '.join(unknown) or '(none)'} not offered for a tree ensemble; choose "
                              "from rps-lje, influence-exact (on the trees' head).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        probe = explainer("rps-lje", model, step=step, damping=0.0, progress=progress).fit(Xtr, ytr)
    lam = float(probe.solver_.largest_eigenvalue)
    d = SUGGESTED_DAMPING * lam if damping is None else damping
    Xs = Xte.iloc[list(shown)]
    predicted = probe.attribute(Xs).target
    runs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        if "rps-lje" in methods:
            lje, seconds = fit_timed(explainer("rps-lje", model, step=step, damping=d, progress=progress), Xtr, ytr)
            runs.append(run_method("rps-lje", lje, seconds, Xs, k=k, fidelity_X=Xte))
        if "influence-exact" in methods:
            inf, seconds = fit_timed(explainer("influence-exact", model, params="head", damping=d, progress=progress),
                                     Xtr, ytr)
            runs.append(run_method("influence-exact", inf, seconds, Xs, y=predicted, k=k))   # the predicted loss
    info = {"lambda_max": lam, "damping": d, "stationarity": probe.stationarity_,
            "warnings": sorted({str(w.message).split(" (")[0] for w in caught})}
    return runs, info


def transparency_tables(*results: Any) -> list[Table]:
    """Report tables for transparent models, feature counterfactuals, flip sets and unlearning (seed 004), in the
    order given: any mix of :class:`~precedents.glassbox.GlassboxComparison`,
    :class:`~precedents.counterfactual.CounterfactualResult`, :class:`~precedents.evaluate.flipset.FlipSets`,
    :class:`~precedents.evaluate.flipset.FlipSetResult` and :class:`~precedents.evaluate.flipset.UnlearningResult`
    (each result type knows its own tables)."""
    from .counterfactual import CounterfactualResult
    from .evaluate.flipset import FlipSetResult, FlipSets, UnlearningResult
    from .glassbox import GlassboxComparison

    tables: list[Table] = []
    n_cf = sum(isinstance(r, CounterfactualResult) for r in results)
    k_cf = 0
    for result in results:
        if isinstance(result, (GlassboxComparison, FlipSets)):
            tables += result.report_tables()
        elif isinstance(result, CounterfactualResult):
            k_cf += 1
            tables.append(result.report_table(f"Counterfactual explanations ({k_cf})" if n_cf > 1
                                              else "Counterfactual explanations"))
        elif isinstance(result, FlipSetResult):
            tables += FlipSets([result], max(len(result.indices), 1)).report_tables()[1:]
        elif isinstance(result, UnlearningResult):
            tables.append(result.report_table())
        else:
            raise PrecedentsError(f"No report tables for a {type(result).__name__}.")
    return tables
