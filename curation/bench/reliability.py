"""`bench reliability`: the hardening scenarios of issue 13, replayed with counts.

Each scenario runs real processes against a fresh database and checks the outcome from the
database, never from what the processes say about themselves. The database is an SQLite file
per scenario, or, when `CURATION_DB_URL` names a PostgreSQL database, a new schema in that
database per scenario, dropped afterwards (`scenario_db`); the JSON names which (`database`):

* **curation race**: several processes decide and undo on one pool at once; the decision log
  is replayed afterwards and every undo must revert exactly the newest action not yet undone
  (no batch undone twice, no revert written over a newer decision, no decision missing).
* **export race**: a process keeps deciding while exports run; each manifest's overrides must
  agree with its own file.
* **import vs writers**: a large import while another process decides and a run reporter
  beats its heartbeat; both must keep getting through (and never fail on a lock).
* **bad inputs**: inputs that once crashed the importer; each must end in a located report.
* **kills**: an import and a curator are SIGKILLed midway; nothing half-written is visible.

`python -m curation bench reliability [--quick] [--json]`; `tests/test_reliability.py` runs
the quick sizes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from curation.bench.bad_inputs import bad_inputs
from curation.data.store import Decision, Example, Pool, Store
from curation.data.store.db import driver_url
from curation.errors import CurationError

POOL = "race"
UNDO = re.compile(r"undo of ([0-9a-f]{32})")


@dataclass(frozen=True)
class Sizes:
    processes: int = 4
    ops: int = 150  # per curator process
    examples: int = 60
    exports: int = 20
    import_lines: int = 120_000
    kills: int = 4

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(processes=3, ops=40, examples=30, exports=6, import_lines=30_000, kills=2)


# --- one fresh database per scenario ----------------------------------------------------------

def database_kind(url: str | None) -> str:
    """'sqlite' or 'postgresql': what the scenarios run on (None: SQLite files)."""
    return "sqlite" if url is None else make_url(driver_url(url)).get_backend_name()


@contextmanager
def scenario_db(base_url: str | None, folder: Path, name: str) -> Iterator[str]:
    """A fresh, empty database for one scenario: an SQLite file in `folder` (``base_url`` None or
    SQLite), or a new schema in the PostgreSQL database ``base_url``, first on the search path of
    every connection of the URL yielded (child processes included), dropped at the end."""
    kind = database_kind(base_url)
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'{name}.db'}"
        return
    if kind != "postgresql":
        raise CurationError(f"bench reliability runs on SQLite or PostgreSQL, not {kind} (CURATION_DB_URL)")
    schema = f"reliability_{name}_{uuid.uuid4().hex[:8]}"
    admin = Store(base_url, run_migrations=False)
    with admin.engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(driver_url(base_url))
    options = " ".join(filter(None, [url.query.get("options"), f"-csearch_path={schema}"]))
    try:
        yield url.update_query_dict({"options": options}).render_as_string(hide_password=False)
    finally:
        with admin.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.engine.dispose()


def _sqlite_in(folder: Path, name: str, url: str | None) -> str:
    return url or f"sqlite:///{folder / name}"


def _conv(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                         {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]}


def write_pool_file(path: Path, n: int, start: int = 0) -> Path:
    with path.open("w") as f:
        for i in range(start, start + n):
            f.write(json.dumps(_conv(i)) + "\n")
    return path


def make_pool(store: Store, folder: Path, n: int, name: str = POOL) -> list[int]:
    from curation.data.imports import import_pool
    import_pool(store, write_pool_file(folder / f"{name}.jsonl", n), name=name)
    with store.session() as s:
        pid = s.scalar(select(Pool.id).where(Pool.name == name))
        return list(s.scalars(select(Example.id).where(Example.pool_id == pid).order_by(Example.id)))


# --- curation race ---------------------------------------------------------------------------

def _curator(url: str, pool: str, ids: list[int], seed: int, ops: int, start, out: str) -> None:
    """One curator process: random pins, excludes and undos; what each call returned goes to `out`."""
    from curation.review import curate
    store = Store(url, run_migrations=False)
    rng = random.Random(seed)
    log = []
    start.wait()
    for k in range(ops):
        if rng.random() < 0.55:
            picked = rng.sample(ids, rng.randint(1, 3))
            batch = curate.decide(store, pool, picked, rng.choice(("pin", "exclude", "clear")), f"p{seed}-{k}")
            log.append(["decide", batch])
        else:
            done = curate.undo(store, pool)
            log.append(["undo", done.undone, done.batch] if done else ["undo", None, None])
    Path(out).write_text(json.dumps(log))


def check_decision_log(store: Store, pool: str, decided: set[str] | None = None) -> dict:
    """Replay a pool's decisions in order; count every way a decision could have been lost.

    An undo is right when its target is the newest batch that is neither an undo nor undone
    yet, and it restores each example of that batch to its state just before the batch.
    """
    with store.session() as s:
        pid = s.scalar(select(Pool.id).where(Pool.name == pool))
        rows = s.execute(select(Decision.id, Decision.batch, Decision.example_id, Decision.action,
                                Decision.reason).where(Decision.pool_id == pid).order_by(Decision.id)).all()
    batches: dict[str, list] = {}
    order: list[str] = []
    interleaved = 0
    for r in rows:
        if r.batch not in batches:
            batches[r.batch] = []
            order.append(r.batch)
        elif order[-1] != r.batch:
            interleaved += 1
        batches[r.batch].append(r)
    state: dict[int, str] = {}
    before: dict[str, dict[int, str]] = {}
    open_batches: list[str] = []  # undoable, oldest first
    undone: set[str] = set()
    double = stale = wrong_restore = 0
    for b in order:
        items = batches[b]
        m = UNDO.fullmatch(items[0].reason)
        if m:
            target = m.group(1)
            if target in undone:
                double += 1
            elif not open_batches or open_batches[-1] != target:
                stale += 1
            if target in before and {r.example_id: r.action for r in items} != before[target]:
                wrong_restore += 1
            undone.add(target)
            if target in open_batches:
                open_batches.remove(target)
        else:
            before[b] = {r.example_id: state.get(r.example_id, "clear") for r in items}
            open_batches.append(b)
        for r in items:
            state[r.example_id] = r.action
    missing = len(decided - set(batches)) if decided is not None else 0
    lost = double + stale + wrong_restore + missing + interleaved
    return dict(batches=len(order), undos=sum(bool(UNDO.fullmatch(batches[b][0].reason)) for b in order),
                double_undos=double, stale_undos=stale, wrong_restores=wrong_restore, missing_batches=missing,
                interleaved_batches=interleaved, decisions_lost=lost)


def curation_race(folder: Path, processes: int, ops: int, examples: int, url: str | None = None) -> dict:
    """`processes` curators at once on one pool (database `url`, default an SQLite file in
    `folder`); the replayed log must lose nothing."""
    url = _sqlite_in(folder, "race.db", url)
    store = Store(url)
    ids = make_pool(store, folder, examples)
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    outs = [folder / f"curator{i}.json" for i in range(processes)]
    procs = [ctx.Process(target=_curator, args=(url, POOL, ids, i, ops, start, str(outs[i])))
             for i in range(processes)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    for p in procs:
        p.join()
    crashed = sum(p.exitcode != 0 for p in procs)
    logs = [json.loads(o.read_text()) for o in outs if o.exists()]
    decided = {e[1] for log in logs for e in log if e[0] == "decide"}
    undone = [e[1] for log in logs for e in log if e[0] == "undo" and e[1]]
    res = check_decision_log(store, POOL, decided)
    res.update(processes=processes, operations=processes * ops, crashed=crashed,
               undone_twice_by_callers=len(undone) - len(set(undone)))
    return res


# --- export race -----------------------------------------------------------------------------

def _decider(url: str, pool: str, ids: list[int], stop, ready) -> None:
    from curation.review import curate
    store = Store(url, run_migrations=False)
    rng = random.Random(1)
    ready.set()
    k = 0
    while not stop.is_set():
        curate.decide(store, pool, rng.sample(ids, 2), rng.choice(("pin", "exclude", "clear")), f"d{k}")
        k += 1


def make_done_run(store: Store, pool: str, n: int, folder: Path) -> int:
    """A finished run of the `random` method (no model) selecting `n` examples of `pool`."""
    from curation.config import ScoreConfig, SelectConfig
    from curation.runs.execute import create_run, execute_run
    from curation.workspace import Workspace
    ws = Workspace(folder / "ws", store.url).ensure()
    cfg = ScoreConfig(method="random")
    cfg.select = SelectConfig(percent=None, n=n)
    run_id = create_run(store, pool, None, cfg, ws=ws)
    execute_run(store, run_id, ws=ws)
    return run_id


def manifest_disagreements(manifest: dict, lines: list[dict]) -> int:
    """How many ways a manifest disagrees with its own file (0 for a true snapshot)."""
    examples = manifest["examples"]
    in_file = {e["uid"] for e in examples}
    pins = {o["uid"] for o in manifest["overrides"] if o["action"] == "pin"}
    excludes = {o["uid"] for o in manifest["overrides"] if o["action"] == "exclude"}
    by_pin = {e["uid"] for e in examples if e["selected_by"] == "pin"}
    bad = len(examples) != len(lines)
    bad += by_pin != pins  # every pin is in the file, marked as pinned, and nothing else is
    bad += bool(excludes & in_file)
    bad += manifest["counts"]["pinned"] != len(pins) or manifest["counts"]["excluded"] != len(excludes)
    return int(bad)


def export_race(folder: Path, exports: int, examples: int, url: str | None = None) -> dict:
    """Exports while another process keeps deciding: every manifest must match its file."""
    from curation.review.export import export_selection
    from curation.workspace import Workspace
    url = _sqlite_in(folder, "export.db", url)
    store = Store(url)
    ids = make_pool(store, folder, examples, name="exp")
    run_id = make_done_run(store, "exp", max(1, examples // 3), folder)
    ws = Workspace(folder / "ws", url).ensure()
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_decider, args=(url, "exp", ids, stop, ready))
    proc.start()
    _wait_ready(ready, proc)
    disagreeing = 0
    try:
        for i in range(exports):
            res = export_selection(store, run_id, "messages", ws, name=f"race{i}")
            manifest = json.loads(res.manifest_path.read_text())
            lines = res.path.read_text().splitlines()
            disagreeing += manifest_disagreements(manifest, lines) > 0
    finally:
        stop.set()
        proc.join()
    with store.session() as s:
        decisions = s.scalar(select(func.count(Decision.id)))
    return dict(exports=exports, decisions_during=decisions, manifests_disagreeing=disagreeing)


def _wait_ready(ready, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ready.wait(0.1):
        if not proc.is_alive() or time.time() > deadline:
            raise RuntimeError(f"helper process did not start (exit code {proc.exitcode})")


# --- import vs other writers -----------------------------------------------------------------

def _writer(url: str, pool: str, ids: list[int], run_id: int, stop, ready, out: str) -> None:
    """Decides and progress writes in a loop; each one's duration, and any error, go to `out`."""
    from curation.review import curate
    from curation.runs.jobs import Reporter
    store = Store(url, run_migrations=False)
    reporter = Reporter(store, run_id)
    times, errors = [], []
    ready.set()
    k = 0
    while not stop.is_set():
        t = time.time()
        try:
            curate.decide(store, pool, [ids[k % len(ids)]], "pin", f"w{k}")
            reporter.stage(f"beat {k % 3}", 1)
        except Exception as e:  # noqa: BLE001  (counted: the point is that there are none)
            errors.append(f"{type(e).__name__}: {e}"[:200])
        times.append((t, time.time()))
        k += 1
        time.sleep(0.05)
    reporter.finish()
    Path(out).write_text(json.dumps({"times": times, "errors": errors}))


