r"""Sensitivity-map decomposition (Yeh et al., NeurIPS 2018, section 4.3; seed 001, the zebra/moose figure).

A representer method writes the explained logit of test point ``x_t`` for class ``c`` as a sum over training
examples of terms that are *linear in the test features* ``f_t = f(x_t)`` (the input of the final linear layer,
with a constant 1 appended for the bias):

    Phi_c(x_t) = sum_i score(t, i, c),        score(t, i, c) = w_i . f(x_t)

with a coefficient vector ``w_i`` (d,) that does not depend on ``x_t``:

* RPS-l2:  ``w_i = alpha_ic f_i``                                       (``alpha_`` of :class:`RepresenterL2`);
* RPS-LJE: ``w_i = row c of alpha_i = (A - H^+ g_i)[c] / n``   (:class:`RepresenterLJE`: the test-side form
  ``(A f_t)_c / n - <g_i, H^+ (e_c (x) f_t)> / n`` rearranged with the symmetry of ``H^+``; ``A`` is the anchor
  ``Theta_hat``, less ``H^+ (wd * Theta_hat)`` when the head was trained with weight decay ``wd``).

For a one-output sigmoid head and class 0 the explained output is the negated logit, so ``w_i`` is negated too
(the package's sign convention). The gradient of the explained logit with respect to the input therefore splits
into one map per training example,

    d Phi_c / d x_t = sum_i map_i,        map_i = J_f(x_t)^T w_i,

where ``J_f(x_t)`` (d x input size) is the Jacobian of the features; the bias coordinate is constant and has
no gradient. ``map_i`` is in logit units per unit of input (per pixel intensity for images): it says which
pixels of the test image, through its similarity to training example i, move that example's contribution.
All maps come from the one Jacobian per test point (one vector-Jacobian product per feature coordinate,
batched), followed by a matrix product with the coefficients; the whole map is ``J^T (sum_i w_i)``, which is
the gradient of the explained head's logit (``explainer.explained_head()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._validation import PrecedentsError

__all__ = ["SensitivityMaps", "feature_jacobian", "representer_coefficients", "sensitivity_maps",
           "top_sensitivity_maps"]


@dataclass
class SensitivityMaps:
    """Per-training-example sensitivity maps of a batch of test points (logit units per unit of input).

    ``maps``: (n_test, k, *input_shape), the map of training example ``train_indices[t, j]`` for test point t;
    ``total``: (n_test, *input_shape), the gradient of the explained logit (the sum of the maps over *all*
    training examples); ``scores``: (n_test, k), the representer scores ``w_i . f_t`` of the shown examples
    (logit units, the same numbers as ``explainer.attribute(X).scores``); ``target``: (n_test,) explained class;
    ``explained``: (n_test,) the explained logit.
    """

    method: str
    train_indices: torch.Tensor
    maps: torch.Tensor
    total: torch.Tensor
    scores: torch.Tensor
    target: torch.Tensor
    explained: torch.Tensor


def _explainer_kind(explainer: Any) -> str:
    from .methods import RepresenterL2, RepresenterLJE

    if isinstance(explainer, RepresenterL2):
        return "l2"
    if isinstance(explainer, RepresenterLJE):
        return "lje"
    raise PrecedentsError(
        f"sensitivity_maps needs a fitted RepresenterL2 or RepresenterLJE, got {type(explainer).__name__}: only "
        "representer scores are linear in the test point's features, which is what the decomposition uses.")


def representer_coefficients(explainer: Any, indices: torch.Tensor, column: int) -> torch.Tensor:
    """Coefficient vectors ``w_i`` (len(indices), d), float64, such that ``score(t, i, c) = w_i . f(x_t)``.

    ``column`` is the head's output column (the class for softmax heads, 0 for a sigmoid head); the sign of a
    sigmoid head's class 0 is applied by the caller. RPS-l2: ``alpha_ic f_i``; RPS-LJE: row ``column`` of
    ``(A - H^+ g_i) / n`` with ``g_i = r_i f_i^T`` the loss gradient at the anchor (one batched solve).
    """
    kind = _explainer_kind(explainer)
    explainer._check_fitted()
    feats = explainer.features_[indices].to(torch.float64)
    if kind == "l2":
        return explainer.alpha_[indices, column].to(torch.float64)[:, None] * feats
    n = explainer.n_train_
    grads = (explainer.residuals_[indices][:, :, None] * feats[:, None, :]).reshape(len(indices), -1)
    solved = explainer.solver_.solve(grads).reshape(len(indices), *explainer.anchor_.shape)
    shared = getattr(explainer, "_anchor_head", explainer.anchor_)   # A = Theta_hat (less H^+ of weight decay)
    return (shared[column][None] - solved[:, column]) / n


def feature_jacobian(explainer: Any, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``f(X)`` (n, d) with the ones column, and their Jacobian (n, d_input_features, *input_shape).

    The Jacobian omits the bias coordinate (constant). Computed by batched vector-Jacobian products: test points
    are independent in eval mode, so the gradient of ``sum_t f_j(x_t)`` is ``d f_j(x_t) / d x_t`` for every t.
    """
    head = explainer.head_
    model: nn.Module = head.model
    param = next(model.parameters())
    x = torch.as_tensor(X).to(device=param.device, dtype=param.dtype).detach().requires_grad_(True)
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    scripted = isinstance(model, torch.jit.ScriptModule)

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured.append((inputs[0], output))

    handle = None if scripted else head.layer.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            head._forward_capturing(x, captured)
            if len(captured) != 1:
                raise PrecedentsError(f"Layer {head.layer_name!r} ran {len(captured)} times in one forward pass; "
                                      "it must run exactly once, as the last operation on the logits.")
            phi = captured[0][0].reshape(len(x), -1)
            d = phi.shape[1]
            eye = torch.eye(d, dtype=phi.dtype, device=phi.device)[:, None, :].expand(d, len(x), d)
            (jac,) = torch.autograd.grad(phi, x, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    if jac is None:
        jac = torch.zeros(d, *x.shape, dtype=x.dtype, device=x.device)
    features = phi.detach().to(torch.float64).cpu()
    if head.has_bias:
        features = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    return features, jac.transpose(0, 1).detach().to(torch.float64).cpu()


def sensitivity_maps(explainer: Any, X_t: Any, train_indices: Any = None, target: Any = None) -> SensitivityMaps:
    r"""Decompose the input gradient of the explained logit into one map per training example.

    ``map(t, i) = d/dx_t [score(t, i, c)] = J_f(x_t)^T w_i`` (logit units per unit of input), for a fitted
    :class:`~precedents.RepresenterL2` or :class:`~precedents.RepresenterLJE` of a torch model; see the module
    docstring for ``w_i``. Summed over all training examples the maps give ``total``, the gradient of the
    explained head's logit ``sign * explained_head()[c] . f(x_t)``.

    Parameters
    ----------
    explainer : a fitted RepresenterL2 / RepresenterLJE.
    X_t : test inputs (n_test, *input_shape), float.
    train_indices : which training examples' maps to return: a 1-D sequence (the same for every test point),
        a 2-D (n_test, k) array (e.g. ``attribution.top(k).positive_indices``), or None for all training
        examples (memory n_test x n_train x input size).
    target : None (each point's predicted class), one class for all, or one per test point.
    """
    kind = _explainer_kind(explainer)
    explainer._check_fitted()
    X_t = torch.as_tensor(X_t)
    if X_t.ndim < 2 or len(X_t) == 0 or not X_t.is_floating_point():
        raise PrecedentsError(f"X_t must be a non-empty float batch (n_test, *input_shape), got shape "
                              f"{tuple(X_t.shape)} and dtype {X_t.dtype}; sensitivity maps differentiate the input.")
    n_test, n_train = len(X_t), explainer.n_train_
    if train_indices is None:
        idx = torch.arange(n_train).expand(n_test, n_train)
    else:
        idx = torch.as_tensor(train_indices).long()
        if idx.ndim == 1:
            idx = idx.expand(n_test, len(idx))
        if idx.ndim != 2 or len(idx) != n_test:
            raise PrecedentsError(f"train_indices must be 1-D or (n_test={n_test}, k), got shape {tuple(idx.shape)}.")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_train):
            raise PrecedentsError(f"train_indices must lie in [0, {n_train - 1}] (the training set has {n_train} "
                                  f"examples), got values from {int(idx.min())} to {int(idx.max())}.")
    features, jac = feature_jacobian(explainer, X_t)
    d_in = jac.shape[1]                                        # feature coordinates with a gradient (no bias)
    target = explainer._targets(target, features @ explainer.theta_.T)
    column, sign = explainer._columns(target)
    head = explainer.explained_head()
    unique, inverse = torch.unique(idx, return_inverse=True)
    input_shape = X_t.shape[1:]
    maps = torch.empty(n_test, idx.shape[1], *input_shape, dtype=torch.float64)
    scores = torch.empty(n_test, idx.shape[1], dtype=torch.float64)
    total = torch.empty(n_test, *input_shape, dtype=torch.float64)
    coefficients: dict[int, torch.Tensor] = {}
    for t in range(n_test):
        c = int(column[t])
        if c not in coefficients:                              # one batched solve per class for RPS-LJE
            coefficients[c] = representer_coefficients(explainer, unique, c)
        w = sign[t] * coefficients[c][inverse[t]]              # (k, d)
        j = jac[t].reshape(d_in, -1)                           # (d_in, D)
        maps[t] = (w[:, :d_in] @ j).reshape(-1, *input_shape)
        scores[t] = w @ features[t]
        total[t] = (sign[t] * head[c, :d_in] @ j).reshape(input_shape)
    explained = sign * (features @ head.T).gather(1, column[:, None])[:, 0]
    method = "RPS-l2" if kind == "l2" else "RPS-LJE"
    return SensitivityMaps(method, idx, maps, total, scores, target, explained)


def top_sensitivity_maps(explainer: Any, X_t: Any, k: int = 2,
                         target: Any = None) -> tuple[SensitivityMaps, SensitivityMaps]:
    """Maps of the k most positive and of the k most negative precedents of each test point (for the report)."""
    res = explainer.attribute(X_t, target=target)
    top = res.top(k)
    return (sensitivity_maps(explainer, X_t, top.positive_indices, res.target),
            sensitivity_maps(explainer, X_t, top.negative_indices, res.target))
