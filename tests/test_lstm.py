"""Recurrent models through the forward_fn task hook: a tiny sequential-MNIST LSTM whose forward returns a tuple."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import precedents as pc
from precedents import PrecedentsError
from precedents.models import SequenceLSTM, sequence_logits, train_classifier


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


@pytest.fixture(scope="module")
def seq_data(mnist_small):
    """The shuffled real MNIST images of the session fixture, each read row by row: (28 steps, 28 inputs)."""
    Xtr, ytr, Xte, yte = mnist_small
    return Xtr[:600].reshape(-1, 28, 28), ytr[:600], Xte[:40].reshape(-1, 28, 28), yte[:40]


@pytest.fixture(scope="module")
def tiny_lstm(seq_data):
    Xtr, ytr, _, _ = seq_data
    torch.manual_seed(0)
    model = SequenceLSTM(hidden=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)           # nn.LSTM's small steps are much faster on one thread of a busy machine
    try:
        train_classifier(_Logits(model), Xtr, ytr, epochs=12, batch_size=30, lr=1e-2, progress=False)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_tuple_output_needs_forward_fn(seq_data, tiny_lstm):
    Xtr, ytr, _, _ = seq_data
    for cls in (pc.RepresenterL2, pc.RepresenterLJE):
        with pytest.raises(PrecedentsError, match="forward_fn=lambda model, x: model"):
            cls(tiny_lstm, progress=False).fit(Xtr, ytr)
    with pytest.raises(PrecedentsError, match="forward_fn"):
        pc.InfluenceFunction(tiny_lstm, params="all", progress=False).fit(Xtr[:50], ytr[:50])


def test_representers_decompose_the_lstm_logits(seq_data, tiny_lstm):
    Xtr, ytr, Xte, _ = seq_data
    logits = sequence_logits(tiny_lstm, Xte).detach().double()
    assert float((logits.argmax(1) == seq_data[3]).double().mean()) > 0.4      # it learned something (~0.65)
    for cls in (pc.RepresenterL2, pc.RepresenterLJE):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)                         # LJE conditioning
            ex = cls(tiny_lstm, forward_fn=sequence_logits, progress=False).fit(Xtr, ytr)
        assert ex.layer_name_ == "fc" and ex.features_.shape == (len(Xtr), 17)
        res = ex.attribute(Xte)
        assert torch.equal(res.target, logits.argmax(1))
        # the decomposition theorem: all training examples' scores add up to the explained head's logit
        scale = max(1.0, float(res.explained.abs().max()))
        assert float((res.scores.sum(1) - res.explained).abs().max()) < 1e-6 * scale
        assert torch.allclose(res.model_output, logits.gather(1, res.target[:, None])[:, 0], atol=1e-5)


def test_influence_head_matches_closed_form(seq_data, tiny_lstm):
    Xtr, ytr, Xte, yte = seq_data
    tiny_lstm = copy.deepcopy(tiny_lstm).double()          # float64 throughout: the comparison is then exact
    Xtr, Xte = Xtr.double(), Xte.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)        # Adam's few epochs: not a stationary point
        inf = pc.InfluenceFunction(tiny_lstm, params="head", solver="exact", damping=1e-3,
                                   forward_fn=sequence_logits, progress=False).fit(Xtr, ytr)
    scores = inf.attribute(Xte[:5], yte[:5]).scores
    # independent computation: features = the LSTM's last hidden state (second element of its output) + 1,
    # gradients and Hessian of the mean cross-entropy of a linear head by autograd
    with torch.no_grad():
        f_tr = torch.cat([tiny_lstm(Xtr)[1].double(), torch.ones(len(Xtr), 1, dtype=torch.float64)], 1)
        f_te = torch.cat([tiny_lstm(Xte[:5])[1].double(), torch.ones(5, 1, dtype=torch.float64)], 1)
    theta = torch.cat([tiny_lstm.fc.weight, tiny_lstm.fc.bias[:, None]], 1).detach().double()

    def loss(t: torch.Tensor, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(f @ t.reshape(theta.shape).T, y)

    flat = theta.reshape(-1)
    # the damping in float64: 1e-3 * a float32 eye is 1.0000000475e-3, a reference 4.7e-8 off (failed on another CPU)
    hess = torch.autograd.functional.hessian(lambda t: loss(t, f_tr, ytr), flat) \
        + 1e-3 * torch.eye(len(flat), dtype=torch.float64)
    per_example = torch.func.vmap(torch.func.grad(lambda t, f, y: loss(t, f[None], y[None])), in_dims=(None, 0, 0))
    g_tr, g_te = per_example(flat, f_tr, ytr), per_example(flat, f_te, yte[:5])
    expected = g_te @ torch.linalg.solve(hess, g_tr.T) / len(Xtr)
    # Tolerance from the problem: both sides solve A x = g, A = H + 1e-3 I, in float64 with the same features, but
    # form H differently (closed form vs autograd: sums of n = 600 terms) and factor it differently (eigh vs LU),
    # each backward stable: the solve is exact for some A + E with ||E|| <= (n + p) eps64 ||A||, p = 170 parameters.
    # To first order s_ti = g_t^T A^-1 g_i / n moves by u_t^T E u_i / n, u = A^-1 g, and ||u||^2 <= g^T A^-1 g /
    # lambda_min(A), so |ds_ti| <= (n + p) eps64 kappa(A) sqrt(s_tt s_ii) with s_tt = g_t^T A^-1 g_t / n: the
    # Cauchy-Schwarz scale of the entry (an entry near 0 by cancellation gets the scale of its two factors).
    eig = torch.linalg.eigvalsh(hess)
    kappa = float(eig.max() / eig.min())
    s_te = (g_te * torch.linalg.solve(hess, g_te.T).T).sum(1) / len(Xtr)
    s_tr = (g_tr * torch.linalg.solve(hess, g_tr.T).T).sum(1) / len(Xtr)
    bound = (len(Xtr) + len(flat)) * torch.finfo(torch.float64).eps * kappa * (s_te[:, None] * s_tr[None, :]).sqrt()
    assert ((scores - expected).abs() <= bound).all()
    # torch.func cannot vmap through nn.LSTM in float64 on the CPU: a clear error instead of torch's
    with pytest.raises(PrecedentsError, match="vmap failed"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pc.InfluenceFunction(tiny_lstm, params="head", solver="exact", damping=1e-3, forward_fn=sequence_logits,
                             loss_fn=lambda z, y: nn.functional.cross_entropy(z, y, reduction="none"),
                             progress=False).fit(Xtr[:50], ytr[:50])


def test_influence_head_through_torch_func_matches_closed_form(seq_data, tiny_lstm):
    """The same head influence through torch.func (a loss_fn disables the closed form) and forward_fn, float32."""
    Xtr, ytr, Xte, yte = seq_data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        closed = pc.InfluenceFunction(tiny_lstm, params="head", solver="exact", damping=1e-3,
                                      forward_fn=sequence_logits, progress=False).fit(Xtr, ytr)
        generic = pc.InfluenceFunction(tiny_lstm, params="head", solver="exact", damping=1e-3,
                                       forward_fn=sequence_logits, progress=False,
                                       loss_fn=lambda z, y: nn.functional.cross_entropy(z, y, reduction="none"),
                                       ).fit(Xtr, ytr)
    expected = closed.attribute(Xte[:5], yte[:5]).scores
    got = generic.attribute(Xte[:5], yte[:5]).scores
    assert float((got - expected).abs().max()) < 1e-3 * float(expected.abs().max())


def test_influence_all_parameters_through_lstm(seq_data, tiny_lstm):
    """torch.func vmaps per-example gradients through nn.LSTM (float32, a slow fallback with a torch warning), but
    nn.LSTM has no forward-mode AD on the CPU, so the Hessian-vector products of params='all' give a clear error."""
    Xtr, ytr, Xte, yte = seq_data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)           # torch: no batching rule for mkldnn_rnn_layer
        warnings.simplefilter("ignore", RuntimeWarning)        # not a stationary point of the 100-example loss
        inf = pc.InfluenceFunction(tiny_lstm, params="all", solver="cg", damping=0.01, forward_fn=sequence_logits,
                                   progress=False).fit(Xtr[:100], ytr[:100])
        grads = inf._train_gradients(0, 3)
        with pytest.raises(PrecedentsError, match="forward-mode AD"):
            inf.attribute(Xte[:2], yte[:2])
    # per-example gradients equal plain autograd's, one example at a time
    params = [p for _, p in tiny_lstm.named_parameters()]
    for i in range(3):
        loss = nn.functional.cross_entropy(sequence_logits(tiny_lstm, Xtr[i:i + 1]), ytr[i:i + 1])
        expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double()
        assert torch.allclose(grads[i], expected, rtol=1e-4, atol=1e-6)
