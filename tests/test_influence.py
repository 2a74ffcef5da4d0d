"""Streamed influence scoring against a dense numpy reference (METHODS.md stage 4)."""

from __future__ import annotations

import numpy as np
import pytest

from curation.engine.features import FeatureManifest, FeatureStore
from curation.engine.influence import (
    InfluenceResult,
    ScoringInputs,
    aggregate,
    checkpoint_weights,
    normalise_rows,
    score,
    subtask_index,
    top_val,
)
from curation.errors import CurationError

N, K, LRS = 40, 16, [3e-4, 2e-4, 1e-4]
SUBTASKS = [s for s in ("shp_a", "shp_b", "shp_c") for _ in range(4)]  # 3 subtasks x 4 shots


def unit(rng, n: int) -> np.ndarray:
    x = rng.normal(size=(n, K))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    return [unit(rng, N) for _ in LRS], [unit(rng, len(SUBTASKS)) for _ in LRS]


def build(root, feats, shard_size: int, seed: int = 0, split: str = "train") -> list:
    store = FeatureStore(root)
    readers = []
    for i, x in enumerate(feats):
        m = FeatureManifest(model="tiny", tokenizer_hash="t", checkpoint=f"epoch_{i}",
                            projector={"type": "sjlt", "seed": seed, "k": K}, k=K, dtype="float16",
                            example_ids=list(range(1000, 1000 + len(x))), shard_size=shard_size)
        w = store.writer(split, i, m)
        for j, start, end in w.pending_shards():
            w.write_shard(j, x[start:end])
        readers.append(store.reader(split, i))
    return readers


def dense_reference(train, val, lrs, labels):
    """Direct float64 computation over the stored (fp16-rounded) features."""
    w = np.asarray(lrs) / np.sum(lrs)
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    S_i = [norm(t.astype(np.float16).astype(np.float64)) @ norm(v.astype(np.float64)).T
           for t, v in zip(train, val)]
    names = list(dict.fromkeys(labels))
    cols = [np.array(labels) == s for s in names]
    # [n, ckpt, subtask]
    means_i = np.stack([np.stack([S[:, c].mean(1) for c in cols], 1) for S in S_i], 1)
    means = np.einsum("ncs,c->ns", means_i, w)
    driver = means.argmax(1)
    per_ckpt = w * means_i[np.arange(len(driver)), :, driver]
    return means.max(1), means, per_ckpt, driver, sum(wi * S for wi, S in zip(w, S_i))


def test_score_equals_dense(tmp_path, feats):
    train, val = feats
    res = score(ScoringInputs(build(tmp_path, train, 7), val, LRS, SUBTASKS), chunk_rows=9)
    scores, means, per_ckpt, driver, _ = dense_reference(train, val, LRS, SUBTASKS)
    np.testing.assert_allclose(res.scores, scores, atol=1e-6)
    np.testing.assert_allclose(res.subtask_means, means, atol=1e-6)
    np.testing.assert_allclose(res.per_checkpoint, per_ckpt, atol=1e-6)
    np.testing.assert_allclose(res.per_checkpoint.sum(1), res.scores, atol=1e-6)
    np.testing.assert_array_equal(res.driver, driver)
    assert res.subtasks == ["shp_a", "shp_b", "shp_c"]
    assert res.scores.dtype == np.float32 and res.example_ids.tolist() == list(range(1000, 1040))
    np.testing.assert_allclose(res.weights.sum(), 1.0)


def test_result_independent_of_shard_and_chunk_size(tmp_path, feats):
    train, val = feats
    results = [score(ScoringInputs(build(tmp_path / f"s{s}", train, s), val, LRS, SUBTASKS), c)
               for s, c in [(3, 5), (7, 40), (40, 16), (13, 1000)]]
    for r in results[1:]:
        for name in ("scores", "subtask_means", "per_checkpoint"):
            np.testing.assert_allclose(getattr(r, name), getattr(results[0], name), atol=1e-6)
        np.testing.assert_array_equal(r.driver, results[0].driver)


def test_aggregate_shape_and_order():
    rng = np.random.default_rng(1)
    S = rng.normal(size=(5, 12))
    index, names = subtask_index(SUBTASKS)  # subtask-major: subtasks x shots
    assert names == ["shp_a", "shp_b", "shp_c"] and index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    np.testing.assert_allclose(aggregate(S, index), S.reshape(5, 3, 4).mean(2))
    index, names = subtask_index(["c", "a", "b"] * 4)  # interleaved, first appearance order
    assert names == ["c", "a", "b"]
    np.testing.assert_allclose(aggregate(S, index), S.reshape(5, 4, 3).mean(1))
    with pytest.raises(ValueError, match="no items"):
        aggregate(S, np.zeros(12, int), n_subtasks=2)


