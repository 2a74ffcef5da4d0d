"""Influence scores from stored features (METHODS.md §0 stage 4).

    S_i = T_i · V_iᵀ                 cosines: both sides are L2-normalised features
    S   = Σ_i w_i S_i                 w_i = epoch-mean learning rate of checkpoint i, sum 1
    score(z) = max_subtask mean_{v in subtask} S[z, v]

Because the subtask mean is linear, ``mean_sub(S) = Σ_i w_i mean_sub(S_i)``: each checkpoint
is reduced to ``[rows, n_subtasks]`` right after its matmul, and ``S`` itself (n_train x n_val)
is never stored. Rows are renormalised in float32 (fp16 storage loses ~1e-3 of the norm).

Streaming and memory. Train rows are processed in chunks of ``c`` rows; for each chunk every
checkpoint's rows are read from their memmapped shards, converted into one reused float32
buffer and multiplied. Peak resident memory (memmapped pages are reclaimable page cache)::

    4·n_ckpt·n_val·k                 validation features, float32
  + c·k·(4 + s)                      float32 chunk buffer (+ a stored-dtype copy, s = 2 for
                                     fp16, only when a chunk spans two shards)
  + 4·c·(n_val + n_ckpt·n_sub)       one checkpoint's cosines + the chunk's subtask means
  + n·(4·(n_sub + n_ckpt + 1) + 16)  the results (scores, means, per-checkpoint, driver, ids)

e.g. n = 1M, k = 8192, c = 256, 4 checkpoints, 18 x 5 validation pairs: about 0.2 GB.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from curation.engine.features import FeatureReader, atomic_write, fsync_dir, row_norms, save_npy_atomic
from curation.errors import CurationError

RESULT_DIR = "influence"
RESULT_VERSION = 1
_ARRAYS = ("scores", "subtask_means", "per_checkpoint", "driver", "example_ids", "weights")
_SAME_FEATURES = ("model", "tokenizer_hash", "projector", "k")  # must match across all inputs
# Memmapped shards are read-only and torch.from_numpy says so; we only read them. (A filter,
# not catch_warnings() per call: that is not thread-safe, and `score` runs worker threads.)
warnings.filterwarnings("ignore", message=r".*(not writable|non-writable)", category=UserWarning)


# ---------------------------------------------------------------------------- pure pieces


def checkpoint_weights(lrs: Sequence[float]) -> np.ndarray:
    """Epoch-mean learning rates renormalised to sum 1 (METHODS.md stage 4), float64."""
    w = np.asarray(lrs, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"checkpoint weights must be finite, >= 0, not all 0: {list(lrs)}")
    return w / w.sum()


def subtask_index(labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Integer subtask of every validation row, and the subtasks in first-appearance order."""
    names = list(dict.fromkeys(labels))
    pos = {name: i for i, name in enumerate(names)}
    return np.array([pos[x] for x in labels], dtype=np.int64), names


