"""The whole curation loop in a real browser: Debian's Chromium driven by Playwright.

Starts `streamlit run app.py` on a free localhost port over a fresh workspace, then, as a
new user would: load the demo, launch a scoring run, wait for it, pin one example and
exclude another in Explore, export on Curate & Export, and check the file and manifest.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                       reason="Debian chromium is not installed (apt-get install chromium); CI installs it"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path):
    yield from start_app(tmp_path)


def start_app(tmp_path, **extra_env):
    """`streamlit run app.py` on a free port over ``tmp_path/ws`` (SQLite unless ``extra_env``
    says otherwise); yields (url, workspace folder), stops it afterwards."""
    port = free_port()
    env = {**os.environ, "CURATION_HOME": str(tmp_path / "ws")}
    env.pop("CURATION_DB_URL", None)
    env.pop("CURATION_AUTH", None)
    env.update(extra_env)
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


MAP_PREVIEW = r"examples in the map selection"  # the preview's info box on Explore
ARTIFACTS = REPO / "test-artifacts" / "browser"  # kept after the run (CI artefacts; git-ignored)
DOCSTRING_MARKS = ("DeltaGenerator", "st.write(", "streamlit.delta_generator", "Streamlit API")


def shot(page, name: str, at=None) -> None:
    """A screenshot of this step (scrolled to ``at``, a locator, when given), kept as a test
    artefact. Streamlit scrolls inside its main container, so the viewport is what is shown."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if at is not None:
        at.first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def choose(page, label: str, option: str | re.Pattern) -> None:
    """Pick an option of a Streamlit selectbox, as a user does: open it, click the option. A
    rerun that lands while the list is open closes it, so open it again (up to 4 times)."""
    for attempt in range(4):
        page.get_by_label(label, exact=True).first.click()
        wanted = page.get_by_role("option", name=option).first
        try:
            wanted.wait_for(timeout=15_000)
            wanted.click(timeout=15_000)
            return
        except Exception:
            if attempt == 3:
                raise
            page.keyboard.press("Escape")
            time.sleep(1)


def no_api_docs(page) -> None:
    """Streamlit "magic" once printed its own API documentation on Explore: never again."""
    text = page.inner_text("body")
    assert not [m for m in DOCSTRING_MARKS if m in text], [m for m in DOCSTRING_MARKS if m in text]


