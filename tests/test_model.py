"""Formatting, label masking, truncation, batching, model loading and the tiny offline model."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from curation.engine.model import (
    IGNORE,
    ModelConfig,
    collate,
    encode,
    encode_pair,
    format_conversation,
    length_buckets,
    tokenizer_hash,
)
from curation.engine.models import load_model
from curation.engine.tiny import TinyConfig, build_tiny_model, ensure_tiny_model, read_build_info, train_tokenizer
from curation.errors import CurationError

# A build small enough for tests (~1 s): the real default is TinyConfig().
SMALL_TINY = TinyConfig(vocab_size=320, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                        max_positions=128, block_size=32, batch_size=4, steps=6, warmup_steps=2)
WORDS = "apple river stone cloud green small happy blue table window".split()


def make_conversations(n: int = 60) -> list[list[dict[str, str]]]:
    """A deterministic toy pool: sums and word reversals."""
    out = []
    for i in range(n):
        if i % 2:
            q, a = f"What is {i} + {i % 7}?", str(i + i % 7)
        else:
            w = [WORDS[(i + k) % len(WORDS)] for k in range(3)]
            q, a = "Reverse: " + " ".join(w), " ".join(w[::-1])
        out.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return out


def write_corpus(path: Path, n: int = 60) -> Path:
    with open(path, "w") as fh:
        for i, msgs in enumerate(make_conversations(n)):
            fh.write(json.dumps({"dataset": "toy", "id": f"toy-{i}", "messages": msgs}) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(make_conversations(), SMALL_TINY)


@pytest.fixture
def plain_tokenizer(tokenizer):
    """The same tokenizer without a chat template: exercises the tulu fallback."""
    tok = train_tokenizer(make_conversations(), SMALL_TINY)
    tok.chat_template = None
    return tok


MULTI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi there "},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Sum 2 and 3"},
         {"role": "assistant", "content": "5"}]
TULU = ("<|system|>\nBe brief.\n<|user|>\nHi there\n<|assistant|>\nHello.<|endoftext|>\n"
        "<|user|>\nSum 2 and 3\n<|assistant|>\n5<|endoftext|>\n")


def labelled_text(tok, enc) -> str:
    return tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE])


def test_tulu_format_exact_with_and_without_template(tokenizer, plain_tokenizer):
    assert format_conversation(plain_tokenizer, MULTI) == TULU
    assert format_conversation(tokenizer, MULTI) == TULU  # tiny's template is the tulu format


@pytest.mark.parametrize("fixture", ["tokenizer", "plain_tokenizer"])
def test_only_assistant_turns_are_labelled(fixture, request):
    tok = request.getfixturevalue(fixture)
    enc = encode(tok, MULTI, 512)
    assert labelled_text(tok, enc) == "Hello.<|endoftext|>\n5<|endoftext|>\n"
    assert len(enc["input_ids"]) == len(enc["labels"])
    assert tok.decode(enc["input_ids"]) == TULU
    assert [lab for lab in enc["labels"] if lab != IGNORE] == [
        t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE]


def test_foreign_chat_template_path(plain_tokenizer):
    tok = plain_tokenizer
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}"
                         "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    enc = encode(tok, MULTI, 512)
    assert tok.decode(enc["input_ids"]).startswith("[system] Be brief.\n[user]  Hi there \n")
    # a token straddling the boundary (" 5") belongs to the reply
    assert labelled_text(tok, enc).replace(" ", "") == "Hello.<|endoftext|>\n5<|endoftext|>\n"


def test_template_that_is_not_prefix_stable_falls_back_to_content(plain_tokenizer):
    tok = plain_tokenizer  # the closing marker moves when a turn is added
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ '\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% else %}<END>{% endif %}")
    enc = encode(tok, MULTI, 512)
    assert tok.decode(enc["input_ids"]).endswith("[assistant]5\n<END>")
    # turn 1: its content only; the last turn: through the end of the text, like eos
    assert labelled_text(tok, enc) == "Hello.5\n<END>"


def test_encode_pair_matches_encode(tokenizer):
    prompt = [{"role": "user", "content": "Reverse: a b"}]
    pair = encode_pair(tokenizer, prompt, "b a", 64)
    assert pair == encode(tokenizer, [*prompt, {"role": "assistant", "content": "b a"}], 64)


def test_truncation_keeps_prompt_and_cuts_response(tokenizer):
    msgs = [{"role": "user", "content": "What is 3 + 4?"},
            {"role": "assistant", "content": " ".join(WORDS * 3)}]
    full = encode(tokenizer, msgs, 10_000)
    n_prompt = full["labels"].index(next(lab for lab in full["labels"] if lab != IGNORE))
    cut = encode(tokenizer, msgs, n_prompt + 3)
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 3]
    assert sum(lab != IGNORE for lab in cut["labels"]) == 3


def test_truncation_of_overlong_prompt_keeps_its_end_and_some_response(tokenizer):
    msgs = [{"role": "user", "content": " ".join(WORDS * 5) + " end?"},
            {"role": "assistant", "content": " ".join(WORDS)}]
    full = encode(tokenizer, msgs, 10_000)
    first = next(i for i, lab in enumerate(full["labels"]) if lab != IGNORE)
    n_resp = len(full["labels"]) - first
    max_length = 8
    assert first > max_length and n_resp > max_length // 2
    cut = encode(tokenizer, msgs, max_length)
    keep = max_length // 2
    assert cut["input_ids"] == full["input_ids"][first + keep - max_length: first + keep]
    assert sum(lab != IGNORE for lab in cut["labels"]) == keep


def test_collate_pads_right_and_masks(tokenizer):
    encs = [encode(tokenizer, m, 64) for m in make_conversations(3)]
    batch = collate(encs, pad_id=1)
    width = max(len(e["input_ids"]) for e in encs)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, width)
    for row, e in enumerate(encs):
        n = len(e["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == e["input_ids"]
        assert batch["labels"][row, :n].tolist() == e["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert set(batch["input_ids"][row, n:].tolist()) <= {1}
        assert set(batch["labels"][row, n:].tolist()) <= {IGNORE}
    with pytest.raises(CurationError):
        collate([], 0)


def test_length_buckets_cover_all_and_are_deterministic():
    lengths = [5, 3, 9, 3, 1, 7, 5, 2, 8, 3, 3]
    buckets = length_buckets(lengths, 4)
    assert buckets == length_buckets(list(lengths), 4)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    assert all(len(b) == 4 for b in buckets[:-1])
    flat = [lengths[i] for b in buckets for i in b]
    assert flat == sorted(flat)
    assert buckets[0] == [4, 7, 1, 3]  # equal lengths keep index order


def test_model_config_round_trip_and_validation():
    cfg = ModelConfig(name_or_path="some/model", dtype="bfloat16", device="auto", max_length=1024)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({"dtype": "int8"}, {"device": "tpu"}, {"max_length": 0}, {"name_or_path": " "}):
        with pytest.raises(CurationError):
            ModelConfig(**bad)
    with pytest.raises(CurationError):
        ModelConfig.from_dict({"dtyp": "float32"})


def test_tokenizer_hash_is_stable_and_sensitive(tokenizer, plain_tokenizer):
    again = train_tokenizer(make_conversations(), SMALL_TINY)
    assert tokenizer_hash(tokenizer) == tokenizer_hash(again)
    tokenizer(["a", "bb"], padding=True, truncation=True, max_length=4)  # call-time settings
    assert tokenizer_hash(tokenizer) == tokenizer_hash(again)
    assert tokenizer_hash(tokenizer) != tokenizer_hash(plain_tokenizer)


def test_tiny_build_is_deterministic_and_loadable(tmp_path):
    corpus = write_corpus(tmp_path / "pool.jsonl")
    info = build_tiny_model(corpus, tmp_path / "a", SMALL_TINY)
    build_tiny_model(corpus, tmp_path / "b", SMALL_TINY)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    assert info["final_loss"] < info["first_loss"]
    assert not list(tmp_path.glob(".*tmp*"))  # temp dirs renamed away

    model, tok = load_model(ModelConfig(name_or_path=str(tmp_path / "a")), tmp_path)
    enc = collate([encode(tok, make_conversations(1)[0], 64)], tok.pad_token_id)
    assert torch.isfinite(model(**enc).loss)


def test_ensure_tiny_model_caches_by_fingerprint(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "pool.jsonl")
    path = ensure_tiny_model(tmp_path / "ws", corpus, SMALL_TINY)
    assert path.name.startswith("tiny-") and read_build_info(path)["examples"] == 60
    monkeypatch.setattr("curation.engine.tiny.build_tiny_model", lambda *a, **k: pytest.fail("rebuilt"))
    model, tok = load_model(ModelConfig(), tmp_path / "ws", tiny_cfg=SMALL_TINY, corpus_path=corpus)
    assert tok.chat_template and model.config.vocab_size == len(tok)
    other = TinyConfig(**{**SMALL_TINY.to_dict(), "seed": 1})
    monkeypatch.undo()
    assert ensure_tiny_model(tmp_path / "ws", corpus, other) != path


def test_missing_model_is_a_curation_error_without_network(tmp_path, monkeypatch):
    attempts = []

    def no_connect(self, *args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    with pytest.raises(CurationError, match="allow_download"):
        load_model(ModelConfig(name_or_path="meta-llama/Llama-2-7b-hf"), tmp_path)
    with pytest.raises(CurationError):
        load_model(ModelConfig(name_or_path=str(tmp_path / "nowhere")), tmp_path)
    assert attempts == []


def test_a_killed_tiny_build_resumes_to_the_same_bits(tmp_path):
    """Killed after step 12 (resume point at 10), rebuilt: identical weights, losses and timing of saves."""
    from curation.engine.tiny import resume_path
    corpus = write_corpus(tmp_path / "pool.jsonl")
    cfg = dataclasses.replace(SMALL_TINY, steps=20)
    whole = build_tiny_model(corpus, tmp_path / "whole", cfg, save_every=5)

    def kill_at_12(stage, done, total):
        if done == 12:
            raise KeyboardInterrupt("killed")
    with pytest.raises(KeyboardInterrupt):
        build_tiny_model(corpus, tmp_path / "resumed", cfg, progress=kill_at_12, save_every=5)
    assert resume_path(tmp_path / "resumed").is_file() and not (tmp_path / "resumed").exists()
    steps = []
    resumed = build_tiny_model(corpus, tmp_path / "resumed", cfg, progress=lambda s, d, t: steps.append(d),
                               save_every=5)
    assert steps[0] == 11  # continued after the step-10 resume point, not from scratch
    wa = load_file(tmp_path / "whole" / "model.safetensors")
    wb = load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert whole["final_loss"] == resumed["final_loss"] and not resume_path(tmp_path / "resumed").exists()
