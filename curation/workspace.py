"""Where a curator's state lives: one folder with the database, models, runs and exports.

`CURATION_HOME` picks the folder (default ``./workspace``); `CURATION_DB_URL` swaps the SQLite
file for any SQLAlchemy URL (e.g. PostgreSQL). Large arrays stay on disk under ``runs/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
        for sub in ("models", "runs", "exports", "uploads", "logs"):
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

    def run_dir(self, run_id: int) -> Path:
        return self.home / "runs" / f"run_{run_id:05d}"
