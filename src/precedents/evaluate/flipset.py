r"""Data counterfactuals: the fewest training examples whose removal flips a prediction, verified by retraining.

For a test point x with predicted class c, a *flip set* is a set S of training examples such that the model
retrained without S predicts another class at x. Its size is a robustness number for the decision ("this
prediction rests on 4 training cases"; Broderick et al. 2020 ask the same question of a statistical conclusion,
Ilyas et al. 2022 of datamodels). :func:`flip_set` finds a small one in three steps:

1. **Ranking** by an attribution method (default the exact influence function of Koh & Liang 2017):
   ``score_i`` = predicted increase of the test loss ``l(x, c)`` (nats) if example i were removed; removing a set
   S is predicted to change it by ``sum_{i in S} score_i`` (first order). Candidates are the proponents of c
   (``score_i > 0``) in decreasing order of score.
2. **Size** by real retrains: the smallest k such that retraining without the top-k candidates flips the
   prediction, by exponential then binary search over k starting from the influence prediction of k (the first k
   at which ``l(x, c) + sum of the top-k scores`` exceeds ``log 2``, where a binary prediction flips). Binary search
   assumes flipping is monotone in k along the ranking; the answer is re-checked by retraining in any case.
3. **Refinement**: each member, weakest score first, is put back if the prediction stays flipped without it
   (one retrain each). The result is *1-minimal*: no single member can be restored without undoing the flip.
   Optionally (``swap_width``), swap moves then try to replace two members by one outsider.

Every reported set is verified: ``flipped`` is the retrained model's prediction, never the approximation.
:func:`exhaustive_flip_sets` is the ground truth for L2-regularised logistic regression on small problems: it
retrains on *every* subset of up to ``max_size`` removed examples (batched Newton, float64) and returns the
smallest flip set of each test point, so the greedy answer can be checked for minimality.

:func:`unlearn` answers "what would the model predict had these examples never been seen": it retrains without
them and shows the influence prediction of the same change beside the retrained truth.

A retrainer is any callable ``retrain(keep_mask) -> model`` (keep_mask: bool tensor (n,), True = keep), e.g.
:class:`~precedents.evaluate.LogisticRegressionRetrainer` or :func:`~precedents.evaluate.warm_start_retrainer`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import PrecedentsError

__all__ = [
    "FlipSetResult",
    "FlipSets",
    "UnlearningResult",
    "exhaustive_flip_sets",
    "flip_set",
    "flip_sets",
    "unlearn",
]

LOG2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------------------
# Model outputs
# ---------------------------------------------------------------------------------------------------------

def _module(model: Any) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    from ..adapters import as_torch_module

    return as_torch_module(model, "flip_set")[0]


def _logits(model: Any, X: torch.Tensor, forward_fn: Callable | None) -> torch.Tensor:
    """The model's logits (m, C) in float64; a one-output model gets ``[0, z]`` (sigmoid = softmax of that)."""
    module = _module(model)
    param = next(iter(module.parameters()), None)
    x = X
    if param is not None:
        x = x.to(param.device)
        x = x.to(param.dtype) if x.is_floating_point() else x
    was_training = module.training
    module.eval()
    with torch.no_grad():
        z = (forward_fn or (lambda m, v: m(v)))(module, x)
    module.train(was_training)
    z = z.detach().to(torch.float64).cpu().reshape(len(X), -1)
    return torch.cat([torch.zeros_like(z), z], dim=1) if z.shape[1] == 1 else z