def aggregate(S: np.ndarray, index: np.ndarray, n_subtasks: int | None = None) -> np.ndarray:
    """Per-subtask mean of the columns of ``S [n, n_val]`` -> ``[n, n_subtasks]``.

    Done as one matmul with a ``[n_val, n_subtasks]`` averaging matrix, so any column order
    works (subtask-major "subtasks x shots" or interleaved).
    """
    index = np.asarray(index)
    n_sub = int(index.max()) + 1 if n_subtasks is None else n_subtasks
    counts = np.bincount(index, minlength=n_sub)
    if (counts == 0).any():
        raise ValueError(f"subtasks {np.flatnonzero(counts == 0).tolist()} have no items")
    avg = np.zeros((len(index), n_sub), dtype=S.dtype)
    avg[np.arange(len(index)), index] = 1.0 / counts[index]
    return S @ avg


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float32; all-zero rows stay zero (cosine 0, not NaN)."""
    x = np.array(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def padded_transpose(V: np.ndarray) -> np.ndarray:
    """``Vᵀ`` as a C-contiguous ``[k, m]`` array, zero columns added up to m = 16 when there
    are fewer: OpenBLAS's skinny sgemm ran 184k rows/s with 11 columns and 257k with 16
    (k = 8192, one core). `_cosines` drops the padding again."""
    k, n = V.shape[1], V.shape[0]
    out = np.zeros((k, max(n, 16)), np.float32)
    out[:, :n] = V.T
    return out


def _cosines(block: np.ndarray, Vt: np.ndarray, buf: np.ndarray, n_val: int | None = None,
             norms: np.ndarray | None = None) -> np.ndarray:
    """``normalise(block) · V`` in float32 via a reused buffer; ``Vt`` is ``Vᵀ`` as a
    C-contiguous ``[k, n_val]`` array.

    Measured on this project's 2-core CPU (k = 8192, 11 validation rows): the fp16 -> fp32
    conversion through torch is ~2x faster than numpy's; the skinny matmul is fastest as
    numpy ``T @ Vt`` with a contiguous, padded ``Vt`` (`padded_transpose`); 256-row chunks
    (8 MB) beat both smaller ones (call overhead) and larger ones (cache misses).
    """
    import torch  # lazily: BM25 and DSIR import this module's pure pieces and need no torch

    T = buf[: len(block)]
    torch.from_numpy(T).copy_(torch.from_numpy(np.ascontiguousarray(block)))
    norms = row_norms(T) if norms is None else norms  # stored norms: the same bits, one pass less
    S = (T @ Vt)[:, :n_val]
    S /= np.where(norms > 0, norms, 1)[:, None]
    return S


# ---------------------------------------------------------------------------- inputs


@dataclass
class ScoringInputs:
    """Everything stage 4 reads: one train reader and one validation matrix per checkpoint.

    ``val`` items may be arrays ``[n_val, k]`` or :class:`FeatureReader` of the val split
    (then model, tokenizer, projector and checkpoint are checked against the train side:
    features of different projections are not comparable, METHODS.md §0).
    """

    train: list[FeatureReader]
    val: list[np.ndarray | FeatureReader]
    weights: Sequence[float]  # epoch-mean learning rates (renormalised here)
    val_subtasks: list[str]  # subtask label of every validation row
    index: np.ndarray = field(init=False)
    subtasks: list[str] = field(init=False)
    val_t: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.train or len(self.train) != len(self.val) or len(self.val) != len(self.weights):
            raise ValueError("need one train reader, one val matrix and one weight per checkpoint")
        _check_compatible(self.train, self.val)
        self.weights = checkpoint_weights(self.weights)
        self.val = [normalise_rows(v.load_all() if isinstance(v, FeatureReader) else v)
                    for v in self.val]
        for v, t in zip(self.val, self.train):
            if v.shape != (len(self.val_subtasks), t.k):
                raise ValueError(f"val features {v.shape}, "
                                 f"expected {(len(self.val_subtasks), t.k)}")
            if not np.isfinite(v).all():
                raise ValueError("val features contain NaN or inf")
        self.index, self.subtasks = subtask_index(self.val_subtasks)
        self.val_t = [padded_transpose(v) for v in self.val]  # the layout `_cosines` multiplies

    @property
    def n(self) -> int:
        return self.train[0].n


def _check_compatible(train: list[FeatureReader], val: list) -> None:
    """Refuse to score features of different models, projections or example orders."""
    ref = train[0].manifest
    for t in train:
        if t.manifest.example_ids != ref.example_ids:
            raise CurationError(f"{t.dir}: example ids/order differ from {train[0].dir}")
    for t, v in zip(train, val):
        manifests = [t.manifest] + ([v.manifest] if isinstance(v, FeatureReader) else [])
        for m in manifests:
            if any(getattr(m, f) != getattr(ref, f) for f in _SAME_FEATURES):
                raise CurationError(f"{t.dir}: features of another model or projection")
        if isinstance(v, FeatureReader) and v.manifest.checkpoint != t.manifest.checkpoint:
            raise CurationError(f"{v.dir}: checkpoint {v.manifest.checkpoint!r} != "
                                f"train checkpoint {t.manifest.checkpoint!r}")


# ---------------------------------------------------------------------------- result


@dataclass
class InfluenceResult:
    """Per-example scores; ``per_checkpoint.sum(1) == scores`` (up to float32 rounding)."""

    scores: np.ndarray  # [n] float32: max over subtasks of the weighted mean cosine
    subtask_means: np.ndarray  # [n, n_subtasks] float32
    per_checkpoint: np.ndarray  # [n, n_ckpt] float32: w_i · mean cosine of the driver subtask
    driver: np.ndarray  # [n] int64: argmax subtask
    subtasks: list[str]
    example_ids: np.ndarray  # [n] int64, row order of the train features
    weights: np.ndarray  # [n_ckpt] float64, sum 1
    checkpoints: list[str]  # names of the per_checkpoint columns

    def save(self, run_dir: Path) -> Path:
        """Write ``run_dir/influence/`` atomically (temp dir, then rename over the old one)."""
        final = Path(run_dir) / RESULT_DIR
        tmp, old = (final.with_name(f".{RESULT_DIR}.{x}-{os.getpid()}") for x in ("tmp", "old"))
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in _ARRAYS:
            save_npy_atomic(tmp / f"{name}.npy", getattr(self, name))
        meta = {"version": RESULT_VERSION, "subtasks": self.subtasks,
                "checkpoints": self.checkpoints}
        atomic_write(tmp / "meta.json", lambda f: f.write(json.dumps(meta).encode()))
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
        return final

    @classmethod
    def load(cls, run_dir: Path) -> InfluenceResult:
        path = Path(run_dir) / RESULT_DIR
        if not (path / "meta.json").is_file():
            raise CurationError(f"no influence scores under {run_dir}; run the score stage")
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("version") != RESULT_VERSION:
            raise CurationError(f"{path}: result version {meta.get('version')}, "
                                f"expected {RESULT_VERSION}; score again")
        arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
        return cls(subtasks=meta["subtasks"], checkpoints=meta["checkpoints"], **arrays)


def _combine(M: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """``M [rows, n_ckpt, n_sub]`` per-checkpoint subtask means -> the result columns."""
    weighted = M * w.astype(np.float32)[None, :, None]
    means = weighted.sum(axis=1)
    driver = means.argmax(axis=1)
    per_ckpt = np.take_along_axis(weighted, driver[:, None, None], axis=2)[:, :, 0]
    return means[np.arange(len(M)), driver], means, per_ckpt, driver


def score(inputs: ScoringInputs, chunk_rows: int = 256, workers: int | None = None) -> InfluenceResult:
    """Stream all train rows in chunks of ``chunk_rows``; memory as in the module docstring.

    ``workers`` threads (default: torch's thread count, i.e. the run's ``threads``) take
    alternate chunks, each converting and multiplying on one core. Why not torch's and BLAS's
    own threads: on 2 cores torch's OpenMP workers spin while OpenBLAS's run, and the pair
    was 2.3x slower than one thread each (measured: 52k against 121k rows/s at k = 8192);
    two single-threaded workers reach 165k. Rows are independent, so the result is
    bit-identical for any ``workers``.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be positive")
    n, n_ckpt, n_sub = inputs.n, len(inputs.train), len(inputs.subtasks)
    out = InfluenceResult(
        scores=np.empty(n, np.float32), subtask_means=np.empty((n, n_sub), np.float32),
        per_checkpoint=np.empty((n, n_ckpt), np.float32), driver=np.empty(n, np.int64),
        subtasks=inputs.subtasks, example_ids=np.array(inputs.train[0].example_ids, np.int64),
        weights=inputs.weights, checkpoints=[t.manifest.checkpoint for t in inputs.train])
    import torch

    starts, n_val = list(range(0, n, chunk_rows)), len(inputs.val_subtasks)
    norms = [reader.norms() for reader in inputs.train]
    workers = max(1, min(workers or torch.get_num_threads(), len(starts)))

    def work(worker: int) -> None:
        buf = np.empty((min(chunk_rows, n), inputs.train[0].k), np.float32)
        M = np.empty((min(chunk_rows, n), n_ckpt, n_sub), np.float32)
        for start in starts[worker::workers]:
            end = min(start + chunk_rows, n)
            for i, (reader, Vt) in enumerate(zip(inputs.train, inputs.val_t)):
                C = _cosines(reader.rows(start, end), Vt, buf, n_val, norms[i][start:end])
                M[: end - start, i] = aggregate(C, inputs.index, n_sub)
            cols = _combine(M[: end - start], inputs.weights)
            for name, col in zip(("scores", "subtask_means", "per_checkpoint", "driver"), cols):
                getattr(out, name)[start:end] = col

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with threadpool_limits(1, user_api="blas"):
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, range(workers)))  # list(): re-raises a worker's error
    finally:
        torch.set_num_threads(threads)
    return out


