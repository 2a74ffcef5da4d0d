"""The Curate & Export page on a seeded run (no model): metrics, table edits, undo, bulk, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.testing.v1 import AppTest
from test_curate import conv, seed_run

from curation.data.store import Store
from curation.review import curate

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGE = "pages/curate.py"



@pytest.fixture
def seeded(ws, tmp_path) -> tuple[Store, int, list[int]]:
    store = Store.open(ws)
    run, ids = seed_run(store, tmp_path, [conv(i) for i in range(12)], select_n=4)
    return store, run, ids


def open_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(PAGE)
    return ok(at.run())


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def edit_table(at: AppTest, edited_rows: dict) -> AppTest:
    """What the browser sends when cells change: the editor's JSON state, firing its on_change."""
    editor = at.data_editor[0]
    states = WidgetStates()
    states.CopyFrom(at._tree.get_widget_states())
    state = states.widgets.add()
    state.id = editor.proto.id
    state.string_value = json.dumps({"edited_rows": edited_rows, "added_rows": [], "deleted_rows": []})
    return ok(at._run(states))


def test_without_a_finished_run_points_to_scoring(ws):
    at = open_page()
    assert "Scoring page" in at.info[0].value


def test_edit_in_the_table_then_undo(seeded):
    store, run, ids = seeded
    at = open_page()
    assert metrics(at) == {"Selected": "4", "Pinned": "0", "Excluded": "0", "vs automatic": "+0 / −0"}
    at.radio[1].set_value("pool").run()  # show the whole pool, in rank order
    assert at.data_editor[0].value["id"].tolist() == ids
    at.text_input(key="curate_reason").set_value("off topic").run()
    edit_table(at, {"0": {"exclude": True}, "6": {"pin": True}})
    assert curate.current_overrides(store, "p") == {ids[0]: "exclude", ids[6]: "pin"}
    assert metrics(at) == {"Selected": "4", "Pinned": "1", "Excluded": "1", "vs automatic": "+1 / −1"}
    assert at.success[0].value == "Saved."
    assert curate.audit(store, "p")[0]["reason"] == "off topic"
    table = at.data_editor[0].value.set_index("id")
    assert table.loc[ids[0], "exclude"] and table.loc[ids[6], "pin"] and not table.loc[ids[1], "pin"]
    ok(next(b for b in at.button if b.label == "Undo last action").click().run())
    assert curate.current_overrides(store, "p") == {}
    assert metrics(at)["vs automatic"] == "+0 / −0" and "Undid" in at.success[0].value
    assert len(curate.audit(store, "p")) == 2  # the undo is recorded too


def test_edit_without_a_reason_is_refused(seeded):
    store, _, _ = seeded
    at = open_page()
    edit_table(at, {"1": {"pin": True}})
    assert "reason" in at.error[0].value and curate.current_overrides(store, "p") == {}


def test_bulk_action_on_all_matches_then_export(seeded):
    store, run, ids = seeded
    at = open_page()
    at.text_input(key="curate_reason").set_value("animals").run()
    search(at).set_value("zebra").run()
    button = next(b for b in at.button if b.label.startswith("Exclude all"))
    assert button.label == "Exclude all 4 matching"
    ok(button.click().run())
    assert sorted(curate.current_overrides(store, "p")) == [ids[0], ids[3], ids[6], ids[9]]
    assert metrics(at)["Excluded"] == "4"
    search(at).set_value("").run()
    ok(next(b for b in at.button if b.label == "Export").click().run())
    assert at.get("download_button") and "Exported 4 examples" in at.success[0].value
    (path,) = ws_exports(store).glob("*/*.jsonl")  # one folder per export
    assert [json.loads(line)["messages"][1]["content"] for line in path.read_text().splitlines()] == [
        "Answer 1.", "Answer 2.", "Answer 4.", "Answer 5."]


def search(at: AppTest):
    return next(t for t in at.text_input if t.label == "Search")


