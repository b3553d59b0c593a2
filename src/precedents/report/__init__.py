"""Self-contained HTML reports of data attributions (numpy + stdlib only).

``Report`` holds tables and ``Case``s; a case shows one test ``Example`` and, per attribution method, a
``MethodPanel`` with a POSITIVE (proponents) row above a NEGATIVE (opponents) row. ``render_html`` gives
the HTML as a string, ``write_html`` writes it atomically.
"""

from .html import (
    Case,
    Example,
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

__all__ = [
    "Case",
    "Example",
    "MethodPanel",
    "Report",
    "Table",
    "format_score",
    "format_value",
    "render_html",
    "write_html",
    "encode_png",
    "signed_to_rgb",
    "to_data_uri",
    "upscale",
    "review_rows",
    "write_review",
]