def import_race(folder: Path, lines: int, url: str | None = None) -> dict:
    """A `lines`-line import while another process decides and reports progress."""
    from curation.config import ScoreConfig
    from curation.data.imports import import_pool
    from curation.runs.execute import create_run
    from curation.workspace import Workspace
    url = _sqlite_in(folder, "import.db", url)
    store = Store(url)
    ids = make_pool(store, folder, 10, name="small")
    run_id = create_run(store, "small", None, ScoreConfig(method="random"), ws=Workspace(folder / "ws", url))
    big = write_pool_file(folder / "big.jsonl", lines, start=1000)
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    out = folder / "writer.json"
    proc = ctx.Process(target=_writer, args=(url, "small", ids, run_id, stop, ready, str(out)))
    proc.start()
    _wait_ready(ready, proc)
    time.sleep(0.3)
    t0 = time.time()
    try:
        res = import_pool(store, big, name="big")
    finally:
        t1 = time.time()
        time.sleep(0.3)
        stop.set()
        proc.join()
    got = json.loads(out.read_text()) if out.exists() else {"times": [], "errors": ["writer crashed"]}
    during = [(a, b) for a, b in got["times"] if a >= t0 and b <= t1]
    waits = [b - a for a, b in got["times"] if b > t0 and a < t1]
    return dict(import_lines=lines, imported=res.n_ok, import_s=round(t1 - t0, 2),
                writes_during_import=len(during), writer_errors=len(got["errors"]),
                longest_write_s=round(max(waits, default=0.0), 3), errors=got["errors"][:3])


