"""Tree ensembles through the head view: exact margins, RPS-LJE and influence on the tree head, bad input.

Real data: German credit (categorical columns, binary) and iris (three classes); small ensembles.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

import precedents as pc
from precedents.adapters import head_adapter
from precedents.adapters.trees import TreeHead, categorical_frame
from precedents.datasets import load_german_credit, load_iris, one_hot

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")
from sklearn.ensemble import (  # noqa: E402
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.metrics import roc_auc_score  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402


@pytest.fixture(scope="module")
def german():
    X, y = load_german_credit()
    X = categorical_frame(X)
    perm = np.random.default_rng(0).permutation(len(X))
    tr, te = perm[:600], perm[600:700]
    return X.iloc[tr].reset_index(drop=True), y[tr], X.iloc[te].reset_index(drop=True), y[te]


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris()
    perm = np.random.default_rng(0).permutation(len(X))
    return X[perm[:120]], y[perm[:120]], X[perm[120:]], y[perm[120:]]


@pytest.fixture(scope="module")
def xgb_german(german):
    X, y, _, _ = german
    return xgb.XGBClassifier(n_estimators=40, max_depth=3, learning_rate=0.2, enable_categorical=True, n_jobs=1,
                             random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def xgb_iris(iris):
    X, y, _, _ = iris
    return xgb.XGBClassifier(n_estimators=30, max_depth=2, n_jobs=1, random_state=0).fit(X, y)


def _models(german, iris):
    """(name, fitted model, train X, train y, relative tolerance) for every supported family and link."""
    Xg, yg, _, _ = german
    Xi, yi, _, _ = iris
    Xo, _ = one_hot(Xg)
    binary = yi > 0
    Xb, yb = Xi[binary], (yi[binary] == 2).astype(np.int64)
    f32 = 1e-5                        # XGBoost sums float32 leaves in float32
    return [
        ("xgboost binary, categorical DataFrame", xgb.XGBClassifier(
            n_estimators=40, max_depth=3, enable_categorical=True, n_jobs=1, random_state=0), Xg, yg, f32),
        ("xgboost binary, numpy one-hot", xgb.XGBClassifier(n_estimators=40, max_depth=3, n_jobs=1, random_state=0),
         Xo, yg, f32),
        ("xgboost multi-class", xgb.XGBClassifier(n_estimators=30, max_depth=2, n_jobs=1, random_state=0),
         Xi, yi, f32),
        ("xgboost multi-class, 2 parallel trees", xgb.XGBClassifier(
            n_estimators=15, max_depth=2, num_parallel_tree=2, n_jobs=1, random_state=0), Xi, yi, f32),
        ("xgboost multi-output trees", xgb.XGBClassifier(
            n_estimators=15, max_depth=2, multi_strategy="multi_output_tree", n_jobs=1, random_state=0), Xi, yi, f32),
        ("lightgbm binary, categorical DataFrame", lgb.LGBMClassifier(
            n_estimators=40, num_leaves=8, verbose=-1, random_state=0, n_jobs=1), Xg, yg, 1e-12),
        ("lightgbm multi-class", lgb.LGBMClassifier(n_estimators=30, num_leaves=4, verbose=-1, random_state=0,
                                                    n_jobs=1), Xi, yi, 1e-12),
        ("sklearn GB binary", GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0), Xb, yb, 1e-12),
        ("sklearn GB multi-class", GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0),
         Xi, yi, 1e-12),
        ("sklearn HistGB binary, categorical DataFrame", HistGradientBoostingClassifier(max_iter=30, random_state=0),
         Xg, yg, 1e-12),
    ]


def test_head_view_reproduces_every_family_margins_exactly(german, iris):
    """z = Theta phi(x): the tree-sum head gives the model's own margins (binary: one sigmoid output)."""
    for name, model, X, y, rtol in _models(german, iris):
        with threadpool_limits(1):        # OpenMP (HistGB) on a busy machine: one thread, no spinning
            model.fit(X, y)
        head = head_adapter(model, progress=False)
        assert isinstance(head, TreeHead), name
        with threadpool_limits(1):
            run = head.run(head.batches(X, y), what="training")
        theta = head.theta()
        n_classes = len(np.unique(y))
        assert head.n_outputs == (1 if n_classes == 2 else n_classes), name
        assert head.link == ("sigmoid" if n_classes == 2 else "softmax"), name
        assert run.features.shape == (len(X), head.n_trees + 1) and theta.shape == (head.n_outputs, head.n_trees + 1)
        assert torch.equal(run.features[:, -1], torch.ones(len(X), dtype=torch.float64)), name
        # every tree feature belongs to exactly one class, with weight 1
        assert torch.equal(theta[:, :-1].sum(0), torch.ones(head.n_trees, dtype=torch.float64)), name
        assert set(theta[:, :-1].unique().tolist()) <= {0.0, 1.0}, name
        # margins from the library itself, independently of the adapter
        if hasattr(model, "get_booster"):
            own = model.get_booster().predict(xgb.DMatrix(X, enable_categorical=True), output_margin=True)
        elif hasattr(model, "booster_"):
            own = model.booster_.predict(X, raw_score=True)
        else:
            own = model.decision_function(X)
        own = torch.as_tensor(np.asarray(own, dtype=np.float64)).reshape(len(X), -1)
        head_margins = run.features @ theta.T
        scale = own.abs().max()
        assert float((head_margins - own).abs().max()) <= rtol * float(scale), name
        if n_classes > 2:              # the head predicts the model's classes
            assert torch.equal(head_margins.argmax(1), own.argmax(1)), name


