"""Pure torch functions: the head's loss, gradients, Hessian, Hessian-vector products and solvers."""

from .head import (
    head_hessian,
    head_hvp,
    link_probabilities,
    loss_derivatives,
    mean_loss,
    mean_loss_gradient,
    residuals,
    squared_hinge_losses,
    targets_from_labels,
)
from .solvers import HessianSolver, conjugate_gradient, minimize_newton_cg

__all__ = [
    "HessianSolver",
    "conjugate_gradient",
    "head_hessian",
    "head_hvp",
    "link_probabilities",
    "loss_derivatives",
    "mean_loss",
    "mean_loss_gradient",
    "minimize_newton_cg",
    "residuals",
    "squared_hinge_losses",
    "targets_from_labels",
]
