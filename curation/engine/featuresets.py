"""The workspace's train-feature store: gradient features computed once per pool content and
model, shared by every gradient method (ROSE, LESS, NICE) and every preference set.

Why: train features are >95% of a gradient run's time, and they depend on neither the method
nor the pairs (METHODS.md §0: only the validation side differs). So they live under
``workspace/features/fs_{id}/``, keyed by everything they depend on and nothing else
(`FeatureSetKey`: model, tokenizer, warmup and its checkpoints, max length, projector, k,
dtype), and rows are addressed by *content* (a 60-bit prefix of the example's content hash),
not by a pool's database ids. A second pool with the same examples, or a pool that grew,
reuses every row it shares.

Layout::

    fs_{id}/featureset.json            the key, the pools it served, when it was made
    fs_{id}/seg_{seq:04d}_{hash}/keys.npy     content keys of the segment's rows (int64)
    fs_{id}/seg_.../hashes.npy         their full content hashes (to fetch text from any pool)
    fs_{id}/seg_.../ckpt_{i}/          an ordinary feature directory (`features.FeatureWriter`)

A segment is the unit of growth: the first run makes one segment of the whole pool; a run
on a grown pool adds one segment with only the new rows. Segments are created under a file
lock (two runs never plan the same rows twice) and written under a per-checkpoint lock (a
second run waits, then finds nothing left to do). A run does not copy features: its
``features/train/ckpt_i/`` holds a *view* (`FeatureView`): the pool's example ids and, per
row, which segment row holds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from curation.data.catalog import run_feature_set
from curation.data.users import Actor, require
from curation.engine.features import (
    VIEW_FILE,
    FeatureManifest,
    FeatureReader,
    ShardEntry,
    SplitRows,
    atomic_write,
    is_complete,
    save_npy_atomic,
    shard_file,
)
from curation.errors import CurationError

FEATURES_SUBDIR = "features"
SET_FILE = "featureset.json"
KEY_VERSION = 1  # bump when the same key would describe different bytes
BATCHING = "padded_length-v1"  # `model.padded_length`: features independent of batch companions


def content_key(content_hash: str) -> int:
    """The row key of an example: the first 60 bits of its sha256 content hash (fits int64).
    The definition; `content_keys` computes the same for a whole pool at once."""
    return int(content_hash[:15], 16)


def content_keys(hashes: Sequence[str]) -> np.ndarray:
    """Keys of a pool's examples; refuses a (60-bit) collision rather than mixing two rows.

    Vectorised (`content_key` per hash took 0.2 s per 100k): the first 16 hex digits as a
    big-endian uint64, shifted right by 4 bits = the first 15 digits.
    """
    if not len(hashes):
        return np.zeros(0, np.int64)
    raw = np.frombuffer(bytes.fromhex("".join(h[:16] for h in hashes)), dtype=">u8")
    keys = (raw >> np.uint64(4)).astype(np.int64)
    if len(np.unique(keys)) != len(keys):
        raise CurationError("two examples share a 60-bit content-key prefix (or a pool holds "
                            "duplicate content); deduplicate the pool")
    return keys


@dataclass(frozen=True)
class FeatureSetKey:
    """Everything train features depend on. Equal keys <=> interchangeable features."""

    model: str  # name or path
    model_fingerprint: str  # the model's config (architecture, sizes) and weight dtype
    tokenizer_hash: str
    warmup: str  # the warmup's cache key: its data, settings and base model
    checkpoints: tuple[str, ...]  # warmup checkpoint names, one feature directory each
    max_length: int
    projector: dict[str, Any]  # Projector.spec()
    k: int
    dtype: str  # stored dtype
    batching: str = BATCHING
    version: int = KEY_VERSION
    # The cheaper-feature options of a preset (`FeatureConfig.cheap_options`): fewer
    # checkpoints, top-L LoRA layers, a pool-chosen max length. Absent (None) for full
    # features, so keys made before these options existed keep their ids.
    cheap: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "checkpoints": list(self.checkpoints)}
        if not d["cheap"]:
            del d["cheap"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSetKey:
        return cls(**{**d, "checkpoints": tuple(d["checkpoints"])})

    @property
    def id(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@contextmanager
def locked(path: Path, wait: Callable[[], None] | None = None, poll_s: float = 1.0) -> Iterator[None]:
    """Exclusive inter-process lock on ``path``.

    While another process holds it, ``wait()`` is called every ``poll_s`` (a run keeps its
    heartbeat fresh and can be cancelled while it waits).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait:
                    wait()
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------- segments


