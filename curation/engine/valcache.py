"""Validation features cached by content, so a re-score after adding one pair computes that
pair's gradients only (issue 20, item 6: a `rescore` of a 1,000-record pool spent 51-69 s per
checkpoint re-making the validation features of pairs it had already seen).

A row is one answer's projected gradient (``∇ −log p(answer | prompt)``, float32, not
normalised: what `gradient.SIDES` stores). It is addressed by
``workspace/valcache/{feature set id}/{checkpoint}/{objective}/{item}.npy``: the feature set's
id already fixes model, weights fingerprint, tokenizer, warmup, checkpoints, max length,
projector and k; ``item`` hashes the prompt messages and the answer. Each item is padded to a
length that depends on its own length only (`model.padded_length`), so a cached row has the
bits a fresh computation in any batch would have (on CPU). Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from curation.engine.features import save_npy_atomic

VALCACHE_SUBDIR = "valcache"


def item_key(prompt_messages: Sequence[dict[str, Any]], answer: str) -> str:
    """Content address of one (prompt, answer) item."""
    blob = json.dumps([list(prompt_messages), answer], sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class ValCache:
    """One feature set's, checkpoint's and objective's cached validation rows."""

    def __init__(self, home: Path, set_id: str, checkpoint: str, objective: str):
        self.root = Path(home) / VALCACHE_SUBDIR
        self.dir = self.root / set_id / checkpoint / objective

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npy"

    def missing(self, keys: Sequence[str]) -> list[int]:
        """Positions of ``keys`` with no cached row (each key counted once)."""
        seen: set[str] = set()
        out = []
        for i, k in enumerate(keys):
            if k not in seen and not self.path(k).is_file():
                out.append(i)
            seen.add(k)
        return out

    def put(self, keys: Sequence[str], rows: np.ndarray) -> None:
        self.root.mkdir(mode=0o700, exist_ok=True)  # pairs' gradients are as private as their text
        self.dir.mkdir(parents=True, exist_ok=True)
        for k, row in zip(keys, rows):
            save_npy_atomic(self.path(k), np.asarray(row, np.float32))

    def load(self, keys: Sequence[str]) -> np.ndarray:
        return np.stack([np.load(self.path(k), allow_pickle=False) for k in keys])
