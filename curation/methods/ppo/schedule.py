"""The trained selector's output: the batch of every training step, and a static score from it.

``steps [T, B]`` holds database example ids in training order (-1 where a small cluster left a
slot empty), ``slot_clusters`` their clusters. The static score ranks examples by how often
the schedule picks them, then by how early:

    score = count + (1 - (first + 1) / (T + 1))        (count >= 1, first = 0-based first step)

so every picked example scores >= 1 and more picks always outrank earlier ones. Unpicked
examples score in [0, 1): the rank (as a fraction) of their mean actor score over the
recorded snapshots, so the trained selector still orders what it never picked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation.engine.features import atomic_write

SCHEDULE_FILE = "schedule.npz"


@dataclass
class Schedule:
    """The greedy rollout of the trained selector over the whole pool."""

    example_ids: np.ndarray  # [n] int64, the pool in row order
    steps: np.ndarray  # [T, B] int64 example ids, -1 = empty slot
    slot_clusters: np.ndarray  # [T, B] int32, -1 = empty slot
    val_losses: np.ndarray  # [D + 1] validation loss before the first and after every decision
    decision_steps: np.ndarray  # [D] first step of every decision (select_every M)
    snapshot_steps: np.ndarray  # [S] steps at which the actor scores of the pool were recorded
    snapshot_scores: np.ndarray  # [S, n] float32 actor scores F_θ of every example

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / SCHEDULE_FILE, lambda f: np.savez(f, **vars(self)))

    @classmethod
    def load(cls, folder: Path) -> Schedule | None:
        path = Path(folder) / SCHEDULE_FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: z[k] for k in z.files})

    def counts_and_first(self) -> tuple[np.ndarray, np.ndarray]:
        """Per pool row: times picked and first (0-based) step picked, -1 when never."""
        row = {int(e): i for i, e in enumerate(self.example_ids)}
        count = np.zeros(len(self.example_ids), np.int64)
        first = np.full(len(self.example_ids), -1, np.int64)
        for t, batch in enumerate(self.steps):
            for e in batch[batch >= 0]:
                i = row[int(e)]
                count[i] += 1
                if first[i] < 0:
                    first[i] = t
        return count, first

    def scores(self) -> np.ndarray:
        """The static score of every pool row (module doc)."""
        count, first = self.counts_and_first()
        T = len(self.steps)
        out = np.zeros(len(count), np.float64)
        picked = count > 0
        out[picked] = count[picked] + 1.0 - (first[picked] + 1.0) / (T + 1.0)
        rest = np.flatnonzero(~picked)
        if len(rest):
            mean = self.snapshot_scores.mean(axis=0)[rest] if len(self.snapshot_scores) else np.zeros(len(rest))
            order = np.lexsort((rest, mean))  # ascending score, ties by row
            out[rest[order]] = np.arange(len(rest)) / len(rest)
        return out

    def history(self, example_id: int) -> list[dict]:
        """Every step and slot that trains on ``example_id``."""
        hits = np.argwhere(self.steps == example_id)
        return [{"step": int(t) + 1, "slot": int(s) + 1, "cluster": int(self.slot_clusters[t, s])} for t, s in hits]
