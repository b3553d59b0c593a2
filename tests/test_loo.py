"""Leave-one-out ground truth, the LDS, and the correlation metrics, on small real data (scikit-learn digits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import precedents as pc
from precedents.evaluate import (
    FromScratchRetrainer,
    LogisticRegressionRetrainer,
    Retrainer,
    fit_logistic_regression,
    leave_one_out,
    linear_datamodeling,
    linear_datamodeling_score,
    warm_start_retrainer,
)
from precedents.evaluate.metrics import pearson, rankdata, spearman

WD = 0.01
# Two optima of J (mean CE + WD/2 ||theta||^2, WD-strongly convex) reached to gradient norm <= 1e-12 each (the
# fit's tol) lie within ||theta_1 - theta_2|| <= (||g_1|| + ||g_2||) / WD of each other: an independent bound.
THETA_ATOL = 2 * 1e-12 / WD


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
    # float32 inputs: each value rounded by <= eps32/2 relative; r of centred, normalised vectors moves by at most
    # about twice the relative perturbation of each (4 eps32 ~ 5e-7 for data of mean ~0): 1e-6
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
    torch.testing.assert_close(model.weight, retrainer.base_model.weight, rtol=0, atol=THETA_ATOL)
    # warm-started from the optimum it stops at once; with a preconditioner it converges in a few steps
    again = fit_logistic_regression(Xtr, ytr, 10, WD, init=model)
    assert again.fit_info_["iterations"] == 0
    sub = fit_logistic_regression(Xtr[1:], ytr[1:], 10, WD, init=model, preconditioner=retrainer.hessian_factor_)
    assert sub.fit_info_["gradient_norm"] < 1e-12 and sub.fit_info_["iterations"] <= 6
    keep = torch.ones(len(Xtr), dtype=torch.bool)
    keep[0] = False
    torch.testing.assert_close(retrainer(keep).weight, sub.weight, rtol=0, atol=THETA_ATOL)


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


class Counting(Retrainer):
    """The retrainer it wraps (same settings), counting the masks it is asked for and dying after ``die_after``."""

    def __init__(self, inner: Retrainer, die_after: int | None = None) -> None:
        self.inner, self.n_train, self.die_after = inner, inner.n_train, die_after
        self.masks: list[torch.Tensor] = []

    def settings(self) -> dict:
        return self.inner.settings()

    def retrain(self, keep_mask=None, *, X=None, y=None):
        if self.die_after is not None and len(self.masks) == self.die_after:
            raise Interrupted("killed")
        self.masks.append(keep_mask)
        return self.inner.retrain(keep_mask, X=X, y=y)


def test_resume_after_interruption(tmp_path, digits64, retrainer):
    _, _, Xte, yte = digits64
    X, y = Xte[:8], yte[:8]
    indices = [3, 14, 15, 92, 65, 35, 89, 79]
    path = tmp_path / "loo.jsonl"
    with pytest.raises(Interrupted):                                # the reference, then 3 retrains, then dies
        leave_one_out(Counting(retrainer, die_after=4), X, y, indices, results_path=path, progress=False)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 1 + 3                                  # header, reference, 3 retrains
    with open(path, "a") as fh:                                     # and a torn half-written line
        fh.write('{"key": "loo:89", "outp')
    counting = Counting(retrainer)
    with pytest.warns(RuntimeWarning, match="line\\(s\\) 6 could not be read"):
        res = leave_one_out(counting, X, y, indices, results_path=path, progress=False)
    assert len(counting.masks) == len(indices) - 3                 # nothing redone, reference included
    assert all(int((~m).sum()) == 1 for m in counting.masks)
    assert sorted(int((~m).nonzero()) for m in counting.masks) == sorted(indices[3:])
    fresh = leave_one_out(retrainer, X, y, indices, progress=False)
    torch.testing.assert_close(res.loss_change, fresh.loss_change, rtol=0, atol=0)   # JSON round-trips floats
    assert res.indices.tolist() == indices
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 2 + len(indices)                         # the torn line is gone from the file
    # a third run does nothing; another experiment in the same file is refused
    leave_one_out(counting, X, y, indices, results_path=path, progress=False)
    assert len(counting.masks) == len(indices) - 3
    with pytest.raises(pc.PrecedentsError, match="another experiment, they differ in test"):
        leave_one_out(counting, Xte[8:16], yte[8:16], indices, results_path=path, progress=False)


def _first_run(path, retrainer, X, y, indices=(3, 14, 15)):
    return leave_one_out(retrainer, X, y, list(indices), results_path=path, progress=False)


def test_resume_refuses_rows_of_another_model_or_other_retrainer_settings(tmp_path, digits64, retrainer):
    Xtr, ytr, Xte, yte = digits64
    X, y = Xte[:4], yte[:4]
    path = tmp_path / "loo.jsonl"
    _first_run(path, retrainer, X, y)
    before = path.read_bytes()
    # other retrainer settings: weight decay, tolerance, training data
    for other, what in ((LogisticRegressionRetrainer(Xtr, ytr, 10, 2 * WD), "weight_decay"),
                        (LogisticRegressionRetrainer(Xtr, ytr, 10, WD, tol=1e-10), "tol"),
                        (LogisticRegressionRetrainer(Xtr, (ytr + 1) % 10, 10, WD), "data")):
        with pytest.raises(pc.PrecedentsError, match=f"differ in retrainer.{what}: stored"):
            _first_run(path, Counting(other), X, y)
    # another reference model
    other_model = fit_logistic_regression(Xtr[:500], ytr[:500], 10, WD)
    with pytest.raises(pc.PrecedentsError, match="differ in base_model"):
        leave_one_out(retrainer, X, y, [3, 14, 15], base_model=other_model, results_path=path, progress=False)
    assert path.read_bytes() == before                              # a refused run leaves the file as it was
    # warm-started networks: another model, other steps / learning rate / seed
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    net_path = tmp_path / "net.jsonl"
    base = dict(steps=2, lr=0.1, weight_decay=WD, seed=0)
    _first_run(net_path, warm_start_retrainer(net, Xtr, ytr, **base), X, y, indices=(3,))
    other_net = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    for model, change, what in ((other_net, {}, "model"), (net, {"steps": 3}, "steps"), (net, {"lr": 0.2}, "lr"),
                                (net, {"weight_decay": 0.0}, "weight_decay"), (net, {"seed": 1}, "seed")):
        with pytest.raises(pc.PrecedentsError, match=f"differ in retrainer.{what}: stored"):
            _first_run(net_path, warm_start_retrainer(model, Xtr, ytr, **{**base, **change}), X, y, indices=(3,))
    # asked to, it moves the old file aside and starts a new one
    with pytest.warns(RuntimeWarning, match="moved to"):
        leave_one_out(warm_start_retrainer(net, Xtr, ytr, **{**base, "seed": 1}), X, y, [3], results_path=net_path,
                      restart=True, progress=False)
    assert (tmp_path / "net.jsonl.old-1").exists()
    assert json.loads(net_path.read_text().splitlines()[0])["retrainer"]["seed"] == 1


def test_resume_reports_corrupt_lines_by_number_and_recomputes_them(tmp_path, digits64, retrainer):
    _, _, Xte, yte = digits64
    X, y = Xte[:4], yte[:4]
    path = tmp_path / "loo.jsonl"
    first = _first_run(path, retrainer, X, y)
    lines = path.read_text().splitlines()                           # header, reference, loo:3, loo:14, loo:15
    lines[3] = lines[3].replace('"output": [', '"output": [#')       # line 4 (loo:14) corrupt
    lines[4] = json.dumps({"key": "loo:15", "seconds": 0.1, "output": [1.0]})    # line 5: wrong number of outputs
    path.write_text("\n".join(lines) + "\n")
    counting = Counting(retrainer)
    with pytest.warns(RuntimeWarning, match="line\\(s\\) 4, 5 could not be read"):
        again = leave_one_out(counting, X, y, [3, 14, 15], results_path=path, progress=False)
    assert sorted(int((~m).nonzero()) for m in counting.masks) == [14, 15]
    torch.testing.assert_close(again.loss_change, first.loss_change, rtol=0, atol=0)
    # an unreadable header is refused with its line number, never a bare JSONDecodeError
    path.write_text("not json\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(pc.PrecedentsError, match="unreadable header on line 1"):
        _first_run(path, retrainer, X, y)
    # a truncated last line (killed mid-write) is reported and recomputed
    path.unlink()
    _first_run(path, retrainer, X, y)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 25])
    counting = Counting(retrainer)
    with pytest.warns(RuntimeWarning, match="line\\(s\\) 5 could not be read"):
        third = leave_one_out(counting, X, y, [3, 14, 15], results_path=path, progress=False)
    assert [int((~m).nonzero()) for m in counting.masks] == [15]
    torch.testing.assert_close(third.loss_change, first.loss_change, rtol=0, atol=0)


def test_retrainers_follow_one_protocol(digits64, retrainer):
    """retrain(keep_mask), retrain(y=...), retrain(X=...), settings(), called like a function; from scratch."""
    Xtr, ytr, Xte, yte = digits64
    keep = torch.ones(len(Xtr), dtype=torch.bool)
    keep[:10] = False
    # replaced labels: the exact optimum on them, like a fresh fit
    flipped = ytr.clone()
    flipped[:20] = (flipped[:20] + 1) % 10
    torch.testing.assert_close(retrainer.retrain(y=flipped).weight,
                               fit_logistic_regression(Xtr, flipped, 10, WD).weight, rtol=0, atol=THETA_ATOL)
    torch.testing.assert_close(retrainer(keep).weight, retrainer.retrain(keep).weight, rtol=0, atol=0)
    moved = Xtr.clone()
    moved[0] = 1 - moved[0]
    torch.testing.assert_close(retrainer.retrain(X=moved).weight,
                               fit_logistic_regression(moved, ytr, 10, WD).weight, rtol=0, atol=THETA_ATOL)
    with pytest.raises(pc.PrecedentsError, match="keeps no training example"):
        retrainer(torch.zeros(len(Xtr), dtype=torch.bool))
    with pytest.raises(pc.PrecedentsError, match="replacement y has 5"):
        retrainer.retrain(y=ytr[:5])
    # from scratch with the user's train_fn(X, y, seed)
    seen = []

    def train_fn(X, y, seed):
        seen.append((len(X), seed))
        return fit_logistic_regression(X, y, 10, WD)

    scratch = FromScratchRetrainer(train_fn, Xtr, ytr, seed=7, params={"weight_decay": WD})
    assert scratch.n_train == len(Xtr) and scratch.settings()["params"] == {"weight_decay": WD}
    torch.testing.assert_close(scratch(keep).weight, retrainer(keep).weight, rtol=0, atol=THETA_ATOL)
    assert seen == [(len(Xtr) - 10, 7)]
    res = leave_one_out(scratch, Xte[:3], yte[:3], [0, 1], progress=False)
    ref = leave_one_out(retrainer, Xte[:3], yte[:3], [0, 1], progress=False)
    # a test loss moves by at most ||dl/dtheta|| ||dtheta|| <= sqrt(2) ||[x, 1]|| THETA_ATOL (|p - onehot| <= sqrt 2),
    # twice (the reference and the retrain)
    reach = 2 * 2 ** 0.5 * float(torch.cat([Xte[:3], torch.ones(3, 1, dtype=torch.float64)], 1).norm(dim=1).max())
    torch.testing.assert_close(res.loss_change, ref.loss_change, rtol=0, atol=reach * THETA_ATOL)


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


def test_lbfgs_warm_start_reaches_the_optimum_of_the_kept_examples(digits64):
    """optimizer='lbfgs' retrains to the optimum: on logistic regression it matches the exact Newton optimum."""
    Xtr, ytr, _, _ = digits64
    X, y = Xtr[:300], ytr[:300]
    start = nn.Linear(64, 10).double()
    keep = torch.ones(300, dtype=torch.bool)
    keep[:5] = False
    retrain = warm_start_retrainer(start, X, y, steps=500, lr=1.0, weight_decay=WD, optimizer="lbfgs")
    model = retrain(keep)
    exact = fit_logistic_regression(X[keep], y[keep], 10, WD)
    # ||theta - theta*|| <= ||grad|| / mu with mu >= WD the strong convexity of J: an independent bound
    bound = model.fit_info_["gradient_norm"] / WD
    assert bound < 1e-4
    with torch.no_grad():
        distance = float(torch.cat([(model.weight - exact.weight).reshape(-1), model.bias - exact.bias]).norm())
    assert distance <= bound
    assert retrain.settings()["optimizer"] == "lbfgs"
    with pytest.raises(pc.PrecedentsError, match="full batch"):
        warm_start_retrainer(start, X, y, steps=5, lr=1.0, weight_decay=WD, optimizer="lbfgs", batch_size=10)


def test_from_scratch_retrainer_caches_and_takes_data_frames():
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(6.0), "b": np.arange(6.0) ** 2})
    calls = []

    def train_fn(X, y, seed):
        calls.append((list(X.index), y.tolist(), seed))
        return len(calls)

    retrain = FromScratchRetrainer(train_fn, frame, np.array([0, 1, 0, 1, 0, 1]), seed=3, cache=True)
    keep = torch.tensor([True, False, True, True, True, True])
    assert retrain(keep) == 1 and retrain(keep) == 1 and retrain(None) == 2
    assert calls[0] == ([0, 2, 3, 4, 5], [0, 0, 1, 0, 1], 3)
    other = FromScratchRetrainer(train_fn, frame.assign(b=0.0), [0, 1, 0, 1, 0, 1], seed=3)
    assert retrain.settings()["data"] != other.settings()["data"]
