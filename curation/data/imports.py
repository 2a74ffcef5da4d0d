"""Import pools and preference sets into the store, all-or-nothing.

A pool import streams the file in batches into a hidden staging pool, each batch its own short
transaction (memory stays bounded for a 1M-line file and other writers are never blocked for
long), then publishes it in one short transaction: a kill or a full disk midway leaves no
visible, half-imported pool. Bad lines are never fatal by default: they go into an
`ImportReport` kept in the database (the first `MAX_STORED_PROBLEMS` of them; the report's
`n_bad` counts all). With ``strict=True`` a single bad line rejects the whole file.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from curation.data.io import PoolRecord, Problem, count_records, iter_pool_file, read_prefs
from curation.data.names import check_name
from curation.data.store import STAGING_PREFIX, Example, ImportReport, Pool, PreferencePair, PreferenceSet, Store
from curation.data.store.db import retry_locked
from curation.data.store.models import utcnow
from curation.data.users import Actor, require
from curation.errors import CurationError, writing

BATCH = 2000
MAX_STORED_PROBLEMS = 10_000
Progress = Callable[[int, int | None], None]


@dataclass
class ImportResult:
    name: str
    kind: str
    status: str  # imported | rejected
    n_ok: int = 0
    n_duplicate: int = 0
    problems: list[Problem] = field(default_factory=list)
    n_bad: int = 0
    report_id: int | None = None
    duplicate_lines: list[int] = field(default_factory=list)
    n_tie: int = 0  # pairwise judgements preferring neither response: skipped, not bad

    def summary(self) -> str:
        verb = "imported" if self.status == "imported" else "rejected (strict: nothing imported)"
        ties = f", {self.n_tie} ties skipped" if self.n_tie else ""
        return (f"{self.kind} '{self.name}': {verb}; {self.n_ok} ok, {self.n_bad} bad, "
                f"{self.n_duplicate} duplicates skipped{ties}")

    def level(self) -> str:
        """How loudly a UI should report it: "error" when nothing was imported, "warning" when any
        line was bad (a file that is 80% bad is no success), "success" only for a clean file."""
        if self.status != "imported":
            return "error"
        return "warning" if self.n_bad else "success"

    def message(self) -> str:
        """The summary, and for a warning what share of the file was bad and where to read why."""
        if self.level() != "warning":
            return self.summary()
        lines = self.n_ok + self.n_bad + self.n_duplicate + self.n_tie
        where = f" (import report #{self.report_id})" if self.report_id is not None else ""
        return (f"{self.summary()}. {self.n_bad:,} of {lines:,} lines ({self.n_bad / lines:.0%}) were bad and "
                f"skipped; the table below lists why{where}.")

    @property
    def n_dropped(self) -> int:
        """Bad lines counted but not listed (the report keeps the first `MAX_STORED_PROBLEMS`)."""
        return max(0, self.n_bad - len(self.problems))


def content_hash(messages: list[dict]) -> str:
    """Identity of an example's content, independent of its id or source file."""
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def example_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


def _example_row(rec: PoolRecord, pool_id: int, h: str) -> dict:
    prompt = sum(len(m["content"]) for m in rec.messages if m["role"] != "assistant")
    response = sum(len(m["content"]) for m in rec.messages if m["role"] == "assistant")
    return dict(
        pool_id=pool_id, uid=rec.orig_id or f"{rec.source}:{h[:12]}", content_hash=h, source=rec.source,
        fmt=rec.fmt, line=rec.line, messages=rec.messages, original=rec.original,
        n_turns=len(rec.messages), prompt_chars=prompt, response_chars=response, total_chars=prompt + response,
    )


def _check_name_free(s, model, name: str, kind: str) -> None:
    if name.startswith(STAGING_PREFIX):
        raise CurationError(f"a {kind} name may not start with '{STAGING_PREFIX}' (reserved for imports in progress)")
    if s.scalar(select(model.id).where(model.name == name)) is not None:
        raise CurationError(f"a {kind} named '{name}' already exists; pick another --name")


