r"""The linear datamodeling score (LDS; Park et al., ICML 2023, TRAK), with retraining seeds and a noise ceiling.

Ground truth: ``n_subsets`` random subsets ``S_k`` of the training set, each keeping ``round(fraction * n)``
examples (subset k drawn by ``numpy.random.default_rng([seed, k])``), each retrained with ``n_seeds`` seeds.
For every test point t and subset k the truth is the seed-averaged output of the retrained models,

    actual(t, k) = mean_s f_t(model trained on S_k with seed s)

with ``f_t`` the test loss (``output="loss"``, nats) or the negative margin (``output="margin"``:
``log sum_{c != y} e^{z_c} - z_y``, in logits; both rise when the model gets t less right). A method's
scores (our sign convention: ``score(t, i) > 0`` = example i supports t, its removal would raise ``f_t``)
predict it by the sum over the removed examples,

    predicted(t, k) = sum_{i not in S_k} score(t, i),

and the LDS is the mean over test points of the Spearman rank correlation across subsets between predicted and
actual (a constant offset or positive scale of the scores changes nothing). Its standard error is the standard
deviation over test points divided by sqrt(number of test points).

**Noise ceiling.** Retraining the same subset with another seed changes the outputs: no score, however good,
can correlate better with the noisy truth than the truth does with itself. ``seed_agreement`` is the mean over
test points (and seed pairs) of the Spearman correlation across subsets between two seeds' outputs, ``r1``. The
seed-average of K seeds has reliability ``r_K = K r1 / (1 + (K - 1) r1)`` (Spearman-Brown), and a predictor
free of noise correlates with it at most ``sqrt(r_K)``: ``noise_ceiling`` is the mean over test points of
``sqrt(r_K(t))`` (an approximation for rank correlations; it needs ``n_seeds >= 2``).

Retraining is the user's: ``train_fn(X, y, seed) -> model`` trains from scratch on the kept examples, or
``retrain(keep_mask)`` (``retrain(keep_mask, seed=s)`` when ``n_seeds > 1``) does it from a boolean mask. Each
retrain's test logits are written to ``cache_dir`` as soon as it finishes (one file per subset and seed, written
atomically), so an interrupted run resumes where it stopped and a second scoring costs no retraining.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import PrecedentsError
from ..linalg.functional import LossFn, default_loss, model_logits
from .metrics import spearman

__all__ = ["LDSResult", "LDSTruth", "datamodeling_truth", "linear_datamodeling", "linear_datamodeling_score",
           "margins", "subset_masks"]

ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
TrainFn = Callable[[torch.Tensor, torch.Tensor, int], nn.Module]


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Classification margin ``z_y - log sum_{c != y} exp(z_c)`` = ``log p_y / (1 - p_y)`` (softmax), or
    ``(2y - 1) z`` for a one-output head; logits units, float64 (n,)."""
    logits = logits.to(torch.float64)
    if logits.shape[-1] == 1:
        return (2 * y.to(logits.dtype) - 1) * logits[:, 0]
    correct = logits.gather(1, y.long()[:, None])[:, 0]
    others = logits.scatter(1, y.long()[:, None], float("-inf"))
    return correct - torch.logsumexp(others, dim=1)


def subset_masks(n: int, n_subsets: int, fraction: float = 0.5, seed: int = 0) -> torch.Tensor:
    """The keep masks (n_subsets, n): subset k keeps ``round(fraction * n)`` examples drawn without replacement
    by ``numpy.random.default_rng([seed, k])``."""
    if not 0 < fraction < 1:
        raise PrecedentsError(f"fraction must lie in (0, 1), got {fraction}.")
    masks = torch.zeros(n_subsets, n, dtype=torch.bool)
    for k in range(n_subsets):
        masks[k, torch.from_numpy(np.random.default_rng([seed, k]).permutation(n)[: round(fraction * n)])] = True
    return masks


def _fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu()
        h.update(str(tuple(t.shape)).encode())
        h.update(np.ascontiguousarray(t.to(torch.float64 if t.is_floating_point() else torch.int64).numpy())
                 .tobytes())
    return h.hexdigest()[:16]


