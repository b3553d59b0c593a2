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

import inspect
import math
import warnings
from typing import Any

import torch

from .._validation import PrecedentsError, check_choice, check_labels, check_scalar
from ..adapters import head_adapter
from ..adapters.torch import ForwardFn
from ..attribution import TEST_LOSS, Attribution
from ..data import DataLike
from ..linalg import head_hessian, head_hvp, loss_derivatives, squared_hinge_loss, targets_from_labels
from ..linalg.functional import LossFn, LossGradients, loss_for_link, select_parameters
from ..linalg.ihvp import SOLVERS, InverseHVP, make_inverse
from .base import Explainer, check_common, check_params_spec, collect_labelled

#: Training gradients are kept in memory when n * p float64 values fit in this many bytes.
GRADIENT_CACHE_BYTES = 1024**3
LABELS_HINT = "Pass (X, y), fit(X, y) or a Dataset of (x, y)."
#: Warn when ||grad J|| exceeds this fraction of the root-mean-square per-example gradient norm.
STATIONARITY_WARNING = 1e-2
#: ``damping="auto"`` through a network (params other than "head"), and CG's default iteration cap there: the
#: setting measured most faithful (LDS) on an MNIST MLP; a more exact inverse is less faithful (Bae et al. 2022).
AUTO_DAMPING_DEEP = 0.01
AUTO_CG_MAX_ITER_DEEP = 100


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