def _class_loss(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(logits, dim=1).gather(1, classes[:, None])[:, 0]


def _as_inputs(X: Any) -> torch.Tensor:
    if hasattr(X, "to_numpy"):
        X = X.to_numpy()
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    return X


def _train_pair(train: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(train, (tuple, list)) and len(train) == 2):
        raise PrecedentsError("train must be the pair (X_train, y_train) the model was trained on.")
    X, y = _as_inputs(train[0]), torch.as_tensor(np.asarray(train[1])).reshape(-1).long()
    if len(X) != len(y):
        raise PrecedentsError(f"X_train and y_train have different lengths: {len(X)} and {len(y)}.")
    return X, y


# ---------------------------------------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------------------------------------

def _explainer(method: Any, model: Any, weight_decay: float | None) -> Any:
    """An explainer for ``method``: a registry key (``precedents.available_methods()``), built with the retrainer's
    weight decay where the method takes one, or an explainer object (fitted or not), returned as is."""
    if not isinstance(method, str):
        return method
    import inspect

    from ..methods import method_info

    info = method_info(method)
    accepted = inspect.signature(info.cls.__init__).parameters
    params: dict[str, Any] = {"progress": False}
    if weight_decay is not None:
        params["weight_decay"] = weight_decay
    return info.build(model, **{k: v for k, v in params.items() if k in accepted})


def _rankings(model: Any, train: tuple[torch.Tensor, torch.Tensor], X: torch.Tensor, classes: torch.Tensor,
              method: Any, weight_decay: float | None) -> torch.Tensor:
    """(m, n) scores of each training example for each test point's class c_t, positive = supports c_t: for a
    loss-based method the predicted increase of the test loss l(x_t, c_t) if the example were removed (nats)."""
    explainer = _explainer(method, model, weight_decay)
    fitted = explainer.is_fitted if hasattr(explainer, "is_fitted") else hasattr(explainer, "n_train_")
    if not fitted:
        explainer.fit(train)
    scores = explainer.attribute(X, target=classes).scores
    scores = torch.as_tensor(scores).detach().to(torch.float64).cpu()
    if scores.shape != (len(X), len(train[1])):
        raise PrecedentsError(f"The method returned scores of shape {tuple(scores.shape)}, expected "
                              f"{(len(X), len(train[1]))}.")
    return scores


# ---------------------------------------------------------------------------------------------------------
# Flip sets
# ---------------------------------------------------------------------------------------------------------

@dataclass
class FlipSetResult:
    """The smallest flip set found for one test point.

    indices: training indices removed (decreasing score); when nothing up to ``max_size`` flips, the top
        ``max_size`` candidates that were tried. flipped: the retrained model predicts another class (verified).
    predicted_change: ``sum of scores`` over the set, the method's first-order prediction of the change of the
        test loss of the original class (nats). actual_change: the retrained change of that loss (nats).
    original_class / new_class: predicted class before / after retraining without the set.
    predicted_size: the size the ranking alone predicts (first k with loss + cumulative score > log 2), or None.
    n_retrains: retrains spent. sizes_tried: {k: flipped} of the search over prefixes of the ranking.
    """

    indices: np.ndarray
    flipped: bool
    predicted_change: float
    actual_change: float
    original_class: int
    new_class: int
    original_loss: float
    predicted_size: int | None
    n_retrains: int
    sizes_tried: dict[int, bool] = field(default_factory=dict)

    @property
    def size(self) -> int | None:
        """Number of training examples whose removal flips the prediction; None when none up to max_size did."""
        return len(self.indices) if self.flipped else None

    def to_dict(self) -> dict[str, Any]:
        return {"indices": [int(i) for i in self.indices], "size": self.size, "flipped": self.flipped,
                "predicted_change": self.predicted_change, "actual_change": self.actual_change,
                "original_class": self.original_class, "new_class": self.new_class,
                "original_loss": self.original_loss, "predicted_size": self.predicted_size,
                "n_retrains": self.n_retrains, "sizes_tried": {str(k): v for k, v in self.sizes_tried.items()}}


class _Oracle:
    """Retrains without a set and reports the prediction at x; caches by set."""

    def __init__(self, retrain: Callable, n: int, x: torch.Tensor, cls: int, forward_fn: Callable | None) -> None:
        self.retrain, self.n, self.x, self.cls, self.forward_fn = retrain, n, x, cls, forward_fn
        self.cache: dict[frozenset[int], tuple[int, float]] = {}

    def __call__(self, removed: list[int] | np.ndarray) -> tuple[bool, int, float]:
        key = frozenset(int(i) for i in removed)
        if key not in self.cache:
            keep = torch.ones(self.n, dtype=torch.bool)
            keep[list(key)] = False
            z = _logits(self.retrain(keep), self.x, self.forward_fn)
            self.cache[key] = (int(z.argmax(1)[0]), float(_class_loss(z, torch.tensor([self.cls]))[0]))
        new, loss = self.cache[key]
        return new != self.cls, new, loss


def _drop_unneeded(oracle: _Oracle, removed: list[int], scores: np.ndarray) -> list[int]:
    """Put back each member, weakest score first, whose removal is not needed for the flip (1-minimality)."""
    for i in sorted(removed, key=lambda j: scores[j]):
        trial = [j for j in removed if j != i]
        if trial and oracle(trial)[0]:
            removed = trial
    return removed


def _swap_search(oracle: _Oracle, removed: list[int], scores: np.ndarray, order: np.ndarray, width: int,
                 max_members: int = 5) -> list[int]:
    """Shrink a flip set by swap moves: replace two members by one of the ``width`` best-scored non-members while
    that still flips (each move one retrain), then drop what is no longer needed; until no move works."""
    while 2 <= len(removed) <= max_members:
        outside = [int(c) for c in order if c not in removed][:width]
        move = None
        for a, b in itertools.combinations(sorted(removed, key=lambda j: scores[j]), 2):
            rest = [j for j in removed if j not in (a, b)]
            for c in outside:
                if oracle([*rest, c])[0]:
                    move = [*rest, c]
                    break
            if move:
                break
        if move is None:
            break
        removed = _drop_unneeded(oracle, move, scores)
    return removed


def _search(oracle: _Oracle, scores: np.ndarray, loss0: float, max_size: int, refine: bool,
            swap_width: int = 0) -> FlipSetResult:
    order = np.argsort(-scores, kind="stable")
    candidates = order[scores[order] > 0][:max_size]
    predicted = np.flatnonzero(loss0 + np.cumsum(scores[candidates]) > LOG2)
    predicted_size = int(predicted[0]) + 1 if len(predicted) else None
    tried: dict[int, bool] = {}

    def flips(k: int) -> bool:
        tried[k] = oracle(candidates[:k])[0]
        return tried[k]

    K = len(candidates)
    hi = None
    if K:
        lo, k = 0, min(predicted_size or K, K)
        while True:                                   # exponential search up to the first flipping prefix
            if flips(k):
                hi = k
                break
            lo = k
            if k == K:
                break
            k = min(2 * k, K)
        if hi is not None:                            # binary search in (lo, hi]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if flips(mid):
                    hi = mid
                else:
                    lo = mid
    if hi is None:
        removed = list(candidates)
        _, new, loss = oracle(removed)
        return FlipSetResult(np.asarray(removed, dtype=np.int64), False, float(scores[removed].sum()), loss - loss0,
                             oracle.cls, new, loss0, predicted_size, len(oracle.cache), tried)
    removed = list(candidates[:hi])
    if refine:
        removed = _drop_unneeded(oracle, removed, scores)
    if swap_width:
        removed = _swap_search(oracle, removed, scores, order, swap_width)
    flipped, new, loss = oracle(removed)
    removed = sorted(removed, key=lambda j: -scores[j])
    return FlipSetResult(np.asarray(removed, dtype=np.int64), flipped, float(scores[removed].sum()), loss - loss0,
                         oracle.cls, new, loss0, predicted_size, len(oracle.cache), tried)


def _prepare(model: Any, train: Any, X: Any, forward_fn: Callable | None):
    Xtr, ytr = _train_pair(train)
    if Xtr.ndim != 2 and forward_fn is None and not isinstance(model, nn.Module):
        raise PrecedentsError("train inputs must be 2-D (n, d) for a scikit-learn model.")
    X = _as_inputs(X)
    z = _logits(model, X, forward_fn)
    return (Xtr, ytr), X, z.argmax(1), z


def _weight_decay(weight_decay: float | None, retrain: Any) -> float | None:
    return weight_decay if weight_decay is not None else getattr(retrain, "weight_decay", None)


def flip_set(model: Any, train: Any, x_test: Any, *, method: Any = "influence-exact", max_size: int = 50,
             retrain: Callable[[torch.Tensor], Any], scores: Any = None, weight_decay: float | None = None,
             refine: bool = True, swap_width: int = 0, baseline: str = "model",
             forward_fn: Callable | None = None) -> FlipSetResult:
    """The smallest set of training examples whose removal flips ``model``'s prediction at ``x_test``, verified.

    Args:
        model: the trained classifier (a torch module returning logits, or a scikit-learn model the adapters
            convert); its prediction at ``x_test`` is the one to flip.
        train: ``(X_train, y_train)``, the data ``model`` and ``retrain`` were trained on (same order).
        x_test: one input, shaped like a row of X_train (a leading batch axis of 1 is accepted).
        method: the ranking: a registry key (``precedents.available_methods()``; default ``"influence-exact"``)
            or an explainer object (fitted or not); scores of ``attribute(X, target=c)``, positive = supports c.
            ``predicted_change`` and ``predicted_size`` are in the method's units: nats of test loss for
            loss-based methods (influence), which is what the log 2 rule for ``predicted_size`` assumes.
        max_size: the largest set tried (candidates are the top ``max_size`` proponents).
        retrain: ``retrain(keep_mask) -> model``; e.g. ``LogisticRegressionRetrainer`` (exact) or
            ``warm_start_retrainer`` (networks).
        scores: (n,) precomputed scores instead of running ``method``.
        weight_decay: for the default influence method; default ``retrain.weight_decay`` when it has one.
        refine: put back members that are not needed (one retrain each).
        swap_width: if > 0, then shrink sets of 2 to 5 members by swap moves: two members out, one of the
            ``swap_width`` best-scored non-members in, kept when it still flips (up to ``C(k, 2) * swap_width``
            retrains per move). Off by default.
        baseline: ``"model"``: the prediction to flip is ``model``'s; ``"retrain"``: that of ``retrain(all kept)``
            (for warm-start retrainers, whose continued training moves the model even with nothing removed, as
            :func:`~precedents.evaluate.leave_one_out` compares).

    Returns:
        :class:`FlipSetResult`. Its ``n_retrains`` retrains are the cost: about ``2 log2(size) + size``.
    """
    X = _as_inputs(x_test)
    Xtr, _ = _train_pair(train)
    if X.ndim == Xtr.ndim - 1:
        X = X[None]
    if len(X) != 1:
        raise PrecedentsError(f"flip_set explains one test point, got {len(X)}; use flip_sets for several.")
    return flip_sets(model, train, X, method=method, max_size=max_size, retrain=retrain,
                     scores=None if scores is None else np.asarray(scores).reshape(1, -1),
                     weight_decay=weight_decay, refine=refine, swap_width=swap_width, baseline=baseline,
                     forward_fn=forward_fn).results[0]


@dataclass
class FlipSets:
    """Flip sets of several test points; ``sizes`` (m,) float with NaN where nothing up to ``max_size`` flipped."""

    results: list[FlipSetResult]
    max_size: int

    @property
    def sizes(self) -> np.ndarray:
        return np.array([np.nan if r.size is None else r.size for r in self.results])

    def distribution(self) -> dict[str, int]:
        """How many test points need 1, 2, 3-5, 6-10, 11-20, 21-max_size removals, or more than ``max_size``."""
        bins = [(1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, self.max_size)]
        sizes = self.sizes
        out = {(f"{a}" if a == b else f"{a}-{b}"): int(((sizes >= a) & (sizes <= b)).sum())
               for a, b in bins if a <= self.max_size}
        out[f"> {self.max_size}"] = int(np.isnan(sizes).sum())
        return out

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.to_dict().items() if k != "sizes_tried"} for r in self.results])

    def to_dict(self) -> dict[str, Any]:
        return {"max_size": self.max_size, "distribution": self.distribution(),
                "results": [r.to_dict() for r in self.results]}

    def report_tables(self) -> list[Any]:
        """The size distribution and the per-point sets as :class:`precedents.report.html.Table` s."""
        from ..report.html import Table

        dist = Table("How fragile is each decision?", ["training examples removed to flip", "test points"],
                     [[k, v] for k, v in self.distribution().items()],
                     "Smallest flip set found per test point: influence ranking, search and refinement by real "
                     "retrains; every set verified by retraining without it.")
        rows = [[t, r.original_class, r.size if r.flipped else f"> {self.max_size}", r.predicted_size,
                 r.predicted_change, r.actual_change, ", ".join(str(int(i)) for i in r.indices[:10])]
                for t, r in enumerate(self.results)]
        per_point = Table("Flip sets", ["test point", "class", "set size", "predicted size", "predicted change (nats)",
                                        "actual change (nats)", "removed (first 10)"], rows,
                          "Change of the test loss of the original class when the set is removed: first-order "
                          "prediction (sum of influence scores) and retrained truth.")
        return [dist, per_point]


