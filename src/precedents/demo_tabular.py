"""Tabular demos: XGBoost on German credit and on COMPAS two-year recidivism, explained by training cases.

"This person was predicted high-risk because of these training cases": each report case shows one test person
and, per method, the training people with the largest positive and negative scores as table rows (feature
values, label, the model's prediction, score). Writes ``report.html``, ``top_k.csv``/``top_k.json`` and the
trained model (``model.json``, so ``precedents explain --xgboost`` can reuse it) to the output folder, and prints
the precedents of one person as a table.

Methods, on the tree head (:mod:`precedents.adapters.trees`):

* RPS-LJE (Sui et al. 2021) with the authors' XGBoost anchor step 1e-4 and damping
  ``SUGGESTED_DAMPING * lambda_max``; scores in logit units, summing to the explained head's margin;
* influence on the head (Koh & Liang 2017), exact, same damping, of the *predicted* class's loss: a score is the
  predicted increase of that loss (nats) if the training person were removed, so positive = supports the
  prediction, as for RPS-LJE.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._validation import PrecedentsError
from .adapters.trees import SUGGESTED_DAMPING, TreeHead, categorical_frame, load_tree_model, read_table
from .datasets import load_compas, load_german_credit
from .methods import InfluenceFunction, RepresenterLJE
from .report import Table, write_html
from .report.build import MethodRun, attribute_timed, build_report, table_text

#: the anchor step the RPS-LJE authors use for XGBoost
LJE_STEP = 1e-4
XGB_PARAMS = {"n_estimators": 100, "max_depth": 3, "learning_rate": 0.1, "enable_categorical": True, "n_jobs": 1,
              "random_state": 0, "tree_method": "hist"}

GERMAN = {"name": "German credit", "classes": ["good risk", "bad risk"], "positive": "bad credit risk",
          "shown": ["status", "duration", "credit_history", "purpose", "credit_amount", "savings", "age"],
          "source": "UCI Statlog German credit, 1,000 applicants, 20 attributes (13 categorical)"}
COMPAS = {"name": "COMPAS two-year recidivism", "classes": ["did not re-offend", "re-offended"],
          "positive": "re-offended within two years",
          "shown": ["sex", "age", "race", "priors_count", "juv_fel_count", "juv_misd_count", "c_charge_degree"],
          "source": "ProPublica COMPAS data with ProPublica's filters, 6,172 defendants; features without the "
                    "COMPAS score"}


def train_xgboost(X: Any, y: np.ndarray, **params: Any) -> Any:
    """A seeded XGBoost classifier (native categorical columns) with the demo's parameters."""
    from .adapters.trees import XGBOOST_INSTALL, _import

    xgb = _import("xgboost", XGBOOST_INSTALL)
    return xgb.XGBClassifier(**{**XGB_PARAMS, **params}).fit(X, y)


def split(X: Any, y: np.ndarray, n_test: int, seed: int = 0) -> tuple[Any, np.ndarray, Any, np.ndarray]:
    """A seeded train/test split of a DataFrame (positional, index reset)."""
    perm = np.random.default_rng(seed).permutation(len(X))
    te, tr = perm[:n_test], perm[n_test:]
    return (X.iloc[tr].reset_index(drop=True), y[tr], X.iloc[te].reset_index(drop=True), y[te])


def rows_of(X: Any) -> list[dict[str, Any]]:
    """Each row of a DataFrame as {column: value} (for the report's table cards)."""
    return [{str(k): (v if not isinstance(v, (np.generic,)) else v.item()) for k, v in row.items()}
            for row in X.to_dict(orient="records")]


