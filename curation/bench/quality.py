"""`bench quality`: does a method select the target task's examples, avoid planted noise, and
make a better fine-tuned model?

For each suite (`quality_suites`: ``synthetic``, ``t0``) the pool and each target's pairs are
imported into a throwaway workspace and every method runs once through the real library
(`import_pool` / `import_prefs` / `create_run` / `execute_run`), all runs sharing the cached base
model and, for the gradient methods, one warmup (same pool and config, same warmup dir). The
1/5/10% selections all come from that one run's scores (`select.select_top`). Metrics:

* ``precision``: share of the selected examples whose dataset is the target's.
* ``noise_rate`` (synthetic): share of the selected *target* examples that carry a planted wrong
  answer; omitted when a selection holds no target example.
* ``accuracy_mean`` / ``accuracy_std``: exact match on the target's held-out prompts after a
  fresh LoRA fine-tune of the base model on the selection (`downstream`, budgets matched per
  percent), mean and population std (ddof=0) over the seeds. For several targets (t0) a seed's
  accuracy is the mean over targets, each target tuned on its own selection.

``--json`` prints ``{suite: {method: {percent: {metric: value}}, "full_pool": {"100": {...}},
"_info": {...}}}``; ``_info`` (not a method) holds sizes, skipped or failed methods, run ids, the
per-seed accuracies, the budgets and the wall time per stage. A suite that cannot run is
``{"_info": {"skipped": reason}}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from curation.bench.downstream import DownstreamConfig, ci95, mean_std, run_downstream
from curation.bench.quality_suites import (
    PrefsSpec,
    Suite,
    SyntheticSpec,
    T0Spec,
    Target,
    build_prefs,
    build_synthetic,
    build_t0,
    prefs_available,
    prefs_root,
    t0_available,
    t0_root,
)
from curation.config import FeatureConfig, ScoreConfig, SelectConfig
from curation.engine.model import ModelConfig
from curation.engine.models import load_model
from curation.engine.select import select_top
from curation.engine.warmup import WarmupConfig
from curation.errors import CurationError

METHODS = ("rose", "less", "nice", "repsim", "bm25", "random", "raise",
           "contrast:0.25", "contrast:0.5", "contrast:0.75", "fusion:less+bm25", "auto")
# "contrast:A": method contrast with alpha A; "fusion:X+Y": `runs.fuse` of this suite's X and Y runs


def method_name(key: str) -> str:
    """The registered method of a bench key ("contrast:0.5" -> "contrast")."""
    return key.partition(":")[0]
SUITES = ("synthetic", "t0", "prefs")
Log = Callable[[str], None]


@dataclass
class QualityConfig:
    """Everything one `bench quality` invocation does; `quick()` is the test-sized variant."""

    suites: tuple[str, ...] = SUITES
    methods: tuple[str, ...] = METHODS
    percents: tuple[float, ...] = (1.0, 5.0, 10.0)
    model: str = "tiny"  # base model of scoring and downstream ("tiny" = the cached offline model)
    max_length: int = 512  # scoring max tokens per example (the product default)
    device: str = "cpu"
    threads: int = 1
    k: int = 8192
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    nice: dict[str, Any] = field(default_factory=dict)  # NICE options besides the reward
    raise_options: dict[str, Any] = field(default_factory=dict)  # RAISE options (`raise_.config.RaiseConfig`)
    auto_options: dict[str, Any] = field(default_factory=dict)  # auto's fine-tune counts (`methods.auto.Auto`)
    preset: str = "default"  # feature preset of the gradient methods (`config.PRESETS`; "fast" on smollm2)
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    t0: T0Spec = field(default_factory=T0Spec)
    prefs: PrefsSpec = field(default_factory=PrefsSpec)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    t0_downstream: bool = False  # t0 fine-tunes: off by default (long prompts, slow on CPU)
    feature_batch_size: int = 16

    @classmethod
    def quick(cls, model: str | None = None, **overrides: Any) -> "QualityConfig":
        """Seconds-scale sizes for tests: tiny pool, small k, 1 seed, downstream at 5% only."""
        values = dict(
            model=model or "tiny", max_length=128, k=256,
            warmup=WarmupConfig(percent=10, epochs=2, batch_size=16, max_length=128),
            nice={"samples": 2, "max_new_tokens": 16},
            raise_options={"episodes": 2, "ppo_epochs": 2},
            synthetic=SyntheticSpec(pool_size=300, shots=2, heldout=10),
            t0=T0Spec(targets=("ag_news",), pool_size=200, shots=2, heldout=5, max_length=128),
            prefs=PrefsSpec(shots=2, per_site=8, t0_size=120, max_length=128),
            downstream=DownstreamConfig(percents=(5.0,), seeds=(0,), epochs=1, min_steps=3, full_pool_epochs=1,
                                        max_length=128, max_new_tokens=16))
        return cls(**{**values, **overrides})

    def score_config(self, method: str, model_path: str, reward: str, max_length: int | None = None) -> ScoreConfig:
        method, _, arg = method.partition(":")
        options = {"nice": {"reward": reward, **self.nice}, "raise": dict(self.raise_options),
                   "auto": dict(self.auto_options)}.get(method, {})
        if method == "contrast" and arg:
            options = {"alpha": float(arg)}
        max_length = max_length or self.max_length
        model = ModelConfig(name_or_path=model_path, max_length=max_length, device=self.device)
        warmup = dataclasses.replace(self.warmup, max_length=min(self.warmup.max_length, max_length))
        cfg = ScoreConfig(method=method, model=model,
                          warmup=warmup, features=FeatureConfig(k=self.k, batch_size=self.feature_batch_size),
                          select=SelectConfig(percent=max(self.percents)), options=options, threads=self.threads)
        if self.preset != "default":
            cfg.apply_preset(self.preset)
        return cfg

    def __post_init__(self) -> None:
        from curation.config import preset
        from curation.methods.auto import Auto
        if not set(self.downstream.percents) <= set(self.percents):
            raise ValueError(f"downstream percents {self.downstream.percents} must be among {self.percents}")
        preset(self.preset)  # an unknown name is refused here, not by every method's run
        Auto.tune_config(self.auto_options)


def pct_key(percent: float) -> str:
    """"5" for 5.0, "2.5" for 2.5: the JSON key of a percent."""
    return f"{percent:g}"


# ---------------------------------------------------------------- metrics


def selection_metrics(selected_uids: list[str], labels: dict[str, dict], target: str,
                      has_noise: bool) -> dict[str, float]:
    """precision (and noise_rate when the suite plants noise) of one selection, from pool labels."""
    rows = [labels[u] for u in selected_uids]
    on_target = [r for r in rows if r["dataset"] == target]
    out = {"precision": len(on_target) / len(rows)}
    if has_noise and on_target:
        out["noise_rate"] = sum(bool(r.get("noisy")) for r in on_target) / len(on_target)
    return out


def _mean_metrics(per_target: list[dict[str, float]]) -> dict[str, float]:
    """Macro mean over targets of each metric present for every target."""
    keys = [k for k in per_target[0] if all(k in m for m in per_target)]
    return {k: float(np.mean([m[k] for m in per_target])) for k in keys}


# ---------------------------------------------------------------- scoring


class SuiteRun:
    """One suite in its throwaway workspace: import, score each method, select, fine-tune."""

    def __init__(self, suite: Suite, cfg: QualityConfig, model_path: str, workdir: Path, log: Log):
        from curation.data.store import Store
        from curation.workspace import Workspace

        self.suite, self.cfg, self.model_path, self.log = suite, cfg, model_path, log
        self.ws = Workspace(home=workdir.resolve(), db_url=f"sqlite:///{workdir.resolve() / 'curation.db'}").ensure()
        self.store = Store.open(self.ws)
        self.labels = {r["id"]: r for r in suite.pool}
        self.info: dict[str, Any] = {"workdir": str(self.ws.home), "sizes": suite.sizes, "notes": list(suite.notes),
                                     "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
                                     "skipped_methods": {}, "failed_methods": {}, "runs": {},
                                     "cost": {"scoring": {}, "downstream": {}}}
        self.selections: dict[str, dict[str, dict[str, list[int]]]] = {}  # target -> method -> pct -> ids

    def import_data(self) -> None:
        from curation.data.imports import import_pool, import_prefs
        from curation.synthetic import to_jsonl

        t = time.perf_counter()
        data = self.ws.uploads
        (data / "pool.jsonl").write_text(to_jsonl(self.suite.pool), encoding="utf-8")
        import_pool(self.store, data / "pool.jsonl", name="pool")
        for tg in self.suite.targets:
            (data / f"prefs-{tg.name}.jsonl").write_text(to_jsonl(tg.prefs), encoding="utf-8")
            import_prefs(self.store, data / f"prefs-{tg.name}.jsonl", name=f"prefs-{tg.name}", subtask_field="subtask")
        self.uid = self._uids()
        self.info["cost"]["import_s"] = round(time.perf_counter() - t, 2)

    def _uids(self) -> dict[int, str]:
        from sqlalchemy import select

        from curation.data.store import Example
        with self.store.session() as s:
            return dict(s.execute(select(Example.id, Example.uid)).all())

    def score_all(self) -> None:
        from curation.methods import REGISTRY
        for method in self.cfg.methods:
            if method_name(method) not in REGISTRY:
                self.info["skipped_methods"][method] = "not registered in curation.methods.REGISTRY"
                self.log(f"{self.suite.name}: {method} skipped (not registered)")
                continue
            for tg in self.suite.targets:
                self._score(method, tg)

    def _score(self, method: str, tg: Target) -> None:
        from curation.runs.execute import create_run, execute_run, load_scores, show_run

        key = method if len(self.suite.targets) == 1 else f"{method}/{tg.name}"
        self.log(f"{self.suite.name}: scoring {key}")
        t = time.perf_counter()
        run_id = None
        try:
            if method.startswith("fusion:"):  # of two runs this suite scored already
                from curation.runs.fuse import fuse
                parts = method.partition(":")[2].split("+")
                run_id = fuse(self.store, [self.info["runs"][p if len(self.suite.targets) == 1 else f"{p}/{tg.name}"]
                                           for p in parts], ws=self.ws)
            else:
                run_id = create_run(self.store, "pool", f"prefs-{tg.name}",
                                    self.cfg.score_config(method, self.model_path, tg.nice_reward,
                                                          self.suite.max_length), ws=self.ws)
                execute_run(self.store, run_id, ws=self.ws)
        except Exception as e:  # noqa: BLE001  (one broken method must not sink the whole bench)
            self.info["failed_methods"][key] = f"{type(e).__name__}: {e}"
            self.log(f"{self.suite.name}: {key} failed: {type(e).__name__}: {e}")
            return
        finally:
            if run_id is not None:
                self.info["runs"][key] = run_id
        ids, scores = load_scores(self.store, run_id)
        self.selections.setdefault(tg.name, {})[method] = {
            pct_key(p): select_top(scores, ids, percent=p).selected_ids for p in self.cfg.percents}
        shown = show_run(self.store, run_id, top=0)
        self.info["cost"]["scoring"][key] = {"wall_s": round(time.perf_counter() - t, 2), "stages": shown["stage_times"]}
        if (shown["meta"] or {}).get("auto"):  # which candidate auto chose on its held-out pairs, and why
            auto = shown["meta"]["auto"]
            self.info.setdefault("auto_chosen", {})[key] = auto["chosen"]
            self.info.setdefault("auto_candidates", {})[key] = {
                "why": auto.get("why"), "candidates": auto.get("candidates", [])}
        if (shown["meta"] or {}).get("warnings"):  # e.g. NICE prompts whose samples all got reward 0
            self.info.setdefault("run_warnings", {})[key] = shown["meta"]["warnings"]

    def selection_table(self) -> dict[str, dict[str, dict[str, float]]]:
        """method -> percent -> precision/noise_rate (macro mean over targets)."""
        table: dict[str, dict[str, dict[str, float]]] = {}
        methods = [m for m in self.cfg.methods if all(m in self.selections.get(t.name, {}) for t in self.suite.targets)]
        for m in methods:
            table[m] = {}
            for p in map(pct_key, self.cfg.percents):
                per_target = [selection_metrics([self.uid[i] for i in self.selections[t.name][m][p]], self.labels,
                                                t.name, self.suite.has_noise) for t in self.suite.targets]
                table[m][p] = _mean_metrics(per_target)
                if len(per_target) > 1:
                    self.info.setdefault("per_target", {}).setdefault(m, {})[p] = {
                        t.name: v for t, v in zip(self.suite.targets, per_target)}
        full = [selection_metrics(list(self.uid.values()), self.labels, t.name, self.suite.has_noise)
                for t in self.suite.targets]
        table["full_pool"] = {"100": _mean_metrics(full)}
        return table

    # ------------------------------------------------------------ downstream

    def downstream(self, table: dict[str, dict[str, dict[str, float]]]) -> None:
        """Fine-tune per (method, percent, seed) and on the full pool; fills accuracy into `table`."""
        from sqlalchemy import select

        from curation.data.store import Example

        self.log(f"{self.suite.name}: downstream fine-tunes")
        t = time.perf_counter()
        model, tok = load_model(ModelConfig(name_or_path=self.model_path, device=self.cfg.device), self.ws.home)
        with self.store.session() as s:
            messages = dict(s.execute(select(Example.id, Example.messages).order_by(Example.id)).all())
        pcts = [pct_key(p) for p in self.cfg.downstream.percents]
        sets = {m: {pk: {tg: [messages[i] for i in self.selections[tg][m][pk]] for tg in self.selections}
                    for pk in pcts} for m in table if m != "full_pool"}
        evals = {tg.name: (tg.heldout, tg.check) for tg in self.suite.targets}
        res = run_downstream(model, tok, sets, list(messages.values()), evals, self.cfg.downstream,
                             self.ws.home / "downstream", lambda msg: self.log(f"{self.suite.name}: {msg}"))
        for method, by_pct in res.per_seed.items():
            for pk, accs in by_pct.items():
                table[method][pk]["accuracy_mean"], table[method][pk]["accuracy_std"] = mean_std(accs)
                table[method][pk]["accuracy_ci95"] = ci95(accs)
        self.info.update(base_model_accuracy=res.base_accuracy, accuracy_per_seed=res.per_seed, budgets=res.budgets)
        self.info["cost"]["downstream"] = {**res.cost, "total_s": round(time.perf_counter() - t, 2)}

    def pair_downstream(self, table: dict[str, dict[str, dict[str, float]]]) -> None:
        """prefs: fine-tune on each selection per seed; held-out preference accuracy and margin
        (`curation.methods.heldout`: DPO implicit reward against the base model)."""
        from sqlalchemy import select

        from curation.data.store import Example
        from curation.methods.heldout import pair_items, tuned_margins

        self.log(f"{self.suite.name}: held-out preference fine-tunes")
        t, ds = time.perf_counter(), self.cfg.downstream
        model, tok = load_model(ModelConfig(name_or_path=self.model_path, device=self.cfg.device), self.ws.home)
        with self.store.session() as s:
            messages = dict(s.execute(select(Example.id, Example.messages).order_by(Example.id)).all())
        (tg,) = self.suite.targets
        items = pair_items(tg.heldout, tok, self.suite.max_length or ds.max_length)
        per_seed: dict[str, dict[str, list[float]]] = {}
        for method in [m for m in table if m != "full_pool"]:
            for pk in map(pct_key, ds.percents):
                examples = [messages[i] for i in self.selections[tg.name][method][pk]]
                accs, margins = [], []
                for seed in ds.seeds:
                    m, model = tuned_margins(model, tok, examples, ds.train_config(ds.epochs_for(len(examples)), seed),
                                             items, self.ws.home / "downstream" / f"{method}-{pk}-{seed}")
                    accs.append(float((m > 0).mean()))
                    margins.append(float(m.mean()))
                row = table[method][pk]
                row["accuracy_mean"], row["accuracy_std"] = mean_std(accs)
                row["accuracy_ci95"], row["margin_mean"] = ci95(accs), float(np.mean(margins))
                per_seed.setdefault(method, {})[pk] = accs
                self.log(f"{self.suite.name}: {method} @ {pk}%: held-out preference accuracy "
                         f"{row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f}, margin {row['margin_mean']:+.3f}")
        self.info.update(accuracy_per_seed=per_seed, heldout_pairs=len(items))
        self.info["cost"]["downstream"] = {"total_s": round(time.perf_counter() - t, 2)}


# ---------------------------------------------------------------- suites


def resolve_model(name: str, log: Log) -> str:
    """A local path for the base model: "tiny" is built (first time, minutes) or found in the cache;
    "smollm2" is its converted folder in the main workspace (bench workspaces are throwaway)."""
    if name == "smollm2":
        from curation.engine.models import resolve
        from curation.workspace import Workspace
        return resolve(name, Workspace.from_env().home)
    if name != "tiny":
        return name
    from curation.engine.tiny import ensure_tiny_model
    from curation.workspace import Workspace
    log("resolving the tiny base model (built on first use: a few minutes)")
    return str(ensure_tiny_model(Workspace.from_env().ensure().home))


def build_suite(name: str, cfg: QualityConfig) -> Suite | str:
    """The suite's data, or the reason it is skipped."""
    if name == "synthetic":
        return build_synthetic(cfg.synthetic)
    if name == "t0":
        if not t0_available(cfg.t0):
            return f"t0 data not found at {t0_root(cfg.t0)}"
        return build_t0(cfg.t0)
    if name == "prefs":
        if not prefs_available(cfg.prefs, cfg.t0):
            return f"ROSE preference sets or t0 pool not found at {prefs_root(cfg.prefs)} / {t0_root(cfg.t0)}"
        return build_prefs(cfg.prefs, cfg.t0)
    raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")


