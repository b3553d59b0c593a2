"""``precedents explain --xgboost``: a saved model and CSV tables, end to end, against the Python API."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch

import precedents as pc
from precedents.adapters.trees import SUGGESTED_DAMPING, TreeHead, categorical_frame, load_tree_model, read_table
from precedents.cli import main
from precedents.datasets import load_german_credit

xgb = pytest.importorskip("xgboost")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """German credit as CSV files (text categories, True/False columns) and an XGBoost model saved as JSON/UBJ."""
    folder = tmp_path_factory.mktemp("trees_cli")
    X, y = load_german_credit()
    perm = np.random.default_rng(0).permutation(len(X))
    tr, te = perm[:300], perm[300:340]
    Xtr, Xte = X.iloc[tr].reset_index(drop=True), X.iloc[te].reset_index(drop=True)
    model = xgb.XGBClassifier(n_estimators=20, max_depth=2, enable_categorical=True, n_jobs=1,
                              random_state=0).fit(categorical_frame(Xtr), y[tr])
    model.get_booster().save_model(str(folder / "model.json"))
    model.get_booster().save_model(str(folder / "model.ubj"))
    Xtr.assign(credit=y[tr]).to_csv(folder / "train.csv", index=False)
    Xte.assign(credit=y[te]).to_csv(folder / "test.csv", index=False)
    return folder, model, categorical_frame(Xtr), y[tr], categorical_frame(Xte), y[te]


def test_csv_tables_reach_the_saved_model_as_it_was_trained(saved):
    """Columns read back from CSV (strings, booleans) become the model's categories: same margins, bit for bit."""
    folder, model, Xtr, ytr, _, _ = saved
    frame, labels = read_table(folder / "train.csv", "credit")
    assert np.array_equal(labels, ytr)
    for name in ("model.json", "model.ubj"):
        booster = load_tree_model(folder / name)
        head = TreeHead(booster, progress=False)
        from_csv = head.run(head.batches(frame, labels)).logits
        own = torch.as_tensor(model.get_booster().predict(xgb.DMatrix(Xtr, enable_categorical=True),
                                                          output_margin=True), dtype=torch.float64)
        assert torch.equal(from_csv[:, 0], own)


def test_parquet_tables_read_like_csv(saved):
    """A Parquet file of the same table (typed columns, categories stored as text) gives the same margins."""
    pytest.importorskip("pyarrow")
    folder, model, Xtr, ytr, _, _ = saved
    import pandas as pd

    pd.read_csv(folder / "train.csv").to_parquet(folder / "train.parquet", index=False)   # plain text and bools
    frame, labels = read_table(folder / "train.parquet", "credit")
    assert np.array_equal(labels, ytr)
    head = TreeHead(load_tree_model(folder / "model.ubj"), progress=False)
    own = model.get_booster().predict(xgb.DMatrix(Xtr, enable_categorical=True), output_margin=True)
    assert torch.equal(head.run(head.batches(frame, labels)).logits[:, 0], torch.as_tensor(own, dtype=torch.float64))


