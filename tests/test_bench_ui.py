"""`bench ui` (quick): every page runs on a seeded big-pool workspace; timings are reported, not asserted."""

from __future__ import annotations

from curation.bench.ui import PAGES, run_ui


def test_quick_ui_bench_times_every_page_without_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("CURATION_HOME", str(tmp_path))  # run_ui points it at its own temp workspace
    res = run_ui(600, repeats=1, log=lambda m: None)
    assert res["n"] == 600 and set(res["pages"]) == set(PAGES)
    for page, t in res["pages"].items():
        assert t["errors"] == [], page
        assert t["cold_s"] > 0 and t["warm_s"] > 0
