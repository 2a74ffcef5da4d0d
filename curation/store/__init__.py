"""Persistence: the schema (`models`), the engine and migrations (`db`)."""

from curation.store.db import Store, migrate
from curation.store.models import (
    Base,
    Decision,
    Example,
    Export,
    ImportReport,
    Pool,
    PreferencePair,
    PreferenceSet,
    Run,
    Score,
)

__all__ = [
    "Base", "Decision", "Example", "Export", "ImportReport", "Pool", "PreferencePair",
    "PreferenceSet", "Run", "Score", "Store", "migrate",
]
