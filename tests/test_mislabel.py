"""Dataset debugging: flipped-label detection by self-scores, the review list, corrections through the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import precedents as pc
from precedents.cli import main
from precedents.evaluate import (
    LogisticRegressionRetrainer,
    detection_curve,
    detection_summary,
    fit_logistic_regression,
    flip_labels,
    mislabel,
)
from precedents.evaluate.metrics import spearman
from precedents.evaluate.mislabel import (
    HeadRetrainer,
    accuracy,
    apply_corrections,
    fix_and_retrain,
    oracle_corrections,
    read_corrections,
    write_corrections,
)
from precedents.report.review import write_review

WD = 0.01


# -- flipping ------------------------------------------------------------------------------------------------

def test_flip_labels_exact_count_other_class_and_seeded():
    y = np.repeat(np.arange(10), 100)
    noisy, flipped = flip_labels(y, 0.13, 10, seed=3)
    assert flipped.sum() == 130 and (noisy != y).sum() == 130          # exactly round(0.13 n), all changed
    assert np.array_equal(noisy != y, flipped)
    assert noisy.min() >= 0 and noisy.max() <= 9
    again, flipped_again = flip_labels(y, 0.13, 10, seed=3)
    assert np.array_equal(again, noisy) and np.array_equal(flipped_again, flipped)
    other, _ = flip_labels(y, 0.13, 10, seed=4)
    assert not np.array_equal(other, noisy)
    assert np.array_equal(y, np.repeat(np.arange(10), 100))              # input untouched
    t_noisy, t_flipped = flip_labels(torch.as_tensor(y), 0.13, 10, seed=3)
    assert isinstance(t_noisy, torch.Tensor) and torch.equal(t_noisy, torch.as_tensor(noisy))
    binary, bflip = flip_labels(np.zeros(50, dtype=int), 0.1, 2, seed=0)
    assert bflip.sum() == 5 and np.array_equal(binary, bflip.astype(int))  # binary: 0 -> 1
    with pytest.raises(pc.PrecedentsError, match="fraction"):
        flip_labels(y, 1.5, 10)
    with pytest.raises(pc.PrecedentsError, match="outside"):
        flip_labels(y, 0.1, 5)


# -- detection curves ----------------------------------------------------------------------------------------

def test_perfect_score_finds_everything_at_the_flip_rate():
    flipped = np.zeros(1000, dtype=bool)
    flipped[np.random.default_rng(0).choice(1000, 100, replace=False)] = True
    checked, found = detection_curve(flipped.astype(float), flipped)
    assert found[100] == 1.0 and found[99] < 1.0 and checked[100] == pytest.approx(0.1)
    assert np.all(np.diff(found) >= 0) and found[0] == 0 and found[-1] == 1
    summary = detection_summary(flipped.astype(float), flipped)
    assert summary["auc"] == pytest.approx(1 - 0.1 / 2)                  # linear rise to 1 at p, then flat
    assert summary["roc_auc"] == 1.0 and summary["found@10%"] == 1.0
    worst = detection_summary(-flipped.astype(float), flipped)
    assert worst["roc_auc"] == 0.0 and worst["found@20%"] == 0.0


def test_random_scores_auc_one_half_and_the_two_areas_agree():
    flipped = np.zeros(20000, dtype=bool)
    flipped[:2000] = True
    aucs = []
    for seed in range(5):
        scores = np.random.default_rng(seed).random(20000)
        s = detection_summary(scores, flipped)
        # area under the detection curve = p/2 + (1 - p) ROC AUC (no ties)
        assert s["auc"] == pytest.approx(0.1 / 2 + 0.9 * s["roc_auc"], abs=1e-4)
        aucs.append(s["roc_auc"])
        assert s["found@10%"] == pytest.approx(0.1, abs=0.03)
    assert np.mean(aucs) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(pc.PrecedentsError, match="NaN"):
        detection_curve(np.full(20000, np.nan), flipped)


# -- on real data: digits, logistic regression with 10% flipped labels ----------------------------------------

@pytest.fixture(scope="module")
def noisy_digits():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float64)
    y = torch.tensor(y, dtype=torch.long)
    Xtr, ytr, Xte, yte = X[:1000], y[:1000], X[1000:1300], y[1000:1300]
    noisy, flipped = flip_labels(ytr, 0.1, 10, seed=0)
    model = fit_logistic_regression(Xtr, noisy, 10, WD)                  # exact optimum on the noisy labels
    return Xtr, ytr, noisy, flipped, Xte, yte, model


def test_self_scores_find_flipped_labels_on_digits(noisy_digits):
    Xtr, ytr, noisy, flipped, _, _, model = noisy_digits
    res = mislabel(model, Xtr, noisy, ["rps-l2", "rps-lje", "influence-exact", "loss", "random"], flipped=flipped,
                   l2=WD / 2, weight_decay=WD, lje_damping=WD)
    table = res.summary().set_index("method")
    # measured: rps-l2 0.97 / 1.0, influence-exact 0.94 / 1.0 found at 10% / 20% checked; chance is 0.1 / 0.2
    for method in ("rps-l2", "influence-exact", "rps-lje"):
        assert table.loc[method, "found@20%"] >= 0.9, table
        assert table.loc[method, "roc_auc"] >= 0.97, table
    assert table.loc["random", "found@20%"] < 0.4
    # theorem: for logistic regression trained with wd and l2 = wd / 2, the label-refit head is the model itself
    # and |alpha_{i,y_i}| = (1 - p_{i,y_i}) / (2 l2 n), a monotone function of the training loss: same ranking
    assert spearman(res.scores["rps-l2"], res.scores["loss"]) == pytest.approx(1.0, abs=1e-9)
    p_true = torch.softmax(model(Xtr), 1).gather(1, noisy[:, None])[:, 0].detach().numpy()
    np.testing.assert_allclose(res.scores["rps-l2"], (1 - p_true) / (2 * (WD / 2) * len(Xtr)), rtol=1e-6)
    frame = res.to_frame()
    assert len(frame) == len(Xtr) and frame["flipped"].sum() == flipped.sum()
    assert sorted(frame["rps-l2 rank"]) == list(range(1, len(Xtr) + 1))


def test_post_hoc_alpha_cannot_see_labels(noisy_digits):
    """The post-hoc RPS-l2 alpha is fitted to the model's outputs: it is the same whatever the labels say."""
    Xtr, ytr, noisy, flipped, _, _, model = noisy_digits
    a = pc.RepresenterL2(model, l2=WD / 2, progress=False).fit(Xtr[:500], noisy[:500])
    b = pc.RepresenterL2(model, l2=WD / 2, progress=False).fit(Xtr[:500], ytr[:500])
    torch.testing.assert_close(a.alpha_, b.alpha_)
    assert not torch.allclose(a.self_influence(), b.self_influence())


