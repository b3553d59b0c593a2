"""precedents serve without a browser: the bundle against the library, the security layer, decisions that survive
concurrency and SIGKILL, the exported CSV against the database, apply and verify against refits."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import precedents as pc  # noqa: E402
from precedents.evaluate.mislabel import read_corrections  # noqa: E402
from precedents.serve import Bundle  # noqa: E402
from precedents.serve.app import create_app  # noqa: E402
from precedents.serve.command import main as serve_main  # noqa: E402
from precedents.serve.decisions import DecisionStore  # noqa: E402
from precedents.serve.refit import HeadRefitter, apply_decisions, verify_claim  # noqa: E402
from serve_bundle import digits_model, shared_bundle  # noqa: E402
from serve_server import Server  # noqa: E402


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return shared_bundle(tmp_path_factory)


@pytest.fixture(scope="session")
def bundle(bundle_dir) -> Bundle:
    return Bundle(bundle_dir)


@pytest.fixture()
def client(bundle, tmp_path):
    app = create_app(bundle, db=tmp_path / "review.sqlite", token="tok")
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        yield c


def login(client) -> None:
    r = client.get("/?token=tok", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()


# -- the bundle --------------------------------------------------------------------------------------------

def test_bundle_matches_the_library(bundle):
    """Stored top-k equals a fresh attribution through the public API, for the predicted and another class."""
    model, train, test = digits_model()
    est = pc.RepresenterL2(model, l2=0.003, progress=False).fit(train)
    pts = [0, 7, 100]
    for c_of in (lambda t: int(bundle.test_pred[t]), lambda t: (int(bundle.test_pred[t]) + 3) % 10):
        target = torch.tensor([c_of(t) for t in pts])
        top = est.attribute(test[0][pts], target=target).top(bundle.k)
        for j, t in enumerate(pts):
            c = int(target[j])
            np.testing.assert_array_equal(bundle.method_array("rps-l2", "pos_idx")[t, c], top.positive_indices[j])
            np.testing.assert_allclose(bundle.method_array("rps-l2", "neg_score")[t, c],
                                       top.negative_scores[j].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bundle.method_array("rps-l2", "self_influence"), est.self_influence().numpy())
    for key in bundle.methods:       # most extreme first
        assert (np.diff(bundle.method_array(key, "pos_score"), axis=2) <= 0).all()
        assert (np.diff(bundle.method_array(key, "neg_score"), axis=2) >= 0).all()
    assert bundle.confusion().sum() == bundle.n_test
    assert abs(np.trace(bundle.confusion()) / bundle.n_test - bundle.manifest["test_accuracy"]) < 1e-12


def test_saliency_map_is_the_input_gradient_of_the_predicted_logit(bundle, client):
    model, _, test = digits_model()
    t = 11
    x = test[0][t:t + 1].clone().requires_grad_(True)
    model(x)[0, int(bundle.test_pred[t])].backward()
    np.testing.assert_allclose(bundle.array("map-saliency")[t], x.grad.reshape(8, 8).numpy(), rtol=1e-5, atol=1e-7)
    login(client)
    assert client.get(f"/img/map-saliency/{t}.png").content[:4] == b"\x89PNG"
    assert client.get(f"/img/map-ig/{t}.png").status_code == 404
    assert 'src="/img/map-saliency/' in client.get(f"/test/{t}").text


def test_reverse_lookup_is_the_stored_topk_inverted(bundle):
    key, i = "influence-exact", int(np.argmax(bundle.method_array("influence-exact", "self_influence")))
    got = bundle.reverse_lookup(key, i, limit=10**6)
    idx = bundle.method_array(key, "pos_idx")[np.arange(bundle.n_test), bundle.test_pred]
    assert {r["test_index"] for r in got["supports"]} == set(np.nonzero((idx == i).any(1))[0].tolist())
    assert all(r["score"] > 0 for r in got["supports"]) and all(r["score"] < 0 for r in got["opposes"])


# -- security ----------------------------------------------------------------------------------------------

def test_token_cookie_csrf_origin_and_host(client):
    assert client.get("/").status_code == 403
    assert client.get("/api/overview").status_code == 403
    assert client.get("/?token=wrong", follow_redirects=False).status_code == 403
    assert client.get("/?token=%C3%A9%00", follow_redirects=False).status_code == 403
    bad = {"Authorization": "Bearer tok\u00e9".encode("latin-1")}
    assert client.get("/api/overview", headers=bad).status_code == 403
    login(client)
    assert client.get("/").status_code == 200
    body = {"train_index": 3, "action": "correct"}
    assert client.post("/api/decisions", json=body).status_code == 403                  # no CSRF token
    csrf = client.app.state.explorer.csrf
    assert client.post("/api/decisions", json=body, headers={"X-CSRF-Token": "x"}).status_code == 403
    assert client.post("/api/decisions", json=body, headers={"X-CSRF-Token": csrf,
                                                             "Origin": "http://evil.example"}).status_code == 403
    ok = client.post("/api/decisions", json=body, headers={"X-CSRF-Token": csrf, "Origin": "http://127.0.0.1:8765"})
    assert ok.status_code == 200 and ok.json()["decision"]["action"] == "correct"
    assert client.get("/", headers={"Host": "attacker.example"}).status_code == 403      # DNS rebinding
    page = client.get("/").text
    assert csrf in page and "csp" not in page.lower()
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]


@pytest.mark.parametrize("path, code", [
    ("/test/abc", 404), ("/test/-1", 404), ("/test/100000", 404), ("/train/1200", 404), ("/train/1e3", 404),
    ("/tests?true=x", 400), ("/tests?true=10", 400), ("/tests?cmin=nan", 400), ("/test/1?c=99", 400),
    ("/review?method=../../etc/passwd", 404), ("/api/review?method=rps-l3", 404), ("/static/../app.py", 404),
    ("/static/%2e%2e/app.py", 404), ("/static/..%2fapp.py", 404), ("/img/../../manifest.json", 404),
    ("/img/foo/1.png", 404), ("/export/..%2fmanifest.json", 404), ("/export/review.sqlite", 404),
    ("/img/train/1.png?s=999", 400), ("/verify/1?kind=evil", 400),
])
def test_malformed_requests_get_4xx_without_traceback(client, path, code):
    login(client)
    r = client.get(path)
    assert r.status_code == code, (path, r.text)
    assert "Traceback" not in r.text and "File \"" not in r.text


def test_bad_decisions_are_refused(client):
    login(client)
    h = {"X-CSRF-Token": client.app.state.explorer.csrf}
    for body in ({"train_index": 1200, "action": "correct"}, {"train_index": "1", "action": "correct"},
                 {"train_index": 1, "action": "burn"}, {"train_index": 1, "action": "relabel", "label": 10},
                 {"train_index": 1, "action": "relabel"}, {"train_index": True, "action": "remove"}, [1, 2]):
        r = client.post("/api/decisions", json=body, headers=h)
        assert r.status_code == 400, body
    assert client.post("/api/decisions", content=b"{not json", headers=h).status_code == 400
    assert client.get("/api/decisions").json()["decisions"] == []


def test_remote_host_needs_an_explicit_flag(bundle_dir, capsys):
    assert serve_main([str(bundle_dir), "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_database_of_another_bundle_is_refused(bundle, tmp_path):
    DecisionStore(tmp_path / "db.sqlite", bundle.fingerprint, bundle.n_train, bundle.n_classes).decide(1, "remove")
    with pytest.raises(pc.PrecedentsError, match="another bundle"):
        DecisionStore(tmp_path / "db.sqlite", "0" * 64, bundle.n_train, bundle.n_classes)


# -- decisions, export, apply, verify -----------------------------------------------------------------------

def test_export_is_what_debug_reads_and_matches_the_database(client, tmp_path):
    login(client)
    h = {"X-CSRF-Token": client.app.state.explorer.csrf}
    for i, action, label in ((5, "relabel", 9), (7, "remove", None), (9, "correct", None), (5, "relabel", 3),
                             (11, "relabel", 0)):
        assert client.post("/api/decisions", json={"train_index": i, "action": action, "label": label},
                           headers=h).status_code == 200
    text = client.get("/export/corrections.csv").text
    path = tmp_path / "fixes.csv"
    path.write_text(text)
    assert read_corrections(path, 1200, 10) == {5: 3, 11: 0}
    with sqlite3.connect(client.app.state.explorer.store.path) as db:
        rows = dict(db.execute("SELECT train_index, label FROM decisions WHERE action = 'relabel'").fetchall())
        assert db.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 5
    assert rows == {5: 3, 11: 0}
    all_rows = list(csv.DictReader(io.StringIO(client.get("/export/decisions.csv").text)))
    assert [(r["index"], r["action"]) for r in all_rows] == [("5", "relabel"), ("7", "remove"), ("9", "correct"),
                                                            ("11", "relabel")]


def test_apply_without_decisions_changes_nothing_and_relabels_move_the_head(bundle):
    refitter = HeadRefitter(bundle)
    same = apply_decisions(refitter, {}, [])
    assert same["changed"] == [] and same["accuracy_before"] == same["accuracy_after"]
    # the bundle's head was refit to the exact optimum, so the reference refit reproduces the model's predictions
    assert same["accuracy_before"] == pytest.approx(bundle.manifest["test_accuracy"])
    flipped = {int(i): (int(bundle.train_labels[i]) + 1) % 10 for i in range(0, 1200, 3)}
    moved = apply_decisions(refitter, flipped, list(range(1, 1200, 3)))
    assert moved["converged"] and moved["n_relabelled"] == 400 and moved["n_removed"] == 400
    assert moved["accuracy_after"] < moved["accuracy_before"] - 0.2       # a third of the labels shifted by one


def test_verify_single_removals_follow_influence(bundle):
    """Influence predicts the refit's change of a test loss when one proponent is removed (first order: close)."""
    refitter = HeadRefitter(bundle)
    pred, actual = [], []
    for t in range(0, 60, 6):
        r = verify_claim(refitter, "influence-exact", t, int(bundle.test_pred[t]), 1, "positive")
        assert r["converged"]
        pred.append(r["predicted_change"])
        actual.append(r["actual_change"])
    assert np.corrcoef(pred, actual)[0, 1] > 0.95
    assert all(p > 0 for p in pred)


