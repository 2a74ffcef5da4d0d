"""What the Explore page shows: a run's scores as one compact frame, cutoffs, summaries, and
why one example was (not) chosen.

Why a frame and not pages of rows: the distribution, the cutoff slider and the summaries all
need every score of the run at once. One SQL query over narrow columns (no messages, no JSON
components) keeps that at well under a second for 100k examples; messages and components
are read only for the one example the inspector explains.

Overrides follow the rule of the `Decision` table: the latest decision per example of the
pool wins, and ``clear`` means none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from curation.errors import CurationError
from curation.features import FeatureReader, FeatureStore
from curation.influence import ScoringInputs, checkpoint_weights, top_val
from curation.select import budget_from, select_top
from curation.store import Decision, Example, Pool, PreferencePair, Run, Score, Store

STATES = ["pinned", "excluded", "selected", "not selected"]  # precedence when several apply
FRAME_COLUMNS = ["example_id", "uid", "source", "score", "rank", "selected", "subtask", "chars",
                 "override"]


# ---------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class RunInfo:
    """What the page needs to know about a run besides its scores."""

    id: int
    pool: str
    method: str
    status: str
    workdir: Path | None
    n_selected: int
    select_percent: float | None
    select_n: int | None
    checkpoint_lrs: list[float]
    subtasks: list[str]


def run_info(store: Store, run_id: int) -> RunInfo:
    """The run's pool, budget and recorded metadata; raises for an unknown id."""
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        sel = (run.config or {}).get("select") or {}
        meta = run.meta or {}
        return RunInfo(run.id, s.get(Pool, run.pool_id).name, run.method, run.status,
                       Path(run.workdir) if run.workdir else None, run.n_selected,
                       sel.get("percent"), sel.get("n"), list(meta.get("checkpoint_lrs") or []),
                       list(meta.get("subtasks") or []))


def run_scores_frame(store: Store, run_id: int) -> pd.DataFrame:
    """Every scored example of the run, best rank first, in compact dtypes.

    Columns: example_id, uid, source (category), score (float32), rank (int32), selected
    (the automatic selection), subtask (driving subtask, category), chars (int32), override
    ("pin" | "exclude" | None, category) and state (one of `STATES`, category).
    """
    from curation.curate import latest_decisions

    latest = latest_decisions(select(Run.pool_id).where(Run.id == run_id).scalar_subquery()).subquery()
    q = (select(Score.example_id, Example.uid, Example.source, Score.score, Score.rank,
                Score.selected, Score.subtask, Example.total_chars, latest.c.action)
         .join(Example, Example.id == Score.example_id)
         .outerjoin(latest, latest.c.example_id == Score.example_id)
         .where(Score.run_id == run_id).order_by(Score.rank))
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    columns = list(zip(*rows)) or [()] * len(FRAME_COLUMNS)  # column-wise: 3x faster than records
    return _compact(pd.DataFrame(dict(zip(FRAME_COLUMNS, columns))))


def frame_version(store: Store, run_id: int) -> tuple:
    """Changes whenever `run_scores_frame` would: a cheap cache key for the page (a done run's
    scores are fixed; overrides change with every decision on the pool)."""
    pool_id = select(Run.pool_id).where(Run.id == run_id).scalar_subquery()
    with store.session() as s:
        finished = s.scalar(select(Run.finished_at).where(Run.id == run_id))
        last = s.scalar(select(func.max(Decision.id)).where(Decision.pool_id == pool_id))
    return run_id, str(finished), last


def _compact(df: pd.DataFrame) -> pd.DataFrame:
    """float32 scores, int32 ranks and categories: a 100k-row frame stays a few MB."""
    df = df.astype({"example_id": "int64", "score": "float32", "rank": "int32",
                    "selected": "bool", "chars": "int32", "uid": "string"})
    df["override"] = pd.Categorical(df["override"].where(df["override"] != "clear"),
                                    categories=["pin", "exclude"])
    for col in ("source", "subtask"):
        df[col] = df[col].astype("category")
    state = np.where(df["override"] == "pin", "pinned",
                     np.where(df["override"] == "exclude", "excluded",
                              np.where(df["selected"], "selected", "not selected")))
    df["state"] = pd.Categorical(state, categories=STATES)
    return df


# ---------------------------------------------------------------------------- cutoffs


@dataclass(frozen=True)
class Cutoff:
    """What a budget keeps under the run's pins and excludes (the same rule as the export)."""

    budget: int
    score: float  # score of the last example kept by score; NaN when none was
    kept: np.ndarray = field(repr=False)  # [rows] bool, aligned with the frame
    n_auto: int
    n_pinned: int
    n_excluded: int

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())


