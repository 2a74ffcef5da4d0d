"""Every page runs without exceptions, empty and on the demo (Streamlit AppTest)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from curation.data.demo import ensure_demo
from curation.data.imports import import_pool
from curation.data.store import Store

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = ["pages/pool.py", "pages/preferences.py", "pages/scoring.py", "pages/explore.py", "pages/compare.py",
         "pages/curate.py"]



def run_page(page: str, at: AppTest | None = None) -> AppTest:
    """Open `page` as the sidebar does: in a new session, or in ``at``'s (session state kept)."""
    fresh = at is None
    if fresh:
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
    if page != PAGES[0] or not fresh:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_on_empty_workspace(ws, page):
    run_page(page)


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_on_demo(ws, page):
    ensure_demo(Store.open(ws))
    run_page(page)


def test_pool_page_searches_and_counts(ws):
    ensure_demo(Store.open(ws))
    at = run_page("pages/pool.py")
    total = int(at.metric[0].value.replace(",", ""))
    assert total > 1000
    at.text_input[-1].set_value("capital").run()  # the search box comes after the import form's fields
    hits = int(at.metric[0].value.replace(",", ""))
    assert 0 < hits < total
    assert not at.exception


def test_preferences_page_shows_demo_pairs(ws):
    ensure_demo(Store.open(ws))
    at = run_page("pages/preferences.py")
    assert any("pairs" in m.value and "subtasks" in m.value for m in at.markdown)


def test_pool_page_imports_a_server_path_and_reports_bad_lines(ws, tmp_path):
    f = ws.home / "data" / "mine.jsonl"  # server paths must be inside a data root
    f.write_text('{"instruction": "Say hi", "output": "hi"}\n{"instruction": "", "output": "x"}\n')
    at = run_page("pages/pool.py")
    next(t for t in at.text_input if t.label == "Server path").set_value(str(f))
    next(b for b in at.button if b.label == "Import").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("pool 'mine': imported; 1 ok, 1 bad" in re.sub(r"\\(.)", r"\1", s.value) for s in at.warning)
    assert not at.success  # half the file was bad: no green banner


def test_pool_page_stays_on_the_chosen_pool_after_an_import(ws, tmp_path):
    store = Store.open(ws)
    ensure_demo(store)
    data = ws.home / "data"
    (data / "zeta.jsonl").write_text('{"instruction": "Say hi", "output": "hi"}\n')
    (data / "mine.jsonl").write_text('{"instruction": "Say bye", "output": "bye"}\n')
    import_pool(store, data / "zeta.jsonl")
    at = run_page("pages/pool.py")
    pool_box = lambda: next(s for s in at.selectbox if s.label == "Pool")  # noqa: E731
    assert pool_box().value == "demo"
    pool_box().set_value("zeta").run()
    next(t for t in at.text_input if t.label == "Server path").set_value(str(data / "mine.jsonl"))
    next(b for b in at.button if b.label == "Import").click().run()
    assert any("pool 'mine': imported; 1 ok" in re.sub(r"\\(.)", r"\1", s.value) for s in at.success)
    at.run()  # the next rerun lists the new pool: the selector used to jump back to "demo" here
    assert not at.exception, [e.value for e in at.exception]
    assert "mine" in pool_box().options and pool_box().value == "zeta"