def ws_exports(store: Store) -> Path:
    return Path(store.url.removeprefix("sqlite:///")).parent / "exports"


def export_button(at: AppTest):
    return next(b for b in at.button if b.label == "Export")


def test_the_export_panel_follows_the_run_and_asks_before_overwriting(seeded, tmp_path):
    """Before: after switching run the panel still showed the previous run's result, card and
    download and kept its name, and exporting under an existing name replaced it silently."""
    store, run, _ = seeded
    other, _ = seed_run(store, tmp_path, [conv(i) for i in range(20, 26)], name="q", select_n=2)
    at = open_page()
    ok(at.selectbox[0].set_value(run).run())
    ok(next(t for t in at.text_input if t.label.startswith("Name")).set_value("mine").run())
    assert not any(c.label.startswith("Overwrite") for c in at.checkbox)
    ok(export_button(at).click().run())
    assert at.get("download_button") and "mine\\.jsonl" in at.success[0].value  # escaped Markdown
    first = (ws_exports(store) / "mine" / "mine.jsonl").read_bytes()
    ok(at.selectbox[0].set_value(other).run())  # another run: nothing of run 1's export shows
    assert not at.get("download_button") and not any("Exported" in s.value for s in at.success)
    assert next(t for t in at.text_input if t.label.startswith("Name")).value == ""
    ok(next(t for t in at.text_input if t.label.startswith("Name")).set_value("mine").run())
    overwrite = next(c for c in at.checkbox if c.label.startswith("Overwrite"))
    assert "mine" in overwrite.label and export_button(at).disabled  # asked before replacing
    assert (ws_exports(store) / "mine" / "mine.jsonl").read_bytes() == first
    ok(overwrite.check().run())
    ok(export_button(at).click().run())
    assert "Exported 2 examples" in next(s.value for s in at.success if "Exported" in s.value)
    assert (ws_exports(store) / "mine" / "mine.jsonl").read_bytes() != first
    ok(at.selectbox[0].set_value(run).run())  # back on run 1: its export was replaced by run 2's: not shown
    assert not at.get("download_button") and not any("Exported" in s.value for s in at.success)


def test_a_check_that_found_no_gain_warns_and_gates_the_export(seeded):
    from curation.runs.jobs import merge_run_meta
    store, run, ids = seeded
    merge_run_meta(store, run, check={"label": "no better than random", "finished": "2026-12-02 01:00:00",
                                      "verdict": "No better than random: on 4 held-out pairs ...", "flags": 2,
                                      "accuracy": 0.5, "random_accuracy": 0.5, "ci95": [-1, 1]})
    at = open_page()
    assert any("No better than random" in w.value and "2 selected examples" in w.value for w in at.warning)
    export = next(b for b in at.button if b.label == "Export")
    assert export.disabled
    gate = next(c for c in at.checkbox if c.label.startswith("Export anyway"))
    ok(gate.check().run())
    ok(next(b for b in at.button if b.label == "Export").click().run())
    assert any("Exported" in s.value for s in at.success)


def test_a_check_of_another_budget_says_so(seeded):
    """A verdict tested the top N; once the saved selection keeps another number, the panel says
    the check is for another budget (and nothing when they match)."""
    from curation.runs import selections
    from curation.runs.jobs import merge_run_meta
    store, run, ids = seeded
    merge_run_meta(store, run, check={"label": "better than random", "finished": "2026-12-02 01:00:00",
                                      "verdict": "Better than random: ...", "flags": 0, "accuracy": 0.9,
                                      "random_accuracy": 0.5, "ci95": [0.1, 0.5], "budget": 4, "pool_size": 12})
    at = open_page()
    assert not any("tested the top" in c.value for c in at.caption)
    selections.save_selection(store, run, n=6)
    at = open_page()
    assert any("tested the top 4; the saved selection now keeps 6" in c.value for c in at.caption)
