r"""Retrainers: the one protocol every retraining experiment uses, and the concrete retrainers.

A :class:`Retrainer` holds a training set ``(X, y)`` of ``n_train`` examples and a training procedure;
``retrain(keep_mask)`` returns the model that procedure gives on the examples where ``keep_mask`` (n,) is True
(all of them for ``keep_mask=None``), and ``retrain(keep_mask, X=..., y=...)`` the same with the training inputs
or labels replaced (same n) for that one retrain. It is what leave-one-out and the LDS (removing examples),
dataset debugging (:func:`~precedents.evaluate.fix_and_retrain`: fixed labels), the sanity check
(:func:`~precedents.evaluate.label_randomized_model`: permuted labels) and the training-set attack
(:func:`~precedents.methods.training_set_attack`: a perturbed input) call. A retrainer is also callable,
``retrainer(keep_mask) == retrainer.retrain(keep_mask)``, so a plain function ``keep_mask -> model`` can stand
where only removal is needed (:func:`as_retrainer` wraps one). ``settings()`` gives, JSON-able, everything that
determines what it returns (its kind, hyperparameters, seeds and the fingerprints of its data and starting model):
resumable results files record it and refuse rows computed with other settings.

Concrete retrainers:

* :class:`LogisticRegressionRetrainer`: multinomial logistic regression retrained to its exact optimum (float64
  Newton, :func:`precedents.linalg.minimize_newton_cg`, gradient norm ~1e-12), warm-started from the full-data
  optimum and preconditioned by its Hessian;
* :class:`WarmStartRetrainer` (:func:`warm_start_retrainer`): any torch network, copied and trained further
  without the removed examples by seeded SGD (Koh & Liang 2017; Basu et al. 2021);
* :class:`HeadRetrainer`: the final linear layer refit to the exact optimum on the model's frozen features;
* :class:`FromScratchRetrainer`: the user's ``train_fn(X, y, seed) -> model`` run on the kept examples.
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import PrecedentsError, check_labels
from ..data import model_fingerprint
from ..linalg import head_hessian, head_hvp, minimize_newton_cg
from ..linalg.functional import ForwardFn, LossFn, call_model, default_loss
from .results import callable_name, data_fingerprint

__all__ = [
    "MAX_EXPLICIT_HESSIAN",
    "CallableRetrainer",
    "FromScratchRetrainer",
    "HeadRetrainer",
    "LogisticRegressionRetrainer",
    "Retrainer",
    "WarmStartRetrainer",
    "as_retrainer",
    "check_keep_mask",
    "fit_logistic_regression",
    "warm_start_retrainer",
]

#: Newton with the explicit Hessian (Cholesky preconditioner) up to this many parameters (C * (d + 1)).
MAX_EXPLICIT_HESSIAN = 6000


def check_keep_mask(keep_mask: Any, n: int) -> torch.Tensor:
    """A boolean (n,) mask of the examples to keep (all for None), with at least one True."""
    if keep_mask is None:
        return torch.ones(n, dtype=torch.bool)
    keep = torch.as_tensor(keep_mask)
    if keep.dtype != torch.bool or keep.shape != (n,):
        raise PrecedentsError(f"keep_mask must be a boolean tensor of shape ({n},), got {keep.dtype} "
                              f"{tuple(keep.shape)}.")
    if not keep.any():
        raise PrecedentsError("keep_mask keeps no training example.")
    return keep.cpu()


class Retrainer(ABC):
    """The retraining protocol (see the module docstring): ``retrain(keep_mask=None, *, X=None, y=None) -> model``,
    ``n_train``, ``settings()``; calling the retrainer is ``retrain(keep_mask)``."""

    n_train: int

    @abstractmethod
    def retrain(self, keep_mask: torch.Tensor | None = None, *, X: Any = None, y: Any = None) -> Any:
        """The model trained on the kept examples (all for None), with the inputs ``X`` / labels ``y`` replaced
        when given (the same number of examples)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-able: everything that determines what :meth:`retrain` returns."""

    def __call__(self, keep_mask: torch.Tensor | None = None) -> Any:
        return self.retrain(keep_mask)

    def _hold(self, X: Any, y: Any) -> None:
        """Keep the training set ``(X, y)`` as tensors (``self.X``, ``self.y``, ``self.n_train``)."""
        self.X = torch.as_tensor(X)
        self.y = torch.as_tensor(y).reshape(-1)
        if len(self.X) != len(self.y):
            raise PrecedentsError(f"X and y have different lengths: {len(self.X)} and {len(self.y)}.")
        if len(self.X) == 0:
            raise PrecedentsError("The training set is empty.")
        self.n_train = len(self.X)

    def _replaced(self, X: Any, y: Any) -> tuple[Any, Any]:
        """The training inputs and labels of one retrain: the given ones where replaced (length checked)."""
        X_new = getattr(self, "X", None) if X is None else torch.as_tensor(X)
        y_new = getattr(self, "y", None) if y is None else torch.as_tensor(y).reshape(-1)
        for what, value in (("X", X), ("y", y)):
            if value is not None and len(torch.as_tensor(value)) != self.n_train:
                raise PrecedentsError(f"The replacement {what} has {len(torch.as_tensor(value))} examples; this "
                                      f"retrainer's training set has {self.n_train}.")
        return X_new, y_new


class CallableRetrainer(Retrainer):
    """A plain function ``retrain(keep_mask) -> model`` as a :class:`Retrainer` (removal only). Its settings are
    its name alone: a results file cannot tell two configurations of the same function apart."""

    def __init__(self, fn: Callable[[torch.Tensor], Any], n_train: int) -> None:
        if not callable(fn):
            raise PrecedentsError(f"A retrainer must be callable (keep_mask -> model), got {type(fn).__name__}.")
        self.fn, self.n_train = fn, int(n_train)

    def retrain(self, keep_mask: torch.Tensor | None = None, *, X: Any = None, y: Any = None) -> Any:
        if X is not None or y is not None:
            raise PrecedentsError("A plain function retrainer cannot retrain on replaced inputs or labels; use "
                                  "FromScratchRetrainer(train_fn, X, y) or another Retrainer that holds its data.")
        return self.fn(check_keep_mask(keep_mask, self.n_train))

    def settings(self) -> dict[str, Any]:
        return {"retrainer": "callable", "function": callable_name(self.fn), "n_train": self.n_train}


def as_retrainer(retrain: Any, n_train: int | None = None) -> Retrainer:
    """``retrain`` itself if it is a :class:`Retrainer`, a plain function ``keep_mask -> model`` wrapped as one."""
    if isinstance(retrain, Retrainer):
        if n_train is not None and int(n_train) != retrain.n_train:
            raise PrecedentsError(f"n_train={n_train} but the retrainer holds {retrain.n_train} training examples.")
        return retrain
    n = n_train if n_train is not None else getattr(retrain, "n_train", None)
    if n is None:
        raise PrecedentsError("Pass n_train= (the number of training examples the keep masks cover), or a "
                              "retrainer with an n_train attribute.")
    return CallableRetrainer(retrain, int(n))


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
        self._at: tuple[torch.Tensor, torch.Tensor] | None = None     # (theta, probabilities) last evaluated

    def objective(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Value and gradient (C, d+1): two passes over F."""
        logp = torch.log_softmax(self.F @ theta.T, dim=1)
        probs = logp.exp()
        self._at = (theta, probs)
        nll = -logp[self.rows, self.y]
        residual = probs.clone()
        residual[self.rows, self.y] -= 1.0
        if self.w is not None:
            nll = nll * self.w
            residual *= self.w[:, None]
        value = float(nll.sum()) / self.total + 0.5 * self.wd * float((theta * theta).sum())
        return value, residual.T @ self.F / self.total + self.wd * theta

    def probs(self, theta: torch.Tensor) -> torch.Tensor:
        if self._at is None or not torch.equal(self._at[0], theta):
            self.objective(theta)
        assert self._at is not None
        return self._at[1]

    def hvp_at(self, theta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v -> H v`` at theta for batches v (k, C, d+1): two passes over F each."""
        probs = self.probs(theta)
        return lambda v: head_hvp(self.F, probs, v, "softmax", self.w) + self.wd * v

    def factor(self, theta: torch.Tensor) -> torch.Tensor:
        """Lower Cholesky factor of the Hessian at theta, jittered to positive definite if singular (no decay)."""
        hess = head_hessian(self.F, self.probs(theta), "softmax", weights=self.w)
        hess = hess + self.wd * torch.eye(self.p, dtype=torch.float64)
        jitter = 0.0
        while True:
            factor, info = torch.linalg.cholesky_ex(hess + jitter * torch.eye(self.p, dtype=torch.float64))
            if int(info) == 0:
                return factor
            jitter = max(10 * jitter, 1e-12 * float(hess.diagonal().mean()))

    def solve_with(self, factor: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``r -> M^-1 r`` on flattened batches (k, p), M = factor factor^T; without weight decay the result is
        centred across classes (the shared class shift is the null space of the Hessian)."""
        def apply(r: torch.Tensor) -> torch.Tensor:
            z = torch.cholesky_solve(r.reshape(len(r), -1).T, factor).T
            if self.wd == 0:
                z3 = z.reshape(len(z), self.C, -1)
                z = (z3 - z3.mean(dim=1, keepdim=True)).reshape(len(z), -1)
            return z
        return apply

    def minimize(self, theta: torch.Tensor, *, tol: float, max_iter: int,
                 factor: torch.Tensor | None) -> tuple[torch.Tensor, float, int]:
        """Newton to ``||grad|| <= tol`` (see :func:`fit_logistic_regression`); returns theta, ||grad||, steps.

        Preconditioned by the Cholesky factor of the explicit Hessian (while ``p <= MAX_EXPLICIT_HESSIAN``),
        kept while CG converges in a few iterations and refreshed when it has gone stale; a ``factor`` from
        elsewhere is first used for chord steps."""
        explicit = self.p <= MAX_EXPLICIT_HESSIAN
        state: dict[str, Any] = {"factor": factor, "uses": 0}

        def preconditioner_at(x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
            if explicit and (state["factor"] is None or state["uses"] > 20):
                state["factor"] = self.factor(x)
            state["uses"] = 0
            if state["factor"] is None:
                return None
            solve = self.solve_with(state["factor"])

            def counted(r: torch.Tensor) -> torch.Tensor:
                state["uses"] += 1
                return solve(r)
            return counted

        result = minimize_newton_cg(self.objective, self.hvp_at, theta, gtol=0.0, atol=tol, max_iter=max_iter,
                                    preconditioner_at=preconditioner_at,
                                    chord=None if factor is None else self.solve_with(factor))
        return result.solution, result.gradient_norm, result.iterations


def _theta_of(model: nn.Module, n_classes: int, d: int) -> torch.Tensor:
    """The (C, d + 1) parameters (bias last) of an ``nn.Linear`` warm start, through its head adapter."""
    from ..adapters import head_adapter

    if not isinstance(model, nn.Linear):
        raise PrecedentsError(f"init must be an nn.Linear (logistic regression), got {type(model).__name__}.")
    head = head_adapter(model, progress=False)
    theta = head.theta()
    if not head.has_bias:
        theta = torch.cat([theta, torch.zeros(len(theta), 1, dtype=torch.float64)], dim=1)
    if theta.shape != (n_classes, d):
        raise PrecedentsError(f"init has shape {tuple(theta.shape)} (weights + bias column), expected "
                              f"{(n_classes, d)}.")
    return theta


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


def _check_problem(n_classes: int, weight_decay: float) -> None:
    if n_classes < 2:
        raise PrecedentsError(f"n_classes must be >= 2 (softmax outputs), got {n_classes}.")
    if not weight_decay >= 0:
        raise PrecedentsError(f"weight_decay must be >= 0, got {weight_decay}.")


def fit_logistic_regression(X: Any, y: Any, n_classes: int, weight_decay: float, *, init: nn.Linear | None = None,
                            tol: float = 1e-12, max_iter: int = 100,
                            preconditioner: torch.Tensor | None = None) -> nn.Linear:
    r"""Multinomial logistic regression at the exact optimum of its regularised objective, as an ``nn.Linear``.

    Minimises, in float64,

        J(W, b) = (1/n) sum_i CE(W x_i + b, y_i) + (weight_decay / 2) (||W||^2 + ||b||^2)

    (weights *and* bias decayed: the convention of ``pc.InfluenceFunction(weight_decay=...)``) by Newton's
    method with Armijo backtracking (:func:`precedents.linalg.minimize_newton_cg`), until ``||grad J|| <= tol``
    (Euclidean norm over all parameters). While ``n_classes * (d + 1) <= 6000`` the Newton systems are
    preconditioned by the Cholesky factor of the explicit Hessian (reused while it stays good, refreshed when it
    goes stale); beyond, plain conjugate gradients on Hessian-vector products. Given ``preconditioner`` (the
    lower Cholesky factor of the Hessian at a nearby point, e.g. the full-data optimum when retraining without a
    few examples), it first takes chord steps ``theta - M^-1 grad`` (one gradient each) while they contract the
    gradient fourfold, then Newton steps preconditioned by it: this is what makes
    :class:`LogisticRegressionRetrainer` cheap.

    Args:
        X: (n, d) features; y: (n,) class indices in ``[0, n_classes)``; ``n_classes >= 2`` outputs (softmax).
        init: warm start (an ``nn.Linear(d, n_classes)``); zeros otherwise.
        tol: target gradient norm; a ``RuntimeWarning`` says so if it is not reached.

    Returns:
        ``nn.Linear(d, n_classes)`` in float64 (feed it float64 inputs), in eval mode, with ``fit_info_``:
        ``{"gradient_norm", "iterations", "converged"}``.
    """
    _check_problem(n_classes, weight_decay)
    F = _design(X)
    if len(F) == 0:
        raise PrecedentsError("The training set is empty.")
    labels = check_labels(y, n_classes, len(F))
    theta = torch.zeros(n_classes, F.shape[1], dtype=torch.float64)
    if init is not None:
        theta = _theta_of(init, n_classes, F.shape[1])
    problem = _LogisticProblem(F, labels, n_classes, weight_decay)
    theta, gnorm, it = problem.minimize(theta, tol=tol, max_iter=max_iter, factor=preconditioner)
    return _as_linear(theta, gnorm, it, tol)


class LogisticRegressionRetrainer(Retrainer):
    r"""Retrains logistic regression to its exact optimum on any subset of the training set (warm start).

    On construction: fits the full-data optimum ``base_model`` (:func:`fit_logistic_regression`) and the
    Cholesky factor ``hessian_factor_`` of the objective's Hessian there. ``retrain(keep_mask)`` restarts Newton
    from ``base_model`` on the kept examples (weights 0/1, no copy of the data) with that factor as the
    preconditioner: leaving one example out barely changes the Hessian, so a retrain costs a few passes over the
    data and reaches gradient norm ``tol`` like the full fit. Random half subsets (the LDS) take a few
    preconditioned Newton steps; replaced labels or inputs (``retrain(y=...)``, ``retrain(X=...)``) are solved
    in the same way to the same tolerance.
    """

    def __init__(self, X: Any, y: Any, n_classes: int, weight_decay: float, *, tol: float = 1e-12,
                 max_iter: int = 100) -> None:
        _check_problem(n_classes, weight_decay)
        self.F = _design(X)
        self.n_train = len(self.F)
        if self.n_train == 0:
            raise PrecedentsError("The training set is empty.")
        self.X = self.F[:, :-1]
        self.y = check_labels(y, n_classes, self.n_train)
        self.n_classes, self.weight_decay, self.tol, self.max_iter = n_classes, float(weight_decay), tol, max_iter
        problem = _LogisticProblem(self.F, self.y, n_classes, self.weight_decay)
        theta, gnorm, it = problem.minimize(torch.zeros(n_classes, self.F.shape[1], dtype=torch.float64),
                                            tol=tol, max_iter=max_iter, factor=None)
        self.base_model = _as_linear(theta, gnorm, it, tol)
        self.theta_ = theta
        self.hessian_factor_ = problem.factor(theta)

    def retrain(self, keep_mask: torch.Tensor | None = None, *, X: Any = None, y: Any = None) -> nn.Linear:
        keep = check_keep_mask(keep_mask, self.n_train)
        X_new, y_new = self._replaced(X, y)
        F = self.F if X is None else _design(X_new)
        if F.shape != self.F.shape:
            raise PrecedentsError(f"The replacement X has {F.shape[1] - 1} features; the retrainer's has "
                                  f"{self.F.shape[1] - 1}.")
        labels = self.y if y is None else check_labels(y_new, self.n_classes, self.n_train)
        weights = None if bool(keep.all()) else keep.to(torch.float64)
        problem = _LogisticProblem(F, labels, self.n_classes, self.weight_decay, weights)
        theta, gnorm, it = problem.minimize(self.theta_.clone(), tol=self.tol, max_iter=self.max_iter,
                                            factor=self.hessian_factor_)
        return _as_linear(theta, gnorm, it, self.tol)

    def settings(self) -> dict[str, Any]:
        return {"retrainer": "logistic-regression", "n_classes": self.n_classes, "weight_decay": self.weight_decay,
                "tol": self.tol, "max_iter": self.max_iter, "data": data_fingerprint(self.F, self.y)}


# ---------------------------------------------------------------------------------------------------------
# Networks: warm-started retraining
# ---------------------------------------------------------------------------------------------------------

class WarmStartRetrainer(Retrainer):
    """See :func:`warm_start_retrainer`."""

    def __init__(self, model: nn.Module, X: Any, y: Any, *, steps: int, lr: float, weight_decay: float,
                 batch_size: int | None = None, seed: int = 0, loss_fn: LossFn | None = None,
                 forward_fn: ForwardFn | None = None, optimizer: str = "sgd") -> None:
        if not (steps >= 0 and lr > 0 and weight_decay >= 0):
            raise PrecedentsError(f"Need steps >= 0, lr > 0, weight_decay >= 0; got {steps}, {lr}, {weight_decay}.")
        if batch_size is not None and batch_size < 1:
            raise PrecedentsError(f"batch_size must be >= 1 or None (full batch), got {batch_size}.")
        if optimizer not in ("sgd", "lbfgs"):
            raise PrecedentsError(f"optimizer must be 'sgd' or 'lbfgs', got {optimizer!r}.")
        if optimizer == "lbfgs" and batch_size is not None:
            raise PrecedentsError("optimizer='lbfgs' runs full batch: leave batch_size=None.")
        self.optimizer = optimizer
        self.model = model
        self._hold(X, y)
        self.steps, self.lr, self.weight_decay = int(steps), float(lr), float(weight_decay)
        self.batch_size, self.seed = batch_size, int(seed)
        self.loss_fn, self.forward_fn = loss_fn, forward_fn
        self._model_fingerprint = model_fingerprint(model)

    def settings(self) -> dict[str, Any]:
        return {"retrainer": f"warm-start-{self.optimizer}", "model": self._model_fingerprint, "steps": self.steps,
                "lr": self.lr,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size, "seed": self.seed,
                "optimizer": self.optimizer,
                "loss": callable_name(self.loss_fn) or "default", "forward": callable_name(self.forward_fn),
                "data": data_fingerprint(self.X, self.y)}

    def _batches(self) -> Iterator[torch.Tensor]:
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

    def retrain(self, keep_mask: torch.Tensor | None = None, *, X: Any = None, y: Any = None) -> nn.Module:
        keep = check_keep_mask(keep_mask, self.n_train)
        X_all, y_all = self._replaced(X, y)
        n_keep = int(keep.sum())
        model = copy.deepcopy(self.model).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise PrecedentsError("The model has no trainable parameters (requires_grad=True) to retrain.")
        dtype, device = params[0].dtype, params[0].device
        loss_fn = self.loss_fn or default_loss

        def objective(sel: torch.Tensor, denom: float) -> torch.Tensor:
            loss = torch.zeros((), dtype=dtype, device=device)
            if len(sel):
                x = X_all[sel].to(device)
                x = x.to(dtype) if x.is_floating_point() else x
                loss = loss_fn(call_model(model, x, self.forward_fn), y_all[sel].to(device)).sum() / denom
            if self.weight_decay:
                loss = loss + 0.5 * self.weight_decay * sum((p * p).sum() for p in params)
            return loss

        with torch.enable_grad():
            if self.optimizer == "lbfgs":
                kept = keep.nonzero()[:, 0]
                opt = torch.optim.LBFGS(params, lr=self.lr, max_iter=self.steps, tolerance_grad=1e-10,
                                        tolerance_change=0, history_size=50, line_search_fn="strong_wolfe")

                def closure() -> torch.Tensor:
                    opt.zero_grad(set_to_none=True)
                    loss = objective(kept, float(n_keep))
                    loss.backward()
                    return loss

                if self.steps:
                    opt.step(closure)
                grads = torch.autograd.grad(objective(kept, float(n_keep)), params)
                model.fit_info_ = {"gradient_norm": float(torch.cat([g.reshape(-1) for g in grads]).norm())}
                return model.eval()
            opt = torch.optim.SGD(params, lr=self.lr)
            batches = self._batches()
            for _ in range(self.steps):
                batch = next(batches)
                # unbiased for the mean over the kept examples: every kept example weighs the same
                opt.zero_grad(set_to_none=True)
                objective(batch[keep[batch]], len(batch) * n_keep / self.n_train).backward()
                opt.step()
        return model.eval()


def warm_start_retrainer(model: nn.Module, X: Any, y: Any, *, steps: int, lr: float, weight_decay: float,
                         batch_size: int | None = None, seed: int = 0, loss_fn: LossFn | None = None,
                         forward_fn: ForwardFn | None = None, optimizer: str = "sgd") -> WarmStartRetrainer:
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
    :func:`~precedents.evaluate.leave_one_out` does by default), which removes the drift of continued training
    from the truth.

    ``optimizer="lbfgs"``: full-batch L-BFGS (strong Wolfe line search, step ``lr``, at most ``steps``
    iterations) on the same J instead: a retrain to the optimum of the kept examples' objective, for a model
    already near the optimum of the full one (the returned model's ``fit_info_["gradient_norm"]`` is ``||grad
    J||`` at the end). Also a way to take a trained network to that optimum: ``retrain(None)``.
    """
    return WarmStartRetrainer(model, X, y, steps=steps, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                              seed=seed, loss_fn=loss_fn, forward_fn=forward_fn, optimizer=optimizer)


# ---------------------------------------------------------------------------------------------------------
# The head on frozen features
# ---------------------------------------------------------------------------------------------------------

class HeadRetrainer(Retrainer):
    r"""Refits only the final linear layer of a model on its frozen features: ``retrain(keep_mask, y=labels)``.

    The head (bias included, as the last feature column) is refit to the exact optimum of
    ``mean CE(F theta^T, y) + weight_decay/2 ||theta||^2`` over the kept examples (float64 Newton, warm-started
    from the given head, the solver of :func:`fit_logistic_regression`), the features ``F`` computed once by the
    model as it is (again for replaced inputs ``X``). A one-output sigmoid head is fit as the equivalent
    two-class softmax (``theta = theta_1 - theta_0`` with weight decay ``2 wd`` on the pair). Returns a predictor
    ``X -> logits`` (with ``.theta`` and ``.gradient_norm``). ``y``: the training labels (else give them to
    every ``retrain``). Sound for what it is: the feature map learned on the given labels is kept, so this
    measures what changing labels or examples does to the classifier on those features, not what retraining
    the whole network would do.
    """

    def __init__(self, model: Any, X: Any, weight_decay: float, *, y: Any = None, layer: str | None = None,
                 batch_size: int = 256, progress: bool = False, tol: float = 1e-10) -> None:
        from ..adapters import head_adapter

        if not weight_decay >= 0:
            raise PrecedentsError(f"weight_decay must be >= 0, got {weight_decay}.")
        self.model = model
        self.head = head_adapter(model, layer, batch_size=batch_size, progress=progress)
        if self.head.link not in ("softmax", "sigmoid"):
            raise PrecedentsError(f"Refitting on fixed labels fits a logistic head; this model's link is "
                                  f"{self.head.link!r} (a max-margin model), so the refit would not be the model's "
                                  "own objective. Use a softmax or sigmoid model.")
        self.X = X
        self.features = self._features(X)
        self.n_train = len(self.features)
        self.y = None if y is None else check_labels(y, self.head.n_classes, self.n_train)
        self.weight_decay, self.tol = float(weight_decay), float(tol)
        theta = self.head.theta().to(torch.float64)
        self.sigmoid = self.head.link == "sigmoid"
        self.theta0 = torch.cat([-theta / 2, theta / 2]) if self.sigmoid else theta

    def _features(self, X: Any) -> torch.Tensor:
        return self.head.run(self.head.batches(X, name="train"), what="training").features

    def settings(self) -> dict[str, Any]:
        return {"retrainer": "head-refit", "model": self.head.fingerprint(), "weight_decay": self.weight_decay,
                "tol": self.tol, "data": data_fingerprint(self.features, self.y)}

    def retrain(self, keep_mask: torch.Tensor | None = None, *, X: Any = None,
                y: Any = None) -> Callable[[Any], torch.Tensor]:
        keep = check_keep_mask(keep_mask, self.n_train)
        features = self.features if X is None else self._features(X)
        if len(features) != self.n_train:
            raise PrecedentsError(f"The replacement X has {len(features)} examples; the retrainer's training set "
                                  f"has {self.n_train}.")
        if y is None and self.y is None:
            raise PrecedentsError("HeadRetrainer needs the training labels: pass y= to the retrainer or to retrain.")
        labels = self.y if y is None else check_labels(y, self.head.n_classes, self.n_train)
        wd = 2 * self.weight_decay if self.sigmoid else self.weight_decay
        weights = None if bool(keep.all()) else keep.to(torch.float64)
        problem = _LogisticProblem(features, labels, self.theta0.shape[0], wd, weights)
        theta, gnorm, _ = problem.minimize(self.theta0.clone(), tol=self.tol, max_iter=100, factor=None)
        if self.sigmoid:
            theta = theta[1:] - theta[:1]
        head = self.head

        def predict(X: Any) -> torch.Tensor:
            return head.run(head.batches(X, name="X"), what="test").features @ theta.T

        predict.theta = theta                         # type: ignore[attr-defined]
        predict.gradient_norm = gnorm                 # type: ignore[attr-defined]
        return predict


# ---------------------------------------------------------------------------------------------------------
# From scratch: the user's training function
# ---------------------------------------------------------------------------------------------------------

class FromScratchRetrainer(Retrainer):
    """Retraining from scratch by the user's ``train_fn(X, y, seed) -> model`` on the kept examples.

    ``retrain(keep_mask)`` calls ``train_fn(X[keep], y[keep], seed)``: the same procedure and seed as the
    original training, so two retrains differ by the data (and by whatever nondeterminism ``train_fn`` has).
    ``X`` may be a tensor, a numpy array or a pandas DataFrame (rows selected with ``.iloc``); ``y`` (n,) labels.
    ``name`` (default: the function's qualified name) and ``params`` (its hyperparameters, JSON-able) are what a
    results file records of it: give them so that a results file tells two configurations apart. ``cache``:
    keep every model trained (by mask) and return it again for the same mask (a deterministic ``train_fn``
    asked twice, e.g. two experiments sharing the reference).
    """

    def __init__(self, train_fn: Callable[[Any, torch.Tensor, int], Any], X: Any, y: Any, *,
                 seed: int = 0, name: str | None = None, params: dict[str, Any] | None = None,
                 cache: bool = False) -> None:
        if not callable(train_fn):
            raise PrecedentsError(f"train_fn must be callable (X, y, seed) -> model, got {type(train_fn).__name__}.")
        self.train_fn = train_fn
        self.X = X if hasattr(X, "iloc") or isinstance(X, np.ndarray) else torch.as_tensor(X)
        self.y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).reshape(-1)
        if len(self.X) != len(self.y):
            raise PrecedentsError(f"X and y have different lengths: {len(self.X)} and {len(self.y)}.")
        if len(self.y) == 0:
            raise PrecedentsError("The training set is empty.")
        self.n_train, self.seed = len(self.y), int(seed)
        self.name = name or callable_name(train_fn)
        self.params = dict(params or {})
        self.cache: dict[bytes, Any] | None = {} if cache else None

    def settings(self) -> dict[str, Any]:
        return {"retrainer": "from-scratch", "train_fn": self.name, "params": self.params, "seed": self.seed,
                "data": data_fingerprint(_as_hashable(self.X), self.y)}

    def retrain(self, keep_mask: torch.Tensor | None = None, *, X: Any = None, y: Any = None) -> Any:
        keep = check_keep_mask(keep_mask, self.n_train)
        X_all = self.X if X is None else X
        y_all = self.y if y is None else torch.as_tensor(y).reshape(-1)
        if len(X_all) != self.n_train or len(y_all) != self.n_train:
            raise PrecedentsError(f"The replacement X / y have {len(X_all)} / {len(y_all)} examples; this retrainer's "
                                  f"training set has {self.n_train}.")
        key = keep.numpy().tobytes() if self.cache is not None and X is None and y is None else None
        if key is not None and key in self.cache:
            return self.cache[key]
        if bool(keep.all()):
            model = self.train_fn(X_all, y_all, self.seed)
        else:
            model = self.train_fn(_rows(X_all, keep), y_all[keep], self.seed)
        if key is not None:
            self.cache[key] = model
        return model


def _rows(X: Any, keep: torch.Tensor) -> Any:
    """The kept rows of a tensor, array or DataFrame."""
    if hasattr(X, "iloc"):
        return X.iloc[keep.numpy()]
    if isinstance(X, np.ndarray):
        return X[keep.numpy()]
    return X[keep.to(X.device)]


def _as_hashable(X: Any) -> Any:
    """A tensor standing for X in a fingerprint (a DataFrame by pandas' row hashes)."""
    if hasattr(X, "iloc"):
        import pandas as pd

        return torch.from_numpy(pd.util.hash_pandas_object(X, index=True).to_numpy().view(np.int64).copy())
    return X
