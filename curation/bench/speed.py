"""`bench speed`: the engine against the LESS way, the FLOP floor, and scoring against a scan.

All in one process, on one model, one data set, one ``k`` and one Adam transform:

* **Feature extraction.** The model is the default one (or ``--model``) with a fresh LoRA
  adapter as the warmup makes it (``WarmupConfig`` r, alpha, targets), eval mode, a seeded
  random ``lora_B`` (PEFT's zero init would make half the gradient zero); the data are the
  first ``n`` demo-pool examples through :func:`curation.engine.model.encode`; the objective is SFT
  with seeded random Adam moments (``v`` ~ g², ``m`` ~ 0.1·|g| per layer, so the Adam
  direction still depends on the example). Variants, each timed best-of-``repeats`` with
  the repeats interleaved (other processes share the cores):

  - ``engine``: the production path, ``methods.gradient.ordered_features`` (length-bucketed
    batches, :class:`~curation.engine.grads.PerSampleGradients`, :class:`SparseJLProjector`).
  - ``less_way`` (the reference): what LESS's ``collect_grads`` does, on CPU: batch size 1,
    one backward per example, Adam direction, the full gradients of every
    ``project_interval`` (16) examples stacked and projected by a dense Rademacher matrix
    that is generated anew, block by block, at every call (trak's ``BasicProjector``;
    :class:`DenseRademacherProjector` without cache).
  - ``less_way_per_item``: the same but projecting every example on its own
    (``iter_features(loop=True)`` with the uncached dense projector): 16x the random draws.
  - ``loop_sparse`` and ``batched_dense_cached``: one change each, to show where the speed
    comes from (the dense cache is skipped when ``d·k`` floats exceed the limit).

  The slow variants run on evenly spread subsets of the ``n`` examples (nested, so their
  lengths look like the whole); throughput is per example (tokens/s is reported too).
  ``speedup_vs_less_way`` = engine examples/s ÷ ``less_way`` examples/s. Work is checked to
  be equal: engine vs ``loop_sparse`` and ``batched_dense_cached`` vs ``less_way`` (same
  projector each) must agree to a cosine > 0.9999 on every compared example.

* **FLOP floor.** ``P`` = weights of every ``nn.Linear`` (base, LoRA, lm_head; embedding
  lookups are free), ``T`` = non-padded tokens, attention forward
  ``A = 2·layers·d_attn·Σ L(L+1)`` (causal QKᵀ and AV). Floor = ``3·(2·P·T + A)``, i.e. the
  usual 2P forward + 4P backward per token. ``flop_floor_fraction`` = floor ÷ engine
  seconds ÷ peak, peak = best ``torch.mm`` of two ``s × s`` fp32 matrices, same device and
  threads, timed before and after the features. With a frozen base the backward needs no
  base weight gradients: ``4·P·T + 2·P_lora·T + 3·A`` is the tighter floor, reported as
  ``flop_floor_fraction_frozen_base``.

* **Scoring.** ``scoring_rows × k`` random unit rows in float16 written with
  :class:`FeatureWriter`; ``influence.score`` (one checkpoint, ``val_subtasks × val_shots``
  validation items) against a scan that memory-maps every shard (``np.load``) and sums its
  bytes as uint64 words, shard by shard. The file was just written, so both read from page
  cache; they run scan, score, scan, score and the best of each counts.
  ``scoring_vs_bandwidth`` = score rows/s ÷ scan rows/s. With many validation items the
  scoring matmul (``2·k·n_val`` FLOPs per row) is the real bound, so the time of that many
  FLOPs at the measured peak is reported too (``scoring_vs_compute_floor``).

* **Presets** (``--presets``, instead of the above): train-feature throughput of every preset
  (`curation.config.PRESETS`) against the default, measured in the same process with the
  repeats interleaved, so the ratio ``speedup`` holds on a loaded machine even when the absolute
  rate does not. Per preset: its max length (the quantile of these examples' token lengths,
  capped by ``max_length``), its top-L LoRA layers (`grads.top_layers`) and its number of
  checkpoints; ``examples_per_s`` = n ÷ (seconds of one checkpoint's features × checkpoints).
  The warmup (shared by every preset) and the validation features (a few pairs) are left out.

Threads: one by default, for torch and (through threadpoolctl, when installed) numpy's BLAS.
On a small shared CPU a second OpenMP thread spin-waits against other processes and made the
engine 3-30x *slower* in our runs, so single-thread numbers are the reproducible ones;
``--threads`` changes it, and the count is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curation.engine.features import FeatureManifest, FeatureReader, FeatureWriter
from curation.engine.grads import adam_direction, featurize, item_gradients, selected_params, top_layers
from curation.engine.influence import ScoringInputs, score
from curation.engine.model import ModelConfig, encode, pad_token_id, resolve_device
from curation.engine.models import load_model
from curation.engine.objectives import Batch, SFTObjective, sft_item
from curation.engine.projection import DenseRademacherProjector, Projector, SparseJLProjector
from curation.engine.tiny import DEFAULT_CORPUS, read_conversations
from curation.engine.warmup import WarmupConfig
from curation.errors import CurationError
from curation.methods.gradient import ordered_features, tensors

Log = Callable[[str], None]
MIN_COSINE = 0.9999  # engine vs reference with the same projector: the same work, or no bench
MIN_COSINE_AUTOCAST = 0.99  # the same, when the engine's forward runs in bf16 (its rounding)


@dataclass
class SpeedConfig:
    """One `bench speed` run; defaults are the full bench, :meth:`quick` a smoke run."""

    model: str = "tiny"  # "tiny" (the offline default) or a local HF model dir
    device: str = "cpu"
    k: int = 8192
    n: int = 1024  # examples the engine featurizes: the first n of the pool
    n_variants: int = 128  # spread subset for loop_sparse and batched_dense_cached
    n_reference: int = 64  # subset of those for less_way (dense, uncached)
    n_per_item: int = 8  # subset of those for less_way_per_item
    batch_size: int = 16  # FeatureConfig.batch_size
    project_interval: int = 16  # LESS collect_grads: project every 16 gradients
    max_length: int = 512
    repeats: int = 3  # best of; every repeat runs every variant once
    matmul_size: int = 2048  # peak: s x s fp32 torch.mm
    scoring_rows: int = 50_000
    shard_size: int = 1024
    val_subtasks: int = 18
    val_shots: int = 5
    seed: int = 0
    pool: str = str(DEFAULT_CORPUS)
    dense_cache_limit_gb: float = 4.0  # skip batched_dense_cached above this d·k·4 bytes
    threads: int = 1  # torch (and BLAS) threads for everything timed, peak included; see below
    autocast: str = "auto"  # the engine's forward: FeatureConfig.autocast (bf16 on CUDA)
    # The LESS-way projection: "regenerate" (trak's BasicProjector: drawn anew at every call,
    # what LESS does on CPU) or "fixed" (one dense matrix drawn once, cached on the device, its
    # build timed apart). auto: fixed on CUDA, where regenerating 921,600 x 8,192 draws per call
    # from the CPU generator is what kept the bench from finishing; regenerate on CPU.
    reference: str = "auto"

    def __post_init__(self) -> None:
        for name in ("k", "n", "threads", "n_variants", "n_reference", "n_per_item", "batch_size",
                     "project_interval", "max_length", "repeats", "matmul_size", "scoring_rows",
                     "shard_size", "val_subtasks", "val_shots"):
            if getattr(self, name) < 1:
                raise CurationError(f"bench speed: {name} must be >= 1")
        if self.autocast not in ("auto", "off", "bfloat16") or self.reference not in ("auto", "regenerate", "fixed"):
            raise CurationError(f"bench speed: autocast must be auto|off|bfloat16 and reference "
                                f"auto|regenerate|fixed, got {self.autocast!r} and {self.reference!r}")
        self.n_variants = min(self.n_variants, self.n)  # nested subsets of the n examples
        self.n_reference = min(self.n_reference, self.n_variants)
        self.n_per_item = min(self.n_per_item, self.n_reference)

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> SpeedConfig:
        """The full bench, sized for the device: on CUDA many more examples in big batches (a
        135M model is launch-bound at batch 16), T <= 256, small reference subsets and a bf16
        peak large enough to saturate tensor cores; meant to finish in < 5 min on one H100."""
        if device == "auto":
            device = resolve_device(device).type
        if not device.startswith("cuda"):
            return cls(device=device, **overrides)
        gpu = dict(n=4096, batch_size=64, max_length=256, n_variants=64, n_reference=32, n_per_item=4,
                   repeats=2, matmul_size=8192, dense_cache_limit_gb=40.0, scoring_rows=200_000)
        return cls(device=device, **{**gpu, **overrides})

    def autocast_for(self, device_type: str) -> str | None:
        from curation.config import FeatureConfig
        return FeatureConfig(autocast=self.autocast).autocast_for(device_type)

    def reference_for(self, device_type: str) -> str:
        return self.reference if self.reference != "auto" else ("fixed" if device_type == "cuda" else "regenerate")

    @classmethod
    def quick(cls, **overrides: Any) -> SpeedConfig:
        """Small sizes: seconds on the tiny model, for tests and a first look."""
        small = dict(k=1024, n=32, n_variants=8, n_reference=4, n_per_item=2, repeats=1,
                     matmul_size=512, scoring_rows=2048, shard_size=512, val_subtasks=3,
                     val_shots=2, max_length=256)
        return cls(**{**small, **overrides})


# ---------------------------------------------------------------------------- setup


def prepare_model(model: nn.Module, seed: int) -> nn.Module:
    """Attach a fresh LoRA adapter (``WarmupConfig`` defaults) unless there is one; eval mode.

    ``lora_B`` gets seeded N(0, 0.02²) values: PEFT starts it at zero, which would make every
    ``lora_A`` gradient zero, unlike a trained checkpoint.
    """
    if not hasattr(model, "peft_config"):
        from peft import LoraConfig, get_peft_model

        w = WarmupConfig()
        torch.manual_seed(seed)
        lora = LoraConfig(r=w.lora_r, lora_alpha=w.lora_alpha, lora_dropout=w.lora_dropout,
                          target_modules=list(w.target_modules), bias="none", task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # PEFT calls a transformers API that v5 deprecates
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(model, lora)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def pool_items(tokenizer, path: str | Path, n: int, max_length: int) -> list[Batch]:
    """SFT items of the first ``n`` pool examples that have a response token after encoding."""
    items = []
    for messages in read_conversations(Path(path)):
        enc = encode(tokenizer, messages, max_length)
        if any(label != -100 for label in enc["labels"]):
            items.append(sft_item(*tensors(enc)))
        if len(items) == n:
            return items
    raise CurationError(f"{path} has only {len(items)} usable examples, bench asked for {n}")


def random_moments(model: nn.Module, probe: Batch, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Seeded Adam moments scaled per layer by the RMS ``s`` of one example's gradient:
    ``m ~ N(0, (0.1 s)²)``, ``v ~ (N(0, s²))²``, so ``Γ`` depends on the example (not only m)."""
    params = selected_params(model)
    grads = item_gradients(model, probe.to(next(model.parameters()).device), SFTObjective(), params)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in params.items():
        s = float(grads[name].float().square().mean().sqrt()) or 1e-3
        m = torch.randn(p.shape, generator=gen) * 0.1 * s
        state[name] = (m, (torch.randn(p.shape, generator=gen) * s).square())
    return state


