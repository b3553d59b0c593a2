"""Tests of the dependency-free HTML report (precedents.report)."""

from __future__ import annotations

import base64
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from precedents.report import (
    Case,
    Example,
    MethodPanel,
    Report,
    Table,
    encode_png,
    format_score,
    format_value,
    render_html,
    signed_to_rgb,
    to_data_uri,
    upscale,
    write_html,
)

# --------------------------------------------------------------------------------------------------
# A minimal PNG decoder (only what encode_png writes: 8-bit, no interlace, any filter type)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> tuple[dict, np.ndarray]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, [], b""
    header = None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind!r}"
        chunks.append(kind)
        if kind == b"IHDR":
            w, h, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", body)
            header = dict(width=w, height=h, depth=depth, color_type=ctype, interlace=interlace)
            assert (comp, filt) == (0, 0)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    assert header is not None and header["depth"] == 8 and header["interlace"] == 0
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[header["color_type"]]
    w, h = header["width"], header["height"]
    raw = zlib.decompress(idat)
    stride = w * channels
    assert len(raw) == h * (stride + 1)
    out = bytearray()
    prev = bytearray(stride)
    for y in range(h):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            line[i] = (line[i] + (0, a, b, (a + b) // 2, _paeth(a, b, c))[ftype]) & 0xFF
        out += line
        prev = line
    pixels = np.frombuffer(bytes(out), dtype=np.uint8).reshape(h, w, channels)
    return header, pixels


def _png_from_uri(uri: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return base64.b64decode(uri[len(prefix) :], validate=True)


# --------------------------------------------------------------------------------------------------
# PNG


def test_png_grayscale_round_trip():
    rng = np.random.default_rng(0)
    img = rng.random((7, 11))
    img[0, 0], img[0, 1], img[0, 2] = 0.0, 1.0, np.nan
    img[1, 0], img[1, 1] = -3.0, 7.0  # clipped
    header, pix = decode_png(encode_png(img))
    assert header["width"] == 11 and header["height"] == 7 and header["color_type"] == 0
    expected = np.rint(np.clip(np.nan_to_num(img, nan=0.0), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(pix[:, :, 0], expected)
    assert pix[0, 0, 0] == 0 and pix[0, 1, 0] == 255 and pix[0, 2, 0] == 0
    assert pix[1, 0, 0] == 0 and pix[1, 1, 0] == 255


def test_png_rgb_round_trip_and_uint8_passthrough():
    rng = np.random.default_rng(1)
    img = rng.random((5, 3, 3))
    header, pix = decode_png(encode_png(img))
    assert (header["width"], header["height"], header["color_type"]) == (3, 5, 2)
    np.testing.assert_array_equal(pix, np.rint(img * 255).astype(np.uint8))
    u8 = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(u8))[1], u8)


def test_png_decodes_with_pillow_if_available():
    Image = pytest.importorskip("PIL.Image")
    import io

    img = np.linspace(0, 1, 12 * 9).reshape(12, 9)
    with Image.open(io.BytesIO(encode_png(img))) as im:
        assert im.size == (9, 12) and im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), np.rint(img * 255).astype(np.uint8))
    rgb = signed_to_rgb(np.linspace(-1, 1, 20).reshape(4, 5))
    with Image.open(io.BytesIO(encode_png(rgb))) as im:
        assert im.size == (5, 4) and im.mode == "RGB"


def test_png_rejects_bad_shapes():
    for bad in (np.zeros(5), np.zeros((2, 2, 5)), np.zeros((0, 3))):
        with pytest.raises(ValueError):
            encode_png(bad)


def test_upscale_nearest():
    a = np.array([[0.0, 1.0], [0.5, 0.25]])
    up = upscale(a, 3)
    assert up.shape == (6, 6)
    np.testing.assert_array_equal(up[:3, :3], 0.0)
    np.testing.assert_array_equal(up[:3, 3:], 1.0)
    np.testing.assert_array_equal(up[3:, 3:], 0.25)
    rgb = upscale(np.zeros((2, 3, 3)), 2)
    assert rgb.shape == (4, 6, 3)
    assert upscale(a, 1) is a or np.array_equal(upscale(a, 1), a)
    with pytest.raises(ValueError):
        upscale(a, 0)


def test_signed_to_rgb_diverging_and_symmetric():
    m = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]])
    rgb = signed_to_rgb(m)
    assert rgb.shape == (1, 5, 3) and rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_allclose(rgb[0, 2], [1, 1, 1])  # white at 0
    assert rgb[0, 4, 0] > rgb[0, 4, 2]  # positive: red
    assert rgb[0, 0, 2] > rgb[0, 0, 0]  # negative: blue
    # symmetric: |+1| and |-1| are equally far from white
    np.testing.assert_allclose(1 - rgb[0, 3], (1 - rgb[0, 4]) / 2)
    np.testing.assert_allclose(1 - rgb[0, 1], (1 - rgb[0, 0]) / 2)
    np.testing.assert_allclose(signed_to_rgb(np.zeros((2, 2))), 1.0)
    # explicit vmax clips
    np.testing.assert_allclose(signed_to_rgb(m, vmax=1.0)[0, 4], signed_to_rgb(m, vmax=1.0)[0, 3])


