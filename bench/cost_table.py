"""Seed 001's cost table on full MNIST: fit ("fine-tuning") time and the time to attribute 50 test points to
all 50,000 training points, for RPS-l2 and RPS-LJE, beside the hardware floor (a plain matrix multiply of
the same shape) measured in the same run.

    python bench/cost_table.py [--repeats 5] [--out bench/results]

Writes ``cost_table.json`` and ``cost_table.md`` to the output folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

import precedents as pc
from precedents.demos.datasets import load_mnist
from precedents.demos.models import load_or_train_mnist_cnn


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median and spread (max - min) of wall time in seconds over ``repeats`` runs, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times) - min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fit-repeats", type=int, default=2)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)

    X, y = (torch.from_numpy(a) for a in load_mnist("train"))
    X_test, _ = load_mnist("test")
    model, info = load_or_train_mnist_cnn(progress=False)
    g = torch.Generator().manual_seed(0)
    test = torch.from_numpy(X_test)[torch.randperm(len(X_test), generator=g)[: args.n_test]]

    head = pc.RepresenterL2(model, progress=False)._adapter()
    from precedents.data import make_batches

    feat_s, _, run = timed(lambda: head.run(make_batches((X, y), batch_size=256), what="training"),
                           args.fit_repeats)
    d = run.features.shape[1]
    n = len(X)
    rows = []
    for name, make in (("RPS-l2", lambda: pc.RepresenterL2(model, progress=False)),
                       ("RPS-LJE", lambda: pc.RepresenterLJE(model, progress=False))):
        fit_s, fit_spread, ex = timed(lambda make=make: make().fit(X, y), args.fit_repeats)
        attr_s, attr_spread, res = timed(lambda ex=ex: ex.attribute(test).full(), args.repeats)
        width = d if name == "RPS-l2" else d * ex.theta_.shape[0]
        a = torch.randn(args.n_test, width, dtype=torch.float64, generator=g)
        b = torch.randn(width, n, dtype=torch.float64, generator=g)
        floor_s, _, _ = timed(lambda a=a, b=b: a @ b, args.repeats)
        rows.append({"method": name, "fit_seconds": fit_s, "fit_spread": fit_spread,
                     "feature_pass_seconds": feat_s, "attribute_seconds": attr_s, "attribute_spread": attr_spread,
                     "matmul_shape": f"({args.n_test} x {width}) @ ({width} x {n})", "matmul_seconds": floor_s,
                     "attribute_over_matmul": attr_s / floor_s, "scores_shape": list(res.shape)})

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "n_train": n, "n_test": args.n_test, "feature_dim": d,
            "model_test_accuracy": info["test_accuracy"], "repeats": args.repeats, "fit_repeats": args.fit_repeats}
    (out / "cost_table.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"Cost on full MNIST ({n} training images, {args.n_test} test points, {torch.get_num_threads()} CPU threads,"
        f" torch {torch.__version__}); medians of {args.fit_repeats} fits and {args.repeats} attributions.",
        "",
        "| method | fit (s) | of which feature pass (s) | attribute 50 x 50,000 (s) "
        "| plain matmul of the same shape (s) | attribute / matmul |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['fit_seconds']:.2f} | {r['feature_pass_seconds']:.2f} | "
                     f"{r['attribute_seconds']:.3f} | {r['matmul_seconds']:.4f} {r['matmul_shape']} | "
                     f"{r['attribute_over_matmul']:.1f} |")
    lines += ["", "Seed 001 (CIFAR-10, GPU): influence functions 267.08 s; representers 0.10 s after a 7.09 s refit."]
    (out / "cost_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
