r"""Transparent models beside the black box (Rudin, "Stop explaining black box machine learning models for high
stakes decisions and use interpretable models instead", Nature Machine Intelligence 2019).

Three glass-box classifiers for tabular data, each with the scikit-learn contract and a ``text()`` a person reads:

* :class:`RuleListClassifier`: an ordered IF / ELSE IF / ELSE rule list minimising CORELS's objective
  (Angelino et al., "Learning certifiably optimal rule lists", JMLR 2018)

      R(d) = (misclassified training examples) / n + penalty * (number of rules)

  over antecedents mined from the training data (a threshold or an interval of a number, a level of a category).
  ``search="exact"`` is a branch and bound with CORELS's lower bound ``b(d) = (errors of the captured examples) / n
  + penalty * len(d)`` and its look-ahead bound (a prefix is extended only while ``b(d) + penalty`` is below the
  best objective), so the list it returns is *certifiably optimal* among all lists of at most ``max_rules`` rules
  over those antecedents (``certified_`` says so). ``search="greedy"`` appends the best rule one at a time.
  ``"auto"`` is exact while ``n_antecedents ** max_rules`` stays below ``EXACT_BUDGET`` nodes.
  Why our own search and not the ``corels`` package: its sdist does not build with current setuptools/numpy
  (``'dict' object has no attribute '__NUMPY_SETUP__'``), which also disables imodels' ``OptimalRuleListClassifier``
  (a wrapper of it); imodels 3.0.4 itself does not import without the undeclared dependency ``six``. The exact
  search here is small (vectorised numpy), certifies its answer with the same bounds and needs no new dependency.
* :class:`ScoreCardClassifier`: a sparse integer scoring system (Ustun & Rudin, "Supersparse linear integer
  models", 2016; the seed's five-item table). L1-penalised logistic regression on binarised features chooses at
  most ``max_features`` conditions; an unpenalised refit on them gives the continuous sparse model
  (``continuous_``); its coefficients are scaled and rounded to integers in ``[-max_points, max_points]``
  (the scale with the best training log-loss), and a probability per total score is fitted by a one-dimensional
  logistic regression ``P(y=1 | total) = sigmoid(a * total + b)`` (Platt scaling, monotone in the total).
* a shallow decision tree (scikit-learn CART, ``max_depth`` 3 by default), shown as its nested rules.

:func:`compare` fits the three and a black box (XGBoost) on the same stratified split and reports accuracy,
ROC AUC, the Brier score and the expected calibration error (ECE, 10 equal-width bins) of each on the test part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._validation import PrecedentsError

__all__ = [
    "EXACT_BUDGET",
    "Binarizer",
    "Condition",
    "GlassboxComparison",
    "RuleListClassifier",
    "ScoreCardClassifier",
    "classification_metrics",
    "compare",
    "expected_calibration_error",
]

#: ``search="auto"`` runs the exact branch and bound while n_antecedents ** max_rules is at most this.
EXACT_BUDGET = 5_000_000


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is in the trees and test extras
        raise PrecedentsError("precedents.glassbox needs pandas: pip install 'precedents[trees]'.") from exc
    return pd


def _frame(X: Any, feature_names: list[str] | None = None) -> Any:
    """A DataFrame view of X (a DataFrame is returned as is; arrays get columns ``x0, x1, ...`` or the names)."""
    pd = _pandas()
    if isinstance(X, pd.DataFrame):
        return X
    X = np.asarray(X)
    if X.ndim != 2:
        raise PrecedentsError(f"Glass-box models need tabular data (n, d), got an array of shape {X.shape}.")
    names = feature_names or [f"x{j}" for j in range(X.shape[1])]
    if len(names) != X.shape[1]:
        raise PrecedentsError(f"{len(names)} feature names for {X.shape[1]} columns.")
    return pd.DataFrame(X, columns=names)


def _labels(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise PrecedentsError(f"X and y have different lengths: {n} and {len(y)}.")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise PrecedentsError(f"Glass-box models are binary classifiers: y must be 0/1, got values {sorted(values)}.")
    return y.astype(np.int64)


def _is_categorical(column: Any) -> bool:
    pd = _pandas()
    return isinstance(column.dtype, pd.CategoricalDtype) or column.dtype == object or column.dtype == bool


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


@dataclass(frozen=True)
class Condition:
    """One antecedent on one feature: ``feature <= value``, ``feature > value``, ``lo < feature <= hi`` (``op="in"``,
    value ``(lo, hi)``) or ``feature == level``."""

    feature: str
    op: str
    value: Any

    def mask(self, X: Any) -> np.ndarray:
        """Boolean (n,) of the rows of DataFrame X that satisfy the condition."""
        column = X[self.feature]
        if self.op == "==":
            return (column.astype(object) == self.value).to_numpy()
        values = column.to_numpy().astype(np.float64)
        if self.op == "<=":
            return values <= self.value
        if self.op == ">":
            return values > self.value
        lo, hi = self.value
        return (values > lo) & (values <= hi)

    def text(self) -> str:
        if self.op == "==":
            return f"{self.feature} = {self.value}"
        if self.op == "in":
            lo, hi = self.value
            return f"{_number(lo)} < {self.feature} <= {_number(hi)}"
        return f"{self.feature} {self.op} {_number(self.value)}"

    def to_dict(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        value = value.item() if isinstance(value, np.generic) else value
        return {"feature": self.feature, "op": self.op, "value": value, "text": self.text()}


class Binarizer:
    """Mines :class:`Condition` s from training data: the antecedents of rule lists and the items of score cards.

    A numeric feature with more than two values gets cut points at the ``n_thresholds`` inner quantiles of its
    training values (values that occur, so integer counts get integer cuts) and the conditions ``x <= c``,
    ``x > c`` and, with ``intervals``, ``c_j < x <= c_{j+1}``; a categorical feature (or one with at most two values)
    gets ``x == level`` per level. Conditions true for fewer than ``min_support`` (a fraction) of the training rows,
    or for all but that many, are dropped, and so are duplicates (same rows) and, unless ``complements``, a
    condition whose rows are the complement of an earlier one's (redundant beside an intercept: score cards).
    """

    def __init__(self, n_thresholds: int = 6, *, intervals: bool = True, min_support: float = 0.01,
                 features: list[str] | None = None, complements: bool = True) -> None:
        self.n_thresholds = n_thresholds
        self.intervals = intervals
        self.min_support = min_support
        self.features = features
        self.complements = complements

    def fit(self, X: Any, y: Any = None) -> Binarizer:
        X = _frame(X)
        features = list(X.columns) if self.features is None else list(self.features)
        missing = [f for f in features if f not in X.columns]
        if missing:
            raise PrecedentsError(f"Features {missing} are not columns of X (columns: {list(X.columns)}).")
        candidates: list[Condition] = []
        for name in features:
            column = X[name]
            if column.isna().any():
                raise PrecedentsError(f"Feature {name!r} has missing values; impute or drop them first.")
            distinct = np.unique(column.astype(object).to_numpy()) if _is_categorical(column) else np.unique(column)
            if _is_categorical(column) or len(distinct) <= 2:
                candidates += [Condition(name, "==", v.item() if isinstance(v, np.generic) else v) for v in distinct]
                continue
            values = column.to_numpy().astype(np.float64)
            qs = np.arange(1, self.n_thresholds + 1) / (self.n_thresholds + 1)
            cuts = np.unique(np.quantile(values, qs, method="lower"))
            cuts = cuts[cuts < values.max()]
            candidates += [Condition(name, "<=", float(c)) for c in cuts]
            candidates += [Condition(name, ">", float(c)) for c in cuts]
            if self.intervals:
                bounds = [values.min() - 1.0, *cuts.tolist(), values.max()]
                candidates += [Condition(name, "in", (float(lo), float(hi)))
                               for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        n = len(X)
        kept, seen = [], set()
        for cond in candidates:
            m = cond.mask(X)
            support = m.mean()
            if support < self.min_support or support > 1 - self.min_support:
                continue
            key = np.packbits(m).tobytes()
            if key in seen:
                continue
            seen.add(key)
            if not self.complements:
                seen.add(np.packbits(~m).tobytes())
            kept.append(cond)
        if not kept:
            raise PrecedentsError(f"No condition on {features} holds for at least {self.min_support:.0%} and at most "
                                  f"{1 - self.min_support:.0%} of the {n} training rows: nothing to build rules from.")
        self.conditions_ = kept
        self.features_ = features
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Boolean matrix (n, n_conditions)."""
        X = _frame(X)
        return np.stack([c.mask(X) for c in self.conditions_], axis=1)


