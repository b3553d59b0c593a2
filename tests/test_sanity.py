"""Randomisation sanity check (precedents.evaluate.sanity) on real digits data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import precedents as pc
from precedents.evaluate import FromScratchRetrainer, label_randomized_model, randomize_labels, reinitialize, sanity
from precedents.evaluate.sanity import SanityResult, parameterised_layers, to_markdown

METHODS = {
    "RPS-l2": lambda m: pc.RepresenterL2(m, progress=False),
    "RPS-LJE": lambda m: pc.RepresenterLJE(m, damping=1e-3, progress=False),
    "influence": lambda m: pc.InfluenceFunction(m, solver="exact", damping=1e-3, progress=False),
}



pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task(digits):
    Xtr, ytr, Xte, yte = digits
    return (Xtr[:600], ytr[:600]), Xte[:30], yte[:30]


def test_model_against_itself_is_unchanged(digits_mlp, task):
    train, Xte, yte = task
    for name, make in METHODS.items():
        res = sanity(make, digits_mlp, digits_mlp, train, Xte, yte, k=5)
        assert res.spearman_mean == pytest.approx(1.0, abs=1e-9), name
        assert res.jaccard_mean == 1.0 and res.opponent_jaccard_mean == 1.0, name
        assert res.reading == "unchanged"


def test_reinitialised_model_changes_the_explanations(digits_mlp, task):
    train, Xte, yte = task
    random_model = reinitialize(digits_mlp, "all", seed=0)
    rows = [sanity(make, digits_mlp, random_model, train, Xte, yte, k=10, randomization="all layers")
            for make in METHODS.values()]
    for res in rows:
        assert res.abs_spearman_median < 0.5, res     # low rank correlation with the real model's explanations
        assert res.jaccard_mean < 0.2, res            # and mostly other proponents
    assert "all layers" in to_markdown(rows)


def test_reinitialize_layers(digits_mlp):
    names = parameterised_layers(digits_mlp)
    assert names == ["0", "2"]
    before = {k: v.clone() for k, v in digits_mlp.state_dict().items()}
    last = reinitialize(digits_mlp, "last", seed=3)
    assert torch.equal(last[0].weight, digits_mlp[0].weight)               # lower layer kept
    assert not torch.allclose(last[2].weight, digits_mlp[2].weight)        # top layer re-initialised
    top1 = reinitialize(digits_mlp, 1, seed=3)
    top2 = reinitialize(digits_mlp, 2, seed=3)
    assert torch.equal(top1[2].weight, last[2].weight) and torch.equal(top2[2].weight, last[2].weight)  # cascade
    assert not torch.allclose(top2[0].weight, digits_mlp[0].weight)
    assert not torch.equal(reinitialize(digits_mlp, "last", seed=4)[2].weight, last[2].weight)
    for k, v in digits_mlp.state_dict().items():                            # the model itself is untouched
        assert torch.equal(v, before[k])
    with pytest.raises(pc.PrecedentsError, match="No parameterised layer named 'fc9'"):
        reinitialize(digits_mlp, ["fc9"])
    with pytest.raises(pc.PrecedentsError, match="pass 1..2"):
        reinitialize(digits_mlp, 3)


def test_label_randomisation(digits):
    Xtr, ytr, _, _ = digits
    y_rand = randomize_labels(ytr, seed=0)
    assert torch.equal(torch.bincount(y_rand, minlength=10), torch.bincount(ytr, minlength=10))
    assert (y_rand == ytr).double().mean() < 0.2                          # about 1/10 agree by chance
    half = randomize_labels(ytr, seed=0, fraction=0.5)
    assert 0.4 < (half != ytr).double().mean() < 0.5

    seen = {}

    def train_fn(X: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        seen["y"] = y
        return nn.Linear(X.shape[1], 10)

    model, y_used = label_randomized_model(FromScratchRetrainer(train_fn, Xtr, ytr), seed=0)
    assert isinstance(model, nn.Linear) and torch.equal(seen["y"], y_rand) and torch.equal(y_used, y_rand)


def test_reading_guide():
    base = dict(method="m", randomization="r", n_test=1, n_train=2, k=1, spearman_mean=0.0, spearman_median=0.0,
                spearman_p95=0.0, opponent_jaccard_mean=0.0, undefined_spearman=0, seconds=0.0)
    assert SanityResult(**base, abs_spearman_median=0.1, jaccard_mean=0.05).reading == "changed"
    assert SanityResult(**base, abs_spearman_median=0.5, jaccard_mean=0.05).reading == "partly changed"
    assert SanityResult(**base, abs_spearman_median=0.1, jaccard_mean=0.6).reading == "unchanged"
