"""RAISE end to end on a tiny pool (micro model, 2 episodes of 4 steps): state features against a
direct computation, determinism under a seed, resume after a failure mid-training, explain and
the schedule export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from curation.config import ScoreConfig, SelectConfig
from curation.data.demo import DEMO_POOL, DEMO_PREFS
from curation.data.imports import import_pool, import_prefs
from curation.data.store import Store
from curation.engine.model import ModelConfig, encode, pad_token_id
from curation.engine.models import load_model
from curation.engine.warmup import WarmupConfig
from curation.methods import raise_ as raise_method
from curation.methods.ppo.schedule import Schedule
from curation.methods.ppo.state import (
    FEATURE_NAMES,
    STATE_DIM,
    StaticFeatures,
    assistant_only,
    compute_static,
    difficulty_features,
    reduce_embedding,
    state_matrix,
)
from curation.review.explore import explain
from curation.review.export import export_selection
from curation.runs.execute import create_run, execute_run, load_scores, show_run

OPTIONS = {"episodes": 2, "steps": 4, "clusters": 2, "batch_size": 4, "episode_min": 48, "ppo_epochs": 2}


def demo_messages(n: int) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in DEMO_POOL.read_text().splitlines()[:n]]


@pytest.fixture
def mini(ws, tmp_path):
    """A 96-example pool (the demo's first lines) and the demo preference set."""
    path = tmp_path / "mini.jsonl"
    path.write_text("\n".join(DEMO_POOL.read_text().splitlines()[:96]) + "\n")
    store = Store.open(ws)
    import_pool(store, path, name="mini")
    import_prefs(store, DEMO_PREFS, name="demo")
    return store


def raise_config(model, **options) -> ScoreConfig:
    return ScoreConfig(method="raise", model=ModelConfig(name_or_path=str(model), max_length=128),
                       warmup=WarmupConfig(max_length=128, lr=3e-3), select=SelectConfig(percent=10),
                       options={**OPTIONS, **options})


def run(store, ws, model, **options) -> int:
    run_id = create_run(store, "mini", "demo", raise_config(model, **options), ws=ws)
    execute_run(store, run_id, ws=ws)
    return run_id


def test_state_features_match_a_direct_computation(micro_model, tmp_path):
    model, tok = load_model(ModelConfig(name_or_path=str(micro_model)), tmp_path)
    messages = demo_messages(6)
    diff, hidden = difficulty_features(model, tok, messages, 128, pad_token_id(tok), 4, None)
    for i, m in enumerate(messages):  # one unpadded forward per sequence, full-vocabulary log-softmax
        enc = encode(tok, m, 128)
        ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor(enc["labels"])
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        logp = out.logits[0, :-1].log_softmax(-1)
        scored = (labels[1:] != -100).nonzero().squeeze(1)
        direct = float(logp[scored, labels[1:][scored]].sum())
        alone = encode(tok, assistant_only(m), 128)
        a_ids, a_labels = torch.tensor([alone["input_ids"]]), torch.tensor(alone["labels"])
        with torch.no_grad():
            a_logp = model(input_ids=a_ids).logits[0, :-1].log_softmax(-1)
        a_scored = (a_labels[1:] != -100).nonzero().squeeze(1)
        expect = [len(enc["input_ids"]) - len(scored), len(scored), direct,
                  float(a_logp[a_scored, a_labels[1:][a_scored]].sum())]
        np.testing.assert_allclose(diff[i], expect, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(hidden[i], out.hidden_states[-1][0].mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_embedding_is_the_pca_of_the_pooled_states_and_the_state_has_39_numbers():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((80, 40)) @ rng.standard_normal((40, 40))
    emb = reduce_embedding(hidden.astype(np.float32), seed=0)
    centred = hidden - hidden.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    direct = centred @ vt[:32].T
    direct /= direct[:, 0].std()
    np.testing.assert_allclose(np.abs(emb), np.abs(direct), rtol=1e-3, atol=1e-3)  # PCA signs are a convention
    static = StaticFeatures(np.arange(80), np.column_stack([rng.integers(1, 50, 80), rng.integers(1, 50, 80),
                                                            -rng.random(80) * 30, -rng.random(80) * 40]),
                            emb, np.zeros(80, np.int32))
    norm = static.normalised()
    lengths = np.log1p(static.difficulty[:, 1])
    np.testing.assert_allclose(norm[:, 1], (lengths - lengths.mean()) / lengths.std(), rtol=1e-5, atol=1e-6)
    picks = torch.arange(80, dtype=torch.int16) % 3
    x = state_matrix(torch.from_numpy(norm), (0.25, 0.5), picks)
    assert x.shape == (80, STATE_DIM) == (80, 39) and len(FEATURE_NAMES) == 39
    assert x[:, 0].eq(0.25).all() and x[:, 1].eq(0.5).all() and x[:, -1].tolist() == picks.float().tolist()
    np.testing.assert_array_equal(x[:, 2:-1].numpy(), norm)


def test_raise_run_is_deterministic_explains_and_exports_its_schedule(mini, ws, micro_model):
    a, b = run(mini, ws, micro_model), run(mini, ws, micro_model)
    ids_a, scores_a = load_scores(mini, a)
    ids_b, scores_b = load_scores(mini, b)
    np.testing.assert_array_equal(scores_a, scores_b)
    sched_a, sched_b = (Schedule.load(ws.run_dir(r) / raise_method.RAISE_DIR) for r in (a, b))
    np.testing.assert_array_equal(sched_a.steps, sched_b.steps)
    assert sched_a.steps.shape == (4, 4) and set(sched_a.steps.ravel()) <= set(ids_a.tolist())
    info = show_run(mini, a)
    assert info["status"] == "done" and info["selected"] == 10
    assert {"state features", "selector episodes", "schedule"} <= set(info["stage_times"])
    meta = info["meta"]["raise"]
    assert [e["episode"] for e in meta["episodes"]] == [1, 2] and meta["schedule"]["steps"] == 4
    other = run(mini, ws, micro_model, seed=7)
    assert not np.array_equal(Schedule.load(ws.run_dir(other) / "raise").steps, sched_a.steps)

    first = int(sched_a.steps[0, 0])
    exp = explain(mini, a, first)
    assert "Picked" in exp.evidence["Selection history"]
    assert {r["feature"] for r in exp.evidence["State features"]} >= {"prompt_tokens", "logp_y_given_x", "cluster"}
    import pandas as pd
    import pyarrow as pa
    for rows in (exp.evidence["State features"], exp.evidence["Steps that train on it"]):
        pa.Table.from_pandas(pd.DataFrame(rows))  # what the Explore page's st.dataframe needs
    assert exp.evidence["Steps that train on it"][0] == {"step": 1, "slot": 1, "cluster": int(sched_a.slot_clusters[0, 0])}

    res = export_selection(mini, a, "messages", ws)
    rows = [json.loads(line) for line in res.schedule_path.read_text().splitlines()]
    assert len(rows) == int((sched_a.steps >= 0).sum())
    assert [(r["step"], r["slot"]) for r in rows] == sorted((r["step"], r["slot"]) for r in rows)
    assert all("messages" in r["example"] for r in rows)
    manifest = json.loads(res.manifest_path.read_text())
    assert manifest["schedule"]["rows"] == len(rows) and manifest["schedule"]["steps"] == 4
    assert len(res.path.read_text().splitlines()) == 10  # the static selection beside it


def test_raise_resumes_after_a_failure_mid_training(mini, ws, micro_model, monkeypatch):
    reference = run(mini, ws, micro_model)
    calls = {"rollout": 0, "static": 0}
    real_rollout, real_static = raise_method.rollout, raise_method.compute_static

    def dies_in_episode_2(*args, **kwargs):
        calls["rollout"] += 1
        if calls["rollout"] == 2:
            raise KeyboardInterrupt("killed")  # as a kill would: episode 1 is saved, episode 2 is lost
        return real_rollout(*args, **kwargs)

    def counted_static(*args, **kwargs):
        calls["static"] += 1
        return real_static(*args, **kwargs)
    monkeypatch.setattr(raise_method, "rollout", dies_in_episode_2)
    monkeypatch.setattr(raise_method, "compute_static", counted_static)
    victim = create_run(mini, "mini", "demo", raise_config(micro_model), ws=ws)
    with pytest.raises(KeyboardInterrupt):
        execute_run(mini, victim, ws=ws)
    saved = torch.load(ws.run_dir(victim) / "raise" / "selector.pt", weights_only=True)
    assert saved["episode"] == 1
    execute_run(mini, victim, ws=ws)  # resume: static features and episode 1 come from disk
    assert calls == {"rollout": 4, "static": 1}  # 2 (died) + episode 2 + the schedule; features once
    np.testing.assert_array_equal(load_scores(mini, victim)[1], load_scores(mini, reference)[1])
    np.testing.assert_array_equal(Schedule.load(ws.run_dir(victim) / "raise").steps,
                                  Schedule.load(ws.run_dir(reference) / "raise").steps)


def test_compute_static_clusters_every_example(micro_model, tmp_path):
    model, tok = load_model(ModelConfig(name_or_path=str(micro_model)), tmp_path)
    messages = demo_messages(20)
    static = compute_static(model, tok, list(range(20)), lambda ids: [messages[i] for i in ids], 128,
                            pad_token_id(tok), 8, n_clusters=3, seed=0, chunk=7)
    whole = difficulty_features(model, tok, messages, 128, pad_token_id(tok), 8, None)[0]
    np.testing.assert_allclose(static.difficulty, whole, rtol=1e-5, atol=1e-4)  # chunking changes nothing
    assert static.embedding.shape == (20, 32) and sorted(set(static.clusters.tolist())) == [0, 1, 2]


def test_scoring_page_launches_raise_with_its_options(ws, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from curation.data.demo import ensure_demo
    from curation.data.store import Run
    from curation.runs import jobs

    store = Store.open(ws)
    ensure_demo(store)
    launched = []
    monkeypatch.setattr(jobs, "launch", lambda store, run_id, ws=None: launched.append(run_id) or 0)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/scoring.py")
    at.run()
    next(s for s in at.selectbox if s.label == "Method").set_value("raise")
    next(n for n in at.number_input if n.label == "Episodes K").set_value(3)
    next(s for s in at.selectbox if s.label == "Validation loss").set_value("sft")
    next(b for b in at.button if "Launch" in b.label).click().run()
    assert not at.exception, [e.value for e in at.exception]
    with store.session() as s:
        run_row = s.get(Run, launched[0])
        assert run_row.method == "raise"
        assert run_row.config["options"]["episodes"] == 3 and run_row.config["options"]["reward"] == "sft"
