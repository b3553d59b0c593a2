"""Bad input to every command ends in one line, ``precedents <command>: error: ...``, exit status 2, no traceback;
the output folder rule never touches a file of the user's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from precedents.cli import main
from precedents.cli.files import MARKER


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A TorchScript linear model on real data (digits), its state dict, and good and bad data files."""
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("cli_errors")
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    torch.jit.script(torch.nn.Sequential(model)).save(str(tmp / "model.ts"))
    torch.save(model.state_dict(), tmp / "sd.pt")
    np.savez(tmp / "train.npz", X=X[:200], y=y[:200])
    np.savez(tmp / "test.npz", X=X[200:210], y=y[200:210])
    np.savez(tmp / "empty.npz", X=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64))
    np.savez(tmp / "no_x.npz", features=X[:10])
    np.savez(tmp / "short_y.npz", X=X[:10], y=y[:9])
    np.savez(tmp / "string_y.npz", X=X[:10], y=np.array(["a"] * 10))
    np.savez(tmp / "wide.npz", X=np.ones((10, 65), np.float32), y=y[:10])
    np.save(tmp / "objects.npy", np.array([{"a": 1}], dtype=object))
    (tmp / "zero.npz").write_bytes(b"")
    (tmp / "text.npz").write_text("X,y\n1,2\n")
    (tmp / "garbage.pt").write_bytes(b"\x80\x04not a pickle")
    (tmp / "garbage.ts").write_bytes(b"PK\x03\x04garbage")
    (tmp / "table.csv").write_text("a,b\n1,2\n")
    (tmp / "adir.npz").mkdir()
    return tmp


def _explain(tmp: Path, *extra: str, train: str = "train.npz", test: str = "test.npz",
             model: tuple[str, ...] = ("--model", "model.ts")) -> list[str]:
    args = ["explain", "--train", str(tmp / train), "--test", str(tmp / test), "--overlap", "0", "--quiet",
            "--methods", "rps-l2", "--no-sensitivity", *extra]
    model_args = [str(tmp / a) if a.endswith((".ts", ".pt")) else a for a in model]
    if "--out" not in extra:
        args += ["--out", str(tmp / "out")]
    return [*args, *model_args]


def _one_error_line(capsys, command: str = "explain") -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"precedents {command}: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("train,test,needle", [
    ("missing.npz", "test.npz", "does not exist"),
    ("adir.npz", "test.npz", "not a file"),
    ("table.csv", "test.npz", "--xgboost/--lightgbm"),
    ("zero.npz", "test.npz", "cannot be read"),
    ("text.npz", "test.npz", "cannot be read"),
    ("garbage.pt", "test.npz", "cannot be read"),
    ("no_x.npz", "test.npz", "no array named X"),
    ("short_y.npz", "test.npz", "y has 9 labels"),
    ("string_y.npz", "test.npz", "not a numeric array"),
    ("train.npz", "empty.npz", "no rows"),
    ("empty.npz", "test.npz", "no rows"),
    ("objects.npy", "test.npz", "expected a .npz or .pt"),
])
def test_data_files_missing_malformed_or_empty(files, capsys, train, test, needle):
    assert main(_explain(files, train=train, test=test)) == 2
    assert needle in _one_error_line(capsys)


@pytest.mark.parametrize("model,needle", [
    (("--model", "missing.ts"), "does not exist"),
    (("--model", "garbage.ts"), "not a TorchScript file"),
    (("--state-dict", "garbage.pt", "--module", "torch.nn:Linear", "--module-kwargs",
      '{"in_features": 64, "out_features": 10}'), "cannot be read"),
    (("--state-dict", "sd.pt", "--module", "torch.nn:Linear", "--module-kwargs", "{in: 64}"), "not JSON"),
    (("--state-dict", "sd.pt", "--module", "torch.nn:Linear", "--module-kwargs", "[64, 10]"), "JSON object"),
    (("--state-dict", "sd.pt", "--module", "torch.nn:Linear", "--module-kwargs",
      '{"in_features": 64, "out_features": 3}'), "does not fit"),
    (("--state-dict", "sd.pt", "--module", "no.such.module:Net"), "Cannot import"),
    (("--state-dict", "sd.pt", "--module", "torch.nn"), "package.module:ClassName"),
    ((), "Give the model"),
])
def test_model_files_and_module_options(files, capsys, model, needle):
    assert main(_explain(files, model=model)) == 2
    assert needle in _one_error_line(capsys)


