r"""What the retraining experiments share: test outputs, fingerprints, and the resumable JSON-lines results file.

A results file (:class:`ResultsLog`) has a *header* on line 1: everything that determines a row (the experiment,
the test points' fingerprint, the loss and output kind, the retrainer and its settings, the reference model's
fingerprint). A rerun with the same path reuses the rows only if its header is the same; otherwise it refuses
with a :class:`~precedents.PrecedentsError` naming what differs (or, with ``restart=True``, moves the old file
aside to ``<name>.old-<k>`` and starts a new one; nothing is deleted). Then one row per line, each flushed and
fsynced when its retrain finishes. A line that cannot be read (corrupt, or torn by a kill mid-write) is reported
with its line number in a ``RuntimeWarning``, dropped from the file, and its row recomputed.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import PrecedentsError
from ..data import Fingerprint
from ..linalg.functional import ForwardFn, LossFn, default_loss, model_logits
from ..linalg.head import log_margin

__all__ = ["OUTPUTS", "ResultsLog", "as_test", "data_fingerprint", "n_train_of", "score_matrix", "test_outputs"]

#: What a retraining experiment measures on each test point: its loss, or minus its log margin.
OUTPUTS = ("loss", "margin")


def data_fingerprint(*tensors: Any) -> str:
    """SHA-256 (hex) of tensors' dtypes, shapes and bytes, through :class:`precedents.data.Fingerprint`."""
    fp = Fingerprint()
    for t in tensors:
        if t is not None:
            t = torch.as_tensor(t)
            fp.update(t.reshape(1, *t.shape) if t.ndim == 0 else t)
    return fp.hexdigest()


def callable_name(fn: Any) -> str | None:
    """``module.qualname`` of a function (what a results file records of a user's callable), None for None."""
    if fn is None:
        return None
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', None) or type(fn).__module__}.{name}"


def n_train_of(retrain: Any, n_train: int | None) -> int:
    """``n_train`` if given, else the retrainer's ``n_train``; a clear error when neither is there."""
    n = n_train if n_train is not None else getattr(retrain, "n_train", None)
    if n is None:
        raise PrecedentsError("Pass n_train= (the number of training examples the keep masks cover), or a "
                              "retrainer with an n_train attribute.")
    return int(n)


