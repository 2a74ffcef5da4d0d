"""Importing pools and preference sets into the store: counts, duplicates, bad input, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from curation.data import catalog
from curation.data.imports import import_pool, import_prefs
from curation.data.store import Example, ImportReport, Pool, Store
from curation.errors import CurationError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'c.db'}")


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def conv(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                         {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]}


def test_import_pool_counts_and_search(store, tmp_path):
    f = write_jsonl(tmp_path / "math.jsonl", [conv(i) for i in range(30)] + [{"messages": [
        {"role": "user", "content": "Name a zebra colour"}, {"role": "assistant", "content": "black"}]}])
    res = import_pool(store, f)
    assert (res.status, res.n_ok, res.n_bad, res.n_duplicate) == ("imported", 31, 0, 0)
    (row,) = catalog.list_pools(store)
    assert (row["name"], row["examples"], row["sources"]) == ("math", 31, 1)
    hits = catalog.page_examples(store, "math", f=catalog.ExampleFilter(search="zebra"))
    assert [h["response"] for h in hits] == ["black"]
    assert catalog.count_examples(store, "math", catalog.ExampleFilter(search='plus" (')) == 30  # FTS syntax is quoted away


def test_duplicates_are_reported_and_skipped(store, tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [conv(1), conv(2), conv(1), conv(3), conv(2)])
    res = import_pool(store, f)
    assert (res.n_ok, res.n_duplicate, res.duplicate_lines) == (3, 2, [3, 5])


def test_bad_lines_default_imports_good_and_keeps_report(store, tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [conv(1), "{not json", {"messages": "oops"}, conv(2)])
    res = import_pool(store, f)
    assert (res.status, res.n_ok, res.n_bad) == ("imported", 2, 2)
    assert [p.line for p in res.problems] == [2, 3]
    with store.session() as s:
        rep = s.get(ImportReport, res.report_id)
        assert rep.status == "imported" and [p["line"] for p in rep.problems] == [2, 3]
        assert all(p["path"] == str(f) for p in rep.problems)


def test_strict_imports_nothing_but_lists_every_bad_line(store, tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [conv(1), "{not json", conv(2), {"messages": []}])
    res = import_pool(store, f, strict=True)
    assert (res.status, res.n_ok, res.n_bad) == ("rejected", 0, 2)
    with store.session() as s:
        assert s.scalar(select(func.count(Pool.id))) == 0
        assert s.scalar(select(func.count(Example.id))) == 0
        assert s.get(ImportReport, res.report_id).status == "rejected"


def test_failure_midway_leaves_no_pool(store, tmp_path, monkeypatch):
    monkeypatch.setattr("curation.data.imports.BATCH", 5)
    f = write_jsonl(tmp_path / "p.jsonl", [conv(i) for i in range(40)])

    def explode(done, total):
        if done > 10:
            raise OSError("disk full")

    with pytest.raises(OSError):
        import_pool(store, f, progress=explode)
    with store.session() as s:
        assert s.scalar(select(func.count(Example.id))) == 0
        assert s.scalar(select(func.count(Pool.id))) == 0


def test_killed_import_process_leaves_no_pool(tmp_path):
    """SIGKILL during a real CLI import: the rows it committed stay in a hidden staging pool
    (no pool is listed or can be opened), and the next import removes them."""
    f = write_jsonl(tmp_path / "big.jsonl", [conv(i) for i in range(60_000)])
    env = {**os.environ, "CURATION_HOME": str(tmp_path / "ws")}
    env.pop("CURATION_DB_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "curation", "import-pool", str(f)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wal = tmp_path / "ws" / "curation.db-wal"
    deadline = time.time() + 60
    while time.time() < deadline and not (wal.exists() and wal.stat().st_size > 2_000_000):
        time.sleep(0.05)
    assert proc.poll() is None, "import finished before it could be killed; use a bigger file"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(f"sqlite:///{tmp_path / 'ws' / 'curation.db'}")
    assert catalog.list_pools(store) == []
    with pytest.raises(CurationError, match="no pool named 'big'"):
        catalog.count_examples(store, "big")
    small = write_jsonl(tmp_path / "small.jsonl", [conv(i) for i in range(3)])
    assert import_pool(store, small).n_ok == 3
    with store.session() as s:
        assert s.scalar(select(func.count(Example.id))) == 3
        assert list(s.scalars(select(Pool.name))) == ["small"]
        assert s.execute(text("SELECT count(*) FROM example_fts")).scalar() == 3


def test_name_clash_is_a_user_error(store, tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [conv(1)])
    import_pool(store, f)
    with pytest.raises(CurationError, match="already exists"):
        import_pool(store, f)


def test_import_prefs_and_edit_pairs(store, tmp_path):
    f = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "subtask": "add"},
        {"prompt": "3*3?", "chosen": "9", "rejected": "6", "subtask": "mul"},
        {"prompt": "1+1?", "chosen": "2", "rejected": "2", "subtask": "add"},
    ])
    res = import_prefs(store, f, name="p")
    assert (res.n_ok, res.n_bad) == (2, 1)
    assert "identical" in res.problems[0].reason and res.problems[0].line == 3
    pairs = catalog.get_pairs(store, "p")
    assert [p["subtask"] for p in pairs] == ["add", "mul"]
    rows = [dict(pairs[0], chosen="four"), {"prompt": "5-1?", "chosen": "4", "rejected": "6", "subtask": "sub"}]
    assert catalog.save_pairs(store, "p", rows) == {"added": 1, "updated": 1, "deleted": 1}
    assert [(p["chosen"], p["subtask"]) for p in catalog.get_pairs(store, "p")] == [("four", "add"), ("4", "sub")]
    with pytest.raises(CurationError, match="row 2: pair field 'rejected'"):
        catalog.save_pairs(store, "p", [rows[0], dict(rows[1], rejected="4")])
    assert len(catalog.get_pairs(store, "p")) == 2  # nothing half-applied


def run_cli(tmp_path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "CURATION_HOME": str(tmp_path / "ws")}
    env.pop("CURATION_DB_URL", None)
    return subprocess.run([sys.executable, "-m", "curation", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    out = run_cli(tmp_path, "import-pool", str(tmp_path / "missing.jsonl"))
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and "no such file" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_demo_is_idempotent_and_listed(tmp_path):
    first = run_cli(tmp_path, "demo")
    assert first.returncode == 0, first.stderr
    again = run_cli(tmp_path, "demo")
    assert again.returncode == 0 and "already present" in again.stdout
    listing = run_cli(tmp_path, "list").stdout
    assert "demo" in listing.split("preference sets:")[0] and "demo" in listing.split("preference sets:")[1]


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent")
def test_real_t0_pool_and_rose_prefs_via_cli(tmp_path):
    t0 = SHARED / "t0_pool" / "data_per_template" / "adversarial_qa_dbert_based_on.jsonl"
    out = run_cli(tmp_path, "import-pool", str(t0), "--name", "t0")
    assert out.returncode == 0, out.stderr
    assert "200 ok" in out.stdout
    prefs = SHARED / "rose_preferences" / "validation" / "se" / "se_10_shot" / "se_10_shot_preference.json"
    out = run_cli(tmp_path, "import-prefs", str(prefs), "--name", "se")
    assert out.returncode == 0, out.stderr
    assert "97 ok, 3 bad" in out.stdout  # three published pairs have chosen == rejected
    assert out.stderr.count("identical to the chosen") == 3
    store = Store(f"sqlite:///{tmp_path / 'ws' / 'curation.db'}")
    (se,) = catalog.list_prefsets(store)
    assert (se["pairs"], se["subtasks"]) == (97, 10)
    (t0row,) = catalog.list_pools(store)
    assert t0row["examples"] == 200


def test_append_publishes_only_new_content_at_once(store, tmp_path, monkeypatch):
    """An append is staged like any import: duplicates of the pool are skipped, a clashing id
    gets a suffix, and a failure midway leaves the pool exactly as it was."""
    monkeypatch.setattr("curation.data.imports.BATCH", 3)
    base = [dict(conv(i), id=f"r{i}") for i in range(5)]
    import_pool(store, write_jsonl(tmp_path / "grow.jsonl", base))
    more = base[:2] + [dict(conv(100), id="r0")] + [conv(i) for i in range(200, 206)]
    f = write_jsonl(tmp_path / "more.jsonl", more)

    def explode(done, total):
        if done > 4:
            raise OSError("disk full")

    with pytest.raises(OSError):
        import_pool(store, f, name="grow", append=True, progress=explode)
    assert catalog.count_examples(store, "grow") == 5 and catalog.list_pools(store)[0]["examples"] == 5
    res = import_pool(store, f, name="grow", append=True)
    assert (res.n_ok, res.n_duplicate) == (7, 2)
    assert catalog.count_examples(store, "grow") == 12 and catalog.list_pools(store)[0]["examples"] == 12
    assert catalog.count_examples(store, "grow", catalog.ExampleFilter(search="200")) >= 1
    with store.session() as s:
        uids = set(s.scalars(select(Example.uid)))
        assert len(uids) == 12 and any(u.startswith("r0~") for u in uids)
        assert [n for n in s.scalars(select(Pool.name))] == ["grow"]


def test_reserved_staging_names_are_refused(store, tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [conv(1)])
    with pytest.raises(CurationError, match="reserved"):
        import_pool(store, f, name="~importing~x")


def test_cli_says_how_many_problems_were_not_stored(tmp_path, monkeypatch, capsys):
    """Before: 'full list in import report' although the report kept only the first 10,000."""
    from curation import cli
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv("CURATION_DB_URL", raising=False)
    monkeypatch.setattr("curation.data.imports.MAX_STORED_PROBLEMS", 25)
    f = write_jsonl(tmp_path / "many.jsonl", [conv(0)] + ["{broken"] * 30)
    assert cli.main(["import-pool", str(f)]) == 0
    err = capsys.readouterr().err
    assert "import report #1 lists the first 25; 5 more were counted, not stored" in err
    with Store(f"sqlite:///{tmp_path / 'ws' / 'curation.db'}").session() as s:
        rep = s.get(ImportReport, 1)
        assert (rep.n_bad, len(rep.problems)) == (30, 25)


def test_json_errors_read_well(tmp_path):
    """'Invalid control character at at column 12' read 'at at' before."""
    from curation.data.io import iter_pool_file
    f = write_jsonl(tmp_path / "c.jsonl", ['{"instruction": "a\x01b", "output": "x"}'])
    assert [p.reason for p in iter_pool_file(f)] == ["invalid JSON: Invalid control character at column 19"]


def test_banner_level_and_message_follow_the_bad_lines(store, tmp_path):
    clean = import_pool(store, write_jsonl(tmp_path / "clean.jsonl", [conv(1), conv(2), conv(1)]))
    assert (clean.level(), clean.message()) == ("success", clean.summary())  # duplicates alone are no warning
    mostly_bad = import_pool(store, write_jsonl(tmp_path / "bad80.jsonl", [conv(1), "{x", "{x", "{x", "{x"]))
    assert mostly_bad.level() == "warning"
    assert mostly_bad.message() == (f"pool 'bad80': imported; 1 ok, 4 bad, 0 duplicates skipped. 4 of 5 lines "
                                    f"(80%) were bad and skipped; the table below lists why (import report "
                                    f"#{mostly_bad.report_id}).")
    strict = import_pool(store, write_jsonl(tmp_path / "s.jsonl", [conv(3), "{x"]), strict=True)
    assert strict.level() == "error" and strict.message() == strict.summary()
