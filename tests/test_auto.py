"""`--method auto` (issue 21): candidates scored on the scoring part of the pairs only, judged on
the held-out part as `check` judges, the winner scored with all pairs and recorded."""

from __future__ import annotations

import numpy as np
import pytest

from curation.data.store import Store
from curation.methods.auto import Auto, best
from curation.methods.heldout import TuneConfig
from curation.runs.execute import create_run, execute_run, load_scores, show_run
from test_check import _planted


def _auto_run(ws, tmp_path, micro_model, n_prefs: int = 12, method: str = "auto") -> tuple[Store, int]:
    from curation.config import ScoreConfig, SelectConfig
    from curation.data.imports import import_pool, import_prefs
    from curation.engine.model import ModelConfig
    from curation.engine.warmup import WarmupConfig
    from curation.config import FeatureConfig

    store = Store.open(ws)
    pool, prefs = _planted(tmp_path, n_prefs)
    import_pool(store, pool, name="planted")
    import_prefs(store, prefs, name="greet", subtask_field="subtask")
    cfg = ScoreConfig(method=method, model=ModelConfig(name_or_path=str(micro_model), max_length=64),
                      warmup=WarmupConfig(lr=1e-3, max_length=64), features=FeatureConfig(k=256),
                      select=SelectConfig(percent=25))
    run_id = create_run(store, "planted", "greet", cfg, ws=ws)
    execute_run(store, run_id, ws=ws)
    return store, run_id


@pytest.fixture
def quick(monkeypatch):
    """Two fine-tune seeds, three random draws: the statistics are the product's, the counts small."""
    monkeypatch.setattr(Auto, "tune", TuneConfig(seeds=(0, 1), random_draws=3, lr=3e-3))


def test_auto_picks_the_heldout_winner_and_no_heldout_pair_reaches_a_candidate(ws, tmp_path, micro_model, quick,
                                                                               monkeypatch):
    from curation.methods import REGISTRY  # every method loaded (base.REGISTRY holds the loaded ones)
    seen: list[tuple[str, list[str]]] = []
    for name in ("contrast", "bm25", "repsim"):
        cls = REGISTRY[name]
        original = cls.score

        def spy(self, inputs, original=original, name=name):
            seen.append((name, [p.prompt for p in inputs.pairs]))
            return original(self, inputs)
        monkeypatch.setattr(cls, "score", spy)
    store, run_id = _auto_run(ws, tmp_path, micro_model)
    info = show_run(store, run_id, top=0)
    assert info["status"] == "done", info["error"]
    auto = info["meta"]["auto"]
    names = [c["name"] for c in auto["candidates"]]
    assert names[:7] == ["rose", "less", "contrast 0.25", "contrast 0.5", "contrast 0.75", "bm25", "repsim"]
    assert names[7].startswith("fusion ") and names[7].endswith(" + bm25")
    assert all({"accuracy", "margin", "ci95"} <= set(c) for c in auto["candidates"])
    # the winner is the candidate that wins on the held-out pairs (margin, then accuracy)
    top = sorted(auto["candidates"], key=lambda c: (-c["margin"], -c["accuracy"], c["name"]))[0]
    assert auto["chosen"] == top["name"] and top["name"] in auto["why"]
    held = set(auto["heldout_prompts"])
    assert held and auto["heldout_pairs"] == len(held) == 4
    final = len(seen) - (2 if auto["chosen"].startswith("fusion") else 1)
    assert len(seen) > 3 and all(not held & set(prompts) for _, prompts in seen[:final])  # candidates: no held-out pair
    assert all(held <= set(prompts) for _, prompts in seen[final:])  # the winner: all pairs
    # the planted target (greetings, 40% of the pool) is what the winner selects
    from curation.review.check import composition
    ids, scores = load_scores(store, run_id)
    chosen = ids[np.lexsort((ids, -scores))][:30].tolist()
    share = {r["source"]: r["selected_share"] for r in composition(store, info["pool_id"] if "pool_id" in info else 1,
                                                                   chosen)}
    assert info["selected"] == 30 and share.get("greet", 0) > 0.8, (auto["chosen"], share, auto["candidates"])


def test_auto_with_too_few_pairs_says_so_and_falls_back_to_bm25(ws, tmp_path, micro_model, quick, capsys):
    import json

    from curation.cli import main
    store, run_id = _auto_run(ws, tmp_path, micro_model, n_prefs=4)
    capsys.readouterr()
    assert main(["show", str(run_id), "--json"]) == 0
    auto = json.loads(capsys.readouterr().out)["auto"]  # the CLI contract: show --json has auto
    assert auto["judged"] is False and auto["chosen"] == "bm25" and auto["candidates"] == []
    assert "cannot judge: Too few pairs for a verdict" in auto["why"]
    ids, scores = load_scores(store, run_id)
    assert len(ids) == 120 and np.array_equal(scores, load_scores(store, _plain_bm25(store))[1])


