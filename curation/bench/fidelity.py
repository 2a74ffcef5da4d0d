"""`bench fidelity`: how closely each projection setting ranks the pool like exact features do.

One real ROSE run (and a LESS re-score of it) on a seeded sample of the demo pool, with exact
float32 features (`IdentityProjector`), in a throwaway workspace; then every sketch setting
(`curation.engine.fidelity.SETTINGS`, 3 projection seeds each) is applied to the stored exact rows
and scored. Prints Spearman and top-5% overlap against the exact ranking per setting, and
names the setting a default run uses for this model (`make_projector` with the defaults).

``--json``: ``{"model", "d", "sample", "default", "methods": {method: {setting: {...}}},
"spearman": {setting: rose spearman}, "top5_overlap": {...}, "wall_s"}``.

``--presets``: instead, every preset (`curation.config.PRESETS`) against the full default, by
real runs (ROSE, then a LESS re-score of each) on two samples of ``--n`` examples: a T0 sample
(the t0 suite of `bench quality`: a T0 pool and one T0 target's pairs) and a prefs sample (its
prefs suite: StackExchange answers among T0 records, one site's ROSE pairs). A sample whose
shared data (../shared/data) is absent is skipped with a note; with neither, a demo sample is
used. ``--json``: ``{"presets": {name: {"rose": {"spearman", "top5_overlap", ...}, "less":
{...}}}, "samples": {sample: {name: {...}}}, ...}``; per method the mean over samples, and the
worst sample's Spearman as ``spearman_min``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from curation.config import FeatureConfig, ScoreConfig, SelectConfig
from curation.engine.fidelity import SETTINGS, Setting, measure
from curation.engine.model import ModelConfig


def _sample_pool(src: Path, dst: Path, n: int, seed: int) -> int:
    lines = [ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()]
    keep = sorted(random.Random(seed).sample(range(len(lines)), min(n, len(lines))))
    dst.write_text("\n".join(lines[i] for i in keep) + "\n", encoding="utf-8")
    return len(keep)


def _arrays(run_dir: Path, n_ckpts: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from curation.engine.features import FeatureStore
    fs = FeatureStore(run_dir / "features")
    return ([fs.reader("train", i).load_all() for i in range(n_ckpts)],
            [fs.reader("val", i).load_all() for i in range(n_ckpts)])


def run_fidelity(model: str = "tiny", sample: int = 1000, seeds: tuple[int, ...] = (0, 1, 2),
                 settings: tuple[Setting, ...] = SETTINGS, quick: bool = False, log=print) -> dict:
    """Exact features of a demo sample, then every setting against them (see the module doc)."""
    from curation.bench.quality import bench_dir, resolve_model
    from curation.data.demo import DEMO_POOL, DEMO_PREFS
    from curation.data.imports import import_pool, import_prefs
    from curation.data.store import Run, Store
    from curation.engine.models import defaults_for
    from curation.engine.projection import IdentityProjector
    from curation.methods.gradient import make_projector
    from curation.runs.execute import create_run, execute_run, show_run
    from curation.runs.rescore import rescore
    from curation.workspace import Workspace

    started = time.perf_counter()
    home = Workspace.from_env().ensure().home
    path = resolve_model(model, log)
    with bench_dir("fidelity-") as tmp:
        ws = Workspace(home=tmp, db_url=f"sqlite:///{tmp / 'curation.db'}").ensure()
        store = Store.open(ws)
        n = _sample_pool(DEMO_POOL, ws.uploads / "pool.jsonl", sample, seed=0)
        import_pool(store, ws.uploads / "pool.jsonl", name="pool")
        import_prefs(store, DEMO_PREFS, name="prefs")
        cfg = ScoreConfig(method="rose", model=ModelConfig(name_or_path=path),
                          features=FeatureConfig(projector="identity", dtype="float32"),
                          select=SelectConfig(percent=5))
        defaults_for(model, home).apply(cfg)
        if quick:
            cfg.warmup.epochs, cfg.model.max_length, cfg.warmup.max_length = 2, 128, 128
        log(f"exact ROSE features of {n} demo examples with {model}")
        run_id = create_run(store, "pool", "prefs", cfg, ws=ws)
        execute_run(store, run_id, ws=ws)
        less_id = rescore(store, run_id, method="less", ws=ws).run_id
        with store.session() as s:
            rose_dir, less_dir = Path(s.get(Run, run_id).workdir), Path(s.get(Run, less_id).workdir)
        meta = show_run(store, run_id, top=0)["meta"]
        lrs = meta["checkpoint_lrs"]
        layout = [tuple(x) for x in meta["projector"]["layout"]]
        slices = IdentityProjector(sum(d for _, d in layout), 0, layout).slices()
        subtasks = [p["subtask"] for p in meta["pairs"]]
        train, val = _arrays(rose_dir, len(lrs))
        methods = {"rose": measure(train, val, lrs, subtasks, slices, settings, seeds)}
        log("rose measured; less next")
        _, less_val = _arrays(less_dir, len(lrs))
        methods["less"] = measure(train, less_val, lrs, subtasks, slices, settings, seeds)
        default = make_projector(FeatureConfig(), layout)
        default_name = "exact" if isinstance(default, IdentityProjector) else Setting(default.kind, default.k).name
    rose = methods["rose"]
    return {"model": model, "d": int(sum(d for _, d in layout)), "sample": n, "seeds": list(seeds),
            "default": default_name, "methods": methods,
            "spearman": {k: v["spearman"] for k, v in rose.items()},
            "top5_overlap": {k: v["top5_overlap"] for k, v in rose.items()},
            "wall_s": round(time.perf_counter() - started, 1)}


def preset_samples(n: int, log, only: str | None = None) -> tuple[dict[str, tuple[list[dict], list[dict]]], list[str]]:
    """name -> (pool records, preference records) of each sample (``only``: that one, "t0" or
    "prefs"), and notes on what was skipped."""
    from curation.bench.quality_suites import (
        PrefsSpec, T0Spec, build_prefs, build_t0, prefs_available, t0_available, t0_root)
    from curation.data.demo import DEMO_POOL, DEMO_PREFS
    from curation.errors import CurationError

    samples, notes, t0 = {}, [], T0Spec()
    if only not in (None, "t0", "prefs"):
        raise CurationError(f"fidelity --presets: --suite must be t0 or prefs, got {only!r}")
    wanted = ("t0", "prefs") if only is None else (only,)
    if "t0" in wanted and t0_available(t0):
        suite = build_t0(t0)
        samples["t0"] = (_sample(suite.pool, n), suite.targets[0].prefs)
    elif "t0" in wanted:
        notes.append(f"t0 sample skipped: no T0 pool at {t0_root(t0)}")
    if "prefs" in wanted and prefs_available(PrefsSpec(), t0):
        suite = build_prefs(PrefsSpec(), t0)
        samples["prefs"] = (_sample(suite.pool, n), suite.targets[0].prefs)
    elif "prefs" in wanted:
        notes.append("prefs sample skipped: no ROSE preference sets (or T0 pool) under ../shared/data")
    if not samples:
        lines = [json.loads(ln) for ln in DEMO_POOL.read_text(encoding="utf-8").splitlines() if ln.strip()]
        prefs = [json.loads(ln) for ln in DEMO_PREFS.read_text(encoding="utf-8").splitlines() if ln.strip()]
        samples["demo"] = (_sample(lines, n), prefs)
        notes.append("neither shared sample is available: a demo sample instead")
    for note in notes:
        log(note)
    return samples, notes


def _sample(records: list[dict], n: int) -> list[dict]:
    keep = sorted(random.Random(0).sample(range(len(records)), min(n, len(records))))
    return [records[i] for i in keep]


def _preset_runs(store, ws, cfg_of, names, log) -> dict[str, dict]:
    """Per preset: ROSE and LESS scores (in example-id order) and the runs' stage seconds."""
    from curation.runs.execute import create_run, execute_run, load_scores, show_run
    from curation.runs.rescore import rescore

    out = {}
    for name in names:
        log(f"preset {name}: ROSE run")
        run_id = create_run(store, "pool", "prefs", cfg_of(name), ws=ws)
        execute_run(store, run_id, ws=ws)
        less_id = rescore(store, run_id, method="less", ws=ws).run_id
        times = show_run(store, run_id, top=0).get("stage_times") or {}
        out[name] = {"rose": load_scores(store, run_id)[1], "less": load_scores(store, less_id)[1],
                     "train_features_s": round(sum(v for k, v in times.items() if k.startswith("train features")), 3),
                     "run_s": round(sum(times.values()), 1)}
    return out


