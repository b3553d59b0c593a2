"""The estimator contract, checked on every registered method (in the spirit of scikit-learn's check_estimator).

A method registered later is covered by registering it: every test here is parametrised over
``pc.available_methods()``. Methods that cannot be built from the model alone name their extra arguments in
``REQUIRED`` (TracIn needs checkpoints; LiSSA is run shallower to keep the suite fast).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import precedents as pc

EPS = torch.finfo(torch.float64).eps


def _checkpoints(model: nn.Module) -> dict:
    """Two weight states: the final weights and a perturbed earlier-looking one."""
    g = torch.Generator().manual_seed(1)
    early = {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in model.state_dict().items()}
    return {"checkpoints": [early, model.state_dict()], "learning_rates": [0.1, 0.05]}


def _short_lissa(model: nn.Module) -> dict:
    """LiSSA at depth 100 (its default 1000 costs 10x the time and checks nothing more of the contract)."""
    return {"solver_options": {"depth": 100}}


REQUIRED = {"tracin": _checkpoints, "influence-lissa": _short_lissa}
CHECKPOINTED = ("tracin",)           # state dicts of a torch module: not for a scikit-learn model
METHODS = pc.available_methods()


@pytest.fixture(scope="module")
def problem():
    """300 real digits (float64), a 64-8-10 MLP trained with weight decay to near stationarity."""
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float64)
    y = torch.tensor(y, dtype=torch.long)
    Xtr, ytr, Xte, yte = X[:300], y[:300], X[1500:1512], y[1500:1512]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(Xtr), ytr) + 0.5e-2 * sum((p ** 2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model.eval(), Xtr, ytr, Xte, yte


def build(key: str, model: nn.Module, **params) -> pc.Explainer:
    extra = REQUIRED[key](model) if key in REQUIRED else {}
    return pc.explainer(key, model, **{"progress": False, **extra, **params})


@pytest.fixture(scope="module")
def fitted(problem):
    model, Xtr, ytr, _, _ = problem
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)       # stationarity / CG warnings are not the point here
        for key in METHODS:
            out[key] = build(key, model).fit(Xtr, ytr)
    return out


def _tolerance(est: pc.Explainer, scores: torch.Tensor, condition: float | None = None) -> float:
    """Absolute tolerance from the conditioning of what the method solves: rounding of float64 sums over n
    training examples (n eps), amplified by the condition number of the solved system where there is one; an
    iterative solver stopped at relative residual r is accurate to about condition * r (relative)."""
    diag = est.diagnostics()
    info = diag.get("solver_info") or {}
    cond = condition or diag.get("hessian_condition") or info.get("condition_number") or 1.0
    relative = max(100 * est.n_train_ * EPS, 10 * (info.get("relative_residual") or 0.0))
    return float(cond * relative * max(float(scores.abs().max()), 1e-300))


@pytest.mark.parametrize("key", METHODS)
def test_registry_builds_the_method(key, problem):
    model = problem[0]
    est = build(key, model)
    assert isinstance(est, pc.Explainer)
    assert est.key == key
    assert pc.method_info(key).cls is type(est)
    assert not est.is_fitted


@pytest.mark.parametrize("key", METHODS)
def test_shapes_finiteness_and_measurement(key, fitted, problem):
    _, Xtr, ytr, Xte, yte = problem
    est = fitted[key]
    res = est.attribute(Xte, yte)
    assert res.scores.shape == (len(Xte), len(Xtr))
    assert torch.isfinite(res.scores).all()
    assert res.method == key
    assert res.measurement == est.measurement
    assert res.measurement.units and res.measurement.sign.startswith("positive")
    selfs = est.self_influence()
    assert selfs.shape == (len(Xtr),) and torch.isfinite(selfs).all()
    top = res.top(3)
    assert top.positive_indices.shape == (len(Xte), 3)
    assert (top.positive_scores[:, 0] >= top.negative_scores[:, 0]).all()
    json.dumps(res.to_dict(k=2))


@pytest.mark.parametrize("key", METHODS)
def test_sign_convention(key, fitted, problem):
    """Logit-based: the scores add up to the explained output, which tracks the model's own logit for the target.
    Loss-based: a training example scored against itself (its own loss) is its self-influence, never negative:
    removing it cannot be predicted to lower its own loss."""
    _, Xtr, ytr, Xte, yte = problem
    est = fitted[key]
    if not est.loss_based:
        res = est.attribute(Xte)
        assert res.measurement.additive
        gap = (res.scores.sum(1) - res.explained).abs().max()
        assert gap <= _tolerance(est, res.scores) * len(Xtr)
        assert torch.corrcoef(torch.stack([res.explained, res.model_output]))[0, 1] > 0.9
        pred = res.target
        assert torch.equal(pred, res.model_output.new_tensor(0).long() + pred)      # predicted class by default
    else:
        m = 40
        diagonal = est.attribute(Xtr[:m], ytr[:m]).scores.diagonal()
        if "cosine" in est.measurement.units:
            torch.testing.assert_close(diagonal, torch.ones(m, dtype=torch.float64), rtol=0, atol=1e-10)
        else:
            selfs = est.self_influence()[:m]
            tol = _tolerance(est, selfs)
            assert (diagonal >= -tol).all()
            torch.testing.assert_close(diagonal, selfs, rtol=1e-6, atol=tol)


@pytest.mark.parametrize("key", METHODS)
def test_invariant_to_training_order(key, fitted, problem):
    model, Xtr, ytr, Xte, yte = problem
    est = fitted[key]
    perm = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        permuted = build(key, model).fit(Xtr[perm], ytr[perm])
    a = est.attribute(Xte, yte).scores[:, perm]
    b = permuted.attribute(Xte, yte).scores
    if key == "influence-lissa":      # minibatch sampling draws other examples: equal in expectation only
        rho = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert rho > 0.9
    else:
        condition = None
        if key.startswith("influence-"):  # the same Hessian as the exact solver's, whose condition number is known
            condition = fitted["influence-exact"].diagnostics()["solver_info"]["condition_number"]
        torch.testing.assert_close(b, a, rtol=0, atol=_tolerance(est, a, condition))


@pytest.mark.parametrize("key", METHODS)
def test_save_load_reproduces_bit_for_bit_without_the_training_set(key, fitted, problem, tmp_path):
    model, Xtr, ytr, Xte, yte = problem
    est = fitted[key]
    est.save(tmp_path / "index")
    loaded = pc.load(tmp_path / "index", model)
    assert type(loaded) is type(est) and loaded.key == key
    assert torch.equal(loaded.attribute(Xte, yte).scores, est.attribute(Xte, yte).scores)
    assert torch.equal(loaded.self_influence(), est.self_influence())
    assert loaded.diagnostics()["n_train"] == len(Xtr)
    same_class = type(est).load(tmp_path / "index", model, train=(Xtr, ytr))
    assert torch.equal(same_class.attribute(Xte, yte).scores, est.attribute(Xte, yte).scores)


@pytest.mark.parametrize("key", METHODS)
def test_index_refuses_another_model_or_other_data(key, fitted, problem, tmp_path):
    model, Xtr, ytr, _, _ = problem
    fitted[key].save(tmp_path / "index")
    other = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other[0].weight[0, 0] += 1e-3
    with pytest.raises(pc.PrecedentsError, match="another model"):
        pc.load(tmp_path / "index", other.eval())
    with pytest.raises(pc.PrecedentsError, match="other training data"):
        pc.load(tmp_path / "index", model, train=(Xtr[:-1], ytr[:-1]))
    wrong = next(cls for cls in (pc.RepresenterL2, pc.TracIn) if cls is not type(fitted[key]))
    with pytest.raises(pc.PrecedentsError, match="not a"):
        wrong.load(tmp_path / "index", model)


@pytest.mark.parametrize("key", METHODS)
def test_not_fitted_error(key, problem):
    model, _, _, Xte, yte = problem
    est = build(key, model)
    for call in (lambda: est.attribute(Xte, yte), est.self_influence, est.diagnostics, lambda: est.save("unused")):
        with pytest.raises(pc.NotFittedError, match="not fitted"):
            call()
    assert issubclass(pc.NotFittedError, pc.PrecedentsError)


@pytest.mark.parametrize("key", METHODS)
def test_clone_get_params_set_params(key, fitted, problem):
    model = problem[0]
    est = fitted[key]
    copy = pc.clone(est)
    assert type(copy) is type(est) and not copy.is_fitted
    assert repr(copy) == repr(est)
    assert set(copy.get_params()) == set(est.get_params())
    assert copy.set_params(batch_size=17) is copy and copy.batch_size == 17 and est.batch_size != 17
    with pytest.raises(pc.PrecedentsError, match="no parameter"):
        copy.set_params(no_such_option=1)
    with pytest.raises(pc.PrecedentsError, match="no parameter"):
        pc.explainer(key, model, no_such_option=1)


@pytest.mark.parametrize("key", METHODS)
def test_diagnostics_are_json_and_say_what_was_chosen(key, fitted):
    diag = fitted[key].diagnostics()
    text = json.dumps(diag)
    assert diag["method"] == key and diag["n_train"] == fitted[key].n_train_
    assert diag["measurement"]["units"] and math.isfinite(diag["fit_seconds"])
    if "damping" in fitted[key].get_params():
        assert "damping" in diag and "damping_reason" in diag
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.parametrize("key", METHODS)
@pytest.mark.parametrize("option", ["batch_size=0", "batch_size=-3", "batch_size=1.5", "damping=nan",
                                    "damping=-1", "progress=maybe", "layer=3"])
def test_numeric_and_choice_options_are_validated(key, option, problem):
    model, Xtr, ytr, _, _ = problem
    name, _, text = option.partition("=")
    value = {"nan": float("nan"), "maybe": "maybe"}.get(text)
    if value is None:
        value = float(text) if "." in text else int(text)
    if name not in pc.method_info(key).cls._param_names():
        pytest.skip(f"{key} has no {name}")
    est = build(key, model, **{name: value})
    with pytest.raises(pc.PrecedentsError, match=name):
        est.fit(Xtr, ytr)


@pytest.mark.parametrize("key", METHODS)
def test_bad_inputs_get_clear_errors(key, fitted, problem):
    model, Xtr, ytr, Xte, yte = problem
    est = fitted[key]
    nan = Xtr.clone()
    nan[5, 3] = float("nan")
    with pytest.raises(pc.PrecedentsError, match="NaN"):
        build(key, model).fit(nan, ytr)
    with pytest.raises(pc.PrecedentsError, match="labels"):
        build(key, model).fit(Xtr, ytr + 10)
    with pytest.raises(pc.PrecedentsError, match="lengths|labels"):
        build(key, model).fit(Xtr, ytr[:-1])
    with pytest.raises(pc.PrecedentsError, match="empty"):
        build(key, model).fit(Xtr[:0], ytr[:0])
    if est.loss_based:
        with pytest.raises(pc.PrecedentsError, match="loss"):
            est.attribute(Xte)
    with pytest.raises(pc.PrecedentsError, match="target|labels"):
        est.attribute(Xte, yte, target=12)


@pytest.mark.parametrize("key", [k for k in METHODS if k not in CHECKPOINTED])
def test_every_method_reads_data_through_the_adapters(key):
    """A scikit-learn model fitted on string labels: every method maps them through ``classes_`` (the adapters are
    the one way into the data), and a class *name* works as ``target``."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    names = np.where(y == 1, "benign", "malignant")
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(X[:200], names[:200])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        extra = _short_lissa(clf) if key == "influence-lissa" else {}
        est = pc.explainer(key, clf, progress=False, **extra).fit(X[:200], names[:200])
    res = est.attribute(X[200:205], names[200:205])
    assert res.scores.shape == (5, 200) and torch.isfinite(res.scores).all()
    by_name = est.attribute(X[200:205], names[200:205], target="malignant")
    if est.loss_based:           # the loss of label "malignant" at every test point
        same = est.attribute(X[200:205], np.array(["malignant"] * 5))
    else:                        # the logit of class "malignant", by its index in classes_
        same = est.attribute(X[200:205], target=list(clf.classes_).index("malignant"))
    torch.testing.assert_close(by_name.scores, same.scores, rtol=0, atol=0)
