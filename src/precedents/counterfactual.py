r"""Counterfactual explanations over features: small, diverse changes of a tabular input that flip the prediction.

"Had your debt been 2,000 lower, the loan would have been approved" (Wachter, Mittelstadt & Russell 2018; the
seed's counterfactual explanations; diversity as in DiCE, Mothilal, Sharma & Tan 2020). For a test row x and
the model's prediction c, :func:`counterfactuals` returns up to ``n`` rows x' that the model assigns to another
class (``target`` if given), each

* **valid**: re-checked by calling the model on x' (``Counterfactual.probability`` is the model's own P(target));
* **plausible**: immutable features (the user names them: age, sex, race) never change; categorical features take
  levels seen in training (a one-hot group switches as a whole, named ``column=level`` as
  :func:`precedents.datasets.one_hot` names them, or passed in ``one_hot=``); integer counts stay integers;
  every value stays within the range seen in training;
* **minimal**: distance ``sum_j |x'_j - x_j| / scale_j`` (scaled L1; ``scale_j`` the median absolute deviation of
  feature j in training, its standard deviation where the MAD is 0, 1 for categorical features: a level change
  costs 1), and no change can be undone, and no numeric change shrunk by bisection, while keeping the flip;
* **diverse**: chosen greedily to trade distance against dissimilarity from those already chosen.

The search needs no gradients, so it serves tree ensembles (XGBoost, LightGBM, scikit-learn boosting through
``predict_proba``) as well as differentiable models: a beam search over changes of one feature at a time to values
drawn from the training data (quantiles of numeric features, levels of categorical ones), scored by the gain in
P(target) per unit of distance. For differentiable models (torch modules, scikit-learn linear models and MLPs via
:func:`precedents.adapters.as_torch_module`) the candidates also include, per numeric feature, the value where
the linearised logit margin crosses zero (one gradient at x). Every step is deterministic (no random choice).
Non-tabular inputs (images, token sequences) get a :class:`~precedents.PrecedentsError`: changing one pixel or
token id is not a counterfactual anyone can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._validation import PrecedentsError

__all__ = ["Counterfactual", "CounterfactualResult", "counterfactuals"]

#: Layers whose presence says the model reads images or sequences, not a table of features.
NON_TABULAR_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.EmbeddingBag, nn.RNNBase,
                      nn.MultiheadAttention)


# ---------------------------------------------------------------------------------------------------------
# The model as a probability function
# ---------------------------------------------------------------------------------------------------------

class _Model:
    """``proba(Z) -> (m, C)`` for numeric rows Z, and (differentiable models) ``margin_gradient``."""

    def __init__(self, model: Any, to_input: Any) -> None:
        from .adapters import as_torch_module, model_family

        self.to_input = to_input
        self.module: nn.Module | None = None
        self.link = None
        family = model_family(model)
        if family == "torch":
            bad = [type(m).__name__ for m in model.modules() if isinstance(m, NON_TABULAR_LAYERS)]
            if bad:
                raise PrecedentsError(f"Feature counterfactuals are for tabular models; this one has {bad[0]} "
                                      "layers (images or sequences), where changing single inputs is no "
                                      "actionable explanation. Use the training-example explanations instead.")
            self.module = model
        elif family == "sklearn":
            self.module, self.link = as_torch_module(model, "counterfactuals")
        elif family == "trees":
            if not hasattr(model, "predict_proba"):
                raise PrecedentsError(f"Pass the scikit-learn wrapper of the ensemble (XGBClassifier, LGBMClassifier"
                                      f"), which has predict_proba; got a {type(model).__name__}.")
            self.model = model
        else:
            raise PrecedentsError(f"counterfactuals cannot call a {type(model).__name__}: pass a torch module, a "
                                  "scikit-learn classifier or an XGBoost/LightGBM classifier.")

    def _logits(self, Z: np.ndarray, grad: bool = False) -> torch.Tensor:
        param = next(iter(self.module.parameters()), None)
        dtype = param.dtype if param is not None else torch.float32
        x = torch.tensor(np.asarray(Z), dtype=dtype)
        if grad:
            x.requires_grad_(True)
        self.module.eval()
        with torch.set_grad_enabled(grad):
            z = self.module(x)
        z = z.reshape(len(Z), -1)
        if z.shape[1] == 1:
            z = torch.cat([torch.zeros_like(z), z], dim=1)
        return (z, x) if grad else z

    def proba(self, Z: np.ndarray) -> np.ndarray:
        if self.module is None:
            return np.asarray(self.model.predict_proba(self.to_input(Z)), dtype=np.float64)
        return torch.softmax(self._logits(Z).to(torch.float64), dim=1).detach().numpy()

    def margin_gradient(self, x: np.ndarray, target: int, current: int) -> tuple[float, np.ndarray] | None:
        """``(m, dm/dx)`` of the margin ``m = z_target - z_current`` at x, or None for non-differentiable models."""
        if self.module is None:
            return None
        z, xt = self._logits(x[None], grad=True)
        m = z[0, target] - z[0, current]
        (g,) = torch.autograd.grad(m, xt)
        return float(m.detach()), g[0].detach().to(torch.float64).numpy()


# ---------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------

@dataclass
class _Unit:
    """One actionable feature: a numeric column, a categorical column (coded values) or a one-hot group."""

    name: str
    columns: list[int]
    kind: str                       # "continuous", "integer", "categorical", "one-hot"
    scale: float
    lo: float = 0.0
    hi: float = 0.0
    levels: list[Any] | None = None


def _units(X: np.ndarray, names: list[str], one_hot: dict[str, list[int]], categorical: set[str],
           integer: set[str] | None) -> list[_Unit]:
    in_group = {j for cols in one_hot.values() for j in cols}
    units = [_Unit(g, list(cols), "one-hot", 1.0, levels=[names[j] for j in cols]) for g, cols in one_hot.items()]
    for j, name in enumerate(names):
        if j in in_group:
            continue
        col = X[:, j]
        distinct = np.unique(col)
        if name in categorical or (len(distinct) <= 2 and set(distinct.tolist()) <= {0.0, 1.0}):
            units.append(_Unit(name, [j], "categorical", 1.0, levels=distinct.tolist()))
            continue
        is_int = np.all(col == np.round(col)) if integer is None else name in integer
        mad = float(np.median(np.abs(col - np.median(col))))
        scale = mad if mad > 0 else float(col.std()) or 1.0
        units.append(_Unit(name, [j], "integer" if is_int else "continuous", scale, float(col.min()),
                           float(col.max())))
    return units


def _one_hot_groups(names: list[str], given: dict[str, list[Any]] | None) -> dict[str, list[int]]:
    if given is not None:
        index = {n: j for j, n in enumerate(names)}
        out = {}
        for g, cols in given.items():
            try:
                out[g] = [index[c] if isinstance(c, str) else int(c) for c in cols]
            except KeyError as exc:
                raise PrecedentsError(f"one_hot group {g!r} names an unknown column {exc.args[0]!r}.") from None
        return out
    groups: dict[str, list[int]] = {}
    for j, n in enumerate(names):
        if "=" in n:
            groups.setdefault(n.split("=", 1)[0], []).append(j)
    return {g: cols for g, cols in groups.items() if len(cols) >= 2}


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Counterfactual:
    """One counterfactual row: ``values`` (d,), the ``changes`` ``[(feature, from, to)]``, its scaled-L1 ``distance``,
    ``n_changed`` features (a one-hot group counts once), the model's ``probability`` of the target class at it and
    the class it predicts there (``predicted``, re-checked by calling the model)."""

    values: np.ndarray
    changes: list[tuple[str, Any, Any]]
    distance: float
    n_changed: int
    probability: float
    predicted: int

    def text(self) -> str:
        return "; ".join(f"{f}: {_fmt(a)} -> {_fmt(b)}" for f, a, b in self.changes)


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else f"{v:.4g}"
    return str(v)


@dataclass
class CounterfactualResult:
    """Counterfactuals of one row: ``x`` (d,), ``original_class`` and its probability, ``target``, ``counterfactuals``
    (closest first), ``feature_names``, ``immutable``, ``n_evaluated`` (rows the model was called on)."""

    x: np.ndarray
    original_class: int
    original_probability: float
    target: int | None
    counterfactuals: list[Counterfactual]
    feature_names: list[str]
    immutable: list[str]
    n_evaluated: int

    def __len__(self) -> int:
        return len(self.counterfactuals)

    def to_dict(self) -> dict[str, Any]:
        return {"original_class": self.original_class, "original_probability": self.original_probability,
                "target": self.target, "immutable": self.immutable, "n_evaluated": self.n_evaluated,
                "counterfactuals": [{"changes": [{"feature": f, "from": _plain(a), "to": _plain(b)}
                                                 for f, a, b in c.changes],
                                     "distance": c.distance, "n_changed": c.n_changed,
                                     "probability": c.probability, "predicted": c.predicted}
                                    for c in self.counterfactuals]}

    def to_frame(self) -> Any:
        """One row per counterfactual: the changes as text, distance, features changed, P(target), class."""
        import pandas as pd

        return pd.DataFrame([{"changes": c.text(), "distance": c.distance, "n_changed": c.n_changed,
                              "probability": c.probability, "predicted": c.predicted} for c in self.counterfactuals])

    def text(self) -> str:
        head = f"predicted class {self.original_class} (P = {self.original_probability:.3f})"
        lines = [head] + [f"{k + 1}. {c.text()}   -> class {c.predicted} (P = {c.probability:.3f}; distance "
                          f"{c.distance:.3g}, {c.n_changed} feature{'s' if c.n_changed != 1 else ''})"
                          for k, c in enumerate(self.counterfactuals)]
        return "\n".join(lines)

    def report_table(self, title: str = "Counterfactual explanations") -> Any:
        """The counterfactuals as a :class:`precedents.report.html.Table`."""
        from .report.html import Table

        rows = [[k + 1, c.text(), c.n_changed, c.distance, c.predicted, c.probability]
                for k, c in enumerate(self.counterfactuals)]
        fixed = ", ".join(self.immutable) or "none"
        return Table(title, ["#", "change", "features changed", "distance (scaled L1)", "new class", "P(new class)"],
                     rows, f"Predicted class {self.original_class} (P = {self.original_probability:.3g}). Each row "
                           f"re-checked by the model. Immutable: {fixed}. Distance: sum of |change| / training MAD "
                           "(1 per categorical change).")


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# ---------------------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------------------

@dataclass
class _Table:
    """The training data as a float matrix, and the way back to the model's input type."""

    X: np.ndarray
    names: list[str]
    to_input: Any
    encode: Any                                   # a row as given by the user -> (d,) float64
    labels: dict[int, list[Any]]                  # column -> level labels of a native categorical column


