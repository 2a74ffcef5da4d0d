"""Engine, sessions and migrations.

SQLite gets WAL (the app reads while a background run writes), foreign keys and a busy
timeout; any other SQLAlchemy URL is used as given. Migrations run on every open, so a
workspace made by an older version is upgraded in place.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from curation.workspace import Workspace

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
FTS_TABLES = ("example_fts",)


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """FTS5 tables are created by hand in the migration, not from the models."""
    return not (type_ == "table" and name.startswith(FTS_TABLES))


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    # 64 MB page cache per connection (default 2 MB): storing a 100k-example run's scores
    # updates two indexes, and with 2 MB most of their pages were evicted and re-read.
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def markers(dialect, n: int) -> str:
    """``n`` DBAPI parameter markers in the driver's own style (sqlite ?, psycopg %s, ...), for
    the few hot paths that skip SQLAlchemy's per-row processing (`exec_driver_sql`)."""
    style = dialect.paramstyle
    if style == "qmark":
        return ", ".join("?" * n)
    if style == "numeric":
        return ", ".join(f":{i + 1}" for i in range(n))
    return ", ".join(["%s"] * n)


class Store:
    """One database: `with store.session() as s:` commits on success, rolls back on error."""

    _cache: dict[str, "Store"] = {}

    def __init__(self, url: str, run_migrations: bool = True):
        self.url = url
        self.engine = make_engine(url)
        if run_migrations:
            migrate(self.engine)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def open(cls, ws: Workspace | None = None) -> "Store":
        """The store of a workspace, migrated once per process and then reused."""
        ws = (ws or Workspace.from_env()).ensure()
        if ws.db_url not in cls._cache:
            cls._cache[ws.db_url] = cls(ws.db_url)
        return cls._cache[ws.db_url]

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._factory() as s, s.begin():
            yield s
