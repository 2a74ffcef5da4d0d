"""Background runs: a detached worker process per run, progress and liveness in the database.

The app never runs scoring in its own process: `launch` starts `python -m curation worker ID`
in a new session (it survives the browser closing and the app restarting). The worker's
`Reporter` writes stage, progress, rate, ETA and a heartbeat to the Run row; a run whose
heartbeat is older than `STALE_AFTER` is reported as dead, never as running forever.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from curation.data.catalog import list_runs as stored_runs, run_feature_set
from curation.data.store import Run, Store
from curation.data.store.db import is_locked_error, retry_locked
from curation.data.store.models import utcnow
from curation.errors import CurationError
from curation.workspace import Workspace

STALE_AFTER = timedelta(seconds=90)
WRITE_EVERY_S = 1.0
HEARTBEAT_EVERY_S = 10.0  # from a thread, whatever the stage does: a slow model never looks dead


class Cancelled(Exception):
    """Raised inside a run when the curator asked to cancel it."""


class Reporter:
    """Progress sink for one run: throttled writes to the DB plus an optional local callback.

    With a store, a daemon thread also beats the heartbeat every `HEARTBEAT_EVERY_S` (a shard
    of a big model can take minutes between progress calls). Stage times add up over every
    process that worked on the run: a resumed run shows the whole cost, not its last piece.
    A write that meets a locked database is retried, and a heartbeat that still cannot be
    written is skipped: a lock never kills a run.
    """

    def __init__(self, store: Store | None, run_id: int | None, echo=None):
        self.store, self.run_id, self.echo = store, run_id, echo
        self.stage_name: str | None = None
        self.total = self.done = 0
        self._t0 = self._last_write = 0.0
        self._stage_times: dict[str, float] = {}
        self._cancel = self._running = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if store is not None:
            with store.session() as s:
                run = s.get(Run, run_id)
                self._stage_times = {k: float(v) for k, v in (run.stage_times or {}).items()} if run else {}
            self._beat = threading.Thread(target=self._heartbeats, name=f"heartbeat-{run_id}", daemon=True)
            self._beat.start()

    def stage(self, name: str, total: int = 0) -> None:
        """Start a stage; the previous one's wall time is recorded."""
        self._close_stage()
        self.stage_name, self.total, self.done, self._t0 = name, total, 0, time.time()
        self._running = True
        self._write(force=True)
        if self.echo:
            self.echo(name, 0, total)

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self.echo:
            self.echo(self.stage_name, done, self.total)
        self._write()

    def note(self, **meta) -> None:
        """Merge ``meta`` into the run's metadata now (e.g. which feature set a running run
        writes, so `features rm` can refuse to delete it under the run)."""
        if self.store is not None:
            merge_run_meta(self.store, self.run_id, **meta)

    def finish(self) -> dict[str, float]:
        """Close the last stage, stop the heartbeat and return wall seconds per stage, summed
        over every process of the run (never raises Cancelled)."""
        self._close_stage()
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self._write(force=True, check_cancel=False)
        return dict(self._stage_times)

    def _close_stage(self) -> None:
        if self.stage_name and self._running:
            self._stage_times = self._times()
            self._running = False

    def _times(self) -> dict[str, float]:
        """Stage times so far, the running stage's elapsed time included."""
        times = dict(self._stage_times)
        if self.stage_name and self._running:
            times[self.stage_name] = round(times.get(self.stage_name, 0.0) + time.time() - self._t0, 3)
        return times

    def rate(self) -> float | None:
        dt = time.time() - self._t0
        return self.done / dt if dt > 0 and self.done else None

    def _write(self, force: bool = False, check_cancel: bool = True) -> None:
        now = time.time()
        if self.store is None or (not force and now - self._last_write < WRITE_EVERY_S):
            return
        self._last_write = now
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate and self.total else None
        values = dict(stage=self.stage_name, stage_done=self.done, stage_total=self.total, rate=rate, eta_s=eta,
                      stage_times=self._times())

        def write() -> bool:
            with self.store.session() as s:
                run = s.get(Run, self.run_id)
                for k, v in values.items():
                    setattr(run, k, v)
                run.heartbeat = utcnow()
                return run.cancel_requested
        try:
            cancel = retry_locked(write, attempts=4 if force else 1, what=f"run {self.run_id} progress")
        except OperationalError as e:
            if force or not is_locked_error(e):
                raise
            return  # a progress write can wait for the next one
        if cancel:
            self._cancel = True
        if self._cancel and check_cancel:
            raise Cancelled(f"run {self.run_id} cancelled")

    def _heartbeats(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY_S):
            try:
                with self.store.session() as s:
                    s.execute(update(Run).where(Run.id == self.run_id).values(heartbeat=utcnow()))
                    self._cancel = self._cancel or bool(s.get(Run, self.run_id).cancel_requested)
            except OperationalError as e:  # locked past the busy timeout: the next beat tries again
                print(f"run {self.run_id}: heartbeat skipped ({e.orig if hasattr(e, 'orig') else e})",
                      file=sys.stderr)


def merge_run_meta(store: Store, run_id: int, **meta) -> None:
    """Add keys to a run's metadata, keeping the rest (the pairs snapshot taken at creation)."""
    def merge() -> None:
        with store.session(write=True) as s:
            run = s.get(Run, run_id)
            run.meta = {**(run.meta or {}), **meta}
    retry_locked(merge, what=f"run {run_id} meta")


