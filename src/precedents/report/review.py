"""A review list for dataset debugging: the training examples to check first, as HTML and CSV.

``write_review(out_dir, result, ...)`` reads a :class:`~precedents.evaluate.mislabel.MislabelResult` and
writes ``review.html`` (self-contained, the report styling of :mod:`precedents.report.html`; images for image
data, one row of feature values per example for tabular data) and ``review.csv``: rank, training index, given
label, predicted label, and every method's self-score and rank, in the review order of one method (larger
score = check first). A person fixes what is wrong in a corrections CSV (header ``index,label``) that
``precedents debug --corrections`` reads back.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .html import _CSS, Table, _esc, _img_tag, _paragraphs, _table, format_score, format_value

__all__ = ["review_rows", "write_review"]

#: Displayed size (CSS px) of an example image in the list: a 28x28 digit upscaled twice.
REVIEW_IMAGE_PX = 56

_REVIEW_CSS = """
table.review td.img{padding:3px 8px}
table.review tr.disagree td.pred{color:var(--mis);font-weight:650}
table.review tr.flipped td.idx::after{content:" \\2691";color:var(--neg)}
"""


def _label(value: Any, names: Sequence[str] | None) -> str:
    value = int(value)
    return names[value] if names is not None and 0 <= value < len(names) else str(value)


def review_rows(result: Any, method: str | None = None, top: int = 100) -> list[dict[str, Any]]:
    """The first ``top`` examples in ``method``'s review order (default: the result's first method), as dicts:
    rank, index, given_label, predicted_label, [flipped], then ``<method> score`` and ``<method> rank``."""
    method = method or result.methods[0]
    order = result.order(method)[: max(0, int(top))]
    ranks = {m: np.empty(len(s), dtype=np.int64) for m, s in result.scores.items()}
    for m, r in ranks.items():
        r[result.order(m)] = np.arange(1, len(r) + 1)
    rows = []
    for rank, i in enumerate(order, start=1):
        row: dict[str, Any] = {"rank": rank, "index": int(i), "given_label": int(result.labels[i]),
                               "predicted_label": int(result.predictions[i])}
        if result.flipped is not None:
            row["flipped"] = bool(result.flipped[i])
        for m, s in result.scores.items():
            row[f"{m} score"] = float(s[i])
            row[f"{m} rank"] = int(ranks[m][i])
        rows.append(row)
    return rows


def write_review(out_dir: str | os.PathLike, result: Any, *, method: str | None = None, top: int = 100,
                 images: Any = None, rows: Any = None, class_names: Sequence[str] | None = None,
                 title: str = "precedents debug: training labels to check first",
                 summary: Table | None = None, note: str | None = None) -> tuple[Path, Path]:
    """Write ``review.html`` and ``review.csv`` into ``out_dir``; returns their paths.

    images: the training inputs for display, indexable by training index (e.g. (n, 1, 28, 28) in [0, 1]);
    rows: tabular data for display instead, a pandas DataFrame or a sequence of dicts (feature -> value);
    neither: the HTML lists numbers only. class_names: display names of the classes (the CSV keeps indices).
    summary: an extra table shown above the list (e.g. the detection summary); note: a paragraph of text.
    """
    method = method or result.methods[0]
    listed = review_rows(result, method, top)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "review.csv"
    columns = list(listed[0]) if listed else ["rank", "index", "given_label", "predicted_label"]
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(listed)

    if rows is not None and hasattr(rows, "iloc"):
        feature_names = [str(c) for c in rows.columns]
        get_row = lambda i: [rows.iloc[i][c] for c in rows.columns]  # noqa: E731
    elif rows is not None:
        feature_names = [str(k) for k in rows[0]]
        get_row = lambda i: list(rows[i].values())  # noqa: E731
    else:
        feature_names, get_row = [], None

    head = ["rank", "example" if images is not None else None, "train id", "given label", "predicted"]
    head = [h for h in head if h] + [f"{m}" for m in result.methods] + feature_names
    body = []
    for row in listed:
        i = row["index"]
        disagree = row["given_label"] != row["predicted_label"]
        classes = " ".join(c for c in ("disagree" if disagree else "", "flipped" if row.get("flipped") else "") if c)
        cells = [f'<td class="num">{row["rank"]}</td>']
        if images is not None:
            image = images[i]
            image = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
            tag, _ = _img_tag(image.squeeze(), REVIEW_IMAGE_PX, f"train id {i}")
            cells.append(f'<td class="img">{tag}</td>')
        cells.append(f'<td class="num idx">{i}</td>')
        cells.append(f'<td class="txt">{_esc(_label(row["given_label"], class_names))}</td>')
        cells.append(f'<td class="txt pred">{_esc(_label(row["predicted_label"], class_names))}</td>')
        for m in result.methods:
            bold = ' style="font-weight:650"' if m == method else ""
            cells.append(f'<td class="num"{bold}>{_esc(format_score(row[f"{m} score"]).lstrip("+"))} '
                         f'<span style="color:var(--muted)">#{row[f"{m} rank"]}</span></td>')
        if get_row is not None:
            for value in get_row(i):
                cells.append(f'<td class="txt">{_esc(format_value(value))}</td>')
        body.append(f'<tr class="{classes}">{"".join(cells)}</tr>')
    head_html = "".join(f'<th scope="col">{_esc(h)}</th>' for h in head)
    intro = (f"The {len(listed)} training examples to check first, in the order of {method}'s self-score "
             "(largest first). Each method column gives its score and, after #, the rank at which that method "
             "would show the example. A predicted label in orange differs from the given one."
             + (" A flag after the train id marks a label flipped on purpose (the experiment's ground truth)."
                if result.flipped is not None else "")
             + "\n\nTo fix labels, write a CSV with the header index,label (training index, corrected class "
             "index) and run precedents debug again with --corrections FILE."
             + (f"\n\n{note}" if note else ""))
    units = "; ".join(f"{m}: {u}" for m, u in result.units.items())
    html = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}{_REVIEW_CSS}</style></head>\n<body><main>"
        f'<header><h1>{_esc(title)}</h1><div class="intro">{_paragraphs(intro)}</div></header>'
        + (_table(summary) if summary is not None else "")
        + f'<section class="tablebox"><h2>Review list ({_esc(method)} order)</h2><div class="tscroll">'
        f'<table class="data review"><thead><tr>{head_html}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        f'</div><p class="tcap">Scores: {_esc(units)}.</p></section>'
        f"<footer>{_paragraphs('Written by precedents debug. The CSV next to this file has the same rows.')}"
        "</footer></main></body></html>\n")
    html_path = out / "review.html"
    tmp = html_path.with_name(f".{html_path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, html_path)
    return html_path, csv_path