def _as_matrix(X: Any, feature_names: list[str] | None) -> _Table:
    """Training matrix (n, d) float64, names, and functions between the user's rows and the matrix.

    A DataFrame's categorical (``category`` or ``object``) columns become their category codes, and are decoded
    back to the same dtype for the model: for tree ensembles that read categories natively (XGBoost
    ``enable_categorical``, LightGBM).
    """
    if hasattr(X, "columns") and hasattr(X, "dtypes"):             # a DataFrame
        import pandas as pd

        columns = list(X.columns)
        dtypes = {}
        labels: dict[int, list[Any]] = {}
        for j, c in enumerate(columns):
            if isinstance(X[c].dtype, pd.CategoricalDtype):
                dtypes[c] = X[c].dtype
            elif not pd.api.types.is_numeric_dtype(X[c]):
                dtypes[c] = pd.CategoricalDtype(sorted(X[c].dropna().unique().tolist()))
            if c in dtypes:
                labels[j] = list(dtypes[c].categories)
        numeric = {c: X[c].dtype for c in columns if c not in dtypes}
        objects = {c for c in dtypes if not isinstance(X[c].dtype, pd.CategoricalDtype)}

        def encode(frame: Any) -> np.ndarray:
            frame = frame.to_frame().T if isinstance(frame, pd.Series) else frame
            cols = []
            for c in columns:
                if c in dtypes:
                    codes = pd.Categorical(frame[c].astype(object), dtype=dtypes[c]).codes
                    if (codes < 0).any():
                        raise PrecedentsError(f"Column {c!r} has a value not seen in training.")
                    cols.append(codes.astype(np.float64))
                else:
                    cols.append(frame[c].to_numpy(dtype=np.float64))
            return np.stack(cols, axis=1)

        def to_input(Z: np.ndarray) -> Any:
            out = {}
            for j, c in enumerate(columns):
                if c in dtypes:
                    cat = pd.Categorical.from_codes(Z[:, j].astype(int), dtype=dtypes[c])
                    out[c] = cat.astype(object) if c in objects else cat
                else:
                    out[c] = Z[:, j].astype(numeric[c])
            return pd.DataFrame(out, columns=columns)

        return _Table(encode(X), [str(c) for c in columns], to_input, lambda r: encode(r)[0], labels)
    arr = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    if arr.ndim != 2:
        raise PrecedentsError(f"Feature counterfactuals need tabular data (n, d); got shape {arr.shape} (images or "
                              "sequences?), where changing single inputs is no actionable explanation.")
    if not np.issubdtype(arr.dtype, np.number):
        raise PrecedentsError("X_train must be numeric; encode categorical columns first (datasets.one_hot).")
    dtype = arr.dtype
    names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(arr.shape[1])]
    if len(names) != arr.shape[1]:
        raise PrecedentsError(f"{len(names)} feature names for {arr.shape[1]} columns.")

    def encode_row(r: Any) -> np.ndarray:
        r = np.asarray(r.detach().cpu().numpy() if isinstance(r, torch.Tensor) else r, dtype=np.float64)
        return r[0] if r.ndim == 2 and len(r) == 1 else r

    return _Table(arr.astype(np.float64), names, lambda Z: Z.astype(dtype), encode_row, {})