def run_suite(name: str, cfg: QualityConfig, workdir: Path, log: Log) -> dict:
    """One suite's result object (methods, full_pool, _info)."""
    started = time.perf_counter()
    suite = build_suite(name, cfg)
    if isinstance(suite, str):
        log(f"{name}: skipped ({suite})")
        return {"_info": {"skipped": suite}}
    build_s = time.perf_counter() - started
    run = SuiteRun(suite, cfg, resolve_model(cfg.model, log), workdir, log)
    run.import_data()
    run.score_all()
    table = run.selection_table()
    if name == "prefs":
        run.pair_downstream(table)
    elif name == "synthetic" or cfg.t0_downstream:
        run.downstream(table)
    else:
        run.info["notes"].append("downstream fine-tuning is off for this suite (QualityConfig.t0_downstream)")
    cost = run.info["cost"]
    cost["build_s"] = round(build_s, 2)
    cost["scoring_total_s"] = round(sum(v["wall_s"] for v in cost["scoring"].values()), 2)
    cost["downstream_total_s"] = cost["downstream"].get("total_s", 0.0)
    cost["total_s"] = round(time.perf_counter() - started, 2)
    run.info["notes"].append("the gradient methods share one warmup: the first of them to run pays for it")
    return {**table, "_info": run.info}