def _save_report(store: Store, res: ImportResult, path: Path, fmt: str, strict: bool) -> int:
    def save() -> int:
        with store.session() as s:
            rep = ImportReport(
                kind=res.kind, target=res.name, path=str(path), fmt=fmt, strict=strict, status=res.status,
                n_ok=res.n_ok, n_bad=res.n_bad, n_duplicate=res.n_duplicate, n_tie=res.n_tie,
                problems=[p.__dict__ for p in res.problems[:MAX_STORED_PROBLEMS]],
            )
            s.add(rep)
            s.flush()
            return rep.id
    return retry_locked(save, what="import report")


class _Abort(Exception):
    """Raised to stop a strict import at its first bad line."""


def import_pool(store: Store, path: str | Path, name: str | None = None, fmt: str | None = None,
                strict: bool = False, progress: Progress | None = None, append: bool = False,
                actor: Actor | None = None) -> ImportResult:
    """`_import_pool` as ``actor`` (a curator); a full disk is a `DiskFullError` naming the
    database and the file's size."""
    require(actor, "import")
    with writing(store.where, _file_size(path), f"importing {Path(path).name}"):
        return _import_pool(store, path, name, fmt, strict, progress, append)


def _file_size(path: str | Path) -> int | None:
    try:
        return Path(path).stat().st_size
    except (OSError, ValueError):
        return None


def _import_pool(store: Store, path: str | Path, name: str | None, fmt: str | None,
                 strict: bool, progress: Progress | None, append: bool) -> ImportResult:
    """Stream `path` into a new pool named `name` (default: the file stem), or with ``append``
    into that existing pool (content it already holds is skipped as duplicate; its stored
    gradient features stay valid and only the new examples get features on the next run).

    Rows go into a hidden staging pool in short transactions of `BATCH` rows, so other writers
    (workers' heartbeats, curators' decisions) wait a moment, never the whole file; one short
    transaction then publishes them (a rename, or for ``append`` a move into the pool). A
    failure drops the staging rows; a kill leaves them hidden until the next import's clean-up.
    """
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"{path}: no such file")
    name = (name or path.stem).strip() if append else check_name("pool", name or path.stem)
    res = ImportResult(name=name, kind="pool", status="imported")
    with store.session() as s:
        target = s.scalar(select(Pool.id).where(Pool.name == name)) if append else None
        if append and target is None:
            raise CurationError(f"no pool named '{name}' to append to")
        if target is None:
            _check_name_free(s, Pool, name, "pool")
    drop_stale_imports(store)
    staging = _create_staging(store)
    seen_fmt = fmt or "auto"
    try:
        seen_fmt = _fill(store, staging, target, path, fmt, strict, progress, res)
        if res.n_ok == 0 and not (append and res.n_duplicate):
            res.status = "rejected"
            rid = _save_report(store, res, path, seen_fmt, strict)
            first = f" ({res.problems[0]})" if res.problems else ""
            raise CurationError(f"{path}: no valid examples{first}; import report #{rid}")
        _publish(store, staging, name, target, res.n_ok)
    except _Abort:
        _drop_pool(store, staging)
        res.status, res.n_ok, res.n_duplicate, res.n_bad, res.problems = "rejected", 0, 0, 0, []
        for item in iter_pool_file(path, fmt):  # a second pass lists every bad line, not just the first
            if isinstance(item, Problem):
                _add_problem(res, item)
    except BaseException:
        try:
            _drop_pool(store, staging)
        except Exception:  # noqa: BLE001  (the next import's clean-up removes it; keep the first error)
            pass
        raise
    res.report_id = _save_report(store, res, path, seen_fmt, strict)
    return res


def _add_problem(res: ImportResult, item: Problem) -> None:
    res.n_bad += 1
    if len(res.problems) < MAX_STORED_PROBLEMS:
        res.problems.append(item)


