"""DSIR (Xie et al. 2023; METHODS.md §5): importance weights from hashed n-gram models.

Each text is a bag of hashed word unigrams and bigrams (``buckets`` buckets, lower-cased;
scikit-learn's `HashingVectorizer`, murmurhash3, the same in every process). Two bag-of-n-gram
distributions are fitted by counting: the raw one on the pool and a target one per subtask
on its pairs' ``prompt + chosen``. As in the reference code (p-lambda/dsir), the log
importance weight of example z for subtask s is

    log w_s(z) = Σ_b c_z(b) · (log(p_s(b) + eps) − log(p_raw(b) + eps))    eps = 1e-8

with c_z(b) the n-gram count of z in bucket b: an n-gram the target never uses costs about
log(eps) = -18, so examples built from the target's n-grams win. The reference tokenizes with
nltk's wordpunct (punctuation and 1-letter words count too); here scikit-learn's word pattern.

and, as in ROSE, the score is the max over subtasks (one target distribution per subtask
rather than one per pair: a single pair is too few n-grams to estimate a distribution).
With ``resample`` (the paper's default) a seeded Gumbel draw is added, so that top-k of the
scores is sampling k examples without replacement in proportion to w (Gumbel top-k);
without it the selection is the deterministic top-k of log w.

Memory: the pool is read twice in chunks (raw counts, then weights); resident are one chunk's
sparse counts and the ``[n_subtasks, buckets]`` log-ratio table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # sklearn (with scipy.stats, pandas) costs ~1.7 s to import: only a dsir run pays it
    from sklearn.feature_extraction.text import HashingVectorizer

from curation.engine.influence import subtask_index
from curation.errors import CurationError
from curation.methods.base import (
    Messages,
    Method,
    ScoreInputs,
    ScoreLabels,
    ScoreOutput,
    ValPair,
    method_options,
    output_from_means,
    register,
)
from curation.methods.bm25 import example_text, pair_query

WEIGHTS_FILE = "dsir_log_ratio.npy"  # [n_subtasks, buckets] float64, under the run's workdir
DEFAULTS = {"buckets": 10_000, "eps": 1e-8, "resample": True, "seed": None, "chunk": 2048}


def vectorizer(buckets: int) -> HashingVectorizer:
    """Raw hashed unigram + bigram counts (no sign trick, no normalisation)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=buckets, ngram_range=(1, 2), alternate_sign=False, norm=None)


def log_probs(counts: np.ndarray, eps: float) -> np.ndarray:
    """``log(p + eps)`` of the bag-of-n-grams distribution of every row of counts."""
    counts = np.atleast_2d(np.asarray(counts, np.float64))
    totals = counts.sum(axis=1, keepdims=True)
    return np.log(np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0) + eps)


def target_counts(vec: HashingVectorizer, pairs: Sequence[ValPair], index: np.ndarray, n_sub: int) -> np.ndarray:
    """``[n_subtasks, buckets]`` n-gram counts of each subtask's pairs."""
    X = vec.transform([pair_query(p) for p in pairs])
    return np.stack([np.asarray(X[index == s].sum(axis=0)).ravel() for s in range(n_sub)])


def _chunks(inputs: ScoreInputs, vec: HashingVectorizer, chunk: int, stage: str):
    """(start, end, sparse counts) of the pool, ``chunk`` examples at a time."""
    ids = inputs.example_ids
    inputs.reporter.stage(stage, len(ids))
    for start in range(0, len(ids), chunk):
        end = min(start + chunk, len(ids))
        yield start, end, vec.transform([example_text(m) for m in inputs.fetch(ids[start:end])])
        inputs.reporter.update(end)