def run_quality(cfg: QualityConfig, workdir: Path | None = None, log: Log | None = None) -> dict:
    """Every suite of `cfg`; with no `workdir` each suite works in a temp dir under the workspace
    (``$CURATION_HOME/bench/``) that is deleted afterwards."""
    log = log or (lambda msg: None)
    result = {}
    for name in cfg.suites:
        if workdir is not None:
            result[name] = run_suite(name, cfg, Path(workdir) / name, log)
            continue
        with bench_dir(f"quality-{name}-") as tmp:
            result[name] = run_suite(name, cfg, tmp, log)
            result[name].get("_info", {}).pop("workdir", None)  # deleted below
    return result


@contextmanager
def bench_dir(prefix: str) -> Iterator[Path]:
    """A throwaway folder under ``$CURATION_HOME/bench/``, deleted afterwards."""
    from curation.workspace import Workspace
    parent = Workspace.from_env().ensure().home / "bench"
    parent.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- CLI


def summary(result: dict) -> str:
    """The human report: one table per suite, then costs and notes."""
    lines = []
    for suite, data in result.items():
        info = data.get("_info", {})
        if "skipped" in info:
            lines.append(f"== {suite}: skipped ({info['skipped']})")
            continue
        lines.append(f"== {suite} ({json.dumps(info.get('sizes', {}))})")
        lines.append(f"{'method':<10}{'pct':>5}{'precision':>11}{'noise':>8}{'accuracy':>17}")
        for method, rows in data.items():
            if method == "_info":
                continue
            for p, m in rows.items():
                acc = (f"{m['accuracy_mean']:.3f} ± {m['accuracy_std']:.3f}" if "accuracy_mean" in m else "-")
                noise = f"{m['noise_rate']:.3f}" if "noise_rate" in m else "-"
                lines.append(f"{method:<10}{p:>5}{m['precision']:>11.3f}{noise:>8}{acc:>17}")
        if "base_model_accuracy" in info:
            lines.append(f"base model (no fine-tune) accuracy: {info['base_model_accuracy']:.3f}")
        for key in ("skipped_methods", "failed_methods"):
            for method, why in info.get(key, {}).items():
                lines.append(f"{key.split('_')[0]}: {method}: {why}")
        cost = info.get("cost", {})
        lines.append(f"wall time: total {cost.get('total_s', 0):.0f} s, scoring {cost.get('scoring_total_s', 0):.0f} s, "
                     f"downstream {cost.get('downstream_total_s', 0):.0f} s")
        for method, c in cost.get("scoring", {}).items():
            lines.append(f"  score {method:<22}{c['wall_s']:8.1f} s  " + ", ".join(
                f"{k} {v:.1f}" for k, v in (c["stages"] or {}).items()))
        lines += [f"note: {n}" for n in info.get("notes", [])]
    return "\n".join(lines)


