"""BM25 baseline (METHODS.md §5): lexical relevance of each pool example to the target task.

The pool is the document collection (one document = all message contents of an example);
each validation pair's ``prompt + chosen`` is a query. ``S[z, v]`` is the BM25 score of
example z for query v, then the ROSE aggregation: mean over the pairs of a subtask, max over
subtasks (`influence.aggregate`). BM25 itself is the `bm25s` library's (Lucene variant by
default); tokens are its default word splitter, lower-cased, English stopwords removed.

Memory. Texts are fetched and tokenized in chunks of ``chunk`` examples, but BM25 needs the
collection's document frequencies and mean length before it can score anything, so every
document's token ids are held (4 bytes per token, `array('i')`) while the index is built;
then the index (CSC: ~8 bytes per distinct (example, term)) and ``S`` (4·n·n_pairs bytes).
About 3 GB for a 1M-example pool of 300-token examples; beyond that, shard the pool.
"""

from __future__ import annotations

from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from typing import TYPE_CHECKING

import numpy as np

from curation.engine.influence import aggregate, subtask_index
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

INDEX_DIR = "bm25"  # under the run's workdir: the bm25s index, its tokenizer vocab, example ids
IDS_FILE = "example_ids.npy"
STOPWORDS = "en"
# Variants whose score is a plain sum of per-(term, example) weights: what explain() shows.
# (bm25l / bm25+ add a non-occurrence term per query token that no single match explains.)
VARIANTS = ("lucene", "robertson", "atire")
DEFAULTS = {"k1": 1.5, "b": 0.75, "variant": "lucene", "chunk": 2048}


def example_text(messages: Messages) -> str:
    """The document of a pool example: every message's content (system, user, assistant)."""
    return "\n".join(m["content"] for m in messages)


def pair_query(pair: ValPair) -> str:
    """The query of a validation pair: what the target task asks and the answer it prefers."""
    return f"{pair.prompt}\n{pair.chosen}"


if TYPE_CHECKING:  # bm25s (and numba under it) takes ~1 s to import: only a BM25 run needs it
    import bm25s
    from bm25s.tokenization import Tokenizer


def new_tokenizer() -> Tokenizer:
    from bm25s.tokenization import Tokenizer
    return Tokenizer(stopwords=STOPWORDS)


def tokenize_pool(inputs: ScoreInputs, tok: Tokenizer, chunk: int) -> list[array]:
    """Token ids of every pool example, fetched ``chunk`` examples at a time (bounded text memory)."""
    ids, docs = inputs.example_ids, []
    inputs.reporter.stage("tokenize pool", len(ids))
    for start in range(0, len(ids), chunk):
        texts = [example_text(m) for m in inputs.fetch(ids[start:start + chunk])]
        docs.extend(array("i", d) for d in tok.streaming_tokenize(texts, update_vocab=True))
        inputs.reporter.update(min(start + chunk, len(ids)))
    return docs


def build_index(docs: list[array], tok: Tokenizer, opts: dict[str, Any]) -> bm25s.BM25:
    """A bm25s index over pre-tokenized documents, sharing the tokenizer's vocabulary ids."""
    if opts["variant"] not in VARIANTS:
        raise CurationError(f"bm25: variant must be one of {', '.join(VARIANTS)}, got {opts['variant']!r}")
    import bm25s
    retriever = bm25s.BM25(k1=float(opts["k1"]), b=float(opts["b"]), method=opts["variant"])
    retriever.index((docs, tok.get_vocab_dict()), show_progress=False)
    return retriever


def query_ids(tok: Tokenizer, text: str) -> list[int]:
    """Vocabulary ids of the query's words (repeats kept: BM25 sums over query tokens);
    words absent from the pool match nothing and are dropped."""
    return next(tok.streaming_tokenize([text], update_vocab=False))


def pair_scores(retriever: bm25s.BM25, tok: Tokenizer, pairs: Sequence[ValPair]) -> np.ndarray:
    """``S [n_examples, n_pairs]``: the BM25 score of every example for every pair's query."""
    S = np.empty((retriever.scores["num_docs"], len(pairs)), np.float32)
    for j, pair in enumerate(pairs):
        S[:, j] = retriever.get_scores_from_ids(query_ids(tok, pair_query(pair)))
    return S


