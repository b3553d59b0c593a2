"""``precedents evaluate``: attribution scores against leave-one-out retraining, from the command line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from precedents.cli import main
from precedents.evaluate import fit_logistic_regression

WD = 0.01


@pytest.fixture(scope="module")
def logistic_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float64)
    y = torch.tensor(y, dtype=torch.long)
    Xtr, ytr, Xte, yte = X[:600], y[:600], X[600:660], y[600:660]
    model = fit_logistic_regression(Xtr, ytr, 10, WD)        # nn.Linear(64, 10), float64, exact optimum
    torch.jit.script(model).save(str(tmp / "model.ts"))
    torch.save(model.state_dict(), tmp / "sd.pt")
    np.savez(tmp / "train.npz", X=Xtr.numpy(), y=ytr.numpy())
    np.savez(tmp / "test.npz", X=Xte.numpy(), y=yte.numpy())
    np.savez(tmp / "test_nolabels.npz", X=Xte.numpy())
    return tmp


def _args(tmp, *extra):
    return ["evaluate", "--train", str(tmp / "train.npz"), "--test", str(tmp / "test.npz"),
            "--methods", "influence-exact,rps-l2", "--weight-decay", str(WD), "--retrain", "logistic",
            "--points", "20", "--test-points", "2", "--results", str(tmp / "loo.jsonl"), "--out", str(tmp / "out"),
            "--quiet", *extra]


def test_evaluate_torchscript_logistic_and_resume(logistic_files, capsys):
    tmp = logistic_files
    assert main(_args(tmp, "--model", str(tmp / "model.ts"))) == 0
    for name in ("evaluate.csv", "evaluate.json", "evaluate.md"):
        assert (tmp / "out" / name).is_file()
    rows = {r["method"]: r for r in csv.DictReader(open(tmp / "out" / "evaluate.csv"))}
    assert set(rows) == {"influence-exact", "rps-l2"}
    assert float(rows["influence-exact"]["pearson"]) > 0.99
    summary = json.loads((tmp / "out" / "evaluate.json").read_text())
    assert summary["n_removed"] == 20 and summary["n_test"] == 2
    out = capsys.readouterr().out
    assert "influence-exact" in out and "logit" in out
    lines = (tmp / "loo.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 1 + 20                          # header, reference, 20 retrains

    # a rerun (here with the state dict and module path: the same model) reuses every finished retrain
    assert main(_args(tmp, "--state-dict", str(tmp / "sd.pt"), "--module", "torch.nn:Linear", "--module-kwargs",
                      '{"in_features": 64, "out_features": 10}')) == 0
    assert (tmp / "loo.jsonl").read_text().splitlines() == lines
    again = {r["method"]: r for r in csv.DictReader(open(tmp / "out" / "evaluate.csv"))}
    assert float(again["influence-exact"]["pearson"]) == pytest.approx(float(rows["influence-exact"]["pearson"]),
                                                                      abs=1e-9)


def test_evaluate_bad_input_exits_2(logistic_files, capsys):
    tmp = logistic_files
    args = _args(tmp, "--model", str(tmp / "model.ts"))
    args[args.index("--test") + 1] = str(tmp / "test_nolabels.npz")
    assert main(args) == 2
    assert "test labels" in capsys.readouterr().err
    assert main(_args(tmp, "--model", str(tmp / "model.ts"), "--methods", "influence-exact,nope")) == 2
    assert "Unknown method" in capsys.readouterr().err
