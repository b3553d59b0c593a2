"""Minimal, dependency-free PNG encoding (numpy + zlib + struct only).

Used by the HTML report to embed images as base64 data URIs without Pillow or matplotlib.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

__all__ = ["encode_png", "upscale", "signed_to_rgb", "to_data_uri"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types by number of channels: grey, grey+alpha, RGB, RGBA.
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}

# Diverging palette ends (ColorBrewer RdBu): strong blue for negative, strong red for positive.
_NEG_RGB = np.array([33, 102, 172], dtype=np.float64) / 255.0
_POS_RGB = np.array([178, 24, 43], dtype=np.float64) / 255.0


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (clipped, NaN -> 0) or booleans to uint8; uint8 passes through unchanged."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_png(array: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode an image as PNG bytes.

    ``array`` is either 2-D ``(H, W)`` grayscale or ``(H, W, C)`` with C in {1, 2, 3, 4}
    (grey, grey+alpha, RGB, RGBA). Float values are taken to lie in [0, 1] and are clipped there
    (NaN becomes 0); a ``uint8`` array is written as is. The result is an 8-bit PNG, no interlacing.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in _COLOR_TYPE:
        raise ValueError(f"expected an (H, W) or (H, W, C) array with C in 1..4, got shape {np.shape(array)}")
    h, w, c = a.shape
    if h == 0 or w == 0:
        raise ValueError(f"cannot encode an empty image of shape {np.shape(array)}")
    pixels = np.ascontiguousarray(_to_uint8(a)).reshape(h, w * c)
    # Every scanline starts with its filter type byte; 0 = no filter.
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), pixels], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[c], 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, compress_level))
        + _chunk(b"IEND", b"")
    )


def upscale(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of the first two axes by an integer ``factor`` (>= 1)."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    a = np.asarray(array)
    if factor == 1:
        return a
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


def signed_to_rgb(array: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Map a signed 2-D map to an ``(H, W, 3)`` RGB image in [0, 1]: blue < 0 < red, white at 0.

    The scale is symmetric around 0: ``vmax`` (default: the largest absolute finite value) maps to
    full red, ``-vmax`` to full blue. An all-zero map becomes plain white; NaN is shown as white.
    """
    a = np.asarray(array, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {a.shape}")
    a = np.nan_to_num(a, nan=0.0)
    if vmax is None:
        finite = np.abs(a[np.isfinite(a)])
        vmax = float(finite.max()) if finite.size else 0.0
    vmax = float(vmax)
    t = np.clip(a / vmax, -1.0, 1.0) if vmax > 0 else np.zeros_like(a)
    mag = np.abs(t)[..., None]
    end = np.where((t >= 0)[..., None], _POS_RGB, _NEG_RGB)
    return (1.0 - mag) * 1.0 + mag * end


def to_data_uri(png_bytes: bytes, mime: str = "image/png") -> str:
    """``data:`` URI with the bytes base64-encoded, for use as an ``<img src>``."""
    return f"data:{mime};base64," + base64.b64encode(png_bytes).decode("ascii")