def flip_sets(model: Any, train: Any, X_test: Any, *, method: Any = "influence-exact", max_size: int = 50,
              retrain: Callable[[torch.Tensor], Any], scores: Any = None, weight_decay: float | None = None,
              refine: bool = True, swap_width: int = 0, baseline: str = "model",
              forward_fn: Callable | None = None) -> FlipSets:
    """:func:`flip_set` for every row of ``X_test`` (the method is fitted once); see :class:`FlipSets`."""
    if max_size < 1:
        raise PrecedentsError(f"max_size must be >= 1, got {max_size}.")
    if baseline not in ("model", "retrain"):
        raise PrecedentsError(f"baseline must be 'model' or 'retrain', got {baseline!r}.")
    train_pair, X, classes, z = _prepare(model, train, X_test, forward_fn)
    n = len(train_pair[1])
    if baseline == "retrain":
        z = _logits(retrain(torch.ones(n, dtype=torch.bool)), X, forward_fn)
        classes = z.argmax(1)
    if scores is None:
        S = _rankings(model, train_pair, X, classes, method, _weight_decay(weight_decay, retrain)).numpy()
    else:
        S = np.asarray(scores, dtype=np.float64)
        if S.shape != (len(X), n):
            raise PrecedentsError(f"scores must have shape (n_test, n_train) = {(len(X), n)}, got {S.shape}.")
    losses = _class_loss(z, classes)
    results = []
    for t in range(len(X)):
        oracle = _Oracle(retrain, n, X[t:t + 1], int(classes[t]), forward_fn)
        results.append(_search(oracle, S[t], float(losses[t]), max_size, refine, swap_width))
    return FlipSets(results, max_size)


