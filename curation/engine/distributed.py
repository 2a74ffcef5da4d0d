"""Sharded feature extraction: `--shard i/N` by hand, or N ranks under torchrun.

Each rank writes only its own train-feature shards (rank i takes shards i, i+N, ...), with
its own rank manifest. Whoever then runs the run unsharded (rank 0 under torchrun, after a
barrier; or `score --resume RUN_ID` by hand) adopts every complete shard by checksum,
computes any that are missing, and finishes: validation features, scoring, selection.
The warmup is guarded by a file lock, so ranks started together train it once.

    torchrun --nproc-per-node 4 -m curation score --pool P --prefs S
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def world_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_process_group() -> None:
    """gloo on CPU, nccl when every rank has a GPU; torchrun provides the rendezvous."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def broadcast(value: object, src: int = 0) -> object:
    """Rank `src`'s value on every rank (e.g. the run id rank 0 created)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on one machine (or a shared POSIX filesystem)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