# ---------------------------------------------------------------------------- explanations


@dataclass(frozen=True)
class ValMatch:
    """One validation item's alignment with a train example."""

    val_row: int
    subtask: str
    cosine: float  # Σ_i w_i cos_i (the quantity the subtask mean averages)
    per_checkpoint: tuple[float, ...]  # cos_i, unweighted


def val_cosines(inputs: ScoringInputs, row: int) -> np.ndarray:
    """``[n_ckpt, n_val]`` cosines of train row ``row`` with every validation item."""
    buf = np.empty((1, inputs.train[0].k), np.float32)
    return np.stack([_cosines(t.rows(row, row + 1), Vt, buf, len(inputs.val_subtasks))[0]
                     for t, Vt in zip(inputs.train, inputs.val_t)])


def top_val(inputs: ScoringInputs, row: int, n: int = 5) -> list[ValMatch]:
    """The ``n`` validation items most aligned with train row ``row`` (weighted cosine, desc;
    ties by val row): the "most aligned validation pairs" view."""
    C = val_cosines(inputs, row)
    total = inputs.weights.astype(np.float32) @ C
    order = np.lexsort((np.arange(len(total)), -total))[:n]
    return [ValMatch(int(j), inputs.subtasks[inputs.index[j]], float(total[j]),
                     tuple(float(c) for c in C[:, j])) for j in order]
