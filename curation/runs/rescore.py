"""Re-score without a job: with train features stored, a new preference set (or one more pair)
is only validation gradients and one streamed matrix product away from a new selection.

`rescore` is what the Preferences and Explore pages call right after an edit, in their own
process, and what `python -m curation rescore RUN_ID` does. It makes a new run (so history
stays truthful: the old run keeps the pairs it was scored with) and reports how the curated
selection moved: "+12 / -9 since the last edit". Fusion runs that fused the old run are fused
again with the new one in its place (`fuse.refuse_users`). Pins and excludes belong to the pool, so
they carry over by construction.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select

from curation.config import ScoreConfig
from curation.data.catalog import pool_hashes, run_feature_set
from curation.data.store import Pool, PreferenceSet, Run, Store
from curation.data.users import Actor, require
from curation.engine.featuresets import FeatureSet, content_keys, find_set
from curation.errors import CurationError
from curation.runs.jobs import merge_run_meta
from curation.workspace import Workspace


@dataclass
class Rescored:
    run_id: int
    base_run_id: int
    seconds: float
    added: list[int] = field(default_factory=list)  # in the new curated selection only
    removed: list[int] = field(default_factory=list)  # in the old one only
    refused: list[int] = field(default_factory=list)  # new fusion runs of the fusions that used the base run
    note: str = ""  # what was re-scored when it is not the base run's method (an auto run's choice)

    def summary(self) -> str:
        return (f"run #{self.run_id} (from #{self.base_run_id}) in {self.seconds:.1f} s: "
                f"+{len(self.added)} / -{len(self.removed)} since the last scoring" + (f"; {self.note}" if self.note else ""))


def refusal(store: Store, run_id: int, method: str | None = None) -> str | None:
    """Why ``run_id`` cannot be re-scored in place (with ``method``; default its own, an auto run's
    choice), or None; cheap: the page disables its button with this as the reason, `rescore` raises it.
    Whether the features are still stored is `stored_features`' question."""
    try:
        plan(store, run_id, method)
    except CurationError as e:
        return str(e)
    return None


def plan(store: Store, run_id: int, method: str | None) -> tuple[str, dict, str]:
    """(method, options over the run's, note): what re-scoring ``run_id`` runs. An auto run
    re-scores its gradient winner (`auto.rescore_as`); every method must be a gradient one."""
    from curation.methods import method_class  # not the gradient module: a model-free run stays torch-free

    with store.session() as s:
        base = s.get(Run, run_id)
        if base is None or base.status != "done":
            raise CurationError(f"run {run_id} is not a finished run")
        base_method, workdir = base.method, base.workdir
    options, note = {}, ""
    if method is None and base_method == "auto":
        from curation.methods.auto import rescore_as
        method, options, note = rescore_as(workdir)
    method = method or base_method
    if not method_class(method).labels.gradient:
        raise CurationError(f"re-scoring in place needs a gradient method (rose, less, nice, contrast); "
                            f"launch a {method} run instead")
    return method, options, note


def stored_features(store: Store, run_id: int, ws: Workspace | None = None) -> FeatureSet | None:
    """The feature set a finished gradient run used, if it still covers the run's whole pool."""
    ws = ws or Workspace.from_env()
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        fid, hashes = run_feature_set(run.meta), pool_hashes(s, run.pool_id)
    if not fid:
        return None
    try:
        fset = find_set(ws.home, fid)
    except CurationError:
        return None
    return fset if fset.coverage(content_keys(hashes)) == len(hashes) else None


def rescore(store: Store, run_id: int, prefs: str | None = None, method: str | None = None,
            ws: Workspace | None = None, echo=None, overrides: dict | None = None,
            options: dict | None = None, actor: Actor | None = None) -> Rescored:
    """Score ``prefs`` (default: the base run's preference set as it is now) with the base
    run's settings and stored features, in this process; returns the new run and the diff.

    ``overrides`` replaces top-level config keys that only touch the validation side or the
    scoring (``beta``, ``options``); train-feature settings would not find stored features.
    ``options`` are set over the run's method options (``--option alpha=0.5``).
    """
    require(actor, "score")
    from curation.review.curate import curated_selection
    from curation.runs.execute import create_run, execute_run

    t0 = time.time()
    ws = (ws or Workspace.from_env()).ensure()
    method, chosen, note = plan(store, run_id, method)
    with store.session() as s:
        base = s.get(Run, run_id)
        pool = s.get(Pool, base.pool_id).name
        if prefs is None and base.prefs_id is not None:
            prefs = s.get(PreferenceSet, base.prefs_id).name
        cfg = ScoreConfig.from_dict({**base.config, **(overrides or {})})
        base_meta = base.meta
    if "options" not in (overrides or {}):
        cfg = cfg.for_method(method)
    cfg.method = method
    if chosen or options:
        cfg.options = {**cfg.options, **chosen, **(options or {})}
    if (fset := stored_features(store, run_id, ws)) is None:
        raise CurationError(f"run {run_id}'s train features are not stored for the whole pool "
                            f"'{pool}' any more; launch a scoring run")
    cfg.threads = max(cfg.thread_plan()["threads"], os.cpu_count() or 1)  # the curator is waiting: use the machine
    hint = {"set": fset.id, "warmup": (base_meta or {}).get("warmup")}
    new_id = create_run(store, pool, prefs, cfg, ws, meta={"feature_hint": hint}, actor=actor)
    merge_run_meta(store, new_id, rescored_from=run_id)
    execute_run(store, new_id, ws, echo=echo)
    _reuse_map(store, run_id, new_id)
    from curation.runs.fuse import refuse_users
    refused = refuse_users(store, run_id, new_id, ws, echo)
    old, new = (curated_selection(store, r) for r in (run_id, new_id))
    a, b = np.asarray(old.selected_ids, np.int64), np.asarray(new.selected_ids, np.int64)
    return Rescored(new_id, run_id, time.time() - t0, added=np.setdiff1d(b, a).tolist(),
                    removed=np.setdiff1d(a, b).tolist(), refused=refused, note=note)


def _reuse_map(store: Store, base_id: int, new_id: int) -> None:
    """The base run's map for the new run (same train features; see `maps.reuse_map`)."""
    from curation.review.maps import reuse_map

    with store.session() as s:
        base, new = s.get(Run, base_id).workdir, s.get(Run, new_id).workdir
    if base and new:
        reuse_map(Path(base), Path(new))


def latest_rescorable(store: Store, prefs: str, ws: Workspace | None = None) -> int | None:
    """The newest finished gradient run of ``prefs`` (an auto run that chose one included) whose
    features are stored, or None."""
    with store.session() as s:
        ps = s.scalar(select(PreferenceSet).where(PreferenceSet.name == prefs))
        if ps is None:
            return None
        runs = s.scalars(select(Run).where(Run.prefs_id == ps.id, Run.status == "done",
                                           Run.method.in_(("rose", "less", "nice", "contrast", "auto")))
                         .order_by(Run.id.desc()).limit(20)).all()
        ids = [r.id for r in runs if not (r.meta or {}).get("internal")][:5]  # never a check's sub-run
    return next((i for i in ids if refusal(store, i) is None and stored_features(store, i, ws) is not None), None)
