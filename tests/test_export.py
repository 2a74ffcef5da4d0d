"""Exports: each format parsed back, the manifest, atomic writes, exact-id exports and errors."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
from sqlalchemy import select
from test_curate import conv, seed_run

from curation.data.store import Export, Store
from curation.errors import CurationError
from curation.review import curate, export
from curation.review.export import export_selection
from curation.workspace import Workspace

ALPACA = [{"instruction": "Translate to French", "input": "good morning", "output": "bonjour", "id": "a1"},
          {"instruction": "Say hi", "output": "hi", "system": "Be brief.", "id": "a2"},
          {"instruction": "Count to two", "input": "", "output": "one, two", "id": "a3", "extra": [1, {"k": None}]}]
MULTI = [{"messages": [{"role": "system", "content": "You are terse."},
                       {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                       {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                       {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]},
         conv(1)]


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.from_env(tmp_path / "ws").ensure()


@pytest.fixture
def store(ws) -> Store:
    return Store(ws.db_url)


def listing(folder) -> list[str]:
    """Every path under `folder`, hidden ones too, relative to it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_original_format_is_the_imported_records(store, ws, tmp_path):
    run, ids = seed_run(store, tmp_path, ALPACA, select_n=3)
    res = export_selection(store, run, "original", ws)
    assert res.n == 3 and read_jsonl(res.path) == ALPACA  # rank order = import order here
    assert res.path.parent.parent == ws.exports and res.path.name == f"{res.path.parent.name}.jsonl"  # its own folder


def test_messages_and_alpaca_formats(store, ws, tmp_path):
    run, ids = seed_run(store, tmp_path, ALPACA, select_n=3)
    msgs = read_jsonl(export_selection(store, run, "messages", ws).path)
    assert msgs[0] == {"messages": [{"role": "user", "content": "Translate to French\n\ngood morning"},
                                    {"role": "assistant", "content": "bonjour"}]}
    assert msgs[1]["messages"][0] == {"role": "system", "content": "Be brief."}
    alpaca = read_jsonl(export_selection(store, run, "alpaca", ws).path)
    assert alpaca == [{"instruction": "Translate to French", "input": "good morning", "output": "bonjour"},
                      {"instruction": "Say hi", "input": "", "output": "hi", "system": "Be brief."},
                      {"instruction": "Count to two", "input": "", "output": "one, two"}]


def test_alpaca_multi_turn_goes_to_history(store, ws, tmp_path):
    run, _ = seed_run(store, tmp_path, MULTI, select_n=2)
    first, second = read_jsonl(export_selection(store, run, "alpaca", ws).path)
    assert first == {"instruction": "And 3+3?", "input": "", "output": "6", "system": "You are terse.",
                     "history": [["Hi", "Hello."], ["2+2?", "4"]]}
    assert "history" not in second and second["instruction"] == "Question 1 about a plain?"


def test_manifest_describes_the_export(store, ws, tmp_path):
    run, ids = seed_run(store, tmp_path, [conv(i) for i in range(10)], select_n=3)
    curate.decide(store, "p", [ids[7]], "pin", "gold example", author="ann")
    curate.decide(store, "p", [ids[0]], "exclude", "leaks the test set")
    res = export_selection(store, run, "messages", ws, name="cur")
    data = res.path.read_bytes()
    manifest = json.loads(res.manifest_path.read_text())
    assert res.manifest_path.name == "cur.manifest.json"
    assert manifest["file_sha256"] == res.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest["counts"] == {"pool": 10, "budget": 3, "auto": 2, "pinned": 1, "excluded": 1,
                                  "automatic_selection": 3, "added": 1, "removed": 1, "exported": 3}
    assert [(e["rank"], e["selected_by"]) for e in manifest["examples"]] == [(2, "auto"), (3, "auto"), (8, "pin")]
    assert manifest["examples"][0]["score"] == 9.0
    assert [(o["action"], o["reason"], o["author"]) for o in manifest["overrides"]] == [
        ("pin", "gold example", "ann"), ("exclude", "leaks the test set", "curator")]
    assert manifest["run"]["id"] == run and manifest["run"]["seeds"] == {"warmup": 3, "projection": 7}
    assert manifest["run"]["projector"]["kind"] == "sparse_jl" and manifest["run"]["model"] == {"name_or_path": "tiny"}
    assert (manifest["pool"], manifest["preference_set"], manifest["tool_version"]) == ("p", "prefs", "0.1.0")
    with store.session() as s:
        row = s.scalar(select(Export))
        assert (row.path, row.fmt, row.n_examples, row.file_sha256) == (str(res.path), "messages", 3, res.sha256)
        assert row.manifest_sha256 == hashlib.sha256(res.manifest_path.read_bytes()).hexdigest()


