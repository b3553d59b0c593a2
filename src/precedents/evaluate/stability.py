r"""Numerical stability of an attribution method: the same method repeated with different seeds (Yeh et al. 2018).

Seed 001 (Representer Point Selection, "Computational cost and numerical stability") computes influence and
representer values for 1,000 test points over the whole training set, twice, and asks whether the values agree.
:func:`stability` does this for any method of the package, through its public API:

1. for every seed ``s`` it builds the method with ``make_explainer(s)`` (the caller applies the seed to the method's
   own randomness: LiSSA sampling ``solver_options={"seed": s}``, the Arnoldi start vector, the RPS-l2 refit start
   ``init="random", random_state=s``);
2. with ``shuffle=True`` it also permutes the training set with a permutation drawn from ``s`` (data order changes
   every sum over training examples and, for stochastic solvers, which examples are sampled), fits on the permuted
   set and un-permutes the scores, so that column ``i`` is always the same training example;
3. it attributes the test points (in chunks of ``chunk`` test points, so that the memory is
   ``len(seeds) * chunk * n_train`` float64 values) and compares every pair of repeats.

Reported per method (:class:`StabilityResult`), over all test points and all pairs of seeds:

* ``spearman_*``: the Spearman rank correlation, across the n training examples, of one test point's scores in two
  repeats (1 = the same ranking); mean, median, 5th percentile and minimum;
* ``jaccard_*``: ``|A ∩ B| / |A ∪ B|`` of the k most positive training examples (proponents, ``jaccard_*``) and of
  the k most negative (opponents, ``opponent_jaccard_mean``) of one test point in two repeats (1 = the same set);
  mean, standard deviation, minimum, and ``identical_topk``, the fraction of test points whose top-k proponent set
  is the same in every repeat;
* ``relative_spread``: ``sqrt(mean_s ||S_s - S_bar||_F^2) / ||S_bar||_F`` over the full (n_test, n_train) score
  matrices ``S_s`` of the repeats and their mean ``S_bar``: the typical deviation of a repeat from the mean, as a
  fraction of the scores' size (dimensionless; 0 = identical repeats).

Scores are compared in the method's own units (logits for representers, nats of test loss for influence, loss-gradient
dot products for TracIn); every quantity above is invariant to a positive rescaling of the scores.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .._validation import PrecedentsError
from ..data import make_batches
from .metrics import rankdata

__all__ = ["StabilityResult", "collect_data", "pairwise_topk_jaccard", "row_ranks", "rowwise_pearson",
           "rowwise_spearman", "stability", "to_markdown", "topk_sets"]


@dataclass
class StabilityResult:
    """Agreement between repeats of one method (see the module docstring for every definition)."""

    method: str
    seeds: list[int]
    shuffle: bool
    n_test: int
    n_train: int
    k: int
    spearman_mean: float
    spearman_median: float
    spearman_p05: float
    spearman_min: float
    jaccard_mean: float
    jaccard_std: float
    jaccard_min: float
    opponent_jaccard_mean: float
    identical_topk: float
    relative_spread: float
    undefined_spearman: int = 0
    seconds: float = 0.0
    pairs: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_data(data: Any, y: Any = None, *, name: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` tensors from anything ``fit`` accepts (``(X, y)``, ``X`` and ``y``, a Dataset, a DataLoader)."""
    xs, ys = [], []
    for xb, yb in make_batches(data, y, batch_size=4096, name=name, require_labels=True):
        xs.append(torch.as_tensor(xb))
        ys.append(torch.as_tensor(yb))
    if not xs:
        raise PrecedentsError(f"The {name} set is empty: pass at least one example.")
    return torch.cat(xs), torch.cat(ys)


