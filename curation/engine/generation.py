"""Sampling responses from a checkpoint model, seeded and cached (NICE, METHODS.md §3).

NICE's validation vector needs M responses per prompt from π_θ (M=20, temperature 1.0,
top-k 50, top-p 0.95). Sampling is the slow part of NICE and re-scoring should be cheap
("cache generations", §3), so every prompt's M samples are stored as one JSON file keyed by
(checkpoint, rendered prompt, sampling settings) and written atomically: a killed run keeps
every prompt it finished, and any later run on the same warmup checkpoint reuses them.

Determinism: each prompt's sampling seed is derived from (seed, prompt, checkpoint), so a
prompt gets the same samples whatever its position in the set and whichever prompts were
sampled before it; the global torch RNG is left untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from curation.engine.features import atomic_write
from curation.engine.model import Messages, pad_token_id, render_text
from curation.engine.projection import derive_seed

CACHE_VERSION = 1  # bump when the same key would hold different samples


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are sampled; every field enters the cache key."""

    n: int = 20  # M, samples per prompt (published)
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.95
    max_new_tokens: int = 64
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def render_prompt(tokenizer, prompt_messages: Messages) -> str:
    """The prompt exactly as `encode_pair` formats it, followed by the assistant header."""
    return render_text(tokenizer, prompt_messages, add_generation_prompt=True)


def _stop_ids(model, tokenizer) -> list[int]:
    """Token ids that end a reply: the tokenizer's eos and the model's generation eos(s)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def _decode(tokenizer, tokens: torch.Tensor, stop: Sequence[int]) -> str:
    """Text of one sampled continuation, cut at its first stop token."""
    ids = tokens.tolist()
    end = next((j for j, t in enumerate(ids) if t in stop), len(ids))
    return tokenizer.decode(ids[:end], skip_special_tokens=True).strip()


def sample_responses(model, tokenizer, prompt_messages: Messages, n: int, *, temperature: float = 1.0,
                     top_k: int = 50, top_p: float = 0.95, max_new_tokens: int = 64, seed: int = 0,
                     checkpoint: str = "") -> list[str]:
    """``n`` responses to one prompt sampled in one batch, in eval mode (no dropout).

    Seeded from (seed, prompt text, checkpoint) in a forked RNG, so the caller's RNG state is
    unchanged and the same call always returns the same samples on the same device.
    """
    text = render_prompt(tokenizer, prompt_messages)
    device = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=not tokenizer.chat_template, return_tensors="pt")["input_ids"]
    ids = ids.to(device).expand(n, -1)
    stop, was_training = _stop_ids(model, tokenizer), model.training
    devices = [device.index or 0] if device.type == "cuda" else []
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(derive_seed(seed, _sha(text), checkpoint))
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                                 eos_token_id=stop, pad_token_id=pad_token_id(tokenizer))
    finally:
        model.train(was_training)
    return [_decode(tokenizer, row[ids.shape[1]:], stop) for row in out]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class GenerationCache:
    """One JSON file of samples per (checkpoint, prompt, settings) under ``root``.

    ``root`` is meant to be workspace-level and keyed by the warmup (whose key already
    fingerprints model, warmup config and data), so every run on that warmup shares it.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def key(self, checkpoint: str, prompt_text: str, cfg: SamplingConfig) -> str:
        payload = json.dumps([CACHE_VERSION, checkpoint, prompt_text, cfg.to_dict()], sort_keys=True)
        return _sha(payload)[:24]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def load(self, key: str) -> list[str] | None:
        try:
            return json.loads(self.path(key).read_text())["responses"]
        except (OSError, ValueError, KeyError):  # absent, or unreadable: sample again
            return None

    def save(self, key: str, responses: list[str], meta: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = json.dumps({**meta, "responses": responses}, ensure_ascii=False, indent=1).encode("utf-8")
        atomic_write(self.path(key), lambda f: f.write(data))


def cached_samples(model, tokenizer, prompt_messages: Messages, cfg: SamplingConfig, checkpoint: str,
                   cache: GenerationCache | None) -> list[str]:
    """`sample_responses` through the cache: a hit costs one small file read, no generation."""
    text = render_prompt(tokenizer, prompt_messages)
    key = None if cache is None else cache.key(checkpoint, text, cfg)
    if cache is not None and (hit := cache.load(key)) is not None and len(hit) == cfg.n:
        return hit
    responses = sample_responses(model, tokenizer, prompt_messages, cfg.n, temperature=cfg.temperature,
                                 top_k=cfg.top_k, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                 seed=cfg.seed, checkpoint=checkpoint)
    if cache is not None:
        cache.save(key, responses, {"checkpoint": checkpoint, "prompt": text, "sampling": cfg.to_dict()})
    return responses
