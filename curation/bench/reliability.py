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
* **upload race** (issue 22): two curators upload files of the same name and import them at
  once; each pool must hold only its own file's rows.
* **export kill**: an export replacing an earlier one is SIGKILLed at each step of its publish
  (between its renames); the export of that name must be whole and self-consistent after the
  next export, and no temp folder may remain.
* **full disk**: an import into a workspace on a tiny tmpfs and an export into a tiny exports
  folder (mounted in a user and mount namespace; skipped where the kernel refuses): one clear
  line naming the path, nothing half-written visible, the earlier export intact.
* **IPC**: a sandboxed call allocates System V shared memory; none is left on the host.
* **rebinding**: `streamlit run app.py` refuses its WebSocket to Host/Origin ``evil.example``.

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
    upload_rows: int = 20_000  # per upload

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(processes=3, ops=40, examples=30, exports=6, import_lines=30_000, kills=2, upload_rows=3000)


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


def _run_together(procs: list, start) -> int:
    """Start the processes, release them at once through the event ``start``, wait for all;
    how many crashed."""
    for p in procs:
        p.start()
    time.sleep(0.5)  # every process is waiting on the event before it is set
    start.set()
    for p in procs:
        p.join()
    return sum(p.exitcode != 0 for p in procs)


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
    crashed = _run_together(procs, start)
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


# --- upload race (issue 22) -------------------------------------------------------------------

def _uploader(home: str, url: str, tag: str, n: int, start, out: str) -> None:
    """One curator: upload `pool.jsonl` (rows tagged `tag`) and import it as the pool `tag`."""
    from curation.data.imports import import_pool
    from curation.workspace import Workspace
    ws = Workspace(Path(home), url)
    store = Store(ws.db_url, run_migrations=False)
    data = "".join(json.dumps({"instruction": f"{tag} {i}", "output": f"answer {tag} {i}"}) + "\n" for i in range(n))
    start.wait()
    path = ws.save_upload("pool.jsonl", data.encode())
    res = import_pool(store, path, name=tag)
    Path(out).write_text(json.dumps({"imported": res.n_ok, "path": str(path)}))


def upload_race(folder: Path, rows: int, rounds: int = 2, url: str | None = None) -> dict:
    """Two same-named uploads imported at once, `rounds` times: rows of the other file in a
    pool are mixed rows (before issue 22, 181,944 of 200,000)."""
    from curation.workspace import Workspace
    home = folder / "ws"
    ws = Workspace(home, url or f"sqlite:///{home}/curation.db").ensure()
    store = Store(ws.db_url)
    ctx = mp.get_context("spawn")
    mixed = imported = crashed = shared_paths = 0
    for r in range(rounds):
        start = ctx.Event()
        tags = (f"a{r}", f"b{r}")
        outs = [folder / f"{t}.json" for t in tags]
        procs = [ctx.Process(target=_uploader, args=(str(home), ws.db_url, t, rows, start, str(o))) for t, o in zip(tags, outs)]
        crashed += _run_together(procs, start)
        got = [json.loads(o.read_text()) for o in outs if o.exists()]
        shared_paths += len({g["path"] for g in got}) < len(got)
        with store.session() as s:
            for tag in tags:
                pid = s.scalar(select(Pool.id).where(Pool.name == tag))
                own = s.scalar(select(func.count(Example.id)).where(Example.pool_id == pid,
                                                                    Example.original["instruction"].as_string().like(f"{tag} %")))
                total = s.scalar(select(func.count(Example.id)).where(Example.pool_id == pid))
                mixed += total - own
                imported += total
    return dict(uploads=2 * rounds, rows_each=rows, imported=imported, lost_rows=2 * rounds * rows - imported,
                mixed_rows=mixed, shared_files=shared_paths, crashed=crashed)


# --- export killed between its renames -------------------------------------------------------

