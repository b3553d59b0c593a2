"""Numerical stability of every method over seeds and data order (seed 001's claim), on MNIST.

    python docs/repro_stability.py          # writes docs/stability.md and docs/stability/stability.json

Seed 001 (Yeh et al. 2018) computes influence and representer values for 1,000 test points over the whole training
set repeatedly and reports that representer values are numerically stable where influence estimates are not. Here:

* model: the demo CNN (conv16-conv32-fc64-fc10, ``precedents.demos.models.MnistCNN``) trained with
  ``precedents.demos.models.train_classifier`` (Adam, lr 1e-3, batch 128, 8 epochs, one call per epoch so that a
  checkpoint is kept after each for TracIn; Adam's state restarts each epoch) on a seeded random subset of 10,000 of
  the 50,000 MNIST training images: the methods explain the model with the training set it was trained on;
* test points: the first 1,000 MNIST test images; every method explains the model's *predicted* class;
* every method works on the last layer (``fc2``, 650 parameters with its bias): its exact Hessian is cheap, and
  per-example gradients of all 46,000 parameters for 10,000 images do not fit a shared 2-core machine;
* each method is repeated with 5 seeds (LiSSA: 3 seeds at depth 200 instead of its default 1,000: its cost is
  1,000 test vectors x depth x 1,000 sampled examples x 650 per seed, 6 minutes per seed at depth 1,000 here) by
  ``precedents.evaluate.stability``: the seed goes to the method's randomness (LiSSA's
  sampling, Arnoldi's start vector, RPS-l2's refit start ``init="random"``) and, where the row says "permuted",
  also permutes the training set (the scores are un-permuted before comparing).

One torch thread (the machine is shared); the run takes about 10 minutes.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

import precedents as pc
from precedents.demos.datasets import load_mnist
from precedents.demos.models import MnistCNN, train_classifier
from precedents.evaluate import stability
from precedents.evaluate.stability import to_markdown

N_TRAIN, N_TEST, EPOCHS = 10_000, 1_000, 8
OUT = Path(__file__).with_name("stability")


def setup(progress: bool = False) -> dict:
    """The 10,000-image training subset, the first 1,000 test images, the CNN and its per-epoch checkpoints."""
    X, y = load_mnist("train")
    keep = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:N_TRAIN]
    X, y = torch.from_numpy(X)[keep], torch.from_numpy(y)[keep]
    Xt, yt = load_mnist("test")
    Xt, yt = torch.from_numpy(Xt[:N_TEST]), torch.from_numpy(yt[:N_TEST])
    model, checkpoints, seconds = train_with_checkpoints(X, y, progress=progress)
    with torch.no_grad():
        pred = model(Xt).argmax(1)
    return {"X": X, "y": y, "X_test": Xt, "y_test": yt, "model": model, "checkpoints": checkpoints, "pred": pred,
            "train_seconds": seconds, "test_accuracy": float((pred == yt).double().mean())}


def train_with_checkpoints(X: torch.Tensor, y: torch.Tensor, seed: int = 0, progress: bool = False):
    """MnistCNN trained for EPOCHS epochs, one ``train_classifier`` call per epoch, a state dict kept after each."""
    torch.manual_seed(seed)
    model = MnistCNN()
    checkpoints = []
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        train_classifier(model, X, y, epochs=1, seed=seed * 1000 + epoch, progress=progress)
        checkpoints.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return model.eval(), checkpoints, time.perf_counter() - start


def methods(task: dict) -> list[tuple[str, object, tuple[int, ...], bool]]:
    """(name, seed -> explainer, seeds, permute the training set) for every row of the table."""
    model, ckpts = task["model"], task["checkpoints"]
    five, three = (0, 1, 2, 3, 4), (0, 1, 2)
    opts = {"progress": False}
    return [
        ("RPS-l2, random refit start", lambda s: pc.RepresenterL2(model, init="random", random_state=s, **opts),
         five, False),
        ("RPS-l2, random refit start", lambda s: pc.RepresenterL2(model, init="random", random_state=s, **opts),
         five, True),
        ("RPS-LJE", lambda s: pc.RepresenterLJE(model, **opts), five, True),
        ("influence exact", lambda s: pc.InfluenceFunction(model, solver="exact", **opts), five, True),
        ("influence LiSSA (depth 200)", lambda s: pc.InfluenceFunction(model, solver="lissa",
                                                                       solver_options={"seed": s, "depth": 200},
                                                                       **opts), three, True),
        ("influence Arnoldi (rank 50)", lambda s: pc.InfluenceFunction(model, solver="arnoldi",
                                                                       solver_options={"seed": s}, **opts),
         five, False),
        ("influence Arnoldi (rank 50)", lambda s: pc.InfluenceFunction(model, solver="arnoldi",
                                                                       solver_options={"seed": s}, **opts),
         five, True),
        (f"TracIn ({EPOCHS} checkpoints)", lambda s: pc.TracIn(model, checkpoints=ckpts, params="head",
                                                               learning_rates=1e-3, **opts), five, True),
        ("grad-dot", lambda s: pc.GradientSimilarity(model, params="head", **opts), five, True),
    ]


def main() -> int:
    torch.set_num_threads(1)
    start = time.perf_counter()
    task = setup()
    print(f"trained in {task['train_seconds']:.0f} s, test accuracy {task['test_accuracy']:.4f}", flush=True)
    results = []
    for name, make, seeds, shuffle in methods(task):
        res = stability(make, (task["X"], task["y"]), task["X_test"], task["pred"], seeds=seeds, shuffle=shuffle,
                        k=10, chunk=100, name=name)
        results.append(res)
        print(f"{name} ({'permuted' if shuffle else 'fixed order'}): Spearman mean {res.spearman_mean:.6f} min "
              f"{res.spearman_min:.6f}, top-10 Jaccard {res.jaccard_mean:.4f}, spread {res.relative_spread:.2e}, "
              f"{res.seconds:.0f} s", flush=True)
    total = time.perf_counter() - start
    OUT.mkdir(exist_ok=True)
    meta = {"n_train": N_TRAIN, "n_test": N_TEST, "epochs": EPOCHS, "test_accuracy": task["test_accuracy"],
            "torch": torch.__version__, "python": platform.python_version(), "threads": 1, "seconds": total}
    (OUT / "stability.json").write_text(json.dumps({"meta": meta, "results": [r.to_dict() for r in results]},
                                                   indent=1))
    table = to_markdown(results)
    unstable = [f"{r.method} ({'permuted' if r.shuffle else 'fixed order'}): mean Spearman {r.spearman_mean:.3f}"
                for r in results if not r.spearman_mean > 0.999]
    summary = ("Rows whose repeats disagree (mean Spearman below 0.999): " + "; ".join(unstable) + "."
               if unstable else "Every row's repeats agree (mean Spearman above 0.999).")
    Path(__file__).with_name("stability.md").write_text(TEMPLATE.format(table=table, total=total, summary=summary,
                                                                        **meta))
    return 0


TEMPLATE = """# Numerical stability over seeds and data order

Command: `python docs/repro_stability.py` ({total:.0f} s, {threads} torch thread, torch {torch}); numbers in
[stability/stability.json](stability/stability.json).

Setup: the demo CNN's architecture trained for {epochs} epochs on a seeded random subset of {n_train} MNIST training
images (test accuracy on the first {n_test} test images {test_accuracy:.4f}); {n_test} test points, each method
explains the predicted class; every method on the last layer (650 parameters); damping 0 everywhere (the methods'
defaults). Each row repeats one method with different seeds (`seeds` repeats; the seed goes to LiSSA's sampling,
Arnoldi's start vector, RPS-l2's random refit start) and, where it says "permuted", a different order of the
training set. Per test point and pair of repeats: Spearman rank correlation of the {n_train} scores, Jaccard
overlap of the top-10 proponents (and opponents); "identical top-k": test points whose top-10 proponents are the
same set in every repeat; "relative spread": RMS deviation of a repeat's score matrix from the mean of the repeats,
over the mean's norm.

{table}

{summary}
"""


if __name__ == "__main__":
    sys.exit(main())
