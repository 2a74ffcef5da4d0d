"""Read and edit what is stored: pools page by page, preference pairs, runs.

Everything the Pool and Preferences pages show comes from here, one page of rows per query,
so a 100k-example pool never has to fit in a browser session.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Sequence

from sqlalchemy import String, cast, func, select, text
from sqlalchemy.orm import Session

from curation.data.names import check_name
from curation.data.pairs import FIELDS, LengthLimits, PairDraft, check_pair, errors, required, warnings
from curation.data.store import STAGING_PREFIX, Example, ImportReport, Pool, PreferencePair, PreferenceSet, Run, Store
from curation.data.users import Actor, author_of, require
from curation.errors import CurationError


def get_pool(s: Session, name: str) -> Pool:
    pool = s.scalar(select(Pool).where(Pool.name == name))
    if pool is None:
        raise CurationError(f"no pool named '{name}' (see `python -m curation list`)")
    return pool


def get_prefset(s: Session, name: str) -> PreferenceSet:
    pset = s.scalar(select(PreferenceSet).where(PreferenceSet.name == name))
    if pset is None:
        raise CurationError(f"no preference set named '{name}' (see `python -m curation list`)")
    return pset


def list_pools(store: Store) -> list[dict]:
    with store.session() as s:
        q = select(Pool.name, Pool.n_examples, func.count(func.distinct(Example.source)), Pool.created_at)
        q = q.outerjoin(Example, Example.pool_id == Pool.id).where(~Pool.name.startswith(STAGING_PREFIX))
        q = q.group_by(Pool.id).order_by(Pool.name)
        return [dict(name=n, examples=c, sources=k, created=t) for n, c, k, t in s.execute(q)]


def list_prefsets(store: Store, archived: bool = False) -> list[dict]:
    """Preference sets with their counts; archived ones (kept only for their runs) with ``archived``."""
    with store.session() as s:
        q = select(PreferenceSet.name, func.count(PreferencePair.id), func.count(func.distinct(PreferencePair.subtask)),
                   PreferenceSet.created_at, PreferenceSet.archived)
        q = q.outerjoin(PreferencePair).group_by(PreferenceSet.id).order_by(PreferenceSet.name)
        if not archived:
            q = q.where(PreferenceSet.archived.is_(False))
        return [dict(name=n, pairs=c, subtasks=k, created=t, archived=a) for n, c, k, t, a in s.execute(q)]


def list_runs(store: Store, pool: str | None = None, internal: bool = False) -> list[dict]:
    """Runs, newest first; a check's own scoring sub-runs (``meta.internal``) only with ``internal``."""
    with store.session() as s:
        q = select(Run, Pool.name, PreferenceSet.name).join(Pool, Run.pool_id == Pool.id)
        q = q.outerjoin(PreferenceSet, Run.prefs_id == PreferenceSet.id).order_by(Run.id.desc())
        if pool:
            q = q.where(Pool.name == pool)
        hashes: dict[int, str] = {}
        return [dict(id=r.id, method=r.method, label=method_label(r.method, r.meta), pool=p, prefs=ps,
                     status=r.status, stage=r.stage,
                     progress=_fraction(r), selected=r.n_selected, created=r.created_at, heartbeat=r.heartbeat,
                     pairs_version=pairs_version(s, r, hashes),
                     features=run_feature_set(r.meta))
                for r, p, ps in s.execute(q) if internal or not (r.meta or {}).get("internal")]


def method_label(method: str, meta: dict | None) -> str:
    """How lists name a run's method: an auto run with what it chose ("auto: contrast 0.5")."""
    chosen = ((meta or {}).get("auto") or {}).get("chosen")
    return f"{method}: {chosen}" if method == "auto" and chosen else method


def run_feature_set(meta: dict | None) -> str | None:
    """The id of the feature set a run's metadata names (None for other methods)."""
    return ((meta or {}).get("features") or {}).get("id")


def pool_hashes(s: Session, pool_id: int) -> list[str]:
    """Content hashes of a pool's examples: what its stored gradient features are keyed by."""
    return list(s.scalars(select(Example.content_hash).where(Example.pool_id == pool_id)))