KILL_AT = """
import os, signal, sys
from curation.review import export
real, seen = os.rename, [0]
def rename(a, b):
    real(a, b)
    seen[0] += 1
    if seen[0] == {k}:
        os.kill(os.getpid(), signal.SIGKILL)
export.os.rename = rename
export._write_schedule = lambda *a: None  # a `random` run has none; skips importing every method (seconds)
from curation import cli
sys.exit(cli.main({argv!r}))
"""


def export_consistent(folder: Path) -> bool:
    """An export folder agrees with itself: its manifest's sha256 and count are its file's."""
    import hashlib
    try:
        manifest = json.loads(next(folder.glob("*.manifest.json")).read_text())
        data = (folder / manifest["file"]).read_bytes()
    except (StopIteration, OSError, ValueError, KeyError):
        return False
    return (hashlib.sha256(data).hexdigest() == manifest["file_sha256"]
            and data.count(b"\n") == manifest["counts"]["exported"] == len(manifest["examples"]))


def export_kill(folder: Path, url: str | None = None) -> dict:
    """Replace an export and SIGKILL the exporter after its 1st rename (the old one moved aside)
    and after its 2nd (the new one in place, the old not yet removed); then export another."""
    from curation.review.export import export_selection
    from curation.workspace import Workspace
    home = folder / "ws"
    ws = Workspace(home, url or f"sqlite:///{home / 'curation.db'}").ensure()
    env = {**os.environ, "CURATION_HOME": str(home), "CURATION_DB_URL": ws.db_url}
    store = Store(ws.db_url)
    make_pool(store, folder, 40, name="ek")
    run_id = make_done_run(store, "ek", 20, folder)
    export_selection(store, run_id, "messages", ws, n=5, name="ek")
    killed = inconsistent = missing = temp_left = unrecorded = 0
    for k in (1, 2):
        argv = ["export", str(run_id), "--name", "ek", "--n", str(5 + k), "--overwrite"]
        proc = subprocess.run([sys.executable, "-c", KILL_AT.format(k=k, argv=argv)], env=env, capture_output=True)
        killed += proc.returncode == -signal.SIGKILL
        export_selection(store, run_id, "messages", ws, n=3, name=f"next{k}")
        missing += not (ws.exports / "ek").is_dir()
        inconsistent += (ws.exports / "ek").is_dir() and not export_consistent(ws.exports / "ek")
        temp_left += sum(p.name.startswith(".") for p in ws.exports.iterdir())
        unrecorded += _latest_row_sha(store, ws.exports / "ek" / "ek.jsonl") != _sha(ws.exports / "ek" / "ek.jsonl")
    return dict(kills=2, killed_at_publish=killed, exports_missing=missing, exports_inconsistent=inconsistent,
                temp_left_after_next_export=temp_left, db_row_disagreeing=unrecorded)


def _sha(path: Path) -> str | None:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _latest_row_sha(store: Store, path: Path) -> str | None:
    """The sha256 the newest `Export` row of `path` records (the database's account of the file)."""
    from curation.data.store import Export
    with store.session() as s:
        return s.scalar(select(Export.file_sha256).where(Export.path == str(path)).order_by(Export.id.desc()).limit(1))


# --- full disk ------------------------------------------------------------------------------

def _tmpfs_prefix() -> list[str] | None:
    """A command prefix that runs its command in new user and mount namespaces, where it may
    mount a tmpfs (None where `unshare` or the kernel refuses)."""
    import shutil
    if not shutil.which("unshare"):
        return None
    cmd = ["unshare", "--user", "--map-root-user", "--mount"]
    probe = subprocess.run(cmd + ["sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt || mount -t tmpfs -o size=64k tmpfs /tmp"],
                           capture_output=True)
    return cmd if probe.returncode == 0 else None


