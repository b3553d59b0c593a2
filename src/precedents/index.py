"""The training-side state of a fitted method, on disk: arrays plus a manifest that guards against misuse.

Layout of an index directory::

    manifest.json          format version, method, parameters, shapes, dtypes, SHA-256 of every array,
                           the fingerprint of the model and of the training data
    arrays-<token>/        one ``<name>.npy`` file per array, in a folder named by the save that wrote it

``manifest.json`` is the commit point. A save writes the new arrays into a fresh ``arrays-<token>`` folder, then
replaces ``manifest.json`` in one atomic ``os.replace``, then removes the arrays the previous manifest named. An
interrupted save therefore leaves the old index (manifest not yet replaced) or the new one, always loadable;
leftovers of an interrupted save (an unreferenced ``arrays-<token>`` folder, a ``.manifest-<token>.json``) are
recognised and cleared by the next save.

A save never removes anything it did not write: it refuses a path that is a file, and a non-empty folder that is
not a precedents index or that holds files other than the index's own. Arrays above ``MMAP_THRESHOLD`` bytes are
memory-mapped on load. Loading checks the manifest's structure and types, every array's checksum, shape and
dtype, and refuses a manifest that names files outside the index folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from ._validation import PrecedentsError

FORMAT_VERSION = 2
MMAP_THRESHOLD = 64 * 1024**2
MANIFEST = "manifest.json"
_ARRAYS_DIR = re.compile(r"arrays-[0-9a-f]{16}")
_TMP_MANIFEST = re.compile(r"\.manifest-[0-9a-f]{16}\.json")
_REBUILD = "Rebuild the index with fit(...) then save(directory)."


class Manifest(dict):
    """The parsed manifest; a key it lacks raises a :class:`PrecedentsError` (not a KeyError) naming the key."""

    root: str = ""

    def __missing__(self, key: str) -> Any:
        raise PrecedentsError(f"The index manifest {self.root}/{MANIFEST} has no {key!r} entry: it was edited by "
                              f"hand, truncated or written by another version of precedents. {_REBUILD}")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest_json(root: Path) -> Any:
    path = root / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PrecedentsError(f"Cannot read the index manifest {path}: {err}. {_REBUILD}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PrecedentsError(f"The index manifest {path} is not valid JSON (line {err.lineno}, column {err.colno}: "
                              f"{err.msg}): it was truncated or edited by hand. {_REBUILD}") from err


def _index_files(root: Path) -> tuple[set[str], list[str]] | None:
    """For a folder holding a precedents manifest: (entries the index owns, entries it does not); None when the
    folder has no readable precedents manifest."""
    if not (root / MANIFEST).is_file():
        return None
    try:
        manifest = _read_manifest_json(root)
    except PrecedentsError:
        return None
    if not isinstance(manifest, dict) or manifest.get("library") != "precedents":
        return None
    referenced = set()
    arrays = manifest.get("arrays")
    for entry in (arrays.values() if isinstance(arrays, dict) else ()):
        file = entry.get("file") if isinstance(entry, dict) else None
        if isinstance(file, str) and file:
            referenced.add(PurePosixPath(file).parts[0])
    owned, foreign = set(), []
    for child in root.iterdir():
        name = child.name
        regular_file = child.is_file() and not child.is_symlink()
        array_file = regular_file and child.suffix == ".npy"
        array_folder = child.is_dir() and not child.is_symlink() and all(
            f.suffix == ".npy" and f.is_file() and not f.is_symlink() for f in child.iterdir())
        if name == MANIFEST or (name in referenced and (array_file or array_folder)):
            owned.add(name)
        elif _ARRAYS_DIR.fullmatch(name) and array_folder:       # arrays of an interrupted save
            owned.add(name)
        elif _TMP_MANIFEST.fullmatch(name) and regular_file:
            owned.add(name)
        else:
            foreign.append(name)
    return owned, sorted(foreign)


def _prepare_target(target: Path) -> tuple[bool, set[str]]:
    """Whether the folder to save into had to be created (it is, with its parents), and the entries of a previous
    index there, to remove after the new manifest is in place. Refuses any path where saving could touch something
    that is not an index."""
    if target.is_symlink() and not target.is_dir():
        raise PrecedentsError(f"{target} is a symbolic link to {os.readlink(target)!r}, not a folder: save(dir) "
                              "writes a folder. Choose a new folder name.")
    if target.exists() and not target.is_dir():
        raise PrecedentsError(f"{target} is a file, not a folder: save(dir) writes an index folder and will not "
                              "replace or move a file. Choose a new folder name.")
    if not target.exists():
        try:
            target.mkdir(parents=True)
        except OSError as err:
            raise PrecedentsError(f"Cannot create the index folder {target}: {err}.") from err
        return True, set()
    try:
        children = list(target.iterdir())
    except OSError as err:
        raise PrecedentsError(f"Cannot read the folder {target}: {err}.") from err
    if not children:
        return False, set()
    try:
        files = _index_files(target)
    except OSError as err:
        raise PrecedentsError(f"Cannot read the folder {target}: {err}.") from err
    if files is None:
        shown = ", ".join(sorted(c.name for c in children)[:5]) + (" ..." if len(children) > 5 else "")
        raise PrecedentsError(f"{target} is a folder that is not a precedents index and is not empty (it holds "
                              f"{shown}). save(dir) replaces only an index it wrote: choose a new or empty folder.")
    owned, foreign = files
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise PrecedentsError(f"{target} holds a precedents index but also files that are not part of it ({shown}). "
                              "save(dir) never removes files it did not write: move them, or choose another "
                              "folder.")
    return False, owned


def _json_ready(value: Any, where: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as err:
        raise PrecedentsError(f"Cannot save the index: its {where} are not JSON-serialisable ({err}).") from err


def _as_path(directory: Any) -> Path:
    if not isinstance(directory, (str, os.PathLike)) or str(directory) == "":
        raise PrecedentsError(f"An index folder is a path (a string or pathlib.Path); got {directory!r}.")
    return Path(directory).expanduser()


def save_index(directory: str | os.PathLike, *, method: str, params: dict[str, Any],
               arrays: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` and a manifest to ``directory``, replacing an index there atomically (see the module
    docstring); refuses a file, or a folder holding anything but a precedents index."""
    target = _as_path(directory)
    for name in arrays:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
            raise PrecedentsError(f"Array name {name!r} cannot be a file name in an index.")
    params = _json_ready(params, "parameters")
    meta = _json_ready(meta, "metadata")
    created, previous = _prepare_target(target)
    token = secrets.token_hex(8)
    folder = target / f"arrays-{token}"
    tmp_manifest = target / f".manifest-{token}.json"
    try:
        folder.mkdir()
        entries = {}
        for name, tensor in arrays.items():
            array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
            path = folder / f"{name}.npy"
            np.save(path, array, allow_pickle=False)
            entries[name] = {"file": f"{folder.name}/{path.name}", "shape": list(array.shape),
                             "dtype": str(array.dtype), "sha256": sha256_file(path)}
        manifest = {**meta, "format_version": FORMAT_VERSION, "library": "precedents", "method": method,
                    "params": params, "arrays": entries}
        with open(tmp_manifest, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=1, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_manifest, target / MANIFEST)            # the commit point
    except BaseException as err:
        shutil.rmtree(folder, ignore_errors=True)
        tmp_manifest.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                target.rmdir()
        if isinstance(err, OSError):
            raise PrecedentsError(f"Cannot write the index to {target}: {err}. Nothing was changed there; free "
                                  "space or choose a folder you can write to.") from err
        raise
    for name in previous - {MANIFEST, folder.name}:            # only what the previous index owned
        path = target / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return target


