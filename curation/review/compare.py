"""Side-by-side comparison of finished runs on one pool (METHODS.md §5): do two methods pick
the same examples, and do they order the pool alike?

Per pair of runs: overlap of the stored selections (|A∩B| and Jaccard), rank correlation of
the scores (Spearman, Kendall tau-b, from scipy), and the examples whose ranks differ most.
Ranks are recomputed from the scores with the selection's own total order
(`select.rank_order`: score desc, id asc), so ties can never make two runs look different.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import combinations
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sqlalchemy import select

from curation.data.catalog import method_label
from curation.data.store import Example, Pool, PreferenceSet, Run, Score, Store
from curation.engine.select import rank_order, response_length
from curation.errors import CurationError
from curation.runs.execute import load_scores

PREVIEW = 120
GROUPS = ("both", "A only", "B only", "neither")


@dataclass(frozen=True)
class RunSide:
    """Who a run is, as the table labels it."""

    id: int
    method: str
    prefs: str | None
    n_selected: int
    label: str


@dataclass(frozen=True)
class Disagreement:
    example_id: int
    uid: str
    source: str
    prompt: str
    rank_a: int
    rank_b: int
    score_a: float
    score_b: float


@dataclass
class PairStats:
    a: int
    b: int
    overlap: int  # |A ∩ B| of the stored selections
    jaccard: float
    spearman: float  # NaN when a run's scores are constant
    kendall: float
    disagreements: list[Disagreement] = field(default_factory=list)

    def swapped(self) -> PairStats:
        """The same statistics seen from B (all of them are symmetric except the sides)."""
        flipped = [replace(d, rank_a=d.rank_b, rank_b=d.rank_a, score_a=d.score_b, score_b=d.score_a)
                   for d in self.disagreements]
        return replace(self, a=self.b, b=self.a, disagreements=flipped)


@dataclass
class Comparison:
    """Everything the CLI and the Compare page show; the arrays stay for the scatter."""

    pool: str
    runs: list[RunSide]
    pairs: list[PairStats]
    example_ids: np.ndarray  # [n] int64, ascending: the row order of `scores` and `selected`
    scores: dict[int, np.ndarray] = field(repr=False)  # run id -> [n] float32
    selected: dict[int, np.ndarray] = field(repr=False)  # run id -> [n] bool

    def pair(self, a: int, b: int) -> PairStats:
        """The statistics of runs ``a`` and ``b``, oriented so that ``a`` is side A."""
        for p in self.pairs:
            if (p.a, p.b) == (a, b):
                return p
            if (p.b, p.a) == (a, b):
                return p.swapped()
        raise CurationError(f"runs {a} and {b} are not both in this comparison")

    def table(self) -> pd.DataFrame:
        """One row per pair of runs: the numbers the CLI prints and the page tabulates."""
        names = {r.id: r.label for r in self.runs}
        return pd.DataFrame([{"A": names[p.a], "B": names[p.b], "overlap": p.overlap,
                              "jaccard": p.jaccard, "spearman": p.spearman, "kendall": p.kendall}
                             for p in self.pairs])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (no arrays; an undefined correlation is null, not NaN): `compare --json`."""
        pairs = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(p).items()}
                 for p in self.pairs]
        return {"pool": self.pool, "n_examples": int(len(self.example_ids)),
                "runs": [asdict(r) for r in self.runs], "pairs": pairs}


def compare_runs(store: Store, run_ids: Sequence[int], top: int = 10) -> Comparison:
    """Compare ≥ 2 finished runs of one pool; ``top`` disagreements per pair of runs."""
    sides, pool = _check_runs(store, run_ids)
    ids, scores, selected = _load(store, [s.id for s in sides])
    ranks = {rid: _ranks(sc, ids) for rid, sc in scores.items()}
    pairs = [_pair_stats(a.id, b.id, scores, selected) for a, b in combinations(sides, 2)]
    for p in pairs:
        p.disagreements = _disagreements(store, ids, p, ranks, scores, top)
    return Comparison(pool=pool, runs=sides, pairs=pairs, example_ids=ids, scores=scores, selected=selected)