def test_export_exactly_given_ids_in_rank_order(store, ws, tmp_path):
    run, ids = seed_run(store, tmp_path, [conv(i) for i in range(10)], select_n=3)
    curate.decide(store, "p", [ids[9]], "pin", "keep")
    res = export_selection(store, run, "original", ws, example_ids=[ids[9], ids[6], ids[0], ids[6]])
    assert read_jsonl(res.path) == [conv(0), conv(6), conv(9)]
    manifest = json.loads(res.manifest_path.read_text())
    assert [e["selected_by"] for e in manifest["examples"]] == ["auto", "filter", "pin"]
    assert manifest["scope"] == "filter" and manifest["counts"]["exported"] == 3
    _, other = seed_run(store, tmp_path, [conv(i) for i in range(50, 53)], name="q")
    with pytest.raises(CurationError, match="not scored by run"):
        export_selection(store, run, "original", ws, example_ids=[ids[0], other[0]])


def test_failure_midway_leaves_the_previous_export_untouched(store, ws, tmp_path, monkeypatch):
    run, ids = seed_run(store, tmp_path, [conv(i) for i in range(10)], select_n=6)
    first = export_selection(store, run, "messages", ws, name="same")
    before = (first.path.read_bytes(), first.manifest_path.read_bytes(), first.card_path.read_bytes())
    monkeypatch.setattr("curation.review.export.BATCH", 2)
    calls = []

    def exploding(example):
        calls.append(example.id)
        if len(calls) == 4:
            raise OSError("disk full")
        return {"messages": example.messages}

    monkeypatch.setitem(export.RENDER, "messages", exploding)
    with pytest.raises(OSError, match="disk full"):
        export_selection(store, run, "messages", ws, name="same", overwrite=True)
    assert (first.path.read_bytes(), first.manifest_path.read_bytes(), first.card_path.read_bytes()) == before
    files = ["same", "same/same.card.md", "same/same.jsonl", "same/same.manifest.json"]
    assert listing(ws.exports) == files  # no temp left
    monkeypatch.setitem(export.RENDER, "messages", lambda e: {"messages": e.messages})
    monkeypatch.setattr("curation.review.export.build_manifest", lambda *a, **k: 1 / 0)  # fails after the rows
    with pytest.raises(ZeroDivisionError):
        export_selection(store, run, "messages", ws, name="same", overwrite=True)
    assert (first.path.read_bytes(), first.manifest_path.read_bytes(), first.card_path.read_bytes()) == before
    assert listing(ws.exports) == files
    with store.session() as s:
        assert len(s.scalars(select(Export)).all()) == 1


def test_an_existing_export_is_replaced_only_when_asked(store, ws, tmp_path):
    run, _ = seed_run(store, tmp_path, [conv(i) for i in range(10)], select_n=6)
    first = export_selection(store, run, "messages", ws, name="same")
    before = first.path.read_bytes()
    with pytest.raises(CurationError, match=r"export named 'same' already exists .*exports/same.*--overwrite"):
        export_selection(store, run, "original", ws, name="same")
    assert first.path.read_bytes() == before and export.existing_export(ws, "same") == ws.exports / "same"
    second = export_selection(store, run, "alpaca", ws, name=" same ", overwrite=True)  # trimmed: the same name
    assert second.path == first.path and second.path.read_bytes() != before
    assert json.loads(second.manifest_path.read_text())["format"] == "alpaca"
    assert listing(ws.exports) == ["same", "same/dataset_info.json", "same/same.card.md", "same/same.jsonl",
                                   "same/same.manifest.json"]  # nothing left of the first