def _fill(store: Store, staging: int, target: int | None, path: Path, fmt: str | None, strict: bool,
          progress: Progress | None, res: ImportResult) -> str:
    """Read the file into the staging pool, one short transaction per batch; returns the format."""
    total = count_records(path)
    seen_fmt, batch, done = fmt or "auto", [], 0
    for item in iter_pool_file(path, fmt):
        done += 1
        if isinstance(item, Problem):
            _add_problem(res, item)
            if strict:
                raise _Abort()
            continue
        seen_fmt = item.fmt
        batch.append(item)
        if len(batch) >= BATCH:
            _commit_batch(store, staging, target, batch, res, path)
            batch = []
            if progress:
                progress(done, total)
    _commit_batch(store, staging, target, batch, res, path)
    if progress:
        progress(done, total)
    return seen_fmt


def _commit_batch(store: Store, staging: int, target: int | None, batch: list[PoolRecord], res: ImportResult,
                  path: Path) -> None:
    def commit() -> None:
        trial = ImportResult(res.name, res.kind, res.status)
        with store.session(bulk=True) as s:
            _insert_batch(s, store, staging, batch, trial, also=target, path=str(path))
        res.n_ok += trial.n_ok
        res.n_duplicate += trial.n_duplicate
        res.problems.extend(trial.problems)
        res.n_bad += trial.n_bad
        res.duplicate_lines.extend(trial.duplicate_lines[:max(0, 1000 - len(res.duplicate_lines))])
    retry_locked(commit, what="import")


def _staging_name() -> str:
    return f"{STAGING_PREFIX}{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:12]}"


def _create_staging(store: Store) -> int:
    with store.session() as s:
        pool = Pool(name=_staging_name())
        s.add(pool)
        s.flush()
        return pool.id


def _publish(store: Store, staging: int, name: str, target: int | None, n_ok: int) -> None:
    """One short transaction: rename the staging pool, or move its rows into `target`."""
    def publish() -> None:
        with store.session(write=True) as s:
            if target is None:
                _check_name_free(s, Pool, name, "pool")
                s.execute(update(Pool).where(Pool.id == staging).values(name=name, n_examples=n_ok))
            else:
                s.execute(update(Example).where(Example.pool_id == staging).values(pool_id=target))
                s.execute(update(Pool).where(Pool.id == target).values(n_examples=Pool.n_examples + n_ok))
                s.execute(delete(Pool).where(Pool.id == staging))
    try:
        retry_locked(publish, what="import")
    except IntegrityError:
        raise CurationError(f"pool '{name}' got the same examples from another import meanwhile; "
                            "import again (what it holds now is skipped as duplicate)") from None


def _drop_pool(store: Store, pool_id: int) -> None:
    """Delete a pool's rows a chunk per transaction (a 1M-row delete would hold the lock for long)."""
    while True:
        def chunk() -> bool:
            with store.session(bulk=True) as s:
                ids = list(s.scalars(select(Example.id).where(Example.pool_id == pool_id).limit(BATCH)))
                if ids:
                    if store.is_sqlite:
                        s.execute(text("DELETE FROM example_fts WHERE rowid IN "
                                       f"({', '.join(str(int(i)) for i in ids)})"))
                    s.execute(delete(Example).where(Example.id.in_(ids)))
                else:
                    s.execute(delete(Pool).where(Pool.id == pool_id))
                return bool(ids)
        if not retry_locked(chunk, what="import clean-up"):
            return


def drop_stale_imports(store: Store, max_age: timedelta = timedelta(days=1)) -> int:
    """Remove staging pools of imports that died (their process on this host is gone, or they
    are older than `max_age`); returns how many. Each import runs this before it starts."""
    host = socket.gethostname()
    with store.session() as s:
        staged = s.execute(select(Pool.id, Pool.name, Pool.created_at)
                           .where(Pool.name.startswith(STAGING_PREFIX))).all()
    dead = [pid for pid, pname, created in staged
            if _stale(pname.removeprefix(STAGING_PREFIX).split("~"), host) or utcnow() - created > max_age]
    for pool_id in dead:
        _drop_pool(store, pool_id)
    return len(dead)