def process_alive(pid: int | None) -> bool:
    """Whether `pid` is a live (not zombie) process on this machine."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def live_worker(run: Run, now=None) -> int | None:
    """The pid of another process working on `run` now (queued or running, fresh heartbeat,
    its process alive here), else None: a second worker on a live run is refused."""
    now = now or utcnow()
    if run.status not in ("queued", "running") or not run.heartbeat or now - run.heartbeat > STALE_AFTER:
        return None
    if run.pid == os.getpid() or not process_alive(run.pid):
        return None
    return run.pid


def log_path(ws: Workspace, run_id: int) -> Path:
    return ws.run_dir(run_id) / "run.log"


def launch(store: Store, run_id: int, ws: Workspace | None = None) -> int:
    """Start the run's worker in its own process session and return its pid."""
    ws = (ws or Workspace.from_env()).ensure()
    with store.session(write=True) as s:  # claimed before the worker starts: it may be quick
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        if pid := live_worker(run):
            raise CurationError(f"run {run_id} already has a live worker (pid {pid}); cancel it or wait")
        run.status, run.heartbeat, run.error, run.cancel_requested = "queued", utcnow(), None, False
    path = log_path(ws, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **QUIET_ENV, "CURATION_HOME": str(ws.home), "CURATION_DB_URL": ws.db_url,
           "PYTHONUNBUFFERED": "1"}  # unbuffered: every line reaches the log (and the page) at once
    repo = Path(__file__).resolve().parents[2]
    with open(path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "curation", "worker", str(run_id)], cwd=repo, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    with store.session(write=True) as s:
        run = s.get(Run, run_id)
        run.pid = proc.pid  # the worker's own pid: its claim of the run (runs.execute_run) agrees
    return proc.pid


# Libraries whose warnings are about their own API (deprecations, internal notes): noise in a
# curator's log. Warnings attributed to this project's code still show.
NOISY_MODULES = r"(torch|transformers|peft|huggingface_hub|accelerate|tokenizers|safetensors|bm25s|sklearn|numpy)(\.|$)"
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
             "TOKENIZERS_PARALLELISM": "false"}


def quiet_library_output() -> None:
    """Keep library chatter out of the worker's log (the page shows its tail to the curator):
    every FutureWarning and DeprecationWarning, the libraries' UserWarnings, transformers'
    info logging and the loading/saving progress bars. Call it first in the worker."""
    os.environ.update(QUIET_ENV)  # read at import by transformers, huggingface_hub and tqdm
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=NOISY_MODULES)
    # torch's C++ warnings are attributed to the Python line that called torch
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
    # transformers reads QUIET_ENV when it loads; only a copy loaded before now needs telling
    # (importing it here would load torch into a BM25 worker that never uses it)
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


class LogLines:
    """The worker's echo: a timestamped line when a stage starts and a progress line at most
    every ``every_s`` seconds, flushed at once, so the page's log tail fills while it runs."""

    def __init__(self, out=None, every_s: float = 15.0, clock=time.time):
        self.out, self.every_s, self.clock = out, every_s, clock
        self.stage: str | None = None
        self._last = 0.0

    def __call__(self, stage: str | None, done: int, total: int | None) -> None:
        now = self.clock()
        if stage != self.stage:
            self.stage, self._last = stage, now
            self._line(f"{stage}" + (f" ({total:,} to do)" if total else ""))
        elif now - self._last >= self.every_s:
            self._last = now
            self._line(f"  {stage}: {done:,}" + (f" of {total:,}" if total else ""))

    def _line(self, text: str) -> None:
        stamp = datetime.fromtimestamp(self.clock()).strftime("%H:%M:%S")
        print(f"{stamp} {text}", file=self.out or sys.stdout, flush=True)


def request_cancel(store: Store, run_id: int) -> None:
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        if run.status in ("queued", "running"):
            run.cancel_requested = True


def effective_status(run: Run, now=None) -> str:
    """What to show: a running run without a recent heartbeat is 'dead', not 'running'."""
    return status_from(run.status, run.heartbeat, now)


def status_from(status: str, heartbeat: datetime | None, now=None) -> str:
    """`effective_status` from a run's stored status and last heartbeat."""
    now = now or utcnow()
    if status in ("queued", "running") and heartbeat and now - heartbeat > STALE_AFTER:
        return "dead"
    return status


def list_runs(store: Store, pool: str | None = None, internal: bool = False) -> list[dict]:
    """`catalog.list_runs` with each run's effective status: a killed worker's run reads 'dead',
    not 'running' forever."""
    now = utcnow()
    return [{**r, "status": status_from(r["status"], r["heartbeat"], now)}
            for r in stored_runs(store, pool=pool, internal=internal)]


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log, read from the end so a long log stays cheap."""
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64_000))
        data = f.read().decode("utf-8", errors="replace")
    return "\n".join(data.splitlines()[-lines:])


def active_users(store, set_id: str) -> list[int]:
    """Live (queued or running, heartbeat fresh) runs that read or write feature set ``set_id``."""
    with store.session() as s:
        runs = s.scalars(select(Run).where(Run.status.in_(("queued", "running")))).all()
        return [r.id for r in runs if effective_status(r) in ("queued", "running")
                and run_feature_set(r.meta) == set_id]
