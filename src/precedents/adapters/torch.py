"""Head view of a PyTorch classifier whose last operation is an ``nn.Linear`` layer.

The head view is what every representer and last-layer method needs:

* ``phi(x)``: the input of the final linear layer, with a column of ones appended when the layer has a
  bias (so the bias lives in the weight matrix), shape ``(n, d)``;
* ``Theta``: the layer's weight with its bias as last column, shape ``(C, d)``, so ``logits = phi(x) Theta^T``;
* the link: ``softmax`` (cross-entropy) for ``C >= 2`` outputs, ``sigmoid`` (binary cross-entropy) for one.

The task hook ``forward_fn(model, x) -> logits`` (in the spirit of kronfluence's ``Task``): the one place where
a user tells precedents how a batch of inputs becomes the logits, for models whose ``forward`` takes extra
arguments, returns a tuple or a dict (a recurrent model's ``(logits, hidden)``, a Hugging Face output object),
or expects the batch in another layout. Every method calls it instead of ``model(x)``: the feature pass here
(the explained layer's input is captured by a forward hook while ``forward_fn`` runs, and its output must equal
what ``forward_fn`` returns), and the torch.func gradients and Hessian-vector products of influence and TracIn
(``forward_fn`` must then be a pure function of the parameters, as ``torch.func.functional_call`` requires).
Examples::

    forward_fn=lambda model, x: model(x)[0]                         # (logits, hidden) -> logits
    forward_fn=lambda model, x: model(input_ids=x).logits            # keyword arguments, output objects
    forward_fn=lambda model, x: model(x, lengths=torch.full((len(x),), 28))   # extra arguments

``x`` is one batch of the inputs exactly as given (a tensor of sequences, token ids...). A model returning a
tuple without a ``forward_fn`` gets a :class:`~precedents.PrecedentsError` that suggests one. Known limit of
torch.func on the CPU: per-example gradients through ``nn.LSTM`` work in float32 (with a slow fallback) but not
in float64, and ``nn.LSTM`` has no forward-mode AD, so ``params="all"`` influence (Hessian-vector products by
``jvp``) is refused with a clear error; ``params="head"`` (closed form) works for any model.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import PrecedentsError, all_finite, check_finite, check_scalar
from ..data import Batches, DataLike, Fingerprint, make_batches, model_fingerprint, target_indices
from ..linalg.head import link_for_outputs, n_classes_for_outputs

log = logging.getLogger(__name__)

ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass
class HeadFeatures:
    """Features and outputs of a pass over a dataset.

    ``features`` (n, d) float64 with the ones column; ``logits`` (n, C) the model's own outputs, float64;
    ``labels`` (n,) int64 or None; ``fingerprint`` a SHA-256 of inputs and labels.
    """

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor | None
    fingerprint: str


def _default_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear``, or a TorchScript module compiled from one."""
    return isinstance(module, nn.Linear) or (isinstance(module, torch.jit.ScriptModule)
                                             and getattr(module, "original_name", None) == "Linear")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the model computes in: that of its first floating parameter (or buffer)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (dropout off, batch norm on its running statistics), then restore the mode of
    every submodule exactly as it was."""
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield model
    finally:
        for m in training:
            m.training = True


def check_parameters_finite(model: nn.Module, what: str = "The model") -> None:
    """Refuse a model whose parameters or buffers hold NaN or infinite values (a diverged run, a corrupt
    checkpoint), naming them."""
    bad = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
           if (t.is_floating_point() or t.is_complex()) and not all_finite(t.detach())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise PrecedentsError(f"{what} has NaN or infinite weights ({shown}): training diverged or the checkpoint is "
                              "corrupt. Explain the weights saved before that happened.")


_INPUT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.EmbeddingBag, nn.RNNBase)


def _first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    for name, module in model.named_modules():
        if isinstance(module, _INPUT_LAYERS) or (isinstance(module, torch.jit.ScriptModule)
                                                 and getattr(module, "original_name", None) == "Linear"):
            return name, module
    return None


def describe_expected_input(model: nn.Module, x: Any) -> str:
    """What the model's first layer expects, compared with the batch ``x``; a hint when the mismatch has a
    usual cause (one example without the batch axis, images into an MLP, integer pixels into a float model)."""
    found = _first_layer(model)
    if found is None:
        return ""
    name, layer = found
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else None
    floating = isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())
    hints = []
    if isinstance(layer, (nn.Embedding, nn.EmbeddingBag)):
        expect = f"integer token ids < {layer.num_embeddings}"
        if floating:
            hints.append("Pass the token ids as an integer tensor (X.long()).")
    elif isinstance(layer, nn.RNNBase):
        layout = "(n, length, features)" if layer.batch_first else "(length, n, features)"
        expect = f"sequences {layout} with {layer.input_size} features per step, in floating point"
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        dims = {nn.Conv1d: "L", nn.Conv2d: "H, W", nn.Conv3d: "D, H, W"}[type(layer)]
        expect = f"inputs of shape (n, {layer.in_channels}, {dims}) in floating point"
        if shape is not None and len(shape) == len(dims.split(",")) + 1 and layer.in_channels == 1:
            hints.append("The channel axis is missing: pass X[:, None].")
    else:
        d = layer.in_features
        expect = f"inputs of shape (n, {d}) in floating point"
        if shape is not None and len(shape) == 1:
            hints.append(f"The inputs are 1-D, one number per example: if they are one example without the batch "
                         f"axis, pass X[None] (shape (1, {d})).")
        elif shape is not None and len(shape) > 2 and math.prod(shape[1:]) == d:
            hints.append(f"The model takes flat vectors: pass X.reshape(len(X), -1) (shape ({shape[0]}, {d})).")
        elif shape is not None and len(shape) >= 2 and shape[-1] != d:
            per = math.prod(shape[1:])
            hints.append(f"The data have {per} values per example, the model's first layer {d}: these are not the "
                         "features the model was trained on (another dataset, a missing or extra column, images "
                         "into a model for other inputs?).")
    if isinstance(x, torch.Tensor) and not floating and not isinstance(layer, (nn.Embedding, nn.EmbeddingBag)):
        hints.append(f"The inputs are {str(x.dtype).replace('torch.', '')} integers but the model computes in "
                     f"{str(model_dtype(model)).replace('torch.', '')}: convert them the way the training data "
                     "was, e.g. X.float() / 255 for 0-255 pixel values.")
    return f" Its first layer {name!r} ({type(layer).__name__}) expects {expect}. " + " ".join(hints)


def _the_inputs(what: str) -> str:
    return f"the {what} inputs" if what else "the inputs"


def run_model(model: nn.Module, x: Any, forward_fn: ForwardFn, what: str = "") -> Any:
    """``forward_fn(model, x)``; an error from inside the model (wrong shape or dtype of the inputs) becomes a
    :class:`PrecedentsError` naming the given and the expected input."""
    try:
        return forward_fn(model, x)
    except PrecedentsError:
        raise
    except (RuntimeError, TypeError, IndexError, ValueError, AttributeError) as err:
        given = (f"of shape {tuple(x.shape)} ({str(x.dtype).replace('torch.', '')})" if isinstance(x, torch.Tensor)
                 else f"of type {type(x).__name__}")
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PrecedentsError(f"The model could not run on {_the_inputs(what)} {given}: {first}."
                              f"{describe_expected_input(model, x)}".rstrip()) from err


def check_model_output(out: Any, n: int, what: str = "") -> torch.Tensor:
    """The model's logits as (n, C): refuses a non-tensor, and an output whose first axis is not the batch."""
    if isinstance(out, (tuple, list)) or not isinstance(out, torch.Tensor):
        raise PrecedentsError(
            f"The model returned a {type(out).__name__}, not a logits tensor. Pass "
            "forward_fn=lambda model, x: model(x)[0] (or whatever selects the logits)."
        )
    if out.ndim == 0 or out.ndim > 2 or out.shape[0] != n:
        raise PrecedentsError(
            f"The model returned an output of shape {tuple(out.shape)} for a batch of {n} {what + ' ' if what else ''}"
            f"examples; it must "
            f"return logits of shape ({n}, C) (or ({n},) for one output). Check that the inputs have the batch "
            "axis first (one example x is passed as x[None])."
        )
    return out.reshape(n, -1)


