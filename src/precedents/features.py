r"""Feature attribution beside data attribution (seed 002): *which pixels* next to *which training examples*.

Captum is the engine (optional extra ``features``: ``pip install captum``); nothing here re-implements what it
has. Every method explains the same number as the data-attribution methods: the logit of the target class
(for a one-output sigmoid head, class 1 is the logit and class 0 its negation, the package's sign convention).
Positive values support that output.

=============  ==========================================  ===================================================
name           what (Captum class)                         units of each value
=============  ==========================================  ===================================================
saliency       ``d logit_c / d x`` (Saliency, signed)      logit per unit of input (Simonyan et al., 2013)
smoothgrad     ``E_z [d logit_c / d x (x + z)]``,           logit per unit of input (Smilkov et al., 2017)
               ``z ~ N(0, (sigma (max x - min x))^2)``
               (NoiseTunnel over Saliency, signed)
ig             ``(x - b) * int_0^1 d logit_c / dx            logit; sums to ``logit_c(x) - logit_c(b)``
               (b + a (x - b)) da`` (IntegratedGradients)    (completeness; Sundararajan et al., 2017)
occlusion      ``logit_c(x) - logit_c(x with the patch       logit; every pixel shows its patch's value (the
               set to the baseline)`` (Occlusion)            lecture's perturbation analysis, delta = b - x)
lime           coefficient of a patch's presence in a         logit per patch present; every pixel shows its
               linear model fit to ``logit_c`` on random      patch's coefficient (Ribeiro et al., 2016)
               patch subsets (Lime, exponential cosine
               kernel, least squares)
=============  ==========================================  ===================================================

Images ``(n, C, H, W)`` or ``(n, H, W)`` are perturbed in square patches (``patch`` pixels, all channels
together) for occlusion and LIME; tabular inputs ``(n, d)`` feature by feature. The baseline ``b`` (default 0:
a black image, or the mean of standardised features) is the "absent" value for IG, occlusion and LIME.

:func:`tcav` computes concept sensitivity (Kim et al., 2018) with Captum's ``TCAV``: a concept is a set of
example inputs (e.g. digits with a horizontal stroke added, :func:`add_stroke`), its activation vector (CAV)
the normal of a linear classifier (scikit-learn logistic regression) separating the concept's activations at a
layer from those of a random set; the TCAV score of class k is the fraction of class-k inputs whose logit_k
increases along the CAV, ``mean_x 1[grad_layer logit_k(x) . v > 0]`` (a fraction in [0, 1]).
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._validation import PrecedentsError, check_finite, check_labels

__all__ = ["FEATURE_METHODS", "TCAVResult", "add_stroke", "feature_attributions", "tcav"]

#: Method names accepted by :func:`feature_attributions`, in display order, with a short description.
FEATURE_METHODS: dict[str, str] = {
    "saliency": "gradient of the logit (logit per unit of input)",
    "smoothgrad": "gradient averaged over noisy copies (logit per unit of input)",
    "ig": "Integrated Gradients from the baseline (logit; sums to logit(x) - logit(baseline))",
    "occlusion": "logit drop when a patch is set to the baseline (logit)",
    "lime": "LIME coefficient of each patch (logit per patch)",
}

_INSTALL = "pip install captum (or pip install 'precedents[features]')"


def _import(module: str, what: str, install: str = _INSTALL) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise PrecedentsError(f"{what} needs the package that provides {module!r}, which is not importable "
                              f"({err}). Fix: {install}") from err


class _Logits(nn.Module):
    """The explained outputs as a (n, C) tensor: the model's logits, or ``[-z, z]`` for a one-output head."""

    def __init__(self, model: nn.Module, forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None):
        super().__init__()
        self.model = model
        self.forward_fn = forward_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_fn(self.model, x) if self.forward_fn is not None else self.model(x)
        if not isinstance(out, torch.Tensor):
            raise PrecedentsError(f"The model returned a {type(out).__name__}, not a logits tensor; pass "
                                  "forward_fn=lambda model, x: ... that selects the logits.")
        out = out.reshape(len(x), -1)
        return torch.cat([-out, out], dim=1) if out.shape[1] == 1 else out


def _prepare(model: nn.Module, X: Any, forward_fn: Any) -> tuple[_Logits, torch.Tensor]:
    from .adapters import as_torch_module

    model, _ = as_torch_module(model, "Feature attribution")
    X = torch.as_tensor(X)
    if X.ndim < 2 or len(X) == 0 or not X.is_floating_point():
        raise PrecedentsError(f"X must be a non-empty float batch (n, *input_shape), got shape {tuple(X.shape)} "
                              f"and dtype {X.dtype}.")
    check_finite("Inputs to explain", X)
    param = next(model.parameters(), None)
    if param is not None:
        X = X.to(device=param.device, dtype=param.dtype)
    wrapped = _Logits(model, forward_fn).eval()
    return wrapped, X.detach()


