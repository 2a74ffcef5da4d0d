"""How faithfully a projected (sketched) run ranks the pool, against exact scores.

Exact scores come from exact features (`IdentityProjector`: the whole normalised LoRA
gradient). Any sketch of them is computed afterwards from the stored exact rows: projecting
layer slice by layer slice and summing is the projection of the full gradient (tested in
`tests/test_grads.py`), and the L2 normalisation is scale-free, so one feature extraction
measures every setting. The scores use the stage-4 formula of `curation.engine.influence`
(learning-rate-weighted cosines, subtask mean, max over subtasks) on in-memory arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import stats

from curation.engine.influence import aggregate, checkpoint_weights, normalise_rows, subtask_index
from curation.engine.projection import DenseRademacherProjector, Projector, SparseJLProjector


@dataclass(frozen=True)
class Setting:
    """One sketch to measure: projector kind, k and (sparse JL) the non-zeros per column s."""

    projector: str = "sparse_jl"
    k: int = 8192
    s: int = 1

    @property
    def name(self) -> str:
        return f"{self.projector} k={self.k}" + (f" s={self.s}" if self.s > 1 else "")

    def build(self, seed: int) -> Projector:
        if self.projector == "dense_rademacher":
            return DenseRademacherProjector(self.k, seed)
        return SparseJLProjector(self.k, seed, s=self.s)


SETTINGS = (Setting(k=2048), Setting(k=8192), Setting(k=8192, s=4), Setting(k=32768), Setting(k=65536))


def sketch_rows(rows: np.ndarray, slices: Sequence[tuple[str, slice]], projector: Projector,
                chunk: int = 256) -> np.ndarray:
    """L2-normalised ``[n, k]`` sketch of exact rows ``[n, d]`` (layer ``name`` at ``slices``)."""
    out = np.empty((len(rows), projector.k), np.float32)
    for lo in range(0, len(rows), chunk):
        block = torch.from_numpy(np.ascontiguousarray(rows[lo:lo + chunk], dtype=np.float32))
        total = block.new_zeros(len(block), projector.k)
        for name, sl in slices:
            projector.accumulate(name, block[:, sl].contiguous(), total)
        out[lo:lo + chunk] = torch.nn.functional.normalize(total, dim=1).numpy()
    return out


def influence_scores(train: Sequence[np.ndarray], val: Sequence[np.ndarray], lrs: Sequence[float],
                     subtasks: Sequence[str]) -> np.ndarray:
    """METHODS.md stage 4 on arrays: max over subtasks of the lr-weighted mean cosine."""
    index, names = subtask_index(subtasks)
    w = checkpoint_weights(lrs)
    total = np.zeros((len(train[0]), len(names)))
    for wi, T, V in zip(w, train, val):
        total += wi * aggregate(normalise_rows(np.asarray(T, np.float32)) @ normalise_rows(np.asarray(V, np.float32)).T,
                                index, len(names))
    return total.max(axis=1)


def top_overlap(a: np.ndarray, b: np.ndarray, percent: float = 5.0) -> float:
    """Share of a's top ``percent`` that is also in b's (ties broken by position)."""
    n = max(1, int(round(len(a) * percent / 100)))
    top_a = set(np.argsort(-a, kind="stable")[:n].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:n].tolist())
    return len(top_a & top_b) / n


def agreement(exact: np.ndarray, other: np.ndarray, percent: float = 5.0) -> dict[str, float]:
    """Spearman and top-``percent`` overlap of ``other`` against ``exact``."""
    rho = stats.spearmanr(exact, other).statistic
    return {"spearman": float(rho), "top5_overlap": top_overlap(exact, other, percent)}


def measure(train: Sequence[np.ndarray], val: Sequence[np.ndarray], lrs: Sequence[float], subtasks: Sequence[str],
            slices: Sequence[tuple[str, slice]], settings: Sequence[Setting] = SETTINGS,
            seeds: Sequence[int] = (0, 1, 2)) -> dict[str, dict[str, float]]:
    """Per setting: mean and worst Spearman / top-5% overlap over projection seeds, vs exact."""
    exact = influence_scores(train, val, lrs, subtasks)
    d = sum(sl.stop - sl.start for _, sl in slices)
    out: dict[str, dict[str, float]] = {"exact": {"spearman": 1.0, "top5_overlap": 1.0, "k": d}}
    for setting in settings:
        if setting.k >= d and setting.projector != "dense_rademacher":
            continue  # a sketch as wide as the gradient only adds noise: exact is the setting
        runs = []
        for seed in seeds:
            proj = setting.build(seed)
            scores = influence_scores([sketch_rows(T, slices, proj) for T in train],
                                      [sketch_rows(V, slices, proj) for V in val], lrs, subtasks)
            runs.append(agreement(exact, scores))
        out[setting.name] = {"spearman": float(np.mean([r["spearman"] for r in runs])),
                             "spearman_min": float(min(r["spearman"] for r in runs)),
                             "top5_overlap": float(np.mean([r["top5_overlap"] for r in runs])), "k": setting.k}
    return out