def consistent(res) -> bool:
    """The manifest describes the data file beside it: its sha256 and its row count."""
    manifest, data = json.loads(res.manifest_path.read_text()), res.path.read_bytes()
    return (manifest["file_sha256"] == hashlib.sha256(data).hexdigest()
            and manifest["counts"]["exported"] == len(data.splitlines()) == len(manifest["examples"]))


@pytest.mark.parametrize("step", ["card", "manifest", "swap"])
def test_a_kill_while_publishing_keeps_the_previous_export_whole(store, ws, tmp_path, monkeypatch, step):
    """Before: files were renamed one by one, so a failure between renames left the new data
    beside the old manifest. Now the export is one folder renamed into place."""
    run, ids = seed_run(store, tmp_path, [conv(i) for i in range(10)], select_n=6)
    first = export_selection(store, run, "alpaca", ws, name="same")
    before = {p: p.read_bytes() for p in (ws.exports / "same").iterdir()}
    curate.decide(store, "p", ids[:2], "exclude", "changes the data")
    real_write, real_rename = export._write_file, os.rename

    def write(path, data):
        if path.name.endswith({"card": ".card.md", "manifest": ".manifest.json"}.get(step, "-")):
            raise KeyboardInterrupt("killed")
        return real_write(path, data)

    def rename(src, dst):
        if step == "swap" and str(src).endswith(".tmp"):  # the old export is already aside
            raise KeyboardInterrupt("killed")
        return real_rename(src, dst)

    monkeypatch.setattr(export, "_write_file", write)
    monkeypatch.setattr(export.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        export_selection(store, run, "alpaca", ws, name="same", overwrite=True)
    assert {p: p.read_bytes() for p in (ws.exports / "same").iterdir()} == before and consistent(first)
    assert listing(ws.exports) == sorted(["same", *(f"same/{p.name}" for p in before)])  # no temp left


def test_the_next_export_cleans_up_after_a_real_kill(store, ws, tmp_path):
    """A kill leaves what no `finally` removes: a half-written hidden folder, an old-style temp
    file, and (killed between the swap's two renames) the previous export moved aside."""
    run, _ = seed_run(store, tmp_path, [conv(i) for i in range(10)], select_n=6)
    first = export_selection(store, run, "messages", ws, name="kept")
    export_selection(store, run, "messages", ws, name="done")
    before = first.path.read_bytes()
    os.rename(ws.exports / "kept", ws.exports / ".kept.0123abcd.old")  # killed mid-swap: no 'kept' now
    (ws.exports / ".kept.x1y2.tmp").mkdir()
    (ws.exports / ".kept.x1y2.tmp" / "kept.jsonl").write_text("half")
    (ws.exports / ".old.jsonl.abc.tmp").write_text("half")
    os.rename(ws.exports / "done", ws.exports / ".done.4567.old")  # killed after the swap: a new 'done' is in place
    export_selection(store, run, "messages", ws, name="done", overwrite=True)
    export_selection(store, run, "original", ws, name="other")
    assert first.path.read_bytes() == before and consistent(first)
    assert sorted(p.name for p in ws.exports.iterdir()) == ["done", "kept", "other"]


@pytest.mark.parametrize("bad, rule", [("../escape", "'/'"), ("a" * 10_000, "at most 100"),
                                       ("x\u202ey", "U\\+202E"), ("a\nb", "newline"),
                                       (".x.tmp", "may not start with '.'")])
def test_bad_export_names_fail_before_anything_is_written(store, ws, tmp_path, bad, rule):
    """Before: a 10,000-character name crashed with ENAMETOOLONG after the rows were written."""
    run, _ = seed_run(store, tmp_path, [conv(i) for i in range(4)], select_n=2)
    with pytest.raises(CurationError, match=f"export name .*{rule}"):
        export_selection(store, run, "original", ws, name=bad)
    assert listing(ws.exports) == []


def test_export_errors(store, ws, tmp_path):
    run, ids = seed_run(store, tmp_path, [conv(i) for i in range(4)], select_n=2)
    with pytest.raises(CurationError, match="unknown export format"):
        export_selection(store, run, "csv", ws)
    with pytest.raises(CurationError, match="selection is empty"):
        export_selection(store, run, "original", ws, example_ids=[])
    with pytest.raises(CurationError, match="export name"):
        export_selection(store, run, "original", ws, name="../escape")
    pending, _ = seed_run(store, tmp_path, [conv(i) for i in range(20, 24)], name="q", status="queued")
    with pytest.raises(CurationError, match="not done"):
        export_selection(store, pending, "original", ws)
    curate.decide(store, "p", ids, "exclude", "all bad")
    with pytest.raises(CurationError, match="selection is empty"):
        export_selection(store, run, "original", ws)
    assert list(ws.exports.iterdir()) == []


# --- formats for trainers ----------------------------------------------------------------------

def test_trl_prompt_completion_splits_at_the_last_answer(store, ws, tmp_path):
    run, _ = seed_run(store, tmp_path, MULTI, select_n=2)
    res = export_selection(store, run, "prompt_completion", ws)
    rows = read_jsonl(res.path)
    assert all(set(r) == {"prompt", "completion"} for r in rows)
    first = rows[0]
    assert first["completion"] == [{"role": "assistant", "content": "6"}]
    assert first["prompt"][-1] == {"role": "user", "content": "And 3+3?"} and len(first["prompt"]) == 6
    assert [r["prompt"] + r["completion"] for r in rows] == [MULTI[0]["messages"], conv(1)["messages"]]  # round trip
    assert json.loads(res.manifest_path.read_text())["trainer"]["trainer"] == "trl" and res.side_paths == []


def sharegpt_to_messages(row: dict) -> list[dict]:
    """How LLaMA-Factory reads a sharegpt row under the default tags (written independently of export)."""
    roles = {"human": "user", "gpt": "assistant"}
    system = [{"role": "system", "content": row["system"]}] if row["system"] else []
    return system + [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]


def test_llamafactory_sharegpt_with_dataset_info(store, ws, tmp_path):
    run, _ = seed_run(store, tmp_path, MULTI, select_n=2)
    res = export_selection(store, run, "sharegpt", ws, name="lf")
    rows = read_jsonl(res.path)
    assert all(set(r) == {"conversations", "system"} for r in rows)
    assert [t["from"] for t in rows[0]["conversations"]] == ["human", "gpt"] * 3  # strictly alternating
    assert [sharegpt_to_messages(r) for r in rows] == [MULTI[0]["messages"], conv(1)["messages"]]
    info = json.loads((ws.exports / "lf" / "dataset_info.json").read_text())
    entry = info["lf"]
    assert (ws.exports / "lf" / entry["file_name"]) == res.path and entry["formatting"] == "sharegpt"
    assert set(entry["columns"].values()) <= set(rows[0])
    assert entry["tags"]["user_tag"] == "human" and entry["tags"]["assistant_tag"] == "gpt"
    assert res.side_paths == [ws.exports / "lf" / "dataset_info.json"]
    manifest = json.loads(res.manifest_path.read_text())
    assert manifest["trainer"]["dataset"] == "lf" and manifest["trainer"]["dataset_dir"] == str((ws.exports / "lf").resolve())


def test_llamafactory_alpaca_entry_names_only_present_columns(store, ws, tmp_path):
    run, _ = seed_run(store, tmp_path, ALPACA, select_n=3)
    export_selection(store, run, "alpaca", ws, name="one")
    other, _ = seed_run(store, tmp_path, MULTI, select_n=2, name="q")
    export_selection(store, other, "alpaca", ws, name="two")
    info = {n: json.loads((ws.exports / n / "dataset_info.json").read_text())[n] for n in ("one", "two")}
    assert info["one"]["columns"] == {"prompt": "instruction", "query": "input", "response": "output",
                                      "system": "system"}  # no row has history: naming it would fail
    assert info["two"]["columns"]["history"] == "history" and info["two"]["file_name"] == "two.jsonl"
    (row,) = [r for r in read_jsonl(ws.exports / "one" / "one.jsonl") if r["input"]]
    assert (row["instruction"], row["input"], row["output"]) == ("Translate to French", "good morning", "bonjour")


def test_axolotl_chat_template_and_its_datasets_entry(store, ws, tmp_path):
    import yaml

    run, _ = seed_run(store, tmp_path, MULTI, select_n=2)
    res = export_selection(store, run, "axolotl", ws, name="ax")
    rows = read_jsonl(res.path)
    entry, = json.loads(res.manifest_path.read_text())["trainer"]["datasets"]
    assert entry["type"] == "chat_template" and entry["ds_type"] == "json" and entry["path"] == str(res.path.resolve())
    assert [r[entry["field_messages"]] for r in rows] == [MULTI[0]["messages"], conv(1)["messages"]]
    maps = entry["message_property_mappings"]
    assert all(set(maps.values()) <= set(m) for r in rows for m in r["messages"])
    assert yaml.safe_load((ws.exports / "ax" / "ax.axolotl.yml").read_text()) == {"datasets": [entry]}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o640)])
