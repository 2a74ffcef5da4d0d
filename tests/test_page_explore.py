"""The Explore page on a seeded synthetic run (Streamlit AppTest): empty, without a map, with a
map, and with the inspector on a chosen example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from curation import explore, maps
from curation.store import Store
from curation.workspace import Workspace
from test_explore import build_synthetic_run

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGE = "pages/explore.py"



@pytest.fixture
def run(ws):
    return build_synthetic_run(Store.open(ws), ws.home / "runs" / "synthetic")


@pytest.fixture(scope="module")
def mapped_dir(tmp_path_factory) -> Path:
    """A computed map for the synthetic run's features, made once for the module (UMAP is slow
    on a shared CPU) and copied into each test's run directory."""
    root = tmp_path_factory.mktemp("mapped")
    ws = Workspace.from_env(root / "ws").ensure()
    r = build_synthetic_run(Store(ws.db_url), root / "run")
    maps.compute_map(r.workdir, seed=0)
    return r.workdir / "map"


def open_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def map_spec(at: AppTest) -> dict:
    """The plotly spec of the map: the chart with a "validation pairs" trace."""
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return next(s for s in specs if any(t.get("name") == "validation pairs" for t in s["data"]))


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_without_runs_points_to_scoring(ws):
    at = open_page()
    assert any("Scoring page" in i.value for i in at.info)


def test_cutoff_slider_and_compute_button(run):
    at = open_page()
    assert metric(at, "Kept") == "6 of 60"
    assert any(b.label.startswith("Compute the map") for b in at.button)
    at.slider[0].set_value(50.0).run()
    assert not at.exception and metric(at, "Kept") == "30 of 60"


def test_map_and_inspector(run, mapped_dir):
    import shutil
    shutil.copytree(mapped_dir, run.workdir / "map")
    assert maps.load_map(run.workdir).example_ids.tolist() == run.example_ids  # same seeded build
    at = open_page()
    assert not any(b.label.startswith("Compute the map") for b in at.button)
    traces = map_spec(at)["data"]
    assert traces[0]["x"]["dtype"] == "f4" and traces[0]["customdata"]["dtype"] == "i4"
    assert traces[-1]["name"] == "validation pairs" and len(traces[-1]["text"]) == 6
    colour = next(s for s in at.selectbox if s.label == "Colour by")
    for option in colour.options:
        colour.set_value(option).run()
        assert not at.exception, [e.value for e in at.exception]
    eid = run.example_ids[17]
    store = Store.open(Workspace.from_env())
    rank = explore.explain(store, run.run_id, eid).rank
    next(n for n in at.number_input if n.label == "Inspect the example at rank").set_value(rank).run()
    assert not at.exception, [e.value for e in at.exception]
    exp = explore.explain(store, run.run_id, eid)
    assert metric(at, "Rank") == f"{exp.rank:,} of 60"
    assert metric(at, "Status") == exp.status
    texts = [t.value for t in at.text]
    assert "question 17 <b>bold</b>" in texts  # shown as text, never as HTML


def test_inspector_pins_and_excludes_the_inspected_example(run):
    at = open_page()
    next(n for n in at.number_input if n.label == "Inspect the example at rank").set_value(2).run()
    next(t for t in at.text_input if t.label == "Reason for this example").set_value("too easy").run()
    next(b for b in at.button if b.label == "Exclude this example").click().run()
    assert not at.exception, [e.value for e in at.exception]
    store = Store.open(Workspace.from_env())
    frame = explore.run_scores_frame(store, run.run_id)
    assert frame.loc[frame["rank"] == 2, "override"].tolist() == ["exclude"]
    assert any("Excluded example at rank 2" in m.value for m in at.success)
