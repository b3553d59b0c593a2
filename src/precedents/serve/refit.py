r"""Refitting the head on the bundle's frozen features: the review queue's "apply" and "verify a claim".

Both refit only the final linear layer, on the features the model computes (stored in the bundle), to the optimum
of ``mean CE(F theta^T, y) + weight_decay/2 ||theta||^2`` (bias included in theta, as
``precedents debug --corrections`` does) with :func:`precedents.evaluate.fit_logistic_regression`. A one-output
sigmoid head is refit as the equivalent two-class softmax. "Before" is always the same refit on the unchanged
data, so a difference isolates the change (corrections, removals) from the gap between the given head and the
optimum of the objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validation import PrecedentsError
from .bundle import Bundle


@dataclass
class Refit:
    """A refit head: ``logits(F)`` in the head's classes (C columns, also for a sigmoid head)."""

    weight: torch.Tensor      # (C, d') float64, d' = d - 1 when the features carry a constant column
    bias: torch.Tensor        # (C,)
    gradient_norm: float
    converged: bool
    constant_column: bool

    def logits(self, features: np.ndarray) -> np.ndarray:
        F = torch.as_tensor(np.asarray(features), dtype=torch.float64)
        if self.constant_column:
            F = F[:, :-1]
        return (F @ self.weight.T + self.bias).numpy()


