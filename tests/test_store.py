"""The schema, its migrations and the database settings the app relies on, on SQLite and on
PostgreSQL (`db_url` in conftest: a throwaway server; those cases skip only without its binaries)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from curation.data.store import Base, Example, Pool, Store
from curation.data.store.db import alembic_config, include_object, make_engine
from curation.workspace import Workspace


@pytest.fixture
def store(db_url) -> Store:
    return Store(db_url)


def test_migrations_match_models(store):
    """Autogenerate finds nothing to change: the migration creates exactly the models' schema."""
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": include_object, "compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_sqlite_wal_and_foreign_keys(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_downgrade_and_upgrade_round_trip(db_url):
    from alembic import command
    url = db_url
    Store(url)
    engine = make_engine(url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert "example" not in inspect(engine).get_table_names()
    Store(url)
    assert {"pool", "example", "run", "score", "decision", "export"} <= set(inspect(make_engine(url)).get_table_names())


def _example(pool_id: int, i: int) -> Example:
    msgs = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    return Example(pool_id=pool_id, uid=f"u{i}", content_hash=f"h{i}", source="s", fmt="messages", line=i,
                   messages=msgs, original={"messages": msgs}, n_turns=2, prompt_chars=2, response_chars=2, total_chars=4)


def test_deleting_a_pool_cascades_to_examples(store):
    with store.session() as s:
        pool = Pool(name="p")
        s.add(pool)
        s.flush()
        s.add_all(_example(pool.id, i) for i in range(3))
    with store.session() as s:
        s.delete(s.scalar(select(Pool)))
    with store.session() as s:
        assert s.scalar(select(Example.id)) is None


def test_content_hash_is_unique_per_pool(store):
    from sqlalchemy.exc import IntegrityError
    with pytest.raises(IntegrityError):
        with store.session() as s:
            pool = Pool(name="p")
            s.add(pool)
            s.flush()
            a, b = _example(pool.id, 1), _example(pool.id, 2)
            b.content_hash = a.content_hash
            s.add_all([a, b])


def test_workspace_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv("CURATION_DB_URL", raising=False)
    ws = Workspace.from_env()
    assert ws.home == tmp_path / "ws"
    assert ws.db_url == f"sqlite:///{tmp_path / 'ws' / 'curation.db'}"
    monkeypatch.setenv("CURATION_DB_URL", "postgresql://u@localhost/db")
    assert Workspace.from_env().db_url == "postgresql://u@localhost/db"


def test_a_plain_postgresql_url_uses_psycopg_3():
    """SQLAlchemy 2.0 reads a bare ``postgresql://`` as psycopg2, which is not installed."""
    from curation.data.store.db import driver_url
    assert make_engine("postgresql://u@localhost/db").dialect.driver == "psycopg"
    assert driver_url("postgres://u:p%40ss@h:5433/db?sslmode=require") == \
        "postgresql+psycopg://u:p%40ss@h:5433/db?sslmode=require"
    assert driver_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert driver_url("sqlite:///x.db") == "sqlite:///x.db"


def test_the_store_opens_a_postgresql_workspace_from_the_environment(postgres, tmp_path, monkeypatch):
    """`CURATION_DB_URL=postgresql://...` as the README writes it: migrated, and usable."""
    url = postgres.new_database()
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("CURATION_DB_URL", url)
    store = Store.open()
    assert store.engine.dialect.name == "postgresql" and not store.is_sqlite
    assert Workspace.from_env().sqlite_file is None


def test_ensure_never_opens_an_existing_database_file(ws, monkeypatch):
    """Closing any descriptor of an SQLite file drops every POSIX lock the process holds on it,
    so a connection open here would lose its WAL read lock. `ensure` (called by every CLI
    command and page) may create the file 0600 but must not touch an existing one: before,
    `score --resume` after manual shards left the test's own connection reading 'queued'."""
    import os

    store = Store.open(ws)
    db = ws.sqlite_file
    assert db is not None and db.exists()
    real_open, opened = os.open, []
    monkeypatch.setattr(os, "open", lambda path, *a, **k: (opened.append(str(path)), real_open(path, *a, **k))[1])
    ws.ensure()
    assert str(db) not in opened
    with store.session() as s:  # the store still works
        assert s.execute(__import__("sqlalchemy").text("select 1")).scalar() == 1
    assert (db.stat().st_mode & 0o777) == 0o600