def _check_runs(store: Store, run_ids: Sequence[int]) -> tuple[list[RunSide], str]:
    """Refuse what cannot be compared: unknown or unfinished runs, runs of different pools."""
    run_ids = list(dict.fromkeys(int(r) for r in run_ids))
    if len(run_ids) < 2:
        raise CurationError("compare needs at least two different runs")
    with store.session() as s:
        runs = [s.get(Run, rid) for rid in run_ids]
        if missing := [rid for rid, r in zip(run_ids, runs) if r is None]:
            raise CurationError(f"no run with id {', '.join(map(str, missing))}")
        if unfinished := [f"#{r.id} ({r.status})" for r in runs if r.status != "done"]:
            raise CurationError(f"only finished runs can be compared: {', '.join(unfinished)}")
        if len({r.pool_id for r in runs}) > 1:
            raise CurationError("runs of different pools cannot be compared: "
                                + ", ".join(f"#{r.id} (pool {s.get(Pool, r.pool_id).name})" for r in runs))
        prefs = {r.id: s.get(PreferenceSet, r.prefs_id).name if r.prefs_id else None for r in runs}
        sides = [RunSide(r.id, r.method, prefs[r.id], r.n_selected,
                         f"#{r.id} {method_label(r.method, r.meta)}" + (f"/{prefs[r.id]}" if prefs[r.id] else ""))
                 for r in runs]
        return sides, s.get(Pool, runs[0].pool_id).name


def _load(store: Store, run_ids: list[int]) -> tuple[np.ndarray, dict, dict]:
    """Scores and selection masks of every run, aligned on the same example ids."""
    scores, selected, ids = {}, {}, None
    for rid in run_ids:
        rid_ids, sc = load_scores(store, rid)
        if ids is None:
            ids = rid_ids
        elif not np.array_equal(ids, rid_ids):
            raise CurationError(f"run #{rid} scored other examples than run #{run_ids[0]}")
        scores[rid] = sc
        with store.session() as s:
            chosen = list(s.scalars(select(Score.example_id).where(Score.run_id == rid, Score.selected)))
        selected[rid] = np.isin(ids, chosen)
    if ids is None or not len(ids):
        raise CurationError("the runs have no stored scores")
    return ids, scores, selected


