"""``precedents debug``: rank the training labels to check first (mislabel detection); fix and retrain.

Scores every training example by each ``--methods`` self-score (:mod:`precedents.evaluate.mislabel`), writes
``review.html``/``review.csv`` (the list to check) and ``scores.json`` into ``--out``; with ``--corrections``
(a CSV ``index,label``) refits the last layer on the corrected labels and reports the test accuracy change.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._validation import PrecedentsError
from ..report import write_review
from .files import check_model_runs, eager_linear, load_arrays, load_model, prepare_out

OUTPUTS = ("review.html", "review.csv", "scores.json", "corrections.json")
DEBUG_NOTE = ("Retraining after corrections refits only the final linear layer, on the features the given model "
              "computes (frozen), to the exact optimum of mean cross-entropy + wd/2 ||theta||^2 with the "
              "--weight-decay given; 'before' is the same refit on the uncorrected labels, so the change isolates "
              "the corrections. Retrain the whole network yourself to measure more than that.")


def run(args: argparse.Namespace) -> int:
    from ..evaluate.mislabel import HeadRetrainer, accuracy, fix_and_retrain, mislabel, read_corrections

    model = eager_linear(load_model(args))
    X, y = load_arrays(args.train, "Training file")
    if y is None:
        raise PrecedentsError(f"{args.train} has no labels y: debugging checks the given labels.")
    check_model_runs(model, X, args.train)
    y = y.long().reshape(-1)
    param = next(iter(model.parameters()), None)
    if param is not None and param.is_floating_point() and X.is_floating_point():
        X = X.to(param.dtype)
    corrections = None
    out = prepare_out(args.out, "debug", OUTPUTS)
    if args.corrections:                      # checked before the (slower) scores, so a bad file fails fast
        if not args.test:
            raise PrecedentsError("--corrections retrains and measures test accuracy: pass --test test.npz (with y).")
        X_test, y_test = load_arrays(args.test, "Test file")
        if y_test is None:
            raise PrecedentsError(f"{args.test} has no labels y: the test accuracy needs them.")
        if X_test.is_floating_point() and param is not None and param.is_floating_point():
            X_test = X_test.to(param.dtype)
        retrain = HeadRetrainer(model, X, args.weight_decay, layer=args.layer)
        corrections = read_corrections(args.corrections, len(X), retrain.head.n_classes)
    l2 = args.l2 if args.l2 is not None else (args.weight_decay / 2 if args.weight_decay > 0 else 0.003)
    checkpoints = [c for c in args.checkpoints.split(",") if c] if args.checkpoints else None
    res = mislabel(model, X, y, args.methods, l2=l2, weight_decay=args.weight_decay, damping=args.damping,
                   lje_damping=args.damping, params=args.params, layer=args.layer, checkpoints=checkpoints,
                   seed=args.seed, progress=not args.quiet)
    images = X if X.ndim >= 3 else None
    rows = None if images is not None else [{f"x{j}": float(v) for j, v in enumerate(row)}
                                            for row in X.reshape(len(X), -1).tolist()]
    note = None
    fixes: dict[str, Any] | None = None
    if corrections is not None:
        result = fix_and_retrain(retrain, y, corrections, X_test, y_test, n_classes=retrain.head.n_classes)
        fixes = {**result.to_dict(), "n_corrections": len(corrections), "corrections": str(args.corrections),
                 "model_accuracy": accuracy(model, X_test, y_test), "weight_decay": args.weight_decay,
                 "note": DEBUG_NOTE}
        note = (f"Corrections from {args.corrections}: {result.n_changed} labels changed; test accuracy with the "
                f"last layer refit {result.accuracy_before:.2%} -> {result.accuracy_after:.2%} "
                f"({result.change:+.2%}). {DEBUG_NOTE}")
    html, csv_path = write_review(out, res, top=args.top, images=images, rows=rows, note=note)
    scores = res.to_json(out / "scores.json")
    for m in res.methods:
        print(f"{m}: {res.seconds[m]:.2f} s; {res.units[m]}")
    print(f"review: {html}, {csv_path}; all scores: {scores}")
    if fixes is not None:
        (out / "corrections.json").write_text(json.dumps(fixes, indent=2) + "\n", encoding="utf-8")
        print(f"given model's test accuracy {fixes['model_accuracy']:.2%}\n{note}")
    return 0