def spread(n: int, m: int) -> list[int]:
    """``m`` indices spread evenly over ``range(n)`` (first and last included)."""
    return sorted({int(i) for i in np.linspace(0, n - 1, m).round()})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(wall seconds, result) of ``fn()``, synchronising the device around it."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


# ---------------------------------------------------------------------------- the LESS way


def less_way(model: nn.Module, items: Sequence[Batch], projector: Projector, moments,
             interval: int) -> np.ndarray:
    """LESS ``collect_grads`` on CPU: one backward per example, Adam direction, the gradients
    of every ``interval`` examples stacked and projected in one call; L2-normalised."""
    device = next(model.parameters()).device
    params = selected_params(model)
    state = {n: (m.reshape(-1).to(device, torch.float32), v.reshape(-1).to(device, torch.float32))
             for n, (m, v) in moments.items()}
    out, pending = [], []
    for item in items:
        grads = item_gradients(model, item.to(device), SFTObjective(), params)
        pending.append({n: adam_direction(g.float(), *state[n]) for n, g in grads.items()})
        if len(pending) == interval:
            out.append(_project_stack(pending, projector))
            pending = []
    if pending:
        out.append(_project_stack(pending, projector))
    return np.concatenate(out)


def _project_stack(pending: list[dict[str, torch.Tensor]], projector: Projector) -> np.ndarray:
    total = None
    for name in pending[0]:
        y = projector.project(name, torch.cat([p[name] for p in pending]))
        total = y if total is None else total + y
    return F.normalize(total, dim=1).cpu().numpy()