def test_oracle_fix_and_retrain_recovers_the_clean_model(noisy_digits):
    Xtr, ytr, noisy, flipped, Xte, yte, model = noisy_digits
    res = mislabel(model, Xtr, noisy, ["influence-exact"], weight_decay=WD)
    fixes = oracle_corrections(res.order("influence-exact"), noisy, ytr, n_checked=200)
    assert len(fixes) == int(flipped[torch.as_tensor(res.order("influence-exact")[:200])].sum())

    retrain = LogisticRegressionRetrainer(Xtr, noisy, 10, WD)
    out = fix_and_retrain(retrain, noisy, fixes, Xte, yte, n_classes=10, before=model)
    clean = accuracy(retrain.retrain(y=ytr), Xte, yte)
    assert out.n_changed == len(fixes) and out.accuracy_before == accuracy(model, Xte, yte)
    # every flipped label is among the first 200 here, so the fixed labels are the clean ones
    assert out.n_changed == int(flipped.sum())
    assert out.accuracy_after == clean


def test_head_retrainer_equals_logistic_regression(noisy_digits):
    """Refitting the last layer of a linear model on its (identity) features is logistic regression itself."""
    Xtr, ytr, noisy, flipped, Xte, yte, model = noisy_digits
    predict = HeadRetrainer(model, Xtr, WD).retrain(y=ytr)
    reference = fit_logistic_regression(Xtr, ytr, 10, WD)
    theta = torch.cat([reference.weight, reference.bias[:, None]], 1).detach()
    # both optima of the WD-strongly convex objective, to gradient norms 1e-10 (HeadRetrainer) and 1e-12: within
    # (1e-10 + 1e-12) / WD of each other
    torch.testing.assert_close(predict.theta, theta, atol=(predict.gradient_norm + 1e-12) / WD, rtol=0)
    assert accuracy(predict, Xte, yte) == accuracy(reference, Xte, yte)


