"""Representation similarity (METHODS.md §5): cosine of last-token hidden states.

Each pool example and each validation pair (prompt + chosen) is encoded exactly as training
sees it (`model.encode`: chat template, truncation) and run through the *base* model of the
run's `ModelConfig`, without any LoRA adapter: the baseline asks what the pretrained model
already considers similar, and needs no warmup. The feature is the last layer's hidden state
(after the final norm) at the last real token; ``S[z, v]`` is the cosine, then the ROSE
aggregation (mean per subtask, max over subtasks).

Batches are right-padded (`model.collate`) and bucketed by length; the last real token is
found from the attention mask, which works for either padding side. Right padding keeps
positions identical to an unpadded forward pass, so a feature does not depend on which
examples share its batch.

On disk (``workdir/repsim/``): ``train.npy [n, d]`` and ``val.npy [n_pairs, d]``, unit-norm
float32 rows, plus ``example_ids.npy``. ``train.npy`` is written chunk by chunk through a
memmap, so memory stays at one chunk; disk is 4·n·d bytes (16 GB for 1M examples at d = 4096).

A finished ``train.npy`` is also kept in the workspace's state cache (`engine.statecache`): a
later run on the same pool and model reads it instead of running the model over the pool (its
"pool states" stage passes in moments).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from curation.engine.influence import aggregate, normalise_rows, subtask_index
from curation.engine.model import collate, encode, encode_pair, length_buckets, pad_token_id, tokenizer_hash
from curation.engine.statecache import cached_states, describe, keep_states, link_or_copy, states_key
from curation.engine.models import load_model
from curation.errors import CurationError
from curation.methods.base import (
    Messages,
    Method,
    ScoreInputs,
    ScoreLabels,
    ScoreOutput,
    ValPair,
    method_options,
    output_from_means,
    register,
)

FEATURE_DIR = "repsim"
IDS_FILE = "example_ids.npy"
DEFAULTS = {"batch_size": 16, "chunk": 1024}
PREVIEW = 160


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended token of every row, for left or right padding."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).to(torch.long).argmax(dim=1)


@torch.no_grad()
def last_token_states(model, sequences: Sequence[list[int]], pad_id: int, batch_size: int) -> np.ndarray:
    """``[len(sequences), d]`` float32: the final-layer hidden state at each sequence's last
    token, computed in length-bucketed batches and returned in the given order."""
    out: np.ndarray | None = None
    device = next(model.parameters()).device
    for bucket in length_buckets([len(s) for s in sequences], batch_size):
        batch = collate([{"input_ids": sequences[i], "labels": sequences[i]} for i in bucket], pad_id)
        mask = batch["attention_mask"].to(device)
        hidden = model.base_model(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
        states = hidden[torch.arange(len(bucket), device=device), last_positions(mask)].float().cpu().numpy()
        if out is None:
            out = np.empty((len(sequences), states.shape[1]), np.float32)
        out[bucket] = states
    if out is None:
        raise CurationError("no sequences to encode")
    return out


def pair_sequences(tok, pairs: Sequence[ValPair], max_length: int) -> list[list[int]]:
    return [encode_pair(tok, p.prompt_messages, p.chosen, max_length)["input_ids"] for p in pairs]


@register
class RepSim(Method):
    """Pool examples whose base-model representation points where the target task's does."""

    name = "repsim"
    option_spec = DEFAULTS
    labels = ScoreLabels("RepSim", "cosine of the base model's last-token hidden state with each pair's, averaged "
                                   "per subtask; the best subtask is the score",
                         per_subtask="mean hidden-state cosine", per_pair="hidden-state cosine")
    description = "cosine of last-token last-layer hidden states (base model, no adapter)"

    def score(self, inputs: ScoreInputs) -> ScoreOutput:
        opts = method_options(self.name, inputs.config, DEFAULTS)
        cfg, rep = inputs.config.model, inputs.reporter
        rep.stage("load model")
        model, tok = load_model(cfg, inputs.workspace.home, progress=lambda s, d, t: rep.update(d, t))
        pad, bs = pad_token_id(tok), int(opts["batch_size"])

        def features(seqs: Sequence[list[int]]) -> np.ndarray:
            return normalise_rows(last_token_states(model, seqs, pad, bs))

        rep.stage("validation states", len(inputs.pairs))
        V = features(pair_sequences(tok, inputs.pairs, cfg.max_length))
        index, subtasks = subtask_index([p.subtask for p in inputs.pairs])
        out = Path(inputs.workdir) / FEATURE_DIR
        out.mkdir(parents=True, exist_ok=True)
        home, hashes, n = inputs.workspace.home, inputs.content_hashes, len(inputs.example_ids)
        about = describe(cfg.name_or_path, cfg.dtype, cfg.max_length, next(model.parameters()).device.type, hashes)
        key = states_key(about, tokenizer_hash(tok), model.config.to_json_string(use_diff=False)) if hashes else None
        cached = cached_states(home, key, (n, V.shape[1])) if key else None
        train = out / "train.npy"
        train.unlink(missing_ok=True)  # it may be a hard link to the cache: never write through it
        if cached is not None:  # the run's train.npy is the cache's file; no model forward over the pool
            link_or_copy(Path(cached.filename), train)
            means = self._pool_means(inputs, lambda lo, hi: np.asarray(cached[lo:hi]), V, index, len(subtasks),
                                     int(opts["chunk"]))
        else:
            sink = np.lib.format.open_memmap(train, mode="w+", dtype=np.float32, shape=(n, V.shape[1]))
            ids, max_length = inputs.example_ids, cfg.max_length
            encoded = lambda lo, hi: features([encode(tok, m, max_length)["input_ids"]  # noqa: E731
                                               for m in inputs.fetch(ids[lo:hi])])
            means = self._pool_means(inputs, encoded, V, index, len(subtasks), int(opts["chunk"]), sink)
            sink.flush()
            del sink
            if key:
                keep_states(home, key, about, train)
        np.save(out / "val.npy", V)
        np.save(out / IDS_FILE, np.asarray(inputs.example_ids, np.int64))
        return output_from_means(means, subtasks, {"model": cfg.name_or_path, "adapter": None,
                                                   "hidden_size": int(V.shape[1])})

    @staticmethod
    def _pool_means(inputs: ScoreInputs, states: Callable[[int, int], np.ndarray], V: np.ndarray, index: np.ndarray,
                    n_sub: int, chunk: int, sink: np.ndarray | None = None) -> np.ndarray:
        """The pool's per-subtask mean cosines ``[n, n_sub]``, ``chunk`` examples' states at a time
        (computed or cached), each chunk also written to ``sink`` when given: memory stays at one chunk."""
        rep, n = inputs.reporter, len(inputs.example_ids)
        means = np.empty((n, n_sub), np.float32)
        rep.stage("pool states", n)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            T = states(start, end)
            if sink is not None:
                sink[start:end] = T
            means[start:end] = aggregate(T @ V.T, index, n_sub)
            rep.update(end)
        return means

    def explain(self, workdir: Path, example_id: int, messages: Messages,
                pairs: Sequence[ValPair]) -> dict[str, Any]:
        """The validation pairs whose representation is closest to the example's, with cosines."""
        d = Path(workdir) / FEATURE_DIR
        if not (d / IDS_FILE).is_file():
            return {}
        n_val = len(np.load(d / "val.npy", mmap_mode="r"))
        if n_val != len(pairs):
            return {"note": f"the preference set has {len(pairs)} pairs, the run scored {n_val}; score again"}
        cos = self.pair_scores(workdir, example_id, messages, pairs)
        order = np.lexsort((np.arange(len(cos)), -cos))[:5]
        return {"most similar validation pairs": [
            {"pair": int(j) + 1, "subtask": pairs[j].subtask, "cosine": round(float(cos[j]), 4),
             "prompt": pairs[j].prompt[:PREVIEW], "chosen": pairs[j].chosen[:PREVIEW]} for j in order]}

    def pair_scores(self, workdir: Path, example_id: int, messages: Messages,
                    pairs: Sequence[ValPair]) -> np.ndarray | None:
        """Cosine of the example's stored hidden state with every pair's; None when the run's
        features are missing or were made for another number of pairs."""
        d = Path(workdir) / FEATURE_DIR
        if not (d / IDS_FILE).is_file():
            return None
        V = np.load(d / "val.npy")
        if len(V) != len(pairs):
            return None
        rows = np.flatnonzero(np.load(d / IDS_FILE) == example_id)
        if not len(rows):
            raise CurationError(f"example {example_id} was not scored by this run")
        return V @ np.load(d / "train.npy", mmap_mode="r")[int(rows[0])]
