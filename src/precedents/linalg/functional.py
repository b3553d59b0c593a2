r"""Per-example gradients and Hessian-vector products of a PyTorch model's training loss (torch.func).

A :class:`LossGradients` binds a model, the parameters to differentiate (by name), a per-example loss, and
the training objective

    J(theta) = (1/n) sum_i l(x_i, y_i; theta) + (weight_decay / 2) ||theta||^2      (over the chosen parameters),

(``weight_decay`` may also be a mapping from parameter name to strength, e.g. 0 for the intercepts of a
scikit-learn MLP, which are not penalised; a name left out gets 0) and provides (computed on the model's
device, returned on the CPU in float64, where all solves happen):
per-example gradients ``grad l_i`` flattened to vectors of length p (``vmap(grad(...))``,
computed in memory-bounded batches), Hessian-vector products ``H v`` with ``H = hess J`` (forward-over-reverse
``jvp(grad(...))``), and test-loss gradients. Everything is returned in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from tqdm.auto import tqdm

from .._validation import PrecedentsError, check_param_names, check_scalar
from ..adapters.torch import check_gradient_model, check_parameters_finite, eval_mode
from .head import squared_hinge_loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``forward_fn(model, x) -> logits``, for models whose forward is not ``model(x)``.
ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

__all__ = ["ForwardFn", "LossFn", "LossGradients", "call_model", "default_loss", "loss_for_link", "model_logits",
           "select_parameters", "squared_hinge_loss"]


def default_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (softmax heads) or binary cross-entropy (one-output heads), in nats."""
    if logits.shape[-1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(logits[..., 0], targets.to(logits.dtype),
                                                              reduction="none")
    return nn.functional.cross_entropy(logits, targets.long(), reduction="none")


def loss_for_link(link: str) -> LossFn:
    """The per-example training loss of a head with this link: :func:`squared_hinge_loss` for ``"squared_hinge"``,
    else :func:`default_loss` (cross-entropy)."""
    return squared_hinge_loss if link == "squared_hinge" else default_loss


def call_model(model: nn.Module, x: torch.Tensor, forward_fn: ForwardFn | None = None) -> torch.Tensor:
    """The logits of ``model`` on a batch: ``forward_fn(model, x)``, or ``model(x)`` without one. The one forward
    wrapper of the package."""
    return model(x) if forward_fn is None else forward_fn(model, x)


def model_logits(model: nn.Module, X: torch.Tensor, forward_fn: ForwardFn | None = None, *,
                 batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` on ``X`` (n, C), in eval mode without gradients, in batches; floating-point inputs are
    cast to the model's dtype and moved to its device; the result is on the model's device in its dtype. The
    model's train/eval mode is restored."""
    param = next(iter(model.parameters()), None)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for s in range(0, len(X), batch_size):
                x = X[s:s + batch_size]
                if param is not None:
                    x = x.to(param.device)
                    x = x.to(param.dtype) if x.is_floating_point() else x
                out.append(call_model(model, x, forward_fn))
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


class _Forward(nn.Module):
    """Wraps ``forward_fn(model, x)`` as a module so ``functional_call`` can swap parameters."""

    def __init__(self, model: nn.Module, forward_fn: ForwardFn | None) -> None:
        super().__init__()
        self.model = model
        self.forward_fn = forward_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return call_model(self.model, x, self.forward_fn)


def select_parameters(model: nn.Module, params: str | Sequence[str], head_layer: str | None) -> list[str]:
    """Names of the parameters to differentiate: ``"head"`` (the final linear layer), ``"all"``, or a list."""
    named = dict(model.named_parameters())
    params = check_param_names(model, params)
    if params == "head":
        if head_layer is None:
            raise PrecedentsError("params='head' needs the final linear layer; none was found.")
        names = [n for n in named if n.rsplit(".", 1)[0] == head_layer or (head_layer == "" and "." not in n)]
    elif params == "all":
        names = [n for n, p in named.items() if p.requires_grad]
        if not names:
            raise PrecedentsError("None of the model's parameters require gradients (params='all'): call "
                                  "model.requires_grad_(True) or name the parameters to differentiate.")
    else:
        names = params
    frozen = [n for n in names if not named[n].requires_grad]
    if frozen and params != "head":
        raise PrecedentsError(f"Parameters {frozen} do not require gradients: influence needs them trainable "
                              "(set requires_grad=True) or leave them out of params.")
    return names


class LossGradients:
    """Gradients and curvature of a model's loss with respect to the parameters ``names``.

    Input checks, so that the gradient path refuses what the head path refuses: ``names`` must be a non-empty
    list of the model's parameter names (:func:`~precedents._validation.check_param_names`), ``weight_decay``
    finite and non-negative, the weights finite (a diverged run, a corrupt checkpoint). On the first batch the
    model is probed (:func:`~precedents.adapters.torch.check_gradient_model`): it must run on the inputs and return
    (n, C) logits, not probabilities (no final softmax; checked with the built-in losses), and with ``head_layer``
    that layer must be the last operation. The model is evaluated in eval mode (dropout off, batch norm on running
    statistics) and the mode of every submodule restored after each call. Floating inputs are cast to the model's
    dtype.
    """

    def __init__(self, model: nn.Module, names: list[str], *, loss_fn: LossFn = default_loss,
                 forward_fn: Callable | None = None, weight_decay: float | Mapping[str, float] = 0.0,
                 batch_size: int = 256, progress: bool = True, head_layer: str | None = None) -> None:
        names = check_param_names(model, names, keywords=())
        check_parameters_finite(model)
        self.module = _Forward(model, forward_fn)
        self.forward_fn = forward_fn
        self.head_layer = head_layer
        self._probed = False
        self.names = names
        self.loss_fn = loss_fn
        if isinstance(weight_decay, Mapping):
            self.weight_decay = {str(k): check_scalar(f"weight_decay[{k!r}]", v, low=0.0)
                                 for k, v in weight_decay.items()}
        else:
            self.weight_decay = check_scalar("weight_decay", weight_decay, low=0.0)
        self.batch_size = check_scalar("batch_size", batch_size, kind=int, low=1)
        self.progress = progress
        named = dict(model.named_parameters())
        self.params = {n: named[n].detach() for n in names}
        self.frozen = {f"model.{n}": p.detach() for n, p in named.items() if n not in self.params}
        self.frozen.update({f"model.{n}": b for n, b in model.named_buffers()})
        self.shapes = [p.shape for p in self.params.values()]
        self.n_params = sum(p.numel() for p in self.params.values())
        self.device = next(iter(self.params.values())).device
        self.dtype = next(iter(self.params.values())).dtype
        if isinstance(self.weight_decay, dict):
            unknown = sorted(set(self.weight_decay) - set(named))
            if unknown:
                raise PrecedentsError(f"weight_decay names parameters the model does not have: {unknown}; it has: "
                                      f"{', '.join(named)}.")
            per_param = [torch.full((p.numel(),), float(self.weight_decay.get(n, 0.0)), dtype=torch.float64)
                         for n, p in self.params.items()]
            #: strength per flattened parameter entry (p,), float64 on the model's device
            self.decay = torch.cat(per_param).to(self.device)
        else:
            self.decay = torch.full((self.n_params,), self.weight_decay, dtype=torch.float64, device=self.device)

    # -- helpers ---------------------------------------------------------------------------------------
    def flatten(self, tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(*t.shape[: t.ndim - len(s)], -1) for t, s in zip(tensors, self.shapes,
                                                                                       strict=True)], dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = shape.numel()
            out[name] = flat[..., start:start + size].reshape(*flat.shape[:-1], *shape).to(self.dtype)
            start += size
        return out

    def losses_at(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example losses (b,) of one prepared batch (see :meth:`prepare`) at the parameters ``params``
        (a dict of the differentiated parameters, e.g. :attr:`params`); differentiable in ``params`` and ``x``."""
        full = {f"model.{n}": p for n, p in params.items()}
        full.update(self.frozen)
        with eval_mode(self.module):
            logits = functional_call(self.module, full, (x,))
        losses = self.loss_fn(logits, y)
        if losses.shape != (len(x),):
            raise PrecedentsError(f"The loss must return one value per example, shape ({len(x)},); it returned "
                                  f"shape {tuple(losses.shape)}. Use reduction='none'.")
        return losses

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the model's device, floating-point inputs in the model's dtype (checked on first use)."""
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
            hint = " If X is one example, add the batch axis: X[None]." if x.ndim == 1 and y.numel() == 1 else ""
            raise PrecedentsError(f"Inputs of shape {tuple(x.shape)} and labels of shape {tuple(y.shape)} do not "
                                  f"pair up: one label per example (batch axis first).{hint}")
        x = x.to(self.device, self.dtype) if x.is_floating_point() else x.to(self.device)
        if not self._probed and len(x):
            check_gradient_model(self.module.model, x[:8], self.forward_fn, head_layer=self.head_layer,
                                 require_logits=self.loss_fn in (default_loss, squared_hinge_loss))
            self._probed = True
        return x, y.to(self.device)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example losses (b,) of one batch at the current parameters, without gradients."""
        with torch.no_grad():
            return self.losses_at(self.params, *self.prepare(x, y))

    # -- gradients -------------------------------------------------------------------------------------
    def example_gradients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``grad l(x_i, y_i)`` for each example of one batch, shape (b, p), float64."""
        x, y = self.prepare(x, y)

        def one(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return self.losses_at(params, xi[None], yi[None])[0]

        try:
            grads = vmap(grad(one), in_dims=(None, 0, 0))(self.params, x, y)
        except RuntimeError as err:
            if "shape" not in str(err) and "vmap" not in str(err) and "batch" not in str(err).lower():
                raise
            raise PrecedentsError(
                f"torch.func could not compute per-example gradients through this model (vmap failed: {err}). "
                "Some kernels have no batching rule (e.g. nn.LSTM in float64 on the CPU; float32 works). Use "
                "params='head' without a loss_fn (closed form), or run the model in float32.") from err
        return self.flatten(grads[n] for n in self.names).to(torch.float64).cpu()

    def gradient_blocks(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], total: int | None = None,
                        desc: str = "gradients") -> Iterator[torch.Tensor]:
        bar = tqdm(total=total, desc=desc, unit="ex", disable=not self.progress, leave=False)
        for x, y in batches:
            block = self.example_gradients(x, y)
            bar.update(len(block))
            yield block
        bar.close()

    def mean_gradient(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
        """Gradient of J: the mean training-loss gradient plus ``weight_decay * theta``."""
        total = torch.zeros(self.n_params, dtype=torch.float64, device=self.device)
        for x, y in batches:
            x, y = self.prepare(x, y)
            g = grad(lambda p, x=x, y=y: self.losses_at(p, x, y).sum())(self.params)
            total += self.flatten(g[k] for k in self.names).to(torch.float64)
        theta = self.flatten(self.params.values()).to(torch.float64)
        return (total / n + self.decay * theta).cpu()

    # -- curvature -------------------------------------------------------------------------------------
    def hvp(self, vectors: torch.Tensor, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
        """``H v`` for a batch of vectors (k, p): H = Hessian of J over the whole training set."""
        vectors = vectors.reshape(-1, self.n_params)
        tangents = self.unflatten(vectors.to(self.device))
        out = torch.zeros(vectors.shape, dtype=torch.float64, device=self.device)
        for x, y in batches:
            x, y = self.prepare(x, y)

            def batch_grad(p: dict[str, torch.Tensor], x: torch.Tensor = x, y: torch.Tensor = y) -> dict:
                return grad(lambda q: self.losses_at(q, x, y).sum())(p)

            def one_hvp(t: dict[str, torch.Tensor]) -> torch.Tensor:
                h = jvp(batch_grad, (self.params,), (t,))[1]
                return self.flatten(h[k] for k in self.names)

            try:
                out += vmap(one_hvp)(tangents).to(torch.float64)
            except NotImplementedError as err:
                raise PrecedentsError(
                    f"Hessian-vector products (forward-over-reverse, jvp of grad) are not available for this model: "
                    f"{str(err).splitlines()[0]} (e.g. nn.LSTM on the CPU has no forward-mode AD). Per-example "
                    "gradients still work (TracIn, gradient similarity); for influence use params='head'.") from err
        return (out / n + self.decay * vectors.to(self.device, torch.float64)).cpu()
