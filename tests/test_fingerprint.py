"""The data fingerprint depends on the data only: not on how it is batched or wrapped, nor on the labels' dtype.

Invariants: every way of passing the same examples (tensor pair, numpy, Dataset, DataLoader of any batch size;
labels int64/int32/uint8/integral floats/(n, 1)) gives one fingerprint, equal to the one ``run`` records at fit
time; any change of a value, a label, the order or the count of examples gives another.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import precedents as pc
from precedents.adapters import head_adapter
from precedents.data import Fingerprint


@pytest.fixture(scope="module")
def small(digits):
    Xtr, ytr, _, _ = digits
    return Xtr[:203], ytr[:203]


def fingerprint(head, data, y=None):
    return head.data_fingerprint(head.batches(data, y, name="train", require_labels=True))


def same_data_forms(X, y):
    ds = TensorDataset(X, y)
    return {
        "tensor pair": (X, y),
        "separate y": X,
        "numpy": (X.numpy(), y.numpy()),
        "dataset": ds,
        "loader bs=1": DataLoader(ds, batch_size=1),
        "loader bs=7": DataLoader(ds, batch_size=7),
        "loader bs=1000": DataLoader(ds, batch_size=1000),
        "int32 labels": (X, y.int()),
        "uint8 labels": (X, y.to(torch.uint8)),
        "int16 labels in a loader": DataLoader(TensorDataset(X, y.short()), batch_size=64),
        "float labels": (X, y.double()),
        "(n, 1) labels": (X, y[:, None]),
        "float64 inputs (model is float32)": (X.double(), y),
        "list of rows": (X.tolist(), y.tolist()),
    }


def test_one_fingerprint_for_every_form_of_the_same_data(small, digits_mlp):
    X, y = small
    head = head_adapter(digits_mlp, progress=False)
    reference = head.run(head.batches((X, y), name="train"), what="training").fingerprint
    for form, data in same_data_forms(X, y).items():
        fp = fingerprint(head, data, y if form == "separate y" else None)
        assert fp == reference, form


def test_adapter_batch_size_does_not_matter(small, digits_mlp):
    X, y = small
    fps = {fingerprint(head_adapter(digits_mlp, batch_size=b, progress=False), (X, y)) for b in (1, 5, 64, 512)}
    assert len(fps) == 1


@pytest.mark.parametrize("change", ["value", "label", "order", "drop", "shape", "no labels"])
def test_any_change_of_the_data_changes_it(small, digits_mlp, change):
    X, y = small
    head = head_adapter(digits_mlp, progress=False)
    X2, y2 = X.clone(), y.clone()
    if change == "value":
        X2[100, 5] += 1e-3
    elif change == "label":
        y2[100] = (y2[100] + 1) % 10
    elif change == "order":
        X2[[3, 4]], y2[[3, 4]] = X[[4, 3]], y[[4, 3]]
    elif change == "drop":
        X2, y2 = X[:-1], y[:-1]
    elif change == "shape":
        X2 = X.reshape(len(X), 8, 8)
    batches = head.batches((X2, y2) if change != "no labels" else X2, name="train")
    assert head.data_fingerprint(batches) != fingerprint(head, (X, y))


def test_streaming_hash_is_independent_of_batch_boundaries():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(101, 3, 2, generator=g)
    y = torch.randint(0, 4, (101,), generator=g)
    digests = set()
    for cuts in ([101], [1] * 101, [50, 51], [7, 0, 90, 4], [100, 1]):
        fp, start = Fingerprint(), 0
        for size in cuts:
            fp.update(X[start:start + size], y[start:start + size].int())
            start += size
        digests.add(fp.hexdigest())
    assert len(digests) == 1


def test_estimator_index_accepts_the_same_data_in_another_form(tmp_path, digits, digits_mlp):
    """The issue's case: an index built from tensors is refused when reloaded with a DataLoader or int32 labels."""
    Xtr, ytr, _, _ = digits
    X, y = Xtr[:300], ytr[:300]
    pc.RepresenterL2(digits_mlp, progress=False).fit(X, y).save(tmp_path / "index")
    for train in (DataLoader(TensorDataset(X, y.int()), batch_size=33), (X.numpy(), y.numpy().astype(np.uint8))):
        pc.RepresenterL2.load(tmp_path / "index", digits_mlp, train=train)
    with pytest.raises(pc.PrecedentsError, match="other training data"):
        pc.RepresenterL2.load(tmp_path / "index", digits_mlp, train=(X, (y + 1) % 10))


def test_sklearn_string_and_index_labels_agree(iris_logreg):
    from precedents.adapters.sklearn import sklearn_head

    model, X, y_names = iris_logreg
    head = sklearn_head(model, progress=False)
    index = np.searchsorted(model.classes_, y_names)
    assert fingerprint(head, (X, y_names)) == fingerprint(head, (X, model.classes_[index]))
    assert fingerprint(head, (X, y_names)) == fingerprint(head, (X.tolist(), list(y_names)))


def test_tree_fingerprint_ignores_batch_size_and_label_dtype():
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:150], y[:150]
    model = GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0).fit(X, y)
    fps = {head_adapter(model, batch_size=b, progress=False).data_fingerprint(
        head_adapter(model, batch_size=b, progress=False).batches((X, y.astype(dtype)), require_labels=True))
        for b, dtype in ((1, np.int64), (16, np.int32), (4096, np.uint8))}
    assert len(fps) == 1
    head = head_adapter(model, batch_size=16, progress=False)
    assert head.run(head.batches((X, y))).fingerprint in fps


@pytest.fixture(scope="module")
def iris_logreg():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    return LogisticRegression(max_iter=500).fit(X, names), X, names