def _check_manifest(raw: Any, root: Path) -> Manifest:
    where = f"The index manifest {root}/{MANIFEST}"
    if not isinstance(raw, dict):
        raise PrecedentsError(f"{where} is a JSON {type(raw).__name__}, not an object. {_REBUILD}")
    if raw.get("library") != "precedents":
        raise PrecedentsError(f"{root} is not a precedents index (its manifest has library={raw.get('library')!r}). "
                              f"{_REBUILD}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise PrecedentsError(f"{root} holds an index of format {raw.get('format_version')!r}; this version of "
                              f"precedents reads format {FORMAT_VERSION}. {_REBUILD}")
    expected = {"method": str, "params": dict, "arrays": dict}
    for key, kind in expected.items():
        if key not in raw:
            raise PrecedentsError(f"{where} has no {key!r} entry: truncated or edited by hand. {_REBUILD}")
        if not isinstance(raw[key], kind):
            raise PrecedentsError(f"{where}: {key!r} is a {type(raw[key]).__name__}, expected a "
                                  f"{'JSON object' if kind is dict else 'string'}. {_REBUILD}")
    for key, kinds in {"model_fingerprint": (str,), "data_fingerprint": (str,), "link": (str,), "class": (str,),
                       "layer_name": (str, type(None)), "n_classes": (int,), "n_train": (int,), "info": (dict,),
                       "diagnostics": (dict,), "runtime_params": (list,)}.items():
        if key in raw and (not isinstance(raw[key], kinds) or isinstance(raw[key], bool)):
            raise PrecedentsError(f"{where}: {key!r} is {raw[key]!r}, of the wrong type. {_REBUILD}")
    if not all(isinstance(k, str) for k in raw.get("runtime_params", [])):
        raise PrecedentsError(f"{where}: 'runtime_params' must list parameter names. {_REBUILD}")
    for name, entry in raw["arrays"].items():
        ok = (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("dtype"), str)
              and isinstance(entry.get("sha256"), str) and isinstance(entry.get("shape"), list)
              and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in entry["shape"]))
        if not ok:
            raise PrecedentsError(f"{where}: the entry of array {name!r} is malformed (it needs file, shape, dtype "
                                  f"and sha256). {_REBUILD}")
        parts = PurePosixPath(entry["file"]).parts
        if not parts or entry["file"].startswith("/") or ".." in parts or "\\" in entry["file"] or ":" in parts[0]:
            raise PrecedentsError(f"{where}: array {name!r} points outside the index folder ({entry['file']!r}). "
                                  f"{_REBUILD}")
    manifest = Manifest(raw)
    manifest.root = str(root)
    return manifest


