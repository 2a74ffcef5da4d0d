"""On-disk store of projected gradient features (METHODS.md §0 stages 2 and 3).

Layout of one run: ``root/{split}/ckpt_{i}/shard_{j:05d}.npy`` plus ``manifest.json`` per
split and checkpoint. Why this shape: the reference code keeps one process per file and
checkpoint, three copies of the features and no way to resume; here a shard is the unit of
work, of resume and of rank-sharding, and features are stored exactly once.

Safety rules (STYLE.md habits 2 and 5):
- A directory is claimed by writing its manifest *before* the first shard, and the manifest
  carries a fingerprint of everything that determines the features (model, tokenizer,
  checkpoint, projector, dtype, example ids, shard size). A different fingerprint is refused:
  stale features must never be mixed with new ones.
- A shard is written to a temp file, fsynced and renamed, then the manifest is replaced the
  same way with the shard's sha256. A kill leaves either a complete shard or nothing; a shard
  file the manifest does not list yet (kill between the two renames) is checked and adopted,
  a shard whose checksum mismatches is written again.
- ``--shard i/N``: rank i writes the shards ``shard_range`` gives it and keeps its own
  ``manifest.rank{i}of{N}.json``; :meth:`FeatureStore.merge` joins them into ``manifest.json``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np

from curation.errors import CurationError

FORMAT_VERSION = 2  # bump when the same manifest would describe different bytes
IDS_FILE = "example_ids.npy"  # the split's row order, written once beside its manifests
SPLITS = ("train", "val", "val_chosen", "val_rejected")  # the last two: the contrast method's sides
DTYPES = ("float16", "float32")  # float16 halves disk and page cache; cosines need no more
MANIFEST = "manifest.json"
VIEW_FILE = "view.json"  # a run's split that points into the workspace feature store (`featuresets`)
VIEW_BLOCK = 4096  # rows per virtual shard of a view (iteration unit)


class StaleFeaturesError(CurationError):
    """A feature directory holds features of another model, projector, checkpoint or pool."""


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` via temp file + fsync + rename: readers see the old or the new file only."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Persist a rename (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` made atomic (the header is deterministic, so equal arrays give equal bytes)."""
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in 16 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardEntry:
    """One complete shard: rows ``[start, end)`` of the split, its file and checksum."""

    index: int
    start: int
    end: int
    file: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "rows": [self.start, self.end], "file": self.file,
                "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardEntry:
        return cls(int(d["index"]), int(d["rows"][0]), int(d["rows"][1]), d["file"], d["sha256"])


