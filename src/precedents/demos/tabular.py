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
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import PrecedentsError
from ..adapters.trees import SUGGESTED_DAMPING, XGBOOST_INSTALL, TreeHead, categorical_frame
from ..pipeline import explain_tabular, rows_of
from ..report import Table, build_report, precedents_table, table_text, write_html, write_top_k
from .datasets import load_compas, load_german_credit

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
    try:
        import xgboost as xgb
    except ImportError as err:
        raise PrecedentsError(f"The tabular demos need xgboost, which is not installed: {XGBOOST_INSTALL}.") from err
    return xgb.XGBClassifier(**{**XGB_PARAMS, **params}).fit(X, y)


def split(X: Any, y: np.ndarray, n_test: int, seed: int = 0) -> tuple[Any, np.ndarray, Any, np.ndarray]:
    """A seeded train/test split of a DataFrame (positional, index reset)."""
    perm = np.random.default_rng(seed).permutation(len(X))
    te, tr = perm[:n_test], perm[n_test:]
    return (X.iloc[tr].reset_index(drop=True), y[tr], X.iloc[te].reset_index(drop=True), y[te])


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
             f"the model's prediction for them, and the score. The cards show {len(spec['shown'])} of the "
             f"{X.shape[1]} attributes ({', '.join(spec['shown'])}).\n\nThe ensemble is seen as a linear head on "
             "its trees' outputs (one feature per tree, plus a constant), so RPS-LJE and influence explain how each "
             "training person moves the weights of that head; the trees' structure is held fixed. Retraining the "
             "ensemble without a person also regrows trees, which these scores do not model: docs/trees_loo.md "
             "measures how well they predict leave-one-out retraining (weakly).")
    report = build_report(
        f"precedents: which training cases is this {spec['name']} prediction built on?", intro, runs,
        shown_labels=yte[shown], shown_ids=shown,
        cases=[(title, pos) for pos, (title, _) in enumerate(chosen)], train_display=None, train_labels=ytr,
        train_predictions=train_pred, class_names=spec["classes"], k=k, train_rows=rows_of(Xtr[spec["shown"]]),
        test_rows=rows_of(Xte.iloc[shown][spec["shown"]]), extra_tables=[setup])
    path = write_html(report, out / "report.html")
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


__all__ = ["run_compas_demo", "run_german_demo", "train_xgboost"]
