"""The right model for the pool (issue 20, item 1): the tiny model's BPE was learned from the
demo pool only, so on another pool the curator is told why (how badly it fragments the
pool's words against the demo's), `score` defaults to smollm2 when it is fetched, and a tiny
run on a foreign pool carries the warning into its meta, check and dataset card."""

from __future__ import annotations

import argparse
import json

from curation import cli
from curation.config import ScoreConfig
from curation.data.demo import ensure_demo
from curation.data.imports import import_pool
from curation.data.store import Run, Store
from curation.engine import models, poolfit
from curation.review.export import dataset_card
from curation.runs.execute import create_run

FOREIGN = [("Rewrite this sentence formally: gonna grab some grub, wanna come?",
            "I intend to obtain a meal; would you care to accompany me?"),
           ("Summarise the plaintiff's testimony regarding the indemnification clause.",
            "The plaintiff asserted that the indemnification obligations were unenforceable.")]


def foreign_pool(store: Store, ws, name: str = "legal") -> str:
    f = ws.home / "data" / f"{name}.jsonl"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in FOREIGN))
    import_pool(store, f, name=name)
    return name


def test_the_tiny_tokenizer_fragments_a_foreign_pool_and_not_the_demo(ws):
    store = Store.open(ws)
    ensure_demo(store)
    pool = foreign_pool(store, ws)
    demo, legal = poolfit.tiny_pool_fit(store, "demo", ws.home), poolfit.tiny_pool_fit(store, pool, ws.home)
    assert not demo.foreign and demo.ratio < 1.1
    assert legal.foreign and legal.tokens_per_word > 1.3 * legal.demo_tokens_per_word
    assert legal.split3_share > demo.split3_share
    text = legal.warning()
    assert f"{legal.tokens_per_word:.1f} tokens" in text and "model fetch smollm2" in text


def test_score_defaults_to_smollm2_on_a_foreign_pool_when_it_is_fetched(ws, monkeypatch):
    store = Store.open(ws)
    ensure_demo(store)
    pool = foreign_pool(store, ws)
    args = lambda p, m=None: argparse.Namespace(pool=p, method=m, model=None, config=None, percent=None, n=None,
                                                option=None, preset=None)
    assert cli._score_config(args(pool), store).model.name_or_path == "tiny"  # smollm2 not fetched: tiny, warned
    real = models.is_installed
    monkeypatch.setattr(models, "is_installed", lambda home, name: name == "smollm2" or real(home, name))
    cfg = cli._score_config(args(pool), store)
    assert cfg.model.name_or_path == "smollm2"
    assert cfg.model.max_length == models.defaults_for("smollm2", ws.home).max_length  # its size-based defaults
    assert cli._score_config(args("demo"), store).model.name_or_path == "tiny"  # the demo keeps tiny
    assert cli._score_config(args(pool, "bm25"), store).model.name_or_path == "tiny"  # no model: nothing chosen


def test_a_tiny_run_on_a_foreign_pool_carries_the_warning_to_meta_and_card(ws):
    store = Store.open(ws)
    ensure_demo(store)
    pool = foreign_pool(store, ws)
    on_demo = create_run(store, "demo", "demo", ScoreConfig(method="rose"), ws)
    foreign = create_run(store, pool, "demo", ScoreConfig(method="rose"), ws)
    bm25 = create_run(store, pool, "demo", ScoreConfig(method="bm25"), ws)
    with store.session() as s:
        metas = {i: s.get(Run, i).meta for i in (on_demo, foreign, bm25)}
    assert "model_warning" not in metas[on_demo] and "model_warning" not in metas[bm25]
    warning = metas[foreign]["model_warning"]
    assert "does not know this pool" in warning
    manifest = {"run": {"id": foreign, "method": "rose", "model": {"name_or_path": "tiny"}, "meta": metas[foreign]},
                "counts": {"pool": 2, "budget": 1, "pinned": 0, "excluded": 0, "added": 0, "removed": 0,
                           "exported": 1, "auto": 1},
                "pool": pool, "preference_set": "demo", "budget": {"percent": 50}, "format": "messages",
                "file_sha256": "0" * 64, "tool_version": "t", "created": "2026-01-01T00:00:00"}
    assert "| Model warning | The tiny model does not know this pool" in dataset_card(manifest)