@register
class DSIR(Method):
    """Examples whose n-grams are likelier under the target task than under the pool."""

    name = "dsir"
    option_spec = DEFAULTS
    labels = ScoreLabels("DSIR", "log importance weight of the example's hashed n-grams, likelier under a subtask's "
                                 "pairs than under the pool; the best subtask is the score (plus seeded Gumbel "
                                 "noise when resampling)", per_subtask="log importance weight")
    description = "hashed n-gram importance weights log p_target / p_pool (Gumbel top-k resampling)"

    def score(self, inputs: ScoreInputs) -> ScoreOutput:
        opts = method_options(self.name, inputs.config, DEFAULTS)
        if int(opts["buckets"]) < 1 or float(opts["eps"]) <= 0:
            raise CurationError("dsir: buckets must be >= 1 and eps > 0")
        vec, chunk, n = vectorizer(int(opts["buckets"])), int(opts["chunk"]), len(inputs.example_ids)
        raw = np.zeros(int(opts["buckets"]))
        for _, _, X in _chunks(inputs, vec, chunk, "n-gram counts"):
            raw += np.asarray(X.sum(axis=0)).ravel()
        index, subtasks = subtask_index([p.subtask for p in inputs.pairs])
        eps = float(opts["eps"])
        W = log_probs(target_counts(vec, inputs.pairs, index, len(subtasks)), eps) - log_probs(raw, eps)
        means = np.empty((n, len(subtasks)), np.float32)
        for start, end, X in _chunks(inputs, vec, chunk, "importance weights"):
            means[start:end] = X @ W.T
        Path(inputs.workdir).mkdir(parents=True, exist_ok=True)
        np.save(Path(inputs.workdir) / WEIGHTS_FILE, W)
        out = output_from_means(means, subtasks, {k: opts[k] for k in ("buckets", "eps", "resample")})
        if opts["resample"]:
            seed = inputs.config.warmup.seed if opts["seed"] is None else int(opts["seed"])
            out.scores = out.scores + np.random.default_rng(seed).gumbel(size=n).astype(np.float32)
            out.meta["seed"] = seed
        return out

    def explain(self, workdir: Path, example_id: int, messages: Messages,
                pairs: Sequence[ValPair]) -> dict[str, Any]:
        """The example's n-grams that move its log weight most, for its best subtask."""
        path = Path(workdir) / WEIGHTS_FILE
        if not path.is_file():
            return {}
        W = np.load(path)
        index, subtasks = subtask_index([p.subtask for p in pairs])
        if len(subtasks) != len(W):
            return {"note": "the preference set's subtasks changed since scoring; score again"}
        grams = vectorizer(W.shape[1]).build_analyzer()(example_text(messages))
        counts = _bucket_counts(grams, W.shape[1])
        best = int(np.argmax([sum(c * W[s, b] for b, (c, _) in counts.items()) for s in range(len(W))]))
        rows = [{"n-gram": ", ".join(sorted(set(g)))[:80], "count": c, "log ratio": round(float(W[best, b]), 4),
                 "contribution": round(float(c * W[best, b]), 4)} for b, (c, g) in counts.items()]
        rows.sort(key=lambda r: -abs(r["contribution"]))
        total = sum(c * W[best, b] for b, (c, _) in counts.items())
        return {"target subtask": f"{subtasks[best]}: log importance weight {total:.3f}",
                "n-grams by contribution": rows[:25]}


def _bucket_counts(grams: list[str], buckets: int) -> dict[int, tuple[int, list[str]]]:
    """bucket -> (count, the example's n-grams hashed there), hashed exactly as the vectorizer
    does (sklearn's FeatureHasher is what HashingVectorizer uses underneath)."""
    from sklearn.feature_extraction import FeatureHasher

    X = FeatureHasher(n_features=buckets, input_type="string", alternate_sign=False).transform([[g] for g in grams])
    out: dict[int, tuple[int, list[str]]] = {}
    for gram, bucket in zip(grams, X.indices):
        count, names = out.get(int(bucket), (0, []))
        out[int(bucket)] = (count + 1, names + [gram])
    return out
