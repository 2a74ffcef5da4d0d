"""The offline default model: a tiny Llama and BPE tokenizer built from the demo pool on CPU.

Nothing is downloaded: the tokenizer is trained on the corpus, the model is pretrained
full-parameter on the corpus in the pool's chat format, so that it knows the format and can
learn the demo tasks with LoRA afterwards. Built once per (corpus bytes, build config) and
cached under `workspace/models/tiny-<fingerprint>/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from curation.engine.model import TULU_CHAT_TEMPLATE, Progress, config_from_dict, format_conversation
from curation.errors import CurationError

if TYPE_CHECKING:  # torch loads only to build the model: reading its settings needs none
    import torch

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "data" / "demo_pool.jsonl"
BUILD_INFO = "build_info.json"
BUILD_FORMAT = 1  # bump when the build code changes what a config produces
EOS, PAD = "<|endoftext|>", "<pad>"
SPECIAL_TOKENS = [EOS, PAD, "<|user|>", "<|assistant|>", "<|system|>"]


@dataclass
class TinyConfig:
    """Build recipe of the tiny model; every field enters the cache fingerprint.

    Defaults: ~1.3M parameters, ~6 passes over the 3000-example demo pool (130k tokens) in
    about 1.5 minutes on CPU. `num_threads` is 1 on purpose: CPU kernels may split reductions
    by thread count, so a fixed single thread gives the same weights on any machine; and at
    this size a second thread gains little when idle and loses 3-5x when other processes
    compete for the cores (OpenMP threads spin-wait).
    """

    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 512
    block_size: int = 128  # tokens per packed pretraining sequence
    batch_size: int = 16
    steps: int = 400
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    seed: int = 0
    num_threads: int = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in ("seed", "weight_decay", "warmup_steps") and not value > 0:
                raise CurationError(f"TinyConfig.{f.name} must be positive, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise CurationError("TinyConfig.hidden_size must be a multiple of num_heads")
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise CurationError("TinyConfig.vocab_size must cover the 256 byte symbols")
        if self.block_size > self.max_positions:
            raise CurationError("TinyConfig.block_size must not exceed max_positions")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TinyConfig":
        return config_from_dict(cls, data)


def read_conversations(corpus_path: Path) -> list[list[dict[str, str]]]:
    """The `messages` of every line of a pool JSONL file (other fields are ignored here)."""
    conversations = []
    with open(corpus_path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                conversations.append(json.loads(line)["messages"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CurationError(f"{corpus_path}:{line_no}: not a pool record ({exc})") from exc
    if not conversations:
        raise CurationError(f"{corpus_path}: no conversations to build the tiny model from")
    return conversations


def fingerprint(corpus_path: Path, cfg: TinyConfig) -> str:
    """Hash of the corpus bytes and the build recipe: the cache key of a built model."""
    h = hashlib.sha256(Path(corpus_path).read_bytes())
    h.update(json.dumps([BUILD_FORMAT, cfg.to_dict()], sort_keys=True).encode())
    return h.hexdigest()[:16]


def ensure_tiny_model(workspace: Path, corpus_path: Path | None = None, cfg: TinyConfig | None = None,
                      progress: Progress | None = None) -> Path:
    """Path of the cached tiny model for this corpus and recipe, building it first if needed."""
    corpus_path = Path(corpus_path or DEFAULT_CORPUS)
    if not corpus_path.is_file():
        raise CurationError(f"tiny model corpus {corpus_path} not found (generate the demo pool first)")
    cfg = cfg or TinyConfig()
    out_dir = Path(workspace) / "models" / f"tiny-{fingerprint(corpus_path, cfg)}"
    if not (out_dir / BUILD_INFO).is_file():
        build_tiny_model(corpus_path, out_dir, cfg, progress)
    return out_dir


SAVE_EVERY = 50  # pretraining steps between resume checkpoints (~5% of a default build)


def resume_path(out_dir: Path) -> Path:
    """Where a build in progress keeps its last step's full training state."""
    return Path(out_dir).parent / f".{Path(out_dir).name}.resume.pt"