def test_explain_writes_report_and_the_same_precedents_as_the_python_api(saved, capsys):
    folder, model, Xtr, ytr, Xte, _ = saved
    out = folder / "out"
    rc = main(["explain", "--xgboost", str(folder / "model.json"), "--train", str(folder / "train.csv"),
               "--test", str(folder / "test.csv"), "--label", "credit", "--points", "0,3", "--k", "3",
               "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RPS-LJE: precedents" in printed and "influence (head): precedents" in printed
    html = (out / "report.html").read_text()
    with open(out / "top_k.csv") as fh:
        records = list(csv.DictReader(fh))
    assert {r["method"] for r in records} == {"rps-lje", "influence-exact"}
    # the same explanation through the Python API, on the in-memory DataFrames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        probe = pc.RepresenterLJE(model, step=1e-4, progress=False).fit(Xtr, ytr)
        damping = SUGGESTED_DAMPING * float(probe.solver_.eigenvalues.max())
        lje = pc.RepresenterLJE(model, step=1e-4, damping=damping, progress=False).fit(Xtr, ytr)
    top = lje.attribute(Xte.iloc[[0, 3]]).top(3)
    cli_pos = [int(r["train_index"]) for r in records
               if r["method"] == "rps-lje" and r["test_id"] == "0" and r["kind"] == "positive"]
    assert cli_pos == top.positive_indices[0].tolist()
    best = int(top.positive_indices[0, 0])
    assert str(Xtr.iloc[best]["purpose"]) in html           # the precedent is shown as a table row


def test_explain_refuses_mismatched_columns_and_missing_label(saved, capsys):
    folder, *_ = saved
    frame, labels = read_table(folder / "test.csv", "credit")
    frame.drop(columns=["age"]).assign(credit=labels).to_csv(folder / "no_age.csv", index=False)
    base = ["explain", "--xgboost", str(folder / "model.json"), "--train", str(folder / "train.csv"), "--quiet",
            "--out", str(folder / "bad")]
    assert main([*base, "--test", str(folder / "no_age.csv"), "--label", "credit"]) == 2
    assert "missing column(s) 'age'" in capsys.readouterr().err
    assert main([*base, "--test", str(folder / "test.csv")]) == 2
    assert "--label" in capsys.readouterr().err
    assert main([*base, "--test", str(folder / "test.csv"), "--label", "nope"]) == 2
    assert "no column 'nope'" in capsys.readouterr().err


def test_explain_refuses_a_regression_model_file(tmp_path, capsys):
    X = np.random.default_rng(0).normal(size=(50, 3))
    booster = xgb.train({"objective": "reg:squarederror", "nthread": 1}, xgb.DMatrix(X, X[:, 0]), 2)
    booster.save_model(str(tmp_path / "reg.json"))
    np.savetxt(tmp_path / "t.csv", np.c_[X, (X[:, 0] > 0)], delimiter=",", header="a,b,c,y", comments="")
    rc = main(["explain", "--xgboost", str(tmp_path / "reg.json"), "--train", str(tmp_path / "t.csv"),
               "--test", str(tmp_path / "t.csv"), "--label", "y", "--quiet", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "reg:squarederror" in capsys.readouterr().err


def test_german_demo_writes_precedents_as_table_rows(tmp_path, capsys):
    """``precedents demo --task german``: report with table-row cards, top_k.csv, a saved model and a printed table."""
    out = tmp_path / "german"
    assert main(["demo", "--task", "german", "--out", str(out), "--k", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "RPS-LJE: precedents" in printed and "credit_history" in printed
    html = (out / "report.html").read_text()
    assert '<th scope="row">credit_amount</th>' in html
    with open(out / "top_k.csv") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 2 * 2 * 2 * 4            # methods x (pos, neg) x k x shown people
    booster = load_tree_model(out / "model.json")
    assert TreeHead(booster).n_trees == 100


def test_explain_lightgbm_model_file_with_text_categories(tmp_path):
    """A LightGBM text model and CSV tables: categories restored from the model, margins exactly the model's."""
    lgb = pytest.importorskip("lightgbm")
    X, y = load_german_credit()
    model = lgb.LGBMClassifier(n_estimators=20, num_leaves=4, verbose=-1, random_state=0, n_jobs=1).fit(X[:300],
                                                                                                         y[:300])
    model.booster_.save_model(str(tmp_path / "model.txt"))
    X[:300].assign(credit=y[:300]).to_csv(tmp_path / "train.csv", index=False)
    X[300:320].assign(credit=y[300:320]).to_csv(tmp_path / "test.csv", index=False)
    frame, labels = read_table(tmp_path / "test.csv", "credit")
    head = TreeHead(load_tree_model(tmp_path / "model.txt", "lightgbm"), progress=False)
    margins = head.run(head.batches(frame, labels)).logits[:, 0]
    assert torch.equal(margins, torch.as_tensor(model.booster_.predict(X[300:320], raw_score=True)))
    assert main(["explain", "--lightgbm", str(tmp_path / "model.txt"), "--train", str(tmp_path / "train.csv"),
                 "--test", str(tmp_path / "test.csv"), "--label", "credit", "--k", "2", "--quiet",
                 "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").is_file()
