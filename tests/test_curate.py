"""Overrides on a run's selection: decisions, undo, the audit trail, budgets and the diff."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, insert, select

from curation.data import catalog
from curation.data.imports import import_pool
from curation.data.store import Decision, Example, Pool, PreferenceSet, Run, Score, Store
from curation.engine.select import select_top
from curation.errors import CurationError
from curation.review import curate

RUN_CONFIG = {"method": "rose", "model": {"name_or_path": "tiny"}, "warmup": {"seed": 3, "percent": 5},
              "features": {"seed": 7, "projector": "sparse_jl"}, "select": {"percent": None, "n": 3}}


def conv(i: int) -> dict:
    word = "zebra" if i % 3 == 0 else "plain"
    return {"messages": [{"role": "user", "content": f"Question {i} about a {word}?"},
                         {"role": "assistant", "content": f"Answer {i}."}]}


def seed_run(store: Store, folder: Path, records: list[dict], name: str = "p", select_n: int = 3,
             status: str = "done", scores: list[float] | None = None) -> tuple[int, list[int]]:
    """Import `records` as a pool and store a finished run over it without any model.

    Scores fall with import order (the first record ranks first) unless given.
    """
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert import_pool(store, path, name=name).n_ok == len(records)
    with store.session() as s:
        pool = catalog.get_pool(s, name)
        ids = list(s.scalars(select(Example.id).where(Example.pool_id == pool.id).order_by(Example.id)))
        scores = scores if scores is not None else [float(len(ids) - k) for k in range(len(ids))]
        prefs = s.scalar(select(PreferenceSet).where(PreferenceSet.name == "prefs")) or PreferenceSet(name="prefs")
        s.add(prefs)
        s.flush()
        config = {**RUN_CONFIG, "select": {"percent": None, "n": select_n}}
        run = Run(pool_id=pool.id, prefs_id=prefs.id, method="rose", config=config, status=status,
                  meta={"projector": {"kind": "sparse_jl", "k": 64, "seed": 7}}, stage_times={})
        s.add(run)
        s.flush()
        sel = select_top(scores, ids, n=select_n)
        chosen = set(sel.selected_ids)
        s.execute(insert(Score), [dict(run_id=run.id, example_id=e, score=sc, rank=int(r), selected=e in chosen,
                                       subtask=None, components={})
                                  for e, sc, r in zip(ids, scores, sel.ranks)])
        return run.id, ids


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'c.db'}")


@pytest.fixture
def seeded(store, tmp_path) -> tuple[int, list[int]]:
    return seed_run(store, tmp_path, [conv(i) for i in range(10)])


def all_decisions(store: Store) -> list[tuple]:
    with store.session() as s:
        return [(d.id, d.example_id, d.action, d.reason, d.author, d.batch, d.created_at)
                for d in s.scalars(select(Decision).order_by(Decision.id))]


def test_pin_exclude_clear_latest_wins(store, seeded):
    _, ids = seeded
    b1 = curate.decide(store, "p", ids[:2], "pin", "on topic")
    curate.decide(store, "p", [ids[1]], "exclude", "duplicate")
    curate.decide(store, "p", [ids[0]], "clear", "")
    assert len(b1) == 32 and int(b1, 16) >= 0
    assert curate.current_overrides(store, "p") == {ids[1]: "exclude"}
    details = curate.override_details(store, "p")
    assert [(d["action"], d["reason"], d["author"]) for d in details] == [("exclude", "duplicate", "curator")]


def test_decide_refuses_bad_input_and_writes_nothing(store, seeded, tmp_path):
    _, ids = seeded
    _, other = seed_run(store, tmp_path, [conv(i) for i in range(100, 104)], name="q")
    with pytest.raises(CurationError, match="unknown action"):
        curate.decide(store, "p", ids[:1], "delete", "x")
    with pytest.raises(CurationError, match="reason is required"):
        curate.decide(store, "p", ids[:1], "pin", "  ")
    with pytest.raises(CurationError, match=rf"not in pool 'p': \[{other[0]}, {other[1]}\]"):
        curate.decide(store, "p", [ids[0], other[0], other[1]], "exclude", "bad")
    with pytest.raises(CurationError, match="no examples"):
        curate.decide(store, "p", [], "pin", "x")
    assert all_decisions(store) == []


def test_undo_restores_the_previous_state_and_twice_goes_further_back(store, seeded):
    _, (a, b, c, *_) = seeded
    b1 = curate.decide(store, "p", [a], "pin", "keep")
    b2 = curate.decide(store, "p", [a, b], "exclude", "noise")
    u1 = curate.undo_last(store, "p")
    assert curate.current_overrides(store, "p") == {a: "pin"}
    u2 = curate.undo_last(store, "p")
    assert curate.current_overrides(store, "p") == {}
    assert curate.undo_last(store, "p") is None  # everything undone; undos are never undone
    with store.session() as s:
        reasons = dict(s.execute(select(Decision.batch, Decision.reason).where(Decision.batch.in_([u1, u2]))).all())
    assert reasons == {u1: f"undo of {b2}", u2: f"undo of {b1}"}
    b3 = curate.decide(store, "p", [c], "pin", "new")
    assert curate.undo_last(store, "p") is not None and curate.current_overrides(store, "p") == {}
    assert b3 != b1


def test_undo_only_my_actions_when_author_given(store, seeded):
    _, (a, b, *_) = seeded
    curate.decide(store, "p", [a], "pin", "mine", author="ann")
    curate.decide(store, "p", [b], "pin", "theirs", author="bob")
    curate.undo_last(store, "p", author="ann")
    assert curate.current_overrides(store, "p") == {b: "pin"}
    assert curate.audit(store, "p")[0]["author"] == "ann"
    assert curate.undo_last(store, "p", author="ann") is None


def test_audit_trail_is_append_only(store, seeded):
    _, ids = seeded
    curate.decide(store, "p", ids[:7], "pin", "good")
    before = all_decisions(store)
    curate.decide(store, "p", ids[:2], "clear", "")
    curate.undo_last(store, "p")
    curate.undo_last(store, "p")
    after = all_decisions(store)
    assert after[:len(before)] == before and len(after) == len(before) + 2 + 2 + 7
    rows = curate.audit(store, "p")
    assert [(r["action"], r["examples"]) for r in rows] == [("undo", 7), ("undo", 2), ("clear", 2), ("pin", 7)]
    assert rows[-1]["reason"] == "good" and rows[-1]["uids"].count(",") == 4  # a preview of 5 uids
    assert len(curate.audit(store, "p", limit=1)) == 1


def test_curated_selection_budget_pins_excludes_and_diff(store, seeded):
    run, ids = seeded  # scores fall with id: the automatic top 3 are ids[0:3]
    sel = curate.curated_selection(store, run)
    assert (sel.budget, sel.selected_ids, sel.added, sel.removed) == (3, ids[:3], [], [])
    curate.decide(store, "p", [ids[8]], "pin", "must have")
    curate.decide(store, "p", ids[:2], "exclude", "off topic")
    sel = curate.curated_selection(store, run)
    assert sel.selected_ids == [ids[2], ids[3], ids[8]] and sel.n_auto == 2
    assert (sel.added, sel.removed) == ([ids[3], ids[8]], ids[:2])
    why = {r["uid"]: (r["change"], r["why"]) for r in curate.diff_rows(store, sel)}
    assert sorted(why.values()) == [("+", "filled in by score"), ("+", "pinned"),
                                    ("−", "excluded"), ("−", "excluded")]
    curate.decide(store, "p", ids[:2], "clear", "")
    curate.decide(store, "p", [ids[9]], "pin", "also")
    sel = curate.curated_selection(store, run)
    assert sel.selected_ids == [ids[0], ids[8], ids[9]] and sel.removed == ids[1:3]
    pushed = {r["why"] for r in curate.diff_rows(store, sel) if r["change"] == "−"}
    assert pushed == {"pushed out (pins or a smaller budget)"}
    big = curate.curated_selection(store, run, percent=50)
    assert big.budget == 5 and big.selected_ids == [ids[0], ids[1], ids[2], ids[8], ids[9]]
    assert curate.curated_selection(store, run, n=1).selected_ids == [ids[8], ids[9]]  # pins beat the budget
    with pytest.raises(CurationError, match="budget"):
        curate.curated_selection(store, run, percent=5, n=3)


def test_curated_selection_needs_a_finished_run(store, tmp_path):
    run, _ = seed_run(store, tmp_path, [conv(i) for i in range(4)], status="running")
    with pytest.raises(CurationError, match="running, not done"):
        curate.curated_selection(store, run)
    with pytest.raises(CurationError, match="no run"):
        curate.curated_selection(store, 999)


def test_apply_to_filter_acts_on_every_match(store, seeded):
    _, ids = seeded
    batch, n = curate.apply_to_filter(store, "p", catalog.ExampleFilter(search="zebra"), "exclude", "animals")
    assert n == 4 and set(curate.current_overrides(store, "p")) == {ids[0], ids[3], ids[6], ids[9]}
    assert curate.undo_last(store, "p") and curate.current_overrides(store, "p") == {}
    with pytest.raises(CurationError, match="no example matches"):
        curate.apply_to_filter(store, "p", catalog.ExampleFilter(search="giraffe"), "pin", "x")


def test_table_edits_become_one_batch(store, seeded):
    run, ids = seeded
    sel = curate.curated_selection(store, run)
    shown = curate.shown_ids(sel, "pool")
    assert shown == ids
    rows = curate.table_page(store, sel, shown, page=0, size=4)
    assert [r["id"] for r in rows] == ids[:4] and rows[0]["selected"] and not rows[3]["selected"]
    with pytest.raises(CurationError, match="reason"):
        curate.apply_table_edits(store, "p", rows, {0: {"exclude": True}}, "")
    with pytest.raises(CurationError, match="pinned and excluded"):
        curate.apply_table_edits(store, "p", rows, {1: {"pin": True, "exclude": True}}, "x")
    assert curate.apply_table_edits(store, "p", rows, {2: {"pin": False}}, "") is None  # no change
    curate.apply_table_edits(store, "p", rows, {0: {"exclude": True}, 3: {"pin": True}}, "why not")
    assert curate.current_overrides(store, "p") == {ids[0]: "exclude", ids[3]: "pin"}
    assert len(curate.audit(store, "p")) == 1 and curate.audit(store, "p")[0]["action"] == "mixed"
    rows = curate.table_page(store, curate.curated_selection(store, run), shown, size=4)
    curate.apply_table_edits(store, "p", rows, {3: {"pin": False}}, "")
    assert curate.current_overrides(store, "p") == {ids[0]: "exclude"}
    assert curate.shown_ids(sel, "selection", matching=[ids[1], ids[5]]) == [ids[1]]


def test_curated_selection_at_100k_examples_with_bulk_overrides(store):
    """Budget math holds at scale: 20k excludes never enter, 100 pins always do (speed: see README)."""
    n = 100_000
    with store.session() as s:
        pool_id = s.execute(insert(Pool).values(name="big", n_examples=n).returning(Pool.id)).scalar()
        s.execute(insert(Example), [dict(id=i, pool_id=pool_id, uid=f"u{i}", content_hash=f"h{i}", source="s",
                                         fmt="messages", line=i, messages=[], original={}, n_turns=1,
                                         prompt_chars=1, response_chars=1, total_chars=2) for i in range(1, n + 1)])
        run = Run(pool_id=pool_id, method="rose", config=RUN_CONFIG, status="done", meta={}, stage_times={})
        s.add(run)
        s.flush()
        scores = np.random.default_rng(0).random(n)
        s.execute(insert(Score), [dict(run_id=run.id, example_id=i + 1, score=float(scores[i]), rank=0,
                                       selected=i < 5000, subtask=None, components={}) for i in range(n)])
    curate.decide(store, "big", range(1, 20_001), "exclude", "bulk")
    curate.decide(store, "big", range(50_000, 50_100), "pin", "keep")
    sel = curate.curated_selection(store, run.id, percent=5)
    assert sel.n_selected == 5000 and len(sel.pinned) == 100 and len(sel.excluded) == 20_000
    chosen = set(sel.selected_ids)
    assert set(range(50_000, 50_100)) <= chosen and not chosen & set(range(1, 20_001))
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 20_100
