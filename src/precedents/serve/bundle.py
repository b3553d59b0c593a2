"""The explorer bundle: everything ``precedents serve`` shows, precomputed once and read memory-mapped.

Layout of a bundle directory (written atomically: a temporary sibling renamed into place)::

    manifest.json              title, model and data description, classes, display kind, methods (key, name,
                               units, sign, diagnostics), shapes/dtypes/SHA-256 of every array, the fingerprint
    test_display.npy           (n_test, H, W[, C]) uint8 images, or (n_test, p) float64 table rows
    test_labels.npy            (n_test,) int64, -1 where unknown
    test_logits.npy            (n_test, C) the model's logits (one column for a sigmoid head)
    test_probs.npy             (n_test, C) class probabilities (C = 2 for a sigmoid head)
    test_features.npy          (n_test, d) float64: the head's features (constant column included)
    train_display.npy          (n_train, ...) as test_display
    train_labels.npy           (n_train,) int64: the given labels
    train_predictions.npy      (n_train,) int64: the model's predicted classes
    train_features.npy         (n_train, d) float64: frozen features, for refitting the head (review "apply",
                               "verify a claim")
    theta.npy                  (C_out, d) float64: the model's head, ``logits = features @ theta.T``
    method-<key>/pos_idx.npy   (n_test, C, k) int32: the k most positive training examples for test t, class c
    method-<key>/pos_score.npy (n_test, C, k) float32: their scores (method units), most extreme first
    method-<key>/neg_idx.npy, neg_score.npy   the k most negative, most negative first
    method-<key>/explained.npy (n_test, C) float64: the explained output per class (sum of all scores)
    method-<key>/self_influence.npy  (n_train,) float64: the method's self-score (larger = check first)

Sign convention (the package's): a positive score supports the explained output for the test point; for a
loss-based method (influence) the explained output of class c is the loss of label c, and a positive score is the
predicted *increase* of that loss if the training example were removed, so it too supports class c.

:func:`write_explorer_bundle` computes it from a model, its data and fitted explainers through their public API;
:class:`Bundle` reads it (arrays memory-mapped; the server never writes to it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import PrecedentsError
from ..index import sha256_file

FORMAT = "precedents-explorer"
FORMAT_VERSION = 1
KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")

_METHOD_ARRAYS = ("pos_idx", "pos_score", "neg_idx", "neg_score", "explained", "self_influence")



def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _jsonable(value: Any) -> Any:
    """Diagnostics as JSON: numbers (NaN/inf as None), strings, bools, lists and dicts of them."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return _jsonable(value.item()) if value.size == 1 else None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return None


def display_array(X: Any) -> tuple[np.ndarray, str]:
    """What a page shows of each example: images as uint8 ``(n, H, W[, C])``, anything 1-D as float64 rows.

    Floating images are scaled linearly from the set's minimum and maximum to 0..255; a single channel is dropped.
    """
    a = _np(X)
    if a.ndim >= 3:
        if a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):   # NCHW -> NHWC
            a = np.moveaxis(a, 1, -1)
        if a.ndim == 4 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (3, 4):
            raise PrecedentsError(f"Display images must be (n, H, W) or (n, H, W, C); got shape {a.shape}.")
        if a.dtype != np.uint8:
            a = a.astype(np.float64)
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            a = np.round((a - lo) / (hi - lo if hi > lo else 1.0) * 255).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(a), "image"
    return np.ascontiguousarray(a.reshape(len(a), -1).astype(np.float64)), "table"


def _measurement(est: Any) -> dict[str, Any]:
    """What the method's scores measure (quantity, units, sign, additive), stated once for the overview."""
    return _jsonable(est.measurement.to_dict())


def _self_scores(est: Any) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _np(est.self_influence()).astype(np.float64).reshape(-1)


