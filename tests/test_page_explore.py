"""The Explore page on a seeded synthetic run (Streamlit AppTest): empty, without a map, with a
map, and with the inspector on a chosen example."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from test_explore import EVIDENCE, build_method_run, build_synthetic_run

from curation.data.store import Store
from curation.review import explore, maps
from curation.workspace import Workspace
from pages._shared import md_text

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
PAGE = "pages/explore.py"
# What Streamlit prints when "magic" writes a bare DeltaGenerator expression (st.help of it).
DOCSTRING_TEXT = ("DeltaGenerator", "st.write", "Streamlit API", "delta_generator", "Help on", "st.help")



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


def test_an_auto_run_shows_its_candidates_as_a_table(run, ws):
    from curation.runs.jobs import merge_run_meta
    cands = [{"name": "rose", "accuracy": 0.5, "margin": 0.01, "ci95": [-0.2, 0.3]},
             {"name": "bm25", "accuracy": 0.75, "margin": 0.04, "ci95": [0.01, 0.2]}]
    merge_run_meta(Store.open(ws), run.run_id, auto={"chosen": "bm25", "candidates": cands,
                                                     "why": "bm25 has the highest held-out preference accuracy"})
    at = open_page()
    assert any(c.value.startswith("Auto chose bm25") for c in at.caption)
    frame = next(d.value for d in at.dataframe if "candidate" in d.value.columns)
    assert frame["candidate"].tolist() == ["rose", "bm25"] and frame["chosen"].tolist() == ["", "✓"]
    assert frame["held-out accuracy"].tolist() == [0.5, 0.75]


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


# ---------------------------------------------------------------------------- issue 14: items 1, 2, 4


def bare_expressions(source: str) -> list[str]:
    """Statements Streamlit "magic" would write to the page: an expression on its own line that
    is not a call, a docstring, a yield or an await (`a() if c else b()` is one: a conditional)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        for attr in ("body", "orelse", "finalbody"):
            stmts = getattr(node, attr, None)
            for i, stmt in enumerate(stmts if isinstance(stmts, list) else []):  # IfExp.body is no list
                if not isinstance(stmt, ast.Expr):
                    continue
                value = stmt.value
                docstring = (attr == "body" and i == 0 and isinstance(value, ast.Constant)
                             and isinstance(value.value, str)
                             and isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)))
                if not docstring and not isinstance(value, (ast.Call, ast.Yield, ast.YieldFrom, ast.Await)):
                    out.append(f"line {stmt.lineno}: {ast.unparse(stmt)[:80]}")
    return out


def test_no_page_has_a_bare_expression():
    assert bare_expressions("x = 1\nst.dataframe(a) if c else st.text(b)\n")  # the check sees the bug
    assert not bare_expressions('"""doc"""\nst.text(a)\n_ = st.text(b) if c else None\n')
    pages = sorted((REPO / "pages").glob("*.py")) + [REPO / "app.py"]
    assert len(pages) > 5
    found = {p.name: bare_expressions(p.read_text()) for p in pages}
    assert not any(found.values()), found


def element_texts(at: AppTest) -> list[str]:
    """Every element of the page as protobuf text: markdown, text, captions, tables, charts."""
    out = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in (getattr(node, "children", None) or {}).values():
            walk(child)
    walk(at._tree)
    return out


def chart_titles(at: AppTest) -> list[str]:
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return [(s.get("layout", {}).get("title") or {}).get("text", "") for s in specs]


def test_inspector_opens_for_every_method(ws, run):
    """Issue 14.1: a run of every registered method, each inspected on the page: no exception,
    the method's own label and evidence, and no Streamlit docstring text anywhere."""
    from curation.methods import REGISTRY
    store = Store.open(ws)
    runs = {m: build_method_run(store, run, m, ws) for m in REGISTRY}
    at = open_page()
    for method, run_id in runs.items():
        labels = explore.effective_labels(store, run_id)  # an auto run's are its winner's (BM25 here)
        next(s for s in at.selectbox if s.label == "Run").set_value(run_id).run()
        assert not at.exception, (method, [e.value for e in at.exception])
        assert not at.get("doc_string"), method
        texts = element_texts(at)
        assert not [t for t in DOCSTRING_TEXT if any(t in x for x in texts)], method
        assert metric(at, f"{labels.name} score") and metric(at, "Rank").endswith("of 60")
        shown = [t.value for t in at.text]
        assert f"{labels.name} score: {labels.score}." in shown, method
        titles = chart_titles(at)
        assert ("Mean gradient cosine per subtask" in titles) == labels.gradient, (method, titles)
        if labels.subtask_title:
            assert labels.subtask_title in titles, (method, titles)
        assert not any("cosine" in t for t in titles) or method in ("rose", "less", "contrast", "nice", "repsim")
        bold = [m.value for m in at.markdown]
        for title in EVIDENCE[method]:
            assert f"**{md_text(title)}**" in bold, (method, title, bold)
        if labels.pairs_title:
            assert f"**{md_text(labels.pairs_title)}**" in bold
        assert (f"**{explore.NEIGHBOURS_TITLE}**" in bold) == labels.gradient


