r"""The loss of a linear head on fixed features, and its derivatives.

Notation: features ``F`` (n, d), head ``Theta`` (C, d), logits ``Z = F Theta^T`` (n, C), targets ``T``
(n, C): one-hot labels, or soft targets (probabilities). Links:

* ``softmax``: ``p_i = softmax(z_i)``, loss ``l_i = -sum_c T_ic log p_ic`` (cross-entropy);
* ``sigmoid`` (C = 1): ``p_i = sigmoid(z_i)``, loss ``l_i = -T_i log p_i - (1 - T_i) log(1 - p_i)``.

For both, ``dl_i/dz_i = p_i - T_i`` (the *residual* r_i) and ``dl_i/dTheta = r_i f_i^T``. The Hessian of the
mean loss with respect to ``vec(Theta)`` (row-major, index ``c * d + j``) is

    H = (1/n) sum_i S_i (x) f_i f_i^T,   S_i = diag(p_i) - p_i p_i^T  (softmax),  p_i (1 - p_i)  (sigmoid),

which for softmax is singular: adding the same vector to every class row changes no probability.

* ``squared_hinge`` (C = 1, a linear SVM such as scikit-learn's ``LinearSVC``): with ``s_i = 2 T_i - 1`` in
  {-1, +1}, ``l_i = max(0, 1 - s_i z_i)^2``, ``dl_i/dz_i = -2 s_i max(0, 1 - s_i z_i)`` (the residual) and
  ``d2l_i/dz_i^2 = 2 * 1[s_i z_i < 1]``, so ``S_i`` above is the curvature weight ``2 * 1[s_i z_i < 1]``:
  piecewise constant, the loss only once differentiable at the margin ``s_i z_i = 1``, where the weight 0 is
  used (one-sided, as autograd's ``relu`` does). A max-margin model has no probabilities: its *curvature input*
  (what :func:`head_hvp`, :func:`head_hessian` and the solvers take in place of ``probs``) is that weight.

:func:`loss_derivatives` gives residuals and curvature input for every link; the Hessian routines take the
curvature input (the probabilities for softmax and sigmoid, the weight for the squared hinge).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

from .._validation import PrecedentsError

#: Links with one output column over two classes (the column explains +logit for class 1, -logit for class 0).
ONE_OUTPUT_LINKS = ("sigmoid", "squared_hinge")


def link_probabilities(logits: torch.Tensor, link: str) -> torch.Tensor:
    """Probabilities from logits: softmax over classes, or elementwise sigmoid for a one-output head."""
    if link == "softmax":
        return torch.softmax(logits, dim=1)
    if link == "sigmoid":
        return torch.sigmoid(logits)
    if link == "squared_hinge":
        raise PrecedentsError("A squared-hinge (max-margin, e.g. LinearSVC) model has no class probabilities: this "
                              "computation needs a softmax or sigmoid model.")
    raise ValueError(f"unknown link {link!r}; expected 'softmax', 'sigmoid' or 'squared_hinge'")


def squared_hinge_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example squared hinge ``max(0, 1 - s z)^2``, ``s = 2 t - 1``, of a one-output head (a linear SVM such as
    scikit-learn's LinearSVC), shape (n,): logits (n, 1), 0/1 targets (n,) or (n, 1). ``relu`` makes autograd's
    second derivative ``2 * 1[s z < 1]`` (0 at the margin), the same as :func:`loss_derivatives`."""
    s = 2 * targets.to(logits.dtype).reshape(logits.shape[:-1]) - 1
    return torch.relu(1 - s * logits[..., 0]) ** 2



# -- the one-output rule -------------------------------------------------------------------------------------

def link_for_outputs(n_outputs: int) -> str:
    """The link a head with ``n_outputs`` logit columns is read with: one output is a sigmoid over two classes
    (the column is the logit of class 1), C >= 2 outputs a softmax over C classes. The one place this is decided."""
    return "sigmoid" if int(n_outputs) == 1 else "softmax"


def n_classes_for_outputs(n_outputs: int) -> int:
    """The number of classes of a head with ``n_outputs`` logit columns (2 for one output)."""
    return 2 if int(n_outputs) == 1 else int(n_outputs)


def predicted_classes(logits: torch.Tensor) -> torch.Tensor:
    """Predicted class (n,) from logits (n, C): ``z > 0`` for one output, ``argmax`` otherwise."""
    if link_for_outputs(logits.shape[-1]) == "sigmoid":
        return (logits[..., 0] > 0).long()
    return logits.argmax(-1)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities (n, n_classes): ``[1 - sigmoid(z), sigmoid(z)]`` for one output, softmax otherwise."""
    if link_for_outputs(logits.shape[-1]) == "sigmoid":
        p = torch.sigmoid(logits[..., :1])
        return torch.cat([1 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)


def log_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_y - log sum_{c != y} exp(z_c)`` (softmax), or ``(2y - 1) z`` for one output (n,): positive when the
    label's class wins; minus the margin is what a loss-unit score predicts with the same sign."""
    if link_for_outputs(logits.shape[-1]) == "sigmoid":
        return (2 * labels.to(logits.dtype) - 1) * logits[..., 0]
    correct = logits.gather(1, labels.long()[:, None])[:, 0]
    others = logits.scatter(1, labels.long()[:, None], float("-inf"))
    return correct - torch.logsumexp(others, dim=1)


