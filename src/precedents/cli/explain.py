"""``precedents explain``: the training examples behind a model's predictions on your own data.

A torch model (``--model`` TorchScript, or ``--state-dict`` with ``--module``) on ``.npz``/``.pt`` arrays, or a
tree ensemble (``--xgboost``/``--lightgbm``) on CSV/Parquet tables. Writes ``report.html`` and
``top_k.csv``/``top_k.json`` into ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .._validation import PrecedentsError
from ..pipeline import LJE_STEP, MethodRun, explain_tabular, explanation_strips, fit_timed, rows_of, run_method
from ..report import Table, build_report, precedents_table, table_text, write_html, write_top_k
from . import methods
from .files import check_model_runs, load_arrays, load_model, prepare_out

#: what explain writes, and what ``precedents serve`` adds beside it (the review decisions)
OUTPUTS = ("report.html", "top_k.csv", "top_k.json", "explorer", "review.sqlite", "review.sqlite-wal",
           "review.sqlite-shm")
DEFAULT_METHODS = ["rps-l2", "rps-lje"]


def _points(args: argparse.Namespace, n_test: int) -> list[int]:
    points = args.points if args.points is not None else list(range(min(4, n_test)))
    if max(points) >= n_test:
        raise PrecedentsError(f"--points asks for test point {max(points)}, but {args.test} has {n_test}.")
    return points


def _predicted(model: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The model's predicted class of each row (a one-output model: logit > 0)."""
    with torch.no_grad():
        logits = model(X)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise PrecedentsError(f"The model returned {type(logits).__name__} of shape "
                              f"{tuple(getattr(logits, 'shape', ()))}, not (n, classes) logits.")
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


def _feature_tables(args: argparse.Namespace, model: torch.nn.Module, runs: list[MethodRun], X: torch.Tensor,
                    X_test: torch.Tensor, y_test: torch.Tensor | None, points: list[int], images: bool) -> list[Table]:
    """Feature attributions of tabular points (images get strips instead), and the TCAV table."""
    tables = []
    features = args.features
    if features and not images:
        from ..features import feature_attributions

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
        from ..features import tcav

        concept, _ = load_arrays(args.tcav, "--tcav file")
        g = torch.Generator().manual_seed(0)
        randoms = [X[torch.randperm(len(X), generator=g)[:len(concept)]] for _ in range(5)]
        labels = y_test if y_test is not None else _predicted(model, X_test)
        res = tcav(model, args.tcav_layer, concept.to(X.dtype), randoms, X_test, labels,
                   concept_name=Path(args.tcav).stem)
        tables.append(Table(f"TCAV: concept {Path(args.tcav).stem!r} at layer {args.tcav_layer}", res.columns,
                            res.rows(), f"5 CAVs against random training sets (held-out accuracy "
                            f"{res.cav_accuracy.mean():.2f}); score of class k: fraction of its test points whose "
                            "logit k grows along the concept direction; p-value against random-vs-random CAVs."))
    return tables


def _explain_torch(args: argparse.Namespace) -> int:
    if args.label:
        raise PrecedentsError("--label names a column of CSV/Parquet tables, for tree models (--xgboost or "
                              "--lightgbm); torch models read X and y from .npz/.pt files.")
    if args.tcav and not args.tcav_layer:
        raise PrecedentsError("--tcav needs --tcav-layer NAME: the module whose output holds the concept "
                              "activations (an intermediate layer, not the final linear layer's input).")
    model = load_model(args)
    X, y = load_arrays(args.train, "Training file")
    X_test, y_test = load_arrays(args.test, "Test file")
    if y is None:
        raise PrecedentsError(f"{args.train} has no labels y: the training data needs them.")
    check_model_runs(model, X, args.train)
    check_model_runs(model, X_test, args.test)
    points = _points(args, len(X_test))
    out = prepare_out(args.out, "explain", OUTPUTS)
    shown = X_test[points]
    runs = []
    for key in args.methods or DEFAULT_METHODS:
        est = methods.build(key, model, layer=args.layer, l2=args.l2, step=args.step, damping=args.damping,
                            progress=not args.quiet)
        est, seconds = fit_timed(est, X, y)
        labels = _predicted(model, shown) if methods.loss_based(key) else None   # explain the prediction's loss
        runs.append(run_method(key, est, seconds, shown, y=labels, k=args.k,
                               overlap_X=X_test[: args.overlap] if args.overlap and labels is None else None,
                               fidelity_X=X_test))
    preds = runs[0].attribution.target
    labels = y_test[points] if y_test is not None else preds
    cases = [("Misclassified" if y_test is not None and int(labels[j]) != int(preds[j]) else
              ("Correctly classified" if y_test is not None else "Test point"), j) for j in range(len(points))]
    images = X.ndim >= 3
    tabular_rows = None if images else [{f"x{j}": float(v) for j, v in enumerate(row)} for row in X.tolist()]
    test_rows = None if images else [{f"x{j}": float(v) for j, v in enumerate(row)} for row in shown.tolist()]
    strips = None
    if images and (args.features or args.sensitivity):
        strips = explanation_strips(model, runs, shown, features=args.features, sensitivity=args.sensitivity,
                                    train_display=X, train_labels=y, k=2)
    report = build_report(
        "precedents: training examples behind each prediction",
        "Scores are contributions to the explained class's logit (RPS methods, logit units) or predicted changes "
        "of the predicted class's loss (influence and gradient methods, loss units): positive = supports the "
        "prediction.", runs, shown_labels=labels, shown_ids=points, cases=cases,
        train_display=X if images else None, train_labels=y, shown_display=shown if images else None,
        train_rows=tabular_rows, test_rows=test_rows, k=args.k,
        extra_tables=_feature_tables(args, model, runs, X, X_test, y_test, points, images), case_strips=strips)
    path = write_html(report, out / "report.html")
    write_top_k(out / "top_k.csv", out / "top_k.json", runs, points, args.k)
    for table in report.tables:
        print(table_text(table), end="\n\n")
    print(f"report: {path}\ntop-k: {out / 'top_k.csv'}, {out / 'top_k.json'}")
    if args.explorer_points:
        from ..serve import write_explorer_bundle

        n = min(args.explorer_points, len(X_test))
        write_explorer_bundle(out / "explorer", model, (X, y), (X_test[:n], None if y_test is None else y_test[:n]),
                              [run.explainer for run in runs], k=max(args.k, 20), layer=args.layer,
                              feature_maps=("saliency",) if images and args.features else (),
                              progress=not args.quiet, title="precedents explain",
                              data_description=f"{args.train}: {len(X)} training examples; {args.test}: the first "
                                               f"{n} of {len(X_test)} test points")
        print(f"explore every prediction in the browser: precedents serve {out}")
    return 0


