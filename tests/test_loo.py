"""Leave-one-out ground truth, the LDS, and the correlation metrics, on small real data (scikit-learn digits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import precedents as pc
from precedents.evaluate.lds import linear_datamodeling, linear_datamodeling_score
from precedents.evaluate.loo import (
    LogisticRegressionRetrainer,
    fit_logistic_regression,
    leave_one_out,
    warm_start_retrainer,
)
from precedents.evaluate.metrics import pearson, rankdata, spearman

WD = 0.01


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits64():
    """scikit-learn digits in float64, shuffled: 1000 training and 200 test images, 10 classes."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(X))
    X = torch.tensor(X[perm] / 16.0, dtype=torch.float64)
    y = torch.tensor(y[perm], dtype=torch.long)
    return X[:1000], y[:1000], X[1000:1200], y[1000:1200]


@pytest.fixture(scope="module")
def retrainer(digits64):
    Xtr, ytr, _, _ = digits64
    return LogisticRegressionRetrainer(Xtr, ytr, 10, WD)


@pytest.fixture(scope="module")
def influence(retrainer, digits64):
    Xtr, ytr, _, _ = digits64
    return pc.InfluenceFunction(retrainer.base_model, solver="exact", weight_decay=WD, progress=False).fit(Xtr, ytr)


def hardest(model: nn.Module, X: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    with torch.no_grad():
        losses = nn.functional.cross_entropy(model(X), y, reduction="none")
    return losses.argsort(descending=True)[:k]


# -- metrics ------------------------------------------------------------------------------------------------

def test_metrics_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(size=200)
    ties_a, ties_b = rng.integers(0, 5, size=300), rng.integers(0, 7, size=300) + rng.integers(0, 5, size=300)
    assert pearson(a, b) == pytest.approx(scipy.stats.pearsonr(a, b)[0], abs=1e-12)
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b)[0], abs=1e-12)
    assert spearman(ties_a, ties_b) == pytest.approx(scipy.stats.spearmanr(ties_a, ties_b)[0], abs=1e-12)
    np.testing.assert_allclose(rankdata(ties_a), scipy.stats.rankdata(ties_a))
    # tensors, any shape (flattened), float32
    ta, tb = torch.tensor(a.reshape(20, 10), dtype=torch.float32), torch.tensor(b.reshape(20, 10))
    assert pearson(ta, tb) == pytest.approx(scipy.stats.pearsonr(a, b)[0], abs=1e-6)
    assert spearman(ta, tb) == pytest.approx(scipy.stats.spearmanr(a, b)[0], abs=1e-12)
    assert np.isnan(pearson(np.ones(5), np.arange(5))) and np.isnan(spearman([1.0], [2.0]))
    with pytest.raises(ValueError):
        pearson(np.ones(3), np.ones(4))


# -- the exact optimum ---------------------------------------------------------------------------------------

def test_fit_logistic_regression_reaches_the_optimum(digits64, retrainer):
    Xtr, ytr, _, _ = digits64
    model = fit_logistic_regression(Xtr, ytr, 10, WD)
    assert isinstance(model, nn.Linear) and model.weight.dtype == torch.float64
    # the gradient of the objective, by autograd (independent of the Newton code)
    params = [p.detach().clone().requires_grad_(True) for p in (model.weight, model.bias)]
    loss = nn.functional.cross_entropy(Xtr @ params[0].T + params[1], ytr) \
        + WD / 2 * sum((p * p).sum() for p in params)
    grads = torch.autograd.grad(loss, params)
    assert float(torch.cat([g.reshape(-1) for g in grads]).norm()) < 1e-9
    assert model.fit_info_["converged"]
    torch.testing.assert_close(model.weight, retrainer.base_model.weight, rtol=0, atol=1e-9)
    # warm-started from the optimum it stops at once; with a preconditioner it converges in a few steps
    again = fit_logistic_regression(Xtr, ytr, 10, WD, init=model)
    assert again.fit_info_["iterations"] == 0
    sub = fit_logistic_regression(Xtr[1:], ytr[1:], 10, WD, init=model, preconditioner=retrainer.hessian_factor_)
    assert sub.fit_info_["gradient_norm"] < 1e-12 and sub.fit_info_["iterations"] <= 6
    keep = torch.ones(len(Xtr), dtype=torch.bool)
    keep[0] = False
    torch.testing.assert_close(retrainer(keep).weight, sub.weight, rtol=0, atol=1e-10)


