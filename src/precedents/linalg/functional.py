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

from .._validation import PrecedentsError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (softmax heads) or binary cross-entropy (one-output heads), in nats."""
    if logits.shape[-1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(logits[..., 0], targets.to(logits.dtype),
                                                              reduction="none")
    return nn.functional.cross_entropy(logits, targets.long(), reduction="none")


def squared_hinge_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example squared hinge ``max(0, 1 - s z)^2``, ``s = 2 y - 1``, of a one-output head (a linear SVM such as
    scikit-learn's LinearSVC). ``relu`` makes autograd's second derivative ``2 * 1[s z < 1]`` (0 at the margin),
    the same as :func:`precedents.linalg.head.loss_derivatives`."""
    s = 2 * targets.to(logits.dtype) - 1
    return torch.relu(1 - s * logits[..., 0]) ** 2


def loss_for_link(link: str) -> LossFn:
    """The per-example training loss of a head with this link: :func:`squared_hinge_loss` for ``"squared_hinge"``,
    else :func:`default_loss` (cross-entropy)."""
    return squared_hinge_loss if link == "squared_hinge" else default_loss


class _Forward(nn.Module):
    """Wraps ``forward_fn(model, x)`` as a module so ``functional_call`` can swap parameters."""

    def __init__(self, model: nn.Module, forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.forward_fn = forward_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_fn(self.model, x)


def select_parameters(model: nn.Module, params: str | Sequence[str], head_layer: str | None) -> list[str]:
    """Names of the parameters to differentiate: ``"head"`` (the final linear layer), ``"all"``, or a list."""
    named = dict(model.named_parameters())
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
        names = list(params)
        missing = [n for n in names if n not in named]
        if missing:
            raise PrecedentsError(f"The model has no parameters named {missing}; it has: {', '.join(named)}.")
    frozen = [n for n in names if not named[n].requires_grad]
    if frozen and params != "head":
        raise PrecedentsError(f"Parameters {frozen} do not require gradients: influence needs them trainable "
                              "(set requires_grad=True) or leave them out of params.")
    return names


class LossGradients:
    """Gradients and curvature of a model's loss with respect to the parameters ``names``."""

    def __init__(self, model: nn.Module, names: list[str], *, loss_fn: LossFn = default_loss,
                 forward_fn: Callable | None = None, weight_decay: float | Mapping[str, float] = 0.0,
                 batch_size: int = 256, progress: bool = True) -> None:
        self.module = _Forward(model, forward_fn or (lambda m, x: m(x)))
        self.names = names
        self.loss_fn = loss_fn
        self.weight_decay = dict(weight_decay) if isinstance(weight_decay, Mapping) else float(weight_decay)
        self.batch_size = batch_size
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

    def _losses(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        full = {f"model.{n}": p for n, p in params.items()}
        full.update(self.frozen)
        logits = functional_call(self.module, full, (x,))
        losses = self.loss_fn(logits, y)
        if losses.shape != (len(x),):
            raise PrecedentsError(f"The loss must return one value per example, shape ({len(x)},); it returned "
                                  f"shape {tuple(losses.shape)}. Use reduction='none'.")
        return losses

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(x)
        x = x.to(self.device, self.dtype) if x.is_floating_point() else x.to(self.device)
        return x, torch.as_tensor(y).to(self.device)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example losses (b,) of one batch at the current parameters, without gradients."""
        with torch.no_grad():
            return self._losses(self.params, *self._prepare(x, y))

    # -- gradients -------------------------------------------------------------------------------------
    def example_gradients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``grad l(x_i, y_i)`` for each example of one batch, shape (b, p), float64."""
        x, y = self._prepare(x, y)

        def one(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return self._losses(params, xi[None], yi[None])[0]

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
            x, y = self._prepare(x, y)
            g = grad(lambda p, x=x, y=y: self._losses(p, x, y).sum())(self.params)
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
            x, y = self._prepare(x, y)

            def batch_grad(p: dict[str, torch.Tensor], x: torch.Tensor = x, y: torch.Tensor = y) -> dict:
                return grad(lambda q: self._losses(q, x, y).sum())(p)

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