def test_multiclass_theta_is_the_class_membership_of_each_tree(xgb_iris):
    """XGBoost grows one tree per class per round: tree t belongs to class t mod C; Theta[:, -1] = base margins."""
    head = TreeHead(xgb_iris, progress=False)
    theta = head.theta()
    expected = torch.zeros(3, 90, dtype=torch.float64)
    expected[torch.arange(90) % 3, torch.arange(90)] = 1
    assert torch.equal(theta[:, :-1], expected)


def test_rps_lje_decomposition_sums_to_its_explained_head(german, xgb_german, iris, xgb_iris):
    """Binary (categorical DataFrame) and multi-class: the n scores add up to the explained head's margin."""
    for model, (X, y, Xt, _) in ((xgb_german, german), (xgb_iris, iris)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lje = pc.RepresenterLJE(model, step=1e-4, damping=1e-3, progress=False).fit(X, y)
        res = lje.attribute(Xt[:10] if isinstance(Xt, np.ndarray) else Xt.iloc[:10])
        assert res.scores.shape == (10, len(X))
        assert float((res.scores.sum(1) - res.explained).abs().max()) < 1e-9
        # undamped with a tiny step, the explained head is one Newton step from the model's own head
        assert torch.isfinite(res.scores).all()
        fid = lje.fidelity(Xt)
        assert fid["prediction_agreement"] >= 0.9


def test_influence_on_the_tree_head_is_damped_and_warns_about_stationarity(german, xgb_german):
    """The tree head is not a stationary point: the stationarity warning fires; damped exact and CG agree."""
    X, y, Xt, yt = german
    with pytest.warns(RuntimeWarning, match="stationary point"):
        exact = pc.InfluenceFunction(xgb_german, params="head", solver="exact", damping=1e-3, progress=False).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cg = pc.InfluenceFunction(xgb_german, params="head", solver="cg", damping=1e-3, progress=False,
                                  solver_options={"tol": 1e-10}).fit(X, y)
    a = exact.attribute(Xt.iloc[:5], yt[:5]).scores
    b = cg.attribute(Xt.iloc[:5], yt[:5]).scores
    assert a.shape == (5, len(X)) and torch.isfinite(a).all()
    assert pc.evaluate.pearson(a, b) > 0.999999
    # independent computation: (1/n) g_t^T (H + damping I)^-1 g_i with H from autograd on the tree features
    head = TreeHead(xgb_german, progress=False)
    tr = head.run(head.batches(X, y))
    te = head.run(head.batches(Xt.iloc[:5], yt[:5]))
    theta = head.theta()[0].clone().requires_grad_(True)

    def mean_loss(w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(tr.features @ w, tr.labels.double())

    hess = torch.autograd.functional.hessian(mean_loss, theta.detach()) + 1e-3 * torch.eye(len(theta))
    p_tr = torch.sigmoid(tr.features @ theta.detach())
    p_te = torch.sigmoid(te.features @ theta.detach())
    g_tr = (p_tr - tr.labels.double())[:, None] * tr.features
    g_te = (p_te - te.labels.double())[:, None] * te.features
    brute = g_te @ torch.linalg.solve(hess, g_tr.T) / len(X)
    assert torch.allclose(a, brute, rtol=1e-6, atol=1e-9)


def test_influence_runs_on_the_multiclass_softmax_tree_head(iris, xgb_iris):
    """Softmax head over the full (C, T + 1) matrix: damped exact and CG solves agree; self-influence is positive."""
    X, y, Xt, yt = iris
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        exact = pc.InfluenceFunction(xgb_iris, solver="exact", damping=1e-3, progress=False).fit(X, y)
        cg = pc.InfluenceFunction(xgb_iris, solver="cg", damping=1e-3, progress=False,
                                  solver_options={"tol": 1e-10}).fit(X, y)
    a, b = exact.attribute(Xt, yt).scores, cg.attribute(Xt, yt).scores
    assert a.shape == (len(Xt), len(X)) and exact.curvature_.n_params == 3 * 91
    assert pc.evaluate.pearson(a, b) > 0.999999
    assert (exact.self_influence() > 0).all()


def test_params_all_is_refused_for_trees(german, xgb_german):
    X, y, _, _ = german
    with pytest.raises(pc.PrecedentsError, match="params='head'"):
        pc.InfluenceFunction(xgb_german, params="all", progress=False).fit(X, y)


def test_self_influence_ranks_flipped_labels_first(german):
    """Flip 30 of 600 German credit labels: self-importance / self-influence put them near the top."""
    X, y, _, _ = german
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(y), 30, replace=False)
    noisy = y.copy()
    noisy[flipped] = 1 - noisy[flipped]
    model = xgb.XGBClassifier(n_estimators=40, max_depth=3, learning_rate=0.3, enable_categorical=True, n_jobs=1,
                              random_state=0).fit(X, noisy)
    truth = np.zeros(len(y))
    truth[flipped] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lje = pc.RepresenterLJE(model, progress=False).fit(X, noisy)
        inf = pc.InfluenceFunction(model, solver="exact", damping=1e-3, progress=False).fit(X, noisy)
    assert roc_auc_score(truth, lje.self_influence().numpy()) > 0.75
    assert roc_auc_score(truth, inf.self_influence().numpy()) > 0.75


def test_index_round_trip_and_refusal_for_another_ensemble(tmp_path, german, xgb_german):
    X, y, Xt, _ = german
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lje = pc.RepresenterLJE(xgb_german, damping=1e-3, progress=False).fit(X, y)
        lje.save(tmp_path / "index")
        again = pc.RepresenterLJE.load(tmp_path / "index", xgb_german, train=(X, y))
    assert torch.allclose(again.attribute(Xt.iloc[:3]).scores, lje.attribute(Xt.iloc[:3]).scores)
    other = xgb.XGBClassifier(n_estimators=41, max_depth=3, enable_categorical=True, n_jobs=1,
                              random_state=0).fit(X, y)
    with pytest.raises(pc.PrecedentsError, match="another model"):
        pc.RepresenterLJE.load(tmp_path / "index", other)
    shuffled = X.iloc[::-1].reset_index(drop=True)
    with pytest.raises(pc.PrecedentsError, match="other training data"):
        pc.RepresenterLJE.load(tmp_path / "index", xgb_german, train=(shuffled, y[::-1]))


def test_columns_are_matched_by_name_and_mismatches_named(german, xgb_german):
    X, y, Xt, _ = german
    head = TreeHead(xgb_german, progress=False)
    reordered = Xt[list(Xt.columns[::-1])]
    a = head.run(head.batches(Xt)).features
    b = head.run(head.batches(reordered)).features
    assert torch.equal(a, b)
    with pytest.raises(pc.PrecedentsError, match="missing column.*'age'"):
        head.batches(Xt.drop(columns=["age"]))
    with pytest.raises(pc.PrecedentsError, match="not trained on 'zip'"):
        head.batches(Xt.assign(zip=1))
    with pytest.raises(pc.PrecedentsError, match="DataFrame"):
        head.batches(np.zeros((3, X.shape[1])))
    with pytest.raises(pc.PrecedentsError, match="'duration'.*text"):
        head.batches(Xt.assign(duration="long"))
    with pytest.raises(pc.PrecedentsError, match=r"labels \['good'\] that the model does not know.*\[0, 1\]"):
        head.batches(Xt, np.array(["good"] * len(Xt)))


def test_unsupported_models_are_refused_with_the_supported_families(german, iris):
    X, y, _, _ = german
    Xi, yi, _, _ = iris
    reg = xgb.XGBRegressor(n_estimators=3, n_jobs=1).fit(Xi, yi.astype(float))
    with pytest.raises(pc.PrecedentsError, match="not a classifier.*LightGBM"):
        pc.RepresenterLJE(reg, progress=False).fit(Xi, yi)
    booster = xgb.train({"objective": "reg:squarederror", "nthread": 1}, xgb.DMatrix(Xi, yi.astype(float)), 3)
    with pytest.raises(pc.PrecedentsError, match="reg:squarederror"):
        TreeHead(booster)
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(Xi, yi)
    with pytest.raises(pc.PrecedentsError, match="average of its trees' class probabilities"):
        TreeHead(forest)
    lgb_reg = lgb.LGBMRegressor(n_estimators=3, verbose=-1).fit(Xi, yi.astype(float))
    with pytest.raises(pc.PrecedentsError, match="not a classifier"):
        TreeHead(lgb_reg)
    with pytest.raises(pc.PrecedentsError, match="not fitted"):
        TreeHead(GradientBoostingClassifier())
    with pytest.raises(pc.PrecedentsError, match="layer="):
        head_adapter(forest, "fc")


def test_missing_xgboost_names_the_pip_install(monkeypatch, iris):
    """A saved XGBoost model without xgboost installed: the error says which pip install fixes it."""
    from precedents.adapters.trees import load_tree_model

    monkeypatch.setitem(sys.modules, "xgboost", None)       # what Python does when it is not installed
    with pytest.raises(pc.PrecedentsError, match="pip install xgboost-cpu"):
        load_tree_model("model.json")