# ---------------------------------------------------------------------------------------------------------
# Exhaustive search for logistic regression (ground truth on small problems)
# ---------------------------------------------------------------------------------------------------------

def _batched_logistic(F: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float, W: torch.Tensor,
                      theta0: torch.Tensor, tol: float = 1e-10, max_iter: int = 50) -> torch.Tensor:
    """Newton on ``sum_i W[b,i] CE(theta_b f_i, y_i) / sum_i W[b,i] + wd/2 ||theta_b||^2`` for every row b of W at
    once (B, C, p), from ``theta0`` (C, p): the objective of :func:`~precedents.evaluate.fit_logistic_regression`."""
    B, (C, p) = len(W), theta0.shape
    theta = theta0.expand(B, C, p).clone()
    Y = torch.nn.functional.one_hot(y, n_classes).to(F.dtype)
    total = W.sum(1)
    eye = torch.eye(C * p, dtype=F.dtype)
    for _ in range(max_iter):
        P = torch.softmax(torch.einsum("np,bcp->bnc", F, theta), dim=2)
        R = (P - Y) * W[:, :, None]
        grad = torch.einsum("bnc,np->bcp", R, F) / total[:, None, None] + weight_decay * theta
        if float(grad.abs().amax()) < tol:
            break
        S = (torch.diag_embed(P) - P[:, :, :, None] * P[:, :, None, :]) * (W / total[:, None])[:, :, None, None]
        H = torch.einsum("bnck,np,nq->bcpkq", S, F, F).reshape(B, C * p, C * p) + weight_decay * eye
        theta = theta - torch.linalg.solve(H, grad.reshape(B, C * p)).reshape(B, C, p)
    return theta