def _targets(wrapped: _Logits, X: torch.Tensor, target: Any) -> torch.Tensor:
    with torch.no_grad():
        logits = wrapped(X)
    if target is None:
        return logits.argmax(1)
    target = torch.as_tensor(target)
    if target.ndim == 0:
        target = target.expand(len(X))
    return check_labels(target, logits.shape[1], len(X), name="target").to(X.device)


def patch_mask(input_shape: Sequence[int], patch: int) -> torch.Tensor:
    """Feature groups for occlusion/LIME: square ``patch`` x ``patch`` blocks for images, one id per feature else.

    ``input_shape`` excludes the batch axis; returns an int64 tensor of that shape (ids 0 .. groups-1), all
    channels of an image pixel in the same group.
    """
    shape = tuple(input_shape)
    if len(shape) < 2:
        return torch.arange(int(np.prod(shape))).reshape(shape)
    h, w = shape[-2:]
    rows = torch.arange(h) // patch
    cols = torch.arange(w) // patch
    ids = rows[:, None] * ((w + patch - 1) // patch) + cols[None, :]
    return ids.expand(shape).clone()


def feature_attributions(model: nn.Module, X: Any, target: Any = None,
                         methods: Sequence[str] = ("saliency", "smoothgrad", "ig", "occlusion", "lime"), *,
                         baseline: float | torch.Tensor = 0.0, patch: int = 4, ig_steps: int = 50,
                         smoothgrad_samples: int = 25, smoothgrad_sigma: float = 0.15, lime_samples: int = 200,
                         seed: int = 0, forward_fn: Any = None) -> dict[str, torch.Tensor]:
    """Feature attributions of ``X`` for class ``target`` by each of ``methods`` (see the module docstring).

    Parameters
    ----------
    model : a torch classifier returning logits; put in eval mode by the caller (not changed here).
    X : (n, *input_shape) float inputs; cast to the model's dtype.
    target : None (the predicted class), one class for all, or one per input.
    methods : names from :data:`FEATURE_METHODS`.
    baseline : the "absent" input for IG, occlusion and LIME: a scalar or a tensor broadcastable to X.
    patch : side of the square patches of occlusion and LIME (images); tabular inputs use single features.
    ig_steps : Gauss-Legendre steps of Integrated Gradients.
    smoothgrad_samples, smoothgrad_sigma : noisy copies, and the noise std as a fraction of ``max X - min X``.
    lime_samples : random patch subsets per input for LIME.
    seed : the random draws of SmoothGrad and LIME (the global RNG is restored afterwards).
    forward_fn : ``forward_fn(model, x) -> logits`` for models whose forward needs it.

    Returns ``{name: tensor shaped like X}`` (float64, CPU), in the order of ``methods``.
    """
    unknown = [m for m in methods if m not in FEATURE_METHODS]
    if unknown:
        raise PrecedentsError(f"Unknown feature attribution method(s) {', '.join(map(repr, unknown))}; choose from "
                              f"{', '.join(FEATURE_METHODS)}.")
    if patch < 1:
        raise PrecedentsError(f"patch must be a positive number of pixels, got {patch}.")
    attr = _import("captum.attr", "Feature attribution")
    wrapped, X = _prepare(model, X, forward_fn)
    target = _targets(wrapped, X, target)
    base = torch.as_tensor(baseline, dtype=X.dtype, device=X.device)
    base = base.expand_as(X).contiguous()
    images = X.ndim >= 3
    mask = patch_mask(X.shape[1:], patch if images else 1).to(X.device)[None]
    out: dict[str, torch.Tensor] = {}
    grad_X = X.clone().requires_grad_(True)               # gradient methods: no "did not require grad" warning
    for name in methods:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if name == "saliency":
                values = attr.Saliency(wrapped).attribute(grad_X, target=target, abs=False)
            elif name == "smoothgrad":
                sigma = smoothgrad_sigma * float(X.max() - X.min())
                values = attr.NoiseTunnel(attr.Saliency(wrapped)).attribute(
                    grad_X, nt_type="smoothgrad", nt_samples=smoothgrad_samples, stdevs=sigma, target=target, abs=False,
                    nt_samples_batch_size=max(1, 512 // len(X)))
            elif name == "ig":
                values = attr.IntegratedGradients(wrapped).attribute(grad_X, baselines=base, target=target,
                                                                      n_steps=ig_steps, internal_batch_size=512)
            elif name == "occlusion":
                window = (X.shape[1], patch, patch) if X.ndim == 4 else (patch, patch) if images else (1,)
                values = attr.Occlusion(wrapped).attribute(X, sliding_window_shapes=window, strides=window,
                                                           baselines=base, target=target, perturbations_per_eval=64)
            else:
                values = _lime(attr, wrapped, X, target, base, mask, lime_samples)
        out[name] = values.detach().to(torch.float64).cpu()
    return out


def _lime(attr: Any, wrapped: nn.Module, X: torch.Tensor, target: torch.Tensor, base: torch.Tensor,
          mask: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Captum's Lime, one input at a time, with an unregularised least-squares surrogate (exact for a linear
    model) over the patch-presence features and Captum's exponential kernel on cosine distance."""
    models = _import("captum._utils.models.linear_model", "LIME")
    _import("sklearn", "LIME's surrogate model", "pip install scikit-learn")
    lime = attr.Lime(wrapped, interpretable_model=models.SkLearnLinearRegression())
    rows = [lime.attribute(X[i:i + 1], target=target[i:i + 1], baselines=base[i:i + 1], feature_mask=mask,
                           n_samples=n_samples, perturbations_per_eval=n_samples) for i in range(len(X))]
    return torch.cat(rows)


def add_stroke(images: Any, *, thickness: int = 2, rows: tuple[int, int] = (6, 20), columns: tuple[int, int] = (4, 24),
               value: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Copies of ``images`` (n, [C,] H, W) with a horizontal stroke drawn at a random row (seeded).

    The stroke covers ``columns[0] .. columns[1]-1`` and ``thickness`` rows starting at a row drawn uniformly
    from ``rows[0] .. rows[1]-1``; its pixels are set to ``value`` (the ink intensity of [0, 1] MNIST images).
    Used to define a "horizontal stroke" concept for TCAV.
    """
    out = torch.as_tensor(images).clone()
    if out.ndim < 3:
        raise PrecedentsError(f"add_stroke needs images (n, [C,] H, W), got shape {tuple(out.shape)}.")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(rows[0], rows[1], (len(out),), generator=g)
    for i, r in enumerate(starts.tolist()):
        out[i, ..., r:r + thickness, columns[0]:columns[1]] = value
    return out


@dataclass
class TCAVResult:
    """TCAV scores of one concept at one layer, per class (Kim et al., ICML 2018).

    ``scores`` (n_classes, R): fraction of class-k inputs with a positive directional derivative of logit k along
    the CAV of concept-vs-random-set r; ``null_scores`` (n_classes, R-1): the same for CAVs of random set 0 vs
    random set r (what chance looks like); ``p_values`` (n_classes,): two-sided t-test of the two;
    ``cav_accuracy`` (R,): held-out accuracy of each concept-vs-random classifier; ``cavs`` (R, F): the unit
    CAVs (pointing toward the concept) in the flattened activation space of the layer; ``n_inputs`` per class.
    """

    concept: str
    layer: str
    classes: list[int]
    scores: np.ndarray
    null_scores: np.ndarray
    p_values: np.ndarray
    cav_accuracy: np.ndarray
    cavs: np.ndarray
    n_inputs: list[int]

    def rows(self) -> list[list[Any]]:
        """Table rows: class, mean and std TCAV score, mean random-CAV score, p-value, inputs."""
        return [[k, float(self.scores[j].mean()), float(self.scores[j].std()),
                 float(self.null_scores[j].mean()) if self.null_scores.shape[1] else float("nan"),
                 float(self.p_values[j]), self.n_inputs[j]] for j, k in enumerate(self.classes)]

    columns = ["class", "TCAV score (mean)", "std over random sets", "random-CAV score (mean)", "p-value",
               "inputs"]


class _LogisticCAV:
    """Captum ``Classifier`` backed by scikit-learn's LogisticRegression (deterministic; held-out accuracy).

    Captum expects one weight row per class; a binary logistic regression has one normal ``w`` pointing toward
    the larger label, so the rows are ``[-w, w]`` for the classes in sorted order: each row points toward its
    own class, and the concept's row is its CAV.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def train_and_eval(self, dataloader: Any, **_: Any) -> dict[str, Any]:
        from sklearn.linear_model import LogisticRegression

        xs, ys = zip(*[(x, y) for x, y in dataloader], strict=True)
        x = torch.cat(xs).reshape(sum(len(b) for b in xs), -1).double().cpu().numpy()
        y = torch.cat(ys).cpu().numpy()
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(x))
        n_test = max(1, len(x) // 3)
        test, train = order[:n_test], order[n_test:]
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(x[train], y[train])
        self._classes = [int(c) for c in clf.classes_]
        w = torch.as_tensor(clf.coef_[0], dtype=torch.float64)
        self._weights = torch.stack([-w, w]) / w.norm()
        return {"accs": float((clf.predict(x[test]) == y[test]).mean())}

    def weights(self) -> torch.Tensor:
        return self._weights

    def classes(self) -> list[int]:
        return self._classes


def tcav(model: nn.Module, layer: str, concept: Any, random_sets: Sequence[Any], inputs: Any, labels: Any, *,
         classes: Sequence[int] | None = None, concept_name: str = "concept", seed: int = 0,
         batch_size: int = 64, forward_fn: Any = None) -> TCAVResult:
    """TCAV score per class of one concept at one layer, with Captum's ``TCAV`` (see the module docstring).

    Parameters
    ----------
    model : torch classifier (logits); ``layer`` the dotted name of a module whose *output* is the activation.
    concept : (m, *input_shape) example inputs of the concept.
    random_sets : R >= 2 tensors of random example inputs (the counterpart of each CAV; set 0 also defines the
        random-vs-random null CAVs against sets 1..R-1).
    inputs, labels : the inputs whose class sensitivity is measured; class k uses the inputs labelled k and the
        logit of k (labels may be the true or the predicted classes).
    classes : which classes to report (default: every label present).

    Activations and CAVs go to a temporary folder that is removed afterwards (Captum caches them on disk).
    """
    tcav_mod = _import("captum.concept", "TCAV")
    _import("sklearn", "TCAV's concept classifier", "pip install scikit-learn")
    from torch.utils.data import DataLoader

    if len(random_sets) < 2:
        raise PrecedentsError(f"TCAV needs at least 2 random sets (one CAV per set, and random-vs-random CAVs "
                              f"for the null distribution), got {len(random_sets)}.")
    wrapped, X = _prepare(model, inputs, forward_fn)
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        raise PrecedentsError(f"{type(model).__name__} has no submodule named {layer!r}; its modules are: "
                              f"{', '.join(repr(n) for n in modules if n)}.")
    labels = check_labels(torch.as_tensor(labels), int(wrapped(X[:1]).shape[1]), len(X), name="labels")
    classes = sorted({int(v) for v in labels.tolist()}) if classes is None else [int(c) for c in classes]
    dtype = X.dtype

    def concept_of(idx: int, name: str, data: Any) -> Any:
        tensor = torch.as_tensor(data).to(device=X.device, dtype=dtype)
        return tcav_mod.Concept(idx, name, DataLoader(tensor, batch_size=batch_size))

    con = concept_of(0, concept_name, concept)
    randoms = [concept_of(r + 1, f"random{r}", s) for r, s in enumerate(random_sets)]
    experimental = [[con, r] for r in randoms] + [[randoms[0], r] for r in randoms[1:]]
    n_real = len(randoms)
    scores = np.zeros((len(classes), n_real))
    null = np.zeros((len(classes), n_real - 1))
    n_inputs = []
    with tempfile.TemporaryDirectory(prefix="precedents-tcav-") as tmp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        runner = tcav_mod.TCAV(wrapped, layers=[f"model.{layer}"], classifier=_LogisticCAV(seed), save_path=tmp,
                               model_id="model")
        for j, k in enumerate(classes):
            chosen = X[labels.to(X.device) == k]
            n_inputs.append(len(chosen))
            if len(chosen) == 0:
                scores[j], null[j] = np.nan, np.nan
                continue
            result = runner.interpret(chosen, experimental, target=k)
            values = [float(result["-".join(str(c.id) for c in s)][f"model.{layer}"]["sign_count"][0])
                      for s in experimental]
            scores[j], null[j] = values[:n_real], values[n_real:]
        stats = [runner.cavs[f"0-{r.id}"][f"model.{layer}"].stats for r in randoms]
        accuracy = np.array([float(st["accs"]) for st in stats])
        cavs = np.stack([st["weights"][list(st["classes"]).index(0)].double().cpu().numpy() for st in stats])
    p_values = np.full(len(classes), np.nan)
    if n_real >= 3:
        from scipy.stats import ttest_ind

        for j in range(len(classes)):
            if np.isfinite(scores[j]).all():
                p_values[j] = float(ttest_ind(scores[j], null[j]).pvalue)
    return TCAVResult(concept_name, layer, classes, scores, null, p_values, accuracy, cavs, n_inputs)