def loss_derivatives(logits: torch.Tensor, targets: torch.Tensor, link: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(residuals, curvature input)`` of every example's loss at its logits (n, C) (see the module docstring).

    Residuals are ``dl_i/dz_i`` (n, C): ``p_i - T_i`` for softmax and sigmoid, ``-2 s_i max(0, 1 - s_i z_i)``
    for the squared hinge. The curvature input is what :func:`head_hvp` and :func:`head_hessian` expand: the
    probabilities ``p_i`` (softmax, sigmoid), or the second derivative ``2 * 1[s_i z_i < 1]`` (squared hinge; 0
    exactly at the margin).
    """
    if link == "squared_hinge":
        s = 2 * targets - 1
        margin = s * logits
        return -2 * s * torch.relu(1 - margin), 2.0 * (margin < 1).to(logits.dtype)
    probs = link_probabilities(logits, link)
    return probs - targets, probs


def targets_from_labels(labels: torch.Tensor, n_outputs: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """One-hot targets (n, C) for softmax heads, or the 0/1 label as an (n, 1) column for a sigmoid head."""
    if n_outputs == 1:
        return labels.to(dtype)[:, None]
    return nnf.one_hot(labels.long(), n_outputs).to(dtype)


def residuals(features: torch.Tensor, theta: torch.Tensor, targets: torch.Tensor, link: str) -> torch.Tensor:
    """``r_i = dl_i/dz_i`` (``p_i - T_i`` for softmax and sigmoid): the gradient of example i's loss with respect to
    its logits, (n, C)."""
    return loss_derivatives(features @ theta.T, targets, link)[0]


def mean_loss(features: torch.Tensor, theta: torch.Tensor, targets: torch.Tensor, link: str) -> torch.Tensor:
    """Mean cross-entropy (softmax) or binary cross-entropy (sigmoid) of the head, in nats; mean squared hinge
    (squared_hinge, in squared-margin units)."""
    logits = features @ theta.T
    if link == "softmax":
        return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    if link == "squared_hinge":
        return squared_hinge_loss(logits, targets).mean()
    return nnf.binary_cross_entropy_with_logits(logits, targets, reduction="mean")


def mean_loss_gradient(features: torch.Tensor, theta: torch.Tensor, targets: torch.Tensor, link: str) -> torch.Tensor:
    """Gradient of :func:`mean_loss` with respect to Theta: ``(1/n) sum_i r_i f_i^T``, shape (C, d)."""
    return residuals(features, theta, targets, link).T @ features / len(features)


def _curvature_times(probs: torch.Tensor, z: torch.Tensor, link: str) -> torch.Tensor:
    """``S_i z_i`` for every example (and every right-hand side in a leading batch dimension of z); ``probs`` is
    the curvature input of :func:`loss_derivatives` (for the squared hinge, the weight ``2 * 1[s z < 1]``)."""
    if link == "softmax":
        return probs * z - probs * (probs * z).sum(dim=-1, keepdim=True)
    if link == "squared_hinge":
        return probs * z
    return probs * (1 - probs) * z


def head_hvp(features: torch.Tensor, probs: torch.Tensor, v: torch.Tensor, link: str,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Hessian-vector products ``H v`` of the mean loss, without forming H.

    ``probs`` are the head's probabilities at the point of expansion (n, C) (for ``squared_hinge`` the curvature
    weights of :func:`loss_derivatives`); ``v`` is (C, d) or a batch
    (k, C, d). With ``weights`` (n,) the loss is the weighted mean ``sum_i w_i l_i / sum_i w_i`` (0/1 weights
    select a subset without copying). Cost O(k n C d).
    """
    z = torch.einsum("nd,...cd->...nc", features, v)
    s = _curvature_times(probs, z, link)
    if weights is not None:
        s = s * weights[:, None]
    total = len(features) if weights is None else float(weights.sum())
    return torch.einsum("...nc,nd->...cd", s, features) / total


def head_hessian(features: torch.Tensor, probs: torch.Tensor, link: str, block_size: int = 8192,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """The explicit Hessian (C d, C d) of the mean loss, accumulated over blocks of examples.

    Block (c, c') is ``F^T diag(S_cc') F / n`` with ``S_cc' = delta_cc' p_c - p_c p_c'`` (softmax) or
    ``p (1 - p)`` (sigmoid), or the curvature weight passed as ``probs`` (squared_hinge); only the C (C + 1) / 2
    blocks with c <= c' are computed and the rest mirrored.
    ``weights`` as in :func:`head_hvp`. Cost O(n C^2 d^2 / 2).
    """
    n, d = features.shape
    c = probs.shape[1]
    hess = torch.zeros(c * d, c * d, dtype=features.dtype, device=features.device)
    for start in range(0, n, block_size):
        f = features[start:start + block_size]
        p = probs[start:start + block_size]
        w = 1.0 if weights is None else weights[start:start + block_size, None]
        if link == "sigmoid":
            hess += (f * (p * (1 - p)) * w).T @ f
            continue
        if link == "squared_hinge":
            hess += (f * p * w).T @ f
            continue
        for a in range(c):
            for b in range(a, c):
                weight = p[:, a:a + 1] * ((1.0 if a == b else 0.0) - p[:, b:b + 1]) * w
                hess[a * d:(a + 1) * d, b * d:(b + 1) * d] += (f * weight).T @ f
    if link == "softmax":
        for a in range(c):
            for b in range(a + 1, c):
                hess[b * d:(b + 1) * d, a * d:(a + 1) * d] = hess[a * d:(a + 1) * d, b * d:(b + 1) * d].T
    return hess / (n if weights is None else float(weights.sum()))