def cutoff_for(df: pd.DataFrame, percent: float | None = None, n: int | None = None) -> Cutoff:
    """Keep ``percent`` % (or ``n``) of the frame: pins first, then the best eligible scores.

    Delegates to `select.select_top`, so the slider shows exactly what an export would keep.
    """
    ids = df["example_id"].to_numpy()
    pinned = ids[(df["override"] == "pin").to_numpy()]
    excluded = ids[(df["override"] == "exclude").to_numpy()]
    res = select_top(df["score"].to_numpy(np.float64), ids, percent=percent, n=n,
                     pinned=pinned, excluded=excluded)
    kept = np.isin(ids, np.asarray(res.selected_ids, np.int64))
    return Cutoff(budget_from(percent, n, len(ids)), res.cutoff_score, kept, res.n_auto,
                  res.n_pinned, res.n_excluded)


def summary_by(df: pd.DataFrame, column: str, kept: np.ndarray | None = None) -> pd.DataFrame:
    """Per value of ``column`` (source, subtask, state): examples, kept, share kept, scores.

    ``kept`` defaults to the automatic selection of the run.
    """
    kept = df["selected"].to_numpy() if kept is None else kept
    g = df.assign(kept=kept).groupby(column, observed=True)
    out = pd.DataFrame({"examples": g.size(), "kept": g["kept"].sum().astype("int64"),
                        "mean_score": g["score"].mean(), "max_score": g["score"].max()})
    out["share_kept"] = out["kept"] / out["examples"]
    return out.sort_values(["kept", "examples"], ascending=False).reset_index()


def checkpoint_breakdown(store: Store, run_id: int) -> pd.DataFrame:
    """Per warmup checkpoint: its learning-rate weight and mean contribution to the scores of
    the automatically selected examples (`Score.components["checkpoints"]`, which sum to the
    score). Empty for methods without checkpoints."""
    info = run_info(store, run_id)
    with store.session() as s:
        comps = s.scalars(select(Score.components)
                          .where(Score.run_id == run_id, Score.selected.is_(True))).all()
    parts = np.array([c["checkpoints"] for c in comps if c and c.get("checkpoints")], np.float64)
    if not parts.size:
        return pd.DataFrame(columns=["checkpoint", "lr", "weight", "mean_contribution", "share"])
    mean = parts.mean(axis=0)
    rows = _checkpoint_parts(mean, info.checkpoint_lrs)
    out = pd.DataFrame([vars(p) for p in rows]).rename(columns={"name": "checkpoint",
                                                               "contribution": "mean_contribution"})
    out["share"] = mean / mean.sum() if mean.sum() else np.nan
    return out


# ---------------------------------------------------------------------------- the inspector


@dataclass(frozen=True)
class CheckpointPart:
    """One warmup checkpoint's share of an example's score."""

    name: str
    lr: float | None
    weight: float | None  # renormalised learning rate: the w_i of the score
    contribution: float  # w_i · mean cosine of the driving subtask at checkpoint i


@dataclass(frozen=True)
class AlignedPair:
    """A validation pair and its cosine with the example, weighted over checkpoints like the
    score (`influence.top_val`)."""

    val_row: int
    subtask: str
    cosine: float
    per_checkpoint: tuple[float, ...]
    prompt: str
    chosen: str
    rejected: str
    edited_since_run: bool  # the pair's text changed after scoring: cosines describe the old text


@dataclass(frozen=True)
class Neighbour:
    """A pool example close in gradient space (cosine over the last checkpoint's features)."""

    example_id: int
    cosine: float
    uid: str
    source: str
    score: float | None
    rank: int | None


@dataclass
class Explanation:
    """Everything the inspector shows about one example of one run."""

    run_id: int
    example_id: int
    uid: str
    source: str
    score: float
    rank: int
    n_total: int
    percentile: float  # share of the pool (in %) ranked below this example
    selected: bool  # the automatic selection at scoring time
    override: str | None  # "pin" | "exclude" | None
    status: str  # one of STATES
    why: str
    driver: str | None
    subtask_means: dict[str, float]
    checkpoints: list[CheckpointPart]
    val_pairs: list[AlignedPair]
    neighbours: list[Neighbour]
    messages: list[dict]
    notes: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)  # the method's own explain(): {title: text | rows}