def _plain_bm25(store: Store) -> int:
    from curation.config import ScoreConfig, SelectConfig
    run_id = create_run(store, "planted", "greet", ScoreConfig(method="bm25", select=SelectConfig(percent=25)))
    execute_run(store, run_id)
    return run_id


def test_best_is_margin_then_accuracy():
    from curation.methods.auto import Candidate
    a = Candidate("a", {"accuracy": 0.75, "margin": 0.1})
    b = Candidate("b", {"accuracy": 0.5, "margin": 0.3})
    c = Candidate("c", {"accuracy": 0.75, "margin": 0.3})
    assert best([a, b, c]).name == "c" and best([a, b]).name == "b"


def test_auto_options_set_how_many_fine_tunes_judge_and_the_estimate_follows():
    from curation.config import ScoreConfig, SelectConfig
    from curation.errors import CurationError
    from curation.methods.base import method_options
    from curation.methods.heldout import finetune_epochs
    from curation.runs.progress import AUTO_STAGES, _auto_stage_s

    light = {"seeds": 1, "random_draws": 3, "epochs": 1, "min_steps": 10}
    cfg = Auto.tune_config(light)
    assert (cfg.seeds, cfg.random_draws, cfg.epochs, cfg.min_steps) == ((0,), 3, 1, 10)
    assert Auto.tune_config({}) == Auto.tune  # no option: the product's defaults
    for bad in ({"seeds": 0}, {"random_draws": 1}, {"min_steps": "many"}, {"seeds": True}, {"epochs": 0}):
        with pytest.raises(CurationError, match="auto: option"):
            Auto.tune_config(bad)
    # the estimate prices the fine-tunes the run will do: budget 150 (5% of 3000), 19 steps an epoch
    assert finetune_epochs(Auto.tune, 150) == 3 and finetune_epochs(cfg, 150) == 1
    full, cheap = (_auto_stage_s(ScoreConfig(method="auto", options=o, select=SelectConfig(percent=5)), 3000, 10, 0.1)
                   for o in ({}, light))
    tune_s = lambda steps: steps * 8 * 1.2 * 0.1 + 10 * 4 * 0.1  # noqa: E731
    assert full[AUTO_STAGES[0]] == pytest.approx(5 * tune_s(57)) and full[AUTO_STAGES[1]] == pytest.approx(16 * tune_s(57))
    assert cheap[AUTO_STAGES[0]] == pytest.approx(3 * tune_s(19)) and cheap[AUTO_STAGES[1]] == pytest.approx(8 * tune_s(19))
    with pytest.raises(CurationError, match="unknown option"):  # a typo is refused, not ignored
        method_options("auto", ScoreConfig(method="auto", options={"seed": 1}), dict(Auto.option_spec))


class _NoTune:
    """Stands in for the judging fine-tunes (`_forced`): the verdict is forced, the scoring is real."""

    tuned = 0

    def __init__(self, score_cfg, home, heldout, cfg, fetch, work):
        self.cfg, self.n = cfg, len(heldout)

    def random_margins(self, ids, n, key, note=lambda k: None) -> np.ndarray:
        return np.random.default_rng(0).normal(0, 0.1, (self.cfg.random_draws, self.n))

    def close(self) -> None:
        pass


def _forced(monkeypatch, wins) -> None:
    """Auto's held-out verdict forced: the candidate for which ``wins(name)`` holds has the best margin."""
    from curation.methods.auto import Candidate
    from curation.methods.heldout import compare_with_random

    def judge(self, tuner, ids, scores, n, random, name, rep):
        return Candidate(name, compare_with_random(np.full((2, random.shape[1]), 1.0 if wins(name) else 0.0), random))
    monkeypatch.setattr("curation.methods.auto.Tuner", _NoTune)
    monkeypatch.setattr(Auto, "_judge", judge)


def _top(store: Store, run_id: int) -> int:
    ids, scores = load_scores(store, run_id)
    return int(ids[np.lexsort((ids, -scores))][0])


