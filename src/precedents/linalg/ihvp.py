r"""Inverse-Hessian-vector products ``(H + damping I)^-1 b`` behind one interface, each saying how well it solved.

The Hessian is reached through a :class:`Curvature`: ``hvp(V)`` (exact Hessian-vector products over the whole
training set), ``sample_hvp(V, generator)`` (a minibatch estimate, for LiSSA) and ``hessian()`` (explicit, for
small parameter counts). Solvers:

* ``exact``: explicit Hessian in float64, eigendecomposed once (reused for every right-hand side). An
  indefinite Hessian (a negative eigenvalue beyond round-off after damping) is refused with its eigenvalues and
  a suggested damping; zero eigenvalues (a singular, positive semi-definite H) are dropped: pseudo-inverse.
* ``cg``: conjugate gradients on Hessian-vector products, tolerance and iteration cap; warns with the residual
  if it did not converge.
* ``lissa``: the stochastic recursion of Agarwal et al. used by Koh & Liang,
  ``x_j = b + x_{j-1} - (H_batch + damping I) x_{j-1} / scale``, result ``x_depth / scale`` (the division by the
  scale that a popular port forgets), averaged over ``repeats``; seeded.
* ``arnoldi``: the top-``rank`` eigenpairs of H by Lanczos iteration with full re-orthogonalisation (Schioppa et
  al. 2022; for a symmetric H Arnoldi is Lanczos), and ``V diag(1 / (lambda + damping)) V^T b`` on that subspace.
* ``kfac`` / ``ekfac``: the Gauss-Newton Hessian of every nn.Linear / nn.Conv2d as a Kronecker product of
  input and output-gradient covariances, block-diagonal across layers, eigenvalues corrected by a second pass
  for EK-FAC (:mod:`precedents.linalg.kfac`); per-layer damping ``damping_factor * mean eigenvalue`` (0.1 by
  default) plus ``damping``, plus the weight decay.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch

from .._validation import PrecedentsError
from .solvers import EigenInverse, checked_conjugate_gradient


class Curvature(Protocol):
    n_params: int

    def hvp(self, vectors: torch.Tensor) -> torch.Tensor: ...

    def sample_hvp(self, vectors: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def hessian(self) -> torch.Tensor: ...


class InverseHVP:
    """Base: ``solve(b)`` for b of shape (k, p); ``info`` holds the diagnostics of the last solve."""

    name = "base"

    def __init__(self, curvature: Curvature, damping: float) -> None:
        if damping < 0:
            raise PrecedentsError(f"damping must be >= 0, got {damping}.")
        self.curvature = curvature
        self.damping = float(damping)
        self.info: dict[str, float] = {}

    def solve(self, b: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def residual(self, x: torch.Tensor, b: torch.Tensor) -> float:
        """Largest relative residual ``||(H + damping I) x - b|| / ||b||`` over the batch."""
        r = self.curvature.hvp(x) + self.damping * x - b
        return float((r.norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)).max())


class ExactInverse(InverseHVP):
    name = "exact"

    def __init__(self, curvature: Curvature, damping: float) -> None:
        super().__init__(curvature, damping)
        self.spectral = EigenInverse.of(curvature.hessian(), self.damping)
        evals, tol = self.spectral.eigenvalues, self.spectral.tolerance
        negative = evals < -tol
        if negative.any():
            smallest, scale = float(evals.min()), float(evals.abs().max())
            raise PrecedentsError(
                f"The Hessian (+ damping {self.damping:g}) is indefinite: {int(negative.sum())} negative "
                f"eigenvalues, the smallest {smallest:.3e} (largest {scale:.3e}). The model is not at a minimum "
                f"of the training loss; pass damping >= {1.1 * (-smallest + self.damping):.3e} (Koh & Liang "
                "damp non-convex models), or train it to convergence.")
        if not len(self.spectral.kept):
            raise PrecedentsError("The Hessian (+ damping) is zero: every training example is fit with certainty, "
                                  "so no parameter direction has curvature. Pass damping > 0.")
        self.evals, self.evecs = self.spectral.kept, self.spectral.vectors
        self.info = {"condition_number": self.spectral.condition_number, "null_dim": float(self.spectral.null_dim),
                     "eigenvalue_max": float(self.evals.max()), "eigenvalue_min": float(self.evals.min())}

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return self.spectral.solve(b)


class CGInverse(InverseHVP):
    name = "cg"

    def __init__(self, curvature: Curvature, damping: float, tol: float = 1e-6, max_iter: int | None = None) -> None:
        super().__init__(curvature, damping)
        self.tol, self.max_iter = tol, max_iter

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        b = b.to(torch.float64)
        result = checked_conjugate_gradient(
            lambda v: self.curvature.hvp(v) + self.damping * v, b, tol=self.tol,
            max_iter=self.max_iter or max(100, min(10 * b.shape[1], 2000)), warn_above=100 * self.tol,
            advice="Add damping (an indefinite or near-singular Hessian stalls CG) or raise cg_max_iter.")
        self.info = {"iterations": float(result.iterations),
                     "relative_residual": float(result.relative_residual.max())}
        return result.solution


def power_iteration(apply, n_params: int, iterations: int = 30, seed: int = 0) -> float:
    """Largest-magnitude eigenvalue estimate of a symmetric operator."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, n_params, generator=g, dtype=torch.float64)
    v /= v.norm()
    value = 0.0
    for _ in range(iterations):
        w = apply(v)
        value = float((w * v).sum())
        v = w / w.norm().clamp_min(1e-300)
    return abs(value)