def load_index(directory: str | os.PathLike, *, verify: bool = True) -> tuple[Manifest, dict[str, torch.Tensor]]:
    """Read and check a manifest and its arrays; with ``verify`` every array's checksum is checked.

    Every array is checked against the manifest's shape and dtype. The manifest is returned as a :class:`Manifest`:
    reading a key it lacks raises a :class:`PrecedentsError` naming the key.
    """
    root = _as_path(directory)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is a file, not an index folder"
        raise PrecedentsError(f"{root} {what}. {_REBUILD}")
    if not (root / MANIFEST).is_file():
        raise PrecedentsError(f"{root} is not a precedents index: it has no {MANIFEST}. {_REBUILD}")
    manifest = _check_manifest(_read_manifest_json(root), root)
    arrays = {}
    for name, entry in manifest["arrays"].items():
        path = root / entry["file"]
        if not path.is_file():
            raise PrecedentsError(f"Index {root} is incomplete: {entry['file']} is missing. {_REBUILD}")
        try:
            digest = sha256_file(path) if verify else entry["sha256"]
        except OSError as err:
            raise PrecedentsError(f"Cannot read {path}: {err}.") from err
        if digest != entry["sha256"]:
            raise PrecedentsError(f"Index {root} is corrupt: {entry['file']} does not match its checksum. {_REBUILD}")
        mmap = "r" if path.stat().st_size > MMAP_THRESHOLD else None
        try:
            array = np.load(path, mmap_mode=mmap, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise PrecedentsError(f"Index {root} is corrupt: {entry['file']} is not a readable array ({err}). "
                                  f"{_REBUILD}") from err
        if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
            raise PrecedentsError(f"Index {root} is inconsistent: {entry['file']} holds a {array.dtype} array of shape "
                                  f"{list(array.shape)}, the manifest says {entry['dtype']} {entry['shape']}. "
                                  f"{_REBUILD}")
        try:
            arrays[name] = torch.from_numpy(np.array(array) if mmap is None else array)
        except TypeError as err:
            raise PrecedentsError(f"Index {root}: array {name!r} has dtype {array.dtype}, which torch cannot hold. "
                                  f"{_REBUILD}") from err
    return manifest, arrays