@dataclass
class FeatureManifest:
    """What one split/checkpoint directory holds; all fields but ``shards`` are fingerprinted."""

    model: str  # model name or path
    tokenizer_hash: str
    checkpoint: str  # warmup checkpoint name, e.g. "epoch_1"
    projector: dict[str, Any]  # Projector.spec(): type, seed, k, ...
    k: int
    dtype: str  # one of DTYPES
    example_ids: list[int]  # row order of the whole split
    shard_size: int
    shards: list[ShardEntry] = field(default_factory=list)
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.example_ids = [int(i) for i in self.example_ids]
        self.shards = sorted((s if isinstance(s, ShardEntry) else ShardEntry.from_dict(s)
                              for s in self.shards), key=lambda s: s.index)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.k < 1 or self.shard_size < 1:
            raise ValueError("k and shard_size must be positive")
        if self.projector.get("k", self.k) != self.k:
            raise ValueError(f"projector k={self.projector['k']} differs from k={self.k}")
        if len(set(self.example_ids)) != len(self.example_ids):
            raise ValueError("example_ids must be unique")
        self._ids_sha256 = hashlib.sha256(self.ids_array().tobytes()).hexdigest()

    def ids_array(self) -> np.ndarray:
        return np.asarray(self.example_ids, np.int64)

    @property
    def n(self) -> int:
        return len(self.example_ids)

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n / self.shard_size)

    def shard_rows(self, index: int) -> tuple[int, int]:
        """Rows ``[start, end)`` of shard ``index``."""
        if not 0 <= index < self.n_shards:
            raise IndexError(f"shard {index} outside 0..{self.n_shards - 1}")
        return index * self.shard_size, min((index + 1) * self.shard_size, self.n)

    @property
    def complete(self) -> bool:
        return [s.index for s in self.shards] == list(range(self.n_shards))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shards"] = [s.to_dict() for s in self.shards]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureManifest:
        return cls(**d)

    def header(self, shards: bool = True) -> dict[str, Any]:
        """The manifest file's content: the ids are named by count and sha256, not listed.

        The manifest is rewritten after every shard; with the ids inline that was 8 MB of JSON
        (0.66 s) per shard for a 1M-example pool. They live once in ``IDS_FILE`` instead.
        """
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("example_ids", "shards")}
        d.update(n=self.n, example_ids_sha256=self._ids_sha256)
        if shards:
            d["shards"] = [s.to_dict() for s in self.shards]
        return d

    def to_json(self) -> bytes:
        """Deterministic bytes: equal manifests give equal files (merge is byte-identical)."""
        return json.dumps(self.header(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def load(cls, path: Path) -> FeatureManifest:
        """A manifest file plus the ids file beside it, checked against the recorded hash."""
        path = Path(path)
        head = json.loads(path.read_text())
        n, sha = head.pop("n"), head.pop("example_ids_sha256")
        ids_path = path.parent / IDS_FILE
        if not ids_path.is_file():
            raise StaleFeaturesError(f"{path.parent}: {IDS_FILE} is missing; delete the directory")
        m = cls(example_ids=np.load(ids_path, allow_pickle=False).tolist(), **head)
        if m.n != n or m._ids_sha256 != sha:
            raise StaleFeaturesError(f"{ids_path} does not match {path.name}; delete the directory")
        return m

    def save(self, path: Path) -> None:
        """Write the ids file once (the directory's fingerprint pins it), then the manifest."""
        ids_path = Path(path).parent / IDS_FILE
        if not ids_path.is_file():
            save_npy_atomic(ids_path, self.ids_array())
        atomic_write(path, lambda f: f.write(self.to_json()))

    def fingerprint(self) -> str:
        """16 hex digits over everything but ``shards``: what the features depend on."""
        return hashlib.sha256(json.dumps(self.header(shards=False), sort_keys=True).encode()).hexdigest()[:16]

    def with_shards(self, shards: Sequence[ShardEntry]) -> FeatureManifest:
        """The same manifest with other shards (a shallow copy: no re-validation of 1M ids)."""
        new = copy.copy(self)
        new.shards = sorted((s if isinstance(s, ShardEntry) else ShardEntry.from_dict(s) for s in shards),
                            key=lambda s: s.index)
        return new


def shard_file(index: int) -> str:
    return f"shard_{index:05d}.npy"


def norms_file(index: int) -> str:
    """The L2 norms of a shard's rows (derived data: recomputed from the shard when absent)."""
    return f"norms_{index:05d}.npy"


def row_norms(block: np.ndarray) -> np.ndarray:
    """L2 norm of each row, in float32, exactly as scoring computes it (so a stored norm and a
    recomputed one are the same bits): float32 rows, then ``sqrt(einsum("ij,ij->i"))``."""
    x = np.asarray(block, np.float32)
    return np.sqrt(np.einsum("ij,ij->i", x, x))


def shard_range(n_shards: int, rank: int, world: int) -> list[int]:
    """Shard indices rank ``rank`` of ``world`` owns: strided, so ranks get equal work."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in 0..{world - 1}, got {rank}")
    return list(range(rank, n_shards, world))


def parse_shard_spec(spec: str) -> tuple[int, int]:
    """``"i/N"`` (0-based rank i of N) -> ``(i, N)``, as the ``--shard`` option takes it."""
    try:
        rank, world = (int(x) for x in spec.split("/"))
    except ValueError:
        raise CurationError(f"--shard takes i/N (e.g. 0/4), got {spec!r}") from None
    if not 0 <= rank < world:
        raise CurationError(f"--shard {spec}: need 0 <= i < N")
    return rank, world


def _check_shard(m: FeatureManifest, path: Path, index: int) -> np.ndarray:
    """Memmap of shard ``index`` after checking its shape and dtype against the manifest."""
    start, end = m.shard_rows(index)
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.shape != (end - start, m.k) or arr.dtype != np.dtype(m.dtype):
        raise CurationError(f"{path}: shape {arr.shape} {arr.dtype}, expected "
                            f"{(end - start, m.k)} {m.dtype}")
    return arr


def _bad_shards(m: FeatureManifest, directory: Path) -> list[int]:
    """Indices of listed shards whose file is missing or whose checksum differs."""
    return [s.index for s in m.shards
            if not (directory / s.file).is_file() or sha256_file(directory / s.file) != s.sha256]


def merge_manifests(paths: Sequence[Path]) -> FeatureManifest:
    """Join per-rank manifests (disjoint shards) into one, verifying every shard's checksum.

    Shard files are looked up next to each manifest. Raises if fingerprints differ, a shard
    is listed twice, a checksum fails or any shard is missing.
    """
    manifests = [FeatureManifest.load(p) for p in paths]
    if not manifests:
        raise CurationError("no rank manifests to merge")
    if len({m.fingerprint() for m in manifests}) != 1:
        raise StaleFeaturesError(f"rank manifests describe different features: {list(paths)}")
    shards: dict[int, ShardEntry] = {}
    for path, m in zip(paths, manifests):
        if bad := _bad_shards(m, Path(path).parent):
            raise CurationError(f"{path}: shards {bad} are missing or fail their checksum")
        for s in m.shards:
            if s.index in shards:
                raise CurationError(f"shard {s.index} is listed by two ranks")
            shards[s.index] = s
    merged = manifests[0].with_shards(list(shards.values()))
    if not merged.complete:
        missing = sorted(set(range(merged.n_shards)) - set(shards))
        raise CurationError(f"cannot merge: shards {missing} are not written yet")
    return merged


class FeatureWriter:
    """Writes the shards of one split/checkpoint that this rank owns; resumable after a kill."""

    def __init__(self, directory: Path, manifest: FeatureManifest, rank: tuple[int, int] = (0, 1)):
        self.dir, self.rank = Path(directory), rank
        self.owned = shard_range(manifest.n_shards, *rank)
        self.manifest_path = self.dir / (MANIFEST if rank == (0, 1) else
                                         f"manifest.rank{rank[0]}of{rank[1]}.json")
        self.manifest = self._claim(manifest.with_shards([]))

    def _claim(self, wanted: FeatureManifest) -> FeatureManifest:
        """Refuse a directory of other features; write our manifest before any shard."""
        self.dir.mkdir(parents=True, exist_ok=True)
        found = sorted(self.dir.glob("manifest*.json"))
        for path in found:
            if FeatureManifest.load(path).fingerprint() != wanted.fingerprint():
                raise StaleFeaturesError(
                    f"{self.dir} holds features of another model, checkpoint, projector, dtype "
                    f"or example set ({path.name}); use a new directory or delete it")
        if not found and any(self.dir.glob("shard_*.npy")):
            raise StaleFeaturesError(f"{self.dir} holds shard files but no manifest; delete it")
        if self.manifest_path.is_file():
            return FeatureManifest.load(self.manifest_path)
        wanted.save(self.manifest_path)
        return wanted

    def pending_shards(self) -> list[tuple[int, int, int]]:
        """``(index, start, end)`` of owned shards still to write.

        Listed shards are re-hashed (a mismatch is dropped and redone); an unlisted shard
        file (killed between rename and manifest update) is adopted if its shape and dtype
        are right: the rename happened after fsync, so the file is complete.
        """
        bad = set(_bad_shards(self.manifest, self.dir))
        for index in bad:  # gone, so a second kill cannot make it look like an orphan
            (self.dir / shard_file(index)).unlink(missing_ok=True)
        kept = [s for s in self.manifest.shards if s.index not in bad]
        listed = {s.index for s in kept}
        for index in self.owned:
            path = self.dir / shard_file(index)
            if index not in listed and path.is_file() and self._well_formed(path, index):
                kept.append(self._entry(index))
        if len(kept) != len(self.manifest.shards) or bad:
            self._publish(kept)
        done = {s.index for s in kept}
        return [(i, *self.manifest.shard_rows(i)) for i in self.owned if i not in done]

    def _well_formed(self, path: Path, index: int) -> bool:
        try:
            _check_shard(self.manifest, path, index)
            return True
        except (CurationError, ValueError, OSError):
            return False

    def write_shard(self, index: int, array: np.ndarray) -> ShardEntry:
        """Store rows ``shard_rows(index)``; ``array`` is ``[rows, k]``, cast to the store dtype."""
        if index not in self.owned:
            raise ValueError(f"shard {index} belongs to another rank than {self.rank}")
        start, end = self.manifest.shard_rows(index)
        data = np.ascontiguousarray(array, dtype=self.manifest.dtype)
        if data.shape != (end - start, self.manifest.k):
            raise ValueError(f"shard {index}: shape {data.shape}, "
                             f"expected {(end - start, self.manifest.k)}")
        if not np.isfinite(data).all():  # a broken gradient; never let it into scores
            raise ValueError(f"shard {index}: non-finite features")
        save_npy_atomic(self.dir / norms_file(index), row_norms(data))  # derived; before the shard
        save_npy_atomic(self.dir / shard_file(index), data)
        entry = self._entry(index)
        self._publish([s for s in self.manifest.shards if s.index != index] + [entry])
        return entry

    def _entry(self, index: int) -> ShardEntry:
        start, end = self.manifest.shard_rows(index)
        path = self.dir / shard_file(index)
        return ShardEntry(index, start, end, path.name, sha256_file(path))

    def _publish(self, shards: list[ShardEntry]) -> None:
        self.manifest = self.manifest.with_shards(shards)
        self.manifest.save(self.manifest_path)


def is_complete(directory: Path) -> bool:
    """A feature directory whose manifest lists every shard (what readers require)."""
    path = Path(directory) / MANIFEST
    return path.is_file() and FeatureManifest.load(path).complete


class SplitRows:
    """What every reader of one row-ordered split shares (`FeatureReader` and the feature
    store's `FeatureView`): sizes, ids, row lookup and streaming, all from ``self.manifest``
    and ``self.shard(index)``."""

    dir: Path
    manifest: FeatureManifest

    def shard(self, index: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def n(self) -> int:
        return self.manifest.n

    @property
    def k(self) -> int:
        return self.manifest.k

    @property
    def example_ids(self) -> list[int]:
        return self.manifest.example_ids

    def row_of(self, example_id: int) -> int:
        """Row of ``example_id`` in this split (the index is built on first use)."""
        if not hasattr(self, "_rows"):
            self._rows = {e: r for r, e in enumerate(self.manifest.example_ids)}
        if example_id not in self._rows:
            raise KeyError(f"example {example_id} has no features in {self.dir}")
        return self._rows[example_id]

    def iter_shards(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, end, memmap[end-start, k])`` for every shard in row order."""
        for s in self.manifest.shards:
            yield s.start, s.end, self.shard(s.index)

    def load_all(self, dtype: str = "float32") -> np.ndarray:
        """The whole ``[n, k]`` matrix in memory: for small splits (validation) only."""
        out = np.empty((self.n, self.k), dtype=dtype)
        for start, end, block in self.iter_shards():
            out[start:end] = block
        return out


class FeatureReader(SplitRows):
    """Reads one complete split/checkpoint; shards are memory-mapped, never loaded whole."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.is_file():
            ranks = sorted(p.name for p in self.dir.glob("manifest.rank*.json"))
            hint = f"; merge the rank manifests {ranks} first" if ranks else ""
            raise CurationError(f"no features at {self.dir}{hint}")
        self.manifest = FeatureManifest.load(path)
        self._open: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._norms: np.ndarray | None = None
        if not self.manifest.complete:
            raise CurationError(f"{self.dir}: {len(self.manifest.shards)} of "
                                f"{self.manifest.n_shards} shards written; finish the features run")

    def shard(self, index: int) -> np.ndarray:
        """Read-only memmap of one shard. The last two stay open (streaming in chunks smaller
        than a shard opened each shard several times: 0.5 s per 100k rows); more would grow
        the open file descriptors with the pool."""
        with self._lock:  # scoring reads from worker threads
            if index not in self._open:
                if len(self._open) >= 2:
                    self._open.pop(next(iter(self._open)))
                self._open[index] = _check_shard(self.manifest, self.dir / shard_file(index), index)
            return self._open[index]

    def rows(self, start: int, end: int) -> np.ndarray:
        """Rows ``[start, end)`` in the stored dtype (copied only when they span shards)."""
        if not 0 <= start <= end <= self.n:
            raise IndexError(f"rows [{start}, {end}) outside 0..{self.n}")
        if start == end:
            return np.empty((0, self.k), self.manifest.dtype)
        size = self.manifest.shard_size
        parts = [self.shard(j)[max(start - j * size, 0): end - j * size]
                 for j in range(start // size, math.ceil(end / size))]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def verify(self) -> list[int]:
        """Recompute every checksum; returns the indices of bad shards (empty when all good)."""
        return _bad_shards(self.manifest, self.dir)

    def norms(self) -> np.ndarray:
        """``[n]`` float32 row norms: the stored ones where a shard has them (written with it),
        else computed from the shard. Saves scoring a pass over every feature."""
        if self._norms is None:
            parts = []
            for s in self.manifest.shards:
                path = self.dir / norms_file(s.index)
                stored = np.load(path, allow_pickle=False) if path.is_file() else None
                ok = stored is not None and stored.shape == (s.end - s.start,) and stored.dtype == np.float32
                parts.append(stored if ok else row_norms(self.shard(s.index)))
            self._norms = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return self._norms


# ---------------------------------------------------------------------------- views


def is_view(directory: Path) -> bool:
    return (Path(directory) / VIEW_FILE).is_file()


def view_info(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / VIEW_FILE).read_text())


def view_readable(directory: Path) -> bool:
    """The view's segments all exist and are complete (false after `features rm`)."""
    head = view_info(directory)
    return all(is_complete(Path(head["root"]) / name / f"ckpt_{head['ckpt']}") for name in head["segments"])


class FeatureView(SplitRows):
    """A pool's rows gathered from feature-set segments; reads like a `FeatureReader`.

    Rows that are consecutive in one segment (the usual case: a pool featurized once, or
    grown by appending) are sliced straight from the memmapped shards, never copied whole.
    """

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        head = view_info(self.dir)
        root = Path(head["root"])
        if not root.is_dir():
            raise CurationError(f"{self.dir}: its feature set {head['featureset']} was removed")
        self.readers = [FeatureReader(root / name / f"ckpt_{head['ckpt']}") for name in head["segments"]]
        self.seg = np.load(self.dir / "view_seg.npy", allow_pickle=False)
        self.rowmap = np.load(self.dir / "view_row.npy", allow_pickle=False)
        ids = np.load(self.dir / "view_example_ids.npy", allow_pickle=False)
        first = self.readers[0].manifest
        # a manifest describing the view (what `_check_compatible` and cache keys read)
        self.manifest = FeatureManifest(
            model=first.model, tokenizer_hash=first.tokenizer_hash, checkpoint=first.checkpoint,
            projector=first.projector, k=first.k, dtype=first.dtype, example_ids=ids.tolist(),
            shard_size=VIEW_BLOCK)
        self.manifest.shards = [ShardEntry(j, *self.manifest.shard_rows(j), shard_file(j), "")
                                for j in range(self.manifest.n_shards)]
        self._norms: np.ndarray | None = None

    def rows(self, start: int, end: int) -> np.ndarray:
        """Rows ``[start, end)`` in the stored dtype."""
        if not 0 <= start <= end <= self.n:
            raise IndexError(f"rows [{start}, {end}) outside 0..{self.n}")
        seg, row = self.seg[start:end], self.rowmap[start:end]
        if end == start:
            return np.empty((0, self.k), self.manifest.dtype)
        # runs of rows consecutive within one segment
        breaks = np.flatnonzero((np.diff(seg) != 0) | (np.diff(row) != 1)) + 1
        bounds = np.concatenate([[0], breaks, [len(seg)]])
        parts = [self.readers[int(seg[a])].rows(int(row[a]), int(row[b - 1]) + 1)
                 for a, b in zip(bounds[:-1], bounds[1:])]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def shard(self, index: int) -> np.ndarray:
        return self.rows(*self.manifest.shard_rows(index))

    def norms(self) -> np.ndarray:
        """``[n]`` row norms, gathered from the segments' (see `FeatureReader.norms`)."""
        if self._norms is None:
            out = np.empty(self.n, np.float32)
            for j, reader in enumerate(self.readers):
                mask = self.seg == j
                out[mask] = reader.norms()[self.rowmap[mask]]
            self._norms = out
        return self._norms

    def verify(self) -> list[int]:
        """Every view block when any segment shard fails its checksum (a view's blocks do not
        map one to one onto shards), else none."""
        return list(range(self.manifest.n_shards)) if any(r.verify() for r in self.readers) else []


class FeatureStore:
    """The features of one run: ``root/{split}/ckpt_{i}/``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, split: str, ckpt: int) -> Path:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.root / split / f"ckpt_{int(ckpt)}"

    def exists(self, split: str, ckpt: int) -> bool:
        """True when the split/checkpoint is complete and readable (a view: its feature set too)."""
        if is_view(self.path(split, ckpt)):
            return view_readable(self.path(split, ckpt))
        return is_complete(self.path(split, ckpt))

    def writer(self, split: str, ckpt: int, manifest: FeatureManifest,
               rank: tuple[int, int] = (0, 1)) -> FeatureWriter:
        """A resumable writer for the shards ``rank = (i, N)`` owns (default: all of them)."""
        return FeatureWriter(self.path(split, ckpt), manifest, rank)

    def reader(self, split: str, ckpt: int) -> FeatureReader:
        """The split's reader; a run's train split is a view into the workspace feature store."""
        if is_view(self.path(split, ckpt)):
            return FeatureView(self.path(split, ckpt))
        return FeatureReader(self.path(split, ckpt))

    def merge(self, split: str, ckpt: int) -> FeatureManifest:
        """Join the rank manifests of a split/checkpoint into ``manifest.json`` (verified)."""
        directory = self.path(split, ckpt)
        merged = merge_manifests(sorted(directory.glob("manifest.rank*.json")))
        target = directory / MANIFEST
        if target.is_file() and FeatureManifest.load(target).fingerprint() != merged.fingerprint():
            raise StaleFeaturesError(f"{target} describes other features")
        merged.save(target)
        return merged
