"""The Scoring page (Streamlit AppTest; issue 14, item 6): last-used inputs, the model check
before launch, the cost estimate, stage k of N with elapsed time and overall ETA, the named
tiny-model build, the live log and "Open in Explore"."""

from __future__ import annotations

import re
from datetime import timedelta

from streamlit.testing.v1 import AppTest
from test_app import run_page
from test_explore import build_synthetic_run

from curation.config import ScoreConfig
from curation.data.demo import DEMO_PREFS, ensure_demo
from curation.data.imports import import_pool, import_prefs
from curation.data.store import Run, Store
from curation.data.store.models import utcnow
from curation.runs import execute as runs
from curation.runs import jobs

OTHER = "other path or id…"
PATH_LABEL = "Local HF model folder (or a hub id with downloads allowed)"


def open_scoring() -> AppTest:
    return run_page("pages/scoring.py")


def widget(items, label: str):
    return next(w for w in items if w.label == label)


def plain(text: str) -> str:
    """Markdown-escaped text as the reader sees it."""
    return re.sub(r"\\(.)", r"\1", text)


def add_pool(store: Store, ws, name: str) -> None:
    f = ws.home / "data" / f"{name}.jsonl"
    f.write_text('{"instruction": "Say hi", "output": "hi"}\n{"instruction": "Add 2 and 3", "output": "5"}\n')
    import_pool(store, f, name=name)


