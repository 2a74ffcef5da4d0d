"""Re-scoring that does not redo work (issue 20, item 6): validation features are cached per
(feature set, checkpoint, objective, pair content), so a re-score after adding one pair computes
that pair's gradients only, and a re-score with nothing new loads no model."""

from __future__ import annotations

import numpy as np
from test_featuresets import cfg_for, run

import curation.methods.gradient as gradient
from curation.data import catalog
from curation.data.demo import ensure_demo
from curation.data.pairs import PairDraft
from curation.data.store import Store
from curation.engine.features import FeatureStore
from curation.engine.objectives import LogProbObjective
from curation.engine.valcache import VALCACHE_SUBDIR
from curation.runs.execute import show_run
from curation.runs.rescore import rescore


def counting(monkeypatch) -> dict:
    """Counts validation items whose gradients are computed, and model loads."""
    seen = {"val_items": 0, "loads": 0}
    extract, load = gradient.ordered_features, gradient.load_model

    def features(model, items, objective, *args, **kw):
        if isinstance(objective, LogProbObjective):
            seen["val_items"] += len(items)
        return extract(model, items, objective, *args, **kw)

    def loading(*args, **kw):
        seen["loads"] += 1
        return load(*args, **kw)

    monkeypatch.setattr(gradient, "ordered_features", features)
    monkeypatch.setattr(gradient, "load_model", loading)
    return seen


def test_rescore_after_adding_one_pair_computes_that_pair_only(ws, micro_model, monkeypatch):
    store = Store.open(ws)
    ensure_demo(store)
    cfg = cfg_for(micro_model)  # 2 checkpoints
    first = run(store, ws, cfg)
    n_pairs = len(first["meta"]["pairs"])
    assert (ws.home / VALCACHE_SUBDIR).stat().st_mode & 0o077 == 0  # as private as the pairs' text
    seen = counting(monkeypatch)
    catalog.add_pair(store, "demo", PairDraft("formal", "Rewrite formally: gonna be late",
                                              "I will arrive later than planned.", "gonna be late lol"),
                     accept_warnings=True)
    res = rescore(store, first["id"], ws=ws)
    assert seen == {"val_items": 2 * 2, "loads": 1}  # chosen + rejected of 1 pair, at each of 2 checkpoints
    new = show_run(store, res.run_id)
    assert len(new["meta"]["pairs"]) == n_pairs + 1 and new["features"]["reused"] is True

    # the cached rows are the rows a fresh computation gives: a new run's sides equal the first run's
    for ckpt in range(2):
        for side in gradient.SIDES:
            old = FeatureStore(ws.run_dir(first["id"]) / "features").reader(side, ckpt).load_all()
            now = FeatureStore(ws.run_dir(res.run_id) / "features").reader(side, ckpt).load_all()
            np.testing.assert_array_equal(now[:n_pairs], old)

    seen.update(val_items=0, loads=0)
    again = rescore(store, res.run_id, method="less", ws=ws)  # nothing new: no gradient, no model
    assert seen == {"val_items": 0, "loads": 0}
    assert show_run(store, again.run_id)["meta"]["model_loaded"] is False


def test_a_checks_scoring_sub_run_uses_the_runs_stored_features_without_the_model(ws, micro_model, monkeypatch):
    from curation.review.check import _base_run, _sub_run

    store = Store.open(ws)
    ensure_demo(store)
    first = run(store, ws, cfg_for(micro_model))
    seen = counting(monkeypatch)
    base, pool, prefs = _base_run(store, first["id"])
    ids, scores = _sub_run(store, ws, base, pool, prefs, "less", base.meta["pairs"][:6], first["id"])
    assert seen == {"val_items": 0, "loads": 0} and len(ids) == len(scores) == 3000
