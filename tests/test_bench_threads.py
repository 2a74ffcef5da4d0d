"""`bench speed --threads-compare` (issue 20, item 5): the engine's train features at 1 and 2
threads side by side, on a tiny injected model (how it is measured, not the values)."""

from __future__ import annotations

import torch
from conftest import make_tiny_lora_model

from curation.bench.speed import SpeedConfig, threads_compare, threads_summary
from curation.cli import make_parser
from curation.engine.tiny import DEFAULT_CORPUS, TinyConfig, read_conversations, train_tokenizer


def test_threads_compare_times_each_count_and_restores_the_threads():
    tokenizer = train_tokenizer(read_conversations(DEFAULT_CORPUS)[:300], TinyConfig(vocab_size=300))
    model = make_tiny_lora_model(vocab=len(tokenizer))
    cfg = SpeedConfig.quick(k=256, n=8, max_length=64, repeats=2)
    before = torch.get_num_threads()
    r = threads_compare(cfg, (1, 2), model=model, tokenizer=tokenizer)
    assert torch.get_num_threads() == before
    assert set(r["threads"]) == {"1", "2"} and r["threads"]["1"]["speedup"] == 1.0
    for v in r["threads"].values():
        assert len(v["all_seconds"]) == 2 and v["seconds"] == min(v["all_seconds"]) > 0
        assert abs(v["examples_per_s"] - 8 / v["seconds"]) < 1e-9
    assert abs(r["threads"]["2"]["speedup"] - r["threads"]["1"]["seconds"] / r["threads"]["2"]["seconds"]) < 1e-9
    assert "2 thread(s)" in threads_summary(r)
    assert make_parser().parse_args(["bench", "speed", "--threads-compare"]).threads_compare
