"""A run's stages, its cost before launch and its overall ETA while it runs.

**Stages.** Each method emits a fixed sequence of `Reporter.stage` names (`stage_plan`; a
test runs every fast method and a gradient run and compares). A gradient method (rose,
less, nice) runs load model, warmup, then train and validation features per checkpoint,
score; every method ends with select (`runs.execute_run`), and a method that loads a model
starts with building the offline tiny model when it is not built yet (`TINY_STAGE`). A
stage whose work is already on disk (stored train features, a cached warmup) passes in a
moment or is skipped; it still counts as one of the N.

**Cost** (`estimate_cost`): seconds per stage from a cost model, then calibrated on this
machine. The model: a train-feature row (one example at one checkpoint: forward, backward,
projection) costs ``row(params) x (f + (1 - f) x tokens / 46.5)``, where ``row`` runs through two
measured points (`ROW_S_POINTS`: smollm2 0.28 s and the tiny model 0.0065 s on 2 CPU cores) and
``f`` (`FIXED_SHARE_POINTS`: 0 for tiny, 0.54 for smollm2) is the share that does not grow with
length; tokens
are estimated as characters / 4 plus 12 for the chat template, capped at max length (46.5 on
the demo pool). A warmup example-epoch costs 1.2 rows, a validation pair 3 rows for ROSE (two
sequences, policy and reference), 1 for LESS, 12 for NICE (it samples responses first).
Train features already in the workspace feature store and a cached warmup cost nothing.
Calibration: every run launched from the app or CLI stores its estimate in ``meta.estimate``;
for each stage kind ("train features", "warmup", ...), the ratio of the measured time to the
modelled time over the last runs with the same model (same method for model-free methods)
scales the new estimate. Disk: new rows x checkpoints x k x bytes per value (k = the LoRA
gradient size d when features are exact), plus the warmup's adapters and Adam moments.

**ETA** (`run_progress`): the current stage's own ETA (its measured rate) plus the estimated
seconds of the stages still to come, scaled by how this run's finished stages compared with
their estimates (a run that took twice the estimate so far is expected to keep doing so).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import func, select

from curation.config import ScoreConfig
from curation.errors import CurationError

TINY_STAGE = "build tiny model"
STAGE_LABELS = {TINY_STAGE: "building the offline tiny model (once, ~3 min)"}
GRADIENT_METHODS = ("rose", "less", "nice", "contrast", "auto")  # auto: its candidates extract features
MODEL_METHODS = GRADIENT_METHODS + ("raise", "repsim")
FIXED_PLANS = {
    "bm25": ("tokenize pool", "bm25 index", "bm25 scores"),
    "dsir": ("n-gram counts", "importance weights"),
    "random": ("random scores",),
    "fusion": ("fuse ranks",),
    "raise": ("load model", "state features", "selector episodes", "schedule"),
    "repsim": ("load model", "validation states", "pool states"),
}

AUTO_STAGES = ("auto: fine-tune on random selections", "auto: judge candidates")  # `methods.auto`
SMOLLM2_PARAMS = 134_515_008
TINY_PARAMS = 1_300_000
# seconds per train-feature row at the demo's 46.5 tokens, measured on 2 idle CPU cores:
# smollm2: 0.28 (the fast preset's demo run, 3000 rows in 835 s at 2 threads; its warmup, 150
# examples x 4 epochs, took 209 s against 210 modelled); tiny: 0.0065 (the figure the tiny
# calibration below was fitted with). Between them cost grows as params^0.81 (a small model's
# per-row overhead does not shrink with it); beyond them, linearly (compute-bound).
ROW_S_POINTS = ((TINY_PARAMS, 0.0065), (SMOLLM2_PARAMS, 0.28))
# how a row's cost grows with its tokens: a fixed share f of the demo-length cost plus a part
# linear in tokens, cost ~ f + (1 - f) x tokens / 46.5. smollm2: f = 0.54, from its fast-preset
# rows on 2 idle cores at 2 threads: 0.278 s on the demo (46.5 tokens) and 0.602 s on a 998-record
# T0 pool (165 tokens; 600 s for the last checkpoint): 2.16x the cost for 3.55x the tokens (a
# per-row part that does not grow with length: per-example LoRA products, batching, Python).
# tiny: f = 0 (its T0 / demo ratio, 4.4-6.8 for 6.3x the tokens, is about linear). In between
# interpolated in log params; beyond the two models, unmeasured (the end values hold).
FIXED_SHARE_POINTS = ((TINY_PARAMS, 0.0), (SMOLLM2_PARAMS, 0.54))
DEMO_TOKENS = 46.5  # the demo pool's mean characters (138) / 4 + 12 template tokens
MIN_ROW_S = 0.002  # per-row overhead floor of the smallest models
# per row and 8,192 feature coordinates: the tiny model's exact rows (d = 32,768) cost 0.039 and
# 0.034 s on the demo (43 tokens) and 0.17 and 0.23 s on a T0 sample (273 tokens) in two runs
# on a loaded 2-core machine: T0 / demo = 4.4 and 6.8 against 6.3 for tokens alone; this fixed
# part makes the model's ratio 5.6, between the two
ROW_DIM_S = 0.00024
WARMUP_EPOCH_S = 2.0  # saving an epoch's adapter, Adam moments and resume state (T0: 24 s for 8 steps)
TINY_BUILD_S = 150.0  # README: 2-3 minutes on 2 cores
VAL_ROWS = {"rose": 2.0, "less": 2.0, "nice": 12.0, "contrast": 2.0, "auto": 2.0}  # rose, less, contrast: both answers
WARMUP_ROWS = 1.2
SAMPLE_EXAMPLES = 256  # examples read to estimate the pool's mean length
HISTORY_RUNS = 10
FACTOR_RANGE = (0.05, 20.0)


def stage_plan(method: str, epochs: int = 4, tiny_build: bool = False, feature_ckpts: int = 0) -> list[str] | None:
    """The stage names a run of ``method`` reports, in order; None for a method this table
    does not know (its progress then shows without "k of N"). ``feature_ckpts``: features of the
    last N checkpoints only (a preset's `features.checkpoints`; 0: all)."""
    if method in GRADIENT_METHODS:
        first = max(1, epochs - feature_ckpts + 1) if feature_ckpts else 1
        ckpts = [f"epoch_{i}" for i in range(first, epochs + 1)]
        core = ["load model", "warmup", *[f"{side} features {c}" for c in ckpts for side in ("train", "validation")],
                "score"]
        if method == "auto":  # its candidates (the gradient run, BM25, repsim), then the fine-tunes
            core += [*FIXED_PLANS["bm25"], *FIXED_PLANS["repsim"][1:], *AUTO_STAGES]
    elif method in FIXED_PLANS:
        core = list(FIXED_PLANS[method])
    else:
        return None
    return ([TINY_STAGE] if tiny_build and method in MODEL_METHODS else []) + core + ["select"]


def stage_kind(name: str) -> str:
    """A stage name without its checkpoint: what calibration groups by."""
    return re.sub(r" epoch_\d+$", "", name)


def stage_label(name: str | None) -> str | None:
    """What the page shows for a stage (the tiny build says what it is and that it happens once)."""
    if name is None:
        return None
    return STAGE_LABELS.get(name, name)


def tiny_needs_build(home: Path) -> bool:
    """Whether loading "tiny" would build it first (the same check as `tiny.ensure_tiny_model`)."""
    from curation.engine.tiny import BUILD_INFO, DEFAULT_CORPUS, TinyConfig, fingerprint

    if not DEFAULT_CORPUS.is_file():
        return False  # loading fails with its own message; nothing to build
    return not (Path(home) / "models" / f"tiny-{fingerprint(DEFAULT_CORPUS, TinyConfig())}" / BUILD_INFO).is_file()


# ---------------------------------------------------------------------------- formatting


def duration(seconds: float | None) -> str:
    """Seconds for people: "45 s", "4 min 10 s", "1 h 05 min"."""
    if seconds is None:
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s < 600 else f"{round(s / 60)} min"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def approx_duration(seconds: float) -> str:
    """An estimate, rounded as one: "under a minute", "about 4 min", "about 2 h 10 min"."""
    if seconds < 45:
        return "under a minute"
    hours, minutes = divmod(max(1, round(seconds / 60)), 60)
    return f"about {hours} h {minutes:02d} min" if hours else f"about {minutes} min"


def size(n_bytes: float) -> str:
    """Bytes for people, decimal units: "790 MB", "6.6 GB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            value = n_bytes / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:,.0f} {unit}"
    return f"{int(n_bytes)} bytes"


# ---------------------------------------------------------------------------- the estimate


@dataclass
class StageCost:
    name: str
    seconds: float  # calibrated
    raw_s: float  # the cost model's, before calibration (what later runs calibrate against)


@dataclass
class Estimate:
    """A run's expected wall time and disk use, with the reasons (reuse, calibration)."""

    seconds: float
    disk_bytes: int
    notes: list[str] = field(default_factory=list)
    stages: list[StageCost] = field(default_factory=list)
    disk_what: str = "on disk"  # "of features" for gradient methods
    contention: float = 1.0  # `cpu_contention` when it was made: calibration divides it out

    def summary(self) -> str:
        return f"{approx_duration(self.seconds)}, {size(self.disk_bytes)} {self.disk_what}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Estimate":
        return cls(**{**d, "stages": [StageCost(**s) for s in d.get("stages", [])]})


@dataclass
class Facts:
    """What the cost of a run depends on, read from the store and the workspace."""

    n: int
    n_pairs: int
    tokens: float
    params: int
    lora_dim: int | None
    hidden: int | None = None
    tiny_build: bool = False
    new_rows: int | None = None  # train-feature rows to extract per checkpoint (None: all n)
    warmup_cached: bool = False
    reuse_note: str | None = None
    states_cached: bool = False  # repsim's pool states are in the workspace's state cache


def estimate_cost(store, pool: str, prefs: str | None, cfg: ScoreConfig, home: Path) -> Estimate:
    """Time and disk of a run of ``cfg`` on ``pool`` before it is launched (see the module doc)."""
    facts = gather_facts(store, pool, prefs, cfg, home, detect_reuse=True)
    factors, n_hist = history_factors(store, cfg)
    busy = cfg.method in MODEL_METHODS and cfg.model.device == "cpu"  # a model-free run takes seconds anyway
    return build_estimate(cfg, facts, factors, n_hist, cpu_contention() if busy else 1.0)


def build_estimate(cfg: ScoreConfig, facts: Facts, factors: dict[str, float] | None = None,
                   n_hist: int = 0, contention: float = 1.0) -> Estimate:
    """The estimate from its facts, calibration factors (kind -> measured / (modelled x the
    contention then)) and the CPU contention now (`cpu_contention`)."""
    factors = factors or {}
    raw = stage_costs(cfg, facts)
    scale = lambda name: factors.get(stage_kind(name), factors.get("*", 1.0)) * contention  # noqa: E731
    stages = [StageCost(name, round(s * scale(name), 3), round(s, 3)) for name, s in raw]
    notes = []
    if contention >= 1.3:
        notes.append(f"This machine is busy: a CPU-bound process runs {contention:.1f}x slower than alone right "
                     "now (measured), and the times include it.")
    if facts.tiny_build:
        notes.append("The offline tiny model is built first (once for this workspace, about 2-3 minutes).")
    if facts.reuse_note:
        notes.append(facts.reuse_note)
    if facts.states_cached:
        notes.append("Repsim's pool states are cached (an earlier run on this pool and model computed them).")
    if cfg.method in GRADIENT_METHODS and facts.warmup_cached:
        notes.append("The warmup is cached (an earlier run trained it).")
    if n_hist:
        notes.append(f"Times calibrated on {n_hist} earlier run{'s' * (n_hist > 1)} on this machine.")
    else:
        notes.append(f"Default throughput for a {facts.params / 1e6:,.1f}M-parameter model on 2 CPU cores "
                     "(no earlier run to calibrate on" + ("; a GPU is faster" if cfg.model.device != "cpu" else "")
                     + ").")
    disk, what = disk_bytes(cfg, facts)
    return Estimate(seconds=round(sum(s.seconds for s in stages), 1), disk_bytes=int(disk), notes=notes,
                    stages=stages, disk_what=what, contention=round(contention, 3))


PROBE_CPU_S = 0.2  # CPU seconds the contention probe burns
# the probe's reading at which the cost model's constants hold: the demo on the tiny model took
# 3.3x the model's seconds while the probe read ~6 (2 cores, load 8-11), so 6 / 3.3 = 1.8
PROBE_REF = 1.8
PROBE_TTL_S = 30.0
_probe: dict[str, float] = {}


def cpu_contention(cpu_s: float = PROBE_CPU_S) -> float:
    """How much slower than the cost model's machine a CPU-bound process runs now: wall over CPU
    time of a short busy burst, over `PROBE_REF`, at least 1 (~3.4 on 2 cores at load 8-11).
    Cached for `PROBE_TTL_S`;
    ``CURATION_CPU_PROBE=0`` turns it off (1.0), as the tests do."""
    if os.environ.get("CURATION_CPU_PROBE", "1") == "0":
        return 1.0
    now = time.monotonic()
    if now - _probe.get("at", -1e9) < PROBE_TTL_S:
        return _probe["value"]
    wall0, cpu0, x = time.perf_counter(), time.process_time(), 0
    while time.process_time() - cpu0 < cpu_s:
        x += sum(range(2000))
    value = max(1.0, (time.perf_counter() - wall0) / max(time.process_time() - cpu0, 1e-6) / PROBE_REF)
    _probe.update(at=now, value=value)
    return value


def row_seconds(facts: Facts, k_eff: int = 8192) -> float:
    """Seconds per train-feature row (one example, one checkpoint) under the cost model: the
    model's forward and backward (parameters x tokens) plus the per-row work on the feature
    itself (Adam direction, projection, norm, write: ~k_eff)."""
    f = fixed_share(facts.params)
    length = f + (1 - f) * facts.tokens / DEMO_TOKENS
    model = max(MIN_ROW_S, model_row_seconds(facts.params) * length)
    return model + ROW_DIM_S * k_eff / 8192


def fixed_share(params: int) -> float:
    """The share of a demo-length row's cost that does not grow with its tokens (`FIXED_SHARE_POINTS`)."""
    (p0, f0), (p1, f1) = FIXED_SHARE_POINTS
    t = min(1.0, max(0.0, math.log(max(params, 1) / p0) / math.log(p1 / p0)))
    return f0 + t * (f1 - f0)


def model_row_seconds(params: int) -> float:
    """A row's forward and backward at the demo's length, from the two measured `ROW_S_POINTS`."""
    (p0, s0), (p1, s1) = ROW_S_POINTS
    if params <= p0:
        return s0 * params / p0
    if params >= p1:
        return s1 * params / p1
    return s0 * (params / p0) ** (math.log(s1 / s0) / math.log(p1 / p0))


def stage_costs(cfg: ScoreConfig, facts: Facts) -> list[tuple[str, float]]:
    """(stage, modelled seconds) for every stage of `stage_plan`."""
    plan = stage_plan(cfg.method, cfg.warmup.epochs, facts.tiny_build, cfg.features.checkpoints) or []
    n, pairs, epochs = facts.n, max(facts.n_pairs, 1), cfg.warmup.epochs
    feature_epochs = min(epochs, cfg.features.checkpoints or epochs)  # checkpoints the features use
    new = facts.n if facts.new_rows is None else facts.new_rows
    k_eff = feature_dim(cfg, facts.lora_dim)
    row = row_seconds(facts, k_eff if cfg.method in GRADIENT_METHODS else 0)
    warmup_n = max(1, round(n * cfg.warmup.percent / 100))
    # per-example seconds of the cheap stages: rough figures from demo runs on 2 CPU cores
    # (scoring: ~47k rows/s at k = 8192); calibration on earlier runs corrects them
    fixed = {
        TINY_STAGE: TINY_BUILD_S, "load model": 3.0 + 1e-8 * facts.params,
        "warmup": 0.0 if facts.warmup_cached else epochs * (warmup_n * WARMUP_ROWS * row + WARMUP_EPOCH_S),
        "score": n * feature_epochs * 2e-5 * k_eff / 8192, "select": 4e-5 * n,
        "tokenize pool": 1e-4 * n * facts.tokens / DEMO_TOKENS, "bm25 index": 5e-5 * n, "bm25 scores": 2e-7 * n * pairs,
        "n-gram counts": 2e-4 * n, "importance weights": 2e-4 * n, "random scores": 1e-7 * n,
        "validation states": pairs * 2 * row / 3, "pool states": 4e-5 * n if facts.states_cached else n * row / 3,
        "state features": n * 2 * row / 3,
    }
    if cfg.method == "auto":
        fixed.update(_auto_stage_s(cfg, n, pairs, row))
    if cfg.method == "raise":
        fixed.update({"selector episodes": _raise_episode_s(cfg, n, pairs, row),
                      "schedule": _raise_episode_s(cfg, n, pairs, row, 1)})
    out = []
    for name in plan:
        if name.startswith("train features"):
            out.append((name, new * row))
        elif name.startswith("validation features"):
            out.append((name, pairs * VAL_ROWS.get(cfg.method, 1.0) * row))
        else:
            out.append((name, fixed.get(name, 1.0)))
    return out


def _auto_stage_s(cfg: ScoreConfig, n: int, pairs: int, row: float) -> dict[str, float]:
    """Auto's fine-tunes (`methods.auto`, with the run's options): each of the budget's examples
    for `finetune_epochs` epochs, then the held-out pairs' margins (rough; calibration corrects it)."""
    from curation.engine.select import budget_from
    from curation.methods.auto import ALPHAS, Auto
    from curation.methods.heldout import finetune_epochs
    try:
        t = Auto.tune_config(dict(cfg.options))
    except CurationError:  # a bad option is refused when the run starts; estimate the default
        t = Auto.tune
    budget = budget_from(cfg.select.percent, cfg.select.n, max(n, 1))
    steps = finetune_epochs(t, budget) * -(-budget // t.batch_size)
    per_tune = steps * t.batch_size * WARMUP_ROWS * row + pairs * 4 * row
    candidates = len(ALPHAS) + 3  # the alphas, BM25, repsim, the fusion
    return {AUTO_STAGES[0]: t.random_draws * per_tune, AUTO_STAGES[1]: candidates * len(t.seeds) * per_tune}


def _raise_episode_s(cfg: ScoreConfig, n: int, pairs: int, row: float, episodes: int | None = None) -> float:
    """RAISE: each step of an episode is a LoRA step on a batch plus a DPO pass over the pairs (rough)."""
    from curation.methods.ppo.config import RaiseConfig, make_plan

    try:
        rc = RaiseConfig.from_dict(cfg.options)
        plan = make_plan(rc, max(n, 1), cfg.select.percent, cfg.select.n)
    except CurationError:
        return 0.0
    per_step = rc.batch_size * WARMUP_ROWS * row + pairs * 3 * row
    return (episodes or rc.episodes) * plan.steps * per_step


def projector_kind(cfg: ScoreConfig, lora_dim: int | None) -> str:
    """The projector a run will use (`gradient.make_projector`'s rule for "auto")."""
    f = cfg.features
    if f.projector != "auto":
        return f.projector
    return "identity" if lora_dim is not None and lora_dim <= f.exact_max_dim else "sparse_jl"


def feature_dim(cfg: ScoreConfig, lora_dim: int | None) -> int:
    """Coordinates per stored feature row: d when features are exact, else k."""
    return lora_dim if projector_kind(cfg, lora_dim) == "identity" and lora_dim else cfg.features.k


@dataclass(frozen=True)
class FeaturePlan:
    """The gradient features a run would store: exact (projector identity) or projected to k."""

    exact: bool
    dim: int | None  # coordinates per row: the LoRA gradient's d when exact, else k (None: d unknown)


def feature_plan(model: str, projector: str, lora_r: int, home: Path, k: int = 8192) -> FeaturePlan:
    """What "Projection dim k" means for this model and LoRA rank: nothing when the features are
    exact (the Scoring form then shows d instead of a k that would not be used)."""
    from curation.config import FeatureConfig
    from curation.engine.settings import WarmupConfig
    cfg = ScoreConfig(method="rose", features=FeatureConfig(k=k, projector=projector))
    d = lora_dim(model_arch(model, home), lora_r, WarmupConfig().target_modules)
    exact = projector_kind(cfg, d) == "identity"
    return FeaturePlan(exact, d if exact else k)


def disk_bytes(cfg: ScoreConfig, facts: Facts) -> tuple[float, str]:
    """(bytes written, what they are): features (and warmup checkpoints) for gradient methods."""
    n, epochs = facts.n, cfg.warmup.epochs
    if cfg.method in GRADIENT_METHODS:
        per_value = 2 if cfg.features.dtype == "float16" else 4
        new = facts.n if facts.new_rows is None else facts.new_rows
        k_eff = feature_dim(cfg, facts.lora_dim)
        feats = (new + facts.n_pairs) * min(epochs, cfg.features.checkpoints or epochs) * k_eff * per_value
        warm = 0 if facts.warmup_cached else epochs * (facts.lora_dim or k_eff) * 4 * 3  # adapter, m, v
        return feats + warm, "of features"
    hidden = facts.hidden or 576  # unknown: smollm2's
    per_row = {"bm25": 30 * 8, "repsim": 4 * hidden, "raise": 8 * hidden}.get(cfg.method, 0)  # index; states
    return (per_row + 100) * n, "on disk"  # + ~100 bytes of stored score per example


# ---------------------------------------------------------------------------- facts from store and workspace


def gather_facts(store, pool: str, prefs: str | None, cfg: ScoreConfig, home: Path, detect_reuse: bool) -> Facts:
    """Pool size, pairs, mean length, model size; with ``detect_reuse`` also the stored train
    features and cached warmup the run would reuse (reads the warmup's examples)."""
    from curation.data.catalog import get_pool, get_prefset
    from curation.data.store import Example, PreferencePair

    with store.session() as s:
        p = get_pool(s, pool)
        n = int(s.scalar(select(func.count()).select_from(Example).where(Example.pool_id == p.id)) or 0)
        n_pairs = 0
        if prefs:
            ps = get_prefset(s, prefs)
            n_pairs = int(s.scalar(select(func.count()).select_from(PreferencePair)
                                   .where(PreferencePair.set_id == ps.id)) or 0)
        sample = s.scalars(select(Example.messages).where(Example.pool_id == p.id).order_by(Example.id)
                           .limit(SAMPLE_EXAMPLES)).all()
    chars = sum(len(m.get("content", "")) for msgs in sample for m in msgs) / max(len(sample), 1)
    name = cfg.model.name_or_path
    arch = model_arch(name, home)
    tokens = measured_tokens(sample, cfg, home) if cfg.method in MODEL_METHODS else None
    facts = Facts(n=n, n_pairs=n_pairs, tokens=tokens or min(cfg.model.max_length, chars / 4 + 12),
                  params=_params(name, home), lora_dim=lora_dim(arch, cfg.warmup.lora_r, cfg.warmup.target_modules),
                  hidden=(arch or {}).get("hidden_size"),
                  tiny_build=name == "tiny" and cfg.method in MODEL_METHODS and tiny_needs_build(home))
    states = cfg.method in ("repsim", "auto") and cfg.model.device in ("cpu", "cuda")
    if detect_reuse and n and (cfg.method in GRADIENT_METHODS or states):
        from curation.data.store import Example
        with store.session() as s:  # read once for both questions (a million-row pool is one scan)
            rows = s.execute(select(Example.id, Example.content_hash).where(Example.pool_id == p.id)
                             .order_by(Example.id)).all()
        if cfg.method in GRADIENT_METHODS:
            _detect_reuse(store, rows, cfg, home, facts)
        if states:
            facts.states_cached = _states_cached([r[1] for r in rows], cfg, home)
    return facts


def measured_tokens(sample: Sequence, cfg: ScoreConfig, home: Path) -> float | None:
    """Mean tokens per example as the run will see them (its model's tokenizer and chat template,
    cut at max length), None when the tokenizer cannot be read. Characters / 4 misjudges a pool
    the tokenizer fragments: the tiny model's BPE makes ~277 tokens of a Dolly record."""
    if not sample:
        return None
    try:
        tok = _tokenizer(cfg.model.name_or_path, str(home))
        from curation.engine.model import encode
        lengths = [len(encode(tok, msgs, cfg.model.max_length)["input_ids"]) for msgs in sample]
    except Exception:  # noqa: BLE001  (an estimate never fails a launch; the run reports a bad model)
        return None
    return sum(lengths) / len(lengths)


@functools.lru_cache(maxsize=8)
def _tokenizer(name: str, home: str):
    if name == "tiny":
        from curation.engine.poolfit import tiny_tokenizer
        return tiny_tokenizer(home)
    from transformers import AutoTokenizer

    from curation.engine.models import resolve
    return AutoTokenizer.from_pretrained(resolve(name, Path(home)), local_files_only=True)


def _params(name: str, home: Path) -> int:
    from curation.engine.models import n_params
    return n_params(name, home) or SMOLLM2_PARAMS  # unknown sizes are costed as a small model


def model_arch(name: str, home: Path) -> dict[str, Any] | None:
    """The sizes LoRA's gradient dimension depends on, from the model's config."""
    if name == "tiny":
        from curation.engine.tiny import TinyConfig
        t = TinyConfig()
        return {"hidden_size": t.hidden_size, "num_hidden_layers": t.num_layers, "num_attention_heads": t.num_heads,
                "num_key_value_heads": t.num_heads, "intermediate_size": t.intermediate_size}
    if name == "smollm2":
        from curation.engine.models import smollm2_dir
        name = str(smollm2_dir(home))
    path = Path(name) / "config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def lora_dim(arch: dict[str, Any] | None, r: int, targets: Sequence[str]) -> int | None:
    """Coordinates of the LoRA gradient (A and B of every targeted projection), None if unknown."""
    if not arch or not all(arch.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")):
        return None
    h, layers, heads = arch["hidden_size"], arch["num_hidden_layers"], arch["num_attention_heads"]
    kv = arch.get("num_key_value_heads") or heads
    hd = arch.get("head_dim") or h // heads
    inter = arch.get("intermediate_size") or 4 * h
    io = {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
          "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    if any(t not in io for t in targets):
        return None
    return layers * sum(r * (io[t][0] + io[t][1]) for t in targets)


def _states_cached(hashes: Sequence[str], cfg: ScoreConfig, home: Path) -> bool:
    """Whether repsim will find this pool's states (content hashes in id order) in the state cache."""
    from curation.engine.statecache import describe, has_cached

    m = cfg.model
    return has_cached(home, describe(m.name_or_path, m.dtype, m.max_length, m.device, hashes))


def _detect_reuse(store, rows: Sequence, cfg: ScoreConfig, home: Path, facts: Facts) -> None:
    """Fill in the cached warmup and the stored train-feature rows this run would reuse
    (``rows``: the pool's (id, content hash) in id order)."""
    from curation.data.store import Example
    from curation.engine.featuresets import content_keys, list_sets
    from curation.engine.warmup import ORIGIN_FILE, complete_warmup, reusable_warmup, sample_warmup_ids
    from curation.methods.gradient import WARMUP_SUBDIR, warmup_key

    wids = [int(i) for i in sample_warmup_ids([str(r[0]) for r in rows], cfg.warmup.percent, cfg.warmup.seed)]
    with store.session() as s:
        by_id = dict(s.execute(select(Example.id, Example.messages).where(Example.id.in_(wids))).all()) if wids else {}
    root = Path(home) / WARMUP_SUBDIR
    wkey = warmup_key(cfg, [by_id[i] for i in wids])
    if not complete_warmup(root / wkey, cfg.warmup.epochs) and cfg.features.reuse_warmup:
        if not any(root.glob(f"*/{ORIGIN_FILE}")):
            return  # no warmup stored at all: nothing cached, no features (and no content keys to compute)
        wkey = reusable_warmup(root, cfg, content_keys([r[1] for r in rows]), len(wids)) or wkey
    facts.warmup_cached = complete_warmup(root / wkey, cfg.warmup.epochs)
    if not facts.warmup_cached:
        return
    if _autocast_run(cfg):
        return  # features made under bf16 autocast have their own key (not matched here): promise nothing
    keys = content_keys([r[1] for r in rows])
    k_eff = feature_dim(cfg, facts.lora_dim)
    kind = projector_kind(cfg, facts.lora_dim)
    best, best_id = 0, None
    for fset in list_sets(home):
        key = fset.key
        if (key.model, key.warmup, key.max_length, key.dtype, len(key.checkpoints)) != (
                cfg.model.name_or_path, wkey, cfg.model.max_length, cfg.features.dtype, cfg.warmup.epochs):
            continue
        if key.projector.get("type") != kind or key.k != k_eff or key.projector.get("seed") != cfg.features.seed:
            continue
        covered = fset.coverage(keys)
        if covered > best:
            best, best_id = covered, fset.id
    if best:
        facts.new_rows = len(rows) - best
        facts.reuse_note = (f"Train features reused from the feature store (set {best_id[:8]}): {best:,} of "
                            f"{len(rows):,} examples are stored" + (", so only scoring remains." if best == len(rows)
                                                                    else f"; {len(rows) - best:,} to extract."))


# ---------------------------------------------------------------------------- calibration on earlier runs


def history_factors(store, cfg: ScoreConfig, limit: int = HISTORY_RUNS) -> tuple[dict[str, float], int]:
    """Measured / modelled seconds per stage kind over the last runs like this one (same model;
    same method for model-free methods) that stored an estimate; "*" over all. Cancelled,
    failed and killed runs count with the stages they finished (`finished_stages`)."""
    from curation.data.store import Run

    with store.session() as s:
        rows = s.execute(select(Run.method, Run.config, Run.meta, Run.stage_times, Run.status)
                         .where(Run.status.in_(HISTORY_STATUSES)).order_by(Run.id.desc()).limit(50)).all()
    records = [((meta or {}).get("estimate", {}).get("stages", []), finished_stages(status, times or {}),
                float((meta or {}).get("estimate", {}).get("contention", 1.0)))
               for method, config, meta, times, status in rows
               if (meta or {}).get("estimate") and _comparable(cfg, method, config or {})]
    return calibration(records, limit)


HISTORY_STATUSES = ("done", "cancelled", "failed", "running", "queued")


def finished_stages(status: str, times: dict[str, float]) -> dict[str, float]:
    """The stage times of a run that are whole: all of a done run's; without the last one (cut
    short) for a run that stopped or is still going."""
    if status == "done":
        return dict(times)
    return dict(list(times.items())[:-1])


def calibration(records: Sequence[tuple], limit: int = HISTORY_RUNS) -> tuple[dict[str, float], int]:
    """(kind -> measured / (modelled x contention) seconds, runs used) from (estimated stages,
    measured stage times[, the CPU contention when estimated]) of earlier runs, newest first;
    stages under 0.05 s modelled say nothing and are skipped."""
    actual: dict[str, float] = {}
    modelled: dict[str, float] = {}
    used = 0
    for stages, times, *rest in records:
        busy = float(rest[0]) if rest else 1.0
        counted = False
        for st in stages:
            took = times.get(st["name"])
            if took is None or st["raw_s"] < 0.05:
                continue
            for kind in (stage_kind(st["name"]), "*"):
                actual[kind] = actual.get(kind, 0.0) + float(took)
                modelled[kind] = modelled.get(kind, 0.0) + float(st["raw_s"]) * busy
            counted = True
        used += counted
        if used >= limit:
            break
    lo, hi = FACTOR_RANGE
    return {k: min(hi, max(lo, actual[k] / modelled[k])) for k in actual if modelled[k] > 0}, used


def _comparable(cfg: ScoreConfig, method: str, config: dict) -> bool:
    if cfg.method in MODEL_METHODS or method in MODEL_METHODS:
        return (method in MODEL_METHODS and cfg.method in MODEL_METHODS
                and (config.get("model") or {}).get("name_or_path") == cfg.model.name_or_path)
    return method == cfg.method


# ---------------------------------------------------------------------------- while it runs


def run_progress(plan: list[StageCost] | None, status: str, stage: str | None, stage_times: dict[str, float],
                 stage_eta: float | None, elapsed_s: float | None) -> dict[str, Any]:
    """Stage k of N, elapsed time and the overall ETA of a run (see the module doc).

    ``plan``: the run's estimated stages (None: unknown method, no k of N); ``stage_times``:
    seconds per stage so far (the current one's as of its last progress write)."""
    out = {"stage_index": None, "n_stages": len(plan) if plan else None, "elapsed_s": elapsed_s,
           "eta_total_s": None, "stage_label": stage_label(stage)}
    if not plan:
        return out
    names = [s.name for s in plan]
    current = re.sub(r" \(waiting.*\)$", "", stage or "")
    position = names.index(current) + 1 if current in names else None
    if status == "done":
        return {**out, "stage_index": len(plan), "eta_total_s": 0.0}
    if status not in ("queued", "running"):
        return {**out, "stage_index": position}
    if not stage:  # queued: nothing started yet
        return {**out, "stage_index": 0, "eta_total_s": round(sum(s.seconds for s in plan), 1)}
    if position is None:
        return out
    k = position - 1
    factor = _pace(plan[:k], stage_times)
    paces = kind_paces(plan[:k], stage_times, plan[k], stage_eta)
    if stage_eta is not None:
        remaining = stage_eta
    else:
        remaining = max(0.0, plan[k].seconds * paces.get(stage_kind(current), factor)
                        - float(stage_times.get(current, 0.0)))
    future = sum(s.seconds * paces.get(stage_kind(s.name), factor) for s in plan[k + 1:])
    return {**out, "stage_index": position, "eta_total_s": round(remaining + future, 1)}


BURST_S = 3.0  # seconds of a stage's own progress before its rate speaks for the stages of its kind


def kind_paces(done: list[StageCost], stage_times: dict[str, float], current: StageCost,
               stage_eta: float | None) -> dict[str, float]:
    """Measured / estimated seconds per stage kind in this run: from its finished stages and,
    after a short burst (`BURST_S`), from the current stage's projected length (elapsed + its
    rate-based ETA). Checkpoint 2's train features then take what checkpoint 1's took."""
    took: dict[str, float] = {}
    expected: dict[str, float] = {}
    rows = [(s, float(stage_times[s.name])) for s in done if s.name in stage_times]
    elapsed = float(stage_times.get(current.name, 0.0))
    if stage_eta is not None and elapsed >= BURST_S:
        rows.append((current, elapsed + stage_eta))
    for s, seconds in rows:
        if s.seconds < 1.0:
            continue
        kind = stage_kind(s.name)
        took[kind] = took.get(kind, 0.0) + seconds
        expected[kind] = expected.get(kind, 0.0) + s.seconds
    lo, hi = FACTOR_RANGE
    return {kind: min(hi, max(lo, took[kind] / expected[kind])) for kind in took}


def _pace(done: list[StageCost], stage_times: dict[str, float]) -> float:
    """How this run's finished stages compared with their estimates (1 without evidence)."""
    took = sum(float(stage_times[s.name]) for s in done if s.name in stage_times and s.seconds >= 1.0)
    expected = sum(s.seconds for s in done if s.name in stage_times and s.seconds >= 1.0)
    if expected <= 0:
        return 1.0
    lo, hi = 0.2, 5.0
    return min(hi, max(lo, took / expected))


def _autocast_run(cfg) -> bool:
    """Whether extraction will run under autocast (CUDA by default): its feature sets carry the
    precision in their model fingerprint, which the estimate cannot compute without the model."""
    from curation.engine.model import resolve_device
    try:
        kind = resolve_device(cfg.model.device).type
    except CurationError:  # cuda asked for but absent: the run will say so, the estimate need not
        kind = "cuda"
    return cfg.features.autocast_for(kind) is not None
