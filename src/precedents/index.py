"""The training-side state of a fitted method, on disk: arrays plus a manifest that guards against misuse.

Layout of an index directory::

    manifest.json     format version, method, parameters, shapes, dtypes, SHA-256 of every array,
                      the fingerprint of the model and of the training data
    <name>.npy        one file per array

The directory is written to a temporary sibling and renamed into place, so an interrupted save never leaves
a half-written index. Arrays above ``MMAP_THRESHOLD`` bytes are memory-mapped on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import PrecedentsError

FORMAT_VERSION = 1
MMAP_THRESHOLD = 64 * 1024**2


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_index(directory: str | os.PathLike, *, method: str, params: dict[str, Any],
               arrays: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` and a manifest atomically to ``directory`` (replacing an existing index there)."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        entries = {}
        for name, tensor in arrays.items():
            array = tensor.detach().cpu().numpy()
            path = tmp / f"{name}.npy"
            np.save(path, array, allow_pickle=False)
            entries[name] = {"file": path.name, "shape": list(array.shape), "dtype": str(array.dtype),
                             "sha256": _sha256_file(path)}
        manifest = {"format_version": FORMAT_VERSION, "library": "precedents", "method": method,
                    "params": params, "arrays": entries, **meta}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_index(directory: str | os.PathLike, *, verify: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a manifest and its arrays; with ``verify`` every array's checksum is checked."""
    root = Path(directory)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise PrecedentsError(f"{root} is not a precedents index: it has no manifest.json. Build one with "
                              "fit(...) then save(directory).")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("library") != "precedents" or manifest.get("format_version") != FORMAT_VERSION:
        raise PrecedentsError(f"{root} holds an index of format {manifest.get('format_version')!r}; this "
                              f"version of precedents reads format {FORMAT_VERSION}. Rebuild the index.")
    arrays = {}
    for name, entry in manifest["arrays"].items():
        path = root / entry["file"]
        if not path.is_file():
            raise PrecedentsError(f"Index {root} is incomplete: {entry['file']} is missing. Rebuild the index.")
        if verify and _sha256_file(path) != entry["sha256"]:
            raise PrecedentsError(f"Index {root} is corrupt: {entry['file']} does not match its checksum. "
                                  "Rebuild the index.")
        mmap = "r" if path.stat().st_size > MMAP_THRESHOLD else None
        array = np.load(path, mmap_mode=mmap, allow_pickle=False)
        arrays[name] = torch.from_numpy(np.array(array) if mmap is None else array)
    return manifest, arrays