def test_review_list_images_and_tabular(noisy_digits, tmp_path):
    Xtr, ytr, noisy, flipped, _, _, model = noisy_digits
    res = mislabel(model, Xtr, noisy, ["loss", "random"], flipped=flipped)
    html, csv_path = write_review(tmp_path / "img", res, top=20, images=Xtr.reshape(-1, 8, 8))
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 20 and [int(r["rank"]) for r in rows] == list(range(1, 21))
    scores = [float(r["loss score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and float(rows[0]["loss score"]) == res.scores["loss"].max()
    assert all(int(r["given_label"]) == int(noisy[int(r["index"])]) for r in rows)
    text = html.read_text()
    assert text.count("data:image/png;base64") == 20 and "Review list" in text
    table_rows = [{"pixel0": float(v[0]), "pixel1": float(v[1])} for v in Xtr.tolist()]
    html2, _ = write_review(tmp_path / "tab", res, top=5, rows=table_rows, method="random")
    text2 = html2.read_text()
    assert "pixel1" in text2 and "data:image/png" not in text2


# -- the command line: review list, corrections round trip, bad input -----------------------------------------

@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, noisy_digits):
    Xtr, ytr, noisy, flipped, Xte, yte, model = noisy_digits
    tmp = tmp_path_factory.mktemp("debug")
    Xs, ys, ts = Xtr[:400], noisy[:400], ytr[:400]
    small = fit_logistic_regression(Xs, ys, 10, WD)
    torch.jit.script(small).save(str(tmp / "model.ts"))
    np.savez(tmp / "train.npz", X=Xs.numpy(), y=ys.numpy())
    np.savez(tmp / "test.npz", X=Xte.numpy(), y=yte.numpy())
    return tmp, Xs, ys, ts, Xte, yte


def _debug(tmp, *extra, methods="loss"):
    return ["debug", "--model", str(tmp / "model.ts"), "--train", str(tmp / "train.npz"), "--test",
            str(tmp / "test.npz"), "--methods", methods, "--weight-decay", str(WD),
            "--top", "60", "--out", str(tmp / "out"), "--quiet", *extra]


def test_cli_debug_corrections_round_trip(cli_files, capsys):
    tmp, Xs, ys, ts, Xte, yte = cli_files
    assert main(_debug(tmp, methods="rps-l2,influence-exact")) == 0
    rows = list(csv.DictReader(open(tmp / "out" / "review.csv")))
    assert len(rows) == 60 and (tmp / "out" / "review.html").is_file()
    scores = [float(r["rps-l2 score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # a person checks the list and fixes the labels that are wrong
    fixes = {int(r["index"]): int(ts[int(r["index"])]) for r in rows if int(r["given_label"]) != ts[int(r["index"])]}
    assert len(fixes) >= 20                                   # 40 of the 400 labels are flipped
    write_corrections(tmp / "fixes.csv", fixes)
    assert read_corrections(tmp / "fixes.csv", len(Xs), 10) == fixes
    capsys.readouterr()
    assert main(_debug(tmp, "--corrections", str(tmp / "fixes.csv"))) == 0
    assert "last layer" in capsys.readouterr().out
    report = json.loads((tmp / "out" / "corrections.json").read_text())
    # independent computation: logistic regression trained on the corrected labels, from scratch
    fixed = apply_corrections(ys, fixes, 10)
    assert report["n_changed"] == len(fixes)
    assert report["accuracy_after"] == accuracy(fit_logistic_regression(Xs, fixed, 10, WD), Xte, yte)
    assert report["accuracy_before"] == accuracy(fit_logistic_regression(Xs, ys, 10, WD), Xte, yte)
    assert report["accuracy_after"] > report["accuracy_before"]


@pytest.mark.parametrize("content, message", [
    ("index,label\n400,3\n", "out of range, the training set has 400"),
    ("index,label\n-1,3\n", "out of range"),
    ("index,label\n5,10\n", "label 10 is out of range"),
    ("index,label\n5,x\n", "must be integers"),
    ("row,class\n5,3\n", "header"),
    ("index,label\n5,3\n5,4\n", "corrected twice"),
])
def test_cli_debug_bad_corrections_exit_2(cli_files, capsys, content, message):
    tmp = cli_files[0]
    (tmp / "bad.csv").write_text(content)                    # refused before any score is computed
    assert main(_debug(tmp, "--corrections", str(tmp / "bad.csv"))) == 2
    assert message in capsys.readouterr().err


def test_cli_debug_bad_methods_and_missing_test(cli_files, capsys):
    tmp = cli_files[0]
    args = _debug(tmp, methods="rps-l2,nope")
    assert main(args) == 2
    assert "Unknown self-score method" in capsys.readouterr().err
    args = _debug(tmp, "--corrections", str(tmp / "fixes.csv"))
    del args[args.index("--test"):args.index("--test") + 2]
    assert main(args) == 2
    assert "--test" in capsys.readouterr().err


def test_self_scores_come_from_the_registry(noisy_digits):
    """Every registered method is a self-score through explainer(key, model).fit().self_influence(); baselines too."""
    from precedents.evaluate.mislabel import SelfScoreOptions, method_params, self_score_methods

    Xtr, ytr, noisy, flipped, _, _, model = noisy_digits
    assert set(pc.available_methods()) <= set(self_score_methods()) and {"loss", "random"} <= set(self_score_methods())
    res = mislabel(model, Xtr[:300], noisy[:300], ["grad-dot", "influence-exact"], weight_decay=WD,
                   method_params={"grad-dot": {"params": "head"}})
    direct = pc.explainer("grad-dot", model, params="head", progress=False).fit(Xtr[:300], noisy[:300])
    np.testing.assert_array_equal(res.scores["grad-dot"], direct.self_influence().numpy())
    assert method_params("influence-exact", model, SelfScoreOptions(weight_decay=WD))["weight_decay"] == WD
    with pytest.raises(pc.PrecedentsError, match="Unknown self-score method"):
        mislabel(model, Xtr[:50], noisy[:50], ["influence-newton"])
