"""Every method against leave-one-out retraining, through the command line, on MNIST 1 vs 7 logistic regression.

    python docs/repro_loo_table.py          # writes docs/loo_all_methods/evaluate.{md,csv,json}

Prepares the task of ``docs/repro_koh_liang.py`` (10,853 training images, ``nn.Linear(784, 2)`` at the exact optimum
of mean cross-entropy + 0.01/2 ||theta||^2) as files in a temporary folder and runs

    precedents evaluate --state-dict model.pt --module torch.nn:Linear --module-kwargs '{...}' --train train.npz
        --test test.npz --methods <all eight> --weight-decay 0.01 --retrain logistic --points 100 --test-points 5

For a convex model trained to its optimum, TracIn with the final checkpoint (learning rate 1) is grad-dot.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from precedents.cli import main as cli
from precedents.demos.datasets import binary_subset, load_mnist
from precedents.evaluate import fit_logistic_regression

METHODS = "influence-exact,influence-cg,influence-lissa,influence-arnoldi,rps-l2,rps-lje,grad-dot,grad-cos"


def main() -> int:
    X, y = binary_subset(*load_mnist("train"), (1, 7))
    Xt, yt = binary_subset(*load_mnist("test"), (1, 7))
    X = X.reshape(len(X), -1).astype(np.float64)
    Xt = Xt.reshape(len(Xt), -1).astype(np.float64)
    model = fit_logistic_regression(torch.from_numpy(X), torch.from_numpy(y), 2, 0.01)
    out = Path(__file__).with_name("loo_all_methods")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "train.npz", X=X, y=y)
        np.savez(tmp / "test.npz", X=Xt, y=yt)
        torch.save(model.state_dict(), tmp / "model.pt")
        return cli(["evaluate", "--state-dict", str(tmp / "model.pt"), "--module", "torch.nn:Linear",
                    "--module-kwargs", json.dumps({"in_features": 784, "out_features": 2}),
                    "--train", str(tmp / "train.npz"), "--test", str(tmp / "test.npz"), "--methods", METHODS,
                    "--weight-decay", "0.01", "--retrain", "logistic", "--points", "100", "--test-points", "5",
                    "--results", str(tmp / "loo.jsonl"), "--out", str(out), "--quiet"])


if __name__ == "__main__":
    sys.exit(main())