# --- kills -----------------------------------------------------------------------------------

def kills(folder: Path, n: int, lines: int, url: str | None = None) -> dict:
    """SIGKILL a CLI import and a curator midway, `n` times each: nothing half-done shows."""
    from curation.data import catalog
    from curation.data.imports import import_pool
    home = folder / "killws"
    url = _sqlite_in(home, "curation.db", url)
    env = {**os.environ, "CURATION_HOME": str(home), "CURATION_DB_URL": url}
    home.mkdir(parents=True, exist_ok=True)
    store = Store(url)
    big = write_pool_file(folder / "kill.jsonl", lines)
    survived = 0
    for k in range(n):
        proc = subprocess.Popen([sys.executable, "-m", "curation", "import-pool", str(big), "--name", f"k{k}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_rows(store, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        survived += all(not p["name"].startswith("k") for p in catalog.list_pools(store))
    ids = make_pool(store, folder, 20, name="kcur")
    for k in range(n):
        ctx = mp.get_context("spawn")
        start = ctx.Event()
        proc = ctx.Process(target=_curator, args=(store.url, "kcur", ids, 100 + k, 10_000, start,
                                                  str(folder / "never.json")))
        proc.start()
        start.set()
        time.sleep(1.5 + random.random())
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        survived += check_decision_log(store, "kcur")["decisions_lost"] == 0
    res = import_pool(store, write_pool_file(folder / "after.jsonl", 5, start=10**6), name="after")
    with store.session() as s:
        leftover = s.scalar(select(func.count(Example.id))) - 20 - res.n_ok
    return dict(kills=2 * n, survived=survived, leftover_rows_after_cleanup=leftover)


def _wait_for_rows(store: Store, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the import has committed some staged rows (so the kill lands midway)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        with store.session() as s:
            if s.scalar(select(func.count(Example.id)).join(Pool).where(Pool.name.startswith("~"))):
                time.sleep(random.random() * 0.5)
                return
        time.sleep(0.05)


# --- the command -----------------------------------------------------------------------------

def run_all(sizes: Sizes, folder: Path | None = None, echo=None, db_url: str | None = None) -> dict:
    """Every scenario, each on a fresh database (`scenario_db`: SQLite files, or schemas in the
    PostgreSQL database `db_url`)."""
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        root = Path(folder or tmp)
        out: dict = {"database": database_kind(db_url)}
        for name, fn in (("curation_race", lambda d, u: curation_race(d, sizes.processes, sizes.ops, sizes.examples, u)),
                         ("export_race", lambda d, u: export_race(d, sizes.exports, sizes.examples, u)),
                         ("import_race", lambda d, u: import_race(d, sizes.import_lines, u)),
                         ("bad_inputs", lambda d, u: bad_inputs(d, u)),
                         ("kills", lambda d, u: kills(d, sizes.kills, sizes.import_lines // 2, u))):
            d = root / name
            d.mkdir(parents=True, exist_ok=True)
            if echo:
                echo(name)
            with scenario_db(db_url, d, name) as url:
                out[name] = fn(d, url)
    out["summary"] = summary(out)
    return out


def summary(out: dict) -> dict:
    cr, ex, im, bi, kl = (out[k] for k in ("curation_race", "export_race", "import_race", "bad_inputs", "kills"))
    return dict(database=out["database"], kills=kl["kills"], kills_survived=kl["survived"],
                concurrent_operations=cr["operations"] + ex["decisions_during"] + len(range(ex["exports"])),
                decisions_lost=cr["decisions_lost"], manifests_disagreeing=ex["manifests_disagreeing"],
                writes_during_import=im["writes_during_import"], writer_errors=im["writer_errors"],
                bad_inputs=bi["bad_inputs"], bad_inputs_reported=bi["reported"])


def main(args: argparse.Namespace) -> int:
    sizes = Sizes.quick() if args.quick else Sizes()
    res = run_all(sizes, echo=lambda name: print(f"reliability: {name}", file=sys.stderr),
                  db_url=os.environ.get("CURATION_DB_URL") or None)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"database: {res['database']}")
        for name, counts in res.items():
            if isinstance(counts, dict):
                print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    s = res["summary"]
    ok = (s["decisions_lost"] == 0 and s["manifests_disagreeing"] == 0 and s["kills_survived"] == s["kills"]
          and s["writer_errors"] == 0 and s["bad_inputs_reported"] == s["bad_inputs"])
    return 0 if ok else 1
