r"""Ground truth for attribution methods: leave-one-out retraining (the LDS: :mod:`precedents.evaluate.lds`).

Sign convention (as everywhere in precedents, for loss-based methods): ``score(t, i)`` predicts the *increase*
of test point t's loss if training example i were removed and the model retrained. The ground truth it is
compared with is therefore

    loss_change(t, i) = l_t(theta*_{-i}) - l_t(theta*)          (nats)

where ``theta*`` is the model trained on all n examples and ``theta*_{-i}`` the one retrained without example i.
Removing a *set* S of examples is predicted, to first order, by the sum of their scores:
``l_t(theta*_{-S}) - l_t(theta*) ~ sum_{i in S} score(t, i)``; the LDS (Park et al. 2023, TRAK) measures how
well that ranks random subsets.

Retraining goes through a :class:`~precedents.evaluate.retrain.Retrainer` (``retrain(keep_mask) -> model``; a
plain function of the mask works too): exact logistic regression, warm-started networks, a head refit, or the
user's own training function from scratch (see :mod:`precedents.evaluate.retrain`).

:func:`leave_one_out` runs the retrains, appending each result to a JSON-lines file as it finishes: a rerun
with the same file skips what is there (resume after an interruption, nothing lost), provided the file was made
with the same settings (:class:`~precedents.evaluate.results.ResultsLog`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import PrecedentsError
from ..data import model_fingerprint
from ..linalg.functional import ForwardFn, LossFn
from .metrics import pearson, spearman
from .results import ResultsLog, as_test, callable_name, data_fingerprint, score_matrix, test_outputs
from .retrain import Retrainer, as_retrainer

__all__ = ["Correlation", "LeaveOneOutResult", "leave_one_out"]

# ---------------------------------------------------------------------------------------------------------
# Leave-one-out
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Correlation:
    """Agreement of predicted and actual loss changes over (test point, training example) pairs.

    ``pearson``/``spearman``: over all the pairs pooled; ``pearson_per_test``/``spearman_per_test`` (n_test,):
    over each test point's pairs; ``predicted``/``actual``: the pooled pairs (flat, for scatter plots).
    """

    pearson: float
    spearman: float
    pearson_per_test: torch.Tensor
    spearman_per_test: torch.Tensor
    predicted: torch.Tensor
    actual: torch.Tensor

    @property
    def n_pairs(self) -> int:
        return len(self.actual)


@dataclass
class LeaveOneOutResult:
    r"""Actual loss changes from leave-one-out retraining.

    ``indices`` (m,): the training examples removed, one at a time, in the order asked for;
    ``loss_change`` (n_test, m) float64: ``l_t(retrained without indices[j]) - l_t(reference)`` in nats, the
    quantity a loss-based ``score(t, indices[j])`` predicts; ``reference_loss`` (n_test,): the test losses of
    the reference model (all examples); ``seconds`` (m,): wall time of each retrain (as recorded).
    """

    indices: torch.Tensor
    loss_change: torch.Tensor
    reference_loss: torch.Tensor
    seconds: torch.Tensor
    n_train: int

    def correlate(self, scores: Any, pairs: Any = None) -> Correlation:
        """Pearson and Spearman of ``scores[:, indices]`` with ``loss_change``.

        ``scores``: a method's (n_test, n_train) scores (tensor, array, or an ``Attribution``). ``pairs``
        (n_test, m) bool, optional: the (test point, index) pairs to compare, e.g. each test point's own
        selection of training examples; default all. Representer scores are in logit units, not loss: their
        correlations are still meaningful as agreement in direction and rank, not in scale.
        """
        n_test, m = self.loss_change.shape
        predicted = score_matrix(scores, n_test, self.n_train)[:, self.indices]
        keep = torch.ones(n_test, m, dtype=torch.bool) if pairs is None else torch.as_tensor(pairs).bool()
        if keep.shape != (n_test, m):
            raise PrecedentsError(f"pairs must have shape ({n_test}, {m}), got {tuple(keep.shape)}.")
        per_p = torch.tensor([pearson(predicted[t][keep[t]], self.loss_change[t][keep[t]]) for t in range(n_test)],
                             dtype=torch.float64)
        per_s = torch.tensor([spearman(predicted[t][keep[t]], self.loss_change[t][keep[t]]) for t in range(n_test)],
                             dtype=torch.float64)
        pred, act = predicted[keep], self.loss_change[keep]
        return Correlation(pearson(pred, act), spearman(pred, act), per_p, per_s, pred, act)


def leave_one_out(retrain: Retrainer | Callable[[torch.Tensor], nn.Module], X_test: Any, y_test: Any,
                  indices: Sequence[int] | torch.Tensor | np.ndarray, *, n_train: int | None = None,
                  base_model: nn.Module | None = None, results_path: str | os.PathLike | None = None,
                  restart: bool = False, progress: bool = True, loss_fn: LossFn | None = None,
                  forward_fn: ForwardFn | None = None) -> LeaveOneOutResult:
    r"""The actual change of each test loss when each training example in ``indices`` is left out.

    For every i in ``indices``: ``model_i = retrain(mask)`` with ``mask`` all True but ``mask[i]``, and

        loss_change[t, j] = l_t(model_{indices[j]}) - l_t(reference)        (nats)

    the truth that a loss-based score predicts (positive: removing i would raise t's loss, i helped t).
    ``l`` is ``loss_fn(logits, y) -> (b,)``, default per-example cross-entropy (binary for one output;
    ``precedents.linalg.functional.default_loss``).

    Args:
        retrain: a :class:`~precedents.evaluate.retrain.Retrainer`, or a function ``keep_mask -> model``.
        indices: training examples to leave out (distinct).
        n_train: n; default ``retrain.n_train``.
        base_model: the reference model. Default: ``retrain(all-True mask)``, the same procedure with nothing
            removed (the exact optimum for a ``LogisticRegressionRetrainer``; for warm-started networks it
            cancels the drift of the continued training).
        results_path: JSON-lines file; each finished retrain (and the reference) is appended and flushed at
            once, and a rerun with the same path skips what is there. The file's header records everything that
            determines a row (the test points, the loss, the retrainer's settings and data, the base model's
            fingerprint): a file made with other settings is refused with a ``PrecedentsError`` saying what
            differs, and unreadable lines are reported by line number and recomputed.
        restart: when ``results_path`` holds another experiment, move it aside (``<name>.old-<k>``) and start a
            new file instead of refusing.
        progress: tqdm progress bar.
        forward_fn: ``forward_fn(model, x) -> logits`` for models whose forward is not ``model(x)``.
    """
    retrainer = as_retrainer(retrain, n_train)
    n = retrainer.n_train
    X, y = as_test(X_test, y_test)
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise PrecedentsError(f"indices must lie in [0, {n - 1}], got {int(idx.min())}..{int(idx.max())}.")
    if len(torch.unique(idx)) != len(idx):
        raise PrecedentsError("indices contain duplicates; pass each training example once.")
    header = {"experiment": "leave_one_out", "output": "loss", "n_train": n, "n_test": len(X),
              "test": data_fingerprint(X, y), "loss": callable_name(loss_fn) or "default",
              "forward": callable_name(forward_fn), "retrainer": retrainer.settings(),
              "base_model": None if base_model is None else model_fingerprint(base_model)}
    log = ResultsLog(results_path, header, restart=restart)

    def evaluate(model: nn.Module) -> torch.Tensor:
        return test_outputs(model, X, y, "loss", loss_fn, forward_fn)

    reference = log.output("reference")
    if reference is None:
        start = time.perf_counter()
        reference = evaluate(base_model if base_model is not None else retrainer.retrain(None))
        log.add("reference", reference, time.perf_counter() - start)

    todo = [int(i) for i in idx if f"loo:{int(i)}" not in log.records]
    for i in tqdm(todo, desc="leave-one-out retrains", disable=not progress):
        mask = torch.ones(n, dtype=torch.bool)
        mask[i] = False
        start = time.perf_counter()
        model = retrainer.retrain(mask)
        log.add(f"loo:{i}", evaluate(model), time.perf_counter() - start, index=i)

    outputs = torch.stack([log.output(f"loo:{int(i)}") for i in idx], dim=1) if len(idx) else \
        torch.zeros(len(X), 0, dtype=torch.float64)
    seconds = torch.tensor([log.records[f"loo:{int(i)}"]["seconds"] for i in idx], dtype=torch.float64)
    return LeaveOneOutResult(idx, outputs - reference[:, None], reference, seconds, n)
