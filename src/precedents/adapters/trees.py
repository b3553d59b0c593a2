r"""Head view of a tree ensemble: each tree's output is one feature, and a fixed head sums them.

A boosted ensemble predicts the margin (logit) of class k as a sum of tree outputs plus a constant,

    z_k(x) = b_k + sum_{t in T_k} f_t(x),

where ``f_t(x)`` is the value of the leaf that x reaches in tree t (learning rate included) and ``T_k`` the trees
that belong to class k. That is a linear head on fixed features:

* features ``phi(x) = (f_1(x), ..., f_T(x), 1)``, shape (n, T + 1), float64;
* head ``Theta`` (C, T + 1) with ``Theta[k, t] = 1`` if tree t belongs to class k, else 0, and
  ``Theta[k, T] = b_k`` (the base score or init prediction, in margin units), so ``z(x) = Theta phi(x)``.

**Binary** (sigmoid link, C = 1 output): every tree belongs to the one output, ``Theta = (1, ..., 1, b)``.
**Multi-class** (softmax link, C outputs): XGBoost, LightGBM and scikit-learn grow one tree per class per round
(``num_parallel_tree`` P > 1 grows P per class per round, their leaves already divided by P), so ``Theta`` is a
0/1 class-membership matrix with exactly one 1 per tree column; the softmax probabilities are
``p_k(x) = exp(z_k) / sum_j exp(z_j)``. The head's loss Hessian is the usual softmax one over the full (C, T+1)
matrix, ``H = (1/n) sum_i (diag(p_i) - p_i p_i^T) (x) phi_i phi_i^T``: entries for (class k, tree t) with t not
in ``T_k`` are parameters the ensemble fixes at 0, but the Hessian, RPS-LJE and influence treat them like the
others (the head is a softmax regression on the tree outputs). XGBoost's ``multi_strategy="multi_output_tree"``
grows trees with a *vector* leaf (one value per class): each such tree gives C features, ``(t, k)`` with value
leaf_t(x)[k] and ``Theta[k, (t, k)] = 1``.

The head view holds the tree *structure* fixed: scores say how a training example moves the per-tree weights
(and the intercept) of this head, not how retraining the ensemble without it would regrow its trees; see
docs/trees_loo.md for how that compares with leave-one-out retraining of the ensemble itself.

Supported: XGBoost (``XGBClassifier`` or a ``Booster`` with objective ``binary:logistic``, ``binary:logitraw``,
``multi:softprob`` or ``multi:softmax``; gbtree or dart), LightGBM (``LGBMClassifier`` or a ``Booster`` with
objective ``binary`` or ``multiclass``), scikit-learn ``GradientBoostingClassifier`` (log-loss) and
``HistGradientBoostingClassifier``. Random forests and extra trees are refused: their output is the *average of
tree probabilities*, ``p(x) = (1/T) sum_t p_t(x)``, which is linear in the trees with an identity link; no
sigmoid/softmax head reproduces it (``log`` of a mean is not a mean of logs), so RPS-LJE and influence (which
need the cross-entropy of a linear head on logits) would explain a different model.

Regularisation: the head's parameters are per-tree multipliers, not the leaf values the ensemble penalised, so
``weight_decay`` is None; the head is not a stationary point of the training loss (boosting with shrinkage never
optimises the trees' weights jointly), so influence functions warn and need damping (see
:data:`SUGGESTED_DAMPING`).
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import PrecedentsError, check_scalar
from ..data import Batches, Fingerprint, labels_to_indices, target_indices
from .torch import HeadFeatures, LinkFromOutputs

#: What ``TreeHead`` accepts, named in every refusal.
TREE_FAMILIES = ("XGBoost (XGBClassifier, or a Booster with a binary:logistic, binary:logitraw, multi:softprob "
                 "or multi:softmax objective), LightGBM (LGBMClassifier, or a Booster with a binary or multiclass "
                 "objective), scikit-learn GradientBoostingClassifier (log_loss) and HistGradientBoostingClassifier")

#: Damping we suggest for RPS-LJE and influence on a tree head, in units of the head Hessian's largest eigenvalue
#: (``damping = SUGGESTED_DAMPING * lambda_max``; see docs/trees_loo.md for the measurements behind it).
SUGGESTED_DAMPING = 1e-3

XGBOOST_INSTALL = "pip install xgboost-cpu"
LIGHTGBM_INSTALL = "pip install lightgbm"


def _import(module: str, install: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise PrecedentsError(f"This needs the optional package {module!r}, which is not installed. "
                              f"Fix: {install}") from err


def _pandas() -> Any:
    return _import("pandas", "pip install pandas")


def _is_frame(X: Any) -> bool:
    module = type(X).__module__ or ""
    return module.startswith("pandas") and hasattr(X, "columns") and hasattr(X, "iloc")


class Rows:
    """Positional row slices of a DataFrame (``rows[a:b]`` is ``frame.iloc[a:b]``), for :class:`Batches`."""

    def __init__(self, frame: Any) -> None:
        self.frame = frame

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, index: Any) -> Any:
        return self.frame.iloc[index]


def _string_categories(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, str) for v in values)


def _categorical(column: Any, categories: list[Any] | None, name: str) -> Any:
    """``column`` as a pandas category with object-dtype categories (``categories`` when the model stores them).

    Values are matched to the stored categories by name (as strings when the stored ones are strings, so a
    ``True``/``False`` column matches ``"True"``/``"False"``); values the model never saw become missing.
    """
    pd = _pandas()
    values = column.astype(object)
    if categories is None:
        if isinstance(column.dtype, pd.CategoricalDtype):
            categories = list(column.cat.categories)
        else:
            categories = sorted({v for v in values if not pd.isna(v)}, key=str)
    if _string_categories(categories):
        values = values.map(lambda v: v if pd.isna(v) else str(v))
    out = pd.Series(pd.Categorical(values, categories=pd.Index(categories, dtype=object)), index=column.index,
                    name=name)
    return out


class _Ensemble:
    """What one model family must provide; :class:`TreeHead` does the rest."""

    family = ""
    n_outputs = 1                    # 1: sigmoid (binary); C >= 3: softmax
    feature_names: list[str] | None = None
    n_features = 0
    tree_classes: np.ndarray         # (m,) output index of each tree feature
    constant: np.ndarray             # (n_outputs,) base margin

    def prepare(self, X: Any, what: str) -> Any:
        """Check and convert data to what the model predicts on (column order, categories)."""
        return check_columns(X, self.feature_names, self.n_features, what, self.family)

    def contributions(self, X: Any) -> np.ndarray:  # pragma: no cover - abstract
        """(n, m) float64: each tree feature's output for each row."""
        raise NotImplementedError

    def margins(self, X: Any) -> np.ndarray:  # pragma: no cover - abstract
        """(n, n_outputs) float64: the model's own margins (logits)."""
        raise NotImplementedError

    def serialized(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError


def check_columns(X: Any, names: list[str] | None, n_features: int, what: str, family: str) -> Any:
    """Refuse data whose columns do not match the model's; a DataFrame comes back in the model's column order."""
    if _is_frame(X):
        columns = [str(c) for c in X.columns]
        if names is not None:
            missing = [c for c in names if c not in columns]
            extra = [c for c in columns if c not in names]
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"missing column(s) {', '.join(map(repr, missing[:10]))}"
                                 + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
                if extra:
                    parts.append(f"column(s) the model was not trained on {', '.join(map(repr, extra[:10]))}"
                                 + (f" and {len(extra) - 10} more" if len(extra) > 10 else ""))
                raise PrecedentsError(
                    f"The {what} data do not match the {family} model's features: {'; '.join(parts)}. Pass exactly "
                    f"the model's {len(names)} feature columns (drop the label and any other column).")
            return X[names] if columns != names else X
        if len(columns) != n_features:
            raise PrecedentsError(f"The {what} data have {len(columns)} columns but the {family} model was trained "
                                  f"on {n_features} features.")
        return X
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        hint = (" For one example, add the batch axis: X.reshape(1, -1)." if X.ndim == 1 and len(X) == n_features
                else "")
        raise PrecedentsError(f"The {what} data must be a 2-D table (rows x features), got shape {X.shape}.{hint}")
    if X.dtype == object:
        raise PrecedentsError(f"The {what} data are a numpy array of Python objects: pass a pandas DataFrame "
                              "(categorical columns as 'category' dtype) or a numeric array.")
    if X.shape[1] != n_features:
        named = f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""
        raise PrecedentsError(f"The {what} data have {X.shape[1]} columns but the {family} model was trained on "
                              f"{n_features} features{named}.")
    return X


# --------------------------------------------------------------------------------------------------------------
# XGBoost
# --------------------------------------------------------------------------------------------------------------

XGB_OBJECTIVES = ("binary:logistic", "binary:logitraw", "multi:softprob", "multi:softmax")


def _decode_xgb_categories(cats: dict[str, Any] | None, n_features: int) -> list[list[Any] | None]:
    """The training categories XGBoost (>= 3.1) stores per feature in its JSON model, or None where absent."""
    out: list[list[Any] | None] = [None] * n_features
    if not cats or "enc" not in cats:
        return out
    for j, enc in enumerate(cats["enc"][:n_features]):
        offsets, values = enc.get("offsets", []), enc.get("values", [])
        if offsets:
            raw = bytes(int(v) & 0xFF for v in values)
            out[j] = [raw[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]
        elif values:
            out[j] = [float(v) for v in values]
    return out


class _XGBoost(_Ensemble):
    family = "XGBoost"

    def __init__(self, model: Any) -> None:
        xgb = _import("xgboost", XGBOOST_INSTALL)
        if hasattr(model, "get_booster"):
            if type(model).__name__.endswith("Regressor") or type(model).__name__.endswith("Ranker"):
                raise PrecedentsError(f"{type(model).__name__} is not a classifier: precedents explains "
                                      f"classifiers (a sigmoid or softmax margin). Supported: {TREE_FAMILIES}.")
            try:
                booster = model.get_booster()
            except Exception as err:          # xgboost raises NotFittedError (a ValueError subclass) or XGBoostError
                raise PrecedentsError(f"The {type(model).__name__} is not fitted: call fit first.") from err
        elif isinstance(model, xgb.Booster):
            booster = model
        else:
            raise PrecedentsError(f"Unsupported XGBoost object {type(model).__name__}. Supported: {TREE_FAMILIES}.")
        self.xgb, self.booster = xgb, booster
        config = json.loads(booster.save_config())["learner"]
        objective = config["objective"]["name"]
        if objective not in XGB_OBJECTIVES:
            raise PrecedentsError(f"This XGBoost model's objective is {objective!r}: precedents explains "
                                  f"classifiers with objective {', '.join(XGB_OBJECTIVES)} (a sigmoid or softmax "
                                  "margin). Regression, ranking and hinge objectives have no such head.")
        self.raw = json.loads(booster.save_raw("json"))
        gb = self.raw["learner"]["gradient_booster"]
        kind = gb["name"]
        if kind == "gblinear":
            raise PrecedentsError("This XGBoost model is gblinear (a linear model, no trees); explain it as a "
                                  "linear model instead.")
        trees_model = gb["gbtree"]["model"] if kind == "dart" else gb["model"]
        weights = np.asarray(gb.get("weight_drop", []), dtype=np.float64) if kind == "dart" else None
        params = config["learner_model_param"]
        n_class = int(params.get("num_class", "0"))
        self.n_outputs = n_class if n_class >= 2 else 1
        if objective.startswith("multi") and self.n_outputs < 3:
            self.n_outputs = max(n_class, 2)
        base = [float(v) for v in params["base_score"].strip("[]").split(",")]
        if objective == "binary:logistic":          # stored as a probability; the margin is its logit
            base = [math.log(b / (1 - b)) for b in base]
        self.constant = np.asarray(base if len(base) == self.n_outputs else base[:1] * self.n_outputs,
                                   dtype=np.float64)
        self.feature_names = booster.feature_names
        self.feature_types = booster.feature_types
        self.n_features = booster.num_features()
        self.categories = _decode_xgb_categories(trees_model.get("cats"), self.n_features)
        self.has_categorical = bool(self.feature_types) and "c" in self.feature_types
        # leaf value tables, one per tree (vector leaves: (nodes, C))
        self.tables, classes, self.tree_of = [], [], []
        for t, (tree, info) in enumerate(zip(trees_model["trees"], trees_model["tree_info"], strict=True)):
            size = int(tree["tree_param"].get("size_leaf_vector", "1") or 1)
            scale = 1.0 if weights is None or len(weights) == 0 else float(weights[t])
            if size > 1:
                table = np.asarray(tree["base_weights"], dtype=np.float32).astype(np.float64).reshape(-1, size)
                self.tables.append(table * scale)
                classes.extend(range(size))
                self.tree_of.extend([t] * size)
            else:
                table = np.asarray(tree["split_conditions"], dtype=np.float32).astype(np.float64)
                self.tables.append(table * scale)
                classes.append(int(info) if self.n_outputs > 1 else 0)
                self.tree_of.append(t)
        self.tree_classes = np.asarray(classes, dtype=np.int64)
        if not self.tables:
            raise PrecedentsError("This XGBoost model has no trees: train it first.")

    def prepare(self, X: Any, what: str) -> Any:
        X = check_columns(X, self.feature_names, self.n_features, what, self.family)
        pd = _pandas() if _is_frame(X) or self.has_categorical else None
        if not _is_frame(X):
            if self.has_categorical:
                cats = [n for n, t in zip(self.feature_names or [], self.feature_types, strict=False) if t == "c"]
                raise PrecedentsError(f"This XGBoost model has categorical features ({', '.join(cats[:5])}): pass "
                                      "the data as a pandas DataFrame with those columns, not a numeric array.")
            return X
        if self.feature_names is None:                 # trained on an array: predict on one
            return X.to_numpy(dtype=np.float32)
        X = X.copy()
        types = self.feature_types or [None] * X.shape[1]
        for j, (column, kind) in enumerate(zip(list(X.columns), types, strict=True)):
            col = X[column]
            if kind == "c":
                X[column] = _categorical(col, self.categories[j], str(column))
            elif isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or pd.api.types.is_string_dtype(
                    col.dtype):
                try:
                    X[column] = pd.to_numeric(col.astype(object))
                except (TypeError, ValueError) as err:
                    raise PrecedentsError(f"Column {column!r} of the {what} data holds text, but the XGBoost model "
                                          f"treats it as a number (feature type {kind!r}).") from err
        return X

    def _dmatrix(self, X: Any) -> Any:
        if _is_frame(X):
            return self.xgb.DMatrix(X, enable_categorical=True, nthread=1)
        return self.xgb.DMatrix(X, feature_names=self.feature_names, feature_types=self.feature_types, nthread=1)

    def contributions(self, X: Any) -> np.ndarray:
        leaves = self.booster.predict(self._dmatrix(X), pred_leaf=True).reshape(len(X), -1).astype(np.int64)
        out = np.empty((len(X), len(self.tree_classes)), dtype=np.float64)
        col = 0
        for t, table in enumerate(self.tables):
            values = table[leaves[:, t]]
            if values.ndim == 2:
                out[:, col:col + values.shape[1]] = values
                col += values.shape[1]
            else:
                out[:, col] = values
                col += 1
        return out

    def margins(self, X: Any) -> np.ndarray:
        m = self.booster.predict(self._dmatrix(X), output_margin=True)
        return np.asarray(m, dtype=np.float64).reshape(len(X), self.n_outputs)

    def serialized(self) -> bytes:
        return bytes(self.booster.save_raw("ubj"))


# --------------------------------------------------------------------------------------------------------------
# LightGBM
# --------------------------------------------------------------------------------------------------------------

class _LightGBM(_Ensemble):
    family = "LightGBM"

    def __init__(self, model: Any) -> None:
        lgb = _import("lightgbm", LIGHTGBM_INSTALL)
        if isinstance(model, lgb.Booster):
            booster = model
        elif isinstance(model, lgb.LGBMModel):
            if not isinstance(model, lgb.LGBMClassifier):
                raise PrecedentsError(f"{type(model).__name__} is not a classifier: precedents explains "
                                      f"classifiers (a sigmoid or softmax margin). Supported: {TREE_FAMILIES}.")
            if not hasattr(model, "booster_") or getattr(model, "_Booster", None) is None:
                raise PrecedentsError(f"The {type(model).__name__} is not fitted: call fit first.")
            booster = model.booster_
        else:
            raise PrecedentsError(f"Unsupported LightGBM object {type(model).__name__}. Supported: {TREE_FAMILIES}.")
        self.booster = booster
        dump = booster.dump_model()
        objective = str(dump.get("objective", "")).split()
        name = objective[0] if objective else ""
        if name not in ("binary", "multiclass"):
            raise PrecedentsError(f"This LightGBM model's objective is {name or 'unknown'!r}: precedents explains "
                                  "objective 'binary' (sigmoid) or 'multiclass' (softmax). 'multiclassova', "
                                  "regression and ranking have no such head.")
        sigmoid = 1.0
        for part in objective[1:]:
            if part.startswith("sigmoid:"):
                sigmoid = float(part.split(":", 1)[1])
        if name == "binary" and sigmoid != 1.0:
            raise PrecedentsError(f"This LightGBM model uses sigmoid:{sigmoid:g} (probability = "
                                  "1 / (1 + exp(-sigmoid * raw))); only the default sigmoid=1 is supported.")
        if any(tree.get("is_linear") or tree.get("tree_structure", {}).get("leaf_coeff") for tree in
               dump.get("tree_info", [])[:1]) or str(booster.params.get("linear_tree", "")).lower() == "true":
            raise PrecedentsError("This LightGBM model has linear trees (linear_tree=True): a leaf's output "
                                  "depends on x, so a tree is not one feature. Retrain without linear_tree.")
        per_iter = booster.num_model_per_iteration()
        self.n_outputs = 1 if name == "binary" else per_iter
        n_trees = booster.num_trees()
        self.tree_classes = np.arange(n_trees, dtype=np.int64) % per_iter if self.n_outputs > 1 else \
            np.zeros(n_trees, dtype=np.int64)
        self.tables = [np.asarray([booster.get_leaf_output(t, leaf) for leaf in range(info["num_leaves"])],
                                  dtype=np.float64) for t, info in enumerate(dump["tree_info"])]
        if dump.get("average_output"):
            raise PrecedentsError("This LightGBM model is a random forest (boosting='rf'): it averages its trees "
                                  "instead of summing them. Supported: boosted LightGBM models (gbdt, goss, dart).")
        self.constant = np.zeros(self.n_outputs, dtype=np.float64)   # the init score lives in the first trees
        # categorical columns (as trained from pandas) and their categories, to convert tables read from files
        self.categories: dict[int, list[Any]] = {}
        marker = "[categorical_feature: "
        text = booster.model_to_string()
        start = text.find(marker)
        if start >= 0 and booster.pandas_categorical:
            indices = [int(v) for v in text[start + len(marker):text.index("]", start)].split(",") if v.strip()]
            self.categories = dict(zip(indices, booster.pandas_categorical, strict=False))
        names = booster.feature_name()
        generic = all(n == f"Column_{i}" for i, n in enumerate(names))
        self.feature_names = None if generic else list(names)
        self.n_features = booster.num_feature()

    def prepare(self, X: Any, what: str) -> Any:
        X = check_columns(X, self.feature_names, self.n_features, what, self.family)
        if _is_frame(X) and self.categories:
            X = X.copy()
            for j, cats in self.categories.items():
                column = X.columns[j]
                X[column] = _categorical(X[column], list(cats), str(column))
        return X

    def contributions(self, X: Any) -> np.ndarray:
        leaves = np.asarray(self.booster.predict(X, pred_leaf=True, num_threads=1)).reshape(len(X), -1)
        return np.stack([table[leaves[:, t]] for t, table in enumerate(self.tables)], axis=1)

    def margins(self, X: Any) -> np.ndarray:
        raw = self.booster.predict(X, raw_score=True, num_threads=1)
        return np.asarray(raw, dtype=np.float64).reshape(len(X), self.n_outputs)

    def serialized(self) -> bytes:
        return self.booster.model_to_string().encode()


# --------------------------------------------------------------------------------------------------------------
# scikit-learn gradient boosting
# --------------------------------------------------------------------------------------------------------------

class _SklearnBoosting(_Ensemble):
    """``GradientBoostingClassifier`` (per-stage trees) and ``HistGradientBoostingClassifier`` (staged margins)."""

    family = "scikit-learn"

    def __init__(self, model: Any) -> None:
        name = type(model).__name__
        if name in ("RandomForestClassifier", "ExtraTreesClassifier"):
            raise PrecedentsError(
                f"{name} is not supported: a forest predicts the average of its trees' class probabilities, "
                "p(x) = (1/T) sum_t p_t(x), with no logit. No sigmoid/softmax head on per-tree features reproduces "
                "that average (the log of a mean is not a mean of logs), so RPS-LJE and influence would explain "
                f"another model. Use a boosted ensemble instead. Supported: {TREE_FAMILIES}.")
        if name not in ("GradientBoostingClassifier", "HistGradientBoostingClassifier"):
            raise PrecedentsError(f"{name} is not supported (regressors, AdaBoost, bagging, voting and stacking "
                                  f"ensembles have no tree-sum margin). Supported: {TREE_FAMILIES}.")
        if not hasattr(model, "classes_"):
            raise PrecedentsError(f"The {name} is not fitted: call fit first.")
        self.model, self.hist = model, name.startswith("Hist")
        loss = getattr(model, "loss", "log_loss")
        if loss not in ("log_loss", "auto", "deviance"):
            raise PrecedentsError(f"{name}(loss={loss!r}) is not supported: its probability is not the sigmoid or "
                                  "softmax of its decision function. Use loss='log_loss'.")
        n_classes = len(model.classes_)
        self.n_outputs = 1 if n_classes == 2 else n_classes
        names = getattr(model, "feature_names_in_", None)
        self.feature_names = None if names is None else [str(n) for n in names]
        self.n_features = int(model.n_features_in_)
        if self.hist:
            n_iter = int(model.n_iter_)
            self.constant = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
        else:
            n_iter = int(model.estimators_.shape[0])
            if model.init_ == "zero":
                self.constant = np.zeros(self.n_outputs)
            else:
                probe = np.zeros((1, self.n_features))
                if self.feature_names is not None:
                    probe = _pandas().DataFrame(probe, columns=self.feature_names)
                self.constant = np.asarray(model._raw_predict_init(probe), dtype=np.float64).reshape(-1)
        self.tree_classes = np.tile(np.arange(self.n_outputs, dtype=np.int64), n_iter)

    def prepare(self, X: Any, what: str) -> Any:
        X = check_columns(X, self.feature_names, self.n_features, what, self.family)
        if not _is_frame(X) and self.feature_names is not None:   # sklearn wants the names it was fitted with
            X = _pandas().DataFrame(X, columns=self.feature_names)
        return X

    def contributions(self, X: Any) -> np.ndarray:
        if self.hist:
            staged = [np.asarray(s, dtype=np.float64).reshape(len(X), -1)
                      for s in self.model.staged_decision_function(X)]
            previous = [np.broadcast_to(self.constant, staged[0].shape), *staged[:-1]]
            return np.concatenate([s - p for s, p in zip(staged, previous, strict=True)], axis=1)
        Xa = X if not _is_frame(X) else X.to_numpy(dtype=np.float32)
        Xa = np.asarray(Xa, dtype=np.float32)
        lr = self.model.learning_rate
        return np.stack([lr * tree.predict(Xa) for row in self.model.estimators_ for tree in row], axis=1)

    def margins(self, X: Any) -> np.ndarray:
        return np.asarray(self.model.decision_function(X), dtype=np.float64).reshape(len(X), self.n_outputs)

    def serialized(self) -> bytes:
        return pickle.dumps(self.model, protocol=4)


def ensemble_of(model: Any) -> _Ensemble:
    """The family-specific reader of ``model``; a clear error for anything else."""
    module = type(model).__module__ or ""
    if module.startswith("xgboost"):
        return _XGBoost(model)
    if module.startswith("lightgbm"):
        return _LightGBM(model)
    if module.startswith("sklearn.ensemble"):
        return _SklearnBoosting(model)
    raise PrecedentsError(f"{module}.{type(model).__name__} is not a supported tree ensemble. "
                          f"Supported: {TREE_FAMILIES}.")


# --------------------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------------------

class TreeHead(LinkFromOutputs):
    r"""Adapter for tree ensembles: features = each tree's output plus a constant 1, a fixed 0/1 head.

    See the module docstring for the binary and multi-class forms. ``run`` returns features (n, T + 1) float64
    and the model's *own* margins (XGBoost computes them in float32: the head reproduces them to about 1e-6
    relative). ``theta()`` is (C, T + 1) (C = 1 for binary). Missing values (NaN) are passed to the model,
    which routes them as it was trained. ``model`` is None: methods that differentiate through a network's
    parameters (``InfluenceFunction(params="all")``) do not apply.

    ``layer_name`` is ``"trees"``; ``weight_decay`` is None (the per-tree multipliers were not regularised).
    """

    layer_name = "trees"
    model = None

    def __init__(self, model: Any, *, batch_size: int = 4096, progress: bool = True) -> None:
        self.estimator = model
        self.ensemble = ensemble_of(model)
        self.batch_size = check_scalar("batch_size", batch_size, kind=int, low=1)
        self.progress = progress

    # -- the head ----------------------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.ensemble.family

    @property
    def n_outputs(self) -> int:
        return self.ensemble.n_outputs

    @property
    def n_trees(self) -> int:
        """Number of tree features (T); vector-leaf trees count once per class."""
        return len(self.ensemble.tree_classes)

    def theta(self) -> torch.Tensor:
        """(C, T + 1) float64: ``Theta[k, t] = 1`` if tree t belongs to output k, ``Theta[k, T] = b_k``."""
        e = self.ensemble
        theta = np.zeros((self.n_outputs, self.n_trees + 1), dtype=np.float64)
        theta[e.tree_classes, np.arange(self.n_trees)] = 1.0
        theta[:, -1] = e.constant
        return torch.from_numpy(theta)

    def fingerprint(self) -> str:
        """SHA-256 of the serialized trees (XGBoost UBJSON, LightGBM model string, scikit-learn pickle)."""
        return hashlib.sha256(self.ensemble.serialized()).hexdigest()

    def weight_decay(self, n_train: int) -> torch.Tensor | None:
        """None: the head's per-tree multipliers are not parameters the ensemble regularised."""
        return None

    # -- data --------------------------------------------------------------------------------------------------
    def batches(self, data: Any, y: Any = None, *, name: str = "X", require_labels: bool = False) -> Batches:
        """Rows of a DataFrame (kept a DataFrame, so categorical columns reach the model) or a 2-D array.

        ``data`` may be ``(X, y)``; labels are an array, a Series or a tensor of class indices. Columns are
        checked against the model's features (names when the model has them, else the count) and reordered to
        the model's order.
        """
        if isinstance(data, tuple) and y is None:
            if len(data) != 2:
                raise PrecedentsError(f"{name} as a tuple must be (X, y); got a tuple of length {len(data)}. Pass "
                                      "a list, an array or a DataFrame for rows of inputs.")
            data, y = data
        if isinstance(data, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
            raise PrecedentsError(f"{name}: a tree ensemble takes a table (an array or a DataFrame of features), not "
                                  f"a {type(data).__name__}.")
        X = self.ensemble.prepare(data, name)
        n = len(X)
        labels = None
        if y is not None:
            classes = self.classes
            if classes is not None:
                labels = labels_to_indices(y, classes, n)
            else:
                values = y.to_numpy() if hasattr(y, "to_numpy") else (y.detach().cpu().numpy()
                                                                      if isinstance(y, torch.Tensor) else np.asarray(y))
                if values.dtype == object or values.dtype.kind in "USO":
                    raise PrecedentsError(f"The labels of {name} are not numbers ({values[:3].tolist()}...): map them "
                                          "to the class indices 0..C-1 the model was trained with.")
                labels = torch.from_numpy(np.array(values, copy=True).reshape(-1))
                if len(labels) != n:
                    raise PrecedentsError(f"{name} and y have different lengths: {n} rows but {len(labels)} labels.")
        if require_labels and labels is None:
            raise PrecedentsError(f"{name} needs labels: pass (X, y) as a tuple, or fit(X, y).")
        source = Rows(X) if _is_frame(X) else X
        return Batches((source, labels), self.batch_size, n, has_labels=labels is not None, name=name,
                       require_labels=require_labels)

    @property
    def classes(self) -> np.ndarray | None:
        """The estimator's class labels (``classes_``), through which labels and class names are mapped to
        indices; None for a bare Booster (labels are then class indices)."""
        classes = getattr(self.estimator, "classes_", None)
        return None if classes is None else np.asarray(classes)

    def target_indices(self, target: Any, n: int) -> torch.Tensor:
        """The explained class per test point as indices (n,): a class label is mapped through ``classes_``; a
        number is an index 0..C-1 (see :func:`~precedents.data.target_indices`)."""
        return target_indices(target, n, self.n_classes, self.classes)

    def data_fingerprint(self, batches: Batches) -> str:
        """SHA-256 of the rows (values, column names and dtypes) and labels, independent of batch boundaries."""
        fp = Fingerprint()
        for x, y in batches:
            _add_rows(fp, x, y)
        return fp.hexdigest()

    def run(self, batches: Batches, *, what: str = "training") -> HeadFeatures:
        """Tree outputs, the model's margins, labels and a fingerprint of the data."""
        if batches.n_examples == 0:
            raise PrecedentsError(f"The {what} set is empty: nothing to explain with.")
        feats, logits, labels = [], [], []
        fp = Fingerprint()
        bar = tqdm(total=batches.n_examples, desc=f"tree outputs ({what})", unit="ex", disable=not self.progress,
                   leave=False)
        for x, y in batches:
            _add_rows(fp, x, y)
            contrib = self.ensemble.contributions(x)
            feats.append(np.concatenate([contrib, np.ones((len(contrib), 1))], axis=1))
            logits.append(self.ensemble.margins(x))
            if y is not None:
                labels.append(torch.as_tensor(y))
            bar.update(len(contrib))
        bar.close()
        features = torch.from_numpy(np.concatenate(feats))
        margins = torch.from_numpy(np.concatenate(logits))
        self._check_reproduces(features, margins, what)
        return HeadFeatures(features, margins, torch.cat(labels) if labels else None, fp.hexdigest())

    def _check_reproduces(self, features: torch.Tensor, margins: torch.Tensor, what: str) -> None:
        """Refuse to explain a head that does not reproduce the model (an unknown model variant)."""
        gap = (features @ self.theta().T - margins).abs()
        scale = margins.abs().clamp_min(1.0)
        worst = float((gap / scale).max()) if len(gap) else 0.0
        if not math.isfinite(worst) or worst > 1e-4:
            raise PrecedentsError(
                f"The tree-sum head does not reproduce this {self.family} model's margins on the {what} data "
                f"(largest relative difference {worst:.2e}): an unsupported variant (custom base_margin, "
                f"non-constant init estimator, ...). Supported: {TREE_FAMILIES}.")


def _add_rows(fp: Fingerprint, x: Any, y: Any) -> None:
    """Add a batch of rows to a fingerprint: a DataFrame by its column names and dtypes and a hash per row, an array
    in the canonical form of :class:`~precedents.data.Fingerprint`."""
    if _is_frame(x):
        pd = _pandas()
        layout = json.dumps([[str(c), str(t)] for c, t in zip(x.columns, x.dtypes, strict=True)])
        fp.update_rows(pd.util.hash_pandas_object(x, index=False).to_numpy().data, layout, len(x))
    else:
        fp.update(torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x)
    if y is not None:
        fp.update_labels(y)


# --------------------------------------------------------------------------------------------------------------
# Files: saved models and tables (for the command line)
# --------------------------------------------------------------------------------------------------------------

def load_tree_model(path: str | Path, kind: str = "xgboost") -> Any:
    """A saved XGBoost model (``.json``/``.ubj``) or LightGBM model (``.txt``) as a Booster."""
    p = Path(path)
    if kind not in ("xgboost", "lightgbm"):
        raise PrecedentsError(f"Unknown tree model kind {kind!r}: xgboost or lightgbm.")
    module = _import(kind, XGBOOST_INSTALL if kind == "xgboost" else LIGHTGBM_INSTALL)
    if not p.is_file():
        raise PrecedentsError(f"Model file {path} does not exist.")
    if kind == "xgboost":
        xgb = module
        if p.suffix.lower() not in (".json", ".ubj"):
            raise PrecedentsError(f"{path}: an XGBoost model file must be .json or .ubj (Booster.save_model).")
        try:
            return xgb.Booster(model_file=str(p))
        except xgb.core.XGBoostError as err:
            raise PrecedentsError(f"{path} is not an XGBoost model: {str(err).splitlines()[0]}") from err
    try:
        return module.Booster(model_file=str(p))
    except module.basic.LightGBMError as err:
        raise PrecedentsError(f"{path} is not a LightGBM model: {err}") from err


def read_table(path: str | Path, label: str | None) -> tuple[Any, np.ndarray | None]:
    """A CSV or Parquet file as a DataFrame of features and the label column (None when ``label`` is absent)."""
    pd = _pandas()
    p = Path(path)
    if not p.is_file():
        raise PrecedentsError(f"Data file {path} does not exist.")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        frame = pd.read_csv(p)
    elif suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(p)
        except ImportError as err:
            raise PrecedentsError(f"Reading {path} needs a Parquet engine. Fix: pip install pyarrow") from err
    else:
        raise PrecedentsError(f"Data file {path}: expected a .csv or .parquet table.")
    y = None
    if label is not None and label in frame.columns:
        y = frame.pop(label).to_numpy()
    return frame, y


def categorical_frame(X: Any) -> Any:
    """A copy of a DataFrame whose categorical columns have string categories of object dtype.

    XGBoost 3.2 cannot read pandas 3's ``str``-dtype or boolean categories; this is the form it accepts (and
    the form :class:`TreeHead` hands it). Numeric columns are unchanged.
    """
    pd = _pandas()
    X = X.copy()
    for column in X.columns:
        if isinstance(X[column].dtype, pd.CategoricalDtype):
            X[column] = _categorical(X[column], [str(c) for c in X[column].cat.categories], str(column))
    return X
