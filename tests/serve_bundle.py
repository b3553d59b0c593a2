"""A small real explorer bundle for the serve tests: sklearn's digits (8x8 images), an MLP whose head sits at the
exact optimum of its l2-regularised loss, explained by RPS-l2, RPS-LJE and exact head influence."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import precedents as pc
from precedents.evaluate import fit_logistic_regression
from precedents.serve import write_explorer_bundle

WEIGHT_DECAY = 1e-3
N_TRAIN = 1200


@functools.lru_cache(maxsize=1)
def digits_model() -> tuple[nn.Module, tuple, tuple]:
    """(model, (X, y), (X_test, y_test)), trained once per session; callers must not modify them."""
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    Xtr, ytr, Xte, yte = X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=WEIGHT_DECAY)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(Xtr), ytr).backward()
        opt.step()
    model = model.double().eval()
    with torch.no_grad():                      # the head at the exact optimum of mean CE + wd/2 ||theta||^2
        features = model[1](model[0](Xtr.double()))
        head = fit_logistic_regression(features, ytr, 10, WEIGHT_DECAY, tol=1e-12)
        model[2].weight.copy_(head.weight)
        model[2].bias.copy_(head.bias)
    return model, (Xtr.double(), ytr), (Xte.double(), yte)


def build_digits_bundle(directory: Path, k: int = 20) -> Path:
    model, train, test = digits_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        methods = {"rps-l2": pc.RepresenterL2(model, l2=0.003, progress=False).fit(train),
                   "rps-lje": pc.RepresenterLJE(model, progress=False).fit(train),
                   "influence-exact": pc.InfluenceFunction(model, solver="exact", weight_decay=WEIGHT_DECAY,
                                                           progress=False).fit(train)}
        return write_explorer_bundle(
            directory, model, train, test, methods, train_display=train[0].reshape(-1, 8, 8),
            test_display=test[0].reshape(-1, 8, 8), k=k, title="digits: an MLP explained",
            description="sklearn's 8x8 digits, 1,200 training images, 597 test images.",
            model_description="MLP 64-24-10 (ReLU), head refit to the exact l2 optimum",
            data_description="sklearn digits (8x8 grey images)", weight_decay=WEIGHT_DECAY,
            feature_maps=("saliency",))


_SHARED: dict[str, Path] = {}


def shared_bundle(tmp_path_factory) -> Path:
    """One digits bundle per test session, shared by the serve test modules (it is read-only)."""
    if "digits" not in _SHARED:
        _SHARED["digits"] = build_digits_bundle(tmp_path_factory.mktemp("serve") / "explorer")
    return _SHARED["digits"]