def build_tiny_model(corpus_path: Path, out_dir: Path, cfg: TinyConfig,
                     progress: Progress | None = None, save_every: int = SAVE_EVERY) -> dict[str, Any]:
    """Train tokenizer and model, then publish `out_dir` atomically; returns the build info.

    Everything is written to a sibling temp dir that is renamed at the end, so a killed
    build leaves no directory that looks like a model. Every ``save_every`` steps the whole
    training state (weights, AdamW moments, schedule, batch generator, losses) is saved
    atomically beside it (`resume_path`), so a killed build resumes there and ends with the
    same bits as an uninterrupted one (tested); it is deleted once the model is published.
    """
    started = time.perf_counter()
    conversations = read_conversations(Path(corpus_path))
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        with _deterministic(cfg):
            tokenizer = train_tokenizer(conversations, cfg)
            model = _new_model(tokenizer, cfg)
            losses = _pretrain(model, _pack(tokenizer, conversations, cfg), cfg, progress,
                               resume_path(out_dir), save_every)
        info = {"fingerprint": fingerprint(Path(corpus_path), cfg), "config": cfg.to_dict(),
                "corpus": str(corpus_path), "examples": len(conversations),
                "parameters": sum(p.numel() for p in model.parameters()),
                "first_loss": losses[0], "final_loss": _final_loss(losses),
                "seconds": round(time.perf_counter() - started, 1)}
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2))
        _publish(tmp, out_dir)
        resume_path(out_dir).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def read_build_info(model_dir: Path) -> dict[str, Any]:
    """The build info (config, losses, timing) saved beside a tiny model."""
    return json.loads((Path(model_dir) / BUILD_INFO).read_text())


@contextlib.contextmanager
def _deterministic(cfg: TinyConfig) -> Iterator[None]:
    """Seed, fix the thread count and ask for deterministic kernels; restore them afterwards."""
    import torch
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.num_threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict)


def train_tokenizer(conversations: list[list[dict[str, str]]], cfg: TinyConfig):
    """Byte-level BPE on the message contents; role tags and eos/pad are single special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = (m["content"].strip() + "\n" for conv in conversations for m in conv)
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, pad_token=PAD, extra_special_tokens=SPECIAL_TOKENS[2:],
        model_max_length=cfg.max_positions)
    tokenizer.chat_template = TULU_CHAT_TEMPLATE
    return tokenizer


def _new_model(tokenizer, cfg: TinyConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def _pack(tokenizer, conversations: list[list[dict[str, str]]], cfg: TinyConfig) -> torch.Tensor:
    """All conversations, formatted exactly as fine-tuning sees them, packed into fixed blocks.

    Packing (vs padding) wastes no compute; conversations are shuffled once so a block mixes
    task families. Full-token loss teaches both the role format and the prompts' language.
    """
    import torch
    order = torch.randperm(len(conversations), generator=torch.Generator().manual_seed(cfg.seed))
    stream: list[int] = []
    for i in order.tolist():
        stream.extend(tokenizer(format_conversation(tokenizer, conversations[i]),
                                add_special_tokens=False, verbose=False)["input_ids"])
    n_blocks = len(stream) // cfg.block_size
    if n_blocks == 0:
        raise CurationError(f"corpus too small: {len(stream)} tokens < block_size {cfg.block_size}")
    return torch.tensor(stream[: n_blocks * cfg.block_size]).view(n_blocks, cfg.block_size)


def _pretrain(model, blocks: torch.Tensor, cfg: TinyConfig, progress: Progress | None,
              resume: Path | None = None, save_every: int = SAVE_EVERY) -> list[float]:
    """AdamW with linear warmup then cosine decay; batches drawn with a seeded generator.

    With ``resume``: continue from the state saved there (same config fingerprint only) and
    save the state every ``save_every`` steps.
    """
    import torch
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    losses, start = [], 0
    if resume is not None and resume.is_file():
        state = torch.load(resume, weights_only=False)  # our own file, written below
        if state.get("config") == cfg.to_dict():
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["rng"])
            losses, start = list(state["losses"]), int(state["step"])
    for step in range(start, cfg.steps):
        batch = blocks[torch.randint(len(blocks), (cfg.batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if resume is not None and (step + 1) % save_every == 0 and step + 1 < cfg.steps:
            _save_state(resume, {"config": cfg.to_dict(), "step": step + 1, "model": model.state_dict(),
                                 "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state(),
                                 "rng": torch.get_rng_state(), "losses": losses})
        if progress:
            progress("tiny-pretrain", step + 1, cfg.steps)
    model.eval()
    return losses


def _save_state(path: Path, state: dict) -> None:
    """Write-to-temp-then-rename: a kill while saving keeps the previous resume point."""
    import torch
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _lr_factor(step: int, cfg: TinyConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


def _final_loss(losses: list[float]) -> float:
    """Mean of the last 10 steps: one batch's loss is too noisy to report."""
    tail = losses[-10:]
    return round(sum(tail) / len(tail), 4)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished build into place; a concurrent builder that won the race is kept."""
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if not (out_dir / BUILD_INFO).is_file():
            raise
