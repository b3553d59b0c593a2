r"""TRAK: attributing with random projections of the margin's gradients (Park et al., ICML 2023).

For each model m of an ensemble (checkpoints, or independently trained models), with the classification margin
``f(x, y) = log p_y / (1 - p_y) = z_y - log sum_{c != y} e^{z_c}`` (``(2y - 1) z`` for a one-output head):

    phi_i = P^T grad_theta f(x_i, y_i)          (k features; P a seeded p x k random projection)
    Phi   = [phi_1; ...; phi_n]                 (n x k),     Q_i = 1 - p_{y_i}(x_i)
    tau(t, i) = mean_m [phi_t (Phi^T Phi + ridge I)^-1 phi_i] * mean_m Q_i

(the kernel solved in float64). For logistic regression with the identity projection this is the one-step Newton
estimate of leave-one-out with the Hessian's weights ``p (1 - p)`` dropped: removing i changes the test margin by
about ``-tau(t, i)``. So ``tau(t, i) > 0``: example i *supports* the test point's margin for the explained class
(its removal would lower it), the sign convention of precedents. Units: logit margin (nats of log-odds), up to the
approximation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import PrecedentsError, check_choice, check_scalar
from ..adapters import head_adapter
from ..adapters.torch import ForwardFn
from ..attribution import Attribution, Measurement
from ..data import DataLike
from ..linalg.functional import LossGradients, select_parameters
from ..linalg.kfac import LayerRecorder, kronecker_layers
from ..linalg.projection import KroneckerProjection, RandomProjection
from .base import Explainer, check_common, collect_labelled

Checkpoint = dict | nn.Module | Callable[[], Any]

#: TRAK: the explained class's margin log p / (1 - p) at the test point.
MARGIN = Measurement("test margin", "logit margin log p / (1 - p) (nats of log-odds), to first order",
                     "positive: the training example raises the test point's margin for the explained class "
                     "(removing it would lower it: it supports the prediction; a proponent)")


def margin_output(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example margin ``log p_y / (1 - p_y)`` (logits units), the output function TRAK differentiates."""
    logits = logits if logits.ndim == 2 else logits.reshape(len(logits), -1)
    if logits.shape[-1] == 1:
        return (2 * y.to(logits.dtype) - 1) * logits[:, 0]
    correct = logits.gather(1, y.long()[:, None])[:, 0]
    others = logits.scatter(1, y.long()[:, None], float("-inf"))
    return correct - torch.logsumexp(others, dim=1)


