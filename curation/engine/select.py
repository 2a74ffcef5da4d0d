"""Top-p selection over pooled scores (METHODS.md §0 stage 5), with pins and exclusions.

Ranking is total and deterministic: score descending, ties by example id ascending, NaN
(unscored) last. The same scores always give the same subset, on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable

import numpy as np


@dataclass
class SelectionResult:
    """The chosen ids and how the budget was spent."""

    selected_ids: list[int]  # ordered by rank (pins sit at their own rank)
    ranks: np.ndarray  # [N] int64: 1-based rank of every input example, aligned with `ids`
    cutoff_score: float  # score of the last example chosen by score; NaN if none was
    n_auto: int  # chosen by score
    n_pinned: int  # chosen because pinned (count towards the budget)
    n_excluded: int  # excluded examples present in the pool


def budget_from(percent: float | None, n: int | None, N: int) -> int:
    """The number of examples to select from a pool of ``N``: exactly one of percent/n.

    ``ceil(percent/100 · N)``, computed on the decimal value of ``percent`` (so 7% of 100 is 7,
    not 8 from binary rounding), at least 1 when N > 0, and at most N.
    """
    if (percent is None) == (n is None):
        raise ValueError("give exactly one of percent and n")
    if percent is not None:
        if not 0 < percent <= 100:
            raise ValueError(f"percent must be in (0, 100], got {percent}")
        n = math.ceil(Fraction(str(percent)) * N / 100)
        return min(max(n, 1), N) if N > 0 else 0
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return min(int(n), N)


def rank_order(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions sorted best first: score desc, id asc on ties, NaN last."""
    nan = np.isnan(scores)
    return np.lexsort((ids, -np.where(nan, 0.0, scores), nan))


def select_top(scores: Iterable[float], ids: Iterable[int], percent: float | None = None,
               n: int | None = None, pinned: Iterable[int] = (),
               excluded: Iterable[int] = ()) -> SelectionResult:
    """Select ``budget_from(percent, n, N)`` examples: pins first, then the best by score.

    Pins count towards the budget (more pins than budget: all pins, nothing by score);
    excluded ids never enter. Unknown pins raise (they cannot be written out); unknown
    excludes are ignored (a blocklist may cover other pools). NaN-scored examples rank last
    and are never chosen by score, only by pinning: a missing score is not a low score.
    """
    scores, ids = _array(scores, np.float64), _array(ids, np.int64)
    pinned, excluded = set(int(i) for i in pinned), set(int(i) for i in excluded)
    _check(scores, ids, pinned, excluded)
    order = rank_order(scores, ids)
    ranks = np.empty(len(ids), np.int64)
    ranks[order] = np.arange(1, len(ids) + 1)
    budget = budget_from(percent, n, len(ids))
    is_pin = np.isin(ids, list(pinned))
    eligible = ~is_pin & ~np.isin(ids, list(excluded)) & ~np.isnan(scores)
    auto = order[eligible[order]][: max(budget - len(pinned), 0)]
    chosen = is_pin.copy()
    chosen[auto] = True
    return SelectionResult(
        selected_ids=ids[order[chosen[order]]].tolist(), ranks=ranks,
        cutoff_score=float(scores[auto[-1]]) if len(auto) else float("nan"),
        n_auto=len(auto), n_pinned=len(pinned),
        n_excluded=int(np.isin(ids, list(excluded)).sum()))


def _array(values: Iterable, dtype: type) -> np.ndarray:
    return np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype)


def _check(scores: np.ndarray, ids: np.ndarray, pinned: set[int], excluded: set[int]) -> None:
    if scores.shape != ids.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and ids {ids.shape} must be equal 1-d shapes")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("example ids must be unique")
    if both := pinned & excluded:
        raise ValueError(f"ids both pinned and excluded: {sorted(both)[:10]}")
    if unknown := pinned - set(ids.tolist()):
        raise ValueError(f"pinned ids not in the pool: {sorted(unknown)[:10]}")


def response_length(messages: list[dict]) -> int:
    """Characters of the example's output: every assistant message's content (what
    `length_stratified` bands and `length_spearman` correlates with)."""
    return sum(len(m.get("content") or "") for m in messages if m.get("role") == "assistant")


def length_stratified(scores: np.ndarray, lengths: np.ndarray, strata: int) -> np.ndarray:
    """Scores re-expressed as the percentile within the example's output-length stratum.

    Strata are ``strata`` equal-count groups of the output length; inside each, the best score
    gets the highest percentile (ties by position). Ranking by the result interleaves the strata,
    so a top p% takes about p% of every length band: a method that ranks mostly by length (ROSE
    on short answers, issue 21) keeps only what it prefers *within* a band. ``strata <= 1``: the
    scores unchanged.
    """
    scores = np.asarray(scores, np.float64)
    if strata <= 1 or len(scores) == 0:
        return scores.astype(np.float32)
    band = np.empty(len(scores), np.int64)
    band[np.argsort(np.asarray(lengths), kind="stable")] = np.arange(len(scores)) * strata // len(scores)
    out = np.empty(len(scores), np.float64)
    for b in np.unique(band):
        rows = np.flatnonzero(band == b)
        order = rows[np.lexsort((rows, -np.nan_to_num(scores[rows], nan=-np.inf)))]  # best first, ties by position
        out[order] = 1.0 - (np.arange(len(order)) + 0.5) / len(order)
    return out.astype(np.float32)
