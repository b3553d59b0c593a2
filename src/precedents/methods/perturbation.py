r"""Perturbation influence (Koh & Liang 2017, ``I_pert,loss``) and their training-set attack.

Setting (as :class:`~precedents.methods.influence.InfluenceFunction`): the parameters theta (the influence's
parameter set) minimise ``J(theta) = (1/n) sum_i l(x_i, y_i; theta) + (weight_decay / 2) ||theta||^2`` and
``H = hess J (+ damping I)``. Moving training input ``x_i`` to ``x_i + delta`` (label kept) and retraining moves
the optimum by ``-(1/n) H^-1 [grad_x grad_theta l(x_i, y_i)] delta`` (implicit function theorem), so the loss of
test point t changes, to first order in delta, by

    l_t(retrained) - l_t(theta*)  ~  (1/n) I_pert,loss(z_i, z_t)^T delta,
    I_pert,loss(z_i, z_t)^T = -grad_theta l_t^T H^-1 grad_x grad_theta l(x_i, y_i)          (Koh & Liang, eq. 5)

``I_pert`` has the shape of ``x_i`` and is in nats of test loss per unit of input *times n*: Koh & Liang's
definition leaves out the 1/n (their ``theta_{eps, z_delta, -z}`` with eps = 1/n); ``divide_by_n=True`` puts it
back, giving the exact derivative ``d l_t(theta*(x_1..x_n)) / d x_i`` of the retrained test loss (checked by
finite differences of exact retraining in ``tests/test_perturbation.py``).

Sign: moving the training input along ``+I_pert`` *increases* the test loss after retraining (to first order);
``-I_pert`` helps the test point. With Koh & Liang's minus sign in the definition this is their convention as
well: their attack steps along ``+sign(I_pert,loss)`` to raise the test loss.

It is computed without forming the (p x d) mixed derivative: with ``v = H^-1 grad_theta l_t`` (the influence's
``solver_``),

    I_pert = -grad_x [ v . grad_theta l(x, y; theta) ]   evaluated at x = x_i,

one double backward per training example (``torch.func``: ``vmap(grad(x -> <v, grad_theta l>))``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import grad, vmap

from .._validation import PrecedentsError
from ..linalg.functional import LossGradients, default_loss, model_logits, select_parameters
from ..linalg.head import class_probabilities
from .base import NotFittedError
from .influence import HeadCurvature, InfluenceFunction

__all__ = ["AttackResult", "perturbation_influence", "training_set_attack"]


def _gradients_and_layout(influence: InfluenceFunction) -> tuple[LossGradients, Callable[[torch.Tensor], dict]]:
    """The ``LossGradients`` over the influence's parameters and a map from the solver's flat vectors (k, p)
    to parameter dicts ``{name: (k, *shape)}``."""
    if influence.head_.link == "squared_hinge":
        raise PrecedentsError("Perturbation influence and the training-set attack are not implemented for a "
                              "squared-hinge (LinearSVC) model: they use the cross-entropy loss and class "
                              "probabilities. Use a LogisticRegression.")
    cur = influence.curvature_
    if not isinstance(cur, HeadCurvature):
        g = cur.grads
        return g, g.unflatten
    head = influence.head_
    if head.model is None:
        raise PrecedentsError(f"Perturbation influence differentiates the loss with respect to the inputs, which a "
                              f"{type(influence.model).__name__} does not allow: it needs a differentiable model.")
    names = select_parameters(head.model, "head", head.layer_name)
    # the weight decay does not depend on the inputs, so it plays no part in the mixed derivatives computed here
    g = LossGradients(head.model, names, loss_fn=default_loss, forward_fn=influence.forward_fn,
                      weight_decay=0.0, batch_size=influence.batch_size, progress=False)
    shape = cur.theta.shape                                 # (C, d [+ 1 bias column])
    weight = f"{head.layer_name}.weight" if head.layer_name else "weight"
    bias = f"{head.layer_name}.bias" if head.layer_name else "bias"

    def layout(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        theta = flat.reshape(len(flat), *shape).to(g.dtype).to(g.device)
        if head.has_bias:
            return {weight: theta[:, :, :-1], bias: theta[:, :, -1]}
        return {weight: theta}

    return g, layout


def _require_fitted(influence: InfluenceFunction) -> None:
    if not influence.is_fitted:
        raise NotFittedError(f"This {type(influence).__name__} is not fitted yet: call fit(X_train, y_train) first.")


def _as_batch(x: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    x = torch.as_tensor(x)
    if like is not None and x.shape == like.shape[1:]:
        x = x[None]
    return x


def perturbation_influence(influence: InfluenceFunction, x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
                           divide_by_n: bool = False, batch_size: int | None = None) -> torch.Tensor:
    r"""Koh & Liang's ``I_pert,loss(z_i, z_t)`` for each training example i given and each test point t.

    ``I[t, i] = -grad_theta l_t^T (H + damping I)^-1 grad_x grad_theta l(x_i, y_i)``, the gradient with respect
    to training input ``x_i`` of test t's loss after retraining, times n (Koh & Liang's scaling; ``divide_by_n``
    removes the factor n and gives the exact derivative). Moving ``x_i`` by a small ``delta`` and retraining
    changes test loss t by ``(I[t, i] * delta).sum() / n`` nats (to first order): ``+I`` is the direction that
    *raises* the test loss, the one a training-set attack steps along. The derivative is exact for
    ``damping=0`` at an exact optimum (``influence.stationarity_`` ~ 0); with ``params="head"`` on a network,
    "retraining" means refitting the head on the (changed) features, the body fixed.

    Args:
        influence: a fitted :class:`InfluenceFunction`; its parameter set, damping, weight decay, loss and solver
            are used (``params="head"`` differentiates the head layer's weight and bias, the rest of the
            model fixed but differentiated through to the input).
        x_train, y_train: training examples (a subset of the training set the influence was fitted on,
            in any order), shapes ``(m, *input_shape)`` and ``(m,)``. Inputs must be floating point.
        x_test, y_test: test points ``(k, *input_shape)`` and the labels whose loss is explained ``(k,)``.
        divide_by_n: divide by the influence's n (exact derivative of the retrained test loss).
        batch_size: training examples per vmap batch (default: the influence's).

    Returns:
        float64 tensor of shape ``(k, m, *input_shape)`` (nats of test loss per unit of input, times n unless
        ``divide_by_n``), on the CPU.
    """
    _require_fitted(influence)
    x_train = _as_batch(x_train)
    if not x_train.is_floating_point():
        raise PrecedentsError(f"x_train must be floating point (perturbation influence differentiates with "
                              f"respect to the inputs), got {x_train.dtype}.")
    y_train = torch.as_tensor(y_train).reshape(-1)
    if len(x_train) != len(y_train):
        raise PrecedentsError(f"x_train and y_train have different lengths: {len(x_train)} and {len(y_train)}.")
    x_test = _as_batch(x_test, x_train)
    y_test = torch.as_tensor(y_test).reshape(-1)
    g_test, _, _ = influence.test_gradients(x_test, y_test)
    solved = influence.solver_.solve(g_test)                            # (k, p): v_t = H^-1 grad l_t
    gl, layout = _gradients_and_layout(influence)
    vs = layout(solved)                                                 # {name: (k, *shape)}

    def directional(x: torch.Tensor, y: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        g = grad(lambda p: gl.losses_at(p, x[None], y[None])[0])(gl.params)
        return sum((g[name] * v[name]).sum() for name in gl.names)

    per_example = vmap(grad(directional), in_dims=(0, 0, None))       # over training examples
    per_pair = vmap(per_example, in_dims=(None, None, 0))              # over test points
    bs = batch_size or influence.batch_size
    out = torch.empty(len(x_test), len(x_train), *x_train.shape[1:], dtype=torch.float64)
    for s in range(0, len(x_train), bs):
        xb, yb = gl.prepare(x_train[s:s + bs], y_train[s:s + bs])
        out[:, s:s + bs] = -per_pair(xb, yb, vs).to(torch.float64).cpu()
    if divide_by_n:
        out /= influence.n_train_
    return out


# ---------------------------------------------------------------------------------------------------------
# Training-set attack
# ---------------------------------------------------------------------------------------------------------

@dataclass
class AttackResult:
    """What :func:`training_set_attack` did.

    ``index``: the training example perturbed; ``original`` / ``perturbed``: its input before and after (same
    shape and dtype as the training inputs); ``label``: its (unchanged) label. ``test_loss_*`` (nats) and
    ``test_prob_*`` (probability of the test point's correct label) and ``test_pred_*`` (predicted class) of
    the model trained on the original set (``before``) and retrained on the perturbed set (``after``);
    ``flipped``: the retrained model no longer predicts the correct label. ``linf`` / ``l2``: size of the
    perturbation. ``predicted_change``: the first-order prediction ``I_pert . delta / n`` of the test-loss
    change from the original model's ``I_pert``; ``actual_change = test_loss_after - test_loss_before``.
    ``selection_gain``: the first-order increase (nats) the chosen example promised at the start, ``sum_j max
    over feasible delta_j of I_pert[j] delta_j / n``. ``i_pert``: ``I_pert`` of the chosen example at the original
    model (Koh & Liang's scaling, times n). ``history``: one dict per step (step, test_loss, test_prob, pred,
    linf, l2). ``model``: the model retrained on the perturbed set.
    """

    index: int
    label: int
    original: torch.Tensor
    perturbed: torch.Tensor
    epsilon: float
    step_size: float
    steps: int
    test_loss_before: float
    test_loss_after: float
    test_prob_before: float
    test_prob_after: float
    test_pred_before: int
    test_pred_after: int
    flipped: bool
    linf: float
    l2: float
    predicted_change: float
    selection_gain: float
    i_pert: torch.Tensor
    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = None

    @property
    def actual_change(self) -> float:
        return self.test_loss_after - self.test_loss_before

    @property
    def perturbation(self) -> torch.Tensor:
        return (self.perturbed.to(torch.float64) - self.original.to(torch.float64))


def _test_outputs(model: nn.Module, influence: InfluenceFunction, x: torch.Tensor,
                  y: torch.Tensor) -> tuple[float, float, int]:
    """Loss (the influence's), probability of label y and predicted class of one test point."""
    logits = model_logits(model, x, influence.forward_fn)
    with torch.no_grad():
        loss = (influence.loss_fn or default_loss)(logits, y.to(logits.device))
    probs = class_probabilities(logits.to(torch.float64))[0]
    return float(loss.reshape(-1)[0]), float(probs[int(y)]), int(probs.argmax())


def _refit(influence: InfluenceFunction, model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> InfluenceFunction:
    params = {**influence.get_params(), "progress": False}
    return type(influence)(model, **params).fit(X, y)


def _feasible_gain(I: torch.Tensor, x: torch.Tensor, epsilon: float,
                   bounds: tuple[float, float] | None) -> torch.Tensor:
    """First-order test-loss increase (times n) of the best perturbation in the L_inf ball and the bounds:
    ``sum_j max over feasible delta_j of I_j delta_j`` for each row of I (m, *shape) with inputs x (m, *shape)."""
    up = torch.full_like(I, epsilon)
    down = torch.full_like(I, epsilon)
    if bounds is not None:
        xd = x.to(torch.float64)
        up = torch.minimum(up, (bounds[1] - xd).clamp_min(0))
        down = torch.minimum(down, (xd - bounds[0]).clamp_min(0))
    return torch.where(I > 0, I * up, -I * down).reshape(len(I), -1).sum(1)


def training_set_attack(retrain: Any, influence: InfluenceFunction,
                        X_train: Any, y_train: Any, x_test: Any, y_test: Any, index: int | None = None, *,
                        epsilon: float, steps: int, step_size: float | None = None,
                        bounds: tuple[float, float] | None = (0.0, 1.0), stop_when_flipped: bool = True,
                        candidates: Any = None) -> AttackResult:
    r"""Koh & Liang's training-set attack: perturb ONE training input so that retraining raises a test loss.

    Iterates ``x_i <- Proj(x_i + step_size * sign(I_pert,loss(z_i, z_test)))`` (Koh & Liang, section 5.2),
    ``Proj`` the projection onto the L_inf ball of radius ``epsilon`` around the original ``x_i`` intersected with
    ``bounds`` (the valid pixel range), the label kept. After every step the model is retrained on the modified
    training set (``retrain``) and ``I_pert`` is recomputed at the retrained model (the influence re-fitted with
    the same settings on the modified set); the attack stops early once the retrained model no longer predicts
    ``y_test`` (``stop_when_flipped``).

    Args:
        retrain: a retrainer (:class:`precedents.evaluate.Retrainer`) over the training set:
            ``retrain.retrain(X=X_modified, y=y_train)`` returns the model trained on the whole modified training
            set to the optimum of the objective the influence assumes (exactly, for a convex model:
            ``LogisticRegressionRetrainer``, warm-started at the original optimum). Called once per step.
        influence: an :class:`InfluenceFunction` fitted on ``(X_train, y_train)`` for ``influence.model``,
            the model trained on the original set.
        X_train, y_train: the full training set (floating-point inputs).
        x_test, y_test: one test point (``(1, *input_shape)`` or ``input_shape``) and its correct label; the
            attack raises the loss of that label.
        index: the training example to perturb. None: the one (among ``candidates``, default all) whose
            best first-order perturbation in the feasible set raises the test loss most,
            ``argmax_i sum_j max_{feasible delta_j} I_pert[i, j] delta_j`` (the L_inf-ball version of "the
            most influential training image").
        epsilon: L_inf radius of the perturbation (input units; pixels in [0, 1] for images).
        steps: at most this many signed-gradient steps (and retrains).
        step_size: default ``2.5 * epsilon / steps`` (at least ``epsilon / 4``).
        bounds: valid input range, or None for unbounded inputs.

    Returns:
        :class:`AttackResult`.
    """
    _require_fitted(influence)
    if not callable(getattr(retrain, "retrain", None)):
        raise PrecedentsError(f"retrain must be a Retrainer (retrain.retrain(X=..., y=...) -> model), e.g. "
                              f"precedents.evaluate.LogisticRegressionRetrainer; got {type(retrain).__name__}.")
    if epsilon <= 0 or steps < 1:
        raise PrecedentsError(f"epsilon must be > 0 and steps >= 1, got {epsilon} and {steps}.")
    X = torch.as_tensor(X_train).clone()
    y = torch.as_tensor(y_train).reshape(-1)
    if not X.is_floating_point():
        raise PrecedentsError(f"X_train must be floating point, got {X.dtype}.")
    if len(X) != influence.n_train_:
        raise PrecedentsError(f"X_train has {len(X)} examples but the influence was fitted on "
                              f"{influence.n_train_}: pass the training set it was fitted on.")
    x_t = _as_batch(x_test, X)
    y_t = torch.as_tensor(y_test).reshape(-1)
    if len(x_t) != 1 or len(y_t) != 1:
        raise PrecedentsError(f"training_set_attack targets one test point; got {len(x_t)}.")
    n = len(X)
    step_size = float(step_size) if step_size is not None else max(2.5 * epsilon / steps, epsilon / 4)

    model = influence.model
    loss0, prob0, pred0 = _test_outputs(model, influence, x_t, y_t)
    if index is None:
        pool = torch.arange(n) if candidates is None else torch.as_tensor(candidates).long().reshape(-1)
        I_pool = perturbation_influence(influence, X[pool], y[pool], x_t, y_t)[0]
        gains = _feasible_gain(I_pool, X[pool], epsilon, bounds)
        best = int(gains.argmax())
        index, I0, gain = int(pool[best]), I_pool[best], float(gains[best])
    else:
        index = int(index)
        if not 0 <= index < n:
            raise PrecedentsError(f"index must lie in [0, {n - 1}], got {index}.")
        I0 = perturbation_influence(influence, X[index:index + 1], y[index:index + 1], x_t, y_t)[0, 0]
        gain = float(_feasible_gain(I0[None], X[index:index + 1], epsilon, bounds)[0])

    x0 = X[index].clone()
    x0d = x0.to(torch.float64)
    lo, hi = x0d - epsilon, x0d + epsilon
    if bounds is not None:
        lo, hi = lo.clamp(min=bounds[0]), hi.clamp(max=bounds[1])
    I, inf = I0, influence
    loss, prob, pred = loss0, prob0, pred0
    history: list[dict[str, float]] = [{"step": 0, "test_loss": loss0, "test_prob": prob0, "pred": pred0,
                                        "linf": 0.0, "l2": 0.0}]
    taken = 0
    for step in range(1, steps + 1):
        x_new = torch.minimum(torch.maximum(X[index].to(torch.float64) + step_size * torch.sign(I), lo), hi)
        X[index] = x_new.to(X.dtype)
        model = retrain.retrain(X=X, y=y)
        loss, prob, pred = _test_outputs(model, inf, x_t, y_t)
        delta = X[index].to(torch.float64) - x0d
        history.append({"step": step, "test_loss": loss, "test_prob": prob, "pred": pred,
                        "linf": float(delta.abs().max()), "l2": float(delta.norm())})
        taken = step
        if (stop_when_flipped and pred != int(y_t[0])) or step == steps:
            break
        inf = _refit(influence, model, X, y)
        I = perturbation_influence(inf, X[index:index + 1], y[index:index + 1], x_t, y_t)[0, 0]

    delta = X[index].to(torch.float64) - x0d
    return AttackResult(
        index=index, label=int(y[index]), original=x0, perturbed=X[index].clone(), epsilon=float(epsilon),
        step_size=step_size, steps=taken, test_loss_before=loss0, test_loss_after=loss, test_prob_before=prob0,
        test_prob_after=prob, test_pred_before=pred0, test_pred_after=pred, flipped=pred != int(y_t[0]),
        linf=float(delta.abs().max()), l2=float(delta.norm()),
        predicted_change=float((I0 * delta).sum()) / n,
        selection_gain=gain / n, i_pert=I0, history=history, model=model)