class TRAK(Explainer):
    r"""TRAK attribution (Park et al. 2023) over an ensemble of models.

    Parameters
    ----------
    model : the trained classifier (logits out); it also fixes the architecture the checkpoints load into.
    projection_dim : k, the number of random features per model (capped at the number of parameters).
    checkpoints : None (the model alone), or a sequence of state dicts, modules, or zero-argument callables
        returning either (loaded one at a time): checkpoints of one training run or independently trained models.
        Scores are averaged over them; more models, more faithful (Park et al.: tens to hundreds).
    ridge : added to the kernel, as a fraction of its mean diagonal: ``Phi^T Phi + ridge * mean(diag) I``
        (1.0 by default: on the MNIST MLP of ``bench/lds_mnist.py``, one model, k = 512, the LDS on the margin was
        0.31 with ridge 0 or 1e-3, 0.39 at 0.3, 0.42 at 1, 0.40 at 3, 0.35 at 10; a larger ridge tends to
        gradient similarity weighted by 1 - p).
    params : ``"all"`` or a list of parameter names to differentiate.
    projection : ``"rademacher"`` or ``"gaussian"`` (dense, :class:`~precedents.linalg.projection.RandomProjection`,
        cost O(n p k)), or ``"kronecker"`` (structured per nn.Linear / nn.Conv2d layer,
        :class:`~precedents.linalg.projection.KroneckerProjection`: the per-example gradients are never formed,
        much faster; every differentiated parameter must belong to such a layer; dimension about k).
    seed : seed of the projection (one projection per model, seeded ``seed + m``).

    ``attribute(X, y).scores[t, i]`` = tau(t, i) (logit-margin units): positive = training example i supports
    test point t's margin for label ``y[t]`` (or ``target``; pass the predictions to explain those). Registered as
    ``trak``.
    """

    key = "trak"
    measurement = MARGIN
    loss_based = True          # it explains the margin of a given label (the training side is the true labels')

    def __init__(self, model: Any, projection_dim: int = 2048, checkpoints: Sequence[Checkpoint] | None = None, *,
                 ridge: float = 1.0, params: str | list[str] = "all", projection: str = "rademacher",
                 seed: int = 0, batch_size: int = 256, progress: bool = True,
                 forward_fn: ForwardFn | None = None) -> None:
        self.model = model
        self.projection_dim = projection_dim
        self.checkpoints = checkpoints
        self.ridge = ridge
        self.params = params
        self.projection = projection
        self.seed = seed
        self.batch_size = batch_size
        self.progress = progress
        self.forward_fn = forward_fn

    # -- models of the ensemble ------------------------------------------------------------------------
    def _models(self):
        """Yield each model of the ensemble (the worker copy is reused: one model in memory at a time)."""
        if self.checkpoints is None:
            yield self.torch_model_
            return
        if len(self.checkpoints) == 0:
            raise PrecedentsError("checkpoints is empty: pass None (the model alone) or at least one checkpoint.")
        worker = None
        for j, item in enumerate(self.checkpoints):
            value = item() if callable(item) and not isinstance(item, nn.Module) else item
            if isinstance(value, nn.Module):
                yield value
                continue
            if not isinstance(value, dict):
                raise PrecedentsError(f"checkpoints[{j}] is a {type(value).__name__}: pass a state dict, a module, or "
                                      "a callable returning one.")
            if worker is None:
                worker = copy.deepcopy(self.torch_model_)
            try:
                worker.load_state_dict(value)
            except RuntimeError as err:
                raise PrecedentsError(f"checkpoints[{j}] does not fit the model: {str(err).splitlines()[0]}") from err
            yield worker

    def _featurizer(self, model: nn.Module, m: int) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], int]:
        """``features(X, y) -> (n, k)`` (projected margin gradients, in the model's dtype) for model m, and k."""
        names = select_parameters(model, self.params, None)
        if self.projection == "kronecker":
            layers = kronecker_layers(model, names)
            proj = KroneckerProjection([(layer.out_dim, layer.in_dim) for layer in layers], self.projection_dim,
                                       seed=self.seed + m)
            return (lambda X, y: self._layer_features(model, layers, proj, X, y)), proj.dim
        grads = LossGradients(model, names, loss_fn=margin_output, forward_fn=self.forward_fn,
                              batch_size=self.batch_size, progress=False)
        k = min(self.projection_dim, grads.n_params)
        proj = RandomProjection(grads.n_params, k, seed=self.seed + m, kind=self.projection)

        def features(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = []
            for s in range(0, len(X), self.batch_size):
                g = grads.example_gradients(X[s:s + self.batch_size], y[s:s + self.batch_size])
                out.append(proj.project(g.to(grads.dtype)))
            return torch.cat(out)

        return features, k

    def _layer_features(self, model: nn.Module, layers: list, proj: KroneckerProjection, X: torch.Tensor,
                        y: torch.Tensor) -> torch.Tensor:
        """Kronecker-projected margin gradients from each layer's inputs and output gradients (hooks)."""
        forward = self.forward_fn or (lambda mod, x: mod(x))
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        rec = LayerRecorder(layers)
        was_training = model.training
        model.eval()
        out = []
        try:
            for s in range(0, len(X), self.batch_size):
                x = X[s:s + self.batch_size].to(device)
                x = x.to(dtype) if x.is_floating_point() else x
                with torch.enable_grad():
                    total = margin_output(forward(model, x), y[s:s + self.batch_size].to(device)).sum()
                    grads = torch.autograd.grad(total, [rec.outputs[k] for k in range(len(layers))],
                                                allow_unused=True)
                parts = []
                for k, g in enumerate(grads):
                    a = rec.inputs[k].to(dtype)
                    d = (rec.deltas(k, g) if g is not None else
                         torch.zeros(len(x), a.shape[1], layers[k].out_dim, dtype=torch.float64, device=device))
                    parts.append(proj.project_layer(k, d.to(dtype), a))
                out.append(torch.cat(parts, dim=1).cpu())
        finally:
            rec.close()
            model.train(was_training)
        return torch.cat(out)

    def _logits(self, model: nn.Module, X: torch.Tensor) -> torch.Tensor:
        forward = self.forward_fn or (lambda m, x: m(x))
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        out = []
        with torch.no_grad():
            for s in range(0, len(X), 1024):
                x = X[s:s + 1024].to(device)
                out.append(forward(model, x.to(dtype) if x.is_floating_point() else x).to(torch.float64).cpu())
        return torch.cat(out)

    # -- fitting ---------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        check_common(self)
        check_scalar("projection_dim", self.projection_dim, kind=int, low=1)
        check_scalar("ridge", self.ridge, low=0.0)
        check_scalar("seed", self.seed, kind=int)
        check_choice("projection", self.projection, ("rademacher", "gaussian", "kronecker"))

    def _fit(self, train: DataLike, y: Any) -> None:
        head = head_adapter(self.model, None, forward_fn=self.forward_fn, batch_size=self.batch_size,
                            progress=self.progress)
        if head.model is None:
            raise PrecedentsError(f"TRAK differentiates through the model's parameters, which a "
                                  f"{type(self.model).__name__} does not have.")
        self.head_ = head
        self.torch_model_ = head.model
        self.model_fingerprint_ = self._model_fingerprint()
        batches = head.batches(train, y, name="train", require_labels=True)
        self.data_fingerprint_ = head.data_fingerprint(batches)
        X, labels = collect_labelled(batches, head.model, self.forward_fn, "training",
                                     "Pass (X, y), fit(X, y) or a Dataset of (x, y).")
        self.labels_ = labels
        self.n_classes_ = head.n_classes
        features, solved, q_sum, conditions = [], [], torch.zeros(len(X), dtype=torch.float64), []
        models = self._models()
        for m, model in enumerate(tqdm(models, total=self._n_models(), desc="TRAK models", unit="model",
                                       disable=not self.progress, leave=False)):
            featurize, k = self._featurizer(model, m)
            phi = featurize(X, labels)
            kernel = phi.to(torch.float64).T @ phi.to(torch.float64)
            kernel += self.ridge * float(kernel.diagonal().mean()) * torch.eye(k, dtype=torch.float64)
            evals, evecs = torch.linalg.eigh(kernel)
            keep = evals > k * torch.finfo(torch.float64).eps * float(evals.max())
            conditions.append(float(evals.max() / evals[keep].min()))
            inv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T               # pseudo-inverse (PSD)
            features.append(phi)
            solved.append((phi.to(torch.float64) @ inv).to(phi.dtype))
            p = torch.sigmoid(margin_output(self._logits(model, X), labels))      # p_y = sigmoid(margin)
            q_sum += 1 - p
        self.features_, self.solved_ = features, solved
        self.n_models_ = len(features)
        self.q_ = q_sum / self.n_models_
        self.dim_ = features[0].shape[1]
        self.kernel_condition_ = max(conditions)
        self.n_train_ = len(X)

    def _n_models(self) -> int:
        return 1 if self.checkpoints is None else len(self.checkpoints)

    # -- attribution -----------------------------------------------------------------------------------
    def _attribute(self, X: DataLike, labels: Any, target: Any) -> Attribution:
        """Scores (n_test, n_train) in logit-margin units: positive = the training example supports the test
        point's margin for the explained label."""
        if labels is None and target is not None:
            labels = target
        if labels is None and not isinstance(X, tuple):        # not reached through attribute(): it asks for labels
            xs = [torch.as_tensor(x) for x, _ in self.head_.batches(X, None, name="X")]
            if not xs:
                raise PrecedentsError("X is empty: pass at least one test point.")
            Xt = torch.cat(xs)
            logits = self._logits(self.torch_model_, Xt)
            explained = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        else:                                                  # labels mapped through the model's adapter
            batches = self.head_.batches(X, labels, name="X", require_labels=True)
            Xt, explained = collect_labelled(batches, self.torch_model_, self.forward_fn, "test",
                                             "Pass attribute(X, y): TRAK explains the margin of label y.")
            logits = self._logits(self.torch_model_, Xt)
        scores = torch.zeros(len(Xt), self.n_train_, dtype=torch.float64)
        for m, model in enumerate(self._models()):
            featurize, _ = self._featurizer(model, m)
            scores += (featurize(Xt, explained) @ self.solved_[m].T).to(torch.float64)
        scores = scores / self.n_models_ * self.q_
        output = margin_output(logits, explained)

        def score_block(start: int, stop: int) -> torch.Tensor:
            return scores[:, start:stop]

        return Attribution(method=self.key, target=explained, explained=output, model_output=output,
                           n_train=self.n_train_, score_block=score_block, train_labels=self.labels_,
                           measurement=self.measurement)

    def _self_influence(self) -> torch.Tensor:
        """``tau(i, i)`` per training example (n,), logit-margin units: the example's own leverage on its margin,
        weighted by ``1 - p``; large for unusual or mislabelled examples."""
        total = sum((phi * solved).sum(1).to(torch.float64) for phi, solved in zip(self.features_, self.solved_,
                                                                                    strict=True))
        return total / self.n_models_ * self.q_

    def _diagnostics(self) -> dict[str, Any]:
        """Cost and conditioning: projection dimension, models, ridge, kernel condition number, feature memory."""
        return {"projection_dim": int(self.dim_), "n_models": int(self.n_models_), "ridge": float(self.ridge),
                "projection": self.projection, "kernel_condition_number": float(self.kernel_condition_),
                "feature_megabytes": float(sum(f.numel() * f.element_size() * 2 for f in self.features_) / 2**20),
                "mean_one_minus_p": float(self.q_.mean())}

    # -- index -----------------------------------------------------------------------------------------
    @classmethod
    def _state_params(cls) -> tuple[str, ...]:
        return ("checkpoints",)

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        arrays: dict[str, torch.Tensor] = {"labels": self.labels_, "q": self.q_}
        for m in range(self.n_models_):
            arrays[f"features{m}"], arrays[f"solved{m}"] = self.features_[m], self.solved_[m]
        keys: list[str] = []
        if self.checkpoints is not None:
            for m, model in enumerate(self._models()):
                state = model.state_dict()
                keys = list(state)
                for j, key in enumerate(keys):
                    arrays[f"checkpoint{m}.{j}"] = state[key].detach().cpu().clone()
        return arrays, {"n_models": self.n_models_, "n_classes": self.n_classes_, "dim": self.dim_,
                        "kernel_condition": self.kernel_condition_, "from_checkpoints": self.checkpoints is not None,
                        "state_keys": keys}

    def _set_state(self, arrays: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        head = head_adapter(self.model, None, forward_fn=self.forward_fn, batch_size=self.batch_size,
                            progress=self.progress)
        self.head_, self.torch_model_ = head, head.model
        self.labels_, self.q_ = arrays["labels"], arrays["q"]
        self.n_models_, self.n_classes_, self.dim_ = int(info["n_models"]), int(info["n_classes"]), int(info["dim"])
        self.kernel_condition_ = float(info["kernel_condition"])
        self.features_ = [arrays[f"features{m}"] for m in range(self.n_models_)]
        self.solved_ = [arrays[f"solved{m}"] for m in range(self.n_models_)]
        if info.get("from_checkpoints"):
            keys = info["state_keys"]
            self.checkpoints = [{key: arrays[f"checkpoint{m}.{j}"] for j, key in enumerate(keys)}
                                for m in range(self.n_models_)]
        self.n_train_ = len(self.labels_)