# ---------------------------------------------------------------------------- FLOPs


def flop_floor(model: nn.Module, lengths: Sequence[int]) -> dict[str, Any]:
    """Forward+backward FLOP floors for sequences of these (unpadded) lengths; see module doc."""
    p_all = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    p_lora = sum(p.numel() for p in selected_params(model).values())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    layers = getattr(cfg, "num_hidden_layers", 0) or 0
    heads = getattr(cfg, "num_attention_heads", 0) or 0
    head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // heads if heads else 0)
    tokens = int(sum(lengths))
    attn = 2 * layers * heads * head_dim * int(sum(L * (L + 1) for L in lengths))
    forward = 2 * p_all * tokens + attn
    return {"formula": "3*(2*P*T + A), A = 2*layers*d_attn*sum(L*(L+1)); frozen base: "
                       "4*P*T + 2*P_lora*T + 3*A",
            "linear_params": p_all, "lora_params": p_lora, "tokens": tokens, "attention_flops": attn,
            "layers": layers, "d_attn": heads * head_dim, "floor_flops": 3 * forward,
            "frozen_base_floor_flops": 4 * p_all * tokens + 2 * p_lora * tokens + 3 * attn}


def peak_matmul(size: int, device: torch.device, repeats: int = 5, dtype: str = "float32") -> dict[str, float]:
    """Best ``torch.mm`` of two ``size × size`` matrices in ``dtype`` (after one warm-up): the
    peak the engine's FLOP floor is measured against, in the precision its forward runs."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(device, getattr(torch, dtype)) for _ in range(2))
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b), device)[0] for _ in range(repeats))
    return {"size": size, "seconds": best, "flops_per_s": 2 * size ** 3 / best, "dtype": dtype}


# ---------------------------------------------------------------------------- features


def _variant(items: int, tokens: int, seconds: list[float], what: str) -> dict[str, Any]:
    best = min(seconds)
    return {"what": what, "items": items, "tokens": tokens, "seconds": best, "all_seconds": seconds,
            "items_per_s": items / best, "tokens_per_s": tokens / best}


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def feature_bench(cfg: SpeedConfig, model: nn.Module, tokenizer, log: Log) -> dict[str, Any]:
    """Time every variant (interleaved repeats), check they do the same work, count FLOPs."""
    device = next(model.parameters()).device
    items = pool_items(tokenizer, cfg.pool, cfg.n, cfg.max_length)
    lengths = [int(b.input_ids.shape[1]) for b in items]
    V = spread(cfg.n, cfg.n_variants)  # nested subsets: R ⊂ V, Q ⊂ R
    R = [V[j] for j in spread(len(V), cfg.n_reference)]
    Q = [R[j] for j in spread(len(R), cfg.n_per_item)]
    moments = random_moments(model, items[0], cfg.seed)
    sparse = SparseJLProjector(cfg.k, cfg.seed)
    d = sum(p.numel() for p in selected_params(model).values())
    pad, sft, amp = pad_token_id(tokenizer), SFTObjective(), cfg.autocast_for(device.type)
    cache_bytes = d * cfg.k * 4
    fits = cache_bytes <= cfg.dense_cache_limit_gb * 2 ** 30
    notes, cache_build = [], None
    fixed = cfg.reference_for(device.type) == "fixed" and fits
    if cfg.reference_for(device.type) == "fixed" and not fits:
        notes.append(f"reference 'fixed' needs {cache_bytes / 2 ** 30:.1f} GiB for the d x k matrix: regenerated instead")
    cached = DenseRademacherProjector(cfg.k, cfg.seed, cache=True) if fits else None
    dense = cached if fixed else DenseRademacherProjector(cfg.k, cfg.seed)
    how = "one dense Rademacher matrix drawn once (cached)" if fixed else "dense Rademacher regenerated per call"

    def batched(idx, projector, autocast=amp):
        return lambda: ordered_features(model, [items[i] for i in idx], sft, projector, moments,
                                        cfg.batch_size, pad, autocast=autocast)

    variants = {
        "engine": (range(cfg.n), batched(range(cfg.n), sparse),
                   "production: length-bucketed batches, per-sample gradients, sparse JL"
                   + (f", {amp} autocast forward" if amp else "")),
        "less_way": (R, lambda: less_way(model, [items[i] for i in R], dense, moments, cfg.project_interval),
                     f"reference: batch size 1, fp32, {how}, every "
                     f"{cfg.project_interval} examples (LESS collect_grads + trak BasicProjector)"),
        "less_way_per_item": (Q, lambda: featurize(model, [items[i] for i in Q], sft, dense, moments, loop=True),
                              f"batch size 1, {how}, projected per example"),
        "loop_sparse": (V, lambda: featurize(model, [items[i] for i in V], sft, sparse, moments, loop=True),
                        "batch size 1, sparse JL"),
    }
    if cached is not None:
        log(f"building the dense cache ({cache_bytes / 2 ** 30:.2f} GiB)")
        cache_build, _ = timed(batched(V[: cfg.batch_size], cached, None), device)
        variants["batched_dense_cached"] = (V, batched(V, cached, None),
                                            "length-bucketed batches, fp32, dense Rademacher cached d x k")
    else:
        notes.append(f"batched_dense_cached skipped: the d x k matrix needs {cache_bytes / 2 ** 30:.1f} GiB")
    timed(batched(range(min(cfg.batch_size, cfg.n)), sparse), device)  # warm-up (+ sparse plan)

    seconds = {name: [] for name in variants}
    feats: dict[str, np.ndarray] = {}
    for rep in range(cfg.repeats):
        for name, (idx, fn, _) in variants.items():
            log(f"repeat {rep + 1}/{cfg.repeats}: {name} on {len(idx)} examples")
            secs, out = timed(fn, device)
            seconds[name].append(secs)
            feats.setdefault(name, out)
    timings = {name: _variant(len(idx), sum(lengths[i] for i in idx), seconds[name], what)
               for name, (idx, _, what) in variants.items()}
    return {"timings": timings, "dense_cache_build_s": cache_build, "lora_dims": d, "notes": notes,
            "equivalence": _equivalence(feats, V, R, Q, cfg.k, amp), "flops": flop_floor(model, lengths),
            "autocast": amp, "reference": "fixed" if fixed else "regenerate"}


def _equivalence(feats: dict[str, np.ndarray], V, R, Q, k: int, autocast: str | None = None) -> dict[str, Any]:
    """Same projector => same features (up to rounding); across projectors only cosines agree.
    With a bf16 forward the engine vs its fp32 loop agree to bf16 rounding (> 0.99), not 0.9999."""
    pos_v = {i: j for j, i in enumerate(V)}
    pos_r = {i: j for j, i in enumerate(R)}
    eng = feats["engine"]
    checks = {"engine_vs_loop_sparse": _row_cosines(eng[V], feats["loop_sparse"]),
              "less_way_per_item_vs_less_way": _row_cosines(
                  feats["less_way_per_item"], feats["less_way"][[pos_r[i] for i in Q]])}
    if "batched_dense_cached" in feats:
        checks["batched_dense_cached_vs_less_way"] = _row_cosines(
            feats["batched_dense_cached"][[pos_v[i] for i in R]], feats["less_way"])
    min_cos = {name: float(c.min()) for name, c in checks.items()}
    need = {name: MIN_COSINE_AUTOCAST if autocast and name.startswith("engine") else MIN_COSINE for name in checks}
    gram_e, gram_r = eng[R] @ eng[R].T, feats["less_way"] @ feats["less_way"].T
    off = ~np.eye(len(R), dtype=bool)
    result = {"min_cosine": min_cos, "threshold": need, "items_compared": {n: len(c) for n, c in checks.items()},
              "passed": all(v > need[n] for n, v in min_cos.items()),
              "engine_mean_abs_offdiag_cosine": float(np.abs(gram_e[off]).mean()) if off.any() else None,
              "gram_max_abs_diff_sparse_vs_dense": float(np.abs(gram_e - gram_r)[off].max()) if off.any() else None,
              "gram_expected_scale": 1 / math.sqrt(k)}
    strict = [n for n in checks if need[n] == MIN_COSINE]
    if not result["passed"] and all(min_cos[n] > MIN_COSINE for n in strict):
        # Only the bf16 engine missed its bound: report it (a bench that prints is worth more
        # than one that stops), the fp32 variants still prove the same work is compared.
        result["note"] = (f"the bf16-autocast engine agrees with its fp32 loop to min cosine "
                          f"{min(min_cos[n] for n in checks if n not in strict):.4f} (< {MIN_COSINE_AUTOCAST})")
        return result
    if not result["passed"]:
        raise CurationError(f"bench variants compute different features (min cosines {min_cos}): "
                            "the timings would compare different work")
    return result


# ---------------------------------------------------------------------------- presets


def preset_plan(cfg: SpeedConfig, name: str, lengths: Sequence[int]) -> dict[str, Any]:
    """What a preset does to these examples: max length, examples cut, layers, checkpoints."""
    from curation.config import FeatureConfig, preset
    from curation.methods.gradient import choose_max_length

    f = FeatureConfig(**preset(name).options)
    max_length = choose_max_length(lengths, f.length_quantile, cfg.max_length) if f.length_quantile else cfg.max_length
    return {"max_length": max_length, "cut": int(sum(n > max_length for n in lengths)),
            "lora_layers": f.lora_layers or None, "checkpoints": f.checkpoints or WarmupConfig().epochs,
            "options": preset(name).options}


def preset_bench(cfg: SpeedConfig, model: nn.Module, tokenizer, log: Log) -> dict[str, Any]:
    """Examples/s of every preset's train features and its speedup over the default (see module doc)."""
    from curation.config import PRESETS

    device = next(model.parameters()).device
    full = pool_items(tokenizer, cfg.pool, cfg.n, 1 << 30)
    lengths = [int(b.input_ids.shape[1]) for b in full]
    plans = {name: preset_plan(cfg, name, lengths) for name in PRESETS}
    items = {name: pool_items(tokenizer, cfg.pool, cfg.n, plan["max_length"]) for name, plan in plans.items()}
    moments = random_moments(model, items["default"][0], cfg.seed)
    sparse, pad, amp = SparseJLProjector(cfg.k, cfg.seed), pad_token_id(tokenizer), cfg.autocast_for(device.type)

    def one_checkpoint(name: str):
        def run():
            with top_layers(model, plans[name]["lora_layers"] or 0):
                return ordered_features(model, items[name], SFTObjective(), sparse, moments, cfg.batch_size, pad,
                                        autocast=amp)
        return run

    warm = items["default"][: cfg.batch_size]
    timed(lambda: ordered_features(model, warm, SFTObjective(), sparse, moments, cfg.batch_size, pad,
                                   autocast=amp), device)  # warm-up: one batch (allocator, sparse plan)
    seconds: dict[str, list[float]] = {name: [] for name in PRESETS}
    for rep in range(cfg.repeats):
        for name in PRESETS:
            log(f"repeat {rep + 1}/{cfg.repeats}: preset {name} on {cfg.n} examples")
            seconds[name].append(timed(one_checkpoint(name), device)[0])
    out = {}
    for name, plan in plans.items():
        per_ckpt = min(seconds[name])
        out[name] = {**plan, "seconds_per_checkpoint": per_ckpt, "all_seconds": seconds[name],
                     "examples_per_s": cfg.n / (per_ckpt * plan["checkpoints"])}
    for row in out.values():
        row["speedup"] = row["examples_per_s"] / out["default"]["examples_per_s"]
    return out


