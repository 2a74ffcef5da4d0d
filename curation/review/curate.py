"""Curator overrides on top of a run's automatic selection: pin, exclude, undo, audit, budget.

Decisions are an append-only audit trail (`Decision` rows, one batch id per user action): the
current override of an example is its latest decision, so nothing is ever updated or deleted,
and undo is itself a new batch that restores what the undone batch changed.

Every decide and undo runs in a write transaction that locks its pool first (`_lock_pool`), so
concurrent curators (processes) are serialised per pool: an undo reads the newest batch and
writes its revert with no decision slipping in between, and no batch is ever undone twice.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Mapping, Sequence

import numpy as np
from sqlalchemy import and_, desc, func, insert, select
from sqlalchemy.orm import Session, aliased

from curation.data import catalog
from curation.data.store import Decision, Example, Pool, Run, Score, Store
from curation.data.store.db import markers
from curation.data.users import Actor, author_of
from curation.engine.select import budget_from, select_top
from curation.errors import CurationError
from curation.runs.selections import budget_warning, selection_of

ACTIONS = ("pin", "exclude", "clear")
CHUNK = 5000  # ids per IN (...) clause: below every backend's bound-parameter limit
SCORE_ROW = np.dtype([("id", np.int64), ("score", np.float64), ("selected", bool)])
UNDO = re.compile(r"undo of ([0-9a-f]{32})")


# --- decisions -------------------------------------------------------------------------------

def decide(store: Store, pool: str, example_ids: Iterable[int], action: str, reason: str,
           author: str | None = None, actor: Actor | None = None) -> str:
    """Record one user action on some examples of `pool`; returns its batch id (what undo reverts).
    Needs a curator (`users.require`); recorded under the actor's name (`users.author_of`)."""
    author = author_of(actor, author, "decide")
    if action not in ACTIONS:
        raise CurationError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    reason = (reason or "").strip()
    if action != "clear" and not reason:
        raise CurationError(f"a reason is required to {action} examples")
    ids = list(dict.fromkeys(int(i) for i in example_ids))
    if not ids:
        raise CurationError("no examples given")
    with store.session(write=True, bulk=True) as s:
        pid = _lock_pool(s, pool)
        _check_in_pool(s, pid, ids, pool)
        return _record(s, pid, [(i, action) for i in ids], reason, author)


def _lock_pool(s: Session, pool: str) -> int:
    """The pool's id, its row locked for this transaction (``FOR UPDATE``; on SQLite the write
    session already holds the database's write lock): decide/undo on one pool are serialised."""
    pid = s.scalar(select(Pool.id).where(Pool.name == pool).with_for_update())
    if pid is None:
        catalog.get_pool(s, pool)  # raises the usual "no pool named ..." error
    return pid


def _check_in_pool(s: Session, pool_id: int, ids: list[int], pool: str) -> None:
    known: set[int] = set()
    for c in _chunks(ids):
        known.update(s.scalars(select(Example.id).where(Example.pool_id == pool_id, Example.id.in_(c))))
    if bad := [i for i in ids if i not in known]:
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise CurationError(f"example ids not in pool '{pool}': {bad[:10]}{more}")


def _record(s: Session, pool_id: int, actions: Sequence[tuple[int, str]], reason: str, author: str) -> str:
    """Append one batch in the caller's transaction (bulk insert: 100k rows stay fast)."""
    batch = uuid.uuid4().hex
    rows = [dict(pool_id=pool_id, example_id=e, action=a, reason=reason, author=author, batch=batch)
            for e, a in actions]
    for i in range(0, len(rows), CHUNK):
        s.execute(insert(Decision), rows[i:i + CHUNK])
    return batch


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield [int(x) for x in ids[i:i + CHUNK]]


@dataclass(frozen=True)
class Undone:
    """What an undo did: the batch it reverted, the new batch that records the revert, its size."""

    undone: str
    batch: str
    n_examples: int


