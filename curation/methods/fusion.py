"""Fusion: weighted reciprocal-rank fusion of finished runs on one pool (issue 21).

    score(x) = Σ_i w_i / (K + rank_i(x)),   K = 60, ranks 1-based

Each input run's ranks follow the selection's total order (score desc, id asc; `rank_order`), so
ties never depend on storage order. Ranks, not scores, are fused: a BM25 score and a gradient
cosine are on different scales. The inputs' ranks are kept in the run directory
(``fusion.npz``), so the inspector can say which input ranked the example where.
`runs.fuse` creates such a run; re-scoring an input run re-fuses the runs that use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from curation.engine.features import atomic_write, save_npy_atomic
from curation.engine.select import rank_order
from curation.errors import CurationError
from curation.methods.base import Messages, Method, ScoreInputs, ScoreLabels, ScoreOutput, ValPair, method_options, register

K = 60
RANKS_FILE = "fusion_ranks.npy"  # [n, n_runs] int64: each input run's 1-based rank, rows in example-id order
IDS_FILE = "fusion_ids.npy"  # [n] the example ids of those rows
META_FILE = "fusion.json"  # the input runs and weights, in the ranks' column order


def ranks_of(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """1-based rank of every row in the selection's order (score desc, id asc, NaN last)."""
    ranks = np.empty(len(scores), np.int64)
    ranks[rank_order(np.asarray(scores, np.float64), np.asarray(ids))] = np.arange(1, len(scores) + 1)
    return ranks


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """One finite, non-negative weight per input run, not all zero (default: all 1)."""
    if weights is None:
        return [1.0] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise CurationError(f"fusion: {len(w)} weights for {n} runs; give one weight per run")
    if not all(np.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise CurationError(f"fusion: weights must be finite, >= 0 and not all 0, got {w}")
    return w


def rrf(ranks: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """``[n, n_runs]`` 1-based ranks -> the fused score of every row (float64)."""
    return (np.asarray(weights, np.float64)[None, :] / (K + np.asarray(ranks, np.float64))).sum(axis=1)


@register
class Fusion(Method):
    """Examples that several runs rank high score high; the weights say whose ranks count more."""

    name = "fusion"
    uses_model = False  # text statistics only
    labels = ScoreLabels("Fusion", f"weighted reciprocal-rank fusion of finished runs: the sum over input "
                                   f"runs of weight / ({K} + the example's rank in that run)")
    needs_pairs = False
    description = "weighted reciprocal-rank fusion of finished runs (python -m curation fuse)"
    option_spec = {"runs": None, "weights": None}

    def score(self, inputs: ScoreInputs) -> ScoreOutput:
        opts = method_options(self.name, inputs.config, self.option_spec)
        runs = [int(r) for r in opts["runs"] or []]
        if len(runs) < 2:
            raise CurationError("fusion needs at least two finished runs (option runs)")
        weights = check_weights(opts["weights"], len(runs))
        if inputs.scores_of is None:
            raise CurationError("fusion needs the stored scores of its input runs")
        ids = np.asarray(inputs.example_ids, np.int64)
        inputs.reporter.stage("fuse ranks", len(runs))
        ranks = np.empty((len(ids), len(runs)), np.int64)
        for j, run_id in enumerate(runs):
            run_ids, scores = inputs.scores_of(run_id)
            if not np.array_equal(run_ids, ids):
                raise CurationError(f"run {run_id} scored {len(run_ids):,} examples, the pool has {len(ids):,} "
                                    "now; re-score it on the pool as it is, then fuse")
            ranks[:, j] = ranks_of(scores, ids)
            inputs.reporter.update(j + 1)
        inputs.workdir.mkdir(parents=True, exist_ok=True)
        save_npy_atomic(inputs.workdir / IDS_FILE, ids)
        save_npy_atomic(inputs.workdir / RANKS_FILE, ranks)
        atomic_write(inputs.workdir / META_FILE, lambda f: f.write(json.dumps({"runs": runs, "weights": weights}).encode()))
        return ScoreOutput(scores=rrf(ranks, weights).astype(np.float32),
                           meta={"fusion": {"runs": runs, "weights": weights, "k": K}})

    def explain(self, workdir: Path, example_id: int, messages: Messages, pairs: Sequence[ValPair]) -> dict:
        rows = input_ranks(workdir, example_id)
        return {"Ranks in the input runs": rows} if rows else {}

    def reason(self, workdir: Path, example_id: int) -> str | None:
        rows = input_ranks(workdir, example_id)
        if not rows:
            return None
        parts = ", ".join(f"run #{r['run']} ranked it {r['rank']:,} (weight {r['weight']:g}, adds {r['adds']:.5f})"
                          for r in rows)
        return f"Fused from {len(rows)} runs: {parts}."


def input_ranks(workdir: Path, example_id: int) -> list[dict]:
    """Each input run's rank of the example and what it adds to the fused score."""
    workdir = Path(workdir)
    if not all((workdir / f).is_file() for f in (RANKS_FILE, IDS_FILE, META_FILE)):
        return []
    meta = json.loads((workdir / META_FILE).read_text())
    ids = np.load(workdir / IDS_FILE, allow_pickle=False)
    row = np.flatnonzero(ids == int(example_id))
    if not len(row):
        return []
    ranks = np.load(workdir / RANKS_FILE, mmap_mode="r")[int(row[0])]
    return [{"run": run, "rank": int(rank), "weight": w, "adds": w / (K + int(rank))}
            for run, rank, w in zip(meta["runs"], ranks, meta["weights"])]