# ---------------------------------------------------------------------------------------------------------
# Rule lists
# ---------------------------------------------------------------------------------------------------------

class RuleListClassifier:
    """An ordered rule list for binary labels, certifiably optimal for CORELS's objective (see the module docstring).

    Parameters: ``max_rules`` (rules before the ELSE), ``penalty`` (the per-rule cost lambda, in training-error
    fraction: a rule must fix ``penalty * n`` mistakes to be worth keeping), ``search`` (``"auto"``, ``"exact"``,
    ``"greedy"``), ``n_thresholds``/``intervals``/``min_support``/``features`` (of the :class:`Binarizer`).

    After ``fit``: ``rules_`` (list of ``(Condition, label, P(y=1), n_captured)``), ``default_`` (``(label, P(y=1),
    n)``), ``objective_``, ``search_`` (the search run), ``certified_`` (True when the exact search finished: no list
    of at most ``max_rules`` rules over the antecedents has a lower objective), ``nodes_`` (prefixes evaluated).
    Probabilities are the Laplace-smoothed training frequencies ``(positives + 1) / (captured + 2)`` of each rule.
    """

    def __init__(self, max_rules: int = 3, penalty: float = 0.005, *, search: str = "auto", n_thresholds: int = 6,
                 intervals: bool = True, min_support: float = 0.01, features: list[str] | None = None) -> None:
        self.max_rules = max_rules
        self.penalty = penalty
        self.search = search
        self.n_thresholds = n_thresholds
        self.intervals = intervals
        self.min_support = min_support
        self.features = features

    def fit(self, X: Any, y: Any) -> RuleListClassifier:
        if self.search not in ("auto", "exact", "greedy"):
            raise PrecedentsError(f"search must be 'auto', 'exact' or 'greedy', got {self.search!r}.")
        if self.max_rules < 0 or self.penalty < 0:
            raise PrecedentsError(f"Need max_rules >= 0 and penalty >= 0, got {self.max_rules}, {self.penalty}.")
        X = _frame(X)
        y = _labels(y, len(X))
        self.binarizer_ = Binarizer(self.n_thresholds, intervals=self.intervals, min_support=self.min_support,
                                    features=self.features).fit(X)
        B = self.binarizer_.transform(X).T.astype(np.float64)        # (A, n)
        n_ant = len(B)
        search = self.search
        if search == "auto":
            search = "exact" if n_ant ** self.max_rules <= EXACT_BUDGET else "greedy"
        self.search_ = search
        self._B, self._y, self._n = B, y.astype(np.float64), len(y)
        self.nodes_ = 0
        full = np.ones(len(y), dtype=bool)
        default_err = min(y.sum(), len(y) - y.sum())
        self._best = (default_err / len(y), ())
        if search == "exact":
            self._branch(full, (), 0.0)
        else:
            self._greedy(full)
        self.certified_ = search == "exact"
        self.objective_, prefix = self._best
        del self._B, self._y, self._n, self._best
        self._finish(X, y, list(prefix))
        return self

    def _children(self, remaining: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For every antecedent appended to a prefix leaving ``remaining`` uncaptured: captured count, errors of
        the new rule (majority label) and of the default rule after it."""
        Br = self._B[:, remaining]
        yr = self._y[remaining]
        captured = Br.sum(axis=1)
        pos = Br @ yr
        rule_err = np.minimum(pos, captured - pos)
        rest_n, rest_pos = remaining.sum() - captured, yr.sum() - pos
        default_err = np.minimum(rest_pos, rest_n - rest_pos)
        self.nodes_ += len(Br)
        return captured, rule_err, default_err, pos

    def _branch(self, remaining: np.ndarray, prefix: tuple[int, ...], prefix_err: float) -> None:
        n, lam = self._n, self.penalty
        captured, rule_err, default_err, _ = self._children(remaining)
        depth = len(prefix) + 1
        bound = (prefix_err + rule_err) / n + lam * depth
        objective = bound + default_err / n
        for a in np.argsort(objective, kind="stable"):
            if captured[a] == 0 or a in prefix:
                continue
            if objective[a] < self._best[0] - 1e-12:
                self._best = (float(objective[a]), (*prefix, int(a)))
            # CORELS's look-ahead bound: a longer list costs at least one more penalty
            if depth < self.max_rules and bound[a] + lam < self._best[0] - 1e-12:
                self._branch(remaining & (self._B[a] == 0), (*prefix, int(a)), prefix_err + rule_err[a])

    def _greedy(self, remaining: np.ndarray) -> None:
        prefix: tuple[int, ...] = ()
        err = 0.0
        for depth in range(1, self.max_rules + 1):
            captured, rule_err, default_err, _ = self._children(remaining)
            objective = (err + rule_err + default_err) / self._n + self.penalty * depth
            objective[captured == 0] = np.inf
            a = int(np.argmin(objective))
            if not objective[a] < self._best[0] - 1e-12:
                break
            prefix, err = (*prefix, a), err + rule_err[a]
            self._best = (float(objective[a]), prefix)
            remaining = remaining & (self._B[a] == 0)

    def _finish(self, X: Any, y: np.ndarray, prefix: list[int]) -> None:
        conditions = self.binarizer_.conditions_
        remaining = np.ones(len(y), dtype=bool)
        self.rules_ = []
        for a in prefix:
            cond = conditions[a]
            cap = cond.mask(X) & remaining
            pos, tot = int(y[cap].sum()), int(cap.sum())
            self.rules_.append((cond, int(2 * pos > tot), (pos + 1) / (tot + 2), tot))
            remaining &= ~cap
        pos, tot = int(y[remaining].sum()), int(remaining.sum())
        self.default_ = (int(2 * pos > tot), (pos + 1) / (tot + 2), tot)
        self.classes_ = np.array([0, 1])

    def _check_fitted(self) -> None:
        if not hasattr(self, "rules_"):
            raise PrecedentsError("This RuleListClassifier is not fitted yet: call fit(X, y) first.")

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted()
        X = _frame(X)
        p = np.full(len(X), self.default_[1])
        done = np.zeros(len(X), dtype=bool)
        for cond, _, prob, _ in self.rules_:
            m = cond.mask(X) & ~done
            p[m] = prob
            done |= m
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: Any) -> np.ndarray:
        self._check_fitted()
        X = _frame(X)
        out = np.full(len(X), self.default_[0])
        done = np.zeros(len(X), dtype=bool)
        for cond, label, _, _ in self.rules_:
            m = cond.mask(X) & ~done
            out[m] = label
            done |= m
        return out

    def text(self) -> str:
        """The list as IF / ELSE IF / ELSE lines with each rule's training risk and support."""
        self._check_fitted()
        lines = []
        for k, (cond, label, prob, tot) in enumerate(self.rules_):
            lines.append(f"{'IF' if k == 0 else 'ELSE IF'} {cond.text()} THEN predict {label}"
                         f"   (P(y=1) = {prob:.2f}, n = {tot})")
        label, prob, tot = self.default_
        lines.append(f"ELSE predict {label}   (P(y=1) = {prob:.2f}, n = {tot})")
        how = "certifiably optimal" if self.certified_ else "greedy"
        lines.append(f"[{how}: objective {self.objective_:.4f} = training error + {self.penalty} x {len(self.rules_)} "
                     f"rules; {len(self.binarizer_.conditions_)} antecedents, {self.nodes_} prefixes evaluated]")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {"rules": [{"if": c.to_dict(), "predict": lab, "p_positive": p, "n": tot}
                          for c, lab, p, tot in self.rules_],
                "default": {"predict": self.default_[0], "p_positive": self.default_[1], "n": self.default_[2]},
                "objective": self.objective_, "penalty": self.penalty, "search": self.search_,
                "certified_optimal": self.certified_, "n_antecedents": len(self.binarizer_.conditions_),
                "nodes": self.nodes_}


# ---------------------------------------------------------------------------------------------------------
# Integer score cards
# ---------------------------------------------------------------------------------------------------------

def _l1_option() -> dict[str, Any]:
    """scikit-learn >= 1.8 spells an l1 penalty ``l1_ratio=1`` (``penalty`` is deprecated); older ones ``penalty``."""
    import sklearn

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    return {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}


def _fit_platt(total: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """``sigmoid(a * total + b)`` by Newton on the mean log-loss (a tiny ridge keeps it finite when separable);
    returns (a, b, mean log-loss)."""
    F = np.stack([total.astype(np.float64), np.ones(len(total))], axis=1)
    theta = np.zeros(2)
    ridge = 1e-6
    for _ in range(100):
        z = F @ theta
        p = 1 / (1 + np.exp(-z))
        grad = F.T @ (p - y) / len(y) + ridge * theta
        H = (F * (p * (1 - p))[:, None]).T @ F / len(y) + ridge * np.eye(2)
        step = np.linalg.solve(H, grad)
        theta -= step
        if np.abs(step).max() < 1e-12:
            break
    z = F @ theta
    loss = float(np.mean(np.logaddexp(0, z) - y * z))
    return float(theta[0]), float(theta[1]), loss


class ScoreCardClassifier:
    """A sparse integer scoring system: a few conditions worth small integer points, a probability per total.

    Parameters: ``max_features`` (items on the card), ``max_points`` (largest absolute points per item),
    ``n_thresholds``/``intervals``/``min_support``/``features`` (of the :class:`Binarizer`), ``seed`` (the L1 solver).

    After ``fit``: ``items_`` (list of ``(Condition, points)``), ``platt_`` ``(a, b)`` with
    ``P(y=1 | total) = 1 / (1 + exp(-(a * total + b)))``, ``risk_table_`` (rows ``(total, P(y=1), training n,
    training positives)`` for every achievable total), ``continuous_`` (the unrounded sparse logistic regression
    refit on the same items, a scikit-learn model on the binary item matrix) and ``scale_`` (points = round(scale *
    continuous coefficient)).
    """

    def __init__(self, max_features: int = 5, max_points: int = 5, *, n_thresholds: int = 6, intervals: bool = True,
                 min_support: float = 0.01, features: list[str] | None = None, seed: int = 0) -> None:
        self.max_features = max_features
        self.max_points = max_points
        self.n_thresholds = n_thresholds
        self.intervals = intervals
        self.min_support = min_support
        self.features = features
        self.seed = seed

    def fit(self, X: Any, y: Any) -> ScoreCardClassifier:
        from sklearn.linear_model import LogisticRegression

        if self.max_features < 1 or self.max_points < 1:
            raise PrecedentsError(f"Need max_features >= 1 and max_points >= 1, got {self.max_features}, "
                                  f"{self.max_points}.")
        X = _frame(X)
        y = _labels(y, len(X))
        self.binarizer_ = Binarizer(self.n_thresholds, intervals=self.intervals, min_support=self.min_support,
                                    features=self.features, complements=False).fit(X)
        Z = self.binarizer_.transform(X).astype(np.float64)
        # the L1 path: the least penalised model with at most max_features items
        chosen = np.array([], dtype=int)
        l1_option = _l1_option()
        for C in np.logspace(-4, 1, 40):
            l1 = LogisticRegression(C=C, solver="liblinear", intercept_scaling=100.0, random_state=self.seed,
                                    max_iter=1000, **l1_option).fit(Z, y)
            nonzero = np.flatnonzero(np.abs(l1.coef_[0]) > 1e-8)
            if len(nonzero) > self.max_features:
                break
            chosen = nonzero
        if len(chosen) == 0:
            raise PrecedentsError("No condition enters the L1 path before it has more than max_features items; "
                                  "raise max_features.")
        self.continuous_ = LogisticRegression(C=1e4, max_iter=1000).fit(Z[:, chosen], y)
        w = self.continuous_.coef_[0]
        best = None
        for scale in np.linspace(0.5, self.max_points, 20 * self.max_points) / np.abs(w).max():
            points = np.clip(np.round(scale * w), -self.max_points, self.max_points).astype(int)
            if not points.any():
                continue
            total = Z[:, chosen] @ points
            a, b, loss = _fit_platt(total, y)
            key = (round(loss, 6), int(np.abs(points).sum()))
            if best is None or key < best[0]:
                best = (key, scale, points, a, b)
        _, self.scale_, points, a, b = best
        keep = points != 0
        conditions = self.binarizer_.conditions_
        self.items_ = [(conditions[j], int(p)) for j, p in zip(chosen[keep], points[keep], strict=True)]
        self.continuous_items_ = [conditions[j] for j in chosen]
        self.platt_ = (a, b)
        total = self._total(X)
        lo = sum(min(p, 0) for _, p in self.items_)
        hi = sum(max(p, 0) for _, p in self.items_)
        self.risk_table_ = [(t, float(1 / (1 + math.exp(-(a * t + b)))), int((total == t).sum()),
                             int(y[total == t].sum())) for t in range(lo, hi + 1)]
        self.classes_ = np.array([0, 1])
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "items_"):
            raise PrecedentsError("This ScoreCardClassifier is not fitted yet: call fit(X, y) first.")

    def _total(self, X: Any) -> np.ndarray:
        X = _frame(X)
        total = np.zeros(len(X), dtype=np.int64)
        for cond, points in self.items_:
            total += points * cond.mask(X)
        return total

    def score(self, X: Any) -> np.ndarray:
        """The integer total score of each row."""
        self._check_fitted()
        return self._total(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted()
        a, b = self.platt_
        p = 1 / (1 + np.exp(-(a * self._total(X) + b)))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: Any) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] > 0.5).astype(np.int64)

    def continuous_proba(self, X: Any) -> np.ndarray:
        """P(y=1) of the unrounded sparse logistic regression on the same items (the rounding check)."""
        self._check_fitted()
        X = _frame(X)
        Z = np.stack([c.mask(X) for c in self.continuous_items_], axis=1).astype(np.float64)
        return self.continuous_.predict_proba(Z)[:, 1]

    def text(self) -> str:
        self._check_fitted()
        width = max(len(c.text()) for c, _ in self.items_)
        lines = [f"{k + 1}. {cond.text():<{width}}  {points:+d} point{'s' if abs(points) != 1 else ''}"
                 for k, (cond, points) in enumerate(self.items_)]
        lines.append("SCORE = sum of the points of the conditions that hold")
        lines.append("SCORE  " + " ".join(f"{t:>6d}" for t, *_ in self.risk_table_))
        lines.append("RISK   " + " ".join(f"{p:>6.1%}" for _, p, *_ in self.risk_table_))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {"items": [{**c.to_dict(), "points": p} for c, p in self.items_],
                "risk": [{"score": t, "p_positive": p, "n_train": k, "positives_train": pos}
                         for t, p, k, pos in self.risk_table_],
                "platt": {"a": self.platt_[0], "b": self.platt_[1]}, "scale": float(self.scale_)}