# -- a real server: concurrency, SIGKILL, restart -----------------------------------------------------------

def test_concurrent_clients_then_sigkill_mid_write_then_restart(bundle_dir, tmp_path):
    """20 clients post 200 decisions at once: all stored, one history row each. Then 4 writers post while the
    server is SIGKILLed: after a restart every acknowledged decision is there."""
    db = tmp_path / "review.sqlite"
    server = Server(bundle_dir, db)
    acks: list[dict] = []
    errors: list[str] = []

    def client(c: int) -> None:
        with httpx.Client(base_url=server.base, headers=server.headers(), timeout=30) as h:
            for j in range(10):
                i = c * 10 + j
                r = h.post("/api/decisions", json={"train_index": i, "action": "relabel", "label": i % 10})
                (acks.append(r.json()["decision"]) if r.status_code == 200 else errors.append(r.text))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and len(acks) == 200
    got = httpx.get(server.base + "/api/decisions", headers=server.headers()).json()
    assert {(d["train_index"], d["label"]) for d in got["decisions"]} == {(i, i % 10) for i in range(200)}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 200

    acked: list[tuple[int, str]] = []
    stop = threading.Event()

    def writer(c: int) -> None:
        with httpx.Client(base_url=server.base, headers=server.headers(), timeout=10) as h:
            for i in range(200 + c, 1200, 4):
                if stop.is_set():
                    return
                action = ("remove", "correct")[i % 2]
                try:
                    r = h.post("/api/decisions", json={"train_index": i, "action": action})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append((i, action))

    threads = [threading.Thread(target=writer, args=(c,)) for c in range(4)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 20
    while len(acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()                                  # mid-write: no shutdown handler runs
    stop.set()
    for th in threads:
        th.join()
    assert len(acked) >= 40
    with Server(bundle_dir, db) as again:
        got = httpx.get(again.base + "/api/decisions", headers=again.headers()).json()["decisions"]
    stored = {(d["train_index"], d["action"]) for d in got}
    assert set(acked) <= stored
    assert {(i, "relabel") for i in range(200)} <= stored


def test_json_api_mirrors_the_pages(client, bundle):
    login(client)
    ov = client.get("/api/overview").json()
    assert [m["key"] for m in ov["methods"]] == ["rps-l2", "rps-lje", "influence-exact"]
    assert [m["measurement"]["quantity"] for m in ov["methods"]] == ["class logit", "class logit", "test loss"]
    wrong = client.get("/api/tests?wrong=1&size=500").json()
    assert wrong["total"] == int(((bundle.test_labels != bundle.test_pred)).sum())
    assert all(it["label"] != it["prediction"] for it in wrong["items"])
    conf = client.get("/api/tests?cmin=0.5&cmax=0.9&size=500").json()
    assert all(0.5 <= it["confidence"] <= 0.9 for it in conf["items"])
    t = client.get("/api/test/3?c=1").json()
    assert t["explained_class"] == 1 and set(t["methods"]) == set(bundle.methods)
    assert len(t["methods"]["rps-lje"]["positive"]) == bundle.k
    tr = client.get("/api/train/5").json()
    assert set(tr["methods"]) == set(bundle.methods)
    rv = client.get("/api/review?method=influence-exact&limit=5").json()
    s = [it["self_influence"] for it in rv["items"]]
    assert s == sorted(s, reverse=True) and s[0] == pytest.approx(
        float(np.max(bundle.method_array("influence-exact", "self_influence"))))
    v = client.get("/api/verify/3?method=rps-l2&n=3").json()
    assert len(v["removed"]) == 3 and v["units"] == bundle.methods["rps-l2"]["units"]
    assert json.loads(json.dumps(ov))                      # plain JSON throughout
    png = client.get("/img/test/3.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_writer_refuses_bad_input(tmp_path):
    from precedents.serve import write_explorer_bundle

    model, train, test = digits_model()
    est = pc.RepresenterL2(model, progress=False).fit(train)
    with pytest.raises(pc.PrecedentsError, match="lowercase"):
        write_explorer_bundle(tmp_path / "b", model, train, test, {"../evil": est})
    with pytest.raises(pc.PrecedentsError, match="at least one"):
        write_explorer_bundle(tmp_path / "b", model, train, test, {})
    with pytest.raises(pc.PrecedentsError, match="class_names"):
        write_explorer_bundle(tmp_path / "b", model, train, test, {"rps-l2": est}, class_names=["a", "b"])
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []     # nothing half-written
    with pytest.raises(pc.PrecedentsError, match="no explorer bundle"):
        Bundle(tmp_path)


def test_test_set_without_labels(tmp_path):
    """explain may have no test labels: accuracy and "misclassified" are unknown, every page still renders."""
    from precedents.serve import write_explorer_bundle

    model, train, test = digits_model()
    est = pc.RepresenterL2(model, progress=False).fit(train)
    path = write_explorer_bundle(tmp_path / "explorer", model, train, (test[0][:40], None), [est], k=5)
    app = create_app(path, db=tmp_path / "r.sqlite", token="tok")
    with TestClient(app, base_url="http://127.0.0.1") as c:
        h = {"Authorization": "Bearer tok"}
        for page in ("/", "/tests", "/tests?wrong=1", "/test/3", "/train/4", "/review", "/verify/3?run=1"):
            assert c.get(page, headers=h).status_code == 200, page
        assert c.get("/api/overview", headers=h).json()["test_accuracy"] is None
        assert c.get("/api/tests?wrong=1", headers=h).json()["total"] == 0
        assert c.post("/api/apply", headers=h).json()["accuracy_after"] is None