def pairs_snapshot(s, prefs_id: int | None) -> list[dict]:
    """The pairs a run scores with, in feature-row order, as plain data (kept on the run)."""
    if prefs_id is None:
        return []
    return [dict(id=p.id, position=p.position, prompt=p.prompt, prompt_messages=p.prompt_messages,
                 chosen=p.chosen, rejected=p.rejected, subtask=p.subtask)
            for p in s.scalars(select(PreferencePair).where(PreferencePair.set_id == prefs_id)
                               .order_by(PreferencePair.position, PreferencePair.id))]


def pairs_hash(pairs: Sequence[dict]) -> str:
    """sha256 of the pairs' content and order (ids and positions excluded: text is what counts)."""
    content = [[p["prompt"], p["prompt_messages"], p["chosen"], p["rejected"], p["subtask"]] for p in pairs]
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def pairs_version(s: Session, run: Run, current: dict[int, str] | None = None) -> str | None:
    """"current" when the run was scored with its preference set as it is now, "earlier" when
    the set was edited since (the run still explains with its own snapshot), None without
    pairs. ``current`` caches the sets' hashes across runs."""
    recorded = (run.meta or {}).get("pairs_sha256")
    if run.prefs_id is None or recorded is None:
        return None
    current = {} if current is None else current
    if run.prefs_id not in current:
        current[run.prefs_id] = pairs_hash(pairs_snapshot(s, run.prefs_id))
    return "current" if current[run.prefs_id] == recorded else "earlier"


def _fraction(r: Run) -> float:
    return 1.0 if r.status == "done" else (r.stage_done / r.stage_total if r.stage_total else 0.0)


def pool_sources(store: Store, pool: str) -> list[tuple[str, int]]:
    with store.session() as s:
        pid = get_pool(s, pool).id
        q = select(Example.source, func.count()).where(Example.pool_id == pid).group_by(Example.source)
        return sorted(s.execute(q).all(), key=lambda r: (-r[1], r[0]))


@dataclass
class ExampleFilter:
    """What the Pool page (and 'apply to all N matching') filters by."""

    search: str = ""
    sources: tuple[str, ...] = ()
    min_chars: int | None = None
    max_chars: int | None = None


def _fts_query(search: str) -> str:
    """Quote each word so user text is never parsed as FTS5 syntax."""
    words = re.findall(r"\w+", search)
    return " ".join(f'"{w}"' for w in words)


def _filtered(s: Session, store: Store, pool_id: int, f: ExampleFilter):
    q = select(Example).where(Example.pool_id == pool_id)
    if f.sources:
        q = q.where(Example.source.in_(f.sources))
    if f.min_chars is not None:
        q = q.where(Example.total_chars >= f.min_chars)
    if f.max_chars is not None:
        q = q.where(Example.total_chars <= f.max_chars)
    if f.search.strip():
        if store.is_sqlite:
            match = _fts_query(f.search)
            if match:
                ids = text("SELECT rowid FROM example_fts WHERE example_fts MATCH :m").bindparams(m=match)
                q = q.where(Example.id.in_(ids))
        else:
            q = q.where(cast(Example.messages, String).ilike(f"%{f.search.strip()}%"))
    return q


def count_examples(store: Store, pool: str, f: ExampleFilter = ExampleFilter()) -> int:
    with store.session() as s:
        q = _filtered(s, store, get_pool(s, pool).id, f)
        return s.scalar(select(func.count()).select_from(q.subquery()))


def page_examples(store: Store, pool: str, page: int = 0, size: int = 50, f: ExampleFilter = ExampleFilter()) -> list[dict]:
    """One page of a pool (0-based), newest import order; rows are short previews."""
    with store.session() as s:
        q = _filtered(s, store, get_pool(s, pool).id, f).order_by(Example.id).offset(page * size).limit(size)
        return [_preview(e) for e in s.scalars(q)]


def matching_ids(store: Store, pool: str, f: ExampleFilter) -> list[int]:
    """Every example id a filter matches, for bulk actions on all N matches, not one page."""
    with store.session() as s:
        q = _filtered(s, store, get_pool(s, pool).id, f).with_only_columns(Example.id).order_by(Example.id)
        return list(s.scalars(q))