def config_from_args(args: argparse.Namespace) -> QualityConfig:
    """CLI options over the full (or, with --quick, the small) defaults."""
    overrides: dict[str, Any] = {}
    suite = getattr(args, "suite", None)
    if suite:
        overrides["suites"] = (suite,)
    if getattr(args, "methods", None):
        overrides["methods"] = parse_methods(args.methods)
    for name in ("k", "threads", "device", "preset"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    model = getattr(args, "model", None)
    if getattr(args, "quick", False):
        cfg = QualityConfig.quick(model=model, **overrides)
    else:
        cfg = QualityConfig(**({"model": model} if model else {}), **overrides)
    shots = getattr(args, "t0_shots", None)
    if shots is not None:  # only the pairs per target change; the sizes stay the chosen ones
        if shots < 1:
            raise CurationError(f"--t0-shots: {shots}; give at least 1 pair per target")
        cfg = dataclasses.replace(cfg, t0=dataclasses.replace(cfg.t0, shots=shots))
    return with_model_defaults(cfg) if model else cfg


def parse_methods(text: str) -> tuple[str, ...]:
    """"rose,less,auto" -> the bench keys; an unknown key is an error naming the known ones."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in keys if k not in METHODS]
    if unknown or not keys:
        raise CurationError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(METHODS)}")
    for k in keys:  # a fusion needs its inputs scored first in the same suite
        if k.startswith("fusion:"):
            missing = [p for p in k.partition(":")[2].split("+") if p not in keys[:keys.index(k)]]
            if missing:
                raise CurationError(f"--methods: {k} needs {', '.join(missing)} listed before it")
    return keys


def with_model_defaults(cfg: QualityConfig) -> QualityConfig:
    """The base model's size-based lr and LoRA rank (`models.defaults_for`) for the warmup, and
    its lr scaled the same way for the downstream fine-tune (the tiny model's 3e-3 would wreck
    a 135M model); sizes (pool, k, lengths) stay as chosen."""
    from curation.engine.models import TINY, defaults_for
    from curation.workspace import Workspace

    d = defaults_for(cfg.model, Workspace.from_env().home)
    warmup = dataclasses.replace(cfg.warmup, lr=d.lr, lora_r=d.lora_r, lora_alpha=d.lora_alpha)
    downstream = dataclasses.replace(cfg.downstream, lr=cfg.downstream.lr * d.lr / TINY.lr)
    return dataclasses.replace(cfg, warmup=warmup, downstream=downstream)


def main(args: argparse.Namespace) -> int:
    import torch

    cfg = config_from_args(args)
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench quality {time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    result = run_quality(cfg, log=log)
    print(json.dumps(result) if args.json else summary(result))
    return 0