def undo(store: Store, pool: str, author: str | None = None, actor: Actor | None = None) -> Undone | None:
    """Revert the newest action not yet undone (only `author`'s, when given); None if there is none.

    The revert is a new batch with reason "undo of <batch>" that sets each example of the undone
    batch back to its state just before it. Undo batches are never themselves undone, so
    undoing twice reverts the next older action. Target and revert are read and written in one
    locked transaction (see the module docstring). Needs a curator; a named actor's undo is
    recorded under their name.
    """
    signed = author_of(actor, None, "decide")
    with store.session(write=True) as s:
        pid = _lock_pool(s, pool)
        target = _undo_target(s, pid, author)
        if target is None:
            return None
        batch, who = target
        restore = _state_before(s, batch)
        by = author or who if actor is None or actor.local else signed
        return Undone(batch, _record(s, pid, restore, f"undo of {batch}", by), len(restore))


def undo_last(store: Store, pool: str, author: str | None = None, actor: Actor | None = None) -> str | None:
    """`undo`, returning only the id of the new (revert) batch."""
    done = undo(store, pool, author, actor)
    return done.batch if done else None


def _undo_target(s: Session, pool_id: int, author: str | None) -> tuple[str, str] | None:
    undo_reasons = select(Decision.reason).where(Decision.pool_id == pool_id,
                                                 Decision.reason.like("undo of %")).distinct()
    undone = {m.group(1) for r in s.scalars(undo_reasons) if (m := UNDO.fullmatch(r))}
    last = func.max(Decision.id).label("last")
    q = (select(Decision.batch, last, func.min(Decision.reason), func.min(Decision.author))
         .where(Decision.pool_id == pool_id).group_by(Decision.batch).order_by(desc(last)))
    if author:
        q = q.where(Decision.author == author)
    for batch, _, reason, who in s.execute(q):
        if not UNDO.fullmatch(reason) and batch not in undone:
            return batch, who
    return None


def _state_before(s: Session, batch: str) -> list[tuple[int, str]]:
    """(example, action) each example of `batch` had just before it; 'clear' when it had none."""
    b, d = aliased(Decision), aliased(Decision)
    prev = (select(b.example_id, func.max(d.id).label("prev_id"))
            .outerjoin(d, and_(d.example_id == b.example_id, d.pool_id == b.pool_id, d.id < b.id))
            .where(b.batch == batch).group_by(b.example_id).subquery())
    q = (select(prev.c.example_id, Decision.action).outerjoin(Decision, Decision.id == prev.c.prev_id)
         .order_by(prev.c.example_id))
    return [(e, a or "clear") for e, a in s.execute(q)]


def latest_decisions(pool_id):
    """The latest decision per example of a pool (a max-id subquery), 'clear' ones left out.

    The one definition of "current override" (latest wins, clear removes): Curate, Explore and
    the export manifest all read it. `pool_id` may be an int or a scalar SQL subquery.
    """
    newest = select(func.max(Decision.id)).where(Decision.pool_id == pool_id).group_by(Decision.example_id)
    return select(Decision).where(Decision.id.in_(newest), Decision.action != "clear")


def _overrides(s: Session, pool_id: int) -> dict[int, str]:
    q = latest_decisions(pool_id).with_only_columns(Decision.example_id, Decision.action)
    return dict(s.execute(q).all())


def current_overrides(store: Store, pool: str) -> dict[int, str]:
    """{example id: 'pin' | 'exclude'}: the latest decision per example, computed in SQL."""
    with store.session() as s:
        return _overrides(s, catalog.get_pool(s, pool).id)


def override_details(store: Store, pool: str) -> list[dict]:
    """The current overrides with who decided them, when and why (for manifests and review)."""
    with store.session() as s:
        return override_details_in(s, pool)


def override_details_in(s: Session, pool: str) -> list[dict]:
    """`override_details` in the caller's transaction (an export reads it in its snapshot)."""
    latest = latest_decisions(catalog.get_pool(s, pool).id).subquery()
    q = (select(Example.uid, latest.c.action, latest.c.reason, latest.c.author, latest.c.created_at)
         .join(latest, latest.c.example_id == Example.id).order_by(latest.c.id))
    return [dict(uid=u, action=a, reason=r, author=w, time=t.isoformat()) for u, a, r, w, t in s.execute(q)]


