"""Two people at once in a real browser (Chromium + Playwright, as tests/test_browser.py):
sign-in on (CURATION_AUTH=local), a curator and a viewer signed in to one server."""

from __future__ import annotations

import os
import re

import pytest

from curation.bench import reliability as rel
from curation.data import users
from curation.data.demo import ensure_demo
from curation.data.store import Store
from curation.errors import CurationError
from curation.review import curate
from curation.workspace import Workspace
from test_browser import CHROMIUM, FLAGS, goto, inspect_and_decide, metric_value, shot, start_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                       reason="Debian chromium is not installed (apt-get install chromium); CI installs it"),
]


@pytest.fixture
def team_app(tmp_path):
    """A workspace with the demo pool, a finished run, a curator and a viewer; the app on it."""
    ws = Workspace(tmp_path / "ws", f"sqlite:///{tmp_path / 'ws' / 'curation.db'}").ensure()
    store = Store(ws.db_url)
    ensure_demo(store)
    run_id = rel.make_done_run(store, "demo", 50, tmp_path)
    users.add_user(ws, "carl", "curator", "carl-password")
    users.add_user(ws, "vera", "viewer", "vera-password", actor=users.Actor("carl", "admin"))
    for url, _ in start_app(tmp_path, CURATION_AUTH="local"):
        yield url, ws, store, run_id


def sign_in(browser, url: str, name: str, password: str):
    """A new browser context (its own cookies and Streamlit session) signed in as `name`."""
    page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_role("heading", name="Sign in").wait_for()
    page.get_by_label("User name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text(f"Signed in as {name}").first.wait_for()
    return page


def test_a_curator_and_a_viewer_at_once(team_app):
    from playwright.sync_api import sync_playwright
    url, ws, store, run_id = team_app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        anon = browser.new_page()
        anon.goto(url)
        anon.get_by_role("heading", name="Sign in").wait_for()  # nothing else before sign-in
        assert anon.get_by_role("link", name="Curate & Export").count() == 0
        anon.get_by_label("User name", exact=True).fill("vera")
        anon.get_by_label("Password", exact=True).fill("wrong-password")
        anon.get_by_role("button", name="Sign in").click()
        anon.get_by_text("wrong user name or password").wait_for()

        carl = sign_in(browser, url, "carl", "carl-password")
        vera = sign_in(browser, url, "vera", "vera-password")

        goto(vera, url, "Explore")  # the viewer reads, and has no pin or export buttons
        vera.get_by_text("1 of 3,000", exact=True).wait_for()
        assert vera.get_by_role("button", name="Pin this example").count() == 0
        goto(vera, url, "Curate & Export")
        vera.get_by_role("heading", name="Export", exact=True).wait_for()
        assert metric_value(vera, "Pinned") == "0"
        assert vera.get_by_role("button", name="Export", exact=True).count() == 0
        assert vera.get_by_role("button", name="Undo last action").count() == 0
        shot(vera, "team_01_viewer_curate")
        viewer = users.get_user(ws, "vera")
        with pytest.raises(CurationError, match="'vera' is a viewer"):  # and the library refuses her anyway
            curate.decide(store, "demo", [1], "pin", "I like it", actor=viewer)

        goto(carl, url, "Explore")  # the curator pins, at the same time
        carl.get_by_text("1 of 3,000", exact=True).wait_for()
        inspect_and_decide(carl, rank=1, action="Pin", reason="carl's gold example")
        goto(carl, url, "Curate & Export")
        carl.get_by_role("button", name="Export", exact=True).click()
        carl.get_by_role("button", name="Download the file").wait_for()
        carl.get_by_text(re.compile(r"Exported by")).first.wait_for()
        shot(carl, "team_02_curator_exported")

        goto(vera, url, "Pool")  # the viewer moves on and comes back: the pin is there
        goto(vera, url, "Curate & Export")
        vera.get_by_role("heading", name="Export", exact=True).wait_for()
        assert metric_value(vera, "Pinned") == "1"
        shot(vera, "team_03_viewer_sees_the_pin")
        browser.close()

    trail = curate.audit(store, "demo")
    assert [(a["author"], a["action"], a["reason"]) for a in trail] == [("carl", "pin", "carl's gold example")]
    import json
    manifest = json.loads(next((ws.exports).glob("*/*.manifest.json")).read_text())
    assert manifest["exported_by"] == "carl" and manifest["overrides"][0]["author"] == "carl"
    assert (ws.home / "logs" / "auth.log").read_text().count("failed sign-in for 'vera'") == 1
