"""A scoring run from start to stored selection: create, execute (here or in a worker), show.

`execute_run` is what both `python -m curation score` (foreground) and the background worker
call. It is resumable: every stage keeps its finished work on disk (warmup epochs, feature
shards), so running it again on the same run id picks up where a crash or kill left off.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sqlalchemy import delete, select

from curation.config import ScoreConfig
from curation.data.catalog import get_pool, get_prefset, pairs_hash, pairs_snapshot, pairs_version
from curation.data.store import STAGING_PREFIX, Example, Pool, PreferenceSet, Run, Score, Store
from curation.data.store.db import markers, retry_locked
from curation.data.store.models import utcnow
from curation.data.users import Actor, author_of
from curation.engine.select import select_top
from curation.errors import CurationError
from curation.methods import ScoreInputs, ScoreOutput, ValPair, get_method
from curation.runs.jobs import Cancelled, Reporter, live_worker
from curation.runs.progress import (
    MODEL_METHODS,
    TINY_BUILD_S,
    TINY_STAGE,
    Estimate,
    StageCost,
    build_estimate,
    estimate_cost,  # noqa: F401  (runs.estimate_cost: the pages' and CLI's entry)
    run_progress,
    tiny_needs_build,
)
from curation.workspace import Workspace

SCORE_BATCH = 20_000


def create_run(store: Store, pool: str, prefs: str | None, config: ScoreConfig,
               ws: Workspace | None = None, pairs: list[dict] | None = None, meta: dict | None = None,
               actor: Actor | None = None) -> int:
    """Register a run (status queued) after checking its inputs exist and fit the method.

    ``pairs`` replaces the preference set's pairs (a subset of them: `check` scores with its
    scoring part only); ``meta`` is added to the run's metadata (e.g. ``check_of``). Needs a
    curator, recorded as ``meta["created_by"]``.
    """
    meta = {"created_by": author_of(actor, None, "score"), **(meta or {})}
    method = get_method(config.method)
    ws = (ws or Workspace.from_env()).ensure()
    warning = _model_warning(store, pool, config, ws)
    with store.session() as s:
        p = get_pool(s, pool)
        ps = get_prefset(s, prefs) if prefs else None
        if method.needs_pairs and not (pairs if pairs is not None else (ps is not None and ps.pairs)):
            raise CurationError(f"method {config.method!r} needs a preference set with at least one pair")
        if pairs is None:
            pairs = pairs_snapshot(s, ps.id if ps else None)
        extra = {"pairs": pairs, "pairs_sha256": pairs_hash(pairs), **(meta or {})}
        if warning:
            extra["model_warning"] = warning
        run = Run(pool_id=p.id, prefs_id=ps.id if ps else None, method=config.method, config=config.to_dict(),
                  status="queued", stage_times={}, meta=extra)
        s.add(run)
        s.flush()
        run.workdir = str(ws.run_dir(run.id))
        return run.id


def _model_warning(store: Store, pool: str, config: ScoreConfig, ws: Workspace) -> str | None:
    """Why the run's model will not describe the pool (the tiny model on a foreign pool), kept
    in ``meta.model_warning`` so Explore, check and the dataset card say it too."""
    if config.method not in MODEL_METHODS:
        return None
    from curation.engine.poolfit import model_warning
    return model_warning(store, pool, config.model.name_or_path, ws.home)


def _fetcher(store: Store):
    def fetch(ids: Sequence[int]) -> list[list[dict]]:
        with store.session() as s:
            rows = dict(s.execute(select(Example.id, Example.messages).where(Example.id.in_(list(ids)))).all())
        return [rows[int(i)] for i in ids]
    return fetch


def _hash_fetcher(store: Store, pool_id: int):
    """Messages by content hash: this pool's unique index first, any pool for the rest."""
    def fetch(hashes: Sequence[str]) -> list[list[dict]]:
        wanted = list(dict.fromkeys(hashes))
        with store.session() as s:
            rows = dict(s.execute(select(Example.content_hash, Example.messages).where(
                Example.pool_id == pool_id, Example.content_hash.in_(wanted))).all())
            rest = [h for h in wanted if h not in rows]
            for i in range(0, len(rest), 500):
                rows.update(s.execute(select(Example.content_hash, Example.messages)
                                      .where(Example.content_hash.in_(rest[i: i + 500]))).all())
        missing = [h for h in wanted if h not in rows]
        if missing:
            raise CurationError(f"{len(missing)} examples of a stored feature segment are in no pool "
                                f"any more (e.g. content {missing[0][:12]}); remove the feature set "
                                "with `python -m curation features rm ID`")
        return [rows[h] for h in hashes]
    return fetch


