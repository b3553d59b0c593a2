"""The gradient path (influence over all parameters, TracIn, gradient similarity) makes the head path's checks.

Checked on LossGradients, where every gradient method starts, and on the public TracIn/GradientSimilarity:
probabilities instead of logits, a head that is not the last operation, NaN/inf weights or checkpoints, train
mode (dropout, batch norm: computed in eval mode, every submodule's mode restored).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import precedents as pc
from precedents.adapters.torch import check_gradient_model, eval_mode, probe_logits
from precedents.linalg.functional import LossGradients, default_loss, select_parameters


def names(model, params="all"):
    return select_parameters(model, params, None)


def ends_in(last: nn.Module, digits_mlp) -> nn.Module:
    return nn.Sequential(digits_mlp, last)


class FunctionalSoftmax(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x).softmax(-1)


class HeadThenScale(nn.Module):
    """The explained head is followed by another operation on the logits."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return 2.0 * self.body(x) + 1.0


@pytest.mark.parametrize("wrap, message", [
    (lambda m: nn.Sequential(m, nn.Softmax(dim=1)), "ends in Softmax"),
    (lambda m: FunctionalSoftmax(m), "every row is non-negative and sums to 1"),
    (lambda m: nn.Sequential(m, nn.Softmin(dim=1)), "ends in Softmin"),
], ids=["nn.Softmax", "torch.softmax", "nn.Softmin"])
def test_probabilities_are_refused(digits, digits_mlp, wrap, message):
    Xtr, ytr, _, _ = digits
    model = wrap(digits_mlp)
    g = LossGradients(model, names(model), progress=False)
    with pytest.raises(pc.PrecedentsError, match=f"outputs are probabilities.*{message}"):
        g.example_gradients(Xtr[:4], ytr[:4])
    with pytest.raises(pc.PrecedentsError, match="probabilities"):
        pc.GradientSimilarity(model, progress=False).fit(Xtr[:50], ytr[:50])
    with pytest.raises(pc.PrecedentsError, match="probabilities"):
        pc.TracIn(model, [model.state_dict()], progress=False).fit(Xtr[:50], ytr[:50])


def test_sigmoid_output_is_refused_log_softmax_and_custom_losses_are_not(cancer, cancer_sigmoid, digits, digits_mlp):
    Xtr, ytr, _, _ = cancer
    model = nn.Sequential(cancer_sigmoid, nn.Sigmoid())
    with pytest.raises(pc.PrecedentsError, match="ends in Sigmoid"):
        LossGradients(model, names(model), progress=False).example_gradients(Xtr[:4], ytr[:4])
    # log-softmax outputs are logits up to a per-row constant: cross-entropy on them is the same loss
    Xd, yd, _, _ = digits
    logsm = nn.Sequential(digits_mlp, nn.LogSoftmax(dim=1))
    g = LossGradients(logsm, names(logsm), progress=False).example_gradients(Xd[:4], yd[:4])
    # the same float32 loss through a few more operations: equal to a few float32 roundings of the largest entry
    tol = 100 * torch.finfo(torch.float32).eps * float(g.abs().max())
    torch.testing.assert_close(g, LossGradients(digits_mlp, names(digits_mlp), progress=False)
                               .example_gradients(Xd[:4], yd[:4]), rtol=0, atol=tol)
    # a custom loss says what it takes: probabilities are allowed with it

    def nll_of_probabilities(p, y):
        return -p.gather(1, y[:, None].long())[:, 0].clamp_min(1e-12).log()

    probs = nn.Sequential(digits_mlp, nn.Softmax(dim=1))
    custom = LossGradients(probs, names(probs), loss_fn=nll_of_probabilities, progress=False)
    torch.testing.assert_close(custom.example_gradients(Xd[:4], yd[:4]), g, rtol=0, atol=tol)


