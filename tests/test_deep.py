"""K-FAC / EK-FAC, random projections, TRAK and the LDS harness, against independent computations on digits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import precedents as pc
from precedents.demos.datasets import load_digits
from precedents.evaluate import datamodeling_truth, linear_datamodeling
from precedents.linalg.functional import LossGradients, default_loss, select_parameters
from precedents.linalg.kfac import KroneckerFactors
from precedents.linalg.projection import KroneckerProjection, RandomProjection
from precedents.methods.trak import TRAK, margin_output

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()
    perm = np.random.default_rng(0).permutation(len(X))
    return torch.tensor(X[perm], dtype=torch.float64), torch.tensor(y[perm])


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, stride=2), nn.Tanh(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 10)).double()


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int = 200) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model.eval()


def ggn(model: nn.Module, names: list[str], X: torch.Tensor) -> torch.Tensor:
    """The exact Gauss-Newton matrix of the mean cross-entropy, (1/n) sum_i sum_c p_ic g_ic g_ic^T, from
    per-example gradients for every label c (H_logits = sum_c p_c (e_c - p)(e_c - p)^T)."""
    grads = LossGradients(model, names, progress=False)
    with torch.no_grad():
        probs = torch.softmax(model(X), 1)
    total = torch.zeros(grads.n_params, grads.n_params, dtype=torch.float64)
    for c in range(probs.shape[1]):
        g = grads.example_gradients(X, torch.full((len(X),), c)) * probs[:, c, None].sqrt()
        total += g.T @ g
    return total / len(X)


def eigenbasis(factors: KroneckerFactors, layer) -> torch.Tensor:
    """Columns: the layer's Kronecker eigenvectors Q_S[:, o] Q_A[:, j]^T laid out as flat parameter vectors."""
    out, cols = layer.evecs_S.shape[0], layer.evecs_A.shape[0]
    basis = torch.einsum("ao,bj->ojab", layer.evecs_S, layer.evecs_A).reshape(out * cols, out, cols)
    flat = torch.zeros(out * cols, factors.n_params, dtype=torch.float64)
    s, e = factors.offsets[layer.weight]
    w_cols = cols - (layer.bias is not None)
    flat[:, s:e] = basis[:, :, :w_cols].reshape(len(basis), -1)
    if layer.bias is not None:
        bs, be = factors.offsets[layer.bias]
        flat[:, bs:be] = basis[:, :, -1]
    return flat.T


# -- K-FAC / EK-FAC --------------------------------------------------------------------------------------

