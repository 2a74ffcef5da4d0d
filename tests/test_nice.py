"""NICE (curation/methods/nice.py, curation/generation.py): the policy-gradient vector, the
sample cache, label-free mode, and a scoring run end to end on the demo pool."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from curation.config import FeatureConfig, ScoreConfig, SelectConfig
from curation.data.demo import ensure_demo
from curation.data.store import Score, Store
from curation.engine.generation import GenerationCache, SamplingConfig, cached_samples, sample_responses
from curation.engine.grads import selected_params
from curation.engine.model import ModelConfig, encode_pair, pad_token_id
from curation.engine.objectives import IGNORE_INDEX, PolicyGradientObjective
from curation.engine.projection import SparseJLProjector
from curation.engine.tiny import TinyConfig, train_tokenizer
from curation.engine.warmup import Checkpoint, WarmupConfig
from curation.errors import CurationError
from curation.methods import ScoreInputs, ValPair, get_method
from curation.methods.gradient import ordered_features
from curation.methods.nice import Nice, NiceConfig, build_reward, load_records, nice_item, summarise
from curation.runs.execute import create_run, execute_run, show_run
from curation.runs.jobs import Reporter
from curation.workspace import Workspace

PROMPTS = ["There were 19 cards on the table. Ravi took 9 of them. How many cards are on the table now?",
           "A ribbon 40 meters long is cut into 8 equal pieces. How many meters long is each piece?",
           "Nora read 35 pages on Monday and 44 pages on Tuesday. How many pages did Nora read in total?"]
CHOSEN = ["19 - 9 = 10, so the answer is 10.", "40 / 8 = 5, so the answer is 5.", "35 + 44 = 79, so the answer is 79."]


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def _pairs() -> list[ValPair]:
    return [ValPair(p, _messages(p), c, c.replace("answer is", "answer is not"), "arith")
            for p, c in zip(PROMPTS, CHOSEN)]


@pytest.fixture(scope="module")
def tokenizer():
    convs = [[{"role": "user", "content": p}, {"role": "assistant", "content": c}] for p, c in zip(PROMPTS, CHOSEN)]
    return train_tokenizer(convs * 3, TinyConfig(vocab_size=300))


# ------------------------------------------------------------------ the vector


def _direct_feature(model, tokenizer, prompt, responses, weights, projector) -> np.ndarray:
    """normalise(project(Σ_j w_j ∇NLL_j)), one sequence and one autograd.grad at a time."""
    params = selected_params(model)
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for y, w in zip(responses, weights):
        enc = encode_pair(tokenizer, _messages(prompt), y, 128)
        ids, labels = torch.tensor(enc["input_ids"]), torch.tensor(enc["labels"])
        logp = model(input_ids=ids[None]).logits[0, :-1].log_softmax(-1)
        scored = labels[1:] != IGNORE_INDEX
        nll = -logp[scored].gather(1, labels[1:][scored][:, None]).sum()
        for (name, p), g in zip(params.items(), torch.autograd.grad(nll, list(params.values()))):
            total[name] += w * g
    projected = sum(projector.project(name, g.reshape(1, -1)) for name, g in total.items())
    norm = projected.norm()
    return (projected / norm if norm > 0 else projected).float().numpy()[0]


def _weights(rewards: list[float], variant: str, top: int) -> list[float]:
    """The variants written out by hand (METHODS.md §3)."""
    if variant == "sum":
        return rewards
    if variant == "rejection":
        kept = [r > 0 for r in rewards]
    else:
        order = sorted(range(len(rewards)), key=lambda j: -rewards[j])[:top]
        kept = [j in order for j in range(len(rewards))]
    k = max(sum(kept), 1)
    return [r / k if keep else 0.0 for r, keep in zip(rewards, kept)]


@pytest.mark.parametrize("variant", ["sum", "rejection", "topk"])
def test_nice_vector_equals_the_direct_policy_gradient(make_model, tokenizer, variant):
    model = make_model(dtype=torch.float64, vocab=len(tokenizer))
    responses = [["19 - 9 = 10, so the answer is 10.", "the answer is 11", "10"],
                 ["40 / 8 = 6", "so the answer is 5.", "5"],
                 ["79", "35 + 44 = 80", "the answer is 79."]]
    rewards = [[1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [-1.0, 2.0, 0.25]]
    projector = SparseJLProjector(64, seed=3)
    items = [nice_item(tokenizer, _messages(p), ys, rs, 128) for p, ys, rs in zip(PROMPTS, responses, rewards)]
    got = ordered_features(model, items, PolicyGradientObjective(variant, top_k=2), projector, None,
                           batch_size=2, pad_id=pad_token_id(tokenizer))
    for row, (prompt, ys, rs) in enumerate(zip(PROMPTS, responses, rewards)):
        want = _direct_feature(model, tokenizer, prompt, ys, _weights(rs, variant, 2), projector)
        np.testing.assert_allclose(got[row], want, atol=1e-6)
    assert np.isfinite(got).all() and not got[1].any()  # all-zero rewards: a zero vector, not NaN


# ------------------------------------------------------------------ sampling and its cache


def test_sampling_is_seeded_per_prompt_and_leaves_the_global_rng_alone(make_model, tokenizer):
    model = make_model(vocab=len(tokenizer))
    before = torch.get_rng_state()
    a = sample_responses(model, tokenizer, _messages(PROMPTS[0]), 3, max_new_tokens=6, seed=1, checkpoint="c1")
    assert torch.equal(torch.get_rng_state(), before)
    assert a == sample_responses(model, tokenizer, _messages(PROMPTS[0]), 3, max_new_tokens=6, seed=1, checkpoint="c1")
    assert len(a) == 3 and all(isinstance(y, str) for y in a)
    other = [sample_responses(model, tokenizer, _messages(PROMPTS[0]), 3, max_new_tokens=6, seed=s, checkpoint="c1")
             for s in (2, 3)]
    assert any(o != a for o in other)


def _count_generate(monkeypatch, model) -> list[int]:
    calls = [0]
    real = model.generate

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counted)
    return calls


def test_generation_cache_hit_does_not_generate(make_model, tokenizer, tmp_path, monkeypatch):
    model = make_model(vocab=len(tokenizer))
    calls = _count_generate(monkeypatch, model)
    cache, cfg = GenerationCache(tmp_path / "gen"), SamplingConfig(n=2, max_new_tokens=5)
    first = cached_samples(model, tokenizer, _messages(PROMPTS[0]), cfg, "warm/epoch_1", cache)
    again = cached_samples(model, tokenizer, _messages(PROMPTS[0]), cfg, "warm/epoch_1", cache)
    assert calls[0] == 1 and again == first
    longer = SamplingConfig(n=2, max_new_tokens=6)
    cached_samples(model, tokenizer, _messages(PROMPTS[0]), longer, "warm/epoch_1", cache)
    cached_samples(model, tokenizer, _messages(PROMPTS[0]), cfg, "warm/epoch_2", cache)
    assert calls[0] == 3 and len(list((tmp_path / "gen").glob("*.json"))) == 3
    assert not list((tmp_path / "gen").glob(".*"))  # atomic writes leave no temp files


def _inputs(tmp_path, options: dict, model: str = "tiny") -> ScoreInputs:
    cfg = ScoreConfig(method="nice", model=ModelConfig(name_or_path=model, max_length=128), options=options)
    return ScoreInputs(example_ids=[], fetch=lambda ids: [], pairs=_pairs(), config=cfg, workdir=tmp_path / "run",
                       workspace=Workspace(tmp_path / "ws", ""), reporter=Reporter(None, None))


def test_checkpoint_items_are_cached_across_runs_and_recorded(make_model, tokenizer, tmp_path, monkeypatch):
    model = make_model(vocab=len(tokenizer))
    calls = _count_generate(monkeypatch, model)
    ckpt = Checkpoint(1, tmp_path / "ws" / "warmups" / "abc" / "epoch_1", 1.0)
    opts = {"samples": 2, "max_new_tokens": 4, "reward": "number"}
    items = Nice().checkpoint_val_items(model, tokenizer, ckpt, _inputs(tmp_path, opts))
    assert calls[0] == 3 and len(items) == 3 and all(b.input_ids.shape[0] == 2 for b in items)
    again = Nice().checkpoint_val_items(model, tokenizer, ckpt, _inputs(tmp_path, opts))
    assert calls[0] == 3  # a re-score on the same warmup checkpoint generates nothing
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(items, again))
    [record] = load_records(tmp_path / "run")
    assert record["checkpoint"] == "abc/epoch_1" and record["reward"] == "number"
    assert [len(p["rewards"]) for p in record["pairs"]] == [2, 2, 2]


def test_prompts_without_usable_reward_give_zero_vectors_and_a_warning(make_model, tokenizer, tmp_path):
    ckpt = Checkpoint(2, tmp_path / "ws" / "warmups" / "abc" / "epoch_2", 1.0)
    inputs = _inputs(tmp_path, {"samples": 2, "max_new_tokens": 3, "reward": "regex:^NEVER$"})
    items = Nice().checkpoint_val_items(make_model(vocab=len(tokenizer)), tokenizer, ckpt, inputs)
    assert all(float(b.row_weight.abs().sum()) == 0 for b in items)
    meta, warnings = summarise(tmp_path / "run", NiceConfig.from_dict(inputs.config.options))
    assert meta["checkpoints"]["abc/epoch_2"] == {"mean_reward": 0.0, "zero_vector_pairs": [0, 1, 2]}
    assert len(warnings) == 1 and "3 of 3" in warnings[0]


def test_label_free_refuses_a_reward_that_needs_a_label(tmp_path):
    with pytest.raises(CurationError, match="needs a label"):
        build_reward(NiceConfig(label_free=True, reward="number"))
    assert not build_reward(NiceConfig(label_free=True, reward="regex:answer is")).needs_label
    # score() refuses before it loads the (here nonexistent) model
    with pytest.raises(CurationError, match="label_free"):
        Nice().score(_inputs(tmp_path, {"label_free": True, "reward": "exact_match"}, model=str(tmp_path / "none")))


def test_label_free_mode_never_shows_the_label(make_model, tokenizer, tmp_path, monkeypatch):
    (tmp_path / "nolabel.py").write_text("def r(prompt, response, label):\n    assert label is None\n    return 1.0\n"
                                         "r.needs_label = False\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = Checkpoint(1, tmp_path / "w" / "k" / "epoch_1", 1.0)
    opts = {"samples": 2, "max_new_tokens": 3, "reward": "plugin:nolabel:r", "label_free": True}
    Nice().checkpoint_val_items(make_model(vocab=len(tokenizer)), tokenizer, ckpt, _inputs(tmp_path, opts))
    assert all(p["rewards"] == [1.0, 1.0] for p in load_records(tmp_path / "run")[0]["pairs"])


def test_nice_config_round_trips_and_refuses_bad_options():
    cfg = NiceConfig(samples=4, variant="topk", top_k_rewards=2, reward="regex:x", label_free=True)
    assert NiceConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert NiceConfig().to_dict()["samples"] == 20 and NiceConfig().top_p == 0.95  # published defaults
    with pytest.raises(CurationError, match="unknown option"):
        NiceConfig.from_dict({"sample": 3})
    with pytest.raises(CurationError, match="variant"):
        NiceConfig(variant="mean")


# ------------------------------------------------------------------ end to end


def test_nice_run_on_the_demo_stores_scores_and_explains_them(tmp_path, monkeypatch, micro_model):
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv("CURATION_DB_URL", raising=False)
    ws = Workspace.from_env().ensure()
    store = Store.open(ws)
    ensure_demo(store)
    cfg = ScoreConfig(method="nice", model=ModelConfig(name_or_path=str(micro_model), max_length=128),
                      warmup=WarmupConfig(percent=5, epochs=1, batch_size=16, max_length=128),
                      features=FeatureConfig(k=256, shard_size=1024), select=SelectConfig(percent=5),
                      options={"samples": 2, "max_new_tokens": 8})
    run_id = create_run(store, "demo", "demo", cfg, ws)
    execute_run(store, run_id, ws)
    info = show_run(store, run_id)
    assert info["status"] == "done" and info["selected"] == 150
    assert info["meta"]["nice"]["config"]["samples"] == 2
    with store.session() as s:
        scores = dict(s.query(Score.example_id, Score.score).filter(Score.run_id == run_id).all())
        top_id = s.query(Score.example_id).filter(Score.run_id == run_id, Score.rank == 1).scalar()
    assert len(scores) == 3000 and np.isfinite(list(scores.values())).all()
    [record] = load_records(ws.run_dir(run_id))
    assert all(len(p["responses"]) == 2 for p in record["pairs"])
    shown = get_method("nice").explain(ws.run_dir(run_id), top_id, [], [])
    rows = shown["Sampled responses (last checkpoint)"]
    assert rows and {"pair", "subtask", "response", "reward"} <= set(rows[0])
    assert len({r["subtask"] for r in rows}) == 1 and "number" in shown["Reward"]
    # re-scoring on the same warmup reuses every sample: generating again would fail here
    monkeypatch.setattr("curation.engine.generation.sample_responses", _no_generation)
    again = create_run(store, "demo", "demo", cfg, ws)
    execute_run(store, again, ws)
    assert load_records(ws.run_dir(again)) == [record]


def _no_generation(*args, **kwargs):
    raise AssertionError("a re-score generated samples instead of reading the cache")
