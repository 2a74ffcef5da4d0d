"""Repsim's pool states cached by model and pool content (`methods.repsim`), torch-free so the
cost estimate can ask whether a run will find them.

A pool's last-token states depend on the model, tokenizer, max length, device and the pool's
content only, not on the pairs; yet `auto` scores repsim beside its own candidates and a bench
runs repsim once per target (on smollm2 that re-extracted a 1,000-record pool for 786 s each
time). Layout: ``workspace/repsim_cache/{key}.npy`` (a hard link to the run's ``train.npy``,
renamed into place; no hard links, no cache) and ``{key}.json``, what the key was made of in
words, which the estimate matches without loading the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from curation.engine.features import atomic_write

CACHE_SUBDIR = "repsim_cache"
CACHE_VERSION = 1  # bump when the same key would describe different states


def pool_digest(content_hashes: Sequence[str]) -> str:
    """The pool's ordered content, as one hash."""
    h = hashlib.sha256()
    for c in content_hashes:
        h.update(c.encode() + b"\n")
    return h.hexdigest()[:32]


def describe(name_or_path: str, dtype: str, max_length: int, device: str, content_hashes: Sequence[str]) -> dict[str, Any]:
    """What a cache entry is for, in the terms a run's config has before its model loads."""
    return {"model": name_or_path, "dtype": dtype, "max_length": int(max_length), "device": device,
            "pool": pool_digest(content_hashes), "rows": len(content_hashes), "version": CACHE_VERSION}


def states_key(about: dict[str, Any], tokenizer_hash: str, model_config: str) -> str:
    """Cache key: the description plus what only the loaded model knows (tokenizer, architecture)."""
    return hashlib.sha256(json.dumps([about, tokenizer_hash, model_config], sort_keys=True).encode()).hexdigest()[:32]


def cached_states(home: Path, key: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached pool states of ``key`` (memory-mapped), or None when absent, unreadable or of
    another shape: a bad cache file is a miss, never a failed run."""
    path = Path(home) / CACHE_SUBDIR / f"{key}.npy"
    if not path.is_file():
        return None
    try:
        states = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return states if states.shape == shape and states.dtype == np.float32 else None


def keep_states(home: Path, key: str, about: dict[str, Any], train: Path) -> None:
    """Put a finished ``train.npy`` into the cache under ``key``: a hard link renamed into place
    (no second copy, and nothing ever writes through it: repsim unlinks before writing). Best
    effort: a filesystem without hard links, or any error, leaves the run as it is, uncached."""
    cache = Path(home) / CACHE_SUBDIR
    tmp = cache / f".{key}.{uuid.uuid4().hex}.tmp"
    try:
        cache.mkdir(mode=0o700, exist_ok=True)  # the pool's states are as private as its text
        os.link(train, tmp)
        os.replace(tmp, cache / f"{key}.npy")
        atomic_write(cache / f"{key}.json", lambda f: f.write(json.dumps(about).encode()))
    except OSError:
        tmp.unlink(missing_ok=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (a copy across filesystems); ``dst`` must not exist."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def has_cached(home: Path, about: dict[str, Any]) -> bool:
    """Whether some cache entry was made for this description (the estimate's question: the
    tokenizer and architecture are not checked, so it can only be wrong about a model folder
    changed in place under the same name)."""
    cache = Path(home) / CACHE_SUBDIR
    for side in cache.glob("*.json") if cache.is_dir() else ():
        try:
            if json.loads(side.read_text()) == about and side.with_suffix(".npy").is_file():
                return True
        except (OSError, ValueError):
            continue
    return False
