"""Linear solvers for Hessian systems, and a Newton-CG minimiser for convex heads."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .head import head_hessian, head_hvp

log = logging.getLogger(__name__)

#: Above this condition number the solve amplifies tiny curvature directions: a warning is issued.
CONDITION_WARNING = 1e6
#: Heads with at most this many parameters (C * d) are solved exactly by eigendecomposition; larger with CG.
MAX_EXACT_DIM = 3000

Operator = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CGResult:
    """Solution of a batch of systems, with how well each was solved."""

    solution: torch.Tensor        # (k, m)
    iterations: int
    relative_residual: torch.Tensor   # (k,) ||b - A x|| / ||b||
    lanczos_eigs: torch.Tensor | None  # Ritz values of A from the first system's Lanczos tridiagonal


def conjugate_gradient(apply: Operator, b: torch.Tensor, *, tol: float = 1e-10, max_iter: int | None = None,
                       track_spectrum: bool = False, precondition: Operator | None = None) -> CGResult:
    """Solve ``A x = b`` for a batch of right-hand sides ``b`` (k, m) with A symmetric positive (semi)definite.

    ``apply`` maps (k, m) to (k, m). Each column stops contributing once ``||r|| <= tol ||b||``. Starting
    from 0, iterates stay in the Krylov space of b, so for a singular A and b in its range the result is the
    minimum-norm (pseudo-inverse) solution. With ``track_spectrum`` the Lanczos tridiagonal of the first
    system is returned as Ritz values (its extremes estimate A's extreme eigenvalues on that Krylov space).
    ``precondition`` applies M^-1 for a symmetric positive definite M close to A (preconditioned CG; the
    Ritz values are then those of M^-1 A). A system meeting a direction of non-positive curvature stops there
    (its residual then says how far it got).
    """
    b = b.reshape(len(b), -1)
    k, m = b.shape
    max_iter = max_iter or 10 * m
    x = torch.zeros_like(b)
    r = b.clone()
    z = r if precondition is None else precondition(r)
    p = z.clone()
    rs = (r * z).sum(dim=1)
    r_norm = (r * r).sum(dim=1).sqrt()
    b_norm = r_norm.clamp_min(torch.finfo(b.dtype).tiny)
    diag, off = [], []
    prev_alpha = prev_beta = None
    stalled = torch.zeros(k, dtype=torch.bool, device=b.device)
    it = 0
    for it in range(1, max_iter + 1):
        active = (r_norm > tol * b_norm) & ~stalled
        if not active.any():
            it -= 1
            break
        ap = apply(p)
        pap = (p * ap).sum(dim=1)
        stalled |= active & (pap <= 0)          # no positive curvature along p: this system stops here
        alpha = torch.where(active & (pap > 0), rs / torch.where(pap > 0, pap, torch.ones_like(pap)),
                            torch.zeros_like(rs))
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        r_norm = (r * r).sum(dim=1).sqrt()
        z = r if precondition is None else precondition(r)
        rs_new = (r * z).sum(dim=1)
        beta = torch.where(active, rs_new / rs.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(rs))
        if track_spectrum and bool(active[0]) and float(alpha[0]) > 0:
            a0, b0 = float(alpha[0]), float(beta[0])
            diag.append(1 / a0 + (prev_beta / prev_alpha if prev_alpha else 0.0))
            if prev_alpha is not None:
                off.append(math.sqrt(max(prev_beta, 0.0)) / prev_alpha)
            prev_alpha, prev_beta = a0, b0
        p = z + beta[:, None] * p
        rs = torch.where(active, rs_new, rs)
    residual = (b - apply(x)).norm(dim=1) / b_norm
    eigs = None
    if track_spectrum and diag:
        t = torch.diag(torch.tensor(diag, dtype=torch.float64))
        if off:
            o = torch.tensor(off[: len(diag) - 1], dtype=torch.float64)
            t += torch.diag(o, 1) + torch.diag(o, -1)
        eigs = torch.linalg.eigvalsh(t)
    return CGResult(x, it, residual, eigs)


class EigenInverse:
    r"""``A^+ b`` from the eigenpairs of a symmetric positive semi-definite A (float64): the one spectral inverse
    behind the exact solvers (:class:`HessianSolver`, ``ihvp.ExactInverse``, ``ihvp.ArnoldiInverse``).

    :meth:`of` eigendecomposes ``(M + M^T) / 2 + shift I`` and keeps the eigenvalues above ``tolerance =
    dim * eps * max |lambda|`` (float64 round-off of the decomposition); the rest (zero, or negative within or
    beyond round-off: callers that must refuse an indefinite matrix check ``eigenvalues`` first) are dropped,
    giving the Moore-Penrose pseudo-inverse. ``basis`` (dim, m), optional: the kept eigenvectors are mapped
    back through it (the matrix was ``basis^T A basis``). ``solve(b) = V diag(1 / lambda) V^T b`` for a batch
    b (k, dim).
    """

    def __init__(self, kept: torch.Tensor, vectors: torch.Tensor, eigenvalues: torch.Tensor | None = None,
                 tolerance: float = 0.0) -> None:
        self.kept, self.vectors = kept, vectors
        self.eigenvalues = kept if eigenvalues is None else eigenvalues      # all of them, shift included
        self.tolerance = tolerance

    @classmethod
    def of(cls, matrix: torch.Tensor, shift: float = 0.0, *, basis: torch.Tensor | None = None) -> EigenInverse:
        matrix = matrix.to(torch.float64)
        evals, evecs = torch.linalg.eigh((matrix + matrix.T) / 2)
        evals = evals + shift
        tolerance = len(evals) * torch.finfo(torch.float64).eps * float(evals.abs().max()) if len(evals) else 0.0
        keep = evals > tolerance
        vectors = evecs[:, keep] if basis is None else basis @ evecs[:, keep]
        return cls(evals[keep], vectors, evals, tolerance)

    @property
    def null_dim(self) -> int:
        return len(self.eigenvalues) - len(self.kept)

    @property
    def condition_number(self) -> float:
        return float(self.kept.max() / self.kept.min()) if len(self.kept) else math.inf

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return ((b.to(torch.float64) @ self.vectors) / self.kept) @ self.vectors.T


def checked_conjugate_gradient(apply: Operator, b: torch.Tensor, *, tol: float, max_iter: int | None,
                               warn_above: float, advice: str) -> CGResult:
    """:func:`conjugate_gradient`, warning (``RuntimeWarning``, with ``advice``) when the worst relative residual
    ends above ``warn_above``: the one CG of the solvers that says when it did not converge."""
    result = conjugate_gradient(apply, b, tol=tol, max_iter=max_iter)
    worst = float(result.relative_residual.max()) if len(b) else 0.0
    if worst > warn_above:
        warnings.warn(f"Conjugate gradients did not converge: relative residual {worst:.2e} after "
                      f"{result.iterations} iterations. {advice}", RuntimeWarning, stacklevel=3)
    return result


class HessianSolver:
    r"""Applies ``(H + diag(regularizer) + damping I)^+`` for the Hessian H of a linear head's mean loss.

    ``regularizer`` (C, d), optional: a per-entry l2 strength in mean-loss units (the Hessian of
    ``1/2 sum regularizer * Theta^2``), e.g. a scikit-learn model's penalty with 0 on the intercept column. With
    ``damping == 0`` the structural null space is then the part of H's null space (below) that no penalised entry
    touches (for a softmax head with unpenalised intercepts: the shared shift of the intercepts); it is dropped
    in the same way, so the solve is again the pseudo-inverse of the regularised Hessian.

    ``method="exact"`` eigendecomposes H in float64 once (reusable for every right-hand side); with
    ``damping == 0`` eigenvalues below ``dim * eps * lambda_max`` are treated as the null space and dropped
    (the Moore-Penrose pseudo-inverse: the solve happens on the range of H, which is first restricted to its
    structural part: classes centred for softmax, and the span of the features). ``method="cg"`` runs batched
    conjugate gradients on Hessian-vector products; with ``damping == 0`` right-hand sides are first projected
    onto the range of H (for softmax: centred across classes; and restricted to the span of the features),
    so CG converges to the same minimum-norm solution. ``"auto"`` is exact while ``C d <= MAX_EXACT_DIM``.

    Attributes: ``condition_number`` (largest / smallest eigenvalue used; for CG the Ritz estimate),
    ``largest_eigenvalue`` (of the damped operator; for CG the Ritz estimate),
    ``null_dim`` (directions dropped, exact only), ``eigenvalues`` (exact only), ``last_residual``.
    """

    def __init__(self, features: torch.Tensor, probs: torch.Tensor, link: str, *, damping: float = 0.0,
                 method: str = "auto", cg_tol: float = 1e-10, cg_max_iter: int | None = None,
                 regularizer: torch.Tensor | None = None) -> None:
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        self.features, self.probs, self.link = features, probs, link
        self.n_outputs = probs.shape[1]
        self.d = features.shape[1]
        self.dim = self.n_outputs * self.d
        self.damping = float(damping)
        self.regularizer: torch.Tensor | None = None
        if regularizer is not None:
            reg = torch.as_tensor(regularizer, dtype=torch.float64).to(features.device)
            reg = reg.expand(self.n_outputs, self.d).reshape(-1).clone()
            if (reg < 0).any() or not torch.isfinite(reg).all():
                raise ValueError("regularizer must be finite and >= 0")
            self.regularizer = reg if (reg > 0).any() else None
        if method == "auto":
            method = "exact" if self.dim <= MAX_EXACT_DIM else "cg"
        if method not in ("exact", "cg"):
            raise ValueError(f"method must be 'auto', 'exact' or 'cg', got {method!r}")
        self.method = method
        self.cg_tol, self.cg_max_iter = cg_tol, cg_max_iter
        self.last_residual: float | None = None
        self.null_dim: int | None = None
        self.eigenvalues: torch.Tensor | None = None
        if method == "exact":
            self._factorize()
        else:
            self._prepare_cg()

    # -- exact ---------------------------------------------------------------------------------------
    def _range_basis(self) -> torch.Tensor | None:
        """Orthonormal basis (dim, m) of the structural range of H: classes centred (softmax) (x) feature span.

        Mathematically H is zero on the complement (shared class shifts, directions no feature reaches) and
        positive definite on this subspace whenever every probability is positive; None if nothing is dropped.
        """
        gram = self.features.T @ self.features
        evals, evecs = torch.linalg.eigh((gram + gram.T) / 2)
        feature_basis = evecs[:, evals > self.d * torch.finfo(torch.float64).eps * float(evals.max())]
        if self.link == "softmax":
            c = self.n_outputs
            centring = torch.eye(c, dtype=torch.float64) - 1.0 / c
            class_basis = torch.linalg.eigh(centring)[1][:, 1:]           # drop the all-ones direction
        else:
            class_basis = torch.ones(1, 1, dtype=torch.float64)
        if feature_basis.shape[1] == self.d and class_basis.shape[1] == self.n_outputs:
            return None
        feature_basis = feature_basis.to(torch.float64)
        kron = class_basis[:, None, :, None] * feature_basis[None, :, None, :]   # (C, d, C', r)
        return kron.reshape(self.dim, class_basis.shape[1] * feature_basis.shape[1])

    def _structural_null(self) -> torch.Tensor | None:
        """Orthonormal basis (dim, k) of the null space of ``H + diag(regularizer)`` that holds whatever the
        probabilities: null directions of H (shared class shifts of any feature direction for softmax, and any
        class times a direction no feature reaches) with zeros on every penalised entry. None if there is none."""
        gram = self.features.T @ self.features
        evals, evecs = torch.linalg.eigh((gram + gram.T) / 2)
        null_features = evecs[:, evals <= self.d * torch.finfo(torch.float64).eps * float(evals.max())].contiguous()
        c, d = self.n_outputs, self.d
        eye_c = torch.eye(c, dtype=torch.float64, device=gram.device)
        parts = []
        if self.link == "softmax":
            shared = torch.ones(c, 1, dtype=torch.float64, device=gram.device) / c**0.5
            centred = torch.linalg.eigh(eye_c - 1.0 / c)[1][:, 1:].contiguous()
            parts.append(torch.kron(shared, torch.eye(d, dtype=torch.float64, device=gram.device)))
            parts.append(torch.kron(centred, null_features))
        else:
            parts.append(torch.kron(eye_c, null_features))
        null = torch.cat(parts, dim=1)
        if null.shape[1] == 0:
            return None
        penalised = self.regularizer > 0
        if penalised.any():
            _, sing, vh = torch.linalg.svd(null[penalised], full_matrices=True)
            rank = int((sing > null.shape[1] * torch.finfo(torch.float64).eps * max(float(sing.max()), 1.0)).sum()) \
                if len(sing) else 0
            null = null @ vh[rank:].T
        return null if null.shape[1] else None

    def _factorize(self) -> None:
        hess = head_hessian(self.features, self.probs, self.link)
        if self.regularizer is not None:
            hess = hess + torch.diag(self.regularizer)
        if self.regularizer is None:
            basis = self._range_basis() if self.damping == 0 else None
        else:
            null = self._structural_null() if self.damping == 0 else None
            basis = None if null is None else torch.linalg.qr(null, mode="complete").Q[:, null.shape[1]:]
        if basis is not None:
            hess = basis.T @ hess @ basis
        self._spectral = EigenInverse.of(hess, self.damping, basis=basis)
        if not len(self._spectral.kept):
            raise ValueError("The head's Hessian is zero: every training example is fit with certainty.")
        self.eigenvalues = self._spectral.eigenvalues
        self.null_dim = self.dim - len(self._spectral.kept)
        self.condition_number = self._spectral.condition_number
        self.largest_eigenvalue = float(self._spectral.kept.max())

    # -- cg ------------------------------------------------------------------------------------------
    def _prepare_cg(self) -> None:
        self._basis = None
        self._null = None
        if self.damping == 0 and self.regularizer is not None:
            self._null = self._structural_null()
        elif self.damping == 0:
            gram = self.features.T @ self.features
            evals, evecs = torch.linalg.eigh((gram + gram.T) / 2)
            keep = evals > self.d * torch.finfo(torch.float64).eps * float(evals.max())
            if not keep.all():
                self._basis = evecs[:, keep]
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(1, self.dim, generator=generator, dtype=torch.float64).to(self.features.device)
        spectrum = conjugate_gradient(self._apply, self._project(probe), tol=1e-6,
                                      max_iter=min(200, self.dim), track_spectrum=True).lanczos_eigs
        if spectrum is not None and len(spectrum):
            positive = spectrum[spectrum > 0]
            self.condition_number = float(positive.max() / positive.min()) if len(positive) else math.inf
            self.largest_eigenvalue = float(positive.max()) if len(positive) else math.nan
        else:
            self.condition_number = math.nan
            self.largest_eigenvalue = math.nan

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        v3 = v.reshape(len(v), self.n_outputs, self.d)
        out = head_hvp(self.features, self.probs, v3, self.link).reshape(len(v), -1)
        if self.regularizer is not None:
            out = out + self.regularizer * v
        return out + self.damping * v if self.damping else out

    def _project(self, b: torch.Tensor) -> torch.Tensor:
        if self.damping:
            return b
        if self.regularizer is not None:
            return b if self._null is None else b - (b @ self._null) @ self._null.T
        b3 = b.reshape(len(b), self.n_outputs, self.d)
        if self.link == "softmax":
            b3 = b3 - b3.mean(dim=1, keepdim=True)
        if self._basis is not None:
            b3 = (b3 @ self._basis) @ self._basis.T
        return b3.reshape(len(b), -1)

    # -- public --------------------------------------------------------------------------------------
    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``(H + damping I)^+ b`` for a batch ``b`` of shape (k, C, d) or (k, C d); same shape back."""
        shape = b.shape
        flat = b.reshape(shape[0], -1).to(torch.float64)
        if self.method == "exact":
            x = self._spectral.solve(flat)
            self.last_residual = 0.0
        else:
            res = checked_conjugate_gradient(self._apply, self._project(flat), tol=self.cg_tol,
                                             max_iter=self.cg_max_iter, warn_above=max(1e3 * self.cg_tol, 1e-6),
                                             advice="Raise cg_max_iter or add damping.")
            x = res.solution
            self.last_residual = float(res.relative_residual.max()) if len(flat) else 0.0
        return x.reshape(shape)


@dataclass
class NewtonResult:
    solution: torch.Tensor
    gradient_norm: float
    iterations: int
    converged: bool


def minimize_newton_cg(objective: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                       hvp_at: Callable[[torch.Tensor], Operator], x0: torch.Tensor, *, gtol: float = 1e-10,
                       max_iter: int = 100,
                       preconditioner_at: Callable[[torch.Tensor], Operator | None] | None = None,
                       atol: float = 0.0, chord: Operator | None = None) -> NewtonResult:
    """Minimise a smooth strictly convex function by truncated Newton with Armijo backtracking.

    The one Newton minimiser of the package (RPS-l2's head refit, exact logistic regression and its retrains).

    ``objective(x) -> (value, gradient)``; ``hvp_at(x)`` returns ``v -> H(x) v`` for batches (k, *x.shape);
    ``preconditioner_at(x)`` optionally returns ``v -> M(x)^-1 v`` on flattened (k, x.numel()) batches (or None
    for no preconditioner at this step). Stops when ``||grad|| <= max(atol, gtol * max(1, ||grad(x0)||))``.
    Converges quadratically near the optimum, so the final gradient reaches float64 round-off in a handful of
    steps.

    ``chord`` (optional, flattened like ``preconditioner_at``'s operators): a fixed ``M^-1``, e.g. the inverse
    Hessian at a nearby point (the full-data optimum when retraining without a few examples). While the chord
    step ``x - M^-1 grad`` (one objective evaluation) contracts the gradient fourfold without raising the
    value, it is taken instead of a Newton step; at the first one that does not, Newton steps take over.
    The Armijo test admits a decrease below the value's round-off (``1e-15 |f|``), so the last Newton steps,
    whose decrease is lost in round-off, are still taken.
    """
    x = x0.clone()
    value, grad = objective(x)
    g0 = max(1.0, float(grad.norm()))
    threshold = max(atol, gtol * g0)
    shape = x.shape
    it = 0
    for it in range(1, max_iter + 1):
        gnorm = float(grad.norm())
        if gnorm <= threshold:
            it -= 1
            break
        if chord is not None:
            trial = x - chord(grad.reshape(1, -1)).reshape(shape)
            trial_value, trial_grad = objective(trial)
            if float(trial_grad.norm()) <= 0.25 * gnorm and float(trial_value) <= float(value) + 1e-15 * abs(
                    float(value)):
                x, value, grad = trial, trial_value, trial_grad
                continue
            chord = None
        forcing = min(0.5, math.sqrt(gnorm / g0)) * 1e-2
        apply = hvp_at(x)

        def flat_apply(v: torch.Tensor, apply: Operator = apply) -> torch.Tensor:
            return apply(v.reshape(len(v), *shape)).reshape(len(v), -1)

        step = conjugate_gradient(flat_apply, -grad.reshape(1, -1), tol=max(forcing, 1e-14), max_iter=10 * grad.numel(),
                                  precondition=None if preconditioner_at is None else preconditioner_at(x),
                                  ).solution.reshape(shape)
        slope = float((grad * step).sum())
        if slope >= 0:
            step, slope = -grad, -gnorm**2
        t = 1.0
        while True:
            new_value, new_grad = objective(x + t * step)
            if float(new_value) <= float(value) + 1e-4 * t * slope + 1e-15 * abs(float(value)) or t < 1e-12:
                break
            t /= 2
        if t < 1e-12:
            break
        x = x + t * step
        value, grad = new_value, new_grad
    gnorm = float(grad.norm())
    return NewtonResult(x, gnorm, it, gnorm <= max(atol, 10 * gtol * g0))
