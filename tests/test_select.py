"""Top-p selection: budget rounding, deterministic ties, pins, excludes and NaN scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curation.engine.select import budget_from, select_top


@pytest.mark.parametrize("percent,N,expected", [
    (5, 100, 5), (7, 100, 7), (0.1, 1000, 1), (5, 10, 1), (5, 30, 2), (12.5, 8, 1),
    (0.01, 5, 1), (100, 3, 3), (5, 0, 0), (33.3, 1000, 333)])
def test_budget_from_percent(percent, N, expected):
    assert budget_from(percent, None, N) == expected


def test_budget_from_n_and_errors():
    assert budget_from(None, 4, 10) == 4 and budget_from(None, 40, 10) == 10
    for bad in [dict(percent=5, n=3), dict(percent=None, n=None), dict(percent=0, n=None),
                dict(percent=101, n=None), dict(percent=None, n=-1)]:
        with pytest.raises(ValueError):
            budget_from(N=10, **bad)


def test_ties_broken_by_id_independent_of_input_order():
    ids = np.array([7, 3, 9, 1, 5])
    scores = np.array([0.2, 0.5, 0.2, 0.2, 0.1])
    res = select_top(scores, ids, n=3)
    assert res.selected_ids == [3, 1, 7]
    assert res.ranks.tolist() == [3, 1, 4, 2, 5]
    assert res.cutoff_score == 0.2 and (res.n_auto, res.n_pinned, res.n_excluded) == (3, 0, 0)
    perm = np.random.default_rng(0).permutation(5)
    again = select_top(scores[perm], ids[perm], n=3)
    assert again.selected_ids == res.selected_ids
    assert again.ranks.tolist() == res.ranks[perm].tolist()


def test_percent_of_pool():
    ids = np.arange(200)
    res = select_top(np.linspace(0, 1, 200), ids, percent=5)
    assert res.selected_ids == list(range(199, 189, -1)) and res.n_auto == 10


def test_pins_count_towards_budget_and_excludes_stay_out():
    ids, scores = list(range(10)), [float(i) for i in range(10)]  # id 9 is best
    res = select_top(scores, ids, n=4, pinned=[0], excluded=[8, 42])
    assert res.selected_ids == [9, 7, 6, 0]  # ordered by rank; pin sits at its own rank
    assert (res.n_auto, res.n_pinned, res.n_excluded) == (3, 1, 1) and res.cutoff_score == 6.0
    many = select_top(scores, ids, n=2, pinned=[1, 2, 3])
    assert many.selected_ids == [3, 2, 1] and many.n_auto == 0 and math.isnan(many.cutoff_score)
    with pytest.raises(ValueError, match="both pinned and excluded"):
        select_top(scores, ids, n=2, pinned=[1], excluded=[1])
    with pytest.raises(ValueError, match="not in the pool"):
        select_top(scores, ids, n=2, pinned=[99])


def test_nan_scores_rank_last_and_only_enter_by_pin():
    ids, scores = [1, 2, 3, 4], [np.nan, 0.3, np.nan, -1.0]
    res = select_top(scores, ids, n=3)
    assert res.ranks.tolist() == [3, 1, 4, 2] and res.selected_ids == [2, 4]
    assert select_top(scores, ids, n=2, pinned=[3]).selected_ids == [2, 3]


def test_input_checks():
    with pytest.raises(ValueError, match="unique"):
        select_top([1.0, 2.0], [1, 1], n=1)
    with pytest.raises(ValueError, match="shapes"):
        select_top([1.0], [1, 2], n=1)
    assert select_top([], [], percent=5).selected_ids == []