def exhaustive_flip_sets(train: Any, X_test: Any, *, n_classes: int, weight_decay: float, max_size: int = 3,
                         batch: int = 4096) -> list[tuple[int, ...] | None]:
    """Ground truth for multinomial logistic regression: the smallest flip set of each test point, by brute force.

    Retrains :func:`~precedents.evaluate.fit_logistic_regression`'s model (same objective, weights and bias
    decayed, ``weight_decay > 0``) without *every* subset of at most ``max_size`` training examples (batched Newton
    in float64, warm-started at the full-data optimum, to ``max |grad| < 1e-10``) and returns, per test point, the
    first subset in order of size then lexicographic order whose removal changes the predicted class, or None if
    none of size ``<= max_size`` does. Cost: ``sum_k C(n, k)`` retrains, fine for n up to about 60 with size 3.
    """
    if weight_decay <= 0:
        raise PrecedentsError("exhaustive_flip_sets needs weight_decay > 0 (a unique optimum on every subset).")
    Xtr, ytr = _train_pair(train)
    if Xtr.ndim != 2:
        raise PrecedentsError("exhaustive_flip_sets is for logistic regression on tabular (n, d) inputs.")
    n = len(Xtr)
    n_subsets = sum(math.comb(n, k) for k in range(1, max_size + 1))
    if n_subsets > 2_000_000:
        raise PrecedentsError(f"{n_subsets} subsets of up to {max_size} of {n} examples: too many; use fewer "
                              "training examples or a smaller max_size.")
    F = torch.cat([Xtr.to(torch.float64), torch.ones(n, 1, dtype=torch.float64)], 1)
    Ft = torch.cat([_as_inputs(X_test).to(torch.float64).reshape(-1, Xtr.shape[1]),
                    torch.ones(len(X_test), 1, dtype=torch.float64)], 1)
    theta0 = _batched_logistic(F, ytr, n_classes, weight_decay, torch.ones(1, n, dtype=torch.float64),
                               torch.zeros(n_classes, F.shape[1], dtype=torch.float64))[0]
    base = (Ft @ theta0.T).argmax(1)
    found: list[tuple[int, ...] | None] = [None] * len(Ft)
    for k in range(1, max_size + 1):
        subsets = itertools.combinations(range(n), k)
        while any(f is None for f in found):
            chunk = list(itertools.islice(subsets, batch))
            if not chunk:
                break
            W = torch.ones(len(chunk), n, dtype=torch.float64)
            W[torch.arange(len(chunk))[:, None], torch.tensor(chunk)] = 0.0
            theta = _batched_logistic(F, ytr, n_classes, weight_decay, W, theta0)
            pred = torch.einsum("tp,bcp->btc", Ft, theta).argmax(2)            # (B, m)
            changed = pred != base[None]
            for t in range(len(Ft)):
                if found[t] is None and changed[:, t].any():
                    found[t] = chunk[int(changed[:, t].nonzero()[0, 0])]
    return found


