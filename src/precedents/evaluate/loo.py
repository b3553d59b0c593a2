r"""Ground truth for attribution methods: leave-one-out retraining (the LDS: :mod:`precedents.evaluate.lds`).

Sign convention (as everywhere in precedents, for loss-based methods): ``score(t, i)`` predicts the *increase*
of test point t's loss if training example i were removed and the model retrained. The ground truth it is
compared with is therefore

    loss_change(t, i) = l_t(theta*_{-i}) - l_t(theta*)          (nats)

where ``theta*`` is the model trained on all n examples and ``theta*_{-i}`` the one retrained without example i.
Removing a *set* S of examples is predicted, to first order, by the sum of their scores:
``l_t(theta*_{-S}) - l_t(theta*) ~ sum_{i in S} score(t, i)``; the LDS (Park et al. 2023, TRAK) measures how
well that ranks random subsets.

Retraining is the user's: a *retrainer* is a callable ``retrain(keep_mask) -> nn.Module`` taking a boolean
mask (n,) of the training examples to keep. Two are provided:

* :class:`LogisticRegressionRetrainer`: multinomial logistic regression (an ``nn.Linear``) retrained to its
  exact optimum (float64 Newton, gradient norm ~1e-12), warm-started from the full-data optimum and
  preconditioned by its Hessian, so one retrain costs a few gradient evaluations;
* :func:`warm_start_retrainer`: any network, copied and trained further from the given weights without the
  removed examples (Koh & Liang 2017; Basu et al. 2021), deterministic given the seed.

:func:`leave_one_out` runs the retrains, appending each result to a JSON-lines file as it finishes: a rerun
with the same file skips what is there (resume after an interruption, nothing lost).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import PrecedentsError
from ..linalg import head_hessian, head_hvp
from ..linalg.functional import LossFn, default_loss
from ..linalg.solvers import conjugate_gradient
from .metrics import pearson, spearman

__all__ = [
    "Correlation",
    "LeaveOneOutResult",
    "LogisticRegressionRetrainer",
    "Retrainer",
    "WarmStartRetrainer",
    "fit_logistic_regression",
    "leave_one_out",
    "warm_start_retrainer",
]

ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

#: Newton with the explicit Hessian up to this many parameters (C * (d + 1)); Newton-CG beyond.
MAX_EXPLICIT_HESSIAN = 6000


class Retrainer(Protocol):
    """``retrain(keep_mask)`` returns a model trained on the examples where ``keep_mask`` (n,) is True.

    ``n_train`` (n) is optional: :func:`leave_one_out` and :func:`linear_datamodeling` read it when their own
    ``n_train`` argument is not given.
    """

    def __call__(self, keep_mask: torch.Tensor) -> nn.Module: ...


# ---------------------------------------------------------------------------------------------------------
# Logistic regression to its exact optimum
# ---------------------------------------------------------------------------------------------------------

def _design(X: Any) -> torch.Tensor:
    """``[X, 1]`` in float64, (n, d + 1): the bias is the last column of the parameters."""
    X = torch.as_tensor(X)
    if X.ndim != 2:
        raise PrecedentsError(f"X must be 2-D (n, d) for logistic regression, got shape {tuple(X.shape)}; "
                              "flatten it first (X.reshape(len(X), -1)) and feed the model flattened inputs.")
    X = X.to(torch.float64)
    if not torch.isfinite(X).all():
        raise PrecedentsError("X contains NaN or infinite values.")
    return torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], dim=1)


def _theta_of(model: nn.Linear) -> torch.Tensor:
    w = model.weight.detach().to(torch.float64).cpu()
    b = (model.bias.detach().to(torch.float64).cpu() if model.bias is not None
         else torch.zeros(len(w), dtype=torch.float64))
    return torch.cat([w, b[:, None]], dim=1)


class _LogisticProblem:
    r"""``J(theta) = sum_i w_i CE(theta f_i, y_i) / sum_i w_i + (wd / 2) ||theta||^2`` on a fixed design F.

    Weights 0/1 select a subset without copying F (each pass over F is the cost that matters).
    """

    def __init__(self, F: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float,
                 weights: torch.Tensor | None = None) -> None:
        self.F, self.y, self.C, self.wd = F, y, n_classes, float(weight_decay)
        self.w = weights
        self.total = float(len(F) if weights is None else weights.sum())
        self.p = n_classes * F.shape[1]
        self.rows = torch.arange(len(F))

    def evaluate(self, theta: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        """Value, gradient (C, d+1) and probabilities (n, C): two passes over F."""
        logp = torch.log_softmax(self.F @ theta.T, dim=1)
        probs = logp.exp()
        nll = -logp[self.rows, self.y]
        residual = probs.clone()
        residual[self.rows, self.y] -= 1.0
        if self.w is not None:
            nll = nll * self.w
            residual *= self.w[:, None]
        value = float(nll.sum()) / self.total + 0.5 * self.wd * float((theta * theta).sum())
        grad = residual.T @ self.F / self.total + self.wd * theta
        return value, grad, probs

    def hvp(self, v: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``H v`` for v (C, d+1): two passes over F."""
        return head_hvp(self.F, probs, v, "softmax", self.w) + self.wd * v

    def hessian(self, probs: torch.Tensor) -> torch.Tensor:
        """The explicit Hessian (C(d+1), C(d+1)) of J."""
        hess = head_hessian(self.F, probs, "softmax", weights=self.w)
        return hess + self.wd * torch.eye(self.p, dtype=torch.float64)

    def factor(self, probs: torch.Tensor) -> torch.Tensor:
        """Lower Cholesky factor of the Hessian, jittered to positive definite if singular (no weight decay)."""
        hess = self.hessian(probs)
        jitter = 0.0
        while True:
            factor, info = torch.linalg.cholesky_ex(hess + jitter * torch.eye(self.p, dtype=torch.float64))
            if int(info) == 0:
                return factor
            jitter = max(10 * jitter, 1e-12 * float(hess.diagonal().mean()))


