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
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from curation.data.store import Decision, Example, Pool, PreferencePair, Run, Score, Store
from curation.engine.features import FeatureReader, FeatureStore
from curation.engine.influence import ScoringInputs, checkpoint_weights, top_val
from curation.engine.select import budget_from, select_top
from curation.errors import CurationError
from curation.runs.selections import budget_label

if TYPE_CHECKING:
    from curation.methods.base import ScoreLabels  # importing the methods loads bm25s, sklearn, ...

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
    n_selected: int  # the automatic selection at scoring time (the budget lives in `selections`)
    checkpoint_lrs: list[float]
    subtasks: list[str]
    model_warning: str | None = None  # why the run's model does not describe its pool (tiny on a foreign pool)


def run_info(store: Store, run_id: int) -> RunInfo:
    """The run's pool and recorded metadata; raises for an unknown id."""
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        meta = run.meta or {}
        return RunInfo(run.id, s.get(Pool, run.pool_id).name, run.method, run.status,
                       Path(run.workdir) if run.workdir else None, run.n_selected,
                       list(meta.get("checkpoint_lrs") or []),
                       list(meta.get("subtasks") or []), meta.get("model_warning"))


def auto_table(store: Store, run_id: int) -> tuple[str, pd.DataFrame] | None:
    """An auto run's choice: why the winner won, and every candidate's held-out figures (None for
    other runs). ``ci95``: the margin gain over random selections' 95% interval."""
    with store.session() as s:
        run = s.get(Run, run_id)
        auto = (run.meta or {}).get("auto") if run else None
    if not auto:
        return None
    rows = [{"candidate": c["name"], "chosen": "✓" if c["name"] == auto["chosen"] else "",
             "held-out accuracy": round(c["accuracy"], 3), "mean margin per token": round(c["margin"], 4),
             "margin gain vs random, 95% interval": f"{c['ci95'][0]:+.3g} to {c['ci95'][1]:+.3g}"}
            for c in auto.get("candidates") or []]
    return f"Auto chose {auto['chosen']}: {auto['why']}", pd.DataFrame(rows)


def run_scores_frame(store: Store, run_id: int) -> pd.DataFrame:
    """Every scored example of the run, best rank first, in compact dtypes.

    Columns: example_id, uid, source (category), score (float32), rank (int32), selected
    (the automatic selection), subtask (driving subtask, category), chars (int32), override
    ("pin" | "exclude" | None, category) and state (one of `STATES`, category).
    """
    from curation.review.curate import latest_decisions

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
    return with_states(df, df["selected"].to_numpy())


def with_states(df: pd.DataFrame, kept: np.ndarray) -> pd.DataFrame:
    """The frame with ``state`` under a selection (``kept`` aligned with its rows): the page
    passes the saved selection's `Cutoff.kept`, so table, map and inspector agree with Curate."""
    state = np.where(df["override"] == "pin", "pinned",
                     np.where(df["override"] == "exclude", "excluded",
                              np.where(kept, "selected", "not selected")))
    return df.assign(state=pd.Categorical(state, categories=STATES))


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


# ---------------------------------------------------------------------------- numbers for people


def people(x: float | None) -> str:
    """A number as a person reads it: 0.42, 3.14, 12.3, 1,234, 0.0012 (never 0.123456789)."""
    if x is None or not np.isfinite(x):
        return "–"
    a = abs(float(x))
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.01:
        return f"{x:.2f}"
    return f"{x:.2g}"