def _stale(parts: list[str], host: str) -> bool:
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _insert_batch(s, store: Store, pool_id: int, batch: list[PoolRecord], res: ImportResult,
                  also: int | None = None, path: str = "") -> None:
    """Insert one batch, skipping content already in the pool, or in pool `also` (an append's
    target), checked by index, not in memory. A record that cannot be stored becomes a problem."""
    if not batch:
        return
    rows, hashes = [], set()
    cand = []
    for rec in batch:
        try:
            cand.append((rec, content_hash(rec.messages)))
        except (UnicodeEncodeError, ValueError, RecursionError) as e:
            _add_problem(res, Problem(path, rec.line, None, f"cannot store the record: {e}"))
    pools = [pool_id] if also is None else [pool_id, also]
    existing = set(s.scalars(select(Example.content_hash).where(
        Example.pool_id.in_(pools), Example.content_hash.in_([h for _, h in cand]))))
    for rec, h in cand:
        if h in existing or h in hashes:
            res.n_duplicate += 1
            if len(res.duplicate_lines) < 1000:
                res.duplicate_lines.append(rec.line)
            continue
        hashes.add(h)
        rows.append(_example_row(rec, pool_id, h))
    _dedupe_uids(s, pools, rows)
    if not rows:
        return
    ids = s.scalars(insert(Example).returning(Example.id, sort_by_parameter_order=True), rows).all()
    if store.is_sqlite:
        s.execute(text("INSERT INTO example_fts(rowid, text) VALUES (:id, :text)"),
                  [{"id": i, "text": example_text(r["messages"])} for i, r in zip(ids, rows)])
    res.n_ok += len(rows)


def _dedupe_uids(s, pools: list[int], rows: list[dict]) -> None:
    """Keep ids stable and unique: a repeated id with other content gets a hash suffix."""
    taken = set(s.scalars(select(Example.uid).where(Example.pool_id.in_(pools),
                                                    Example.uid.in_([r["uid"] for r in rows]))))
    for r in rows:
        if r["uid"] in taken:
            r["uid"] = f"{r['uid']}~{r['content_hash'][:8]}"
        taken.add(r["uid"])


def import_prefs(store: Store, path: str | Path, name: str | None = None, fmt: str | None = None,
                 subtask_field: str | None = None, subtasks: int | None = None, strict: bool = False,
                 actor: Actor | None = None) -> ImportResult:
    """Read a preference file and store it as a new preference set (in one transaction: a full
    disk leaves nothing, and is a `DiskFullError`); ties of pairwise judgements are skipped and
    counted in the report."""
    require(actor, "import")
    with writing(store.where, _file_size(path), f"importing {Path(path).name}"):
        return _import_prefs(store, path, name, fmt, subtask_field, subtasks, strict)


def _import_prefs(store: Store, path: str | Path, name: str | None, fmt: str | None,
                  subtask_field: str | None, subtasks: int | None, strict: bool) -> ImportResult:
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"{path}: no such file")
    name = check_name("preference set", name or path.stem)
    read = read_prefs(path, fmt, subtask_field=subtask_field, subtasks=subtasks)
    records, problems = read.records, read.problems
    res = ImportResult(name=name, kind="preference set", status="imported", problems=problems, n_bad=len(problems),
                       n_tie=read.ties)
    if problems and strict:
        res.status = "rejected"
    elif not records:
        raise CurationError(f"{path}: no valid preference pairs" + (f" ({problems[0]})" if problems else ""))
    else:
        with store.session() as s:
            _check_name_free(s, PreferenceSet, name, "preference set")
            pset = PreferenceSet(name=name)
            s.add(pset)
            s.flush()
            s.add_all(PreferencePair(set_id=pset.id, position=i, prompt=r.prompt, prompt_messages=r.prompt_messages,
                                     chosen=r.chosen, rejected=r.rejected, subtask=r.subtask, author="import")
                      for i, r in enumerate(records))
        res.n_ok = len(records)
    res.report_id = _save_report(store, res, path, fmt or "auto", strict)
    return res