def _preview(e: Example) -> dict:
    user = next((m["content"] for m in e.messages if m["role"] == "user"), "")
    reply = next((m["content"] for m in reversed(e.messages) if m["role"] == "assistant"), "")
    return dict(id=e.id, uid=e.uid, source=e.source, prompt=user[:200], response=reply[:200],
                turns=e.n_turns, chars=e.total_chars)


def get_example(store: Store, example_id: int) -> dict:
    with store.session() as s:
        e = s.get(Example, example_id)
        if e is None:
            raise CurationError(f"no example with id {example_id}")
        return dict(id=e.id, uid=e.uid, source=e.source, fmt=e.fmt, line=e.line, messages=e.messages,
                    original=e.original, content_hash=e.content_hash, chars=e.total_chars)


def import_reports(store: Store, limit: int = 20) -> list[dict]:
    with store.session() as s:
        q = select(ImportReport).order_by(ImportReport.id.desc()).limit(limit)
        return [dict(id=r.id, kind=r.kind, target=r.target, path=r.path, status=r.status, ok=r.n_ok, bad=r.n_bad,
                     duplicates=r.n_duplicate, ties=r.n_tie, problems=r.problems, created=r.created_at) for r in s.scalars(q)]


# --- preference sets -------------------------------------------------------------------------

def create_prefset(store: Store, name: str, actor: Actor | None = None) -> None:
    require(actor, "author")
    name = check_name("preference set", name)
    with store.session() as s:
        if (archived := s.scalar(select(PreferenceSet.archived).where(PreferenceSet.name == name))) is not None:
            hint = " (archived: unarchive it to use it again)" if archived else ""
            raise CurationError(f"a preference set named '{name}' already exists{hint}")
        s.add(PreferenceSet(name=name))


def prefset_runs(store: Store, name: str) -> list[dict]:
    """The runs scored with a set (a check's sub-runs too): what deleting it would orphan."""
    with store.session() as s:
        pset = get_prefset(s, name)
        return _runs_of(s, pset.id)


def _runs_of(s: Session, prefs_id: int) -> list[dict]:
    q = select(Run).where(Run.prefs_id == prefs_id).order_by(Run.id)
    return [dict(id=r.id, method=r.method, status=r.status, internal=bool((r.meta or {}).get("internal")))
            for r in s.scalars(q)]


def describe_runs(runs: Sequence[dict]) -> str:
    """"#3 rose, #5 bm25 (check sub-run)": runs as a user reads them."""
    return ", ".join(f"#{r['id']} {r['method']}" + (" (check sub-run)" if r["internal"] else "") for r in runs)


def delete_prefset(store: Store, name: str, actor: Actor | None = None) -> None:
    """Delete a set and its pairs; refused while runs use it (they would lose their set's name and
    their re-scoring and explanations): archive it instead. An admin's act."""
    require(actor, "delete")
    with store.session(write=True) as s:
        pset = get_prefset(s, name)
        if runs := _runs_of(s, pset.id):
            raise CurationError(f"preference set '{name}' is used by {len(runs)} run(s): {describe_runs(runs)}. "
                                "Archive it instead: it is then hidden from new runs and its runs keep its name")
        s.delete(pset)


def archive_prefset(store: Store, name: str, archived: bool = True, actor: Actor | None = None) -> None:
    """Hide a set from the Scoring page and the default listing; its runs keep showing its name."""
    require(actor, "archive")
    with store.session() as s:
        get_prefset(s, name).archived = archived


def unarchive_prefset(store: Store, name: str, actor: Actor | None = None) -> None:
    archive_prefset(store, name, archived=False, actor=actor)


def get_pairs(store: Store, name: str) -> list[dict]:
    with store.session() as s:
        pset = get_prefset(s, name)
        return [dict(id=p.id, prompt=p.prompt, chosen=p.chosen, rejected=p.rejected, subtask=p.subtask,
                     author=p.author, created=p.created_at) for p in pset.pairs]