def _candidates(unit: _Unit, X: np.ndarray, x: np.ndarray, n_values: int,
                gradient: tuple[float, np.ndarray] | None, past: float = 0.0) -> list[np.ndarray]:
    """Replacement values for the unit's columns (each an array over ``unit.columns``), excluding x's own; with
    the margin's gradient, also the value where the linearised margin reaches ``past`` (a little beyond 0)."""
    cols = unit.columns
    current = x[cols]
    if unit.kind == "one-hot":
        out = []
        for k in range(len(cols)):
            v = np.zeros(len(cols))
            v[k] = 1.0
            if not np.array_equal(v, current):
                out.append(v)
        return out
    if unit.kind == "categorical":
        return [np.array([lv]) for lv in unit.levels if lv != current[0]]
    col = X[:, cols[0]]
    values = np.unique(np.quantile(col, np.linspace(0, 1, n_values), method="nearest"))
    if gradient is not None:
        m, g = gradient
        gj = g[cols[0]]
        if gj != 0:
            step = (max(past, 0.01 * abs(m)) - m) / gj       # the linearised margin a little past zero
            v = np.clip(current[0] + step, unit.lo, unit.hi)
            if unit.kind == "integer":
                v = np.ceil(v) if step > 0 else np.floor(v)
            values = np.append(values, v)
    return [np.array([v]) for v in np.unique(values) if v != current[0]]