def _inputs(store: Store, run: Run, ws: Workspace, reporter: Reporter) -> ScoreInputs:
    """Everything a method needs, read once. The pairs are the run's snapshot (taken when it
    was created), so a resume after an edit of the preference set scores what it started with."""
    with store.session() as s:
        rows = s.execute(select(Example.id, Example.content_hash).where(Example.pool_id == run.pool_id)
                         .order_by(Example.id)).all()
        snapshot = (run.meta or {}).get("pairs")
        if snapshot is None:  # runs created before snapshots
            snapshot = pairs_snapshot(s, run.prefs_id)
        pool = s.get(Pool, run.pool_id).name
    pairs = [ValPair(p["prompt"], p["prompt_messages"], p["chosen"], p["rejected"], p["subtask"])
             for p in snapshot]
    config = ScoreConfig.from_dict(run.config)
    return ScoreInputs(example_ids=[r[0] for r in rows], fetch=_fetcher(store), pairs=pairs, config=config,
                       workdir=Path(run.workdir), workspace=ws, reporter=reporter, pool=pool,
                       content_hashes=[r[1] for r in rows], fetch_hashes=_hash_fetcher(store, run.pool_id),
                       scores_of=lambda other: load_scores(store, other),
                       feature_hint=(run.meta or {}).get("feature_hint"))


def _use_threads(config: ScoreConfig) -> dict:
    """This process computes the run: give torch the run's CPU thread count (see ScoreConfig.threads);
    returns the plan (setting, threads, and for "auto" the cores and load that decided it).
    A model-free method never loads torch, so it is not loaded here just to be told."""
    plan = config.thread_plan()
    if config.method in MODEL_METHODS or "torch" in sys.modules:
        import torch
        torch.set_num_threads(plan["threads"])
    return plan


def _set(store: Store, run_id: int, attempts: int = 4, **values) -> None:
    def write() -> None:
        with store.session() as s:
            run = s.get(Run, run_id)
            for k, v in values.items():
                setattr(run, k, v)
    retry_locked(write, attempts=attempts, what=f"run {run_id}")


def _claim(store: Store, run_id: int) -> bool:
    """Mark the run as ours (running, this pid) unless it is done (False) or another live
    process works on it (a `CurationError`: two workers would race on its files and scores)."""
    def claim() -> bool:
        with store.session(write=True) as s:
            run = s.get(Run, run_id)
            if run is None:
                raise CurationError(f"no run with id {run_id}")
            if run.status == "done":
                return False
            if pid := live_worker(run):
                raise CurationError(f"run {run_id} is already being computed by process {pid} "
                                    f"(heartbeat {run.heartbeat:%H:%M:%S} UTC); cancel it or wait")
            run.status, run.pid, run.started_at, run.heartbeat = "running", os.getpid(), utcnow(), utcnow()
            run.error, run.cancel_requested = None, False
            # seconds earlier processes worked on it: a resumed run's elapsed time is the whole
            run.meta = {**(run.meta or {}), "earlier_s": round(sum((run.stage_times or {}).values()), 3)}
            return True
    return retry_locked(claim, what=f"run {run_id}")


