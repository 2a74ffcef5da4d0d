"""The workspace feature store: reuse across methods and preference sets, no reuse when any key
part differs, incremental extraction equal to a full one byte for byte, concurrent runs
computing shared features once, and re-scoring without a job."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curation.config import FeatureConfig, ScoreConfig, SelectConfig
from curation.data.demo import DEMO_POOL, DEMO_PREFS, ensure_demo
from curation.data.imports import import_pool, import_prefs
from curation.data.store import Store
from curation.engine.features import FeatureStore, FeatureView
from curation.engine.featuresets import (
    FeatureSet,
    FeatureSetKey,
    content_key,
    content_keys,
    describe_sets,
    list_sets,
    write_view,
)
from curation.engine.model import ModelConfig, fixed_length_buckets, padded_length
from curation.engine.warmup import WarmupConfig
from curation.errors import CurationError
from curation.runs.execute import create_run, execute_run, show_run
from curation.runs.rescore import rescore, stored_features
from curation.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def cfg_for(model: Path, method: str = "rose", k: int = 256, max_length: int = 128, epochs: int = 2,
            projector: str = "sparse_jl") -> ScoreConfig:
    return ScoreConfig(method=method, model=ModelConfig(name_or_path=str(model), max_length=max_length),
                       warmup=WarmupConfig(percent=5, epochs=epochs, batch_size=16, max_length=max_length),
                       features=FeatureConfig(k=k, projector=projector, shard_size=512), select=SelectConfig(percent=5))


def run(store: Store, ws: Workspace, cfg: ScoreConfig, pool: str = "demo", prefs: str = "demo") -> dict:
    run_id = create_run(store, pool, prefs, cfg, ws=ws)
    execute_run(store, run_id, ws=ws)
    return show_run(store, run_id)


def by_content(store: Store, ws: Workspace, run_id: int, ckpt: int) -> dict[str, bytes]:
    """content hash -> the stored feature row's bytes, for one run's pool."""
    from sqlalchemy import select

    from curation.data.store import Example
    reader = FeatureStore(ws.run_dir(run_id) / "features").reader("train", ckpt)
    rows = reader.rows(0, reader.n)
    with store.session() as s:
        hashes = dict(s.execute(select(Example.id, Example.content_hash)
                                .where(Example.id.in_(reader.example_ids))).all())
    return {hashes[e]: rows[r].tobytes() for r, e in enumerate(reader.example_ids)}


# ---------------------------------------------------------------------------- unit level


def test_padded_length_depends_on_the_item_only():
    for n in range(1, 2000):
        t = padded_length(n, 4096)
        assert n <= t <= max(n + 15, int(n * 1.125) + 1)  # at most 12.5% (or 15 tokens) of padding
    assert padded_length(500, 512) == 512 and padded_length(600, 512) == 600  # capped, never truncating
    batches = fixed_length_buckets([5, 40, 17, 33, 16], batch_size=2, max_length=512)
    assert all(len({padded_length(n, 512) for n in [[5, 40, 17, 33, 16][i] for i in idx]}) == 1
               for _, idx in batches)


def test_item_features_do_not_depend_on_batch_companions(tiny_model, items):
    """Why incremental extraction can equal a full one byte for byte (CPU)."""
    from curation.engine.objectives import SFTObjective
    from curation.engine.projection import SparseJLProjector
    from curation.methods.gradient import ordered_features

    xs, proj = items.sft(40), SparseJLProjector(256, 0)
    full = ordered_features(tiny_model, xs, SFTObjective(), proj, None, 8, 0)
    parts = np.concatenate([ordered_features(tiny_model, xs[:13], SFTObjective(), proj, None, 8, 0),
                            ordered_features(tiny_model, xs[13:], SFTObjective(), proj, None, 3, 0)])
    assert full.tobytes() == parts.tobytes()


def test_extraction_reports_progress_within_a_shard(tiny_model, items):
    """A shard of a real model takes minutes on CPU: progress (and so the heartbeat) moves per
    batch, not per shard."""
    from curation.engine.objectives import SFTObjective
    from curation.engine.projection import SparseJLProjector
    from curation.methods.gradient import ordered_features

    seen: list[int] = []
    ordered_features(tiny_model, items.sft(20), SFTObjective(), SparseJLProjector(64, 0), None, 4, 0,
                     on_batch=seen.append)
    assert len(seen) >= 5 and seen == sorted(seen) and seen[-1] == 20


def test_content_keys_refuse_collisions():
    h = "ab" * 32
    assert content_key(h) == int(h[:15], 16) < 2 ** 63
    with pytest.raises(CurationError, match="content-key"):
        content_keys([h, h])


def _key(**kw) -> FeatureSetKey:
    base = dict(model="m", model_fingerprint="f", tokenizer_hash="t", warmup="w", checkpoints=("epoch_1",),
                max_length=128, projector={"type": "sparse_jl", "k": 8, "seed": 0}, k=8, dtype="float16")
    return FeatureSetKey(**{**base, **kw})


@pytest.mark.parametrize("change", [dict(model="other"), dict(model_fingerprint="g"), dict(tokenizer_hash="u"),
                                    dict(warmup="v"), dict(checkpoints=("epoch_2",)), dict(max_length=64),
                                    dict(k=16, projector={"type": "sparse_jl", "k": 16, "seed": 0}),
                                    dict(projector={"type": "sparse_jl", "k": 8, "seed": 1}), dict(dtype="float32")])
def test_every_key_part_changes_the_feature_set(change):
    assert _key(**change).id != _key().id
    assert FeatureSetKey.from_dict(_key(**change).to_dict()) == _key(**change)


def _fill(fset: FeatureSet, plan, rng) -> dict[int, np.ndarray]:
    """Write random features into a plan's pending segments; returns key -> row."""
    from curation.engine.features import FeatureManifest, FeatureWriter
    rows = {}
    for seg in plan.pending(0):
        m = FeatureManifest(model="m", tokenizer_hash="t", checkpoint="epoch_1", projector={"type": "sparse_jl", "k": 8},
                            k=8, dtype="float16", example_ids=seg.keys.tolist(), shard_size=3)
        w = FeatureWriter(seg.ckpt_dir(0), m)
        for index, start, end in w.pending_shards():
            x = rng.standard_normal((end - start, 8)).astype(np.float16)
            w.write_shard(index, x)
            rows.update({int(k): x[i] for i, k in enumerate(seg.keys[start:end])})
    return rows


