"""`bench quality`: how the metrics are computed (not their values), on the micro model."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from curation.bench import BENCHES, quality_suites
from curation.bench.downstream import mean_std
from curation.bench.quality import (
    METHODS,
    method_name,
    QualityConfig,
    config_from_args,
    pct_key,
    run_quality,
    selection_metrics,
    summary,
)
from curation.bench.quality_suites import SyntheticSpec, T0Spec, build_t0
from curation.cli import make_parser
from curation.data.store import Example, Score, Store
from curation.engine.select import budget_from
from curation.methods import REGISTRY
from curation.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
METRICS = {"precision", "noise_rate", "accuracy_mean", "accuracy_std", "accuracy_ci95"}
FAKE = "no_such_method"


@pytest.fixture(scope="module")
def quick(micro_model, tmp_path_factory):
    """One --quick synthetic run (2 seeds, so the std is over more than one value), workspace kept."""
    work = tmp_path_factory.mktemp("quality")
    cfg = QualityConfig.quick(model=str(micro_model), suites=("synthetic",), methods=METHODS + (FAKE,))
    cfg.downstream = dataclasses.replace(cfg.downstream, seeds=(0, 1))
    logs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CURATION_HOME", str(work / "home"))
        result = run_quality(cfg, workdir=work, log=logs.append)
    return result, cfg, work, logs


def registered() -> list[str]:
    return [m for m in METHODS if method_name(m) in REGISTRY]


def test_json_shape(quick):
    result, cfg, _, logs = quick
    assert set(result) == {"synthetic"}
    suite = json.loads(json.dumps(result))["synthetic"]  # plain JSON all the way down
    assert set(suite) == set(registered()) | {"full_pool", "_info"}
    for method in registered():
        assert set(suite[method]) == {"1", "5", "10"}
        for pct, metrics in suite[method].items():
            assert {"precision"} <= set(metrics) <= METRICS
            assert ("accuracy_mean" in metrics) == (pct == "5")  # downstream only at the quick percent
            assert 0.0 <= metrics["precision"] <= 1.0
    assert set(suite["full_pool"]) == {"100"}
    assert set(suite["full_pool"]["100"]) == METRICS
    assert logs and "synthetic" in summary(result)


def test_missing_methods_are_reported_as_skipped(quick):
    info = quick[0]["synthetic"]["_info"]
    assert FAKE in info["skipped_methods"] and FAKE not in quick[0]["synthetic"]
    assert set(info["runs"]) == set(registered()) and not info["failed_methods"]


def test_precision_and_noise_recount_from_the_stored_runs(quick):
    """Recount from the database: ranks of each run's scores, each example's source and planted flag."""
    result, cfg, work, _ = quick
    suite, info = result["synthetic"], result["synthetic"]["_info"]
    home = work / "synthetic"
    store = Store.open(Workspace(home=home.resolve(), db_url=f"sqlite:///{home.resolve() / 'curation.db'}"))
    target = cfg.synthetic.target
    with store.session() as s:
        examples = {i: (src, bool(orig.get("noisy"))) for i, src, orig in
                    s.execute(select(Example.id, Example.source, Example.original))}
    n = len(examples)
    for method in registered():
        with store.session() as s:
            rows = s.execute(select(Score.example_id, Score.rank, Score.selected)
                             .where(Score.run_id == info["runs"][method])).all()
        assert {r.example_id for r in rows if r.selected} == {
            r.example_id for r in rows if r.rank <= budget_from(max(cfg.percents), None, n)}
        for p in cfg.percents:
            chosen = [examples[r.example_id] for r in rows if r.rank <= budget_from(p, None, n)]
            on_target = [noisy for src, noisy in chosen if src == target]
            got = suite[method][pct_key(p)]
            assert got["precision"] == pytest.approx(len(on_target) / len(chosen))
            if on_target:
                assert got["noise_rate"] == pytest.approx(sum(on_target) / len(on_target))
            else:
                assert "noise_rate" not in got
    full = suite["full_pool"]["100"]
    on_target = [noisy for src, noisy in examples.values() if src == target]
    assert full["precision"] == pytest.approx(len(on_target) / n)
    assert full["noise_rate"] == pytest.approx(sum(on_target) / len(on_target))
    assert info["sizes"]["target_noisy"] == sum(on_target)


def test_accuracy_is_mean_and_population_std_over_seeds(quick):
    result, cfg, _, _ = quick
    suite, per_seed = result["synthetic"], result["synthetic"]["_info"]["accuracy_per_seed"]
    for method in registered() + ["full_pool"]:
        pct = "100" if method == "full_pool" else "5"
        accs = per_seed[method][pct]
        assert len(accs) == len(cfg.downstream.seeds) == 2
        assert suite[method][pct]["accuracy_mean"] == pytest.approx(statistics.fmean(accs))
        assert suite[method][pct]["accuracy_std"] == pytest.approx(statistics.pstdev(accs))
    assert mean_std([0.1, 0.2, 0.6]) == pytest.approx((0.3, statistics.pstdev([0.1, 0.2, 0.6])))
    assert mean_std([0.4]) == (0.4, 0.0)


def test_budgets_are_matched_per_percent(quick):
    result, cfg, _, _ = quick
    info, d = result["synthetic"]["_info"], cfg.downstream
    n = info["sizes"]["pool"]
    b = info["budgets"]["5"]
    assert b["examples"] == budget_from(5, None, n)
    assert b["epochs"] == max(d.epochs, -(-d.min_steps // -(-b["examples"] // d.batch_size)))
    assert b["steps"] == b["epochs"] * -(-b["examples"] // d.batch_size)
    assert info["budgets"]["100"] == {"examples": n, "epochs": d.full_pool_epochs,
                                      "steps": d.full_pool_epochs * -(-n // d.batch_size)}
    cost = info["cost"]
    assert set(cost["scoring"]) == set(registered())
    assert all(c["wall_s"] >= 0 and "select" in c["stages"] for c in cost["scoring"].values())
    assert set(registered()) | {"full_pool"} <= set(cost["downstream"])


def test_selection_metrics_by_hand():
    labels = {"a": {"dataset": "t", "noisy": True}, "b": {"dataset": "t"}, "c": {"dataset": "x"},
              "d": {"dataset": "t", "noisy": False}}
    assert selection_metrics(["a", "b", "c", "d"], labels, "t", True) == {"precision": 0.75, "noise_rate": 1 / 3}
    assert selection_metrics(["c"], labels, "t", True) == {"precision": 0.0}  # no target: no noise rate
    assert selection_metrics(["a", "c"], labels, "t", False) == {"precision": 0.5}


def test_t0_is_skipped_cleanly_without_its_data(monkeypatch, tmp_path):
    monkeypatch.setattr(quality_suites, "T0_ROOT", tmp_path / "absent")
    result = run_quality(QualityConfig.quick(suites=("t0",)), workdir=tmp_path / "w")
    assert result == {"t0": {"_info": {"skipped": f"t0 data not found at {tmp_path / 'absent'}"}}}


def _fake_t0(root: Path) -> None:
    """Three datasets: a label-like target, a free-text one, and one more label-like."""
    (root / "data_per_template").mkdir(parents=True)
    files = {"news_a": ("news", lambda i: ["Sports", "Business", "World"][i % 3]),
             "news_b": ("news", lambda i: ["sports", "business", "world"][i % 3]),
             "para_gen": ("para", lambda i: f"a paraphrase number {i}"),
             "yn_q": ("yesno", lambda i: ["Yes", "No"][i % 2])}
    rows = ["task_template\tdataset_derived\tgit_blob\tbytes\trecords"]
    for template, (dataset, label) in files.items():
        lines = [json.dumps({"prompt": f"{template} question {i}?\n", "completion": label(i) + "<|endoftext|>"})
                 for i in range(40)]
        (root / "data_per_template" / f"{template}.jsonl").write_text("\n".join(lines) + "\n")
        rows.append(f"{template}\t{dataset}\tx\t0\t40")
    (root / "index.tsv").write_text("\n".join(rows) + "\n")


def test_t0_pairs_are_held_in_and_rejected_is_another_label(tmp_path):
    _fake_t0(tmp_path / "t0")
    suite = build_t0(T0Spec(targets=("news", "yesno"), pool_size=100, shots=4, heldout=6, root=str(tmp_path / "t0")))
    pool_prompts = {r["messages"][0]["content"] for r in suite.pool}
    assert len(suite.pool) == 100 and not suite.has_noise
    for t in suite.targets:
        assert len(t.prefs) == 4 and len(t.heldout) == 6
        for p in t.prefs:
            assert p["chosen"] != p["rejected"] and p["subtask"] == t.name
            assert p["prompt"] not in pool_prompts
        assert not {h["prompt"] for h in t.heldout} & pool_prompts
        assert t.check({"answer": "Sports"}, " sports. ") and not t.check({"answer": "Sports"}, "World")
    news = suite.targets[0]
    assert all(p["rejected"] in {"Sports", "Business", "World", "sports", "business", "world"} for p in news.prefs)


def test_cli_options_and_dispatch(tmp_path):
    args = make_parser().parse_args(["bench", "quality", "--suite", "t0", "--quick", "--json", "--model", "m"])
    cfg = config_from_args(args)
    assert "quality" in BENCHES and cfg.suites == ("t0",) and cfg.model == "m"
    assert cfg.synthetic == SyntheticSpec(pool_size=300, shots=2, heldout=10)
    env = {**os.environ, "CURATION_HOME": str(tmp_path / "home"), "CURATION_T0_POOL": str(tmp_path / "absent")}
    out = subprocess.run([sys.executable, "-m", "curation", "bench", "quality", "--suite", "t0", "--quick", "--json"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {"t0": {"_info": {"skipped": f"t0 data not found at {tmp_path / 'absent'}"}}}


def test_t0_suite_is_the_macro_mean_over_its_targets(micro_model, tmp_path, monkeypatch):
    """The multi-target path on a fake T0 folder: one run per (method, target), precision averaged."""
    _fake_t0(tmp_path / "t0")
    monkeypatch.setattr(quality_suites, "T0_ROOT", tmp_path / "t0")
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "home"))
    cfg = QualityConfig.quick(model=str(micro_model), suites=("t0",), methods=("less", "bm25", "random"),
                              t0=T0Spec(targets=("news", "yesno"), pool_size=100, shots=2, heldout=3, max_length=64))
    suite = run_quality(cfg, workdir=tmp_path / "w")["t0"]
    info = suite["_info"]
    assert set(info["runs"]) == {f"{m}/{t}" for m in ("less", "bm25", "random") for t in ("news", "yesno")}
    for method in ("less", "bm25", "random"):
        for pct, metrics in suite[method].items():
            assert set(metrics) == {"precision"}  # no planted noise, downstream off for t0 by default
            per_target = info["per_target"][method][pct]
            assert metrics["precision"] == pytest.approx(np.mean([v["precision"] for v in per_target.values()]))
    assert suite["full_pool"]["100"]["precision"] == pytest.approx(
        np.mean([n / 100 for n in info["sizes"]["target_examples"].values()]))


def _fake_rose(root: Path) -> None:
    """ROSE's SE layout: 2- and 10-shot files (site-major groups) and a test file per site."""
    sites = quality_suites.SE_SITES
    for shots in (2, 10):
        data = {}
        for site in sites:
            for j in range(shots):
                data[f"\n\nHuman: {site} question {j}?\n\nAssistant:"] = {
                    "responses": [], "pairs": [], "sft_target": f" A good {site} answer {j}.",
                    "rejected_target": f" meh {j}"}
        d = root / "validation" / "se" / f"se_{shots}_shot"
        d.mkdir(parents=True)
        (d / f"se_{shots}_shot_preference.json").write_text(json.dumps(data))
    (root / "test" / "se").mkdir(parents=True)
    for site in sites:
        recs = [{"prompt": f"\n\nHuman: {site} test {i}?\n\nAssistant:", "golden_answer": f" {site} gold {i}."}
                for i in range(12)]
        (root / "test" / "se" / f"se_{site}.json").write_text(json.dumps(recs))


