"""Where a curator's state lives: one folder with the database, models, runs and exports.

`CURATION_HOME` picks the folder (default ``./workspace``); `CURATION_DB_URL` swaps the SQLite
file for any SQLAlchemy URL (e.g. PostgreSQL). Large arrays stay on disk under ``runs/``.
`CURATION_DATA_ROOTS` (folders separated by ``os.pathsep``; default ``<home>/data``) lists
where the app's "import from a server path" may read: a browser user must not be able to
import, or probe for, any file the server process can read.

The workspace is private to its owner: the SQLite file (and its WAL, which SQLite creates with
the same mode) is 0600 and every folder 0700, except that the group may traverse the home
(0710) and read ``exports/`` (0750), whose files are group-readable for a colleague's training
job (`review.export`). Others get nothing. `ensure` also tightens a workspace made before.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from curation.errors import CurationError, writing


HOME_MODE = 0o710  # the group may reach exports/ by name, nothing else
FOLDER_MODES = {"exports": 0o750}  # every other folder 0700


def _folder(path: Path, mode: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    _tighten(path, mode)


def _tighten(path: Path, mode: int) -> None:
    """Set an existing file or folder to ``mode``; one another user owns is left as it is
    (chmod would fail, and its mode is theirs to set)."""
    try:
        st = path.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o7777 != mode:
            path.chmod(mode)
    except FileNotFoundError:  # a WAL file SQLite has just removed
        pass


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists. Never opens an existing file:
    closing any descriptor of a database file drops every POSIX lock SQLite holds on it in this
    process, so a connection already open here would lose its WAL read lock (stale reads)."""
    if path.exists():
        return
    try:  # O_EXCL: another process may create it first, then it is theirs
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


@dataclass(frozen=True)
class Workspace:
    home: Path
    db_url: str

    @classmethod
    def from_env(cls, home: str | Path | None = None) -> "Workspace":
        root = Path(home or os.environ.get("CURATION_HOME") or "workspace").resolve()
        url = os.environ.get("CURATION_DB_URL") or f"sqlite:///{root / 'curation.db'}"
        return cls(home=root, db_url=url)

    def ensure(self) -> "Workspace":
        _folder(self.home, HOME_MODE)
        for sub in ("models", "runs", "exports", "uploads", "logs", "data"):
            _folder(self.home / sub, FOLDER_MODES.get(sub, 0o700))
        if (db := self.sqlite_file) is not None:
            db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(db)  # SQLite keeps an existing file's mode
            for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                _tighten(path, 0o600)
        return self

    @property
    def sqlite_file(self) -> Path | None:
        """The database file when the store is SQLite on disk (None for other databases)."""
        if not self.db_url.startswith("sqlite:///") or ":memory:" in self.db_url:
            return None
        return Path(self.db_url[len("sqlite:///"):].split("?", 1)[0])

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def exports(self) -> Path:
        return self.home / "exports"

    @property
    def uploads(self) -> Path:
        return self.home / "uploads"

    @property
    def data_roots(self) -> list[Path]:
        """The folders server-path imports may read from (resolved, symlinks followed)."""
        env = os.environ.get("CURATION_DATA_ROOTS")
        roots = [Path(p) for p in env.split(os.pathsep) if p.strip()] if env else [self.home / "data"]
        return [r.expanduser().resolve() for r in roots]

    def server_path(self, text: str) -> Path:
        """A path typed in the app, allowed only inside a data root. Refused before anything is
        looked up, with the same message whether or not it exists (no probing)."""
        if "\0" in text:  # the OS cannot name such a file: Path.resolve raised ValueError
            raise CurationError("server path: contains a NUL character (\\0); type the file's path as text")
        try:
            path = Path(text.strip()).expanduser()
            resolved = (path if path.is_absolute() else self.data_roots[0] / path).resolve()
        except (OSError, RuntimeError):  # an unknown ~user, a symlink loop: refused like any path outside
            resolved = None
        if not text.strip() or resolved is None or not any(resolved.is_relative_to(r) for r in self.data_roots):
            roots = ", ".join(str(r) for r in self.data_roots)
            raise CurationError(f"server paths must be inside a data folder ({roots}); put the file "
                                "there, upload it, or set CURATION_DATA_ROOTS")
        return resolved

    def save_upload(self, file_name: str, data: bytes) -> Path:
        """Keep an uploaded file so imports read it like any server path. Each upload gets its own
        folder (two curators uploading ``pool.jsonl`` at once never share a file, and an import
        still reading one never sees the other's bytes) and keeps its base name (the default pool
        or set name); it is written to a temp file and renamed, so it is never seen half-written."""
        base = Path(file_name.replace("\\", "/")).name.strip()
        base = "upload" if base in ("", ".", "..") else base
        folder = self.uploads / uuid.uuid4().hex
        with writing(folder / base, len(data), "saving an upload"):
            folder.mkdir(parents=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                dest = folder / base
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                folder.rmdir()
                raise
        return dest

    def run_dir(self, run_id: int) -> Path:
        return self.home / "runs" / f"run_{run_id:05d}"