def explain_tabular(model: Any, Xtr: Any, ytr: np.ndarray, Xte: Any, shown: Sequence[int], *, k: int = 5,
                    progress: bool = True, damping: float | None = None, step: float = LJE_STEP,
                    methods: Sequence[str] = ("rps-lje", "influence")) -> tuple[list[MethodRun], dict]:
    """Fit RPS-LJE and/or head influence on a tree ensemble and attribute the test rows ``shown``.

    ``damping`` None: ``SUGGESTED_DAMPING`` times the largest eigenvalue of the head's Hessian (at the anchor).
    Influence explains the loss of the *predicted* class. Returns the runs and diagnostics (lambda_max, damping,
    stationarity, the warnings the fits raised).
    """
    unknown = [m for m in methods if m not in ("rps-lje", "influence")]
    if unknown or not methods:
        raise PrecedentsError(f"Unknown method(s) for a tree ensemble: {', '.join(unknown) or '(none)'}; choose "
                              "from rps-lje, influence.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        probe = RepresenterLJE(model, step=step, progress=progress).fit(Xtr, ytr)
    lam = float(probe.solver_.eigenvalues.max())
    d = SUGGESTED_DAMPING * lam if damping is None else damping
    Xs = Xte.iloc[list(shown)]
    predicted = probe.attribute(Xs).target
    runs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        if "rps-lje" in methods:
            start = time.perf_counter()
            lje = RepresenterLJE(model, step=step, damping=d, progress=progress).fit(Xtr, ytr)
            runs.append(attribute_timed("RPS-LJE", lje, time.perf_counter() - start, Xs, None, k))
        if "influence" in methods:
            start = time.perf_counter()
            inf = InfluenceFunction(model, params="head", solver="exact", damping=d, progress=progress).fit(Xtr, ytr)
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            res = inf.attribute(Xs, predicted)            # the predicted class's loss
            res.top(k)
            runs.append(MethodRun("influence (head)", inf, res, fit_s, time.perf_counter() - start))
    info = {"lambda_max": lam, "damping": d, "stationarity": probe.stationarity_,
            "warnings": sorted({str(w.message).split(" (")[0] for w in caught})}
    return runs, info


def precedents_table(run: MethodRun, pos: int, X_train: Any, y_train: np.ndarray, train_pred: np.ndarray,
                     classes: Sequence[str], columns: Sequence[str], k: int) -> Table:
    """The k most positive and k most negative training rows of one test point as a table."""
    top = run.attribution.top(k)
    rows = []
    for kind, idx, sc in (("+", top.positive_indices[pos], top.positive_scores[pos]),
                          ("-", top.negative_indices[pos], top.negative_scores[pos])):
        for rank, (i, s) in enumerate(zip(idx.tolist(), sc.tolist(), strict=True), start=1):
            row = X_train.iloc[i]
            rows.append([f"{kind}{rank}", i, float(s), classes[int(y_train[i])], classes[int(train_pred[i])],
                         *[row[c] for c in columns]])
    units = "logit" if run.attribution.measurement.additive else "nats"
    return Table(f"{run.name}: precedents ({units}; + supports the prediction, - opposes it)",
                 ["rank", "train row", "score", "label", "model says", *columns], rows)


def _run_demo(spec: dict[str, Any], X: Any, y: np.ndarray, n_test: int, out_dir: str | Path, *, k: int,
              progress: bool) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    X = categorical_frame(X)
    Xtr, ytr, Xte, yte = split(X, y, n_test)
    start = time.perf_counter()
    model = train_xgboost(Xtr, ytr)
    train_seconds = time.perf_counter() - start
    model.get_booster().save_model(str(out / "model.json"))
    head = TreeHead(model, progress=False)
    train_pred = (head.run(head.batches(Xtr)).logits[:, 0] > 0).long().numpy()
    test_pred = (head.run(head.batches(Xte)).logits[:, 0] > 0).long().numpy()
    accuracy = float((test_pred == yte).mean())
    # cases: predicted positive (high risk) and right, predicted positive and wrong, predicted negative
    right = np.flatnonzero((test_pred == 1) & (yte == 1))[:2].tolist()
    wrong = np.flatnonzero((test_pred == 1) & (yte == 0))[:1].tolist()
    negative = np.flatnonzero(test_pred == 0)[:1].tolist()
    chosen = [(f"Predicted {spec['classes'][1]}, correctly", i) for i in right] + \
             [(f"Predicted {spec['classes'][1]}, but the person was {spec['classes'][0]}", i) for i in wrong] + \
             [(f"Predicted {spec['classes'][0]}", i) for i in negative]
    shown = [i for _, i in chosen]
    runs, info = explain_tabular(model, Xtr, ytr, Xte, shown, k=k, progress=progress)
    setup = Table("Setup", ["item", "value"], [
        ["data", spec["source"]],
        ["split", f"{len(ytr)} training / {len(yte)} test rows (seeded)"],
        ["model", f"XGBoost, {XGB_PARAMS['n_estimators']} trees of depth {XGB_PARAMS['max_depth']}, learning rate "
                  f"{XGB_PARAMS['learning_rate']}, native categorical columns, trained in {train_seconds:.2f} s"],
        ["test accuracy", accuracy],
        ["head", f"{head.n_trees} tree outputs + a constant (the base score); sigmoid link"],
        ["damping", f"{info['damping']:.3g} = {SUGGESTED_DAMPING:g} x lambda_max ({info['lambda_max']:.3g}) of the "
                    "head's Hessian, for both methods"],
        ["stationarity", f"||grad L(Theta)|| = {info['stationarity']:.3g}: the tree head is not a stationary point "
                         "of the training loss (boosting never fits the trees' weights jointly)"],
        ["warnings", "; ".join(info["warnings"]) or "none"],
    ])
    intro = (f"{spec['name']}: an XGBoost model predicts whether a person {spec['positive']}. Each case shows one "
             "test person and, for each method, the training people whose scores most support (POSITIVE) and most "
             "oppose (NEGATIVE) the model's prediction for that person, with their feature values, true label, "
             "the model's prediction for them, and the score.\n\nThe ensemble is seen as a linear head on its trees' "
             "outputs (one feature per tree, plus a constant), so RPS-LJE and influence explain how each training "
             "person moves the weights of that head; the trees' structure is held fixed. Retraining the ensemble "
             "without a person also regrows trees, which these scores do not model: docs/trees_loo.md measures how "
             "well they predict leave-one-out retraining (weakly).")
    report = build_report(
        f"precedents: which training cases is this {spec['name']} prediction built on?", intro, runs,
        fidelity_X=Xte, shown_labels=yte[shown], shown_ids=shown,
        cases=[(title, pos) for pos, (title, _) in enumerate(chosen)], train_display=None, train_labels=ytr,
        train_predictions=train_pred, class_names=spec["classes"], k=k, train_rows=rows_of(Xtr),
        test_rows=rows_of(Xte.iloc[shown]), extra_tables=[setup])
    path = write_html(report, out / "report.html")
    from .demo import write_top_k

    write_top_k(out / "top_k.csv", out / "top_k.json", runs, shown, k)
    for table in report.tables:
        print()
        print(table_text(table))
    person = Xte.iloc[shown[0]]
    print(f"\nTest person {shown[0]} ({chosen[0][0]}): " +
          ", ".join(f"{c}={person[c]}" for c in spec["shown"]))
    for run in runs:
        print()
        print(table_text(precedents_table(run, 0, Xtr, ytr, train_pred, spec["classes"], spec["shown"], k)))
    print(f"\nreport: {path}\ntop-k: {out / 'top_k.csv'}\nmodel: {out / 'model.json'}")
    return {"report": str(path), "runs": runs, "accuracy": accuracy, "info": info, "shown": shown}


def explain_trees(args: Any) -> int:
    """``precedents explain --xgboost model.json|.ubj (or --lightgbm model.txt) --train T --test T --label COLUMN``.

    Reads CSV/Parquet tables, converts columns the way the model was trained (categorical features named by the
    saved model become pandas categories with the model's categories), explains ``--points`` test rows with
    ``--methods`` (rps-lje, influence; default both), writes ``report.html``, ``top_k.csv``/``top_k.json`` to
    ``--out`` and prints the precedents of the first point as a table. ``--damping 0`` (the default) means
    ``SUGGESTED_DAMPING`` times the head Hessian's largest eigenvalue; ``--step`` left at the command's default
    (0.01, made for networks) means the RPS-LJE authors' XGBoost step 1e-4, and the default ``--methods``
    (rps-l2,rps-lje) means rps-lje,influence.
    """
    kind, path = ("xgboost", args.xgboost) if getattr(args, "xgboost", None) else ("lightgbm", args.lightgbm)
    model = load_tree_model(path, kind)
    if not args.label:
        raise PrecedentsError("--label COLUMN is required with a tree model: it names the label column of the "
                              "--train (and --test) tables.")
    Xtr, ytr = read_table(args.train, args.label)
    Xte, yte = read_table(args.test, args.label)
    if ytr is None:
        raise PrecedentsError(f"{args.train} has no column {args.label!r} (it has: "
                              f"{', '.join(map(str, Xtr.columns))}).")
    points = [int(p) for p in args.points.split(",")] if args.points else list(range(min(4, len(Xte))))
    if max(points) >= len(Xte) or min(points) < 0:
        raise PrecedentsError(f"--points asks for test row {max(points)}, but {args.test} has {len(Xte)} rows.")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if methods == ["rps-l2", "rps-lje"]:          # the command's default, made for networks
        methods = ["rps-lje", "influence"]
    runs, info = explain_tabular(model, Xtr, ytr, Xte, points, k=args.k, progress=not args.quiet,
                                 damping=args.damping or None, step=args.step if args.step != 0.01 else LJE_STEP,
                                 methods=methods)
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
        fidelity_X=Xte, shown_labels=shown_labels, shown_ids=points, cases=cases, train_display=None,
        train_labels=ytr, train_predictions=train_pred, class_names=classes, k=args.k, train_rows=rows_of(Xtr),
        test_rows=rows_of(Xte.iloc[points]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = write_html(report, out / "report.html")
    from .demo import write_top_k

    write_top_k(out / "top_k.csv", out / "top_k.json", runs, points, args.k)
    for table in report.tables:
        print(table_text(table), end="\n\n")
    print(f"damping {info['damping']:.3g} (lambda_max {info['lambda_max']:.3g}); test row {points[0]}:")
    columns = [str(c) for c in Xtr.columns[:6]]
    for run in runs:
        print(table_text(precedents_table(run, 0, Xtr, ytr, train_pred, classes, columns, args.k)), end="\n\n")
    print(f"report: {report_path}\ntop-k: {out / 'top_k.csv'}, {out / 'top_k.json'}")
    return 0


def run_german_demo(out_dir: str | Path = "out/demo-german", cache_dir: str | Path | None = None, *, k: int = 5,
                    progress: bool = True) -> dict[str, Any]:
    """XGBoost on German credit (800 train / 200 test), explained by RPS-LJE and head influence."""
    X, y = load_german_credit()
    return _run_demo(GERMAN, X, y, 200, out_dir, k=k, progress=progress)


def run_compas_demo(out_dir: str | Path = "out/demo-compas", cache_dir: str | Path | None = None, *, k: int = 5,
                    progress: bool = True) -> dict[str, Any]:
    """XGBoost on COMPAS two-year recidivism (5,172 train / 1,000 test), explained by RPS-LJE and influence."""
    X, y = load_compas()
    return _run_demo(COMPAS, X, y, 1000, out_dir, k=k, progress=progress)


__all__ = ["explain_tabular", "explain_trees", "precedents_table", "run_compas_demo", "run_german_demo",
           "train_xgboost"]
