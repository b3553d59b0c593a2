"""The one result type: training-example scores for a batch of test points, streamed in blocks."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ._validation import PrecedentsError

#: Refuse to materialise a full score matrix larger than this (bytes) unless asked with a bigger budget.
DEFAULT_MEMORY_BUDGET = 2 * 1024**3

BlockScorer = Callable[[int, int], torch.Tensor]


@dataclass(frozen=True)
class Measurement:
    """What an attribution score measures: the explained quantity, its units and what its sign means.

    ``quantity``: ``"class logit"`` (the explained class's logit, one-output heads: the signed margin),
    ``"test loss"`` (the loss of the explained label at the test point) or ``"test margin"``;
    ``units``: the units of one score; ``sign``: what a positive score says; ``additive``: whether the scores
    over the whole training set add up to ``Attribution.explained``.
    """

    quantity: str
    units: str
    sign: str
    additive: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"quantity": self.quantity, "units": self.units, "sign": self.sign, "additive": self.additive}


#: Representer points: each training example's term of the explained class's logit.
LOGIT = Measurement("class logit", "logit (nats)", "positive: the training example raises the explained class's "
                    "logit (supports the prediction; a proponent)", additive=True)
#: Influence functions: the predicted change of the test loss if the training example were removed.
TEST_LOSS = Measurement("test loss", "nats of test loss", "positive: removing the training example would raise the "
                        "test loss (it supports the prediction; a proponent)")
#: TracIn and grad-dot: first-order decrease of the test loss credited to gradient steps on the example.
GRADIENT_DOT = Measurement("test loss", "loss-gradient dot product (nats^2 per squared parameter unit, times the "
                           "learning rate for TracIn)", "positive: a gradient step on the training example lowers "
                           "the test loss (it supports the prediction; a proponent)")
#: grad-cos: cosine of the two loss gradients, dimensionless in [-1, 1].
GRADIENT_COSINE = Measurement("test loss", "cosine of loss gradients (dimensionless, in [-1, 1])", "positive: a "
                              "gradient step on the training example lowers the test loss (a proponent)")


@dataclass
class TopK:
    """The k most positive (proponents) and k most negative (opponents) training examples per test point.

    Arrays are (n_test, k), most extreme first. ``*_labels`` are the training labels of those examples.
    """

    method: str
    positive_indices: torch.Tensor
    positive_scores: torch.Tensor
    negative_indices: torch.Tensor
    negative_scores: torch.Tensor
    positive_labels: torch.Tensor | None = None
    negative_labels: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return self.positive_indices.shape[1]

    def records(self) -> list[dict[str, Any]]:
        """One dict per (test point, rank, sign): easy to turn into JSON, CSV or a DataFrame."""
        rows = []
        for kind, idx, val, lab in (("positive", self.positive_indices, self.positive_scores, self.positive_labels),
                                    ("negative", self.negative_indices, self.negative_scores, self.negative_labels)):
            for t in range(idx.shape[0]):
                for r in range(idx.shape[1]):
                    row = {"method": self.method, "test": t, "kind": kind, "rank": r + 1,
                           "train_index": int(idx[t, r]), "score": float(val[t, r])}
                    if lab is not None:
                        row["train_label"] = int(lab[t, r])
                    rows.append(row)
        return rows

    def to_frame(self):  # -> pandas.DataFrame
        """Long-format DataFrame: method, test, kind, rank, train_index, score, train_label."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("to_frame() needs pandas: pip install pandas") from err
        return pd.DataFrame.from_records(self.records())


@dataclass
class Attribution:
    r"""Scores of every training example for each test point, with the sign convention of the package.

    ``scores[t, i]`` is training example i's score for test point t, as ``measurement`` states (quantity, units,
    sign): for representer methods its contribution to the target class's logit (logit units); for influence
    the predicted increase of the test loss if i were removed (nats). A positive score *supports* the output (a
    proponent, RPS "excitatory"), a negative one opposes it. For a one-output sigmoid head and target class 0
    the explained output is the negated logit, so the convention holds for both classes.

    Attributes
    ----------
    method : registry key of the method that produced it.
    target : (n_test,) explained class per test point (for loss-based methods: the label whose loss is explained).
    explained : (n_test,) what the method explains: for additive methods (``measurement.additive``) the output
        the scores sum to (``scores.sum(1)``); for loss-based methods the test loss.
    model_output : (n_test,) the given model's own output for the target (same sign convention).
    measurement : what a score measures (:class:`Measurement`).
    train_labels : (n_train,) labels of the training examples, when known.
    """

    method: str
    target: torch.Tensor
    explained: torch.Tensor
    model_output: torch.Tensor
    n_train: int
    score_block: BlockScorer = field(repr=False)
    train_labels: torch.Tensor | None = None
    block_size: int = 8192
    measurement: Measurement = LOGIT

    @property
    def units(self) -> str:
        """The units of one score (``measurement.units``)."""
        return self.measurement.units

    @property
    def n_test(self) -> int:
        return len(self.target)

    def blocks(self):
        """Yield ``(start, stop, scores[:, start:stop])`` over the training set."""
        for start in range(0, self.n_train, self.block_size):
            stop = min(start + self.block_size, self.n_train)
            yield start, stop, self.score_block(start, stop)

    def full(self, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
        """The full (n_test, n_train) score matrix, if it fits in ``memory_budget`` bytes."""
        need = self.n_test * self.n_train * 8
        if need > memory_budget:
            raise PrecedentsError(
                f"The full score matrix needs {need / 2**30:.1f} GiB, over the {memory_budget / 2**30:.1f} GiB "
                "budget. Use top(k) (streams over training blocks), attribute fewer test points at once, or "
                "call full(memory_budget=...) with a larger budget."
            )
        return torch.cat([block for _, _, block in self.blocks()], dim=1)

    @property
    def scores(self) -> torch.Tensor:
        """The full (n_test, n_train) score matrix (computed on first access within the memory budget)."""
        if not hasattr(self, "_scores"):
            self._scores = self.full()
        return self._scores

    def top(self, k: int = 5) -> TopK:
        """The k most positive and k most negative training examples per test point, streamed over blocks."""
        k = min(int(k), self.n_train)
        if k < 1:
            raise PrecedentsError(f"k must be at least 1, got {k}.")
        n_test = self.n_test
        pos_v = torch.full((n_test, 0), 0.0, dtype=torch.float64)
        pos_i = torch.zeros((n_test, 0), dtype=torch.long)
        neg_v, neg_i = pos_v.clone(), pos_i.clone()
        source = ((0, self.n_train, self._scores),) if hasattr(self, "_scores") else self.blocks()
        for start, stop, block in source:
            block = block.to(torch.float64)
            idx = torch.arange(start, stop).expand(n_test, -1)
            pos_v, sel = torch.cat([pos_v, block], 1).topk(min(k, pos_v.shape[1] + stop - start), dim=1)
            pos_i = torch.cat([pos_i, idx], 1).gather(1, sel)
            neg_v, sel = torch.cat([neg_v, block], 1).topk(min(k, neg_v.shape[1] + stop - start), dim=1,
                                                            largest=False)
            neg_i = torch.cat([neg_i, idx], 1).gather(1, sel)
        labels = self.train_labels
        return TopK(self.method, pos_i, pos_v, neg_i, neg_v,
                    None if labels is None else labels[pos_i], None if labels is None else labels[neg_i])

    def to_dict(self, k: int = 10) -> dict[str, Any]:
        """JSON-ready summary: per test point its target, explained and model outputs, and the top-k."""
        top = self.top(k)
        return {
            "method": self.method, "measurement": self.measurement.to_dict(), "n_train": self.n_train,
            "test_points": [
                {"test": t, "target": int(self.target[t]), "explained": float(self.explained[t]),
                 "model_output": float(self.model_output[t])} for t in range(self.n_test)],
            "top": top.records(),
        }

    def to_json(self, path: str | None = None, k: int = 10) -> str:
        text = json.dumps(self.to_dict(k), indent=1)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text
