"""Perturbation influence (Koh & Liang's I_pert,loss) against exact retraining and brute-force autograd; the attack.

Scaling checked here: moving training input x_i by delta and retraining to the exact optimum changes the test
loss by ``(I_pert * delta).sum() / n`` to first order (``perturbation_influence`` returns Koh & Liang's I_pert,
which leaves out the 1/n; ``divide_by_n=True`` gives the derivative itself).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

import precedents as pc
from precedents.evaluate import LogisticRegressionRetrainer, fit_logistic_regression
from precedents.methods.perturbation import perturbation_influence, training_set_attack

WD = 1e-2


def _ce(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return nn.functional.cross_entropy(model(X), y, reduction="none")


@pytest.fixture(scope="module")
def cancer_lr():
    """Breast cancer (real), standardised, float64; logistic regression at the exact optimum."""
    X, y = load_breast_cancer(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / X.std(0))
    y = torch.tensor(y)
    Xtr, ytr, Xte, yte = X[:250], y[:250], X[450:454], y[450:454]
    model = fit_logistic_regression(Xtr, ytr, 2, WD)
    return Xtr, ytr, Xte, yte, model


@pytest.fixture(scope="module")
def finite_differences(cancer_lr):
    """Central differences of the retrained test losses along a random direction of three training inputs."""
    Xtr, ytr, Xte, yte, model = cancer_lr
    inf = pc.InfluenceFunction(model, params="head", solver="exact", weight_decay=WD, progress=False).fit(Xtr, ytr)
    norms = perturbation_influence(inf, Xtr, ytr, Xte[:1], yte[:1])[0].norm(dim=1)
    chosen = norms.argsort(descending=True)[:3].tolist()   # the others move the loss below round-off
    g = torch.Generator().manual_seed(0)
    h = 1e-3
    out = []
    for i in chosen:
        u = torch.randn(Xtr.shape[1], generator=g, dtype=torch.float64)
        u /= u.norm()
        losses = []
        for sign in (1.0, -1.0):
            X_mod = Xtr.clone()
            X_mod[i] += sign * h * u
            losses.append(_ce(fit_logistic_regression(X_mod, ytr, 2, WD, init=model, tol=1e-13), Xte, yte))
        out.append((i, u, (losses[0] - losses[1]) / (2 * h)))               # d l_test / d (x_i . u)
    return out


@pytest.mark.parametrize("params", ["head", "all"])
def test_matches_finite_differences_of_exact_retraining(params, cancer_lr, finite_differences):
    Xtr, ytr, Xte, yte, model = cancer_lr
    n = len(Xtr)
    inf = pc.InfluenceFunction(model, params=params, solver="exact", weight_decay=WD, progress=False).fit(Xtr, ytr)
    I = perturbation_influence(inf, Xtr, ytr, Xte, yte)                      # (4, 250, 30)
    assert I.shape == (len(Xte), n, Xtr.shape[1]) and I.dtype == torch.float64
    torch.testing.assert_close(perturbation_influence(inf, Xtr[:7], ytr[:7], Xte, yte, divide_by_n=True),
                               I[:, :7] / n, rtol=1e-12, atol=0)
    for i, u, finite_difference in finite_differences:
        predicted = I[:, i] @ u / n                                          # Koh & Liang's I_pert, scaled by 1/n
        assert finite_difference.abs().max() > 1e-6
        torch.testing.assert_close(predicted, finite_difference, rtol=1e-4, atol=1e-9)


def test_head_with_a_body_matches_brute_force_autograd(cancer_lr):
    """One-output (sigmoid) head on a tanh body: params='head' differentiates through the body to the input.

    The identity holds at any parameters (the head Hessian plus weight decay and damping is positive definite),
    so the network is left untrained."""
    Xtr, ytr, Xte, yte, _ = cancer_lr
    Xtr, ytr, Xte, yte = Xtr[:120], ytr[:120], Xte[:3], yte[:3]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    wd, damping = 1e-3, 1e-2
    inf = pc.InfluenceFunction(model, params="head", solver="exact", weight_decay=wd, damping=damping,
                               progress=False).fit(Xtr, ytr)
    got = perturbation_influence(inf, Xtr[:5], ytr[:5], Xte, yte)

    body, head = model[:-1], model[-1]
    theta0 = torch.cat([head.weight.detach().reshape(-1), head.bias.detach()])      # (9,)

    def loss(theta, x, t):
        logit = body(x) @ theta[:-1] + theta[-1]
        return nn.functional.binary_cross_entropy_with_logits(logit, t.double(), reduction="none")

    def objective(theta):
        return loss(theta, Xtr, ytr).mean() + wd / 2 * (theta ** 2).sum()

    hess = torch.autograd.functional.hessian(objective, theta0) + damping * torch.eye(len(theta0), dtype=torch.float64)
    g_test = torch.stack([torch.autograd.functional.jacobian(lambda th, x=x, t=t: loss(th, x[None], t[None])[0],
                                                             theta0) for x, t in zip(Xte, yte, strict=True)])
    v = torch.linalg.solve(hess, g_test.T).T                                          # (3, 9)
    expected = torch.empty_like(got)
    for i in range(5):
        def grad_theta(x, i=i):
            return torch.autograd.functional.jacobian(lambda th: loss(th, x[None], ytr[i:i + 1])[0], theta0,
                                                      create_graph=True)
        mixed = torch.autograd.functional.jacobian(grad_theta, Xtr[i])                # (9, 30)
        expected[:, i] = -v @ mixed
    # both sides solve (H + damping) v = g in float64, H formed differently: backward errors ~ p eps64 ||H|| move v by
    # p eps64 kappa relative (p = 9 parameters); the mixed derivatives agree to round-off
    kappa = float(torch.linalg.cond(hess))
    torch.testing.assert_close(got, expected, rtol=100 * len(theta0) * torch.finfo(torch.float64).eps * kappa,
                               atol=1e-12 * float(expected.abs().max()))


@pytest.fixture(scope="module")
def digits_lr():
    """Real 8x8 digits, 3 vs 8, pixels in [0, 1]; logistic regression at the exact optimum."""
    X, y = load_digits(return_X_y=True)
    keep = (y == 3) | (y == 8)
    X = torch.tensor(X[keep] / 16.0)
    y = torch.tensor((y[keep] == 8).astype(np.int64))
    Xtr, ytr, Xte, yte = X[:250], y[:250], X[250:], y[250:]
    model = fit_logistic_regression(Xtr, ytr, 2, 1e-3)
    return Xtr, ytr, Xte, yte, model


def test_attack_raises_the_test_loss_after_retraining(digits_lr):
    Xtr, ytr, Xte, yte, model = digits_lr
    wd = 1e-3
    with torch.no_grad():
        p = torch.softmax(model(Xte), 1)[torch.arange(len(yte)), yte]
    j = int(torch.where(p > 0.5, p, torch.ones_like(p)).argmin())                       # smallest correct margin
    inf = pc.InfluenceFunction(model, params="head", solver="exact", weight_decay=wd, progress=False).fit(Xtr, ytr)
    calls = []

    class Counting(LogisticRegressionRetrainer):
        def retrain(self, keep_mask=None, *, X=None, y=None):
            calls.append(1)
            return super().retrain(keep_mask, X=X, y=y)

    retrain = Counting(Xtr, ytr, 2, wd)

    X_before = Xtr.clone()
    res = training_set_attack(retrain, inf, Xtr, ytr, Xte[j], yte[j], epsilon=0.1, steps=3,
                              stop_when_flipped=False)
    assert torch.equal(Xtr, X_before)                                                    # the caller's data untouched
    assert len(calls) == res.steps == 3 and len(res.history) == 4
    assert res.test_loss_after > res.test_loss_before + 1e-3
    assert res.predicted_change > 0 and res.actual_change > 0
    assert res.linf <= 0.1 + 1e-12 and res.perturbed.min() >= 0 and res.perturbed.max() <= 1
    torch.testing.assert_close(res.original, Xtr[res.index])
    assert res.label == int(ytr[res.index])
    # the step direction is +I_pert: one signed step the other way lowers the test loss
    down = Xtr.clone()
    down[res.index] = (Xtr[res.index] - 0.1 * torch.sign(res.i_pert)).clamp(0, 1)
    assert float(_ce(retrain.retrain(X=down), Xte[j:j + 1], yte[j:j + 1])[0]) < res.test_loss_before
    # a given index is attacked as asked
    other = training_set_attack(retrain, inf, Xtr, ytr, Xte[j:j + 1], yte[j:j + 1], index=3, epsilon=0.05, steps=1)
    assert other.index == 3 and other.linf <= 0.05 + 1e-12


def test_bad_input(digits_lr):
    Xtr, ytr, Xte, yte, model = digits_lr
    inf = pc.InfluenceFunction(model, params="head", solver="exact", weight_decay=1e-3, progress=False).fit(Xtr, ytr)
    retrain = LogisticRegressionRetrainer(Xtr, ytr, 2, 1e-3)
    with pytest.raises(pc.PrecedentsError, match="floating point"):
        perturbation_influence(inf, Xtr.long(), ytr, Xte[:1], yte[:1])
    with pytest.raises(pc.PrecedentsError, match="different lengths"):
        perturbation_influence(inf, Xtr[:3], ytr[:2], Xte[:1], yte[:1])
    with pytest.raises(pc.PrecedentsError, match="fitted on"):
        training_set_attack(retrain, inf, Xtr[:10], ytr[:10], Xte[0], yte[0], epsilon=0.1, steps=1)
    with pytest.raises(pc.PrecedentsError, match="one test point"):
        training_set_attack(retrain, inf, Xtr, ytr, Xte[:2], yte[:2], epsilon=0.1, steps=1)
    with pytest.raises(pc.PrecedentsError, match="must be a Retrainer"):
        training_set_attack(lambda X, y: model, inf, Xtr, ytr, Xte[0], yte[0], epsilon=0.1, steps=1)