def _diagnostics(est: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = _jsonable(est.diagnostics()) or {}
    out.pop("measurement", None)                 # stated once, beside the method
    return out


def _attribute(est: Any, X: Any, c: int) -> Any:
    """Attribution of ``X`` for class ``c``: its logit (logit-based methods) or the loss of label c (loss-based)."""
    return est.attribute(X, target=torch.full((len(X),), c, dtype=torch.long))


#: Names shown on the pages for the registry's keys (others are shown by their key).
DISPLAY_NAMES = {"rps-l2": "RPS-l2", "rps-lje": "RPS-LJE", "influence-exact": "influence (exact)",
                 "influence-cg": "influence (CG)", "influence-lissa": "influence (LiSSA)",
                 "influence-arnoldi": "influence (Arnoldi)", "tracin": "TracIn", "grad-dot": "grad-dot",
                 "grad-cos": "grad-cos"}


def _registry_info(est: Any) -> dict[str, Any]:
    """Display name, one-line summary and paper of the estimator's registered method."""
    from ..methods.registry import method_info

    key = str(getattr(est, "key", ""))
    try:
        info = method_info(key).to_dict()
    except PrecedentsError:
        return {"name": type(est).__name__}
    return {"name": DISPLAY_NAMES.get(key, key), "summary": info["summary"], "paper": info["paper"]}


def _params(est: Any) -> dict[str, Any]:
    return {k: v for k, v in est.get_params().items() if isinstance(v, (str, int, float, bool, type(None)))}


def _method_topk(est: Any, X_test: torch.Tensor, n_classes: int, k: int, chunk: int) -> dict[str, np.ndarray]:
    n = len(X_test)
    arrays = {"pos_idx": np.zeros((n, n_classes, k), np.int32), "pos_score": np.zeros((n, n_classes, k), np.float32),
              "neg_idx": np.zeros((n, n_classes, k), np.int32), "neg_score": np.zeros((n, n_classes, k), np.float32),
              "explained": np.zeros((n, n_classes), np.float64)}
    for c in range(n_classes):
        for s in range(0, n, chunk):
            att = _attribute(est, X_test[s:s + chunk], c)
            top = att.top(k)
            arrays["pos_idx"][s:s + chunk, c] = _np(top.positive_indices)
            arrays["pos_score"][s:s + chunk, c] = _np(top.positive_scores)
            arrays["neg_idx"][s:s + chunk, c] = _np(top.negative_indices)
            arrays["neg_score"][s:s + chunk, c] = _np(top.negative_scores)
            arrays["explained"][s:s + chunk, c] = _np(att.explained).astype(np.float64)
    return arrays


def _feature_maps(put: Any, model: Any, X_test: torch.Tensor, shape: tuple[int, ...], names: list[str],
                  forward_fn: Any, chunk: int) -> None:
    """Feature-attribution maps of every test point for its predicted class, as ``map-<name>`` (n_test, H, W)."""
    from ..features import feature_attributions

    out = {name: np.zeros((len(X_test), *shape), np.float32) for name in names}
    for s in range(0, len(X_test), chunk):
        maps = feature_attributions(model, X_test[s:s + chunk], None, names, forward_fn=forward_fn)
        for name in names:
            m = _np(maps[name])
            m = m.reshape(len(m), -1, *shape).sum(1) if m[0].size % (shape[0] * shape[1]) == 0 else None
            if m is None:
                raise PrecedentsError(f"feature map {name}: the inputs do not match the display images {shape}.")
            out[name][s:s + chunk] = m
    for name in names:
        put(f"map-{name}", out[name])


def _probabilities(logits: np.ndarray, link: str) -> np.ndarray:
    if logits.shape[1] == 1:
        p1 = 1 / (1 + np.exp(-logits[:, 0]))
        return np.stack([1 - p1, p1], axis=1)
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def write_explorer_bundle(directory: str | os.PathLike, model: Any, train: tuple[Any, Any], test: tuple[Any, Any],
                          methods: Mapping[str, Any] | Sequence[Any], *, train_display: Any = None,
                          test_display: Any = None,
                          k: int = 20, class_names: list[str] | None = None, feature_names: list[str] | None = None,
                          title: str = "precedents explorer", description: str = "",
                          model_description: str = "", data_description: str = "", weight_decay: float = 0.0,
                          layer: str | None = None, forward_fn: Any = None, batch_size: int = 256,
                          chunk: int = 512, feature_maps: tuple[str, ...] | list[str] = (),
                          progress: bool = False) -> Path:
    """Write the bundle that ``precedents serve`` reads (see the module docstring for the layout).

    Args:
        directory: the bundle's folder (e.g. ``out/demo/explorer``); replaced atomically if it exists.
        model: the explained classifier (any family :func:`~precedents.adapters.head_adapter` takes).
        train: ``(X, y)`` the training set the explainers were fitted on (same order).
        test: ``(X_test, y_test)``; ``y_test`` may be None (accuracy and "misclassified" are then unknown).
        methods: fitted explainers, as a list (each shown under its registry key, ``est.key``) or as
            ``{key: est}``; keys are lowercase ``[a-z0-9-]`` (e.g. ``"rps-l2"``, ``"rps-lje"``, ``"influence-cg"``).
            Each explainer's top-``k`` positive and negative
            precedents are computed for every test point and every class (``"why not c?"``), plus its
            self-influence and diagnostics. Cost: ``n_classes`` attributions of the whole test set per method.
        train_display, test_display: what pages show (default: the inputs themselves); images as (n, H, W),
            (n, H, W, C) or (n, C, H, W), anything else as table rows.
        weight_decay: the l2 strength of the head's training objective (mean loss + wd/2 ||theta||^2), used when
            the explorer refits the head on frozen features (review "apply", "verify a claim").
        feature_maps: image data only: feature-attribution methods of :func:`precedents.feature_attributions`
            (e.g. ``("saliency", "ig")``, needs captum) computed for every test point's predicted class and shown
            beside its precedents; each map is summed over channels to the display's height and width.
    """
    from ..adapters import head_adapter

    start_time = time.perf_counter()
    if not methods:
        raise PrecedentsError("write_explorer_bundle needs at least one fitted explainer in methods.")
    if not isinstance(methods, Mapping):
        listed = list(methods)
        methods = {str(est.key): est for est in listed}
        if len(methods) < len(listed):
            raise PrecedentsError("Two explainers share a registry key: pass methods={key: est} with distinct keys.")
    bad = [key for key in methods if not KEY_PATTERN.match(str(key))]
    if bad:
        raise PrecedentsError(f"Method keys must be lowercase letters, digits and '-' (e.g. 'rps-l2'); got {bad}.")
    if k < 1:
        raise PrecedentsError(f"k must be >= 1, got {k}.")
    X, y = train
    X_test, y_test = test
    X, X_test = torch.as_tensor(X), torch.as_tensor(X_test)
    y = torch.as_tensor(y).long().reshape(-1)
    head = head_adapter(model, layer, forward_fn=forward_fn, batch_size=batch_size, progress=progress)
    train_run = head.run(head.batches(X, y, name="train", require_labels=True), what="training")
    test_run = head.run(head.batches(X_test, name="test"), what="test")
    n_classes = int(head.n_classes)
    link = str(head.link)
    test_logits = _np(test_run.logits).astype(np.float64)
    train_logits = _np(train_run.logits).astype(np.float64)
    probs = _probabilities(test_logits, link)
    train_pred = _probabilities(train_logits, link).argmax(1)
    labels_test = (np.full(len(X_test), -1, np.int64) if y_test is None
                   else _np(y_test).astype(np.int64).reshape(-1))
    if len(labels_test) != len(X_test):
        raise PrecedentsError(f"test: {len(X_test)} inputs but {len(labels_test)} labels.")
    k = min(int(k), len(X))
    tr_disp, kind = display_array(X if train_display is None else train_display)
    te_disp, kind_test = display_array(X_test if test_display is None else test_display)
    if kind != kind_test or len(tr_disp) != len(X) or len(te_disp) != len(X_test):
        raise PrecedentsError("train_display and test_display must be of one kind (images or rows) and have one "
                              "entry per example.")
    if class_names is not None and len(class_names) != n_classes:
        raise PrecedentsError(f"class_names has {len(class_names)} names for {n_classes} classes.")

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    entries: dict[str, Any] = {}

    def put(name: str, array: np.ndarray) -> None:
        path = tmp / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.ascontiguousarray(array), allow_pickle=False)
        entries[name] = {"file": f"{name}.npy", "shape": list(array.shape), "dtype": str(array.dtype),
                         "sha256": sha256_file(path)}

    try:
        put("test_display", te_disp)
        put("test_labels", labels_test)
        put("test_logits", test_logits)
        put("test_probs", probs)
        put("test_features", _np(test_run.features).astype(np.float64))
        put("train_display", tr_disp)
        put("train_labels", _np(y).astype(np.int64))
        put("train_predictions", train_pred.astype(np.int64))
        put("train_features", _np(train_run.features).astype(np.float64))
        put("theta", _np(head.theta()).astype(np.float64))
        maps = list(feature_maps)
        if maps:
            if kind != "image":
                raise PrecedentsError("feature_maps apply to image data; this bundle's data are table rows.")
            _feature_maps(put, model, X_test, te_disp.shape[1:3], maps, forward_fn, chunk)
        method_entries = []
        for key, est in methods.items():
            t0 = time.perf_counter()
            arrays = _method_topk(est, X_test, n_classes, k, chunk)
            for name, arr in arrays.items():
                put(f"method-{key}/{name}", arr)
            put(f"method-{key}/self_influence", _self_scores(est))
            measurement = _measurement(est)
            info = _registry_info(est)
            method_entries.append({"key": str(key), "name": info.get("name", str(key)), "summary":
                                   info.get("summary", ""), "paper": info.get("paper", ""), "class":
                                   type(est).__name__, "units": measurement["units"], "sign": measurement["sign"],
                                   "measurement": measurement, "params": _jsonable(_params(est)),
                                   "diagnostics": _diagnostics(est),
                                   "seconds_to_precompute": time.perf_counter() - t0})
        pred = probs.argmax(1)
        known = labels_test >= 0
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "title": title, "description": description,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {"description": model_description or type(model).__name__, "class": type(model).__name__,
                      "layer": head.layer_name, "link": link, "fingerprint": head.fingerprint()},
            "data": {"description": data_description, "n_train": len(X), "n_test": len(X_test),
                     "display": kind, "display_shape": list(tr_disp.shape[1:]),
                     "feature_names": list(feature_names) if feature_names is not None else None},
            "n_classes": n_classes,
            "class_names": list(class_names) if class_names is not None else [str(c) for c in range(n_classes)],
            "test_accuracy": float((pred[known] == labels_test[known]).mean()) if known.any() else None,
            "train_accuracy": float((train_pred == _np(y)).mean()),
            "k": k, "weight_decay": float(weight_decay), "methods": method_entries, "feature_maps": maps,
            "arrays": entries,
            "seconds_to_write": time.perf_counter() - start_time,
        }
        manifest["fingerprint"] = hashlib.sha256(json.dumps(
            [sorted((n, e["sha256"]) for n, e in entries.items()), manifest["methods"][0]["key"], k],
            sort_keys=True).encode()).hexdigest()
        (tmp / "manifest.json").write_text(json.dumps(_jsonable(manifest), indent=1))
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class Bundle:
    """A written explorer bundle, read-only: the manifest and every array memory-mapped.

    ``Bundle(path)`` accepts the bundle folder itself or a folder holding it as ``explorer/``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        root = Path(path)
        if not (root / "manifest.json").is_file() and (root / "explorer" / "manifest.json").is_file():
            root = root / "explorer"
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise PrecedentsError(f"{path} holds no explorer bundle (no manifest.json, nor explorer/manifest.json). "
                                  "Write one with precedents.serve.write_explorer_bundle(...) or run "
                                  "`precedents demo` first.")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise PrecedentsError(f"{root} is not a precedents explorer bundle of format {FORMAT_VERSION}; "
                                  "rewrite it with this version of precedents.")
        self.root = root
        self.manifest = manifest
        self.fingerprint: str = manifest["fingerprint"]
        self._arrays: dict[str, np.ndarray] = {}
        for name, entry in manifest["arrays"].items():
            p = root / entry["file"]
            if not p.is_file():
                raise PrecedentsError(f"Bundle {root} is incomplete: {entry['file']} is missing; rewrite it.")
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
            if list(arr.shape) != entry["shape"] or str(arr.dtype) != entry["dtype"]:
                raise PrecedentsError(f"Bundle {root}: {entry['file']} does not match its manifest; rewrite it.")
            self._arrays[name] = arr
        self.methods: dict[str, dict[str, Any]] = {m["key"]: m for m in manifest["methods"]}
        self.n_train: int = manifest["data"]["n_train"]
        self.n_test: int = manifest["data"]["n_test"]
        self.n_classes: int = manifest["n_classes"]
        self.class_names: list[str] = manifest["class_names"]
        self.k: int = manifest["k"]
        self.kind: str = manifest["data"]["display"]
        self.feature_maps: list[str] = list(manifest.get("feature_maps", []))
        self.test_labels = np.array(self.array("test_labels"))
        self.test_probs = np.array(self.array("test_probs"))
        self.test_pred = self.test_probs.argmax(1)
        self.test_conf = self.test_probs.max(1)
        self.train_labels = np.array(self.array("train_labels"))
        self.train_pred = np.array(self.array("train_predictions"))

    def array(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def method_array(self, key: str, name: str) -> np.ndarray:
        if key not in self.methods or name not in _METHOD_ARRAYS:
            raise KeyError(key)
        return self._arrays[f"method-{key}/{name}"]

    def confusion(self) -> np.ndarray:
        """(C, C) counts: row = true class, column = predicted class (test points with a known label)."""
        known = self.test_labels >= 0
        out = np.zeros((self.n_classes, self.n_classes), np.int64)
        np.add.at(out, (self.test_labels[known], self.test_pred[known]), 1)
        return out

    def precedents(self, key: str, t: int, c: int) -> dict[str, list[dict[str, Any]]]:
        """Top-k positive and negative training examples of test point ``t`` for class ``c`` under method ``key``."""
        out = {}
        for kind in ("pos", "neg"):
            idx = np.asarray(self.method_array(key, f"{kind}_idx")[t, c])
            scores = np.asarray(self.method_array(key, f"{kind}_score")[t, c])
            out["positive" if kind == "pos" else "negative"] = [
                {"train_index": int(i), "score": float(s), "label": int(self.train_labels[i]),
                 "prediction": int(self.train_pred[i]),
                 "model_correct": bool(self.train_pred[i] == self.train_labels[i])}
                for i, s in zip(idx, scores, strict=True)]
        return out

    def reverse_lookup(self, key: str, i: int, limit: int = 10) -> dict[str, list[dict[str, Any]]]:
        """Test points for whose predicted class training example ``i`` is among the stored top-k, strongest first."""
        rows = np.arange(self.n_test)
        out = {}
        for kind, name in (("pos", "supports"), ("neg", "opposes")):
            idx = np.asarray(self.method_array(key, f"{kind}_idx")[rows, self.test_pred])
            scores = np.asarray(self.method_array(key, f"{kind}_score")[rows, self.test_pred])
            t, r = np.nonzero(idx == i)
            s = scores[t, r]
            order = np.argsort(-np.abs(s), kind="stable")[:limit]
            out[name] = [{"test_index": int(t[j]), "rank": int(r[j]) + 1, "score": float(s[j]),
                          "label": int(self.test_labels[t[j]]), "prediction": int(self.test_pred[t[j]])}
                         for j in order]
        return out
