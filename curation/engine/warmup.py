"""Stage 1 (METHODS.md): LoRA warmup on a random share of the pool, checkpointed every epoch.

Each `out_dir/epoch_{i}/` holds what the later stages need: the adapter, the AdamW moments
keyed by parameter *name* (the reference code keys them by position and breaks outside
FSDP), and the epoch-mean learning rate that weights the checkpoint's scores. It also holds
the full optimizer/scheduler/RNG state, so a killed run resumes and ends bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from curation.engine.features import atomic_write, save_npy_atomic
from curation.engine.featuresets import content_keys
from curation.engine.model import (
    Messages,
    Progress,
    collate,
    encode,
    length_buckets,
    pad_token_id,
    tokenizer_hash,
)
from curation.engine.settings import ALL_LINEAR, WarmupConfig  # noqa: F401 (re-exported)
from curation.errors import CurationError

RUN_FILE = "warmup.json"  # config + input fingerprint of the whole run
META_FILE = "checkpoint.json"  # written last: its presence marks a complete epoch
MOMENTS_FILE = "optimizer_moments.safetensors"
STATE_FILE = "trainer_state.pt"
ADAPTER_NAME = "default"  # peft's name: moment keys contain it (".lora_A.default.weight")


@dataclass
class Checkpoint:
    """One warmup epoch on disk; `lr` is that epoch's mean learning rate (its score weight)."""

    epoch: int
    path: Path
    lr: float


@dataclass
class _Run:
    """Everything the training loop mutates, bundled so save/resume handle one object."""

    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    names: list[str]
    step: int = 0
    epoch_lrs: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)


def sample_warmup_ids(example_ids: Sequence[str], percent: float, seed: int) -> list[str]:
    """A seeded random `percent` share (at least one) of the ids, returned in pool order.

    Sampling from the sorted ids makes the choice independent of the pool's file order.
    """
    if len(set(example_ids)) != len(example_ids):
        raise CurationError("example ids must be unique to sample a warmup set")
    if not example_ids:
        return []
    n = max(1, round(len(example_ids) * percent / 100))
    chosen = set(random.Random(seed).sample(sorted(example_ids), min(n, len(example_ids))))
    return [i for i in example_ids if i in chosen]


def epoch_dir(out_dir: Path, epoch: int) -> Path:
    return Path(out_dir) / f"epoch_{epoch}"


def list_checkpoints(out_dir: Path) -> list[Checkpoint]:
    """Complete epochs 1..k in order (stops at the first missing one)."""
    found, epoch = [], 1
    while (epoch_dir(out_dir, epoch) / META_FILE).is_file():
        meta = json.loads((epoch_dir(out_dir, epoch) / META_FILE).read_text())
        found.append(Checkpoint(epoch, epoch_dir(out_dir, epoch), meta["lr"]))
        epoch += 1
    return found


ORIGIN_FILE = "origin.json"  # what a reusing run matches: model and warmup settings
ORIGIN_KEYS = "example_keys.npy"  # content keys of the warmup's examples


def complete_warmup(out_dir: Path, epochs: int) -> bool:
    return len(list_checkpoints(out_dir)) >= epochs


def record_warmup_origin(out_dir: Path, cfg, content_hashes: Sequence[str], pool: str) -> None:
    """Note which model, settings and examples a finished warmup used (for `reusable_warmup`)."""
    out_dir = Path(out_dir)
    if (out_dir / ORIGIN_FILE).is_file():
        return
    save_npy_atomic(out_dir / ORIGIN_KEYS, np.sort(content_keys(content_hashes)))
    origin = {"model": cfg.model.to_dict(), "warmup": cfg.warmup.to_dict(), "n_examples": len(content_hashes),
              "pool": pool}
    atomic_write(out_dir / ORIGIN_FILE, lambda f: f.write(json.dumps(origin, indent=1).encode()))


def reusable_warmup(root: Path, cfg, pool_keys, share: int) -> str | None:
    """A finished warmup (its directory name) that a grown pool may keep, or None.

    It must have the run's model and warmup settings, every one of its examples must still be
    in the pool, and it must hold at least half of the pool's share ``share`` (a pool that
    more than doubled gets a fresh warmup). The largest such warmup wins, then the newest.
    """
    found = []
    for origin_path in Path(root).glob(f"*/{ORIGIN_FILE}"):
        origin, out = json.loads(origin_path.read_text()), origin_path.parent
        if (origin["model"] != cfg.model.to_dict() or origin["warmup"] != cfg.warmup.to_dict()
                or origin["n_examples"] * 2 < share or not complete_warmup(out, cfg.warmup.epochs)):
            continue
        keys = np.load(out / ORIGIN_KEYS, allow_pickle=False)
        if np.isin(keys, pool_keys).all():
            found.append((origin["n_examples"], origin_path.stat().st_mtime, out.name))
    return max(found)[2] if found else None


