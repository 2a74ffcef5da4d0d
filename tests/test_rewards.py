"""Rewards for NICE (curation/rewards.py): every built-in reward, plugins and a reward model."""

from __future__ import annotations

import inspect

import pytest
import torch

from curation.errors import CurationError
from curation.methods.rewards import REWARDS, Reward, extract_code, last_number, make_reward

PROMPT = "There were 19 cards on the table. Ravi took 9 of them. How many cards are on the table now?"
CHOSEN = "19 - 9 = 10, so the answer is 10."


def test_every_reward_honours_the_base_signature():
    base = inspect.signature(Reward.__call__)
    for name, cls in REWARDS.items():
        assert issubclass(cls, Reward) and cls.name == name
        assert list(inspect.signature(cls.__call__).parameters) == list(base.parameters)


def test_number_compares_final_numbers_of_response_and_label():
    r = make_reward("number")
    assert r.needs_label and r.spec == "number"
    assert r(PROMPT, "19 - 9 = 10, so the answer is 10.", CHOSEN) == 1.0
    assert r(PROMPT, "I think 10", CHOSEN) == 1.0
    assert r(PROMPT, "19 - 9 = 10, so the answer is 11.", CHOSEN) == 0.0
    assert r(PROMPT, "no idea", CHOSEN) == 0.0
    assert last_number("total: 1,000.0 apples") == last_number("1000") and last_number("3/4") == last_number("0.75")
    assert make_reward("number")(PROMPT, "the answer is -56.", "so the answer is -56.") == 1.0


def test_number_needs_a_label_with_a_number():
    with pytest.raises(CurationError, match="needs a label"):
        make_reward("number")(PROMPT, "10", None)
    with pytest.raises(CurationError, match="no number"):
        make_reward("number")(PROMPT, "10", "ten")


def test_exact_match_normalises_case_space_and_final_punctuation():
    r = make_reward("exact_match")
    assert r(PROMPT, "  19 - 9 = 10,   SO the answer is 10 ", CHOSEN) == 1.0
    assert r(PROMPT, "19 - 9 = 10, so the answer is 11.", CHOSEN) == 0.0


def test_regex_is_label_free_and_keeps_colons_in_the_pattern():
    r = make_reward(r"regex:answer is \d+:?")
    assert not r.needs_label and r.spec == r"regex:answer is \d+:?"
    assert r(PROMPT, CHOSEN, None) == 1.0 and r(PROMPT, "dunno", None) == 0.0
    with pytest.raises(CurationError, match="bad pattern"):
        make_reward("regex:(")


def test_unknown_reward_and_stray_argument_are_refused():
    with pytest.raises(CurationError, match="unknown reward"):
        make_reward("bleu")
    with pytest.raises(CurationError, match="takes no argument"):
        make_reward("number:3")


def test_unit_tests_reward_is_the_sandboxed_pass_rate():
    r = make_reward("unit_tests")
    tests = "assert add(1, 2) == 3\nassert add(2, 2) == 4\nassert add(0, 5) == 6\n"
    fenced = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert r.needs_label
    assert r("write add", fenced, tests) == pytest.approx(2 / 3)
    assert r("write add", "def add(a, b):\n    return a * b\n", tests) == pytest.approx(1 / 3)
    assert r("write add", "this is not code", tests) == 0.0
    assert extract_code("no fence") == "no fence"


def test_plugin_calls_a_user_function(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompt, response, label):\n    return len(response) / 10\n"
        "def free(prompt, response, label):\n    return 1\nfree.needs_label = False\n"
        "def bad(prompt, response, label):\n    return 'high'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = make_reward("plugin:my_rewards:length")
    assert r(PROMPT, "0123456789", None) == 1.0 and r.needs_label and r.spec == "plugin:my_rewards:length"
    assert not make_reward("plugin:my_rewards:free").needs_label
    with pytest.raises(CurationError, match="not a number"):
        make_reward("plugin:my_rewards:bad")(PROMPT, "x", None)


@pytest.mark.parametrize("spec, message", [("plugin:no_such_module_xyz:f", "cannot import module"),
                                           ("plugin:json:no_such_function", "no attribute"),
                                           ("plugin:json", "module:function")])
def test_plugin_that_cannot_be_imported_is_a_clear_error(spec, message):
    with pytest.raises(CurationError, match=message):
        make_reward(spec)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A tiny random LlamaForSequenceClassification (1 label) with a BPE tokenizer, saved locally."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from curation.engine.tiny import TinyConfig, train_tokenizer

    conversations = [[{"role": "user", "content": PROMPT}, {"role": "assistant", "content": CHOSEN}]] * 3
    tok = train_tokenizer(conversations, TinyConfig(vocab_size=300))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tok.pad_token_id, max_position_embeddings=256)
    out = tmp_path_factory.mktemp("rm") / "reward_model"
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_reward_model_scores_with_its_last_logit(reward_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from curation.engine.model import format_conversation

    r = make_reward(f"reward_model:{reward_model_dir}")
    assert not r.needs_label and r.spec == f"reward_model:{reward_model_dir}"
    good, bad = r(PROMPT, CHOSEN, None), r(PROMPT, "19 - 9 = 11, so the answer is 11.", None)
    assert isinstance(good, float) and good != bad
    tok = AutoTokenizer.from_pretrained(reward_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    text = format_conversation(tok, [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": CHOSEN}])
    with torch.no_grad():
        direct = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
    assert good == pytest.approx(float(direct), abs=1e-6)


def test_missing_reward_model_is_a_clear_error(tmp_path):
    with pytest.raises(CurationError, match="cannot load reward model"):
        make_reward(f"reward_model:{tmp_path / 'nothing-here'}")