def test_kfac_is_the_exact_hessian_of_one_linear_layer_on_one_example(digits):
    """One example, one nn.Linear: the GGN of the cross-entropy is a a^T (x) (diag p - p p^T) exactly, which is
    also the Hessian (the model is linear in its parameters)."""
    X, y = digits
    torch.manual_seed(0)
    model = nn.Linear(64, 10).double()
    names = select_parameters(model, "all", None)
    factors = KroneckerFactors(model, names, loss_fn=default_loss, ekfac=False, damping_factor=0.0,
                               progress=False).fit(X[:1], y[:1])
    grads = LossGradients(model, names, progress=False)
    V = torch.randn(3, grads.n_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = grads.hvp(V, [(X[:1], y[:1])], 1)
    assert torch.allclose(factors.apply(V, power=1), exact, rtol=0, atol=1e3 * EPS * float(exact.abs().max()))


@pytest.mark.parametrize("make", [mlp, cnn])
def test_ekfac_eigenvalues_are_the_exact_ggn_diagonal_in_the_kronecker_eigenbasis(digits, make):
    X, y = digits
    images = make is cnn
    Xin = X[:120].reshape(-1, 1, 8, 8) if images else X[:120]
    model = train(make(), Xin, y[:120], steps=50)
    names = select_parameters(model, "all", None)
    factors = KroneckerFactors(model, names, loss_fn=default_loss, ekfac=True, progress=False).fit(Xin, y[:120])
    G = ggn(model, names, Xin)
    scale = float(G.diagonal().max())
    for layer in factors.layers:
        U = eigenbasis(factors, layer)
        assert torch.allclose(U.T @ U, torch.eye(U.shape[1], dtype=torch.float64), atol=1e3 * EPS)
        diag = (U.T @ G @ U).diagonal()
        assert torch.allclose(layer.corrected.reshape(-1), diag, rtol=0, atol=1e4 * EPS * scale)


def test_kfac_inverse_matches_a_dense_solve_and_influence_runs(digits):
    X, y = digits
    model = train(mlp(), X[:200], y[:200], steps=100)
    names = select_parameters(model, "all", None)
    wd = 0.01
    for ekfac in (False, True):
        factors = KroneckerFactors(model, names, loss_fn=default_loss, ekfac=ekfac, weight_decay=wd,
                                   progress=False).fit(X[:200], y[:200])
        dense = torch.zeros(factors.n_params, factors.n_params, dtype=torch.float64)
        for layer in factors.layers:
            U = eigenbasis(factors, layer)
            lam = (layer.eigenvalues() + wd + layer.damping).reshape(-1)
            dense += U @ torch.diag(lam) @ U.T
        assert all(layer.damping == pytest.approx(0.1 * float(layer.eigenvalues().mean())) for layer in factors.layers)
        b = torch.randn(4, factors.n_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        cond = float(torch.linalg.cond(dense))
        assert torch.allclose(factors.solve(b), torch.linalg.solve(dense, b.T).T, rtol=0,
                              atol=100 * cond * EPS * float(b.abs().max()) / float(dense.diagonal().min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        est = pc.InfluenceFunction(model, params="all", solver="ekfac", weight_decay=wd, progress=False)
        scores = est.fit(X[:200], y[:200]).attribute(X[300:305], y[300:305]).scores
    assert scores.shape == (5, 200) and torch.isfinite(scores).all()
    assert est.solver_.info["damping_mean"] > 0
    # the layer-wise dot products with the training gradients are those of the per-example gradients
    V = torch.randn(3, factors.n_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    G = LossGradients(model, names, progress=False).example_gradients(X[:200], y[:200])
    dots = est.solver_.example_dots(V, 0, 200)
    assert torch.allclose(dots, V @ G.T, rtol=0, atol=1e3 * EPS * float((V.abs() @ G.abs().T).max()))
    # and for a convolution (a sum over locations)
    conv = train(cnn(), X[:100].reshape(-1, 1, 8, 8), y[:100], steps=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        est = pc.InfluenceFunction(conv, params="all", solver="kfac", progress=False).fit(
            X[:100].reshape(-1, 1, 8, 8), y[:100])
    V = torch.randn(2, est.solver_.factors.n_params, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    G = LossGradients(conv, select_parameters(conv, "all", None), progress=False).example_gradients(
        X[:100].reshape(-1, 1, 8, 8), y[:100])
    dots = est.solver_.example_dots(V, 0, 100)
    assert torch.allclose(dots, V @ G.T, rtol=0, atol=1e3 * EPS * float((V.abs() @ G.abs().T).max()))


def test_kfac_names_the_layers_it_cannot_factor(digits):
    X, y = digits
    model = nn.Sequential(nn.Linear(64, 8), nn.LayerNorm(8), nn.Linear(8, 10)).double()
    with pytest.raises(pc.PrecedentsError, match="LayerNorm"):
        pc.InfluenceFunction(model, params="all", solver="kfac", progress=False).fit(X[:50], y[:50])
    with pytest.raises(pc.PrecedentsError, match="fisher"):
        KroneckerFactors(mlp(), select_parameters(mlp(), "all", None), loss_fn=default_loss, fisher="bogus")


# -- random projection -----------------------------------------------------------------------------------

def test_projection_is_seeded_chunked_and_preserves_norms():
    G = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = RandomProjection(1000, 4096, seed=3, chunk_size=300)
    b = RandomProjection(1000, 4096, seed=3, chunk_size=300, cache_bytes=0)       # regenerated every call
    assert torch.equal(a.project(G), b.project(G))
    assert torch.allclose(a.project(G), G @ a.matrix(), rtol=1e-12, atol=1e-12)
    assert not torch.equal(a.project(G), RandomProjection(1000, 4096, seed=4, chunk_size=300).project(G))
    gauss = RandomProjection(1000, 4096, seed=3, kind="gaussian")
    for proj in (a, gauss):
        ratio = proj.project(G).pow(2).sum(1) / G.pow(2).sum(1)
        assert (ratio - 1).abs().max() < 6 * (2 / 4096) ** 0.5                   # 6 standard deviations


def test_kronecker_projection_projects_each_layers_gradient(digits):
    """TRAK's structured features equal vec(P_o^T G P_i) of each layer's margin gradient G = [dW | db]."""
    X, y = digits
    model = train(mlp(), X[:60], y[:60], steps=20)
    trak = TRAK(model, projection_dim=40, projection="kronecker", ridge=0.5, progress=False).fit(X[:60], y[:60])
    names = select_parameters(model, "all", None)
    G = LossGradients(model, names, loss_fn=margin_output, progress=False).example_gradients(X[:60], y[:60])
    proj = KroneckerProjection([(8, 65), (10, 9)], 40, seed=0)
    assert trak.dim_ == proj.dim
    blocks = [torch.cat([G[:, :512].reshape(60, 8, 64), G[:, 512:520].reshape(60, 8, 1)], 2),
              torch.cat([G[:, 520:600].reshape(60, 10, 8), G[:, 600:610].reshape(60, 10, 1)], 2)]
    expected = torch.cat([(p_o.T @ b @ p_i).reshape(60, -1) for b, (p_o, p_i) in zip(blocks, proj.factors,
                                                                                    strict=True)], 1)
    assert torch.allclose(trak.features_[0], expected, rtol=0, atol=1e3 * EPS * float(expected.abs().max()))
    norms = expected.pow(2).sum(1) / G.pow(2).sum(1)
    assert 0.2 < float(norms.mean()) < 5                       # a norm-preserving projection, on average
    scores = trak.attribute(X[100:104], y[100:104]).scores
    assert scores.shape == (4, 60) and torch.isfinite(scores).all()
    with pytest.raises(pc.PrecedentsError, match="LayerNorm"):
        TRAK(nn.Sequential(nn.Linear(64, 8), nn.LayerNorm(8), nn.Linear(8, 10)).double(), projection="kronecker",
             progress=False).fit(X[:20], y[:20])


# -- TRAK ------------------------------------------------------------------------------------------------

def test_trak_with_a_square_projection_is_the_logistic_regression_closed_form(digits):
    """Binary logistic regression z = w.x + b: with an invertible k = p projection and no ridge, TRAK is
    s_t s_i x_t^T (X^T X)^-1 x_i (1 - p_i) on x = [features, 1], s = 2y - 1 (the margin's gradient is s x):
    one Newton step of leave-one-out with the Hessian's weights p(1 - p) dropped."""
    X, y = digits
    keep = (y == 0) | (y == 1)
    X, y = X[keep][:120], y[keep][:120]
    X = X[:, X.std(0) > 0.1]                                   # drop near-constant pixels: X^T X well posed
    model = nn.Linear(X.shape[1], 1).double()
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(X)[:, 0], y.double()).backward()
        opt.step()
    p = X.shape[1] + 1
    trak = TRAK(model, projection_dim=p, ridge=0.0, seed=5, progress=False).fit(X, y)
    Xt, yt = X[:7], 1 - y[:7]                                  # explain the *other* class too: the sign flips
    scores = trak.attribute(Xt, yt).scores
    Xa, Xta = torch.cat([X, torch.ones(len(X), 1)], 1), torch.cat([Xt, torch.ones(len(Xt), 1)], 1)
    s, st = 2 * y.double() - 1, 2 * yt.double() - 1
    with torch.no_grad():
        prob = torch.sigmoid(s * model(X)[:, 0])
    kernel = Xa.T @ Xa
    expected = (st[:, None] * Xta) @ torch.linalg.solve(kernel, (s[:, None] * Xa).T) * (1 - prob)
    cond = float(torch.linalg.cond(kernel))
    assert torch.allclose(scores, expected, rtol=0, atol=1e3 * cond * EPS * float(expected.abs().max()))
    leverage = ((s[:, None] * Xa) @ torch.linalg.solve(kernel, (s[:, None] * Xa).T)).diagonal()
    assert torch.allclose(trak.self_influence(), leverage * (1 - prob), rtol=0, atol=1e3 * cond * EPS)
    assert trak.diagnostics()["projection_dim"] == p


def test_trak_ensembles_over_checkpoints_and_refuses_a_bad_one(digits):
    X, y = digits
    models = [train(mlp(s), X[:150], y[:150], steps=40) for s in range(2)]
    # model m of the ensemble is projected with seed + m
    single = [TRAK(m, projection_dim=64, seed=s, progress=False).fit(X[:150], y[:150]) for s, m in enumerate(models)]
    both = TRAK(models[0], projection_dim=64, checkpoints=[m.state_dict() for m in models],
                progress=False).fit(X[:150], y[:150])
    a = [t.attribute(X[200:203], y[200:203]).scores / t.q_ for t in single]
    expected = (a[0] + a[1]) / 2 * both.q_
    assert torch.allclose(both.attribute(X[200:203], y[200:203]).scores, expected, rtol=1e-9, atol=1e-12)
    with pytest.raises(pc.PrecedentsError, match="checkpoints\\[0\\]"):
        TRAK(models[0], checkpoints=[{"bogus": torch.zeros(1)}], progress=False).fit(X[:20], y[:20])


# -- LDS harness -----------------------------------------------------------------------------------------

def _fit_softmax(X: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Linear(64, 10).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model


def test_lds_truth_is_cached_resumed_and_has_a_noise_ceiling(digits, tmp_path):
    X, y = digits
    Xtr, ytr, Xte, yte = X[:300], y[:300], X[1000:1010], y[1000:1010]
    truth = datamodeling_truth(Xte, yte, train_fn=_fit_softmax, train=(Xtr, ytr), n_subsets=6, n_seeds=2,
                               cache_dir=tmp_path, progress=False)
    assert truth.logits.shape == (6, 2, 10, 10) and len(list(tmp_path.glob("subset*.pt"))) == 12

    def fail(X, y, seed):
        raise AssertionError("retrained although cached")

    again = datamodeling_truth(Xte, yte, train_fn=fail, train=(Xtr, ytr), n_subsets=6, n_seeds=2,
                               cache_dir=tmp_path, progress=False)
    assert torch.equal(again.logits, truth.logits)
    with pytest.raises(pc.PrecedentsError, match="another experiment"):
        datamodeling_truth(Xte[:5], yte[:5], train_fn=fail, train=(Xtr, ytr), n_subsets=6, cache_dir=tmp_path)
    result = truth.score(torch.zeros(10, 300), output="margin")
    assert np.isnan(result.lds)                                 # constant predictions: undefined, not 0
    assert 0 < result.seed_agreement <= 1 and result.seed_agreement <= result.noise_ceiling <= 1
    with pytest.raises(pc.PrecedentsError, match="seed"):
        linear_datamodeling(lambda mask: None, torch.zeros(10, 300), Xte, yte, n_train=300, n_seeds=2)