@pytest.mark.parametrize("extra,needle", [
    (("--k", "0"), "--k"),
    (("--k", "two"), "--k"),
    (("--l2", "nan"), "--l2"),
    (("--l2", "-1"), "--l2"),
    (("--damping", "inf"), "--damping"),
    (("--points", "a,b"), "--points"),
    (("--points", "-1"), "--points"),
    (("--points", "1,1"), "--points"),
    (("--points", "99"), "asks for test point 99"),
    (("--overlap", "-3"), "--overlap"),
    (("--methods", "rps-l3"), "Unknown method(s) rps-l3"),
    (("--methods", "rps-l2,rps-l2"), "named twice"),
    (("--methods", "tracin"), "tracin cannot be built from this command's options"),
    (("--methods", ""), "Unknown method"),
    (("--features", "gradcam"), "gradcam"),
    (("--tcav", "train.npz"), "--tcav-layer"),
    (("--label", "y"), "tree models"),
])
def test_bad_option_values(files, capsys, extra, needle):
    assert main(_explain(files, *extra)) == 2
    assert needle in _one_error_line(capsys)


def test_data_the_model_refuses_is_one_line(files, capsys):
    """65 features into a 64-input model: refused in one line naming the file and torch's reason."""
    assert main(_explain(files, train="wide.npz")) == 2
    line = _one_error_line(capsys)
    assert "cannot run on X from" in line and "wide.npz" in line and "shapes cannot be multiplied" in line


def test_out_folder_rule(files, capsys):
    """--out: a file is refused; a folder of the user's is refused and left as it was; precedents' own is reused."""
    (files / "out.txt").write_text("mine")
    assert main(_explain(files, "--out", str(files / "out.txt"))) == 2
    assert "is a file" in _one_error_line(capsys)
    assert (files / "out.txt").read_text() == "mine"

    users = files / "users"
    users.mkdir()
    (users / "notes.md").write_text("keep me")
    (users / "report.html").write_text("my own report")
    assert main(_explain(files, "--out", str(users))) == 2
    assert "did not write (notes.md" in _one_error_line(capsys)
    assert sorted(p.name for p in users.iterdir()) == ["notes.md", "report.html"]
    assert (users / "report.html").read_text() == "my own report"

    ours = files / "ours"
    assert main(_explain(files, "--out", str(ours))) == 0
    first = sorted(p.name for p in ours.iterdir())
    assert first == sorted([MARKER, "explorer", "report.html", "top_k.csv", "top_k.json"])
    assert main(_explain(files, "--out", str(ours))) == 0            # a rerun replaces its own files only
    assert sorted(p.name for p in ours.iterdir()) == first

    nested = files / "out.txt" / "sub"                               # a parent that is a file
    assert main(_explain(files, "--out", str(nested))) == 2
    _one_error_line(capsys)


def test_evaluate_and_debug_errors(files, capsys):
    base = ["--model", str(files / "model.ts"), "--train", str(files / "train.npz"), "--quiet"]
    assert main(["evaluate", *base, "--test", str(files / "test.npz"), "--weight-decay", "-1", "--results",
                 str(files / "r.jsonl")]) == 2
    assert "--weight-decay" in _one_error_line(capsys, "evaluate")
    assert main(["evaluate", *base, "--test", str(files / "empty.npz"), "--weight-decay", "0.01", "--results",
                 str(files / "r.jsonl"), "--out", str(files / "ev")]) == 2
    assert "no rows" in _one_error_line(capsys, "evaluate")
    assert main(["evaluate", *base, "--test", str(files / "test.npz"), "--weight-decay", "0.01", "--methods",
                 "tracin-x", "--results", str(files / "r.jsonl")]) == 2
    assert "Unknown method" in _one_error_line(capsys, "evaluate")
    assert main(["debug", *base, "--top", "0"]) == 2
    assert "--top" in _one_error_line(capsys, "debug")
    assert main(["debug", *base, "--corrections", str(files / "missing.csv"), "--test", str(files / "test.npz"),
                 "--out", str(files / "db")]) == 2
    _one_error_line(capsys, "debug")
    assert main(["demo", "--task", "nope"]) == 2
    _one_error_line(capsys, "demo")
    (files / "cachefile").write_text("x")
    assert main(["demo", "--task", "german", "--out", str(files / "out.txt")]) == 2
    assert "is a file" in _one_error_line(capsys, "demo")


def test_the_installed_entry_point_prints_one_line(files):
    """Through ``python -m precedents.cli`` (what the ``precedents`` script runs): no traceback on stderr."""
    proc = subprocess.run([sys.executable, "-m", "precedents.cli", *_explain(files, train="missing.npz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("precedents explain: error: Training file")
