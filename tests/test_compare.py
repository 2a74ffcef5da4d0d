"""Comparing finished runs: numbers against direct computations, refusals, the CLI, the page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from curation import cli
from curation.config import ScoreConfig, SelectConfig
from curation.data.demo import ensure_demo
from curation.data.store import Example, Pool, Run, Score, Store
from curation.errors import CurationError
from curation.methods import ScoreOutput
from curation.review.compare import GROUPS, compare_runs, disagreement_frame, report, score_scatter_frame
from curation.runs.execute import create_run, execute_run, store_scores

APP = str(Path(__file__).resolve().parents[1] / "app.py")



@pytest.fixture
def store(ws) -> Store:
    store = Store.open(ws)
    ensure_demo(store)
    return store


def random_run(store: Store, seed: int, percent: float = 5) -> int:
    cfg = ScoreConfig(method="random", options={"seed": seed}, select=SelectConfig(percent=percent))
    run_id = create_run(store, "demo", None, cfg)
    execute_run(store, run_id)
    return run_id


@pytest.fixture
def two_runs(store) -> tuple[int, int]:
    return random_run(store, 1), random_run(store, 2, percent=20)


def stored(store: Store, run_id: int) -> dict[int, tuple[float, int, bool]]:
    with store.session() as s:
        rows = s.execute(select(Score.example_id, Score.score, Score.rank, Score.selected)
                         .where(Score.run_id == run_id)).all()
    return {e: (sc, r, sel) for e, sc, r, sel in rows}


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Tau-b over all pairs, written out (float32 scores of 3000 examples do tie)."""
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    return float((sx * sy).sum() / np.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy)))


def test_overlap_and_correlations_equal_direct_computations(store, two_runs):
    a, b = two_runs
    A, B = stored(store, a), stored(store, b)
    ids = sorted(A)
    x, y = np.array([A[i][0] for i in ids]), np.array([B[i][0] for i in ids])
    sel_a, sel_b = {i for i in ids if A[i][2]}, {i for i in ids if B[i][2]}
    p = compare_runs(store, [a, b]).pair(a, b)
    assert (len(sel_a), len(sel_b)) == (150, 600)
    assert p.overlap == len(sel_a & sel_b)
    assert p.jaccard == pytest.approx(len(sel_a & sel_b) / len(sel_a | sel_b))
    ranks = pd.DataFrame({"x": x, "y": y}).rank(method="average")  # ties share their mean rank
    assert p.spearman == pytest.approx(np.corrcoef(ranks["x"], ranks["y"])[0, 1], abs=1e-9)
    assert p.kendall == pytest.approx(kendall_tau_b(x, y), abs=1e-9)


def test_disagreements_are_the_largest_rank_differences(store, two_runs):
    a, b = two_runs
    A, B = stored(store, a), stored(store, b)
    cmp = compare_runs(store, [a, b], top=15)
    found = cmp.pair(a, b).disagreements
    gaps = [abs(d.rank_a - d.rank_b) for d in found]
    assert len(found) == 15 and gaps == sorted(gaps, reverse=True)
    assert gaps[0] == max(abs(A[i][1] - B[i][1]) for i in A)
    for d in found:
        assert (d.rank_a, d.rank_b) == (A[d.example_id][1], B[d.example_id][1])
        assert d.score_a == pytest.approx(A[d.example_id][0]) and d.uid and d.source
    flipped = cmp.pair(b, a).disagreements[0]
    assert (flipped.rank_a, flipped.rank_b) == (found[0].rank_b, found[0].rank_a)
    assert list(disagreement_frame(cmp.pair(a, b)).columns)[:3] == ["example_id", "uid", "source"]


def test_scatter_frame_keeps_selected_points_and_caps_the_size(store, two_runs):
    a, b = two_runs
    cmp = compare_runs(store, [a, b])
    full = score_scatter_frame(cmp, a, b)
    assert len(full) == 3000 and list(full["group"].cat.categories) == list(GROUPS)
    counts = full["group"].value_counts()
    p = cmp.pair(a, b)
    assert counts["both"] == p.overlap and counts["A only"] == 150 - p.overlap
    small = score_scatter_frame(cmp, a, b, max_points=400)
    assert len(small) == 400 and (small["group"] != "neither").sum() == 200
    assert small.equals(score_scatter_frame(cmp, a, b, max_points=400))  # seeded