def _ranks(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """1-based rank of every row in the selection's total order."""
    ranks = np.empty(len(ids), np.int64)
    ranks[rank_order(scores.astype(np.float64), ids)] = np.arange(1, len(ids) + 1)
    return ranks


def _correlation(fn, x: np.ndarray, y: np.ndarray) -> float:
    """NaN instead of a warning when a side is constant (e.g. an all-zero BM25 pool)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(fn(x, y).statistic)


def _pair_stats(a: int, b: int, scores: dict, selected: dict) -> PairStats:
    both = int((selected[a] & selected[b]).sum())
    union = int((selected[a] | selected[b]).sum())
    return PairStats(a=a, b=b, overlap=both, jaccard=both / union if union else float("nan"),
                     spearman=_correlation(stats.spearmanr, scores[a], scores[b]),
                     kendall=_correlation(stats.kendalltau, scores[a], scores[b]))


def _disagreements(store: Store, ids: np.ndarray, p: PairStats, ranks: dict, scores: dict,
                   top: int) -> list[Disagreement]:
    """The ``top`` examples with the largest rank difference; ties: the better best rank first
    (a top-10 example that one run buries matters more than a shuffle at the bottom), then id."""
    ra, rb = ranks[p.a], ranks[p.b]
    order = np.lexsort((ids, np.minimum(ra, rb), -np.abs(ra - rb)))[:max(top, 0)]
    previews = _previews(store, ids[order].tolist())
    return [Disagreement(int(ids[i]), *previews[int(ids[i])], int(ra[i]), int(rb[i]),
                         float(scores[p.a][i]), float(scores[p.b][i])) for i in order]


def _previews(store: Store, example_ids: list[int]) -> dict[int, tuple[str, str, str]]:
    """(uid, source, first user message cut to PREVIEW chars) of a few examples."""
    with store.session() as s:
        rows = s.execute(select(Example.id, Example.uid, Example.source, Example.messages)
                         .where(Example.id.in_(example_ids))).all()
    return {i: (uid, src, next((m["content"] for m in msgs if m["role"] == "user"), "")[:PREVIEW])
            for i, uid, src, msgs in rows}


def disagreement_frame(p: PairStats) -> pd.DataFrame:
    """The disagreements of one pair as a table (plain text cells)."""
    return pd.DataFrame([asdict(d) for d in p.disagreements],
                        columns=[f.name for f in fields(Disagreement)])


def score_scatter_frame(cmp: Comparison, a: int, b: int, max_points: int = 20_000,
                        seed: int = 0) -> pd.DataFrame:
    """Rows for a score-of-A vs score-of-B scatter, at most ``max_points``, with the group
    (both / A only / B only / neither selected). Selected examples are kept first (up to half
    the points): they are what the comparison is about, and a uniform sample of a big pool
    would thin them out; the rest is a seeded uniform sample of the unselected."""
    cmp.pair(a, b)
    sa, sb = cmp.selected[a], cmp.selected[b]
    group = np.where(sa & sb, 0, np.where(sa, 1, np.where(sb, 2, 3)))
    rng = np.random.default_rng(seed)
    chosen = _sample(np.flatnonzero(group < 3), max_points // 2, rng)
    rest = _sample(np.flatnonzero(group == 3), max_points - len(chosen), rng)
    rows = np.sort(np.concatenate([chosen, rest]))
    return pd.DataFrame({"example_id": cmp.example_ids[rows], "score_a": cmp.scores[a][rows],
                         "score_b": cmp.scores[b][rows],
                         "group": pd.Categorical(np.asarray(GROUPS)[group[rows]], categories=GROUPS)})


def _sample(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= n else rng.choice(rows, size=n, replace=False)


def report(cmp: Comparison) -> str:
    """The plain-text summary `python -m curation compare` prints: the pairwise table, then
    each pair's top disagreements."""
    lines = [f"pool {cmp.pool}: {len(cmp.example_ids)} examples, {len(cmp.runs)} runs", "",
             cmp.table().to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    names = {r.id: r.label for r in cmp.runs}
    for p in cmp.pairs:
        lines += ["", f"largest rank differences, A = {names[p.a]}, B = {names[p.b]}:"]
        lines += [f"  rank {d.rank_a:>6} vs {d.rank_b:<6} score {d.score_a:+.4f} vs {d.score_b:+.4f}"
                  f"  {d.source:<14} {d.uid:<20} {d.prompt!r}" for d in p.disagreements]
    return "\n".join(lines)


def length_spearman(store: Store, run_id: int, batch: int = 20_000) -> float | None:
    """Spearman correlation of a run's scores with its examples' response lengths (characters):
    near 1 means the method mostly prefers long answers. None without scores, NaN when either
    side is constant. Computed from the stored scores, so old runs have it too."""
    ids, scores = load_scores(store, run_id)
    if len(ids) < 2:
        return None
    lengths = np.empty(len(ids), np.float64)
    with store.session() as s:
        for i in range(0, len(ids), batch):
            part = ids[i: i + batch].tolist()
            rows = dict(s.execute(select(Example.id, Example.messages).where(Example.id.in_(part))).all())
            lengths[i: i + len(part)] = [response_length(rows[e]) for e in part]
    return _correlation(stats.spearmanr, scores.astype(np.float64), lengths)
