"""The explorer's ASGI app (Starlette): server-rendered pages, a JSON API mirroring them, and the security layer.

Security: every request needs the server's random token, given once in the printed URL (then kept in an
HttpOnly, SameSite=Strict cookie) or as ``Authorization: Bearer TOKEN`` for scripts. Requests that change state
(POST, DELETE) made with the cookie also need the page's CSRF token in the ``X-CSRF-Token`` header and, when the
browser sends one, a same-origin ``Origin``. While bound to loopback the ``Host`` header must name loopback (DNS
rebinding). No request names a file: ids are integers checked against the bundle, method keys come from the
bundle's manifest, images are rendered from the bundle's arrays.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import html
import logging
import math
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .._validation import PrecedentsError
from ..report.png import encode_png, signed_to_rgb, upscale
from .bundle import Bundle
from .decisions import DecisionStore
from .refit import HeadRefitter, apply_decisions, verify_claim

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
PAGE_SIZES = (24, 48, 96, 200)
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def _fmt(value: Any, digits: int = 4) -> str:
    """Numbers for pages: 4 significant digits, scientific beyond 1e5 or under 1e-3."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(value)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested diagnostics as rows: ``{"refit": {"converged": True}}`` -> ``[("refit · converged", True)]``."""
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        name = f"{prefix}{str(k).replace('_', ' ')}"
        if isinstance(v, dict):
            rows += _flatten(v, name + " · ")
        elif isinstance(v, list):
            rows.append((name, "; ".join(", ".join(f"{str(a).replace('_', ' ')} {_fmt(b)}" for a, b in x.items())
                                         if isinstance(x, dict) else _fmt(x) for x in v)))
        else:
            rows.append((name, v))
    return rows


class Explorer:
    """The state behind the app: the bundle (read-only), the decisions store, the refitter, the image cache."""

    def __init__(self, bundle: Bundle, store: DecisionStore, token: str, *, check_host: bool = True) -> None:
        self.bundle = bundle
        self.store = store
        self.token = token
        self.csrf = hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()
        self.cookie = "precedents_" + hashlib.sha256(token.encode()).hexdigest()[:10]
        self.check_host = check_host
        self._refitter: HeadRefitter | None = None
        self._orders: dict[str, np.ndarray] = {}
        self.image = functools.lru_cache(maxsize=8192)(self._image)

    @property
    def refitter(self) -> HeadRefitter:
        if self._refitter is None:
            self._refitter = HeadRefitter(self.bundle)
        return self._refitter

    def review_order(self, key: str) -> np.ndarray:
        """Training indices by decreasing self-influence under method ``key`` (computed once)."""
        if key not in self._orders:
            values = np.asarray(self.bundle.method_array(key, "self_influence"))
            self._orders[key] = np.argsort(-values, kind="stable")
        return self._orders[key]

    def _image(self, which: str, i: int, scale: int) -> bytes:
        if which.startswith("map-"):           # a signed feature map: red supports, blue opposes
            arr = signed_to_rgb(np.asarray(self.bundle.array(which)[i], dtype=np.float64))
        else:
            arr = np.asarray(self.bundle.array(f"{which}_display")[i])
        return encode_png(upscale(arr, scale), compress_level=1)


# ---------------------------------------------------------------------------------------------------------
# Security
# ---------------------------------------------------------------------------------------------------------

def _same(given: str, secret: str) -> bool:
    """Constant-time comparison that also takes non-ASCII input (refused, never an error)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode())


def _hostname(host: str) -> str:
    """The host part of a Host header: ``[::1]:8000`` -> ``[::1]``, ``127.0.0.1:8000`` -> ``127.0.0.1``."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


