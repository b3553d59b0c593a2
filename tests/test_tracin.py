"""TracInCP and grad-dot / grad-cos against plain autograd loops, their identities, and their bad-input errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from precedents._validation import PrecedentsError
from precedents.methods import tracin as tracin_module
from precedents.methods.tracin import GradientSimilarity, TracIn

N_TRAIN, N_TEST = 240, 12


def make_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def run(digits):
    """A small MLP trained 3 epochs with minibatch SGD on real digits, a checkpoint saved after each epoch."""
    Xtr, ytr, Xte, yte = digits
    Xtr, ytr, Xte, yte = Xtr[:N_TRAIN], ytr[:N_TRAIN], Xte[:N_TEST], yte[:N_TEST]
    torch.manual_seed(0)
    model = make_net()
    lrs = [0.5, 0.3, 0.1]
    checkpoints = []
    g = torch.Generator().manual_seed(0)
    for lr in lrs:
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        perm = torch.randperm(N_TRAIN, generator=g)
        for s in range(0, N_TRAIN, 32):
            idx = perm[s:s + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
        checkpoints.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return model.eval(), checkpoints, lrs, (Xtr, ytr, Xte, yte)


def brute_gradients(state, X, y, names=None):
    """Per-example loss gradients by a Python loop of torch.autograd.grad on a fresh model, float64."""
    net = make_net()
    net.load_state_dict(state)
    net = net.double().eval()
    params = [p for n, p in net.named_parameters() if names is None or n in names]
    rows = []
    for i in range(len(X)):
        loss = nn.functional.cross_entropy(net(X[i:i + 1].double()), y[i:i + 1])
        rows.append(torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def brute_tracin(checkpoints, lrs, Xtr, ytr, Xte, yte, names=None):
    out = torch.zeros(len(Xte), len(Xtr), dtype=torch.float64)
    for state, lr in zip(checkpoints, lrs, strict=True):
        out += lr * brute_gradients(state, Xte, yte, names) @ brute_gradients(state, Xtr, ytr, names).T
    return out


def close(actual, expected, rtol=1e-5):
    """float32 gradients against float64 ones: relative to the scale of the matrix."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


# -- against brute force -----------------------------------------------------------------------------------

def test_tracin_matches_brute_force_all_parameters(run):
    model, checkpoints, lrs, (Xtr, ytr, Xte, yte) = run
    res = TracIn(model, checkpoints, learning_rates=lrs, progress=False).fit(Xtr, ytr).attribute(Xte, yte)
    expected = brute_tracin(checkpoints, lrs, Xtr, ytr, Xte, yte)
    assert res.scores.shape == (N_TEST, N_TRAIN) and res.scores.dtype == torch.float64
    close(res.scores, expected)
    assert res.method == "tracin" and res.units.startswith("loss-gradient dot product")
    assert torch.equal(res.target, yte)
    losses = nn.functional.cross_entropy(model(Xte), yte, reduction="none").double()
    torch.testing.assert_close(res.model_output, losses, rtol=1e-6, atol=1e-7)


def test_tracin_head_and_named_parameters_match_brute_force(run):
    model, checkpoints, lrs, (Xtr, ytr, Xte, yte) = run
    head = ["2.weight", "2.bias"]
    expected = brute_tracin(checkpoints, lrs, Xtr, ytr, Xte, yte, names=head)
    by_head = TracIn(model, checkpoints, "head", learning_rates=lrs, progress=False).fit(Xtr, ytr)
    close(by_head.attribute(Xte, yte).scores, expected)
    assert by_head.param_names_ == head and by_head.n_params_ == 170
    first = ["0.weight"]
    res = TracIn(model, checkpoints, first, learning_rates=lrs, progress=False).fit(Xtr, ytr).attribute(Xte, yte)
    close(res.scores, brute_tracin(checkpoints, lrs, Xtr, ytr, Xte, yte, names=first))


