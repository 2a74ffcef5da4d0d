"""Issue 22: nothing silently lost, overwritten or misread: names, uploads, run lists, pool sizes."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from test_curate import conv, seed_run

from curation.data import catalog
from curation.data.imports import import_pool, import_prefs
from curation.data.names import MAX_BYTES, check_name
from curation.data.store import Pool, PreferenceSet, Run, Store
from curation.data.store.models import utcnow
from curation.errors import CurationError
from curation.review.export import dataset_card, export_selection


# --- names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, rule", [
    ("../../x", r"'/' or '\\'"), ("a/b", r"'/' or '\\'"), ("a\\b", r"'/' or '\\'"), ("..", "'.' or '..'"),
    (".", "'.' or '..'"), ("x" * 10_000, "10,000 bytes in UTF-8; at most 100"), ("é" * 51, "102 bytes"),
    ("abc\u202egpj.exe", "bidirectional-text control U\\+202E"), ("a\u2066b", "U\\+2066"), ("a\u200fb", "U\\+200F"),
    ("pool\u200b", "zero-width character U\\+200B"), ("\ufeffpool", "U\\+FEFF"), ("a\nb", "a newline"),
    ("a\tb", "unprintable character U\\+0009 \\(control\\)"), ("a\x1bb", "U\\+001B"), ("   ", "is empty"),
])
def test_check_name_refuses_each_rule_and_says_which(bad, rule):
    with pytest.raises(CurationError, match=f"^pool name .*{rule}"):
        check_name("pool", bad)


def test_check_name_trims_and_accepts_ordinary_names():
    assert check_name("export", "  my set  ") == "my set"  # trailing space trimmed, accepted
    assert check_name("export", "trailing ") == "trailing"
    assert check_name("pool", "Größe v1.2 (draft) 数据") == "Größe v1.2 (draft) 数据"
    assert check_name("pool", "x" * MAX_BYTES) == "x" * MAX_BYTES


def test_pool_and_set_names_are_checked_where_created(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(conv(1)) + "\n")
    with pytest.raises(CurationError, match="^pool name .*newline"):
        import_pool(store, path, name="a\nb")
    with pytest.raises(CurationError, match="^preference set name .*'/'"):
        catalog.create_prefset(store, "../../x")
    with pytest.raises(CurationError, match="^preference set name .*U\\+202E"):
        import_prefs(store, path, name="x\u202ey")
    assert import_pool(store, path, name=" padded ").name == "padded"
    catalog.create_prefset(store, "set ")
    with store.session() as s:
        assert [p.name for p in s.query(Pool)] == ["padded"] and [p.name for p in s.query(PreferenceSet)] == ["set"]


# --- uploads ---------------------------------------------------------------------------------

def test_two_uploads_of_one_name_keep_both_contents(ws, tmp_path):
    """Before: both were written to uploads/pool.jsonl, and an import still reading A's file read B's."""
    a, b = conv(1), conv(2)
    path_a = ws.save_upload("pool.jsonl", (json.dumps(a) + "\n").encode())
    path_b = ws.save_upload("pool.jsonl", (json.dumps(b) + "\n").encode())
    assert path_a != path_b and path_a.name == path_b.name == "pool.jsonl"  # the default pool name stays 'pool'
    assert json.loads(path_a.read_text()) == a and json.loads(path_b.read_text()) == b
    store = Store(ws.db_url)
    assert import_pool(store, path_a, name="A").n_ok == 1 and import_pool(store, path_b, name="B").n_ok == 1
    with store.session() as s:
        got = {name: [e.messages for e in catalog.get_pool(s, name).examples] for name in "AB"}
    assert got == {"A": [a["messages"]], "B": [b["messages"]]}
    assert not [p for p in ws.uploads.rglob("*") if p.name.endswith(".tmp")]


def test_uploads_saved_concurrently_never_mix(ws):
    paths: dict[int, object] = {}

    def save(i: int) -> None:
        paths[i] = ws.save_upload("../same.jsonl", bytes([i]) * 100_000)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.parent.parent == ws.uploads and p.read_bytes() == bytes([i]) * 100_000 for i, p in paths.items())


# --- the run list ----------------------------------------------------------------------------

def test_cli_list_shows_a_killed_run_as_dead(ws, capsys, tmp_path):
    """Before: `list` printed the stored status, so a run whose worker was killed read 'running' forever."""
    from curation.cli import main

    store = Store(ws.db_url)
    run, _ = seed_run(store, tmp_path, [conv(i) for i in range(3)], status="running")
    live, _ = seed_run(store, tmp_path, [conv(i) for i in range(10, 13)], name="q", status="running")
    with store.session() as s:
        s.get(Run, run).heartbeat = utcnow() - timedelta(minutes=10)
        s.get(Run, live).heartbeat = utcnow()
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("#")}
    assert " dead " in lines[f"#{run}"] and " running " in lines[f"#{live}"]


# --- pool sizes ------------------------------------------------------------------------------

def test_export_reports_the_pool_size_the_run_scored(ws, tmp_path):
    """Before: after `import-pool --append` an older run's manifest and card said the new size."""
    store = Store(ws.db_url)
    run, _ = seed_run(store, tmp_path, [conv(i) for i in range(6)], select_n=2)
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps(conv(i)) + "\n" for i in range(100, 104)))
    assert import_pool(store, more, name="p", append=True).n_ok == 4
    res = export_selection(store, run, "messages", ws, name="old-run")
    manifest = json.loads(res.manifest_path.read_text())
    assert manifest["counts"]["pool"] == 6
    assert "p (6 examples)" in dataset_card(manifest)
