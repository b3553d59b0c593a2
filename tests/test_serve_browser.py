"""precedents serve in a real browser: Playwright driving the system's Chromium against a real server process.

Chromium comes from the system's package manager (``apt-get install chromium``; ``make venv`` installs it when
missing); Playwright's own browser download is never used. Skipped when either is missing.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import sqlite3

import pytest

pytest.importorskip("playwright")
pytest.importorskip("starlette")
if shutil.which("chromium") is None:
    pytest.skip("no system chromium (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

from precedents.serve import Bundle  # noqa: E402
from serve_bundle import shared_bundle  # noqa: E402
from serve_server import Server  # noqa: E402


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory):
    return shared_bundle(tmp_path_factory)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": shutil.which("chromium")}


def test_explore_review_restart_export_apply(bundle_dir, tmp_path, page):
    bundle = Bundle(bundle_dir)
    db = tmp_path / "review.sqlite"
    server = Server(bundle_dir, db)
    try:
        # overview: accuracy, every method with its units, a clickable confusion matrix
        page.goto(server.url)
        assert page.url == server.base + "/"
        accuracy = f"{100 * bundle.manifest['test_accuracy']:.2f}%"
        assert page.locator("#test-accuracy").inner_text() == accuracy
        assert page.locator(".card.method").count() == len(bundle.methods)
        assert "nats of test loss" in page.locator("#method-influence-exact").inner_text()
        conf = bundle.confusion()
        i, j = 1, 9                                   # the largest off-diagonal cell of this model
        page.click(f'#confusion a[data-true="{i}"][data-pred="{j}"]')
        expect(page.locator("#count")).to_contain_text(f"{conf[i, j]} test points match")
        expect(page.locator("#results .tile")).to_have_count(int(conf[i, j]))

        # filter misclassified
        page.goto(server.base + "/tests")
        page.check("#wrong")
        page.click("#filters button[type=submit]")
        wrong = int((bundle.test_labels != bundle.test_pred).sum())
        expect(page.locator("#count")).to_contain_text(f"{wrong} test points match")
        expect(page.locator("#results .tile.wrong")).to_have_count(min(wrong, 48))
        assert page.locator("#results .tile").count() == min(wrong, 48)

        # open a test point: every method's precedents, positive and negative
        first = page.locator("#results .tile").first
        t = int(first.get_attribute("data-test"))
        first.click()
        expect(page).to_have_url(f"{server.base}/test/{t}")
        cols = page.locator("#methods .method-col")
        expect(cols).to_have_count(len(bundle.methods))
        for n in range(cols.count()):
            assert cols.nth(n).locator(".strip.positive .prec").count() == 10
            assert cols.nth(n).locator(".strip.negative .prec").count() == 10
        shown = [int(a.get_attribute("data-train")) for a in cols.nth(0).locator(".strip.positive .prec").all()]
        assert shown == bundle.method_array("rps-l2", "pos_idx")[t, bundle.test_pred[t], :10].tolist()

        # switch the explained class
        other = (int(bundle.test_pred[t]) + 1) % 10
        page.select_option("#switch-class", str(other))
        page.click("form.switch button")
        expect(page.locator("#precedents-title")).to_contain_text(f"Precedents for class {other}")
        shown = [int(a.get_attribute("data-train")) for a in cols.nth(0).locator(".strip.positive .prec").all()]
        assert shown == bundle.method_array("rps-l2", "pos_idx")[t, other, :10].tolist()

        # review five training examples with the keyboard
        page.goto(server.base + "/review?method=influence-exact")
        rows = page.locator("#queue tr.item")
        ids = [int(rows.nth(n).get_attribute("data-train")) for n in range(5)]
        for key in ("c", "3", "x", "7", "c"):
            page.keyboard.press(key)
        for n, action in enumerate(("correct", "relabel", "remove", "relabel", "correct")):
            page.wait_for_selector(f'#queue tr.item[data-train="{ids[n]}"].saved-{action}', timeout=10_000)
        expected = {ids[0]: ("correct", None), ids[1]: ("relabel", 3), ids[2]: ("remove", None),
                    ids[3]: ("relabel", 7), ids[4]: ("correct", None)}

        # restart the server: the decisions are kept
        server.stop()
        server = Server(bundle_dir, db)
        page.goto(server.url)
        page.goto(server.base + "/review?method=influence-exact")
        for n in range(5):
            assert rows.nth(n).locator("td.decision").inner_text().startswith(expected[ids[n]][0])

        # export the CSV and compare it with the database
        text = page.request.get(server.base + "/export/corrections.csv").text()
        exported = {int(r["index"]): int(r["label"]) for r in csv.DictReader(io.StringIO(text))}
        with sqlite3.connect(db) as conn:
            stored = dict(conn.execute("SELECT train_index, label FROM decisions WHERE action='relabel'").fetchall())
            actions = dict(conn.execute("SELECT train_index, action FROM decisions").fetchall())
        assert exported == stored == {ids[1]: 3, ids[3]: 7}
        assert actions == {i: a for i, (a, _) in expected.items()}

        # apply: refit the head, accuracy before/after and the changed predictions
        page.click("#apply")
        page.wait_for_selector("#apply-accuracy", timeout=30_000)
        text = page.locator("#apply-accuracy").inner_text()
        assert re.search(r"\d+\.\d\d% → \d+\.\d\d%", text), text
        assert "2 relabelled, 1 removed" in page.locator("#apply-result h3").inner_text()
    finally:
        server.stop()
