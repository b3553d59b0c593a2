"""Input data is checked before (or as) the model runs: each bad input gets a PrecedentsError that says what is
wrong and how to fix it; the ambiguous-but-valid forms are read one documented way (and give correct scores)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler, TensorDataset

import precedents as pc
from precedents.adapters import head_adapter
from precedents.data import make_batches, target_indices
from precedents.linalg.functional import LossGradients, select_parameters


@pytest.fixture(scope="module")
def fitted(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    return pc.RepresenterL2(digits_mlp, progress=False).fit(Xtr[:300], ytr[:300])


@pytest.fixture(scope="module")
def grads(digits_mlp):
    return LossGradients(digits_mlp, select_parameters(digits_mlp, "all", None), progress=False)


# -- shapes and dtypes, probed on the model: one family of cases, on the head path and on the gradient path ------

SHAPE_CASES = [
    # (description, make X from the (n, 64) test inputs, expected message)
    ("four features missing", lambda X: X[:, :60], r"shape \(5, 60\).*expects inputs of shape \(n, 64\).*60 values"),
    ("one extra feature", lambda X: torch.cat([X, X[:, :1]], 1), r"expects inputs of shape \(n, 64\).*65 values"),
    ("images into an MLP", lambda X: X.reshape(-1, 1, 8, 8), r"takes flat vectors: pass X.reshape\(len\(X\), -1\)"),
    ("images without channel into an MLP", lambda X: X.reshape(-1, 8, 8), r"flat vectors"),
    ("uint8 pixels", lambda X: (X * 255).to(torch.uint8), r"uint8 integers.*X.float\(\) / 255"),
    ("int64 values", lambda X: (X * 16).long(), r"int64 integers.*computes in float32"),
    ("bool values", lambda X: X > 0.5, r"bool integers"),
    ("transposed", lambda X: X.T, r"expects inputs of shape \(n, 64\).*5 values per example"),
]


@pytest.mark.parametrize("what, make, message", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_head_path_inputs_that_do_not_fit_the_model(fitted, digits, what, make, message):
    _, _, Xte, _ = digits
    with pytest.raises(pc.PrecedentsError, match=message):
        fitted.attribute(make(Xte[:5]))


@pytest.mark.parametrize("what, make, message", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_gradient_path_inputs_that_do_not_fit_the_model(grads, digits, what, make, message):
    _, _, Xte, yte = digits
    X = make(Xte[:5])
    with pytest.raises(pc.PrecedentsError, match=message):
        grads.example_gradients(X, yte.repeat(2)[: len(X)])


def test_one_example_without_batch_axis(fitted, digits, grads):
    _, _, Xte, yte = digits
    with pytest.raises(pc.PrecedentsError, match=r"batch axis first \(one example x is passed as x\[None\]\)"):
        fitted.attribute(Xte[0])
    with pytest.raises(pc.PrecedentsError, match=r"one example, add the batch axis: X\[None\]"):
        make_batches(Xte[0], yte[:1])
    with pytest.raises(pc.PrecedentsError, match=r"If X is one example, add the batch axis: X\[None\]"):
        grads.example_gradients(Xte[0], yte[:1])
    with pytest.raises(pc.PrecedentsError, match=r"1-D, one number per example.*X\[None\] \(shape \(1, 64\)\)"):
        grads.example_gradients(Xte[0], yte[:1].expand(64))
    assert fitted.attribute(Xte[0][None]).scores.shape == (1, 300)


def test_a_scalar_is_refused(fitted):
    with pytest.raises(pc.PrecedentsError, match="scalar"):
        fitted.attribute(torch.tensor(3.0))


def test_float64_inputs_are_cast_to_a_float32_model(fitted, digits, digits_mlp, grads):
    _, _, Xte, yte = digits
    torch.testing.assert_close(fitted.attribute(Xte.double()).scores, fitted.attribute(Xte).scores, rtol=0, atol=0)
    torch.testing.assert_close(grads.example_gradients(Xte[:4].double(), yte[:4]),
                               grads.example_gradients(Xte[:4], yte[:4]), rtol=0, atol=0)
    double = pc.RepresenterL2(digits_mlp.double(), progress=False)
    try:
        assert double.fit(*digits[:2]).attribute(Xte).scores.dtype == torch.float64
    finally:
        digits_mlp.float()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_are_numbered_across_batches(digits, digits_mlp, bad):
    Xtr, ytr, _, _ = digits
    X = Xtr[:300].clone()
    X[[261, 263], 3] = bad
    with pytest.raises(pc.PrecedentsError, match=r"NaN or infinite values \(rows 261, 263\)"):
        pc.RepresenterL2(digits_mlp, batch_size=64, progress=False).fit(DataLoader(TensorDataset(X, ytr[:300]),
                                                                                    batch_size=50))


# -- labels -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", [np.array(["cat", "dog"] * 150), ["cat", "dog"] * 150,
                                    np.array([b"a"] * 300), np.array([object()] * 300)],
                         ids=["numpy str", "list of str", "bytes", "objects"])
def test_string_labels_for_a_torch_model_say_how_to_map_them(digits, digits_mlp, labels):
    Xtr, _, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match="class indices 0..C-1 in the order of its outputs"):
        pc.RepresenterL2(digits_mlp, progress=False).fit(Xtr[:300], labels)


class NamedLabels(Dataset):
    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], "seven"


def test_string_labels_inside_a_dataset(digits, digits_mlp):
    Xtr, _, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match="class names"):
        pc.RepresenterL2(digits_mlp, progress=False).fit(NamedLabels(Xtr[:40]))


def test_single_label_and_mismatched_lengths(digits):
    Xtr, ytr, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match="single number"):
        make_batches(Xtr[:5], 3)
    with pytest.raises(pc.PrecedentsError, match="5 examples but 4 labels"):
        make_batches(Xtr[:5], ytr[:4])


# -- Datasets and DataLoaders -------------------------------------------------------------------------------------

class DictItems(Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return {"pixels": torch.zeros(64), "label": 0}


class Broken(Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        raise OSError("disk gone")


def test_dataset_without_labels_when_labels_are_needed(digits, digits_mlp):
    Xtr, _, _, _ = digits
    for data in (TensorDataset(Xtr[:30]), DataLoader(TensorDataset(Xtr[:30]), batch_size=8)):
        with pytest.raises(pc.PrecedentsError, match="carry no labels"):
            pc.RepresenterL2(digits_mlp, progress=False).fit(data)
        with pytest.raises(pc.PrecedentsError, match="carry no labels"):
            make_batches(data, require_labels=True)
    assert not make_batches(TensorDataset(Xtr[:30])).has_labels      # fine where labels are not needed


def test_dataset_of_dicts_and_a_failing_dataset(digits_mlp):
    with pytest.raises(pc.PrecedentsError, match=r"items are dicts \(keys \['label', 'pixels'\]\)"):
        make_batches(DictItems(), require_labels=True)
    with pytest.raises(pc.PrecedentsError, match="disk gone"):
        make_batches(Broken())


def test_labels_beside_a_dataset_or_loader_are_refused(digits):
    Xtr, ytr, _, _ = digits
    ds = TensorDataset(Xtr[:10], ytr[:10])
    for data in (ds, DataLoader(ds)):
        with pytest.raises(pc.PrecedentsError, match="not as a separate y"):
            make_batches(data, ytr[:10])


@pytest.mark.parametrize("loader, message", [
    (lambda ds: DataLoader(ds, batch_size=16, shuffle=True), r"shuffles its dataset \(shuffle=True\)"),
    (lambda ds: DataLoader(ds, batch_size=16, sampler=SubsetRandomSampler(range(50))), "SubsetRandomSampler"),
    (lambda ds: DataLoader(ds, batch_size=16, drop_last=True), "drop_last=True"),
    (lambda ds: DataLoader(ds, batch_size=None), "batch_size=None"),
], ids=["shuffle", "random sampler", "drop_last", "no batching"])
def test_loaders_that_do_not_visit_the_data_in_order_are_refused(digits, digits_mlp, loader, message):
    Xtr, ytr, _, _ = digits
    with pytest.raises(pc.PrecedentsError, match=message):
        pc.RepresenterL2(digits_mlp, progress=False).fit(loader(TensorDataset(Xtr[:100], ytr[:100])))


def test_an_ordered_loader_gives_the_scores_of_the_tensors(digits, digits_mlp, fitted):
    Xtr, ytr, Xte, _ = digits
    ex = pc.RepresenterL2(digits_mlp, progress=False).fit(DataLoader(TensorDataset(Xtr[:300], ytr[:300]),
                                                                     batch_size=37))
    torch.testing.assert_close(ex.attribute(Xte).scores, fitted.attribute(Xte).scores)


# -- (X, y) versus rows --------------------------------------------------------------------------------------------

def test_a_list_of_two_rows_is_two_examples_not_x_and_y(fitted, digits):
    _, _, Xte, _ = digits
    rows = [Xte[0].tolist(), Xte[1].tolist()]
    res = fitted.attribute(rows)
    assert res.scores.shape == (2, 300)
    torch.testing.assert_close(res.scores, fitted.attribute(Xte[:2]).scores)
    assert fitted.attribute(list(Xte[:2])).scores.shape == (2, 300)         # a list of per-example tensors


def test_tuples_other_than_pairs_and_ragged_or_text_rows(fitted, digits):
    _, _, Xte, _ = digits
    with pytest.raises(pc.PrecedentsError, match="tuple must be \\(X, y\\); got a tuple of length 3"):
        make_batches(tuple(Xte[:3]))
    with pytest.raises(pc.PrecedentsError, match="rows of different lengths"):
        fitted.attribute([[0.0] * 64, [0.0] * 63])
    with pytest.raises(pc.PrecedentsError, match="different shapes"):
        fitted.attribute([Xte[0], Xte[1, :10]])
    with pytest.raises(pc.PrecedentsError, match="holds strings"):
        fitted.attribute(np.array([["a"] * 64]))


# -- class names as targets ------------------------------------------------------------------------------------------

def test_class_name_as_target_for_a_torch_model(digits_mlp):
    head = head_adapter(digits_mlp, progress=False)
    with pytest.raises(pc.PrecedentsError, match=r"target='seven' is a class name.*indices\s+0..9"):
        head.target_indices("seven", 4)
    assert head.target_indices(7, 3).tolist() == [7, 7, 7]
    assert head.target_indices([7], 3).tolist() == [7, 7, 7]
    assert head.target_indices([1, 2, 3], 3).tolist() == [1, 2, 3]


@pytest.fixture(scope="module")
def iris_names():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    return LogisticRegression(max_iter=1000).fit(X, names), X, names, y


def test_sklearn_maps_string_labels_and_class_names_through_classes(iris_names):
    model, X, names, y = iris_names
    by_name = pc.RepresenterL2(model, progress=False).fit(X, names)
    assert torch.equal(by_name.labels_, torch.as_tensor(y))
    with pytest.raises(pc.PrecedentsError, match=r"labels \[0, 1, 2\] that the model does not know.*'setosa'"):
        pc.RepresenterL2(model, progress=False).fit(X, y)
    head = head_adapter(model, progress=False)
    assert head.target_indices("virginica", 2).tolist() == [2, 2]
    assert head.target_indices(["setosa", "virginica"], 2).tolist() == [0, 2]
    with pytest.raises(pc.PrecedentsError, match=r"labels \['rose'\] that the model does not know"):
        head.target_indices("rose", 1)
    with pytest.raises(pc.PrecedentsError, match=r"For one example, add the batch axis: X.reshape\(1, -1\)"):
        head.batches(X[0])
    assert head.batches([X[0], X[1]]).n_examples == 2          # a list of two rows is X, not (X, y)


def test_sklearn_non_finite_features_are_refused(iris_names):
    model, X, y, _ = iris_names
    X = X.copy()
    X[4, 1] = np.nan
    with pytest.raises(pc.PrecedentsError, match=r"NaN or infinite values \(rows 4\)"):
        pc.RepresenterL2(model, progress=False).fit(X, y)


def test_tree_labels_are_mapped_through_classes(tmp_path):
    """A GradientBoostingClassifier fitted on labels {1, 2}: label 1 is class index 0 (before: silently index 1)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:200], y[:200] + 1
    model = GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0).fit(X, y)
    head = head_adapter(model, progress=False)
    labels = torch.cat([yb for _, yb in head.batches((X, y))])
    assert torch.equal(labels, torch.as_tensor(y - 1))
    assert head.target_indices(2, 1).tolist() == [2]                       # numbers are indices, checked later
    names = GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0).fit(
        X, np.array(["benign", "malignant"])[y - 1])
    head = head_adapter(names, progress=False)
    assert head.target_indices("malignant", 3).tolist() == [1, 1, 1]
    with pytest.raises(pc.PrecedentsError, match="does not know"):
        head.batches((X, np.array(["other"] * len(X))))