class InfluenceFunction(Explainer):
    r"""Koh & Liang's influence of removing a training example on a test point's loss.

    Parameters
    ----------
    model : the trained classifier (logits out).
    params : ``"head"`` (the final linear layer, bias included; closed-form gradients and Hessian),
        ``"all"`` (every trainable parameter, through torch.func), or a list of parameter names.
    solver : ``"exact"``, ``"cg"``, ``"lissa"``, ``"arnoldi"``, or ``"kfac"`` / ``"ekfac"`` (the Kronecker-factored
        Gauss-Newton Hessian of every nn.Linear / nn.Conv2d, layer by layer, eigenvalues corrected for EK-FAC; see
        :mod:`precedents.linalg.kfac`) (see :mod:`precedents.linalg.ihvp`).
    damping : added to the Hessian (``H + damping I``). ``"auto"`` (default): 0 when only the final linear layer
        is differentiated (the paper's exact form: the head's loss is convex; a singular Hessian is solved on its
        range), and ``AUTO_DAMPING_DEEP`` (0.01) when differentiating through a network (parameters before the
        final layer), whose Hessian is indefinite (the setting an outside measurement found most faithful on an
        MNIST MLP, LDS 0.66 with CG capped at 100 iterations; not rerun in bench/).
        For ``"kfac"`` / ``"ekfac"`` (a positive semi-definite Gauss-Newton matrix) ``"auto"`` is 0: each layer is
        damped by ``damping_factor`` (0.1) x its mean eigenvalue (kronfluence's heuristic); on the MNIST MLP a
        larger damping only lowered the LDS (K-FAC 0.608 at 0.1, 0.594 at 10, 0.561 at 30 x the mean eigenvalue).
        The value used is ``damping_`` and in ``diagnostics()``.
    weight_decay : the L2 strength the model was trained with, objective ``mean loss + wd/2 ||theta||^2`` over
        ``params``; it belongs in the Hessian. None reads it from the model where the adapter knows it
        (scikit-learn estimators: ``C``, ``alpha``), else 0; the value used is ``weight_decay_`` (a number, a
        (C, d) tensor for ``params="head"``, or ``{parameter name: strength}`` for other params of a model whose
        adapter knows it, e.g. an MLPClassifier's coefficients but not its intercepts).
    loss_fn : per-example loss ``loss_fn(logits, y) -> (b,)``; default cross-entropy (binary for one output), or
        the squared hinge for a squared-hinge head (scikit-learn's LinearSVC; scores then in squared-margin units).
    solver_options : keyword options of the solver (``tol``/``max_iter`` for cg; ``scale``, ``depth``,
        ``repeats``, ``seed`` for lissa; ``rank``, ``iterations``, ``seed`` for arnoldi; ``damping_factor``,
        ``fisher`` ("expected": the exact expectation over the model's labels, one backward pass per class,
        default; "sampled"; "empirical": the true labels) and ``seed`` for kfac and ekfac). Unknown options are
        refused. Through a network CG stops after ``max_iter=100`` unless given: a
        truncated solve is the more faithful answer there (Bae et al. 2022; measured in bench/).

    ``attribute(X, y).scores[t, i]`` = predicted increase of test loss t (nats) if training example i were
    removed, ``(1/n) g_t^T H^-1 g_i``. ``self_influence()`` = ``(1/n) g_i^T H^-1 g_i``. ``diagnostics()``:
    stationarity (the norm of the objective's gradient at the given parameters; influence assumes 0; a warning
    is issued when it exceeds 1% of the RMS per-example gradient norm, which catches a forgotten
    ``weight_decay``), the damping chosen, the solver's condition number, residual or iterations.
    Registered as ``influence-exact``, ``influence-cg``, ``influence-lissa``, ``influence-arnoldi``, and
    ``influence-kfac`` / ``influence-ekfac`` (with ``params="all"``).
    """

    measurement = TEST_LOSS
    loss_based = True

    def __init__(self, model: Any, params: str | list[str] = "head", solver: str = "cg",
                 damping: float | str = "auto", weight_decay: float | None = None, *, layer: str | None = None,
                 loss_fn: LossFn | None = None, solver_options: dict[str, Any] | None = None, batch_size: int = 256,
                 progress: bool = True, forward_fn: ForwardFn | None = None) -> None:
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
    def key(self) -> str:  # type: ignore[override]
        return f"influence-{self.solver}"

    @property
    def _closed_form(self) -> bool:
        return self.params == "head" and self.loss_fn is None

    def _check_params(self) -> None:
        check_common(self)
        check_choice("solver", self.solver, tuple(SOLVERS))
        if self.damping != "auto":
            check_scalar("damping", self.damping, low=0.0, why="added to the Hessian: 'auto' or a number >= 0")
        if self.weight_decay is not None and not isinstance(self.weight_decay, (torch.Tensor, dict)):
            check_scalar("weight_decay", self.weight_decay, low=0.0)
        check_params_spec(self.params)
        options = self.solver_options or {}
        if not isinstance(options, dict):
            raise PrecedentsError(f"solver_options must be a dict of the solver's options, got {options!r}.")
        allowed = [p for p in inspect.signature(SOLVERS[self.solver].__init__).parameters
                   if p not in ("self", "curvature", "damping")]
        unknown = [k for k in options if k not in allowed]
        if unknown:
            raise PrecedentsError(f"solver_options: {unknown[0]!r} is not an option of the {self.solver} solver; "
                                  f"its options are {', '.join(allowed)}.")
        for name, value in options.items():
            if name in ("depth", "repeats", "rank", "iterations", "max_iter"):
                check_scalar(f"solver_options[{name!r}]", value, kind=int, low=1, allow_none=name != "depth")
            elif name in ("tol", "scale"):
                check_scalar(f"solver_options[{name!r}]", value, low=0.0, low_inclusive=False,
                             allow_none=name == "scale")
            elif name == "seed":
                check_scalar("solver_options['seed']", value, kind=int)

    def _solver_options(self) -> dict[str, Any]:
        options = dict(self.solver_options or {})
        if getattr(self, "through_network_", False) and self.solver == "cg":
            options.setdefault("max_iter", AUTO_CG_MAX_ITER_DEEP)
        return options

    def _fit(self, train: DataLike, y: Any) -> None:
        head = head_adapter(self.model, self.layer, forward_fn=self.forward_fn, batch_size=self.batch_size,
                            progress=self.progress)
        self.head_ = head
        self.model_fingerprint_ = head.fingerprint()
        batches = head.batches(train, y, name="train", require_labels=True)
        weight_decay = self.weight_decay
        if weight_decay is None:
            weight_decay = head.weight_decay(batches.n_examples)
            weight_decay = 0.0 if weight_decay is None else weight_decay
        self.weight_decay_ = weight_decay
        if self._closed_form:
            run = head.run(batches, what="training")
            self.data_fingerprint_ = run.fingerprint
            labels = check_labels(run.labels, head.n_classes, len(run.features))
            self._features, self._logits = run.features, run.logits
            self.labels_ = labels
            self.n_train_ = len(run.features)
        else:
            if head.model is None:
                raise PrecedentsError(f"params={self.params!r} differentiates through the model's parameters, which "
                                      f"a {type(self.model).__name__} does not have: use params='head'.")
            if self.weight_decay is None and hasattr(head, "parameter_weight_decay"):
                self.weight_decay_ = head.parameter_weight_decay(batches.n_examples)   # {parameter name: strength}
            elif not isinstance(weight_decay, (int, float)):
                raise PrecedentsError("A per-entry weight decay applies to params='head' only; pass a number.")
            self.data_fingerprint_ = head.data_fingerprint(batches)
            X, labels = collect_labelled(batches, head.model, self.forward_fn, "training", LABELS_HINT)
            self._inputs = X
            self.labels_ = labels
            self.n_train_ = len(X)
        self._build(gradients=None)

    def _build(self, gradients: torch.Tensor | None) -> None:
        """Curvature, damping and solver from the stored training data (shared by fit and load)."""
        through_network = False
        if self._closed_form:
            self.curvature_ = HeadCurvature(self._features, self._logits, self.labels_, self.head_.theta(),
                                            self.head_.link, self.weight_decay_)
        else:
            module = self.head_.model
            names = select_parameters(module, self.params, self.head_.layer_name if self.params == "head" else None)
            head_names = set(select_parameters(module, "head", self.head_.layer_name))
            through_network = any(name not in head_names for name in names)
            grads = LossGradients(module, names, loss_fn=self.loss_fn or loss_for_link(self.head_.link),
                                  forward_fn=self.forward_fn, weight_decay=self.weight_decay_,
                                  batch_size=self.batch_size, progress=self.progress,
                                  head_layer=self.head_.layer_name if self.params == "head" else None)
            self.curvature_ = ModuleCurvature(grads, self._inputs, self.labels_)
        self.through_network_ = through_network
        if self.damping == "auto" and self.solver in ("kfac", "ekfac"):
            self.damping_ = 0.0
            self.damping_reason_ = ("auto: K-FAC's Gauss-Newton matrix is positive semi-definite; each layer is damped "
                                    "by damping_factor x its mean eigenvalue (kronfluence's heuristic) plus the "
                                    "weight decay")
        elif self.damping == "auto":
            self.damping_ = AUTO_DAMPING_DEEP if through_network else 0.0
            self.damping_reason_ = (f"auto: {AUTO_DAMPING_DEEP:g} through a network (an indefinite Hessian), the "
                                    "most faithful setting measured on an MNIST MLP" if through_network else
                                    "auto: only the final linear layer is differentiated, whose loss is convex: no "
                                    "damping (the paper's exact form)")
        else:
            self.damping_ = float(self.damping)
            self.damping_reason_ = "given"
        self.stationarity_ = float(self.curvature_.mean_gradient().norm())
        self.solver_: InverseHVP = make_inverse(self.solver, self.curvature_, self.damping_, **self._solver_options())
        self._gradient_cache = gradients
        if gradients is None and not self._closed_form and \
                self.n_train_ * self.curvature_.n_params * 8 <= GRADIENT_CACHE_BYTES:
            self._gradient_cache = self.curvature_.example_gradients(0, self.n_train_)
        sample = self._train_gradients(0, min(self.n_train_, 256))        # RMS gradient norm, estimated
        self.relative_stationarity_ = self.stationarity_ / max(float(sample.pow(2).sum(1).mean().sqrt()), 1e-300)
        if self.relative_stationarity_ > STATIONARITY_WARNING and gradients is None:
            warnings.warn(
                f"The model is not at a stationary point of the objective described (||grad J|| = "
                f"{self.stationarity_:.2e}, {self.relative_stationarity_:.1%} of a typical example's gradient): "
                "influence functions assume the optimum. Pass the weight_decay the model was trained with, train "
                "to convergence, or read the scores as a local approximation.", RuntimeWarning, stacklevel=4)

    def _train_gradients(self, start: int, stop: int) -> torch.Tensor:
        if self._gradient_cache is not None:
            return self._gradient_cache[start:stop]
        return self.curvature_.example_gradients(start, stop)

    def test_gradients(self, X: DataLike, y: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example loss gradients (k, p), losses (k,) and labels (k,) of test points."""
        self._check_fitted()
        batches = self.head_.batches(X, y, name="X", require_labels=True)
        if self._closed_form:
            run = self.head_.run(batches, what="test")
            labels = check_labels(run.labels, self.head_.n_classes, len(run.features))
            cur = HeadCurvature(run.features, run.logits, labels, self.curvature_.theta, self.curvature_.link, 0.0)
            grads = cur.example_gradients(0, len(run.features))
            probs = cur.probs
            if cur.link == "squared_hinge":
                losses = squared_hinge_loss(run.logits, cur.targets)
            elif cur.link == "sigmoid":
                p = probs[:, 0].clamp(1e-300, 1)
                losses = -(labels * p.log() + (1 - labels) * (1 - p).clamp_min(1e-300).log())
            else:
                losses = -probs.gather(1, labels[:, None])[:, 0].clamp_min(1e-300).log()
            return grads, losses, labels
        Xt, labels = collect_labelled(batches, self.head_.model, self.forward_fn, "test", LABELS_HINT)
        g = self.curvature_.grads
        grads = torch.cat(list(g.gradient_blocks(((Xt[s:s + self.batch_size], labels[s:s + self.batch_size])
                                                  for s in range(0, len(Xt), self.batch_size)), desc="test")))
        with torch.no_grad():
            losses = torch.cat([g.losses(Xt[s:s + self.batch_size], labels[s:s + self.batch_size])
                                for s in range(0, len(Xt), self.batch_size)]).to(torch.float64).cpu()
        return grads, losses, labels

    def _attribute(self, X: DataLike, labels: Any, target: Any) -> Attribution:
        """Scores (n_test, n_train): predicted increase of each test loss (nats) if each training example were
        removed."""
        grads, losses, labels = self.test_gradients(X, labels)
        solved = self.solver_.solve(grads)                    # H^-1 g_t
        n = self.n_train_

        def score_block(start: int, stop: int) -> torch.Tensor:
            if hasattr(self.solver_, "example_dots") and self._gradient_cache is None:   # K-FAC: layer by layer
                return self.solver_.example_dots(solved, start, stop) / n
            return solved @ self._train_gradients(start, stop).T / n

        return Attribution(method=self.key, target=labels, explained=losses, model_output=losses, n_train=n,
                           score_block=score_block, train_labels=self.labels_, measurement=self.measurement)

    def _self_influence(self) -> torch.Tensor:
        """``(1/n) g_i^T H^-1 g_i`` per training example (n,): how much each example's own loss would rise if
        it were left out. Larger = more unusual or possibly mislabelled (nats)."""
        out = torch.empty(self.n_train_, dtype=torch.float64)
        for s in range(0, self.n_train_, 512):
            stop = min(s + 512, self.n_train_)
            g = self._train_gradients(s, stop)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[s:stop] = (self.solver_.solve(g) * g).sum(1) / self.n_train_
        return out

    def _diagnostics(self) -> dict[str, Any]:
        info = {k: (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
                for k, v in self.solver_.info.items()}
        wd = self.weight_decay_
        return {"params": self.params if isinstance(self.params, str) else list(self.params),
                "solver": self.solver, "solver_info": info, "damping": self.damping_,
                "damping_reason": self.damping_reason_, "stationarity": self.stationarity_,
                "relative_stationarity": self.relative_stationarity_, "n_parameters": int(self.curvature_.n_params),
                "through_network": self.through_network_,
                "weight_decay": (float(torch.as_tensor(wd).max()) if not isinstance(wd, dict)
                                 else {k: float(v) for k, v in wd.items()})}

    # -- index -----------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        wd = self.weight_decay_
        info: dict[str, Any] = {"damping": self.damping_, "damping_reason": self.damping_reason_}
        arrays = {"labels": self.labels_}
        if isinstance(wd, dict):
            info["weight_decay"] = {k: float(v) for k, v in wd.items()}
        elif isinstance(wd, torch.Tensor):
            arrays["weight_decay"] = wd
        else:
            info["weight_decay"] = float(wd)
        if self._closed_form:
            arrays.update(features=self._features, logits=self._logits)
        else:
            arrays["inputs"] = self._inputs
            if self._gradient_cache is not None:
                arrays["train_gradients"] = self._gradient_cache
        return arrays, info

    def _set_state(self, arrays: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self.head_ = head_adapter(self.model, self.layer, forward_fn=self.forward_fn, batch_size=self.batch_size,
                                  progress=self.progress)
        self.labels_ = arrays["labels"]
        self.n_train_ = len(self.labels_)
        self.weight_decay_ = arrays["weight_decay"] if "weight_decay" in arrays else info["weight_decay"]
        if self._closed_form:
            self._features, self._logits = arrays["features"], arrays["logits"]
        else:
            self._inputs = arrays["inputs"]
        damping = self.damping
        self.damping = info["damping"]                   # the damping chosen at fit time, whatever "auto" gives now
        try:
            self._build(gradients=arrays.get("train_gradients"))
        finally:
            self.damping = damping
        self.damping_reason_ = info.get("damping_reason", self.damping_reason_)
