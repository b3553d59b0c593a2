r"""Randomisation sanity check for data attribution (Adebayo et al. 2018's model randomisation test, and Zhang et
al. 2017's randomisation test of seed 004, turned on explanations; Hanawa et al. 2021 for training-data methods).

An explanation of a model's prediction must depend on the model. So explain the same test points, with the same
training set, twice: once with the trained model and once with a *randomised* one, whose learned content is
destroyed, and measure how much the explanations agree:

* :func:`reinitialize`: the model's weights re-initialised (seeded), the top layer only, the top ``m`` layers
  (cascading from the logits down, as Adebayo et al.), named layers, or all of them;
* :func:`label_randomized_model`: the model retrained by the caller's retrainer (``retrain.retrain(y=...)``) on
  randomly permuted labels (Zhang et al.: a network fits them, but has learned nothing about the task).

:func:`sanity` fits the same method on both models (``make_explainer(model)``, the same training set with its given
labels) and returns a :class:`SanityResult`: per test point, the Spearman rank correlation of the two score vectors
across the n training examples (1 = the explanation did not change at all) summarised over the test points, and the
Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of the two top-k proponent (and opponent) sets.

Reading guide (not a verdict; the thresholds are a convention of this package, not from a paper): a method whose
explanations *change* under randomisation passes. ``reading`` says

* ``"changed"`` when the median |Spearman| is at most 0.3 and the mean top-k Jaccard at most 0.1;
* ``"unchanged"`` when the median |Spearman| is at least 0.7 or the mean top-k Jaccard at least 0.5: the
  explanation is mostly determined by something the randomisation kept (the inputs' similarity, the labels);
* ``"partly changed"`` otherwise.

Comparing a model with itself gives Spearman 1 and Jaccard 1 for every deterministic method.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import PrecedentsError
from .retrain import Retrainer
from .stability import collect_data, pairwise_topk_jaccard, rowwise_spearman, topk_sets

__all__ = ["SanityResult", "label_randomized_model", "parameterised_layers", "randomize_labels", "reinitialize",
           "sanity", "to_markdown"]

#: Reading guide thresholds (see the module docstring).
CHANGED_SPEARMAN, CHANGED_JACCARD = 0.3, 0.1
UNCHANGED_SPEARMAN, UNCHANGED_JACCARD = 0.7, 0.5


@dataclass
class SanityResult:
    """Agreement between a method's explanations on the real and on a randomised model (1 = no change)."""

    method: str
    randomization: str
    n_test: int
    n_train: int
    k: int
    spearman_mean: float
    spearman_median: float
    abs_spearman_median: float
    spearman_p95: float
    jaccard_mean: float
    opponent_jaccard_mean: float
    undefined_spearman: int
    seconds: float

    @property
    def reading(self) -> str:
        """``"changed"`` (passes), ``"partly changed"`` or ``"unchanged"``: a reading guide, see the module."""
        if not np.isfinite(self.abs_spearman_median):
            return "undefined"
        if self.abs_spearman_median >= UNCHANGED_SPEARMAN or self.jaccard_mean >= UNCHANGED_JACCARD:
            return "unchanged"
        if self.abs_spearman_median <= CHANGED_SPEARMAN and self.jaccard_mean <= CHANGED_JACCARD:
            return "changed"
        return "partly changed"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reading": self.reading}


# -- randomised models ---------------------------------------------------------------------------------------

def parameterised_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in registration order (input side first)."""
    return [name for name, module in model.named_modules()
            if any(True for _ in module.parameters(recurse=False))]


def reinitialize(model: nn.Module, layers: str | int | Sequence[str] = "last", *, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with the weights of some layers re-initialised (the model itself is not changed).

    ``layers``: ``"last"`` (the top layer, usually the final ``nn.Linear``), ``"all"``, an int ``m`` (the top m
    layers: cascading randomisation from the logits down, Adebayo et al. 2018) or a list of module names (see
    :func:`parameterised_layers`). Each layer is reset by its own ``reset_parameters()`` (PyTorch's default
    initialisation) with the RNG seeded by ``seed`` and the layer's position, so a layer gets the same random
    weights in every cascade step and the same seed gives the same model. The global RNG is left as it was.
    """
    names = parameterised_layers(model)
    if not names:
        raise PrecedentsError(f"The {type(model).__name__} has no parameters to re-initialise.")
    if isinstance(layers, str) and layers in ("last", "all"):
        chosen = names[-1:] if layers == "last" else names
    elif isinstance(layers, int) and not isinstance(layers, bool):
        if not 1 <= layers <= len(names):
            raise PrecedentsError(f"layers={layers}: the model has {len(names)} parameterised layers "
                                  f"({', '.join(names)}); pass 1..{len(names)}.")
        chosen = names[-layers:]
    elif isinstance(layers, Sequence) and not isinstance(layers, str):
        chosen = list(layers)
        unknown = [name for name in chosen if name not in names]
        if unknown:
            raise PrecedentsError(f"No parameterised layer named {unknown[0]!r}; the model has: {', '.join(names)}.")
    else:
        raise PrecedentsError(f"layers must be 'last', 'all', a number of top layers or a list of layer names, "
                              f"got {layers!r}.")
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    for name in chosen:
        module = modules[name]
        if not hasattr(module, "reset_parameters"):
            raise PrecedentsError(f"Layer {name!r} ({type(module).__name__}) has no reset_parameters(); "
                                  "re-initialise it yourself or leave it out of layers.")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) * 1_000_003 + names.index(name))
            module.reset_parameters()
    return out.eval()