@dataclass
class Segment:
    """Rows added to a feature set at once; one feature directory per checkpoint."""

    dir: Path
    keys: np.ndarray  # [n] int64 content keys, row order

    @property
    def seq(self) -> int:
        return int(self.dir.name.split("_")[1])

    @property
    def n(self) -> int:
        return len(self.keys)

    def hashes(self) -> list[str]:
        return [h.decode() for h in np.load(self.dir / "hashes.npy", allow_pickle=False)]

    def ckpt_dir(self, ckpt: int) -> Path:
        return self.dir / f"ckpt_{int(ckpt)}"

    def complete(self, ckpt: int) -> bool:
        return is_complete(self.ckpt_dir(ckpt))


def existing_shard_size(directory: Path) -> int | None:
    """The shard size a feature directory was started with (a later run must keep it)."""
    found = sorted(Path(directory).glob("manifest*.json"))  # manifest.json sorts first
    return FeatureManifest.load(found[0]).shard_size if found else None


def _load_segment(path: Path) -> Segment | None:
    """A segment directory, or None while its key file is not written yet (being created)."""
    keys = path / "keys.npy"
    if not keys.is_file() or not (path / "hashes.npy").is_file():
        return None
    return Segment(path, np.load(keys, allow_pickle=False))


# ---------------------------------------------------------------------------- feature sets


@dataclass
class Plan:
    """Where each row of a pool's features lives: ``segments[seg[r]]`` row ``row[r]``."""

    segments: list[Segment]
    seg: np.ndarray  # [n] int32 index into `segments`
    row: np.ndarray  # [n] int64 row within that segment
    new_rows: int  # rows of the pool that no segment held before this plan

    def pending(self, ckpt: int) -> list[Segment]:
        return [s for s in self.segments if not s.complete(ckpt)]