def _explain_trees(args: argparse.Namespace) -> int:
    """Tree ensembles on CSV/Parquet tables: RPS-LJE and exact influence on the trees' head.

    Columns are converted the way the model was trained (categorical features named by the saved model become
    pandas categories with the model's categories). ``--damping`` unset means ``SUGGESTED_DAMPING`` times the
    head Hessian's largest eigenvalue; ``--step`` unset means the RPS-LJE authors' XGBoost step 1e-4.
    """
    from ..adapters.trees import TreeHead, load_tree_model, read_table

    if args.xgboost and args.lightgbm:
        raise PrecedentsError("Give one tree model: --xgboost or --lightgbm, not both.")
    if args.model or args.state_dict:
        raise PrecedentsError("Give either a torch model (--model/--state-dict) or a tree model "
                              "(--xgboost/--lightgbm), not both.")
    if args.features or args.tcav:
        raise PrecedentsError("--features and --tcav explain torch models; drop them for a tree model.")
    kind, path = ("xgboost", args.xgboost) if args.xgboost else ("lightgbm", args.lightgbm)
    model = load_tree_model(path, kind)
    if not args.label:
        raise PrecedentsError("--label COLUMN is required with a tree model: it names the label column of the "
                              "--train (and --test) tables.")
    Xtr, ytr = read_table(args.train, args.label)
    Xte, yte = read_table(args.test, args.label)
    if ytr is None:
        raise PrecedentsError(f"{args.train} has no column {args.label!r} (it has: "
                              f"{', '.join(map(str, Xtr.columns))}).")
    if len(Xtr) == 0 or len(Xte) == 0:
        raise PrecedentsError(f"{args.train if len(Xtr) == 0 else args.test} has no rows.")
    points = _points(args, len(Xte))
    out = prepare_out(args.out, "explain", OUTPUTS)
    runs, info = explain_tabular(model, Xtr, ytr, Xte, points, k=args.k, progress=not args.quiet,
                                 damping=args.damping, step=args.step or LJE_STEP,
                                 methods=args.methods or ["rps-lje", "influence-exact"])
    head = TreeHead(model, progress=False)
    train_pred = (head.run(head.batches(Xtr)).logits.argmax(1) if head.n_outputs > 1 else
                  (head.run(head.batches(Xtr)).logits[:, 0] > 0).long()).numpy()
    shown_labels = yte[points] if yte is not None else runs[0].attribution.target.numpy()
    cases = [("Test row" if yte is None else ("Misclassified" if int(yte[p]) != int(runs[0].attribution.target[j])
                                              else "Correctly classified"), j) for j, p in enumerate(points)]
    classes = [str(c) for c in range(head.n_classes)]
    report = build_report(
        f"precedents: training rows behind each prediction of {Path(path).name}",
        "Scores of the training rows for each shown test row: positive supports the model's prediction, negative "
        "opposes it. RPS-LJE in logit units (they sum to the explained head's margin); influence in nats (the "
        "predicted increase of the predicted class's loss if the row were removed).", runs,
        shown_labels=shown_labels, shown_ids=points, cases=cases, train_display=None,
        train_labels=ytr, train_predictions=train_pred, class_names=classes, k=args.k, train_rows=rows_of(Xtr),
        test_rows=rows_of(Xte.iloc[points]))
    report_path = write_html(report, out / "report.html")
    write_top_k(out / "top_k.csv", out / "top_k.json", runs, points, args.k)
    for table in report.tables:
        print(table_text(table), end="\n\n")
    print(f"damping {info['damping']:.3g} (lambda_max {info['lambda_max']:.3g}); test row {points[0]}:")
    columns = [str(c) for c in Xtr.columns[:6]]
    for run in runs:
        print(table_text(precedents_table(run, 0, Xtr, ytr, train_pred, classes, columns, args.k)), end="\n\n")
    print(f"report: {report_path}\ntop-k: {out / 'top_k.csv'}, {out / 'top_k.json'}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.xgboost or args.lightgbm:
        return _explain_trees(args)
    return _explain_torch(args)
