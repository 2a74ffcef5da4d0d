"""The baselines of METHODS.md §5 (random, bm25, repsim, dsir): each against a direct computation,
then each end to end on the demo pool through `create_run` / `execute_run`."""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from curation.config import ScoreConfig, SelectConfig
from curation.data.demo import DEMO_POOL, DEMO_PREFS, ensure_demo
from curation.data.store import Example, Run, Score, Store
from curation.engine.model import ModelConfig, encode, encode_pair
from curation.engine.models import load_model
from curation.engine.tiny import TinyConfig, build_tiny_model
from curation.engine.warmup import WarmupConfig
from curation.errors import CurationError
from curation.methods import ScoreInputs, ValPair, get_method
from curation.methods.bm25 import example_text, pair_query
from curation.methods.dsir import vectorizer
from curation.methods.repsim import last_positions, last_token_states
from curation.runs.execute import create_run, execute_run, execute_shard, show_run
from curation.runs.jobs import Reporter
from curation.workspace import Workspace

# Untrained beyond a few steps: repsim's tests need a real tokenizer + Llama, not a good model.
NANO = TinyConfig(vocab_size=384, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                  block_size=64, batch_size=4, steps=3)


@pytest.fixture(scope="module")
def nano_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nano") / "model"
    build_tiny_model(DEMO_POOL, out, NANO)
    return out



def demo_examples(n: int) -> list[list[dict]]:
    with open(DEMO_POOL) as f:
        return [json.loads(line)["messages"] for line, _ in zip(f, range(n))]


