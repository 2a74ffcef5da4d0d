"""The whole curation loop in a real browser: Debian's Chromium driven by Playwright.

Starts `streamlit run app.py` on a free localhost port over a fresh workspace, then, as a
new user would: load the demo, launch a scoring run, wait for it, pin one example and
exclude another in Explore, export on Curate & Export, and check the file and manifest.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                       reason="Debian chromium is not installed (apt-get install chromium); CI installs it"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path):
    port = free_port()
    env = {**os.environ, "CURATION_HOME": str(tmp_path / "ws")}
    env.pop("CURATION_DB_URL", None)
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    yield url, tmp_path / "ws"
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        pg = browser.new_page(viewport={"width": 1500, "height": 1100})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def goto(page, url: str, title: str) -> None:
    """Open a page from the sidebar navigation, as a user would, and wait for its title."""
    page.get_by_role("link", name=title, exact=True).first.click()
    page.get_by_role("heading", name=title).first.wait_for()


def test_whole_loop_in_the_browser(app_url, page, micro_model):
    url, ws = app_url
    page.goto(url)
    page.get_by_role("heading", name="Pool").first.wait_for()
    page.get_by_role("button", name="Load the demo pool and preference set").click()
    page.get_by_text("Matching examples").first.wait_for()
    page.get_by_text("3,000").first.wait_for()

    goto(page, url, "Scoring")
    page.get_by_label("Model", exact=True).click()
    page.get_by_role("option", name="other path or id…").click()
    page.get_by_label("Local HF model folder (or a hub id with downloads allowed)").fill(str(micro_model))
    page.get_by_label("Local HF model folder (or a hub id with downloads allowed)").press("Enter")
    page.get_by_role("button", name="Launch in the background").click()
    page.get_by_text(re.compile(r"Run #1 launched")).wait_for()
    page.get_by_text(re.compile(r"150 selected")).wait_for(timeout=600_000)

    goto(page, url, "Explore")
    inspect_and_decide(page, rank=1, action="Pin", reason="great arithmetic example")
    inspect_and_decide(page, rank=2, action="Exclude", reason="duplicate style")

    goto(page, url, "Curate & Export")
    page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_role("button", name="Download the file").wait_for()

    files = sorted((ws / "exports").glob("*.jsonl"))
    assert len(files) == 1
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    manifest = json.loads(next((ws / "exports").glob("*.manifest.json")).read_text())
    import hashlib
    assert manifest["file_sha256"] == hashlib.sha256(files[0].read_bytes()).hexdigest()
    actions = {o["action"]: o["reason"] for o in manifest["overrides"]}
    assert actions == {"pin": "great arithmetic example", "exclude": "duplicate style"}
    assert len(rows) == 150


def inspect_and_decide(page, rank: int, action: str, reason: str) -> None:
    """Open the example at `rank` in the inspector and pin or exclude it with a reason."""
    box = page.get_by_label("Inspect the example at rank", exact=True)
    box.fill(str(rank))
    box.press("Enter")
    page.get_by_text(f"{rank:,} of 3,000", exact=True).wait_for()  # the inspector shows that example
    page.get_by_label("Reason for this example", exact=True).fill(reason)
    page.get_by_role("button", name=f"{action} this example").click()
    done = "Pinned" if action == "Pin" else "Excluded"
    page.get_by_text(f"{done} example at rank {rank}.").wait_for()