def audit(store: Store, pool: str, limit: int = 200) -> list[dict]:
    """The newest `limit` user actions of a pool, one row per batch, with a preview of its examples."""
    with store.session() as s:
        pid = catalog.get_pool(s, pool).id
        last = func.max(Decision.id).label("last")
        q = (select(Decision.batch, func.max(Decision.created_at), func.min(Decision.author),
                    func.min(Decision.action), func.max(Decision.action), func.count(), func.min(Decision.reason), last)
             .where(Decision.pool_id == pid).group_by(Decision.batch).order_by(desc(last)).limit(limit))
        rows = s.execute(q).all()
        previews = _previews(s, [r[0] for r in rows])
    return [dict(time=t, author=who, action=_label(lo, hi, reason), examples=n, reason=reason, batch=b,
                 uids=previews.get(b, ""))
            for b, t, who, lo, hi, n, reason, _ in rows]


def _label(lo: str, hi: str, reason: str) -> str:
    return "undo" if UNDO.fullmatch(reason) else lo if lo == hi else "mixed"


def _previews(s: Session, batches: list[str], k: int = 5) -> dict[str, str]:
    """The first `k` uids of each batch, by a window query (a batch may hold 100k rows)."""
    if not batches:
        return {}
    rn = func.row_number().over(partition_by=Decision.batch, order_by=Decision.id).label("rn")
    inner = (select(Decision.batch, Example.uid, rn).join(Example, Example.id == Decision.example_id)
             .where(Decision.batch.in_(batches)).subquery())
    found: dict[str, list[str]] = defaultdict(list)
    for b, uid in s.execute(select(inner.c.batch, inner.c.uid).where(inner.c.rn <= k).order_by(inner.c.rn)):
        found[b].append(uid)
    return {b: ", ".join(u) for b, u in found.items()}


def apply_to_filter(store: Store, pool: str, flt: catalog.ExampleFilter, action: str, reason: str,
                    author: str | None = None, actor: Actor | None = None) -> tuple[str, int]:
    """'Pin/exclude all N matching': acts on every match of the filter, not the visible page."""
    author_of(actor, author, "decide")
    ids = catalog.matching_ids(store, pool, flt)
    if not ids:
        raise CurationError("no example matches the filter")
    return decide(store, pool, ids, action, reason, author, actor), len(ids)


def apply_table_edits(store: Store, pool: str, rows: Sequence[Mapping], edited_rows: Mapping,
                      reason: str, author: str | None = None, actor: Actor | None = None) -> str | None:
    """Turn a table's checkbox edits ({row index: {"pin"|"exclude": bool}}) into one batch.

    A row with both boxes ticked is refused; unticking the box that is set clears the example.
    Returns the batch id, or None when the edits change nothing.
    """
    author = author_of(actor, author, "decide")
    actions = []
    for idx, change in edited_rows.items():
        row = rows[int(idx)]
        pin, exclude = bool(change.get("pin", row["pin"])), bool(change.get("exclude", row["exclude"]))
        if pin and exclude:
            raise CurationError(f"{row['uid']}: an example cannot be pinned and excluded at once")
        action = "pin" if pin else "exclude" if exclude else "clear"
        before = "pin" if row["pin"] else "exclude" if row["exclude"] else "clear"
        if action != before:
            actions.append((int(row["id"]), action))
    if not actions:
        return None
    reason = (reason or "").strip()
    if not reason and any(a != "clear" for _, a in actions):
        raise CurationError("write a reason before pinning or excluding")
    with store.session(write=True) as s:
        pid = _lock_pool(s, pool)
        _check_in_pool(s, pid, [e for e, _ in actions], pool)
        return _record(s, pid, actions, reason, author)


# --- the curated selection -------------------------------------------------------------------