def test_target_indices_without_classes():
    with pytest.raises(pc.PrecedentsError, match="class name"):
        target_indices(np.array(["a", "b"]), 2, 3)


def test_sparse_and_dataframe_inputs_for_a_torch_model(fitted, digits):
    import pandas as pd
    import scipy.sparse

    _, _, Xte, _ = digits
    dense = fitted.attribute(Xte[:3]).scores
    torch.testing.assert_close(fitted.attribute(scipy.sparse.csr_matrix(Xte[:3].numpy())).scores, dense)
    torch.testing.assert_close(fitted.attribute(pd.DataFrame(Xte[:3].numpy())).scores, dense)
    with pytest.raises(pc.PrecedentsError, match="Python objects"):
        fitted.attribute(pd.DataFrame({"a": ["x", "y"], "b": [1.0, 2.0]}))


class TextItems(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return "a review", 1


def test_loader_batches_that_are_dicts_or_text(digits_mlp):
    from torch.utils.data import default_collate

    loader = DataLoader(TensorDataset(torch.zeros(4, 64), torch.zeros(4).long()), batch_size=2,
                        collate_fn=lambda items: {"x": default_collate(items)[0]})
    with pytest.raises(pc.PrecedentsError, match=r"batches of train are dicts \(keys \['x'\]\)"):
        pc.RepresenterL2(digits_mlp, progress=False).fit(loader)
    with pytest.raises(pc.PrecedentsError, match="holds strings"):
        pc.RepresenterL2(digits_mlp, progress=False).fit(TextItems())


def test_tree_inputs_one_row_loader_and_lightgbm_string_labels():
    import lightgbm as lgb
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:150], y[:150]
    names = np.array(["benign", "malignant"])[y]
    model = lgb.LGBMClassifier(n_estimators=5, max_depth=2, verbose=-1, n_jobs=1).fit(X, names)
    head = head_adapter(model, progress=False)
    labels = torch.cat([yb for _, yb in head.batches((X, names))])
    assert torch.equal(labels, torch.as_tensor(y))
    with pytest.raises(pc.PrecedentsError, match=r"For one example, add the batch axis: X.reshape\(1, -1\)"):
        head.batches(X[0])
    with pytest.raises(pc.PrecedentsError, match="not a DataLoader"):
        head.batches(DataLoader(TensorDataset(torch.tensor(X), torch.tensor(y))))
    with pytest.raises(pc.PrecedentsError, match=r"labels \[0, 1\] that the model does not know"):
        head.batches((X, y))
    assert head.batches([X[0], X[1]]).n_examples == 2
