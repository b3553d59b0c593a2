"""Randomisation sanity check of every method (Adebayo et al. 2018; Zhang et al. 2017, seed 004), on MNIST.

    python docs/repro_sanity.py          # writes docs/sanity.md and docs/sanity/sanity.json

The model, training subset (10,000 MNIST images) and test points (the first 1,000 MNIST test images) are those of
``docs/repro_stability.py``. Each method explains the real model's predicted class, once with the real model and
once with a randomised one, with the same training set and its true labels (``precedents.evaluate.sanity``):

* "control: the same model": the real model against itself (must give Spearman 1 and Jaccard 1);
* "last layer re-initialised": ``reinitialize(model, "last")`` (fc2 back to PyTorch's default initialisation);
* "all layers re-initialised": ``reinitialize(model, "all")``;
* "labels randomised": the same architecture and training (8 epochs, same seeds) on randomly permuted labels
  (``label_randomized_model``).

TracIn's checkpoints follow the model: re-initialised the same way, or those of the label-randomised training run.
Every method on the last layer (as in the stability run); LiSSA is left out (3 minutes per fit and 1,000 test
points at depth 200 on this machine; it estimates the same quantity as the exact solver).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import precedents as pc
from precedents.evaluate import FromScratchRetrainer, label_randomized_model, reinitialize, sanity
from precedents.evaluate.sanity import (
    CHANGED_JACCARD,
    CHANGED_SPEARMAN,
    UNCHANGED_JACCARD,
    UNCHANGED_SPEARMAN,
    to_markdown,
)

sys.path.insert(0, str(Path(__file__).parent))
from repro_stability import EPOCHS, N_TEST, N_TRAIN, setup, train_with_checkpoints  # noqa: E402

OUT = Path(__file__).with_name("sanity")


def reinitialized_checkpoints(model: torch.nn.Module, checkpoints: list[dict], layers: str) -> list[dict]:
    """Every checkpoint with the same layers re-initialised with the same seed as the randomised model."""
    out = []
    for state in checkpoints:
        shadow = type(model)()
        shadow.load_state_dict(state)
        out.append(reinitialize(shadow, layers, seed=0).state_dict())
    return out


def main() -> int:
    torch.set_num_threads(1)
    start = time.perf_counter()
    task = setup()
    model, ckpts, X, y = task["model"], task["checkpoints"], task["X"], task["y"]
    kept = {}

    def train_fn(Xr: torch.Tensor, yr: torch.Tensor, seed: int) -> torch.nn.Module:
        trained, kept["checkpoints"], _ = train_with_checkpoints(Xr, yr, seed=seed)
        return trained

    random_labels, y_random = label_randomized_model(FromScratchRetrainer(train_fn, X, y), seed=0)
    random_label_ckpts = kept["checkpoints"]
    with torch.no_grad():
        fit_random = float((random_labels(X).argmax(1) == y_random).double().mean())
        test_random = float((random_labels(task["X_test"]).argmax(1) == task["y_test"]).double().mean())
    print(f"label-randomised model: accuracy {fit_random:.3f} on its random training labels, {test_random:.3f} on "
          "the test set", flush=True)

    randomised = [("control: the same model", model, ckpts),
                  ("last layer re-initialised", reinitialize(model, "last", seed=0),
                   reinitialized_checkpoints(model, ckpts, "last")),
                  ("all layers re-initialised", reinitialize(model, "all", seed=0),
                   reinitialized_checkpoints(model, ckpts, "all")),
                  ("labels randomised", random_labels, random_label_ckpts)]
    checkpoints_of = {id(model): ckpts, **{id(m): c for _, m, c in randomised}}
    opts = {"progress": False}
    methods = {
        "RPS-l2": lambda m: pc.RepresenterL2(m, **opts),
        "RPS-LJE": lambda m: pc.RepresenterLJE(m, **opts),
        "influence exact": lambda m: pc.InfluenceFunction(m, solver="exact", **opts),
        "influence Arnoldi (rank 50)": lambda m: pc.InfluenceFunction(m, solver="arnoldi",
                                                                      solver_options={"seed": 0}, **opts),
        f"TracIn ({EPOCHS} checkpoints)": lambda m: pc.TracIn(m, checkpoints=checkpoints_of[id(m)], params="head",
                                                              learning_rates=1e-3, **opts),
        "grad-dot": lambda m: pc.GradientSimilarity(m, params="head", **opts),
        "grad-cos": lambda m: pc.GradientSimilarity(m, params="head", kind="cos", **opts),
    }
    results = []
    for label, other, _ in randomised:
        for name, make in methods.items():
            res = sanity(make, model, other, (X, y), task["X_test"], task["pred"], k=10, name=name,
                         randomization=label)
            results.append(res)
            print(f"{label} / {name}: Spearman median {res.spearman_median:.3f}, top-10 Jaccard "
                  f"{res.jaccard_mean:.3f}, {res.reading} ({res.seconds:.0f} s)", flush=True)
    total = time.perf_counter() - start
    OUT.mkdir(exist_ok=True)
    meta = {"n_train": N_TRAIN, "n_test": N_TEST, "test_accuracy": task["test_accuracy"],
            "random_label_fit": fit_random, "random_label_test_accuracy": test_random, "torch": torch.__version__,
            "threads": 1, "seconds": total}
    (OUT / "sanity.json").write_text(json.dumps({"meta": meta, "results": [r.to_dict() for r in results]}, indent=1))
    Path(__file__).with_name("sanity.md").write_text(TEMPLATE.format(
        table=to_markdown(results), cs=CHANGED_SPEARMAN, cj=CHANGED_JACCARD, us=UNCHANGED_SPEARMAN,
        uj=UNCHANGED_JACCARD, **meta))
    return 0


TEMPLATE = """# Randomisation sanity check

Command: `python docs/repro_sanity.py` ({seconds:.0f} s, {threads} torch thread, torch {torch}); numbers in
[sanity/sanity.json](sanity/sanity.json).

Setup as in [stability.md](stability.md): the demo CNN's architecture trained on {n_train} MNIST images (test accuracy
{test_accuracy:.4f}), {n_test} test points, each explained for the real model's predicted class, every method on the
last layer, damping 0. The label-randomised model (same architecture, epochs and seeds, permuted labels) reaches
{random_label_fit:.3f} accuracy on its own random labels and {random_label_test_accuracy:.3f} on the test set.
Per test point: Spearman rank correlation between the {n_train} scores on the real and on the randomised model, and
the Jaccard overlap of the two top-10 proponent (opponent) sets; summarised over the test points.
Reading guide (a convention, not a verdict): "changed" (passes) when the median |Spearman| <= {cs} and the top-10
Jaccard <= {cj}; "unchanged" when the median |Spearman| >= {us} or the Jaccard >= {uj}; "partly changed" between.

{table}
"""


if __name__ == "__main__":
    sys.exit(main())
