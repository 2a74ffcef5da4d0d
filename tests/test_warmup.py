"""LoRA warmup: per-epoch artefacts keyed by name, epoch-mean lr, exact resume, sampling, configs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from test_model import SMALL_TINY, make_conversations, write_corpus

from curation.engine.tiny import build_tiny_model
from curation.engine.warmup import (
    MOMENTS_FILE,
    STATE_FILE,
    Checkpoint,
    WarmupConfig,
    list_checkpoints,
    load_checkpoint,
    run_warmup,
    sample_warmup_ids,
)
from curation.errors import CurationError

CFG = WarmupConfig(epochs=3, lr=5e-3, lora_r=4, lora_alpha=8, lora_dropout=0.1, batch_size=4,
                   grad_accum=2, max_length=48, warmup_ratio=0.2)
EXAMPLES = make_conversations(20)  # 5 micro-batches -> 3 optimizer steps per epoch


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    build_tiny_model(write_corpus(tmp / "pool.jsonl"), tmp / "model", SMALL_TINY)
    return tmp / "model"


@pytest.fixture
def fresh(base_dir):
    """Factory of an untouched (model, tokenizer) pair: each run wraps its model in place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load():
        return AutoModelForCausalLM.from_pretrained(base_dir), AutoTokenizer.from_pretrained(base_dir)
    return load


def adapter(path):
    return load_file(path / "adapter_model.safetensors")


def test_epochs_save_adapter_and_moments_keyed_by_name(fresh, tmp_path):
    model, tok = fresh()
    ckpts = run_warmup(model, tok, EXAMPLES, CFG, tmp_path)
    assert [c.epoch for c in ckpts] == [1, 2, 3] and ckpts == list_checkpoints(tmp_path)
    for ckpt in ckpts:
        assert {"adapter_model.safetensors", "adapter_config.json", MOMENTS_FILE} <= {
            p.name for p in ckpt.path.iterdir()}
        peft_model, moments = load_checkpoint(fresh()[0], ckpt)
        trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        assert set(moments) == set(trainable) and all("lora_" in n for n in trainable)
        state = torch.load(ckpt.path / STATE_FILE, weights_only=True)
        assert state["param_names"] == trainable
        for i, name in enumerate(state["param_names"]):  # the optimizer's own state, by position
            assert torch.equal(moments[name][0], state["optimizer"]["state"][i]["exp_avg"])
            assert torch.equal(moments[name][1], state["optimizer"]["state"][i]["exp_avg_sq"])
        assert load_file(ckpt.path / MOMENTS_FILE).keys() == {
            f"{n}.{k}" for n in trainable for k in ("exp_avg", "exp_avg_sq")}


def test_epoch_mean_lr_follows_linear_schedule(fresh, tmp_path):
    model, tok = fresh()
    ckpts = run_warmup(model, tok, EXAMPLES, CFG, tmp_path)
    per_epoch, total = 3, 9
    warm = math.ceil(total * CFG.warmup_ratio)  # 2
    factor = [(s + 1) / (warm + 1) if s < warm else (total - s) / (total - warm) for s in range(total)]
    for ckpt in ckpts:
        steps = factor[(ckpt.epoch - 1) * per_epoch: ckpt.epoch * per_epoch]
        assert ckpt.lr == pytest.approx(CFG.lr * sum(steps) / per_epoch)
        meta = json.loads((ckpt.path / "checkpoint.json").read_text())
        assert meta["steps"] == ckpt.epoch * per_epoch and math.isfinite(meta["loss"])


class Killed(Exception):
    pass