def excerpt(text: str, n: int) -> str:
    """The first ``n`` characters of ``text`` on one line, with an ellipsis when cut."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= n else flat[: max(n - 1, 0)].rstrip() + "…"


def prompt_and_response(messages: list[dict]) -> tuple[str, str]:
    """The first user turn and the last assistant turn of a conversation ("" when absent)."""
    user = next((m["content"] for m in messages if m.get("role") == "user"), "")
    reply = next((m["content"] for m in reversed(messages) if m.get("role") == "assistant"), "")
    return user, reply


def prompt_excerpts(store: Store, ids: Sequence[int], n: int = 80) -> list[str]:
    """The prompt excerpt of every example of ``ids``, in that order, read in chunks."""
    ids = [int(i) for i in ids]
    found: dict[int, str] = {}
    with store.session() as s:
        for start in range(0, len(ids), 5000):
            chunk = ids[start:start + 5000]
            for i, msgs in s.execute(select(Example.id, Example.messages).where(Example.id.in_(chunk))):
                found[i] = excerpt(prompt_and_response(msgs)[0], n)
    return [found.get(i, "") for i in ids]


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
    """A validation pair and the example's score against it (``value``, what the method's
    ``labels.per_pair`` names); gradient methods weigh it over checkpoints like the score
    (`influence.top_val`)."""

    val_row: int
    pair_id: int | None  # the pair's id in its preference set (the Preferences page's "id")
    subtask: str
    value: float
    per_checkpoint: tuple[float, ...]
    prompt: str
    chosen: str
    rejected: str
    edited_since_run: bool  # the pair's text changed after scoring: values describe the old text

    @property
    def number(self) -> str:
        """How the inspector names the pair: its id, or its row when the run kept no ids."""
        return f"pair id {self.pair_id}" if self.pair_id is not None else f"pair row {self.val_row + 1}"


@dataclass(frozen=True)
class Neighbour:
    """A pool example close in gradient space (cosine over the last checkpoint's features)."""

    example_id: int
    cosine: float
    uid: str
    source: str
    score: float | None
    rank: int | None
    prompt: str = ""  # excerpts, so a person can see why they are close
    response: str = ""


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
    labels: ScoreLabels | None = None  # what the method's numbers are (titles, sentences)
    reasons: list[str] = field(default_factory=list)  # what drove the score, in words (`reasons_for`)


def method_labels(method: str) -> ScoreLabels:
    """The method's own labels (`Method.labels`); raises for an unknown method."""
    from curation.methods import get_method  # lazily: the method modules load on demand (a gradient one imports torch)

    return get_method(method).labels


def effective_labels(store: Store, run_id: int) -> ScoreLabels:
    """The labels of the run's scores (`Method.run_labels`): its method's, except that an auto run
    has its winner's, so its map, neighbours and pairs are the chosen method's."""
    return _run_labels(run_info(store, run_id))


def _run_labels(info: RunInfo) -> ScoreLabels:
    from curation.methods import get_method  # lazily: the method modules load on demand (a gradient one imports torch)

    return get_method(info.method).run_labels(info.workdir)


def explain(store: Store, run_id: int, example_id: int, n_pairs: int = 5,
            n_neighbours: int = 5) -> Explanation:
    """Why ``example_id`` scored what it did in ``run_id``, and whether it is in the subset."""
    example_id = int(example_id)  # a numpy integer would find no row
    info = run_info(store, run_id)
    with store.session() as s:
        sc, ex = _score_and_example(s, run_id, example_id)
        n_total = s.scalar(select(func.count()).select_from(Score).where(Score.run_id == run_id))
        decision = _latest_decision(s, run_id, example_id)
    override = decision.action if decision and decision.action != "clear" else None
    from curation.review.curate import curated_selection  # the saved selection, as Curate and export see it
    sel = curated_selection(store, run_id)
    in_sel = bool(np.isin(example_id, np.asarray(sel.selected_ids, np.int64)))
    status = {"pin": "pinned", "exclude": "excluded"}.get(override or "", "selected" if in_sel else "not selected")
    comps = sc.components or {}
    labels = _run_labels(info)
    exp = Explanation(
        run_id=run_id, example_id=example_id, uid=ex.uid, source=ex.source, score=sc.score,
        rank=sc.rank, n_total=n_total, percentile=100.0 * (n_total - sc.rank) / n_total,
        selected=sc.selected, override=override, status=status,
        why=_why(sc, status, decision, sel, n_total), driver=sc.subtask,
        subtask_means={k: float(v) for k, v in (comps.get("subtasks") or {}).items()},
        checkpoints=_checkpoint_parts(comps.get("checkpoints") or [], info.checkpoint_lrs),
        val_pairs=[], neighbours=[], messages=ex.messages, labels=labels)
    if labels.gradient:
        _add_feature_views(store, info, exp, n_pairs, n_neighbours)
    elif labels.per_pair and n_pairs:
        exp.val_pairs = scored_pairs(store, info, example_id, ex.messages, n_pairs)
    exp.evidence = method_evidence(store, info, example_id, ex.messages)
    exp.reasons = reasons_for(exp) + method_reasons(info, example_id)
    return exp


def method_reasons(info: RunInfo, example_id: int) -> list[str]:
    """The run's method's own sentence about the example (`Method.reason`), if it has one."""
    from curation.methods import get_method

    said = get_method(info.method).reason(info.workdir, example_id) if info.workdir else None
    return [said] if said else []


def _val_pairs(store: Store, run_id: int):
    from curation.methods import ValPair  # lazily: the method modules load on demand (a gradient one imports torch)

    return [ValPair(p.prompt, p.prompt_messages, p.chosen, p.rejected, p.subtask) for p in _run_pairs(store, run_id)]


def method_evidence(store: Store, info: RunInfo, example_id: int, messages: list[dict]) -> dict:
    """What the run's method says about the example (BM25 terms, NICE samples, ...)."""
    from curation.methods import get_method

    if info.workdir is None:
        return {}
    return get_method(info.method).explain(info.workdir, example_id, messages, _val_pairs(store, info.id))


def scored_pairs(store: Store, info: RunInfo, example_id: int, messages: list[dict], n: int) -> list[AlignedPair]:
    """The ``n`` pairs the example scores highest against, for a method with per-pair scores
    (`Method.pair_scores`: BM25, RepSim); ties by feature row."""
    from curation.methods import get_method

    pairs = _run_pairs(store, info.id)
    values = (get_method(info.method).pair_scores(info.workdir, example_id, messages, _val_pairs(store, info.id))
              if info.workdir else None)
    if values is None or len(values) != len(pairs):
        return []
    order = np.lexsort((np.arange(len(values)), -np.asarray(values, np.float64)))[:n]
    return [_aligned(pairs[j], int(j), float(values[j]), ()) for j in order]


def _aligned(p: RunPair, row: int, value: float, per_checkpoint: tuple[float, ...]) -> AlignedPair:
    return AlignedPair(row, p.id, p.subtask, value, per_checkpoint, p.prompt, p.chosen, p.rejected,
                       p.edited_since_run)


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


def _why(sc: Score, status: str, decision: Decision | None, sel, n_total: int) -> str:
    """One sentence: who pinned/excluded it and why, or where its rank sits against the run's
    saved selection (`curate.CuratedSelection`, the budget Curate and export use)."""
    if status in ("pinned", "excluded"):
        reason = f": “{decision.reason}”" if decision.reason else ""
        return f"{status} by {decision.author} on {decision.created_at:%Y-%m-%d %H:%M}{reason}"
    named = f"selection '{sel.name}', " if sel.name else ""
    verb = "within" if status == "selected" else "outside"
    return (f"automatic: rank {sc.rank:,} of {n_total:,} is {verb} the {budget_label(sel.percent, sel.n)} "
            f"({named}{sel.n_selected:,} selected with pins and excludes)")


# ---------------------------------------------------------------------------- what drove it, in words


def reasons_for(exp: Explanation) -> list[str]:
    """Sentences that say what drove the score, in the method's own terms: which subtask and
    by how much, which checkpoint gave most of it, which pair it matches best."""
    labels = exp.labels
    if labels is None:
        return []
    what = f"{labels.name} score: {labels.score}."
    return [s for s in (what, _subtask_sentence(exp, labels), _checkpoint_sentence(exp), _pair_sentence(exp, labels))
            if s]


def _subtask_sentence(exp: Explanation, labels: ScoreLabels) -> str | None:
    """'Driven mostly by subtask 'alpha' (mean gradient cosine 0.42, 0.30 above 'beta').'"""
    if not labels.per_subtask or not exp.subtask_means:
        return None
    ranked = sorted(exp.subtask_means.items(), key=lambda kv: -kv[1])
    top, value = ranked[0]
    if len(ranked) == 1:
        text = f"Scored on its only subtask '{top}' ({labels.per_subtask} {people(value)})."
    else:
        runner, second = ranked[1]
        gap = f"{people(value - second)} above" if value > second else "tied with"
        text = f"Driven mostly by subtask '{top}' ({labels.per_subtask} {people(value)}, {gap} '{runner}')."
    noise = exp.score - value
    if not labels.gradient and abs(noise) > 1e-4 * max(1.0, abs(value)):
        text += f" The score, {people(exp.score)}, adds {people(noise)} of seeded resampling noise."
    return text


def _checkpoint_sentence(exp: Explanation) -> str | None:
    """'Checkpoint 2 gives 61% of the score (0.26 of 0.42).'"""
    parts = [c.contribution for c in exp.checkpoints]
    if len(parts) < 2:
        return None
    i = int(np.argmax(np.abs(parts)))
    total = float(sum(parts))
    if total > 0 and min(parts) >= 0:
        return (f"Checkpoint {i + 1} of {len(parts)} gives {parts[i] / total:.0%} of the score "
                f"({people(parts[i])} of {people(total)}).")
    return f"Checkpoint {i + 1} of {len(parts)} contributes the most: {people(parts[i])} of {people(total)}."


def _pair_sentence(exp: Explanation, labels: ScoreLabels) -> str | None:
    """'Its most aligned pair is pair id 4 (subtask 'alpha', gradient cosine 0.61).'"""
    if not exp.val_pairs or not labels.per_pair:
        return None
    best = exp.val_pairs[0]
    return (f"Its most aligned pair is {best.number} (subtask '{best.subtask}', "
            f"{labels.per_pair} {people(best.value)}).")


# ---------------------------------------------------------------------------- inspector tables


def subtask_frame(exp: Explanation) -> pd.DataFrame:
    """The per-subtask values under the method's own name, the driver marked."""
    name = (exp.labels.per_subtask if exp.labels else None) or "value"
    out = pd.DataFrame({"subtask": list(exp.subtask_means),
                        name: [round(v, 4) for v in exp.subtask_means.values()]})
    out["driver"] = np.where(out["subtask"] == exp.driver, "drives the score", "other")
    return out


def checkpoint_frame(exp: Explanation) -> pd.DataFrame:
    """Per checkpoint: learning rate, weight, contribution and its share of the score."""
    total = sum(c.contribution for c in exp.checkpoints)
    return pd.DataFrame([{"checkpoint": i + 1, "learning rate": c.lr,
                          "weight": None if c.weight is None else round(c.weight, 3),
                          "contribution": round(c.contribution, 4),
                          "share": f"{c.contribution / total:.0%}" if total else "–"}
                         for i, c in enumerate(exp.checkpoints)])


def neighbour_frame(exp: Explanation) -> pd.DataFrame:
    """The neighbours with their text, rounded for reading."""
    return pd.DataFrame([{"rank": n.rank, "score": None if n.score is None else round(n.score, 4),
                          "cosine": round(n.cosine, 3), "uid": n.uid, "source": n.source,
                          "prompt": n.prompt, "response": n.response} for n in exp.neighbours])


NEIGHBOURS_TITLE = "Nearest neighbours in gradient space (last checkpoint)"


def pair_heading(pair: AlignedPair, labels: ScoreLabels | None) -> str:
    """'pair id 4 · subtask alpha · gradient cosine 0.61' (and whether it was edited since)."""
    value = f" · {labels.per_pair} {people(pair.value)}" if labels and labels.per_pair else ""
    edited = " · edited since the run: the value describes the text it was scored with" if pair.edited_since_run else ""
    return f"{pair.number} · subtask {pair.subtask}{value}{edited}"


def evidence_items(exp: Explanation) -> list[tuple[str, str | None, pd.DataFrame | None]]:
    """The method's evidence as (title, text, table): exactly one of text and table is set."""
    out = []
    for title, value in exp.evidence.items():
        if isinstance(value, list):
            out.append((str(title), None, pd.DataFrame(value)))
        else:
            out.append((str(title), str(value), None))
    return out


# ---------------------------------------------------------------------------- moving around


def rank_of(df: pd.DataFrame, example_id: int) -> int | None:
    """The example's rank in the run's frame, None when the run did not score it."""
    hit = np.flatnonzero(df["example_id"].to_numpy() == int(example_id))
    return int(df["rank"].iloc[hit[0]]) if len(hit) else None


def step_rank(rank: int, delta: int, n_total: int) -> int:
    """The rank ``delta`` places away, kept inside 1..n_total (prev/next in the inspector)."""
    return int(min(max(int(rank) + int(delta), 1), max(int(n_total), 1)))


@dataclass(frozen=True)
class SearchResult:
    """Examples of a run that match what the user typed, best first."""

    query: str
    n_matches: int
    table: pd.DataFrame  # example_id, uid, rank, score, source, match, prompt (at most `limit` rows)

    @property
    def ranks(self) -> list[int]:
        return [int(r) for r in self.table["rank"]]


def find_examples(store: Store, run_id: int, df: pd.DataFrame, query: str, limit: int = 20) -> SearchResult:
    """The run's examples that ``query`` names: an example id, a uid (exact, then part of one;
    any case) or words of the text (the pool's search, `catalog.matching_ids`); best-ranked first within
    each kind, a run's example listed once."""
    from curation.data.catalog import ExampleFilter, matching_ids

    q = query.strip()
    ids = df["example_id"].to_numpy()
    if not q:
        return SearchResult(q, 0, _hits_frame(store, df, [], []))
    uids = df["uid"].astype(str).str.lower()
    kinds = [("id", ids == int(q)) if q.isdecimal() and q.isascii() else ("id", np.zeros(len(df), bool)),
             ("uid", (uids == q.lower()).to_numpy()),
             ("uid", uids.str.contains(q.lower(), regex=False).to_numpy())]
    text_ids = matching_ids(store, run_info(store, run_id).pool, ExampleFilter(search=q))
    kinds.append(("text", np.isin(ids, np.asarray(text_ids, np.int64))))
    rows, match, seen = [], [], np.zeros(len(df), bool)
    for kind, hit in kinds:  # the frame is in rank order, so each kind comes best-ranked first
        new = np.flatnonzero(hit & ~seen)
        seen[new] = True
        rows.extend(new.tolist())
        match.extend([kind] * len(new))
    return SearchResult(q, len(rows), _hits_frame(store, df, rows[:limit], match[:limit]))


def _hits_frame(store: Store, df: pd.DataFrame, rows: list[int], match: list[str]) -> pd.DataFrame:
    hits = df.iloc[rows]
    return pd.DataFrame({"example_id": hits["example_id"].to_numpy(), "uid": hits["uid"].to_numpy(),
                         "rank": hits["rank"].to_numpy(), "score": hits["score"].to_numpy().round(4),
                         "source": hits["source"].astype(str).to_numpy(), "match": match,
                         "prompt": prompt_excerpts(store, hits["example_id"].tolist(), 100)})


# ---------------------------------------------------------------------------- features


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
    return [_aligned(pairs[m.val_row], m.val_row, m.cosine, m.per_checkpoint) for m in top_val(inputs, row, n)]


def val_subtasks(store: Store, run_id: int) -> list[str]:
    """Subtask of every validation feature row of the run (labels for the map's pair markers)."""
    return [p.subtask for p in _run_pairs(store, run_id)]


def pair_markers(store: Store, run_id: int) -> tuple[list[str], list[str]]:
    """Label (its subtask) and hover text (id, subtask, prompt excerpt) of every validation
    pair of the run, in feature-row order: the map's stars (hover text HTML-escaped for plotly)."""
    import html

    pairs = _run_pairs(store, run_id)
    hover = [html.escape(f"{'pair id ' + str(p.id) if p.id is not None else f'pair row {j + 1}'} · subtask "
                         f"{p.subtask}", quote=False) + "<br>" + html.escape(excerpt(p.prompt, 80), quote=False)
             for j, p in enumerate(pairs)]
    return [p.subtask for p in pairs], hover


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
            select(Example.id, Example.uid, Example.source, Example.messages, Score.score, Score.rank)
            .outerjoin(Score, (Score.example_id == Example.id) & (Score.run_id == run_id))
            .where(Example.id.in_(ids)))}
    out = []
    for i, c in hits:
        if i in rows:
            prompt, response = prompt_and_response(rows[i].messages)
            out.append(Neighbour(i, c, rows[i].uid, rows[i].source, rows[i].score, rows[i].rank,
                                 excerpt(prompt, 120), excerpt(response, 120)))
    return out