def test_pool_and_prefs_start_on_the_last_run_and_then_on_the_users_choice(ws):
    store = Store.open(ws)
    ensure_demo(store)
    add_pool(store, ws, "alpha")  # alphabetically first: the old default
    import_prefs(store, DEMO_PREFS, name="another")
    runs.create_run(store, "demo", "demo", ScoreConfig(method="bm25"))  # the newest thing: the last run
    at = open_scoring()
    assert widget(at.selectbox, "Pool").value == "demo"
    assert widget(at.selectbox, "Preference set").value == "demo"
    widget(at.selectbox, "Pool").set_value("alpha").run()
    at.switch_page("pages/pool.py").run()
    at.switch_page("pages/scoring.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert widget(at.selectbox, "Pool").value == "alpha"  # this session's choice wins


def test_without_runs_the_newest_imported_pool_comes_first(ws):
    store = Store.open(ws)
    ensure_demo(store)
    add_pool(store, ws, "zeta")
    assert widget(open_scoring().selectbox, "Pool").value == "zeta"


def test_a_bad_model_path_is_refused_before_launch(ws, tmp_path):
    ensure_demo(Store.open(ws))
    at = open_scoring()
    widget(at.selectbox, "Model").set_value(OTHER).run()
    widget(at.text_input, PATH_LABEL).set_value(str(tmp_path / "no-such-model")).run()
    assert any("does not exist" in plain(e.value) for e in at.error)
    assert widget(at.button, "Launch in the background").disabled
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text('{"model_type": "llama"}')
    widget(at.text_input, PATH_LABEL).set_value(str(half)).run()
    assert any("has no tokenizer" in plain(e.value) for e in at.error)
    assert widget(at.button, "Launch in the background").disabled
    with Store.open(ws).session() as s:
        assert s.query(Run).count() == 0


def test_launch_shows_the_cost_first_and_keeps_it_on_the_run(ws, micro_model, monkeypatch):
    store = Store.open(ws)
    ensure_demo(store)
    launched = []
    monkeypatch.setattr(jobs, "launch", lambda store, run_id, ws=None: launched.append(run_id) or 1)
    at = open_scoring()
    widget(at.selectbox, "Model").set_value(OTHER).run()
    widget(at.text_input, PATH_LABEL).set_value(str(micro_model)).run()
    shown = next(i.value for i in at.info if i.value.startswith("Estimated cost"))
    assert re.fullmatch(r"Estimated cost: (under a minute|about \d+ min), [\d.,]+ (kB|MB|GB) of features\.", shown)
    widget(at.button, "Launch in the background").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Run #1 launched" in plain(s.value) for s in at.success) and launched == [1]
    info = runs.show_run(store, 1, top=0)
    assert info["config"]["model"]["name_or_path"] == str(micro_model.resolve())
    assert shown == f"Estimated cost: {runs.Estimate.from_dict(info['meta']['estimate']).summary()}."


def running_run(store: Store, ws, stage: str, **values) -> int:
    """A rose run on the demo (tiny model, not built yet) that a worker is computing now."""
    cfg = ScoreConfig()
    est = runs.estimate_cost(store, "demo", "demo", cfg, ws.home)
    run_id = runs.create_run(store, "demo", "demo", cfg, ws=ws, meta={"estimate": est.to_dict()})
    with store.session() as s:
        run = s.get(Run, run_id)
        run.status, run.stage, run.heartbeat = "running", stage, utcnow()
        run.started_at = utcnow() - timedelta(seconds=20)
        for k, v in values.items():
            setattr(run, k, v)
    return run_id


def test_a_running_run_shows_stage_k_of_n_elapsed_overall_eta_and_its_log(ws):
    store = Store.open(ws)
    ensure_demo(store)
    run_id = running_run(store, ws, "build tiny model", stage_done=100, stage_total=400, rate=2.0, eta_s=150.0,
                         stage_times={"build tiny model": 20.0})
    log = jobs.log_path(ws, run_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("04:47:54 build tiny model\n  build tiny model: 100 of 400\n")
    at = open_scoring()
    bar = plain(at.get("progress")[0].proto.text)
    n = len(runs.show_run(store, run_id)["meta"]["estimate"]["stages"])
    assert n == 13  # tiny build, load, warmup, 4 x (train, validation), score, select
    assert bar.startswith(f"stage 1 of {n}: building the offline tiny model (once, ~3 min) · 100/400 · 2.0/s")
    timing = next(plain(c.value) for c in at.caption if c.value.startswith("Elapsed"))
    assert re.fullmatch(r"Elapsed 2\d s · about \d+ min( \d+ s)? left in all", timing)
    assert any("build tiny model: 100 of 400" in c.value for c in at.code)
    with store.session() as s:
        run = s.get(Run, run_id)
        run.stage, run.stage_times = "train features epoch_1", {"build tiny model": 150.0, "load model": 2.0,
                                                                  "warmup": 10.0}
    at.run()
    assert plain(at.get("progress")[0].proto.text).startswith(f"stage 4 of {n}: train features epoch_1")


def test_a_done_run_opens_in_explore(ws, monkeypatch):
    """The switch happens at the page's top level, never inside the fragment that reruns every
    2 s (issue 22: from there it gave a blank page 2 times of 3)."""
    import inspect

    import streamlit as st
    real, fragments = st.switch_page, []

    def switch_page(page):
        fragments.append(any(f.function == "run_list" for f in inspect.stack()))  # the fragment's function
        return real(page)
    monkeypatch.setattr(st, "switch_page", switch_page)
    store = Store.open(ws)
    run = build_synthetic_run(store, ws.home / "runs" / "synthetic")
    at = open_scoring()
    assert any(plain(c.value).startswith("6 selected") for c in at.caption)
    assert "✅ done" in next(m.value for m in at.markdown if m.value.startswith(f"**#{run.run_id} · rose**"))
    widget(at.button, "Open in Explore").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["explore_run"] == run.run_id
    assert at.title[0].value == "Explore" and widget(at.selectbox, "Run").value == run.run_id
    assert fragments == [False]


def test_a_model_free_method_shows_no_model_lora_or_feature_settings(ws):
    """Issue 22: the form showed LoRA, k and feature options for BM25."""
    ensure_demo(Store.open(ws))
    at = open_scoring()
    widget(at.selectbox, "Method").set_value("rose").run()  # a gradient method shows them all
    assert {"Features"} <= {s.label for s in at.selectbox} and any(e.label == "Warmup (LoRA)" for e in at.expander)
    for method in ("bm25", "dsir", "random"):
        widget(at.selectbox, "Method").set_value(method).run()
        assert not at.exception, [e.value for e in at.exception]
        assert "Features" not in {s.label for s in at.selectbox}
        assert not [w for w in at.select_slider if w.label == "Projection dim k"]
        assert "Max tokens per example" not in {n.label for n in at.number_input}
        assert not any(e.label == "Warmup (LoRA)" for e in at.expander)
        assert any(b.label == "Launch in the background" and not b.disabled for b in at.button)


def test_exact_features_show_their_dimension_not_k(ws):
    """Issue 22: the k slider said 8192 while the tiny model's features are exact."""
    from pathlib import Path

    from curation.runs.progress import feature_plan
    ensure_demo(Store.open(ws))
    at = open_scoring()
    widget(at.selectbox, "Method").set_value("rose").run()
    rank = int(widget(at.number_input, "LoRA rank").value)
    plan = feature_plan("tiny", "auto", rank, Path(ws.home))
    assert plan.exact and plan.dim
    assert not [w for w in at.select_slider if w.label == "Projection dim k"]
    assert any(f"Exact LoRA gradients: {plan.dim:,} coordinates" in c.value for c in at.caption)
    widget(at.selectbox, "Features").set_value("sparse_jl").run()
    assert widget(at.select_slider, "Projection dim k").value == 8192


def test_tiny_on_a_foreign_pool_says_why_and_offers_smollm2_but_not_on_the_demo(ws):
    from test_poolfit import foreign_pool

    store = Store.open(ws)
    ensure_demo(store)
    pool = foreign_pool(store, ws)
    at = open_scoring()  # opens on the newest imported pool: the foreign one
    assert widget(at.selectbox, "Pool").value == pool
    assert widget(at.selectbox, "Model").value == "tiny"  # smollm2 is not fetched in this workspace
    warned = [plain(w.value) for w in at.warning if "does not know this pool" in plain(w.value)]
    assert warned and "tokens on average" in warned[0] and "model fetch smollm2" in warned[0]
    assert any(b.label == "Fetch smollm2" for b in at.button)
    widget(at.selectbox, "Pool").set_value("demo").run()
    assert not at.exception, [e.value for e in at.exception]
    assert widget(at.selectbox, "Model").value == "tiny"
    assert not any("does not know this pool" in plain(w.value) for w in at.warning)
    assert not any(b.label == "Fetch smollm2" for b in at.button)


def test_a_long_default_run_is_offered_the_fast_preset_and_the_run_records_it(ws, micro_model, monkeypatch):
    store = Store.open(ws)
    ensure_demo(store)
    monkeypatch.setattr(jobs, "launch", lambda store, run_id, ws=None: 1)
    real = runs.estimate_cost

    def slow_unless_fast(store, pool, prefs, cfg, home):  # the page's own estimate, made long
        est = real(store, pool, prefs, cfg, home)
        est.seconds = 7200.0 if cfg.preset == "default" else 600.0
        return est

    monkeypatch.setattr(runs, "estimate_cost", slow_unless_fast)
    at = open_scoring()
    widget(at.selectbox, "Method").set_value("rose").run()  # auto is the default; the offer is for one method
    widget(at.selectbox, "Model").set_value(OTHER).run()
    widget(at.text_input, PATH_LABEL).set_value(str(micro_model)).run()
    assert widget(at.selectbox, "Feature preset").value == "default"
    assert any("Over an hour" in w.value for w in at.warning)
    widget(at.button, "Use the fast preset").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert widget(at.selectbox, "Feature preset").value == "fast"
    assert not any("Over an hour" in w.value for w in at.warning)
    widget(at.button, "Launch in the background").click().run()
    info = runs.show_run(store, 1, top=0)
    assert info["config"]["preset"] == "fast" and info["config"]["features"]["checkpoints"] >= 1
