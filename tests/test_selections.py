"""A run's saved selection (issue 14, item 5): one named budget that Explore, Curate, export,
check and the CLI share, validated when saved and warned about when it exceeds the pool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_app import run_page
from test_curate import conv, seed_run

from curation.data.store import Store
from curation.errors import CurationError
from curation.review import curate
from curation.review.export import export_selection
from curation.runs import selections


@pytest.fixture
def seeded(ws, tmp_path) -> tuple[Store, int, list[int]]:
    store = Store.open(ws)
    run, ids = seed_run(store, tmp_path, [conv(i) for i in range(20)], select_n=4)
    return store, run, ids


def test_without_a_saved_selection_the_scoring_budget_applies(seeded):
    store, run, _ = seeded
    saved = selections.saved_selection(store, run)
    assert (saved.percent, saved.n, saved.saved) == (None, 4, False)
    assert saved.name == f"run {run} top 4" and saved.label() == "top 4"
    assert curate.curated_selection(store, run).n_selected == 4


def test_a_saved_selection_is_what_curate_export_and_check_use(seeded, ws):
    store, run, ids = seeded
    curate.decide(store, "p", [ids[-1]], "pin", "keep the last")
    saved = selections.save_selection(store, run, percent=25, name="quarter")
    assert saved.saved and saved.label() == "top 25%"
    assert curate.run_budget(store, run) == (25.0, None)
    sel = curate.curated_selection(store, run)
    assert (sel.budget, sel.n_selected, sel.name) == (5, 5, "quarter")
    assert ids[-1] in sel.selected_ids and sel.selected_ids[-1] != ids[4]  # the pin took a place
    res = export_selection(store, run, "original", ws)
    manifest = json.loads(res.manifest_path.read_text())
    assert res.n == 5 and manifest["budget"] == {"percent": 25.0, "n": None, "selection": "quarter"}
    assert "saved selection 'quarter'" in res.path.with_name(res.path.stem + ".card.md").read_text()
    # an explicit budget still wins, and is not recorded as the named selection
    explicit = curate.curated_selection(store, run, n=2)
    assert explicit.n_selected == 2 and explicit.name is None
    # saving again replaces it, keeping the other metadata
    selections.save_selection(store, run, n=3)
    assert selections.saved_selection(store, run).name == f"run {run} top 3"
    assert curate.curated_selection(store, run).n_selected == 3


@pytest.mark.parametrize("kw, words", [(dict(percent=0), "percent"), (dict(percent=150), "percent"),
                                       (dict(n=0), "at least 1"), (dict(), "exactly one"),
                                       (dict(percent=5, n=3), "exactly one"), (dict(n=3, name="x" * 200), "120")])
def test_a_bad_budget_is_refused_and_nothing_changes(seeded, kw, words):
    store, run, _ = seeded
    selections.save_selection(store, run, n=6, name="six")
    with pytest.raises(CurationError, match=words):
        selections.save_selection(store, run, **kw)
    assert selections.saved_selection(store, run).budget() == (None, 6)


def test_a_budget_above_the_pool_is_kept_whole_and_said_so(seeded):
    store, run, _ = seeded
    selections.save_selection(store, run, n=10_000_000)
    sel = curate.curated_selection(store, run)
    assert sel.n_selected == 20
    assert "10,000,000" in sel.warning and "20" in sel.warning
    assert selections.budget_warning(100.0, None, 20).startswith("A budget of 100%")
    assert selections.budget_warning(None, 20, 20) is None and selections.budget_warning(5.0, None, 20) is None


def test_cli_shows_and_saves_the_selection(seeded, ws):
    store, run, _ = seeded
    env = {"CURATION_HOME": str(ws.home), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "curation", "selection", str(run)]
    out = subprocess.run(cmd + ["--n", "50000", "--name", "big"], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("big: top 50,000 -> 20 of 20 examples") and "warning: The budget asks" in out.stderr
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    assert "big: top 50,000" in out.stdout
    assert selections.saved_selection(store, run).n == 50_000


def test_the_budget_set_on_explore_is_the_one_curate_shows(ws, tmp_path):
    from test_explore import build_synthetic_run
    store = Store.open(ws)
    r = build_synthetic_run(store, ws.home / "runs" / "synthetic")
    at = run_page("pages/explore.py")
    assert next(m.value for m in at.metric if m.label == "Kept") == "6 of 60"
    at.slider[0].set_value(50.0).run()
    assert not at.exception and next(m.value for m in at.metric if m.label == "Kept") == "30 of 60"
    assert selections.saved_selection(store, r.run_id).budget() == (50.0, None)
    at = run_page("pages/curate.py", at)  # a new visit: not reset to the run's 10%
    assert next(m.value for m in at.metric if m.label == "Selected") == "30"
    by = next(w for w in at.radio if w.label == "Budget by")
    by.set_value("count").run()
    next(w for w in at.number_input if w.label == "Number of examples").set_value(10_000_000).run()
    assert not at.exception
    assert next(m.value for m in at.metric if m.label == "Selected") == "60"
    assert any("10,000,000" in w.value for w in at.warning)
    at = run_page("pages/explore.py", at)
    assert next(m.value for m in at.metric if m.label == "Kept") == "60 of 60"
