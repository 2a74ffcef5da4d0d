"""A full disk (issue 22): one clear line naming the path and the space, nothing half-written;
and `check --launch` keeps its options."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from streamlit.testing.v1 import AppTest
from test_app import APP

from curation import cli
from curation.bench import reliability as rel
from curation.data import catalog
from curation.data.store import Store
from curation.errors import DiskFullError, is_disk_full


@pytest.fixture
def small_db():
    """Every SQLite connection opened from now on holds at most 60 pages (SQLite then fails
    with "database or disk is full", as on a full disk)."""
    def cap(conn, _record) -> None:
        if isinstance(conn, sqlite3.Connection):
            conn.execute("PRAGMA max_page_count = 60")
    event.listen(Engine, "connect", cap)
    yield
    event.remove(Engine, "connect", cap)


def _big_pool(tmp_path, n: int = 3000):
    return rel.write_pool_file(tmp_path / "big.jsonl", n)


def test_a_full_database_is_one_line_naming_it_and_the_space(ws, tmp_path, small_db, capsys):
    """Before: a traceback ending in sqlite3.OperationalError, naming neither disk nor space."""
    big = _big_pool(tmp_path)
    assert cli.main(["import-pool", str(big), "--name", "big"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"error: no space left on the disk (or quota) for {ws.home / 'curation.db'}")
    assert f"importing big.jsonl): {big.stat().st_size / 1e3:.1f} kB needed" in err and " free;" in err
    store = Store.open(ws)
    assert catalog.list_pools(store) == []
    with store.session() as s:
        assert s.connection().exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


def test_a_full_disk_during_an_export_leaves_the_previous_one_whole(ws, tmp_path, monkeypatch, capsys):
    store = Store.open(ws)
    rel.make_pool(store, tmp_path, 12, name="p")
    run_id = rel.make_done_run(store, "p", 6, tmp_path)
    assert cli.main(["export", str(run_id), "--name", "mine", "--n", "3"]) == 0
    before = {p.name: p.read_bytes() for p in (ws.exports / "mine").iterdir()}

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("curation.review.export._write_rows", full)
    capsys.readouterr()
    assert cli.main(["export", str(run_id), "--name", "mine", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no space left on the disk (or quota) for {ws.exports / 'mine'} "
                          "(writing the export of 6 examples): ") and " free;" in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in (ws.exports / "mine").iterdir()} == before
    assert [p.name for p in ws.exports.iterdir()] == ["mine"]  # no hidden folder left


def test_a_full_disk_in_any_command_is_one_line(ws, monkeypatch, capsys):
    """ENOSPC or EDQUOT where no library call names the path: the file, or the workspace's database."""
    def quota(a):
        raise OSError(errno.EDQUOT, "Disk quota exceeded", "/somewhere/file.bin")
    monkeypatch.setitem(cli.COMMANDS, "list", quota)
    assert cli.main(["list"]) == 2
    assert capsys.readouterr().err.startswith("error: no space left on the disk (or quota) for /somewhere/file.bin: ")

    def full(a):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setitem(cli.COMMANDS, "list", full)
    assert cli.main(["list"]) == 2
    assert f"for {ws.home / 'curation.db'}: " in capsys.readouterr().err


def test_an_upload_on_a_full_disk_names_the_upload_and_its_size(ws, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("curation.workspace.os.replace", full)
    with pytest.raises(DiskFullError, match=r"for .*/uploads/[0-9a-f]{32}/pool\.jsonl \(saving an upload\): "
                                            r"2\.0 kB needed, .* free;"):
        ws.save_upload("pool.jsonl", b"x" * 2000)
    assert list(ws.uploads.iterdir()) == []


def test_the_pool_page_shows_the_same_message(ws, tmp_path, small_db):
    data = ws.home / "data" / "big.jsonl"
    rel.write_pool_file(data, 3000)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    next(t for t in at.text_input if t.label == "Server path").set_value(str(data))
    next(b for b in at.button if b.label == "Import").click().run()
    assert not at.exception
    assert any("no space left on the disk" in e.value and "curation\\.db" in e.value for e in at.error)


def test_is_disk_full_sees_through_wrappers():
    from sqlalchemy.exc import OperationalError
    assert is_disk_full(OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full")))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as e:
        assert is_disk_full(e)


# --- check --launch --------------------------------------------------------------------------

def test_check_launch_passes_seeds_and_percent_on(ws, tmp_path, monkeypatch, capsys):
    """Before: the background check ran with the defaults whatever --seeds/--percent said."""
    store = Store.open(ws)
    rel.make_pool(store, tmp_path, 10, name="c")
    run_id = rel.make_done_run(store, "c", 3, tmp_path)
    started = []

    class Proc:
        pid = 4242

    def popen(cmd, **kw):
        started.append(cmd)
        return Proc()
    monkeypatch.setattr("curation.review.check.subprocess.Popen", popen)
    monkeypatch.setattr("curation.review.check._base_run", lambda store, rid: (None, None))  # a run with pairs is slow
    monkeypatch.setattr("curation.review.check.require_ready", lambda run, cfg: None)
    assert cli.main(["check", str(run_id), "--launch", "--seeds", "4", "5", "--percent", "2.5"]) == 0
    assert started[0][-8:] == ["check", str(run_id), "--record", "--seeds", "4", "5", "--percent", "2.5"]
    assert cli.make_parser().parse_args(started[0][3:]).seeds == [4, 5]
    assert "pid 4242" in capsys.readouterr().out


def test_only_the_databases_own_error_counts_as_a_full_disk():
    """A user's file quoting SQLite's words is not a full disk."""
    assert not is_disk_full(ValueError("record 3: 'database or disk is full'"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