class LissaInverse(InverseHVP):
    name = "lissa"

    def __init__(self, curvature: Curvature, damping: float, scale: float | None = None, depth: int = 1000,
                 repeats: int = 1, seed: int = 0) -> None:
        super().__init__(curvature, damping)
        if scale is None:
            top = power_iteration(lambda v: curvature.hvp(v) + self.damping * v, curvature.n_params, seed=seed)
            scale = 1.1 * top
        self.scale, self.depth, self.repeats, self.seed = float(scale), int(depth), int(repeats), seed

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        b = b.to(torch.float64)
        total = torch.zeros_like(b)
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.repeats):
            x = b.clone()
            for _ in range(self.depth):
                x = b + x - (self.curvature.sample_hvp(x, generator) + self.damping * x) / self.scale
                if not torch.isfinite(x).all() or float(x.norm()) > 1e12 * float(b.norm()):
                    raise PrecedentsError(
                        f"LiSSA diverged (scale {self.scale:.3g}): the scale must exceed the largest eigenvalue "
                        "of H + damping I and H must be positive definite. Raise lissa_scale or damping.")
            total += x / self.scale
        x = total / self.repeats
        self.info = {"scale": self.scale, "depth": float(self.depth), "relative_residual": self.residual(x, b)}
        return x


class ArnoldiInverse(InverseHVP):
    name = "arnoldi"

    def __init__(self, curvature: Curvature, damping: float, rank: int = 50, iterations: int | None = None,
                 seed: int = 0) -> None:
        super().__init__(curvature, damping)
        p = curvature.n_params
        rank = min(rank, p)
        steps = min(p, iterations or 2 * rank + 10)
        g = torch.Generator().manual_seed(seed)
        basis = torch.zeros(steps + 1, p, dtype=torch.float64)
        v = torch.randn(p, generator=g, dtype=torch.float64)
        basis[0] = v / v.norm()
        alphas, betas = [], []
        m = steps
        for j in range(steps):
            w = curvature.hvp(basis[j][None])[0]
            alphas.append(float(w @ basis[j]))
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)          # full re-orthogonalisation (twice)
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
            beta = float(w.norm())
            if beta < 1e-12 * max(1.0, abs(alphas[-1])):
                m = j + 1
                break
            betas.append(beta)
            basis[j + 1] = w / beta
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(betas[: m - 1], dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        ritz, vecs = torch.linalg.eigh(t)
        order = ritz.abs().argsort(descending=True)[:rank]
        self.evals = ritz[order] + self.damping
        self.evecs = (basis[:m].T @ vecs[:, order])                     # (p, rank)
        if (self.evals <= 0).any():
            warnings.warn(f"Arnoldi: {int((self.evals <= 0).sum())} of the top eigenvalues of H + damping are "
                          "<= 0 (indefinite Hessian); they are dropped. Add damping.", RuntimeWarning, stacklevel=3)
            keep = self.evals > 0
            self.evals, self.evecs = self.evals[keep], self.evecs[:, keep]
        self.info = {"rank": float(len(self.evals)), "lanczos_steps": float(m),
                     "eigenvalue_max": float(self.evals.max()), "eigenvalue_min_kept": float(self.evals.min())}

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return EigenInverse(self.evals, self.evecs).solve(b)


class KFACInverse(InverseHVP):
    """K-FAC (``ekfac=False``) or EK-FAC inverse of the Gauss-Newton Hessian of a module's parameters, layer by
    layer (:class:`~precedents.linalg.kfac.KroneckerFactors`). Needs a curvature over a module's parameters
    (``params="all"`` or a list of Linear/Conv2d parameter names). Options: ``damping_factor`` (0.1),
    ``fisher`` ("expected", "sampled", "empirical"), ``seed``."""

    name = "kfac"
    ekfac = False

    def __init__(self, curvature: Curvature, damping: float, damping_factor: float = 0.1, fisher: str = "expected",
                 seed: int = 0) -> None:
        super().__init__(curvature, damping)
        from .kfac import KroneckerFactors

        grads = getattr(curvature, "grads", None)
        if grads is None:
            raise PrecedentsError(f"solver={self.name!r} factors the layers of a network: use params='all' (or a "
                                  "list of nn.Linear / nn.Conv2d parameter names), not the closed-form head.")
        self.factors = KroneckerFactors(
            grads.module.model, grads.names, loss_fn=grads.loss_fn, forward_fn=grads.module.forward_fn,
            fisher=fisher, ekfac=self.ekfac, damping_factor=damping_factor, damping=self.damping,
            weight_decay=grads.weight_decay, seed=seed, batch_size=grads.batch_size, progress=grads.progress,
        ).fit(curvature.X, curvature.y)
        self.info = dict(self.factors.info)

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return self.factors.solve(b.to(torch.float64))

    def example_dots(self, V: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``V @ grad l_i`` (k, stop - start) for training examples start..stop, from the layers' inputs and
        output gradients (no per-example gradient vectors)."""
        X, y = self.curvature.X, self.curvature.y
        return self.factors.example_dots(V, X[start:stop], y[start:stop])


class EKFACInverse(KFACInverse):
    name = "ekfac"
    ekfac = True


SOLVERS = {"exact": ExactInverse, "cg": CGInverse, "lissa": LissaInverse, "arnoldi": ArnoldiInverse,
           "kfac": KFACInverse, "ekfac": EKFACInverse}


def make_inverse(kind: str, curvature: Curvature, damping: float, **options: object) -> InverseHVP:
    if kind not in SOLVERS:
        raise PrecedentsError(f"Unknown solver {kind!r}; choose from {', '.join(SOLVERS)}.")
    return SOLVERS[kind](curvature, damping, **options)
