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
    STAGING_PREFIX,
)

__all__ = [
    "Base", "Decision", "Example", "Export", "ImportReport", "Pool", "PreferencePair",
    "PreferenceSet", "Run", "STAGING_PREFIX", "Score", "Store", "migrate",
]