def test_recomputed_gradients_equal_cached(run, monkeypatch):
    model, checkpoints, lrs, (Xtr, ytr, Xte, yte) = run
    cached = TracIn(model, checkpoints, learning_rates=lrs, batch_size=50, progress=False).fit(Xtr, ytr)
    assert cached._cache is not None
    monkeypatch.setattr(tracin_module, "GRADIENT_CACHE_BYTES", 0)
    streamed = TracIn(model, checkpoints, learning_rates=lrs, batch_size=50, progress=False).fit(Xtr, ytr)
    assert streamed._cache is None
    a, b = cached.attribute(Xte, yte), streamed.attribute(Xte, yte)
    b.block_size = 70                                    # blocks that do not line up with the batches
    torch.testing.assert_close(b.scores, a.scores, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(streamed.self_influence(), cached.self_influence(), rtol=1e-12, atol=1e-12)
    top = b.top(3)
    torch.testing.assert_close(top.positive_scores, a.scores.topk(3, dim=1).values)


def test_checkpoint_files_load_like_state_dicts(run, tmp_path):
    model, checkpoints, lrs, (Xtr, ytr, Xte, yte) = run
    paths = []
    for k, state in enumerate(checkpoints):
        paths.append(tmp_path / f"epoch{k}.pt")
        torch.save(state, paths[-1])
    from_files = TracIn(model, paths, learning_rates=lrs, progress=False).fit(Xtr, ytr).attribute(Xte, yte)
    in_memory = TracIn(model, checkpoints, learning_rates=lrs, progress=False).fit(Xtr, ytr).attribute(Xte, yte)
    torch.testing.assert_close(from_files.scores, in_memory.scores, rtol=0, atol=0)
    assert "epoch0.pt" in repr(TracIn(model, [str(p) for p in paths]))


# -- identities --------------------------------------------------------------------------------------------

def test_one_checkpoint_lr_one_equals_grad_dot(run):
    model, _, _, (Xtr, ytr, Xte, yte) = run
    tr = TracIn(model, [model.state_dict()], learning_rates=[1.0], progress=False).fit(Xtr, ytr)
    dot = GradientSimilarity(model, kind="dot", progress=False).fit(Xtr, ytr)
    a, b = tr.attribute(Xte, yte), dot.attribute(Xte, yte)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-12, atol=1e-12)
    assert b.method == "grad-dot"
    # the default learning rates are all 1.0
    default = TracIn(model, [model.state_dict()], progress=False).fit(Xtr, ytr).attribute(Xte, yte)
    torch.testing.assert_close(default.scores, b.scores, rtol=0, atol=0)
    close(b.scores, brute_tracin([model.state_dict()], [1.0], Xtr, ytr, Xte, yte))


