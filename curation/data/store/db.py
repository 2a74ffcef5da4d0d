"""Engine, sessions and migrations.

SQLite gets WAL (the app reads while a background run writes), foreign keys and a busy
timeout; any other SQLAlchemy URL is used as given, except that a plain ``postgresql://`` (or
``postgres://``) URL gets the psycopg 3 driver (`driver_url`), the one requirements.txt installs. Migrations run on every open, so a
workspace made by an older version is upgraded in place.

Sessions come in three kinds. A plain session is what most code wants: with the pysqlite
driver each read is its own snapshot and the write lock is taken at the first write. A
``write=True`` session takes the write lock before its first read (SQLite ``BEGIN IMMEDIATE``;
elsewhere the caller locks a row ``FOR UPDATE``), so a read-then-write such as undo is atomic
against other processes. A ``snapshot=True`` session reads one consistent snapshot (SQLite
``BEGIN``, in WAL mode without blocking writers; elsewhere ``REPEATABLE READ``), so e.g. an
export's selection and its manifest's overrides agree. A ``bulk=True`` session (an import's
batch, a run's scores) holds Python's garbage collector off while it runs (`gc_held`).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from curation.workspace import Workspace

T = TypeVar("T")
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
FTS_TABLES = ("example_fts",)


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """FTS5 tables are created by hand in the migration, not from the models."""
    return not (type_ == "table" and name.startswith(FTS_TABLES))


BUSY_TIMEOUT_MS = 30_000  # how long a statement waits for another writer's lock before "database is locked"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
    cur.execute("PRAGMA synchronous=NORMAL")
    # 64 MB page cache per connection (default 2 MB): storing a 100k-example run's scores
    # updates two indexes, and with 2 MB most of their pages were evicted and re-read.
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


def driver_url(url: str) -> str:
    """``url`` with an explicit driver for PostgreSQL: SQLAlchemy would pick psycopg2 for a bare
    ``postgresql://``, which is not installed; psycopg (version 3) is."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def make_engine(url: str) -> Engine:
    url = driver_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
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

    @property
    def where(self) -> str:
        """What a write goes to, for messages: the SQLite file, or "the database" (a server
        URL may hold a password)."""
        db = self.engine.url.database if self.is_sqlite else None
        return db if db and db != ":memory:" else "the database"

    @contextmanager
    def session(self, *, write: bool = False, snapshot: bool = False, bulk: bool = False) -> Iterator[Session]:
        """A transaction (see the module docstring for ``write``, ``snapshot`` and ``bulk``)."""
        with gc_held() if bulk else nullcontext(), self._factory() as s, s.begin():
            if self.is_sqlite and (write or snapshot):
                s.connection().exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
            elif snapshot:
                s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield s


_gc_lock = threading.Lock()
_gc_holders = 0
_gc_was_enabled = False


@contextmanager
def gc_held() -> Iterator[None]:
    """Python's garbage collector off for the block (nests, thread-safe), back as it was after.

    A write transaction holds the database's write lock; a gen-2 collection that starts inside
    it holds that lock too. In a process with torch and pandas loaded one took 0.93 s in the
    middle of an import's 2,000-row batch, and a curator's decide in another process waited
    all of it. Held off, the collection runs at the next allocation after the commit, outside
    the lock (reading the next batch), and costs other writers nothing.
    """
    global _gc_holders, _gc_was_enabled
    with _gc_lock:
        if _gc_holders == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0 and _gc_was_enabled:
                gc.enable()


def is_locked_error(e: BaseException) -> bool:
    """SQLite's "database is locked"/"busy" (another writer held the lock past the busy timeout)."""
    text = str(getattr(e, "orig", e)).lower()
    return isinstance(e, OperationalError) and ("locked" in text or "busy" in text)


def retry_locked(fn: Callable[[], T], attempts: int = 4, wait_s: float = 0.5, what: str = "write") -> T:
    """``fn()`` retried on a lock error, ``attempts`` times in all with a doubling pause.

    The busy timeout already waits 30 s per attempt, so this only matters when a writer holds
    the lock for minutes; a background worker uses it so that it never dies of a lock.
    """
    for i in range(attempts):
        try:
            return fn()
        except OperationalError as e:
            if not is_locked_error(e) or i == attempts - 1:
                raise
            print(f"{what}: database locked, retry {i + 1} of {attempts - 1}", file=sys.stderr)
            time.sleep(wait_s * 2 ** i)
    raise AssertionError("unreachable")
