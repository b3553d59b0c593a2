"""Command line: ``precedents demo``, ``precedents explain``, ``precedents evaluate`` and ``precedents debug``."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import PrecedentsError, parse_methods

METHODS = {"rps-l2": "RPS-l2", "rps-lje": "RPS-LJE"}
#: ``precedents demo --task NAME``: (what it explains, "module:function"); each function takes
#: ``(out_dir, cache_dir, *, k, progress)`` and writes ``report.html`` into ``out_dir``.
DEMO_TASKS: dict[str, tuple[str, str]] = {
    "mnist": ("a CNN trained on the full MNIST (default)", ".demo:run_demo"),
    "german": ("XGBoost on German credit, precedents as table rows", ".demo_tabular:run_german_demo"),
    "compas": ("XGBoost on COMPAS two-year recidivism, precedents as table rows", ".demo_tabular:run_compas_demo"),
    "lstm": ("an LSTM reading MNIST row by row (sequential MNIST)", ".demo_sequence:run_lstm_demo"),
}


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
    try:
        model = cls(**json.loads(args.module_kwargs))
    except (TypeError, ValueError) as err:
        raise PrecedentsError(f"Cannot build {args.module} with --module-kwargs {args.module_kwargs}: {err}") from err
    if not Path(args.state_dict).is_file():
        raise PrecedentsError(f"State dict file {args.state_dict} does not exist.")
    state = torch.load(args.state_dict, map_location="cpu", weights_only=True)
    dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if len(dtypes) == 1:                     # build the module in the state dict's precision (e.g. float64)
        model = model.to(dtypes.pop())
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise PrecedentsError(f"{args.state_dict} does not fit {args.module}: {err}") from err
    return model.eval()


def _feature_names(text: str | None) -> list[str]:
    """``--features saliency,ig`` as a list, checked against precedents.features.FEATURE_METHODS."""
    from .features import FEATURE_METHODS

    names = [f.strip() for f in (text or "").split(",") if f.strip()]
    unknown = [f for f in names if f not in FEATURE_METHODS]
    if unknown:
        raise PrecedentsError(f"Unknown feature attribution method(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(FEATURE_METHODS)}.")
    return names


def _feature_tables(args: argparse.Namespace, model: torch.nn.Module, runs: list, X: torch.Tensor, y: torch.Tensor,
                    X_test: torch.Tensor, y_test: torch.Tensor | None, points: list[int], features: list[str],
                    images: bool) -> list:
    """Tables for ``explain``: feature attributions of tabular points (images get strips instead), and TCAV."""
    from .report.html import Table

    tables = []
    if features and not images:
        from .features import feature_attributions

        target = runs[0].attribution.target
        maps = feature_attributions(model, X_test[points], target, features, baseline=X.to(torch.float64).mean(0))
        for j, p in enumerate(points):
            order = torch.argsort(maps[features[0]][j].abs(), descending=True)[:15].tolist()
            rows = [[f"x{i}", float(X_test[p][i]), *(float(maps[m][j][i]) for m in features)] for i in order]
            tables.append(Table(f"Feature attribution, test point {p} (class {int(target[j])})",
                                ["feature", "value", *features], rows,
                                f"The 15 features with the largest |{features[0]}|; baseline: the training mean. "
                                "Positive values support the class (logit units; saliency/smoothgrad per unit)."))
    if args.tcav:
        from .features import tcav

        concept, _ = load_arrays(args.tcav)
        g = torch.Generator().manual_seed(0)
        randoms = [X[torch.randperm(len(X), generator=g)[:len(concept)]] for _ in range(5)]
        labels = y_test if y_test is not None else runs[0].explainer.attribute(X_test).target
        res = tcav(model, args.tcav_layer, concept.to(X.dtype), randoms, X_test, labels,
                   concept_name=Path(args.tcav).stem)
        tables.append(Table(f"TCAV: concept {Path(args.tcav).stem!r} at layer {args.tcav_layer}", res.columns,
                            res.rows(), f"5 CAVs against random training sets (held-out accuracy "
                            f"{res.cav_accuracy.mean():.2f}); score of class k: fraction of its test points whose "
                            "logit k grows along the concept direction; p-value against random-vs-random CAVs."))
    return tables


def explain(args: argparse.Namespace) -> int:
    from .methods import RepresenterL2, RepresenterLJE
    from .report import write_html
    from .report.build import attribute_timed, build_report, table_text

    if getattr(args, "xgboost", None) or getattr(args, "lightgbm", None):    # tree ensembles on tables
        from .demo_tabular import explain_trees

        return explain_trees(args)
    model = load_model(args)
    X, y = load_arrays(args.train)
    X_test, y_test = load_arrays(args.test)
    if y is None:
        raise PrecedentsError(f"{args.train} has no labels y: the training data needs them.")
    features = _feature_names(args.features)
    if args.tcav and not args.tcav_layer:
        raise PrecedentsError("--tcav needs --tcav-layer NAME: the module whose output holds the concept "
                              "activations (an intermediate layer, not the final linear layer's input).")
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
    strips = None
    if images and (features or args.sensitivity):
        from .report.build import explanation_strips

        strips = explanation_strips(model, runs, X_test[points], features=features, sensitivity=args.sensitivity,
                                    train_display=X, train_labels=y, k=2)
    report = build_report(
        "precedents: training examples behind each prediction",
        "Scores are contributions to the explained class's logit: positive = supports the prediction.",
        runs, fidelity_X=X_test, shown_labels=labels, shown_ids=points, cases=cases,
        train_display=X if images else None, train_labels=y, shown_display=X_test[points] if images else None,
        train_rows=tabular_rows, test_rows=test_rows, k=args.k,
        extra_tables=_feature_tables(args, model, runs, X, y, X_test, y_test, points, features, images),
        case_strips=strips)
    out = Path(args.out)
    path = write_html(report, out / "report.html")
    from .demo import write_top_k

    write_top_k(out / "top_k.csv", out / "top_k.json", runs, points, args.k)
    for table in report.tables:
        print(table_text(table), end="\n\n")
    print(f"report: {path}\ntop-k: {out / 'top_k.csv'}, {out / 'top_k.json'}")
    return 0


EVALUATE_METHODS = ("influence-exact", "influence-cg", "influence-lissa", "influence-arnoldi", "rps-l2", "rps-lje",
                    "grad-dot", "grad-cos")
EVALUATE_NOTE = ("Truth: leave-one-out retraining, loss_change(t, i) = loss_t(retrained without i) - loss_t(reference)"
                 " in nats. Correlations are pooled over all (test point, removed example) pairs. Influence scores"
                 " are in loss units (nats); representer scores (rps-*) are contributions to the true class's logit"
                 " (logit units) and grad-* scores are gradient dot products or cosines: for those, only direction"
                 " and rank are comparable, not scale.")


def _eager_linear(model: torch.nn.Module) -> torch.nn.Module:
    """A TorchScript module compiled from an ``nn.Linear`` as an eager ``nn.Linear`` (same weights and dtype)."""
    if not (isinstance(model, torch.jit.ScriptModule) and getattr(model, "original_name", None) == "Linear"):
        return model
    weight = model.weight.detach()
    bias = getattr(model, "bias", None)
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias.detach())
    return linear.eval()


def _evaluate_explainer(key: str, model: torch.nn.Module, args: argparse.Namespace) -> Any:
    from .methods import GradientSimilarity, InfluenceFunction, RepresenterL2, RepresenterLJE

    progress = not args.quiet
    if key.startswith("influence-"):
        return InfluenceFunction(model, params=args.params, solver=key.split("-", 1)[1], damping=args.damping,
                                 weight_decay=args.weight_decay, layer=args.layer, progress=progress)
    if key == "rps-l2":
        l2 = args.weight_decay / 2 if args.l2 is None else args.l2
        if l2 <= 0:
            raise PrecedentsError("rps-l2 needs l2 > 0: pass --l2, or a --weight-decay > 0 (default l2 = wd / 2).")
        return RepresenterL2(model, args.layer, l2=l2, progress=progress)
    if key == "rps-lje":
        return RepresenterLJE(model, args.layer, step=args.step, damping=args.damping, progress=progress)
    return GradientSimilarity(model, params=args.params, kind=key.split("-", 1)[1], layer=args.layer,
                              progress=progress)


def _write_evaluate(out: Path, rows: list[list[Any]], columns: list[str], summary: dict[str, Any]) -> list[Path]:
    import csv

    out.mkdir(parents=True, exist_ok=True)
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


def evaluate(args: argparse.Namespace) -> int:
    from .evaluate import LogisticRegressionRetrainer, leave_one_out, warm_start_retrainer
    from .linalg.functional import default_loss
    from .report.build import table_text
    from .report.html import Table

    keys = parse_methods(args.methods, EVALUATE_METHODS)
    if args.points < 1 or args.test_points < 1:
        raise PrecedentsError(f"--points and --test-points must be >= 1, got {args.points} and {args.test_points}.")
    if args.weight_decay < 0 or args.damping < 0:
        raise PrecedentsError("--weight-decay and --damping must be >= 0.")
    model = _eager_linear(load_model(args))
    X, y = load_arrays(args.train)
    X_test, y_test = load_arrays(args.test)
    if y is None:
        raise PrecedentsError(f"{args.train} has no labels y: the training data needs them.")
    if y_test is None:
        raise PrecedentsError(f"{args.test} has no labels y: evaluate needs the test labels (the truth is the "
                              "change of each test point's loss).")
    if len(X) != len(y) or len(X_test) != len(y_test):
        raise PrecedentsError(f"X and y differ in length: train {len(X)} vs {len(y)}, test {len(X_test)} vs "
                              f"{len(y_test)}.")
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
    if args.retrain == "warm" and (args.steps < 0 or args.lr <= 0):
        raise PrecedentsError(f"--retrain warm needs --steps >= 0 and --lr > 0, got {args.steps} and {args.lr}.")

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
        explainer = _evaluate_explainer(key, model, args).fit(X, y)
        # influence / grad-*: attribute(X, y), the true labels; representers: attribute(X, target=true labels)
        res = explainer.attribute(Xs, target=ys)
        scores = res.scores.detach().to(torch.float64).cpu()
        runs.append((key, scores, time.perf_counter() - start))

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
    for key, scores, seconds in runs:
        corr = truth.correlate(scores)
        units = {"rps-l2": "logit", "rps-lje": "logit", "grad-dot": "gradient product",
                 "grad-cos": "cosine"}.get(key, "loss (nats)")
        rows.append([key, float(corr.pearson), float(corr.spearman), float(seconds), units])
    summary = {
        "note": EVALUATE_NOTE, "retrain": args.retrain, "weight_decay": args.weight_decay, "damping": args.damping,
        "params": args.params, "seed": args.seed, "n_train": n, "n_test": len(chosen), "n_removed": len(indices),
        "n_pairs": len(chosen) * len(indices), "test_indices": chosen.tolist(), "removed_indices": indices.tolist(),
        "reference_loss": truth.reference_loss.tolist(), "results": str(args.results),
        "retrain_seconds_total": float(truth.seconds.sum()),
        "methods": [dict(zip(["method", "pearson", "spearman", "seconds", "units"], row, strict=True))
                    for row in rows]}
    paths = _write_evaluate(Path(args.out), rows, columns, summary)
    table = Table(f"Scores vs leave-one-out retraining ({len(indices)} removed x {len(chosen)} test points, "
                  f"retrain {args.retrain})", columns, rows)
    print(table_text(table), end="\n\n")
    print(EVALUATE_NOTE)
    print(f"results: {', '.join(str(p) for p in paths)}; retrains: {args.results}")
    return 0


DEBUG_NOTE = ("Retraining after corrections refits only the final linear layer, on the features the given model "
              "computes (frozen), to the exact optimum of mean cross-entropy + wd/2 ||theta||^2 with the "
              "--weight-decay given; 'before' is the same refit on the uncorrected labels, so the change isolates "
              "the corrections. Retrain the whole network yourself to measure more than that.")


def debug(args: argparse.Namespace) -> int:
    from .evaluate.mislabel import HeadRetrainer, accuracy, fix_and_retrain, mislabel, read_corrections
    from .report.review import write_review

    if args.weight_decay < 0 or args.damping < 0 or args.top < 1:
        raise PrecedentsError("--weight-decay and --damping must be >= 0 and --top >= 1.")
    model = _eager_linear(load_model(args))
    X, y = load_arrays(args.train)
    if y is None:
        raise PrecedentsError(f"{args.train} has no labels y: debugging checks the given labels.")
    if len(X) != len(y):
        raise PrecedentsError(f"{args.train}: X has {len(X)} rows but y has {len(y)}.")
    y = y.long().reshape(-1)
    param = next(iter(model.parameters()), None)
    if param is not None and param.is_floating_point() and X.is_floating_point():
        X = X.to(param.dtype)
    corrections = None
    if args.corrections:                      # checked before the (slower) scores, so a bad file fails fast
        if not args.test:
            raise PrecedentsError("--corrections retrains and measures test accuracy: pass --test test.npz (with y).")
        X_test, y_test = load_arrays(args.test)
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
    out = Path(args.out)
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


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="TorchScript file")
    parser.add_argument("--state-dict", help="state dict file (with --module)")
    parser.add_argument("--module", help="package.module:ClassName of the model (with --state-dict)")
    parser.add_argument("--module-kwargs", default="{}", help="JSON keyword arguments for the model class")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="precedents", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain a model trained on real data; writes out/demo/report.html")
    demo.add_argument("--task", choices=sorted(DEMO_TASKS), default="mnist",
                      help="; ".join(f"{name}: {what}" for name, (what, _) in sorted(DEMO_TASKS.items())))
    demo.add_argument("--out", default=None, help="output folder (default out/demo, or out/demo-TASK)")
    demo.add_argument("--cache", default=None, help="cache directory (default $PRECEDENTS_CACHE or .cache/precedents)")
    demo.add_argument("--k", type=int, default=5)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--features", default=None, help="feature attribution methods to show, comma-separated "
                      "(default for mnist: saliency,smoothgrad,ig,occlusion,lime; '' for none)")
    demo.add_argument("--no-tcav", dest="tcav", action="store_false", help="skip the TCAV table")
    ex = sub.add_parser("explain", help="explain your own model on your own data")
    _model_arguments(ex)
    ex.add_argument("--xgboost", help="XGBoost model file (.json or .ubj) instead of a torch model")
    ex.add_argument("--lightgbm", help="LightGBM model file (.txt) instead of a torch model")
    ex.add_argument("--label", help="label column of the --train/--test tables (tree models)")
    ex.add_argument("--train", required=True, help=".npz or .pt with X and y; .csv or .parquet with a tree model")
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
    ex.add_argument("--features", default="", help="feature attribution beside the precedents, comma-separated "
                    "from saliency,smoothgrad,ig,occlusion,lime (needs captum; default: none)")
    ex.add_argument("--no-sensitivity", dest="sensitivity", action="store_false",
                    help="image inputs: skip the sensitivity-map decomposition figure")
    ex.add_argument("--tcav", default=None, help=".npz/.pt with X: example inputs of a concept (TCAV table)")
    ex.add_argument("--tcav-layer", default=None, help="module whose output holds the activations for --tcav")
    ex.add_argument("--quiet", action="store_true")
    ev = sub.add_parser("evaluate", help="compare attribution methods with leave-one-out retraining (the truth)")
    _model_arguments(ev)
    ev.add_argument("--train", required=True, help=".npz or .pt with X and y")
    ev.add_argument("--test", required=True, help=".npz or .pt with X and y (labels required)")
    ev.add_argument("--methods", default="influence-exact,rps-l2",
                    help=f"comma-separated, from: {', '.join(EVALUATE_METHODS)}")
    ev.add_argument("--weight-decay", type=float, required=True,
                    help="L2 strength the model was trained with (objective mean loss + wd/2 ||theta||^2)")
    ev.add_argument("--damping", type=float, default=0.0)
    ev.add_argument("--params", choices=["head", "all"], default="head",
                    help="parameters for influence and grad-* (head: the final nn.Linear)")
    ev.add_argument("--layer", default=None, help="dotted name of the final nn.Linear (default: the last one)")
    ev.add_argument("--l2", type=float, default=None, help="rps-l2 regularisation (default weight_decay / 2)")
    ev.add_argument("--step", type=float, default=0.01, help="rps-lje anchor step")
    ev.add_argument("--points", type=int, default=100, help="training examples to leave out, one at a time")
    ev.add_argument("--test-points", type=int, default=5, help="test points (those with the highest loss)")
    ev.add_argument("--retrain", choices=["warm", "logistic"], default="warm")
    ev.add_argument("--steps", type=int, default=1000, help="--retrain warm: SGD steps")
    ev.add_argument("--lr", type=float, default=0.01, help="--retrain warm: learning rate")
    ev.add_argument("--results", required=True, help="JSON-lines file of finished retrains (a rerun resumes)")
    ev.add_argument("--out", default="out/evaluate")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--quiet", action="store_true")
    db = sub.add_parser("debug", help="rank training labels to check first (mislabel detection); fix and retrain")
    _model_arguments(db)
    db.add_argument("--train", required=True, help=".npz or .pt with X and y (the labels to check)")
    db.add_argument("--test", default=None, help=".npz or .pt with X and y: test accuracy after --corrections")
    db.add_argument("--methods", default="rps-l2,rps-lje,influence-cg,loss",
                    help="comma-separated: rps-l2, rps-lje, influence-{exact,cg,lissa,arnoldi}, tracin, loss, random")
    db.add_argument("--top", type=int, default=100, help="examples in the review list")
    db.add_argument("--weight-decay", type=float, default=0.0,
                    help="L2 the model was trained with (mean loss + wd/2 ||theta||^2): influence, head refit")
    db.add_argument("--l2", type=float, default=None, help="rps-l2 lambda (default wd / 2, or 0.003 if wd is 0)")
    db.add_argument("--damping", type=float, default=0.0, help="influence and rps-lje damping")
    db.add_argument("--params", choices=["head", "all"], default="head", help="parameters for influence")
    db.add_argument("--layer", default=None, help="dotted name of the final nn.Linear (default: the last one)")
    db.add_argument("--checkpoints", default=None, help="tracin: comma-separated state-dict files (default: "
                    "the final weights only)")
    db.add_argument("--corrections", default=None, help="CSV with header index,label: fix, refit the last layer, "
                    "report the test accuracy change")
    db.add_argument("--out", default="out/debug")
    db.add_argument("--seed", type=int, default=0, help="seed of 'random' and of the stochastic solvers")
    db.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            module_name, function_name = DEMO_TASKS[args.task][1].split(":")
            run = getattr(importlib.import_module(module_name, __package__), function_name)
            out = args.out or ("out/demo" if args.task == "mnist" else f"out/demo-{args.task}")
            options: dict[str, Any] = {} if args.features is None else {"features": _feature_names(args.features)}
            if not args.tcav:
                options["tcav"] = False
            accepted = inspect.signature(run).parameters
            if any(name not in accepted for name in options):
                raise PrecedentsError(f"demo --task {args.task} has no feature attribution or TCAV: drop "
                                      "--features / --no-tcav.")
            run(out, args.cache, k=args.k, progress=not args.quiet, **options)
            return 0
        if args.command == "evaluate":
            return evaluate(args)
        if args.command == "debug":
            return debug(args)
        return explain(args)
    except PrecedentsError as err:
        print(f"precedents: error: {err}", file=sys.stderr)
        return 2


def _entry() -> Any:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