def test_grad_cos_bounded_and_one_on_itself(run):
    model, _, _, (Xtr, ytr, Xte, yte) = run
    cos = GradientSimilarity(model, kind="cos", progress=False).fit(Xtr, ytr)
    res = cos.attribute(Xte, yte)
    assert res.method == "grad-cos" and res.units.startswith("cosine of loss gradients")
    assert res.scores.abs().max() <= 1 + 1e-12 and res.scores.abs().max() > 0.5
    own = cos.attribute(Xtr[:40], ytr[:40]).scores
    torch.testing.assert_close(own.diagonal(), torch.ones(40, dtype=torch.float64), rtol=0, atol=1e-10)
    # independent: cosine of the brute-force gradients
    gt, gi = brute_gradients(model.state_dict(), Xte, yte), brute_gradients(model.state_dict(), Xtr, ytr)
    expected = (gt / gt.norm(dim=1, keepdim=True)) @ (gi / gi.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(res.scores, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(cos.self_influence(), (gi * gi).sum(1), rtol=1e-4, atol=1e-9)


def test_self_influence_is_the_diagonal(run):
    model, checkpoints, lrs, (Xtr, ytr, _, _) = run
    tr = TracIn(model, checkpoints, learning_rates=lrs, progress=False).fit(Xtr, ytr)
    diag = tr.attribute(Xtr, ytr).scores.diagonal()
    torch.testing.assert_close(tr.self_influence(), diag, rtol=1e-12, atol=1e-14)
    assert (tr.self_influence() >= 0).all()


def test_sign_positive_score_means_a_step_on_it_lowers_test_loss(run):
    """grad-dot's proponent: a small SGD step on that example alone lowers the test loss, by about eta * score."""
    model, _, _, (Xtr, ytr, Xte, yte) = run
    scores = GradientSimilarity(model, progress=False).fit(Xtr, ytr).attribute(Xte[:1], yte[:1]).scores[0]
    eta = 1e-3
    for i, sign in ((int(scores.argmax()), 1), (int(scores.argmin()), -1)):
        net = make_net().double()
        net.load_state_dict(model.state_dict())
        before = nn.functional.cross_entropy(net(Xte[:1].double()), yte[:1])
        grads = torch.autograd.grad(nn.functional.cross_entropy(net(Xtr[i:i + 1].double()), ytr[i:i + 1]),
                                    list(net.parameters()))
        with torch.no_grad():
            for p, gr in zip(net.parameters(), grads, strict=True):
                p -= eta * gr
        after = nn.functional.cross_entropy(net(Xte[:1].double()), yte[:1])
        decrease = float((before - after).detach())
        assert sign * decrease > 0
        assert decrease == pytest.approx(eta * float(scores[i]), rel=0.05)


def test_model_weights_and_mode_unchanged(run):
    model, checkpoints, lrs, (Xtr, ytr, Xte, yte) = run
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        for est in (TracIn(model, checkpoints, learning_rates=lrs, progress=False),
                    GradientSimilarity(model, kind="cos", progress=False)):
            est.fit(Xtr, ytr)
            est.attribute(Xte, yte).top(3)
            est.self_influence()
            assert model.training
            for k, v in model.state_dict().items():
                assert torch.equal(v, before[k]), k
    finally:
        model.eval()
    assert not torch.equal(checkpoints[0]["0.weight"], before["0.weight"])   # the checkpoints did differ


def test_model_that_cannot_be_deep_copied_is_restored(run):
    """Without a private copy the checkpoints are loaded into the model itself, then its state and mode restored."""
    import threading

    model, checkpoints, lrs, (Xtr, ytr, Xte, yte) = run
    net = make_net()
    net.load_state_dict(model.state_dict())
    net.lock = threading.Lock()                          # deepcopy refuses locks
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = TracIn(net, checkpoints, learning_rates=lrs, progress=False).fit(Xtr, ytr).attribute(Xte, yte)
    close(res.scores, brute_tracin(checkpoints, lrs, Xtr, ytr, Xte, yte))
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


# -- errors ------------------------------------------------------------------------------------------------

def test_errors(run, tmp_path):
    model, checkpoints, lrs, (Xtr, ytr, Xte, yte) = run
    with pytest.raises(PrecedentsError, match="at least one checkpoint"):
        TracIn(model, [], progress=False).fit(Xtr, ytr)
    renamed = dict(checkpoints[0])
    renamed["2.w"] = renamed.pop("2.weight")
    with pytest.raises(PrecedentsError, match=r"Checkpoint 0 .*no entry '2\.weight'"):
        TracIn(model, [renamed], progress=False).fit(Xtr, ytr)
    other = {k: v.clone() for k, v in checkpoints[1].items()}
    other["0.bias"] = torch.zeros(17)
    with pytest.raises(PrecedentsError, match=r"Checkpoint 1 .*'0\.bias' has shape \(17,\).*\(16,\)"):
        TracIn(model, [checkpoints[0], other], progress=False).fit(Xtr, ytr)
    extra = dict(checkpoints[0], **{"3.weight": torch.zeros(2)})
    with pytest.raises(PrecedentsError, match=r"'3\.weight' that the model lacks"):
        TracIn(model, [extra], progress=False).fit(Xtr, ytr)
    with pytest.raises(PrecedentsError, match=r"nested dict under 'model_state_dict'"):
        TracIn(model, [{"model_state_dict": checkpoints[0], "epoch": 3}], progress=False).fit(Xtr, ytr)
    with pytest.raises(PrecedentsError, match="does not exist"):
        TracIn(model, [tmp_path / "missing.pt"], progress=False).fit(Xtr, ytr)
    with pytest.raises(PrecedentsError, match="learning_rates has 2 values but there are 3 checkpoints"):
        TracIn(model, checkpoints, learning_rates=[0.1, 0.2], progress=False).fit(Xtr, ytr)
    with pytest.raises(PrecedentsError, match="non-negative"):
        TracIn(model, checkpoints, learning_rates=[0.1, -0.2, 0.1], progress=False).fit(Xtr, ytr)
    tr = TracIn(model, checkpoints, learning_rates=lrs, progress=False)
    with pytest.raises(PrecedentsError, match="not fitted"):
        tr.attribute(Xte, yte)
    with pytest.raises(PrecedentsError, match="needs labels"):
        tr.fit(Xtr)
    tr.fit(Xtr, ytr)
    with pytest.raises(PrecedentsError, match="needs the labels"):
        tr.attribute(Xte)
    with pytest.raises(PrecedentsError, match="needs the labels"):
        GradientSimilarity(model, progress=False).fit(Xtr, ytr).attribute(Xte)
    with pytest.raises(PrecedentsError, match="labels must lie in"):
        tr.attribute(Xte, yte + 10)
    with pytest.raises(PrecedentsError, match="kind must be 'dot' or 'cos'"):
        GradientSimilarity(model, kind="l2", progress=False).fit(Xtr, ytr)
