"""scikit-learn estimators explained directly: conversion, regularisation read from the estimator, influence
against leave-one-out retraining with scikit-learn itself, and clear errors for what is not supported."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LinearRegression, LogisticRegression, SGDClassifier
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import precedents as pc
from precedents import PrecedentsError
from precedents.adapters import head_adapter
from precedents.demos.datasets import load_breast_cancer, load_digits, load_iris
from precedents.evaluate import pearson
from precedents.linalg import head_hessian, link_probabilities
from precedents.linalg.functional import LossGradients


@pytest.fixture(scope="module")
def cancer_np():
    X, y = load_breast_cancer()
    X = X.astype(np.float64)
    X = (X - X.mean(0)) / X.std(0)
    return X[:400], y[:400], X[400:], y[400:]


@pytest.fixture(scope="module")
def digits_np():
    X, y = load_digits()
    X = X.astype(np.float64)
    return X[:400], y[:400], X[400:500], y[400:500]


@pytest.fixture(scope="module")
def cancer_lr(cancer_np):
    Xtr, ytr, _, _ = cancer_np
    return LogisticRegression(C=0.1, tol=1e-10, solver="newton-cg", max_iter=1000).fit(Xtr, ytr)


@pytest.fixture(scope="module")
def digits_lr(digits_np):
    Xtr, ytr, _, _ = digits_np
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # newton-cg's line search reports round-off near the optimum
        return LogisticRegression(C=0.1, tol=1e-10, solver="newton-cg", max_iter=1000).fit(Xtr, ytr)


@pytest.fixture(scope="module")
def cancer_mlp(cancer_np):
    Xtr, ytr, _, _ = cancer_np
    return MLPClassifier(hidden_layer_sizes=(8,), activation="tanh", alpha=1.0, solver="lbfgs", max_iter=5000,
                         tol=1e-12, random_state=0).fit(Xtr, ytr)


def _logits(model, X):
    head = head_adapter(model, progress=False)
    return head.run(head.batches(X)).logits


# -- conversion -----------------------------------------------------------------------------------------------
def test_converted_linear_models_reproduce_decision_function(cancer_np, cancer_lr, digits_np, digits_lr):
    _, _, Xte, _ = cancer_np
    assert np.abs(_logits(cancer_lr, Xte)[:, 0].numpy() - cancer_lr.decision_function(Xte)).max() < 1e-10
    _, _, Xd, _ = digits_np
    logits = _logits(digits_lr, Xd)
    assert logits.shape == (len(Xd), 10)
    assert np.abs(logits.numpy() - digits_lr.decision_function(Xd)).max() < 1e-10
    sgd = SGDClassifier(loss="log_loss", alpha=1e-2, random_state=0).fit(*cancer_np[:2])
    assert np.abs(_logits(sgd, Xte)[:, 0].numpy() - sgd.decision_function(Xte)).max() < 1e-10


def test_converted_mlp_reproduces_predict_proba(cancer_np, cancer_mlp):
    _, _, Xte, _ = cancer_np
    p1 = torch.sigmoid(_logits(cancer_mlp, Xte))[:, 0].numpy()
    assert np.abs(p1 - cancer_mlp.predict_proba(Xte)[:, 1]).max() < 1e-10
    X, y = load_iris()
    X = X.astype(np.float64)
    mlp = MLPClassifier(hidden_layer_sizes=(6, 5), activation="relu", max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # not converged: irrelevant for the conversion
        mlp.fit(X, y)
    assert np.abs(torch.softmax(_logits(mlp, X), 1).numpy() - mlp.predict_proba(X)).max() < 1e-10


# -- regularisation read from the estimator -------------------------------------------------------------------
def test_logistic_weight_decay_and_stationarity(cancer_np, cancer_lr):
    Xtr, ytr, _, _ = cancer_np
    n = len(Xtr)
    inf = pc.InfluenceFunction(cancer_lr, solver="exact", progress=False).fit(Xtr, ytr)
    wd = inf.weight_decay_
    assert wd.shape == (1, 31)
    assert torch.allclose(wd[:, :-1], torch.full((1, 30), 1 / (0.1 * n), dtype=torch.float64))
    assert wd[0, -1] == 0                                     # the intercept is not penalised
    assert inf.relative_stationarity_ < 1e-6
    # liblinear penalises the intercept as the weight of a constant feature intercept_scaling = 2
    lib = LogisticRegression(C=0.1, solver="liblinear", intercept_scaling=2.0, tol=1e-12, max_iter=10000)
    lib.fit(Xtr, ytr)
    inf = pc.InfluenceFunction(lib, solver="exact", progress=False).fit(Xtr, ytr)
    assert float(inf.weight_decay_[0, -1]) == pytest.approx(1 / (0.1 * n * 4))
    assert inf.relative_stationarity_ < 1e-6
    # reading it wrong (intercept unpenalised) is visible: the model is then not at a stationary point
    wrong = pc.InfluenceFunction(lib, solver="exact", weight_decay=torch.cat(
        [inf.weight_decay_[:, :-1], torch.zeros(1, 1, dtype=torch.float64)], 1), progress=False).fit(Xtr, ytr)
    assert wrong.relative_stationarity_ > 1e3 * inf.relative_stationarity_


def test_sgd_objective_read_from_alpha(cancer_np):
    Xtr, ytr, _, _ = cancer_np
    sgd = SGDClassifier(loss="log_loss", alpha=1e-2, max_iter=2000, tol=None, random_state=0).fit(Xtr, ytr)
    inf = pc.InfluenceFunction(sgd, solver="exact", progress=False).fit(Xtr, ytr)
    assert float(inf.weight_decay_[0, 0]) == pytest.approx(1e-2) and float(inf.weight_decay_[0, -1]) == 0
    # a stochastic optimum: near, not at, the optimum of mean loss + alpha/2 ||w||^2 (measured 3e-5)
    assert inf.relative_stationarity_ < 1e-3
    with pytest.warns(RuntimeWarning, match="not at a stationary point"):
        unregularised = pc.InfluenceFunction(sgd, solver="exact", weight_decay=0.0, progress=False).fit(Xtr, ytr)
    assert unregularised.relative_stationarity_ > 100 * inf.relative_stationarity_


def test_mlp_penalises_coefficients_not_intercepts(cancer_np, cancer_mlp):
    Xtr, ytr, _, _ = cancer_np
    n = len(Xtr)
    head = pc.InfluenceFunction(cancer_mlp, solver="exact", progress=False).fit(Xtr, ytr)
    assert head.relative_stationarity_ < 1e-3
    assert float(head.weight_decay_[0, 0]) == pytest.approx(1.0 / n) and float(head.weight_decay_[0, -1]) == 0
    full = pc.InfluenceFunction(cancer_mlp, params="all", solver="cg", damping=1e-3, progress=False).fit(Xtr, ytr)
    assert full.weight_decay_ == {"fc0.weight": 1.0 / n, "fc0.bias": 0.0, "out.weight": 1.0 / n, "out.bias": 0.0}
    assert full.relative_stationarity_ < 1e-3
    uniform = pc.InfluenceFunction(cancer_mlp, params="all", solver="cg", damping=1e-3, weight_decay=1.0 / n,
                                   progress=False).fit(Xtr, ytr)                  # intercepts decayed too: wrong
    assert uniform.relative_stationarity_ > 10 * full.relative_stationarity_


def test_loss_gradients_per_parameter_decay(cancer_np, cancer_mlp):
    Xtr, ytr, _, _ = cancer_np
    module = head_adapter(cancer_mlp).model
    names = [n for n, _ in module.named_parameters()]
    X, y = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    plain = LossGradients(module, names, progress=False)
    decayed = LossGradients(module, names, weight_decay={"fc0.weight": 0.3, "out.weight": 0.7}, progress=False)
    v = torch.randn(2, plain.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    diff = decayed.hvp(v, [(X, y)], len(X)) - plain.hvp(v, [(X, y)], len(X))
    expected = torch.cat([torch.full((p.numel(),), {"fc0.weight": 0.3, "out.weight": 0.7}.get(n, 0.0),
                                     dtype=torch.float64) for n, p in module.named_parameters()]) * v
    assert torch.allclose(diff, expected, atol=1e-12)
    theta = plain.flatten(p.detach().double() for p in module.parameters())
    gdiff = decayed.mean_gradient([(X, y)], len(X)) - plain.mean_gradient([(X, y)], len(X))
    assert torch.allclose(gdiff, expected[0] / v[0] * theta, atol=1e-12)
    with pytest.raises(PrecedentsError, match="does not have"):
        LossGradients(module, names, weight_decay={"fc9.weight": 1.0})


# -- influence against leave-one-out retraining with scikit-learn -----------------------------------------------
def _loo_pearson(est, Xtr, ytr, Xte, yte, idx) -> float:
    scores = pc.InfluenceFunction(est, solver="exact", progress=False).fit(Xtr, ytr).attribute(Xte, yte).scores

    def test_loss(m):
        return -np.log(m.predict_proba(Xte)[np.arange(len(Xte)), np.searchsorted(m.classes_, yte)])

    base = test_loss(est)
    truth = np.zeros((len(Xte), len(idx)))
    for j, i in enumerate(idx):
        keep = np.ones(len(Xtr), dtype=bool)
        keep[i] = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            truth[:, j] = test_loss(clone(est).fit(Xtr[keep], ytr[keep])) - base
    return pearson(scores[:, idx].reshape(-1), torch.from_numpy(truth).reshape(-1))


def test_influence_matches_sklearn_leave_one_out_binary(cancer_np, cancer_lr):
    Xtr, ytr, Xte, yte = cancer_np
    idx = np.random.default_rng(0).choice(len(Xtr), 40, replace=False)
    assert _loo_pearson(cancer_lr, Xtr, ytr, Xte[:5], yte[:5], idx) >= 0.99      # measured 0.998


def test_influence_matches_sklearn_leave_one_out_multinomial(digits_np, digits_lr):
    Xtr, ytr, Xte, yte = digits_np
    scores = pc.InfluenceFunction(digits_lr, solver="exact", progress=False).fit(Xtr, ytr).attribute(
        Xte[:5], yte[:5]).scores
    top = scores.abs().max(0).values.argsort(descending=True)[:20].numpy()        # the most influential ...
    rest = np.setdiff1d(np.arange(len(Xtr)), top)
    idx = np.concatenate([top, np.random.default_rng(0).choice(rest, 20, replace=False)])   # ... and random
    assert _loo_pearson(digits_lr, Xtr, ytr, Xte[:5], yte[:5], idx) >= 0.99


# -- RPS-LJE with the estimator's regularisation ----------------------------------------------------------------
@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_lje_regularised_hessian_matches_pinv(digits_np, digits_lr, solver):
    Xtr, ytr, Xte, _ = digits_np
    lje = pc.RepresenterLJE(digits_lr, solver=solver, progress=False).fit(Xtr, ytr)
    head = lje.head_
    probs = link_probabilities(lje.features_ @ lje.anchor_.T, "softmax")
    hess = head_hessian(lje.features_, probs, "softmax") + torch.diag(head.weight_decay(len(Xtr)).reshape(-1))
    b = torch.randn(3, hess.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = b @ torch.linalg.pinv(hess, hermitian=True, rtol=1e-12)
    got = lje.solver_.solve(b)
    assert float((got - expected).norm() / expected.norm()) < 1e-8
    if solver == "exact":
        assert lje.solver_.null_dim == 1                   # only the shared shift of the unpenalised intercepts
    # at scikit-learn's optimum the decomposition reproduces the model's logits
    res = lje.attribute(Xte[:20])
    assert float((res.scores.sum(1) - res.explained).abs().max()) < 1e-8
    assert float((res.explained - res.model_output).abs().max()) < 1e-5
    assert lje.fidelity(Xte)["prediction_agreement"] == 1.0


def test_lje_and_rps_l2_on_binary_and_mlp(cancer_np, cancer_lr, cancer_mlp):
    Xtr, ytr, Xte, _ = cancer_np
    for model in (cancer_lr, cancer_mlp):
        lje = pc.RepresenterLJE(model, progress=False).fit(Xtr, ytr)
        res = lje.attribute(Xte)
        assert float((res.scores.sum(1) - res.explained).abs().max()) < 1e-8
        assert float((res.explained - res.model_output).abs().max()) < 1e-2
        l2 = pc.RepresenterL2(model, progress=False).fit(Xtr, ytr)
        res = l2.attribute(Xte)
        assert float((res.scores.sum(1) - res.explained).abs().max()) < 1e-6


def test_string_labels_map_to_classes(cancer_np):
    Xtr, ytr, Xte, yte = cancer_np
    names = np.array(["malignant", "benign"])
    est = LogisticRegression(C=0.1, tol=1e-10, solver="newton-cg").fit(Xtr, names[ytr])
    by_name = pc.InfluenceFunction(est, solver="exact", progress=False).fit(Xtr, names[ytr])
    # classes_ is sorted: ["benign", "malignant"], so index 0 = benign = original label 1
    assert torch.equal(by_name.labels_, torch.from_numpy(1 - ytr))
    with pytest.raises(PrecedentsError, match="does not know"):
        by_name.attribute(Xte[:3], np.array(["benign", "other", "benign"]))


# -- errors ---------------------------------------------------------------------------------------------------
def test_errors_for_unsupported_estimators(cancer_np, digits_np):
    Xtr, ytr, _, _ = cancer_np
    cases = [
        (KNeighborsClassifier().fit(Xtr, ytr), "Supported scikit-learn models"),
        (LinearRegression().fit(Xtr, ytr), "not a classifier"),
        (LogisticRegression(C=1.0, l1_ratio=1.0, solver="liblinear").fit(Xtr, ytr), "l1"),
        (OneVsRestClassifier(LogisticRegression()).fit(Xtr, ytr), "one binary model per class"),
        (SGDClassifier(loss="log_loss").fit(*digits_np[:2]), "one-vs-rest"),
        (SGDClassifier(loss="hinge").fit(Xtr, ytr), "log_loss"),
        (LinearSVC(loss="hinge", dual=True, max_iter=5000).fit(Xtr, ytr), "hinge loss has no second derivative"),
        (LinearSVC(dual=False).fit(*digits_np[:2]), "one-vs-rest"),
        (LogisticRegression(class_weight="balanced").fit(Xtr, ytr), "class_weight"),
        (make_pipeline(StandardScaler(), LogisticRegression()).fit(Xtr, ytr), "Pipeline"),
        (LogisticRegression(), "not fitted"),
    ]
    for model, message in cases:
        with pytest.raises(PrecedentsError, match=message):
            pc.RepresenterLJE(model, progress=False).fit(Xtr, ytr)


def test_errors_for_mismatched_columns(cancer_np):
    Xtr, ytr, _, _ = cancer_np
    columns = [f"f{i}" for i in range(30)]
    est = LogisticRegression(C=0.1).fit(pd.DataFrame(Xtr, columns=columns), ytr)
    ok = pc.RepresenterLJE(est, progress=False).fit(pd.DataFrame(Xtr, columns=columns), ytr)
    assert ok.n_train_ == len(Xtr)
    with pytest.raises(PrecedentsError, match=r"missing \['f3'\]; unexpected \['x3'\]"):
        ok.attribute(pd.DataFrame(Xtr[:3], columns=[*columns[:3], "x3", *columns[4:]]))
    with pytest.raises(PrecedentsError, match="another order"):
        ok.attribute(pd.DataFrame(Xtr[:3, ::-1], columns=columns[::-1]))
    with pytest.raises(PrecedentsError, match=r"expects \(n, 30\)"):
        ok.attribute(Xtr[:3, :29])


# -- LinearSVC: the squared hinge ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cancer_svc(cancer_np):
    Xtr, ytr, _, _ = cancer_np
    return LinearSVC(C=0.1, tol=1e-10, max_iter=100000, dual=False).fit(Xtr, ytr)


def test_linear_svc_conversion_and_objective(cancer_np, cancer_svc):
    Xtr, ytr, Xte, _ = cancer_np
    n = len(Xtr)
    assert np.abs(_logits(cancer_svc, Xte)[:, 0].numpy() - cancer_svc.decision_function(Xte)).max() < 1e-10
    inf = pc.InfluenceFunction(cancer_svc, solver="exact", progress=False).fit(Xtr, ytr)
    assert inf.head_.link == "squared_hinge"
    # liblinear: C sum_i l_i + 1/2 ||w||^2, intercept penalised (intercept_scaling 1): 1/(C n) everywhere
    assert torch.allclose(inf.weight_decay_, torch.full((1, 31), 1 / (0.1 * n), dtype=torch.float64))
    assert inf.relative_stationarity_ < 1e-6                        # measured 1.5e-9
    wrong = torch.cat([inf.weight_decay_[:, :-1], torch.zeros(1, 1, dtype=torch.float64)], 1)
    off = pc.InfluenceFunction(cancer_svc, solver="exact", weight_decay=wrong, progress=False).fit(Xtr, ytr)
    assert off.relative_stationarity_ > 1e4 * inf.relative_stationarity_   # intercept read as unpenalised: 8e-4


def test_squared_hinge_derivatives_match_autograd(cancer_np, cancer_svc):
    Xtr, ytr, _, _ = cancer_np
    inf = pc.InfluenceFunction(cancer_svc, solver="exact", progress=False).fit(Xtr, ytr)
    cur = inf.curvature_
    features, wd = cur.features, inf.weight_decay_.reshape(-1)
    s = torch.from_numpy(2.0 * ytr - 1)
    noise = torch.randn(31, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theta = cur.theta.reshape(-1) + 0.05 * noise                      # away from the optimum: a real check

    def objective(t: torch.Tensor) -> torch.Tensor:                   # the explicit LinearSVC objective / (C n)
        margin = s * (features @ t)
        return torch.where(margin < 1, (1 - margin) ** 2, torch.zeros_like(margin)).mean() + 0.5 * (wd * t * t).sum()

    shifted = type(cur)(features, features @ theta[:, None], inf.labels_, theta.reshape(1, -1), "squared_hinge", wd)
    grad = torch.func.grad(objective)(theta)
    assert torch.allclose(shifted.mean_gradient().reshape(-1), grad, rtol=1e-12, atol=1e-14)
    hess = torch.func.hessian(objective)(theta)
    assert torch.allclose(shifted.hessian(), hess, rtol=1e-12, atol=1e-14)
    v = torch.randn(3, 31, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(shifted.hvp(v), v @ hess, rtol=1e-12, atol=1e-14)
    # params="all" differentiates the converted module with the squared-hinge loss: the same influence
    Xte = cancer_np[2][:5]
    yte = cancer_np[3][:5]
    full = pc.InfluenceFunction(cancer_svc, params="all", solver="exact", progress=False).fit(Xtr, ytr)
    a, b = inf.attribute(Xte, yte), full.attribute(Xte, yte)
    assert torch.allclose(a.scores, b.scores, rtol=1e-8, atol=1e-12)
    assert torch.allclose(a.model_output, b.model_output, atol=1e-12)


def test_svc_influence_matches_sklearn_leave_one_out(cancer_np, cancer_svc):
    Xtr, ytr, Xte, yte = cancer_np
    sign = 2 * yte - 1
    inside = np.where(sign * cancer_svc.decision_function(Xte) < 1)[0][:5]   # test points with a positive loss
    Xt, yt = Xte[inside], yte[inside]
    scores = pc.InfluenceFunction(cancer_svc, solver="exact", progress=False).fit(Xtr, ytr).attribute(Xt, yt).scores

    def test_loss(m):
        return np.maximum(0.0, 1 - (2 * yt - 1) * m.decision_function(Xt)) ** 2

    base = test_loss(cancer_svc)
    idx = np.random.default_rng(0).choice(len(Xtr), 30, replace=False)
    truth = np.zeros((len(Xt), len(idx)))
    for j, i in enumerate(idx):
        keep = np.ones(len(Xtr), dtype=bool)
        keep[i] = False
        truth[:, j] = test_loss(clone(cancer_svc).fit(Xtr[keep], ytr[keep])) - base
    # a training point outside the margin has zero gradient: predicted 0, and removing it changes nothing
    outside = (2 * ytr[idx] - 1) * cancer_svc.decision_function(Xtr[idx]) > 1
    assert outside.any() and not scores[:, idx[outside]].any()
    assert np.abs(truth[:, outside]).max() < 1e-4 * np.abs(truth).max()       # liblinear's tolerance: 3e-8
    # below logistic regression's 0.998: a removal can move other points across the margin (measured 0.919)
    assert pearson(scores[:, idx].reshape(-1), torch.from_numpy(truth).reshape(-1)) >= 0.85


def test_svc_representer_lje_and_refusals(cancer_np, cancer_svc):
    Xtr, ytr, Xte, _ = cancer_np
    lje = pc.RepresenterLJE(cancer_svc, progress=False).fit(Xtr, ytr)
    res = lje.attribute(Xte)
    assert float((res.scores.sum(1) - res.explained).abs().max()) < 1e-8
    assert float((res.explained - res.model_output).abs().max()) < 1e-5       # at liblinear's optimum (7e-8)
    fid = lje.fidelity(Xte)
    assert fid["prediction_agreement"] == 1.0 and np.isnan(fid["max_probability_difference"])
    with pytest.raises(PrecedentsError, match="no class probabilities|has none"):
        pc.RepresenterL2(cancer_svc, progress=False).fit(Xtr, ytr)
    from precedents.methods.perturbation import perturbation_influence

    inf = pc.InfluenceFunction(cancer_svc, solver="exact", progress=False).fit(Xtr, ytr)
    with pytest.raises(PrecedentsError, match="not implemented for a squared-hinge"):
        perturbation_influence(inf, Xtr[:2], ytr[:2], Xte[:1], cancer_np[3][:1])


def test_gradient_similarity_and_saliency_on_sklearn_models_match_closed_forms(digits_np, digits_lr):
    """Methods that differentiate through the model use the converted module: grad-dot equals the closed form
    ``<(p_t - y_t) (x) [x_t, 1], (p_i - y_i) (x) [x_i, 1]>`` and saliency of class c equals ``coef_[c]``."""
    Xtr, ytr, Xte, yte = digits_np
    Xtr, ytr = Xtr[:200], ytr[:200]
    sim = pc.GradientSimilarity(digits_lr, params="all", progress=False).fit(Xtr, ytr)
    scores = sim.attribute(Xte[:4], yte[:4]).scores

    def closed_form(X, y):
        p = digits_lr.predict_proba(X)
        r = p - np.eye(p.shape[1])[y]
        f = np.hstack([X, np.ones((len(X), 1))])
        return np.einsum("nc,nd->ncd", r, f).reshape(len(X), -1)

    expected = closed_form(Xte[:4], yte[:4]) @ closed_form(Xtr, ytr).T
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-8, atol=1e-12)
    maps = pc.feature_attributions(digits_lr, torch.as_tensor(Xte[:3]), torch.as_tensor(yte[:3]),
                                   methods=["saliency"])["saliency"]
    np.testing.assert_allclose(maps.numpy(), digits_lr.coef_[yte[:3]], rtol=1e-8, atol=1e-12)


def test_tree_models_refuse_gradient_methods():
    xgboost = pytest.importorskip("xgboost")
    X, y = load_iris()
    model = xgboost.XGBClassifier(n_estimators=5, max_depth=2).fit(X, y)
    for make in (lambda: pc.GradientSimilarity(model, progress=False).fit(X, y),
                 lambda: pc.feature_attributions(model, torch.as_tensor(X[:2]), None, methods=["saliency"])):
        with pytest.raises(PrecedentsError, match="tree ensemble"):
            make()