def test_to_data_uri():
    png = encode_png(np.zeros((2, 2)))
    uri = to_data_uri(png)
    assert _png_from_uri(uri) == png


# --------------------------------------------------------------------------------------------------
# HTML


def _ex(i, label="7", pred="7", score=None, image=True, **kw):
    rng = np.random.default_rng(i)
    return Example(i, label, pred, score, rng.random((28, 28)) if image else None, **kw)


def _report() -> Report:
    panels = [
        MethodPanel(
            "RPS-l2",
            [_ex(10, score=0.0123), _ex(11, score=0.01)],
            [_ex(12, label="1", pred="7", score=-0.5)],
            note="explained logit 7.31, reproduced 7.31",
        ),
        MethodPanel("RPS-LJE", [_ex(20, score=2.0)], [_ex(21, score=-1e-4)]),
    ]
    tab = MethodPanel(
        "RPS-l2",
        [Example(3, ">50K", ">50K", 0.2, row={"age": 39, "hours": 40.123456})],
        [Example(4, "<=50K", ">50K", -0.1, row={"age": 50, "hours": None})],
    )
    return Report(
        title="Demo report",
        intro="What you see.\n\nSign convention: positive supports the prediction.",
        tables=[
            Table("Fidelity", ["method", "r", "n"], [["RPS-l2", 0.987654321, 5000], ["RPS-LJE", 1e-7, 12]])
        ],
        cases=[
            Case(
                "Correctly classified",
                _ex(5727),
                panels,
                extra_images=[("sensitivity", np.linspace(-1, 2, 28 * 28).reshape(28, 28))],
            ),
            Case("Misclassified", _ex(99, label="3", pred="5"), panels[:1]),
            Case("Tabular", Example(1, ">50K", ">50K", row={"age": 30}), [tab]),
        ],
        footer="footer text",
    )


def test_formatting():
    assert format_score(0.0123) == "+0.0123"
    assert format_score(-1.5) == "-1.5"
    assert format_score(0.0) == "0"
    assert format_score(None) == ""
    assert format_value(0.987654321) == "0.9877"
    assert format_value(np.float32(2.5)) == "2.5"
    assert format_value(123456789) == "123456789"
    assert format_value(np.int64(7)) == "7"
    assert format_value(None) == "\u2013"
    assert format_value(True) == "True"
    assert format_value("x") == "x"


def test_render_contains_titles_methods_and_labels():
    report = _report()
    out = render_html(report)
    assert out.startswith("<!DOCTYPE html>")
    assert "<script" not in out.lower()
    for case in report.cases:
        assert case.title in out
        for panel in case.panels:
            assert panel.method in out
    assert "test id 5727" in out and "train id 10" in out
    assert "+0.0123" in out and "-0.5" in out
    assert "POSITIVE" in out and "NEGATIVE" in out
    assert "misclassified" in out
    assert "explained logit 7.31, reproduced 7.31" in out
    assert "<table" in out and "0.9877" in out and "1e-07" in out
    assert "image-rendering:pixelated" in out.replace(" ", "")
    assert "footer text" in out
    # self-contained: no external resources
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", out)
    assert "http://" not in out and "https://" not in out


def test_every_image_is_a_valid_data_uri():
    report = _report()
    out = render_html(report)
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', out)
    n_images = sum(
        (c.test.image is not None)
        + len(c.extra_images)
        + sum(e.image is not None for p in c.panels for e in p.positive + p.negative)
        for c in report.cases
    )
    assert len(srcs) == n_images == len(re.findall(r"<img\b", out))
    for src in srcs:
        header, pix = decode_png(_png_from_uri(src))
        assert header["width"] >= 84 and header["height"] >= 84  # 28x28 upscaled
    # the signed extra image became an RGB diverging map
    assert any(decode_png(_png_from_uri(s))[0]["color_type"] == 2 for s in srcs)


