"""An index save never touches a file it did not write, a re-save is atomic, and a damaged index gets a clear error.

Each test states the invariant it checks: user files are byte-for-byte untouched after a refused save; an
interrupted re-save leaves the previous index loadable with the same arrays; every damaged manifest or array
ends in a PrecedentsError (never KeyError, TypeError, JSONDecodeError or a numpy error).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import precedents as pc
from precedents import index as index_mod
from precedents.index import MANIFEST, load_index, save_index

META = {"model_fingerprint": "m" * 64, "data_fingerprint": "d" * 64, "layer_name": "fc", "link": "softmax",
        "n_classes": 3, "info": {}}


def arrays(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"features": torch.randn(20, 4, generator=g, dtype=torch.float64),
            "labels": torch.randint(0, 3, (20,), generator=g)}


def save(path: Path, seed: int = 0) -> Path:
    return save_index(path, method="rps-l2", params={"damping": 0.0}, arrays=arrays(seed), meta=META)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_loads(path: Path, seed: int) -> None:
    manifest, loaded = load_index(path)
    for name, expected in arrays(seed).items():
        assert torch.equal(loaded[name], expected)
    assert manifest["method"] == "rps-l2"


# -- saving: nothing of the user's is touched ----------------------------------------------------------------------

def test_non_empty_folder_that_is_not_an_index_is_refused_and_untouched(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "thesis.tex").write_text("years of work")
    (tmp_path / "results" / "sub").mkdir()
    (tmp_path / "results" / "sub" / "data.npy").write_bytes(b"x")
    before = snapshot(tmp_path)
    with pytest.raises(pc.PrecedentsError, match="not a precedents index and is not empty.*thesis.tex"):
        save(tmp_path / "results")
    assert snapshot(tmp_path) == before


def test_regular_file_at_the_path_is_refused_not_moved(tmp_path):
    target = tmp_path / "index"
    target.write_text("my notes")
    with pytest.raises(pc.PrecedentsError, match="is a file, not a folder"):
        save(target)
    assert target.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_symlink_to_a_file_is_refused(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("keep")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(pc.PrecedentsError, match="not a folder"):
        save(tmp_path / "link")
    assert real.read_text() == "keep" and (tmp_path / "link").is_symlink()


def test_index_with_a_user_file_added_is_not_replaced(tmp_path):
    save(tmp_path / "index")
    (tmp_path / "index" / "notes.md").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(pc.PrecedentsError, match=r"also files that are not part of it \(notes.md\)"):
        save(tmp_path / "index", seed=1)
    assert snapshot(tmp_path) == before
    assert_loads(tmp_path / "index", 0)


def test_a_folder_named_like_ours_with_other_content_is_not_removed(tmp_path):
    save(tmp_path / "index")
    odd = tmp_path / "index" / "arrays-0123456789abcdef"
    odd.mkdir()
    (odd / "photo.jpg").write_bytes(b"jpeg")
    with pytest.raises(pc.PrecedentsError, match="arrays-0123456789abcdef"):
        save(tmp_path / "index", seed=1)
    assert (odd / "photo.jpg").read_bytes() == b"jpeg"


def test_empty_folder_and_new_nested_path_are_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    save(tmp_path / "empty")
    assert_loads(tmp_path / "empty", 0)
    save(tmp_path / "a" / "b" / "c")
    assert_loads(tmp_path / "a" / "b" / "c", 0)


def test_resave_replaces_the_index_and_leaves_nothing_behind(tmp_path):
    (tmp_path / "neighbour.txt").write_text("beside the index")
    save(tmp_path / "index", seed=0)
    save(tmp_path / "index", seed=1)
    assert_loads(tmp_path / "index", 1)
    names = sorted(p.name for p in (tmp_path / "index").iterdir())
    assert len(names) == 2 and names[1] == MANIFEST and names[0].startswith("arrays-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "neighbour.txt"]


def test_resave_over_a_format_1_index_removes_only_its_files(tmp_path):
    root = tmp_path / "old"
    root.mkdir()
    np.save(root / "features.npy", np.zeros((2, 2)))
    manifest = {"format_version": 1, "library": "precedents", "method": "rps-l2", "params": {},
                "arrays": {"features": {"file": "features.npy", "shape": [2, 2], "dtype": "float64", "sha256": ""}}}
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(pc.PrecedentsError, match="format 1.*reads format 2"):
        load_index(root)
    save(root)
    assert_loads(root, 0)
    assert not (root / "features.npy").exists()


@pytest.mark.parametrize("fail_at", ["array", "manifest", "commit"])
def test_interrupted_resave_leaves_the_old_index_loadable(tmp_path, monkeypatch, fail_at):
    """Whatever step of a re-save is interrupted (KeyboardInterrupt), the previous index loads unchanged; the next
    save clears what the interrupted one left."""
    save(tmp_path / "index", seed=0)
    real_save = np.save
    calls = {"n": 0}

    def failing_save(path, array, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_save(path, array, **kw)

    def failing_replace(src, dst):
        raise KeyboardInterrupt

    if fail_at == "array":
        monkeypatch.setattr(index_mod.np, "save", failing_save)
    elif fail_at == "commit":
        monkeypatch.setattr(index_mod.os, "replace", failing_replace)
    else:
        def failing_fsync(fd):
            raise KeyboardInterrupt
        monkeypatch.setattr(index_mod.os, "fsync", failing_fsync)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path / "index", seed=1)
    monkeypatch.undo()
    assert_loads(tmp_path / "index", 0)
    save(tmp_path / "index", seed=2)
    assert_loads(tmp_path / "index", 2)
    assert len(list((tmp_path / "index").iterdir())) == 2


def test_disk_errors_are_precedents_errors_and_change_nothing(tmp_path, monkeypatch):
    def full_disk(path, array, **kw):
        raise OSError(28, "No space left on device")

    save(tmp_path / "index", seed=0)
    monkeypatch.setattr(index_mod.np, "save", full_disk)
    with pytest.raises(pc.PrecedentsError, match="Cannot write the index.*No space left.*Nothing was changed"):
        save(tmp_path / "index", seed=1)
    with pytest.raises(pc.PrecedentsError, match="No space left"):
        save(tmp_path / "new", seed=1)
    monkeypatch.undo()
    assert_loads(tmp_path / "index", 0)
    assert len(list((tmp_path / "index").iterdir())) == 2 and not (tmp_path / "new").exists()


def test_home_directory_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    save(Path("~/idx"))
    assert_loads(tmp_path / "idx", 0)
    assert_loads(Path("~/idx"), 0)


def test_resave_into_the_folder_a_loaded_index_is_memory_mapped_from(tmp_path, monkeypatch):
    """Load an index (memory-mapped), then save the loaded arrays back to the same folder: the new arrays are written
    before the old files are removed, so the result is the same index."""
    monkeypatch.setattr(index_mod, "MMAP_THRESHOLD", 0)
    save(tmp_path / "index", seed=3)
    manifest, loaded = load_index(tmp_path / "index")
    save_index(tmp_path / "index", method="rps-l2", params=manifest["params"], arrays=loaded, meta=META)
    assert_loads(tmp_path / "index", 3)


def test_leftovers_of_a_killed_save_are_recognised_and_cleared(tmp_path):
    """A hard kill (no cleanup) between writing the arrays and the commit leaves an unreferenced arrays folder and a
    temporary manifest: the index still loads as the old one, and the next save removes both."""
    save(tmp_path / "index", seed=0)
    stale = tmp_path / "index" / "arrays-00000000000000aa"
    stale.mkdir()
    np.save(stale / "features.npy", np.ones(3))
    (tmp_path / "index" / ".manifest-00000000000000aa.json").write_text("{trunc")
    assert_loads(tmp_path / "index", 0)
    save(tmp_path / "index", seed=1)
    assert_loads(tmp_path / "index", 1)
    assert len(list((tmp_path / "index").iterdir())) == 2


def test_a_manifest_naming_files_outside_is_neither_loaded_nor_used_to_delete(tmp_path):
    outside = tmp_path / "precious.npy"
    np.save(outside, np.arange(3))
    save(tmp_path / "index")
    path = tmp_path / "index" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["arrays"]["features"]["file"] = "../precious.npy"
    path.write_text(json.dumps(manifest))
    with pytest.raises(pc.PrecedentsError, match="outside the index folder"):
        load_index(tmp_path / "index")
    save(tmp_path / "index", seed=1)
    assert np.array_equal(np.load(outside), np.arange(3))


def test_unserialisable_parameters_and_bad_array_names_are_refused_before_writing(tmp_path):
    with pytest.raises(pc.PrecedentsError, match="not JSON-serialisable"):
        save_index(tmp_path / "i", method="x", params={"loss_fn": lambda a: a}, arrays=arrays(), meta=META)
    with pytest.raises(pc.PrecedentsError, match="cannot be a file name"):
        save_index(tmp_path / "j", method="x", params={}, arrays={"../evil": torch.zeros(1)}, meta=META)
    assert not (tmp_path / "i").exists() or not any((tmp_path / "i").iterdir())


# -- loading: a damaged index gets a PrecedentsError ---------------------------------------------------------------

def edit_manifest(root: Path, change) -> None:
    path = root / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _drop(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _entry(field, value):
    return lambda m: m["arrays"]["features"].__setitem__(field, value)


@pytest.mark.parametrize("change, message", [
    (_drop("arrays"), "no 'arrays' entry"),
    (_drop("method"), "no 'method' entry"),
    (_drop("params"), "no 'params' entry"),
    (_drop("library"), "not a precedents index"),
    (_set("format_version", 99), "format 99"),
    (_set("format_version", "2"), "format '2'"),
    (_set("arrays", [1, 2]), "'arrays' is a list"),
    (_set("params", "damping=0"), "'params' is a str"),
    (_set("method", 3), "'method' is a int"),
    (_set("n_classes", "three"), "'n_classes' is 'three'"),
    (_set("n_classes", True), "'n_classes' is True"),
    (_set("model_fingerprint", None), "'model_fingerprint' is None"),
    (_set("n_train", "1200"), "'n_train' is '1200'"),
    (_set("diagnostics", []), "'diagnostics' is \\[\\]"),
    (_set("runtime_params", "forward_fn"), "'runtime_params' is 'forward_fn'"),
    (_set("runtime_params", [1]), "'runtime_params' must list"),
    (_set("class", None), "'class' is None"),
    (_entry("shape", "20x4"), "array 'features' is malformed"),
    (_entry("shape", [20, -4]), "array 'features' is malformed"),
    (_entry("file", None), "array 'features' is malformed"),
    (lambda m: m["arrays"].__setitem__("features", "features.npy"), "array 'features' is malformed"),
    (_entry("shape", [20, 5]), "inconsistent.*manifest says float64 \\[20, 5\\]"),
    (_entry("dtype", "float32"), "inconsistent.*manifest says float32"),
    (_entry("file", "/etc/passwd"), "outside the index folder"),
    (_entry("file", "arrays-x/../../x.npy"), "outside the index folder"),
    (_entry("file", "nothing.npy"), "incomplete: nothing.npy is missing"),
    (_entry("sha256", "0" * 64), "corrupt.*checksum"),
])
def test_hand_edited_manifest(tmp_path, change, message):
    save(tmp_path / "index")
    edit_manifest(tmp_path / "index", change)
    with pytest.raises(pc.PrecedentsError, match=message):
        load_index(tmp_path / "index")


@pytest.mark.parametrize("content, message", [
    (lambda text: text[: len(text) // 2], "not valid JSON \\(line"),
    (lambda text: "", "not valid JSON"),
    (lambda text: "[1, 2, 3]", "a JSON list, not an object"),
    (lambda text: "\udcff", "Cannot read|not valid JSON"),
])
def test_truncated_or_garbled_manifest(tmp_path, content, message):
    save(tmp_path / "index")
    path = tmp_path / "index" / MANIFEST
    data = content(path.read_text())
    path.write_bytes(data.encode("utf-8", "surrogateescape"))
    with pytest.raises(pc.PrecedentsError, match=message):
        load_index(tmp_path / "index")


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_array_file(tmp_path, verify):
    save(tmp_path / "index")
    array = next((tmp_path / "index").glob("arrays-*/features.npy"))
    array.write_bytes(array.read_bytes()[:100])
    with pytest.raises(pc.PrecedentsError, match="corrupt"):
        load_index(tmp_path / "index", verify=verify)


def test_missing_meta_key_read_by_a_method_is_a_precedents_error(tmp_path):
    save(tmp_path / "index")
    edit_manifest(tmp_path / "index", _drop("data_fingerprint"))
    manifest, _ = load_index(tmp_path / "index")
    with pytest.raises(pc.PrecedentsError, match="no 'data_fingerprint' entry"):
        manifest["data_fingerprint"]
    assert manifest.get("data_fingerprint") is None


@pytest.mark.parametrize("directory", [None, 3, "", b"bytes"])
def test_a_folder_must_be_a_path(directory):
    with pytest.raises(pc.PrecedentsError, match="is a path"):
        save_index(directory, method="x", params={}, arrays={}, meta={})
    with pytest.raises(pc.PrecedentsError, match="is a path"):
        load_index(directory)


def test_parent_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(pc.PrecedentsError, match="Cannot create the index folder"):
        save(tmp_path / "file" / "index")
    assert (tmp_path / "file").read_text() == "x"


def test_missing_folder_file_or_manifest(tmp_path):
    with pytest.raises(pc.PrecedentsError, match="does not exist"):
        load_index(tmp_path / "nowhere")
    (tmp_path / "f").write_text("x")
    with pytest.raises(pc.PrecedentsError, match="is a file"):
        load_index(tmp_path / "f")
    (tmp_path / "d").mkdir()
    with pytest.raises(pc.PrecedentsError, match="no manifest.json"):
        load_index(tmp_path / "d")


def test_estimator_save_keeps_user_files_and_round_trips(tmp_path, digits, digits_mlp):
    """End to end through an estimator's save(): refused over a user's folder, exact round trip otherwise."""
    Xtr, ytr, Xte, _ = digits
    ex = pc.RepresenterL2(digits_mlp, progress=False).fit(Xtr[:300], ytr[:300])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.html").write_text("<html/>")
    with pytest.raises(pc.PrecedentsError, match="not a precedents index"):
        ex.save(tmp_path / "out")
    assert (tmp_path / "out" / "report.html").read_text() == "<html/>"
    ex.save(tmp_path / "index")
    ex.save(tmp_path / "index")
    loaded = pc.RepresenterL2.load(tmp_path / "index", digits_mlp, train=(Xtr[:300], ytr[:300].int()))
    assert torch.equal(loaded.attribute(Xte).scores, ex.attribute(Xte).scores)