def run_presets(cfg: SpeedConfig, model: nn.Module | None = None, tokenizer=None,
                workspace: Path | None = None, log: Log | None = None) -> dict[str, Any]:
    """`bench speed --presets`: the preset table, on the device and threads of ``cfg``."""
    log = log or (lambda msg: None)
    with _torch_threads(cfg.threads):
        model, tokenizer = _loaded(cfg, model, tokenizer, workspace, log)
        device = next(model.parameters()).device
        presets = preset_bench(cfg, model, tokenizer, log)
        return {"presets": presets, "model": cfg.model, "n": cfg.n, "k": cfg.k, "device": str(device),
                "threads": torch.get_num_threads(), "batch_size": cfg.batch_size, "max_length": cfg.max_length,
                "autocast": cfg.autocast_for(device.type), "torch": torch.__version__, "config": asdict(cfg),
                "notes": ["examples_per_s: train features only (one checkpoint timed, times the preset's "
                          "checkpoints); warmup and validation features left out",
                          "speedup: against the default measured in this run, repeats interleaved"]}


def _loaded(cfg: SpeedConfig, model, tokenizer, workspace: Path | None, log: Log):
    """(model with a fresh LoRA adapter, tokenizer): injected (tests) or loaded."""
    if model is None:
        from curation.workspace import Workspace

        log(f"loading model {cfg.model!r}")
        home = workspace or Workspace.from_env().home
        model, tokenizer = load_model(ModelConfig(name_or_path=cfg.model, device=cfg.device,
                                                  max_length=cfg.max_length), home)
    elif tokenizer is None:
        raise ValueError("an injected model needs its tokenizer")
    return prepare_model(model, cfg.seed), tokenizer


