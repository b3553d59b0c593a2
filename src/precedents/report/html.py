"""Self-contained HTML reports: for a test point, the training examples a prediction rests on.

The layout follows the figures of the Representer Point Selection paper (Yeh et al., 2018): the test
example on the left, and for each attribution method a column with a row of POSITIVE training examples
(proponents, most positive first) above a row of NEGATIVE ones (opponents, most negative first).

The output is one HTML file with inline CSS and images embedded as base64 PNG data URIs: no JavaScript,
no external resources, opens from disk. Everything that comes from the caller is HTML-escaped.
Only numpy and the standard library are used.
"""

from __future__ import annotations

import math
import numbers
import os
import pathlib
import re
import tempfile
from dataclasses import dataclass, field
from html import escape

import numpy as np

from .png import encode_png, signed_to_rgb, to_data_uri, upscale

__all__ = [
    "Example",
    "ImageStrip",
    "MethodPanel",
    "Case",
    "Table",
    "Report",
    "render_html",
    "write_html",
    "format_score",
    "format_value",
]

# Displayed size (longest side, CSS px) of training-example images and of the test image / extra images.
# A 28x28 MNIST digit is upscaled by 3 (84 px) in the cards and by 4 (112 px) for the test point.
EXAMPLE_IMAGE_PX = 84
TEST_IMAGE_PX = 112
#: table cells with more characters than this wrap (diagnostics, setup notes)
LONG_CELL = 80


@dataclass
class Example:
    """One training or test example as shown to a person."""

    index: int  # its id in its dataset ("train id 123")
    label: str  # true/given label, already formatted
    pred: str  # model's predicted label
    score: float | None = None  # attribution score (None for the test point itself)
    image: np.ndarray | None = None  # 2-D grayscale in [0,1], or (H,W,3) RGB in [0,1]
    row: dict[str, object] | None = None  # tabular data: feature name -> value (shown as a small table)
    caption: str | None = None  # extra line, e.g. "misclassified"


@dataclass
class MethodPanel:
    method: str  # e.g. "RPS-l2", "RPS-LJE"
    positive: list[Example]  # top proponents, most positive first
    negative: list[Example]  # top opponents, most negative first
    note: str | None = None  # e.g. "explained logit 7.31, reproduced 7.31"


@dataclass
class ImageStrip:
    """A captioned row of images under a case: feature attributions, or a sensitivity-map decomposition.

    ``images``: (caption, image) pairs; an image is grayscale/RGB in [0, 1] (a signed map is passed already
    coloured, e.g. with :func:`~precedents.report.png.signed_to_rgb`). ``groups`` optionally splits the row
    into labelled groups of consecutive images: (label, count) pairs.
    """

    title: str
    images: list[tuple[str, np.ndarray]]
    note: str | None = None
    groups: list[tuple[str, int]] | None = None


@dataclass
class Case:
    """One test point explained by several methods."""

    title: str  # e.g. "Correctly classified" / "Misclassified"
    test: Example
    panels: list[MethodPanel]  # shown side by side (columns), positives row above negatives row
    extra_images: list[tuple[str, np.ndarray]] = field(default_factory=list)  # optional captioned images
    strips: list[ImageStrip] = field(default_factory=list)  # full-width rows under the panels


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[object]]  # floats shown to 4 significant digits, ints as is
    caption: str | None = None


@dataclass
class Report:
    title: str
    intro: str  # plain text; a blank line separates paragraphs
    tables: list[Table]
    cases: list[Case]
    footer: str | None = None


# --------------------------------------------------------------------------------------------------
# Formatting helpers


def format_score(score: float | None) -> str:
    """Attribution score with an explicit sign and 4 significant digits: ``+0.0123``, ``-1.5``."""
    return "" if score is None else _format_real(float(score), signed=True)


def _format_real(v: float, *, signed: bool) -> str:
    """4 significant digits; nan, inf and 0 spelled out; a leading + on positives when ``signed``."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return ("+inf" if signed else "inf") if v > 0 else "-inf"
    if v == 0:
        return "0"
    return f"{v:+.4g}" if signed else f"{v:.4g}"


def format_value(value: object) -> str:
    """A table cell as text: floats to 4 significant digits, ints as is, None as an en dash."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if value is None:
        return "\u2013"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return _format_real(float(value), signed=False)
    return str(value)


