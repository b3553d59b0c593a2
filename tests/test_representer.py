"""RPS-l2 and RPS-LJE against their theorems and against independent brute-force computations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn
from torch.func import grad, vmap

import precedents as pc


def penultimate(model: nn.Sequential, X: torch.Tensor) -> torch.Tensor:
    """Independent feature extraction: everything but the last layer, plus a ones column (float64)."""
    with torch.no_grad():
        f = model[:-1](X).double()
    return torch.cat([f, torch.ones(len(f), 1, dtype=torch.float64)], 1)


def head_of(model: nn.Sequential) -> torch.Tensor:
    last = model[-1]
    return torch.cat([last.weight, last.bias[:, None]], 1).detach().double()


# -- the decomposition theorem -----------------------------------------------------------------------------

def test_rps_l2_decomposition_reproduces_refit_logits(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    ex = pc.RepresenterL2(digits_mlp, progress=False).fit(Xtr, ytr)
    res = ex.attribute(Xte)
    assert ex.refit_["converged"] and ex.refit_["gradient_norm"] < 1e-9
    # algebraic identity: the scores sum to (sum_i alpha_i f_i^T) f_t exactly
    w_sum = ex.alpha_.T @ ex.features_
    ft = penultimate(digits_mlp, Xte)
    exact = (ft @ w_sum.T).gather(1, res.target[:, None])[:, 0]
    torch.testing.assert_close(res.scores.sum(1), exact, rtol=1e-12, atol=1e-12)
    # the representer theorem: at the stationary point sum_i alpha_i f_i^T = W*, so the sum is W*'s logit
    torch.testing.assert_close(res.scores.sum(1), res.explained, rtol=1e-8, atol=1e-8)


def test_rps_lje_decomposition_reproduces_newton_corrected_head(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    ex = pc.RepresenterLJE(digits_mlp, progress=False).fit(Xtr, ytr)
    res = ex.attribute(Xte)
    torch.testing.assert_close(res.scores.sum(1), res.explained, rtol=1e-10, atol=1e-10)
    ft = penultimate(digits_mlp, Xte)
    expected = (ft @ ex.explained_head().T).gather(1, res.target[:, None])[:, 0]
    torch.testing.assert_close(res.explained, expected, rtol=1e-12, atol=1e-12)


def test_decomposition_on_real_mnist_cnn(mnist_small, mnist_cnn):
    Xtr, ytr, Xte, _ = mnist_small
    for ex in (pc.RepresenterL2(mnist_cnn, progress=False), pc.RepresenterLJE(mnist_cnn, progress=False)):
        with np.errstate(all="ignore"):
            ex.fit(Xtr, ytr)
        res = ex.attribute(Xte[:20])
        torch.testing.assert_close(res.scores.sum(1), res.explained, rtol=1e-8, atol=1e-8)
    # the refit head predicts like the model on most test points
    assert ex_l2_agreement(mnist_cnn, Xtr, ytr, Xte) > 0.9


def ex_l2_agreement(model, Xtr, ytr, Xte):
    return pc.RepresenterL2(model, progress=False).fit(Xtr, ytr).fidelity(Xte)["prediction_agreement"]


def test_lje_is_faithful_at_a_stationary_head(cancer):
    """Where the given head is a stationary point of the training loss, RPS-LJE explains the model itself."""
    Xtr, ytr, Xte, _ = cancer
    torch.manual_seed(0)
    from conftest import train

    model = train(nn.Sequential(nn.Linear(30, 3), nn.Tanh(), nn.Linear(3, 2)), Xtr, ytr, epochs=100)
    F = penultimate(model, Xtr).numpy()
    Y = np.eye(2)[ytr.numpy()]

    def objective(w):
        Z = F @ w.reshape(2, -1).T
        Z = Z - Z.max(1, keepdims=True)
        logp = Z - np.log(np.exp(Z).sum(1, keepdims=True))
        return -(Y * logp).sum() / len(F), ((np.exp(logp) - Y).T @ F / len(F)).ravel()

    opt = minimize(objective, head_of(model).numpy().ravel(), jac=True, method="BFGS", options={"gtol": 1e-11})
    w = torch.tensor(opt.x.reshape(2, -1), dtype=torch.float32)
    with torch.no_grad():
        model[-1].weight.copy_(w[:, :-1])
        model[-1].bias.copy_(w[:, -1])
    ex = pc.RepresenterLJE(model, progress=False).fit(Xtr, ytr)
    assert ex.stationarity_ < 1e-5
    fid = ex.fidelity(Xte)
    assert fid["prediction_agreement"] == 1.0 and fid["max_logit_difference"] < 1e-4


# -- agreement with brute force written independently ------------------------------------------------------

def test_rps_l2_alpha_matches_brute_force(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    lam = 0.003
    F = penultimate(digits_mlp, Xtr).numpy()
    with torch.no_grad():
        P = torch.softmax(digits_mlp(Xtr).double(), 1).numpy()
    n, d = F.shape
    C = P.shape[1]

    def objective(w):
        W = w.reshape(C, d)
        Z = F @ W.T
        Z = Z - Z.max(1, keepdims=True)
        logp = Z - np.log(np.exp(Z).sum(1, keepdims=True))
        value = -(P * logp).sum() / n + lam * (W**2).sum()
        gradient = (np.exp(logp) - P).T @ F / n + 2 * lam * W
        return value, gradient.ravel()

    W0 = head_of(digits_mlp).numpy().ravel()
    opt = minimize(objective, W0, jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 0, "maxiter": 20000})
    W = opt.x.reshape(C, d)
    Z = F @ W.T
    probs = np.exp(Z - Z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    alpha = (probs - P) / (-2 * lam * n)

    ex = pc.RepresenterL2(digits_mlp, l2=lam, progress=False).fit(Xtr, ytr)
    np.testing.assert_allclose(ex.alpha_.numpy(), alpha, atol=1e-6 * np.abs(alpha).max())
    res = ex.attribute(Xte, target=torch.full((len(Xte),), 3))
    ft = penultimate(digits_mlp, Xte).numpy()
    brute = (ft @ F.T) * alpha[:, 3][None, :]
    np.testing.assert_allclose(res.scores.numpy(), brute, atol=1e-5 * np.abs(brute).max())


def test_rps_lje_alpha_matches_autograd_and_pinv(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    step = 0.01
    F = penultimate(digits_mlp, Xtr)
    theta = head_of(digits_mlp)
    n = len(F)

    def example_loss(th, f, y):
        return nn.functional.cross_entropy((f @ th.T)[None], y[None])

    def mean_loss(th):
        return nn.functional.cross_entropy(F @ th.T, ytr)

    g_bar = torch.autograd.grad(mean_loss(theta.requires_grad_()), theta)[0]
    theta = theta.detach()
    anchor = theta + step * g_bar
    hess = torch.autograd.functional.hessian(mean_loss, anchor).reshape(anchor.numel(), anchor.numel())
    h_pinv = torch.linalg.pinv(hess, hermitian=True, rtol=hess.shape[0] * torch.finfo(torch.float64).eps)
    g = vmap(grad(example_loss), in_dims=(None, 0, 0))(anchor, F, ytr).reshape(n, -1)
    alpha = (anchor.reshape(1, -1) - g @ h_pinv) / n

    ex = pc.RepresenterLJE(digits_mlp, step=step, progress=False).fit(Xtr, ytr)
    np.testing.assert_allclose(ex.alpha_.reshape(n, -1).numpy(), alpha.numpy(),
                               atol=1e-7 * float(alpha.abs().max()))
    res = ex.attribute(Xte)
    ft = penultimate(digits_mlp, Xte)
    brute = torch.einsum("icd,td->tic", alpha.reshape(n, *theta.shape), ft)
    brute = brute[torch.arange(len(ft)), :, res.target]
    np.testing.assert_allclose(res.scores.numpy(), brute.numpy(), atol=1e-7 * float(brute.abs().max()))


def test_lje_cg_agrees_with_exact(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    exact = pc.RepresenterLJE(digits_mlp, solver="exact", progress=False).fit(Xtr, ytr).attribute(Xte[:10])
    cg = pc.RepresenterLJE(digits_mlp, solver="cg", progress=False).fit(Xtr, ytr)
    res = cg.attribute(Xte[:10])
    scale = float(exact.scores.abs().max())
    np.testing.assert_allclose(res.scores.numpy(), exact.scores.numpy(), atol=1e-6 * scale)
    assert np.isfinite(cg.hessian_condition_) and cg.hessian_condition_ > 1


def test_lje_reduces_to_authors_binary_formula(cancer, cancer_sigmoid):
    Xtr, ytr, Xte, _ = cancer
    step = 0.01
    F = penultimate(cancer_sigmoid, Xtr)
    theta = head_of(cancer_sigmoid)[0]                       # (d,)
    y = ytr.double()
    n = len(F)
    p = torch.sigmoid(F @ theta)
    anchor = theta + step * ((p - y)[:, None] * F).mean(0)   # one step of gradient ascent
    p_hat = torch.sigmoid(F @ anchor)
    hess = (F * (p_hat * (1 - p_hat))[:, None]).T @ F / n
    g = (p_hat - y)[:, None] * F
    alpha = (anchor[None, :] - torch.linalg.solve(hess, g.T).T) / n   # authors: alpha_i = (Theta - H^-1 g_i) / n
    ft = penultimate(cancer_sigmoid, Xte)
    importance = ft @ alpha.T                                           # alpha_i . f_t

    ex = pc.RepresenterLJE(cancer_sigmoid, step=step, progress=False).fit(Xtr, ytr)
    ones = ex.attribute(Xte, target=1)
    zeros = ex.attribute(Xte, target=0)
    np.testing.assert_allclose(ones.scores.numpy(), importance.numpy(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(zeros.scores.numpy(), -importance.numpy(), rtol=1e-8, atol=1e-12)
    self_imp = (F * alpha).sum(1).abs()
    np.testing.assert_allclose(ex.self_influence().numpy(), self_imp.numpy(), rtol=1e-8, atol=1e-12)


def test_rps_l2_on_sigmoid_head(cancer, cancer_sigmoid):
    Xtr, ytr, Xte, _ = cancer
    ex = pc.RepresenterL2(cancer_sigmoid, progress=False).fit(Xtr, ytr)
    assert ex.alpha_.shape == (len(Xtr), 1)
    res = ex.attribute(Xte)
    torch.testing.assert_close(res.scores.sum(1), res.explained, rtol=1e-8, atol=1e-8)
    # a positive explained output for the predicted class, whatever it is
    assert (res.model_output > 0).all()


# -- invariances, streaming, I/O ------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [pc.RepresenterL2, pc.RepresenterLJE])
def test_training_order_invariance(cls, digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    perm = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(1))
    a = cls(digits_mlp, progress=False).fit(Xtr, ytr).attribute(Xte).scores
    b = cls(digits_mlp, progress=False).fit(Xtr[perm], ytr[perm]).attribute(Xte).scores
    np.testing.assert_allclose(b.numpy(), a[:, perm].numpy(), atol=1e-8 * float(a.abs().max()))


def test_streaming_top_k_equals_full_sort(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    res = pc.RepresenterLJE(digits_mlp, progress=False).fit(Xtr, ytr).attribute(Xte)
    full = res.scores
    res.block_size = 97
    del res._scores
    top = res.top(k=7)
    torch.testing.assert_close(top.positive_scores, full.topk(7, dim=1).values)
    torch.testing.assert_close(top.negative_scores, full.topk(7, dim=1, largest=False).values)
    torch.testing.assert_close(full.gather(1, top.positive_indices), top.positive_scores)
    assert torch.equal(top.positive_labels, ytr[top.positive_indices])
    frame = top.to_frame()
    assert len(frame) == 2 * 7 * len(Xte) and set(frame["kind"]) == {"positive", "negative"}


def test_dataset_and_dataloader_inputs_agree(digits, digits_mlp):
    from torch.utils.data import DataLoader, TensorDataset

    Xtr, ytr, Xte, _ = digits
    a = pc.RepresenterL2(digits_mlp, progress=False).fit((Xtr, ytr)).alpha_
    b = pc.RepresenterL2(digits_mlp, progress=False).fit(TensorDataset(Xtr, ytr)).alpha_
    c = pc.RepresenterL2(digits_mlp, progress=False).fit(DataLoader(TensorDataset(Xtr, ytr), batch_size=100)).alpha_
    d = pc.RepresenterL2(digits_mlp, progress=False).fit(Xtr.numpy(), ytr.numpy()).alpha_
    for other in (b, c, d):
        torch.testing.assert_close(a, other)


@pytest.mark.parametrize("cls", [pc.RepresenterL2, pc.RepresenterLJE])
def test_save_load_round_trip_and_refusals(cls, tmp_path, digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    ex = cls(digits_mlp, progress=False).fit(Xtr, ytr)
    ex.self_influence()
    expected = ex.attribute(Xte).scores
    ex.save(tmp_path / "index")
    loaded = cls.load(tmp_path / "index", digits_mlp, train=(Xtr, ytr))
    torch.testing.assert_close(loaded.attribute(Xte).scores, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loaded.self_influence(), ex.self_influence())
    other = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    with pytest.raises(pc.PrecedentsError, match="another model"):
        cls.load(tmp_path / "index", other)
    with pytest.raises(pc.PrecedentsError, match="other training data"):
        cls.load(tmp_path / "index", digits_mlp, train=(Xtr[:-1], ytr[:-1]))
    wrong = pc.RepresenterLJE if cls is pc.RepresenterL2 else pc.RepresenterL2
    with pytest.raises(pc.PrecedentsError, match="index"):
        wrong.load(tmp_path / "index", digits_mlp)
    next((tmp_path / "index").glob("**/features.npy")).write_bytes(b"corrupt")
    with pytest.raises(pc.PrecedentsError, match="corrupt"):
        cls.load(tmp_path / "index", digits_mlp)


def test_damping_tames_condition_number(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    plain = pc.RepresenterLJE(digits_mlp, damping=0.0, progress=False).fit(Xtr, ytr)
    damped = pc.RepresenterLJE(digits_mlp, damping=1e-2, progress=False).fit(Xtr, ytr)
    assert damped.hessian_condition_ < plain.hessian_condition_
    assert damped.solver_.null_dim == 0 and plain.solver_.null_dim >= 25   # softmax: d null directions


def test_ill_conditioned_head_warns(digits):
    Xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    from conftest import train

    model = train(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), Xtr, ytr, epochs=600)
    with pytest.warns(RuntimeWarning, match="condition number"):
        exact = pc.RepresenterLJE(model, damping=0.0, progress=False).fit(Xtr, ytr)
    # the default damps it instead, says so in diagnostics(), and the result is well conditioned
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        auto = pc.RepresenterLJE(model, progress=False).fit(Xtr, ytr)
    diag = auto.diagnostics()
    assert diag["undamped_hessian_condition"] == pytest.approx(exact.hessian_condition_, rel=1e-6)
    assert diag["damping"] > 0 and diag["train_logit_gap"] <= 0.1 + 1e-12
    assert "training logits" in diag["damping_reason"]
    assert auto.hessian_condition_ < exact.hessian_condition_


def test_self_influence_is_label_aware(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    flipped = ytr.clone()
    idx = torch.arange(0, len(ytr), 20)
    flipped[idx] = (flipped[idx] + 1) % 10
    for cls in (pc.RepresenterL2, pc.RepresenterLJE):
        scores = cls(digits_mlp, progress=False).fit(Xtr, flipped).self_influence()
        top = scores.argsort(descending=True)[: 2 * len(idx)]
        found = np.isin(idx.numpy(), top.numpy()).mean()
        assert found > 0.8, (cls.__name__, found)


def test_estimator_contract(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    for cls in (pc.RepresenterL2, pc.RepresenterLJE):
        ex = cls(digits_mlp, progress=False)
        assert not [k for k in vars(ex) if k.endswith("_")]
        params = ex.get_params()
        assert params["progress"] is False and "model" not in params
        with pytest.raises(pc.PrecedentsError, match="not fitted"):
            ex.attribute(Xtr[:2])
        assert ex.fit(Xtr, ytr) is ex
        assert hasattr(ex, "features_") and ex.features_.shape == (len(Xtr), 25)


def test_torchscript_sequential_matches_eager(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    scripted = torch.jit.script(digits_mlp)
    for cls in (pc.RepresenterL2, pc.RepresenterLJE):
        eager = cls(digits_mlp, progress=False).fit(Xtr, ytr).attribute(Xte).scores
        script = cls(scripted, progress=False).fit(Xtr, ytr).attribute(Xte).scores
        torch.testing.assert_close(script, eager)
