"""Feature store: manifest fingerprints, atomic resumable shards, rank sharding and merge."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.engine.features import (
    FeatureManifest,
    FeatureStore,
    StaleFeaturesError,
    parse_shard_spec,
    save_npy_atomic,
    shard_file,
    shard_range,
)
from curation.errors import CurationError


def manifest(n: int = 10, k: int = 8, shard_size: int = 3, **over) -> FeatureManifest:
    fields = dict(model="tiny", tokenizer_hash="abc", checkpoint="epoch_1",
                  projector={"type": "sjlt", "seed": 0, "k": k}, k=k, dtype="float16",
                  example_ids=list(range(100, 100 + n)), shard_size=shard_size)
    return FeatureManifest(**{**fields, **over})


def features(n: int = 10, k: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, k))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_all(writer, data: np.ndarray) -> None:
    for index, start, end in writer.pending_shards():
        writer.write_shard(index, data[start:end])


def test_manifest_round_trip_and_fingerprint():
    m = manifest()
    assert FeatureManifest.from_dict(m.to_dict()) == m
    assert m.n_shards == 4 and m.shard_rows(3) == (9, 10)
    entry = {"index": 0, "rows": [0, 3], "file": "shard_00000.npy", "sha256": "x"}
    written = m.with_shards([entry])
    assert written.fingerprint() == m.fingerprint()  # shards are progress, not identity
    assert FeatureManifest.from_dict(written.to_dict()) == written
    for change in [dict(model="other"), dict(projector={"type": "sjlt", "seed": 1, "k": 8}),
                   dict(example_ids=list(range(1, 11))), dict(dtype="float32"),
                   dict(checkpoint="epoch_2"), dict(shard_size=4)]:
        assert manifest(**change).fingerprint() != m.fingerprint(), change


@pytest.mark.parametrize("bad", [dict(dtype="int8"), dict(k=0), dict(example_ids=[1, 1, 2]),
                                 dict(projector={"type": "sjlt", "seed": 0, "k": 4})])
def test_manifest_rejects_bad_fields(bad):
    with pytest.raises(ValueError):
        manifest(**bad)


def test_refuses_directory_of_other_features(tmp_path):
    store = FeatureStore(tmp_path)
    write_all(store.writer("train", 0, manifest()), features())
    store.writer("train", 0, manifest())  # same fingerprint: reusable
    with pytest.raises(StaleFeaturesError):
        store.writer("train", 0, manifest(projector={"type": "sjlt", "seed": 1, "k": 8}))
    with pytest.raises(StaleFeaturesError):
        store.writer("train", 0, manifest(example_ids=list(range(10))))
    orphan_dir = store.path("val", 0)
    orphan_dir.mkdir(parents=True)
    np.save(orphan_dir / shard_file(0), np.zeros((3, 8), np.float16))
    with pytest.raises(StaleFeaturesError):  # shards without a manifest: origin unknown
        store.writer("val", 0, manifest())


def test_write_then_read(tmp_path):
    store, data = FeatureStore(tmp_path), features()
    write_all(store.writer("train", 1, manifest()), data)
    r = store.reader("train", 1)
    assert (r.n, r.k) == (10, 8) and store.exists("train", 1)
    assert [(s, e) for s, e, _ in r.iter_shards()] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    stored = data.astype(np.float16)
    np.testing.assert_array_equal(r.load_all(), stored.astype(np.float32))
    np.testing.assert_array_equal(r.rows(2, 8), stored[2:8])  # spans three shards
    np.testing.assert_array_equal(r.rows(3, 6), stored[3:6])
    assert r.verify() == [] and r.row_of(104) == 4


def test_writer_validates_shards(tmp_path):
    w = FeatureStore(tmp_path).writer("train", 0, manifest(), rank=(1, 2))
    with pytest.raises(ValueError, match="another rank"):
        w.write_shard(0, features(3))
    with pytest.raises(ValueError, match="shape"):
        w.write_shard(1, features(2))
    with pytest.raises(ValueError, match="non-finite"):
        w.write_shard(1, np.full((3, 8), np.nan))


def test_resume_after_kill_keeps_complete_shards(tmp_path):
    store, data = FeatureStore(tmp_path), features()
    w = store.writer("train", 0, manifest())
    w.write_shard(0, data[0:3])
    w.write_shard(2, data[6:9])
    del w  # the job dies here
    directory = store.path("train", 0)
    (directory / f".{shard_file(1)}.tmp-999").write_bytes(b"half a shard")  # killed mid-write
    with pytest.raises(CurationError, match="2 of 4 shards"):
        store.reader("train", 0)
    w = store.writer("train", 0, manifest())
    assert w.pending_shards() == [(1, 3, 6), (3, 9, 10)]
    write_all(w, data)
    assert store.reader("train", 0).verify() == []


def test_shard_renamed_but_not_listed_is_checked_then_adopted(tmp_path):
    store, data = FeatureStore(tmp_path), features()
    w = store.writer("train", 0, manifest())
    directory = store.path("train", 0)
    # killed after the rename, before the manifest update:
    save_npy_atomic(directory / shard_file(1), data[3:6].astype(np.float16))
    save_npy_atomic(directory / shard_file(2), np.zeros((2, 8), np.float16))  # wrong shape
    w = store.writer("train", 0, manifest())
    assert [p[0] for p in w.pending_shards()] == [0, 2, 3]
    assert [s.index for s in w.manifest.shards] == [1]
    write_all(w, data)
    np.testing.assert_array_equal(store.reader("train", 0).rows(0, 10), data.astype(np.float16))


def test_checksum_mismatch_is_rewritten(tmp_path):
    store, data = FeatureStore(tmp_path), features()
    write_all(store.writer("train", 0, manifest()), data)
    path = store.path("train", 0) / shard_file(1)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # bit rot in the data, header intact
    path.write_bytes(bytes(raw))
    assert store.reader("train", 0).verify() == [1]
    w = store.writer("train", 0, manifest())
    assert w.pending_shards() == [(1, 3, 6)]
    assert w.pending_shards() == [(1, 3, 6)]  # not re-adopted as an orphan
    write_all(w, data)
    assert store.reader("train", 0).verify() == []


def test_rank_sharded_then_merged_equals_single_writer(tmp_path):
    data = features(n=11)
    single, ranked = FeatureStore(tmp_path / "a"), FeatureStore(tmp_path / "b")
    write_all(single.writer("train", 0, manifest(n=11)), data)
    for rank in [(1, 2), (0, 2)]:
        write_all(ranked.writer("train", 0, manifest(n=11), rank=rank), data)
    with pytest.raises(CurationError, match="merge"):
        ranked.reader("train", 0)
    ranked.merge("train", 0)
    a, b = single.path("train", 0), ranked.path("train", 0)
    for name in ["manifest.json"] + [shard_file(i) for i in range(4)]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_merge_refuses_missing_or_corrupt_shards(tmp_path):
    store, data = FeatureStore(tmp_path), features()
    write_all(store.writer("train", 0, manifest(), rank=(0, 2)), data)
    with pytest.raises(CurationError, match="not written"):
        store.merge("train", 0)
    write_all(store.writer("train", 0, manifest(), rank=(1, 2)), data)
    (store.path("train", 0) / shard_file(3)).write_bytes(b"garbage")
    with pytest.raises(CurationError, match="checksum"):
        store.merge("train", 0)


def test_shard_range_and_spec():
    assert shard_range(5, 0, 2) == [0, 2, 4] and shard_range(5, 1, 2) == [1, 3]
    assert sorted(sum((shard_range(7, r, 3) for r in range(3)), [])) == list(range(7))
    assert parse_shard_spec("1/4") == (1, 4)
    for bad in ["4/4", "x", "1/2/3", "-1/2"]:
        with pytest.raises(CurationError):
            parse_shard_spec(bad)


def test_manifest_file_names_the_ids_by_hash_and_refuses_a_changed_ids_file(tmp_path):
    """The per-shard manifest rewrite stays small: ids live once in example_ids.npy."""
    from curation.engine.features import IDS_FILE
    m = manifest()
    m.save(tmp_path / "manifest.json")
    head = json.loads((tmp_path / "manifest.json").read_text())
    assert "example_ids" not in head and head["n"] == m.n
    assert FeatureManifest.load(tmp_path / "manifest.json") == m
    np.save(tmp_path / IDS_FILE, np.arange(m.n, dtype=np.int64))  # other ids, same count
    with pytest.raises(StaleFeaturesError):
        FeatureManifest.load(tmp_path / "manifest.json")
