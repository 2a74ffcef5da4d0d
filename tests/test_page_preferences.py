"""The Preferences page (issue 14, items 3 and 7): the table refuses partial rows, the form adds one
checked pair, the reader shows a pair side by side as text, a set that runs use is archived."""

from __future__ import annotations

import json

import pytest
from markdown_it import MarkdownIt
from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.testing.v1 import AppTest
from test_app import run_page
from test_pairs import _run_with

from curation.data import catalog
from curation.data.pairs import PairDraft
from curation.data.store import Store

PAGE = "pages/preferences.py"
SCRIPT = "<script>alert(1)</script> **really** <b>good</b>"


@pytest.fixture
def store(ws) -> Store:
    store = Store.open(ws)
    catalog.create_prefset(store, "s")
    catalog.add_pair(store, "s", PairDraft("math", "What is 3+5?", "3 + 5 = 8.", "Eight hundred, roughly."))
    catalog.add_pair(store, "s", PairDraft("html", "Show a tag.", SCRIPT, "No."), accept_warnings=True)
    return store


def open_page(page: str = PAGE) -> AppTest:
    return run_page(page)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def shown(elements) -> list[str]:
    """Element bodies as the user reads them (without md_text's backslashes)."""
    return [e.value.replace("\\", "") for e in elements]


def header(at: AppTest) -> str:
    return next(m.value for m in at.markdown if " pairs**" in m.value)


def test_the_form_adds_a_pair_and_the_count_updates(store):
    at = open_page()
    assert header(at).startswith("**2 pairs** in **2 subtasks**")
    next(t for t in at.text_input if t.label == "…or a new subtask name").set_value("geography")
    next(t for t in at.text_area if t.label == "Prompt").set_value("What is the capital of France?")
    next(t for t in at.text_area if t.label == "Chosen (the better response)").set_value("Paris.")
    next(t for t in at.text_area if t.label == "Rejected (the worse response)").set_value("Lyon, the largest city.")
    ok(button(at, "Save pair").click().run())
    (pair,) = [p for p in catalog.get_pairs(store, "s") if p["subtask"] == "geography"]
    assert f"Added pair #{pair['id']} to subtask 'geography'." in shown(at.success)
    assert header(at).startswith("**3 pairs** in **3 subtasks**")
    assert next(t for t in at.text_area if t.label == "Prompt").value == ""  # a fresh form for the next pair
    assert at.number_input(key="reader_s").value == pair["id"]  # the reader shows the new pair


def test_the_form_shows_problems_before_saving_and_warnings_need_a_tick(store):
    at = open_page()
    prompt = next(t for t in at.text_area if t.label == "Prompt")
    prompt.set_value("What is 3+5?")
    ok(button(at, "Check").click().run())
    assert shown(at.error) == ["Chosen is empty (every pair needs it)", "Rejected is empty (every pair needs it)"]
    next(t for t in at.text_area if t.label == "Chosen (the better response)").set_value("It is 8.")
    next(t for t in at.text_area if t.label == "Rejected (the worse response)").set_value("It is 9.")
    ok(button(at, "Save pair").click().run())
    assert not at.error and len(catalog.get_pairs(store, "s")) == 2  # warnings only: not saved yet
    assert [w.split(" ")[:4] for w in shown(at.warning)] == [["Prompt", "is", "also", "the"],  # same prompt
                                                              ["Rejected", "is", "88%", "alike"]]
    assert any("tick 'Save despite the warnings'" in i for i in shown(at.info))
    next(c for c in at.checkbox if c.label == "Save despite the warnings").check()
    ok(button(at, "Save pair").click().run())  # a form sends its widgets with the submit
    assert len(catalog.get_pairs(store, "s")) == 3


def editor_state(at: AppTest, added_rows: list[dict], click: str) -> AppTest:
    """What the browser sends when rows were added to the table and a button was pressed."""
    button(at, click).click()
    states = WidgetStates()
    states.CopyFrom(at._tree.get_widget_states())
    state = states.widgets.add()
    state.id = at.data_editor[0].proto.id
    state.string_value = json.dumps({"edited_rows": {}, "added_rows": added_rows, "deleted_rows": []})
    return ok(at._run(states))


def test_the_table_sends_partial_rows_and_shows_no_none(store):
    """A `required` column would make the browser hold back a partial new row (it was then
    "Saved: 0 added"); missing values show as blank, not "None" (a new row's id)."""
    proto = open_page().data_editor[0].proto
    assert not any(c.get("required") for c in json.loads(proto.columns).values())
    assert proto.placeholder == ""


def test_a_partial_row_is_refused_with_row_and_field_and_nothing_is_saved(store):
    at = open_page()
    before = catalog.get_pairs(store, "s")
    editor_state(at, [{"subtask": "math", "prompt": "What is 1+1?"}], "Save changes")
    assert shown(at.error) == ["row 3: pair fields 'chosen' and 'rejected' are empty (a new row). Nothing was saved"]
    assert not at.success
    assert catalog.get_pairs(store, "s") == before


def test_a_complete_new_row_is_saved_and_the_count_updates(store):
    at = open_page()
    editor_state(at, [{"subtask": "math", "prompt": "What is 1+1?", "chosen": "2.", "rejected": "11, if you "
                       "write the ones side by side."}], "Save changes")
    assert shown(at.success) == ["Saved: 1 added, 0 updated, 0 deleted."]
    assert header(at).startswith("**3 pairs**")
    assert at.data_editor[0].value["id"].notna().all()  # the new editor shows the stored row with its id


