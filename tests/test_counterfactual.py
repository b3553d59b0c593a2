"""Feature counterfactuals: verified flips, immutable features fixed, types and ranges kept, minimal (a closed form
for a linear model), diverse; gradient-free for tree ensembles; refused for images and sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import precedents as pc
from precedents.counterfactual import counterfactuals
from precedents.datasets import load_breast_cancer, load_digits, load_german_credit, one_hot

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def cancer():
    from sklearn.linear_model import LogisticRegression

    X, y = load_breast_cancer()
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float64)[:, :8]
    model = LogisticRegression(C=1.0, max_iter=1000).fit(X, y)
    names = ["radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "concave_points"]
    return X, y, model, names


def _mad(col):
    mad = np.median(np.abs(col - np.median(col)))
    return mad if mad > 0 else col.std()


GAP = 2 * np.arctanh(1e-3)          # the logit past 0 at which P(new) - P(old) = min_margin (default 1e-3)


def _l1_optimum(x, w, b, X, scales, free):
    """Closest flip of a linear model in scaled L1 within the training box: a fractional knapsack (the LP's vertex):
    move the features with the largest |w_j| * scale_j first, each up to its bound."""
    m = x @ w + b
    m += np.sign(m) * GAP
    need, total = abs(m), 0.0
    direction = -np.sign(m)
    for j in sorted(free, key=lambda j: -abs(w[j]) * scales[j]):
        bound = X[:, j].max() if direction * w[j] > 0 else X[:, j].min()
        room = abs(bound - x[j]) * abs(w[j])
        if room >= need:
            return total + need / abs(w[j]) / scales[j], j
        need -= room
        total += abs(bound - x[j]) / scales[j]
    return np.inf, None


def test_linear_model_counterfactuals_against_the_closed_form(cancer):
    X, _, model, names = cancer
    w, b = model.coef_[0], model.intercept_[0]
    immutable = ["radius", "area"]
    scales = np.array([_mad(X[:, j]) for j in range(X.shape[1])])
    free = [j for j, name in enumerate(names) if name not in immutable]
    single = 0
    for i in (0, 5, 7, 19, 40):
        x = X[i]
        res = counterfactuals(model, X, x, feature_names=names, immutable=immutable, n=3)
        assert len(res) >= 1
        optimum, _ = _l1_optimum(x, w, b, X, scales, free)
        m = x @ w + b
        m += np.sign(m) * GAP
        one = min((abs(m) / abs(w[j]) / scales[j] for j in free
                   if X[:, j].min() <= x[j] - m / w[j] <= X[:, j].max()), default=np.inf)
        assert res.counterfactuals[0].distance >= optimum * (1 - 1e-9)        # nothing beats the LP optimum
        if one < np.inf:                                # a one-feature flip exists: it is the optimum, found
            single += 1
            assert res.counterfactuals[0].distance == pytest.approx(one, rel=1e-4)
            assert one == pytest.approx(optimum, rel=1e-9)
        for cf in res.counterfactuals:
            assert model.predict(cf.values[None])[0] != res.original_class       # re-checked independently
            assert cf.predicted != res.original_class
            for j in (0, 3):
                assert cf.values[j] == x[j]                                       # immutable
            assert np.all(cf.values >= X.min(0)) and np.all(cf.values <= X.max(0))
            assert cf.n_changed == int((cf.values != x).sum()) <= 3
            for j in np.flatnonzero(cf.values != x):                              # minimal: no change can be undone
                back = cf.values.copy()
                back[j] = x[j]
                assert np.sign(back @ w + b) * np.sign(x @ w + b) > 0 or abs(back @ w + b) < GAP
        dist = [cf.distance for cf in res.counterfactuals]
        assert dist == sorted(dist)
        assert len({cf.values.tobytes() for cf in res.counterfactuals}) == len(res)
    assert single >= 2


def test_torch_module_and_target(cancer):
    X, y, model, names = cancer
    lin = torch.nn.Linear(8, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(np.stack([-model.coef_[0] / 2, model.coef_[0] / 2])))
        lin.bias.copy_(torch.tensor([-model.intercept_[0] / 2, model.intercept_[0] / 2]))
    res = counterfactuals(lin, torch.as_tensor(X), X[0], target=1 - int(model.predict(X[:1])[0]), n=2)
    ref = counterfactuals(model, X, X[0], n=2)
    assert res.counterfactuals[0].distance == pytest.approx(ref.counterfactuals[0].distance, rel=1e-4)
    assert "Counterfactual" in res.report_table().title and res.to_frame().shape[0] == len(res)


def test_xgboost_on_german_credit_respects_one_hot_groups_and_counts():
    xgb = pytest.importorskip("xgboost")
    X, y = load_german_credit()
    Xn, names = one_hot(X)
    model = xgb.XGBClassifier(n_estimators=60, max_depth=3, n_jobs=1, random_state=0).fit(Xn, y)
    i = int(np.flatnonzero(model.predict(Xn) == 1)[0])
    immutable = ["age", "status_sex", "foreign_worker"]
    res = counterfactuals(model, Xn, Xn[i], feature_names=names, immutable=immutable, n=3, max_changes=2)
    assert len(res) >= 2
    groups = {}
    for j, name in enumerate(names):
        groups.setdefault(name.split("=", 1)[0], []).append(j)
    counts = [j for j, name in enumerate(names) if "=" not in name]
    for cf in res.counterfactuals:
        assert model.predict(cf.values[None].astype(np.float32))[0] == 0
        for g, cols in groups.items():
            if len(cols) > 1:
                assert cf.values[cols].sum() == 1                             # one level per categorical feature
            if g in immutable:
                assert np.array_equal(cf.values[cols], Xn[i, cols])
        assert np.all(cf.values[counts] == np.round(cf.values[counts]))       # integer counts stay integers
        assert 1 <= cf.n_changed <= 2 and cf.n_changed == len(cf.changes)
    json = res.to_dict()
    assert json["counterfactuals"][0]["changes"][0]["feature"] in groups


def test_non_tabular_and_bad_input(cancer):
    X, _, model, names = cancer
    images, _ = load_digits(images=True)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(72, 10))
    with pytest.raises(pc.PrecedentsError, match="tabular"):
        counterfactuals(net, images[:50], images[0])
    with pytest.raises(pc.PrecedentsError, match="tabular"):
        counterfactuals(net, images[:50].reshape(50, -1), images[0].reshape(-1))
    emb = torch.nn.Sequential(torch.nn.Embedding(20, 4), torch.nn.Flatten(), torch.nn.Linear(20, 2))
    with pytest.raises(pc.PrecedentsError, match="Embedding"):
        counterfactuals(emb, np.zeros((10, 5), dtype=np.int64), np.zeros(5, dtype=np.int64))
    with pytest.raises(pc.PrecedentsError, match="immutable"):
        counterfactuals(model, X, X[0], feature_names=names, immutable=["height"])
    with pytest.raises(pc.PrecedentsError, match="already predicts"):
        counterfactuals(model, X, X[0], target=int(model.predict(X[:1])[0]))
    gx, _ = load_german_credit()
    with pytest.raises(pc.PrecedentsError, match="categorical, which this model cannot read"):
        counterfactuals(model, gx, gx.iloc[0])


def test_multiclass_mlp_reaches_the_target_class():
    from sklearn.neural_network import MLPClassifier

    from precedents.datasets import load_iris

    X, y = load_iris()
    mlp = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=500, random_state=0).fit(X, y)
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    res = counterfactuals(mlp, X, X[0], target=2, feature_names=names, immutable=["sepal_width"], n=3)
    assert len(res) >= 1 and res.original_class == 0
    for cf in res.counterfactuals:
        assert mlp.predict(cf.values[None].astype(np.float32))[0] == 2 == cf.predicted
        assert cf.values[1] == X[0, 1]
        assert cf.probability == pytest.approx(mlp.predict_proba(cf.values[None].astype(np.float32))[0, 2], abs=1e-5)


def test_xgboost_native_categorical_frame():
    xgb = pytest.importorskip("xgboost")
    import pandas as pd

    from precedents.adapters.trees import categorical_frame

    X, y = load_german_credit()
    X = categorical_frame(X)
    model = xgb.XGBClassifier(n_estimators=60, max_depth=3, n_jobs=1, random_state=0, enable_categorical=True,
                              tree_method="hist").fit(X, y)
    i = int(np.flatnonzero(model.predict(X) == 1)[0])
    res = counterfactuals(model, X, X.iloc[i], immutable=["age", "status_sex"], n=3, max_changes=2)
    assert len(res) >= 1
    for cf in res.counterfactuals:
        row = X.iloc[[i]].copy()
        for feature, old, new in cf.changes:
            assert feature not in ("age", "status_sex")
            if isinstance(X[feature].dtype, pd.CategoricalDtype):
                assert old == X[feature].iloc[i] and new in list(X[feature].cat.categories)
                row[feature] = pd.Categorical([new], dtype=X[feature].dtype)
            else:
                assert new == int(new)                                   # counts stay integers
                row[feature] = np.array([new]).astype(X[feature].dtype)
        assert model.predict(row)[0] == 0 == cf.predicted
