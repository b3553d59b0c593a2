r"""TracIn (Pruthi et al., NeurIPS 2020, the TracInCP variant) and the single-checkpoint gradient baselines.

TracInCP traces how much each training example's gradient steps moved a test point's loss over training,
using checkpoints ``theta_1 .. theta_K`` saved along the way and the learning rates ``lr_k`` in force there:

    score(t, i) = sum_k lr_k * grad l_t(theta_k) . grad l_i(theta_k)            (loss-gradient dot product)

``grad l`` is the gradient of the per-example loss (nats, default cross-entropy) with respect to the chosen
parameters, so a term has units of nats^2 per squared parameter unit times the learning rate. Read it as:
a gradient step of size ``lr_k`` on example i alone changes the test loss, to first order, by
``-lr_k g_t . g_i`` nats, so ``score(t, i)`` is the first-order *decrease* of test loss t credited to example i
(if ``lr_k`` is the per-example step actually taken, e.g. learning rate / batch size for a mean-loss minibatch
step, and each example was visited once per checkpoint interval). Positive = a step on i lowers test loss t =
i supports the model's output for t (a proponent); negative = an opponent. Same sign convention as
everywhere in precedents, and the same sign as the influence function's "loss increase if i were removed".

:class:`GradientSimilarity` is the one-checkpoint baseline at the model's own weights: grad-dot
(``g_t . g_i``, TracIn with the final weights and lr 1) and grad-cos (``g_t . g_i / (|g_t| |g_i|)``, in [-1, 1],
dimensionless).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .._validation import PrecedentsError, check_choice
from ..adapters import gradient_adapter
from ..adapters.torch import ForwardFn, TorchHead
from ..attribution import GRADIENT_COSINE, GRADIENT_DOT, Attribution, Measurement
from ..data import DataLike
from ..linalg.functional import LossFn, LossGradients, default_loss, loss_for_link, select_parameters
from .base import Explainer, check_common, check_params_spec, collect_labelled

#: Training gradients of one checkpoint are kept in memory when n * p float64 values fit in this many bytes;
#: otherwise they are recomputed for every block of training examples that is scored.
GRADIENT_CACHE_BYTES = 1024**3

#: Training examples per block when self-influence is computed without the gradient cache.
_SELF_BLOCK = 4096


# -- checkpoints ---------------------------------------------------------------------------------------------

def _load_checkpoint(source: Any, k: int) -> Mapping[str, torch.Tensor]:
    """A state dict from a mapping or a file path (``torch.load(..., map_location="cpu", weights_only=True)``)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise PrecedentsError(f"Checkpoint {k} ({path!r}) does not exist.")
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unpickling failure gets the same advice
            raise PrecedentsError(
                f"Checkpoint {k} ({path!r}) could not be loaded with torch.load(weights_only=True): {err}. "
                "Save checkpoints with torch.save(model.state_dict(), path), not the whole model.") from err
    if not isinstance(source, Mapping):
        raise PrecedentsError(f"Checkpoint {k} is a {type(source).__name__}; each checkpoint must be a state dict "
                              "(model.state_dict()) or the path of a file holding one.")
    return source


def _check_checkpoint(state: Mapping[str, Any], reference: Mapping[str, torch.Tensor], k: int) -> None:
    """Refuse a state dict whose keys or shapes differ from the model's, naming the first mismatching key."""
    wrapped = [key for key in ("state_dict", "model_state_dict", "model") if isinstance(state.get(key), Mapping)]
    hint = (f" It holds a nested dict under {wrapped[0]!r}: pass checkpoint[{wrapped[0]!r}] instead."
            if wrapped else "")
    for key, ref in reference.items():
        if key not in state:
            raise PrecedentsError(f"Checkpoint {k} does not match the model: it has no entry {key!r} "
                                  f"(the model's first key it lacks).{hint}")
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise PrecedentsError(f"Checkpoint {k} entry {key!r} is a {type(value).__name__}, not a tensor.")
        if tuple(value.shape) != tuple(ref.shape):
            raise PrecedentsError(f"Checkpoint {k} does not match the model: entry {key!r} has shape "
                                  f"{tuple(value.shape)}, the model's has shape {tuple(ref.shape)}. Was it saved "
                                  "from another architecture?")
    extra = [key for key in state if key not in reference]
    if extra:
        raise PrecedentsError(f"Checkpoint {k} does not match the model: it has an entry {extra[0]!r} that the "
                              f"model lacks ({len(extra)} such entries).{hint}")