def row_ranks(scores: torch.Tensor) -> np.ndarray:
    """Ranks 1..n of every row (n_rows, n) in float64, ties receiving the average of the ranks they span."""
    return np.stack([rankdata(row) for row in scores]) if len(scores) else np.zeros((0, scores.shape[1]))


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of row t of ``a`` with row t of ``b`` (n_rows,), ``nan`` where a row is constant."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    denom = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(np.where(denom > 0, (a * b).sum(1) / denom, np.nan), -1.0, 1.0)


def rowwise_spearman(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman correlation of row t of ``a`` with row t of ``b`` (n_rows,), ``nan`` where undefined.

    Equal to :func:`precedents.evaluate.spearman` applied row by row (Pearson correlation of average ranks).
    """
    return rowwise_pearson(row_ranks(a), row_ranks(b))


def topk_sets(scores: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Per row, the indices (n_rows, min(k, n)) of the k largest (``largest``) or smallest scores."""
    return scores.topk(min(k, scores.shape[1]), dim=1, largest=largest).indices


def pairwise_topk_jaccard(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per row, ``|A ∩ B| / |A ∪ B|`` of two (n_rows, k) index matrices (sets of training examples)."""
    k = a.shape[1]
    common = (a[:, :, None] == b[:, None, :]).any(dim=2).sum(dim=1).to(torch.float64)
    return (common / (2 * k - common)).numpy()


def _permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))


def stability(make_explainer: Callable[[int], Any], train: Any, X_test: Any, y_test: Any = None, *,
              seeds: Sequence[int] = (0, 1, 2), shuffle: bool = True, k: int = 10, chunk: int = 100,
              name: str | None = None, y_train: Any = None, quiet: bool = True) -> StabilityResult:
    """Repeat one attribution method with different seeds and measure how much its scores move.

    Parameters
    ----------
    make_explainer : ``seed -> unfitted estimator`` (any of the package's: ``.fit(X, y)``, ``.attribute(X, y)``);
        apply ``seed`` to the method's own randomness, or ignore it for deterministic methods.
    train : the training set, as ``fit`` accepts it (``(X, y)``, or ``X`` with ``y_train``, a Dataset...).
    X_test, y_test : the test points; ``y_test`` is passed as the second argument of ``attribute`` (the target
        class of representer methods, the labels whose loss is explained for loss-based ones; None: the predicted
        class, for representers only). Pass the model's predictions to explain its outputs.
    seeds : at least two; each gives one repeat.
    shuffle : also permute the training set with a permutation drawn from each seed (data order).
    k : size of the top-k sets compared.
    chunk : test points attributed at once (memory ``len(seeds) * chunk * n_train`` float64 values).
    quiet : silence the methods' RuntimeWarnings (ill-conditioning, stationarity) during the repeats.

    Returns a :class:`StabilityResult`; ``pairs`` holds the per-pair means.
    """
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise PrecedentsError(f"stability needs at least two distinct seeds, got {seeds}.")
    if k < 1 or chunk < 1:
        raise PrecedentsError(f"k and chunk must be at least 1, got k={k}, chunk={chunk}.")
    X, y = collect_data(train, y_train)
    n = len(X)
    Xt = torch.as_tensor(X_test)
    yt = None if y_test is None else torch.as_tensor(y_test)
    if yt is not None and len(yt) != len(Xt):
        raise PrecedentsError(f"X_test has {len(Xt)} examples but y_test has {len(yt)}: give one label per point.")
    start = time.perf_counter()
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", RuntimeWarning)
        fitted, orders = [], []
        for s in seeds:
            order = _permutation(n, s) if shuffle else torch.arange(n)
            explainer = make_explainer(s)
            fitted.append(explainer.fit(X[order], y[order]))
            orders.append(order)
        method = name or getattr(fitted[0], "key", type(fitted[0]).__name__)
        pairs = list(itertools.combinations(range(len(seeds)), 2))
        rho = {p: [] for p in pairs}
        jac = {p: [] for p in pairs}
        opp = {p: [] for p in pairs}
        identical: list[np.ndarray] = []
        dev_sq = norm_sq = 0.0
        for t0 in range(0, len(Xt), chunk):
            xs = Xt[t0:t0 + chunk]
            ys = None if yt is None else yt[t0:t0 + chunk]
            mats = []
            for explainer, order in zip(fitted, orders, strict=True):
                res = explainer.attribute(xs, target=ys)
                permuted = res.scores.to(torch.float64)
                scores = torch.empty_like(permuted)
                scores[:, order] = permuted                    # column i = training example i again
                mats.append(scores)
            mean = torch.stack(mats).mean(0)
            dev_sq += float(sum(((m - mean) ** 2).sum() for m in mats)) / len(mats)
            norm_sq += float((mean ** 2).sum())
            ranks = [row_ranks(m) for m in mats]
            tops = [topk_sets(m, k, True) for m in mats]
            bottoms = [topk_sets(m, k, False) for m in mats]
            for a, b in pairs:
                rho[(a, b)].append(rowwise_pearson(ranks[a], ranks[b]))
                jac[(a, b)].append(pairwise_topk_jaccard(tops[a], tops[b]))
                opp[(a, b)].append(pairwise_topk_jaccard(bottoms[a], bottoms[b]))
            same = np.ones(len(xs), dtype=bool)
            for a in range(1, len(tops)):
                same &= pairwise_topk_jaccard(tops[0], tops[a]) == 1.0
            identical.append(same)
    rho_all = np.concatenate([np.concatenate(v) for v in rho.values()])
    jac_all = np.concatenate([np.concatenate(v) for v in jac.values()])
    opp_all = np.concatenate([np.concatenate(v) for v in opp.values()])
    defined = rho_all[np.isfinite(rho_all)]
    per_pair = [{"seed_a": seeds[a], "seed_b": seeds[b],
                 "spearman_mean": float(np.nanmean(np.concatenate(rho[(a, b)]))),
                 "jaccard_mean": float(np.concatenate(jac[(a, b)]).mean())} for a, b in pairs]

    def stat(fn: Callable[[np.ndarray], Any]) -> float:
        return float(fn(defined)) if defined.size else float("nan")

    return StabilityResult(
        method=method, seeds=seeds, shuffle=shuffle, n_test=len(Xt), n_train=n, k=min(k, n),
        spearman_mean=stat(np.mean), spearman_median=stat(np.median),
        spearman_p05=stat(lambda v: np.quantile(v, 0.05)), spearman_min=stat(np.min),
        jaccard_mean=float(jac_all.mean()), jaccard_std=float(jac_all.std()), jaccard_min=float(jac_all.min()),
        opponent_jaccard_mean=float(opp_all.mean()), identical_topk=float(np.concatenate(identical).mean()),
        relative_spread=math.sqrt(dev_sq / norm_sq) if norm_sq > 0 else float("nan"),
        undefined_spearman=int(rho_all.size - defined.size), seconds=time.perf_counter() - start, pairs=per_pair)


def to_markdown(results: Sequence[StabilityResult], *, digits: int = 4) -> str:
    """A markdown table of stability results, one row per method."""
    head = ("| method | seeds | data order | Spearman mean | median | 5% | min | top-k Jaccard mean (sd) | min "
            "| opponents Jaccard | identical top-k | relative spread |")
    lines = [head, "|" + "---|" * 12]
    for r in results:
        f = f"{{:.{digits}f}}"
        lines.append(
            f"| {r.method} | {len(r.seeds)} | {'permuted' if r.shuffle else 'fixed'} | {f.format(r.spearman_mean)} | "
            f"{f.format(r.spearman_median)} | {f.format(r.spearman_p05)} | {f.format(r.spearman_min)} | "
            f"{r.jaccard_mean:.3f} ({r.jaccard_std:.3f}) | {r.jaccard_min:.2f} | {r.opponent_jaccard_mean:.3f} | "
            f"{r.identical_topk:.1%} | {r.relative_spread:.2e} |")
    return "\n".join(lines)
