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
import time
from datetime import timedelta
from pathlib import Path

from curation.errors import CurationError
from curation.store import Run, Store
from curation.store.models import utcnow
from curation.workspace import Workspace

STALE_AFTER = timedelta(seconds=90)
WRITE_EVERY_S = 1.0


class Cancelled(Exception):
    """Raised inside a run when the curator asked to cancel it."""


class Reporter:
    """Progress sink for one run: throttled writes to the DB plus an optional local callback."""

    def __init__(self, store: Store | None, run_id: int | None, echo=None):
        self.store, self.run_id, self.echo = store, run_id, echo
        self.stage_name: str | None = None
        self.total = self.done = 0
        self._t0 = self._last_write = 0.0
        self._stage_times: dict[str, float] = {}

    def stage(self, name: str, total: int = 0) -> None:
        """Start a stage; the previous one's wall time is recorded."""
        self._close_stage()
        self.stage_name, self.total, self.done, self._t0 = name, total, 0, time.time()
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
        """Close the last stage and return wall seconds per stage (never raises Cancelled)."""
        self._close_stage()
        self._write(force=True, check_cancel=False)
        return dict(self._stage_times)

    def _close_stage(self) -> None:
        if self.stage_name:
            self._stage_times[self.stage_name] = round(time.time() - self._t0, 3)

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
        with self.store.session() as s:
            run = s.get(Run, self.run_id)
            run.stage, run.stage_done, run.stage_total = self.stage_name, self.done, self.total
            run.rate, run.eta_s, run.heartbeat = rate, eta, utcnow()
            run.stage_times = dict(self._stage_times)
            cancel = run.cancel_requested
        if cancel and check_cancel:
            raise Cancelled(f"run {self.run_id} cancelled")


def merge_run_meta(store: Store, run_id: int, **meta) -> None:
    """Add keys to a run's metadata, keeping the rest (the pairs snapshot taken at creation)."""
    with store.session() as s:
        run = s.get(Run, run_id)
        run.meta = {**(run.meta or {}), **meta}


def log_path(ws: Workspace, run_id: int) -> Path:
    return ws.run_dir(run_id) / "run.log"


def launch(store: Store, run_id: int, ws: Workspace | None = None) -> int:
    """Start the run's worker in its own process session and return its pid."""
    ws = (ws or Workspace.from_env()).ensure()
    path = log_path(ws, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CURATION_HOME": str(ws.home), "CURATION_DB_URL": ws.db_url, "PYTHONUNBUFFERED": "1"}
    repo = Path(__file__).resolve().parent.parent
    with open(path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "curation", "worker", str(run_id)], cwd=repo, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    with store.session() as s:
        run = s.get(Run, run_id)
        run.pid, run.status, run.heartbeat, run.error = proc.pid, "queued", utcnow(), None
        run.cancel_requested = False
    return proc.pid


def request_cancel(store: Store, run_id: int) -> None:
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        if run.status in ("queued", "running"):
            run.cancel_requested = True


def effective_status(run: Run, now=None) -> str:
    """What to show: a running run without a recent heartbeat is 'dead', not 'running'."""
    now = now or utcnow()
    if run.status in ("queued", "running") and run.heartbeat and now - run.heartbeat > STALE_AFTER:
        return "dead"
    return run.status


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
