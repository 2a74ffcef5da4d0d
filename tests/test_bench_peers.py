"""`bench peers`: the skip without bergson, the summary arithmetic, and (when bergson is
importable, e.g. in a venv with requirements-peers.txt) one quick run on an injected tiny model."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_lora_model

from curation.bench import BENCHES
from curation.bench.peers import PeersConfig, agreement, config_from_args, less_scores, rss_peak, run_peers, summarize
from curation.cli import make_parser

HAS_BERGSON = importlib.util.find_spec("bergson") is not None


def _side(eps: float) -> dict:
    return {"examples_per_s": eps, "seconds": 10 / eps, "peak_rss_mb": 500.0, "rss_growth_mb": 5.0}


def test_without_bergson_the_bench_says_how_to_install_it_and_exits_0(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bergson", None)  # `import bergson` now raises ImportError
    args = make_parser().parse_args(["bench", "peers", "--json", "--quick"])
    assert BENCHES["peers"](args) == 0
    out, err = capsys.readouterr()
    skipped = json.loads(out)["skipped"]
    assert skipped.startswith("bergson is not installed") and "pip install" in skipped and "optional" in skipped
    assert "bergson is not installed" in err
    assert BENCHES["peers"](make_parser().parse_args(["bench", "peers", "--quick"])) == 0
    assert capsys.readouterr().out.startswith("bergson is not installed")


def test_summary_ratio_and_rank_agreement_on_synthetic_scores():
    ours = np.arange(100, dtype=float)
    r = summarize(_side(30.0), _side(12.0), ours, ours * 2 + 1, {"k": 8}, ["n"], 0.01)
    assert r["speed_ratio"] == pytest.approx(2.5)
    assert r["spearman"] == pytest.approx(1.0) and r["top5_overlap"] == 1.0
    assert {"ours", "bergson", "spearman", "speed_ratio", "config", "notes"} <= r.keys()
    flipped = agreement(ours, -ours)
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["top5_overlap"] == 0.0


def test_less_scores_are_cosines_with_the_mean_unit_query():
    train = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    val = np.array([[5.0, 0.0], [0.0, 0.5]])  # unit rows (1,0) and (0,1): query along (1,1)
    np.testing.assert_allclose(less_scores(train, val), [2 ** -0.5, 2 ** -0.5, 1.0])


def test_options_reach_the_config(ws):
    args = make_parser().parse_args(["bench", "peers", "--quick", "--n", "12", "--k", "64", "--pool", "p.jsonl",
                                     "--prefs", "q.jsonl", "--model", "smollm2", "--methods", "per_module"])
    cfg = config_from_args(args)
    assert cfg.projections == ("per_module",)
    assert (cfg.n, cfg.k, cfg.pool, cfg.prefs, cfg.model, cfg.repeats) == (12, 64, "p.jsonl", "q.jsonl", "smollm2", 1)
    default = config_from_args(make_parser().parse_args(["bench", "peers"]))
    assert (default.n, default.k, default.max_length, default.batch_size) == (256, 8192, 512, 32)  # tiny's own


def test_unknown_projection_is_refused():
    from curation.errors import CurationError

    with pytest.raises(CurationError, match="global and/or per_module"):
        PeersConfig(projections=("dense",))


def test_rss_peak_reports_the_high_water_mark_of_the_block():
    with rss_peak() as mem:
        block = np.ones(64 * 2 ** 20 // 8)  # 64 MiB touched
    assert block.sum() > 0 and mem["peak_rss_mb"] >= mem["start_rss_mb"]
    if mem["how"].startswith("VmHWM"):
        assert mem["rss_growth_mb"] > 50


def test_nothing_outside_bench_imports_bergson():
    root = Path(__file__).resolve().parents[1] / "curation"
    hits = [p for p in root.rglob("*.py") if "bench" not in p.relative_to(root).parts
            and re.search(r"^\s*(import|from)\s+bergson\b", p.read_text(encoding="utf-8"), re.M)]
    assert hits == []


@pytest.mark.skipif(not HAS_BERGSON, reason="bergson is not installed (optional: requirements-peers.txt)")
def test_quick_run_against_bergson_ranks_alike():
    from curation.engine.tiny import DEFAULT_CORPUS, TinyConfig, read_conversations, train_tokenizer

    tokenizer = train_tokenizer(read_conversations(DEFAULT_CORPUS)[:300], TinyConfig(vocab_size=300))
    cfg = PeersConfig.quick(n=24, k=2048, max_length=128, batch_size=8)
    r = run_peers(cfg, model=make_tiny_lora_model(vocab=len(tokenizer)), tokenizer=tokenizer)
    assert r["speed_ratio"] == pytest.approx(r["ours"]["examples_per_s"] / r["bergson"]["examples_per_s"])
    for side in ("ours", "bergson"):
        assert r[side]["examples_per_s"] == pytest.approx(24 / r[side]["seconds"]) and r[side]["peak_rss_mb"] > 0
    assert r["spearman"] > 0.9  # two sketches of the same LoRA gradients
    assert r["bergson"]["projection"] == "global" and r["bergson"]["dims"] == 2048
    pm = r["bergson_variants"]["per_module"]  # bergson's default projection: p x p per module
    assert pm["dims"] == r["config"]["modules"] * pm["projection_dim"] ** 2
    assert pm["speed_ratio"] == pytest.approx(r["ours"]["examples_per_s"] / pm["examples_per_s"])
    assert r["config"]["n"] == 24 and r["config"]["k"] == 2048 and r["config"]["query_pairs"] == 10