# ---------------------------------------------------------------------------------------------------------
# Metrics and the comparison
# ---------------------------------------------------------------------------------------------------------

def expected_calibration_error(y: Any, p: Any, n_bins: int = 10) -> float:
    """ECE of P(y=1): ``sum_b (n_b / n) |mean(y in b) - mean(p in b)|`` over ``n_bins`` equal-width bins of p."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        m = bins == b
        ece += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(ece)


def classification_metrics(y: Any, p: Any) -> dict[str, float]:
    """Accuracy (threshold 0.5), ROC AUC, Brier score and ECE of probabilities ``p`` = P(y=1) for 0/1 labels ``y``."""
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    return {"accuracy": float(((p > 0.5) == (y == 1)).mean()),
            "roc_auc": float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan"),
            "brier": float(np.mean((p - y) ** 2)),
            "ece": expected_calibration_error(y, p)}


@dataclass
class GlassboxComparison:
    """Glass-box models and a black box fitted on one split, with their test metrics.

    ``metrics``: ``{model name: {"accuracy", "roc_auc", "brier", "ece", "features"}}`` on the test part.
    ``models``: the fitted models (``"rule list"``, ``"score card"``, ``"tree"``, ``"black box"``); the score card's
    unrounded continuous model appears in ``metrics`` as ``"score card (unrounded)"``.
    """

    metrics: dict[str, dict[str, Any]]
    models: dict[str, Any]
    texts: dict[str, str]
    n_train: int
    n_test: int
    seed: int
    features: list[str]
    black_box_features: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: metrics, the rule list and score card as data, every model as text."""
        return {"metrics": self.metrics, "n_train": self.n_train, "n_test": self.n_test, "seed": self.seed,
                "features": self.features, "black_box_features": self.black_box_features,
                "rule_list": self.models["rule list"].to_dict(), "score_card": self.models["score card"].to_dict(),
                "texts": self.texts}

    def to_frame(self) -> Any:
        """The metrics as a DataFrame, one row per model."""
        pd = _pandas()
        return pd.DataFrame.from_dict(self.metrics, orient="index")

    def text(self) -> str:
        rows = [f"{'model':<24} {'accuracy':>8} {'ROC AUC':>8} {'Brier':>8} {'ECE':>8}  features"]
        for name, m in self.metrics.items():
            rows.append(f"{name:<24} {m['accuracy']:>8.4f} {m['roc_auc']:>8.4f} {m['brier']:>8.4f} {m['ece']:>8.4f}  "
                        f"{m['features']}")
        parts = ["\n".join(rows)] + [f"{name}:\n{body}" for name, body in self.texts.items()]
        return "\n\n".join(parts)

    def report_tables(self) -> list[Any]:
        """The comparison as :class:`precedents.report.html.Table` s: metrics, the rule list, the score card."""
        from .report.html import Table

        caption = (f"Test part of a stratified split (n_train = {self.n_train}, n_test = {self.n_test}, seed "
                   f"{self.seed}). Brier: mean squared error of P(y=1); ECE: 10 equal-width bins.")
        metrics = Table("Transparent models beside the black box", ["model", "accuracy", "ROC AUC", "Brier", "ECE",
                                                                    "features"],
                        [[name, m["accuracy"], m["roc_auc"], m["brier"], m["ece"], m["features"]]
                         for name, m in self.metrics.items()], caption)
        rl = self.models["rule list"]
        rules = [[("IF " if k == 0 else "ELSE IF ") + c.text(), lab, p, tot]
                 for k, (c, lab, p, tot) in enumerate(rl.rules_)]
        rules.append(["ELSE", *rl.default_])
        rule_table = Table("Rule list", ["rule", "predict", "P(y=1)", "training n"], rules,
                           ("certifiably optimal" if rl.certified_ else "greedy") +
                           f" for training error + {rl.penalty} per rule, at most {rl.max_rules} rules")
        sc = self.models["score card"]
        card = Table("Score card", ["condition", "points"], [[c.text(), p] for c, p in sc.items_],
                     "SCORE = sum of the points of the conditions that hold")
        risk = Table("Score card risk", ["score", "P(y=1)", "training n"], [[t, p, k] for t, p, k, _ in sc.risk_table_],
                     "P(y=1 | score) = sigmoid(a * score + b), fitted on the training part")
        return [metrics, rule_table, card, risk]


