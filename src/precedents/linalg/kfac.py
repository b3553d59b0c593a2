r"""K-FAC and EK-FAC: Kronecker-factored Gauss-Newton curvature of every ``nn.Linear`` and ``nn.Conv2d``.

For a layer with weight ``W`` (out x in; a convolution's kernel flattened to out x (in * kh * kw)) and bias
``b``, the bias is folded in as an extra input column, ``Theta = [W | b]`` acting on ``a_aug = [a; 1]``. The
per-example gradient of a loss l is ``G = delta a_aug^T`` (summed over the locations t of a convolution or a
sequence), with ``delta`` the gradient of l with respect to the layer's output. The Gauss-Newton (Fisher)
matrix of the *mean* training loss restricted to the layer, ``(1/n) sum_i E_y[vec G vec G^T]``, is approximated
by the Kronecker product (Martens & Grosse 2015; Grosse & Martens 2016 for convolutions)

    F ~ S (x) A,    A = (1/n) sum_i (1/T) sum_t a_aug a_aug^T,    S = (1/n) sum_i E_y[sum_t delta delta^T]

(row-major vec, the layout of ``Theta.flatten()``), block-diagonal across layers. ``E_y`` is over labels drawn
from the model's own predictive distribution: ``fisher="expected"`` computes it exactly for a softmax or sigmoid
head (one backward pass per class, weighted by sqrt(p_c): the Gauss-Newton matrix of the cross-entropy, no
sampling noise), ``"sampled"`` draws one label per example (seeded, what kronfluence does), ``"empirical"`` uses
the true labels (the empirical Fisher, which is not a Gauss-Newton matrix).

With ``S = Q_S diag(s) Q_S^T`` and ``A = Q_A diag(a) Q_A^T``, K-FAC's eigenvalues in the Kronecker eigenbasis
are ``s_o a_j``. EK-FAC (George et al. 2018; Grosse et al. 2023) replaces them by the exact diagonal of F in that
basis, computed in a second pass over the data,

    Lambda_oj = (1/n) sum_i E_y[(Q_S^T G_i Q_A)_oj^2].

The inverse-Hessian-vector product of a vector V (a layer's block, out x (in + 1)) is

    (F + (weight_decay + damping) I)^-1 V = Q_S [(Q_S^T V Q_A) / (Lambda + weight_decay + damping)] Q_A^T,

layer by layer, with per-layer damping ``damping = damping_factor * mean(Lambda)`` (kronfluence's heuristic,
0.1 by default) plus any absolute damping. Units: F is in loss units per parameter squared (nats for the
cross-entropy). Layers that cannot be factored (LSTM, embeddings, normalisation, a grouped convolution, a
parameter outside any nn.Linear or nn.Conv2d) are refused by name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import PrecedentsError

ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FISHER = ("expected", "sampled", "empirical")


@dataclass
class KroneckerLayer:
    """One factored layer: parameter names, factors, eigendecompositions and (EK-FAC) corrected eigenvalues."""

    module_name: str
    module: nn.Module
    weight: str
    bias: str | None
    out_dim: int
    in_dim: int                      # including the bias column when the bias is factored
    A: torch.Tensor | None = None
    S: torch.Tensor | None = None
    evals_A: torch.Tensor | None = None
    evecs_A: torch.Tensor | None = None
    evals_S: torch.Tensor | None = None
    evecs_S: torch.Tensor | None = None
    corrected: torch.Tensor | None = None     # (out, in): EK-FAC eigenvalues
    damping: float = 0.0
    decay: float = 0.0

    def eigenvalues(self) -> torch.Tensor:
        """(out, in) curvature eigenvalues in the Kronecker eigenbasis: EK-FAC's when corrected, else s_o a_j."""
        if self.corrected is not None:
            return self.corrected
        return self.evals_S[:, None] * self.evals_A[None, :]