def test_fit_without_weight_decay_stays_out_of_the_softmax_null_space():
    """No penalty: the Hessian is singular (a shift shared by the classes); Newton still converges, centred."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = torch.tensor(X[:, :2])                                      # two features: not separable, an optimum
    X = (X - X.mean(0)) / X.std(0)
    model = fit_logistic_regression(X, torch.tensor(y), 2, 0.0)
    assert model.fit_info_["converged"] and model.fit_info_["iterations"] <= 15
    torch.testing.assert_close(model.weight.sum(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)


# -- leave-one-out against exact influence ------------------------------------------------------------------

def test_exact_influence_matches_leave_one_out(digits64, retrainer, influence):
    _, _, Xte, yte = digits64
    top = hardest(retrainer.base_model, Xte, yte, 5)
    scores = influence.attribute(Xte[top], yte[top]).scores
    indices = scores.abs().max(0).values.argsort(descending=True)[:20]
    res = leave_one_out(retrainer, Xte[top], yte[top], indices, progress=False)
    assert res.loss_change.shape == (5, 20) and res.loss_change.dtype == torch.float64
    corr = res.correlate(scores)
    assert corr.pearson > 0.99 and corr.spearman > 0.95
    assert (corr.pearson_per_test > 0.98).all()
    # sign convention: removing a strong proponent raises the test loss
    j = int(scores[0, indices].argmax())
    assert res.loss_change[0, j] > 0
    # reference = the full-data optimum
    with torch.no_grad():
        ref = nn.functional.cross_entropy(retrainer.base_model(Xte[top]), yte[top], reduction="none")
    torch.testing.assert_close(res.reference_loss, ref, rtol=0, atol=1e-12)
    # an Attribution is accepted, and pairs restrict the comparison
    pairs = torch.zeros(5, 20, dtype=torch.bool)
    pairs[:, :10] = True
    sub = res.correlate(influence.attribute(Xte[top], yte[top]), pairs=pairs)
    assert sub.n_pairs == 50 and sub.pearson > 0.99


# -- resume after an interruption ---------------------------------------------------------------------------

class Interrupted(RuntimeError):
    pass


def test_resume_after_interruption(tmp_path, digits64, retrainer):
    _, _, Xte, yte = digits64
    X, y = Xte[:8], yte[:8]
    indices = [3, 14, 15, 92, 65, 35, 89, 79]
    path = tmp_path / "loo.jsonl"
    calls: list[bool] = []

    def flaky(mask: torch.Tensor) -> nn.Module:                 # the reference, then 3 retrains, then dies
        if len(calls) == 4:
            raise Interrupted("killed")
        calls.append(bool(mask.all()))
        return retrainer(mask)

    with pytest.raises(Interrupted):
        leave_one_out(flaky, X, y, indices, n_train=retrainer.n_train, results_path=path, progress=False)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 1 + 3                                  # header, reference, 3 retrains
    with open(path, "a") as fh:                                     # and a torn half-written line
        fh.write('{"key": "loo:89", "outp')
    counted: list[torch.Tensor] = []

    def counting(mask: torch.Tensor) -> nn.Module:
        counted.append(mask)
        return retrainer(mask)

    res = leave_one_out(counting, X, y, indices, n_train=retrainer.n_train, results_path=path, progress=False)
    assert len(counted) == len(indices) - 3                         # nothing redone, reference included
    assert all(int((~m).sum()) == 1 for m in counted)
    assert sorted(int((~m).nonzero()) for m in counted) == sorted(indices[3:])
    fresh = leave_one_out(retrainer, X, y, indices, progress=False)
    torch.testing.assert_close(res.loss_change, fresh.loss_change, rtol=0, atol=0)   # JSON round-trips floats
    assert res.indices.tolist() == indices
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 2 + len(indices)
    # a third run does nothing; another experiment in the same file is refused
    leave_one_out(counting, X, y, indices, n_train=retrainer.n_train, results_path=path, progress=False)
    assert len(counted) == len(indices) - 3
    with pytest.raises(pc.PrecedentsError, match="another experiment"):
        leave_one_out(counting, Xte[8:16], yte[8:16], indices, n_train=retrainer.n_train, results_path=path,
                      progress=False)


def test_leave_one_out_checks_its_input(digits64, retrainer):
    _, _, Xte, yte = digits64
    with pytest.raises(pc.PrecedentsError, match="n_train"):
        leave_one_out(lambda mask: retrainer(mask), Xte[:2], yte[:2], [0], progress=False)
    with pytest.raises(pc.PrecedentsError, match="duplicates"):
        leave_one_out(retrainer, Xte[:2], yte[:2], [0, 0], progress=False)
    with pytest.raises(pc.PrecedentsError, match="lie in"):
        leave_one_out(retrainer, Xte[:2], yte[:2], [retrainer.n_train], progress=False)
    res = leave_one_out(retrainer, Xte[:2], yte[:2], [0, 1], base_model=retrainer.base_model, progress=False)
    with pytest.raises(pc.PrecedentsError, match="shape"):
        res.correlate(torch.zeros(2, 5))


# -- the linear datamodeling score --------------------------------------------------------------------------

def test_lds_is_high_for_exact_influence_and_near_zero_for_noise(digits64, retrainer, influence):
    _, _, Xte, yte = digits64
    X, y = Xte[:20], yte[:20]
    scores = influence.attribute(X, y).scores
    result = linear_datamodeling(retrainer, scores, X, y, n_subsets=16, fraction=0.5, progress=False)
    assert result.lds > 0.9
    assert result.keep_masks.shape == (16, retrainer.n_train) and (result.keep_masks.sum(1) == 500).all()
    noise = torch.randn(scores.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lds_noise = linear_datamodeling_score(retrainer, noise, X, y, n_subsets=16, progress=False)
    assert abs(lds_noise) < 0.2
    # for softmax, the negative margin ranks subsets like the loss does, nearly
    margin = linear_datamodeling_score(retrainer, scores, X, y, n_subsets=16, output="margin", progress=False)
    assert margin > 0.85


# -- networks -----------------------------------------------------------------------------------------------

def test_warm_start_retrainer_is_deterministic_and_removes_only_the_masked(digits64):
    Xtr, ytr, _, _ = digits64
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    retrain = warm_start_retrainer(model, Xtr, ytr, steps=30, lr=0.1, weight_decay=WD, batch_size=100, seed=3)
    keep = torch.ones(len(Xtr), dtype=torch.bool)
    a, b = retrain(keep), retrain(keep)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(a[0].weight, model[0].weight)                  # it trained a copy
    keep[5] = False
    c = retrain(keep)
    assert not torch.equal(c[0].weight, a[0].weight)
    assert float((c[0].weight - a[0].weight).detach().abs().max()) < 1e-2         # one example of 1000: a small change
    zero = warm_start_retrainer(model, Xtr, ytr, steps=0, lr=0.1, weight_decay=WD)(keep)
    assert torch.equal(zero[0].weight, model[0].weight)