def test_the_reader_shows_html_as_text_and_steps_through_pairs(store):
    first, second = (p["id"] for p in catalog.get_pairs(store, "s"))
    catalog.add_pair(store, "s", PairDraft("math", "What is 4+4?", "8.", "44, side by side."))
    gone = catalog.add_pair(store, "s", PairDraft("math", "What is 5+5?", "10.", "55, side by side."))
    last = catalog.add_pair(store, "s", PairDraft("math", "What is 6+6?", "12.", "66, side by side."))
    catalog.save_pairs(store, "s", [p for p in catalog.get_pairs(store, "s") if p["id"] != gone])
    at = open_page()
    assert any(f"Pair #{first} (1 of 4) · subtask math" in c for c in shown(at.caption))
    assert button(at, "Previous pair").disabled
    ok(button(at, "Next pair").click().run())
    assert any(f"Pair #{second} (2 of 4) · subtask html" in c for c in shown(at.caption))
    bodies = [m.value for m in at.markdown]
    (chosen,) = [b for b in bodies if "script" in b]
    assert chosen == "\\<script\\>alert(1)\\</script\\> **really** \\<b\\>good\\</b\\>"  # escaped, **bold** kept
    html = MarkdownIt("commonmark").render(chosen)
    assert "<script" not in html and "<b>" not in html and "&lt;script&gt;" in html and "<strong>" in html
    ok(next(t for t in at.toggle if t.label.startswith("Show the text exactly")).set_value(True).run())
    assert SCRIPT in [c.value for c in at.code]
    ok(button(at, "Previous pair").click().run())
    assert at.number_input(key="reader_s").value == first
    ok(at.number_input(key="reader_s").set_value(gone).run())
    assert any(f"no pair #{gone} in this set" in e for e in shown(at.error))
    ok(button(at, "Next pair").click().run())  # from the gap to the next pair
    assert at.number_input(key="reader_s").value == last and button(at, "Next pair").disabled


def test_a_set_that_runs_use_is_archived_and_its_runs_keep_the_name(store):
    run = _run_with(store, "s")
    at = open_page()
    ok(button(at, "Delete this set").click().run())
    assert any(f"cannot be deleted: 1 run(s) use it: #{run} rose." in e for e in shown(at.error))
    assert not any(b.label == "Yes, delete" for b in at.button)
    ok(button(at, "Archive this set").click().run())
    assert any("Archived 's'" in s for s in shown(at.success))
    assert "No preference set yet." in at.info[0].value  # hidden from the default listing
    assert [r["prefs"] for r in catalog.list_runs(store)] == ["s"]
    ok(next(c for c in at.checkbox if c.label == "Show archived sets").check().run())
    assert next(s for s in at.selectbox if s.label == "Preference set").options == ["s (archived)"]
    assert any(f"'s' is archived: hidden from Scoring and from the default listing; its runs (#{run} rose) keep"
               in i for i in shown(at.info))
    scoring = open_page("pages/scoring.py")
    assert "s" not in next(s for s in scoring.selectbox if s.label == "Preference set").options
    ok(button(at, "Unarchive").click().run())
    assert [p["name"] for p in catalog.list_prefsets(store)] == ["s"]


def test_a_set_without_runs_is_deleted_after_the_confirm(store):
    at = open_page()
    ok(button(at, "Delete this set").click().run())
    assert any("No run uses it" in w.value for w in at.warning)
    ok(button(at, "Yes, delete").click().run())
    assert catalog.list_prefsets(store, archived=True) == []


def test_the_page_says_how_many_more_pairs_each_subtask_needs_for_a_verdict(store):
    at = ok(open_page())  # math 1 pair, html 1 pair: neither can be tested; 3 held-out needed
    line = next(c for c in shown(at.caption) if c.startswith("Check and auto"))
    assert "Too few pairs for a verdict: 0 pairs would be held out" in line
    assert "to 'html'" in line and "to 'math'" in line


def test_the_label_contrast_warning_stays(store):
    for i in (1, 2):
        catalog.add_pair(store, "s", PairDraft("math", f"What is {i}+{i}?", f"It is {2 * i}.", f"It is {2 * i + 1}."),
                         accept_warnings=True)
    at = open_page()
    assert any("2 of 4 pairs have a chosen and a rejected answer that differ only in a detail" in w
               for w in shown(at.warning))


def test_the_import_form_offers_every_format_and_reads_pairwise_judgements(ws):
    import re
    import shutil
    from pathlib import Path

    from curation.data.io import PREF_FORMATS
    f = ws.home / "data" / "judged.json"  # server paths must be inside a data root
    shutil.copy(Path(__file__).parent / "fixtures" / "io" / "prefs_pairwise.json", f)
    at = open_page()
    assert next(s for s in at.selectbox if s.label == "Format").options == ["auto", *PREF_FORMATS]
    next(t for t in at.text_input if t.label == "Server path").set_value(str(f))
    next(b for b in at.button if b.label == "Import").click().run()
    ok(at)
    assert any("'judged': imported; 3 ok, 0 bad, 0 duplicates skipped, 3 ties skipped"
               in re.sub(r"\\(.)", r"\1", s.value) for s in at.success)