def test_a_grown_pool_adds_one_segment_and_its_view_reads_every_row(tmp_path):
    rng = np.random.default_rng(0)
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(10)]
    fset = FeatureSet.open(tmp_path, _key(), pool="p")
    first = fset.plan(content_keys(hashes[:6]), hashes[:6])
    assert first.new_rows == 6 and len(first.segments) == 1
    rows = _fill(fset, first, rng)
    grown = [hashes[9], *hashes[:6], hashes[7]]  # new rows around old ones, another order
    plan = fset.plan(content_keys(grown), grown)
    assert plan.new_rows == 2 and len(plan.segments) == 2 and len(plan.pending(0)) == 1
    rows.update(_fill(fset, plan, rng))
    assert fset.plan(content_keys(grown), grown).new_rows == 0  # nothing new the second time
    write_view(tmp_path / "view", fset, plan, 0, example_ids=[100 + i for i in range(len(grown))])
    view = FeatureView(tmp_path / "view")
    expect = np.stack([rows[content_key(h)] for h in grown])
    np.testing.assert_array_equal(view.rows(0, view.n), expect)
    np.testing.assert_array_equal(view.rows(2, 7), expect[2:7])
    assert view.row_of(103) == 3 and view.manifest.example_ids == [100 + i for i in range(8)]
    assert fset.coverage(content_keys(grown)) == 8 and fset.n_rows() == 8


# ---------------------------------------------------------------------------- whole runs


def test_runs_reuse_features_across_methods_and_preference_sets(ws, micro_model, tmp_path):
    store = Store.open(ws)
    ensure_demo(store)
    plus = tmp_path / "plus.jsonl"
    plus.write_text(DEMO_PREFS.read_text() + json.dumps(
        {"prompt": "Ana had 45 marbles and gave away 18. How many are left?", "chosen": "45 - 18 = 27.",
         "rejected": "45 - 18 = 37.", "subtask": "addition_subtraction"}) + "\n")
    import_prefs(store, plus, name="plus")
    first = run(store, ws, cfg_for(micro_model, "rose"))
    less = run(store, ws, cfg_for(micro_model, "less"))
    more = run(store, ws, cfg_for(micro_model, "rose"), prefs="plus")
    assert first["features"]["reused"] is False and first["features"]["extracted"] == 2 * 3000
    for later in (less, more):
        assert later["features"] == {**first["features"], "reused": True, "extracted": 0, "new_rows": 0}
    assert len(list_sets(ws.home)) == 1
    [listed] = describe_sets(store, ws.home)
    assert listed["runs"] == [first["id"], less["id"], more["id"]] and listed["n_examples"] == 3000
    assert listed["bytes"] >= 3000 * 256 * 2 * 2  # N x k x 2 bytes x checkpoints
    for i in range(2):
        a, b = (FeatureStore(ws.run_dir(r["id"]) / "features").reader("train", i) for r in (first, more))
        assert a.rows(0, 3000).tobytes() == b.rows(0, 3000).tobytes()
    assert more["top"] != first["top"] or more["meta"]["pairs_sha256"] != first["meta"]["pairs_sha256"]
    check_features_rm(store, ws, first["id"], listed["id"])