class Guard(BaseHTTPMiddleware):
    """Token (URL once, then cookie; or bearer header), loopback Host check, CSRF + Origin on state changes."""

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        ex: Explorer = request.app.state.explorer
        if ex.check_host and _hostname(request.headers.get("host", "")) not in LOOPBACK_HOSTS:
            return PlainTextResponse("Forbidden: this server answers only to 127.0.0.1 / localhost.", 403)
        given = request.query_params.get("token")
        bearer = request.headers.get("authorization", "")
        by_header = bearer.startswith("Bearer ") and _same(bearer[7:].strip(), ex.token)
        by_cookie = _same(request.cookies.get(ex.cookie, ""), ex.token)
        if given is not None and request.method == "GET" and _same(given, ex.token):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            resp = RedirectResponse(target, status_code=303)
            resp.set_cookie(ex.cookie, ex.token, httponly=True, samesite="strict", path="/")
            return resp
        if not (by_header or by_cookie):
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": "missing or wrong token: open the URL printed by `precedents "
                                              "serve` (it carries ?token=...), or send Authorization: Bearer TOKEN"},
                                    403)
            return PlainTextResponse("Forbidden: open the URL printed by `precedents serve` (it carries "
                                     "?token=...).", 403)
        if request.method in UNSAFE and not by_header:
            origin = request.headers.get("origin")
            if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
                return JSONResponse({"error": "cross-origin request refused"}, 403)
            if not _same(request.headers.get("x-csrf-token", ""), ex.csrf):
                return JSONResponse({"error": "missing or wrong X-CSRF-Token"}, 403)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                       "script-src 'self'; style-src 'self'; "
                                                       "frame-ancestors 'none'; form-action 'self'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        return response


# ---------------------------------------------------------------------------------------------------------
# Parameter checks: every id an integer in range, every method key from the bundle
# ---------------------------------------------------------------------------------------------------------

