"""The contrast family (issue 21): g(a) = ∇log p(chosen) − a·∇log p(rejected) ranks exactly as
ROSE at a = 1 and as LESS at a = 0 on the same stored features; --option sets it."""

from __future__ import annotations

import numpy as np
import pytest

from curation.data.demo import ensure_demo
from curation.data.store import Store
from curation.errors import CurationError
from curation.methods.base import parse_options
from curation.methods.contrast import contrast_parts, score_alpha
from curation.review.explore import explain
from curation.runs.execute import create_run, execute_run, load_scores, show_run
from curation.runs.fuse import fuse
from curation.runs.rescore import rescore
from test_pipeline import micro_config


def _ranks(scores: np.ndarray) -> np.ndarray:
    return np.lexsort((np.arange(len(scores)), -scores))


def _run(store: Store, model, method: str, **options) -> int:
    cfg = micro_config(model, method=method)
    cfg.options = options
    run_id = create_run(store, "demo", "demo", cfg)
    execute_run(store, run_id)
    return run_id


def test_alpha_one_ranks_as_rose_and_zero_as_less(ws, micro_model):
    store = Store.open(ws)
    ensure_demo(store)
    rose, less, mixed = (_run(store, micro_model, m) for m in ("rose", "less", "contrast"))
    ids, s_rose = load_scores(store, rose)
    _, s_less = load_scores(store, less)
    _, s_one = load_scores(store, mixed)
    np.testing.assert_array_equal(_ranks(s_one), _ranks(s_rose))
    info = show_run(store, mixed, top=0)
    assert info["meta"]["alpha"] == 1.0
    workdir, lrs = info["workdir"], info["meta"]["checkpoint_lrs"]
    zero = score_alpha(workdir, 0.0, lrs)  # no model: the stored sides and train features
    assert zero.example_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(_ranks(zero.scores), _ranks(s_less))
    half = score_alpha(workdir, 0.5, lrs).scores
    assert not np.array_equal(_ranks(half), _ranks(s_rose)) and not np.array_equal(_ranks(half), _ranks(s_less))

    top = int(ids[_ranks(s_one)[0]])
    parts = contrast_parts(workdir, top)
    assert parts.task + parts.contrast == pytest.approx(float(s_one.max()), abs=2e-3)
    reasons = explain(store, mixed, top).reasons
    assert any("task part" in r and "contrast part (−1 ×" in r for r in reasons)

    # re-scoring an input of a fusion fuses again, with the new run in the old one's place
    fused = fuse(store, [rose, less])
    res = rescore(store, rose, method="contrast", options={"alpha": 0.5})
    assert show_run(store, res.run_id, top=0)["config"]["options"]["alpha"] == 0.5
    assert len(res.refused) == 1 and show_run(store, res.refused[0], top=0)["meta"]["fused_from"] == [res.run_id, less]
    assert show_run(store, res.refused[0], top=0)["meta"]["refused_from"] == fused


def test_option_text_is_typed_and_unknown_keys_name_the_options(ws, capsys):
    assert parse_options("contrast", ["alpha=0.25", "checkpoint_weights=last"]) == {
        "alpha": 0.25, "checkpoint_weights": "last"}
    assert parse_options("raise", ["clusters=3", "lr=none"]) == {"clusters": 3, "lr": None}
    assert parse_options("nice", ["label_free=yes", "samples=4"]) == {"label_free": True, "samples": 4}
    with pytest.raises(CurationError, match=r"method 'contrast' has no option 'alfa'.*alpha \(float\)"):
        parse_options("contrast", ["alfa=1"])
    with pytest.raises(CurationError, match="option alpha='high'"):
        parse_options("contrast", ["alpha=high"])
    from curation.cli import main
    assert main(["score", "--pool", "demo", "--method", "bm25", "--option", "k_1=2"]) == 2
    assert "method 'bm25' has no option 'k_1'; its options: b (float), chunk (int), k1 (float)" in capsys.readouterr().err


def test_dpo_gradient_is_a_positive_multiple_of_chosen_minus_rejected(tiny_model64, items):
    """Why ROSE may score with the sides: the DPO direction is normalise(c − r) (METHODS.md §2)."""
    from curation.engine.grads import featurize
    from curation.engine.objectives import DPOObjective, LogProbObjective, collate, sft_item
    from curation.engine.projection import SparseJLProjector
    from curation.methods.gradient import mix_sides

    pairs, projector = items.pairs(3), SparseJLProjector(64, seed=1)
    dpo = featurize(tiny_model64, [collate(pairs)], DPOObjective(beta=0.1), projector)
    sides = [sft_item(p.input_ids[row], p.labels[row]) for row in (0, 1) for p in pairs]  # chosen, then rejected
    raw = featurize(tiny_model64, [collate(sides)], LogProbObjective(), projector, normalize=False)
    np.testing.assert_allclose(mix_sides(raw[:3], raw[3:], 1.0, "float32"), dpo, atol=1e-5)


def test_length_strata_interleaves_length_bands_and_keeps_the_order_inside_each():
    from scipy import stats

    from curation.engine.select import length_stratified
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 400, 600)
    scores = -lengths + rng.normal(0, 20, 600)  # a planted method that mostly prefers short outputs
    out = length_stratified(scores, lengths, 5)
    # what is left is the preference inside each band (5 bands: about a fifth of it)
    assert abs(stats.spearmanr(out, lengths).statistic) < 0.2 < 0.9 < abs(stats.spearmanr(scores, lengths).statistic)
    band = np.argsort(np.argsort(lengths, kind="stable"), kind="stable") * 5 // 600
    for b in range(5):  # inside a band the order is the method's own
        rows = band == b
        assert stats.spearmanr(out[rows], scores[rows]).statistic == pytest.approx(1.0)
    top = np.argsort(-out)[:50]
    assert np.bincount(band[top], minlength=5).min() >= 9  # every band in the top 50
    np.testing.assert_array_equal(length_stratified(scores, lengths, 0), scores.astype(np.float32))


def test_length_strata_lowers_length_spearman_of_a_gradient_run(ws, micro_model):
    from curation.review.compare import length_spearman
    store = Store.open(ws)
    ensure_demo(store)
    plain, banded = _run(store, micro_model, "rose"), _run(store, micro_model, "rose", length_strata=5)
    rho_plain, rho_banded = length_spearman(store, plain), length_spearman(store, banded)
    assert abs(rho_banded) < 0.05 and abs(rho_banded) < abs(rho_plain), (rho_plain, rho_banded)
    assert show_run(store, banded, top=0)["meta"]["length_strata"]["strata"] == 5
    assert parse_options("less", ["length_strata=4"]) == {"length_strata": 4}