def rank_now(at: AppTest) -> int:
    return int(at.number_input(key="inspect_rank").value)


def test_prev_next_and_search_move_the_inspector(run):
    """Issue 14.2: step to the adjacent ranked example, find one by id, uid or words."""
    at = open_page()
    at.button(key="inspect_next").click().run()
    at.button(key="inspect_next").click().run()
    assert rank_now(at) == 3 and metric(at, "Rank") == "3 of 60"
    at.button(key="inspect_prev").click().run()
    assert rank_now(at) == 2
    for _ in range(3):
        at.button(key="inspect_prev").click().run()
    assert rank_now(at) == 1 and not at.exception
    store = Store.open(Workspace.from_env())
    df = explore.run_scores_frame(store, run.run_id)
    rank_of = dict(zip(df["uid"], df["rank"]))
    at.text_input(key="inspect_search").set_value("synthetic-17").run()
    assert rank_now(at) == rank_of["synthetic-17"] and any(t.value.startswith("synthetic-17 · ") for t in at.text)
    at.text_input(key="inspect_search").set_value(str(run.example_ids[5])).run()
    assert rank_now(at) == rank_of["synthetic-5"]
    at.text_input(key="inspect_search").set_value("question 33").run()
    assert rank_now(at) == rank_of["synthetic-33"]
    at.button(key="inspect_next").click().run()
    assert rank_now(at) == rank_of["synthetic-33"] + 1  # the search does not pin the inspector
    at.text_input(key="inspect_search").set_value("synthetic-2").run()
    matches = next(s for s in at.selectbox if "matches, best-ranked first" in s.label)
    assert matches.label.startswith("11 matches") and rank_now(at) == rank_of["synthetic-2"]
    other = matches.options[3]
    matches.set_value(int(other.split()[1].replace(",", ""))).run()
    assert rank_now(at) == int(other.split()[1]) and not at.exception
    at.text_input(key="inspect_search").set_value("no such words").run()
    assert any("No example of this run matches" in w.value for w in at.warning)
    assert not at.exception, [e.value for e in at.exception]


def test_inspector_explains_in_words_next_to_the_pairs(run):
    """Issue 14.2: the driving subtask and checkpoint in words, the most aligned pairs in full
    with their Preferences ids, the neighbours with their text."""
    store = Store.open(Workspace.from_env())
    at = open_page()
    exp = explore.explain(store, run.run_id, explore.run_scores_frame(store, run.run_id)["example_id"].iloc[0])
    shown = [t.value for t in at.text]
    for sentence in exp.reasons:
        assert sentence in shown
    assert any(s.startswith("Driven mostly by subtask") for s in shown)
    assert any(s.startswith("Checkpoint ") and "% of the score" in s for s in shown)
    captions = [c.value for c in at.caption]
    from curation.data import catalog
    ids = {p["id"]: p for p in catalog.get_pairs(store, run.pool)}
    for pair in exp.val_pairs:
        assert md_text(explore.pair_heading(pair, exp.labels)) in captions
        assert pair.pair_id in ids and {ids[pair.pair_id]["prompt"], pair.chosen, pair.rejected} <= set(shown)
    table = next(d.value for d in at.dataframe if "response" in d.value.columns)
    assert table["prompt"].str.startswith("question ").all() and table["response"].str.startswith("answer ").all()
    assert metric(at, "ROSE score") == explore.people(exp.score)


def fake_map(run) -> maps.MapData:
    """A saved map of the synthetic run without UMAP: a seeded layout is enough for selections."""
    rng = np.random.default_rng(0)
    data = maps.MapData(rng.normal(size=(60, 2)).astype(np.float32), np.asarray(run.example_ids, np.int64),
                        rng.normal(size=(6, 2)).astype(np.float32), np.ones(60, bool),
                        {"seed": 0, "n": 60, "n_fit": 60, "method": "test layout"})
    maps.save_map(run.workdir, data)
    return data