def explain(store: Store, run_id: int, example_id: int, n_pairs: int = 5,
            n_neighbours: int = 5) -> Explanation:
    """Why ``example_id`` scored what it did in ``run_id``, and whether it is in the subset."""
    info = run_info(store, run_id)
    with store.session() as s:
        sc, ex = _score_and_example(s, run_id, example_id)
        n_total = s.scalar(select(func.count()).select_from(Score).where(Score.run_id == run_id))
        decision = _latest_decision(s, run_id, example_id)
    override = decision.action if decision and decision.action != "clear" else None
    status = {"pin": "pinned", "exclude": "excluded"}.get(override or "",
                                                          "selected" if sc.selected else "not selected")
    comps = sc.components or {}
    exp = Explanation(
        run_id=run_id, example_id=example_id, uid=ex.uid, source=ex.source, score=sc.score,
        rank=sc.rank, n_total=n_total, percentile=100.0 * (n_total - sc.rank) / n_total,
        selected=sc.selected, override=override, status=status,
        why=_why(sc, status, decision, info, n_total), driver=sc.subtask,
        subtask_means={k: float(v) for k, v in (comps.get("subtasks") or {}).items()},
        checkpoints=_checkpoint_parts(comps.get("checkpoints") or [], info.checkpoint_lrs),
        val_pairs=[], neighbours=[], messages=ex.messages)
    _add_feature_views(store, info, exp, n_pairs, n_neighbours)
    exp.evidence = method_evidence(store, info, example_id, ex.messages)
    return exp


def method_evidence(store: Store, info: RunInfo, example_id: int, messages: list[dict]) -> dict:
    """What the run's method says about the example (BM25 terms, NICE samples, ...)."""
    from curation.methods import ValPair, get_method  # lazily: importing the methods loads torch

    if info.workdir is None:
        return {}
    pairs = [ValPair(p.prompt, p.prompt_messages, p.chosen, p.rejected, p.subtask) for p in _run_pairs(store, info.id)]
    return get_method(info.method).explain(info.workdir, example_id, messages, pairs)


def _score_and_example(s, run_id: int, example_id: int) -> tuple[Score, Example]:
    sc = s.get(Score, (run_id, example_id))
    if sc is None:
        raise CurationError(f"example {example_id} has no score in run {run_id}")
    return sc, s.get(Example, example_id)


def _latest_decision(s, run_id: int, example_id: int) -> Decision | None:
    pool_id = select(Run.pool_id).where(Run.id == run_id).scalar_subquery()
    return s.scalar(select(Decision).where(Decision.pool_id == pool_id,
                                           Decision.example_id == example_id)
                    .order_by(Decision.id.desc()).limit(1))


def _why(sc: Score, status: str, decision: Decision | None, info: RunInfo, n_total: int) -> str:
    """One sentence: who pinned/excluded it and why, or where its rank sits against the budget."""
    if status in ("pinned", "excluded"):
        reason = f": “{decision.reason}”" if decision.reason else ""
        return f"{status} by {decision.author} on {decision.created_at:%Y-%m-%d %H:%M}{reason}"
    budget = (f"top {info.select_percent:g}%" if info.select_percent is not None
              else f"top {info.select_n}")
    verb = "within" if sc.selected else "outside"
    return (f"automatic: rank {sc.rank:,} of {n_total:,} is {verb} the {budget} "
            f"({info.n_selected:,} selected by score at scoring time)")


def _checkpoint_parts(contributions: Sequence[float], lrs: Sequence[float]) -> list[CheckpointPart]:
    """Per-checkpoint contributions with the learning rate and weight that produced them."""
    known = len(lrs) == len(contributions) and len(lrs) > 0
    weights = checkpoint_weights(lrs) if known else [None] * len(contributions)
    return [CheckpointPart(f"ckpt {i + 1}", float(lrs[i]) if known else None,
                           float(weights[i]) if known else None, float(c))
            for i, c in enumerate(contributions)]


def _add_feature_views(store: Store, info: RunInfo, exp: Explanation, n_pairs: int,
                       n_neighbours: int) -> None:
    """Aligned validation pairs and gradient-space neighbours, when the features are on disk."""
    fstore = FeatureStore(info.workdir / "features") if info.workdir else None
    n_ckpt = len(info.checkpoint_lrs)
    if fstore is None or not n_ckpt or not all(fstore.exists("train", i) for i in range(n_ckpt)):
        exp.notes.append("no stored gradient features for this run: no pairs or neighbours")
        return
    train = [fstore.reader("train", i) for i in range(n_ckpt)]
    row = train[-1].row_of(exp.example_id)
    if n_pairs and all(fstore.exists("val", i) for i in range(n_ckpt)):
        try:
            exp.val_pairs = aligned_pairs(store, info, train, fstore, row, n_pairs)
        except CurationError as e:  # the rest of the explanation still holds
            exp.notes.append(str(e))
    if n_neighbours:
        exp.neighbours = _neighbour_details(store, info.id, nearest_neighbours(train[-1], row,
                                                                                n_neighbours))