def refuse_probabilities(out: torch.Tensor, last_module: nn.Module | None = None) -> None:
    """Refuse outputs that are probabilities (a model ending in softmax or sigmoid): the methods' losses and
    logits are those of the scores before the link. ``last_module``: the last module the forward pass ran."""
    ends_in = type(last_module).__name__ if isinstance(last_module, (nn.Softmax, nn.Sigmoid, nn.Softmin)) else None
    rows = out.detach().reshape(len(out), -1).to(torch.float64)
    if ends_in is None and rows.shape[1] >= 2 and len(rows):
        tol = 1e-3 if out.dtype in (torch.float16, torch.bfloat16) else 1e-5
        if bool((rows >= 0).all()) and bool(((rows.sum(1) - 1).abs() <= tol * rows.shape[1]).all()):
            ends_in = "softmax (every row is non-negative and sums to 1)"
    if ends_in is not None:
        raise PrecedentsError(f"The model's outputs are probabilities: it ends in {ends_in}. precedents needs the "
                              "logits (the scores before softmax/sigmoid): explain a model, or pass a forward_fn, "
                              "that returns them; the training loss is computed from them.")


def probe_logits(model: nn.Module, x: Any, forward_fn: ForwardFn | None = None, what: str = "") -> torch.Tensor:
    """The model's logits (n, C) on a few examples ``x``, run as every method runs it: floating inputs cast to the
    model's dtype and device, eval mode (restored after), no gradients. A failure inside the model (wrong shape or
    dtype of the inputs) or an output that is not (n, C) logits gets a :class:`PrecedentsError` naming the given
    and the expected input."""
    x = torch.as_tensor(x)
    x = x.to(model_dtype(model)) if x.is_floating_point() else x
    for p in model.parameters():
        x = x.to(p.device)
        break
    with torch.no_grad(), eval_mode(model):
        out = run_model(model, x, forward_fn or _default_forward, what)
    return check_model_output(out, len(x), what)


