"""Command line: ``precedents demo`` and ``precedents explain``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import PrecedentsError

METHODS = {"rps-l2": "RPS-l2", "rps-lje": "RPS-LJE"}


def load_arrays(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read X (and y if present) from a ``.npz`` (keys X/x and y) or a ``.pt`` (dict or (X, y) tuple)."""
    p = Path(path)
    if not p.is_file():
        raise PrecedentsError(f"Data file {path} does not exist.")
    if p.suffix == ".npz":
        data = dict(np.load(p, allow_pickle=False))
    elif p.suffix in (".pt", ".pth"):
        obj = torch.load(p, map_location="cpu", weights_only=True)
        data = dict(zip(("X", "y"), obj, strict=False)) if isinstance(obj, (tuple, list)) else dict(obj)
    else:
        raise PrecedentsError(f"Data file {path}: expected a .npz or .pt file holding X and y.")
    X = data.get("X", data.get("x"))
    if X is None:
        raise PrecedentsError(f"Data file {path} has no array named X (it has: {', '.join(data)}).")
    y = data.get("y")
    return torch.as_tensor(X), None if y is None else torch.as_tensor(y)


def load_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.model:
        try:
            return torch.jit.load(args.model, map_location="cpu").eval()
        except (RuntimeError, ValueError) as err:
            raise PrecedentsError(f"{args.model} is not a TorchScript file ({err}). For a state dict, pass "
                                  "--state-dict FILE --module package.module:ClassName.") from err
    if not (args.state_dict and args.module):
        raise PrecedentsError("Give the model as --model model.ts (TorchScript) or as --state-dict FILE "
                              "--module package.module:ClassName.")
    module_name, _, class_name = args.module.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise PrecedentsError(f"Cannot import {args.module}: {err}. Use the form package.module:ClassName "
                              "and make sure the package is importable.") from err
    model = cls(**json.loads(args.module_kwargs))
    model.load_state_dict(torch.load(args.state_dict, map_location="cpu", weights_only=True))
    return model.eval()


def explain(args: argparse.Namespace) -> int:
    from .methods import RepresenterL2, RepresenterLJE
    from .report import write_html
    from .report.build import attribute_timed, build_report, table_text

    model = load_model(args)
    X, y = load_arrays(args.train)
    X_test, y_test = load_arrays(args.test)
    if y is None:
        raise PrecedentsError(f"{args.train} has no labels y: the training data needs them.")
    points = [int(p) for p in args.points.split(",")] if args.points else list(range(min(4, len(X_test))))
    if max(points) >= len(X_test):
        raise PrecedentsError(f"--points asks for test point {max(points)}, but {args.test} has {len(X_test)}.")
    classes = {"rps-l2": lambda: RepresenterL2(model, args.layer, l2=args.l2, progress=not args.quiet),
               "rps-lje": lambda: RepresenterLJE(model, args.layer, step=args.step, damping=args.damping,
                                                 progress=not args.quiet)}
    runs = []
    for key in args.methods.split(","):
        if key not in classes:
            raise PrecedentsError(f"Unknown method {key!r}; choose from {', '.join(classes)}.")
        start = time.perf_counter()
        ex = classes[key]().fit(X, y)
        runs.append(attribute_timed(METHODS[key], ex, time.perf_counter() - start, X_test[points],
                                    X_test[: args.overlap] if args.overlap else None, args.k))
    preds = runs[0].attribution.target
    labels = y_test[points] if y_test is not None else preds
    cases = [("Misclassified" if y_test is not None and int(labels[j]) != int(preds[j]) else
              ("Correctly classified" if y_test is not None else "Test point"), j) for j in range(len(points))]
    images = X.ndim >= 3
    tabular_rows = None if images else [{f"x{j}": float(v) for j, v in enumerate(row)} for row in X.tolist()]
    test_rows = None if images else [{f"x{j}": float(v) for j, v in enumerate(row)}
                                     for row in X_test[points].tolist()]
    report = build_report(
        "precedents: training examples behind each prediction",
        "Scores are contributions to the explained class's logit: positive = supports the prediction.",
        runs, fidelity_X=X_test, shown_labels=labels, shown_ids=points, cases=cases,
        train_display=X if images else None, train_labels=y, shown_display=X_test[points] if images else None,
        train_rows=tabular_rows, test_rows=test_rows, k=args.k)
    out = Path(args.out)
    path = write_html(report, out / "report.html")
    from .demo import write_top_k

    write_top_k(out / "top_k.csv", out / "top_k.json", runs, points, args.k)
    for table in report.tables:
        print(table_text(table), end="\n\n")
    print(f"report: {path}\ntop-k: {out / 'top_k.csv'}, {out / 'top_k.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="precedents", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain a CNN trained on real MNIST; writes out/demo/report.html")
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--cache", default=None, help="cache directory (default $PRECEDENTS_CACHE or .cache/precedents)")
    demo.add_argument("--k", type=int, default=5)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    ex = sub.add_parser("explain", help="explain your own model on your own data")
    ex.add_argument("--model", help="TorchScript file")
    ex.add_argument("--state-dict", help="state dict file (with --module)")
    ex.add_argument("--module", help="package.module:ClassName of the model (with --state-dict)")
    ex.add_argument("--module-kwargs", default="{}", help="JSON keyword arguments for the model class")
    ex.add_argument("--train", required=True, help=".npz or .pt with X and y")
    ex.add_argument("--test", required=True, help=".npz or .pt with X (and y, optional)")
    ex.add_argument("--layer", default=None, help="dotted name of the final nn.Linear (default: the last one)")
    ex.add_argument("--methods", default="rps-l2,rps-lje")
    ex.add_argument("--l2", type=float, default=0.003)
    ex.add_argument("--step", type=float, default=0.01)
    ex.add_argument("--damping", type=float, default=0.0)
    ex.add_argument("--k", type=int, default=5)
    ex.add_argument("--points", default=None, help="comma-separated test indices to show (default 0-3)")
    ex.add_argument("--overlap", type=int, default=200, help="test points for the top-k overlap table (0: skip)")
    ex.add_argument("--out", default="out/explain")
    ex.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.out, args.cache, k=args.k, progress=not args.quiet)
            return 0
        return explain(args)
    except PrecedentsError as err:
        print(f"precedents: error: {err}", file=sys.stderr)
        return 2


def _entry() -> Any:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
