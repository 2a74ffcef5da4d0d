"""A scoring run end to end on the demo pool: CLI, stored selection, and kill-and-resume.

A micro model (built offline from the demo pool in seconds) stands in for the default tiny
model so the suite stays fast; it goes through the same code path as any local HF model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from curation.config import FeatureConfig, ScoreConfig, SelectConfig
from curation.data.demo import ensure_demo
from curation.data.store import Run, Score, Store
from curation.engine.features import FeatureStore
from curation.engine.model import ModelConfig
from curation.engine.warmup import WarmupConfig
from curation.runs.execute import create_run, execute_run, show_run
from curation.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
def micro_config(model: Path, method: str = "rose", **features) -> ScoreConfig:
    return ScoreConfig(method=method, model=ModelConfig(name_or_path=str(model), max_length=128),
                       warmup=WarmupConfig(percent=5, epochs=2, batch_size=16, max_length=128),
                       features=FeatureConfig(k=256, shard_size=features.pop("shard_size", 512), **features),
                       select=SelectConfig(percent=5))



def env_for(ws: Workspace) -> dict:
    env = {**os.environ, "CURATION_HOME": str(ws.home)}
    env.pop("CURATION_DB_URL", None)
    return env


@pytest.mark.slow
def test_score_cli_on_the_demo_stores_a_selection(ws, micro_model, tmp_path):
    store = Store.open(ws)
    ensure_demo(store)
    cfg_file = tmp_path / "score.json"
    cfg_file.write_text(json.dumps(micro_config(micro_model).to_dict()))
    out = subprocess.run([sys.executable, "-m", "curation", "score", "--pool", "demo", "--prefs", "demo",
                          "--config", str(cfg_file)], cwd=REPO, env=env_for(ws), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = int(out.stdout.strip().splitlines()[-1])
    info = show_run(store, run_id)
    assert info["status"] == "done" and info["selected"] == 150  # ceil(5% of 3000)
    assert set(info["stage_times"]) >= {"warmup", "score", "select"}
    assert info["meta"]["subtasks"] == ["addition_subtraction", "multiplication_division"]
    with store.session() as s:
        assert s.scalar(select(func.count()).where(Score.run_id == run_id)) == 3000
        assert s.scalar(select(func.count()).where(Score.run_id == run_id, Score.selected)) == 150
        ranks = sorted(s.scalars(select(Score.rank).where(Score.run_id == run_id)))
        assert ranks == list(range(1, 3001))
        top = s.scalar(select(Score).where(Score.run_id == run_id, Score.rank == 1))
        assert set(top.components["subtasks"]) == {"addition_subtraction", "multiplication_division"}
        assert top.score == pytest.approx(max(top.components["subtasks"].values()), abs=1e-5)
        assert sum(top.components["checkpoints"]) == pytest.approx(top.score, abs=1e-5)
    shown = subprocess.run([sys.executable, "-m", "curation", "show", str(run_id)], cwd=REPO, env=env_for(ws),
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "#1 " in shown.stdout
    check_curation_cli(ws, store, run_id)


def cli(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curation", *args], cwd=REPO, env=env_for(ws),
                          capture_output=True, text=True, timeout=120)


def check_curation_cli(ws: Workspace, store: Store, run_id: int) -> None:
    """decide / undo / export from the CLI: the same library calls as the Curate page."""
    with store.session() as s:
        top, second = s.scalars(select(Score.example_id).where(Score.run_id == run_id).order_by(Score.rank).limit(2))
        outside = s.scalar(select(Score.example_id).where(Score.run_id == run_id, Score.rank == 2000))
    assert cli(ws, "decide", "exclude", "demo", str(top), "--reason", "too easy").returncode == 0
    assert cli(ws, "decide", "pin", "demo", str(second), "--reason", "keep").returncode == 0
    assert cli(ws, "undo", "demo").stdout.startswith("undid")  # the pin of `second` is reverted
    assert cli(ws, "decide", "pin", "demo", str(outside), "--reason", "must have").returncode == 0
    no_reason = cli(ws, "decide", "pin", "demo", str(second))
    assert no_reason.returncode == 2 and "reason" in no_reason.stderr and "Traceback" not in no_reason.stderr
    out = cli(ws, "export", str(run_id), "--format", "messages")
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    manifest = json.loads(path.with_name(path.name.replace(".jsonl", ".manifest.json")).read_text())
    assert len(rows) == 150 and all("messages" in r for r in rows)
    assert {o["action"] for o in manifest["overrides"]} == {"exclude", "pin"}
    uids = {e["uid"] for e in manifest["examples"]}
    with store.session() as s:
        from curation.data.store import Example
        assert s.get(Example, outside).uid in uids and s.get(Example, top).uid not in uids


def _train_features(workdir: Path, n_ckpt: int) -> list[np.ndarray]:
    fs = FeatureStore(workdir / "features")
    return [fs.reader("train", i).load_all() for i in range(n_ckpt)]


def reference_run(tmp_path: Path, cfg: ScoreConfig) -> tuple[Workspace, Store, int]:
    """The same run, uninterrupted, in a workspace of its own (runs of one workspace share
    their train features, so a reference there would compute nothing)."""
    ws = Workspace.from_env(tmp_path / "reference").ensure()
    store = Store.open(ws)
    ensure_demo(store)
    run_id = create_run(store, "demo", "demo", cfg, ws=ws)
    execute_run(store, run_id, ws=ws)
    return ws, store, run_id


@pytest.fixture(scope="session")
def reference(micro_model, tmp_path_factory) -> tuple[Workspace, Store, int]:
    """One uninterrupted micro run (shard size 512) for the kill and torchrun tests. Features do
    not depend on the shard size (rows are batched by length alone, `model.padded_length`); the
    tests compare their 128- and 256-row shards against it byte for byte, which checks that too."""
    return reference_run(tmp_path_factory.mktemp("reference"), micro_config(micro_model, shard_size=512))


def segment_dir(ws: Workspace, ckpt: int = 0) -> Path:
    """The train-feature directory of the workspace's one feature-store segment."""
    found = sorted((ws.home / "features").glob(f"fs_*/seg_*/ckpt_{ckpt}"))
    return found[0] if found else ws.home / "features" / "none"