def aligned_pairs(store: Store, info: RunInfo, train: list[FeatureReader], fstore: FeatureStore,
                  row: int, n: int) -> list[AlignedPair]:
    """The ``n`` validation pairs most aligned with train row ``row`` (`influence.top_val`)."""
    pairs = _run_pairs(store, info.id)
    val = [fstore.reader("val", i) for i in range(len(train))]
    if len(pairs) != val[0].n:
        raise CurationError(f"run {info.id}: {val[0].n} validation features but "
                            f"{len(pairs)} pairs recorded; score again to explain it")
    inputs = ScoringInputs(train=train, val=val, weights=info.checkpoint_lrs,
                           val_subtasks=[p.subtask for p in pairs])
    return [AlignedPair(m.val_row, m.subtask, m.cosine, m.per_checkpoint,
                        pairs[m.val_row].prompt, pairs[m.val_row].chosen,
                        pairs[m.val_row].rejected, pairs[m.val_row].edited_since_run)
            for m in top_val(inputs, row, n)]


def val_subtasks(store: Store, run_id: int) -> list[str]:
    """Subtask of every validation feature row of the run (labels for the map's pair markers)."""
    return [p.subtask for p in _run_pairs(store, run_id)]


@dataclass(frozen=True)
class RunPair:
    """A pair as the run scored it (its snapshot), and whether the set has changed it since."""

    id: int | None
    prompt: str
    prompt_messages: list
    chosen: str
    rejected: str
    subtask: str
    edited_since_run: bool  # edited or deleted in the preference set after the run was created


def _run_pairs(store: Store, run_id: int) -> list[RunPair]:
    """The run's pairs in feature-row order: the snapshot taken when it was created (older
    runs without one: the set's current pairs, flagged when edited after the run finished)."""
    with store.session() as s:
        run = s.get(Run, run_id)
        current = {p.id: p for p in s.scalars(select(PreferencePair).where(PreferencePair.set_id == run.prefs_id)
                                              .order_by(PreferencePair.position, PreferencePair.id))}
        snapshot = (run.meta or {}).get("pairs")
        if snapshot is None:
            return [RunPair(p.id, p.prompt, p.prompt_messages, p.chosen, p.rejected, p.subtask,
                            bool(run.finished_at and p.updated_at > run.finished_at)) for p in current.values()]

        def edited(p: dict) -> bool:
            now = current.get(p.get("id"))
            return now is None or (now.prompt, now.chosen, now.rejected, now.subtask) != \
                (p["prompt"], p["chosen"], p["rejected"], p["subtask"])
        return [RunPair(p.get("id"), p["prompt"], p["prompt_messages"], p["chosen"], p["rejected"], p["subtask"],
                        edited(p)) for p in snapshot]


def nearest_neighbours(reader: FeatureReader, row: int, n: int) -> list[tuple[int, float]]:
    """``(example_id, cosine)`` of the ``n`` rows closest to ``row`` in gradient space, itself
    excluded; ties by example id. Streams the shards: memory is one shard, not the split."""
    q = np.array(reader.rows(row, row + 1)[0], np.float32)
    q /= max(float(np.linalg.norm(q)), 1e-12)
    ids = np.asarray(reader.example_ids, np.int64)
    best_cos, best_rows = np.empty(0, np.float32), np.empty(0, np.int64)
    for start, end, block in reader.iter_shards():
        cos = _row_cosines(block, q)
        rows = np.arange(start, end)
        keep = rows != row
        best_cos = np.concatenate([best_cos, cos[keep]])
        best_rows = np.concatenate([best_rows, rows[keep]])
        order = np.lexsort((ids[best_rows], -best_cos))[:n]
        best_cos, best_rows = best_cos[order], best_rows[order]
    return [(int(ids[r]), float(c)) for r, c in zip(best_rows, best_cos)]


def _row_cosines(block: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Cosine of every row of ``block`` with the unit vector ``q`` (zero rows give 0)."""
    x = np.asarray(block, np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    return (x @ q) / np.where(norms > 0, norms, 1)


def _neighbour_details(store: Store, run_id: int, hits: list[tuple[int, float]]) -> list[Neighbour]:
    ids = [i for i, _ in hits]
    with store.session() as s:
        rows = {r.id: r for r in s.execute(
            select(Example.id, Example.uid, Example.source, Score.score, Score.rank)
            .outerjoin(Score, (Score.example_id == Example.id) & (Score.run_id == run_id))
            .where(Example.id.in_(ids)))}
    return [Neighbour(i, c, rows[i].uid, rows[i].source, rows[i].score, rows[i].rank)
            for i, c in hits if i in rows]