def check_gradient_model(model: nn.Module, x_probe: Any, forward_fn: ForwardFn | None = None, *,
                         head_layer: str | None = None, require_logits: bool = True, what: str = "") -> None:
    """The checks the head path makes, for methods that differentiate the loss through the model (influence over
    all parameters, TracIn, gradient similarity), run on a few examples ``x_probe`` in eval mode:

    * finite weights and buffers;
    * the model runs on the inputs (else a clear error on shape/dtype) and returns (n, C) logits;
    * with ``require_logits`` (the built-in cross-entropy and squared hinge, which take logits): the outputs are
      not probabilities (no final softmax/sigmoid); a custom loss may take what it likes;
    * with ``head_layer``: that layer's output is the model's output (the head is the last operation).
    """
    check_parameters_finite(model)
    order: list[tuple[nn.Module, Any]] = []
    head_out: list[torch.Tensor] = []
    handles = []
    if not isinstance(model, torch.jit.ScriptModule):
        modules = dict(model.named_modules())
        for module in modules.values():
            if not list(module.children()):
                handles.append(module.register_forward_hook(lambda m, i, o: order.append((m, o))))
        if head_layer is not None and head_layer in modules:
            handles.append(modules[head_layer].register_forward_hook(lambda m, i, o: head_out.append(o)))
    try:
        out = probe_logits(model, x_probe, forward_fn, what)
    finally:
        for h in handles:
            h.remove()
    if not all_finite(out):
        raise PrecedentsError(f"The model's outputs on {_the_inputs(what)} are NaN or infinite: check the inputs' "
                              "scale and the weights.")
    last = None
    if order and isinstance(order[-1][1], torch.Tensor) and order[-1][1].numel() == out.numel():
        last = order[-1][0] if torch.equal(order[-1][1].reshape(out.shape).to(out.dtype), out) else None
    if require_logits:
        refuse_probabilities(out, last)
    if head_layer is not None and head_out:
        layer_out = head_out[-1].reshape(len(out), -1)
        if len(head_out) != 1 or layer_out.shape != out.shape or not torch.allclose(
                layer_out.float(), out.float(), rtol=1e-4, atol=1e-4):
            raise PrecedentsError(f"The output of layer {head_layer!r} is not the model's output: the explained head "
                                  "must be the last operation on the logits (it ran "
                                  f"{len(head_out)} time(s)). Explain a wrapper that returns its output.")


class LinkFromOutputs:
    """The link and class count every head derives from its number of outputs: one output is a sigmoid head over
    two classes, C >= 2 outputs a softmax head over C classes."""

    n_outputs: int

    @property
    def link(self) -> str:
        return link_for_outputs(self.n_outputs)

    @property
    def n_classes(self) -> int:
        return n_classes_for_outputs(self.n_outputs)