def test_prefs_suite_shape_and_no_leak(micro_model, tmp_path, monkeypatch):
    """`--suite prefs`: one site's pairs, its unseen 10-shot pairs held out, a pool of every site's
    test questions and T0; JSON shaped like the other suites, held-out accuracy at 5%."""
    _fake_t0(tmp_path / "t0")
    _fake_rose(tmp_path / "rose")
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "home"))
    spec = quality_suites.PrefsSpec(target="physics", shots=2, per_site=6, t0_size=60, max_length=64,
                                    root=str(tmp_path / "rose"))
    t0 = T0Spec(root=str(tmp_path / "t0"))
    suite = quality_suites.build_prefs(spec, t0)
    (tg,) = suite.targets
    assert [p["prompt"] for p in tg.prefs] == ["physics question 0?", "physics question 1?"]
    held = {h["prompt"] for h in tg.heldout}
    assert len(held) == 8 and not held & {p["prompt"] for p in tg.prefs}
    assert not held & {r["messages"][0]["content"] for r in suite.pool}
    assert suite.sizes["target_examples"] == 6 and len(suite.pool) == 60 + 60
    cfg = QualityConfig.quick(model=str(micro_model), suites=("prefs",), methods=("bm25", "random"), prefs=spec, t0=t0)
    res = run_quality(cfg, workdir=tmp_path / "w")["prefs"]
    assert set(res) == {"bm25", "random", "full_pool", "_info"} and res["_info"]["heldout_pairs"] == 8
    five = res["bm25"]["5"]
    assert 0 <= five["accuracy_mean"] <= 1 and "margin_mean" in five and five["precision"] > res["random"]["5"]["precision"]