def _pcg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
         precondition: Callable[[torch.Tensor], torch.Tensor] | None, tol: float,
         max_iter: int) -> tuple[torch.Tensor, int]:
    """Preconditioned CG for ``A x = b`` with b shaped like theta: :func:`conjugate_gradient` on one system."""
    shape = b.shape

    def flat(op: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda v: op(v.reshape(shape)).reshape(1, -1)

    result = conjugate_gradient(flat(apply), b.reshape(1, -1), tol=tol, max_iter=max_iter,
                                precondition=None if precondition is None else flat(precondition))
    return result.solution.reshape(shape), result.iterations


def _center(v: torch.Tensor) -> torch.Tensor:
    """Remove the shift shared by all classes (C, d+1): without weight decay, the null space of the Hessian."""
    return v - v.mean(dim=0, keepdim=True)


def _minimize(problem: _LogisticProblem, theta: torch.Tensor, *, tol: float, max_iter: int,
              factor: torch.Tensor | None) -> tuple[torch.Tensor, float, int]:
    """Newton's method to ``||grad|| <= tol``; see :func:`fit_logistic_regression`. Returns theta, ||grad||, steps."""
    explicit = problem.p <= MAX_EXPLICIT_HESSIAN
    chord = factor is not None            # a factor from elsewhere: try cheap chord steps with it first
    value, grad, probs = problem.evaluate(theta)
    it = 0
    for it in range(1, max_iter + 1):
        gnorm = float(grad.norm())
        if gnorm <= tol:
            it -= 1
            break
        if factor is None and explicit:
            factor = problem.factor(probs)

        def precondition(r: torch.Tensor, L: torch.Tensor | None = factor) -> torch.Tensor:
            z = r if L is None else torch.cholesky_solve(r.reshape(-1, 1), L).reshape(r.shape)
            return _center(z) if problem.wd == 0 else z

        if chord:
            # theta - M^-1 grad with M the Hessian at another point: two passes over F; kept while it contracts
            trial_theta = theta - precondition(grad)
            trial = problem.evaluate(trial_theta)
            if float(trial[1].norm()) <= 0.25 * gnorm and trial[0] <= value + 1e-15 * abs(value):
                theta, (value, grad, probs) = trial_theta, trial
                continue
            chord = False
        # inexact Newton: forcing term min(0.1, ||grad||) gives quadratic convergence
        forcing = min(0.1, max(gnorm, 1e-14))
        step, cg_iters = _pcg(lambda v, probs=probs: problem.hvp(v, probs), -grad,
                              None if factor is None else precondition, forcing, 10 * problem.p)
        if explicit and cg_iters > 20:
            factor = None                                      # the factor has gone stale: refresh it
        slope = float((grad * step).sum())
        if slope >= 0:
            step, slope = -grad, -gnorm**2
        t = 1.0
        while True:
            new = problem.evaluate(theta + t * step)
            # the slack admits full steps whose decrease is below round-off (the last Newton steps)
            if new[0] <= value + 1e-4 * t * slope + 1e-15 * abs(value) or t < 1e-10:
                break
            t /= 2
        if t < 1e-10:
            break
        theta = theta + t * step
        value, grad, probs = new
    return theta, float(grad.norm()), it


def _check_labels(y: Any, n: int, n_classes: int) -> torch.Tensor:
    y = torch.as_tensor(y).long().reshape(-1)
    if len(y) != n:
        raise PrecedentsError(f"X and y have different lengths: {n} and {len(y)}.")
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise PrecedentsError(f"y must lie in [0, {n_classes - 1}], got {int(y.min())}..{int(y.max())}.")
    return y


def _as_linear(theta: torch.Tensor, gnorm: float, it: int, tol: float) -> nn.Linear:
    if gnorm > tol:
        warnings.warn(f"fit_logistic_regression: gradient norm {gnorm:.2e} after {it} Newton steps, above tol "
                      f"{tol:.0e} (float64 round-off for this data, no optimum without weight decay on separable "
                      "data, or raise max_iter).", RuntimeWarning, stacklevel=3)
    C, d1 = theta.shape
    model = nn.Linear(d1 - 1, C, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(theta[:, :-1])
        model.bias.copy_(theta[:, -1])
    model.fit_info_ = {"gradient_norm": gnorm, "iterations": it, "converged": gnorm <= tol}
    return model.eval()


def fit_logistic_regression(X: Any, y: Any, n_classes: int, weight_decay: float, *, init: nn.Linear | None = None,
                            tol: float = 1e-12, max_iter: int = 100,
                            preconditioner: torch.Tensor | None = None) -> nn.Linear:
    r"""Multinomial logistic regression at the exact optimum of its regularised objective, as an ``nn.Linear``.

    Minimises, in float64,

        J(W, b) = (1/n) sum_i CE(W x_i + b, y_i) + (weight_decay / 2) (||W||^2 + ||b||^2)

    (weights *and* bias decayed: the convention of ``pc.InfluenceFunction(weight_decay=...)``) by Newton's
    method with Armijo backtracking, until ``||grad J|| <= tol`` (Euclidean norm over all parameters). While
    ``n_classes * (d + 1) <= 6000`` the Newton systems are solved with the explicit Hessian (Cholesky, reused
    as the preconditioner of CG while it stays good, refreshed when it goes stale); beyond, by conjugate
    gradients on Hessian-vector products. Given ``preconditioner`` (the lower Cholesky factor of the Hessian
    at a nearby point, e.g. the full-data optimum when retraining without a few examples), it first takes
    chord steps ``theta - M^-1 grad`` (one gradient each) while they contract the gradient fourfold, then
    Newton steps preconditioned by it: this is what makes :class:`LogisticRegressionRetrainer` cheap.

    Args:
        X: (n, d) features; y: (n,) class indices in ``[0, n_classes)``; ``n_classes >= 2`` outputs (softmax).
        init: warm start (an ``nn.Linear(d, n_classes)``); zeros otherwise.
        tol: target gradient norm; a ``RuntimeWarning`` says so if it is not reached.

    Returns:
        ``nn.Linear(d, n_classes)`` in float64 (feed it float64 inputs), in eval mode, with ``fit_info_``:
        ``{"gradient_norm", "iterations", "converged"}``.
    """
    if n_classes < 2:
        raise PrecedentsError(f"n_classes must be >= 2 (softmax outputs), got {n_classes}.")
    if weight_decay < 0:
        raise PrecedentsError(f"weight_decay must be >= 0, got {weight_decay}.")
    F = _design(X)
    if len(F) == 0:
        raise PrecedentsError("The training set is empty.")
    y = _check_labels(y, len(F), n_classes)
    theta = torch.zeros(n_classes, F.shape[1], dtype=torch.float64)
    if init is not None:
        theta = _theta_of(init)
        if theta.shape != (n_classes, F.shape[1]):
            raise PrecedentsError(f"init has shape {tuple(theta.shape)} (weights + bias column), expected "
                                  f"{(n_classes, F.shape[1])}.")
    problem = _LogisticProblem(F, y, n_classes, weight_decay)
    theta, gnorm, it = _minimize(problem, theta, tol=tol, max_iter=max_iter, factor=preconditioner)
    return _as_linear(theta, gnorm, it, tol)


class LogisticRegressionRetrainer:
    r"""Retrains logistic regression to its exact optimum on any subset of the training set (warm start).

    On construction: fits the full-data optimum ``base_model`` (:func:`fit_logistic_regression`) and the
    Cholesky factor of the objective's Hessian there. ``retrain(keep_mask)`` restarts Newton from
    ``base_model`` on the kept examples (weights 0/1, no copy of the data) with that factor as the
    preconditioner: leaving one example out barely changes the Hessian, so a retrain costs a few passes over
    the data and reaches gradient norm ``tol`` like the full fit. Random half subsets (the LDS) take a few
    preconditioned Newton steps.
    """

    def __init__(self, X: Any, y: Any, n_classes: int, weight_decay: float, *, tol: float = 1e-12,
                 max_iter: int = 100) -> None:
        if n_classes < 2:
            raise PrecedentsError(f"n_classes must be >= 2 (softmax outputs), got {n_classes}.")
        self.F = _design(X)
        self.n_train = len(self.F)
        if self.n_train == 0:
            raise PrecedentsError("The training set is empty.")
        self.y = _check_labels(y, self.n_train, n_classes)
        self.n_classes, self.weight_decay, self.tol, self.max_iter = n_classes, float(weight_decay), tol, max_iter
        problem = _LogisticProblem(self.F, self.y, n_classes, self.weight_decay)
        theta, gnorm, it = _minimize(problem, torch.zeros(n_classes, self.F.shape[1], dtype=torch.float64),
                                     tol=tol, max_iter=max_iter, factor=None)
        self.base_model = _as_linear(theta, gnorm, it, tol)
        self.theta_ = theta
        self.hessian_factor_ = problem.factor(problem.evaluate(theta)[2])

    def __call__(self, keep_mask: torch.Tensor) -> nn.Linear:
        keep = _check_mask(keep_mask, self.n_train)
        if not keep.any():
            raise PrecedentsError("keep_mask keeps no training example.")
        weights = None if bool(keep.all()) else keep.to(torch.float64)
        problem = _LogisticProblem(self.F, self.y, self.n_classes, self.weight_decay, weights)
        theta, gnorm, it = _minimize(problem, self.theta_.clone(), tol=self.tol, max_iter=self.max_iter,
                                     factor=self.hessian_factor_)
        return _as_linear(theta, gnorm, it, self.tol)


# ---------------------------------------------------------------------------------------------------------
# Networks: warm-started retraining
# ---------------------------------------------------------------------------------------------------------

class WarmStartRetrainer:
    """See :func:`warm_start_retrainer`."""

    def __init__(self, model: nn.Module, X: Any, y: Any, *, steps: int, lr: float, weight_decay: float,
                 batch_size: int | None = None, seed: int = 0, loss_fn: LossFn | None = None,
                 forward_fn: ForwardFn | None = None) -> None:
        if steps < 0 or lr <= 0 or weight_decay < 0:
            raise PrecedentsError(f"Need steps >= 0, lr > 0, weight_decay >= 0; got {steps}, {lr}, {weight_decay}.")
        self.model = model
        self.X = torch.as_tensor(X)
        self.y = torch.as_tensor(y)
        if len(self.X) != len(self.y):
            raise PrecedentsError(f"X and y have different lengths: {len(self.X)} and {len(self.y)}.")
        self.n_train = len(self.X)
        self.steps, self.lr, self.weight_decay = int(steps), float(lr), float(weight_decay)
        self.batch_size, self.seed = batch_size, seed
        self.loss_fn = loss_fn or default_loss
        self.forward_fn = forward_fn or (lambda m, x: m(x))

    def _batches(self):
        """The same sequence of index batches for every mask (common random numbers across retrains)."""
        n, bs = self.n_train, self.batch_size
        if bs is None or bs >= n:
            while True:
                yield torch.arange(n)
        g = torch.Generator().manual_seed(self.seed)
        while True:
            perm = torch.randperm(n, generator=g)
            for s in range(0, n, bs):
                yield perm[s:s + bs]

    def __call__(self, keep_mask: torch.Tensor) -> nn.Module:
        keep = _check_mask(keep_mask, self.n_train)
        n_keep = int(keep.sum())
        if n_keep == 0:
            raise PrecedentsError("keep_mask keeps no training example.")
        model = copy.deepcopy(self.model).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise PrecedentsError("The model has no trainable parameters (requires_grad=True) to retrain.")
        dtype, device = params[0].dtype, params[0].device
        opt = torch.optim.SGD(params, lr=self.lr)
        batches = self._batches()
        with torch.enable_grad():
            for _ in range(self.steps):
                batch = next(batches)
                sel = batch[keep[batch]]
                # unbiased for the mean over the kept examples: every kept example weighs the same
                denom = len(batch) * n_keep / self.n_train
                opt.zero_grad(set_to_none=True)
                loss = torch.zeros((), dtype=dtype, device=device)
                if len(sel):
                    x = self.X[sel].to(device)
                    x = x.to(dtype) if x.is_floating_point() else x
                    loss = self.loss_fn(self.forward_fn(model, x), self.y[sel].to(device)).sum() / denom
                if self.weight_decay:
                    loss = loss + 0.5 * self.weight_decay * sum((p * p).sum() for p in params)
                loss.backward()
                opt.step()
        return model.eval()


def warm_start_retrainer(model: nn.Module, X: Any, y: Any, *, steps: int, lr: float, weight_decay: float,
                         batch_size: int | None = None, seed: int = 0, loss_fn: LossFn | None = None,
                         forward_fn: ForwardFn | None = None) -> WarmStartRetrainer:
    r"""A retrainer for any network: copy the (trained) model and continue training without the removed points.

    ``retrain(keep_mask)`` runs ``steps`` steps of plain SGD (learning rate ``lr``) from a copy of ``model`` on

        J(theta) = (1/|K|) sum_{i in K} l_i(theta) + (weight_decay / 2) ||theta||^2

    (K the kept examples, theta every trainable parameter: the objective of ``pc.InfluenceFunction(model,
    params="all", weight_decay=...)``), full batch when ``batch_size`` is None. Minibatches are the batches of
    seeded per-epoch permutations of *all* n examples with the removed ones dropped, scaled so that each kept
    example weighs the same: every retrain sees the same sequence of batches (common random numbers), so the
    difference between two retrains is the removal, not minibatch noise. Deterministic given ``seed``. The
    model is trained in eval mode (dropout off, batch-norm statistics frozen): the function influence
    functions differentiate. As Koh & Liang and Basu et al. do, compare with ``retrain(all-True mask)`` (what
    :func:`leave_one_out` does by default), which removes the drift of continued training from the truth.
    """
    return WarmStartRetrainer(model, X, y, steps=steps, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                              seed=seed, loss_fn=loss_fn, forward_fn=forward_fn)


# ---------------------------------------------------------------------------------------------------------
# Shared helpers: masks, test outputs, the resumable results file
# ---------------------------------------------------------------------------------------------------------

def _check_mask(keep_mask: Any, n: int) -> torch.Tensor:
    keep = torch.as_tensor(keep_mask)
    if keep.dtype != torch.bool or keep.shape != (n,):
        raise PrecedentsError(f"keep_mask must be a boolean tensor of shape ({n},), got {keep.dtype} "
                              f"{tuple(keep.shape)}.")
    return keep


def _n_train(retrain: Any, n_train: int | None) -> int:
    n = n_train if n_train is not None else getattr(retrain, "n_train", None)
    if n is None:
        raise PrecedentsError("Pass n_train= (the number of training examples the keep masks cover), or a "
                              "retrainer with an n_train attribute.")
    return int(n)


def _test_outputs(model: nn.Module, X: torch.Tensor, y: torch.Tensor, output: str, loss_fn: LossFn | None,
                  forward_fn: ForwardFn | None, batch_size: int = 1024) -> torch.Tensor:
    """Per-test-point loss (or negative margin), float64 (n_test,)."""
    forward = forward_fn or (lambda m, x: m(x))
    param = next(iter(model.parameters()), None)
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(X), batch_size):
            x, t = X[s:s + batch_size], y[s:s + batch_size]
            if param is not None:
                x = x.to(param.device)
                x = x.to(param.dtype) if x.is_floating_point() else x
                t = t.to(param.device)
            logits = forward(model, x)
            if output == "loss":
                values = (loss_fn or default_loss)(logits, t)
            else:
                values = -_margin(logits.to(torch.float64), t)
            out.append(values.detach().to(torch.float64).cpu().reshape(-1))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - log sum_{c != y} exp(z_c)`` (softmax), or ``(2y - 1) z`` for a one-output head."""
    if logits.shape[-1] == 1:
        return (2 * y.to(logits.dtype) - 1) * logits[:, 0]
    correct = logits.gather(1, y.long()[:, None])[:, 0]
    others = logits.scatter(1, y.long()[:, None], float("-inf"))
    return correct - torch.logsumexp(others, dim=1)


def _fingerprint(X: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(X.shape)).encode())
    h.update(np.ascontiguousarray(X.detach().cpu().to(torch.float64).numpy()).tobytes())
    h.update(np.ascontiguousarray(y.detach().cpu().to(torch.int64).numpy()).tobytes())
    return h.hexdigest()[:16]


class _ResultsLog:
    """Append-only JSON-lines record of finished retrains, keyed; reread on resume.

    Line 1 is a header describing the experiment (checked on resume); then one object per line with a
    ``"key"`` (``"reference"``, ``"loo:<i>"``, ``"subset:<k>"``) and ``"output"`` (per test point). Each line
    is flushed and fsynced when its retrain finishes; a torn last line (killed mid-write) is dropped.
    """

    def __init__(self, path: str | os.PathLike | None, header: dict[str, Any]) -> None:
        self.path = None if path is None else Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path is None:
            return
        if self.path.exists() and self.path.stat().st_size > 0:
            raw = self.path.read_bytes()
            if not raw.endswith(b"\n"):            # interrupted mid-line: drop the torn line
                raw = raw[: raw.rfind(b"\n") + 1]
                with open(self.path, "r+b") as fh:
                    fh.truncate(len(raw))
            lines = [line for line in raw.decode().splitlines() if line.strip()]
            if lines:
                stored = json.loads(lines[0])
                differ = sorted(k for k in set(stored) | set(header) if stored.get(k) != header.get(k))
                if differ:
                    raise PrecedentsError(
                        f"{self.path} holds results of another experiment (differs in: {', '.join(differ)}; "
                        f"stored {[stored.get(k) for k in differ]}, now {[header.get(k) for k in differ]}). "
                        "Use another results_path, or delete the file to start over.")
                for line in lines[1:]:
                    record = json.loads(line)
                    self.records[record["key"]] = record
                return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(header)

    def _write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def add(self, key: str, output: torch.Tensor, seconds: float, **extra: Any) -> None:
        record = {"key": key, **extra, "seconds": seconds, "output": [float(v) for v in output.tolist()]}
        self.records[key] = record
        self._write(record)

    def output(self, key: str) -> torch.Tensor | None:
        record = self.records.get(key)
        return None if record is None else torch.tensor(record["output"], dtype=torch.float64)


def _as_test(X_test: Any, y_test: Any) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(X_test)
    y = torch.as_tensor(y_test).reshape(-1)
    if len(X) != len(y):
        raise PrecedentsError(f"X_test and y_test have different lengths: {len(X)} and {len(y)}.")
    return X, y


def _score_matrix(scores: Any, n_test: int, n_train: int) -> torch.Tensor:
    if hasattr(scores, "scores") and not isinstance(scores, (torch.Tensor, np.ndarray)):
        scores = scores.scores                       # an Attribution
    s = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    s = s.detach().to(torch.float64).cpu()
    if s.shape != (n_test, n_train):
        raise PrecedentsError(f"scores must have shape (n_test, n_train) = ({n_test}, {n_train}), got "
                              f"{tuple(s.shape)}.")
    return s


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
        predicted = _score_matrix(scores, n_test, self.n_train)[:, self.indices]
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
                  progress: bool = True, loss_fn: LossFn | None = None,
                  forward_fn: ForwardFn | None = None) -> LeaveOneOutResult:
    r"""The actual change of each test loss when each training example in ``indices`` is left out.

    For every i in ``indices``: ``model_i = retrain(mask)`` with ``mask`` all True but ``mask[i]``, and

        loss_change[t, j] = l_t(model_{indices[j]}) - l_t(reference)        (nats)

    the truth that a loss-based score predicts (positive: removing i would raise t's loss, i helped t).
    ``l`` is ``loss_fn(logits, y) -> (b,)``, default per-example cross-entropy (binary for one output;
    ``precedents.linalg.functional.default_loss``).

    Args:
        retrain: ``retrain(keep_mask: BoolTensor (n,)) -> nn.Module`` (see :class:`Retrainer`).
        indices: training examples to leave out (distinct).
        n_train: n; default ``retrain.n_train``.
        base_model: the reference model. Default: ``retrain(all-True mask)``, the same procedure with nothing
            removed (the exact optimum for :class:`LogisticRegressionRetrainer`; for warm-started networks it
            cancels the drift of the continued training).
        results_path: JSON-lines file; each finished retrain (and the reference) is appended and flushed
            at once, and a rerun with the same path (same test points, same n) skips what is there. A file of
            another experiment is refused, not overwritten.
        progress: tqdm progress bar.
        forward_fn: ``forward_fn(model, x) -> logits`` for models whose forward is not ``model(x)``.
    """
    n = _n_train(retrain, n_train)
    X, y = _as_test(X_test, y_test)
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise PrecedentsError(f"indices must lie in [0, {n - 1}], got {int(idx.min())}..{int(idx.max())}.")
    if len(torch.unique(idx)) != len(idx):
        raise PrecedentsError("indices contain duplicates; pass each training example once.")
    header = {"experiment": "leave_one_out", "n_train": n, "n_test": len(X), "test": _fingerprint(X, y),
              "loss": "default" if loss_fn is None else getattr(loss_fn, "__name__", "custom")}
    log = _ResultsLog(results_path, header)

    def evaluate(model: nn.Module) -> torch.Tensor:
        return _test_outputs(model, X, y, "loss", loss_fn, forward_fn)

    reference = log.output("reference")
    if base_model is not None:
        given = evaluate(base_model)
        if reference is not None and not torch.allclose(given, reference, rtol=1e-9, atol=1e-12):
            raise PrecedentsError(f"base_model's test losses differ from the reference stored in {results_path} "
                                  f"(max difference {float((given - reference).abs().max()):.3e}): another model.")
        if reference is None:
            log.add("reference", given, 0.0)
        reference = given
    elif reference is None:
        start = time.perf_counter()
        reference = evaluate(retrain(torch.ones(n, dtype=torch.bool)))
        log.add("reference", reference, time.perf_counter() - start)

    todo = [int(i) for i in idx if f"loo:{int(i)}" not in log.records]
    for i in tqdm(todo, desc="leave-one-out retrains", disable=not progress):
        mask = torch.ones(n, dtype=torch.bool)
        mask[i] = False
        start = time.perf_counter()
        model = retrain(mask)
        log.add(f"loo:{i}", evaluate(model), time.perf_counter() - start, index=i)

    outputs = torch.stack([log.output(f"loo:{int(i)}") for i in idx], dim=1) if len(idx) else \
        torch.zeros(len(X), 0, dtype=torch.float64)
    seconds = torch.tensor([log.records[f"loo:{int(i)}"]["seconds"] for i in idx], dtype=torch.float64)
    return LeaveOneOutResult(idx, outputs - reference[:, None], reference, seconds, n)
