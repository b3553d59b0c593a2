"""Renderers of results: self-contained HTML reports, PNG images, review lists, text tables, top-k files.

Nothing here computes an attribution or asks an estimator anything: callers pass results
(:class:`MethodResult`, arrays, tables). ``Report`` holds tables and ``Case``s; a case shows one test ``Example``
and, per attribution method, a ``MethodPanel`` with a POSITIVE (proponents) row above a NEGATIVE (opponents)
row. ``render_html`` gives the HTML as a string, ``write_html`` writes it atomically.
"""

from .build import MethodResult, build_report, feature_strip, method_tables, precedents_table, sensitivity_strip
from .html import (
    Case,
    Example,
    ImageStrip,
    MethodPanel,
    Report,
    Table,
    format_score,
    format_value,
    render_html,
    write_html,
)
from .png import encode_png, signed_to_rgb, to_data_uri, upscale
from .review import review_rows, write_review
from .text import table_text
from .topk import write_top_k

__all__ = [
    "Case",
    "Example",
    "ImageStrip",
    "MethodPanel",
    "MethodResult",
    "Report",
    "Table",
    "build_report",
    "encode_png",
    "feature_strip",
    "format_score",
    "format_value",
    "method_tables",
    "precedents_table",
    "render_html",
    "review_rows",
    "sensitivity_strip",
    "signed_to_rgb",
    "table_text",
    "to_data_uri",
    "upscale",
    "write_html",
    "write_review",
    "write_top_k",
]