def randomize_labels(y: Any, *, seed: int = 0, fraction: float = 1.0) -> torch.Tensor:
    """Labels with a ``fraction`` of the examples' labels randomly permuted among themselves (seeded).

    A permutation keeps the class frequencies (Zhang et al. 2017's "random labels" draw them uniformly instead);
    ``fraction=1`` permutes them all, so the labels carry no information about the inputs.
    """
    y = torch.as_tensor(y).clone()
    if not 0.0 < fraction <= 1.0:
        raise PrecedentsError(f"fraction must be in (0, 1], got {fraction}.")
    g = torch.Generator().manual_seed(int(seed))
    chosen = torch.randperm(len(y), generator=g)[: int(round(fraction * len(y)))]
    y[chosen] = y[chosen[torch.randperm(len(chosen), generator=g)]]
    return y


def label_randomized_model(retrain: Retrainer, *, seed: int = 0, fraction: float = 1.0) -> tuple[Any, torch.Tensor]:
    """``(retrain.retrain(y=y_random), y_random)``: the caller's training procedure (a
    :class:`~precedents.evaluate.retrain.Retrainer` holding the training set, e.g. ``FromScratchRetrainer(train_fn,
    X, y)``) run on its labels randomly permuted (:func:`randomize_labels`)."""
    if not isinstance(retrain, Retrainer):
        raise PrecedentsError(f"retrain must be a Retrainer holding the training set (e.g. "
                              f"FromScratchRetrainer(train_fn, X, y)), got {type(retrain).__name__}.")
    if getattr(retrain, "y", None) is None:
        raise PrecedentsError("The retrainer holds no training labels to randomise; give it y.")
    y_random = randomize_labels(retrain.y, seed=seed, fraction=fraction)
    model = retrain.retrain(y=y_random)
    if isinstance(model, nn.Module):
        model = model.eval()
    return model, y_random


# -- the check -----------------------------------------------------------------------------------------------

def sanity(make_explainer: Callable[[nn.Module], Any], model: nn.Module, randomized_model: nn.Module, train: Any,
           X_test: Any, y_test: Any = None, *, k: int = 10, chunk: int = 200, name: str | None = None,
           randomization: str = "randomised", quiet: bool = True) -> SanityResult:
    """Compare a method's explanations on ``model`` and on ``randomized_model`` (see the module docstring).

    Parameters
    ----------
    make_explainer : ``model -> unfitted estimator`` (``.fit(X, y)``, ``.attribute(X, y)``), the same settings for
        both models.
    train : the training set as ``fit`` accepts it, with its given labels, used for both models.
    X_test, y_test : the test points; ``y_test`` goes to ``attribute`` for both models (the target class of
        representers, the labels whose loss is explained for loss-based methods), so that both explain the same
        quantity; None: each model's predicted class (representers only).
    k : size of the top-k sets; chunk : test points attributed at once.
    randomization : a label for the report (e.g. ``"last layer re-initialised"``).
    quiet : silence RuntimeWarnings (a randomised model is not at a stationary point, and says so).
    """
    if k < 1 or chunk < 1:
        raise PrecedentsError(f"k and chunk must be at least 1, got k={k}, chunk={chunk}.")
    X, y = collect_data(train)
    Xt = torch.as_tensor(X_test)
    yt = None if y_test is None else torch.as_tensor(y_test)
    if yt is not None and len(yt) != len(Xt):
        raise PrecedentsError(f"X_test has {len(Xt)} examples but y_test has {len(yt)}: give one label per point.")
    start = time.perf_counter()
    rho, jac, opp = [], [], []
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", RuntimeWarning)
        real = make_explainer(model).fit(X, y)
        rand = make_explainer(randomized_model).fit(X, y)
        for t0 in range(0, len(Xt), chunk):
            xs, ys = Xt[t0:t0 + chunk], None if yt is None else yt[t0:t0 + chunk]
            a = real.attribute(xs, target=ys).scores.to(torch.float64)
            b = rand.attribute(xs, target=ys).scores.to(torch.float64)
            rho.append(rowwise_spearman(a, b))
            jac.append(pairwise_topk_jaccard(topk_sets(a, k, True), topk_sets(b, k, True)))
            opp.append(pairwise_topk_jaccard(topk_sets(a, k, False), topk_sets(b, k, False)))
    rho_all = np.concatenate(rho)
    defined = rho_all[np.isfinite(rho_all)]

    def stat(fn: Callable[[np.ndarray], Any]) -> float:
        return float(fn(defined)) if defined.size else float("nan")

    return SanityResult(
        method=name or getattr(real, "key", type(real).__name__), randomization=randomization,
        n_test=len(Xt), n_train=len(X), k=min(k, len(X)), spearman_mean=stat(np.mean),
        spearman_median=stat(np.median), abs_spearman_median=float(np.median(np.abs(defined))) if defined.size
        else float("nan"), spearman_p95=stat(lambda v: np.quantile(v, 0.95)),
        jaccard_mean=float(np.concatenate(jac).mean()), opponent_jaccard_mean=float(np.concatenate(opp).mean()),
        undefined_spearman=int(rho_all.size - defined.size), seconds=time.perf_counter() - start)


def to_markdown(results: Sequence[SanityResult]) -> str:
    """A markdown table of sanity results, one row per (method, randomisation)."""
    lines = ["| method | randomisation | Spearman mean | median | 95% | top-k Jaccard | opponents Jaccard | reading |",
             "|" + "---|" * 8]
    for r in results:
        lines.append(f"| {r.method} | {r.randomization} | {r.spearman_mean:.3f} | {r.spearman_median:.3f} | "
                     f"{r.spearman_p95:.3f} | {r.jaccard_mean:.3f} | {r.opponent_jaccard_mean:.3f} | {r.reading} |")
    return "\n".join(lines)