# ---------------------------------------------------------------------------------------------------------
# Unlearning, checked
# ---------------------------------------------------------------------------------------------------------

@dataclass
class UnlearningResult:
    """What the model predicts at ``X`` with ``removed`` never seen: retrained truth beside the influence prediction.

    Per evaluated point t (arrays (m,)): ``classes`` (the class followed: the original prediction unless given),
    ``before`` / ``after`` (P(class) of the model and of the retrained model), ``predicted`` (P(class) predicted by
    influence: ``exp(-(loss + predicted_change))``), ``predicted_change`` / ``actual_change`` (change of the loss of
    that class, nats), ``new_classes`` (argmax after retraining).
    """

    removed: np.ndarray
    classes: np.ndarray
    new_classes: np.ndarray
    before: np.ndarray
    after: np.ndarray
    predicted: np.ndarray
    predicted_change: np.ndarray
    actual_change: np.ndarray

    @property
    def changed(self) -> np.ndarray:
        """Points whose predicted class changed after retraining."""
        return self.new_classes != self.classes

    def to_dict(self) -> dict[str, Any]:
        return {"removed": [int(i) for i in self.removed], "classes": self.classes.tolist(),
                "new_classes": self.new_classes.tolist(), "before": self.before.tolist(),
                "after": self.after.tolist(), "predicted": self.predicted.tolist(),
                "predicted_change": self.predicted_change.tolist(), "actual_change": self.actual_change.tolist()}

    def to_frame(self) -> Any:
        import pandas as pd

        d = self.to_dict()
        d.pop("removed")
        return pd.DataFrame(d)

    def report_table(self) -> Any:
        from ..report.html import Table

        rows = [[t, int(c), int(nc), b, a, p, pc, ac] for t, (c, nc, b, a, p, pc, ac) in enumerate(zip(
            self.classes, self.new_classes, self.before, self.after, self.predicted, self.predicted_change,
            self.actual_change, strict=True))]
        return Table(f"Unlearning {len(self.removed)} training examples, checked",
                     ["point", "class", "class after", "P before", "P after (retrained)", "P after (influence)",
                      "predicted change (nats)", "actual change (nats)"], rows,
                     "P(class) had the removed examples never been seen: retrained truth beside the first-order "
                     "influence prediction.")


