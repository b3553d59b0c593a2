"""Turn computed results into a :class:`Report`: rendering only.

Everything here reads plain results (an :class:`~precedents.attribution.Attribution`, dicts of numbers,
arrays to draw); nothing fits, attributes or asks an estimator what it is. The computing side
(:mod:`precedents.pipeline`, the commands, the demos) fills :class:`MethodResult` and the maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..attribution import Attribution
from .html import Case, Example, ImageStrip, MethodPanel, Report, Table, format_value
from .png import signed_to_rgb

__all__ = ["MethodResult", "build_report", "feature_strip", "method_tables", "precedents_table",
           "sensitivity_strip"]


@dataclass
class MethodResult:
    """What the report shows of one method: its attribution of the shown test points and measured facts.

    ``diagnostics``: the estimator's own ``diagnostics()`` (JSON-able facts: conditioning, damping chosen,
    refit fidelity...); ``fidelity``: ``{"train": {...}, "test": {...}}`` agreement of the explained head with
    the model where the method explains a head (empty otherwise); ``decomposition``: ``{"sum_gap",
    "head_gap"}`` where the scores decompose a logit; ``overlap``: top-k Jaccard within a predicted class.
    """

    name: str
    attribution: Attribution
    fit_seconds: float
    attribute_seconds: float
    diagnostics: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, dict[str, float]] = field(default_factory=dict)
    decomposition: dict[str, float] = field(default_factory=dict)
    overlap: dict[str, float] = field(default_factory=dict)


def _label(value: Any, names: Sequence[str] | None) -> str:
    value = int(value)
    return names[value] if names is not None and 0 <= value < len(names) else str(value)


def _display(image: Any) -> np.ndarray | None:
    if image is None:
        return None
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    return array.squeeze()


def _signed_map(values: Any, vmax: float | None = None) -> np.ndarray:
    """A signed (C, H, W) or (H, W) map as an RGB image: red > 0 (supports the class), blue < 0, white 0."""
    a = _display(values)
    if a.ndim == 3:                       # channels first: sum them (the map of a pixel)
        a = a.sum(0)
    return signed_to_rgb(a, vmax)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


#: diagnostics shown elsewhere in the tables (or the same for every method)
_SHOWN_ELSEWHERE = ("method", "measurement", "n_train", "fit_seconds", "fidelity_train")


def _diagnostics_text(diagnostics: Mapping[str, Any]) -> str:
    """A diagnostics dict as one line, in the estimator's order: ``name value``; a nested dict as
    ``name: key value, key value``; lists and empty values are left out."""
    def scalar(v: Any) -> bool:
        return isinstance(v, (int, float, str, bool, np.generic)) and v != ""

    parts = []
    for k, v in diagnostics.items():
        if k in _SHOWN_ELSEWHERE:
            continue
        if isinstance(v, Mapping):
            inner = ", ".join(f"{ik.replace('_', ' ')} {format_value(iv)}" for ik, iv in v.items() if scalar(iv))
            if inner:
                parts.append(f"{k.replace('_', ' ')}: {inner}")
        elif scalar(v):
            parts.append(f"{k.replace('_', ' ')} {format_value(v)}")
    return "; ".join(parts)


def method_tables(results: Sequence[MethodResult]) -> list[Table]:
    """Faithfulness, decomposition and cost tables (and top-k overlap, where measured)."""
    faith_rows, decomp_rows, cost_rows, overlap_rows = [], [], [], []
    for r in results:
        if r.fidelity:
            train, test = r.fidelity.get("train", {}), r.fidelity.get("test", {})
            faith_rows.append([r.name, train.get("prediction_agreement"), train.get("max_probability_difference"),
                               test.get("prediction_agreement"), test.get("max_probability_difference"),
                               test.get("max_logit_difference"), _diagnostics_text(r.diagnostics)])
        if r.decomposition:
            decomp_rows.append([r.name, r.decomposition["sum_gap"], r.decomposition["head_gap"]])
        cost_rows.append([r.name, r.fit_seconds, r.attribute_seconds, r.attribution.n_test, r.attribution.n_train])
        if r.overlap:
            overlap_rows.append([r.name, r.overlap["mean"], int(r.overlap["pairs"])])
    tables = []
    if faith_rows:
        tables.append(Table("How faithful each explained head is to the given model", [
            "method", "train agreement", "train max |dp|", "test agreement", "test max |dp|",
            "test max |d logit|", "diagnostics"], faith_rows,
            "Agreement: fraction of points where the head the method explains predicts the model's class. "
            "|dp|: largest difference of any class probability. RPS-l2 explains an l2-refit head; RPS-LJE the "
            "head one Newton step from its anchor, which equals the model only at a stationary point."))
    others = [[r.name, _diagnostics_text(r.diagnostics)] for r in results if not r.fidelity and r.diagnostics]
    if others:
        tables.append(Table("Diagnostics of the other methods", ["method", "diagnostics"], others))
    if decomp_rows:
        tables.append(Table("Decomposition theorem check", ["method", "max |sum of scores - explained logit|",
                                                            "max |explained logit - model logit|"], decomp_rows,
                            "The scores of all training examples sum to the explained head's logit (to float64 "
                            "precision)."))
    tables.append(Table("Cost (seconds on this machine)", ["method", "fit", "attribute shown points", "test points",
                                                           "training points"], cost_rows))
    if overlap_rows:
        tables.append(Table("Instance- or class-level? Top-k overlap within a predicted class",
                            ["method", "mean Jaccard of top-k positive sets", "pairs"], overlap_rows,
                            "1.0: every test point of a class gets the same precedents (class-level); near 0: "
                            "each gets its own (instance-level)."))
    return tables


def build_report(title: str, intro: str, results: Sequence[MethodResult], *, shown_labels: Any,
                 shown_ids: Sequence[int], cases: Sequence[tuple[str, int]], train_display: Any,
                 train_labels: Any, train_predictions: Any | None = None, shown_display: Any = None,
                 class_names: Sequence[str] | None = None, k: int = 5,
                 train_rows: Sequence[dict[str, Any]] | None = None,
                 test_rows: Sequence[dict[str, Any]] | None = None, extra_tables: Sequence[Table] = (),
                 case_strips: Sequence[Sequence[ImageStrip]] | None = None) -> Report:
    """The report: one case per ``(title, position)`` in the attributed test batch, then the tables.

    Positions in ``cases`` index the attributed batch: ``shown_ids`` are its dataset ids ("test id"),
    ``shown_labels`` its true labels, ``shown_display`` its images (or ``test_rows`` for tabular data).
    ``train_display`` holds what to draw for each training example (or ``train_rows``). ``case_strips``:
    image strips (:func:`feature_strip`, :func:`sensitivity_strip`) under each case, one list per case.
    ``extra_tables`` come first among the tables, then :func:`method_tables`.
    """
    tops = {r.name: r.attribution.top(k) for r in results}
    first = results[0].attribution
    out_cases = []
    for case_title, pos in cases:
        test = Example(index=int(shown_ids[pos]), label=_label(shown_labels[pos], class_names),
                       pred=_label(first.target[pos], class_names),
                       image=None if shown_display is None else _display(shown_display[pos]),
                       row=None if test_rows is None else test_rows[pos])
        panels = []
        for r in results:
            top = tops[r.name]

            def examples(indices: Any, scores: Any) -> list[Example]:
                return [Example(index=int(i), label=_label(train_labels[int(i)], class_names),
                                pred=_label(train_predictions[int(i)] if train_predictions is not None
                                            else train_labels[int(i)], class_names),
                                score=float(s), image=None if train_rows is not None else
                                _display(train_display[int(i)]),
                                row=None if train_rows is None else train_rows[int(i)])
                        for i, s in zip(indices.tolist(), scores.tolist(), strict=True)]

            res = r.attribution
            m = res.measurement
            if m.additive:
                note = (f"explains class {_label(res.target[pos], class_names)}: scores sum to "
                        f"{float(res.explained[pos]):+.3f} (model logit {float(res.model_output[pos]):+.3f})")
            elif m.quantity == "test loss":
                note = (f"explains the loss of class {_label(res.target[pos], class_names)} "
                        f"({float(res.model_output[pos]):.3f} nats); scores: {m.units}. {_sentence(m.sign)}")
            else:
                note = f"explains the {m.quantity} of class {_label(res.target[pos], class_names)}; scores: {m.units}"
            panels.append(MethodPanel(r.name, examples(top.positive_indices[pos], top.positive_scores[pos]),
                                      examples(top.negative_indices[pos], top.negative_scores[pos]), note))
        strips = list(case_strips[len(out_cases)]) if case_strips is not None else []
        out_cases.append(Case(case_title, test, panels, strips=strips))
    return Report(title=title, intro=intro, tables=[*extra_tables, *method_tables(results)], cases=out_cases)


def precedents_table(result: MethodResult, pos: int, X_train: Any, y_train: Any, train_pred: Any,
                     classes: Sequence[str], columns: Sequence[str], k: int) -> Table:
    """The k most positive and k most negative training rows of one test point as a table (``X_train``: a
    pandas DataFrame)."""
    top = result.attribution.top(k)
    rows = []
    for kind, idx, sc in (("+", top.positive_indices[pos], top.positive_scores[pos]),
                          ("-", top.negative_indices[pos], top.negative_scores[pos])):
        for rank, (i, s) in enumerate(zip(idx.tolist(), sc.tolist(), strict=True), start=1):
            row = X_train.iloc[i]
            rows.append([f"{kind}{rank}", i, float(s), classes[int(y_train[i])], classes[int(train_pred[i])],
                         *[row[c] for c in columns]])
    units = result.attribution.measurement.units
    return Table(f"{result.name}: precedents ({units}; + supports the prediction, - opposes it)",
                 ["rank", "train row", "score", "label", "model says", *columns], rows)


def feature_strip(test_image: Any, maps: Mapping[str, Any], class_label: str,
                  units: Mapping[str, str]) -> ImageStrip:
    """A strip of one test image's feature attributions (``maps``: method -> signed map of the image)."""
    images = [("test image", _display(test_image))]
    images += [(f"{name} (max |v| {float(np.abs(_display(m)).max()):.3g})", _signed_map(m))
               for name, m in maps.items()]
    text = "; ".join(f"{name}: {units[name]}" for name in maps if name in units)
    return ImageStrip(f"Which pixels: feature attribution for class {class_label}", images,
                      f"Red supports the class, blue opposes it; each map on its own symmetric scale. {text}.")


