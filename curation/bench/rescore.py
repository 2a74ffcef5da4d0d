"""`bench rescore`: seconds from "pair added" to "new selection stored", on a big pool whose
train features are already in the feature store, against a plain read of those feature files.

The pool (default 100k examples) is imported through the real importer, the model is the
default tiny one (`--model` for another), the warmup is a real one on a small share, and the
stored train features are synthetic unit vectors written into the feature set the run's key
names (computing 100k real features would take the bench hours on 2 cores and is not what is
measured here). Then, `repeats` times: add one pair, `rescore` the run, and time it. The floor
is a sequential read of every train-feature file the scoring reads (warm page cache, the
same state the rescore finds): the bytes any re-scoring has to touch at least once.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def plain_read(paths: list[Path], block: int = 1 << 24) -> tuple[float, int]:
    """Seconds and bytes to read ``paths`` sequentially into one reused buffer."""
    buf, total = bytearray(block), 0
    t0 = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return time.perf_counter() - t0, total


def fill_features(store, ws, run_id: int, log) -> list[Path]:
    """Warm up for real, then write synthetic train features into the run's feature set."""
    from curation.data.store import Run
    from curation.engine.features import FeatureWriter
    from curation.engine.featuresets import FeatureSet, content_keys
    from curation.engine.models import load_model
    from curation.methods import get_method
    from curation.methods.gradient import feature_key, make_projector
    from curation.runs.execute import _inputs
    from curation.runs.jobs import Reporter

    with store.session() as s:
        run = s.get(Run, run_id)
        inputs = _inputs(store, run, ws, Reporter(None, None))
    cfg, method = inputs.config, get_method("rose")
    model, tok = load_model(cfg.model, ws.home)
    keys = content_keys(inputs.content_hashes)
    ckpts, warmup = method._warmup(model, tok, inputs, keys)
    projector = make_projector(cfg.features)
    fset = FeatureSet.open(ws.home, feature_key(cfg, model, tok, warmup["key"], ckpts, projector), pool=inputs.pool)
    plan = fset.plan(keys, inputs.content_hashes)
    rng, k = np.random.default_rng(0), cfg.features.k
    for i, ckpt in enumerate(ckpts):
        for seg in plan.pending(i):
            writer = FeatureWriter(seg.ckpt_dir(i), method._manifest(tok, ckpt, projector, seg.keys.tolist(), inputs))
            for index, start, end in writer.pending_shards():
                x = rng.standard_normal((end - start, k), dtype=np.float32)
                writer.write_shard(index, x / np.linalg.norm(x, axis=1, keepdims=True))
        log(f"synthetic train features for {ckpt.path.name} written")
    return sorted(fset.root.glob("seg_*/ckpt_*/shard_*.npy"))


def run_rescore(n: int, model: str, k: int, repeats: int, threads: int | None, log=print) -> dict:
    import os

    from curation.bench.ui import write_pool
    from curation.config import FeatureConfig, ScoreConfig
    from curation.data import catalog
    from curation.data.demo import DEMO_PREFS
    from curation.data.imports import import_pool, import_prefs
    from curation.data.store import Store
    from curation.engine.model import ModelConfig
    from curation.engine.warmup import WarmupConfig
    from curation.runs.execute import create_run, execute_run, show_run
    from curation.runs.rescore import rescore
    from curation.workspace import Workspace

    user_models = Workspace.from_env().models
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.from_env(Path(tmp) / "ws")
        ws.home.mkdir(parents=True)
        if model == "tiny" and user_models.is_dir():  # reuse a built tiny model (2-3 min to build)
            (ws.home / "models").symlink_to(user_models)
        ws = ws.ensure()
        os.environ["CURATION_HOME"] = str(ws.home)
        os.environ.pop("CURATION_DB_URL", None)
        store = Store.open(ws)
        import_prefs(store, DEMO_PREFS, name="demo")
        write_pool(Path(tmp) / "big.jsonl", n)
        t0 = time.perf_counter()
        import_pool(store, Path(tmp) / "big.jsonl", name="big")
        log(f"imported {n:,} examples in {time.perf_counter() - t0:.1f} s")
        cfg = ScoreConfig(model=ModelConfig(name_or_path=model),
                          warmup=WarmupConfig(percent=max(0.05, 100 * 200 / n)),  # ~200 examples
                          features=FeatureConfig(k=k, projector="sparse_jl"), threads=threads or os.cpu_count() or 1)
        base = create_run(store, "big", "demo", cfg, ws)
        shards = fill_features(store, ws, base, log)
        execute_run(store, base, ws)
        log(f"base run #{base} scored; {len(shards)} feature files")
        read_s, nbytes = min(plain_read(shards) for _ in range(2))
        pairs, times, stages, run_id = catalog.get_pairs(store, "demo"), [], [], base
        for r in range(repeats):
            t0 = time.perf_counter()
            pairs = pairs + [dict(id=None, subtask="addition_subtraction", author="bench",
                                  prompt=f"Bench question {r}: what is {r + 12} plus {r + 30}?",
                                  chosen=f"{r + 12} + {r + 30} = {2 * r + 42}.", rejected=f"The answer is {r + 7}.")]
            catalog.save_pairs(store, "demo", pairs)
            res = rescore(store, run_id, ws=ws)
            times.append(time.perf_counter() - t0)
            info = show_run(store, res.run_id)
            stages.append(info["stage_times"])
            pairs, run_id = catalog.get_pairs(store, "demo"), res.run_id
            log(f"repeat {r + 1}: {times[-1]:.2f} s ({res.summary()}); reused={info['features']['reused']}")
    best = min(times)
    return {"n": n, "k": k, "model": model, "checkpoints": cfg.warmup.epochs,
            "feature_bytes": nbytes, "plain_read_s": round(read_s, 3),
            "plain_read_gb_s": round(nbytes / read_s / 1e9, 2), "rescore_s": [round(t, 3) for t in times],
            "rescore_best_s": round(best, 3), "ratio_to_plain_read": round(best / read_s, 2),
            "target_s": 5.0, "stage_times": stages[times.index(best)], "threads": cfg.threads}


def main(args: argparse.Namespace) -> int:
    n = args.n or (5000 if args.quick else 100_000)
    k = args.k or (1024 if args.quick else 8192)
    res = run_rescore(n, args.model or "tiny", k, repeats=2 if args.quick else 3, threads=args.threads,
                      log=lambda m: print(f"[bench rescore] {m}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"pair added -> new selection stored, {n:,} examples, k={k}, {res['checkpoints']} checkpoints: "
          f"best {res['rescore_best_s']:.2f} s of {res['rescore_s']} (target < 5 s)")
    print(f"plain read of the {res['feature_bytes'] / 1e9:.2f} GB of feature files: {res['plain_read_s']:.2f} s "
          f"({res['plain_read_gb_s']} GB/s); ratio {res['ratio_to_plain_read']}x")
    for stage, secs in res["stage_times"].items():
        print(f"  {stage:<32} {secs:7.2f} s")
    return 0
