"""`bench peers`: our engine beside EleutherAI's bergson, on the same model, examples and ``k``.

bergson (see requirements-peers.txt) is an optional extra, imported here only:
when ``import bergson`` fails the bench says how to install it and returns ``{"skipped": ...}``.

What runs, in one process, on one model object (the model with a fresh LoRA adapter and seeded
``lora_B``, as `bench speed` prepares it; eval mode, fp32, CPU by default):

* **Data.** The first ``n`` usable examples of the pool (default: the demo pool), tokenized once
  by our chat template (`speed.pool_items`); bergson gets the very same token ids and labels as
  an in-memory ``datasets.Dataset``. The query side: every pair of the preference file (default:
  the demo prefs), prompt + chosen answer, encoded the same way.
* **Gradients.** Both take the per-example gradient of the mean token cross-entropy over the
  response tokens, with respect to the LoRA weights only (bergson's hooks target exactly the
  ``lora_A``/``lora_B`` Linear modules), plain gradients on both sides: LESS's Adam step
  (``m' / sqrt(v' + eps)``) and bergson's ``AdamNormalizer`` (``g / (sqrt(v) + eps)``) are
  different formulas, and neither is what is being timed (an elementwise step on the LoRA
  gradients). Checked: the two sides' Gram matrices agree to sketch noise.
* **Projection to k.** Ours: `SparseJLProjector(k)` (the production sketch). bergson, one variant
  per ``projections`` entry (``--methods``; the first is the headline ``bergson``): ``global``, a
  Rademacher projection to exactly ``k`` (each module's flattened gradient times a
  ``k × d_module`` matrix regenerated block by block from its seed at every batch, summed over
  modules), and ``per_module``, its default (activations and output gradients projected to ``p``
  inside the hooks, ``p × p`` per module, ``p = round(sqrt(k / modules))``). All unit-normalised.
* **Batches.** Ours: length-bucketed batches of ``batch_size`` (`ordered_features`). bergson: its
  ``allocate_batches`` with ``max_batch_size = batch_size`` and a token budget of ``batch_size``
  × the longest example, so no bergson batch holds more examples than ours.
* **Score.** LESS-style query = mean of the pairs' unit validation features (SGD gradients, no
  Adam, as LESS), score = cosine of each train feature with it; the same numpy formula for both.
  ``spearman`` = ``scipy.stats.spearmanr`` of the two score vectors.

Timed: train-feature extraction only (from pre-tokenized examples to the ``[n, k]`` array in
memory), best of ``repeats``, the repeats interleaved (ours, bergson, ours, ...) after one warm-up
batch each; so ``speed_ratio`` (ours ÷ bergson examples per second) holds on a loaded machine.
Peak memory: the process's resident-set high-water mark (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` before each timed call), which includes the model and everything
loaded before; ``rss_growth_mb`` is that peak minus the RSS when the call began.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from curation.engine.tiny import DEFAULT_CORPUS

Log = Callable[[str], None]
INSTALL = ("pip install --no-deps bergson==2.5.1 && pip install -r requirements-peers.txt "
           "(optional: only this bench uses it)")


def _demo_prefs() -> str:
    from curation.data.demo import DEMO_PREFS
    return str(DEMO_PREFS)


@dataclass
class PeersConfig:
    """One `bench peers` run; :meth:`quick` is a smoke run of seconds on the tiny model."""

    model: str = "tiny"
    n: int = 256
    k: int = 8192
    max_length: int = 512
    batch_size: int = 16  # the CLI passes the model's own feature batch (32 on tiny, 8 on smollm2)
    repeats: int = 2
    threads: int = 1
    seed: int = 0
    pool: str = str(DEFAULT_CORPUS)
    prefs: str = ""  # "" = the demo preference pairs
    # bergson's projections to run, the first is the headline `bergson`: "global" (to exactly k)
    # and/or "per_module" (its default, p x p per module)
    projections: tuple[str, ...] = ("global", "per_module")

    def __post_init__(self) -> None:
        from curation.errors import CurationError

        bad = [p for p in self.projections if p not in ("global", "per_module")]
        if bad or not self.projections:
            raise CurationError(f"bench peers: projections must be global and/or per_module (got {bad or 'none'})")
        low = {k: v for k, v in (("n", self.n), ("k", self.k), ("repeats", self.repeats),
                                  ("batch size", self.batch_size), ("threads", self.threads)) if v < 1}
        if low:
            raise CurationError("bench peers: " + ", ".join(f"{k} must be >= 1 (got {v})" for k, v in low.items()))

    @classmethod
    def quick(cls, **overrides: Any) -> PeersConfig:
        return cls(**{**dict(n=32, k=1024, repeats=1), **overrides})


def bergson_missing() -> str | None:
    """None when bergson imports, else the message that says how to get it.

    Importing bergson re-configures the root logger (INFO, to stdout, ``force=True``), which
    would put every library's log lines into ``--json``'s stdout: the root logger's handlers and
    level are put back as they were."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        import bergson  # noqa: F401
    except ImportError as e:
        return f"bergson is not installed ({e}): {INSTALL}"
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return None


