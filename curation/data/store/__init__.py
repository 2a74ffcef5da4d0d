"""Persistence: the schema (`models`), the engine and migrations (`db`)."""

from curation.data.store.db import Store, migrate
from curation.data.store.models import (
                                        STAGING_PREFIX,
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
    "PreferenceSet", "Run", "STAGING_PREFIX", "Score", "Store", "migrate",
]