def _record_failure(store: Store, run_id: int, **values) -> None:
    """Record how a run ended, retrying a locked database for minutes; if even that fails the
    log says so (the heartbeat then goes stale and the run shows as dead, not running)."""
    try:
        _set(store, run_id, attempts=8, **values)
    except Exception as e:  # noqa: BLE001  (the original error is what gets re-raised)
        print(f"run {run_id}: could not record its end ({values.get('status')}): {e}", file=sys.stderr)


def execute_shard(store: Store, run_id: int, rank: tuple[int, int], ws: Workspace | None = None,
                  echo=None) -> None:
    """Write rank `rank` = (i, N)'s train-feature shards of a run; status stays with the unsharded pass."""
    ws = (ws or Workspace.from_env()).ensure()
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
    method = get_method(run.method)
    if not method.shards_features:  # nothing to split: the unsharded pass does all the work
        return
    inputs = _inputs(store, run, ws, Reporter(None, None, echo))
    _use_threads(inputs.config)
    inputs.rank = rank
    inputs.workdir.mkdir(parents=True, exist_ok=True)
    method.score(inputs)


def execute_run(store: Store, run_id: int, ws: Workspace | None = None, echo=None) -> None:
    """Run every stage of `run_id` in this process; failures are recorded on the run, then re-raised."""
    ws = (ws or Workspace.from_env()).ensure()
    if not _claim(store, run_id):
        return
    with store.session() as s:
        run = s.get(Run, run_id)
    reporter = Reporter(store, run_id, echo)
    try:
        inputs = _inputs(store, run, ws, reporter)
        reporter.note(threads=_use_threads(inputs.config))
        inputs.workdir.mkdir(parents=True, exist_ok=True)
        _build_tiny_first(run.method, inputs.config, ws, reporter)
        out = get_method(run.method).score(inputs)
        reporter.stage("select", len(inputs.example_ids))
        n_sel = store_scores(store, run_id, inputs.example_ids, out, inputs.config)
        times = reporter.finish()
        reporter.note(**_json_safe({**out.meta, "subtasks": out.subtasks}))
        _set(store, run_id, status="done", finished_at=utcnow(), n_selected=n_sel, stage_times=times)
    except Cancelled:
        _record_failure(store, run_id, status="cancelled", finished_at=utcnow(), stage_times=reporter.finish())
        raise
    except BaseException as e:  # noqa: BLE001  (recorded for the UI, then re-raised)
        traceback.print_exc()
        times = _safely(reporter.finish)
        _record_failure(store, run_id, status="failed", finished_at=utcnow(), error=f"{type(e).__name__}: {e}",
                        **({"stage_times": times} if times is not None else {}))
        raise


def _build_tiny_first(method: str, config: ScoreConfig, ws: Workspace, reporter: Reporter) -> None:
    """Build the offline tiny model in a stage of its own (`TINY_STAGE`), so the page says what
    the first run's minutes go to instead of a long "load model"."""
    if method not in MODEL_METHODS or config.model.name_or_path != "tiny" or not tiny_needs_build(ws.home):
        return
    from curation.engine.tiny import ensure_tiny_model

    reporter.stage(TINY_STAGE)
    ensure_tiny_model(ws.home, progress=lambda s, d, t: reporter.update(d, t))


def _safely(fn):
    """``fn()``, or None when it fails (while recording another failure)."""
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return None


def _json_safe(value):
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _components_json(out: ScoreOutput) -> list[str]:
    """Each row's explanation (per-subtask means, per-checkpoint parts; 8 significant digits,
    float32's precision) as JSON text, one %-format per row: json.dumps per row was a third of
    storing 100k scores."""
    fields, cols = [], []
    if out.subtask_means is not None:
        names = [json.dumps(t).replace("%", "%%") for t in out.subtasks]
        fields.append('"subtasks": {' + ", ".join(f"{k}: %.8g" for k in names) + "}")
        cols.append(out.subtask_means)
    if out.per_checkpoint is not None:
        fields.append('"checkpoints": [' + ", ".join(["%.8g"] * out.per_checkpoint.shape[1]) + "]")
        cols.append(out.per_checkpoint)
    if not cols:
        return ["{}"] * len(out.scores)
    values = np.concatenate([np.asarray(c, np.float64).reshape(len(out.scores), -1) for c in cols], axis=1)
    if not np.isfinite(values).all():  # NaN/inf are no JSON numbers: null, row by row
        return [json.dumps(_split(row, out)).replace("NaN", "null").replace("Infinity", "null")
                for row in values.tolist()]
    fmt = "{" + ", ".join(fields) + "}"
    return [fmt % tuple(row) for row in values.tolist()]


