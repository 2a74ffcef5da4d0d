"""`fuse`: a new run (method ``fusion``) from finished runs on one pool, by weighted
reciprocal-rank fusion (`curation.methods.fusion`). Its scores are stored like any run's, so
Explore, compare, check and export work on it; its meta records the input runs and weights.

Re-scoring an input run makes a new run (`rescore`: history stays truthful), so `refuse_users`
makes a new fusion run of every fusion that used the old one, with the new run in its place.
"""

from __future__ import annotations

from typing import Sequence

from sqlalchemy import select

from curation.config import ScoreConfig
from curation.data.store import Pool, PreferenceSet, Run, Store
from curation.data.users import Actor, require
from curation.errors import CurationError
from curation.workspace import Workspace


def _inputs(store: Store, run_ids: Sequence[int]) -> list[Run]:
    """The input runs, checked: at least two distinct, each finished, all on one pool."""
    if len(set(run_ids)) < 2:
        raise CurationError("fuse needs at least two different finished runs")
    with store.session() as s:
        runs = []
        for run_id in run_ids:
            run = s.get(Run, int(run_id))
            if run is None:
                raise CurationError(f"no run with id {run_id}")
            if run.status != "done":
                raise CurationError(f"run {run_id} is {run.status}: fuse finished runs only")
            s.expunge(run)
            runs.append(run)
        pools = {r.pool_id: s.get(Pool, r.pool_id).name for r in runs}
    if len(pools) > 1:
        where = ", ".join(f"run {r.id} on pool '{pools[r.pool_id]}'" for r in runs)
        raise CurationError(f"fuse needs runs on one pool; got {where}")
    return runs


def fuse(store: Store, run_ids: Sequence[int], weights: Sequence[float] | None = None,
         ws: Workspace | None = None, echo=None, meta: dict | None = None, actor: Actor | None = None) -> int:
    """Fuse finished runs of one pool into a new, finished ``fusion`` run; returns its id.

    The new run takes the first input's settings (so `check`'s baselines use its model) and,
    when the inputs share one preference set, that set and the first input's pair snapshot.
    """
    require(actor, "score")
    from curation.methods.fusion import check_weights
    from curation.runs.execute import create_run, execute_run

    runs = _inputs(store, run_ids)
    weights = check_weights(weights, len(runs))
    with store.session() as s:
        pool = s.get(Pool, runs[0].pool_id).name
        prefs_ids = {r.prefs_id for r in runs}
        prefs = s.get(PreferenceSet, runs[0].prefs_id).name if len(prefs_ids) == 1 and runs[0].prefs_id else None
    cfg = ScoreConfig.from_dict(runs[0].config).for_method("fusion")
    cfg.options = {"runs": [r.id for r in runs], "weights": weights}
    pairs = next(((r.meta or {}).get("pairs") for r in runs if (r.meta or {}).get("pairs")), None) if prefs else None
    new_id = create_run(store, pool, prefs, cfg, ws, pairs=pairs, actor=actor,
                        meta={"fused_from": [r.id for r in runs], "fusion_weights": weights, **(meta or {})})
    execute_run(store, new_id, ws, echo=echo)
    return new_id


def fusion_users(store: Store, run_id: int) -> list[int]:
    """Finished fusion runs that fuse ``run_id`` (a check's internal runs left out)."""
    with store.session() as s:
        runs = s.scalars(select(Run).where(Run.method == "fusion", Run.status == "done")).all()
        return [r.id for r in runs if run_id in ((r.meta or {}).get("fused_from") or [])
                and not (r.meta or {}).get("internal")]


def refuse_users(store: Store, old_id: int, new_id: int, ws: Workspace | None = None, echo=None) -> list[int]:
    """After ``old_id`` was re-scored as ``new_id``: a new fusion run of each fusion that used
    ``old_id``, with ``new_id`` in its place and the same weights; returns the new fusion runs."""
    made = []
    for fusion_id in fusion_users(store, old_id):
        with store.session() as s:
            meta = s.get(Run, fusion_id).meta or {}
        inputs = [new_id if r == old_id else r for r in meta["fused_from"]]
        made.append(fuse(store, inputs, meta.get("fusion_weights"), ws, echo, meta={"refused_from": fusion_id}))
    return made