def test_map_selection_previews_before_bulk_actions(run):
    """Issue 14.4: a box on the map first shows what it holds (counts, a table), and its rows
    open the inspector; then Exclude acts on every example inside it."""
    data = fake_map(run)
    at = open_page()
    spec = map_spec(at)
    stars = spec["data"][-1]
    assert stars["mode"] == "markers+text" and stars["text"] == ["alpha"] * 3 + ["beta"] * 3
    assert all(h.startswith("pair id ") for h in stars["hovertext"])
    points = [t for t in spec["data"][:-1] if t.get("type") == "scattergl"]
    assert points and all(h.startswith("rank ") for t in points for h in t["hovertext"])
    assert spec["layout"]["legend"]["orientation"] == "h"
    assert not any(b.key and b.key.startswith("bulk_") for b in at.button)
    box = {"x": [-0.5, 1.0], "y": [-1.0, 0.8]}
    inside = data.example_ids[(data.xy[:, 0] >= -0.5) & (data.xy[:, 0] <= 1.0)
                              & (data.xy[:, 1] >= -1.0) & (data.xy[:, 1] <= 0.8)]
    assert 3 < len(inside) < 60
    at.session_state["map"] = {"selection": {"points": [], "point_indices": [], "box": [box], "lasso": []}}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(i.value.startswith(f"{len(inside)} examples in the map selection") for i in at.info)
    preview = next(d.value for d in at.dataframe if d.proto.id.endswith("-map_preview"))
    assert sorted(preview["example_id"]) == sorted(inside.tolist())
    assert preview["rank"].tolist() == sorted(preview["rank"])
    pin, exclude = at.button(key="bulk_pin"), at.button(key="bulk_exclude")
    assert pin.label == f"Pin all {len(inside)} in the selection" and exclude.label.startswith("Exclude all")
    at.session_state["map_preview"] = {"selection": {"rows": [2], "columns": []}}
    at.run()
    assert rank_now(at) == int(preview["rank"].iloc[2])
    one = int(inside[0])
    at.session_state["map"] = {"selection": {"points": [{"customdata": [one]}], "box": [], "lasso": []}}
    at.run()  # a clicked point opens in the inspector
    assert rank_now(at) == explore.rank_of(explore.run_scores_frame(Store.open(Workspace.from_env()), run.run_id), one)
    at.session_state["map"] = {"selection": {"points": [], "point_indices": [], "box": [box], "lasso": []}}
    at.run()
    at.text_input(key="bulk_reason").set_value("off topic").run()
    at.button(key="bulk_exclude").click().run()
    assert not at.exception, [e.value for e in at.exception]
    frame = explore.run_scores_frame(Store.open(Workspace.from_env()), run.run_id)
    assert sorted(frame.loc[frame["override"] == "exclude", "example_id"]) == sorted(inside.tolist())


def test_the_kept_table_shows_each_prompt(run, ws):
    """Issue 22: the kept table had ids, scores and sources but no prompt."""
    at = open_page()
    table = next(d for d in at.dataframe if "state" in d.value.columns)
    assert list(table.proto.column_order[:3]) == ["rank", "score", "prompt"]
    first = table.value.iloc[0]
    assert first["prompt"] and first["prompt"] == explore.prompt_excerpts(Store.open(ws), [first["example_id"]], 100)[0]


def _as_auto(store: Store, run_id: int, workdir: Path, record: dict) -> None:
    """The run re-labelled as an auto run that chose ``record["name"]`` (its files are the winner's),
    scored with an earlier version of its pairs (so the page offers a re-score)."""
    from curation.data.store import Run
    from curation.methods.auto import AUTO_FILE
    (workdir / AUTO_FILE).write_text(json.dumps(record))
    with store.session() as s:
        r = s.get(Run, run_id)
        r.method = "auto"
        r.meta = {**(r.meta or {}), "pairs_sha256": "an earlier version",
                  "auto": {"judged": True, "chosen": record["name"], "candidates": [], "why": "forced"}}


def test_an_auto_run_explores_as_the_method_it_chose(ws, run):
    """Its winner's labels, map section, neighbours and re-score button; a BM25 choice: none of them."""
    store = Store.open(ws)
    _as_auto(store, run.run_id, run.workdir, {"name": "rose", "parts": {"gradient": "contrast"}, "alpha": 1.0})
    bm25 = build_method_run(store, run, "auto", ws)  # an auto run whose winner is BM25 (the newest: shown first)
    _as_auto(store, bm25, run.workdir.parent / f"{run.workdir.name}-auto", {"name": "bm25", "parts": {"bm25": "bm25"}})
    at = open_page()
    assert any("BM25 scores are not built from gradient features" in i.value for i in at.info)
    assert metric(at, "BM25 score") and f"**{explore.NEIGHBOURS_TITLE}**" not in [m.value for m in at.markdown]
    button = next(b for b in at.button if b.label == "Re-score with the current pairs")
    assert button.disabled and "auto chose bm25" in button.help

    picker = next(s for s in at.selectbox if s.label == "Run")
    assert any(o.startswith(f"#{run.run_id} auto: rose") for o in picker.options)
    picker.set_value(run.run_id).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(c.value.startswith("Auto chose rose") for c in at.caption)
    assert not any("no map" in i.value for i in at.info)
    assert any(b.label == "Compute the map (in the background)" for b in at.button)
    assert metric(at, "ROSE score") and f"**{explore.NEIGHBOURS_TITLE}**" in [m.value for m in at.markdown]
    assert not next(b for b in at.button if b.label == "Re-score with the current pairs").disabled