def _split(row: list[float], out: ScoreOutput) -> dict:
    """One row of `_components_json`'s value matrix back as its components dict."""
    n_sub = len(out.subtasks) if out.subtask_means is not None else 0
    comp: dict = {}
    if out.subtask_means is not None:
        comp["subtasks"] = dict(zip(out.subtasks, row[:n_sub]))
    if out.per_checkpoint is not None:
        comp["checkpoints"] = row[n_sub:]
    return comp


def store_scores(store: Store, run_id: int, ids: list[int], out: ScoreOutput, cfg: ScoreConfig) -> int:
    """Replace the run's scores with `out` and the automatic selection; returns how many were selected.

    Rows go straight to the driver's executemany (the ORM's bulk insert spent ~3 s of 3.6 s on
    100k rows in per-row bookkeeping); one transaction, so a kill leaves the old scores or all
    the new ones.
    """
    sel = select_top(out.scores, ids, percent=cfg.select.percent, n=cfg.select.n)
    chosen = np.isin(np.asarray(ids, np.int64), np.asarray(sel.selected_ids, np.int64))
    drivers = ([out.subtasks[int(d)] for d in out.driver] if out.driver is not None and out.subtasks
               else [None] * len(ids))
    rows = list(zip([run_id] * len(ids), [int(i) for i in ids], out.scores.astype(np.float64).tolist(),
                    sel.ranks.astype(np.int64).tolist(), chosen.tolist(), drivers, _components_json(out)))
    columns = ("run_id", "example_id", "score", "rank", "selected", "subtask", "components")
    with store.session(bulk=True) as s:
        s.execute(delete(Score).where(Score.run_id == run_id))
        conn = s.connection()
        sql = (f"INSERT INTO {Score.__tablename__} ({', '.join(columns)}) "
               f"VALUES ({markers(conn.dialect, len(columns))})")
        for i in range(0, len(rows), SCORE_BATCH):
            conn.exec_driver_sql(sql, rows[i: i + SCORE_BATCH])
    return int(chosen.sum())


def show_run(store: Store, run_id: int, top: int = 10) -> dict:
    """Status, time per stage, progress (stage k of N, elapsed, overall ETA; `progress.run_progress`)
    and the top examples of a run."""
    from curation.runs.jobs import effective_status
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        pool = s.get(Pool, run.pool_id)
        prefs = s.get(PreferenceSet, run.prefs_id).name if run.prefs_id else None
        q = (select(Score.rank, Score.score, Score.subtask, Example.uid, Example.source, Example.messages)
             .join(Example, Example.id == Score.example_id).where(Score.run_id == run_id)
             .order_by(Score.rank).limit(top))
        tops = [dict(rank=r, score=sc, subtask=st, uid=u, source=src,
                     prompt=next((m["content"] for m in msgs if m["role"] == "user"), "")[:100])
                for r, sc, st, u, src, msgs in s.execute(q)]
        wall = (run.finished_at - run.started_at).total_seconds() if run.finished_at and run.started_at else None
        status = effective_status(run)
        progress = run_progress(_stage_plan(run, pool.n_examples), status, run.stage, run.stage_times or {},
                                run.eta_s, _elapsed(run, status))
        return dict(id=run.id, method=run.method, pool=pool.name, prefs=prefs, status=status,
                    stage=run.stage, stage_times=run.stage_times, wall_s=wall,
                    progress=dict(done=run.stage_done, total=run.stage_total, rate=run.rate, eta_s=run.eta_s),
                    error=run.error, selected=run.n_selected,
                    features=(run.meta or {}).get("features"), pairs_version=pairs_version(s, run),
                    config=run.config, meta=run.meta, top=tops, workdir=run.workdir, **progress)


