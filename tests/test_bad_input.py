"""Every bad input gets a clear error naming what is wrong, never a traceback from deep inside torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import precedents as pc


class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 3)

    def forward(self, x):
        return self.conv(x[:, None, :3]).mean(-1)


class SoftmaxAtEnd(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return torch.softmax(self.fc(x), 1)


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x), x


@pytest.fixture(params=[pc.RepresenterL2, pc.RepresenterLJE])
def cls(request):
    return request.param


def test_no_linear_layer(cls, digits):
    Xtr, ytr, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match="no nn.Linear"):
        cls(NoLinear(), progress=False).fit(Xtr, ytr)


def test_unknown_layer_name_lists_candidates(cls, digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match=r"no submodule named 'head\.fc'.*'0', '2'"):
        cls(digits_mlp, layer="head.fc", progress=False).fit(Xtr, ytr)


def test_layer_that_is_not_linear(cls, digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match="ReLU, not an nn.Linear"):
        cls(digits_mlp, layer="1", progress=False).fit(Xtr, ytr)


def test_layer_not_last_operation(cls, digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match="last operation on the logits"):
        cls(SoftmaxAtEnd(), progress=False).fit(Xtr, ytr)
    with pytest.raises(pc.PrecedentsError, match="last operation on the logits"):
        cls(digits_mlp, layer="0", progress=False).fit(Xtr, ytr)


def test_tuple_output_suggests_forward_fn(cls, digits):
    Xtr, ytr, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match="forward_fn"):
        cls(TupleOut(), progress=False).fit(Xtr, ytr)
    ex = cls(TupleOut(), progress=False, forward_fn=lambda m, x: m(x)[0]).fit(Xtr[:200], ytr[:200])
    assert ex.attribute(Xtr[:3]).scores.shape == (3, 200)


def test_mismatched_lengths(cls, digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match="different lengths: 1200 examples but 1199 labels"):
        cls(digits_mlp, progress=False).fit(Xtr, ytr[:-1])


def test_nan_and_inf_inputs(cls, digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    bad = Xtr.clone()
    bad[7, 3] = float("nan")
    bad[9, 0] = float("inf")
    with pytest.raises(pc.PrecedentsError, match=r"NaN or infinite values \(rows 7, 9\)"):
        cls(digits_mlp, progress=False).fit(bad, ytr)
    ex = cls(digits_mlp, progress=False).fit(Xtr, ytr)
    bad_test = Xte.clone()
    bad_test[2, 5] = float("nan")
    with pytest.raises(pc.PrecedentsError, match="NaN"):
        ex.attribute(bad_test)


def test_labels_out_of_range(cls, digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    with pytest.raises(pc.PrecedentsError, match=r"labels from 0 to 10.*\[0, 9\]"):
        cls(digits_mlp, progress=False).fit(Xtr, torch.where(ytr == 9, 10, ytr))
    with pytest.raises(pc.PrecedentsError, match="integer class indices"):
        cls(digits_mlp, progress=False).fit(Xtr, ytr.float() + 0.5)
    ex = cls(digits_mlp, progress=False).fit(Xtr, ytr)
    with pytest.raises(pc.PrecedentsError, match="target"):
        ex.attribute(Xte, target=12)


def test_empty_training_set(cls, digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match="empty"):
        cls(digits_mlp, progress=False).fit(Xtr[:0], ytr[:0])


def test_missing_labels(cls, digits, digits_mlp):
    Xtr, _, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match="needs labels"):
        cls(digits_mlp, progress=False).fit(Xtr)


def test_not_a_module(cls, digits):
    Xtr, ytr, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match="torch.nn.Module"):
        cls("model.pt", progress=False).fit(Xtr, ytr)


def test_full_matrix_over_budget_is_refused(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    res = pc.RepresenterL2(digits_mlp, progress=False).fit(Xtr, ytr).attribute(Xte)
    with pytest.raises(pc.PrecedentsError, match="budget"):
        res.full(memory_budget=1000)