@dataclass
class CuratedSelection:
    """A run's selection after overrides, and how it differs from the automatic one."""

    run_id: int
    pool: str
    percent: float | None
    n: int | None
    budget: int
    ids: np.ndarray  # every scored example, ascending id
    scores: np.ndarray  # aligned with ids
    ranks: np.ndarray  # aligned with ids, 1-based (score desc, id asc)
    auto: np.ndarray  # bool, aligned with ids: the run's automatic selection (Score.selected)
    selected_ids: list[int]  # rank order
    pinned: list[int]
    excluded: list[int]
    added: list[int]  # rank order: pinned, or filled in because of excludes
    removed: list[int]  # rank order: excluded, or pushed out by pins
    n_auto: int  # chosen by score
    cutoff_score: float
    name: str | None = None  # the saved selection's name when its (saved) budget was used

    @property
    def warning(self) -> str | None:
        """A budget above the pool is kept whole, and said so (not clamped in silence)."""
        return budget_warning(self.percent, self.n, len(self.ids))

    @property
    def n_selected(self) -> int:
        """Pins plus those chosen by score: at most the budget unless pins exceed it."""
        return len(self.selected_ids)

    def positions(self, example_ids: Sequence[int]) -> np.ndarray:
        """Index of each id in `ids` (vectorised), -1 for ids the run did not score."""
        arr = np.asarray(example_ids, np.int64)
        idx = np.minimum(np.searchsorted(self.ids, arr), max(len(self.ids) - 1, 0))
        found = (self.ids[idx] == arr) if len(self.ids) else np.zeros(len(arr), bool)
        return np.where(found, idx, -1)

    def rank_of(self, example_id: int) -> int | None:
        """1-based rank in the run (None if unscored): the order exports and tables use."""
        i = int(self.positions([example_id])[0])
        return None if i < 0 else int(self.ranks[i])

    def score_of(self, example_id: int) -> float | None:
        """The run's score of one example (None if unscored)."""
        i = int(self.positions([example_id])[0])
        return None if i < 0 else float(self.scores[i])

    def in_rank_order(self, example_ids: Iterable[int]) -> list[int]:
        """Distinct ids sorted like the ranking; unscored ids go last, by id."""
        arr = np.unique(np.fromiter((int(i) for i in example_ids), np.int64))
        pos = self.positions(arr)
        key = np.where(pos >= 0, self.ranks[np.maximum(pos, 0)] if len(self.ids) else 0, len(self.ids) + 1)
        return arr[np.lexsort((arr, key))].tolist()

    @cached_property
    def _sets(self) -> tuple[set[int], set[int]]:
        return set(self.pinned), set(self.selected_ids)

    def selected_by(self, example_id: int) -> str:
        """'pin' or 'auto' for a selected example, 'filter' for one exported only because shown."""
        pinned, chosen = self._sets
        return "pin" if example_id in pinned else "auto" if example_id in chosen else "filter"


def _load(s: Session, run_id: int) -> tuple[Run, str, np.ndarray, np.ndarray, np.ndarray]:
    run = s.get(Run, run_id)
    if run is None:
        raise CurationError(f"no run with id {run_id}")
    if run.status != "done":
        raise CurationError(f"run {run_id} is {run.status}, not done: wait for it to finish or pick another run")
    pool = s.get(Pool, run.pool_id).name
    conn = s.connection()  # the driver's own cursor: no Row objects, no type processing (4x faster)
    sql = (f"SELECT example_id, score, selected FROM {Score.__tablename__} "
           f"WHERE run_id = {markers(conn.dialect, 1)} ORDER BY example_id")
    cur = conn.connection.cursor()
    try:
        cur.execute(sql, (run_id,))
        rows = np.array(cur.fetchall(), SCORE_ROW)
    finally:
        cur.close()
    return run, pool, *(np.ascontiguousarray(rows[c]) for c in ("id", "score", "selected"))


def run_budget(store: Store, run_id: int) -> tuple[float | None, int | None]:
    """The budget Explore, Curate, export and check start from, as (percent, n): the run's saved
    selection (`selections.save_selection`), else its config's `select`."""
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        return selection_of(run).budget()