def kronecker_layers(model: nn.Module, names: list[str]) -> list[KroneckerLayer]:
    """The layers whose parameters ``names`` cover, in order; any parameter K-FAC cannot factor is refused."""
    by_param: dict[str, tuple[str, nn.Module]] = {}
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            by_param[f"{mname}.{pname}" if mname else pname] = (mname, module)
    wanted = set(names)
    layers, covered, refused = [], set(), []
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        weight, bias = prefix + "weight", prefix + "bias"
        if isinstance(module, (nn.Linear, nn.Conv2d)) and weight in wanted:
            if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"
                                                  or isinstance(module.padding, str)):
                refused.append(f"{mname or 'model'} (Conv2d with groups={module.groups}, padding "
                               f"{module.padding!r}, padding_mode={module.padding_mode!r})")
                continue
            has_bias = module.bias is not None and bias in wanted
            in_dim = module.weight[0].numel() + int(has_bias)
            layers.append(KroneckerLayer(mname, module, weight, bias if has_bias else None,
                                         module.weight.shape[0], in_dim))
            covered.update([weight] + ([bias] if has_bias else []))
    for name in names:
        if name not in covered and name in by_param:
            mname, module = by_param[name]
            refused.append(f"{mname or 'model'} ({type(module).__name__}, parameter {name})")
    if refused:
        raise PrecedentsError(
            "K-FAC / EK-FAC factor only nn.Linear and nn.Conv2d (groups=1, zero padding) layers; it cannot factor: "
            f"{'; '.join(sorted(set(refused)))}. Leave these parameters out (params=[names of the Linear/Conv2d "
            "weights and biases]) or use solver='cg', 'lissa' or 'arnoldi'.")
    if not layers:
        raise PrecedentsError("K-FAC found no nn.Linear or nn.Conv2d weight among the parameters to factor.")
    return layers