def test_mnist_image_upscaled_to_about_84px_and_pixel_exact():
    out = render_html(Report("t", "", [], [Case("c", _ex(0), [MethodPanel("m", [_ex(1, score=1.0)], [])])]))
    m = re.search(r'<img[^>]*src="([^"]*)"[^>]*width="(\d+)" height="(\d+)"[^>]*alt="train id 1"', out)
    assert m and (m.group(2), m.group(3)) == ("84", "84")
    _, pix = decode_png(_png_from_uri(m.group(1)))
    img = np.random.default_rng(1).random((28, 28))
    np.testing.assert_array_equal(pix[::3, ::3, 0], np.rint(img * 255).astype(np.uint8))


def test_flat_and_uint8_images_accepted():
    flat = (np.arange(784) % 256).astype(np.uint8)
    ex = Example(0, "1", "1", image=flat)
    out = render_html(Report("t", "", [], [Case("c", ex, [])]))
    (src,) = re.findall(r'<img[^>]*\ssrc="([^"]*)"', out)
    header, pix = decode_png(_png_from_uri(src))
    assert header["width"] == 28 * 4  # test image shown larger
    np.testing.assert_array_equal(pix[::4, ::4, 0], flat.reshape(28, 28))


def test_malicious_strings_are_escaped():
    evil = "<script>alert('x')</script>"
    ex = Example(1, evil, evil, 0.5, image=None, row={evil: evil}, caption=evil)
    report = Report(
        title=evil,
        intro=evil,
        tables=[Table(evil, [evil], [[evil]], caption=evil)],
        cases=[
            Case(
                evil, ex, [MethodPanel(evil, [ex], [ex], note=evil)], extra_images=[(evil, np.zeros((4, 4)))]
            )
        ],
        footer=evil,
    )
    out = render_html(report)
    assert "<script" not in out.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in out
    quote = 'a" onerror="alert(1)'
    out = render_html(Report("t", "", [], [Case("c", _ex(0), [], extra_images=[(quote, np.zeros((2, 2)))])]))
    assert 'onerror="' not in out


def test_misclassified_marked():
    out = render_html(Report("t", "", [], [Case("c", _ex(0, label="3", pred="5"), [])]))
    assert 'class="card test mis"' in out and "misclassified" in out
    out = render_html(Report("t", "", [], [Case("c", _ex(0, label="3", pred="3"), [])]))
    assert 'class="card test"' in out and ">misclassified<" not in out


def test_write_html_atomic(tmp_path: Path):
    report = _report()
    target = tmp_path / "sub" / "report.html"
    written = write_html(report, target)
    assert Path(written) == target and target.is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]
    text = target.read_text(encoding="utf-8")
    assert text == render_html(report)
    for case in report.cases:
        assert case.title in text
    # overwrite in place, still no temp file left
    report.title = "Second"
    write_html(report, str(target))
    assert "<title>Second</title>" in target.read_text(encoding="utf-8")
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_write_html_failure_leaves_no_temp_and_keeps_old(tmp_path: Path, monkeypatch):
    target = tmp_path / "r.html"
    target.write_text("old", encoding="utf-8")
    bad = Report("t", "", [], [Case("c", Example(0, "1", "1", image=np.zeros(7)), [])])  # not square
    with pytest.raises(ValueError):
        write_html(bad, target)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_html(_report(), target)
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_image_strips_render_grouped_and_escaped():
    from precedents.report.html import Case, Example, ImageStrip, Report, render_html
    from precedents.report.png import signed_to_rgb

    signed = signed_to_rgb(np.array([[-1.0, 0.0], [0.5, 1.0]]))
    strip = ImageStrip("RPS-l2: <sensitivity>", [("test image", np.eye(4)), ("whole map", signed),
                                                  ("train id 3", np.eye(4)), ("its decomposed map", signed)],
                       note="a & b", groups=[("TEST", 2), ("POSITIVE", 2)])
    case = Case("Correctly classified", Example(0, "1", "1", image=np.eye(4)), [], strips=[strip])
    html = render_html(Report("t", "i", [], [case]))
    assert "RPS-l2: &lt;sensitivity&gt;" in html and "a &amp; b" in html
    assert html.count('class="sgroup"') == 2 and ">POSITIVE</div>" in html
    assert html.count("data:image/png;base64") == 5          # the test card and the four strip images


def test_cases_lead_and_tables_follow():
    """The test points and their precedents come first; setup and diagnostics tables after them."""
    image = np.zeros((4, 4))
    case = Case("Misclassified", Example(7, "3", "5", image=image),
                [MethodPanel("RPS-l2", [Example(1, "3", "3", 0.5, image=image)],
                             [Example(2, "5", "5", -0.5, image=image)])])
    html = render_html(Report("t", "intro", [Table("Cost (seconds)", ["method", "fit"], [["RPS-l2", 1.0]])],
                              [case]))
    assert html.index('id="case-1"') < html.index('id="details"') < html.index("Cost (seconds)")
    assert '<a href="#details">' in html
