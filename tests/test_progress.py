"""Scoring-run experience in the library (issue 14, item 6): the model check before launch, the
stage plan per method, the overall ETA, the cost estimate, the tiny-model stage, the last-used
inputs and a worker log without library warnings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from curation import cli
from curation.config import FeatureConfig, ScoreConfig, SelectConfig
from curation.data import catalog
from curation.data.demo import DEMO_POOL, DEMO_PREFS
from curation.data.imports import import_pool, import_prefs
from curation.data.store import Run, Store
from curation.data.store.models import utcnow
from curation.engine.model import ModelConfig
from curation.engine.models import validate_model
from curation.engine.warmup import WarmupConfig
from curation.errors import CurationError
from curation.methods import REGISTRY
from curation.runs import execute as runs
from curation.runs import jobs, progress
from curation.runs.progress import StageCost, run_progress, stage_plan

REPO = Path(__file__).resolve().parents[1]


def small_pool(store: Store, tmp_path: Path, n: int = 60, name: str = "small") -> None:
    """The first ``n`` demo examples as a pool, and the demo pairs (10, in subtasks)."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(DEMO_POOL.read_text().splitlines(True)[:n]))
    import_pool(store, path, name=name)
    if "demo" not in [r["name"] for r in catalog.list_prefsets(store)]:
        import_prefs(store, DEMO_PREFS, name="demo")


def micro_cfg(model: Path, method: str = "rose", epochs: int = 2, k: int = 256) -> ScoreConfig:
    return ScoreConfig(method=method, model=ModelConfig(name_or_path=str(model), max_length=64),
                       warmup=WarmupConfig(percent=10, epochs=epochs, batch_size=16, max_length=64),
                       features=FeatureConfig(k=k, projector="sparse_jl", shard_size=512),
                       select=SelectConfig(percent=10))


# ---------------------------------------------------------------------------- the model check


def model_folder(root: Path, config: dict | None = None, tokenizer: bool = True, weights: bool = True) -> Path:
    root.mkdir(parents=True)
    if config is not None:
        (root / "config.json").write_text(json.dumps(config))
    if tokenizer:
        (root / "tokenizer.json").write_text("{}")
    if weights:
        (root / "model.safetensors").write_bytes(b"\0")
    return root


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("file", "is a file, not a folder"),
    ("no config", "has no config.json"),
    ("no model_type", "has no model_type"),
    ("no tokenizer", "has no tokenizer"),
    ("no weights", "has no weights"),
])
def test_a_bad_model_folder_is_refused_with_what_is_wrong(tmp_path, case, message):
    llama = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 10}
    path = {
        "missing": lambda: tmp_path / "nowhere" / "model",
        "file": lambda: (tmp_path / "model.bin").write_bytes(b"x") and tmp_path / "model.bin",
        "no config": lambda: model_folder(tmp_path / "m"),
        "no model_type": lambda: model_folder(tmp_path / "m", {"hidden_size": 8}),
        "no tokenizer": lambda: model_folder(tmp_path / "m", llama, tokenizer=False),
        "no weights": lambda: model_folder(tmp_path / "m", llama, weights=False),
    }[case]()
    with pytest.raises(CurationError, match=message):
        validate_model(str(path), tmp_path / "home")


def test_a_complete_model_folder_passes_with_its_absolute_path(micro_model, tmp_path, monkeypatch):
    monkeypatch.chdir(micro_model.parent)
    check = validate_model(micro_model.name, tmp_path)  # a relative path
    assert check.kind == "folder" and check.path == str(micro_model.resolve())
    assert check.params and check.params > 10_000
    assert validate_model("tiny", tmp_path).kind == "tiny"


def test_smollm2_must_be_fetched_first(tmp_path):
    with pytest.raises(CurationError, match="model fetch smollm2"):
        validate_model("smollm2", tmp_path)


def test_a_hub_id_loads_only_from_the_cache_while_downloads_are_off(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CurationError, match="not in the local Hugging Face cache; downloads are off"):
        validate_model("someone/some-model", tmp_path)
    with pytest.raises(CurationError, match="neither a local folder nor a valid hub id"):
        validate_model("not a valid id!", tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CurationError, match="HF_HUB_OFFLINE"):
        validate_model("someone/some-model", tmp_path, allow_download=True)
    repo = tmp_path / "hub" / "models--someone--some-model"  # the cache layout huggingface_hub reads
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    model_folder(repo / "snapshots" / "abc123", {"model_type": "llama"})
    assert validate_model("someone/some-model", tmp_path).kind == "hub"