def _one_hot_frame(X: Any, reference: Any) -> np.ndarray:
    pd = _pandas()
    parts = []
    for name in reference.columns:
        column = reference[name]
        if _is_categorical(column):
            values = X[name].astype(object).to_numpy()
            parts += [(values == level).astype(np.float32) for level in pd.Categorical(column).categories]
        else:
            parts.append(X[name].to_numpy().astype(np.float32))
    return np.stack(parts, axis=1)


def compare(X: Any, y: Any, *, test_size: float = 0.3, seed: int = 0, features: list[str] | None = None,
            black_box: Any = None, rule_list: RuleListClassifier | None = None,
            score_card: ScoreCardClassifier | None = None, tree_depth: int = 3) -> GlassboxComparison:
    """Fit a rule list, a score card, a shallow tree and a black box on one stratified split; compare on the rest.

    Args:
        X: tabular data, a DataFrame (categorical columns as ``category``/``object``) or a 2-D array; y: 0/1 labels.
        test_size, seed: the stratified split (``sklearn.model_selection.train_test_split``); seed also seeds the
            models.
        features: the columns the glass-box models may use (default: all); the black box always sees all columns
            (one-hot encoded), as a deployed black box would.
        black_box: an unfitted scikit-learn-style classifier (default ``XGBClassifier(n_estimators=300,
            max_depth=4, learning_rate=0.05)``); fitted on the one-hot training matrix.
        rule_list, score_card: unfitted estimators to use instead of the defaults (``features`` is applied to them
            when they have none).
        tree_depth: ``max_depth`` of the CART tree.

    Returns:
        :class:`GlassboxComparison`.
    """
    from sklearn.model_selection import train_test_split
    from sklearn.tree import DecisionTreeClassifier, export_text

    X = _frame(X)
    y = _labels(y, len(X))
    features = list(X.columns) if features is None else list(features)
    tr, te = train_test_split(np.arange(len(X)), test_size=test_size, random_state=seed, stratify=y)
    Xtr, Xte, ytr, yte = X.iloc[tr].reset_index(drop=True), X.iloc[te].reset_index(drop=True), y[tr], y[te]
    rule_list = rule_list or RuleListClassifier()
    score_card = score_card or ScoreCardClassifier(seed=seed)
    for est in (rule_list, score_card):
        if est.features is None:
            est.features = features
    rule_list.fit(Xtr, ytr)
    score_card.fit(Xtr, ytr)
    glass_tr, glass_te = _one_hot_frame(Xtr[features], Xtr[features]), _one_hot_frame(Xte[features], Xtr[features])
    tree = DecisionTreeClassifier(max_depth=tree_depth, min_samples_leaf=max(5, len(tr) // 100),
                                  random_state=seed).fit(glass_tr, ytr)
    names = _one_hot_names(Xtr[features])
    if black_box is None:
        try:
            from xgboost import XGBClassifier
        except ImportError as exc:
            raise PrecedentsError("The default black box is XGBoost: pip install xgboost-cpu, or pass black_box=.") \
                from exc
        black_box = XGBClassifier(n_estimators=300, max_depth=4, learning_rate=0.05, random_state=seed, n_jobs=1)
    full_tr, full_te = _one_hot_frame(Xtr, Xtr), _one_hot_frame(Xte, Xtr)
    black_box.fit(full_tr, ytr)
    short = ", ".join(features) if len(features) <= 4 else f"{len(features)} columns"
    probs = {
        "rule list": (rule_list.predict_proba(Xte)[:, 1], short),
        "score card": (score_card.predict_proba(Xte)[:, 1], short),
        "score card (unrounded)": (score_card.continuous_proba(Xte), short),
        f"tree (depth {tree_depth})": (tree.predict_proba(glass_te)[:, 1], short),
        "black box": (black_box.predict_proba(full_te)[:, 1], f"all {X.shape[1]} columns"),
    }
    metrics = {name: {**classification_metrics(yte, p), "features": f} for name, (p, f) in probs.items()}
    texts = {"rule list": rule_list.text(), "score card": score_card.text(),
             "tree": export_text(tree, feature_names=names)}
    return GlassboxComparison(metrics=metrics, texts=texts, n_train=len(tr), n_test=len(te), seed=seed,
                              features=features, black_box_features=list(X.columns),
                              models={"rule list": rule_list, "score card": score_card, "tree": tree,
                                      "black box": black_box})


def _one_hot_names(reference: Any) -> list[str]:
    pd = _pandas()
    names = []
    for name in reference.columns:
        column = reference[name]
        if _is_categorical(column):
            names += [f"{name}={level}" for level in pd.Categorical(column).categories]
        else:
            names.append(name)
    return names
