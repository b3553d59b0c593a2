"""Pure torch functions: the head's loss, gradients, Hessian, Hessian-vector products and solvers."""

from .head import (
    class_probabilities,
    head_hessian,
    head_hvp,
    link_for_outputs,
    link_probabilities,
    log_margin,
    loss_derivatives,
    mean_loss,
    mean_loss_gradient,
    n_classes_for_outputs,
    predicted_classes,
    residuals,
    squared_hinge_loss,
    targets_from_labels,
)
from .solvers import HessianSolver, conjugate_gradient, minimize_newton_cg

__all__ = [
    "HessianSolver",
    "class_probabilities",
    "conjugate_gradient",
    "head_hessian",
    "head_hvp",
    "link_for_outputs",
    "link_probabilities",
    "log_margin",
    "loss_derivatives",
    "mean_loss",
    "mean_loss_gradient",
    "minimize_newton_cg",
    "n_classes_for_outputs",
    "predicted_classes",
    "residuals",
    "squared_hinge_loss",
    "targets_from_labels",
]