def test_cli_score_refuses_a_bad_model_before_creating_a_run(ws, tmp_path, capsys):
    store = Store.open(ws)
    small_pool(store, tmp_path, n=20)
    assert cli.main(["score", "--pool", "small", "--prefs", "demo", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with store.session() as s:
        assert s.query(Run).count() == 0


# ---------------------------------------------------------------------------- stages and ETA


def test_every_method_has_a_stage_plan():
    assert all(stage_plan(m) for m in REGISTRY)
    rose = stage_plan("rose", epochs=2, tiny_build=True)
    assert rose == ["build tiny model", "load model", "warmup", "train features epoch_1",
                    "validation features epoch_1", "train features epoch_2", "validation features epoch_2",
                    "score", "select"]
    assert stage_plan("bm25", tiny_build=True)[0] == "tokenize pool"  # no model, nothing to build


@pytest.mark.parametrize("method", ["bm25", "dsir", "random", "repsim"])
def test_a_run_reports_exactly_its_planned_stages(ws, tmp_path, micro_model, method):
    store = Store.open(ws)
    small_pool(store, tmp_path, n=40)
    seen: list[str] = []
    run_id = runs.create_run(store, "small", "demo", micro_cfg(micro_model, method), ws=ws)
    runs.execute_run(store, run_id, ws=ws, echo=lambda s, d, t: seen.append(s) if s not in seen else None)
    assert seen == stage_plan(method)
    info = runs.show_run(store, run_id)
    assert (info["stage_index"], info["n_stages"], info["eta_total_s"]) == (len(seen), len(seen), 0.0)


PLAN = [StageCost("a", 10.0, 10.0), StageCost("b", 20.0, 20.0), StageCost("c", 30.0, 30.0)]


def test_overall_eta_combines_the_stage_eta_with_the_pace_of_finished_stages():
    # stage a took 20 s against 10 estimated: the rest is expected to take twice its estimate
    slow = run_progress(PLAN, "running", "b", {"a": 20.0, "b": 5.0}, None, 25.0)
    assert (slow["stage_index"], slow["n_stages"], slow["eta_total_s"]) == (2, 3, 2 * 20 - 5 + 2 * 30)
    measured = run_progress(PLAN, "running", "b", {"a": 20.0, "b": 5.0}, 12.0, 25.0)
    assert measured["eta_total_s"] == 12 + 2 * 30  # the stage's own rate-based ETA wins for the stage
    first = run_progress(PLAN, "running", "a", {"a": 4.0}, None, 4.0)
    assert first["eta_total_s"] == 10 - 4 + 20 + 30
    assert run_progress(PLAN, "queued", None, {}, None, 0.0)["eta_total_s"] == 60
    assert run_progress(PLAN, "queued", None, {}, None, 0.0)["stage_index"] == 0
    assert run_progress(PLAN, "done", "c", {}, None, 61.0)["stage_index"] == 3
    waiting = run_progress(PLAN, "running", "b (waiting: another run computes them)", {"a": 10.0}, None, 10.0)
    assert waiting["stage_index"] == 2
    assert run_progress(None, "running", "x", {}, None, 1.0)["n_stages"] is None


def test_show_run_reports_stage_k_of_n_elapsed_and_eta(ws, tmp_path, micro_model):
    store = Store.open(ws)
    small_pool(store, tmp_path, n=30)
    cfg = micro_cfg(micro_model)
    est = runs.estimate_cost(store, "small", "demo", cfg, ws.home)
    run_id = runs.create_run(store, "small", "demo", cfg, ws=ws, meta={"estimate": est.to_dict()})
    plan = [s.name for s in est.stages]
    assert plan == stage_plan("rose", epochs=2)
    with store.session() as s:
        run = s.get(Run, run_id)
        run.status, run.stage, run.heartbeat = "running", "train features epoch_1", utcnow()
        run.started_at = utcnow() - timedelta(seconds=30)
        run.stage_times = {"load model": 2.0, "warmup": 1.0, "train features epoch_1": 0.5}
        run.eta_s, run.meta = 4.0, {**run.meta, "earlier_s": 100.0}
    info = runs.show_run(store, run_id)
    assert (info["stage_index"], info["n_stages"]) == (3, len(plan))
    assert 129 <= info["elapsed_s"] <= 140  # 30 s in this process + 100 s in an earlier one
    expected = run_progress(est.stages, "running", "train features epoch_1", info["stage_times"], 4.0, 0)
    assert info["eta_total_s"] == expected["eta_total_s"] > 4.0  # later stages counted, not only this one


# ---------------------------------------------------------------------------- the cost estimate


def test_estimate_counts_rows_checkpoints_and_dimension(ws, tmp_path, micro_model):
    store = Store.open(ws)
    small_pool(store, tmp_path, n=50)
    cfg = micro_cfg(micro_model, epochs=2, k=512)
    est = runs.estimate_cost(store, "small", "demo", cfg, ws.home)
    d = progress.lora_dim(progress.model_arch(str(micro_model), ws.home), 8, cfg.warmup.target_modules)
    assert d == 2 * 8 * (4 * 2 * 32)  # 2 layers x r 8 x (in + out) of q, k, v, o at hidden 32
    features = (50 + 10) * 2 * 512 * 2  # (examples + pairs) x checkpoints x k x fp16
    assert est.disk_bytes == features + 2 * d * 4 * 3  # + the warmup's adapters and Adam moments
    assert est.seconds == pytest.approx(sum(s.seconds for s in est.stages), abs=0.1) and est.seconds > 0
    exact_cfg = micro_cfg(micro_model, epochs=2, k=512)
    exact_cfg.features.projector = "auto"  # d = 1,024 <= 65,536: exact features
    exact = runs.estimate_cost(store, "small", "demo", exact_cfg, ws.home)
    assert exact.disk_bytes == (50 + 10) * 2 * d * 2 + 2 * d * 4 * 3  # exact features: d, not k
    assert "of features" in est.summary()
    bm25 = runs.estimate_cost(store, "small", "demo", cfg.for_method("bm25"), ws.home)
    assert bm25.seconds < est.seconds and "of features" not in bm25.summary()


def test_estimate_names_the_tiny_build_and_small_pools_cost_minutes_not_hours(ws, tmp_path):
    store = Store.open(ws)
    small_pool(store, tmp_path, n=100)
    est = runs.estimate_cost(store, "small", "demo", ScoreConfig(), ws.home)
    assert est.stages[0].name == "build tiny model" and any("tiny model is built first" in n for n in est.notes)
    assert 150 <= est.seconds < 600
    assert est.disk_bytes == (100 + 10) * 4 * 32768 * 2 + 4 * 32768 * 4 * 3  # exact tiny features + warmup


def test_estimate_sees_stored_features_and_calibrates_on_earlier_runs(ws, tmp_path, micro_model):
    store = Store.open(ws)
    small_pool(store, tmp_path, n=40)
    cfg = micro_cfg(micro_model)
    first = runs.estimate_cost(store, "small", "demo", cfg, ws.home)
    assert any("no earlier run" in n for n in first.notes)
    run_id = runs.create_run(store, "small", "demo", cfg, ws=ws, meta={"estimate": first.to_dict()})
    runs.execute_run(store, run_id, ws=ws)
    assert list(runs.show_run(store, run_id)["stage_times"]) == [s.name for s in first.stages]
    again = runs.estimate_cost(store, "small", "demo", cfg.for_method("less"), ws.home)
    assert any("reused from the feature store" in n and "only scoring remains" in n for n in again.notes)
    assert any("calibrated on 1 earlier run" in n for n in again.notes)
    train = [s for s in again.stages if s.name.startswith("train features")]
    assert train and all(s.seconds == 0 for s in train)
    assert again.disk_bytes == 10 * 2 * 256 * 2  # only the validation features are new
    factors, n = progress.history_factors(store, cfg)
    took = runs.show_run(store, run_id)["stage_times"]["load model"]
    raw = next(s.raw_s for s in first.stages if s.name == "load model")
    assert n == 1 and factors["load model"] == pytest.approx(min(20.0, max(0.05, took / raw)))


def test_estimate_sees_repsims_cached_pool_states(ws, tmp_path, micro_model):
    """After a repsim run on a pool, the next repsim (or auto) estimate on it costs the pool's
    states nothing and says why; another pool still pays for them."""
    store = Store.open(ws)
    small_pool(store, tmp_path, n=40)
    small_pool(store, tmp_path, n=30, name="other")
    cfg = micro_cfg(micro_model).for_method("repsim")
    pool_s = lambda est: next(s.raw_s for s in est.stages if s.name == "pool states")  # noqa: E731
    before = runs.estimate_cost(store, "small", "demo", cfg, ws.home)
    runs.execute_run(store, runs.create_run(store, "small", "demo", cfg, ws=ws), ws=ws)
    after = runs.estimate_cost(store, "small", "demo", cfg, ws.home)
    assert pool_s(after) < pool_s(before) / 10 and any("pool states are cached" in n for n in after.notes)
    other = runs.estimate_cost(store, "other", "demo", cfg, ws.home)
    assert not any("pool states are cached" in n for n in other.notes)


# ---------------------------------------------------------------------------- tiny stage, last inputs


def test_the_tiny_build_is_a_stage_of_its_own(ws, tmp_path, micro_model, monkeypatch):
    import curation.engine.tiny

    store = Store.open(ws)
    small_pool(store, tmp_path, n=20)
    seen = {}

    def fake_build(workspace, corpus_path=None, cfg=None, progress=None):
        if "info" not in seen and progress:
            progress("tiny-pretrain", 1, 400)
            seen["info"] = runs.show_run(store, run_id, top=0)
        return micro_model

    monkeypatch.setattr(curation.engine.tiny, "ensure_tiny_model", fake_build)
    monkeypatch.setattr(runs, "tiny_needs_build", lambda home: True)
    cfg = ScoreConfig(method="repsim", model=ModelConfig(max_length=64), select=SelectConfig(percent=10))
    run_id = runs.create_run(store, "small", "demo", cfg, ws=ws)
    runs.execute_run(store, run_id, ws=ws)
    info = seen["info"]
    assert info["stage"] == "build tiny model"
    assert info["stage_label"] == "building the offline tiny model (once, ~3 min)"
    assert (info["stage_index"], info["n_stages"]) == (1, len(stage_plan("repsim")) + 1)
    assert list(runs.show_run(store, run_id)["stage_times"])[:2] == ["build tiny model", "load model"]


def test_recent_inputs_are_the_newest_of_the_last_run_and_the_last_import(ws, tmp_path):
    store = Store.open(ws)
    small_pool(store, tmp_path, n=5, name="beta")
    small_pool(store, tmp_path, n=6, name="alpha")
    assert runs.recent_inputs(store) == runs.RecentInputs("alpha", "demo")  # the last imported
    runs.create_run(store, "beta", "demo", ScoreConfig(method="random"))
    assert runs.recent_inputs(store).pool == "beta"  # the last run's, newer than any import
    small_pool(store, tmp_path, n=7, name="gamma")
    assert runs.recent_inputs(store).pool == "gamma"


# ---------------------------------------------------------------------------- the worker's log


def test_log_lines_say_each_stage_at_once_and_progress_at_most_every_few_seconds(capsys):
    now = [1000.0]
    echo = jobs.LogLines(every_s=10, clock=lambda: now[0])
    echo("warmup", 0, 40)
    for t, done in ((1, 5), (5, 10), (11, 20), (12, 25)):
        now[0] = 1000 + t
        echo("warmup", done, 40)
    echo("score", 0, 0)
    lines = capsys.readouterr().out.splitlines()
    assert [re.sub(r"^\d\d:\d\d:\d\d ", "", x) for x in lines] == ["warmup (40 to do)", "  warmup: 20 of 40", "score"]


def test_quiet_worker_drops_library_warnings_but_not_the_projects():
    code = ("import warnings; from curation.runs.jobs import quiet_library_output; quiet_library_output();"
            "warnings.warn('old API', FutureWarning);"
            "warnings.warn_explicit('torch internals', UserWarning, 'x.py', 1, module='torch.nn.modules');"
            "warnings.warn_explicit('pool is tiny', UserWarning, 'y.py', 1, module='curation.runs.execute')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "old API" not in done.stderr and "torch internals" not in done.stderr
    assert "pool is tiny" in done.stderr


def test_a_background_worker_logs_its_stages_live_without_library_warnings(ws, tmp_path, micro_model):
    store = Store.open(ws)
    small_pool(store, tmp_path, n=40)
    run_id = runs.create_run(store, "small", "demo", micro_cfg(micro_model), ws=ws)
    jobs.launch(store, run_id, ws)
    deadline = time.time() + 300
    while runs.show_run(store, run_id, top=0)["status"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.5)
    info = runs.show_run(store, run_id, top=0)
    log = jobs.log_path(ws, run_id).read_text()
    assert info["status"] == "done", log
    # transformers 5 warns (FutureWarning: is_gradient_checkpointing) when PEFT wraps the model
    # and draws weight-loading bars: neither reaches the curator's log
    assert "Warning" not in log and "warnings.warn" not in log and "Loading weights" not in log
    stages = [re.sub(r"^\d\d:\d\d:\d\d (\S.*?)( \(.*\))?$", r"\1", x) for x in log.splitlines() if x[:1].isdigit()]
    assert stages == stage_plan("rose", epochs=2)


def test_durations_and_sizes_are_rounded_for_people():
    assert [progress.approx_duration(s) for s in (10, 240, 3599, 7190, 8640)] == [
        "under a minute", "about 4 min", "about 1 h 00 min", "about 2 h 00 min", "about 2 h 24 min"]
    assert [progress.duration(s) for s in (5, 75, 700, 3700, None)] == ["5 s", "1 min 15 s", "12 min", "1 h 01 min", "?"]
    assert [progress.size(b) for b in (512, 786_432_000, 6.6e9)] == ["512 bytes", "786 MB", "6.6 GB"]
