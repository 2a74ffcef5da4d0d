"""Downstream check of a selection: LoRA-tune the base model on it, then exact match on held-out prompts.

Every fine-tune starts from the bare base model with a fresh adapter (seeded init and batch
order) and is trained by `curation.engine.warmup.run_warmup`, the same loop the scoring warmup uses.

Budget matching. Every selection at p% of an N-example pool has exactly n_p = ceil(p·N/100)
examples (`select.budget_from`), and each is trained for the same number of epochs
``E_p = max(epochs, ceil(min_steps / ceil(n_p / batch_size)))``, hence the same number of
optimizer steps ``S_p = E_p · ceil(n_p / batch_size)`` and example visits, whatever the method.
``min_steps`` keeps the 1% selections from getting only a handful of steps. The full pool gets
``full_pool_epochs`` epochs (more steps than any selection: it is the reference, not a peer).

Evaluation: greedy decoding (no sampling) of each held-out prompt rendered with the chat
template's generation prompt, cut at the first eos, left-padded batches (attention mask and
position ids follow the padding, so a prompt's answer does not depend on its batch).
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from curation.engine.generation import render_prompt
from curation.engine.model import Messages, pad_token_id
from curation.engine.warmup import ALL_LINEAR, WarmupConfig, finetune

Evals = Mapping[str, tuple[Sequence[dict], Callable[[dict, str], bool]]]  # target -> (held-out, check)


@dataclass
class DownstreamConfig:
    """Fine-tune and evaluation settings, the same for every selection.

    Defaults for the tiny model: LoRA on every linear layer (r 16) at lr 3e-3; attention-only
    r 8 at 1e-3 (the warmup's setting) barely moves held-out accuracy on any family.
    """

    percents: tuple[float, ...] = (1.0, 5.0, 10.0)  # selections that get a downstream check
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 5
    min_steps: int = 60
    full_pool_epochs: int = 2
    lr: float = 3e-3
    batch_size: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    target_modules: tuple[str, ...] = ALL_LINEAR
    max_length: int = 256
    max_new_tokens: int = 48
    eval_batch_size: int = 32

    def epochs_for(self, n_examples: int) -> int:
        """E_p: the epochs every selection of this size gets (see the module docstring)."""
        per_epoch = math.ceil(n_examples / self.batch_size)
        return max(self.epochs, math.ceil(self.min_steps / per_epoch))

    def steps_for(self, n_examples: int, epochs: int | None = None) -> int:
        return (epochs or self.epochs_for(n_examples)) * math.ceil(n_examples / self.batch_size)

    def train_config(self, epochs: int, seed: int) -> WarmupConfig:
        return WarmupConfig(percent=100.0, epochs=epochs, lr=self.lr, lora_r=self.lora_r,
                            lora_alpha=self.lora_alpha, target_modules=self.target_modules,
                            batch_size=self.batch_size, max_length=self.max_length, seed=seed)


def _stop_at_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


@torch.no_grad()
def greedy_responses(model, tokenizer, prompts: Sequence[Messages], max_new_tokens: int,
                     batch_size: int) -> list[str]:
    """Greedy continuation of every prompt (chat template + generation prompt), in input order."""
    device = next(model.parameters()).device
    pad, eos = pad_token_id(tokenizer), tokenizer.eos_token_id
    encoded = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=not tokenizer.chat_template)["input_ids"]
               for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))  # little padding
    out: list[str] = [""] * len(encoded)
    for lo in range(0, len(order), batch_size):
        rows = order[lo: lo + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):  # left padding: every prompt ends where generation starts
            ids[j, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[j, width - len(encoded[i]):] = 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad)
        for j, i in enumerate(rows):
            tail = _stop_at_eos(gen[j, width:].tolist(), eos)
            out[i] = tokenizer.decode(tail, skip_special_tokens=True).strip()
    return out


def accuracy(model, tokenizer, heldout: Sequence[dict], check: Callable[[dict, str], bool],
             cfg: DownstreamConfig) -> float:
    """Exact-match share of the held-out records under greedy decoding."""
    was_training = model.training
    model.eval()
    try:
        responses = greedy_responses(model, tokenizer, [[{"role": "user", "content": h["prompt"]}] for h in heldout],
                                     cfg.max_new_tokens, cfg.eval_batch_size)
    finally:
        model.train(was_training)
    return sum(bool(check(h, r)) for h, r in zip(heldout, responses)) / len(heldout)


def tuned_accuracy(model, tokenizer, examples: Sequence[Messages], train_cfg: WarmupConfig,
                   evals: dict[str, tuple[Sequence[dict], Callable]], cfg: DownstreamConfig,
                   work_dir: Path) -> tuple[dict[str, float], float, float]:
    """Fine-tune on `examples`, evaluate on every target's held-out set, delete the adapter.

    Returns ({target: accuracy}, train seconds, eval seconds); `model` is the bare base model
    again afterwards (the adapter is loaded on top, then unloaded).
    """
    from peft import PeftModel

    t0 = time.perf_counter()
    adapter = finetune(model, tokenizer, examples, train_cfg, work_dir)
    t1 = time.perf_counter()
    tuned = PeftModel.from_pretrained(model, str(adapter))
    try:
        accs = {name: accuracy(tuned, tokenizer, heldout, check, cfg) for name, (heldout, check) in evals.items()}
    finally:
        tuned.unload()
        shutil.rmtree(work_dir, ignore_errors=True)  # ~MBs per epoch: only the accuracy is kept
    return accs, t1 - t0, time.perf_counter() - t1


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and *population* standard deviation (ddof=0) over seeds; 0.0 for a single seed."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=0))


def ci95(values: Sequence[float]) -> list[float] | None:
    """Student-t 95% interval of the mean over seeds; None for a single seed."""
    from scipy import stats
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2:
        return None
    half = stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return [float(arr.mean() - half), float(arr.mean() + half)]


@dataclass
class DownstreamResult:
    """Accuracy per seed of every (method, percent), with budgets and wall times."""

    per_seed: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # method -> percent -> [acc]
    budgets: dict[str, dict[str, int]] = field(default_factory=dict)  # percent -> examples/epochs/steps
    cost: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> train_s/eval_s
    base_accuracy: float = 0.0  # the base model without any fine-tune


def run_downstream(model, tokenizer, sets: Mapping[str, Mapping[str, Mapping[str, list]]], full_pool: list,
                   evals: Evals, cfg: DownstreamConfig, work: Path, log: Callable[[str], None]) -> DownstreamResult:
    """Fine-tune and evaluate every selection of ``sets`` (method -> percent -> target -> examples)
    for every seed, then the full pool ("full_pool" / "100", one model for all targets).

    With several targets a seed's accuracy is the mean over targets, each target's model tuned on
    that target's selection.
    """
    out = DownstreamResult(base_accuracy=float(np.mean([accuracy(model, tokenizer, h, c, cfg)
                                                        for h, c in evals.values()])))
    jobs = [(m, pk, by_target) for m, by_pct in sets.items() for pk, by_target in by_pct.items()]
    jobs.append(("full_pool", "100", {"*": full_pool}))
    for method, pk, by_target in jobs:
        n = {len(v) for v in by_target.values()}.pop()  # selections at one percent share their size
        epochs = cfg.full_pool_epochs if method == "full_pool" else cfg.epochs_for(n)
        budget = {"examples": n, "epochs": epochs, "steps": cfg.steps_for(n, epochs)}
        if out.budgets.setdefault(pk, budget) != budget:
            raise ValueError(f"unmatched budget at {pk}%: {budget} vs {out.budgets[pk]}")
        cost = out.cost.setdefault(method, {"train_s": 0.0, "eval_s": 0.0})
        accs = []
        for seed in cfg.seeds:
            per_target = []
            for target, examples in by_target.items():
                todo = evals if target == "*" else {target: evals[target]}
                got, train_s, eval_s = tuned_accuracy(model, tokenizer, examples, cfg.train_config(epochs, seed),
                                                      todo, cfg, work / f"{method}-{pk}-{seed}")
                per_target += list(got.values())
                cost["train_s"] += train_s
                cost["eval_s"] += eval_s
            accs.append(float(np.mean(per_target)))
        out.per_seed.setdefault(method, {})[pk] = accs
        mean, std = mean_std(accs)
        log(f"{method} @ {pk}%: accuracy {mean:.3f} ± {std:.3f} over {len(accs)} seeds ({budget['steps']} steps)")
    out.cost = {m: {k: round(v, 2) for k, v in c.items()} for m, c in out.cost.items()}
    return out