# ---------------------------------------------------------------------------- memory


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def rss_peak() -> Iterator[dict[str, Any]]:
    """The RSS high-water mark of the code inside (``VmHWM`` after a reset), in MiB.
    Without /proc (not Linux) the lifetime ``ru_maxrss`` is reported and says so."""
    out: dict[str, Any] = {"start_rss_mb": _status_mb("VmRSS")}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        out["how"] = "VmHWM reset per call"
    except OSError:
        out["how"] = "ru_maxrss (process lifetime: not reset)"
    yield out
    peak = _status_mb("VmHWM")
    if peak is None or out["how"].startswith("ru_maxrss"):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_rss_mb"] = peak
    out["rss_growth_mb"] = peak - out["start_rss_mb"] if out["start_rss_mb"] is not None else None


# ---------------------------------------------------------------------------- the two sides


def bergson_processor(k: int, seed: int, target: str, modules: int):
    """(bergson ``GradientProcessor``, feature dims): ``global`` projects to exactly ``k``;
    ``per_module`` (bergson's default) to ``p × p`` per module, ``p = round(sqrt(k / modules))``."""
    from bergson.gradients import GradientProcessor

    p = k if target == "global" else max(1, round((k / modules) ** 0.5))
    processor = GradientProcessor({}, projection_dim=p, projection_type="rademacher", projection_target=target,
                                  projection_seed=seed)
    return processor, (k if target == "global" else modules * p * p)


def bergson_features(model, items, processor, batch_size: int, workdir: Path) -> np.ndarray:
    """bergson's unit per-example gradients of ``items``' mean response-token CE over the LoRA
    modules, projected by ``processor``, in ``items`` order. One processor across calls keeps
    its cached per-module matrices (the global projection regenerates its blocks per batch)."""
    from bergson.collector.collector import CollectorComputer
    from bergson.collector.in_memory_collector import InMemoryCollector
    from bergson.config.config import IndexConfig, PreprocessConfig
    from bergson.data import allocate_batches
    from bergson.utils.peft import detect_peft_modules
    from datasets import Dataset

    rows = [(b.input_ids[0].tolist(), b.labels[0].tolist()) for b in items]
    data = Dataset.from_dict({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows],
                              "length": [len(r[0]) for r in rows]})
    longest = max(len(r[0]) for r in rows)
    cfg = IndexConfig(run_path=str(workdir / "bergson"), projection_dim=processor.projection_dim,
                      projection_target=processor.projection_target, projection_type="rademacher",
                      projection_seed=processor.projection_seed, loss_reduction="mean",
                      token_batch_size=batch_size * longest, max_batch_size=batch_size)
    cfg.partial_run_path.mkdir(parents=True, exist_ok=True)
    collector = InMemoryCollector(model=model.base_model, cfg=cfg, processor=processor, data=data,
                                  target_modules=detect_peft_modules(model),
                                  preprocess_cfg=PreprocessConfig(unit_normalize=True))
    batches = allocate_batches(data["length"], cfg.token_batch_size, max_batch_size=batch_size)
    CollectorComputer(model=model, data=data, collector=collector, batches=batches,
                      cfg=cfg).run_with_collector_hooks(desc="bergson")
    return np.concatenate([g.float().numpy() for g in collector.gradients.values()], axis=1)