class _Weights:
    """Runs the model at given weights without touching the user's model.

    The weights are loaded into a private deep copy (in eval mode: dropout off, batch-norm running statistics).
    If the model cannot be deep-copied, they are loaded into the model itself and its own state and train/eval
    modes are restored afterwards.
    """

    def __init__(self, model: nn.Module) -> None:
        try:
            self.model = copy.deepcopy(model).eval()
            self._in_place = False
        except Exception:  # a module that refuses deepcopy: load into it, restore after use
            self.model = model
            self._in_place = True

    @contextmanager
    def at(self, state: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
        own, modes = None, None
        if self._in_place:                               # the model's state and modes as they are now
            own = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
            modes = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
        try:
            with torch.no_grad():
                self.model.load_state_dict(state)
            yield self.model
        finally:
            if own is not None:
                with torch.no_grad():
                    self.model.load_state_dict(own)
                for module, training in modes:
                    module.training = training


# -- shared machinery ----------------------------------------------------------------------------------------

class _GradientScores(Explainer):
    """Scores ``sum_k c_k g_t(theta_k) . g_i(theta_k)`` over a list of weight states (TracIn, grad-dot/cos)."""

    measurement = GRADIENT_DOT
    loss_based = True
    _cosine = False

    def _states_and_rates(self) -> tuple[list[Mapping[str, torch.Tensor]], list[float]]:  # pragma: no cover
        """The validated weight states (state dicts) and the factor of each: the subclasses' inputs."""
        raise NotImplementedError

    def _check_params(self) -> None:
        check_common(self)
        check_params_spec(self.params)

    def _fit(self, train: DataLike, y: Any) -> None:
        """Store the training set and, when they fit in memory, the training gradients at every checkpoint."""
        adapter = gradient_adapter(self.model, type(self).__name__, batch_size=self.batch_size,
                                   progress=self.progress)
        self._setup(adapter)
        states, rates = self._states_and_rates()
        self.learning_rates_ = torch.tensor(rates, dtype=torch.float64)
        self.n_checkpoints_ = len(states)
        self._states = states
        self.model_fingerprint_ = adapter.fingerprint()
        batches = adapter.batches(train, y, name="train", require_labels=True)
        self.data_fingerprint_ = adapter.data_fingerprint(batches)
        with self._weights.at(states[-1]) as model:
            X, labels = collect_labelled(batches, model, self.forward_fn, "training",
                                         "Pass (X, y), fit(X, y), or a Dataset of (x, y).")
        self.train_inputs_, self.labels_ = X, labels
        self.n_train_ = len(X)
        self._cache: list[torch.Tensor] | None = None
        if self.n_train_ * self.n_params_ * 8 <= GRADIENT_CACHE_BYTES:
            self._cache = [self._gradients(k, X, labels, f"training gradients, checkpoint {k + 1}/{len(states)}")
                           for k in range(len(states))]
        self.train_norms_ = None
        if self._cosine:  # one checkpoint: |g_i|
            self.train_norms_ = self._squared_norms().sqrt()

    def _setup(self, adapter: Any) -> None:
        """The torch module, its loss, a private copy to load weight states into, and the parameters."""
        self.adapter_ = adapter
        self.module_ = adapter.model
        link = adapter.link
        self.loss_fn_ = self.loss_fn or (loss_for_link(link) if link is not None else default_loss)
        self._weights = _Weights(self.module_)
        layer = TorchHead(self.module_, self.layer).layer_name if self.params == "head" else None
        self.head_layer_ = layer
        self.param_names_ = select_parameters(self.module_, self.params, layer)
        named = dict(self.module_.named_parameters())
        self.n_params_ = sum(named[n].numel() for n in self.param_names_)

    # -- gradients -------------------------------------------------------------------------------------
    def _gradients(self, k: int, X: torch.Tensor, y: torch.Tensor, desc: str) -> torch.Tensor:
        """Per-example loss gradients (m, p), float64, at checkpoint k."""
        with self._weights.at(self._states[k]) as model:
            grads = LossGradients(model, self.param_names_, loss_fn=self.loss_fn_,
                                  forward_fn=self.forward_fn, batch_size=self.batch_size, progress=self.progress,
                                  head_layer=self.head_layer_)
            bs = self.batch_size
            blocks = grads.gradient_blocks(((X[s:s + bs], y[s:s + bs]) for s in range(0, len(X), bs)),
                                           total=len(X), desc=desc)
            return torch.cat(list(blocks))

    def _train_gradients(self, k: int, start: int, stop: int) -> torch.Tensor:
        if self._cache is not None:
            return self._cache[k][start:stop]
        return self._gradients(k, self.train_inputs_[start:stop], self.labels_[start:stop],
                               f"training gradients {start}:{stop}, checkpoint {k + 1}/{self.n_checkpoints_}")

    def _squared_norms(self) -> torch.Tensor:
        """``sum_k lr_k |g_i(theta_k)|^2`` per training example (n,)."""
        out = torch.zeros(self.n_train_, dtype=torch.float64)
        step = self.n_train_ if self._cache is not None else _SELF_BLOCK
        for start in range(0, self.n_train_, step):
            stop = min(start + step, self.n_train_)
            for k in range(self.n_checkpoints_):
                g = self._train_gradients(k, start, stop)
                out[start:stop] += self.learning_rates_[k] * (g * g).sum(1)
        return out

    def _loss_state(self) -> Mapping[str, torch.Tensor]:
        """The weights whose test losses are reported as ``model_output``."""
        return self.module_.state_dict()

    # -- attribution -----------------------------------------------------------------------------------
    def _attribute(self, X: DataLike, labels: Any, target: Any) -> Attribution:
        """Scores (n_test, n_train) of every training example for the loss of each test point's label.

        ``explained`` and ``model_output`` of the result are the test losses (nats) of the given model at
        its weights; the scores do not sum to them.
        """
        batches = self.adapter_.batches(X, labels, name="X", require_labels=True)
        with self._weights.at(self._loss_state()) as model:
            Xt, labels = collect_labelled(batches, model, self.forward_fn, "test",
                                          f"{type(self).__name__} explains a test loss: pass the test labels y.")
            g = LossGradients(model, self.param_names_, loss_fn=self.loss_fn_,
                              forward_fn=self.forward_fn, progress=False)
            bs = self.batch_size
            losses = torch.cat([g.losses(Xt[s:s + bs], labels[s:s + bs])
                                for s in range(0, len(Xt), bs)]).to(torch.float64).cpu()
        # test side with the learning rate folded in: lr_k g_t(theta_k), and for cosine g_t / |g_t|
        test = [self.learning_rates_[k] * self._gradients(k, Xt, labels, f"test gradients, checkpoint {k + 1}/"
                                                          f"{self.n_checkpoints_}")
                for k in range(self.n_checkpoints_)]
        if self._cosine:
            test = [g / g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny) for g in test]
        norms = self.train_norms_

        def score_block(start: int, stop: int) -> torch.Tensor:
            out = torch.zeros(len(Xt), stop - start, dtype=torch.float64)
            for k, gt in enumerate(test):
                out += gt @ self._train_gradients(k, start, stop).T
            if norms is not None:
                out /= norms[start:stop].clamp_min(torch.finfo(torch.float64).tiny)
            return out

        return Attribution(method=self.key, target=labels, explained=losses, model_output=losses,
                           n_train=self.n_train_, score_block=score_block, train_labels=self.labels_,
                           measurement=self.measurement)

    def _self_influence(self) -> torch.Tensor:
        """``sum_k lr_k |g_i(theta_k)|^2`` per training example (n,): the diagonal of the training-set grad-dot
        score matrix (for grad-cos too, whose own diagonal is identically 1 and ranks nothing). Large = the
        example kept pulling on the model (hard, unusual or mislabelled): check those first."""
        if self.train_norms_ is not None:
            return self.train_norms_ ** 2
        return self._squared_norms()

    def _diagnostics(self) -> dict[str, Any]:
        return {"params": self.params if isinstance(self.params, str) else list(self.params),
                "n_parameters": int(self.n_params_), "n_checkpoints": int(self.n_checkpoints_),
                "learning_rates": [float(r) for r in self.learning_rates_],
                "gradients_cached": self._cache is not None}

    # -- index -----------------------------------------------------------------------------------------
    @classmethod
    def _state_params(cls) -> tuple[str, ...]:
        return ("checkpoints",)

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        arrays: dict[str, torch.Tensor] = {"inputs": self.train_inputs_, "labels": self.labels_,
                                           "learning_rates": self.learning_rates_}
        keys = list(self._states[0])
        for k, state in enumerate(self._states):
            for j, key in enumerate(keys):
                arrays[f"checkpoint{k}.{j}"] = state[key]
            if self._cache is not None:
                arrays[f"gradients{k}"] = self._cache[k]
        return arrays, {"n_checkpoints": self.n_checkpoints_, "state_keys": keys}

    def _set_state(self, arrays: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        adapter = gradient_adapter(self.model, type(self).__name__, batch_size=self.batch_size,
                                   progress=self.progress)
        self._setup(adapter)
        keys = info["state_keys"]
        self.n_checkpoints_ = int(info["n_checkpoints"])
        self._states = [{key: arrays[f"checkpoint{k}.{j}"] for j, key in enumerate(keys)}
                        for k in range(self.n_checkpoints_)]
        for k, state in enumerate(self._states):
            _check_checkpoint(state, self.module_.state_dict(), k)
        self.learning_rates_ = arrays["learning_rates"]
        self.train_inputs_, self.labels_ = arrays["inputs"], arrays["labels"]
        self.n_train_ = len(self.labels_)
        cached = [arrays.get(f"gradients{k}") for k in range(self.n_checkpoints_)]
        self._cache = cached if all(c is not None for c in cached) else None
        self.train_norms_ = self._squared_norms().sqrt() if self._cosine else None


# -- the estimators ------------------------------------------------------------------------------------------

class TracIn(_GradientScores):
    r"""TracInCP (Pruthi et al., NeurIPS 2020): training-loss gradients against test-loss gradients, summed over
    checkpoints saved during training.

    Parameters
    ----------
    model : the classifier (logits out), used for its architecture (the checkpoints are loaded into a private
        copy; the model's own weights are never changed) and for the test losses reported as ``model_output``.
    checkpoints : list of state dicts (``model.state_dict()``) or paths of files holding one (loaded with
        ``torch.load(path, map_location="cpu", weights_only=True)``), saved during training; every key and
        shape must match ``model.state_dict()``. Kept in memory after ``fit``.
    params : ``"all"`` (every trainable parameter), ``"head"`` (the final linear layer, bias included) or a
        list of parameter names; gradients are taken with respect to these only.
    learning_rates : the learning rate in force at each checkpoint (same length as ``checkpoints``, or one
        number for all); default 1.0 for every checkpoint, which ranks examples the same way when the rate
        was constant but leaves the scale off by that rate.
    loss_fn : per-example loss ``loss_fn(logits, y) -> (b,)``; default cross-entropy (binary for one output).
    layer : dotted name of the final ``nn.Linear`` for ``params="head"`` (None: the last one registered).
    batch_size, progress : batching and progress bars of the gradient passes.
    forward_fn : ``forward_fn(model, x) -> logits`` for models whose forward needs it.

    ``attribute(X, y).scores[t, i]`` = ``sum_k lr_k g_t(theta_k) . g_i(theta_k)`` (units "loss-gradient dot
    product": nats^2 per squared parameter unit, times the learning rate): positive = gradient steps on i
    lowered test loss t (a proponent). ``self_influence()`` = ``sum_k lr_k |g_i(theta_k)|^2``, large for
    examples the model found hard (outliers, mislabelled). Gradients are taken in eval mode (dropout off).

    Training gradients are cached per checkpoint when ``n * p * 8`` bytes fit in ``GRADIENT_CACHE_BYTES``
    (1 GiB); otherwise they are recomputed for each block of training examples that is scored.
    """

    key = "tracin"

    def __init__(self, model: nn.Module, checkpoints: Sequence[Mapping[str, torch.Tensor] | str | os.PathLike],
                 params: str | list[str] = "all", *, learning_rates: Sequence[float] | float | None = None,
                 loss_fn: LossFn | None = None, layer: str | None = None, batch_size: int = 256,
                 progress: bool = True, forward_fn: ForwardFn | None = None) -> None:
        self.model = model
        self.checkpoints = checkpoints
        self.params = params
        self.learning_rates = learning_rates
        self.loss_fn = loss_fn
        self.layer = layer
        self.batch_size = batch_size
        self.progress = progress
        self.forward_fn = forward_fn

    def __repr__(self) -> str:
        params = self.get_params()
        ckpts = params.pop("checkpoints")
        try:
            shown = [c if isinstance(c, (str, os.PathLike)) else "<state dict>" for c in ckpts]
        except TypeError:
            shown = ckpts
        args = ", ".join([f"checkpoints={shown!r}"] + [f"{k}={v!r}" for k, v in params.items() if k != "forward_fn"])
        return f"TracIn({args})"

    def _states_and_rates(self) -> tuple[list[Mapping[str, torch.Tensor]], list[float]]:
        ckpts = self.checkpoints
        if isinstance(ckpts, (str, os.PathLike, Mapping)):
            ckpts = [ckpts]                                  # one checkpoint passed bare
        ckpts = list(ckpts) if ckpts is not None else []
        if not ckpts:
            raise PrecedentsError("TracIn needs at least one checkpoint: pass checkpoints=[state_dict, ...] or "
                                  "file paths, saved during training (e.g. once per epoch).")
        reference = self.module_.state_dict()
        states = []
        for k, source in enumerate(ckpts):
            state = _load_checkpoint(source, k)
            _check_checkpoint(state, reference, k)
            states.append(state)
        if self.learning_rates is None:
            rates = [1.0] * len(states)
        else:
            try:
                values = torch.as_tensor(self.learning_rates, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as err:
                raise PrecedentsError(f"learning_rates must be numbers, one per checkpoint: {err}") from err
            rates = [float(r) for r in values.flatten()] if values.ndim else [float(values)] * len(states)
            if values.ndim > 1 or len(rates) != len(states):
                raise PrecedentsError(f"learning_rates has {len(rates)} values but there are {len(states)} "
                                      "checkpoints: give the learning rate in force at each checkpoint (or one "
                                      "number for all).")
        bad = [r for r in rates if not math.isfinite(r) or r < 0]
        if bad:
            raise PrecedentsError(f"learning_rates must be finite and non-negative; got {bad[0]}.")
        return states, rates


class GradientSimilarity(_GradientScores):
    r"""Single-checkpoint gradient similarity at the model's weights: grad-dot and grad-cos.

    ``kind="dot"``: ``scores[t, i] = g_t . g_i`` (units "loss-gradient dot product"; equal to TracIn with the
    model's weights as the only checkpoint and learning rate 1). ``kind="cos"``: ``g_t . g_i / (|g_t| |g_i|)``,
    the cosine of the two loss gradients, in [-1, 1] and dimensionless (0 where a gradient is exactly zero).
    Positive = a gradient step on i would lower test loss t (a proponent). The weights are those the model has
    at ``fit`` (a snapshot; later changes to the model do not mix into the scores). Other parameters as
    :class:`TracIn`. ``self_influence()`` = ``|g_i|^2`` for both kinds (for cosine the diagonal is identically
    1, which ranks nothing).
    """

    def __init__(self, model: nn.Module, params: str | list[str] = "all", kind: str = "dot", *,
                 loss_fn: LossFn | None = None, layer: str | None = None, batch_size: int = 256,
                 progress: bool = True, forward_fn: ForwardFn | None = None) -> None:
        self.model = model
        self.params = params
        self.kind = kind
        self.loss_fn = loss_fn
        self.layer = layer
        self.batch_size = batch_size
        self.progress = progress
        self.forward_fn = forward_fn

    @property
    def key(self) -> str:  # type: ignore[override]
        return f"grad-{self.kind}"

    @property
    def measurement(self) -> Measurement:  # type: ignore[override]
        return GRADIENT_COSINE if self.kind == "cos" else GRADIENT_DOT

    def _check_params(self) -> None:
        check_choice("kind", self.kind, ("dot", "cos"))
        super()._check_params()

    @property
    def _cosine(self) -> bool:  # type: ignore[override]
        return self.kind == "cos"

    def _states_and_rates(self) -> tuple[list[Mapping[str, torch.Tensor]], list[float]]:
        if self.kind not in ("dot", "cos"):
            raise PrecedentsError(f"kind must be 'dot' or 'cos', got {self.kind!r}.")
        snapshot = {key: value.detach().clone() for key, value in self.module_.state_dict().items()}
        return [snapshot], [1.0]

    def _loss_state(self) -> Mapping[str, torch.Tensor]:
        return self._states[0]