def add_pair(store: Store, name: str, draft: PairDraft, author: str | None = None,
             accept_warnings: bool = False, limits: LengthLimits = LengthLimits(), actor: Actor | None = None) -> int:
    """Append one pair to a set after `pairs.check_pair`; returns its id.

    Errors always refuse it; warnings refuse it unless ``accept_warnings`` (the user saw them)."""
    author = author_of(actor, author, "author")
    with store.session(write=True) as s:
        pset = get_prefset(s, name)
        existing = [dict(id=p.id, prompt=p.prompt, chosen=p.chosen, rejected=p.rejected) for p in pset.pairs]
        problems = check_pair(draft, existing, limits)
        if bad := errors(problems) or (warnings(problems) if not accept_warnings else []):
            what = "refused" if errors(problems) else "has warnings (confirm to save it anyway)"
            raise CurationError(f"pair {what}: " + "; ".join(str(p) for p in bad))
        d = draft.cleaned()
        position = max((p.position for p in pset.pairs), default=-1) + 1
        pair = PreferencePair(set_id=pset.id, position=position, author=author, prompt=d.prompt,
                              prompt_messages=[{"role": "user", "content": d.prompt}], chosen=d.chosen,
                              rejected=d.rejected, subtask=d.subtask)
        s.add(pair)
        s.flush()
        return pair.id


def save_pairs(store: Store, name: str, rows: list[dict], author: str | None = None, actor: Actor | None = None) -> dict:
    """Make the set hold exactly `rows` (as edited in a table), validated first, in one transaction.

    Rows with an `id` update that pair, rows without one are new, stored pairs missing from
    `rows` are deleted. Any invalid row aborts everything with an error naming row and field.
    """
    author = author_of(actor, author, "author")
    for i, r in enumerate(rows, 1):
        if problems := required(PairDraft(*(_cell(r.get(k)) for k in FIELDS))):
            raise CurationError(f"row {i}: {_row_problems(r, problems)}. Nothing was saved")
    counts = dict(added=0, updated=0, deleted=0)
    with store.session() as s:
        pset = get_prefset(s, name)
        by_id = {p.id: p for p in pset.pairs}
        keep = set()
        for pos, r in enumerate(rows):
            vals = {k: _cell(r[k]).strip() for k in ("prompt", "chosen", "rejected", "subtask")}
            rid = _row_id(r)
            pair = by_id.get(rid) if rid is not None else None
            if pair is None:
                s.add(PreferencePair(set_id=pset.id, position=pos, author=author,
                                     prompt_messages=[{"role": "user", "content": vals["prompt"]}], **vals))
                counts["added"] += 1
                continue
            keep.add(pair.id)
            changed = any(getattr(pair, k) != v for k, v in vals.items()) or pair.position != pos
            if pair.prompt != vals["prompt"]:
                pair.prompt_messages = [{"role": "user", "content": vals["prompt"]}]
            for k, v in vals.items():
                setattr(pair, k, v)
            pair.position = pos
            counts["updated"] += int(changed)
        for pid, pair in by_id.items():
            if pid not in keep:
                s.delete(pair)
                counts["deleted"] += 1
    return counts


def _row_problems(row: dict, problems: list) -> str:
    """"pair fields 'chosen' and 'rejected' are empty (a new row)": what is wrong with a table row."""
    rid = _row_id(row)
    which = f" (pair #{rid})" if rid is not None else " (a new row)"
    empty = [f"'{p.field}'" for p in problems if p.code == "required"]
    if len(empty) == len(FIELDS):
        return f"every field is empty{which}: fill it in or delete the row"
    parts = [f"pair field {empty[0]} is empty" if len(empty) == 1 else
             f"pair fields {', '.join(empty[:-1])} and {empty[-1]} are empty"] if empty else []
    parts += [f"pair field '{p.field}' {p.message}" for p in problems if p.code != "required"]
    return "; ".join(parts) + which


def _cell(value) -> str:
    """A table cell as text: an empty cell (None, NaN or pandas' NA) is ''."""
    if value is None or type(value).__name__ in ("NAType", "NaTType") or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def _row_id(row: dict) -> int | None:
    """The pair id of an edited table row; new rows have none (empty, NaN, or the table's "new")."""
    rid = _cell(row.get("id")).strip()
    return int(float(rid)) if re.fullmatch(r"\d+(\.0)?", rid) else None
