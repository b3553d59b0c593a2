"""File I/O of the commands: reading the user's arrays and model, and the output folder they write into.

Every failure to read a user's file becomes a :class:`~precedents.PrecedentsError` naming the file and what to
do. The output folder rule: a command writes only its own files into ``--out``, and refuses a folder that
already holds files precedents did not write (it never deletes or overwrites anything of the user's).
"""

from __future__ import annotations

import argparse
import importlib
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import PrecedentsError

__all__ = ["MARKER", "check_model_runs", "eager_linear", "load_arrays", "load_model", "prepare_out"]

#: written into every --out folder, so a later run knows the folder is precedents' own
MARKER = ".precedents-out"
DATA_SUFFIXES = (".npz", ".pt", ".pth")


def _existing_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise PrecedentsError(f"{what} {p} does not exist.")
    if not p.is_file():
        raise PrecedentsError(f"{what} {p} is not a file (a folder?).")
    return p


def _as_tensor(value: Any, path: Path, name: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise PrecedentsError(f"{path}: {name} is not a numeric array ({err}); store numbers (labels as class "
                              "indices 0..C-1).") from err
    if tensor.is_complex() or tensor.dtype == torch.bool and name == "X":
        raise PrecedentsError(f"{path}: {name} has dtype {tensor.dtype}; store real numbers.")
    return tensor


def load_arrays(path: str | Path, what: str = "Data file") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read X (and y if present) from a ``.npz`` (keys X/x and y) or a ``.pt`` (dict or (X, y) tuple).

    Checks: the file exists and parses, X is a numeric array with at least one row, y (when present) has one
    label per row of X.
    """
    p = _existing_file(path, what)
    if p.suffix not in DATA_SUFFIXES:
        hint = " For CSV or Parquet tables, explain a tree model (--xgboost/--lightgbm with --label)." \
            if p.suffix in (".csv", ".parquet") else ""
        raise PrecedentsError(f"{what} {p}: expected a .npz or .pt file holding X and y.{hint}")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        else:
            with warnings.catch_warnings():          # torch's notes on pickle protocols: the error says it all
                warnings.simplefilter("ignore")
                obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, (tuple, list)):
                data = dict(zip(("X", "y"), obj, strict=False))
            elif isinstance(obj, dict):
                data = dict(obj)
            elif isinstance(obj, torch.Tensor):
                data = {"X": obj}
            else:
                raise PrecedentsError(f"{what} {p} holds a {type(obj).__name__}; save a dict {{'X': ..., 'y': ...}} "
                                      "or a tuple (X, y).")
    except PrecedentsError:
        raise
    except Exception as err:  # any parse failure of a user's file is a bad input, named with its file
        kind = "a NumPy .npz archive" if p.suffix == ".npz" else "a torch.save file (weights_only)"
        raise PrecedentsError(f"{what} {p} cannot be read as {kind}: {type(err).__name__}: {err}") from err
    X = data.get("X", data.get("x"))
    if X is None:
        raise PrecedentsError(f"{what} {p} has no array named X (it has: {', '.join(map(str, data)) or 'nothing'}).")
    X = _as_tensor(X, p, "X")
    if X.ndim == 0 or len(X) == 0:
        raise PrecedentsError(f"{what} {p}: X has no rows (shape {tuple(X.shape)}); it needs at least one example.")
    y = data.get("y")
    if y is None:
        return X, None
    y = _as_tensor(y, p, "y")
    if y.ndim == 0 or len(y) != len(X):
        raise PrecedentsError(f"{what} {p}: X has {len(X)} rows but y has {1 if y.ndim == 0 else len(y)} labels.")
    return X, y


def load_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model of ``--model FILE.ts`` (TorchScript) or ``--state-dict FILE --module pkg.mod:Class``, in eval mode."""
    if args.model:
        path = _existing_file(args.model, "Model file")
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as err:  # TorchScript raises RuntimeError/ValueError on anything it cannot parse
            raise PrecedentsError(f"{path} is not a TorchScript file ({type(err).__name__}: {err}). For a state "
                                  "dict, pass --state-dict FILE --module package.module:ClassName.") from err
    if not (args.state_dict and args.module):
        raise PrecedentsError("Give the model as --model model.ts (TorchScript) or as --state-dict FILE "
                              "--module package.module:ClassName.")
    module_name, _, class_name = args.module.partition(":")
    if not module_name or not class_name:
        raise PrecedentsError(f"--module {args.module}: use the form package.module:ClassName.")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise PrecedentsError(f"Cannot import {args.module}: {err}. Use the form package.module:ClassName "
                              "and make sure the package is importable.") from err
    try:
        kwargs = json.loads(args.module_kwargs)
    except ValueError as err:
        raise PrecedentsError(f"--module-kwargs is not JSON ({err}): pass an object, e.g. '{{\"hidden\": 16}}'.") \
            from err
    if not isinstance(kwargs, dict):
        raise PrecedentsError(f"--module-kwargs must be a JSON object of keyword arguments, got {args.module_kwargs}.")
    try:
        model = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise PrecedentsError(f"Cannot build {args.module} with --module-kwargs {args.module_kwargs}: {err}") from err
    if not isinstance(model, torch.nn.Module):
        raise PrecedentsError(f"{args.module} built a {type(model).__name__}, not a torch.nn.Module.")
    path = _existing_file(args.state_dict, "State dict file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PrecedentsError(f"State dict file {path} cannot be read as a torch.save file (weights_only): "
                              f"{type(err).__name__}: {err}") from err
    if not isinstance(state, dict):
        raise PrecedentsError(f"State dict file {path} holds a {type(state).__name__}, not a state dict "
                              "(save model.state_dict()).")
    dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if len(dtypes) == 1:                     # build the module in the state dict's precision (e.g. float64)
        model = model.to(dtypes.pop())
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise PrecedentsError(f"{path} does not fit {args.module}: {err}") from err
    return model.eval()


def last_line(err: BaseException) -> str:
    """The informative line of an exception from deep inside torch (TorchScript adds its own traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def check_model_runs(model: torch.nn.Module, X: torch.Tensor, path: str | Path) -> None:
    """Run the model on the first two rows of ``X`` (read from ``path``): a refusal is a bad input, said so."""
    param = next(iter(model.parameters()), None)
    rows = X[:2]
    if param is not None and param.is_floating_point() and rows.is_floating_point():
        rows = rows.to(param.dtype)
    try:
        with torch.no_grad():
            model(rows)
    except Exception as err:  # the user's model refusing the user's data: shape, dtype, device
        raise PrecedentsError(f"The model cannot run on X from {path} (shape {tuple(X.shape)}, {X.dtype}): "
                              f"{last_line(err)}. Check that the file holds the inputs this model was trained on."
                              ) from err


def eager_linear(model: torch.nn.Module) -> torch.nn.Module:
    """A TorchScript module compiled from an ``nn.Linear`` as an eager ``nn.Linear`` (same weights and dtype)."""
    if not (isinstance(model, torch.jit.ScriptModule) and getattr(model, "original_name", None) == "Linear"):
        return model
    weight = model.weight.detach()
    bias = getattr(model, "bias", None)
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias.detach())
    return linear.eval()


def _ours(name: str, outputs: Iterable[str]) -> bool:
    return name in outputs or name == MARKER or (name.startswith(".") and name.endswith(".tmp"))


def prepare_out(path: str | Path, command: str, outputs: Iterable[str]) -> Path:
    """The ``--out`` folder, created if missing; refused when it is a file or holds files precedents did not write.

    A folder counts as precedents' own when it holds the marker file written here, or only files named like
    this command's outputs (``outputs``). Inside it the command replaces only its own files.
    """
    out = Path(path)
    outputs = set(outputs)
    if out.exists() and not out.is_dir():
        raise PrecedentsError(f"--out {out} is a file; give a folder for the results (it is created if missing).")
    if out.is_dir():
        names = sorted(p.name for p in out.iterdir())
        foreign = [n for n in names if not _ours(n, outputs)]
        if foreign and MARKER not in names:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise PrecedentsError(f"--out {out} already holds files precedents did not write ({shown}); give a new "
                                  "or empty folder (precedents never writes into a folder of yours).")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"written_by": "precedents", "command": command}) + "\n", encoding="utf-8")
    return out