def check_features_rm(store: Store, ws: Workspace, run_id: int, set_id: str) -> None:
    """`features rm` refuses while a live run uses the set; afterwards the runs say so."""
    from curation.cli import main
    from curation.data.store import Run
    from curation.data.store.models import utcnow
    with store.session() as s:
        s.get(Run, run_id).status, s.get(Run, run_id).heartbeat = "running", utcnow()
    assert main(["features", "rm", set_id[:6]]) == 2 and (ws.home / "features" / f"fs_{set_id}").is_dir()
    with store.session() as s:
        s.get(Run, run_id).status = "done"
    assert main(["features", "rm", set_id[:6]]) == 0 and not (ws.home / "features" / f"fs_{set_id}").exists()
    assert not FeatureStore(ws.run_dir(run_id) / "features").exists("train", 0)
    assert stored_features(store, run_id, ws) is None


def test_no_reuse_when_a_key_part_differs(ws, micro_model, tmp_path):
    """k, max length, checkpoint (warmup epochs) and model each get a feature set of their own."""
    from conftest import MICRO_MODEL_CONFIG

    from curation.engine.tiny import TinyConfig, build_tiny_model
    store = Store.open(ws)
    ensure_demo(store)  # the demo preference set; a 400-example slice of its pool is enough here
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(DEMO_POOL.read_text().splitlines()[:400]) + "\n")
    import_pool(store, small, name="small")
    first = run(store, ws, cfg_for(micro_model), pool="small")
    other = tmp_path / "other_model"
    build_tiny_model(DEMO_POOL, other, TinyConfig(**{**MICRO_MODEL_CONFIG, "steps": 10}))
    variants = {"k": cfg_for(micro_model, k=128), "max_length": cfg_for(micro_model, max_length=96),
                "checkpoint": cfg_for(micro_model, epochs=1), "model": cfg_for(other)}
    seen = {first["features"]["id"]}
    for change, cfg in variants.items():
        got = run(store, ws, cfg, pool="small")["features"]
        assert got["id"] not in seen and got["reused"] is False and got["new_rows"] == 400, change
        seen.add(got["id"])
    assert len(list_sets(ws.home)) == 5


def test_changed_pool_content_extracts_only_the_changed_examples(ws, micro_model, tmp_path):
    store = Store.open(ws)
    ensure_demo(store)
    lines = DEMO_POOL.read_text().splitlines()
    rec = json.loads(lines[7])
    for key in ("output", "response", "completion"):
        if key in rec:
            rec[key] = rec[key] + " (checked)"
    if "messages" in rec:
        rec["messages"][-1]["content"] += " (checked)"
    lines[7] = json.dumps(rec)
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join(lines) + "\n")
    import_pool(store, edited, name="edited")
    first = run(store, ws, cfg_for(micro_model))
    second = run(store, ws, cfg_for(micro_model), pool="edited")
    assert second["features"]["id"] == first["features"]["id"]  # same model, warmup, projector
    assert second["features"]["new_rows"] == 1 and second["features"]["extracted"] == 2
    a, b = by_content(store, ws, first["id"], 1), by_content(store, ws, second["id"], 1)
    assert len(set(a) ^ set(b)) == 2 and all(a[h] == b[h] for h in set(a) & set(b))