def demo_pairs() -> list[ValPair]:
    with open(DEMO_PREFS) as f:
        rows = [json.loads(line) for line in f]
    return [ValPair(r["prompt"], [{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"],
                    r["subtask"]) for r in rows]


def inputs_for(messages: list[list[dict]], pairs: list[ValPair], tmp_path: Path, **config) -> ScoreInputs:
    """ScoreInputs over an in-memory pool (ids 100, 101, ...) with a counting `fetch`."""
    ids = list(range(100, 100 + len(messages)))
    by_id = dict(zip(ids, messages))

    def fetch(some):
        fetch.calls.append(len(some))
        return [by_id[i] for i in some]

    fetch.calls = []
    return ScoreInputs(example_ids=ids, fetch=fetch, pairs=pairs, config=ScoreConfig(**config),
                       workdir=tmp_path / "run", workspace=Workspace.from_env(tmp_path / "ws").ensure(),
                       reporter=Reporter(None, None))


def subtask_max(S: np.ndarray, labels: list[str]) -> np.ndarray:
    """The ROSE aggregation written out: mean over each subtask's columns, max over subtasks."""
    means = np.stack([S[:, [j for j, x in enumerate(labels) if x == t]].mean(1)
                      for t in dict.fromkeys(labels)], 1)
    return means.max(1)


# ---------------------------------------------------------------------------- random


def test_random_is_deterministic_and_seed_dependent(tmp_path):
    pool = demo_examples(50)
    run = lambda **kw: get_method("random").score(inputs_for(pool, [], tmp_path, **kw)).scores  # noqa: E731
    a, b = run(options={"seed": 1}), run(options={"seed": 1})
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(options={"seed": 2}))
    assert a.shape == (50,) and a.dtype == np.float32 and ((0 <= a) & (a < 1)).all()
    np.testing.assert_array_equal(run(warmup=WarmupConfig(seed=7)), run(options={"seed": 7}))
    assert not get_method("random").needs_pairs
    with pytest.raises(CurationError, match="unknown option"):
        run(options={"sed": 1})


# ---------------------------------------------------------------------------- bm25


def test_bm25_ranks_shared_rare_terms_first(tmp_path):
    pool = [[{"role": "user", "content": c}, {"role": "assistant", "content": "The answer is yes."}]
            for c in ("Is the sky blue on a clear day?", "Are zygomorphic orchid petals mirror symmetric?",
                      "Name a colour of the rainbow.", "What is the answer to two plus two?",
                      "Describe a bicycle.")]
    pair = ValPair("Explain zygomorphic symmetry in orchid flowers.", [], "It has one mirror plane; the answer is it.",
                   "no", "botany")
    out = get_method("bm25").score(inputs_for(pool, [pair], tmp_path))
    assert int(np.argmax(out.scores)) == 1
    assert out.scores[1] > 3 * np.sort(out.scores)[-2]
    assert out.subtasks == ["botany"] and out.subtask_means.shape == (5, 1)


def test_bm25_streamed_scores_equal_bm25s_retrieve(tmp_path):
    pool, pairs = demo_examples(400), demo_pairs()
    inputs = inputs_for(pool, pairs, tmp_path, options={"chunk": 64})
    out = get_method("bm25").score(inputs)
    assert max(inputs.fetch.calls) == 64  # streamed, never the whole pool at once
    retriever = bm25s.BM25()  # the library's own path: tokenize all, index, retrieve every doc
    retriever.index(bm25s.tokenize([example_text(m) for m in pool], stopwords="en", show_progress=False),
                    show_progress=False)
    S = np.zeros((len(pool), len(pairs)), np.float32)
    for j, p in enumerate(pairs):
        query = bm25s.tokenize([pair_query(p)], stopwords="en", return_ids=False, show_progress=False)
        docs, scores = retriever.retrieve(query, k=len(pool), show_progress=False)
        S[docs[0], j] = scores[0]
    np.testing.assert_allclose(out.scores, subtask_max(S, [p.subtask for p in pairs]), rtol=1e-5)
    assert out.scores.max() > 0
    row = int(np.argmax(out.scores))
    explained = get_method("bm25").explain(inputs.workdir, 100 + row, pool[row], pairs)
    total = sum(r["contribution"] for r in explained["matching terms"])
    assert total == pytest.approx(S[row].max(), rel=1e-3)
    assert f"pair {int(np.argmax(S[row])) + 1} " in explained["best-matching validation pair"]


# ---------------------------------------------------------------------------- repsim


def test_last_positions_handles_left_and_right_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert last_positions(mask).tolist() == [3, 2, 3, 0]


def test_repsim_equals_direct_hidden_state_cosine(tmp_path, nano_model):
    pool, pairs = demo_examples(11), demo_pairs()[::2]
    cfg = ModelConfig(name_or_path=str(nano_model), max_length=96)
    inputs = inputs_for(pool, pairs, tmp_path, model=cfg, options={"batch_size": 3, "chunk": 4})
    out = get_method("repsim").score(inputs)
    model, tok = load_model(cfg, tmp_path)

    def state(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        return h / h.norm()

    T = torch.stack([state(encode(tok, m, cfg.max_length)["input_ids"]) for m in pool])
    V = torch.stack([state(encode_pair(tok, p.prompt_messages, p.chosen, cfg.max_length)["input_ids"])
                     for p in pairs])
    expected = subtask_max((T @ V.T).numpy(), [p.subtask for p in pairs])
    np.testing.assert_allclose(out.scores, expected, atol=1e-5)
    assert out.meta["adapter"] is None and out.meta["hidden_size"] == NANO.hidden_size
    explained = get_method("repsim").explain(inputs.workdir, 105, pool[5], pairs)
    best = explained["most similar validation pairs"][0]
    assert best["cosine"] == pytest.approx(float((T[5] @ V.T).max()), abs=1e-4)


def test_repsim_features_do_not_depend_on_batch_composition(tmp_path, nano_model):
    model, tok = load_model(ModelConfig(name_or_path=str(nano_model)), tmp_path)
    seqs = [encode(tok, m, 128)["input_ids"] for m in demo_examples(9)]
    assert len({len(s) for s in seqs}) > 3  # varied lengths: padding really happens
    alone = last_token_states(model, seqs, tok.pad_token_id, batch_size=1)
    batched = last_token_states(model, seqs, tok.pad_token_id, batch_size=5)
    reordered = last_token_states(model, seqs[::-1], tok.pad_token_id, batch_size=4)[::-1]
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    np.testing.assert_allclose(reordered, alone, atol=1e-5)


def test_repsim_reuses_the_pool_states_of_an_earlier_run(tmp_path, nano_model, monkeypatch):
    """The second run on the same pool reads the cached states (no pool forward) and scores as the
    first; a changed example misses the cache; re-writing a run's train.npy leaves the cache intact."""
    import curation.methods.repsim as repsim
    from curation.engine.statecache import CACHE_SUBDIR
    pool, pairs = demo_examples(9), demo_pairs()
    cfg = ModelConfig(name_or_path=str(nano_model), max_length=96)

    def run(name: str, messages, hashes, pair_set):
        inputs = inputs_for(messages, pair_set, tmp_path, model=cfg, options={"batch_size": 4, "chunk": 4})
        inputs.workdir, inputs.content_hashes = tmp_path / name, hashes
        return inputs, get_method("repsim").score(inputs)

    hashes = [f"h{i}" for i in range(len(pool))]
    first_in, first = run("a", pool, hashes, pairs)
    cache_files = list((tmp_path / "ws" / CACHE_SUBDIR).glob("*.npy"))
    assert len(cache_files) == 1
    assert cache_files[0].parent.stat().st_mode & 0o077 == 0  # private, as the pool's text is
    states = np.load(cache_files[0]).copy()
    forwards = []
    real = repsim.last_token_states
    monkeypatch.setattr(repsim, "last_token_states", lambda model, seqs, *a: forwards.append(len(seqs)) or real(model, seqs, *a))
    second_in, second = run("b", pool, hashes, pairs[::2])  # other pairs: the pool's states still apply
    assert forwards == [len(pairs[::2])]  # only the validation pairs ran through the model
    assert first_in.fetch.calls and not second_in.fetch.calls
    direct = np.load(first_in.workdir / "repsim" / "train.npy") @ np.load(second_in.workdir / "repsim" / "val.npy").T
    np.testing.assert_allclose(second.scores, subtask_max(direct, [p.subtask for p in pairs[::2]]), atol=1e-6)
    np.testing.assert_array_equal(np.load(second_in.workdir / "repsim" / "train.npy"), states)

    forwards.clear()
    changed = [pool[0][:1] + [{"role": "assistant", "content": "something else"}]] + pool[1:]
    run("b", changed, ["changed"] + hashes[1:], pairs)  # same run dir as the cached one: rewritten
    assert sum(forwards) == len(pairs) + len(pool)  # a miss: the whole pool ran again
    np.testing.assert_array_equal(np.load(cache_files[0]), states)  # the linked cache was not written through


# ---------------------------------------------------------------------------- dsir


def test_dsir_streamed_weights_equal_the_reference_formula(tmp_path):
    pool, pairs = demo_examples(300), demo_pairs()
    inputs = inputs_for(pool, pairs, tmp_path, options={"resample": False, "chunk": 64, "buckets": 4096})
    out = get_method("dsir").score(inputs)
    assert max(inputs.fetch.calls) == 64
    X = vectorizer(4096).transform([example_text(m) for m in pool]).toarray()  # all at once
    labels = [p.subtask for p in pairs]
    Q = vectorizer(4096).transform([pair_query(p) for p in pairs]).toarray()
    log_raw = np.log(X.sum(0) / X.sum() + 1e-8)
    W = np.stack([np.log(Q[[x == t for x in labels]].sum(0) / Q[[x == t for x in labels]].sum() + 1e-8) - log_raw
                  for t in dict.fromkeys(labels)])
    np.testing.assert_allclose(out.scores, (X @ W.T).max(1), rtol=1e-5)
    assert pool[int(np.argmax(out.scores))][-1]["content"].count(" = ") == 1  # an arithmetic answer
    row = int(np.argmax(out.scores))
    explained = get_method("dsir").explain(inputs.workdir, 100 + row, pool[row], pairs)
    assert f"{out.scores[row]:.3f}" in explained["target subtask"]


def test_dsir_resampling_is_seeded_gumbel_top_k(tmp_path):
    pool, pairs = demo_examples(200), demo_pairs()
    run = lambda **kw: get_method("dsir").score(inputs_for(pool, pairs, tmp_path, options=kw))  # noqa: E731
    plain, a, b = run(resample=False), run(seed=3), run(seed=4)
    np.testing.assert_allclose(a.scores - plain.scores, np.random.default_rng(3).gumbel(size=200), atol=1e-4)
    np.testing.assert_array_equal(a.scores, run(seed=3).scores)
    assert not np.array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.subtask_means, plain.subtask_means)


@pytest.mark.parametrize("method", ["random", "bm25", "repsim", "dsir"])
def test_sharded_passes_leave_the_work_to_the_unsharded_one(ws, method):
    """Nothing to split: a `--shard` rank neither reads the pool nor writes run files."""
    store = Store.open(ws)
    ensure_demo(store)
    run_id = create_run(store, "demo", None if method == "random" else "demo", ScoreConfig(method=method))
    execute_shard(store, run_id, (1, 2))
    assert not get_method(method).shards_features
    with store.session() as s:
        assert s.scalar(select(func.count()).where(Score.run_id == run_id)) == 0
        assert not Path(s.get(Run, run_id).workdir).exists()


# ---------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("method", ["random", "bm25", "repsim", "dsir"])
def test_method_runs_end_to_end_on_the_demo(ws, nano_model, method):
    store = Store.open(ws)
    ensure_demo(store)
    cfg = ScoreConfig(method=method, model=ModelConfig(name_or_path=str(nano_model), max_length=128),
                      select=SelectConfig(percent=5))
    run_id = create_run(store, "demo", None if method == "random" else "demo", cfg)
    execute_run(store, run_id)
    info = show_run(store, run_id, top=1)
    assert info["status"] == "done" and info["selected"] == 150
    with store.session() as s:
        assert s.scalar(select(func.count()).where(Score.run_id == run_id)) == 3000
        top = s.scalar(select(Score).where(Score.run_id == run_id, Score.rank == 1))
        messages = s.get(Example, top.example_id).messages
        workdir = Path(s.get(Run, run_id).workdir)
    if method == "random":
        return
    if method != "dsir":  # dsir adds its Gumbel draw to the best subtask's log weight
        assert top.score == pytest.approx(max(top.components["subtasks"].values()), abs=1e-5)
    assert info["meta"]["subtasks"] == ["addition_subtraction", "multiplication_division"]
    assert get_method(method).explain(workdir, top.example_id, messages, demo_pairs())