def unlearn(model: Any, train: Any, remove: Any, *, retrain: Callable[[torch.Tensor], Any], X: Any,
            classes: Any = None, method: Any = "influence-exact", weight_decay: float | None = None,
            forward_fn: Callable | None = None) -> UnlearningResult:
    """Retrain without ``remove`` (training indices) and show, at each row of ``X``, the new prediction beside the
    influence prediction of the same removal (sum of the removed examples' scores). See :class:`UnlearningResult`.
    """
    train_pair, Xe, predicted_classes, z = _prepare(model, train, X, forward_fn)
    n = len(train_pair[1])
    remove = np.unique(np.asarray(remove, dtype=np.int64).reshape(-1))
    if len(remove) == 0 or remove.min() < 0 or remove.max() >= n:
        raise PrecedentsError(f"remove must be training indices in [0, {n}), at least one.")
    cls = predicted_classes if classes is None else torch.as_tensor(np.asarray(classes)).long().reshape(-1)
    if len(cls) != len(Xe):
        raise PrecedentsError(f"classes has {len(cls)} entries for {len(Xe)} points.")
    scores = _rankings(model, train_pair, Xe, cls, method, _weight_decay(weight_decay, retrain))
    keep = torch.ones(n, dtype=torch.bool)
    keep[torch.as_tensor(remove)] = False
    z_after = _logits(retrain(keep), Xe, forward_fn)
    loss0, loss1 = _class_loss(z, cls), _class_loss(z_after, cls)
    change = scores[:, torch.as_tensor(remove)].sum(1)
    return UnlearningResult(remove, cls.numpy(), z_after.argmax(1).numpy(), torch.exp(-loss0).numpy(),
                            torch.exp(-loss1).numpy(), torch.exp(-(loss0 + change)).numpy(), change.numpy(),
                            (loss1 - loss0).numpy())