def same_scores(store_a: Store, run_a: int, store_b: Store, run_b: int) -> tuple[dict, dict]:
    with store_a.session() as s:
        a = dict(s.execute(select(Score.example_id, Score.score).where(Score.run_id == run_a)).all())
    with store_b.session() as s:
        b = dict(s.execute(select(Score.example_id, Score.score).where(Score.run_id == run_b)).all())
    return a, b


@pytest.mark.slow
def test_killed_run_resumes_to_identical_features(ws, micro_model, reference):
    """SIGKILL the worker mid-features; `--resume` finishes with the uninterrupted run's features."""
    store = Store.open(ws)
    ensure_demo(store)
    cfg = micro_config(micro_model, shard_size=128)
    victim = create_run(store, "demo", "demo", cfg)
    proc = subprocess.Popen([sys.executable, "-m", "curation", "worker", str(victim)], cwd=REPO, env=env_for(ws),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(segment_dir(ws).glob("shard_*.npy"))) < 3:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list(segment_dir(ws).glob("shard_*.npy")))
    assert 3 <= n_before < 24
    resumed = subprocess.run([sys.executable, "-m", "curation", "score", "--resume", str(victim)], cwd=REPO,
                             env=env_for(ws), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_ws, ref_store, ref_id = reference
    for a, b in zip(_train_features(ref_ws.run_dir(ref_id), 2), _train_features(ws.run_dir(victim), 2)):
        np.testing.assert_array_equal(a, b)
    with store.session() as s:
        assert s.get(Run, victim).status == "done"
    ref, got = same_scores(ref_store, ref_id, store, victim)
    assert ref == got


def test_failed_run_records_its_error(ws, tmp_path):
    store = Store.open(ws)
    ensure_demo(store)
    cfg = micro_config(tmp_path / "no-such-model")
    run_id = create_run(store, "demo", "demo", cfg)
    with pytest.raises(Exception):
        execute_run(store, run_id)
    info = show_run(store, run_id)
    assert info["status"] == "failed" and "no-such-model" in info["error"]


@pytest.mark.slow
def test_less_and_rose_share_the_warmup(ws, micro_model):
    store = Store.open(ws)
    ensure_demo(store)
    ids = [create_run(store, "demo", "demo", micro_config(micro_model, method=m)) for m in ("rose", "less")]
    for run_id in ids:
        execute_run(store, run_id)
    assert len([p for p in (ws.home / "warmups").iterdir() if p.is_dir()]) == 1
    infos = [show_run(store, i) for i in ids]
    assert all(i["status"] == "done" for i in infos)
    assert infos[0]["top"] != infos[1]["top"]  # different objectives rank differently


@pytest.mark.slow
def test_torchrun_two_ranks_merge_to_the_single_process_features(ws, micro_model, tmp_path, reference):
    """2 CPU ranks (gloo) each write half the shards; rank 0 merges by manifest and scores."""
    store = Store.open(ws)
    ensure_demo(store)
    cfg = micro_config(micro_model, shard_size=256)
    cfg_file = tmp_path / "score.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29517", "-m", "curation", "score", "--pool", "demo", "--prefs", "demo", "--config",
                          str(cfg_file)], cwd=REPO, env=env_for(ws), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    sharded = int(out.stdout.strip().splitlines()[-1])
    names = {p.name for p in segment_dir(ws).glob("manifest*.json")}
    assert names >= {"manifest.rank0of2.json", "manifest.rank1of2.json"}
    ref_ws, ref_store, single = reference
    for a, b in zip(_train_features(ref_ws.run_dir(single), 2), _train_features(ws.run_dir(sharded), 2)):
        np.testing.assert_array_equal(a, b)
    assert show_run(store, sharded)["status"] == "done"
    ref, got = same_scores(ref_store, single, store, sharded)
    # Same features; torchrun sets OMP_NUM_THREADS=1, so BLAS sums in another order (last bits).
    assert ref.keys() == got.keys()
    np.testing.assert_allclose([got[k] for k in ref], list(ref.values()), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_manual_shards_then_resume(ws, micro_model, tmp_path):
    store = Store.open(ws)
    ensure_demo(store)
    run_id = create_run(store, "demo", "demo", micro_config(micro_model, shard_size=512))
    for shard in ("1/2", "0/2"):
        out = subprocess.run([sys.executable, "-m", "curation", "score", "--resume", str(run_id), "--shard", shard],
                             cwd=REPO, env=env_for(ws), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    assert show_run(store, run_id)["status"] == "queued"  # shards alone never finish a run
    out = subprocess.run([sys.executable, "-m", "curation", "score", "--resume", str(run_id)], cwd=REPO,
                         env=env_for(ws), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert show_run(store, run_id)["status"] == "done", (out.stdout[-2000:], out.stderr[-4000:])