def _stage_plan(run: Run, n_examples: int) -> list[StageCost] | None:
    """The run's stages with their estimated seconds: the estimate stored at launch, else the
    cost model's defaults (no reuse detection, no calibration: cheap enough to poll)."""
    meta = run.meta or {}
    if est := meta.get("estimate"):
        stages = Estimate.from_dict(est).stages
        times = run.stage_times or {}
        if TINY_STAGE not in [s.name for s in stages] and (run.stage == TINY_STAGE or TINY_STAGE in times):
            stages = [StageCost(TINY_STAGE, TINY_BUILD_S, TINY_BUILD_S)] + stages  # another run's model went missing
        return stages or None
    from curation.runs.progress import DEMO_TOKENS, Facts, _params, lora_dim, model_arch
    try:
        cfg = ScoreConfig.from_dict(run.config)
    except CurationError:
        return None
    name, home = cfg.model.name_or_path, Workspace.from_env().home
    tiny = run.stage == TINY_STAGE or TINY_STAGE in (run.stage_times or {})
    facts = Facts(n=n_examples, n_pairs=len(meta.get("pairs") or []), tokens=DEMO_TOKENS, params=_params(name, home),
                  lora_dim=lora_dim(model_arch(name, home), cfg.warmup.lora_r, cfg.warmup.target_modules),
                  tiny_build=tiny)
    return build_estimate(cfg, facts).stages or None


def _elapsed(run: Run, status: str) -> float | None:
    """Seconds worked on the run, over every process that did (``meta.earlier_s``: before this one)."""
    if status in ("done", "failed", "cancelled", "dead"):
        times = run.stage_times or {}
        return round(sum(float(v) for v in times.values()), 1) if times else None
    if run.status == "running" and run.started_at:
        return round((utcnow() - run.started_at).total_seconds() + float((run.meta or {}).get("earlier_s", 0)), 1)
    return 0.0


@dataclass(frozen=True)
class RecentInputs:
    pool: str | None
    prefs: str | None


def recent_inputs(store: Store) -> RecentInputs:
    """The pool and preference set a new run should offer first, across sessions: for each,
    whichever is newer of the newest run's (the curator's last scoring) and the newest
    created one (a pool just imported is likely the next to score)."""
    with store.session() as s:
        last = next((r for r in s.scalars(select(Run).order_by(Run.id.desc()).limit(50))
                     if not (r.meta or {}).get("internal")), None)
        pool = s.scalars(select(Pool).where(~Pool.name.startswith(STAGING_PREFIX))
                         .order_by(Pool.created_at.desc(), Pool.id.desc()).limit(1)).first()
        prefs = s.scalars(select(PreferenceSet).where(PreferenceSet.archived.is_(False))
                          .order_by(PreferenceSet.created_at.desc(),
                                                         PreferenceSet.id.desc()).limit(1)).first()
        run_pool = s.get(Pool, last.pool_id) if last else None
        run_prefs = s.get(PreferenceSet, last.prefs_id) if last and last.prefs_id else None
        if run_prefs is not None and run_prefs.archived:  # Scoring no longer offers it
            run_prefs = None

        def newer(from_run, created):
            if from_run is None or (created is not None and created.created_at > last.created_at):
                return created.name if created is not None else None
            return from_run.name
        return RecentInputs(newer(run_pool, pool), newer(run_prefs, prefs))


def load_scores(store: Store, run_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(example ids, scores) of a run in id order."""
    with store.session() as s:
        rows = s.execute(select(Score.example_id, Score.score).where(Score.run_id == run_id)
                         .order_by(Score.example_id)).all()
    return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.float32)
