"""``precedents serve``: a local web explorer over an explorer bundle (see :mod:`precedents.serve.bundle`).

Write the bundle once with :func:`write_explorer_bundle` (``precedents demo`` and ``explain`` call it), then
``precedents serve DIR`` (or ``python -m precedents.serve DIR``). The app needs the ``serve`` extra
(starlette, uvicorn, jinja2); writing a bundle needs nothing beyond the core.
"""

from .bundle import Bundle, write_explorer_bundle

__all__ = ["Bundle", "write_explorer_bundle"]