def counterfactuals(model: Any, X_train: Any, x: Any, *, n: int = 3, target: int | None = None,
                    immutable: list[str] | tuple[str, ...] = (), feature_names: list[str] | None = None,
                    one_hot: dict[str, list[Any]] | None = None, categorical: list[str] | tuple[str, ...] = (),
                    integer: list[str] | None = None, max_changes: int = 3, n_values: int = 20,
                    beam_width: int = 20, diversity: float = 0.5, min_margin: float = 1e-3) -> CounterfactualResult:
    """Up to ``n`` diverse, minimal, verified changes of the tabular row ``x`` that change ``model``'s prediction.

    Args:
        model: a torch module (logits), a scikit-learn classifier the adapters support, or an XGBoost/LightGBM
            scikit-learn wrapper; called on rows shaped like ``X_train``'s.
        X_train: the training data (n, d): numeric array, tensor or numeric DataFrame; it defines the feature
            types, the values tried, the ranges kept and the distance scales.
        x: the row to explain, (d,) or (1, d).
        n: how many counterfactuals (fewer when fewer exist within ``max_changes`` changes).
        target: the class to reach; default any class other than the predicted one.
        immutable: names of features (or one-hot groups) that must not change.
        feature_names: column names for an array ``X_train`` (a DataFrame has its own).
        one_hot: ``{group: [columns]}``; default: columns named ``group=level`` (two or more) form a group.
        categorical: columns holding category codes (levels are the values seen); 0/1 columns are categorical.
        integer: columns that hold counts; default: every non-categorical column whose training values are whole.
        max_changes: most features changed in one counterfactual (beam-search depth).
        n_values: numeric values tried per feature (training quantiles).
        beam_width: partial changes kept per depth.
        diversity: weight of the dissimilarity from the counterfactuals already chosen (0: the n closest).
        min_margin: the new class's probability must exceed every other class's by this much, so that a
            counterfactual on the decision boundary does not flip back under float32 rounding or another library's
            arithmetic (for a binary model: logit at least ``2 atanh(min_margin)`` past 0).

    Returns:
        :class:`CounterfactualResult`.
    """
    if n < 1 or max_changes < 1 or n_values < 2 or beam_width < 1 or not 0 <= min_margin < 1:
        raise PrecedentsError("Need n >= 1, max_changes >= 1, n_values >= 2, beam_width >= 1, 0 <= min_margin < 1.")
    table = _as_matrix(X_train, feature_names)
    X, names = table.X, table.names
    x = table.encode(x)
    if x.shape != (X.shape[1],):
        raise PrecedentsError(f"x must be one row of {X.shape[1]} features, got shape {x.shape}.")
    predictor = _Model(model, table.to_input)
    if table.labels and predictor.module is not None:
        raise PrecedentsError(f"Columns {[names[j] for j in table.labels]} are categorical, which this model cannot "
                              "read: pass the numeric matrix it was trained on (e.g. precedents.datasets.one_hot, "
                              "whose 'column=level' groups are kept together).")
    units = _units(X, names, _one_hot_groups(names, one_hot), set(categorical) | {names[j] for j in table.labels},
                   None if integer is None else set(integer))
    known = {u.name for u in units} | set(names)
    unknown = [f for f in immutable if f not in known]
    if unknown:
        raise PrecedentsError(f"immutable names unknown features {unknown}; features: {sorted(u.name for u in units)}.")
    frozen = set(immutable)
    actionable = [u for u in units if u.name not in frozen and not any(names[j] in frozen for j in u.columns)]

    p0 = predictor.proba(x[None])[0]
    current = int(p0.argmax())
    if target is not None and not 0 <= target < len(p0):
        raise PrecedentsError(f"target must be a class index in [0, {len(p0)}), got {target}.")
    if target == current:
        raise PrecedentsError(f"The model already predicts class {target} at x.")

    def goal(P: np.ndarray) -> np.ndarray:
        """Progress toward the flip: P(target), or 1 - P(current) when any other class will do."""
        return P[:, target] if target is not None else 1 - P[:, current]

    def reached(P: np.ndarray) -> np.ndarray:
        top = P.argmax(1)
        ok = top == target if target is not None else top != current
        second = np.sort(P, axis=1)[:, -2]
        return ok & (P.max(1) - second >= min_margin)

    numeric = [u for u in units if u.kind in ("continuous", "integer")]
    num_cols = np.array([u.columns[0] for u in numeric], dtype=int)
    num_scale = np.array([u.scale for u in numeric])
    cat_units = [u for u in units if u.kind in ("categorical", "one-hot")]

    def distances(Z: np.ndarray, ref: np.ndarray = x) -> np.ndarray:
        """Scaled L1 from ref: |change| / scale per numeric feature, 1 per changed categorical feature."""
        Z = np.atleast_2d(Z)
        d = (np.abs(Z[:, num_cols] - ref[num_cols]) / num_scale).sum(1)
        for u in cat_units:
            d += np.any(Z[:, u.columns] != ref[u.columns], axis=1)
        return d

    gradient = None
    if target is not None or len(p0) == 2:
        other = target if target is not None else 1 - current
        gradient = predictor.margin_gradient(x, other, current)
    past = 4 * float(np.arctanh(min_margin))      # twice the logit gap of min_margin in a binary model
    options = [(k, v) for k, u in enumerate(actionable) for v in _candidates(u, X, x, n_values, gradient, past)]
    evaluated = 0
    solutions: list[np.ndarray] = []
    beam = [(x.copy(), frozenset())]
    for _ in range(max_changes):
        rows, changed = [], []
        for z, used in beam:
            for k, v in options:
                if k in used:
                    continue
                r = z.copy()
                r[actionable[k].columns] = v
                rows.append(r)
                changed.append(used | {k})
        if not rows:
            break
        Z = np.stack(rows)
        P = predictor.proba(Z)
        evaluated += len(Z)
        ok = reached(P)
        solutions += [Z[i] for i in np.flatnonzero(ok)]
        if len(solutions) >= 10 * n:
            break
        gain = goal(P) - goal(p0[None])[0]
        cost = distances(Z) + 1e-9
        order = [i for i in np.argsort(-(gain / cost), kind="stable") if not ok[i]]
        beam, seen = [], set()
        for i in order:
            key = Z[i].tobytes()
            if key not in seen:
                seen.add(key)
                beam.append((Z[i], changed[i]))
            if len(beam) >= beam_width:
                break

    # minimality: undo what is not needed, then shrink numeric changes toward x by bisection
    if solutions:                               # polish the 5n closest (each costs up to ~30 calls per feature)
        S = np.unique(np.stack(solutions), axis=0)
        solutions = list(S[np.argsort(distances(S), kind="stable")[:5 * n]])
    polished: dict[bytes, np.ndarray] = {}
    for z in solutions:
        z = z.copy()
        for u in actionable:
            if np.array_equal(z[u.columns], x[u.columns]):
                continue
            trial = z.copy()
            trial[u.columns] = x[u.columns]
            evaluated += 1
            if reached(predictor.proba(trial[None]))[0]:
                z = trial
                continue
            if u.kind in ("continuous", "integer"):
                j = u.columns[0]
                good, bad = z[j], x[j]              # good keeps the flip, bad (x's value) does not
                for _ in range(30):
                    mid = (good + bad) / 2
                    if u.kind == "integer":
                        mid = np.round(mid)
                        if mid in (good, bad):
                            break
                    trial = z.copy()
                    trial[j] = mid
                    evaluated += 1
                    if reached(predictor.proba(trial[None]))[0]:
                        good = mid
                    else:
                        bad = mid
                    if u.kind == "continuous" and abs(good - bad) <= 1e-6 * u.scale:
                        break
                z[j] = good
        polished.setdefault(z.tobytes(), z)
    found = list(polished.values())

    # diversity: greedy, closest first, then distance minus diversity x (scaled-L1 distance to those chosen)
    dist = distances(np.stack(found)) if found else np.zeros(0)
    chosen: list[int] = []
    while len(chosen) < min(n, len(found)):
        best, best_key = None, None
        for i in range(len(found)):
            if i in chosen:
                continue
            spread = min((float(distances(found[i], found[j])[0]) for j in chosen), default=0.0)
            key = dist[i] - diversity * spread
            if best_key is None or key < best_key - 1e-12:
                best, best_key = i, key
        chosen.append(best)
    chosen.sort(key=lambda i: dist[i])
    out = []
    if chosen:
        Z = np.stack([found[i] for i in chosen])
        P = predictor.proba(Z)                    # the re-check
        evaluated += len(Z)
        for z, p in zip(Z, P, strict=True):
            if not reached(p[None])[0]:
                continue
            changes, k = [], 0
            for u in units:
                if np.array_equal(z[u.columns], x[u.columns]):
                    continue
                k += 1
                if u.kind == "one-hot":
                    src = u.levels[int(np.argmax(x[u.columns]))] if x[u.columns].max() > 0 else "none"
                    dst = u.levels[int(np.argmax(z[u.columns]))]
                    changes.append((u.name, src.split("=", 1)[-1], dst.split("=", 1)[-1]))
                else:
                    j = u.columns[0]
                    if j in table.labels:
                        changes.append((u.name, table.labels[j][int(x[j])], table.labels[j][int(z[j])]))
                    else:
                        changes.append((u.name, x[j], z[j]))
            new = int(p.argmax())
            out.append(Counterfactual(z, changes, float(distances(z)[0]), k,
                                      float(p[target if target is not None else new]), new))
    return CounterfactualResult(x, current, float(p0[current]), target, out, names, list(immutable), evaluated)