def _score_matrix(scores: Any, n_test: int, n_train: int) -> torch.Tensor:
    if hasattr(scores, "scores") and not isinstance(scores, (torch.Tensor, np.ndarray)):
        scores = scores.scores                       # an Attribution
    s = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(np.asarray(scores))
    s = s.detach().to(torch.float64).cpu()
    if s.shape != (n_test, n_train):
        raise PrecedentsError(f"scores must have shape (n_test, n_train) = ({n_test}, {n_train}), got "
                              f"{tuple(s.shape)}.")
    return s


@dataclass
class LDSResult:
    """Linear datamodeling score and what it was computed from.

    ``lds``: mean over test points of ``spearman_per_test`` (test points where it is undefined are skipped);
    ``stderr``: its standard error over test points; ``noise_ceiling`` / ``seed_agreement``: see the module
    docstring (NaN with one seed); ``keep_masks`` (n_subsets, n_train); ``predicted`` (n_test, n_subsets) = the
    sum of the scores of the examples each subset removes; ``actual`` (n_test, n_subsets) = the seed-averaged
    test output (loss, or negative margin) after retraining on the subset.
    """

    lds: float
    spearman_per_test: torch.Tensor
    keep_masks: torch.Tensor
    predicted: torch.Tensor
    actual: torch.Tensor
    stderr: float = math.nan
    noise_ceiling: float = math.nan
    seed_agreement: float = math.nan
    output: str = "loss"

    def __float__(self) -> float:
        return self.lds


@dataclass
class LDSTruth:
    """Test outputs of models retrained on random subsets: the ground truth of the LDS.

    ``keep_masks`` (M, n) bool; ``logits`` (M, K, n_test, C) float64, the test logits of subset k's model trained
    with seed ``seeds[s]``; ``y_test`` (n_test,); ``seconds`` (M, K) wall time of each retrain (as recorded).
    """

    keep_masks: torch.Tensor
    logits: torch.Tensor
    y_test: torch.Tensor
    seeds: list[int]
    seconds: torch.Tensor
    loss_fn: LossFn | None = field(default=None, repr=False)

    def outputs(self, output: str = "margin") -> torch.Tensor:
        """(M, K, n_test) float64: each retrain's test loss (nats) or negative margin (logits)."""
        if output not in ("loss", "margin"):
            raise PrecedentsError(f"output must be 'loss' or 'margin', got {output!r}.")
        m, k, t, c = self.logits.shape
        flat = self.logits.reshape(m * k * t, c)
        y = self.y_test.repeat(m * k)
        if output == "margin":
            values = -margins(flat, y)
        else:
            values = (self.loss_fn or default_loss)(flat, y).to(torch.float64)
        return values.reshape(m, k, t)

    def noise_ceiling(self, output: str = "margin") -> tuple[float, float]:
        """``(noise_ceiling, seed_agreement)`` (see the module docstring); NaN with one seed."""
        out = self.outputs(output)
        n_seeds = out.shape[1]
        if n_seeds < 2:
            return math.nan, math.nan
        agreement = torch.tensor([[spearman(out[:, a, t], out[:, b, t]) for a in range(n_seeds)
                                   for b in range(a + 1, n_seeds)] for t in range(out.shape[2])],
                                 dtype=torch.float64).nanmean(1)
        r_k = n_seeds * agreement / (1 + (n_seeds - 1) * agreement)
        ceiling = r_k.clamp_min(0).sqrt()
        return float(ceiling.nanmean()), float(agreement.nanmean())

    def score(self, scores: Any, output: str = "margin") -> LDSResult:
        """The LDS of ``scores`` (n_test, n_train) (a tensor, array or an ``Attribution``) on this truth."""
        actual = self.outputs(output).mean(1).T                          # (n_test, M)
        s = _score_matrix(scores, actual.shape[0], self.keep_masks.shape[1])
        predicted = s @ (~self.keep_masks).to(torch.float64).T
        per_test = torch.tensor([spearman(predicted[t], actual[t]) for t in range(len(actual))],
                                dtype=torch.float64)
        finite = per_test[~per_test.isnan()]
        lds = float(finite.mean()) if len(finite) else math.nan
        stderr = float(finite.std() / math.sqrt(len(finite))) if len(finite) > 1 else math.nan
        ceiling, agreement = self.noise_ceiling(output)
        return LDSResult(lds, per_test, self.keep_masks, predicted, actual, stderr, ceiling, agreement, output)


