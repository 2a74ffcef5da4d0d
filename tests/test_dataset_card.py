"""The export's dataset card (issue 14, item 7): the manifest as a summary people read, in a file
beside the export and on the Curate page (the raw JSON folded away)."""

from __future__ import annotations

import json

import pytest
from markdown_it import MarkdownIt
from test_app import run_page
from test_curate import conv, seed_run
from test_page_curate import PAGE, ok

from curation.data.store import Store
from curation.review import curate
from curation.review.export import dataset_card, export_selection
from curation.runs.jobs import merge_run_meta
from curation.workspace import Workspace

HOSTILE = "<img src=x onerror=alert(1)> ![x](http://127.0.0.1:9/leak.png) | pipe"
PAIRS = [{"subtask": "math", "prompt": "p"}, {"subtask": "math", "prompt": "q"}, {"subtask": HOSTILE, "prompt": "r"}]


@pytest.fixture
def exported(tmp_path):
    ws = Workspace.from_env(tmp_path / "ws").ensure()
    store = Store(ws.db_url)
    run, ids = seed_run(store, tmp_path, [conv(i) for i in range(10)], select_n=3)
    merge_run_meta(store, run, pairs=PAIRS, check={"label": "better than random", "finished": "2026-12-02 01:00",
                                                   "verdict": "Better than random on 8 held-out pairs"})
    curate.decide(store, "p", [ids[7]], "pin", HOSTILE, author="ann")
    curate.decide(store, "p", [ids[0]], "exclude", "leaks the test set")
    return run, export_selection(store, run, "messages", ws, name="cur")


def table(card: str) -> dict[str, str]:
    """The card's summary table as {row: text as shown} (markdown rendered, tags stripped)."""
    html = MarkdownIt("commonmark").enable("table").render(card)
    rows = html.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    cells = [[c.split(">", 1)[1].split("</td")[0] for c in r.split("<td")[1:]] for r in rows]
    return {k: v for k, v in cells}


def test_the_card_sums_up_the_export(exported):
    run, res = exported
    manifest = json.loads(res.manifest_path.read_text())
    card = res.card_path.read_text()
    assert res.card_path.name == manifest["card"] == "cur.card.md" and manifest["file"] == "cur.jsonl"
    assert card == dataset_card(manifest) and card.startswith("# Dataset card: cur\n")
    rows = table(card)
    assert rows["Method"] == f"rose (run #{run})" and rows["Model"] == "tiny"
    assert rows["Pool"] == "p (10 examples)"
    assert rows["Preference pairs"] == ("set 'prefs': 3 pairs in 2 subtask(s) (math: 2, "
                                        "&lt;img src=x onerror=alert(1)&gt; ![x](http://127.0.0.1:9/leak.png) | pipe: 1)")
    assert rows["Budget"] == "top 3 examples"
    assert rows["Overrides"] == "1 pinned, 1 excluded; vs the automatic selection +1 added, −1 removed"
    assert rows["Exported"] == "3 examples: 2 chosen automatically, 1 pinned"
    assert rows["Held-out check"] == "Better than random on 8 held-out pairs (2026-12-02 01:00)"
    assert rows["Format"] == "TRL conversational (messages)"
    assert rows["File"] == f"cur.jsonl, sha256 {res.sha256[:16]}…"
    assert rows["Trainer"].startswith("trl: datasets.load_dataset(")


def test_user_data_on_the_card_is_text(exported):
    _, res = exported
    html = MarkdownIt("commonmark").enable("table").render(res.card_path.read_text())
    assert "<img" not in html and "<a " not in html
    assert "<td>pin</td>" in html and "<td>ann</td>" in html  # the overrides table, one row each, pipe kept in its cell
    assert html.count("<tr>") == 1 + 12 + 1 + 2  # header and 12 rows (one: who exported); header and 2 overrides


def test_a_card_without_pairs_check_or_percent():
    manifest = {"run": {"id": 4, "method": "random", "model": None, "meta": {}}, "pool": "p", "format": "original",
                "preference_set": None, "preference_pairs": {"n": 0}, "budget": {"percent": 2.5, "n": None},
                "counts": {"pool": 400, "budget": 10, "auto": 10, "pinned": 0, "excluded": 0, "added": 0,
                           "removed": 0, "exported": 10},
                "scope": "filter", "file_sha256": "ab" * 32, "tool_version": "0.1.0", "created": "2026-12-02T01:02:03"}
    rows = table(dataset_card(manifest))
    assert rows["Preference pairs"] == "none (this method does not use preference pairs)"
    assert rows["Budget"] == "top 2.5% of the pool = 10 examples"
    assert rows["Exported"] == "10 examples: exactly the examples a filter showed"
    assert rows["Held-out check"].startswith("not run")
    assert "Trainer" not in rows and rows["Model"] == "not recorded"


def test_the_curate_page_shows_the_card_and_folds_the_json(ws, tmp_path):
    store = Store.open(ws)
    seed_run(store, tmp_path, [conv(i) for i in range(12)], select_n=4)
    at = run_page(PAGE)
    ok(next(b for b in at.button if b.label == "Export").click().run())
    (card,) = [m.value for m in at.markdown if m.value.startswith("# Dataset card")]
    assert "| Exported | 4 examples" in card
    (folded,) = [e for e in at.expander if e.label.startswith("Manifest (JSON")]
    assert folded.proto.expanded is False and folded.json
    assert any(c.value.replace("\\", "").endswith(".card.md") for c in at.caption)


def test_a_model_free_run_s_card_says_no_model_was_used(tmp_path):
    """Issue 22: a BM25 run's card said "Model: tiny" (the form's default model, in its config)."""
    from curation.bench.reliability import make_pool
    from curation.config import ScoreConfig, SelectConfig
    from curation.runs.execute import create_run, execute_run
    ws = Workspace.from_env(tmp_path / "ws").ensure()
    store = Store(ws.db_url)
    make_pool(store, tmp_path, 8, name="b")
    cfg = ScoreConfig(method="random")
    cfg.select = SelectConfig(percent=None, n=3)
    run = create_run(store, "b", None, cfg, ws=ws)
    execute_run(store, run, ws=ws)
    res = export_selection(store, run, "messages", ws, name="free")
    assert cfg.model.name_or_path == "tiny"  # what the config still says
    manifest = json.loads(res.manifest_path.read_text())
    assert manifest["run"]["model"] is None and manifest["run"]["uses_model"] is False
    assert table(res.card_path.read_text())["Model"] == "none (this method uses no model)"
