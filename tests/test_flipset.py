"""Data counterfactuals: flip sets verified by retraining, checked against exhaustive search; unlearning checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import precedents as pc
from precedents.datasets import load_breast_cancer
from precedents.evaluate import LogisticRegressionRetrainer, fit_logistic_regression, warm_start_retrainer
from precedents.evaluate.flipset import exhaustive_flip_sets, flip_set, flip_sets, unlearn

pytest.importorskip("sklearn")
WD = 0.05


@pytest.fixture(scope="module")
def small():
    """40 training and 50 test points of breast cancer, 5 standardised features: small enough for brute force."""
    X, y = load_breast_cancer()
    X = (X - X.mean(0)) / X.std(0)
    idx = np.random.default_rng(0).permutation(len(X))
    cols = [0, 1, 7, 20, 27]
    X = X[:, cols].astype(np.float64)
    Xtr, ytr, Xte = X[idx[:40]], y[idx[:40]], X[idx[40:90]]
    retrain = LogisticRegressionRetrainer(Xtr, ytr, 2, WD)
    return Xtr, ytr, Xte, retrain


def _predict_without(Xtr, ytr, removed, x):
    keep = np.ones(len(ytr), dtype=bool)
    keep[list(removed)] = False
    model = fit_logistic_regression(Xtr[keep], ytr[keep], 2, WD)      # from scratch: independent of the retrainer
    return int(model(torch.as_tensor(x[None])).argmax(1)[0])


def test_greedy_flip_sets_are_verified_and_minimal_against_exhaustive(small):
    Xtr, ytr, Xte, retrain = small
    model = retrain.base_model
    fs = flip_sets(model, (Xtr, ytr), Xte, retrain=retrain, max_size=8)
    exact = exhaustive_flip_sets((Xtr, ytr), Xte, n_classes=2, weight_decay=WD, max_size=3)
    base = model(torch.as_tensor(Xte)).argmax(1).numpy()
    checked = minimal = 0
    for t, (res, ex) in enumerate(zip(fs.results, exact, strict=True)):
        if res.flipped:            # verified by an independent retrain from scratch
            assert _predict_without(Xtr, ytr, res.indices, Xte[t]) != base[t]
        if ex is not None:
            assert _predict_without(Xtr, ytr, ex, Xte[t]) != base[t]
            assert res.flipped and res.size >= len(ex)            # exhaustive is the minimum
            checked += 1
            minimal += res.size == len(ex)
        elif res.flipped:
            assert res.size > 3                                   # nothing of size <= 3 flips this point
    assert checked >= 5
    assert minimal >= 0.9 * checked
    assert sum(fs.distribution().values()) == len(Xte)
    # swap moves never make a set larger, and what they return is still a verified flip
    swapped = flip_sets(model, (Xtr, ytr), Xte, retrain=retrain, max_size=8, swap_width=10)
    for t, (res, sw, ex) in enumerate(zip(fs.results, swapped.results, exact, strict=True)):
        assert sw.flipped == res.flipped and (not res.flipped or sw.size <= res.size)
        if sw.flipped and sw.size < res.size:
            assert _predict_without(Xtr, ytr, sw.indices, Xte[t]) != base[t]
        if ex is not None:
            assert sw.size >= len(ex)


def test_flip_set_is_one_minimal_and_reports_changes(small):
    Xtr, ytr, Xte, retrain = small
    model = retrain.base_model
    fs = flip_sets(model, (Xtr, ytr), Xte[:20], retrain=retrain, max_size=12)
    t = int(np.nanargmax(np.where(fs.sizes >= 2, fs.sizes, np.nan)))
    res = flip_set(model, (Xtr, ytr), Xte[t], retrain=retrain, max_size=12)
    assert res.flipped and res.size == fs.results[t].size and res.new_class != res.original_class
    for i in res.indices:                                         # no member can be put back
        rest = [j for j in res.indices if j != i]
        assert _predict_without(Xtr, ytr, rest, Xte[t]) == res.original_class
    scores = pc.InfluenceFunction(model, solver="exact", weight_decay=WD, progress=False).fit((Xtr, ytr)).attribute(
        Xte[t:t + 1], torch.tensor([res.original_class])).scores[0].numpy()
    assert res.predicted_change == pytest.approx(scores[res.indices].sum(), rel=1e-9)
    assert np.all(np.diff(scores[res.indices]) <= 0)
    assert res.actual_change > 0 and res.original_loss < np.log(2)
    assert res.to_dict()["size"] == res.size
    assert [tab.title for tab in fs.report_tables()] == ["How fragile is each decision?", "Flip sets"]


def test_unlearning_matches_influence_for_one_example(small):
    Xtr, ytr, Xte, retrain = small
    model = retrain.base_model
    # the most self-influential example: its removal moves the model most (a change well above the O(wd/n)
    # shift every removal causes by renormalising the mean loss over n - 1 examples)
    i = int(pc.InfluenceFunction(model, solver="exact", weight_decay=WD, progress=False).fit(
        (Xtr, ytr)).self_influence().argmax())
    u = unlearn(model, (Xtr, ytr), [i], retrain=retrain, X=Xte)
    after = torch.softmax(fit_logistic_regression(np.delete(Xtr, i, 0), np.delete(ytr, i), 2, WD)(
        torch.as_tensor(Xte)), 1).detach().numpy()
    np.testing.assert_allclose(u.after, after[np.arange(len(Xte)), u.classes], rtol=1e-8)
    # leave-one-out: the first-order prediction tracks the retrained change
    assert np.corrcoef(u.predicted_change, u.actual_change)[0, 1] > 0.95
    big = np.abs(u.actual_change) > 0.1 * np.abs(u.actual_change).max()
    assert big.sum() >= 5 and np.all(np.sign(u.predicted_change[big]) == np.sign(u.actual_change[big]))
    assert u.to_frame().shape == (len(Xte), 7)


def test_warm_start_network_flip_set(small):
    Xtr, ytr, Xte, _ = small
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    X, y = torch.as_tensor(Xtr), torch.as_tensor(ytr)
    net = warm_start_retrainer(net, X, y, steps=300, lr=0.5, weight_decay=WD)(torch.ones(len(y), dtype=torch.bool))
    retrain = warm_start_retrainer(net, X, y, steps=50, lr=0.5, weight_decay=WD)
    margins = net(torch.as_tensor(Xte)).diff(dim=1).abs()[:, 0]
    t = int(margins.argmin())                                    # the least certain test point
    res = flip_set(net, (X, y), Xte[t], retrain=retrain, method=pc.InfluenceFunction(
        net, solver="exact", weight_decay=WD, progress=False), max_size=10, baseline="retrain")
    assert res.flipped
    full = int(retrain(torch.ones(len(y), dtype=torch.bool))(torch.as_tensor(Xte[t:t + 1])).argmax(1)[0])
    assert full == res.original_class
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[torch.as_tensor(res.indices)] = False
    assert int(retrain(keep)(torch.as_tensor(Xte[t:t + 1])).argmax(1)[0]) != res.original_class


def test_bad_input(small):
    Xtr, ytr, Xte, retrain = small
    model = retrain.base_model
    with pytest.raises(pc.PrecedentsError, match="pair"):
        flip_set(model, Xtr, Xte[0], retrain=retrain)
    with pytest.raises(pc.PrecedentsError, match="one test point"):
        flip_set(model, (Xtr, ytr), Xte[:2], retrain=retrain)
    with pytest.raises(pc.PrecedentsError, match="max_size"):
        flip_sets(model, (Xtr, ytr), Xte[:2], retrain=retrain, max_size=0)
    with pytest.raises(pc.PrecedentsError, match="indices"):
        unlearn(model, (Xtr, ytr), [100], retrain=retrain, X=Xte[:2])
    with pytest.raises(pc.PrecedentsError, match="weight_decay"):
        exhaustive_flip_sets((Xtr, ytr), Xte[:2], n_classes=2, weight_decay=0.0)


def test_scikit_learn_model_and_retrainer(small):
    """A scikit-learn LogisticRegression with a retrainer that refits it: influence reads its C, sets are verified."""
    from sklearn.linear_model import LogisticRegression

    Xtr, ytr, Xte, _ = small

    def refit(keep):
        k = keep.numpy()
        return LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit(Xtr[k], ytr[k])

    model = refit(torch.ones(len(ytr), dtype=torch.bool))
    fs = flip_sets(model, (Xtr, ytr), Xte[:15], retrain=refit, max_size=6, method="influence-cg")  # a registry key
    assert any(r.flipped for r in fs.results)
    for t, r in enumerate(fs.results):
        if r.flipped:
            keep = np.ones(len(ytr), dtype=bool)
            keep[r.indices] = False
            assert refit(torch.as_tensor(keep)).predict(Xte[t:t + 1])[0] != model.predict(Xte[t:t + 1])[0]