def _is_numeric(value: object) -> bool:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return isinstance(value, numbers.Number) and not isinstance(value, (bool, np.bool_))


def _esc(text: object) -> str:
    return escape(str(text), quote=True)


def _paragraphs(text: str, cls: str | None = None) -> str:
    """Plain text to <p> elements: a blank line separates paragraphs, single newlines are spaces."""
    attr = f' class="{cls}"' if cls else ""
    blocks = [" ".join(b.split()) for b in re.split(r"\n[ \t\r\f\v]*\n", text.replace("\r\n", "\n"))]
    return "".join(f"<p{attr}>{_esc(b)}</p>" for b in blocks if b)


def _misclassified(ex: Example) -> bool:
    return str(ex.label).strip() != str(ex.pred).strip()


# --------------------------------------------------------------------------------------------------
# Images


def _as_image(image: np.ndarray, signed: bool = False) -> np.ndarray:
    """Bring an image to (H, W) or (H, W, 3|4) floats in [0, 1].

    Accepts a flat square vector (e.g. 784 -> 28x28), (1, H, W) / (H, W, 1), and channel-first
    (3, H, W). uint8 images are divided by 255. Other values outside [0, 1] are min-max scaled for
    display, except that with ``signed=True`` a 2-D map with negative values gets the diverging
    blue-white-red colour map (symmetric around 0).
    """
    a = np.asarray(image)
    if a.ndim == 1:
        side = math.isqrt(a.size)
        if side * side != a.size:
            raise ValueError(f"cannot show a flat image of length {a.size} (not a square)")
        a = a.reshape(side, side)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"expected a (H, W) or (H, W, 3) image, got shape {np.shape(image)}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros_like(a)
    lo, hi = float(finite.min()), float(finite.max())
    if signed and a.ndim == 2 and lo < 0:
        return signed_to_rgb(a)
    if lo < -1e-6 or hi > 1 + 1e-6:
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0)


def _img_tag(image: np.ndarray, target_px: int, alt: str, signed: bool = False) -> tuple[str, int]:
    """<img> with a data URI; small images are upscaled (nearest) by an integer factor.

    Returns the tag and its displayed width in CSS px."""
    a = _as_image(image, signed=signed)
    h, w = a.shape[:2]
    longest = max(h, w)
    factor = max(1, round(target_px / longest))
    png = encode_png(upscale(a, factor))
    dh, dw = h * factor, w * factor
    cls = "px"
    if max(dh, dw) > 1.5 * target_px:  # large image: show it scaled down, smoothly
        scale = target_px / max(dh, dw)
        dh, dw = max(1, round(dh * scale)), max(1, round(dw * scale))
        cls = "smooth"
    tag = (
        f'<img class="{cls}" src="{to_data_uri(png)}" width="{dw}" height="{dh}" '
        f'style="width:{dw}px;height:{dh}px" alt="{_esc(alt)}">'
    )
    return tag, dw


# --------------------------------------------------------------------------------------------------
# HTML pieces


def _kv_table(row: dict[str, object]) -> str:
    body = "".join(
        f'<tr><th scope="row">{_esc(k)}</th><td>{_esc(format_value(v))}</td></tr>' for k, v in row.items()
    )
    return f'<table class="kv">{body}</table>'


