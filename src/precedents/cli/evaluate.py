"""``precedents evaluate``: attribution scores against leave-one-out retraining (the truth), from files.

Fits each ``--methods`` estimator, scores ``--points`` training examples (half the largest |score| of the
first method, half random) against the ``--test-points`` test points of highest loss, retrains without each
example (``--retrain``; finished retrains are kept in ``--results`` and a rerun resumes), and writes
``evaluate.csv``/``.json``/``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import PrecedentsError
from ..report import Table, table_text
from . import methods
from .files import check_model_runs, eager_linear, load_arrays, load_model, prepare_out

OUTPUTS = ("evaluate.csv", "evaluate.json", "evaluate.md")
EVALUATE_NOTE = ("Truth: leave-one-out retraining, loss_change(t, i) = loss_t(retrained without i) - loss_t(reference)"
                 " in nats. Correlations are pooled over all (test point, removed example) pairs. Influence scores"
                 " are in loss units (nats); representer scores (rps-*) are contributions to the true class's logit"
                 " (logit units) and grad-* scores are gradient dot products or cosines: for those, only direction"
                 " and rank are comparable, not scale.")


def _explainer(key: str, model: torch.nn.Module, args: argparse.Namespace) -> Any:
    """The estimator of ``key`` with this command's options (rps-l2's l2 defaults to weight_decay / 2)."""
    l2 = args.l2
    if key == "rps-l2" and l2 is None:
        if args.weight_decay <= 0:
            raise PrecedentsError("rps-l2 needs l2 > 0: pass --l2, or a --weight-decay > 0 (default l2 = wd / 2).")
        l2 = args.weight_decay / 2
    return methods.build(key, model, params=args.params, damping=args.damping, weight_decay=args.weight_decay,
                         layer=args.layer, l2=l2, step=args.step, progress=not args.quiet)


def _write_evaluate(out: Path, rows: list[list[Any]], columns: list[str], summary: dict[str, Any]) -> list[Path]:
    paths = [out / "evaluate.csv", out / "evaluate.json", out / "evaluate.md"]
    with open(paths[0], "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    paths[1].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["# precedents evaluate: attribution scores against leave-one-out retraining", "",
             f"{summary['n_removed']} training examples removed one at a time, {summary['n_test']} test points "
             f"(highest loss), retrainer `{summary['retrain']}`.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    lines += ["", EVALUATE_NOTE, ""]
    paths[2].write_text("\n".join(lines), encoding="utf-8")
    return paths


def run(args: argparse.Namespace) -> int:
    from ..evaluate import LogisticRegressionRetrainer, leave_one_out, warm_start_retrainer
    from ..linalg.functional import default_loss

    keys = args.methods
    model = eager_linear(load_model(args))
    X, y = load_arrays(args.train, "Training file")
    X_test, y_test = load_arrays(args.test, "Test file")
    if y is None:
        raise PrecedentsError(f"{args.train} has no labels y: the training data needs them.")
    if y_test is None:
        raise PrecedentsError(f"{args.test} has no labels y: evaluate needs the test labels (the truth is the "
                              "change of each test point's loss).")
    check_model_runs(model, X, args.train)
    check_model_runs(model, X_test, args.test)
    y, y_test = y.long().reshape(-1), y_test.long().reshape(-1)
    n = len(X)
    if args.points > n:
        raise PrecedentsError(f"--points {args.points} exceeds the {n} training examples.")
    if args.test_points > len(X_test):
        raise PrecedentsError(f"--test-points {args.test_points} exceeds the {len(X_test)} test examples.")
    if args.retrain == "logistic" and not isinstance(model, torch.nn.Linear):
        raise PrecedentsError(f"--retrain logistic needs the model to be a single nn.Linear (multinomial logistic "
                              f"regression), got {type(model).__name__}; use --retrain warm for other networks.")
    if args.retrain == "warm" and isinstance(model, torch.jit.ScriptModule):
        raise PrecedentsError("--retrain warm cannot train copies of a TorchScript model (copied TorchScript "
                              "parameters are not trainable); pass the model as --state-dict FILE --module "
                              "package.module:ClassName instead.")
    out = prepare_out(args.out, "evaluate", OUTPUTS)

    param = next(iter(model.parameters()), None)
    if param is not None and param.is_floating_point():   # feed every method inputs in the model's precision
        X = X.to(param.dtype) if X.is_floating_point() else X
        X_test = X_test.to(param.dtype) if X_test.is_floating_point() else X_test

    # the test points with the highest loss under the given model
    with torch.no_grad():
        logits = model(X_test)
        if not isinstance(logits, torch.Tensor):
            raise PrecedentsError(f"The model returned a {type(logits).__name__}, not a logits tensor.")
        losses = default_loss(logits, y_test).to(torch.float64).reshape(-1)
    chosen = torch.argsort(losses, descending=True, stable=True)[: args.test_points]
    Xs, ys = X_test[chosen], y_test[chosen]

    runs = []
    for key in keys:
        start = time.perf_counter()
        explainer = _explainer(key, model, args).fit(X, y)
        res = explainer.attribute(Xs, target=ys)     # the true label's loss, or its logit
        scores = res.scores.detach().to(torch.float64).cpu()
        runs.append((key, scores, time.perf_counter() - start, res.measurement.units))

    # half the examples with the largest |score| of the first method, half random (seeded)
    top = torch.argsort(runs[0][1].abs().amax(dim=0), descending=True, stable=True)[: args.points // 2]
    rest = np.setdiff1d(np.arange(n), top.numpy())
    rng = np.random.default_rng(args.seed)
    random = rng.choice(rest, size=args.points - len(top), replace=False)
    indices = torch.cat([top, torch.from_numpy(random).long()])

    if args.retrain == "logistic":
        retrain = LogisticRegressionRetrainer(X.reshape(n, -1), y, model.out_features, args.weight_decay)
    else:
        retrain = warm_start_retrainer(model, X, y, steps=args.steps, lr=args.lr, weight_decay=args.weight_decay,
                                       seed=args.seed)
    truth = leave_one_out(retrain, Xs, ys, indices, n_train=n, results_path=args.results, progress=not args.quiet)

    columns = ["method", "pearson", "spearman", "fit+attribute seconds", "score units"]
    rows = []
    for key, scores, seconds, units in runs:
        corr = truth.correlate(scores)
        rows.append([key, float(corr.pearson), float(corr.spearman), float(seconds), units])
    summary = {
        "note": EVALUATE_NOTE, "retrain": args.retrain, "weight_decay": args.weight_decay, "damping": args.damping,
        "params": args.params, "seed": args.seed, "n_train": n, "n_test": len(chosen), "n_removed": len(indices),
        "n_pairs": len(chosen) * len(indices), "test_indices": chosen.tolist(), "removed_indices": indices.tolist(),
        "reference_loss": truth.reference_loss.tolist(), "results": str(args.results),
        "retrain_seconds_total": float(truth.seconds.sum()),
        "methods": [dict(zip(["method", "pearson", "spearman", "seconds", "units"], row, strict=True))
                    for row in rows]}
    paths = _write_evaluate(out, rows, columns, summary)
    table = Table(f"Scores vs leave-one-out retraining ({len(indices)} removed x {len(chosen)} test points, "
                  f"retrain {args.retrain})", columns, rows)
    print(table_text(table), end="\n\n")
    print(EVALUATE_NOTE)
    print(f"results: {', '.join(str(p) for p in paths)}; retrains: {args.results}")
    return 0