# ---------------------------------------------------------------------------- the map's selection


def map_values(df: pd.DataFrame, example_ids: np.ndarray, column: str):
    """One value of ``column`` per map point (a Categorical stays one: one trace per value)."""
    return df.set_index("example_id")[column].reindex(example_ids).array


def map_keep(df: pd.DataFrame, example_ids: np.ndarray) -> np.ndarray:
    """Map points the downsampled map always draws: selected, pinned or excluded ones."""
    state = df.set_index("example_id")["state"].reindex(example_ids)
    return (state.notna() & (state != "not selected")).to_numpy()


def map_hover(store: Store, df: pd.DataFrame, example_ids: Sequence[int]) -> list[str]:
    """Hover text of map points: rank, score, source and the prompt's first 80 characters.
    Plotly reads a few HTML tags in hover text, so the data is HTML-escaped."""
    import html

    frame = df.set_index("example_id").reindex(np.asarray(example_ids, np.int64))
    prompts = prompt_excerpts(store, example_ids, 80)
    esc = lambda v: html.escape(str(v), quote=False)  # noqa: E731
    return [f"rank {int(r):,} · score {people(s)} · {esc(src)}<br>{esc(p)}" if r == r else esc(p)
            for r, s, src, p in zip(frame["rank"].to_numpy(np.float64), frame["score"].to_numpy(np.float64),
                                    frame["source"].astype(str), prompts)]


