"""`bench ui`: is every page responsive on a big pool? Time to the script's end, per page.

Builds a throwaway workspace with an N-example pool (imported through the real importer),
a finished run with scores, components, features on disk and some decisions, then runs each
page with Streamlit's AppTest (the same script a browser session runs) and reports the time
from the request to the end of the script: cold (first visit in the server process) and
warm (a rerun, e.g. after moving a slider), best of `repeats`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

APP = Path(__file__).resolve().parents[2] / "app.py"
PAGES = ["pages/pool.py", "pages/preferences.py", "pages/scoring.py", "pages/explore.py", "pages/compare.py",
         "pages/curate.py"]
SUBTASKS = ["addition_subtraction", "multiplication_division"]


def write_pool(path: Path, n: int) -> None:
    """n distinct instruction records in the messages format (templated, as real pools often are)."""
    with open(path, "w") as f:
        for i in range(n):
            a, b = i % 997, i // 997
            msgs = [{"role": "user", "content": f"Task {i}: what is {a} plus {b}? Explain briefly."},
                    {"role": "assistant", "content": f"{a} + {b} = {a + b}, so the answer is {a + b}."}]
            f.write(json.dumps({"messages": msgs, "source": f"family_{i % 12}"}) + "\n")


def seed_run(store, pool: str, prefs: str, ws, k: int = 256, seed: int = 0) -> int:
    """A finished ROSE-like run: scores and components, train/val features, run metadata."""
    from curation.config import FeatureConfig, ScoreConfig
    from curation.data.store.models import utcnow
    from curation.engine.features import FeatureManifest, FeatureStore
    from curation.methods import ScoreOutput
    from curation.runs.execute import _set, create_run, store_scores

    run_id = create_run(store, pool, prefs, ScoreConfig(features=FeatureConfig(k=k)), ws)
    with store.session() as s:
        from sqlalchemy import select

        from curation.data.store import Example, Pool
        ids = list(s.scalars(select(Example.id).join(Pool).where(Pool.name == pool).order_by(Example.id)))
    rng = np.random.default_rng(seed)
    n, lrs = len(ids), [1e-3, 7e-4]
    fstore = FeatureStore(ws.run_dir(run_id) / "features")
    for i in range(len(lrs)):
        for split, rows in (("train", ids), ("val", list(range(10)))):
            m = FeatureManifest(model="bench", tokenizer_hash="bench", checkpoint=f"epoch_{i + 1}",
                                projector={"type": "bench", "k": k, "seed": seed}, k=k, dtype="float16",
                                example_ids=rows, shard_size=8192)
            writer = fstore.writer(split, i, m)
            for index, start, end in writer.pending_shards():
                x = rng.standard_normal((end - start, k)).astype(np.float32)
                writer.write_shard(index, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
    means = rng.normal(0.02, 0.03, (n, 2)).astype(np.float32)
    driver = means.argmax(1)
    per_ckpt = np.stack([0.6 * means.max(1), 0.4 * means.max(1)], 1)
    out = ScoreOutput(scores=means.max(1), subtasks=SUBTASKS, subtask_means=means, per_checkpoint=per_ckpt,
                      driver=driver)
    n_sel = store_scores(store, run_id, ids, out, ScoreConfig())
    _set(store, run_id, status="done", n_selected=n_sel, finished_at=utcnow(), heartbeat=utcnow(),
         meta={"subtasks": SUBTASKS, "checkpoint_lrs": lrs}, stage_times={"score": 1.0})
    return run_id


def time_pages(repeats: int) -> dict[str, dict[str, float]]:
    """Seconds to the end of each page's script: cold (first run) and warm (best rerun)."""
    from streamlit.testing.v1 import AppTest

    out = {}
    for page in PAGES:
        at = AppTest.from_file(str(APP), default_timeout=600)
        at.run()
        at.switch_page(page)
        t0 = time.perf_counter()
        at.run()
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            at.run()
            warm.append(time.perf_counter() - t0)
        errors = [str(e.value) for e in at.exception]
        out[page] = {"cold_s": round(cold, 3), "warm_s": round(min(warm), 3), "errors": errors}
    return out


def run_ui(n: int, repeats: int = 2, log=print) -> dict:
    from curation.data.demo import DEMO_PREFS
    from curation.data.imports import import_pool, import_prefs
    from curation.data.store import Store
    from curation.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CURATION_HOME"] = str(Path(tmp) / "ws")
        os.environ.pop("CURATION_DB_URL", None)
        ws = Workspace.from_env().ensure()
        store = Store.open(ws)
        import_prefs(store, DEMO_PREFS, name="demo")  # only the prefs: the big pool is the one pages show
        write_pool(Path(tmp) / "big.jsonl", n)
        t0 = time.perf_counter()
        import_pool(store, Path(tmp) / "big.jsonl", name="big")
        import_s = time.perf_counter() - t0
        log(f"imported {n:,} examples in {import_s:.1f} s")
        t0 = time.perf_counter()
        run_id = seed_run(store, "big", "demo", ws)
        log(f"seeded run #{run_id} (scores, features) in {time.perf_counter() - t0:.1f} s")
        from curation.data import catalog
        from curation.review import curate
        ids = catalog.matching_ids(store, "big", catalog.ExampleFilter())
        curate.decide(store, "big", ids[10: 10 + n // 50], "exclude", "bench: bulk exclude")
        curate.decide(store, "big", [ids[n // 2]], "pin", "bench: pin")
        pages = time_pages(repeats)
    return {"n": n, "import_s": round(import_s, 2), "pages": pages}


def main(args: argparse.Namespace) -> int:
    n = args.n or (2000 if args.quick else 100_000)
    res = run_ui(n, log=lambda m: print(f"[bench ui] {m}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"pages on a {n:,}-example pool (seconds to the script's end; cold = first visit, warm = rerun)")
    for page, t in res["pages"].items():
        print(f"  {page:<22} cold {t['cold_s']:6.2f}   warm {t['warm_s']:6.2f}" + ("  ERRORS" if t["errors"] else ""))
    return 0
