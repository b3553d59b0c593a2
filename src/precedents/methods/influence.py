r"""Influence functions (Koh & Liang, ICML 2017) with exact, CG, LiSSA and Arnoldi inverse-Hessian solvers.

For the training objective ``J(theta) = (1/n) sum_i l_i(theta) + (weight_decay / 2) ||theta||^2`` (over the
chosen parameters) at its optimum, removing training example i moves the parameters by about
``(1/n) H^-1 grad l_i`` with ``H = hess J + damping I``, so the loss of test point t changes by

    score(t, i) = (1/n) grad l_t^T H^-1 grad l_i          (nats of test loss)

the predicted *increase* of the test loss if example i were removed and the model retrained: positive = the
example helps the test prediction (a proponent), negative = it hurts it. Sign convention as everywhere in
precedents.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .._validation import PrecedentsError, check_labels
from ..adapters import head_adapter
from ..adapters.torch import ForwardFn
from ..attribution import Attribution
from ..data import DataLike
from ..linalg import head_hessian, head_hvp, loss_derivatives, squared_hinge_losses, targets_from_labels
from ..linalg.functional import LossFn, LossGradients, loss_for_link, select_parameters
from ..linalg.ihvp import InverseHVP, make_inverse
from .base import Estimator, collect_labelled

#: Training gradients are kept in memory when n * p float64 values fit in this many bytes.
GRADIENT_CACHE_BYTES = 1024**3
LABELS_HINT = "Pass (X, y), fit(X, y) or a Dataset of (x, y)."
#: Warn when ||grad J|| exceeds this fraction of the root-mean-square per-example gradient norm.
STATIONARITY_WARNING = 1e-2


class HeadCurvature:
    """Loss gradients and Hessian of a linear head on fixed features (closed form, no autograd).

    ``probs`` is the curvature input of :func:`~precedents.linalg.head.loss_derivatives`: the probabilities for
    softmax and sigmoid heads, the weight ``2 * 1[s z < 1]`` for a squared-hinge head (LinearSVC).
    """

    def __init__(self, features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, theta: torch.Tensor,
                 link: str, weight_decay: float | torch.Tensor, sample_size: int = 1000) -> None:
        self.features, self.link, self.theta = features, link, theta
        # a scalar, or one strength per head entry (C, d): 0 where a parameter (an intercept) is not penalised
        self.weight_decay = weight_decay
        self._decay_flat = torch.as_tensor(weight_decay, dtype=torch.float64).expand(theta.shape).reshape(-1)
        self.targets = targets_from_labels(labels, theta.shape[0])
        self.residuals, self.probs = loss_derivatives(logits, self.targets, link)
        self.n_params = theta.numel()
        self.sample_size = sample_size

    def example_gradients(self, start: int, stop: int) -> torch.Tensor:
        r, f = self.residuals[start:stop], self.features[start:stop]
        return (r[:, :, None] * f[:, None, :]).reshape(stop - start, -1)

    def hvp(self, vectors: torch.Tensor) -> torch.Tensor:
        v = vectors.reshape(len(vectors), *self.theta.shape)
        out = head_hvp(self.features, self.probs, v, self.link).reshape(len(vectors), -1)
        return out + self._decay_flat * vectors

    def sample_hvp(self, vectors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(self.features), (min(self.sample_size, len(self.features)),), generator=generator)
        v = vectors.reshape(len(vectors), *self.theta.shape)
        out = head_hvp(self.features[idx], self.probs[idx], v, self.link).reshape(len(vectors), -1)
        return out + self._decay_flat * vectors

    def hessian(self) -> torch.Tensor:
        hess = head_hessian(self.features, self.probs, self.link)
        return hess + torch.diag(self._decay_flat)

    def mean_gradient(self) -> torch.Tensor:
        return self.residuals.T @ self.features / len(self.features) + (self._decay_flat * self.theta.reshape(-1)
                                                                          ).reshape(self.theta.shape)


class ModuleCurvature:
    """Loss gradients and Hessian-vector products of any parameters of a module (torch.func)."""

    def __init__(self, grads: LossGradients, X: torch.Tensor, y: torch.Tensor, sample_size: int = 256) -> None:
        self.grads, self.X, self.y = grads, X, y
        self.n_params = grads.n_params
        self.sample_size = sample_size

    def _batches(self, idx: torch.Tensor | None = None):
        X, y = (self.X, self.y) if idx is None else (self.X[idx], self.y[idx])
        for s in range(0, len(X), self.grads.batch_size):
            yield X[s:s + self.grads.batch_size], y[s:s + self.grads.batch_size]

    def example_gradients(self, start: int, stop: int) -> torch.Tensor:
        blocks = [b for b in self.grads.gradient_blocks(self._batches(torch.arange(start, stop)))]
        return torch.cat(blocks)

    def hvp(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.grads.hvp(vectors, self._batches(), len(self.X))

    def sample_hvp(self, vectors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(self.X), (min(self.sample_size, len(self.X)),), generator=generator)
        return self.grads.hvp(vectors, self._batches(idx), len(idx))

    def hessian(self) -> torch.Tensor:
        p = self.n_params
        if p > 20000:
            raise PrecedentsError(f"solver='exact' needs the explicit {p} x {p} Hessian: too large. Use 'cg', "
                                  "'lissa' or 'arnoldi', or params='head'.")
        eye = torch.eye(p, dtype=torch.float64)
        return torch.cat([self.hvp(eye[s:s + 256]) for s in range(0, p, 256)])

    def mean_gradient(self) -> torch.Tensor:
        return self.grads.mean_gradient(self._batches(), len(self.X))


class InfluenceFunction(Estimator):
    r"""Koh & Liang's influence of removing a training example on a test point's loss.

    Parameters
    ----------
    model : the trained classifier (logits out).
    params : ``"head"`` (the final linear layer, bias included; closed-form gradients and Hessian),
        ``"all"`` (every trainable parameter, through torch.func), or a list of parameter names.
    solver : ``"exact"``, ``"cg"``, ``"lissa"``, ``"arnoldi"``, or ``"kfac"`` / ``"ekfac"`` (Kronecker-factored
        Gauss-Newton of every nn.Linear / nn.Conv2d, with ``params="all"``; per-layer damping 0.1 x its mean
        eigenvalue added to ``damping``) (see :mod:`precedents.linalg.ihvp`).
    damping : added to the Hessian (``H + damping I``); needed for non-convex models.
    weight_decay : the L2 strength the model was trained with, objective ``mean loss + wd/2 ||theta||^2`` over
        ``params``; it belongs in the Hessian. None reads it from the model where the adapter knows it
        (scikit-learn estimators: ``C``, ``alpha``), else 0; the value used is ``weight_decay_`` (a number, a
        (C, d) tensor for ``params="head"``, or ``{parameter name: strength}`` for other params of a model whose
        adapter knows it, e.g. an MLPClassifier's coefficients but not its intercepts).
    loss_fn : per-example loss ``loss_fn(logits, y) -> (b,)``; default cross-entropy (binary for one output), or
        the squared hinge for a squared-hinge head (scikit-learn's LinearSVC; scores then in squared-margin units).
    solver_options : keyword options of the solver (``tol``/``max_iter`` for cg; ``scale``, ``depth``,
        ``repeats``, ``seed`` for lissa; ``rank``, ``iterations``, ``seed`` for arnoldi; ``damping_factor``,
        ``fisher``, ``seed`` for kfac and ekfac).

    ``attribute(X, y).scores[t, i]`` = predicted increase of test loss t (nats) if training example i were
    removed. ``self_influence()`` = ``(1/n) g_i^T H^-1 g_i``. After ``fit``: ``stationarity_`` (the norm of the
    objective's gradient at the given parameters; influence assumes 0; a warning is issued when it exceeds 1% of
    the RMS per-example gradient norm, ``relative_stationarity_``, which catches a forgotten ``weight_decay``),
    ``solver_.info`` (condition number, residual or iterations).
    """

    method_name = "influence"

    def __init__(self, model: Any, params: str | list[str] = "head", solver: str = "cg", damping: float = 0.0,
                 weight_decay: float | None = None, *, layer: str | None = None, loss_fn: LossFn | None = None,
                 solver_options: dict[str, Any] | None = None, batch_size: int = 256, progress: bool = True,
                 forward_fn: ForwardFn | None = None) -> None:
        self.model = model
        self.params = params
        self.solver = solver
        self.damping = damping
        self.weight_decay = weight_decay
        self.layer = layer
        self.loss_fn = loss_fn
        self.solver_options = solver_options
        self.batch_size = batch_size
        self.progress = progress
        self.forward_fn = forward_fn

    @property
    def _closed_form(self) -> bool:
        return self.params == "head" and self.loss_fn is None

    def fit(self, train: DataLike, y: Any = None) -> InfluenceFunction:
        head = head_adapter(self.model, self.layer, forward_fn=self.forward_fn, batch_size=self.batch_size,
                            progress=self.progress)
        self.head_ = head
        batches = head.batches(train, y, name="train", require_labels=True)
        weight_decay = self.weight_decay
        if weight_decay is None:
            weight_decay = head.weight_decay(batches.n_examples)
            weight_decay = 0.0 if weight_decay is None else weight_decay
        self.weight_decay_ = weight_decay
        if self._closed_form:
            run = head.run(batches, what="training")
            labels = check_labels(run.labels, head.n_classes, len(run.features))
            self.curvature_ = HeadCurvature(run.features, run.logits, labels, head.theta(), head.link, weight_decay)
            self.n_train_ = len(run.features)
        else:
            if head.model is None:
                raise PrecedentsError(f"params={self.params!r} differentiates through the model's parameters, which "
                                      f"a {type(self.model).__name__} does not have: use params='head'.")
            if self.weight_decay is None and hasattr(head, "parameter_weight_decay"):
                weight_decay = head.parameter_weight_decay(batches.n_examples)   # {parameter name: strength}
                self.weight_decay_ = weight_decay
            elif not isinstance(weight_decay, (int, float)):
                raise PrecedentsError("A per-entry weight decay applies to params='head' only; pass a number.")
            self.torch_model_ = head.model
            X, labels = collect_labelled(batches, head.model, self.forward_fn, "training", LABELS_HINT)
            layer = head.layer_name if self.params == "head" else None
            names = select_parameters(head.model, self.params, layer)
            grads = LossGradients(head.model, names, loss_fn=self.loss_fn or loss_for_link(head.link),
                                  forward_fn=self.forward_fn, weight_decay=weight_decay,
                                  batch_size=self.batch_size, progress=self.progress)
            self.curvature_ = ModuleCurvature(grads, X, labels)
            self.n_train_ = len(X)
        self.labels_ = labels
        self.stationarity_ = float(self.curvature_.mean_gradient().norm())
        self.solver_: InverseHVP = make_inverse(self.solver, self.curvature_, self.damping,
                                                **(self.solver_options or {}))
        self._gradient_cache = None
        if self.n_train_ * self.curvature_.n_params * 8 <= GRADIENT_CACHE_BYTES and not self._closed_form:
            self._gradient_cache = self.curvature_.example_gradients(0, self.n_train_)
        sample = self._train_gradients(0, min(self.n_train_, 256))        # RMS gradient norm, estimated
        self.relative_stationarity_ = self.stationarity_ / max(float(sample.pow(2).sum(1).mean().sqrt()), 1e-300)
        if self.relative_stationarity_ > STATIONARITY_WARNING:
            warnings.warn(
                f"The model is not at a stationary point of the objective described (||grad J|| = "
                f"{self.stationarity_:.2e}, {self.relative_stationarity_:.1%} of a typical example's gradient): "
                "influence functions assume the optimum. Pass the weight_decay the model was trained with, train "
                "to convergence, or read the scores as a local approximation.", RuntimeWarning, stacklevel=2)
        return self

    def _train_gradients(self, start: int, stop: int) -> torch.Tensor:
        if self._gradient_cache is not None:
            return self._gradient_cache[start:stop]
        return self.curvature_.example_gradients(start, stop)

    def test_gradients(self, X: DataLike, y: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example loss gradients (k, p), losses (k,) and labels (k,) of test points."""
        if y is None and not isinstance(X, (tuple, list)):
            raise PrecedentsError("Influence is a loss-based method: attribute(X, y) needs the test labels y "
                                  "(the labels whose loss is explained; use the predictions to explain them).")
        batches = self.head_.batches(X, y, name="X", require_labels=True)
        if self._closed_form:
            run = self.head_.run(batches, what="test")
            labels = check_labels(run.labels, self.head_.n_classes, len(run.features))
            cur = HeadCurvature(run.features, run.logits, labels, self.curvature_.theta, self.curvature_.link, 0.0)
            grads = cur.example_gradients(0, len(run.features))
            probs = cur.probs
            if cur.link == "squared_hinge":
                losses = squared_hinge_losses(run.logits, cur.targets)
            elif cur.link == "sigmoid":
                p = probs[:, 0].clamp(1e-300, 1)
                losses = -(labels * p.log() + (1 - labels) * (1 - p).clamp_min(1e-300).log())
            else:
                losses = -probs.gather(1, labels[:, None])[:, 0].clamp_min(1e-300).log()
            return grads, losses, labels
        Xt, labels = collect_labelled(batches, self.torch_model_, self.forward_fn, "test", LABELS_HINT)
        g = self.curvature_.grads
        grads = torch.cat(list(g.gradient_blocks(((Xt[s:s + self.batch_size], labels[s:s + self.batch_size])
                                                  for s in range(0, len(Xt), self.batch_size)), desc="test")))
        with torch.no_grad():
            losses = g._losses(g.params, *g._prepare(Xt, labels)).to(torch.float64)
        return grads, losses, labels

    def attribute(self, X: DataLike, y: Any = None) -> Attribution:
        """Scores (n_test, n_train): predicted increase of each test loss if each training example were removed."""
        self._check_fitted()
        grads, losses, labels = self.test_gradients(X, y)
        solved = self.solver_.solve(grads)                    # H^-1 g_t
        n = self.n_train_

        def score_block(start: int, stop: int) -> torch.Tensor:
            if hasattr(self.solver_, "example_dots") and self._gradient_cache is None:   # K-FAC: layer by layer
                return self.solver_.example_dots(solved, start, stop) / n
            return solved @ self._train_gradients(start, stop).T / n

        return Attribution(f"influence ({self.solver})", labels, losses, losses, n, score_block,
                           train_labels=self.labels_, units="loss")

    def self_influence(self) -> torch.Tensor:
        """``(1/n) g_i^T H^-1 g_i`` per training example (n,): how much each example's own loss would rise if
        it were left out. Larger = more unusual or possibly mislabelled (nats)."""
        self._check_fitted()
        out = torch.empty(self.n_train_, dtype=torch.float64)
        for s in range(0, self.n_train_, 512):
            stop = min(s + 512, self.n_train_)
            g = self._train_gradients(s, stop)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[s:stop] = (self.solver_.solve(g) * g).sum(1) / self.n_train_
        return out
