r"""Representer point methods: RPS-l2 (Yeh et al., NeurIPS 2018) and RPS-LJE (Sui et al., NeurIPS 2021).

Both write the logits of a linear head on penultimate features ``f`` as a sum over training examples,

    Phi(x_t)_c = sum_i  k(x_t, x_i)_c,

and report ``k(x_t, x_i)_c`` (logit units) as the score of training example i for test point t and class c.
Positive: the example supports the output (excitatory); negative: it opposes it (inhibitory).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
from torch import nn

from .._validation import PrecedentsError, check_choice, check_scalar
from ..adapters.torch import ForwardFn
from ..attribution import LOGIT, BlockScorer
from ..linalg import (
    HessianSolver,
    head_hvp,
    link_probabilities,
    loss_derivatives,
    mean_loss,
    mean_loss_gradient,
    minimize_newton_cg,
    targets_from_labels,
)
from ..linalg.head import ONE_OUTPUT_LINKS
from ..linalg.solvers import CONDITION_WARNING
from .base import HeadExplainer, check_common

#: RPS-LJE's ``damping="auto"``: the fractions of the Hessian's largest eigenvalue tried after 0, and the relative
#: training-logit gap between the explained head and the model that counts as faithful (see ``_choose_damping``).
AUTO_DAMPING_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
AUTO_FIDELITY_GAP = 0.1

log = logging.getLogger(__name__)


def _fit_l2_head(features: torch.Tensor, targets: torch.Tensor, theta0: torch.Tensor, link: str, l2: float,
                 gtol: float, max_iter: int):
    """Minimise ``mean CE(link(F W^T), T) + l2 ||W||^2`` over W (bias column included) by Newton-CG."""

    def objective(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = mean_loss(features, w, targets, link) + l2 * (w * w).sum()
        grad = mean_loss_gradient(features, w, targets, link) + 2 * l2 * w
        return value, grad

    def hvp_at(w: torch.Tensor):
        probs = link_probabilities(features @ w.T, link)
        return lambda v: head_hvp(features, probs, v, link) + 2 * l2 * v

    def preconditioner_at(w: torch.Tensor):
        """Inverse of the class-diagonal blocks F^T diag(p_c (1 - p_c)) F / n + 2 l2 I (block Jacobi)."""
        probs = link_probabilities(features @ w.T, link)
        weights = probs * (1 - probs)                                        # (n, C)
        blocks = torch.einsum("nc,nd,ne->cde", weights, features, features) / len(features)
        blocks = blocks + 2 * l2 * torch.eye(features.shape[1], dtype=blocks.dtype, device=blocks.device)
        factors = torch.linalg.cholesky(blocks)                              # (C, d, d)

        def apply(v: torch.Tensor) -> torch.Tensor:
            v3 = v.reshape(len(v), *w.shape)                                 # (k, C, d)
            solved = torch.cholesky_solve(v3.permute(1, 2, 0), factors)      # (C, d, k)
            return solved.permute(2, 0, 1).reshape(len(v), -1)
        return apply

    return minimize_newton_cg(objective, hvp_at, theta0, gtol=gtol, max_iter=max_iter,
                              preconditioner_at=preconditioner_at)


class RepresenterL2(HeadExplainer):
    r"""RPS-l2: representer points of a head refit with l2 regularisation (Yeh et al., NeurIPS 2018).

    Post hoc, the final layer is refit to the given model's own probabilities ``P`` (not the labels):

        W* = argmin_W (1/n) sum_i CE(softmax(f_i W^T), P_i) + l2 ||W||^2,

    with ``f_i`` the penultimate features plus a column of ones (the bias lives in W), solved by Newton-CG
    (block-Jacobi preconditioned) to gradient norm ``gtol`` (relative) from the start ``init``: ``"model"`` (the
    trained layer, default), ``"zeros"``, or ``"random"`` (Gaussian entries with the trained layer's standard
    deviation, seeded by ``random_state``). The objective is strictly convex, so every start reaches the same
    W* (up to ``gtol``); the option exists to check that (``precedents.evaluate.stability``).
    At the optimum ``W* = sum_i alpha_i f_i^T`` with

        alpha_i = (softmax(f_i W*^T) - P_i) / (-2 l2 n)     (n x C, ``alpha_``),

    so the refit head's logit for test point t and class c decomposes exactly into representer values
    ``alpha_ic f_i . f_t`` (logit units). A one-output sigmoid head works the same with the sigmoid link.

    Attributes after ``fit``: ``features_`` (n, d), ``labels_``, ``weights_`` (the refit head W*, (C, d)),
    ``alpha_`` (n, C), ``refit_`` (gradient norm, iterations, convergence), and ``fidelity()``.
    ``self_influence()`` uses the alpha of a head refit on the *given labels* (see its docstring).
    Registered as ``rps-l2``; scores in logit units, additive (they sum to the refit head's logit).
    """

    key = "rps-l2"
    measurement = LOGIT
    _state_arrays = ("weights", "alpha", "label_alpha")

    def __init__(self, model: nn.Module, layer: str | None = None, l2: float = 0.003, *, gtol: float = 1e-10,
                 max_iter: int = 200, init: str = "model", random_state: int = 0, batch_size: int = 256,
                 progress: bool = True, forward_fn: ForwardFn | None = None) -> None:
        super().__init__(model, layer, batch_size=batch_size, progress=progress, forward_fn=forward_fn)
        self.l2 = l2
        self.gtol = gtol
        self.max_iter = max_iter
        self.init = init
        self.random_state = random_state

    def _start(self) -> torch.Tensor:
        """The refit's starting head (C, d) chosen by ``init`` (see the class docstring)."""
        if self.init == "model":
            return self.theta_
        if self.init == "zeros":
            return torch.zeros_like(self.theta_)
        if self.init == "random":
            g = torch.Generator().manual_seed(int(self.random_state))
            noise = torch.randn(self.theta_.shape, generator=g, dtype=torch.float64).to(self.theta_)
            return noise * self.theta_.std()
        raise PrecedentsError(f"init must be 'model', 'zeros' or 'random', got {self.init!r}.")

    def _check_params(self) -> None:
        check_common(self)
        check_scalar("l2", self.l2, low=0.0, low_inclusive=False, why="the representer theorem needs an l2 penalty")
        check_scalar("gtol", self.gtol, low=0.0, low_inclusive=False)
        check_scalar("max_iter", self.max_iter, kind=int, low=1)
        check_scalar("random_state", self.random_state, kind=int)
        check_choice("init", self.init, ("model", "zeros", "random"))

    def _fit_head(self) -> None:
        if self.link_ == "squared_hinge":
            raise PrecedentsError("RPS-l2 refits a head to the model's own class probabilities, and a squared-hinge "
                                  "(max-margin, e.g. LinearSVC) model has none. Use RepresenterLJE or "
                                  "InfluenceFunction, which expand the model's own squared-hinge objective.")
        probs = link_probabilities(self.model_logits_, self.link_)
        result = _fit_l2_head(self.features_, probs, self._start(), self.link_, self.l2, self.gtol, self.max_iter)
        if not result.converged:
            warnings.warn(f"RPS-l2 refit stopped after {result.iterations} Newton steps with gradient norm "
                          f"{result.gradient_norm:.2e}; the decomposition holds only up to that residual.",
                          RuntimeWarning, stacklevel=3)
        self.weights_ = result.solution
        n = len(self.features_)
        self.alpha_ = (link_probabilities(self.features_ @ self.weights_.T, self.link_) - probs) / (-2 * self.l2 * n)
        self.label_alpha_ = None
        self.refit_ = {"gradient_norm": result.gradient_norm, "iterations": result.iterations,
                       "converged": result.converged}
        log.info("RPS-l2 refit: %d Newton steps, gradient norm %.2e", result.iterations, result.gradient_norm)

    def _info(self) -> dict[str, Any]:
        return {"refit": self.refit_}

    def _restore(self, info: dict[str, Any]) -> None:
        self.refit_ = info.get("refit", {})

    def _diagnostics(self) -> dict[str, Any]:
        return {**super()._diagnostics(), "l2": float(self.l2), "refit": dict(self.refit_)}

    def explained_head(self) -> torch.Tensor:
        self._check_fitted()
        return self.weights_

    def _test_side(self, features: torch.Tensor, column: torch.Tensor,
                   sign: torch.Tensor) -> tuple[BlockScorer, torch.Tensor]:
        train_f, alpha = self.features_, self.alpha_

        def score_block(start: int, stop: int) -> torch.Tensor:
            kernel = features @ train_f[start:stop].to(torch.float64).T          # (n_test, b)
            return kernel * alpha[start:stop].to(torch.float64)[:, column].T * sign[:, None]

        explained = sign * (features @ self.weights_.T).gather(1, column[:, None])[:, 0]
        return score_block, explained

    def _self_influence(self) -> torch.Tensor:
        r"""Label-aware self-influence for dataset debugging: ``|alpha^y_{i, y_i}|`` (n,), larger = check first.

        The post-hoc ``alpha_`` is fitted to the model's own outputs and never sees the labels, so it cannot
        reveal a flipped label. Following the seed's debugging experiment, a head is refit with the same l2
        objective on the *given labels* ``Y`` (one-hot), ``alpha^y = (softmax(F W_y^T) - Y) / (-2 l2 n)``, and
        the magnitude at each example's own label is returned (units: logit per unit feature similarity).
        """
        if self.label_alpha_ is None:
            targets = targets_from_labels(self.labels_, self.theta_.shape[0])
            result = _fit_l2_head(self.features_, targets, self.theta_, self.link_, self.l2, self.gtol,
                                  self.max_iter)
            n = len(self.features_)
            probs = link_probabilities(self.features_ @ result.solution.T, self.link_)
            self.label_alpha_ = (probs - targets) / (-2 * self.l2 * n)
        column = torch.zeros_like(self.labels_) if self.link_ in ONE_OUTPUT_LINKS else self.labels_
        return self.label_alpha_.gather(1, column[:, None])[:, 0].abs()


class RepresenterLJE(HeadExplainer):
    r"""RPS-LJE: representer points by local Jacobian expansion (Sui, Wu & Sanner, NeurIPS 2021).

    No l2 refit: the given head Theta (C, d, bias as last column) is explained through a first-order Taylor
    expansion of the training-loss gradient around a nearby anchor, generalised here from the authors'
    binary code to softmax heads:

        Theta_hat = Theta + step * grad_Theta L(Theta)         (one step of gradient *ascent*, true labels)
        H         = Hessian of the mean training loss at Theta_hat (+ damping * I)
        g_i       = grad of example i's loss at Theta_hat = (p_i - y_i) f_i^T
        alpha_i   = (Theta_hat - H^+ g_i) / n                   (C x d per example, ``alpha_``)
        score(t, i, c) = (alpha_i f_t)_c                         (logit units)

    Summing over i gives ``(Theta_hat - H^+ g_bar) f_t``: one Newton step back from the anchor. When the given
    head is a stationary point of the training loss (``stationarity_`` ~ 0), the anchor's Newton step lands
    on Theta (exactly, for the quadratic model) and the decomposition explains the given model; otherwise it
    explains the Newton-corrected head, and ``fidelity()`` says how far that is from the model.

    H is singular for softmax (a shift shared by all classes changes nothing), so ``damping == 0`` uses the
    Moore-Penrose pseudo-inverse (solves on the range of H). A well-trained network's head is badly
    conditioned (at 100% training accuracy the smallest non-null eigenvalues approach 1e-8): the condition
    number is kept in ``hessian_condition_`` and a warning is issued above ``CONDITION_WARNING``; damping
    shrinks the correction ``H^+ g_i`` along weak-curvature directions, trading faithfulness (the sum no longer
    reproduces the Newton step) for stable, smaller scores.
    ``weight_decay``: the l2 strength the head was trained with, objective ``J = mean loss + 1/2 sum wd * Theta^2``
    (a number, or a (C, d) tensor with 0 where an entry such as an intercept is not penalised); None reads it from
    the model where the adapter knows it (scikit-learn estimators: ``C``, ``alpha``), else 0; the value used is
    ``weight_decay_``. With it, the expansion is of J: the anchor ascends ``grad J``, ``H = hess L + diag(wd)``,
    and the Newton step ``Theta_hat - H^+ grad J(Theta_hat)`` splits as ``alpha_i = (A - H^+ g_i) / n`` with
    ``A = Theta_hat - H^+ (wd * Theta_hat)`` (the penalty's part, shared by every example), so the scores still
    add up to one Newton step from the anchor and reproduce the model at a stationary point of J.
    (Before ``weight_decay`` existed, ``damping=wd`` was the suggested approximation: on MNIST 1 vs 7 logistic
    regression it lifts the correlation with leave-one-out retraining from 0.60 to 0.9987.)

    ``solver``: ``"auto"`` (exact eigendecomposition while C d <= 3000, else conjugate gradients), ``"exact"``
    or ``"cg"``. Scores are computed test-side, ``(Theta_hat f_t)_c / n - <g_i, H^+ (e_c (x) f_t)> / n``, so only
    one solve per test point is needed; ``alpha_`` materialises all n (C x d) matrices on demand.
    """

    key = "rps-lje"
    measurement = LOGIT
    _state_arrays = ("anchor",)

    def __init__(self, model: nn.Module, layer: str | None = None, step: float = 0.01,
                 damping: float | str = "auto", *,
                 weight_decay: float | None = None, solver: str = "auto", cg_tol: float = 1e-10,
                 batch_size: int = 256, progress: bool = True, forward_fn: ForwardFn | None = None) -> None:
        super().__init__(model, layer, batch_size=batch_size, progress=progress, forward_fn=forward_fn)
        self.step = step
        self.damping = damping
        self.weight_decay = weight_decay
        self.solver = solver
        self.cg_tol = cg_tol

    def _check_params(self) -> None:
        check_common(self)
        check_scalar("step", self.step, low=0.0)
        if self.damping != "auto":
            check_scalar("damping", self.damping, low=0.0, why="damping is added to the Hessian: pass 'auto' or a "
                         "number >= 0")
        check_choice("solver", self.solver, ("auto", "exact", "cg"))
        check_scalar("cg_tol", self.cg_tol, low=0.0, low_inclusive=False)

    def _regularizer(self) -> torch.Tensor | None:
        """The (C, d) l2 strength of the training objective (``weight_decay``, else the adapter's), or None."""
        wd = self.weight_decay
        if wd is None:
            wd = self.head_.weight_decay(self.n_train_)
        if wd is None:
            return None
        wd = torch.as_tensor(wd, dtype=torch.float64).expand(self.theta_.shape).clone()
        if (wd < 0).any() or not torch.isfinite(wd).all():
            raise PrecedentsError(f"weight_decay must be finite and >= 0, got {self.weight_decay!r}.")
        return wd if (wd > 0).any() else None

    def _fit_head(self) -> None:
        targets = targets_from_labels(self.labels_, self.theta_.shape[0])
        grad = mean_loss_gradient(self.features_, self.theta_, targets, self.link_)
        self.weight_decay_ = self._regularizer()
        if self.weight_decay_ is not None:
            grad = grad + self.weight_decay_ * self.theta_
        self.stationarity_ = float(grad.norm())
        self.anchor_ = self.theta_ + self.step * grad
        self._restore({"fitting": True})

    def _restore(self, info: dict[str, Any]) -> None:
        targets = targets_from_labels(self.labels_, self.theta_.shape[0])
        self.stationarity_ = info.get("stationarity", getattr(self, "stationarity_", float("nan")))
        # residuals and curvature input (probabilities; for a squared-hinge head the weights 2 * 1[s z < 1])
        self.residuals_, probs = loss_derivatives(self.features_ @ self.anchor_.T, targets, self.link_)
        self.weight_decay_ = getattr(self, "weight_decay_", None) if info.get("fitting") else self._regularizer()
        self._choose_damping(probs, info)
        self.hessian_condition_ = self.solver_.condition_number
        self._anchor_head, self.correction_, self.explained_head_ = self._expansion(self.solver_)
        if self.hessian_condition_ > CONDITION_WARNING:
            warnings.warn(
                f"RPS-LJE: the head's Hessian has condition number {self.hessian_condition_:.2e} (damping "
                f"{self.damping_:g}); scores along its weakest directions are amplified by up to that factor. "
                "Consider damping='auto' and compare with fidelity().", RuntimeWarning, stacklevel=4)

    def _expansion(self, solver: HessianSolver) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A, H^+ grad J(Theta_hat), Theta_hat - H^+ grad J(Theta_hat))``: the part of alpha_i every example
        shares (A = Theta_hat without the penalty's share), the Newton correction, and the explained head."""
        mean_grad = self.residuals_.T @ self.features_ / len(self.features_)
        shared = self.anchor_
        if self.weight_decay_ is not None:
            penalty_grad = self.weight_decay_ * self.anchor_
            mean_grad = mean_grad + penalty_grad
            shared = self.anchor_ - solver.solve(penalty_grad[None])[0]
        correction = solver.solve(mean_grad[None])[0]
        return shared, correction, self.anchor_ - correction

    def _logit_gap(self, head: torch.Tensor) -> float:
        """Mean absolute difference between ``head``'s training logits and the model's, relative to the model's
        mean absolute logit (both centred across classes for softmax, where a shared shift changes nothing)."""
        explained, logits = self.features_ @ head.T, self.model_logits_
        if self.link_ == "softmax":
            explained = explained - explained.mean(1, keepdim=True)
            logits = logits - logits.mean(1, keepdim=True)
        return float((explained - logits).abs().mean() / logits.abs().mean().clamp_min(1e-300))

    def _choose_damping(self, probs: torch.Tensor, info: dict[str, Any]) -> None:
        """Build the Hessian solver with the damping asked for; ``"auto"`` picks the least damping that keeps the
        decomposition faithful to the given model.

        The expansion explains the head one Newton step from the anchor. Where the given head is not a stationary
        point of the training loss (a tree ensemble's head, a network trained with early stopping or Adam) or the
        Hessian is ill conditioned, that step leaves the model: the explained head's logits differ from the
        model's, and the scores then explain another model. ``damping="auto"`` tries ``0`` (the paper's exact
        form) and then ``AUTO_DAMPING_GRID`` times the Hessian's largest eigenvalue, in increasing order, and keeps
        the first whose explained head reproduces the model's training logits to within
        ``AUTO_FIDELITY_GAP`` (10%, mean absolute difference relative to the mean absolute logit); if none does,
        the one with the smallest gap. Damping is a trust region on the Newton step: large damping tends to
        gradient similarity on the head. The choice, the reason and every gap tried are in ``diagnostics()``; a
        loaded index reuses the damping chosen at fit time; ``damping=0`` is the paper's exact form.
        """
        def build(damping: float) -> HessianSolver:
            return HessianSolver(self.features_, probs, self.link_, damping=damping, method=self.solver,
                                 cg_tol=self.cg_tol, regularizer=self.weight_decay_)

        self.damping_path_: list[dict[str, float]] = info.get("damping_path", [])
        if "damping" in info:
            self.damping_ = float(info["damping"])
            self.damping_reason_ = info.get("damping_reason", "")
            self.undamped_condition_ = info.get("undamped_condition") or math.nan
            self.solver_ = build(self.damping_)
            return
        if self.damping != "auto":
            self.damping_ = float(self.damping)
            self.damping_reason_ = "given"
            self.solver_ = build(self.damping_)
            self.undamped_condition_ = self.solver_.condition_number if self.damping_ == 0 else math.nan
            return
        solver = build(0.0)
        self.undamped_condition_ = solver.condition_number
        top = solver.largest_eigenvalue
        best: tuple[float, float, HessianSolver] | None = None
        for fraction in (0.0, *AUTO_DAMPING_GRID):
            if fraction:
                if not math.isfinite(top):
                    break
                solver = build(fraction * top)
            gap = self._logit_gap(self._expansion(solver)[2])
            self.damping_path_.append({"damping": fraction * top if fraction else 0.0, "fraction": fraction,
                                       "train_logit_gap": gap, "condition": _finite_or_none(solver.condition_number)})
            if best is None or gap < best[1]:
                best = (fraction * top if fraction else 0.0, gap, solver)
            if gap <= AUTO_FIDELITY_GAP and solver.condition_number <= CONDITION_WARNING:
                best = (fraction * top if fraction else 0.0, gap, solver)
                break
        self.damping_, gap, self.solver_ = best
        if self.damping_ == 0:
            self.damping_reason_ = (f"auto: undamped, the explained head reproduces the model's training logits "
                                    f"to {gap:.1%} (the paper's exact form)")
        else:
            self.damping_reason_ = (f"auto: {self.damping_ / top:g} x the largest eigenvalue {top:.3e}, the least "
                                    f"damping whose explained head reproduces the model's training logits to "
                                    f"{gap:.1%} (undamped: {self.damping_path_[0]['train_logit_gap']:.1%}, "
                                    f"condition number {self.undamped_condition_:.2e}); damping=0 gives the paper's "
                                    "exact form")

    def _info(self) -> dict[str, Any]:
        return {"stationarity": self.stationarity_, "damping": self.damping_, "damping_reason": self.damping_reason_,
                "undamped_condition": _finite_or_none(self.undamped_condition_), "damping_path": self.damping_path_}

    def _diagnostics(self) -> dict[str, Any]:
        return {**super()._diagnostics(), "step": float(self.step), "damping": self.damping_,
                "damping_reason": self.damping_reason_, "hessian_condition": _finite_or_none(self.hessian_condition_),
                "undamped_hessian_condition": _finite_or_none(self.undamped_condition_),
                "damping_path": self.damping_path_, "train_logit_gap": self._logit_gap(self.explained_head_),
                "stationarity": float(self.stationarity_),
                "weight_decay": None if self.weight_decay_ is None else float(self.weight_decay_.max())}

    def explained_head(self) -> torch.Tensor:
        self._check_fitted()
        return self.explained_head_

    def _train_gradients(self, start: int, stop: int) -> torch.Tensor:
        """Per-example loss gradients ``g_i = r_i f_i^T`` at the anchor, flattened to (b, C d)."""
        r = self.residuals_[start:stop]
        f = self.features_[start:stop].to(torch.float64)
        return (r[:, :, None] * f[:, None, :]).reshape(stop - start, -1)

    def _solve_targets(self, features: torch.Tensor, column: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Test-side quantities: ``(Theta_hat f_t)_c / n`` and ``H^+ (e_c (x) f_t)`` flattened, per test point."""
        n = len(self.features_)
        n_out, d = self.anchor_.shape
        rhs = torch.zeros(len(features), n_out, d, dtype=torch.float64)
        rhs[torch.arange(len(features)), column] = features.to(torch.float64)
        solved = self.solver_.solve(rhs).reshape(len(features), -1)
        anchor_term = (features @ self._anchor_head.T).gather(1, column[:, None])[:, 0] / n
        return anchor_term, solved

    def _test_side(self, features: torch.Tensor, column: torch.Tensor,
                   sign: torch.Tensor) -> tuple[BlockScorer, torch.Tensor]:
        n = len(self.features_)
        anchor_term, solved = self._solve_targets(features, column)

        def score_block(start: int, stop: int) -> torch.Tensor:
            return sign[:, None] * (anchor_term[:, None] - solved @ self._train_gradients(start, stop).T / n)

        explained = sign * (features @ self.explained_head_.T).gather(1, column[:, None])[:, 0]
        return score_block, explained

    @property
    def alpha_(self) -> torch.Tensor:
        """All representer matrices ``alpha_i = (A - H^+ g_i) / n`` (A = Theta_hat without weight decay), shape
        (n, C, d). O(n C d) memory."""
        self._check_fitted()
        n = len(self.features_)
        blocks = [self._anchor_head[None] - self.solver_.solve(self._train_gradients(s, min(s + 2048, n))).reshape(
            -1, *self.anchor_.shape) for s in range(0, n, 2048)]
        return torch.cat(blocks) / n

    def _self_influence(self) -> torch.Tensor:
        r"""``|(alpha_i f_i)_{y_i}|`` (n,): each example's representer value on itself at its own label.

        The anchor's gradient and the g_i use the given labels, so a mislabelled example that the model does
        not fit stands out. Ranked by absolute value, as the authors do for dataset debugging (logit units). For
        debugging, the paper's undamped expansion (``damping=0``, :func:`precedents.evaluate.mislabel`'s default)
        ranks flipped labels better than the fidelity-chosen ``damping="auto"``: ROC AUC 0.84 against 0.67 on German
        credit with XGBoost and 5% flips (tests/test_trees.py).
        """
        self._check_fitted()
        n = len(self.features_)
        one_output = self.link_ in ONE_OUTPUT_LINKS
        column = torch.zeros_like(self.labels_) if one_output else self.labels_
        sign = (self.labels_.double() * 2 - 1) if one_output else torch.ones(n, dtype=torch.float64)
        out = torch.empty(n, dtype=torch.float64)
        for start in range(0, n, 2048):
            stop = min(start + 2048, n)
            anchor_term, solved = self._solve_targets(self.features_[start:stop], column[start:stop])
            own = (solved * self._train_gradients(start, stop)).sum(dim=1) / n
            out[start:stop] = sign[start:stop] * (anchor_term - own)
        return out.abs()


def _finite_or_none(value: float) -> float | None:
    """A float for JSON: None for NaN or infinity."""
    return float(value) if math.isfinite(value) else None