def _test_logits(model: nn.Module, X: torch.Tensor, forward_fn: ForwardFn | None,
                 batch_size: int = 1024) -> torch.Tensor:
    try:
        return model_logits(model, X, forward_fn, batch_size=batch_size).detach().to(torch.float64).cpu()
    except (TypeError, AttributeError) as err:
        raise PrecedentsError(f"The retrained model did not return a logits tensor ({err}): pass forward_fn= that "
                              "selects the logits.") from err


def _accepts_seed(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return "seed" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def datamodeling_truth(X_test: Any, y_test: Any, *, train_fn: TrainFn | None = None, train: Any = None,
                       retrain: Callable[..., nn.Module] | None = None, n_train: int | None = None,
                       n_subsets: int = 50, n_seeds: int = 1, fraction: float = 0.5, seed: int = 0,
                       cache_dir: str | os.PathLike | None = None, progress: bool = True,
                       loss_fn: LossFn | None = None, forward_fn: ForwardFn | None = None) -> LDSTruth:
    r"""Retrain on ``n_subsets`` random subsets x ``n_seeds`` seeds and record the test logits (cached, resumable).

    Either ``train_fn(X_kept, y_kept, seed) -> model`` with ``train=(X, y)`` (the full training set, sliced by
    each keep mask), or ``retrain(keep_mask)`` (called ``retrain(keep_mask, seed=s)`` when ``n_seeds > 1``) with
    ``n_train`` (default ``retrain.n_train``). Seeds are ``0 .. n_seeds - 1``. ``cache_dir``: one file per
    retrain, written when it finishes; a rerun skips what is there; a directory of another experiment (other test
    points, training set size, fraction or subset seed) is refused.
    """
    if (train_fn is None) == (retrain is None):
        raise PrecedentsError("Pass exactly one of train_fn= (with train=(X, y)) or retrain=.")
    if n_subsets < 2:
        raise PrecedentsError(f"n_subsets must be >= 2 for a rank correlation across subsets, got {n_subsets}.")
    if n_seeds < 1:
        raise PrecedentsError(f"n_seeds must be >= 1, got {n_seeds}.")
    Xt = torch.as_tensor(X_test)
    yt = torch.as_tensor(y_test).reshape(-1)
    if len(Xt) != len(yt):
        raise PrecedentsError(f"X_test and y_test have different lengths: {len(Xt)} and {len(yt)}.")
    if train_fn is not None:
        if train is None or len(train) != 2:
            raise PrecedentsError("train_fn needs train=(X, y), the full training set the subsets are drawn from.")
        Xtr, ytr = torch.as_tensor(train[0]), torch.as_tensor(train[1])
        if len(Xtr) != len(ytr):
            raise PrecedentsError(f"train X and y have different lengths: {len(Xtr)} and {len(ytr)}.")
        n = len(Xtr)
        train_id = _fingerprint(Xtr, ytr)

        def fit(mask: torch.Tensor, s: int) -> nn.Module:
            return train_fn(Xtr[mask], ytr[mask], s)
    else:
        n = n_train if n_train is not None else getattr(retrain, "n_train", None)
        if n is None:
            raise PrecedentsError("Pass n_train= (the number of training examples the keep masks cover), or a "
                                  "retrainer with an n_train attribute.")
        n = int(n)
        train_id = "retrain"
        if n_seeds > 1 and not _accepts_seed(retrain):
            raise PrecedentsError("n_seeds > 1 calls retrain(keep_mask, seed=s): add a seed keyword to retrain, "
                                  "or use n_seeds=1.")

        def fit(mask: torch.Tensor, s: int) -> nn.Module:
            return retrain(mask, seed=s) if n_seeds > 1 else retrain(mask)

    masks = subset_masks(n, n_subsets, fraction, seed)
    cache = None if cache_dir is None else Path(cache_dir)
    header = {"experiment": "lds", "n_train": n, "train": train_id, "test": _fingerprint(Xt, yt),
              "fraction": fraction, "seed": seed}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        head_file = cache / "header.json"
        if head_file.exists():
            stored = json.loads(head_file.read_text())
            differ = sorted(k for k in set(stored) | set(header) if stored.get(k) != header.get(k))
            if differ:
                raise PrecedentsError(f"{cache} holds retrains of another experiment (differs in: "
                                      f"{', '.join(differ)}). Use another cache_dir, or empty it to start over.")
        else:
            head_file.write_text(json.dumps(header))

    seeds = list(range(n_seeds))
    logits: dict[tuple[int, int], torch.Tensor] = {}
    seconds = torch.zeros(n_subsets, n_seeds, dtype=torch.float64)
    todo = []
    for k in range(n_subsets):
        for s in seeds:
            path = None if cache is None else cache / f"subset{k:04d}_seed{s}.pt"
            if path is not None and path.exists():
                record = torch.load(path, weights_only=True)
                logits[k, s], seconds[k, s] = record["logits"], float(record["seconds"])
            else:
                todo.append((k, s, path))
    for k, s, path in tqdm(todo, desc="LDS retrains", disable=not progress):
        start = time.perf_counter()
        model = fit(masks[k].clone(), s)
        values = _test_logits(model, Xt, forward_fn)
        seconds[k, s] = time.perf_counter() - start
        logits[k, s] = values
        if path is not None:
            tmp = path.with_suffix(".tmp")
            torch.save({"logits": values, "seconds": float(seconds[k, s])}, tmp)
            os.replace(tmp, path)
    stacked = torch.stack([torch.stack([logits[k, s] for s in seeds]) for k in range(n_subsets)])
    return LDSTruth(masks, stacked, yt.long(), seeds, seconds, loss_fn)


def linear_datamodeling(retrain: Callable[..., nn.Module] | None, scores: Any, X_test: Any, y_test: Any, *,
                        n_subsets: int = 50, n_seeds: int = 1, fraction: float = 0.5, seed: int = 0,
                        output: str = "loss", n_train: int | None = None, train_fn: TrainFn | None = None,
                        train: Any = None, cache_dir: str | os.PathLike | None = None, progress: bool = True,
                        loss_fn: LossFn | None = None, forward_fn: ForwardFn | None = None) -> LDSResult:
    r"""The linear datamodeling score of ``scores`` (n_test, n_train): :func:`datamodeling_truth` (same
    arguments; ``retrain=None`` with ``train_fn`` and ``train``) then :meth:`LDSTruth.score` with ``output``
    (``"loss"`` or ``"margin"``). 1 = the scores rank subsets exactly as retraining does; 0 = no better than
    chance."""
    if output not in ("loss", "margin"):
        raise PrecedentsError(f"output must be 'loss' or 'margin', got {output!r}.")
    truth = datamodeling_truth(X_test, y_test, train_fn=train_fn, train=train, retrain=retrain, n_train=n_train,
                               n_subsets=n_subsets, n_seeds=n_seeds, fraction=fraction, seed=seed,
                               cache_dir=cache_dir, progress=progress, loss_fn=loss_fn, forward_fn=forward_fn)
    return truth.score(scores, output)


def linear_datamodeling_score(retrain: Callable[..., nn.Module] | None, scores: Any, X_test: Any, y_test: Any,
                              **kwargs: Any) -> float:
    """The LDS as a number: :func:`linear_datamodeling` (same arguments) ``.lds``."""
    return linear_datamodeling(retrain, scores, X_test, y_test, **kwargs).lds