def run_preset_fidelity(model: str = "smollm2", n: int = 128, presets: dict | None = None, log=print,
                        only: str | None = None) -> dict:
    """Every preset against the full default on each sample (see the module doc)."""
    from curation.bench.quality import bench_dir, resolve_model
    from curation.config import PRESETS
    from curation.data.imports import import_pool, import_prefs
    from curation.data.store import Store
    from curation.engine.fidelity import agreement
    from curation.engine.models import defaults_for
    from curation.workspace import Workspace

    started = time.perf_counter()
    presets = presets or PRESETS
    home = Workspace.from_env().ensure().home
    path = resolve_model(model, log)
    samples, notes = preset_samples(n, log, only)

    def cfg_of(name: str) -> ScoreConfig:
        cfg = ScoreConfig(method="rose", model=ModelConfig(name_or_path=path), select=SelectConfig(percent=5))
        defaults_for(model, home).apply(cfg)
        for option, value in presets[name].options.items():
            setattr(cfg.features, option, value)
        cfg.preset = name if name in PRESETS else "default"
        return cfg

    per_sample = {}
    for sample, (pool, prefs) in samples.items():
        with bench_dir(f"fidelity-presets-{sample}-") as tmp:
            ws = Workspace(home=tmp, db_url=f"sqlite:///{tmp / 'curation.db'}").ensure()
            store = Store.open(ws)
            for name, rows in (("pool", pool), ("prefs", prefs)):
                (ws.uploads / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
            import_pool(store, ws.uploads / "pool.jsonl", name="pool")
            import_prefs(store, ws.uploads / "prefs.jsonl", name="prefs",
                         subtask_field="subtask" if all("subtask" in r for r in prefs) else None)
            log(f"{sample}: {len(pool)} examples, {len(prefs)} pairs")
            runs = _preset_runs(store, ws, cfg_of, ["default", *(p for p in presets if p != "default")], log)
        base = runs["default"]
        per_sample[sample] = {name: {**{m: agreement(base[m], r[m]) for m in ("rose", "less")},
                                     "train_features_s": r["train_features_s"], "run_s": r["run_s"],
                                     "train_features_speedup": base["train_features_s"] / max(r["train_features_s"], 1e-9)}
                              for name, r in runs.items()}
    return {"model": model, "n": n, "samples": per_sample, "presets": _mean_over_samples(per_sample),
            "preset_options": {k: v.options for k, v in presets.items()}, "notes": notes + [
                f"top5_overlap is over the top 5% of {n} examples ({max(1, round(n * 0.05))} examples): coarse"],
            "wall_s": round(time.perf_counter() - started, 1)}


def _mean_over_samples(per_sample: dict) -> dict:
    names = next(iter(per_sample.values())).keys()
    out = {}
    for name in names:
        rows = [s[name] for s in per_sample.values()]
        out[name] = {m: {"spearman": float(np.mean([r[m]["spearman"] for r in rows])),
                         "spearman_min": float(min(r[m]["spearman"] for r in rows)),
                         "top5_overlap": float(np.mean([r[m]["top5_overlap"] for r in rows]))}
                     for m in ("rose", "less")}
        out[name]["train_features_speedup"] = float(np.mean([r["train_features_speedup"] for r in rows]))
    return out


def presets_summary(res: dict) -> str:
    lines = [f"presets vs the full default on {res['model']}, {res['n']} examples per sample "
             f"({', '.join(res['samples'])})",
             f"{'preset':<10}{'ROSE rho':>9}{'(worst)':>8}{'top5%':>7}{'LESS rho':>9}{'(worst)':>8}{'top5%':>7}"
             f"{'features x':>11}"]
    for name, r in res["presets"].items():
        ro, le = r["rose"], r["less"]
        lines.append(f"{name:<10}{ro['spearman']:>9.3f}{ro['spearman_min']:>8.3f}{ro['top5_overlap']:>7.2f}"
                     f"{le['spearman']:>9.3f}{le['spearman_min']:>8.3f}{le['top5_overlap']:>7.2f}"
                     f"{r['train_features_speedup']:>10.2f}x")
    return "\n".join(lines + [f"note: {n}" for n in res["notes"]] + [f"wall time {res['wall_s']:.0f} s"])


def summary(res: dict) -> str:
    lines = [f"projection fidelity on {res['sample']} demo examples, {res['model']} (d = {res['d']:,}), "
             f"{len(res['seeds'])} projection seeds; default setting: {res['default']}",
             f"{'setting':<28}{'ROSE spearman':>14}{'(worst)':>9}{'top5%':>7}{'LESS spearman':>15}{'top5%':>7}"]
    for name, r in res["methods"]["rose"].items():
        le = res["methods"]["less"][name]
        lines.append(f"{name:<28}{r['spearman']:>14.3f}{r.get('spearman_min', 1.0):>9.3f}{r['top5_overlap']:>7.2f}"
                     f"{le['spearman']:>15.3f}{le['top5_overlap']:>7.2f}")
    lines.append(f"wall time {res['wall_s']:.0f} s")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import torch
    torch.set_num_threads(getattr(args, "threads", None) or 1)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench fidelity {time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    model = getattr(args, "model", None) or "tiny"
    if getattr(args, "presets", False):
        res = run_preset_fidelity(model, getattr(args, "n", None) or 128, log=log, only=getattr(args, "suite", None))
        print(json.dumps(res) if args.json else presets_summary(res))
        return 0
    quick = getattr(args, "quick", False)
    sample = getattr(args, "n", None) or (300 if quick else 200 if model != "tiny" else 1000)
    settings = SETTINGS[:2] if quick else SETTINGS
    res = run_fidelity(model, sample, seeds=(0,) if quick else (0, 1, 2), settings=settings, quick=quick, log=log)
    print(json.dumps(res) if args.json else summary(res))
    return 0