def test_three_runs_give_three_pairs(store, two_runs):
    cmp = compare_runs(store, [*two_runs, random_run(store, 1)])
    assert len(cmp.pairs) == 3 and len(cmp.table()) == 3
    same = cmp.pair(two_runs[0], cmp.runs[2].id)  # same seed, same scores
    assert same.jaccard == 1.0 and same.spearman == pytest.approx(1.0)
    assert all(d.rank_a == d.rank_b for d in same.disagreements)


def test_refuses_what_cannot_be_compared(store, two_runs):
    a, b = two_runs
    with pytest.raises(CurationError, match="at least two"):
        compare_runs(store, [a, a])
    with pytest.raises(CurationError, match="no run"):
        compare_runs(store, [a, 999])
    with store.session() as s:
        other = Pool(name="other")
        s.add(other)
        s.flush()
        queued = Run(pool_id=s.get(Run, a).pool_id, method="random", config={}, status="queued")
        elsewhere = Run(pool_id=other.id, method="random", config={}, status="done")
        s.add_all([queued, elsewhere])
        s.flush()
        queued_id, elsewhere_id = queued.id, elsewhere.id
    with pytest.raises(CurationError, match="finished"):
        compare_runs(store, [a, queued_id])
    with pytest.raises(CurationError, match="different pools"):
        compare_runs(store, [a, elsewhere_id])


def test_cli_prints_the_table_and_json(store, two_runs, capsys):
    a, b = two_runs
    assert cli.main(["compare", str(a), str(b), "--top", "3"]) == 0
    out = capsys.readouterr().out
    p = compare_runs(store, [a, b]).pair(a, b)
    assert "jaccard" in out and "spearman" in out and "kendall" in out
    assert f"{p.jaccard:.4f}" in out and f"{p.spearman:.4f}" in out
    assert out.count("rank ") == 3 + 1  # 3 disagreement lines + the heading
    assert cli.main(["compare", str(a), str(b), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pairs"][0]["overlap"] == p.overlap and len(data["pairs"][0]["disagreements"]) == 10
    assert report(compare_runs(store, [a, b], top=0)).count("\n") < 10
    assert cli.main(["compare", str(a)]) == 2
    assert "at least two" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the page


def seeded_done_run(store: Store, seed: int) -> int:
    """A finished run made directly in the database (no method executed)."""
    with store.session() as s:
        pool_id = s.scalar(select(Pool.id).where(Pool.name == "demo"))
        ids = list(s.scalars(select(Example.id).where(Example.pool_id == pool_id).order_by(Example.id)))
        run = Run(pool_id=pool_id, method="random", config={}, status="done")
        s.add(run)
        s.flush()
        run_id = run.id
    scores = np.random.default_rng(seed).random(len(ids)).astype(np.float32)
    n = store_scores(store, run_id, ids, ScoreOutput(scores=scores), ScoreConfig())
    with store.session() as s:
        s.get(Run, run_id).n_selected = n
    return run_id


def run_compare_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/compare.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_page_without_runs_explains_what_it_needs(store):
    at = run_compare_page()
    assert any("two finished runs" in i.value for i in at.info)


def test_page_compares_two_done_runs(store):
    seeded_done_run(store, 1)
    seeded_done_run(store, 2)
    at = run_compare_page()
    assert len(at.multiselect[0].value) == 2
    assert len(at.dataframe) == 2  # the pairwise table and the disagreements
    assert len(at.get("plotly_chart")) == 1
    assert at.dataframe[0].value["jaccard"].between(0, 1).all()
    at.selectbox[1].set_value(at.selectbox[1].options[1]).run()  # swap A and B
    assert not at.exception, [e.value for e in at.exception]