def test_whole_loop_in_the_browser(app_url, page, micro_model, tmp_path):
    """import prefs -> add a pair with the form -> score (ROSE and BM25) -> Explore inspector for
    both -> budget on Explore -> map, box-select preview -> Curate shows that budget -> export."""
    url, ws = app_url
    page.goto(url)
    page.get_by_role("heading", name="Pool").first.wait_for()
    page.get_by_role("button", name="Load the demo pool and preference set").click()
    page.get_by_text("Matching examples").first.wait_for()
    page.get_by_text("3,000").first.wait_for()
    shot(page, "01_pool")

    goto(page, url, "Preferences")  # import a set from a file, then add a pair with the form
    page.get_by_text("Import or create a preference set").first.click()
    page.locator("input[type=file]").first.set_input_files(str(REPO / "data" / "demo_prefs.jsonl"))
    page.get_by_text("demo_prefs.jsonl", exact=True).first.wait_for()  # uploaded before Import
    page.get_by_role("textbox", name="Name (default: file name)", exact=True).fill("walk")
    page.get_by_role("button", name="Import", exact=True).click()
    page.get_by_text(re.compile(r"preference set 'walk': imported; 10 ok")).first.wait_for()
    shot(page, "02_prefs_imported")
    choose(page, "Preference set", "walk")
    page.get_by_text(re.compile(r"^10 pairs in")).first.wait_for()
    page.get_by_role("textbox", name="Prompt", exact=True).fill("A crate holds 12 apples. How many apples are in 3 crates?")
    page.get_by_role("textbox", name="Chosen (the better response)", exact=True).fill(
        "12 * 3 = 36, so the answer is 36.")
    page.get_by_role("textbox", name="Rejected (the worse response)", exact=True).fill("Apples are red.")
    page.get_by_role("button", name="Save pair", exact=True).click()
    page.get_by_text(re.compile(r"Added pair #\d+ to subtask")).first.wait_for()
    page.get_by_text(re.compile(r"^11 pairs in")).first.wait_for()
    shot(page, "03_pair_added", page.get_by_text(re.compile(r"Added pair #")))

    goto(page, url, "Scoring")
    page.get_by_label("Model", exact=True).click()
    page.get_by_role("option", name="other path or id…").click()
    page.get_by_label("Local HF model folder (or a hub id with downloads allowed)").fill(str(micro_model))
    page.get_by_label("Local HF model folder (or a hub id with downloads allowed)").press("Enter")
    for n, method in enumerate(("rose", "bm25"), start=1):
        choose(page, "Preference set", "walk")
        choose(page, "Method", method)
        page.get_by_role("button", name="Launch in the background").click()
        page.get_by_text(re.compile(rf"Run #{n} launched")).wait_for()
    shot(page, "04_scoring_launched")
    page.get_by_text(re.compile(r"150 selected")).nth(1).wait_for(timeout=600_000)  # both runs done
    shot(page, "05_scoring_done")

    goto(page, url, "Explore")  # the BM25 run first: its own evidence, no API docs
    choose(page, "Run", re.compile(r"#2 bm25"))
    page.get_by_text("BM25 score", exact=True).first.wait_for()
    no_api_docs(page)
    shot(page, "06_explore_bm25_inspector", page.get_by_text("BM25 score", exact=True))
    choose(page, "Run", re.compile(r"#1 rose"))
    page.get_by_text("1 of 3,000", exact=True).wait_for()
    no_api_docs(page)
    shot(page, "07_explore_rose_inspector", page.get_by_text("ROSE score", exact=True))
    inspect_and_decide(page, rank=1, action="Pin", reason="great arithmetic example")
    inspect_and_decide(page, rank=2, action="Exclude", reason="duplicate style")

    page.get_by_text("count", exact=True).first.click()  # the run's budget, set here, shared
    budget = page.get_by_role("spinbutton", name="Number of examples", exact=True)
    budget.fill("200")
    budget.press("Enter")
    page.get_by_text("200 of 3,000", exact=True).first.wait_for()
    shot(page, "08_explore_budget")

    page.get_by_role("button", name="Compute the map (in the background)").click()
    page.get_by_text(re.compile(r"stars are the validation pairs")).wait_for(timeout=300_000)
    plot = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="validation pairs").first
    plot.scroll_into_view_if_needed()
    lasso(page, plot)
    page.get_by_text(re.compile(MAP_PREVIEW)).first.wait_for()
    no_api_docs(page)
    assert page.get_by_role("button", name=re.compile(r"^Pin all [\d,]+ in the selection$")).count() == 1
    shot(page, "09_map_preview", page.get_by_text("Map selection: preview"))

    goto(page, url, "Curate & Export")
    page.get_by_text(re.compile(r"top 200")).first.wait_for()
    assert metric_value(page, "Selected") == "200"
    page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_role("button", name="Download the file").wait_for()
    shot(page, "10_exported", page.get_by_role("button", name="Download the file"))

    files = sorted((ws / "exports").glob("*/*.jsonl"))  # one folder per export
    assert len(files) == 1
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    manifest = json.loads(next((ws / "exports").glob("*/*.manifest.json")).read_text())
    import hashlib
    assert manifest["file_sha256"] == hashlib.sha256(files[0].read_bytes()).hexdigest()
    actions = {o["action"]: o["reason"] for o in manifest["overrides"]}
    assert actions == {"pin": "great arithmetic example", "exclude": "duplicate style"}
    assert len(rows) == 200 and manifest["budget"]["n"] == 200 and manifest["run"]["method"] == "rose"
    assert manifest["preference_set"] == "walk" and manifest["preference_pairs"]["n"] == 11


def lasso(page, plot) -> None:
    """Draw a lasso (the map's default drag mode) around the middle of the map."""
    area = plot.locator(".nsewdrag").first.bounding_box()
    cx, cy = area["x"] + area["width"] / 2, area["y"] + area["height"] / 2
    rx, ry = area["width"] * 0.3, area["height"] * 0.3
    path = [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24)]
    page.mouse.move(*path[0])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(x, y, steps=2)
    page.mouse.up()


def metric_value(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


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