def test_kill_then_resume_matches_uninterrupted_run(fresh, tmp_path):
    model, tok = fresh()
    straight = run_warmup(model, tok, EXAMPLES, CFG, tmp_path / "a")

    def kill_in_epoch_2(stage, done, total):
        if done == 4:
            raise Killed
    model, tok = fresh()
    with pytest.raises(Killed):
        run_warmup(model, tok, EXAMPLES, CFG, tmp_path / "b", progress=kill_in_epoch_2)
    assert [c.epoch for c in list_checkpoints(tmp_path / "b")] == [1]
    assert not any(n.startswith("lora_") for n, _ in model.named_modules())  # unwrapped on failure
    model, tok = fresh()
    resumed = run_warmup(model, tok, EXAMPLES, CFG, tmp_path / "b")
    for a, b in zip(straight, resumed):
        wa, wb = adapter(a.path), adapter(b.path)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        ma, mb = load_file(a.path / MOMENTS_FILE), load_file(b.path / MOMENTS_FILE)
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
        assert a.lr == b.lr


def test_rerun_skips_finished_epochs_and_leaves_base_untouched(fresh, tmp_path):
    model, tok = fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = run_warmup(model, tok, EXAMPLES, CFG, tmp_path)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    calls = []
    again = run_warmup(model, tok, EXAMPLES, CFG, tmp_path, progress=lambda *a: calls.append(a))
    assert again == first and calls == [("warmup", 9, 9)]


def test_other_settings_refuse_the_same_directory(fresh, tmp_path):
    model, tok = fresh()
    run_warmup(model, tok, EXAMPLES[:4], WarmupConfig(epochs=1, batch_size=4), tmp_path)
    with pytest.raises(CurationError, match="new directory"):
        run_warmup(model, tok, EXAMPLES[:4], WarmupConfig(epochs=1, batch_size=2), tmp_path)


def test_tiny_pool_of_one_example_works(fresh, tmp_path):
    model, tok = fresh()
    ckpts = run_warmup(model, tok, EXAMPLES[:1], WarmupConfig(epochs=2), tmp_path)
    assert [c.epoch for c in ckpts] == [1, 2] and all(c.lr > 0 for c in ckpts)
    with pytest.raises(CurationError):
        run_warmup(model, tok, [[{"role": "user", "content": "no reply"}]], WarmupConfig(), tmp_path / "x")


def test_load_checkpoint_rejects_mismatched_moments(fresh, tmp_path):
    model, tok = fresh()
    ckpt = run_warmup(model, tok, EXAMPLES[:2], WarmupConfig(epochs=1), tmp_path)[0]
    moments = load_file(ckpt.path / MOMENTS_FILE)
    from safetensors.torch import save_file
    save_file({k.replace("layers.0.", "layers.9."): v for k, v in moments.items()}, ckpt.path / MOMENTS_FILE)
    with pytest.raises(CurationError, match="moments"):
        load_checkpoint(fresh()[0], Checkpoint(1, ckpt.path, ckpt.lr))


def test_sample_warmup_ids():
    ids = [f"ex-{i}" for i in range(200)]
    chosen = sample_warmup_ids(ids, 5.0, seed=3)
    assert len(chosen) == 10 and chosen == sample_warmup_ids(ids, 5.0, seed=3)
    assert chosen == [i for i in ids if i in set(chosen)]  # pool order
    assert set(sample_warmup_ids(ids[::-1], 5.0, seed=3)) == set(chosen)  # file order irrelevant
    assert chosen != sample_warmup_ids(ids, 5.0, seed=4)
    assert len(sample_warmup_ids(ids[:3], 5.0, seed=0)) == 1
    with pytest.raises(CurationError):
        sample_warmup_ids(["a", "a"], 50, 0)


def test_warmup_config_round_trip_and_published_values():
    cfg = WarmupConfig.for_7b()
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lr, cfg.max_length) == (128, 512, 0.1, 2e-5, 2048)
    assert cfg.batch_size * cfg.grad_accum == 128 and cfg.dtype == "bfloat16" and cfg.epochs == 4
    assert WarmupConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({"percent": 0}, {"lora_dropout": 1.0}, {"target_modules": ()}, {"dtype": "fp8"}):
        with pytest.raises(CurationError):
            WarmupConfig(**bad)
