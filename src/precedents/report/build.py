"""Turn fitted explainers and their attributions into a :class:`Report`: the one place that knows both."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..attribution import Attribution
from ..evaluate import topk_jaccard
from .html import Case, Example, ImageStrip, MethodPanel, Report, Table


@dataclass
class MethodRun:
    """A fitted explainer, its attribution of the shown test points, and how long each phase took."""

    name: str
    explainer: Any
    attribution: Attribution
    fit_seconds: float
    attribute_seconds: float
    overlap: dict[str, float] = field(default_factory=dict)


def attribute_timed(name: str, explainer: Any, fit_seconds: float, X: Any, overlap_X: Any = None,
                    k: int = 5) -> MethodRun:
    """Attribute ``X`` with a fitted explainer; with ``overlap_X``, also measure top-k Jaccard overlap."""
    start = time.perf_counter()
    res = explainer.attribute(X)
    res.top(k)
    seconds = time.perf_counter() - start
    overlap = {}
    if overlap_X is not None:
        many = explainer.attribute(overlap_X)
        overlap = topk_jaccard(many.top(k), many.target)
    return MethodRun(name, explainer, res, fit_seconds, seconds, overlap)


def _label(value: Any, names: Sequence[str] | None) -> str:
    value = int(value)
    return names[value] if names is not None and value < len(names) else str(value)


def _display(image: Any) -> np.ndarray | None:
    if image is None:
        return None
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return array.squeeze()


def method_tables(runs: Sequence[MethodRun], X_test: Any) -> list[Table]:
    """Faithfulness, decomposition and cost tables for the report and the command line."""
    faith_rows, decomp_rows, cost_rows, overlap_rows = [], [], [], []
    for run in runs:
        ex = run.explainer
        res = run.attribution
        if hasattr(ex, "fidelity"):            # head explainers; influence explains the model's own loss
            train = ex.fidelity()
            test = ex.fidelity(X_test)
            faith_rows.append([run.name, train["prediction_agreement"], train["max_probability_difference"],
                               test["prediction_agreement"], test["max_probability_difference"],
                               test["max_logit_difference"], _diagnostic(ex)])
        if res.measurement.additive:             # loss-based scores do not decompose the loss
            gap = (res.scores.sum(1) - res.explained).abs().max()
            decomp_rows.append([run.name, float(gap), float((res.explained - res.model_output).abs().max())])
        cost_rows.append([run.name, run.fit_seconds, run.attribute_seconds, res.n_test, res.n_train])
        if run.overlap:
            overlap_rows.append([run.name, run.overlap["mean"], int(run.overlap["pairs"])])
    tables = [
        Table("How faithful each explained head is to the given model", [
            "method", "train agreement", "train max |dp|", "test agreement", "test max |dp|",
            "test max |d logit|", "diagnostics"], faith_rows,
            "Agreement: fraction of points where the head the method explains predicts the model's class. "
            "|dp|: largest difference of any class probability. RPS-l2 explains an l2-refit head; RPS-LJE the "
            "head one Newton step from its anchor, which equals the model only at a stationary point."),
        Table("Decomposition theorem check", ["method", "max |sum of scores - explained logit|",
                                              "max |explained logit - model logit|"], decomp_rows,
              "The scores of all training examples sum to the explained head's logit (to float64 precision)."),
        Table("Cost (seconds on this machine)", ["method", "fit", "attribute shown points", "test points",
                                                 "training points"], cost_rows),
    ]
    if overlap_rows:
        tables.append(Table("Instance- or class-level? Top-k overlap within a predicted class",
                            ["method", "mean Jaccard of top-k positive sets", "pairs"], overlap_rows,
                            "1.0: every test point of a class gets the same precedents (class-level); near 0: "
                            "each gets its own (instance-level)."))
    return tables


def _diagnostic(ex: Any) -> str:
    if hasattr(ex, "refit_"):
        r = ex.refit_
        return f"l2={ex.l2:g}; refit gradient norm {r.get('gradient_norm', float('nan')):.1e} " \
               f"after {r.get('iterations', '?')} Newton steps"
    if hasattr(ex, "hessian_condition_"):
        return (f"step={ex.step:g}, damping={ex.damping:g}; stationarity ||grad L(Theta)|| = "
                f"{ex.stationarity_:.2e}; Hessian condition number {ex.hessian_condition_:.2e}")
    return ""


def build_report(title: str, intro: str, runs: Sequence[MethodRun], *, fidelity_X: Any, shown_labels: Any,
                 shown_ids: Sequence[int], cases: Sequence[tuple[str, int]], train_display: Any,
                 train_labels: Any, train_predictions: Any | None = None, shown_display: Any = None,
                 class_names: Sequence[str] | None = None, k: int = 5,
                 train_rows: Sequence[dict[str, Any]] | None = None,
                 test_rows: Sequence[dict[str, Any]] | None = None, extra_tables: Sequence[Table] = (),
                 case_strips: Sequence[Sequence[ImageStrip]] | None = None) -> Report:
    """Build the report: tables, then one case per ``(title, position)`` in the attributed test batch.

    Positions in ``cases`` index the attributed batch: ``shown_ids`` are its dataset ids ("test id"),
    ``shown_labels`` its true labels, ``shown_display`` its images (or ``test_rows`` for tabular data).
    ``train_display`` holds what to draw for each training example (or ``train_rows``). ``fidelity_X`` is the
    test set on which the faithfulness table is measured. ``case_strips``: image strips (feature attributions,
    sensitivity maps; see :func:`explanation_strips`) shown under each case, one list per entry of ``cases``.
    """
    tops = {run.name: run.attribution.top(k) for run in runs}
    first = runs[0].attribution
    out_cases = []
    for case_title, pos in cases:
        test = Example(index=int(shown_ids[pos]), label=_label(shown_labels[pos], class_names),
                       pred=_label(first.target[pos], class_names),
                       image=None if shown_display is None else _display(shown_display[pos]),
                       row=None if test_rows is None else test_rows[pos])
        panels = []
        for run in runs:
            top = tops[run.name]

            def examples(indices: torch.Tensor, scores: torch.Tensor) -> list[Example]:
                return [Example(index=int(i), label=_label(train_labels[int(i)], class_names),
                                pred=_label(train_predictions[int(i)] if train_predictions is not None
                                            else train_labels[int(i)], class_names),
                                score=float(s), image=None if train_rows is not None else
                                _display(train_display[int(i)]),
                                row=None if train_rows is None else train_rows[int(i)])
                        for i, s in zip(indices.tolist(), scores.tolist(), strict=True)]

            res = run.attribution
            note = (f"explains class {_label(res.target[pos], class_names)}: scores sum to "
                    f"{float(res.explained[pos]):+.3f} (model logit {float(res.model_output[pos]):+.3f})")
            if not res.measurement.additive:
                note = (f"explains the loss of class {_label(res.target[pos], class_names)} "
                        f"({float(res.model_output[pos]):.3f} nats): a score is the predicted increase of that "
                        "loss if the training example were removed")
            panels.append(MethodPanel(run.name, examples(top.positive_indices[pos], top.positive_scores[pos]),
                                      examples(top.negative_indices[pos], top.negative_scores[pos]), note))
        strips = list(case_strips[len(out_cases)]) if case_strips is not None else []
        out_cases.append(Case(case_title, test, panels, strips=strips))
    tables = [*extra_tables, *method_tables(runs, fidelity_X)]
    return Report(title=title, intro=intro, tables=tables, cases=out_cases)


def table_text(table: Table) -> str:
    """A plain-text rendering of a table for the terminal."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    rows = [[cell(v) for v in row] for row in table.rows]
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) if rows else len(str(c))
              for i, c in enumerate(table.columns)]
    lines = [table.title, "  ".join(str(c).ljust(w) for c, w in zip(table.columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _signed_map(values: Any, vmax: float | None = None) -> np.ndarray:
    """A signed (C, H, W) or (H, W) map as an RGB image: red > 0 (supports the class), blue < 0, white 0."""
    from .png import signed_to_rgb

    a = _display(values)
    if a.ndim == 3:                       # channels first: sum them (the map of a pixel)
        a = a.sum(0)
    return signed_to_rgb(a, vmax)


def explanation_strips(model: Any, runs: Sequence[MethodRun], X_shown: Any, *, features: Sequence[str] = (),
                       sensitivity: bool = True, train_display: Any = None, train_labels: Any = None,
                       class_names: Sequence[str] | None = None, k: int = 2,
                       feature_options: dict[str, Any] | None = None) -> list[list[ImageStrip]]:
    """Per shown (image) test point: a feature-attribution strip, and per representer run a sensitivity figure.

    Feature attribution (:func:`precedents.features.feature_attributions`) explains the class the first run
    explains. The sensitivity figure follows seed 001's zebra/moose figure: the test image, the gradient of the
    explained logit (its whole sensitivity map), and the ``k`` most positive and ``k`` most negative training
    examples, each beside its decomposed map ``J_f(x_t)^T w_i`` (:mod:`precedents.sensitivity`); the decomposed
    maps of one figure share one colour scale, so their strengths compare. Returns one list per test point.
    """
    from ..methods import RepresenterL2, RepresenterLJE

    X_shown = torch.as_tensor(X_shown)
    strips: list[list[ImageStrip]] = [[] for _ in range(len(X_shown))]
    if X_shown.ndim < 3 or not runs:      # images only: a tabular point's maps are not pictures
        return strips
    target = runs[0].attribution.target
    if features:
        from ..features import FEATURE_METHODS, feature_attributions

        maps = feature_attributions(model, X_shown, target, list(features), **(feature_options or {}))
        units = "; ".join(f"{name}: {FEATURE_METHODS[name]}" for name in maps)
        for t in range(len(X_shown)):
            images = [("test image", _display(X_shown[t]))]
            images += [(f"{name} (max |v| {float(m[t].abs().max()):.3g})", _signed_map(m[t]))
                       for name, m in maps.items()]
            strips[t].append(ImageStrip(
                f"Which pixels: feature attribution for class {_label(target[t], class_names)}", images,
                f"Red supports the class, blue opposes it; each map on its own symmetric scale. {units}."))
    if sensitivity:
        from ..sensitivity import top_sensitivity_maps

        for run in runs:
            if not isinstance(run.explainer, (RepresenterL2, RepresenterLJE)):
                continue
            pos, neg = top_sensitivity_maps(run.explainer, X_shown, k, run.attribution.target)
            for t in range(len(X_shown)):
                vmax = float(torch.cat([pos.maps[t].flatten(), neg.maps[t].flatten()]).abs().max())
                images = [("test image", _display(X_shown[t])),
                          (f"whole map (sum over all {run.attribution.n_train})", _signed_map(pos.total[t]))]
                for sm in (pos, neg):
                    for j, i in enumerate(sm.train_indices[t].tolist()):
                        label = "" if train_labels is None else f", label {_label(train_labels[i], class_names)}"
                        shown = _display(train_display[i]) if train_display is not None else np.zeros((2, 2))
                        images += [(f"train id {i}{label}, score {float(sm.scores[t, j]):+.3g}", shown),
                                   ("its decomposed map", _signed_map(sm.maps[t, j], vmax))]
                strips[t].append(ImageStrip(
                    f"{run.name}: sensitivity map of class {_label(pos.target[t], class_names)}, decomposed over "
                    "training examples", images,
                    "d logit / d input split into one map per training example (seed 001, section 4.3): the "
                    "maps of all training examples add up to the whole map. Red raises the logit, blue lowers "
                    f"it; the decomposed maps share one scale (max |v| {vmax:.3g} logit per unit of input).",
                    groups=[("TEST", 2), ("POSITIVE", 2 * pos.maps.shape[1]), ("NEGATIVE", 2 * neg.maps.shape[1])]))
    return strips
