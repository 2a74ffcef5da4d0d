"""Sign-in users, roles enforced in the library, and every change signed by its author."""

from __future__ import annotations

import io
import json
import logging

import pytest

from curation import cli
from curation.bench import reliability as rel
from curation.data import catalog, users
from curation.data.store import Run, Store
from curation.errors import CurationError
from curation.review import curate
from curation.review.export import export_selection


def _add(ws, monkeypatch, *argv) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    return cli.main(list(argv))


def test_users_add_list_remove_with_salted_argon2_hashes(ws, monkeypatch, capsys):
    monkeypatch.setenv("CURATION_AUTH", "local")
    assert _add(ws, monkeypatch, "users", "add", "ada", "--role", "admin") == 0  # the first user: anyone
    assert _add(ws, monkeypatch, "users", "add", "bob", "--role", "viewer") == 2  # then an admin only
    assert "sign-in is on (CURATION_AUTH=local): act as a named user" in capsys.readouterr().err
    assert _add(ws, monkeypatch, "--as", "ada", "users", "add", "bob", "--role", "viewer") == 0
    assert _add(ws, monkeypatch, "--as", "bob", "users", "add", "cat", "--role", "admin") == 2
    assert _add(ws, monkeypatch, "--as", "ada", "users", "add", "cat", "--role", "viewer") == 0
    stored = json.loads(users.users_path(ws).read_text())
    assert stored["bob"]["hash"].startswith("$argon2id$") and "a-long-password" not in users.users_path(ws).read_text()
    assert stored["bob"]["hash"] != stored["cat"]["hash"]  # salted: the same password, two hashes
    assert users.users_path(ws).stat().st_mode & 0o777 == 0o600
    capsys.readouterr()
    assert cli.main(["users", "list"]) == 0
    out = capsys.readouterr().out
    assert "ada" in out and "bob" in out and "viewer" in out
    assert cli.main(["--as", "bob", "users", "remove", "cat"]) == 2
    assert "user 'bob' is a viewer: users needs the admin role" in capsys.readouterr().err
    assert cli.main(["--as", "ada", "users", "remove", "cat"]) == 0
    assert [u["name"] for u in users.list_users(ws)] == ["ada", "bob"]


def test_cli_as_a_viewer_is_refused_and_as_a_curator_is_signed(ws, monkeypatch, capsys, tmp_path):
    _add(ws, monkeypatch, "users", "add", "ada", "--role", "admin")
    _add(ws, monkeypatch, "--as", "ada", "users", "add", "vera", "--role", "viewer")
    _add(ws, monkeypatch, "--as", "ada", "users", "add", "carl", "--role", "curator")
    store = Store.open(ws)
    ids = rel.make_pool(store, tmp_path, 4, name="p")
    capsys.readouterr()
    assert cli.main(["--as", "vera", "decide", "pin", "p", str(ids[0]), "--reason", "good"]) == 2
    err = capsys.readouterr().err
    assert "user 'vera' is a viewer: decide needs the curator role" in err
    assert curate.current_overrides(store, "p") == {}
    assert cli.main(["--as", "carl", "decide", "pin", "p", str(ids[0]), "--reason", "good", "--author", "ada"]) == 0
    assert curate.audit(store, "p")[0]["author"] == "carl"  # a named user cannot sign as another
    assert cli.main(["--as", "carl", "undo", "p"]) == 0
    assert [a["author"] for a in curate.audit(store, "p")] == ["carl", "carl"]
    assert cli.main(["--as", "nobody", "undo", "p"]) == 2
    assert "no user named 'nobody'" in capsys.readouterr().err


def test_roles_are_enforced_in_the_library(ws, tmp_path, monkeypatch):
    store = Store.open(ws)
    ids = rel.make_pool(store, tmp_path, 6, name="p")
    run_id = rel.make_done_run(store, "p", 2, tmp_path)
    viewer, curator, admin = users.Actor("vera", "viewer"), users.Actor("carl", "curator"), users.Actor("ada", "admin")
    for call in (lambda: curate.decide(store, "p", [ids[0]], "pin", "x", actor=viewer),
                 lambda: curate.undo(store, "p", actor=viewer),
                 lambda: export_selection(store, run_id, "messages", ws, actor=viewer),
                 lambda: catalog.create_prefset(store, "s", actor=viewer)):
        with pytest.raises(CurationError, match="'vera' is a viewer"):
            call()
    catalog.create_prefset(store, "s", actor=curator)
    with pytest.raises(CurationError, match="'carl' is a curator: delete needs the admin role"):
        catalog.delete_prefset(store, "s", actor=curator)
    with pytest.raises(CurationError, match="archive needs the admin role"):
        catalog.archive_prefset(store, "s", actor=curator)
    catalog.delete_prefset(store, "s", actor=admin)
    monkeypatch.setenv("CURATION_AUTH", "local")  # sign-in on: no anonymous changes at all
    with pytest.raises(CurationError, match="sign-in is on"):
        curate.decide(store, "p", [ids[0]], "pin", "x")


def test_decisions_exports_and_runs_record_who_made_them(ws, tmp_path):
    store = Store.open(ws)
    ids = rel.make_pool(store, tmp_path, 6, name="p")
    carl = users.Actor("carl", "curator")
    from curation.config import ScoreConfig
    from curation.runs.execute import create_run, execute_run
    run_id = create_run(store, "p", None, ScoreConfig(method="random"), ws=ws, actor=carl)
    execute_run(store, run_id, ws=ws)
    with store.session() as s:
        assert s.get(Run, run_id).meta["created_by"] == "carl"
    curate.decide(store, "p", [ids[1]], "pin", "gold", actor=carl)
    res = export_selection(store, run_id, "messages", ws, name="signed", actor=carl)
    manifest = json.loads(res.manifest_path.read_text())
    assert manifest["exported_by"] == "carl" and manifest["overrides"][0]["author"] == "carl"
    assert "| Exported by | carl |" in res.card_path.read_text()


def test_sign_in_is_rate_limited_and_logged(ws, caplog):
    users.add_user(ws, "carl", "curator", "right-password")
    gate = users.SignIn(ws)
    assert gate.verify("carl", "right-password", now=0.0) == users.Actor("carl", "curator")
    caplog.set_level(logging.INFO, logger="curation.auth")
    for i in range(users.MAX_FAILURES):
        with pytest.raises(CurationError, match="wrong user name or password"):
            gate.verify("carl", "wrong", now=1.0 + i)
    with pytest.raises(CurationError, match="too many failed sign-ins"):
        gate.verify("carl", "right-password", now=10.0)  # even the right password, for a minute
    assert gate.verify("carl", "right-password", now=70.0).name == "carl"
    with pytest.raises(CurationError, match="wrong user name or password"):
        gate.verify("nobody", "whatever", now=71.0)  # an unknown name reads the same
    assert sum("failed sign-in for 'carl'" in r.message for r in caplog.records) == users.MAX_FAILURES
    assert any("sign-in refused" in r.message for r in caplog.records)