def test_methods_option_preset_and_auto_options_reach_the_runs():
    from curation.bench.quality import parse_methods
    from curation.errors import CurationError

    args = make_parser().parse_args(["bench", "quality", "--quick", "--methods", "rose,bm25,fusion:less+bm25"])
    with pytest.raises(CurationError, match="fusion:less\\+bm25 needs less"):
        config_from_args(args)
    assert parse_methods("less,bm25,fusion:less+bm25,auto") == ("less", "bm25", "fusion:less+bm25", "auto")
    with pytest.raises(CurationError, match="unknown lesss"):
        parse_methods("lesss")
    cfg = QualityConfig.quick(preset="fast", auto_options={"seeds": 1})
    rose, auto, bm25 = (cfg.score_config(m, "model", "exact_match") for m in ("rose", "auto", "bm25"))
    assert rose.preset == "fast" and rose.features.checkpoints == 1 and rose.features.k == cfg.k
    assert auto.options == {"seeds": 1} and rose.options == {} and bm25.options == {}
    assert config_from_args(make_parser().parse_args(["bench", "quality", "--quick", "--preset", "fast"])).preset == "fast"
    with pytest.raises(CurationError, match="unknown preset 'fastest'"):
        QualityConfig.quick(preset="fastest")
    with pytest.raises(CurationError, match="auto: option seeds"):
        QualityConfig.quick(auto_options={"seeds": 0})


def test_t0_shots_option_sets_the_pairs_per_target_and_keeps_the_other_sizes():
    """`--t0-shots 8` is how the README's t0 auto figures run (5 pairs hold out 2: auto cannot judge)."""
    from curation.errors import CurationError

    full = config_from_args(make_parser().parse_args(["bench", "quality", "--suite", "t0", "--t0-shots", "8"]))
    assert full.t0.shots == 8 and full.t0.pool_size == QualityConfig().t0.pool_size
    quick = config_from_args(make_parser().parse_args(["bench", "quality", "--quick", "--t0-shots", "3"]))
    assert quick.t0.shots == 3 and quick.t0.pool_size == QualityConfig.quick().t0.pool_size
    assert config_from_args(make_parser().parse_args(["bench", "quality", "--quick"])).t0.shots == 2
    with pytest.raises(CurationError, match="--t0-shots: 0"):
        config_from_args(make_parser().parse_args(["bench", "quality", "--t0-shots", "0"]))
