"""Fusion of finished runs (weighted reciprocal-rank fusion, k = 60) and `show`'s length_spearman."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.cli import main
from curation.config import ScoreConfig, SelectConfig
from curation.data.demo import ensure_demo
from curation.data.imports import import_pool
from curation.data.store import Store
from curation.errors import CurationError
from curation.methods import ScoreOutput
from curation.methods.fusion import ranks_of, rrf
from curation.engine.select import response_length
from curation.review.compare import compare_runs
from curation.review.explore import explain
from curation.review.export import export_selection
from curation.runs.execute import create_run, execute_run, load_scores, show_run, store_scores
from curation.runs.fuse import fuse


def test_rrf_matches_a_hand_worked_example():
    ids = np.array([1, 2, 3])
    a = ranks_of(np.array([0.9, 0.5, 0.1]), ids)  # 1, 2, 3
    b = ranks_of(np.array([0.1, 0.5, 0.9]), ids)  # 3, 2, 1
    tie = ranks_of(np.array([0.5, 0.5, 0.1]), ids)  # a tie goes to the smaller id: 1, 2, 3
    assert a.tolist() == [1, 2, 3] and b.tolist() == [3, 2, 1] and tie.tolist() == [1, 2, 3]
    fused = rrf(np.stack([a, b], axis=1), [1.0, 2.0])
    assert fused.tolist() == pytest.approx([1 / 61 + 2 / 63, 1 / 62 + 2 / 62, 1 / 63 + 2 / 61])
    assert np.argsort(-fused).tolist() == [2, 1, 0]  # the heavier run's order wins


def _run(store: Store, method: str, pool: str = "demo", **options) -> int:
    cfg = ScoreConfig(method=method, select=SelectConfig(percent=5), options=options)
    run_id = create_run(store, pool, "demo", cfg)
    execute_run(store, run_id)
    return run_id


def test_fused_run_is_stored_explained_compared_and_exported(ws, capsys):
    store = Store.open(ws)
    ensure_demo(store)
    bm25, rnd = _run(store, "bm25"), _run(store, "random")
    capsys.readouterr()
    assert main(["fuse", str(bm25), str(rnd), "--weights", "2,1"]) == 0
    fused = show_run(store, int(capsys.readouterr().out.split()[-1]), top=0)  # the new run id, last
    assert fused["method"] == "fusion" and fused["status"] == "done"
    assert fused["meta"]["fused_from"] == [bm25, rnd] and fused["meta"]["fusion_weights"] == [2.0, 1.0]

    ids, s_bm25 = load_scores(store, bm25)
    _, s_rnd = load_scores(store, rnd)
    _, s_fused = load_scores(store, fused["id"])
    want = 2 / (60 + ranks_of(s_bm25, ids)) + 1 / (60 + ranks_of(s_rnd, ids))
    np.testing.assert_allclose(s_fused, want, rtol=1e-6)

    top = int(ids[np.argmax(s_fused)])
    why = " ".join(explain(store, fused["id"], top).reasons)
    assert f"run #{bm25} ranked it {ranks_of(s_bm25, ids)[ids == top][0]:,}" in why and f"run #{rnd}" in why
    assert compare_runs(store, [bm25, fused["id"]]).pair(bm25, fused["id"]).spearman > 0.5
    out = export_selection(store, fused["id"], "original", ws)
    assert out.n == fused["selected"] and out.path.is_file()


def test_runs_of_different_pools_are_refused(ws, tmp_path):
    store = Store.open(ws)
    ensure_demo(store)
    path = tmp_path / "other.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"say {i}", "output": "x" * i}) + "\n" for i in range(1, 6)))
    import_pool(store, path, name="other")
    a, b = _run(store, "random"), _run(store, "random", pool="other")
    with pytest.raises(CurationError, match=rf"one pool.*run {a} on pool 'demo', run {b} on pool 'other'"):
        fuse(store, [a, b])
    with pytest.raises(CurationError, match="at least two"):
        fuse(store, [a, a])


def test_show_reports_length_spearman_of_a_planted_run(ws, capsys):
    store = Store.open(ws)
    ensure_demo(store)
    run_id = _run(store, "random")
    ids, _ = load_scores(store, run_id)
    with store.session() as s:
        from curation.data.store import Example
        lengths = [response_length(s.get(Example, int(i)).messages) for i in ids]
    store_scores(store, run_id, ids.tolist(), ScoreOutput(scores=np.asarray(lengths, np.float32)),
                 ScoreConfig(select=SelectConfig(percent=5)))
    capsys.readouterr()
    assert main(["show", str(run_id), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["length_spearman"] == pytest.approx(1.0)
    other = _run(store, "random", seed=3)  # random scores: no relation to length
    main(["show", str(other), "--json"])
    assert abs(json.loads(capsys.readouterr().out)["length_spearman"]) < 0.1