def query_items(tokenizer, prefs: str, max_length: int) -> list:
    """SFT items of every pair's prompt + chosen answer (the LESS validation side)."""
    from curation.data.io.prefs import read_pref_file
    from curation.engine.model import encode_pair
    from curation.engine.objectives import sft_item
    from curation.errors import CurationError
    from curation.methods.gradient import tensors

    records, problems = read_pref_file(prefs)
    if not records:
        raise CurationError(f"{prefs}: no usable preference pair ({len(problems)} bad records)")
    return [sft_item(*tensors(encode_pair(tokenizer, r.prompt_messages, r.chosen, max_length))) for r in records]


def less_scores(train: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Cosine of each train row with the mean of the unit validation rows (the LESS-style query)."""
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    query = unit(val).mean(0)
    return unit(train) @ (query / max(float(np.linalg.norm(query)), 1e-12))


# ---------------------------------------------------------------------------- summary


def side(n: int, seconds: Sequence[float], memory: Sequence[dict], what: str) -> dict[str, Any]:
    """One side's row: best time of its repeats, and its highest memory peak."""
    best = min(seconds)
    peak = max(memory, key=lambda m: m["peak_rss_mb"])
    return {"examples_per_s": n / best, "seconds": best, "all_seconds": list(seconds),
            "peak_rss_mb": peak["peak_rss_mb"], "rss_growth_mb": peak["rss_growth_mb"],
            "memory_how": peak["how"], "what": what}


def agreement(ours: np.ndarray, theirs: np.ndarray, top: float = 0.05) -> dict[str, float]:
    """Spearman of the two score vectors and the overlap of their top ``top`` fractions."""
    from scipy.stats import spearmanr

    m = max(1, round(len(ours) * top))
    top_o, top_t = set(np.argsort(-ours)[:m].tolist()), set(np.argsort(-theirs)[:m].tolist())
    return {"spearman": float(spearmanr(ours, theirs).statistic), "top5_overlap": len(top_o & top_t) / m}


def gram_gap(ours: np.ndarray, theirs: np.ndarray, rows: int = 64) -> float:
    """Largest gap between the two sides' example-example cosines (first ``rows`` examples): both
    sketch the same gradients, so it should be of the order of 1/sqrt(k), not of 1."""
    a, b = ours[:rows], theirs[:rows]
    return float(np.abs(a @ a.T - b @ b.T).max())


def summarize(ours: dict, bergson: dict, ours_scores: np.ndarray, bergson_scores: np.ndarray,
              config: dict, notes: list[str], gram_max_abs_diff: float | None = None) -> dict[str, Any]:
    """The bench's JSON: both sides, their agreement, and ours ÷ bergson examples per second."""
    agree = agreement(ours_scores, bergson_scores)
    return {"ours": ours, "bergson": bergson, "spearman": agree["spearman"],
            "top5_overlap": agree["top5_overlap"], "gram_max_abs_diff": gram_max_abs_diff,
            "speed_ratio": ours["examples_per_s"] / bergson["examples_per_s"], "config": config, "notes": notes}


def summary(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return r["skipped"]
    c = r["config"]
    lines = [f"peers on {c['model']}: n={c['n']} ({c['tokens']} tokens), k={c['k']}, {c['threads']} thread(s), "
             f"{c['lora_params']:,} LoRA weights in {c['modules']} modules",
             f"{'':<20}{'dims':>6}{'ex/s':>9}{'seconds':>9}{'peak RSS MiB':>14}{'growth':>8}{'ours/it':>9}"
             f"{'spearman':>9}{'top5%':>7}"]
    rows = [("ours", {**r["ours"], "dims": c["k"]})] + [(f"bergson {n}", v) for n, v in r["bergson_variants"].items()]
    for name, s in rows:
        growth = f"{s['rss_growth_mb']:>8.0f}" if s["rss_growth_mb"] is not None else f"{'?':>8}"
        tail = (f"{s['speed_ratio']:>8.2f}x{s['spearman']:>9.3f}{s['top5_overlap']:>7.2f}" if "speed_ratio" in s else "")
        lines.append(f"{name:<20}{s['dims']:>6}{s['examples_per_s']:>9.2f}{s['seconds']:>9.2f}{s['peak_rss_mb']:>14.0f}"
                     f"{growth}{tail}")
    lines.append(f"headline: bergson {r['bergson']['projection']}: speed_ratio {r['speed_ratio']:.2f}x, spearman "
                 f"{r['spearman']:.3f}; example-cosine gap {r['gram_max_abs_diff']:.3f} (1/sqrt(k) = {c['k'] ** -0.5:.3f})")
    return "\n".join(lines + [f"note: {n}" for n in r["notes"]])


# ---------------------------------------------------------------------------- driver


def run_peers(cfg: PeersConfig, model=None, tokenizer=None, workspace: Path | None = None,
              log: Log | None = None) -> dict[str, Any]:
    """Both sides on the same examples (see the module doc); ``{"skipped"}`` without bergson."""
    if missing := bergson_missing():
        return {"skipped": missing}
    import torch

    from curation.bench.speed import (
        SpeedConfig, _loaded, _torch_threads, pool_items, timed)
    from curation.engine.grads import selected_params
    from curation.engine.model import pad_token_id
    from curation.engine.objectives import SFTObjective
    from curation.engine.projection import SparseJLProjector
    from curation.methods.gradient import ordered_features

    log = log or (lambda msg: None)
    with _torch_threads(cfg.threads), tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        speed_cfg = SpeedConfig(model=cfg.model, max_length=cfg.max_length, seed=cfg.seed)
        model, tokenizer = _loaded(speed_cfg, model, tokenizer, workspace, log)
        device, pad, sft = next(model.parameters()).device, pad_token_id(tokenizer), SFTObjective()
        items = pool_items(tokenizer, cfg.pool, cfg.n, cfg.max_length)
        val = query_items(tokenizer, cfg.prefs or _demo_prefs(), cfg.max_length)
        projector, params = SparseJLProjector(cfg.k, cfg.seed), selected_params(model)
        procs = {f"bergson_{target}": bergson_processor(cfg.k, cfg.seed, target, len(params))
                 for target in cfg.projections}
        runs = {"ours": lambda xs: ordered_features(model, xs, sft, projector, None, cfg.batch_size, pad),
                **{name: _bergson_run(model, proc, cfg.batch_size, Path(tmp)) for name, (proc, _) in procs.items()}}
        for name, fn in runs.items():
            log(f"warm-up: {name} on one batch")
            timed(lambda: fn(items[: cfg.batch_size]), device)
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        memory: dict[str, list[dict]] = {name: [] for name in runs}
        train: dict[str, np.ndarray] = {}
        for rep in range(cfg.repeats):
            for name, fn in runs.items():
                log(f"repeat {rep + 1}/{cfg.repeats}: {name} train features of {cfg.n} examples")
                with rss_peak() as mem:
                    secs, feats = timed(lambda: fn(items), device)
                seconds[name].append(secs)
                memory[name].append(mem)
                train.setdefault(name, feats)
        log(f"validation features of {len(val)} pairs, every side")
        scores = {name: less_scores(train[name], fn(val)) for name, fn in runs.items()}
        config = {"model": cfg.model, "n": cfg.n, "k": cfg.k, "threads": torch.get_num_threads(),
                  "device": str(device), "max_length": cfg.max_length, "batch_size": cfg.batch_size,
                  "repeats": cfg.repeats, "pool": cfg.pool, "prefs": cfg.prefs or _demo_prefs(),
                  "query_pairs": len(val), "tokens": int(sum(b.input_ids.shape[1] for b in items)),
                  "lora_params": int(sum(p.numel() for p in params.values())), "modules": len(params),
                  "projections": list(cfg.projections), "torch": torch.__version__, "bergson": _bergson_version(),
                  "compared": "train-feature extraction (pre-tokenized examples -> unit [n, k] features in memory) "
                              "of per-example LoRA gradients of the mean response-token CE (plain gradients, "
                              "no Adam step); LESS-style cosine to the mean chosen-answer gradient for the ranking"}
        ours = side(cfg.n, seconds["ours"], memory["ours"],
                    "ordered_features: length-bucketed batches, per-sample gradients, sparse JL")
        variants = {name.removeprefix("bergson_"): _variant(cfg, proc, dims, seconds[name], memory[name], ours,
                                                            scores["ours"], scores[name], train["ours"], train[name])
                    for name, (proc, dims) in procs.items()}
        head = cfg.projections[0]
        result = summarize(ours, variants[head], scores["ours"], scores[f"bergson_{head}"], config, _notes(cfg),
                           variants[head]["gram_max_abs_diff"])
        result["bergson_variants"] = variants
        return result


WHAT = {"global": "hooks on the LoRA Linear modules; each module's per-example gradient formed, then projected to "
                  "k by a dense Rademacher matrix regenerated block by block at every batch, summed over modules",
        "per_module": "bergson's default: hooks project the activations and output gradients to p inside the "
                      "forward/backward (matrices cached), p x p per module: the gradient is never formed"}


def _variant(cfg: PeersConfig, proc, dims: int, seconds, memory, ours: dict, ours_scores, scores, ours_train,
             train) -> dict[str, Any]:
    """One bergson projection's row: its side, its agreement with ours and ours ÷ its speed."""
    row = side(cfg.n, seconds, memory, WHAT[proc.projection_target])
    return {**row, "projection": proc.projection_target, "projection_dim": proc.projection_dim, "dims": dims,
            **agreement(ours_scores, scores), "gram_max_abs_diff": gram_gap(ours_train, train),
            "speed_ratio": ours["examples_per_s"] / row["examples_per_s"]}


def _bergson_run(model, processor, batch_size: int, workdir: Path) -> Callable[[list], np.ndarray]:
    return lambda xs: bergson_features(model, xs, processor, batch_size, workdir)


def _bergson_version() -> str:
    import bergson
    return getattr(bergson, "__version__", "?")


def _notes(cfg: PeersConfig) -> list[str]:
    return [
        "timings: train features only, best of the interleaved repeats after one warm-up batch each; the "
        "tokenization, bergson's Dataset build and the validation side are not timed",
        "projections differ (ours sparse JL; bergson's `global` a dense Rademacher matrix regenerated per batch, "
        "its `per_module` p x p sketches of activations and output gradients inside the hooks), so the "
        "Spearman is of two sketches of the same gradients, not of identical features",
        "no Adam step on either side: LESS's m'/sqrt(v'+eps) and bergson's AdamNormalizer g/(sqrt(v)+eps) are "
        "different formulas (no m, eps outside the root, no g^2 term), and with `bench speed`'s random v the few "
        "near-zero v entries dominate bergson's features (Spearman ~0 in a trial); both are an elementwise "
        "step on the LoRA gradients, a small part of the cost",
        "bergson_variants: `global` projects to exactly k; `per_module` is bergson's default double-sided "
        "projection (p*p per module, p = round(sqrt(k / modules)), so its dims only approximate k); `bergson` "
        "is the first one run (--methods); all target our LoRA modules (bergson's default would be every "
        "Linear of the full model)",
        "peak_rss_mb is the whole process (model included): compare rss_growth_mb for what each call adds",
    ]


def config_from_args(args: argparse.Namespace) -> PeersConfig:
    """CLI options over the defaults; max length and batch are the model's own (`models.defaults_for`,
    as `bench speed --presets` takes them), so a real model runs at its production settings."""
    from curation.engine.models import defaults_for
    from curation.workspace import Workspace

    given = {name: getattr(args, name, None) for name in ("model", "n", "k", "threads", "pool", "prefs")}
    overrides = {name: value for name, value in given.items() if value is not None}
    d = defaults_for(overrides.get("model", "tiny"), Workspace.from_env().home)
    overrides = {"max_length": d.max_length, "batch_size": d.feature_batch, **overrides}
    if methods := getattr(args, "methods", None):
        overrides["projections"] = tuple(m.strip() for m in methods.split(",") if m.strip())
    return PeersConfig.quick(**overrides) if getattr(args, "quick", False) else PeersConfig(**overrides)


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench peers {time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    result = run_peers(config_from_args(args), log=log)
    if "skipped" in result:
        print(result["skipped"], file=sys.stderr)
    print(json.dumps(result) if args.json else summary(result))
    return 0