@register
class BM25Method(Method):
    """Examples that share the validation pairs' rarer words score high."""

    name = "bm25"
    option_spec = DEFAULTS
    uses_model = False  # text statistics only
    labels = ScoreLabels("BM25", "BM25 lexical match of the example's text with each pair's prompt + chosen, "
                                 "averaged per subtask; the best subtask is the score",
                         per_subtask="mean BM25 score", per_pair="BM25 score")
    description = "BM25 of each pool example against every pair's prompt + chosen (bm25s)"

    def score(self, inputs: ScoreInputs) -> ScoreOutput:
        opts = method_options(self.name, inputs.config, DEFAULTS)
        tok = new_tokenizer()
        docs = tokenize_pool(inputs, tok, int(opts["chunk"]))
        inputs.reporter.stage("bm25 index", len(docs))
        retriever = build_index(docs, tok, opts)
        del docs
        inputs.reporter.stage("bm25 scores", len(inputs.pairs))
        S = pair_scores(retriever, tok, inputs.pairs)
        index, subtasks = subtask_index([p.subtask for p in inputs.pairs])
        self._save(inputs.workdir / INDEX_DIR, retriever, tok, inputs.example_ids)
        inputs.reporter.update(len(inputs.pairs))
        return output_from_means(aggregate(S, index, len(subtasks)), subtasks,
                                 {"bm25": {k: opts[k] for k in ("k1", "b", "variant")},
                                  "vocabulary": len(tok.word_to_id)})

    @staticmethod
    def _save(out: Path, retriever: bm25s.BM25, tok: Tokenizer, example_ids: list[int]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        retriever.save(out, show_progress=False)
        tok.save_vocab(out)
        np.save(out / IDS_FILE, np.asarray(example_ids, np.int64))

    def explain(self, workdir: Path, example_id: int, messages: Messages,
                pairs: Sequence[ValPair]) -> dict[str, Any]:
        """The best-matching pair and the query terms the example shares with it, each with
        its BM25 contribution (IDF x saturated term frequency, from the stored index)."""
        found = _pair_terms(Path(workdir), example_id, pairs)
        if found is None:
            return {}
        retriever, tok, terms = found
        best = int(np.argmax([sum(t["contribution"] for t in ts) for ts in terms]))
        return {"best-matching validation pair": _describe(pairs[best], best, terms[best]),
                "matching terms": _term_rows(terms[best], tok, messages, retriever)}

    def pair_scores(self, workdir: Path, example_id: int, messages: Messages,
                    pairs: Sequence[ValPair]) -> np.ndarray | None:
        """The example's BM25 score for every pair's query (its row of S)."""
        found = _pair_terms(Path(workdir), example_id, pairs)
        if found is None:
            return None
        return np.array([sum(t["contribution"] for t in ts) for ts in found[2]], np.float64)


def _pair_terms(workdir: Path, example_id: int, pairs: Sequence[ValPair]):
    """(index, tokenizer, per pair: the query terms the example matches); None without an index."""
    index_dir = workdir / INDEX_DIR
    if not (index_dir / IDS_FILE).is_file() or not pairs:
        return None
    import bm25s
    retriever = bm25s.BM25.load(index_dir, mmap=True, show_progress=False)
    tok = new_tokenizer()
    tok.load_vocab(index_dir)
    row = _row_of(np.load(index_dir / IDS_FILE), example_id)
    return retriever, tok, [_term_weights(retriever, Counter(query_ids(tok, pair_query(p))), row) for p in pairs]


def _row_of(ids: np.ndarray, example_id: int) -> int:
    rows = np.flatnonzero(ids == example_id)
    if not len(rows):
        raise CurationError(f"example {example_id} was not scored by this run")
    return int(rows[0])


def _term_weights(retriever: bm25s.BM25, counts: Counter, row: int) -> list[dict[str, Any]]:
    """Per query term: its weight in document ``row`` (the CSC index entry) times its count
    in the query, which is exactly what `get_scores_from_ids` adds up."""
    data, indices, indptr = (retriever.scores[k] for k in ("data", "indices", "indptr"))
    out = []
    for tid, qtf in counts.items():
        lo, hi = int(indptr[tid]), int(indptr[tid + 1])
        hit = np.flatnonzero(np.asarray(indices[lo:hi]) == row)
        if len(hit):
            weight = float(data[lo + hit[0]])
            out.append({"id": tid, "qtf": qtf, "df": hi - lo, "contribution": qtf * weight})
    return sorted(out, key=lambda t: -t["contribution"])


def _describe(pair: ValPair, j: int, terms: list[dict[str, Any]]) -> str:
    total = sum(t["contribution"] for t in terms)
    return (f"pair {j + 1} ({pair.subtask}), BM25 {total:.3f}\n"
            f"prompt: {pair.prompt}\nchosen: {pair.chosen}")


def _term_rows(terms: list[dict[str, Any]], tok: Tokenizer, messages: Messages,
               retriever: bm25s.BM25) -> list[dict[str, Any]]:
    words = {i: w for w, i in tok.word_to_id.items()}
    tf = Counter(query_ids(tok, example_text(messages)))
    n = int(retriever.scores["num_docs"])
    return [{"term": words[t["id"]], "in query": t["qtf"], "in example": tf[t["id"]],
             "examples with term": f"{t['df']} / {n}", "contribution": round(t["contribution"], 4)}
            for t in terms]
