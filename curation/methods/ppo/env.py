"""RAISE's environment: a short LoRA fine-tune from the initial model, and its validation loss.

Every episode restarts from the same initial adapter (PEFT's init, seeded: lora_B = 0, so the
initial model is the base model) with a fresh AdamW at a constant learning rate; a step is one
optimizer step on the selected batch (mean token cross-entropy over response tokens, the
warmup's loss). The validation loss is the curator's preference set: the DPO loss of every pair
(π_ref = the adapter-disabled model, computed once) or, with ``reward = "sft"``, the mean token
cross-entropy of the chosen responses. The reward of a decision is the drop of that loss.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from curation.engine.model import Messages, collate, encode, encode_pair, length_buckets, pad_token_id
from curation.engine.objectives import token_logprobs
from curation.engine.warmup import ADAPTER_NAME, WarmupConfig

if TYPE_CHECKING:  # importing curation.methods here would import this module back
    from curation.methods.base import ValPair

CACHE_LIMIT = 50_000  # encoded examples kept between steps (a big pool is fetched on demand)


class Examples:
    """Encoded pool examples by database id, fetched on demand and cached."""

    def __init__(self, fetch: Callable[[Sequence[int]], list[Messages]], tok, max_length: int):
        self.fetch, self.tok, self.max_length = fetch, tok, max_length
        self.cache: dict[int, dict[str, list[int]]] = {}

    def get(self, ids: Sequence[int]) -> list[dict[str, list[int]]]:
        missing = [int(i) for i in dict.fromkeys(ids) if int(i) not in self.cache]
        if len(self.cache) + len(missing) > CACHE_LIMIT:
            self.cache.clear()
        if missing:
            for i, m in zip(missing, self.fetch(missing)):
                self.cache[i] = encode(self.tok, m, self.max_length)
        return [self.cache[int(i)] for i in ids]


class FineTuneEnv:
    """LoRA on the base model (wrapped in place; `close` unwraps it), reset per episode."""

    def __init__(self, model, tok, pairs: Sequence[ValPair], lora: WarmupConfig, lr: float, reward: str,
                 beta: float, max_length: int, batch_size: int = 16):
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(lora.seed)
        cfg = LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                         target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.model = get_peft_model(model, cfg, adapter_name=ADAPTER_NAME)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.initial = [p.detach().clone() for p in self.params]
        self.lr, self.weight_decay, self.reward, self.beta = lr, lora.weight_decay, reward, beta
        self.pad, self.batch_size = pad_token_id(tok), batch_size
        self.device = next(self.model.parameters()).device
        self.val = [encode_pair(tok, p.prompt_messages, y, max_length) for p in pairs for y in (p.chosen, p.rejected)]
        with self.model.disable_adapter():
            self.ref_logp, self.val_tokens = self._val_logprobs()
        self.optimizer: torch.optim.Optimizer | None = None
        self.initial_loss = self.val_loss()

    def reset(self) -> None:
        """Back to the initial adapter and a fresh optimizer."""
        with torch.no_grad():
            for p, p0 in zip(self.params, self.initial):
                p.copy_(p0)
        self.optimizer = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=self.weight_decay)

    def train_step(self, encoded: Sequence[dict[str, list[int]]]) -> float:
        """One optimizer step on the batch; its training loss."""
        self.model.train()
        batch = {k: v.to(self.device) for k, v in collate(list(encoded), self.pad).items()}
        loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.item())

    @torch.no_grad()
    def _val_logprobs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response log-probs and token counts of every validation row (chosen, rejected, ...)."""
        self.model.eval()
        logp = torch.zeros(len(self.val), dtype=torch.float64)
        count = torch.zeros(len(self.val), dtype=torch.float64)
        for bucket in length_buckets([len(e["input_ids"]) for e in self.val], self.batch_size):
            batch = {k: v.to(self.device) for k, v in collate([self.val[i] for i in bucket], self.pad).items()}
            lp, n = token_logprobs(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            logp[bucket], count[bucket] = lp.double().cpu(), n.double().cpu()
        return logp, count

    def val_loss(self) -> float:
        """Mean DPO loss of the pairs (or mean chosen-token cross-entropy) under the current adapter."""
        logp, count = self._val_logprobs()
        if self.reward == "sft":
            return float((-logp[0::2] / count[0::2].clamp(min=1)).mean())
        h = logp - self.ref_logp
        return float(-F.logsigmoid(self.beta * (h[0::2] - h[1::2])).mean())

    def close(self):
        """The bare base model again (the LoRA layers removed, not merged)."""
        return self.model.unload()