def full_disk(folder: Path) -> dict:
    """An import into a workspace on a 1 MiB tmpfs and an export into a 64 KiB exports folder."""
    prefix = _tmpfs_prefix()
    if prefix is None:
        return dict(skipped="no tmpfs could be mounted (unshare --user --mount refused)", runs=0, lost_rows=0,
                    mixed_rows=0, clear_errors=0, half_written=0)
    small, big = folder / "s" / "ws", folder / "big"
    for d in (small / "exports", big):
        d.mkdir(parents=True)
    write_pool_file(folder / "big.jsonl", 12_000)  # 1.7 MB: more than the 1 MiB tmpfs holds
    out = folder / "full_disk.json"
    inner = (f"from curation.bench.reliability import _full_disk_inside as f; from pathlib import Path; "
             f"f(Path({str(folder)!r}))")
    script = (f"mount -t tmpfs -o size=1m tmpfs {big} && mount -t tmpfs -o size=64k tmpfs {small / 'exports'} "
              f"&& exec {sys.executable} -c \"{inner}\"")
    proc = subprocess.run(prefix + ["sh", "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    if proc.returncode != 0 or not out.exists():
        return dict(error=(proc.stderr or proc.stdout)[-500:], runs=0, lost_rows=0, mixed_rows=0, clear_errors=0,
                    half_written=1)
    return json.loads(out.read_text())


def _cli(home: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CURATION_HOME": str(home)}
    env.pop("CURATION_DB_URL", None)
    return subprocess.run([sys.executable, "-m", "curation", *argv], env=env, capture_output=True, text=True)


def _clear(proc: subprocess.CompletedProcess, path: Path) -> bool:
    """Failed with one line (no traceback) naming `path` and the free space."""
    err = proc.stderr.strip()
    return (proc.returncode == 2 and "\n" not in err and err.startswith("error: no space left")
            and str(path) in err and " free;" in err)


def _full_disk_inside(folder: Path) -> None:
    """Run inside the namespaces `full_disk` makes (the tmpfs mounts are there)."""
    from curation.review.export import export_selection
    from curation.workspace import Workspace
    big, small = folder / "big", folder / "s" / "ws"
    res: dict = {"runs": 2}
    imp = _cli(big, "import-pool", str(folder / "big.jsonl"), "--name", "big")
    store = Store(f"sqlite:///{big / 'curation.db'}", run_migrations=False)
    with store.session() as s:
        visible = s.scalar(select(func.count(Example.id)).join(Pool).where(~Pool.name.startswith("~")))
        ok = s.connection().exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    clear = _clear(imp, big / "curation.db")
    store = Store(f"sqlite:///{small / 'curation.db'}")
    make_pool(store, folder, 1000, name="p")
    run_id = make_done_run(store, "p", 1000, small.parent)
    ws = Workspace(small, store.url)
    export_selection(store, run_id, "messages", ws, n=20, name="e")  # fits; the next one does not
    before = {p.name: p.read_bytes() for p in (small / "exports" / "e").iterdir()}
    second = _cli(small, "export", str(run_id), "--name", "e", "--overwrite")
    after = {p.name: p.read_bytes() for p in (small / "exports" / "e").iterdir()}
    hidden = [p.name for p in (small / "exports").iterdir() if p.name.startswith(".")]
    res.update(import_message=imp.stderr.strip()[-300:], export_message=second.stderr.strip()[-300:],
               lost_rows=0 if before == after else 1, mixed_rows=visible, integrity_ok=ok,
               clear_errors=clear + _clear(second, small / "exports" / "e"),
               half_written=int(visible > 0 or not ok or before != after or bool(hidden)))
    (folder / "full_disk.json").write_text(json.dumps(res))


# --- IPC and rebinding -----------------------------------------------------------------------

def ipc(folder: Path, calls: int = 2) -> dict:
    """Sandboxed calls that each allocate 1 MiB of System V shared memory and keep it: the
    host must see none of it afterwards (before issue 22, 1 GiB stayed pinned until `ipcrm`)."""
    import ctypes
    from curation.sandbox.isolate import run_python
    libc = ctypes.CDLL(None, use_errno=True)
    keys = random.sample(range(1 << 20, 1 << 30), calls)
    made = left = 0
    for key in keys:
        code = f"import ctypes\nmade = ctypes.CDLL(None).shmget({key}, 1 << 20, {0o1000 | 0o600})\n"
        res = run_python(code, "assert made >= 0\n")
        made += res.passed
        if (shm := libc.shmget(key, 0, 0)) >= 0:
            left += 1
            libc.shmctl(shm, 0, None)  # IPC_RMID: do not leave it behind ourselves
    return dict(calls=calls, segments_made=made, segments_left_on_host=left)


def ws_status(port: int, host: str) -> int:
    """The HTTP status of a WebSocket upgrade to Streamlit's stream with this Host and Origin."""
    import base64
    import socket
    lines = ["GET /_stcore/stream HTTP/1.1", f"Host: {host}", f"Origin: http://{host}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Version: 13",
             f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", "Sec-WebSocket-Protocol: streamlit"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(conn.recv(4096).split(b" ", 2)[1])


def rebinding(folder: Path) -> dict:
    """`streamlit run app.py` (the shipped config): foreign Hosts get no WebSocket, loopback does."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CURATION_HOME": str(folder / "ws")}
    env.pop("CURATION_DB_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=Path(__file__).parents[2], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("streamlit did not start") from None
                time.sleep(0.2)
        foreign = [ws_status(port, h) for h in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}")]
        local = [ws_status(port, h) for h in (f"localhost:{port}", f"127.0.0.1:{port}")]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return dict(foreign_hosts=len(foreign), foreign_accepted=sum(c == 101 for c in foreign),
                loopback_accepted=sum(c == 101 for c in local), loopback_hosts=len(local))


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
                         ("kills", lambda d, u: kills(d, sizes.kills, sizes.import_lines // 2, u)),
                         ("upload_race", lambda d, u: upload_race(d, sizes.upload_rows, sizes.kills, u)),
                         ("export_kill", lambda d, u: export_kill(d, u)),
                         # a file on a tiny disk, the sandbox, the server: no shared database involved
                         ("full_disk", lambda d, u: full_disk(d)), ("ipc", lambda d, u: ipc(d)),
                         ("rebinding", lambda d, u: rebinding(d))):
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
    up, ek, fd, ipc_, rb = (out[k] for k in ("upload_race", "export_kill", "full_disk", "ipc", "rebinding"))
    return dict(database=out["database"], kills=kl["kills"], kills_survived=kl["survived"],
                concurrent_operations=cr["operations"] + ex["decisions_during"] + len(range(ex["exports"])),
                decisions_lost=cr["decisions_lost"], manifests_disagreeing=ex["manifests_disagreeing"],
                writes_during_import=im["writes_during_import"], writer_errors=im["writer_errors"],
                bad_inputs=bi["bad_inputs"], bad_inputs_reported=bi["reported"],
                lost_rows=up["lost_rows"] + fd["lost_rows"], mixed_rows=up["mixed_rows"] + fd["mixed_rows"],
                export_kills=ek["kills"], exports_broken_by_kills=ek["exports_missing"] + ek["exports_inconsistent"],
                temp_left=ek["temp_left_after_next_export"], export_rows_disagreeing=ek["db_row_disagreeing"],
                full_disk_half_written=fd["half_written"],
                full_disk_clear_errors=fd["clear_errors"], full_disk_skipped="skipped" in fd,
                shm_segments_left=ipc_["segments_left_on_host"], rebound_websockets=rb["foreign_accepted"])


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
          and s["writer_errors"] == 0 and s["bad_inputs_reported"] == s["bad_inputs"] and s["lost_rows"] == 0
          and s["mixed_rows"] == 0 and s["exports_broken_by_kills"] == 0 and s["temp_left"] == 0
          and s["export_rows_disagreeing"] == 0 and s["full_disk_half_written"] == 0
          and s["shm_segments_left"] == 0 and s["rebound_websockets"] == 0)
    return 0 if ok else 1