def test_an_auto_run_with_a_gradient_winner_explores_maps_and_rescores_as_it(ws, tmp_path, micro_model, quick,
                                                                              monkeypatch, capsys):
    import json

    from curation.cli import main
    from curation.review import explore, maps
    from curation.runs import rescore
    _forced(monkeypatch, lambda name: name == "contrast 0.5")
    store, run_id = _auto_run(ws, tmp_path, micro_model)
    assert show_run(store, run_id, top=0)["meta"]["auto"]["chosen"] == "contrast 0.5"
    labels = explore.effective_labels(store, run_id)  # the winner's, not auto's model-free ones
    assert labels.gradient and labels.name == "Contrast 0.5" and labels.per_pair == "gradient cosine"
    exp = explore.explain(store, run_id, _top(store, run_id))
    n_ckpt = len(explore.run_info(store, run_id).checkpoint_lrs)
    assert exp.labels == labels and exp.neighbours and exp.val_pairs and len(exp.checkpoints) == n_ckpt > 1
    assert not exp.notes and any("the task part" in r and "the contrast part (−0.5" in r for r in exp.reasons)
    assert "Task and contrast parts" in exp.evidence and len(explore.checkpoint_breakdown(store, run_id)) == n_ckpt
    workdir = explore.run_info(store, run_id).workdir
    # the map job's computation on the winner's stored features (UMAP's layout, tested elsewhere, is
    # swapped for the first two PCA axes: its first call compiles for seconds)
    monkeypatch.setattr(maps, "_umap", lambda P, rows, extra, seed, t: (P[:, :2].copy(), [e[:, :2] for e in extra]))
    maps.compute_map(workdir, seed=0)
    assert sorted(maps.load_map(workdir).example_ids.tolist()) == sorted(load_scores(store, run_id)[0].tolist())
    assert rescore.refusal(store, run_id) is None and rescore.latest_rescorable(store, "greet") == run_id
    res = rescore.rescore(store, run_id)  # the choice re-scored with the current pairs, not re-judged
    assert "contrast 0.5" in res.note and "not re-judged" in res.summary()
    new = show_run(store, res.run_id, top=0)
    assert new["method"] == "contrast" and new["config"]["options"]["alpha"] == 0.5
    np.testing.assert_allclose(load_scores(store, res.run_id)[1], load_scores(store, run_id)[1], atol=1e-5)
    capsys.readouterr()  # the CLI: options are the winner's (contrast's), the note is said
    assert main(["rescore", str(run_id), "--option", "alpha=0.25", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "not re-judged" in out["note"] and show_run(store, out["run_id"], top=0)["config"]["options"]["alpha"] == 0.25


def test_an_auto_run_that_chose_the_fusion_shows_both_parts_and_refuses_a_rescore(ws, tmp_path, micro_model, quick,
                                                                                   monkeypatch):
    from curation.errors import CurationError
    from curation.review import explore
    from curation.runs import rescore
    _forced(monkeypatch, lambda name: name.startswith("fusion"))
    store, run_id = _auto_run(ws, tmp_path, micro_model)
    labels = explore.effective_labels(store, run_id)
    assert labels.gradient and labels.name == "Fusion" and "BM25" in labels.score
    exp = explore.explain(store, run_id, _top(store, run_id))
    assert exp.neighbours and exp.val_pairs and {"Task and contrast parts", "matching terms"} <= set(exp.evidence)
    assert "a fusion with BM25" in rescore.refusal(store, run_id)
    with pytest.raises(CurationError, match="new auto run"):
        rescore.rescore(store, run_id)


def test_an_auto_run_that_fell_back_to_bm25_keeps_bm25s_labels(ws, tmp_path, micro_model, quick, capsys):
    from curation.data.catalog import list_runs
    from curation.errors import CurationError
    from curation.methods import get_method
    from curation.review import explore, maps
    from curation.review.compare import compare_runs
    from curation.runs import rescore
    store, run_id = _auto_run(ws, tmp_path, micro_model, n_prefs=4)
    bm25 = get_method("bm25").labels
    assert explore.effective_labels(store, run_id) == bm25
    exp = explore.explain(store, run_id, _top(store, run_id))
    assert exp.labels == bm25 and not exp.neighbours and "matching terms" in exp.evidence
    assert exp.val_pairs and exp.val_pairs[0].value > 0  # BM25's per-pair scores, as a BM25 run's
    assert "auto chose bm25" in rescore.refusal(store, run_id) and rescore.latest_rescorable(store, "greet") is None
    with pytest.raises(CurationError, match="new auto run"):
        rescore.rescore(store, run_id)
    from curation.cli import main
    capsys.readouterr()
    assert main(["rescore", str(run_id)]) == 2 and "error: auto chose bm25" in capsys.readouterr().err
    with pytest.raises(CurationError, match="not built from gradient features"):
        maps.launch_map(store, run_id)
    assert list_runs(store)[0]["label"] == "auto: bm25"
    assert compare_runs(store, [run_id, _plain_bm25(store)]).runs[0].label == f"#{run_id} auto: bm25/greet"