@dataclass(frozen=True)
class SelectionPreview:
    """What a box/lasso on the map covers, before any bulk action."""

    n: int
    n_kept: int  # of them kept by the current budget
    n_pinned: int
    n_excluded: int
    table: pd.DataFrame  # the best-ranked `limit`: example_id, uid, rank, score, source, state, kept, prompt

    @property
    def summary(self) -> str:
        """What the selection holds and what Pin or Exclude would change, in words."""
        shown = f" The table shows the best-ranked {len(self.table):,}." if len(self.table) < self.n else ""
        return (f"{self.n:,} examples in the map selection: {self.n_kept:,} kept now, "
                f"{self.n_pinned:,} pinned, {self.n_excluded:,} excluded. Pin would keep the "
                f"{self.n - self.n_kept:,} not kept now (pins take budget places first); Exclude would "
                f"drop the {self.n_kept:,} kept now (the next-best take their places).{shown}")


def selection_preview(store: Store, df: pd.DataFrame, ids: Sequence[int], kept: np.ndarray | None = None,
                      limit: int = 200) -> SelectionPreview:
    """The examples of ``ids`` (a map selection) with their rank, score, state and whether the
    current budget keeps them (``kept``, aligned with ``df``; default the automatic selection)."""
    kept = df["selected"].to_numpy() if kept is None else np.asarray(kept, bool)
    inside = np.isin(df["example_id"].to_numpy(), np.asarray(ids, np.int64))
    sel, sel_kept = df[inside], kept[inside]
    top = sel.head(limit)  # the frame is in rank order
    table = pd.DataFrame({"example_id": top["example_id"].to_numpy(), "uid": top["uid"].to_numpy(),
                          "rank": top["rank"].to_numpy(), "score": top["score"].to_numpy().round(4),
                          "source": top["source"].astype(str).to_numpy(),
                          "state": top["state"].astype(str).to_numpy(), "kept": sel_kept[:limit],
                          "prompt": prompt_excerpts(store, top["example_id"].tolist(), 100)})
    return SelectionPreview(int(inside.sum()), int(sel_kept.sum()), int((sel["override"] == "pin").sum()),
                            int((sel["override"] == "exclude").sum()), table)
