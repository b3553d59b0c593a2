"""The demo model: its shape contract, deterministic training, and the on-disk cache (on tiny data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from precedents.demos import datasets, models


@pytest.fixture(scope="module")
def tiny_mnist() -> tuple[np.ndarray, np.ndarray]:
    X, y = datasets.load_mnist_small()
    idx = np.random.default_rng(0).permutation(len(y))[:300]
    return X[idx], y[idx]


def test_cnn_ends_with_fc2() -> None:
    torch.manual_seed(0)
    model = models.MnistCNN().eval()
    x = torch.rand(3, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (3, 10)
    assert isinstance(model.fc2, nn.Linear) and model.fc2.in_features == model.fc1.out_features
    torch.testing.assert_close(logits, model.fc2(model.features(x)))
    assert list(dict(model.named_children()))[-1] == "fc2"


def test_training_is_deterministic_and_learns(tiny_mnist) -> None:
    X, y = tiny_mnist
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = models.train_classifier(models.MnistCNN(), X, y, epochs=3, batch_size=50, progress=False)
        assert not model.training
        weights.append(model.fc2.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)
    accuracy = (models.predict_logits(model, X).argmax(1) == y).mean()
    assert accuracy > 0.5  # chance is 0.1


def test_load_or_train_caches(tiny_mnist, tmp_path, monkeypatch) -> None:
    X, y = tiny_mnist
    monkeypatch.setattr(datasets, "load_mnist", lambda split="train": (X, y))  # tiny stand-in data
    rng_state = torch.get_rng_state()
    model, info = models.load_or_train_mnist_cnn(tmp_path, epochs=1, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's RNG is left alone
    assert info["cached"] is False and 0.0 <= info["test_accuracy"] <= 1.0
    files = list(tmp_path.iterdir())
    assert [p.name for p in files] == [f"mnist_cnn-{info['key']}.pt"]  # no temp file left behind

    again, info2 = models.load_or_train_mnist_cnn(tmp_path, epochs=1, progress=False)
    assert info2["cached"] is True and info2["path"] == info["path"]
    assert info2["test_accuracy"] == info["test_accuracy"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    _, info3 = models.load_or_train_mnist_cnn(tmp_path, epochs=2, progress=False)
    assert info3["key"] != info["key"] and info3["cached"] is False  # settings are part of the key


def test_corrupt_cache_is_retrained(tiny_mnist, tmp_path, monkeypatch) -> None:
    X, y = tiny_mnist
    monkeypatch.setattr(datasets, "load_mnist", lambda split="train": (X, y))
    _, info = models.load_or_train_mnist_cnn(tmp_path, epochs=1, progress=False)
    with open(info["path"], "wb") as fh:
        fh.write(b"truncated")
    _, info2 = models.load_or_train_mnist_cnn(tmp_path, epochs=1, progress=False)
    assert info2["cached"] is False
    _, info3 = models.load_or_train_mnist_cnn(tmp_path, epochs=1, progress=False)
    assert info3["cached"] is True


def test_default_cache_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PRECEDENTS_CACHE", str(tmp_path / "c"))
    assert models.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PRECEDENTS_CACHE")
    monkeypatch.chdir(tmp_path)
    assert models.default_cache_dir() == tmp_path / ".cache" / "precedents"