def _card(ex: Example, kind: str) -> str:
    """kind: 'pos', 'neg' or 'test'."""
    prefix = "test id" if kind == "test" else "train id"
    target = TEST_IMAGE_PX if kind == "test" else EXAMPLE_IMAGE_PX
    mis = _misclassified(ex)
    classes = ["card", kind] + (["mis"] if mis else [])
    style = ""
    if ex.row is not None:
        visual = _kv_table(ex.row)
        classes.append("tab")
    elif ex.image is not None:
        visual, width = _img_tag(ex.image, target, f"{prefix} {ex.index}")
        style = f' style="width:{max(width, target) + 14}px"'
    else:
        visual = f'<div class="noimg" style="width:{target}px;height:{target}px">no image</div>'
        style = f' style="width:{target + 14}px"'
    pred_cls = "pred wrong" if mis else "pred"
    parts = [
        f'<div class="{" ".join(classes)}"{style}>',
        f'<div class="visual">{visual}</div>',
        f'<div class="id">{prefix} {_esc(ex.index)}</div>',
        f'<div class="lp">label <b>{_esc(ex.label)}</b>, '
        f'predicted <b class="{pred_cls}">{_esc(ex.pred)}</b></div>',
    ]
    if ex.score is not None:
        s = float(ex.score)
        sign = "spos" if s > 0 else "sneg" if s < 0 else "szero"
        parts.append(f'<div class="score {sign}" title="attribution score">{_esc(format_score(s))}</div>')
    if mis:
        parts.append('<div class="badge" title="label differs from prediction">misclassified</div>')
    if ex.caption:
        parts.append(f'<div class="cap">{_esc(ex.caption)}</div>')
    parts.append("</div>")
    return "".join(parts)


def _example_row(examples: list[Example], kind: str) -> str:
    name = "POSITIVE" if kind == "pos" else "NEGATIVE"
    hint = "proponents, most positive first" if kind == "pos" else "opponents, most negative first"
    cards = "".join(_card(e, kind) for e in examples) or '<div class="empty">none</div>'
    return (
        f'<div class="exrow {kind}"><div class="rowhead"><span class="rowname">{name}</span>'
        f' <span class="rowhint">{hint}</span></div><div class="cards">{cards}</div></div>'
    )


def _panel(panel: MethodPanel) -> str:
    note = f'<div class="note">{_esc(panel.note)}</div>' if panel.note else ""
    return (
        f'<div class="panel"><h3 class="method">{_esc(panel.method)}</h3>{note}'
        f"{_example_row(panel.positive, 'pos')}{_example_row(panel.negative, 'neg')}</div>"
    )