class LayerRecorder:
    """Forward hooks that keep each layer's input (as a (b, T, in) matrix with the bias column) and output."""

    def __init__(self, layers: list[KroneckerLayer]) -> None:
        self.layers = layers
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [layer.module.register_forward_hook(self._hook(k)) for k, layer in enumerate(layers)]

    def _hook(self, k: int) -> Callable:
        layer = self.layers[k]

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0].detach()
            if isinstance(module, nn.Conv2d):
                cols = nn.functional.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                                            stride=module.stride)            # (b, in*kh*kw, T)
                a = cols.transpose(1, 2)
            else:
                a = x.reshape(len(x), -1, x.shape[-1])
            a = a.to(torch.float64)
            if layer.bias is not None:
                a = torch.cat([a, torch.ones(*a.shape[:2], 1, dtype=a.dtype, device=a.device)], dim=2)
            self.inputs[k] = a
            self.outputs[k] = output

        return hook

    def deltas(self, k: int, grad: torch.Tensor) -> torch.Tensor:
        """A layer's output gradient as (b, T, out)."""
        if isinstance(self.layers[k].module, nn.Conv2d):
            return grad.flatten(2).transpose(1, 2).to(torch.float64)
        return grad.reshape(len(grad), -1, grad.shape[-1]).to(torch.float64)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class KroneckerFactors:
    r"""Fit K-FAC factors (and optionally EK-FAC's corrected eigenvalues) of a model's mean training loss.

    ``fit(X, y)`` makes one pass for ``A`` and ``S``, eigendecomposes them (float64), and, with ``ekfac=True``,
    a second pass for the corrected eigenvalues. ``solve(V)`` applies ``(F + (decay + damping) I)^-1`` to rows of
    flattened parameter vectors laid out as ``names`` (the layout of
    :class:`~precedents.linalg.functional.LossGradients`).
    """

    def __init__(self, model: nn.Module, names: list[str], *, loss_fn: LossFn, forward_fn: ForwardFn | None = None,
                 fisher: str = "expected", ekfac: bool = True, damping_factor: float = 0.1, damping: float = 0.0,
                 weight_decay: float | Mapping[str, float] = 0.0, seed: int = 0, batch_size: int = 256,
                 progress: bool = True) -> None:
        if fisher not in FISHER:
            raise PrecedentsError(f"fisher must be one of {', '.join(FISHER)}, got {fisher!r}.")
        if damping_factor < 0 or damping < 0:
            raise PrecedentsError(f"damping_factor and damping must be >= 0, got {damping_factor} and {damping}.")
        self.model, self.names, self.loss_fn = model, list(names), loss_fn
        self.forward = forward_fn or (lambda m, x: m(x))
        self.fisher, self.ekfac, self.seed = fisher, ekfac, seed
        self.damping_factor, self.damping = float(damping_factor), float(damping)
        self.batch_size, self.progress = batch_size, progress
        self.layers = kronecker_layers(model, self.names)
        named = dict(model.named_parameters())
        self.shapes = {n: named[n].shape for n in self.names}
        offsets, start = {}, 0
        for n in self.names:
            offsets[n] = (start, start + named[n].numel())
            start += named[n].numel()
        self.offsets, self.n_params = offsets, start
        for layer in self.layers:
            if isinstance(weight_decay, Mapping):
                entries = [weight_decay.get(layer.weight, 0.0)] + ([weight_decay.get(layer.bias, 0.0)]
                                                                    if layer.bias else [])
                layer.decay = float(sum(entries) / len(entries))
            else:
                layer.decay = float(weight_decay)
        self.info: dict[str, float] = {}

    # -- passes over the data --------------------------------------------------------------------------
    def _batches(self, X: torch.Tensor, y: torch.Tensor):
        for s in range(0, len(X), self.batch_size):
            yield X[s:s + self.batch_size], y[s:s + self.batch_size]

    def _output_gradients(self, rec: LayerRecorder, x: torch.Tensor, y: torch.Tensor,
                          generator: torch.Generator) -> list[list[torch.Tensor]]:
        """Run the batch; return, per label draw, each layer's output gradient (b, T, out) of the per-example
        losses (weighted by sqrt(p_c) for the exact expectation)."""
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        x = x.to(device, dtype) if x.is_floating_point() else x.to(device)
        with torch.enable_grad():
            logits = self.forward(self.model, x)
            if not isinstance(logits, torch.Tensor):
                raise PrecedentsError("The model returned no logits tensor: pass forward_fn selecting the logits.")
            outputs = [rec.outputs[k] for k in range(len(self.layers))]
            draws: list[tuple[torch.Tensor, torch.Tensor | None]] = []
            one_output = logits.shape[-1] == 1
            if self.fisher == "empirical":
                draws.append((y.to(device), None))
            elif self.fisher == "sampled":
                with torch.no_grad():
                    if one_output:
                        probs = torch.sigmoid(logits[:, 0].double()).cpu()
                        labels = torch.bernoulli(probs, generator=generator).long()
                    else:
                        probs = torch.softmax(logits.double(), dim=1).cpu()
                        labels = torch.multinomial(probs, 1, generator=generator)[:, 0]
                draws.append((labels.to(device), None))
            else:
                with torch.no_grad():
                    if one_output:
                        p1 = torch.sigmoid(logits[:, 0].double())
                        probs = torch.stack([1 - p1, p1], dim=1)
                    else:
                        probs = torch.softmax(logits.double(), dim=1)
                for c in range(probs.shape[1]):
                    draws.append((torch.full((len(x),), c, dtype=torch.long, device=device),
                                  probs[:, c].sqrt().to(logits.dtype)))
            result = []
            for j, (labels, weight) in enumerate(draws):
                losses = self.loss_fn(logits, labels)
                total = (losses * weight).sum() if weight is not None else losses.sum()
                grads = torch.autograd.grad(total, outputs, retain_graph=j + 1 < len(draws), allow_unused=True)
                result.append([rec.deltas(k, g) if g is not None else
                               torch.zeros(len(x), 1, self.layers[k].out_dim, dtype=torch.float64, device=device)
                               for k, g in enumerate(grads)])
        return result

    def fit(self, X: torch.Tensor, y: torch.Tensor) -> KroneckerFactors:
        start = time.perf_counter()
        n = len(X)
        device = next(self.model.parameters()).device
        for layer in self.layers:
            layer.A = torch.zeros(layer.in_dim, layer.in_dim, dtype=torch.float64, device=device)
            layer.S = torch.zeros(layer.out_dim, layer.out_dim, dtype=torch.float64, device=device)
        was_training = self.model.training
        self.model.eval()
        rec = LayerRecorder(self.layers)
        try:
            generator = torch.Generator().manual_seed(self.seed)
            for x, t in tqdm(self._batches(X, y), total=math.ceil(n / self.batch_size), desc="K-FAC factors",
                             disable=not self.progress, leave=False):
                draws = self._output_gradients(rec, x, t, generator)
                for k, layer in enumerate(self.layers):
                    a = rec.inputs[k]
                    layer.A += torch.einsum("bti,btj->ij", a, a) / a.shape[1]
                    for deltas in draws:
                        d = deltas[k]
                        layer.S += torch.einsum("bto,btp->op", d, d)
            for layer in self.layers:
                layer.A /= n
                layer.S /= n
                layer.evals_A, layer.evecs_A = torch.linalg.eigh((layer.A + layer.A.T) / 2)
                layer.evals_S, layer.evecs_S = torch.linalg.eigh((layer.S + layer.S.T) / 2)
                layer.evals_A.clamp_(min=0)
                layer.evals_S.clamp_(min=0)
            if self.ekfac:
                for layer in self.layers:
                    layer.corrected = torch.zeros(layer.out_dim, layer.in_dim, dtype=torch.float64, device=device)
                generator = torch.Generator().manual_seed(self.seed)
                for x, t in tqdm(self._batches(X, y), total=math.ceil(n / self.batch_size), desc="EK-FAC correction",
                                 disable=not self.progress, leave=False):
                    draws = self._output_gradients(rec, x, t, generator)
                    for k, layer in enumerate(self.layers):
                        v = rec.inputs[k] @ layer.evecs_A                          # (b, T, in)
                        for deltas in draws:
                            u = deltas[k] @ layer.evecs_S                          # (b, T, out)
                            if u.shape[1] == 1:
                                layer.corrected += (u[:, 0] ** 2).T @ (v[:, 0] ** 2)
                            else:
                                for s in range(0, len(u), 16):
                                    r = torch.einsum("bto,bti->boi", u[s:s + 16], v[s:s + 16])
                                    layer.corrected += (r ** 2).sum(0)
                for layer in self.layers:
                    layer.corrected /= n
        finally:
            rec.close()
            self.model.train(was_training)
        for layer in self.layers:
            for attr in ("A", "S", "evals_A", "evecs_A", "evals_S", "evecs_S", "corrected"):
                value = getattr(layer, attr)
                if value is not None:
                    setattr(layer, attr, value.cpu())
            layer.damping = self.damping_factor * float(layer.eigenvalues().mean()) + self.damping
        dampings = [layer.damping for layer in self.layers]
        self.info = {"layers": float(len(self.layers)), "damping_mean": sum(dampings) / len(dampings),
                     "damping_min": min(dampings), "damping_max": max(dampings),
                     "damping_factor": self.damping_factor, "fit_seconds": time.perf_counter() - start}
        return self

    # -- inverse-Hessian-vector products ---------------------------------------------------------------
    def _blocks(self, V: torch.Tensor, layer: KroneckerLayer) -> torch.Tensor:
        s, e = self.offsets[layer.weight]
        block = V[:, s:e].reshape(len(V), layer.out_dim, -1)
        if layer.bias is not None:
            bs, be = self.offsets[layer.bias]
            block = torch.cat([block, V[:, bs:be, None]], dim=2)
        return block

    def apply(self, V: torch.Tensor, power: int = -1) -> torch.Tensor:
        """``(F + (decay + damping) I)^power V`` for rows V (k, p), power -1 (solve) or 1 (multiply); float64."""
        V = V.reshape(-1, self.n_params).to(torch.float64)
        out = torch.zeros_like(V)
        for layer in self.layers:
            block = self._blocks(V, layer)
            rotated = layer.evecs_S.T @ block @ layer.evecs_A
            lam = layer.eigenvalues() + layer.decay + layer.damping
            rotated = rotated / lam if power == -1 else rotated * lam
            block = layer.evecs_S @ rotated @ layer.evecs_A.T
            s, e = self.offsets[layer.weight]
            w_cols = block.shape[2] - (1 if layer.bias is not None else 0)
            out[:, s:e] = block[:, :, :w_cols].reshape(len(V), -1)
            if layer.bias is not None:
                bs, be = self.offsets[layer.bias]
                out[:, bs:be] = block[:, :, -1]
        return out

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        return self.apply(V, -1)

    def example_dots(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``V @ grad l_i`` (k, n) for every example of (X, y), true labels, without forming the per-example
        gradients: for each layer ``sum_t delta_it^T V_layer a_it`` (one forward and backward pass per batch)."""
        V = V.reshape(-1, self.n_params).to(torch.float64)
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        # products in the model's dtype (float32 for a float32 model: the rounding of one dot product over a
        # layer's inputs, far below the approximation K-FAC makes), accumulated in float64
        blocks = [self._blocks(V, layer).to(device, dtype) for layer in self.layers]
        out = torch.zeros(len(V), len(X), dtype=torch.float64, device=device)
        was_training = self.model.training
        self.model.eval()
        rec = LayerRecorder(self.layers)
        try:
            for s in range(0, len(X), self.batch_size):
                x, t = X[s:s + self.batch_size], y[s:s + self.batch_size]
                x = x.to(device, dtype) if x.is_floating_point() else x.to(device)
                with torch.enable_grad():
                    losses = self.loss_fn(self.forward(self.model, x), t.to(device))
                    outputs = [rec.outputs[k] for k in range(len(self.layers))]
                    grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
                for k, g in enumerate(grads):
                    if g is None:
                        continue
                    a, d = rec.inputs[k].to(dtype), rec.deltas(k, g).to(dtype)      # (b, T, in), (b, T, out)
                    if a.shape[1] == 1:
                        dots = ((d[:, 0] @ blocks[k]) * a[:, 0]).sum(-1)                 # (k, b, in) -> (k, b)
                    else:                        # per-example layer gradients, 16 examples at a time
                        flat = blocks[k].reshape(len(V), -1)
                        dots = torch.cat([torch.einsum("bto,bti->boi", d[c:c + 16], a[c:c + 16]).reshape(
                            len(d[c:c + 16]), -1) @ flat.T for c in range(0, len(d), 16)]).T
                    out[:, s:s + len(x)] += dots.to(torch.float64)
        finally:
            rec.close()
            self.model.train(was_training)
        return out.cpu()
