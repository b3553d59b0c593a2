"""Plain-text rendering of report tables, for the terminal."""

from __future__ import annotations

from .html import Table, format_value

__all__ = ["table_text"]


def table_text(table: Table) -> str:
    """A table as aligned plain text: its title, the header, one line per row."""
    rows = [[format_value(v) for v in row] for row in table.rows]
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) if rows else len(str(c))
              for i, c in enumerate(table.columns)]
    lines = [table.title, "  ".join(str(c).ljust(w) for c, w in zip(table.columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
