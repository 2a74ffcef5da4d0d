"""What the RAISE selector sees of an example at step t of T: its state, 39 numbers.

Static part, computed once per run with the helper model (the run's base model, no adapter):

* ``prompt_tokens``, ``response_tokens``: token counts after `model.encode` (the response is
  what the training loss scores: every assistant turn; the prompt is the rest);
* ``logp_y_given_x``: summed log-probability of those response tokens in the full conversation;
* ``logp_y``: the same replies scored alone (after an empty user turn, without the prompt);
* a semantic embedding: the mean of the last hidden layer over the example's tokens, reduced
  to 32 dimensions by PCA (hidden sizes above 256 are first projected to 256 by a seeded
  Gaussian matrix, so a 1M-example pool keeps 1 GB of embeddings in memory, not 16).

Dynamic part: the stage ``[(t-1)/T, t/T]`` and how often the example was already picked.

The network input (`state_matrix`): lengths as log1p then z-scored over the pool, log-probs
z-scored, the embedding divided by one factor (its first component's std, keeping the PCA's
variance ratios), the stage and the raw pick count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from curation.engine.features import atomic_write
from curation.engine.model import Messages, collate, encode, length_buckets

DIFFICULTY = ("prompt_tokens", "response_tokens", "logp_y_given_x", "logp_y")
EMBED_DIM = 32
STAGE = ("stage_start", "stage_end")
FEATURE_NAMES = (*STAGE, *DIFFICULTY, *(f"embedding_{i}" for i in range(EMBED_DIM)), "times_selected")
STATE_DIM = len(FEATURE_NAMES)  # 39
STATIC_DIM = len(DIFFICULTY) + EMBED_DIM
PROJECT_ABOVE = 256  # hidden sizes above this are randomly projected to it before PCA
STATIC_FILE = "static.npz"


@dataclass
class StaticFeatures:
    """The static state of every example, rows aligned with the run's example ids."""

    example_ids: np.ndarray  # [n] int64
    difficulty: np.ndarray  # [n, 4] float64, raw (DIFFICULTY order)
    embedding: np.ndarray  # [n, 32] float32, PCA and scaled
    clusters: np.ndarray  # [n] int32, k-means on the embedding

    def normalised(self) -> np.ndarray:
        """``[n, 36]`` float32: z-scored difficulty (lengths log1p first), then the embedding."""
        d = self.difficulty.astype(np.float64).copy()
        d[:, :2] = np.log1p(d[:, :2])
        std = d.std(axis=0)
        d = (d - d.mean(axis=0)) / np.where(std > 0, std, 1.0)
        return np.concatenate([d, self.embedding], axis=1).astype(np.float32)

    def save(self, folder: Path, meta: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / STATIC_FILE, lambda f: np.savez(
            f, example_ids=self.example_ids, difficulty=self.difficulty, embedding=self.embedding,
            clusters=self.clusters, meta=np.array(json.dumps(meta, sort_keys=True))))

    @classmethod
    def load(cls, folder: Path, meta: dict | None = None) -> StaticFeatures | None:
        """The stored features, or None when absent or made for other settings (``meta``)."""
        path = Path(folder) / STATIC_FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            if meta is not None and json.loads(str(z["meta"])) != json.loads(json.dumps(meta, sort_keys=True)):
                return None
            return cls(z["example_ids"], z["difficulty"], z["embedding"], z["clusters"])


def assistant_only(messages: Messages) -> list[dict[str, str]]:
    """The replies after an empty user turn: what log P(y) scores (chat templates refuse a
    conversation that starts with the assistant)."""
    return [{"role": "user", "content": ""}, *(dict(m) for m in messages if m["role"] == "assistant")]


