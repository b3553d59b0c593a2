"""The top-k precedents of the shown test points as CSV and JSON (one record per test point, rank and sign)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from .build import MethodResult

__all__ = ["write_top_k"]

COLUMNS = ["method", "test_id", "kind", "rank", "train_index", "score", "train_label"]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_top_k(path_csv: str | os.PathLike, path_json: str | os.PathLike, results: Sequence[MethodResult],
                shown_ids: Sequence[int], k: int) -> None:
    """Write the k most positive and k most negative training examples of each shown test point.

    ``test_id`` is the test point's id in its data set (``shown_ids[position]``); ``score`` is in the method's
    units (the JSON states each method's measurement: quantity, units, sign): positive = supports the model's
    output for the test point.
    """
    records, measurements = [], {}
    for r in results:
        measurements[r.attribution.method] = r.attribution.measurement.to_dict()
        for row in r.attribution.top(k).records():
            row["test_id"] = int(shown_ids[row.pop("test")])
            records.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    _write_atomic(Path(path_csv), buf.getvalue())
    _write_atomic(Path(path_json), json.dumps({
        "sign_convention": "positive = supports the model's output for the test point (proponent)",
        "measurements": measurements, "records": records}, indent=1) + "\n")
