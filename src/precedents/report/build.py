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
from .html import Case, Example, MethodPanel, Report, Table


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
        train = ex.fidelity()
        test = ex.fidelity(X_test)
        faith_rows.append([run.name, train["prediction_agreement"], train["max_probability_difference"],
                           test["prediction_agreement"], test["max_probability_difference"],
                           test["max_logit_difference"], _diagnostic(ex)])
        res = run.attribution
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
                 test_rows: Sequence[dict[str, Any]] | None = None, extra_tables: Sequence[Table] = ()) -> Report:
    """Build the report: tables, then one case per ``(title, position)`` in the attributed test batch.

    Positions in ``cases`` index the attributed batch: ``shown_ids`` are its dataset ids ("test id"),
    ``shown_labels`` its true labels, ``shown_display`` its images (or ``test_rows`` for tabular data).
    ``train_display`` holds what to draw for each training example (or ``train_rows``). ``fidelity_X`` is the
    test set on which the faithfulness table is measured.
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
            panels.append(MethodPanel(run.name, examples(top.positive_indices[pos], top.positive_scores[pos]),
                                      examples(top.negative_indices[pos], top.negative_scores[pos]), note))
        out_cases.append(Case(case_title, test, panels))
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