@torch.no_grad()
def response_stats(model, encoded: Sequence[dict[str, list[int]]], pad_id: int, batch_size: int,
                   pooled: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per sequence: summed log-prob of its labelled tokens, their count and (``pooled``) the
    mean last hidden state over its tokens; length-bucketed, returned in the given order.

    The shift and position ids are `objectives.token_logprobs`'s (right padding = unpadded);
    logits are the output embedding of the last hidden state, computed only at scored positions
    (true of Llama, SmolLM2, Qwen, Mistral; a model with logit soft-capping would differ).
    """
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    n = len(encoded)
    logp, counts, hidden = np.zeros(n, np.float64), np.zeros(n, np.int64), None
    for bucket in length_buckets([len(e["input_ids"]) for e in encoded], batch_size):
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in bucket], pad_id).items()}
        mask = batch["attention_mask"]
        h = model.base_model(input_ids=batch["input_ids"], attention_mask=mask,
                             position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False).last_hidden_state
        targets = batch["labels"][:, 1:]
        scored = targets != -100
        picked = head(h[:, :-1][scored]).float().log_softmax(-1)  # logits only where the loss scores
        lp = picked.gather(-1, targets[scored][:, None]).squeeze(-1).double()
        rows = scored.nonzero()[:, 0]
        logp[bucket] = lp.new_zeros(len(bucket)).index_add(0, rows, lp).cpu().numpy()
        counts[bucket] = scored.sum(-1).cpu().numpy()
        if pooled:
            mean = (h.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            if hidden is None:
                hidden = np.zeros((n, mean.shape[1]), np.float32)
            hidden[bucket] = mean.cpu().numpy()
    return logp, counts, hidden


def difficulty_features(model, tok, messages: Sequence[Messages], max_length: int, pad_id: int,
                        batch_size: int, projection: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``([n, 4] difficulty, [n, h] pooled hidden)`` of a chunk of examples (see module doc)."""
    full = [encode(tok, m, max_length) for m in messages]
    alone = [encode(tok, assistant_only(m), max_length) for m in messages]
    logp_yx, n_resp, hidden = response_stats(model, full, pad_id, batch_size, pooled=True)
    logp_y, _, _ = response_stats(model, alone, pad_id, batch_size)
    n_tokens = np.array([len(e["input_ids"]) for e in full], np.int64)
    diff = np.stack([n_tokens - n_resp, n_resp, logp_yx, logp_y], axis=1).astype(np.float64)
    return diff, hidden if projection is None else hidden @ projection


def gaussian_projection(hidden_size: int, seed: int) -> np.ndarray | None:
    """A seeded ``[hidden, 256]`` Gaussian map for large hidden sizes (None: keep them)."""
    if hidden_size <= PROJECT_ABOVE:
        return None
    rng = np.random.default_rng([seed, hidden_size])
    return (rng.standard_normal((hidden_size, PROJECT_ABOVE)) / np.sqrt(PROJECT_ABOVE)).astype(np.float32)


def reduce_embedding(hidden: np.ndarray, seed: int, dim: int = EMBED_DIM) -> np.ndarray:
    """PCA to ``dim`` components (zero-padded when fewer exist), scaled so the first has std 1."""
    from sklearn.decomposition import PCA

    n, h = hidden.shape
    k = min(dim, n, h)
    solver = "full" if n * h <= 20_000_000 else "randomized"
    z = PCA(n_components=k, svd_solver=solver, random_state=seed).fit_transform(hidden.astype(np.float64))
    scale = z[:, 0].std() if n > 1 else 0.0
    out = np.zeros((n, dim), np.float32)
    out[:, :k] = z / (scale if scale > 0 else 1.0)
    return out


def kmeans_clusters(embedding: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """K-means cluster of every example (at most one cluster per example)."""
    from sklearn.cluster import KMeans

    c = max(1, min(n_clusters, len(embedding)))
    if c == 1:
        return np.zeros(len(embedding), np.int32)
    km = KMeans(n_clusters=c, n_init=4, random_state=seed)
    return km.fit_predict(embedding.astype(np.float64)).astype(np.int32)


def compute_static(model, tok, example_ids: Sequence[int], fetch: Callable[[Sequence[int]], list[Messages]],
                   max_length: int, pad_id: int, batch_size: int, n_clusters: int, seed: int,
                   chunk: int = 256, progress: Callable[[int], None] | None = None) -> StaticFeatures:
    """Static state features of the whole pool, ``chunk`` examples fetched at a time."""
    ids = list(example_ids)
    diff = np.zeros((len(ids), len(DIFFICULTY)), np.float64)
    hidden, projection = None, None
    for start in range(0, len(ids), chunk):
        part = ids[start: start + chunk]
        if hidden is None:  # the first chunk tells the hidden size
            probe = difficulty_features(model, tok, fetch(part[:1]), max_length, pad_id, 1, None)[1]
            projection = gaussian_projection(probe.shape[1], seed)
            width = probe.shape[1] if projection is None else projection.shape[1]
            hidden = np.zeros((len(ids), width), np.float32)
        d, h = difficulty_features(model, tok, fetch(part), max_length, pad_id, batch_size, projection)
        diff[start: start + len(part)], hidden[start: start + len(part)] = d, h
        if progress:
            progress(start + len(part))
    embedding = reduce_embedding(hidden, seed)
    return StaticFeatures(np.asarray(ids, np.int64), diff, embedding, kmeans_clusters(embedding, n_clusters, seed))


def stage_of(start: int, end: int, total: int) -> tuple[float, float]:
    """The stage of steps ``start..end-1`` (0-based) of ``total``: ``[(t-1)/T, t/T]`` for one step."""
    return start / total, end / total


def state_matrix(static_norm: torch.Tensor, stage: tuple[float, float], picks: torch.Tensor) -> torch.Tensor:
    """``[n, 39]`` rows in `FEATURE_NAMES` order: the stage, the static features, the picks so far."""
    n = static_norm.shape[0]
    stage_cols = torch.tensor(stage, dtype=static_norm.dtype).expand(n, 2)
    return torch.cat([stage_cols, static_norm, picks.to(static_norm.dtype)[:, None]], dim=1)