def curated_selection(store: Store, run_id: int, percent: float | None = None,
                      n: int | None = None) -> CuratedSelection:
    """Pins always in, excludes always out, the rest of the budget filled by score (one query)."""
    with store.session(snapshot=True) as s:
        return curated_selection_in(s, run_id, percent, n)


def curated_selection_in(s: Session, run_id: int, percent: float | None = None,
                         n: int | None = None) -> CuratedSelection:
    """`curated_selection` in the caller's transaction: scores and overrides from one snapshot."""
    run, pool, ids, scores, auto = _load(s, run_id)
    overrides = _overrides(s, run.pool_id)
    name = None
    if percent is None and n is None:
        saved = selection_of(run)
        (percent, n), name = saved.budget(), saved.name if saved.saved else None
    known = set(ids.tolist())
    pinned = sorted(e for e, a in overrides.items() if a == "pin" and e in known)
    excluded = sorted(e for e, a in overrides.items() if a == "exclude" and e in known)
    try:
        budget = budget_from(percent, n, len(ids))
        res = select_top(scores, ids, percent=percent, n=n, pinned=pinned, excluded=excluded)
    except ValueError as e:
        raise CurationError(f"budget: {e}") from None
    chosen = np.asarray(res.selected_ids, np.int64)

    def by_rank(some: np.ndarray) -> list[int]:
        return some[np.argsort(res.ranks[np.searchsorted(ids, some)])].tolist()

    return CuratedSelection(
        run_id=run_id, pool=pool, percent=percent, n=n, budget=budget, ids=ids, scores=scores,
        ranks=res.ranks, auto=auto, selected_ids=res.selected_ids, pinned=pinned, excluded=excluded,
        added=by_rank(np.setdiff1d(chosen, ids[auto])), removed=by_rank(np.setdiff1d(ids[auto], chosen)),
        n_auto=res.n_auto, cutoff_score=res.cutoff_score, name=name)


def shown_ids(sel: CuratedSelection, scope: str = "selection", matching: Iterable[int] | None = None) -> list[int]:
    """What the table shows, in rank order: the curated selection or the whole run, narrowed by a filter."""
    base = np.asarray(sel.selected_ids, np.int64) if scope == "selection" else sel.ids[np.argsort(sel.ranks)]
    if matching is not None:
        base = base[np.isin(base, np.fromiter(matching, np.int64))]
    return base.tolist()


def table_page(store: Store, sel: CuratedSelection, ids: Sequence[int], page: int = 0,
               size: int = 50) -> list[dict]:
    """One page of `ids` as editable rows: rank, score, selection state, pin/exclude and a preview."""
    page_ids = [int(i) for i in ids[page * size:(page + 1) * size]]
    with store.session() as s:
        found = {e.id: e for e in s.scalars(select(Example).where(Example.id.in_(page_ids)))}
    pinned, excluded, chosen = set(sel.pinned), set(sel.excluded), set(sel.selected_ids)
    return [dict(rank=sel.rank_of(i), score=sel.score_of(i), selected=i in chosen, pin=i in pinned,
                 exclude=i in excluded, **catalog._preview(found[i])) for i in page_ids]


def diff_rows(store: Store, sel: CuratedSelection, limit: int = 1000) -> list[dict]:
    """Added (+) and removed (−) examples versus the automatic selection, and why."""
    changes = [(e, "+") for e in sel.added[:limit]] + [(e, "−") for e in sel.removed[:limit]]
    with store.session() as s:
        uids = dict(s.execute(select(Example.id, Example.uid).where(Example.id.in_([e for e, _ in changes]))).all())
    pinned, excluded = set(sel.pinned), set(sel.excluded)
    why = {"+": lambda e: "pinned" if e in pinned else "filled in by score",
           "−": lambda e: "excluded" if e in excluded else "pushed out (pins or a smaller budget)"}
    return [dict(change=c, uid=uids[e], why=why[c](e), rank=sel.rank_of(e), score=sel.score_of(e))
            for e, c in changes]
