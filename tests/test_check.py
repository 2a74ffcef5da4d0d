"""`check`: the pair split, the held-out margin formula, and planted selections vs random."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from curation.data.store import Run, Store
from curation.engine.objectives import pair_item
from curation.review.check import CheckConfig, answer_flags, check_status, load_check, run_check
from curation.methods.heldout import compare_with_random, pair_margins, split_pairs, verdict


@pytest.mark.parametrize("share,seed", [(0.4, 0), (0.3, 1), (0.9, 2)])
def test_split_never_leaks_and_keeps_every_subtask_scorable(share, seed):
    subtasks = ["a"] * 5 + ["b"] * 2 + ["c"] + ["d"] * 10
    scoring, held = split_pairs(subtasks, share, seed)
    assert not set(scoring) & set(held) and sorted(scoring + held) == list(range(len(subtasks)))
    for sub in "abcd":
        idx = {i for i, s in enumerate(subtasks) if s == sub}
        assert idx & set(scoring), sub  # every subtask still scores
    assert not {i for i, s in enumerate(subtasks) if s == "c"} & set(held)  # a lone pair is never held out
    assert {subtasks[i] for i in held} == {"a", "b", "d"}
    assert split_pairs(subtasks, share, seed) == (scoring, held)  # seeded


def _seq_logp(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids[None]).logits[0, :-1].double()
    target = labels[1:]
    mask = target != -100
    return F.log_softmax(logits, -1)[mask].gather(1, target[mask][:, None]).sum()


def test_margin_is_the_dpo_implicit_reward_gap_against_the_base_model(tiny_model):
    """pair_margins = [log πθ(yw) − log πref(yw)] / |yw| − [log πθ(yl) − log πref(yl)] / |yl|,
    per response token (length-robust), recomputed here one sequence at a time with plain forwards."""
    gen = torch.Generator().manual_seed(0)
    pairs = []
    for n in (5, 7, 4):
        prompt = torch.randint(1, 100, (n,), generator=gen)
        seqs = []
        for m in (3, 6):
            resp = torch.randint(1, 100, (m,), generator=gen)
            ids = torch.cat([prompt, resp])
            seqs.append((ids, torch.cat([torch.full((n,), -100), resp])))
        pairs.append(seqs)
    items = [pair_item(c, r) for c, r in pairs]
    got = pair_margins(tiny_model, items, pad_id=0, batch_size=2)
    want = []
    with torch.no_grad():
        for (c_ids, c_lab), (r_ids, r_lab) in pairs:
            pol = [_seq_logp(tiny_model, c_ids, c_lab), _seq_logp(tiny_model, r_ids, r_lab)]
            with tiny_model.disable_adapter():
                ref = [_seq_logp(tiny_model, c_ids, c_lab), _seq_logp(tiny_model, r_ids, r_lab)]
            want.append(float((pol[0] - ref[0]) / 3 - (pol[1] - ref[1]) / 6))  # chosen 3 tokens, rejected 6
    assert np.allclose(got, want, atol=1e-4) and np.abs(want).max() > 1e-3  # the adapter moves them


def test_compare_with_random_and_the_verdict_follow_the_numbers():
    rng = np.random.default_rng(0)
    better = compare_with_random(rng.normal(2.0, 0.3, (3, 8)), rng.normal(0.0, 0.3, (5, 8)))
    assert better["margin_ci95"][0] > 0 and better["ci95"][1] > 0.5 and verdict(better)[0] == "better than random"
    assert better["accuracy"] == 1.0 and better["gain_vs_random"] > 0.3 and better["random_draws"] == 5
    same = compare_with_random(rng.normal(0.0, 1.0, (3, 8)), rng.normal(0.0, 1.0, (5, 8)))
    assert same["margin_ci95"][0] < 0 < same["margin_ci95"][1] and verdict(same)[0] == "no better than random"
    worse = compare_with_random(rng.normal(-2.0, 0.3, (3, 8)), rng.normal(0.0, 0.3, (5, 8)))
    assert verdict(worse)[0] == "worse than random"
    few = compare_with_random(rng.normal(2.0, 0.3, (3, 2)), rng.normal(0.0, 0.3, (5, 2)))
    assert verdict(few)[0] == "too few pairs"  # 2 held-out pairs: no verdict, however clear
    # a margin gain carried by one pair while accuracy drops is not "better"
    carried = compare_with_random(np.array([[30.0, -1, -1, -1]] * 3), np.array([[0.5, 0.5, 0.5, -0.5]] * 5))
    assert verdict(carried)[0] != "better than random"
    with pytest.raises(ValueError, match="draws >= 2"):
        compare_with_random(np.zeros((3, 8)), np.zeros((1, 8)))  # one random draw has no spread


def _simulated_margins(rng, effect: float, seeds: int = 3, draws: int = 5, pairs: int = 6) -> tuple:
    """Per-pair held-out margins as a check produces them: each pair has its own difficulty,
    each selection (a random draw, or the one checked) shifts every pair by its own amount
    (draws differ: the spread the interval must cover) plus ``effect``, each fine-tune adds noise."""
    difficulty = rng.normal(0.0, 1.0, pairs)
    shift = lambda: rng.normal(0.0, 0.4)  # noqa: E731  (one selection's luck)
    chosen = difficulty + shift() + effect + rng.normal(0.0, 0.3, (seeds, pairs))
    random_ = np.stack([difficulty + shift() + rng.normal(0.0, 0.3, pairs) for _ in range(draws)])
    return chosen, random_


def test_a_random_selection_against_random_selections_is_no_different_in_19_of_20_trials():
    """The statistics `check` uses: a selection that is itself one more random draw must not come
    out better or worse (the old single-draw bootstrap called a random draw worse than random)."""
    labels = [verdict(compare_with_random(*_simulated_margins(np.random.default_rng(t), 0.0)))[0] for t in range(20)]
    assert sum(label == "no better than random" for label in labels) >= 19, labels
    good = [verdict(compare_with_random(*_simulated_margins(np.random.default_rng(t), 3.0)))[0] for t in range(20)]
    assert good.count("better than random") >= 19, good  # a planted good selection stands out


def test_readiness_says_the_minimum_per_subtask_before_anything_runs():
    from curation.methods.heldout import MIN_HELDOUT_PAIRS, readiness
    five = readiness(["t"] * 5)  # the case: 5 pairs in one subtask hold out 2
    assert not five["ready"] and five["heldout"] == 2 and five["min_heldout"] == MIN_HELDOUT_PAIRS
    assert five["subtasks"] == [{"subtask": "t", "pairs": 5, "prompts": 5, "heldout": 2, "more": 3}]
    assert split_pairs(["t"] * 8, 0.4)[1].__len__() == 3  # 5 + 3 pairs: 3 held out, as said
    lone = readiness(["a", "b", "b", "c", "c"])  # 'a' can never be tested: it needs 1 more
    assert lone["ready"] is False and {r["subtask"]: r["more"] for r in lone["subtasks"]} == {"a": 1, "b": 0, "c": 0}
    assert "add 1 to 'a'" in lone["message"]
    ok = readiness(["a", "a", "b", "b", "c", "c"])
    assert ok["ready"] and ok["heldout"] == 3 and all(r["more"] == 0 for r in ok["subtasks"])
    # pairs of one prompt count once (SHP): two pairs of one prompt are not two prompts
    assert readiness(["a", "a"], prompts=["p", "p"])["subtasks"][0]["more"] >= 1


def test_check_refuses_too_few_pairs_up_front(ws, tmp_path, micro_model):
    import time

    from curation.errors import CurationError
    from curation.review.check import launch_check
    store, run_id = _scored_run(ws, tmp_path, micro_model, "bm25", n_prefs=4)
    started = time.time()
    for call in (lambda: run_check(store, run_id, CheckConfig(seeds=(0,)), ws), lambda: launch_check(store, run_id, ws)):
        with pytest.raises(CurationError, match="Too few pairs for a verdict: 2 pairs would be held out"):
            call()
    assert time.time() - started < 5  # no scoring, no fine-tune
    assert check_status(ws, run_id) is None


NAMES = ["Ana", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Max", "Nia", "Oto"]
CITIES = ["Lima", "Oslo", "Rome", "Kyiv", "Baku", "Doha", "Riga", "Bern", "Lome", "Apia"]


def _planted(tmp_path, n_prefs: int = 12) -> tuple:
    """Pool: 48 greetings (the target style) and 72 weather notes; pairs: greeting vs weather."""
    rng = random.Random(0)
    pool = []
    for i in range(48):
        name = rng.choice(NAMES) + str(i)
        pool.append({"id": f"greet_{i}", "dataset": "greet", "answer": "hello",
                     "messages": [{"role": "user", "content": f"Say hello to {name}."},
                                  {"role": "assistant", "content": f"Hello {name}, nice to meet you!"}]})
    for i in range(72):
        city = rng.choice(CITIES)
        pool.append({"id": f"weather_{i}", "dataset": "weather",
                     "messages": [{"role": "user", "content": f"Describe the weather in {city} on day {i}."},
                                  {"role": "assistant", "content": f"In {city} it is cold and windy today."}]})
    prefs = []
    for j, name in enumerate(["Zed", "Yara", "Xu", "Wim", "Vera", "Ugo", "Tia", "Sol", "Rey", "Quin", "Pia", "Oda"][:n_prefs]):
        prefs.append({"prompt": f"Say hello to {name}.", "chosen": f"Hello {name}, nice to meet you!",
                      "rejected": "In Oslo it is cold and windy today.", "subtask": "greet" if j % 2 else "hi"})
    (tmp_path / "pool.jsonl").write_text("\n".join(json.dumps(r) for r in pool) + "\n")
    (tmp_path / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in prefs) + "\n")
    return tmp_path / "pool.jsonl", tmp_path / "prefs.jsonl"


def _scored_run(ws, tmp_path, micro_model, method: str, n_prefs: int = 12) -> tuple[Store, int]:
    from curation.config import ScoreConfig, SelectConfig
    from curation.data.imports import import_pool, import_prefs
    from curation.engine.model import ModelConfig
    from curation.engine.warmup import WarmupConfig
    from curation.runs.execute import create_run, execute_run

    store = Store.open(ws)
    pool, prefs = _planted(tmp_path, n_prefs)
    import_pool(store, pool, name="planted")
    import_prefs(store, prefs, name="greet", subtask_field="subtask")
    cfg = ScoreConfig(method=method, model=ModelConfig(name_or_path=str(micro_model), max_length=64),
                      warmup=WarmupConfig(lr=1e-3, max_length=64), select=SelectConfig(percent=25))
    run_id = create_run(store, "planted", "greet", cfg, ws=ws)
    execute_run(store, run_id, ws=ws)
    return store, run_id


def test_a_planted_good_selection_beats_random_and_the_split_does_not_leak(ws, tmp_path, micro_model):
    """BM25 with greeting pairs selects the greetings: fine-tuning on them raises held-out
    chosen-over-rejected margins far more than random selections (which are 60% weather)."""
    store, run_id = _scored_run(ws, tmp_path, micro_model, "bm25")
    report = run_check(store, run_id, CheckConfig(seeds=(0, 1), baselines=("bm25", "less"), lr=3e-3), ws)
    h = report["heldout"]
    assert report["label"] == "better than random", report["verdict"]
    assert h["margin_ci95"][0] > 0 and h["margin"] > h["random_margin"] and h["pairs"] == 4
    assert h["gain_vs_random"] >= 0 and len(h["ci95"]) == 2
    assert report["composition"][0] == {"source": "greet", "selected": 30, "selected_share": 1.0,
                                        "pool_share": 0.4}
    assert "less" in report["notes"][0]  # no features on a bm25 run: said, not crashed
    held = set(report["split"]["heldout"])
    with store.session() as s:
        subs = [r for r in s.query(Run).all() if (r.meta or {}).get("check_of") == run_id]
        base_meta = s.get(Run, run_id).meta
    assert subs and all(not held & {p["id"] for p in r.meta["pairs"]} for r in subs)
    assert base_meta["check"]["label"] == "better than random" and load_check(ws, run_id)["run_id"] == run_id
    assert report["flags"] == []  # every greeting says hello: its label


def test_a_random_selection_is_no_better_than_random(ws, tmp_path, micro_model):
    store, run_id = _scored_run(ws, tmp_path, micro_model, "random")
    report = run_check(store, run_id, CheckConfig(seeds=(0, 1), baselines=(), lr=3e-3), ws)
    assert report["label"] != "better than random", report["verdict"]
    lo, hi = report["heldout"]["margin_ci95"]
    assert lo < report["heldout"]["margin_gain"] < hi
    assert check_status(ws, run_id) is None  # not launched in the background


def test_answer_flags_name_examples_whose_answer_contradicts_their_label(ws, tmp_path):
    from curation.data.imports import import_pool
    store = Store.open(ws)
    rows = [{"id": "ok", "answer": "7", "messages": [{"role": "user", "content": "3+4?"},
                                                   {"role": "assistant", "content": "3 + 4 = 7, so the answer is 7."}]},
            {"id": "bad", "answer": "7", "messages": [{"role": "user", "content": "2+5?"},
                                                    {"role": "assistant", "content": "2 + 5 = 8, so the answer is 8."}]},
            {"id": "free", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    import_pool(store, tmp_path / "p.jsonl", name="p")
    with store.session() as s:
        from curation.data.store import Example
        ids = [e.id for e in s.query(Example).all()]
    flags = answer_flags(store, ids)
    assert [f["uid"] for f in flags] == ["bad"] and flags[0]["reward"] == "number"


def test_label_contrast_counts_pairs_that_differ_in_a_detail():
    from curation.methods.heldout import label_contrast
    near = {"chosen": "19 - 9 = 10, so the answer is 10.", "rejected": "19 - 9 = 11, so the answer is 11."}
    far = {"chosen": "Hello Ana, nice to meet you!", "rejected": "In Oslo it is cold and windy today."}
    got = label_contrast([near, near, far])
    assert got["near_identical"] == 2 and got["positions"] == [0, 1] and "ROSE" in got["warning"]
    assert "warning" not in label_contrast([far, far, near])


def test_split_keeps_pairs_of_one_prompt_together():
    subtasks = ["a"] * 6
    prompts = ["p1", "p1", "p2", "p2", "p3", "p3"]
    scoring, held = split_pairs(subtasks, 0.4, 0, prompts=prompts)
    for i in held:
        assert all(j in held for j, p in enumerate(prompts) if p == prompts[i])
    assert held and scoring


def test_background_check_status_and_launch_refusal(ws, tmp_path, micro_model):
    import os

    from curation.errors import CurationError
    from curation.review.check import _write_json, launch_check, status_path
    store, run_id = _scored_run(ws, tmp_path, micro_model, "bm25")
    _write_json(status_path(ws, run_id), {"status": "running", "pid": 2 ** 22 + 12345, "stage": "x", "done": 1,
                                          "total": 4})
    assert check_status(ws, run_id)["status"] == "dead"  # its process is gone
    _write_json(status_path(ws, run_id), {"status": "running", "pid": os.getpid(), "stage": "x", "done": 1, "total": 4})
    assert check_status(ws, run_id)["status"] == "running"
    with pytest.raises(CurationError, match="already running"):
        launch_check(store, run_id, ws)
    with pytest.raises(CurationError, match="no run"):
        launch_check(store, 999, ws)


def test_answer_flags_match_whole_words_through_punctuation():
    from curation.review.check import _contains_words
    assert _contains_words("The review is positive, overall.", "positive")
    assert _contains_words("It is NEW YORK!", "new york") and not _contains_words("positively", "positive")
