"""``precedents demo``: explain a model trained on real data, end to end (the demos in :mod:`precedents.demos`).

The demo package is imported only here, and only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from typing import Any

from .._validation import PrecedentsError
from .files import prepare_out

#: ``precedents demo --task NAME``: (what it explains, "module:function"); each function takes
#: ``(out_dir, cache_dir, *, k, progress)`` and writes ``report.html`` into ``out_dir``.
DEMO_TASKS: dict[str, tuple[str, str]] = {
    "mnist": ("a CNN trained on the full MNIST (default)", "precedents.demos.mnist:run_demo"),
    "german": ("XGBoost on German credit, precedents as table rows", "precedents.demos.tabular:run_german_demo"),
    "compas": ("XGBoost on COMPAS two-year recidivism, precedents as table rows",
               "precedents.demos.tabular:run_compas_demo"),
    "lstm": ("an LSTM reading MNIST row by row (sequential MNIST)", "precedents.demos.sequence:run_lstm_demo"),
}
#: what demo writes, and what ``precedents serve`` adds beside it (the review decisions)
OUTPUTS = ("report.html", "top_k.csv", "top_k.json", "model.json", "explorer", "review.sqlite", "review.sqlite-wal",
           "review.sqlite-shm")


def run(args: argparse.Namespace) -> int:
    module_name, function_name = DEMO_TASKS[args.task][1].split(":")
    options: dict[str, Any] = {} if args.features is None else {"features": args.features}
    if not args.tcav:
        options["tcav"] = False
    if args.explorer_points is not None:
        options["explorer_points"] = args.explorer_points
    demo = getattr(importlib.import_module(module_name), function_name)
    accepted = inspect.signature(demo).parameters
    if any(name not in accepted for name in options):
        raise PrecedentsError(f"demo --task {args.task} has no feature attribution, TCAV or explorer bundle: drop "
                              "--features / --no-tcav / --explorer-points.")
    out = prepare_out(args.out or ("out/demo" if args.task == "mnist" else f"out/demo-{args.task}"), "demo",
                      OUTPUTS)
    demo(out, args.cache, k=args.k, progress=not args.quiet, **options)
    return 0
