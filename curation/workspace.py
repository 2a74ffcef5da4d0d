"""Where a curator's state lives: one folder with the database, models, runs and exports.

`CURATION_HOME` picks the folder (default ``./workspace``); `CURATION_DB_URL` swaps the SQLite
file for any SQLAlchemy URL (e.g. PostgreSQL). Large arrays stay on disk under ``runs/``.
`CURATION_DATA_ROOTS` (folders separated by ``os.pathsep``; default ``<home>/data``) lists
where the app's "import from a server path" may read: a browser user must not be able to
import, or probe for, any file the server process can read.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from curation.errors import CurationError


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
        for sub in ("models", "runs", "exports", "uploads", "logs", "data"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        return self

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
        path = Path(text.strip()).expanduser()
        resolved = (path if path.is_absolute() else self.data_roots[0] / path).resolve()
        if not text.strip() or not any(resolved.is_relative_to(r) for r in self.data_roots):
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
        folder.mkdir(parents=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            dest = folder / base
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def run_dir(self, run_id: int) -> Path:
        return self.home / "runs" / f"run_{run_id:05d}"