def as_test(X_test: Any, y_test: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Test inputs and labels as tensors of the same length."""
    X = torch.as_tensor(X_test)
    y = torch.as_tensor(y_test).reshape(-1)
    if len(X) != len(y):
        raise PrecedentsError(f"X_test and y_test have different lengths: {len(X)} and {len(y)}.")
    return X, y


def score_matrix(scores: Any, n_test: int, n_train: int) -> torch.Tensor:
    """A method's scores (tensor, array or ``Attribution``) as a float64 (n_test, n_train) tensor, shape checked."""
    if hasattr(scores, "scores") and not isinstance(scores, (torch.Tensor, np.ndarray)):
        scores = scores.scores                       # an Attribution
    s = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    s = s.detach().to(torch.float64).cpu()
    if s.shape != (n_test, n_train):
        raise PrecedentsError(f"scores must have shape (n_test, n_train) = ({n_test}, {n_train}), got "
                              f"{tuple(s.shape)}.")
    return s


def test_outputs(model: nn.Module, X: torch.Tensor, y: torch.Tensor, output: str = "loss",
                 loss_fn: LossFn | None = None, forward_fn: ForwardFn | None = None,
                 batch_size: int = 1024) -> torch.Tensor:
    """Per-test-point loss (``output="loss"``, ``loss_fn`` or cross-entropy, nats) or minus the log margin
    (``"margin"``, :func:`precedents.linalg.head.log_margin`), float64 (n_test,)."""
    if output not in OUTPUTS:
        raise PrecedentsError(f"output must be one of {OUTPUTS}, got {output!r}.")
    if len(X) == 0:
        return torch.zeros(0, dtype=torch.float64)
    logits = model_logits(model, X, forward_fn, batch_size=batch_size)
    t = y.to(logits.device)
    with torch.no_grad():
        if output == "loss":
            values = (loss_fn or default_loss)(logits, t)
        else:
            values = -log_margin(logits.to(torch.float64), t)
    return values.detach().to(torch.float64).cpu().reshape(-1)


class ResultsLog:
    """Append-only JSON-lines record of finished retrains, keyed; reread on resume (see the module docstring).

    ``header``: a JSON-able dict of everything that determines a row; ``restart``: when the file holds another
    experiment (or its header cannot be read), move it aside and start a new file instead of refusing. Rows
    have a ``"key"`` (``"reference"``, ``"loo:<i>"``, ``"subset:<k>"``) and an ``"output"`` (per test point).
    """

    def __init__(self, path: str | os.PathLike | None, header: dict[str, Any], *, restart: bool = False) -> None:
        self.path = None if path is None else Path(path)
        self.header = json.loads(json.dumps(header))            # as it reads back from the file
        self.records: dict[str, dict[str, Any]] = {}
        if self.path is None:
            return
        if self.path.exists() and not self.path.is_file():
            raise PrecedentsError(f"results_path {self.path} is not a regular file; pass a file path.")
        if self.path.exists() and self.path.stat().st_size > 0:
            problem = self._read()
            if problem is None:
                return
            if not restart:
                raise PrecedentsError(f"{self.path} {problem} Pass another results path, or restart=True to move "
                                      "this file aside and start a new one.")
            self._move_aside()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._append(self.header)

    # -- reading ---------------------------------------------------------------------------------------------
    def _read(self) -> str | None:
        """Load the rows of a file with this header; return why it cannot be reused, or None."""
        assert self.path is not None
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        torn = not raw.endswith(b"\n")                    # killed mid-write: the last line is incomplete
        if not torn:
            lines = lines[:-1]
        try:
            stored = json.loads(lines[0])
        except (UnicodeDecodeError, ValueError):
            stored = None
        if not isinstance(stored, dict):
            return "has an unreadable header on line 1 (it is not a results file of this package, or corrupt)."
        old, new = _flatten(stored), _flatten(self.header)
        differ = sorted(k for k in set(old) | set(new) if old.get(k, _MISSING) != new.get(k, _MISSING))
        if differ:
            shown = "; ".join(f"{k}: stored {_short(old.get(k))}, now {_short(new.get(k))}" for k in differ)
            return f"holds results of another experiment, they differ in {shown}."
        bad: list[int] = []
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            record = _parse_row(line, self.header.get("n_test"))
            if record is None or (torn and number == len(lines)):
                bad.append(number)
                continue
            self.records[record["key"]] = record
        if bad:
            what = ", ".join(str(b) for b in bad)
            warnings.warn(f"{self.path}: line(s) {what} could not be read (corrupt, or cut short by an interrupted "
                          "write); dropped from the file, their rows are recomputed.", RuntimeWarning, stacklevel=4)
            self._rewrite()
        return None

    def _rewrite(self) -> None:
        """The file again with only the header and the good rows, replaced atomically."""
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for record in (self.header, *self.records.values()):
                fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _move_aside(self) -> None:
        assert self.path is not None
        k = 1
        while (old := self.path.with_name(f"{self.path.name}.old-{k}")).exists():
            k += 1
        os.replace(self.path, old)
        warnings.warn(f"{self.path} held another experiment: moved to {old}; starting a new file.", RuntimeWarning,
                      stacklevel=4)

    # -- writing ---------------------------------------------------------------------------------------------
    def _append(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def add(self, key: str, output: torch.Tensor, seconds: float, **extra: Any) -> None:
        record = {"key": key, **extra, "seconds": seconds, "output": [float(v) for v in output.tolist()]}
        self.records[key] = record
        self._append(record)

    def output(self, key: str) -> torch.Tensor | None:
        record = self.records.get(key)
        return None if record is None else torch.tensor(record["output"], dtype=torch.float64)


def _parse_row(line: bytes, n_outputs: int | None) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("key"), str) \
            or not isinstance(record.get("output"), list) or not isinstance(record.get("seconds"), (int, float)):
        return None
    if not all(isinstance(v, (int, float)) for v in record["output"]):
        return None
    if n_outputs is not None and len(record["output"]) != n_outputs:
        return None
    return record


_MISSING = object()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys (``retrainer.weight_decay``), so that a difference is named."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
