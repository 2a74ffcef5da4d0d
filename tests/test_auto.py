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
    from curation.config import ScoreConfig
    from curation.errors import CurationError
    from curation.runs.progress import AUTO_STAGES, _auto_stage_s

    cfg = Auto.tune_config({"seeds": 1, "random_draws": 3, "min_steps": 10})
    assert (cfg.seeds, cfg.random_draws, cfg.min_steps) == ((0,), 3, 10)
    assert Auto.tune_config({}) == Auto.tune  # no option: the product's defaults
    for bad in ({"seeds": 0}, {"random_draws": 1}, {"min_steps": "many"}, {"seeds": True}):
        with pytest.raises(CurationError, match="auto: option"):
            Auto.tune_config(bad)
    full, light = (_auto_stage_s(1000, 10, 0.1, o) for o in ({}, {"seeds": 1, "random_draws": 3, "min_steps": 10}))
    assert light[AUTO_STAGES[0]] < full[AUTO_STAGES[0]] and light[AUTO_STAGES[1]] < full[AUTO_STAGES[1]] / 4
    with pytest.raises(CurationError, match="unknown option"):  # a typo is refused, not ignored
        from curation.methods.base import method_options
        method_options("auto", ScoreConfig(method="auto", options={"seed": 1}), dict(Auto.option_spec))
