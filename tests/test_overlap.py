import torch

import precedents as pc
from precedents.evaluate import topk_jaccard


def test_jaccard_extremes():
    same = torch.tensor([[1, 2, 3], [1, 2, 3], [4, 5, 6]])
    top = pc.TopK("x", same, torch.zeros(3, 3), same, torch.zeros(3, 3))
    out = topk_jaccard(top, torch.tensor([0, 0, 0]))
    assert out["group 0"] == (1.0 + 0 + 0) / 3 and out["pairs"] == 3
    assert topk_jaccard(top, torch.tensor([0, 0, 1]))["mean"] == 1.0


def test_lje_is_more_instance_level_than_l2(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    l2 = pc.RepresenterL2(digits_mlp, progress=False).fit(Xtr, ytr).attribute(Xte)
    lje = pc.RepresenterLJE(digits_mlp, progress=False).fit(Xtr, ytr).attribute(Xte)
    j_l2 = topk_jaccard(l2.top(10), l2.target)["mean"]
    j_lje = topk_jaccard(lje.top(10), lje.target)["mean"]
    assert 0 <= j_lje < j_l2 <= 1