def test_head_that_is_not_the_last_operation(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    model = HeadThenScale(digits_mlp)
    g = LossGradients(model, ["body.2.weight", "body.2.bias"], head_layer="body.2", progress=False)
    with pytest.raises(pc.PrecedentsError, match="'body.2' is not the model's output"):
        g.example_gradients(Xtr[:4], ytr[:4])
    ok = LossGradients(digits_mlp, ["2.weight", "2.bias"], head_layer="2", progress=False)
    assert ok.example_gradients(Xtr[:4], ytr[:4]).shape == (4, 250)


@pytest.mark.parametrize("where", ["parameter", "buffer", "inf"])
def test_non_finite_weights_are_refused_by_name(digits, where):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10)).eval()
    with torch.no_grad():
        if where == "parameter":
            model[3].weight[1, 2] = float("nan")
        elif where == "buffer":
            model[1].running_var[0] = float("nan")
        else:
            model[0].bias[0] = float("inf")
    bad = {"parameter": "3.weight", "buffer": "1.running_var", "inf": "0.bias"}[where]
    with pytest.raises(pc.PrecedentsError, match=f"NaN or infinite weights \\({bad}\\)"):
        LossGradients(model, names(model), progress=False)
    with pytest.raises(pc.PrecedentsError, match=bad):
        pc.RepresenterL2(model, progress=False).fit(*digits[:2])


def test_nan_checkpoint_is_refused(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    bad = {k: v.clone() for k, v in digits_mlp.state_dict().items()}
    bad["0.weight"][3, 3] = float("nan")
    with pytest.raises(pc.PrecedentsError, match=r"NaN or infinite weights \(0.weight\).*checkpoint"):
        pc.TracIn(digits_mlp, [digits_mlp.state_dict(), bad], progress=False).fit(Xtr[:50], ytr[:50])
    assert torch.isfinite(digits_mlp[0].weight).all()


def test_train_mode_is_computed_in_eval_mode_and_restored(digits):
    """Dropout and batch norm in train mode: gradients equal those in eval mode (deterministic), and each
    submodule's mode is restored exactly, including mixed modes."""
    Xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 10))
    model(Xtr)                                            # fill the running statistics
    model.train()
    model[1].eval()                                       # a mixed state, to be restored as it was
    modes = [m.training for m in model.modules()]
    g = LossGradients(model, names(model), progress=False)
    first = g.example_gradients(Xtr[:6], ytr[:6])
    again = g.example_gradients(Xtr[:6], ytr[:6])
    assert [m.training for m in model.modules()] == modes
    model.eval()
    reference = LossGradients(model, names(model), progress=False).example_gradients(Xtr[:6], ytr[:6])
    torch.testing.assert_close(first, reference, rtol=0, atol=0)
    torch.testing.assert_close(again, reference, rtol=0, atol=0)


def test_eval_mode_restores_after_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    model.train()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training and not model[1].training
        raise RuntimeError
    assert model.training and model[1].training


def test_probe_names_the_problem(digits_mlp):
    with pytest.raises(pc.PrecedentsError, match="returned a tuple"):
        probe_logits(nn.LSTM(64, 3), torch.zeros(2, 5, 64))
    with pytest.raises(pc.PrecedentsError, match=r"output of shape \(2, 3, 4\)"):
        probe_logits(nn.Linear(4, 4), torch.zeros(2, 3, 4))
    assert probe_logits(digits_mlp, torch.zeros(3, 64, dtype=torch.float64)).dtype == torch.float32
    with pytest.raises(pc.PrecedentsError, match="integer token ids < 10"):
        probe_logits(nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2)), torch.rand(2, 2))
    check_gradient_model(digits_mlp, torch.zeros(2, 64), require_logits=True)


def test_parameter_selection_and_weight_decay_are_checked(digits_mlp):
    with pytest.raises(pc.PrecedentsError, match=r"params=\[\] selects no parameters"):
        LossGradients(digits_mlp, [], progress=False)
    with pytest.raises(pc.PrecedentsError, match=r"'0.weigth' \(did you mean '0.weight'\?\)"):
        LossGradients(digits_mlp, ["0.weigth"], progress=False)
    assert LossGradients(digits_mlp, "2.bias", progress=False).names == ["2.bias"]
    assert select_parameters(digits_mlp, "2.weight", None) == ["2.weight"]        # not split into letters
    for wd, message in ((-1.0, ">= 0"), (float("nan"), "got nan"), ("1e-3", "got '1e-3'"),
                        ({"0.weight": float("inf")}, r"weight_decay\['0.weight'\]")):
        with pytest.raises(pc.PrecedentsError, match=message):
            LossGradients(digits_mlp, ["2.bias"], weight_decay=wd, progress=False)
    with pytest.raises(pc.PrecedentsError, match="batch_size"):
        LossGradients(digits_mlp, ["2.bias"], batch_size=0, progress=False)
    assert LossGradients(digits_mlp, ["2.bias"], loss_fn=default_loss, progress=False).n_params == 10