@pytest.mark.slow
def test_incremental_extraction_equals_a_full_extraction_byte_for_byte(ws, micro_model, tmp_path):
    store = Store.open(ws)
    lines = DEMO_POOL.read_text().splitlines()
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:2000]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[2000:]) + "\n")
    import_pool(store, tmp_path / "a.jsonl", name="grow")
    import_prefs(store, DEMO_PREFS, name="demo")
    cfg = cfg_for(micro_model)
    small = run(store, ws, cfg, pool="grow")
    import_pool(store, tmp_path / "b.jsonl", name="grow", append=True)
    grown = run(store, ws, cfg, pool="grow")
    assert grown["features"]["id"] == small["features"]["id"]
    assert grown["features"]["new_rows"] == 1000 and grown["features"]["extracted"] == 2 * 1000
    assert grown["meta"]["warmup"]["reused_from_earlier_pool"] is True
    # a second workspace extracts all 3000 at once with the same warmup
    full_ws = Workspace.from_env(tmp_path / "full").ensure()
    full_store = Store.open(full_ws)
    import_pool(full_store, DEMO_POOL, name="grow")
    import_prefs(full_store, DEMO_PREFS, name="demo")
    key = small["meta"]["warmup"]["key"]
    shutil.copytree(ws.home / "warmups" / key, full_ws.home / "warmups" / key)
    full = run(full_store, full_ws, cfg, pool="grow")
    assert full["features"]["new_rows"] == 3000 and full["meta"]["warmup"]["key"] == key
    for i in range(2):
        inc, whole = by_content(store, ws, grown["id"], i), by_content(full_store, full_ws, full["id"], i)
        assert inc.keys() == whole.keys() and all(inc[h] == whole[h] for h in inc)


@pytest.mark.slow
def test_concurrent_runs_compute_shared_features_once(ws, micro_model, tmp_path):
    store = Store.open(ws)
    ensure_demo(store)
    ids = [create_run(store, "demo", "demo", cfg_for(micro_model, m), ws=ws) for m in ("rose", "less")]
    env = {**__import__("os").environ, "CURATION_HOME": str(ws.home)}
    env.pop("CURATION_DB_URL", None)
    procs = [subprocess.Popen([sys.executable, "-m", "curation", "worker", str(i)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in ids]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    infos = [show_run(store, i) for i in ids]
    assert all(i["status"] == "done" for i in infos)
    assert infos[0]["features"]["id"] == infos[1]["features"]["id"]
    assert sum(i["features"]["extracted"] for i in infos) == 2 * 3000  # each row once per checkpoint
    assert len(list((ws.home / "warmups").glob("*/warmup.json"))) == 1


def test_rescore_after_an_edit_is_a_new_run_with_a_diff(ws, micro_model):
    from curation.data import catalog
    store = Store.open(ws)
    ensure_demo(store)
    first = run(store, ws, cfg_for(micro_model))
    assert stored_features(store, first["id"], ws) is not None
    from curation.review import maps
    maps.compute_map(ws.run_dir(first["id"]), seed=0)
    pairs = catalog.get_pairs(store, "demo")
    catalog.save_pairs(store, "demo", pairs[:-3])  # remove three pairs
    assert show_run(store, first["id"])["pairs_version"] == "earlier"
    res = rescore(store, first["id"], ws=ws)
    new = show_run(store, res.run_id)
    assert new["features"]["reused"] is True and new["pairs_version"] == "current"
    assert len(new["meta"]["pairs"]) == len(pairs) - 3 and len(first["meta"]["pairs"]) == len(pairs)
    assert new["meta"]["rescored_from"] == first["id"]
    assert len(res.added) == len(res.removed) and "since the last scoring" in res.summary()
    base_map, new_map = maps.load_map(ws.run_dir(first["id"])), maps.load_map(ws.run_dir(res.run_id))
    assert new_map is not None and new_map.meta["reused_from"] == str(ws.run_dir(first["id"]))
    np.testing.assert_array_equal(new_map.xy, base_map.xy)  # same train features: same layout
    assert new_map.val_xy.shape == (len(pairs) - 3, 2)
    assert all(any((p == base_map.xy).all(1)) for p in new_map.val_xy)  # each at a pool example
    with pytest.raises(CurationError, match="gradient method"):
        rescore(store, first["id"], method="bm25", ws=ws)


def test_pages_say_what_is_stored_and_rescore_an_outdated_run(ws, micro_model):
    from streamlit.testing.v1 import AppTest

    from curation.data import catalog
    store = Store.open(ws)
    ensure_demo(store)
    first = run(store, ws, cfg_for(micro_model))
    catalog.save_pairs(store, "demo", catalog.get_pairs(store, "demo")[1:])

    def page(path: str) -> AppTest:
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
        at.run()
        at.switch_page(path)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    pool = page("pages/pool.py")
    assert any("Gradient features stored for" in c.value and "3,000 of 3,000" in c.value for c in pool.caption)
    at = page("pages/explore.py")
    assert any("earlier version" in w.value for w in at.warning)
    next(b for b in at.button if b.label == "Re-score with the current pairs").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("since the last scoring" in s.value for s in at.success)
    newest = max(r["id"] for r in catalog.list_runs(store))
    assert newest != first["id"] and at.selectbox[0].value == newest
    assert show_run(store, newest)["features"]["reused"] is True
    assert not any("earlier version" in w.value for w in at.warning)