class TorchModel:
    """The data side of a PyTorch model, for methods that differentiate through it and need no head: its batches
    (floating inputs cast to the model's dtype, NaN/inf refused), the fingerprint of its weights and of a dataset.
    :class:`TorchHead` adds the head view."""

    link: str | None = None

    def __init__(self, model: nn.Module, *, batch_size: int = 256, progress: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise PrecedentsError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        self.batch_size = check_scalar("batch_size", batch_size, kind=int, low=1)
        self.progress = progress

    def fingerprint(self) -> str:
        return model_fingerprint(self.model)

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype the model computes in; floating inputs are cast to it."""
        return model_dtype(self.model)

    def batches(self, data: DataLike, y: object = None, *, name: str = "X", require_labels: bool = False) -> Batches:
        """The user's data as batches of tensors (see :func:`~precedents.data.make_batches`): floating inputs cast
        to the model's dtype, NaN/inf refused."""
        return make_batches(data, y, batch_size=self.batch_size, name=name, require_labels=require_labels,
                            dtype=self.dtype, finite=True)

    def data_fingerprint(self, batches: Batches) -> str:
        """SHA-256 of the inputs and labels, as :meth:`run` computes it, without running the model (see
        :class:`~precedents.data.Fingerprint`: independent of batch boundaries and of the labels' integer dtype)."""
        fp = Fingerprint()
        for x, y in batches:
            fp.update(x, y)
        return fp.hexdigest()


class TorchHead(LinkFromOutputs, TorchModel):
    """Adapter for an ``nn.Module`` classifier.

    Parameters
    ----------
    model : the classifier; its forward returns logits ``(n, C)`` (or ``(n,)``/``(n, 1)`` for a sigmoid head).
    layer : dotted name of the final ``nn.Linear`` (e.g. ``"head.fc"``); None picks the last ``nn.Linear``
        registered in the module.
    forward_fn : optional ``forward_fn(model, x) -> logits`` for models whose forward takes extra arguments
        or returns tuples (the task hook: see the module docstring).
    batch_size, progress : batching and progress bar of the feature pass.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, forward_fn: ForwardFn | None = None,
                 batch_size: int = 256, progress: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise PrecedentsError(
                f"model must be a torch.nn.Module, got {type(model).__name__}. Tree ensembles and "
                "scikit-learn models need their own adapters."
            )
        self.model = model
        self.layer_name, self.layer = self._find_layer(model, layer)
        if forward_fn is not None and not callable(forward_fn):
            raise PrecedentsError(f"forward_fn must be a function forward_fn(model, x) -> logits, got {forward_fn!r}.")
        self.forward_fn = forward_fn or _default_forward
        self.batch_size = check_scalar("batch_size", batch_size, kind=int, low=1)
        self.progress = progress

    @staticmethod
    def _find_layer(model: nn.Module, layer: str | None) -> tuple[str, nn.Linear]:
        modules = dict(model.named_modules())
        if layer is None:
            linears = [name for name, m in modules.items() if _is_linear(m)]
            if not linears:
                kinds = sorted({type(m).__name__ for m in modules.values()} - {type(model).__name__})
                raise PrecedentsError(
                    f"{type(model).__name__} has no nn.Linear layer (it has: {', '.join(kinds) or 'nothing'}). "
                    "Representer and last-layer methods explain a final linear layer: give the model one, "
                    "or name it with layer='...'."
                )
            name = linears[-1]
            return name, modules[name]
        if layer not in modules or layer == "":
            candidates = [name for name, m in modules.items() if _is_linear(m)]
            raise PrecedentsError(
                f"{type(model).__name__} has no submodule named {layer!r}. Its nn.Linear layers are: "
                f"{', '.join(repr(c) for c in candidates) or 'none'}."
            )
        module = modules[layer]
        if not _is_linear(module):
            kind = getattr(module, "original_name", type(module).__name__)
            raise PrecedentsError(
                f"Layer {layer!r} is a {kind}, not an nn.Linear: name the final linear layer."
            )
        return layer, module

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def has_bias(self) -> bool:
        return self.layer.bias is not None

    @property
    def n_outputs(self) -> int:
        return self.layer.out_features

    def theta(self) -> torch.Tensor:
        """Head weights ``(C, d)`` in float64 with the bias as last column."""
        w = self.layer.weight.detach().to(torch.float64).cpu()
        if self.has_bias:
            w = torch.cat([w, self.layer.bias.detach().to(torch.float64).cpu()[:, None]], dim=1)
        return w

    def target_indices(self, target: Any, n: int) -> torch.Tensor:
        """The explained class per test point as indices (n,) (see :func:`~precedents.data.target_indices`); a
        torch model's classes are the positions of its outputs, so a class name is refused with that reason."""
        return target_indices(target, n, self.n_classes)

    def weight_decay(self, n_train: int) -> torch.Tensor | None:
        """Unknown for a plain torch model: the optimiser's weight decay is not stored in the module."""
        return None

    def run(self, batches: Batches, *, what: str = "training") -> HeadFeatures:
        """One pass in eval mode without gradients: features, logits, labels and a data fingerprint.

        Checks that the layer's output is the model's output (the layer must be the last operation on the
        logits) and that features are finite.
        """
        if batches.n_examples == 0:
            raise PrecedentsError(f"The {what} set is empty: nothing to explain with.")
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []

        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            captured.append((inputs[0].detach(), output.detach()))

        check_parameters_finite(self.model)
        scripted = isinstance(self.model, torch.jit.ScriptModule)
        handle = None if scripted else self.layer.register_forward_hook(hook)
        feats, logits, labels = [], [], []
        fp = Fingerprint()
        device, dtype = self.device, self.dtype
        try:
            bar = tqdm(total=batches.n_examples, desc=f"features ({what})", unit="ex",
                       disable=not self.progress, leave=False)
            with torch.no_grad(), eval_mode(self.model):
                for x, y in batches:
                    x = torch.as_tensor(x)
                    fp.update(x, y)
                    x = x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
                    captured.clear()
                    out = self._forward_capturing(x, captured, what)
                    out = self._check_output(out, captured, len(x), what)
                    phi = captured[0][0].reshape(len(x), -1).to(torch.float64).cpu()
                    feats.append(phi)
                    logits.append(out.to(torch.float64).cpu())
                    if y is not None:
                        labels.append(torch.as_tensor(y).cpu())
                    bar.update(len(x))
            bar.close()
        finally:
            if handle is not None:
                handle.remove()
        features = torch.cat(feats)
        check_finite(f"Features of the {what} examples", features)
        if self.has_bias:
            features = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
        return HeadFeatures(features, torch.cat(logits), torch.cat(labels) if labels else None, fp.hexdigest())

    def _forward_capturing(self, x: torch.Tensor, captured: list, what: str = "") -> torch.Tensor:
        """Run the model; ``captured`` receives (input, output) of the explained layer.

        Eager modules use a forward hook. TorchScript modules cannot be hooked: they must either export a
        ``features(x)`` method returning the layer's input, or be a scripted ``nn.Sequential`` whose last
        child is the layer.
        """
        if not isinstance(self.model, torch.jit.ScriptModule):
            return run_model(self.model, x, self.forward_fn, what)
        if hasattr(self.model, "features"):
            phi = run_model(self.model, x, lambda m, v: m.features(v), what)
        elif getattr(self.model, "original_name", None) == "Sequential":
            children = list(self.model.named_children())
            if not children or children[-1][0] != self.layer_name:
                raise PrecedentsError(f"In this scripted Sequential, layer {self.layer_name!r} is not the last "
                                      "child: it must be the last operation on the logits.")
            phi = x
            for _, child in children[:-1]:
                phi = child(phi)
        else:
            raise PrecedentsError(
                "This TorchScript model cannot be hooked to read the input of its final linear layer. Script "
                "an nn.Sequential, add a @torch.jit.export method features(x) that returns that input, or pass "
                "the state dict with --module package.module:ClassName.")
        captured.append((phi, self.layer(phi)))
        return run_model(self.model, x, self.forward_fn, what)

    def _check_output(self, out: object, captured: list, n: int, what: str = "") -> torch.Tensor:
        out = check_model_output(out, n, what)
        if len(captured) != 1:
            raise PrecedentsError(
                f"Layer {self.layer_name!r} ran {len(captured)} times in one forward pass; it must run exactly "
                "once, as the last operation on the logits."
            )
        layer_out = captured[0][1]
        out2 = out.reshape(n, -1)
        if out2.shape != layer_out.reshape(n, -1).shape or not torch.allclose(
            out2.float(), layer_out.reshape(n, -1).float(), rtol=1e-4, atol=1e-4
        ):
            diff = "shapes differ" if out2.shape != layer_out.reshape(n, -1).shape else (
                f"max difference {float((out2.float() - layer_out.reshape(n, -1).float()).abs().max()):.3g}")
            raise PrecedentsError(
                f"The output of layer {self.layer_name!r} is not the model's output ({diff}): the explained "
                "layer must be the last operation on the logits. If the model ends in softmax/sigmoid or "
                "another layer, explain a wrapper that returns the logits, or name the right layer."
            )
        return out2