def _qint(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise HTTPException(400, f"{name} must lie in {lo}..{hi}, got {value}")
    return value


def _qfloat(request: Request, name: str, default: float, lo: float, hi: float) -> float:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a number, got {raw[:40]!r}") from None
    if not (lo <= value <= hi):
        raise HTTPException(400, f"{name} must lie in {lo}..{hi}, got {value}")
    return value


def _method(request: Request, bundle: Bundle, default_first: bool = True) -> str:
    key = request.query_params.get("method")
    if key is None or key == "":
        return next(iter(bundle.methods))
    if key not in bundle.methods:
        raise HTTPException(404, f"unknown method; this bundle has {', '.join(bundle.methods)}")
    return key


def _test_id(bundle: Bundle, t: int) -> int:
    if not 0 <= t < bundle.n_test:
        raise HTTPException(404, f"no test point {t}: ids run 0..{bundle.n_test - 1}")
    return t


def _train_id(bundle: Bundle, i: int) -> int:
    if not 0 <= i < bundle.n_train:
        raise HTTPException(404, f"no training example {i}: ids run 0..{bundle.n_train - 1}")
    return i


# ---------------------------------------------------------------------------------------------------------
# Data behind the pages (the JSON API returns exactly these)
# ---------------------------------------------------------------------------------------------------------

def overview_data(ex: Explorer) -> dict[str, Any]:
    b = ex.bundle
    m = b.manifest
    return {"title": m["title"], "description": m["description"], "model": m["model"], "data": m["data"],
            "n_classes": b.n_classes, "class_names": b.class_names, "test_accuracy": m["test_accuracy"],
            "train_accuracy": m["train_accuracy"], "confusion": b.confusion().tolist(), "k": b.k,
            "weight_decay": m["weight_decay"], "fingerprint": b.fingerprint,
            "methods": [{k: v for k, v in meth.items()} for meth in m["methods"]],
            "decisions": ex.store.counts()}


def tests_data(ex: Explorer, request: Request) -> dict[str, Any]:
    b = ex.bundle
    C = b.n_classes
    true = _qint(request, "true", None, 0, C - 1)
    pred = _qint(request, "pred", None, 0, C - 1)
    wrong = request.query_params.get("wrong", "") in ("1", "true", "on")
    cmin = _qfloat(request, "cmin", 0.0, 0.0, 1.0)
    cmax = _qfloat(request, "cmax", 1.0, 0.0, 1.0)
    size = _qint(request, "size", 48, 1, 500)
    mask = (b.test_conf >= cmin) & (b.test_conf <= cmax)
    if true is not None:
        mask &= b.test_labels == true
    if pred is not None:
        mask &= b.test_pred == pred
    if wrong:
        mask &= (b.test_labels >= 0) & (b.test_labels != b.test_pred)
    ids = np.nonzero(mask)[0]
    pages = max(1, math.ceil(len(ids) / size))
    page = _qint(request, "page", 1, 1, 10**9)
    page = min(page, pages)
    shown = ids[(page - 1) * size: page * size]
    return {"filters": {"true": true, "pred": pred, "wrong": wrong, "cmin": cmin, "cmax": cmax},
            "total": int(len(ids)), "page": page, "pages": pages, "size": size,
            "items": [{"test_index": int(t), "label": int(b.test_labels[t]), "prediction": int(b.test_pred[t]),
                       "confidence": float(b.test_conf[t])} for t in shown]}


def test_data(ex: Explorer, t: int, c: int | None, n: int) -> dict[str, Any]:
    b = ex.bundle
    t = _test_id(b, t)
    c = int(b.test_pred[t]) if c is None else c
    out = {"test_index": t, "label": int(b.test_labels[t]), "prediction": int(b.test_pred[t]),
           "probabilities": [float(p) for p in b.test_probs[t]], "explained_class": c, "methods": {}}
    if b.kind == "table":
        out["row"] = [float(v) for v in np.asarray(b.array("test_display")[t])]
    for key, meth in b.methods.items():
        prec = b.precedents(key, t, c)
        out["methods"][key] = {"name": meth["name"], "units": meth["units"],
                               "explained": float(b.method_array(key, "explained")[t, c]),
                               "positive": prec["positive"][:n], "negative": prec["negative"][:n]}
    return out


def train_data(ex: Explorer, i: int, limit: int = 10) -> dict[str, Any]:
    b = ex.bundle
    i = _train_id(b, i)
    out: dict[str, Any] = {"train_index": i, "label": int(b.train_labels[i]), "prediction": int(b.train_pred[i]),
                           "decision": ex.store.get([i]).get(i), "methods": {}}
    if b.kind == "table":
        out["row"] = [float(v) for v in np.asarray(b.array("train_display")[i])]
    for key, meth in b.methods.items():
        self_inf = np.asarray(b.method_array(key, "self_influence"))
        rank = int((self_inf > self_inf[i]).sum()) + 1
        out["methods"][key] = {"name": meth["name"], "units": meth["units"], "self_influence": float(self_inf[i]),
                               "self_influence_rank": rank, **b.reverse_lookup(key, i, limit)}
    return out


def review_data(ex: Explorer, key: str, offset: int, limit: int, hide_decided: bool) -> dict[str, Any]:
    b = ex.bundle
    values = b.method_array(key, "self_influence")
    order = ex.review_order(key)
    decided = ex.store.all()
    if hide_decided:
        order = order[~np.isin(order, np.fromiter(decided, dtype=np.int64, count=len(decided)))]
    shown = order[offset: offset + limit]
    return {"method": key, "units": b.methods[key]["units"], "offset": offset, "limit": limit,
            "total": int(len(order)), "counts": ex.store.counts(),
            "items": [{"rank": offset + j + 1, "train_index": int(i), "label": int(b.train_labels[i]),
                       "prediction": int(b.train_pred[i]), "self_influence": float(values[i]),
                       "decision": decided.get(int(i))} for j, i in enumerate(shown)]}


# ---------------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------------

def create_app(bundle: Bundle | str | Path, *, db: str | Path | None = None, token: str | None = None,
               check_host: bool = True) -> Starlette:
    """The explorer over ``bundle`` (a :class:`Bundle` or its folder), decisions in the SQLite file ``db``
    (default: ``review.sqlite`` beside the bundle). ``token``: the access token (random if None);
    ``app.state.explorer.token`` holds it."""
    if not isinstance(bundle, Bundle):
        bundle = Bundle(bundle)
    db_path = Path(db) if db is not None else bundle.root.parent / "review.sqlite"
    store = DecisionStore(db_path, bundle.fingerprint, bundle.n_train, bundle.n_classes)
    ex = Explorer(bundle, store, token or secrets.token_urlsafe(32), check_host=check_host)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["fmt"] = _fmt
    templates.env.filters["flatten"] = _flatten
    b = bundle

    def render(request: Request, name: str, **context: Any) -> HTMLResponse:
        context.update({"b": b, "m": b.manifest, "csrf": ex.csrf, "classes": b.class_names,
                        "methods": b.methods})
        return templates.TemplateResponse(request, name, context)

    async def overview(request: Request) -> Response:
        return render(request, "overview.html", d=overview_data(ex), nav="overview")

    async def tests(request: Request) -> Response:
        d = tests_data(ex, request)
        args = {k: v for k, v in request.query_params.items() if k != "page"}
        return render(request, "tests.html", d=d, nav="tests", args=args,
                      view="table" if request.query_params.get("view") == "table" or b.kind == "table"
                      else "gallery", page_sizes=PAGE_SIZES)

    async def test_page(request: Request) -> Response:
        t = request.path_params["t"]
        c = _qint(request, "c", None, 0, b.n_classes - 1)
        n = _qint(request, "n", min(10, b.k), 1, b.k)
        return render(request, "test.html", d=test_data(ex, t, c, n), nav="tests", n=n)

    async def train_page(request: Request) -> Response:
        return render(request, "train.html", d=train_data(ex, request.path_params["i"]), nav="review")

    async def review(request: Request) -> Response:
        key = _method(request, b)
        size = _qint(request, "size", 50, 1, 500)
        page = _qint(request, "page", 1, 1, 10**9)
        hide = request.query_params.get("hide", "") in ("1", "on", "true")
        d = review_data(ex, key, (page - 1) * size, size, hide)
        pages = max(1, math.ceil(d["total"] / size))
        return render(request, "review.html", d=d, nav="review", page=page, pages=pages, size=size, hide=hide)

    def verify_args(request: Request) -> tuple[int, str, int, int, str]:
        """The test point, method, class, number of precedents and sign of a verify request (validated)."""
        t = _test_id(b, request.path_params["t"])
        key = _method(request, b)
        c = _qint(request, "c", int(b.test_pred[t]), 0, b.n_classes - 1)
        n = _qint(request, "n", min(10, b.k), 1, b.k)
        kind = request.query_params.get("kind", "positive")
        if kind not in ("positive", "negative"):
            raise HTTPException(400, "kind must be positive or negative")
        return t, key, c, n, kind

    async def verify(request: Request) -> Response:
        t, key, c, n, kind = verify_args(request)
        result = None
        if request.query_params.get("run") == "1":
            result = await run_in_threadpool(verify_claim, ex.refitter, key, t, c, n, kind)
        return render(request, "verify.html", t=t, key_=key, c=c, n=n, kind=kind, result=result, nav="tests")

    async def image(request: Request) -> Response:
        which = request.path_params["which"]
        i = request.path_params["i"]
        if which == "train":
            _train_id(b, i)
        elif which == "test":
            _test_id(b, i)
        elif which.startswith("map-") and which[4:] in b.feature_maps:
            _test_id(b, i)
        else:
            raise HTTPException(404, "images are /img/train/ID.png or /img/test/ID.png")
        if b.kind != "image":
            raise HTTPException(404, "this bundle's data are table rows, not images")
        default = max(1, 112 // max(1, int(b.manifest["data"]["display_shape"][0])))
        scale = _qint(request, "s", default, 1, 32)
        return Response(ex.image(which, i, scale), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=86400, immutable"})

    # -- API -------------------------------------------------------------------------------------------
    async def api_overview(request: Request) -> Response:
        return JSONResponse(overview_data(ex))

    async def api_tests(request: Request) -> Response:
        return JSONResponse(tests_data(ex, request))

    async def api_test(request: Request) -> Response:
        c = _qint(request, "c", None, 0, b.n_classes - 1)
        n = _qint(request, "n", b.k, 1, b.k)
        return JSONResponse(test_data(ex, request.path_params["t"], c, n))

    async def api_train(request: Request) -> Response:
        return JSONResponse(train_data(ex, request.path_params["i"]))

    async def api_review(request: Request) -> Response:
        key = _method(request, b)
        offset = _qint(request, "offset", 0, 0, 10**9)
        limit = _qint(request, "limit", 50, 1, 1000)
        hide = request.query_params.get("hide", "") in ("1", "on", "true")
        return JSONResponse(review_data(ex, key, offset, limit, hide))

    async def api_decisions(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"fingerprint": b.fingerprint, "counts": ex.store.counts(),
                                 "decisions": list(ex.store.all().values())})
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "body must be JSON: {train_index, action, label?, method?}") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "body must be a JSON object")
        i, action, label, method = (body.get("train_index"), body.get("action"), body.get("label"),
                                    body.get("method"))
        if not isinstance(i, int) or isinstance(i, bool) or (label is not None and (not isinstance(label, int)
                                                                                   or isinstance(label, bool))):
            raise HTTPException(400, "train_index and label must be integers")
        if method is not None and method not in b.methods:
            raise HTTPException(400, "unknown method")
        try:
            decision = await run_in_threadpool(ex.store.decide, i, str(action), label, method)
        except PrecedentsError as err:
            raise HTTPException(400, str(err)) from None
        return JSONResponse({"ok": True, "decision": decision, "counts": ex.store.counts()})

    async def api_decision_delete(request: Request) -> Response:
        i = _train_id(b, request.path_params["i"])
        await run_in_threadpool(ex.store.undo, i)
        return JSONResponse({"ok": True, "counts": ex.store.counts()})

    async def api_apply(request: Request) -> Response:
        result = await run_in_threadpool(apply_decisions, ex.refitter, ex.store.corrections(), ex.store.removals())
        return JSONResponse(result)

    async def api_verify(request: Request) -> Response:
        t, key, c, n, kind = verify_args(request)
        return JSONResponse(await run_in_threadpool(verify_claim, ex.refitter, key, t, c, n, kind))

    async def export(request: Request) -> Response:
        what = request.path_params["what"]
        if what == "corrections.csv":
            text = ex.store.corrections_csv()
        elif what == "decisions.csv":
            text = ex.store.decisions_csv()
        else:
            raise HTTPException(404, "exports are corrections.csv and decisions.csv")
        return Response(text, media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{what}"'})

    async def http_error(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 500)
        if code >= 500:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        detail = getattr(exc, "detail", "error") if code < 500 else "internal error"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": detail}, code)
        text = html.escape(f"{code}: {detail}")
        return HTMLResponse(f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{code}</title>"
                            f"<link rel=stylesheet href=/static/style.css></head><body><main><h1>{text}</h1>"
                            "<p><a href=/>Back to the overview</a></p></main></body></html>", code)

    routes = [
        Route("/", overview),
        Route("/tests", tests),
        Route("/test/{t:int}", test_page),
        Route("/train/{i:int}", train_page),
        Route("/review", review),
        Route("/verify/{t:int}", verify),
        Route("/img/{which:str}/{i:int}.png", image),
        Route("/export/{what:str}", export),
        Route("/api/overview", api_overview),
        Route("/api/tests", api_tests),
        Route("/api/test/{t:int}", api_test),
        Route("/api/train/{i:int}", api_train),
        Route("/api/review", api_review),
        Route("/api/decisions", api_decisions, methods=["GET", "POST"]),
        Route("/api/decisions/{i:int}", api_decision_delete, methods=["DELETE"]),
        Route("/api/apply", api_apply, methods=["POST"]),
        Route("/api/verify/{t:int}", api_verify),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(Guard)],
                    exception_handlers={HTTPException: http_error, Exception: http_error})
    app.state.explorer = ex
    return app