def test_exported_files_are_group_readable(store, ws, tmp_path, umask, mode):
    run, _ = seed_run(store, tmp_path, MULTI, select_n=2)
    old = os.umask(umask)
    try:
        export_selection(store, run, "sharegpt", ws, name="g")
        export_selection(store, run, "axolotl", ws, name="h")
    finally:
        os.umask(old)
    files = sorted(p for p in ws.exports.rglob("*") if p.is_file())
    assert {p.name for p in files} == {"g.jsonl", "g.manifest.json", "dataset_info.json", "g.card.md",
                                       "h.jsonl", "h.manifest.json", "h.axolotl.yml", "h.card.md"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}
    folder_mode = mode | (mode & 0o444) >> 2  # searchable wherever readable
    assert {stat.S_IMODE((ws.exports / n).stat().st_mode) for n in "gh"} == {folder_mode}


def test_cli_offers_every_format():
    from curation.cli import make_parser

    for fmt in export.FORMATS:
        assert make_parser().parse_args(["export", "1", "--format", fmt]).format == fmt
    assert set(export.FORMAT_LABELS) == set(export.FORMATS) == set(export.RENDER)


def test_cli_export_needs_overwrite_to_replace(store, ws, tmp_path, monkeypatch, capsys):
    from curation.cli import main

    monkeypatch.setenv("CURATION_HOME", str(ws.home))
    monkeypatch.delenv("CURATION_DB_URL", raising=False)
    run, _ = seed_run(store, tmp_path, [conv(i) for i in range(4)], select_n=2)
    assert main(["export", str(run), "--name", "cli"]) == 0
    before = (ws.exports / "cli" / "cli.jsonl").read_bytes()
    assert main(["export", str(run), "--name", "cli", "--format", "messages"]) == 2
    assert "export named 'cli' already exists" in capsys.readouterr().err
    assert (ws.exports / "cli" / "cli.jsonl").read_bytes() == before
    assert main(["export", str(run), "--name", "cli", "--format", "messages", "--overwrite"]) == 0
    assert json.loads((ws.exports / "cli" / "cli.manifest.json").read_text())["format"] == "messages"