class HeadRefitter:
    """Refits the bundle's head on subsets / relabellings of its training set (warm-started from the given head)."""

    def __init__(self, bundle: Bundle, *, tol: float = 1e-8, max_iter: int = 50) -> None:
        self.bundle = bundle
        self.F = np.array(bundle.array("train_features"))
        self.F_test = np.array(bundle.array("test_features"))
        self.constant_column = bool(np.all(self.F[:, -1] == 1.0))
        self.weight_decay = float(bundle.manifest.get("weight_decay", 0.0))
        self.n_classes = bundle.n_classes
        theta = torch.tensor(np.array(bundle.array("theta")), dtype=torch.float64)
        if theta.shape[0] == 1:                  # sigmoid head as two-class softmax
            theta = torch.cat([-theta / 2, theta / 2])
        self.theta0 = theta
        self.tol, self.max_iter = tol, max_iter
        self._reference: Refit | None = None

    def fit(self, labels: np.ndarray, keep: np.ndarray | None = None, init: Refit | None = None) -> Refit:
        import warnings

        from ..evaluate import fit_logistic_regression

        F = torch.as_tensor(self.F if keep is None else self.F[keep], dtype=torch.float64)
        y = torch.as_tensor(labels if keep is None else labels[keep], dtype=torch.long)
        if len(F) == 0:
            raise PrecedentsError("No training example left to refit on.")
        X = F[:, :-1] if self.constant_column else F
        init_linear = torch.nn.Linear(X.shape[1], self.n_classes, dtype=torch.float64)
        with torch.no_grad():
            if init is not None:
                init_linear.weight.copy_(init.weight)
                init_linear.bias.copy_(init.bias)
            elif self.constant_column:
                init_linear.weight.copy_(self.theta0[:, :-1])
                init_linear.bias.copy_(self.theta0[:, -1])
            else:
                init_linear.weight.copy_(self.theta0)
                init_linear.bias.zero_()
        wd = self.weight_decay * (2 if self.bundle.array("theta").shape[0] == 1 else 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            linear = fit_logistic_regression(X, y, self.n_classes, wd, init=init_linear, tol=self.tol,
                                             max_iter=self.max_iter)
        info = getattr(linear, "fit_info_", {})
        return Refit(linear.weight.detach().clone(), linear.bias.detach().clone(),
                     float(info.get("gradient_norm", float("nan"))),
                     bool(info.get("converged", not caught)), self.constant_column)

    def reference(self) -> Refit:
        """The refit on the given labels and the whole training set (computed once)."""
        if self._reference is None:
            self._reference = self.fit(self.bundle.train_labels)
        return self._reference


def apply_decisions(refitter: HeadRefitter, relabel: dict[int, int], remove: list[int]) -> dict[str, Any]:
    """Refit with the relabels applied and the removals left out; compare test predictions with the reference."""
    b = refitter.bundle
    labels = b.train_labels.copy()
    for i, c in relabel.items():
        labels[int(i)] = int(c)
    keep = np.ones(b.n_train, bool)
    keep[np.asarray(remove, dtype=np.int64)] = False
    before = refitter.reference()
    after = refitter.fit(labels, keep, init=before)
    pred_before = before.logits(refitter.F_test).argmax(1)
    pred_after = after.logits(refitter.F_test).argmax(1)
    known = b.test_labels >= 0
    changed = np.nonzero(pred_before != pred_after)[0]

    def acc(pred: np.ndarray) -> float | None:
        return float((pred[known] == b.test_labels[known]).mean()) if known.any() else None

    return {"n_relabelled": len(relabel), "n_removed": int((~keep).sum()),
            "model_accuracy": acc(b.test_pred),
            "accuracy_before": acc(pred_before), "accuracy_after": acc(pred_after),
            "changed": [{"test_index": int(t), "before": int(pred_before[t]), "after": int(pred_after[t]),
                         "label": int(b.test_labels[t])} for t in changed],
            "converged": before.converged and after.converged,
            "gradient_norm": max(before.gradient_norm, after.gradient_norm),
            "weight_decay": refitter.weight_decay}


def _explained(logits: np.ndarray, c: int, loss: bool, one_output: bool) -> float:
    """The explained output of class c from refit logits: its loss -log p_c (nats), or its logit (for a one-output
    head refit as two classes, the signed margin ``(2c - 1)(z_1 - z_0)``)."""
    if loss:
        z = logits - logits.max()
        return float(-(z[c] - np.log(np.exp(z).sum())))
    if one_output:
        return float((2 * c - 1) * (logits[1] - logits[0]))
    return float(logits[c])


def verify_claim(refitter: HeadRefitter, key: str, t: int, c: int, n_remove: int, kind: str) -> dict[str, Any]:
    """Remove test point t's top ``n_remove`` proponents (``kind="positive"``) or opponents of class c under method
    ``key``, refit the head, and compare the actual change of the explained output with the method's prediction.

    Prediction: the removed examples' scores say how much they contribute; removing them changes a logit-unit
    output by ``-sum(scores)`` (the representer decomposition) and a loss-unit output (influence: the loss of
    label c, nats) by ``+sum(scores)`` (first-order, additive); scores in other units (TracIn, gradient
    similarity) predict no amount (``predicted_change`` None), only that removing proponents raises the loss.
    Actual: the same output under the refit head minus under
    the reference refit (both on frozen features).
    """
    b = refitter.bundle
    method = b.methods[key]
    measurement = method.get("measurement", {})
    loss = measurement.get("quantity") != "class logit"
    in_loss_units = str(measurement.get("units", "")).startswith("nats")
    idx = np.asarray(b.method_array(key, "pos_idx" if kind == "positive" else "neg_idx")[t, c])[:n_remove]
    scores = np.asarray(b.method_array(key, "pos_score" if kind == "positive" else "neg_score")[t, c])[:n_remove]
    keep = np.ones(b.n_train, bool)
    keep[idx] = False
    before = refitter.reference()
    after = refitter.fit(b.train_labels, keep, init=before)
    f = refitter.F_test[t:t + 1]
    lb, la = before.logits(f)[0], after.logits(f)[0]
    one = b.array("theta").shape[0] == 1
    total = float(scores.astype(np.float64).sum())
    # a loss-based method in other units (TracIn, grad-dot/cos) predicts the direction only
    predicted = (total if in_loss_units else None) if loss else -total
    pb = np.exp(lb - lb.max())
    pb /= pb.sum()
    pa = np.exp(la - la.max())
    pa /= pa.sum()
    return {"method": key, "test_index": t, "class": c, "kind": kind, "removed": [int(i) for i in idx],
            "removed_scores": [float(s) for s in scores], "units": method["units"],
            "explained_output": "loss of class c (nats)" if loss else "logit of class c",
            "predicted_change": predicted, "actual_change": _explained(la, c, loss, one) - _explained(lb, c, loss, one),
            "probability_before": float(pb[c]), "probability_after": float(pa[c]),
            "prediction_before": int(lb.argmax()), "prediction_after": int(la.argmax()),
            "converged": before.converged and after.converged, "weight_decay": refitter.weight_decay}