def load_moments(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (exp_avg, exp_avg_sq) from an epoch dir, on CPU."""
    flat = load_file(str(Path(path) / MOMENTS_FILE))
    names = {k.rsplit(".", 1)[0] for k in flat}
    return {n: (flat[f"{n}.exp_avg"], flat[f"{n}.exp_avg_sq"]) for n in sorted(names)}


def load_checkpoint(model_base, ckpt: Checkpoint):
    """(peft model in eval mode with trainable LoRA params, moments keyed by its parameter names).

    Wraps `model_base` in place (peft injects the LoRA layers into it).
    """
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model_base, str(ckpt.path), is_trainable=True)
    peft_model.eval()
    moments = load_moments(ckpt.path)
    names = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    if names != set(moments):
        raise CurationError(f"{ckpt.path}: optimizer moments do not match the adapter's parameters")
    return peft_model, moments


def run_warmup(model, tokenizer, examples: Sequence[Messages], cfg: WarmupConfig, out_dir: Path,
               progress: Progress | None = None) -> list[Checkpoint]:
    """Train LoRA on `examples` for cfg.epochs, saving every epoch; resume finished epochs.

    `model` is wrapped in place while training and unwrapped again at the end (the adapter is
    not merged), so the caller's base model is unchanged afterwards.
    """
    out_dir = Path(out_dir)
    encoded = [e for e in (encode(tokenizer, m, cfg.max_length) for m in examples)
               if any(lab != -100 for lab in e["labels"])]
    if not encoded:
        raise CurationError("no warmup example has an assistant reply to train on")
    fp = _claim_out_dir(out_dir, cfg, model, tokenizer, examples)
    done = list_checkpoints(out_dir)[: cfg.epochs]
    total = cfg.epochs * _steps_per_epoch(len(encoded), cfg)
    if len(done) < cfg.epochs:
        _train(model, encoded, pad_token_id(tokenizer), cfg, out_dir, fp, len(done), total, progress)
    elif progress:
        progress("warmup", total, total)
    return list_checkpoints(out_dir)[: cfg.epochs]


def _claim_out_dir(out_dir: Path, cfg: WarmupConfig, model, tokenizer, examples) -> str:
    """Record the run's fingerprint, or refuse a directory holding a different run."""
    payload = json.dumps([cfg.to_dict(), tokenizer_hash(tokenizer), model.config.to_json_string(),
                          [list(m) for m in examples]], sort_keys=True, ensure_ascii=False)
    fp = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
    run_file = out_dir / RUN_FILE
    if run_file.is_file():
        if json.loads(run_file.read_text())["fingerprint"] != fp:
            raise CurationError(f"{out_dir} holds a warmup of other data, model or settings; "
                                "use a new directory or delete it")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"fingerprint": fp, "config": cfg.to_dict(),
                                        "examples": len(examples)}, indent=2))
    for stale in out_dir.glob(".epoch_*.tmp-*"):  # leftovers of a killed save
        shutil.rmtree(stale, ignore_errors=True)
    return fp


def _steps_per_epoch(n_examples: int, cfg: WarmupConfig) -> int:
    return math.ceil(math.ceil(n_examples / cfg.batch_size) / cfg.grad_accum)