class FeatureSet:
    """One key's features: a directory of segments."""

    def __init__(self, root: Path, key: FeatureSetKey, meta: dict[str, Any] | None = None):
        self.root, self.key, self.meta = Path(root), key, meta or {}

    @property
    def id(self) -> str:
        return self.key.id

    @classmethod
    def open(cls, home: Path, key: FeatureSetKey, pool: str | None = None) -> FeatureSet:
        """The set for ``key`` under the workspace ``home``, created if absent; ``pool`` is
        recorded as one of the pools it served (for `features list`)."""
        root = Path(home) / FEATURES_SUBDIR / f"fs_{key.id}"
        with locked(root / ".lock"):
            found = cls._read_meta(root)
            meta = found or {"id": key.id, "key": key.to_dict(), "pools": [],
                             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if meta["key"] != key.to_dict():
                raise CurationError(f"{root}: holds features of another key; delete it")
            if found is None or (pool and pool not in meta["pools"]):
                meta["pools"] += [pool] if pool and pool not in meta["pools"] else []
                atomic_write(root / SET_FILE, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        return cls(root, key, meta)

    @staticmethod
    def _read_meta(root: Path) -> dict[str, Any] | None:
        path = root / SET_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    @classmethod
    def load(cls, root: Path) -> FeatureSet:
        meta = cls._read_meta(Path(root))
        if meta is None:
            raise CurationError(f"{root} is not a feature set ({SET_FILE} missing)")
        return cls(Path(root), FeatureSetKey.from_dict(meta["key"]), meta)

    def segments(self) -> list[Segment]:
        found = (_load_segment(p) for p in sorted(self.root.glob("seg_*")) if p.is_dir())
        return sorted((s for s in found if s is not None), key=lambda s: s.seq)

    def plan(self, keys: np.ndarray, hashes: Sequence[str]) -> Plan:
        """Map every key to a segment row, creating one segment for the keys none holds.

        Under the set's lock, so concurrent runs (and torchrun ranks) agree on one plan.
        """
        keys = np.asarray(keys, np.int64)
        with locked(self.root / ".lock"):
            segments = self.segments()
            seg, row = self._locate(segments, keys)
            missing = np.flatnonzero(seg < 0)
            if len(missing):
                segments.append(self._new_segment(segments, keys[missing], [hashes[i] for i in missing]))
                seg[missing], row[missing] = len(segments) - 1, np.arange(len(missing))
        used = sorted(set(seg.tolist()))
        remap = np.full(len(segments), -1, np.int32)
        remap[used] = np.arange(len(used))
        return Plan([segments[i] for i in used], remap[seg], row, int(len(missing)))

    @staticmethod
    def _locate(segments: list[Segment], keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment index, row) of every key in the earliest segment holding it; -1 if none."""
        seg = np.full(len(keys), -1, np.int32)
        row = np.full(len(keys), -1, np.int64)
        for j, s in enumerate(segments):
            order = np.argsort(s.keys, kind="stable")
            pos = np.searchsorted(s.keys, keys, sorter=order)
            pos = np.minimum(pos, len(order) - 1)
            hit = (seg < 0) & (s.keys[order[pos]] == keys)
            seg[hit], row[hit] = j, order[pos[hit]]
        return seg, row

    def _new_segment(self, segments: list[Segment], keys: np.ndarray, hashes: list[str]) -> Segment:
        seq = segments[-1].seq + 1 if segments else 0
        digest = hashlib.sha256(keys.tobytes()).hexdigest()[:12]
        path = self.root / f"seg_{seq:04d}_{digest}"
        path.mkdir(parents=True, exist_ok=True)
        save_npy_atomic(path / "hashes.npy", np.array([h.encode() for h in hashes], dtype="S64"))
        save_npy_atomic(path / "keys.npy", keys)  # last: its presence publishes the segment
        return Segment(path, keys)

    def coverage(self, keys: np.ndarray) -> int:
        """How many of ``keys`` have complete features at every checkpoint."""
        done = [s for s in self.segments()
                if all(s.complete(i) for i in range(len(self.key.checkpoints)))]
        if not done:
            return 0
        return int(np.isin(np.asarray(keys, np.int64), np.concatenate([s.keys for s in done])).sum())

    def n_rows(self) -> int:
        return sum(s.n for s in self.segments())

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


def list_sets(home: Path) -> list[FeatureSet]:
    root = Path(home) / FEATURES_SUBDIR
    return [FeatureSet.load(p) for p in sorted(root.glob("fs_*")) if (p / SET_FILE).is_file()]


def find_set(home: Path, set_id: str) -> FeatureSet:
    """A feature set by id or unique id prefix."""
    hits = [s for s in list_sets(home) if s.id.startswith(set_id)]
    if len(hits) != 1:
        raise CurationError(f"no feature set {set_id!r}" if not hits else
                            f"{set_id!r} names {len(hits)} feature sets; give more of the id")
    return hits[0]


def remove_set(fset: FeatureSet, actor: Actor | None = None) -> None:
    """Delete a feature set (rename first, so a half-deleted set is never read); an admin's act."""
    require(actor, "features_rm")
    trash = fset.root.with_name(f".trash-{fset.root.name}-{os.getpid()}")
    os.replace(fset.root, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------------------- views


def write_view(directory: Path, fset: FeatureSet, plan: Plan, ckpt: int, example_ids: Sequence[int]) -> None:
    """Point ``directory`` (a run's ``features/train/ckpt_i``) at the plan's segment rows."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_npy_atomic(directory / "view_example_ids.npy", np.asarray(example_ids, np.int64))
    save_npy_atomic(directory / "view_seg.npy", plan.seg.astype(np.int32))
    save_npy_atomic(directory / "view_row.npy", plan.row.astype(np.int64))
    head = {"featureset": fset.id, "root": str(fset.root), "ckpt": int(ckpt),
            "segments": [s.dir.name for s in plan.segments], "n": len(example_ids)}
    atomic_write(directory / VIEW_FILE, lambda f: f.write(json.dumps(head, indent=1).encode()))


# ---------------------------------------------------------------------------- management


def describe_sets(store, home: Path) -> list[dict[str, Any]]:
    """Every feature set with its size and the runs that use it (`features list`)."""
    from sqlalchemy import select

    from curation.data.store import Pool, Run

    with store.session() as s:
        runs = s.execute(select(Run.id, Run.meta, Run.status)).all()
        pools = set(s.scalars(select(Pool.name)))
    users: dict[str, list[int]] = {}
    for rid, meta, _ in runs:
        if fid := run_feature_set(meta):
            users.setdefault(fid, []).append(rid)
    out = []
    for fset in list_sets(home):
        served = [p for p in fset.meta.get("pools", []) if p in pools]
        out.append({"id": fset.id, "pool": served[-1] if served else None, "pools": served,
                    "model": fset.key.model, "n_examples": fset.n_rows(), "bytes": fset.nbytes(),
                    "checkpoints": len(fset.key.checkpoints), "k": fset.key.k,
                    "runs": sorted(users.get(fset.id, [])), "created": fset.meta.get("created")})
    return out


def pool_feature_status(store, pool: str, home: Path, model: str | None = None) -> list[dict[str, Any]]:
    """Per feature set of ``model`` (default: any): how many of the pool's examples it covers."""
    from curation.data.catalog import get_pool, pool_hashes

    with store.session() as s:
        hashes = pool_hashes(s, get_pool(s, pool).id)
    keys = content_keys(hashes)
    out = []
    for fset in list_sets(home):
        if model and fset.key.model != model:
            continue
        covered = fset.coverage(keys)
        if covered:
            out.append({"id": fset.id, "model": fset.key.model, "k": fset.key.k, "covered": covered,
                        "n": len(hashes), "bytes": fset.nbytes()})
    return sorted(out, key=lambda d: -d["covered"])
