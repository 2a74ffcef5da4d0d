"""`bench fidelity`: how closely each projection setting ranks the pool like exact features do.

One real ROSE run (and a LESS re-score of it) on a seeded sample of the demo pool, with exact
float32 features (`IdentityProjector`), in a throwaway workspace; then every sketch setting
(`curation.engine.fidelity.SETTINGS`, 3 projection seeds each) is applied to the stored exact rows
and scored. Prints Spearman and top-5% overlap against the exact ranking per setting, and
names the setting a default run uses for this model (`make_projector` with the defaults).

``--json``: ``{"model", "d", "sample", "default", "methods": {method: {setting: {...}}},
"spearman": {setting: rose spearman}, "top5_overlap": {...}, "wall_s"}``.
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
    quick = getattr(args, "quick", False)
    sample = getattr(args, "n", None) or (300 if quick else 200 if model != "tiny" else 1000)
    settings = SETTINGS[:2] if quick else SETTINGS
    res = run_fidelity(model, sample, seeds=(0,) if quick else (0, 1, 2), settings=settings, quick=quick, log=log)
    print(json.dumps(res) if args.json else summary(res))
    return 0
