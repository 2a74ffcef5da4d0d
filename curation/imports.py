"""Import pools and preference sets into the store, all-or-nothing.

A pool import is one database transaction streamed in batches: memory stays bounded for a
1M-line file, and a kill or a full disk midway leaves no half-imported pool. Bad lines are
never fatal by default: they go into an `ImportReport` kept in the database. With
``strict=True`` a single bad line rejects the whole file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import insert, select, text

from curation.errors import CurationError
from curation.io import PoolRecord, Problem, count_records, iter_pool_file, read_pref_file
from curation.store import Example, ImportReport, Pool, PreferencePair, PreferenceSet, Store

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

    def summary(self) -> str:
        verb = "imported" if self.status == "imported" else "rejected (strict: nothing imported)"
        return (f"{self.kind} '{self.name}': {verb}; {self.n_ok} ok, {self.n_bad} bad, "
                f"{self.n_duplicate} duplicates skipped")


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
    if s.scalar(select(model.id).where(model.name == name)) is not None:
        raise CurationError(f"a {kind} named '{name}' already exists; pick another --name")


def _save_report(store: Store, res: ImportResult, path: Path, fmt: str, strict: bool) -> int:
    with store.session() as s:
        rep = ImportReport(
            kind=res.kind, target=res.name, path=str(path), fmt=fmt, strict=strict, status=res.status,
            n_ok=res.n_ok, n_bad=res.n_bad, n_duplicate=res.n_duplicate,
            problems=[p.__dict__ for p in res.problems[:MAX_STORED_PROBLEMS]],
        )
        s.add(rep)
        s.flush()
        return rep.id


class _Abort(Exception):
    """Raised inside the transaction to roll back a strict import."""


def import_pool(store: Store, path: str | Path, name: str | None = None, fmt: str | None = None,
                strict: bool = False, progress: Progress | None = None, append: bool = False) -> ImportResult:
    """Stream `path` into a new pool named `name` (default: the file stem), or with ``append``
    into that existing pool (content it already holds is skipped as duplicate; its stored
    gradient features stay valid and only the new examples get features on the next run)."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"{path}: no such file")
    name = name or path.stem
    res = ImportResult(name=name, kind="pool", status="imported")
    total = count_records(path)
    seen_fmt = fmt or "auto"
    try:
        with store.session() as s:
            pool = s.scalar(select(Pool).where(Pool.name == name)) if append else None
            if append and pool is None:
                raise CurationError(f"no pool named '{name}' to append to")
            if pool is None:
                _check_name_free(s, Pool, name, "pool")
                pool = Pool(name=name)
                s.add(pool)
                s.flush()
            before = pool.n_examples or 0
            batch: list[PoolRecord] = []
            done = 0
            for item in iter_pool_file(path, fmt):
                done += 1
                if isinstance(item, Problem):
                    res.n_bad += 1
                    if len(res.problems) < MAX_STORED_PROBLEMS:
                        res.problems.append(item)
                    if strict:
                        raise _Abort()
                    continue
                seen_fmt = item.fmt
                batch.append(item)
                if len(batch) >= BATCH:
                    _insert_batch(s, store, pool.id, batch, res)
                    batch = []
                    if progress:
                        progress(done, total)
            _insert_batch(s, store, pool.id, batch, res)
            if progress:
                progress(done, total)
            if res.n_ok == 0 and not (append and res.n_duplicate):
                raise CurationError(f"{path}: no valid examples" + (f" ({res.problems[0]})" if res.problems else ""))
            pool.n_examples = before + res.n_ok
    except _Abort:
        res.status, res.n_ok, res.n_duplicate, res.n_bad, res.problems = "rejected", 0, 0, 0, []
        for item in iter_pool_file(path, fmt):  # a second pass lists every bad line, not just the first
            if isinstance(item, Problem):
                res.n_bad += 1
                if len(res.problems) < MAX_STORED_PROBLEMS:
                    res.problems.append(item)
    res.report_id = _save_report(store, res, path, seen_fmt, strict)
    return res


def _insert_batch(s, store: Store, pool_id: int, batch: list[PoolRecord], res: ImportResult) -> None:
    """Insert one batch, skipping content already in the pool (checked by index, not in memory)."""
    if not batch:
        return
    rows, hashes = [], set()
    cand = [(rec, content_hash(rec.messages)) for rec in batch]
    existing = set(s.scalars(select(Example.content_hash).where(
        Example.pool_id == pool_id, Example.content_hash.in_([h for _, h in cand]))))
    for rec, h in cand:
        if h in existing or h in hashes:
            res.n_duplicate += 1
            if len(res.duplicate_lines) < 1000:
                res.duplicate_lines.append(rec.line)
            continue
        hashes.add(h)
        rows.append(_example_row(rec, pool_id, h))
    _dedupe_uids(s, pool_id, rows)
    if not rows:
        return
    ids = s.scalars(insert(Example).returning(Example.id, sort_by_parameter_order=True), rows).all()
    if store.is_sqlite:
        s.execute(text("INSERT INTO example_fts(rowid, text) VALUES (:id, :text)"),
                  [{"id": i, "text": example_text(r["messages"])} for i, r in zip(ids, rows)])
    res.n_ok += len(rows)


def _dedupe_uids(s, pool_id: int, rows: list[dict]) -> None:
    """Keep ids stable and unique: a repeated id with other content gets a hash suffix."""
    taken = set(s.scalars(select(Example.uid).where(Example.pool_id == pool_id, Example.uid.in_([r["uid"] for r in rows]))))
    for r in rows:
        if r["uid"] in taken:
            r["uid"] = f"{r['uid']}~{r['content_hash'][:8]}"
        taken.add(r["uid"])


def import_prefs(store: Store, path: str | Path, name: str | None = None, fmt: str | None = None,
                 subtask_field: str | None = None, subtasks: int | None = None, strict: bool = False) -> ImportResult:
    """Read a preference file and store it as a new preference set."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"{path}: no such file")
    name = name or path.stem
    records, problems = read_pref_file(path, fmt, subtask_field=subtask_field, subtasks=subtasks)
    res = ImportResult(name=name, kind="preference set", status="imported", problems=problems, n_bad=len(problems))
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
