"""The embedded demo: the project's own pool and preference set, imported on demand.

`python data/make_demo.py` regenerates the files deterministically; this module only loads them.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from curation.data.imports import ImportResult, import_pool, import_prefs
from curation.data.store import Pool, PreferenceSet, Store

DATA = Path(__file__).resolve().parents[2] / "data"
DEMO_POOL = DATA / "demo_pool.jsonl"
DEMO_PREFS = DATA / "demo_prefs.jsonl"
DEMO_HELDOUT = DATA / "demo_heldout.jsonl"


def ensure_demo(store: Store, progress=None) -> list[ImportResult]:
    """Create the pool `demo` and the preference set `demo` unless they exist (idempotent)."""
    done = []
    with store.session() as s:
        has_pool = s.scalar(select(Pool.id).where(Pool.name == "demo")) is not None
        has_prefs = s.scalar(select(PreferenceSet.id).where(PreferenceSet.name == "demo")) is not None
    if not has_pool:
        done.append(import_pool(store, DEMO_POOL, name="demo", progress=progress))
    if not has_prefs:
        done.append(import_prefs(store, DEMO_PREFS, name="demo"))
    return done
