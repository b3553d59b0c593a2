r"""Dataset debugging (RPS "Dataset Debugging", Koh & Liang "targeted training-set debugging") on real data.

    python docs/repro_mislabel.py                   # all three settings; writes docs/mislabel.md,
                                                    # docs/mislabel/results.json and docs/mislabel/*.png
    python docs/repro_mislabel.py --settings mnist17,german   # a subset (results.json keeps the others)

For each setting a known fraction of the training labels is flipped (seeded, :func:`flip_labels`), the model is
trained on the noisy labels, every method ranks the training set by its self-score, and a person (here an
oracle) checks the examples in that order. Reported per method: the detection curve (fraction of flipped
labels found vs fraction of the training set checked), its area ("auc"; random 0.5, perfect 1 - p/2), the ROC
AUC (random 0.5, perfect 1; dattri's number), the fraction found after checking 10% and 20%, and the test
accuracy after fixing the checked labels and retraining.

Settings:
  mnist17  MNIST 1 vs 7, 2,000 training images (seeded subset of the 50,000-image train split), all 2,163 test
           1s and 7s; nn.Linear(784, 2) at the exact optimum of mean CE + 0.01/2 ||theta||^2 (float64 Newton,
           warm-started from 5 epochs of SGD whose per-epoch weights are TracIn's checkpoints); 10% flipped.
           Retrain after fixing: the exact optimum again.
  cnn      10-class MNIST, 2,000 training images (seeded subset), 2,000 test images; MnistCNN (conv16-conv32-fc64-
           fc10), Adam lr 1e-3, batch 64, no weight decay, 150 epochs: it memorises the noisy labels (train
           accuracy on the noisy labels 100%); 20% flipped. Influence on the last layer (params="head") with
           damping 1e-3, RPS-LJE damping 1e-3, RPS-l2 lambda 0.003 (the authors'); TracIn over all parameters at
           5 checkpoints.
           Retrain after fixing: the whole CNN, same initialisation, schedule and seeds (about 40 s each).
  german   German credit (1,000 applicants), one-hot + standardised (train statistics), 700 train / 300 test
           (seeded split); logistic regression as for mnist17 (wd 0.01); 10% flipped.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from precedents.datasets import binary_subset, load_german_credit, load_mnist, one_hot
from precedents.evaluate import (
    FromScratchRetrainer,
    LogisticRegressionRetrainer,
    fit_logistic_regression,
    flip_labels,
    mislabel,
    warm_start_retrainer,
)
from precedents.evaluate.mislabel import accuracy, apply_corrections, oracle_corrections
from precedents.models import MnistCNN, train_classifier

DOCS = Path(__file__).resolve().parent
OUT = DOCS / "mislabel"
WD = 0.01
SEED = 0
FRACTIONS = (0.1, 0.2)
ALL = ["rps-l2", "rps-lje", "influence-exact", "influence-cg", "influence-lissa", "influence-arnoldi", "tracin",
       "loss", "random"]
COMMAND = "python docs/repro_mislabel.py"

PEERS = [
    ("kronfluence (EK-FAC self-influence), CIFAR-10 ResNet-9", "about 80% found after checking 10%"),
    ("dattri benchmark, MNIST logistic regression, ROC AUC", "influence 0.98, RPS-l2 0.91, TRAK-50 0.99"),
    ("dattri benchmark, MNIST MLP, ROC AUC", "influence 0.86, RPS-l2 0.97, TRAK-50 1.0"),
    ("RPS paper, CIFAR-10 automobile vs horse, logistic regression", "absolute alpha: ~99% found (chart)"),
]


def subset(n_total: int, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def sgd_checkpoints(X: torch.Tensor, y: torch.Tensor, n_classes: int, epochs: int = 5, lr: float = 0.1,
                    batch: int = 64) -> tuple[nn.Linear, list[dict], list[float]]:
    """Minibatch SGD on mean CE + wd/2 ||theta||^2 (float64), saving the weights after every epoch (TracIn): one
    epoch of the library's warm-start retrainer at a time."""
    torch.manual_seed(SEED)
    model = nn.Linear(X.shape[1], n_classes, dtype=torch.float64)
    states = []
    for epoch in range(epochs):
        model = warm_start_retrainer(model, X, y, steps=-(-len(X) // batch), lr=lr, weight_decay=WD,
                                     batch_size=batch, seed=SEED + epoch).retrain()
        states.append(copy.deepcopy(model.state_dict()))
    # TracIn's per-example step: lr / batch for a mean-loss minibatch step, each example seen once per epoch
    return model, states, [lr / batch] * epochs


def logistic_setting(name: str, Xtr: torch.Tensor, ytr: torch.Tensor, Xte: torch.Tensor, yte: torch.Tensor,
                     flip: float, display: dict) -> dict:
    n_classes = int(ytr.max()) + 1
    noisy, flipped = flip_labels(ytr, flip, n_classes, seed=SEED)
    sgd, states, rates = sgd_checkpoints(Xtr, noisy, n_classes)
    model = fit_logistic_regression(Xtr, noisy, n_classes, WD, init=sgd)
    res, caught = scored(model, Xtr, noisy, flipped=flipped, l2=WD / 2, weight_decay=WD, lje_damping=WD,
                         checkpoints=states, learning_rates=rates)

    retrain = LogisticRegressionRetrainer(Xtr, noisy, n_classes, WD)       # the exact optimum for any labels
    return finish(name, res, model, retrain, noisy, ytr, Xte, yte, n_classes, display, {
        "model": f"nn.Linear({Xtr.shape[1]}, {n_classes}) at the exact optimum, weight decay {WD}",
        "n_train": len(Xtr), "n_test": len(Xte), "flip_fraction": flip,
        "train_accuracy_noisy": accuracy(model, Xtr, noisy), "retrain": "exact optimum (Newton)", "warnings": caught,
        "settings": {"l2": WD / 2, "weight_decay": WD, "lje_damping": WD, "lissa_depth": 100, "arnoldi_rank": 50,
                     "tracin": f"{len(states)} SGD epoch checkpoints, lr {rates[0] * 64} / batch 64"}})


def scored(model, X, y, **settings):
    """:func:`mislabel` with every method, the warnings the methods issue kept for the record."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = mislabel(model, X, y, ALL, seed=SEED, solver_options={"lissa": {"depth": 100}, "arnoldi": {"rank": 50}},
                       **settings)
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, RuntimeWarning)})
    return res, messages


def finish(name: str, res, model, retrain, noisy, clean, Xte, yte, n_classes, display, info) -> dict:
    n = len(noisy)
    acc_noisy = accuracy(retrain.retrain(y=noisy), Xte, yte)   # the same retraining procedure on the noisy labels
    info["test_accuracy_model"] = accuracy(model, Xte, yte)
    acc_clean = accuracy(retrain.retrain(y=clean), Xte, yte)
    rows = {}
    for method in res.methods:
        curve = res.curve(method)
        summary = res.summary().set_index("method").loc[method]
        row = {"auc": float(summary["auc"]), "roc_auc": float(summary["roc_auc"]),
               "found@10%": float(summary["found@10%"]), "found@20%": float(summary["found@20%"]),
               "seconds": float(res.seconds[method]), "units": res.units[method]}
        for fraction in FRACTIONS:
            fixes = oracle_corrections(res.order(method), noisy, clean, int(round(fraction * n)))
            fixed = apply_corrections(noisy, fixes, n_classes)
            row[f"accuracy_fixed@{fraction:.0%}"] = accuracy(retrain.retrain(y=fixed), Xte, yte)
        row["curve"] = [float(v) for v in curve[1][:: max(1, n // 200)]]
        rows[method] = row
        print(f"  {name} {method:18s} auc {row['auc']:.3f} roc {row['roc_auc']:.3f} found@10% "
              f"{row['found@10%']:.2f} @20% {row['found@20%']:.2f} acc@10% {row['accuracy_fixed@10%']:.4f} "
              f"acc@20% {row['accuracy_fixed@20%']:.4f} ({row['seconds']:.1f} s)", flush=True)
    out = {**info, "test_accuracy_noisy": acc_noisy, "test_accuracy_clean": acc_clean, "methods": rows,
           "curve_step": max(1, n // 200) / n}
    plot(name, res, out, display)
    return out


def plot(name: str, res, out: dict, display: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for method in res.methods:
        checked, found = res.curve(method)
        axes[0].plot(checked, found, label=f"{method} (auc {out['methods'][method]['auc']:.3f})",
                     lw=1.2 if method != "random" else 0.9, ls="--" if method in ("random", "loss") else "-")
    p = out["flip_fraction"]
    axes[0].plot([0, p, 1], [0, 1, 1], color="k", lw=0.6, ls=":", label="perfect")
    axes[0].set_xlabel("fraction of training data checked")
    axes[0].set_ylabel("fraction of flipped labels found")
    axes[0].set_title(f"{display['title']}: detection")
    axes[0].legend(fontsize=7.5, loc="lower right")
    axes[0].grid(alpha=0.3)
    methods = res.methods
    x = np.arange(len(methods))
    for k, fraction in enumerate(FRACTIONS):
        axes[1].bar(x + (k - 0.5) * 0.38, [out["methods"][m][f"accuracy_fixed@{fraction:.0%}"] for m in methods],
                    0.38, label=f"after fixing the top {fraction:.0%}")
    axes[1].axhline(out["test_accuracy_noisy"], color="C3", ls="--", lw=1, label="noisy labels (no fix)")
    axes[1].axhline(out["test_accuracy_clean"], color="k", ls=":", lw=1, label="all labels clean")
    lo = min(out["test_accuracy_noisy"], *(out["methods"][m]["accuracy_fixed@10%"] for m in methods))
    axes[1].set_ylim(max(0.0, lo - 0.02), min(1.0, out["test_accuracy_clean"] + 0.01))
    axes[1].set_xticks(x, methods, rotation=40, ha="right", fontsize=8)
    axes[1].set_ylabel("test accuracy")
    axes[1].set_title(f"test accuracy after fixing\n({display['retrain']})")
    axes[1].legend(fontsize=7.5, loc="best")
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"{name}.png", dpi=110)
    plt.close(fig)


def run_mnist17() -> dict:
    X, y = binary_subset(*load_mnist("train"), classes=(1, 7))
    keep = subset(len(X), 2000, SEED)
    Xte, yte = binary_subset(*load_mnist("test"), classes=(1, 7))
    flat = lambda a: torch.from_numpy(a).reshape(len(a), -1).to(torch.float64)  # noqa: E731
    return logistic_setting("mnist17", flat(X[keep]), torch.from_numpy(y[keep]), flat(Xte), torch.from_numpy(yte),
                            0.1, {"title": "MNIST 1 vs 7, logistic regression", "retrain": "exact refit"})


def run_german() -> dict:
    X, y = load_german_credit()
    order = np.random.default_rng(SEED).permutation(len(X))
    tr, te = order[:700], order[700:]
    Xtr, names = one_hot(X.iloc[tr])
    Xte, _ = one_hot(X.iloc[te], reference=X.iloc[tr])
    mean, std = Xtr.mean(0), Xtr.std(0)
    std[std == 0] = 1
    to = lambda a: torch.from_numpy((a - mean) / std).to(torch.float64)  # noqa: E731
    return logistic_setting("german", to(Xtr), torch.from_numpy(y[tr]), to(Xte), torch.from_numpy(y[te]), 0.1,
                            {"title": "German credit, logistic regression", "retrain": "exact refit"})


def run_cnn(epochs: int = 150, n_train: int = 2000, flip: float = 0.2, batch: int = 64) -> dict:
    X, y = load_mnist("train")
    keep = subset(len(X), n_train, SEED)
    Xte, yte = load_mnist("test")
    te = subset(len(Xte), 2000, SEED + 1)
    Xtr, ytr = torch.from_numpy(X[keep]), torch.from_numpy(y[keep])
    Xte, yte = torch.from_numpy(Xte[te]), torch.from_numpy(yte[te])
    noisy, flipped = flip_labels(ytr, flip, 10, seed=SEED)
    every = max(1, epochs // 5)

    def train(labels: torch.Tensor, keep_checkpoints: bool = False):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = MnistCNN()
        states = []
        done = 0
        while done < epochs:                         # same total schedule; Adam restarts at each chunk
            step = min(every, epochs - done)
            train_classifier(model, Xtr, labels, epochs=step, batch_size=batch, seed=SEED + done, progress=False)
            done += step
            if keep_checkpoints:
                states.append(copy.deepcopy(model.state_dict()))
        return model, states

    start = time.perf_counter()
    model, states = train(noisy, keep_checkpoints=True)
    train_seconds = time.perf_counter() - start
    train_acc = accuracy(model, Xtr, noisy)
    print(f"  cnn: trained {epochs} epochs in {train_seconds:.0f} s, accuracy on the noisy training labels "
          f"{train_acc:.4f}", flush=True)
    res, caught = scored(model, Xtr, noisy, flipped=flipped, l2=0.003, weight_decay=0.0, damping=1e-3,
                         lje_damping=1e-3, checkpoints=states, learning_rates=[1e-3] * len(states))
    retrained = {}

    def train_fn(X: torch.Tensor, labels: torch.Tensor, seed: int) -> nn.Module:   # the whole CNN, same schedule
        key = hashlib.sha256(labels.numpy().tobytes()).hexdigest()
        if key not in retrained:
            retrained[key] = model if torch.equal(labels, noisy) else train(labels)[0]
        return retrained[key]

    retrain = FromScratchRetrainer(train_fn, Xtr, noisy, seed=SEED)

    return finish("cnn", res, model, retrain, noisy, ytr, Xte, yte, 10,
                  {"title": "MNIST 10 classes, CNN", "retrain": "whole CNN retrained"}, {
                      "model": f"MnistCNN conv16-conv32-fc64-fc10, Adam lr 1e-3, batch {batch}, no weight decay",
                      "epochs": epochs, "train_seconds": train_seconds, "n_train": n_train, "n_test": len(Xte),
                      "flip_fraction": flip, "train_accuracy_noisy": train_acc, "warnings": caught,
                      "retrain": "the whole CNN retrained from the same initialisation with the same schedule "
                                 "and seeds on the fixed labels",
                      "settings": {"l2": 0.003, "influence": "params=head, damping 1e-3", "lje_damping": 1e-3,
                                   "lissa_depth": 100, "arnoldi_rank": 50,
                                   "tracin": f"all parameters, {len(states)} checkpoints every {every} epochs, "
                                             "lr 1e-3 (Adam: the rate, not the per-example step)"}})


def markdown(results: dict) -> str:
    lines = ["# Dataset debugging: finding flipped labels by self-scores", "",
             f"Made by `{COMMAND}` (2 CPU threads, torch {torch.__version__}); raw numbers in "
             "[mislabel/results.json](mislabel/results.json), plots in [mislabel/](mislabel/).", "",
             "A known fraction of training labels is flipped (seeded), the model is trained on the noisy labels, "
             "each method ranks the training set by its self-score (largest first) and an oracle checks in that "
             "order and fixes what it finds. **auc**: area under the detection curve (fraction of flipped labels "
             "found vs fraction of the training set checked; random 0.5, perfect 1 - p/2 at flip rate p). "
             "**ROC**: ROC AUC of the self-score as a detector (random 0.5, perfect 1; the number dattri reports). "
             "**found@X%**: fraction of the flipped labels among the first X% checked. **acc@X%**: test accuracy "
             "after fixing the labels found in the first X% and retraining.", ""]
    for name, r in results.items():
        lines += [f"## {name}: {r['model']}", "",
                  f"{r['n_train']} training examples, {r['flip_fraction']:.0%} flipped; {r['n_test']} test examples. "
                  f"Accuracy on the noisy training labels {r['train_accuracy_noisy']:.4f}. Test accuracy trained on "
                  f"the noisy labels {r['test_accuracy_noisy']:.4f}, on the clean labels "
                  f"{r['test_accuracy_clean']:.4f}. Retrain: {r['retrain']}. Settings: "
                  + "; ".join(f"{k} {v}" for k, v in r["settings"].items()) + ".", "",
                  f"![{name}](mislabel/{name}.png)", "",
                  "| method | auc | ROC | found@10% | found@20% | acc@10% | acc@20% | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, row in r["methods"].items():
            lines.append(f"| {m} | {row['auc']:.3f} | {row['roc_auc']:.3f} | {row['found@10%']:.1%} | "
                         f"{row['found@20%']:.1%} | {row['accuracy_fixed@10%']:.4f} | "
                         f"{row['accuracy_fixed@20%']:.4f} | {row['seconds']:.1f} |")
        if r.get("warnings"):
            lines += ["", "Warnings issued by the methods: " + " | ".join(w[:300] for w in r["warnings"])]
        lines.append("")
    lines += ["## Peers' published figures (other data and models: for scale, not a like-for-like comparison)", "",
              "| source | figure |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in PEERS]
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="mnist17,cnn,german")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runners = {"mnist17": run_mnist17, "cnn": run_cnn, "german": run_german}
    path = OUT / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in [s for s in args.settings.split(",") if s]:
        start = time.perf_counter()
        print(f"{name}...", flush=True)
        results[name] = runners[name]()
        results[name]["total_seconds"] = time.perf_counter() - start
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
    ordered = {k: results[k] for k in ("mnist17", "cnn", "german") if k in results}
    (DOCS / "mislabel.md").write_text(markdown(ordered))
    print(f"wrote {DOCS / 'mislabel.md'}, {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