def _lr_lambda(warmup: int, total: int):
    """Linear warmup over `warmup` steps, then linear decay towards 0 at `total`.

    Unlike HF's schedule the first step gets lr/(warmup+1), not 0: with a tiny pool the whole
    first epoch can be that one step, and a zero lr would give its checkpoint weight 0 and an
    untrained (lora_B = 0) adapter.
    """
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def _setup(model, cfg: WarmupConfig, total: int) -> _Run:
    """Wrap with LoRA (init seeded) and build AdamW + the linear schedule."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora, adapter_name=ADAPTER_NAME)
    named = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in named], lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = math.ceil(total * cfg.warmup_ratio)  # as HF TrainingArguments.get_warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, total))
    return _Run(peft_model, optimizer, scheduler, [n for n, _ in named])


def _train(model, encoded, pad_id: int, cfg: WarmupConfig, out_dir: Path, fp: str,
           start_epoch: int, total: int, progress: Progress | None) -> None:
    was_training = model.training
    run = _setup(model, cfg, total)
    try:
        if start_epoch:
            _resume(run, epoch_dir(out_dir, start_epoch))
        run.model.train()
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            _train_epoch(run, encoded, pad_id, cfg, epoch, total, progress)
            _save_epoch(run, cfg, out_dir, epoch, fp)
    finally:
        run.model.unload()  # strip LoRA layers without merging: the base weights are untouched
        model.train(was_training)


def _epoch_batches(lengths: list[int], cfg: WarmupConfig, epoch: int) -> list[list[list[int]]]:
    """Optimizer-step groups of micro-batches, a pure function of (seed, epoch) for resumability.

    Shuffle, bucket by length within windows of 16 batches (little padding, still random),
    then shuffle the batch order.
    """
    rng = random.Random(cfg.seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = 16 * cfg.batch_size
    batches = []
    for lo in range(0, len(order), window):
        chunk = order[lo: lo + window]
        batches += [[chunk[i] for i in b] for b in length_buckets([lengths[i] for i in chunk], cfg.batch_size)]
    rng.shuffle(batches)
    return [batches[i: i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]


def _train_epoch(run: _Run, encoded, pad_id: int, cfg: WarmupConfig, epoch: int, total: int,
                 progress: Progress | None) -> None:
    device = next(run.model.parameters()).device
    run.epoch_lrs, run.epoch_losses = [], []
    for group in _epoch_batches([len(e["input_ids"]) for e in encoded], cfg, epoch):
        for micro in group:
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in micro], pad_id).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16"):
                loss = run.model(**batch).loss  # mean token CE over response tokens
            (loss / len(group)).backward()
            run.epoch_losses.append(loss.item())
        run.epoch_lrs.append(run.optimizer.param_groups[0]["lr"])
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
        if progress:
            progress("warmup", run.step, total)


def _save_epoch(run: _Run, cfg: WarmupConfig, out_dir: Path, epoch: int, fp: str) -> None:
    """Write the epoch to a temp dir and rename it: a kill leaves either all of it or nothing."""
    tmp = out_dir / f".epoch_{epoch}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    run.model.save_pretrained(str(tmp))
    params = dict(run.model.named_parameters())
    moments = {}
    for name in run.names:
        state = run.optimizer.state[params[name]]
        moments[f"{name}.exp_avg"] = state["exp_avg"].detach().float().cpu().contiguous()
        moments[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().float().cpu().contiguous()
    save_file(moments, str(tmp / MOMENTS_FILE))
    torch.save(_resume_state(run), tmp / STATE_FILE)
    meta = {"epoch": epoch, "lr": sum(run.epoch_lrs) / len(run.epoch_lrs), "steps": run.step,
            "epoch_steps": len(run.epoch_lrs), "loss": sum(run.epoch_losses) / len(run.epoch_losses),
            "fingerprint": fp, "config": cfg.to_dict()}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(epoch_dir(out_dir, epoch), ignore_errors=True)  # an incomplete dir of a killed run
    os.replace(tmp, epoch_dir(out_dir, epoch))


def _resume_state(run: _Run) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "step": run.step, "param_names": run.names, "cpu_rng": torch.get_rng_state(),
            "cuda_rng": cuda}


def _resume(run: _Run, path: Path) -> None:
    """Restore adapter, optimizer, scheduler and RNG exactly as they were after that epoch."""
    from peft import set_peft_model_state_dict

    state = torch.load(path / STATE_FILE, weights_only=True)
    if state["param_names"] != run.names:
        raise CurationError(f"{path}: saved optimizer state belongs to different LoRA parameters")
    set_peft_model_state_dict(run.model, load_file(str(path / "adapter_model.safetensors")),
                              adapter_name=ADAPTER_NAME)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.step = state["step"]
    torch.set_rng_state(state["cpu_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def finetune(model, tokenizer, examples: Sequence[Messages], cfg: WarmupConfig, out_dir: Path) -> Path:
    """Train a fresh LoRA adapter on `examples`; the adapter dir of the last epoch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpts = run_warmup(model, tokenizer, list(examples), cfg, out_dir)
    return ckpts[-1].path
