"""Numerical stability across seeds and data order (precedents.evaluate.stability), on real digits data."""

from __future__ import annotations

import pytest
import torch

import precedents as pc
from precedents.evaluate import stability
from precedents.evaluate.stability import pairwise_topk_jaccard, rowwise_spearman, to_markdown

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    with torch.no_grad():
        pred = digits_mlp(Xte[:30]).argmax(1)
    return digits_mlp, (Xtr, ytr), Xte[:30], pred


def test_exact_influence_is_invariant_to_data_order(task):
    model, train, Xte, pred = task
    res = stability(lambda s: pc.InfluenceFunction(model, solver="exact", progress=False), train, Xte, pred,
                    seeds=(0, 1, 2), shuffle=True)
    # the permutation is undone: the same scores up to float64 summation order
    assert res.spearman_min > 1 - 1e-9
    assert res.jaccard_min == 1.0 and res.identical_topk == 1.0
    assert res.relative_spread < 1e-9
    assert res.n_train == len(train[0]) and res.n_test == len(Xte) and len(res.pairs) == 3


def test_lissa_seeds_agree_highly_but_not_exactly(task):
    model, train, Xte, pred = task

    def lissa(seed: int) -> pc.InfluenceFunction:
        return pc.InfluenceFunction(model, solver="lissa", damping=0.01, progress=False,
                                    solver_options={"seed": seed, "depth": 100})

    res = stability(lissa, train, Xte, pred, seeds=(0, 1, 2), shuffle=False)
    assert res.spearman_mean < 1 - 1e-6          # different minibatch samples give different estimates ...
    assert res.relative_spread > 1e-6
    assert res.spearman_mean > 0.8               # ... of the same inverse-Hessian-vector products
    same = stability(lambda s: lissa(7), train, Xte, pred, seeds=(0, 1), shuffle=False)
    assert same.relative_spread == 0.0 and same.spearman_min == pytest.approx(1.0)   # same seed, same numbers


def test_arnoldi_start_vector_matters_only_without_oversampling(task):
    model, train, Xte, pred = task

    def arnoldi(iterations: int | None):
        return lambda seed: pc.InfluenceFunction(model, solver="arnoldi", progress=False,
                                                 solver_options={"seed": seed, "rank": 20, "iterations": iterations})

    converged = stability(arnoldi(None), train, Xte, pred, seeds=(0, 1), shuffle=False)   # 2 rank + 10 steps
    assert converged.spearman_min > 1 - 1e-6 and converged.relative_spread < 1e-6
    truncated = stability(arnoldi(20), train, Xte, pred, seeds=(0, 1), shuffle=False)     # rank steps only
    assert truncated.spearman_mean < 0.9 and truncated.relative_spread > 0.1   # the Ritz vectors depend on the start


def test_rps_l2_refit_is_unique_from_any_start(task):
    model, train, Xte, pred = task
    starts = [pc.RepresenterL2(model, init="random", random_state=s, progress=False) for s in (0, 1)]
    fitted = [ex.fit(*train) for ex in starts]
    assert not torch.allclose(fitted[0]._start(), fitted[1]._start())          # really different starts
    # strictly convex: one optimum. The objective mean CE + l2 ||W||^2 is 2 l2-strongly convex, so two refits that
    # stop at gradient norms g_a, g_b lie within (g_a + g_b) / (2 l2) of each other (an independent bound)
    zeros = pc.RepresenterL2(model, init="zeros", progress=False).fit(*train)
    g = [ex.diagnostics()["refit"]["gradient_norm"] for ex in (*fitted, zeros)]
    l2 = fitted[0].l2
    assert float((fitted[0].weights_ - fitted[1].weights_).norm()) <= (g[0] + g[1]) / (2 * l2)
    assert float((zeros.weights_ - fitted[0].weights_).norm()) <= (g[2] + g[0]) / (2 * l2)
    res = stability(lambda s: pc.RepresenterL2(model, init="random", random_state=s, progress=False), train, Xte,
                    pred, seeds=(0, 1, 2), shuffle=True)
    assert res.spearman_min > 1 - 1e-6 and res.jaccard_min == 1.0 and res.relative_spread < 1e-6
    assert "rps-l2" in to_markdown([res])


def test_bad_input(task):
    model, train, Xte, pred = task
    with pytest.raises(pc.PrecedentsError, match="two distinct seeds"):
        stability(lambda s: pc.RepresenterL2(model), train, Xte, pred, seeds=(3,))
    with pytest.raises(pc.PrecedentsError, match="one label per point"):
        stability(lambda s: pc.RepresenterL2(model), train, Xte, pred[:3], seeds=(0, 1))
    with pytest.raises(pc.PrecedentsError, match="init must be"):
        pc.RepresenterL2(model, init="ones", progress=False).fit(*train)


def test_pairwise_topk_jaccard_by_hand():
    a = torch.tensor([[1, 2, 3], [4, 5, 6]])
    b = torch.tensor([[3, 2, 1], [6, 7, 8]])
    assert pairwise_topk_jaccard(a, b).tolist() == [1.0, 1 / 5]


def test_rowwise_spearman_matches_the_scalar_one(task):
    model, train, Xte, pred = task
    a = pc.RepresenterL2(model, progress=False).fit(*train).attribute(Xte[:5], target=pred[:5]).scores
    b = pc.InfluenceFunction(model, solver="exact", progress=False).fit(*train).attribute(Xte[:5],
                                                                                          target=pred[:5]).scores
    b[:, :50] = 0.0                                                            # ties get average ranks in both
    expected = [pc.evaluate.spearman(a[t], b[t]) for t in range(5)]
    assert rowwise_spearman(a, b) == pytest.approx(expected, abs=1e-12)