def presets_summary(r: dict[str, Any]) -> str:
    lines = [f"presets on {r['model']}, n={r['n']}, k={r['k']}, {r['threads']} threads, {r['device']}",
             f"{'preset':<10}{'ckpts':>6}{'layers':>7}{'max len':>8}{'cut':>5}{'ex/s':>9}{'speedup':>9}"]
    for name, p in r["presets"].items():
        lines.append(f"{name:<10}{p['checkpoints']:>6}{p['lora_layers'] or 'all':>7}{p['max_length']:>8}"
                     f"{p['cut']:>5}{p['examples_per_s']:>9.2f}{p['speedup']:>8.2f}x")
    return "\n".join(lines + [f"note: {n}" for n in r["notes"]])


# ---------------------------------------------------------------------------- scoring


def _unit_rows(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    x = rng.standard_normal((n, k), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bandwidth_scan(reader: FeatureReader) -> int:
    """Read every byte of every shard once (memmap, uint64 sum per shard): the I/O bound."""
    total = 0
    for _, _, arr in reader.iter_shards():
        flat = arr.reshape(-1)
        words = flat.view(np.uint64) if flat.nbytes % 8 == 0 else flat.view(np.uint16)
        total += int(words.sum(dtype=np.uint64))
    return total


def scoring_bench(cfg: SpeedConfig, root: Path, log: Log) -> dict[str, Any]:
    """Write ``scoring_rows × k`` fp16 features, then time scan, score, scan, score."""
    rows, k = cfg.scoring_rows, cfg.k
    manifest = FeatureManifest(model="bench-speed", tokenizer_hash="none", checkpoint="bench",
                               projector={"type": "random_unit_rows", "k": k, "seed": cfg.seed}, k=k,
                               dtype="float16", example_ids=list(range(rows)), shard_size=cfg.shard_size)
    writer = FeatureWriter(root / "train", manifest)
    rng = np.random.default_rng(cfg.seed)
    log(f"writing {rows} x {k} fp16 features ({rows * k * 2 / 2 ** 30:.2f} GiB)")
    for index, start, end in writer.pending_shards():
        writer.write_shard(index, _unit_rows(rng, end - start, k))
    reader = FeatureReader(root / "train")
    labels = [f"subtask_{s}" for s in range(cfg.val_subtasks) for _ in range(cfg.val_shots)]
    inputs = ScoringInputs(train=[reader], val=[_unit_rows(rng, len(labels), k)], weights=[1.0],
                           val_subtasks=labels)
    cpu = torch.device("cpu")
    scan_s, score_s = [], []
    for rep in range(2):  # scan first: both then read a warm page cache; best of two each
        log(f"scoring repeat {rep + 1}/2: scan, then score")
        scan_s.append(timed(lambda: bandwidth_scan(reader), cpu)[0])
        score_s.append(timed(lambda: score(inputs), cpu)[0])
    nbytes = rows * k * 2
    scan = {"seconds": min(scan_s), "all_seconds": scan_s, "rows_per_s": rows / min(scan_s),
            "gb_per_s": nbytes / min(scan_s) / 1e9}
    scored = {"seconds": min(score_s), "all_seconds": score_s, "rows_per_s": rows / min(score_s),
              "gb_per_s": nbytes / min(score_s) / 1e9}
    return {"rows": rows, "k": k, "dtype": "float16", "bytes": nbytes, "n_val": len(labels),
            "val_subtasks": cfg.val_subtasks, "checkpoints": 1, "scan": scan, "score": scored}


# ---------------------------------------------------------------------------- driver


def run_speed(cfg: SpeedConfig, model: nn.Module | None = None, tokenizer=None,
              workspace: Path | None = None, log: Log | None = None) -> dict[str, Any]:
    """Run the whole bench; ``model``/``tokenizer`` may be injected (tests), else loaded."""
    log = log or (lambda msg: None)
    with _torch_threads(cfg.threads):
        model, tokenizer = _loaded(cfg, model, tokenizer, workspace, log)
        device = next(model.parameters()).device
        peak_dtype = cfg.autocast_for(device.type) or "float32"  # the floor is of the engine's precision
        peak = [peak_matmul(cfg.matmul_size, device, dtype=peak_dtype)]
        feat = feature_bench(cfg, model, tokenizer, log)
        peak.append(peak_matmul(cfg.matmul_size, device, dtype=peak_dtype))
        with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp, _blas_threads(cfg.threads) as blas:
            scoring = scoring_bench(cfg, Path(tmp), log)
        scoring["blas_threads"] = blas
        return _result(cfg, feat, max(peak, key=lambda p: p["flops_per_s"]), scoring, device)


@contextlib.contextmanager
def _torch_threads(n: int):
    """torch's intra-op threads at ``n`` inside, as they were after (the bench leaves no trace)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _blas_threads(n: int) -> Iterator[int | None]:
    """Limit numpy's BLAS pool to ``n`` threads (yields n), or leave it (yields None)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not a declared dependency (scikit-learn brings it)
        yield None
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield n


def _result(cfg: SpeedConfig, feat: dict, peak: dict, scoring: dict, device: torch.device) -> dict[str, Any]:
    t, flops = feat["timings"], feat["flops"]
    engine_s = t["engine"]["seconds"]
    achieved = flops["floor_flops"] / engine_s
    scoring["compute_floor_s"] = 2 * scoring["rows"] * scoring["k"] * scoring["n_val"] / peak["flops_per_s"]
    notes = list(feat["notes"])
    if t["less_way"]["items"] % cfg.project_interval:
        notes.append(f"less_way ran {t['less_way']['items']} examples, not a multiple of the projection "
                     f"interval {cfg.project_interval}: its last call is partial, which slows the reference")
    if eq_note := feat["equivalence"].get("note"):
        notes.append(eq_note)
    return {
        "speedup_vs_less_way": t["engine"]["items_per_s"] / t["less_way"]["items_per_s"],
        "flop_floor_fraction": achieved / peak["flops_per_s"],
        "scoring_vs_bandwidth": scoring["score"]["rows_per_s"] / scoring["scan"]["rows_per_s"],
        "scoring_vs_compute_floor": scoring["compute_floor_s"] / scoring["score"]["seconds"],
        "speedup_vs_less_way_per_item": t["engine"]["items_per_s"] / t["less_way_per_item"]["items_per_s"],
        "flop_floor_fraction_frozen_base": flops["frozen_base_floor_flops"] / engine_s / peak["flops_per_s"],
        "achieved_flops_per_s": achieved, "peak": peak, "timings": t, "scoring": scoring,
        "dense_cache_build_s": feat["dense_cache_build_s"], "flops": flops,
        "equivalence": feat["equivalence"], "threads": torch.get_num_threads(), "device": str(device),
        "examples_per_s": t["engine"]["items_per_s"], "autocast": feat["autocast"], "reference": feat["reference"],
        "n": cfg.n, "k": cfg.k, "lora_dims": feat["lora_dims"], "config": asdict(cfg),
        "torch": torch.__version__,
        "notes": notes + [
            "reference throughputs are measured on evenly spread subsets of the n examples "
            f"(less_way: {t['less_way']['items']}, less_way_per_item: {t['less_way_per_item']['items']})",
            "timings are best of the interleaved repeats; scoring is warm page cache for scan and score"],
    }


def summary(r: dict[str, Any]) -> str:
    """The human report: the three ratios first, then the raw timings."""
    t, s = r["timings"], r["scoring"]
    lines = [
        f"speedup vs the LESS way:   {r['speedup_vs_less_way']:8.1f}x  (engine {t['engine']['items_per_s']:.1f} "
        f"ex/s vs reference {t['less_way']['items_per_s']:.2f} ex/s; k={r['k']}, n={r['n']})",
        f"FLOP-floor fraction:       {r['flop_floor_fraction']:8.3f}   ({r['achieved_flops_per_s'] / 1e9:.2f} "
        f"of {r['peak']['flops_per_s'] / 1e9:.1f} GFLOP/s peak {r['peak'].get('dtype', 'float32')} mm; frozen-base floor: "
        f"{r['flop_floor_fraction_frozen_base']:.3f}; {r['threads']} threads, {r['device']})",
        f"scoring vs bandwidth scan: {r['scoring_vs_bandwidth']:8.3f}   (score {s['score']['rows_per_s']:.0f} "
        f"rows/s vs scan {s['scan']['rows_per_s']:.0f} rows/s; {s['rows']} x {s['k']} fp16, {s['n_val']} val items)",
        "", f"{'variant':<22}{'items':>7}{'tokens':>9}{'seconds':>10}{'items/s':>10}{'tokens/s':>11}  what",
    ]
    for name, v in t.items():
        lines.append(f"{name:<22}{v['items']:>7}{v['tokens']:>9}{v['seconds']:>10.3f}{v['items_per_s']:>10.2f}"
                     f"{v['tokens_per_s']:>11.0f}  {v['what']}")
    if r["dense_cache_build_s"] is not None:
        lines.append(f"dense cache build (one-off, incl. one batch): {r['dense_cache_build_s']:.2f} s")
    lines.append(f"scan {s['scan']['seconds']:.3f} s ({s['scan']['gb_per_s']:.2f} GB/s), "
                 f"score {s['score']['seconds']:.3f} s ({s['score']['gb_per_s']:.2f} GB/s); score's matmul "
                 f"at peak would take {s['compute_floor_s']:.3f} s (scoring_vs_compute_floor "
                 f"{r['scoring_vs_compute_floor']:.3f}); BLAS threads {s['blas_threads']}")
    eq = r["equivalence"]
    lines.append("equivalence (min cosine, same projector): "
                 + ", ".join(f"{k} {v:.6f}" for k, v in eq["min_cosine"].items()))
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def threads_compare(cfg: SpeedConfig, thread_counts: Sequence[int] = (1, 2), model: nn.Module | None = None,
                    tokenizer=None, workspace: Path | None = None, log: Log | None = None) -> dict[str, Any]:
    """The engine's train features (batched, sparse JL) at each thread count, side by side on
    the same model and examples: interleaved repeats, best of each (`--threads-compare`).
    Records the cores and the 1-minute load, since a second thread only helps on a free core."""
    import os

    log = log or (lambda msg: None)
    before = torch.get_num_threads()
    if model is None:
        from curation.workspace import Workspace

        log(f"loading model {cfg.model!r}")
        model, tokenizer = load_model(ModelConfig(name_or_path=cfg.model, device=cfg.device,
                                                  max_length=cfg.max_length), workspace or Workspace.from_env().home)
    model = prepare_model(model, cfg.seed)
    items = pool_items(tokenizer, cfg.pool, cfg.n, cfg.max_length)
    moments = random_moments(model, items[0], cfg.seed)
    device, pad = next(model.parameters()).device, pad_token_id(tokenizer)
    run = lambda: ordered_features(model, items, SFTObjective(), SparseJLProjector(cfg.k, cfg.seed), moments,
                                   cfg.batch_size, pad, autocast=cfg.autocast_for(device.type))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    seconds: dict[int, list[float]] = {t: [] for t in thread_counts}
    try:
        for rep in range(cfg.repeats):
            for t in thread_counts:
                torch.set_num_threads(t)
                log(f"repeat {rep + 1}/{cfg.repeats}: {t} thread(s)")
                seconds[t].append(timed(run, device)[0])
    finally:
        torch.set_num_threads(before)
    best = {t: min(s) for t, s in seconds.items()}
    base = best[thread_counts[0]]
    return {"model": cfg.model, "n": cfg.n, "k": cfg.k, "max_length": cfg.max_length, "device": str(device),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load1_before": load, "load1_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "threads": {str(t): {"seconds": best[t], "all_seconds": seconds[t], "examples_per_s": cfg.n / best[t],
                                 "speedup": base / best[t]} for t in thread_counts}}


def threads_summary(r: dict[str, Any]) -> str:
    rows = [f"{t} thread(s): {v['examples_per_s']:.2f} examples/s, {v['seconds']:.1f} s, x{v['speedup']:.2f}"
            for t, v in r["threads"].items()]
    return (f"threads on {r['model']} ({r['n']} examples, k {r['k']}, {r['cores']} cores, load "
            f"{r['load1_before']:.2f} before):\n" + "\n".join(rows))


def config_from_args(args: argparse.Namespace) -> SpeedConfig:
    """CLI options over the full (or, with --quick, the small) defaults. With --presets the
    model's own max length and feature batch (`models.defaults_for`) are the default's."""
    given = {name: getattr(args, name, None) for name in ("model", "k", "n", "device", "threads")}
    overrides = {name: value for name, value in given.items() if value is not None}
    if getattr(args, "presets", False):
        from curation.engine.models import defaults_for
        from curation.workspace import Workspace

        d = defaults_for(overrides.get("model", "tiny"), Workspace.from_env().home)
        on_gpu = str(overrides.get("device", "cpu")).startswith("cuda")  # for_device sizes GPU batches
        overrides = {"max_length": d.max_length, **({} if on_gpu else {"batch_size": d.feature_batch}), **overrides}
    if getattr(args, "quick", False):
        return SpeedConfig.quick(**overrides)
    return SpeedConfig.for_device(overrides.pop("device", "cpu"), **overrides)


def emit(result: dict[str, Any], as_json: bool, out=None) -> None:
    """Exactly one JSON object (``--json``) or the human summary on stdout."""
    out = out or sys.stdout
    human = presets_summary if "presets" in result else summary
    print(json.dumps(result) if as_json else human(result), file=out)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench speed {time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    if getattr(args, "threads_compare", False):
        r = threads_compare(cfg, log=log)
        print(json.dumps(r) if args.json else threads_summary(r))
        return 0
    run = run_presets if getattr(args, "presets", False) else run_speed
    emit(run(cfg, log=log), args.json)
    return 0
