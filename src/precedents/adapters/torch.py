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

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import PrecedentsError, check_finite
from ..data import Batches, DataLike, Fingerprint, make_batches, model_fingerprint

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


class LinkFromOutputs:
    """The link and class count every head derives from its number of outputs: one output is a sigmoid head over
    two classes, C >= 2 outputs a softmax head over C classes."""

    n_outputs: int

    @property
    def link(self) -> str:
        return "sigmoid" if self.n_outputs == 1 else "softmax"

    @property
    def n_classes(self) -> int:
        return 2 if self.n_outputs == 1 else self.n_outputs


class TorchModel:
    """The data side of a PyTorch model, for methods that differentiate through it and need no head: its batches,
    the fingerprint of its weights and of a dataset. :class:`TorchHead` adds the head view."""

    link: str | None = None

    def __init__(self, model: nn.Module, *, batch_size: int = 256, progress: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise PrecedentsError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        self.batch_size = batch_size
        self.progress = progress

    def fingerprint(self) -> str:
        return model_fingerprint(self.model)

    def batches(self, data: DataLike, y: object = None, *, name: str = "X", require_labels: bool = False) -> Batches:
        """The user's data as batches of tensors (see :func:`~precedents.data.make_batches`)."""
        return make_batches(data, y, batch_size=self.batch_size, name=name, require_labels=require_labels)

    def data_fingerprint(self, batches: Batches) -> str:
        """SHA-256 of the inputs and labels, as :meth:`TorchHead.run` computes it, without running the model."""
        fp = Fingerprint()
        for x, y in batches:
            fp.update(torch.as_tensor(x), y)
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
        self.forward_fn = forward_fn or _default_forward
        self.batch_size = batch_size
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

        scripted = isinstance(self.model, torch.jit.ScriptModule)
        handle = None if scripted else self.layer.register_forward_hook(hook)
        was_training = self.model.training
        self.model.eval()
        feats, logits, labels = [], [], []
        fp = Fingerprint()
        device = self.device
        seen = 0
        try:
            bar = tqdm(total=batches.n_examples, desc=f"features ({what})", unit="ex",
                       disable=not self.progress, leave=False)
            with torch.no_grad():
                for x, y in batches:
                    x = torch.as_tensor(x)
                    fp.update(x, y)
                    if x.is_floating_point():
                        check_finite(f"Inputs of the {what} examples", x, offset=seen)
                        x = x.to(device=device, dtype=next(self.model.parameters()).dtype)
                    else:
                        x = x.to(device)
                    captured.clear()
                    out = self._forward_capturing(x, captured)
                    out = self._check_output(out, captured, len(x))
                    phi = captured[0][0].reshape(len(x), -1).to(torch.float64).cpu()
                    feats.append(phi)
                    logits.append(out.to(torch.float64).cpu())
                    if y is not None:
                        labels.append(torch.as_tensor(y).cpu())
                    bar.update(len(x))
                    seen += len(x)
            bar.close()
        finally:
            if handle is not None:
                handle.remove()
            self.model.train(was_training)
        features = torch.cat(feats)
        check_finite(f"Features of the {what} examples", features)
        if self.has_bias:
            features = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
        return HeadFeatures(features, torch.cat(logits), torch.cat(labels) if labels else None, fp.hexdigest())

    def _forward_capturing(self, x: torch.Tensor, captured: list) -> torch.Tensor:
        """Run the model; ``captured`` receives (input, output) of the explained layer.

        Eager modules use a forward hook. TorchScript modules cannot be hooked: they must either export a
        ``features(x)`` method returning the layer's input, or be a scripted ``nn.Sequential`` whose last
        child is the layer.
        """
        if not isinstance(self.model, torch.jit.ScriptModule):
            return self.forward_fn(self.model, x)
        if hasattr(self.model, "features"):
            phi = self.model.features(x)
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
        return self.forward_fn(self.model, x)

    def _check_output(self, out: object, captured: list, n: int) -> torch.Tensor:
        if isinstance(out, (tuple, list)) or not isinstance(out, torch.Tensor):
            raise PrecedentsError(
                f"The model returned a {type(out).__name__}, not a logits tensor. Pass "
                "forward_fn=lambda model, x: model(x)[0] (or whatever selects the logits)."
            )
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