def sensitivity_strip(method: str, class_label: str, test_image: Any, total: Any, n_train: int,
                      groups: Sequence[tuple[str, Sequence[tuple[int, float, Any]]]], train_display: Any = None,
                      train_labels: Any = None, class_names: Sequence[str] | None = None) -> ImageStrip:
    """The sensitivity-map decomposition figure of one test point (seed 001, the zebra/moose figure).

    ``total``: the whole map (gradient of the explained logit); ``groups``: ("POSITIVE"/"NEGATIVE",
    [(train index, score, decomposed map), ...]). The decomposed maps share one colour scale.
    """
    maps = [np.asarray(_display(m)) for _, members in groups for _, _, m in members]
    vmax = max((float(np.abs(m).max()) for m in maps), default=0.0)
    images = [("test image", _display(test_image)), (f"whole map (sum over all {n_train})", _signed_map(total))]
    labels = [("TEST", 2)]
    for name, members in groups:
        for i, score, m in members:
            label = "" if train_labels is None else f", label {_label(train_labels[i], class_names)}"
            shown = _display(train_display[i]) if train_display is not None else np.zeros((2, 2))
            images += [(f"train id {i}{label}, score {float(score):+.3g}", shown),
                       ("its decomposed map", _signed_map(m, vmax))]
        labels.append((name, 2 * len(members)))
    return ImageStrip(
        f"{method}: sensitivity map of class {class_label}, decomposed over training examples", images,
        "d logit / d input split into one map per training example (seed 001, section 4.3): the maps of all "
        "training examples add up to the whole map. Red raises the logit, blue lowers it; the decomposed maps "
        f"share one scale (max |v| {vmax:.3g} logit per unit of input).", groups=labels)