def test_weights_and_normalisation():
    np.testing.assert_allclose(checkpoint_weights([2, 1, 1]), [0.5, 0.25, 0.25])
    for bad in ([], [0, 0], [1, -1], [1, np.nan]):
        with pytest.raises(ValueError):
            checkpoint_weights(bad)
    x = normalise_rows(np.array([[3.0, 4.0], [0.0, 0.0]], np.float16))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)  # zero row: no NaN


def test_val_readers_are_checked(tmp_path, feats):
    train, val = feats
    t = build(tmp_path / "t", train, 8)
    v = build(tmp_path / "v", val, 5, split="val")
    res = score(ScoringInputs(t, v, LRS, SUBTASKS))
    stored_val = [x.astype(np.float16) for x in val]
    expected = dense_reference(train, stored_val, LRS, SUBTASKS)[0]
    np.testing.assert_allclose(res.scores, expected, atol=1e-6)
    other = build(tmp_path / "o", val, 5, seed=1, split="val")
    with pytest.raises(CurationError, match="projection"):
        ScoringInputs(t, other, LRS, SUBTASKS)
    with pytest.raises(CurationError, match="checkpoint"):
        ScoringInputs(t, v[::-1], LRS, SUBTASKS)
    with pytest.raises(ValueError, match="val features"):
        ScoringInputs(t, val, LRS, SUBTASKS[:-1])


def test_top_val_matches_dense(tmp_path, feats):
    train, val = feats
    inputs = ScoringInputs(build(tmp_path, train, 7), val, LRS, SUBTASKS)
    S = dense_reference(train, val, LRS, SUBTASKS)[4]
    top = top_val(inputs, row=inputs.train[0].row_of(1017), n=4)
    assert [m.val_row for m in top] == np.argsort(-S[17])[:4].tolist()
    np.testing.assert_allclose([m.cosine for m in top], np.sort(S[17])[::-1][:4], atol=1e-6)
    assert top[0].subtask == SUBTASKS[top[0].val_row] and len(top[0].per_checkpoint) == 3


def test_save_load_round_trip(tmp_path, feats):
    train, val = feats
    res = score(ScoringInputs(build(tmp_path / "f", train, 7), val, LRS, SUBTASKS))
    run = tmp_path / "run"
    with pytest.raises(CurationError, match="no influence"):
        InfluenceResult.load(run)
    res.save(run)
    res.save(run)  # replaces the previous result
    back = InfluenceResult.load(run)
    assert back.subtasks == res.subtasks and back.checkpoints == ["epoch_0", "epoch_1", "epoch_2"]
    for name in ("scores", "subtask_means", "per_checkpoint", "driver", "example_ids", "weights"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert sorted(p.name for p in run.iterdir()) == ["influence"]


def test_stored_norms_and_worker_threads_change_no_bit(tmp_path, feats):
    """Row norms written with each shard save scoring a pass; they are the same bits as
    recomputed ones, and any number of worker threads gives the same result. (Another chunk
    size agrees only to rounding: BLAS may take another kernel for another block shape, as
    OpenBLAS's sgemm does on some CPUs.)"""
    train, val = feats
    readers = build(tmp_path, train, 7)
    assert all((r.dir / "norms_00000.npy").is_file() for r in readers)
    ref = score(ScoringInputs(readers, val, LRS, SUBTASKS), chunk_rows=4, workers=1)
    other_chunks = score(ScoringInputs(readers, val, LRS, SUBTASKS), chunk_rows=9, workers=1)
    np.testing.assert_allclose(other_chunks.scores, ref.scores, rtol=1e-5, atol=1e-6)
    for r in readers:
        for f in r.dir.glob("norms_*.npy"):
            f.unlink()
    fresh = [FeatureStore(tmp_path).reader("train", i) for i in range(len(LRS))]
    got = score(ScoringInputs(fresh, val, LRS, SUBTASKS), chunk_rows=4, workers=3)
    for name in ("scores", "subtask_means", "per_checkpoint", "driver"):
        assert getattr(ref, name).tobytes() == getattr(got, name).tobytes(), name
