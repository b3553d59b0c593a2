"""The command line, end to end, on real data: a TorchScript model and a state dict plus module path."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from precedents.cli import main


def test_explain_torchscript_writes_report_and_top_k(tmp_path, digits, digits_mlp, capsys):
    Xtr, ytr, Xte, yte = digits
    torch.jit.script(digits_mlp).save(str(tmp_path / "model.ts"))
    np.savez(tmp_path / "train.npz", X=Xtr.numpy(), y=ytr.numpy())
    torch.save({"X": Xte, "y": yte}, tmp_path / "test.pt")
    code = main(["explain", "--model", str(tmp_path / "model.ts"), "--train", str(tmp_path / "train.npz"),
                 "--test", str(tmp_path / "test.pt"), "--points", "0,1,2", "--k", "3", "--overlap", "20",
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "rps-l2" in html and "rps-lje" in html and "Decomposition theorem check" in html
    rows = list(csv.DictReader(open(tmp_path / "out" / "top_k.csv")))
    assert len(rows) == 2 * 3 * 3 * 2          # methods x points x k x (positive, negative)
    assert {r["test_id"] for r in rows} == {"0", "1", "2"}
    data = json.loads((tmp_path / "out" / "top_k.json").read_text())
    assert "positive" in data["sign_convention"]
    printed = capsys.readouterr().out
    assert "How faithful" in printed and "precedents serve" in printed
    # the explorer bundle `precedents serve` reads: the same proponents as top_k.csv for the predicted class
    from precedents.serve.bundle import Bundle

    bundle = Bundle(tmp_path / "out")
    pred = int(bundle.test_pred[1])
    stored = bundle.method_array("rps-l2", "pos_idx")[1, pred, :3].tolist()
    shown = [int(r["train_index"]) for r in rows if r["method"] == "rps-l2" and r["test_id"] == "1"
             and r["kind"] == "positive"]
    assert stored == shown


def test_explain_reports_bad_input_without_traceback(tmp_path, digits, digits_mlp, capsys):
    Xtr, ytr, Xte, _ = digits
    torch.jit.script(digits_mlp).save(str(tmp_path / "model.ts"))
    np.savez(tmp_path / "train.npz", X=Xtr.numpy(), y=ytr.numpy() + 5)
    np.savez(tmp_path / "test.npz", X=Xte.numpy())
    code = main(["explain", "--model", str(tmp_path / "model.ts"), "--train", str(tmp_path / "train.npz"),
                 "--test", str(tmp_path / "test.npz"), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert "labels must lie in [0, 9]" in capsys.readouterr().err
    assert main(["explain", "--model", str(tmp_path / "missing.ts"), "--train", str(tmp_path / "train.npz"),
                 "--test", str(tmp_path / "test.npz"), "--quiet"]) == 2
    assert main(["explain", "--state-dict", "x.pt", "--module", "no.such.module:Net", "--train",
                 str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"), "--quiet"]) == 2


def test_explain_state_dict_and_module(tmp_path, digits):
    from precedents.demos.models import MnistCNN

    Xtr, ytr, Xte, _ = digits
    model = MnistCNN(c1=4, c2=8, hidden=16)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    images = torch.nn.functional.interpolate(Xtr.reshape(-1, 1, 8, 8), size=28)
    np.savez(tmp_path / "train.npz", X=images[:300].numpy(), y=ytr[:300].numpy())
    np.savez(tmp_path / "test.npz", X=images[300:310].numpy())
    code = main(["explain", "--state-dict", str(tmp_path / "sd.pt"), "--module", "precedents.demos.models:MnistCNN",
                 "--module-kwargs", '{"c1": 4, "c2": 8, "hidden": 16}', "--layer", "fc2", "--methods", "rps-l2",
                 "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"), "--overlap", "0",
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    assert "data:image/png;base64" in (tmp_path / "out" / "report.html").read_text()


def test_explain_features_sensitivity_and_tabular_features(tmp_path, digits, digits_mlp):
    from precedents.demos.models import MnistCNN

    Xtr, ytr, Xte, yte = digits
    torch.manual_seed(0)
    model = MnistCNN(c1=4, c2=8, hidden=16)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    images = torch.nn.functional.interpolate(Xtr.reshape(-1, 1, 8, 8), size=28)
    np.savez(tmp_path / "train.npz", X=images[:300].numpy(), y=ytr[:300].numpy())
    np.savez(tmp_path / "test.npz", X=images[300:304].numpy(), y=ytr[300:304].numpy())
    code = main(["explain", "--state-dict", str(tmp_path / "sd.pt"), "--module", "precedents.demos.models:MnistCNN",
                 "--module-kwargs", '{"c1": 4, "c2": 8, "hidden": 16}', "--methods", "rps-l2,rps-lje",
                 "--features", "saliency,ig", "--points", "0,1", "--train", str(tmp_path / "train.npz"),
                 "--test", str(tmp_path / "test.npz"), "--overlap", "0", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("Which pixels: feature attribution") == 2
    assert html.count("sensitivity map of class") == 4              # 2 points x 2 representer methods
    assert "its decomposed map" in html and "POSITIVE" in html
    # tabular data: a table per point instead of images
    torch.jit.script(digits_mlp).save(str(tmp_path / "model.ts"))
    np.savez(tmp_path / "tr.npz", X=Xtr.numpy(), y=ytr.numpy())
    np.savez(tmp_path / "te.npz", X=Xte.numpy(), y=yte.numpy())
    code = main(["explain", "--model", str(tmp_path / "model.ts"), "--train", str(tmp_path / "tr.npz"), "--test",
                 str(tmp_path / "te.npz"), "--methods", "rps-l2", "--features", "occlusion,saliency", "--points", "0",
                 "--overlap", "0", "--out", str(tmp_path / "tab"), "--quiet"])
    assert code == 0
    assert "Feature attribution, test point 0" in (tmp_path / "tab" / "report.html").read_text()
    assert main(["explain", "--model", str(tmp_path / "model.ts"), "--train", str(tmp_path / "tr.npz"), "--test",
                 str(tmp_path / "te.npz"), "--features", "gradcam", "--quiet"]) == 2


def test_explain_any_method_key_and_loss_methods_explain_the_prediction(tmp_path, digits, digits_mlp):
    """Loss-based keys explain the loss of the *predicted* class: their top proponent has positive score."""
    Xtr, ytr, Xte, yte = digits
    torch.jit.script(digits_mlp).save(str(tmp_path / "model.ts"))
    np.savez(tmp_path / "train.npz", X=Xtr[:300].numpy(), y=ytr[:300].numpy())
    np.savez(tmp_path / "test.npz", X=Xte.numpy(), y=yte.numpy())
    code = main(["explain", "--model", str(tmp_path / "model.ts"), "--train", str(tmp_path / "train.npz"),
                 "--test", str(tmp_path / "test.npz"), "--methods", "rps-lje,influence-exact,grad-cos",
                 "--points", "0,1", "--k", "2", "--overlap", "10", "--damping", "0.001", "--out",
                 str(tmp_path / "out"), "--quiet"])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "top_k.csv")))
    methods = {r["method"] for r in rows}
    assert len(methods) == 3
    measured = json.loads((tmp_path / "out" / "top_k.json").read_text())["measurements"]
    assert {m["quantity"] for m in measured.values()} == {"class logit", "test loss"}
    html = (tmp_path / "out" / "report.html").read_text()
    assert "influence-exact" in html and "grad-cos" in html and "explains the loss of class" in html