def _figure(caption: str, image: np.ndarray) -> str:
    return (f'<figure class="extra">{_img_tag(image, EXAMPLE_IMAGE_PX, str(caption), signed=True)[0]}'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _strip(strip: ImageStrip) -> str:
    groups = strip.groups or [("", len(strip.images))]
    parts, start = [], 0
    for label, count in groups:
        figures = "".join(_figure(c, img) for c, img in strip.images[start:start + count])
        head = f'<div class="glabel">{_esc(label)}</div>' if label else ""
        parts.append(f'<div class="sgroup">{head}<div class="sfigs">{figures}</div></div>')
        start += count
    note = f'<div class="note">{_esc(strip.note)}</div>' if strip.note else ""
    return f'<div class="strip"><h3 class="method">{_esc(strip.title)}</h3>{note}<div class="sgroups">' \
           f'{"".join(parts)}</div></div>'


def _case(case: Case, number: int) -> str:
    extras = "".join(
        f'<figure class="extra">{_img_tag(img, TEST_IMAGE_PX, str(cap), signed=True)[0]}'
        f"<figcaption>{_esc(cap)}</figcaption></figure>"
        for cap, img in case.extra_images
    )
    mis = " mis" if _misclassified(case.test) else ""
    panels = "".join(_panel(p) for p in case.panels) or '<div class="empty">no methods</div>'
    return (
        f'<section class="case{mis}" id="case-{number}">'
        f'<h2><span class="casenum">Case {number}</span> {_esc(case.title)}</h2>'
        f'<div class="casebody"><div class="testcol"><div class="colhead">TEST</div>'
        f"{_card(case.test, 'test')}{extras}</div>"
        f'<div class="panels">{panels}</div></div>{"".join(_strip(s) for s in case.strips)}</section>'
    )


def _table(table: Table) -> str:
    head = "".join(f'<th scope="col">{_esc(c)}</th>' for c in table.columns)
    body = []
    def kind(value: object, text: str) -> str:
        if _is_numeric(value):
            return "num"
        return "txt long" if len(text) > LONG_CELL else "txt"   # long text wraps instead of widening the table

    for row in table.rows:
        texts = [format_value(v) for v in row]
        cells = "".join(f'<td class="{kind(v, t)}">{_esc(t)}</td>' for v, t in zip(row, texts, strict=True))
        body.append(f"<tr>{cells}</tr>")
    cap = f'<p class="tcap">{_esc(table.caption)}</p>' if table.caption else ""
    return (
        f'<section class="tablebox"><h2>{_esc(table.title)}</h2><div class="tscroll">'
        f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        f"</div>{cap}</section>"
    )


_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d8dee4;--bg:#f5f6f8;--card:#fff;
--pos:#1a7f37;--pos-bg:#eef8f0;--neg:#c62828;--neg-bg:#fdf0f0;--mis:#b35900;--mis-bg:#fff4e0;}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif}
main{max-width:1800px;margin:0 auto;padding:24px 28px 40px}
h1{font-size:24px;margin:0 0 10px;font-weight:650}
h2{font-size:17px;margin:0 0 10px;font-weight:620}
h3{font-size:14px;margin:0}
p{margin:0 0 8px;max-width:110ch}
header{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:18px 22px;
margin-bottom:18px}
.intro{color:#2d333a}
.legend{display:flex;flex-wrap:wrap;gap:18px;margin-top:10px;font-size:12.5px;color:var(--muted)}
.legend span{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block;width:14px;height:14px;border-radius:3px;border:2px solid}
.sw.pos{border-color:var(--pos);background:var(--pos-bg)}
.sw.neg{border-color:var(--neg);background:var(--neg-bg)}
.sw.mis{border-color:var(--mis);background:var(--mis-bg)}
nav{font-size:13px;margin:0 0 18px;color:var(--muted)}
nav a{color:#0b5cad;text-decoration:none;margin-right:14px}
nav a:hover{text-decoration:underline}
.tablebox,.case{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 20px;
margin-bottom:18px}
.tscroll{overflow-x:auto}
table.data{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
table.data th,table.data td{padding:5px 12px;border-bottom:1px solid #e6e9ed;text-align:left;
white-space:nowrap}
table.data thead th{border-bottom:2px solid #c9d1d9;background:#f6f8fa;font-weight:600}
table.data td.num{text-align:right}
table.data td.long{white-space:normal;min-width:50ch;max-width:100ch}
table.data tbody tr:nth-child(even){background:#fafbfc}
.tcap{font-size:12.5px;color:var(--muted);margin:8px 0 0}
.casenum{display:inline-block;font-size:12px;font-weight:600;color:var(--muted);background:#eef1f4;
border-radius:4px;padding:1px 7px;margin-right:6px;vertical-align:2px}
.case.mis h2{color:var(--mis)}
.casebody{display:flex;gap:18px;align-items:flex-start}
.testcol{flex:0 0 auto;display:flex;flex-direction:column;gap:10px;align-items:flex-start;
padding-right:18px;border-right:1px solid var(--line)}
.colhead{font-size:11px;font-weight:700;letter-spacing:.08em;color:var(--muted)}
.panels{display:flex;flex-wrap:wrap;gap:16px;flex:1 1 auto;min-width:0}
.panel{border:1px solid var(--line);border-radius:6px;padding:10px 12px;background:#fcfcfd;min-width:0}
.method{font-size:15px;font-weight:650;margin-bottom:2px}
.note{font-size:12px;color:var(--muted);margin-bottom:6px}
.exrow{margin-top:8px}
.rowhead{font-size:11px;margin-bottom:4px}
.rowname{font-weight:700;letter-spacing:.08em}
.rowhint{color:var(--muted)}
.exrow.pos .rowname{color:var(--pos)}
.exrow.neg .rowname{color:var(--neg)}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:6px;font-size:11.5px;
line-height:1.3;overflow-wrap:anywhere}
.card.pos{border-color:#b7dfc2;border-top:3px solid var(--pos)}
.card.neg{border-color:#f1c0c0;border-top:3px solid var(--neg)}
.card.test{border-top:3px solid #57606a;font-size:12.5px}
.card.mis{background:var(--mis-bg)}
.card.tab{max-width:260px}
.visual{margin-bottom:4px;line-height:0}
.visual table{line-height:1.3}
img{display:block;border-radius:2px}
figure.extra img{outline:1px solid var(--line)}
img.px{image-rendering:-moz-crisp-edges;image-rendering:crisp-edges;image-rendering:pixelated}
.noimg{display:flex;align-items:center;justify-content:center;background:#eef1f4;color:var(--muted);
font-size:11px;line-height:1.2}
.id{font-weight:600}
.lp{color:#2d333a}
.pred.wrong{color:var(--mis)}
.score{font-weight:700;font-variant-numeric:tabular-nums;font-size:12.5px;margin-top:2px}
.score.spos{color:var(--pos)}
.score.sneg{color:var(--neg)}
.score.szero{color:var(--muted)}
.badge{display:inline-block;margin-top:3px;font-size:10px;font-weight:600;white-space:nowrap;
color:#fff;background:var(--mis);border-radius:3px;padding:0 5px}
.cap{color:var(--muted);margin-top:2px}
.empty{color:var(--muted);font-style:italic;font-size:12px;padding:6px 0}
table.kv{border-collapse:collapse;font-size:11px;font-variant-numeric:tabular-nums}
table.kv th{font-weight:500;color:var(--muted);text-align:left;padding:1px 8px 1px 0;white-space:nowrap}
table.kv td{text-align:right;padding:1px 0}
figure.extra{margin:0;font-size:11.5px;color:var(--muted)}
figure.extra figcaption{margin-top:3px;max-width:140px}
footer{font-size:12px;color:var(--muted);margin-top:8px}
h2.part{font-size:19px;margin:28px 0 12px}
.strip{border-top:1px solid var(--line);margin-top:14px;padding-top:10px}
.sgroups,.sfigs{display:flex;flex-wrap:wrap;gap:10px}
.sgroups{gap:18px}
.sgroup{border:1px solid var(--line);border-radius:6px;padding:6px 8px;background:#fcfcfd}
.glabel{font-size:11px;font-weight:700;letter-spacing:.06em;color:var(--muted);margin-bottom:4px}
@media (max-width:900px){.casebody{flex-direction:column}.testcol{border-right:0;padding-right:0}}
@media print{body{background:#fff}.case,.tablebox,.card{break-inside:avoid}}
"""


def render_html(report: Report) -> str:
    """The whole report as one self-contained HTML document (a string)."""
    legend = (
        '<div class="legend">'
        '<span><i class="sw pos"></i>POSITIVE: proponents (positive score)</span>'
        '<span><i class="sw neg"></i>NEGATIVE: opponents (negative score)</span>'
        '<span><i class="sw mis"></i>misclassified (label \u2260 prediction)</span>'
        "</div>"
    )
    nav = ""
    if len(report.cases) > 1 or (report.cases and report.tables):
        links = "".join(
            f'<a href="#case-{i}">{i}. {_esc(c.title)}</a>' for i, c in enumerate(report.cases, start=1)
        )
        more = '<a href="#details">Setup and diagnostics</a>' if report.tables else ""
        nav = f"<nav>Cases: {links}{more}</nav>"
    # the cases lead; the setup and diagnostics tables follow them
    tables = "".join(_table(t) for t in report.tables)
    if tables and report.cases:
        tables = f'<h2 class="part" id="details">Setup and diagnostics</h2>{tables}'
    cases = "".join(_case(c, i) for i, c in enumerate(report.cases, start=1))
    footer = f"<footer>{_paragraphs(report.footer)}</footer>" if report.footer else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(report.title)}</title><style>{_CSS}</style></head>\n<body><main>"
        f'<header><h1>{_esc(report.title)}</h1><div class="intro">{_paragraphs(report.intro)}</div>'
        f"{legend}</header>{nav}{cases}{tables}{footer}</main></body></html>\n"
    )


def write_html(report: Report, path: str | os.PathLike) -> pathlib.Path:
    """Render ``report`` and write it to ``path`` atomically (temp file in the same folder, then
    ``os.replace``). Creates the parent folder if needed. Returns the path written."""
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = render_html(report)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates the file 0600; a report is meant to be shared
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target
