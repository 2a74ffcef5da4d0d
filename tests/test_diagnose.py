"""`bench diagnose`: the variants re-score one run's stored features and say what they measure."""

from __future__ import annotations

from curation.bench.diagnose import offtask_pairs, run_diagnose, summary
from curation.bench.quality import QualityConfig
from curation.bench.quality_suites import SyntheticSpec


def test_offtask_pairs_keep_chosen_and_take_rejected_from_another_family():
    pool = [{"dataset": d, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"{d} {i}"}]}
            for i, d in enumerate(["t", "a", "b", "t"])]
    prefs = [{"prompt": "p", "chosen": "c", "rejected": "r", "subtask": "s"}] * 5
    out = offtask_pairs(prefs, pool, "t")
    assert all(p["chosen"] == "c" and p["rejected"].split()[0] in {"a", "b"} for p in out)


def test_diagnose_on_a_micro_model(micro_model, monkeypatch, tmp_path):
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "home"))
    cfg = QualityConfig.quick(model=str(micro_model), suites=("synthetic",),
                              synthetic=SyntheticSpec(pool_size=120, shots=2, heldout=5))
    res = run_diagnose(cfg, log=lambda m: None)["synthetic"]
    rows = res["unit_conversion"]
    assert set(rows) == {"rose", "rose beta=1", "rose mean-logp", "rose last-ckpt", "rose uniform", "less",
                         "rose off-task", "rose sketch", "less sketch"}
    # beta and the reference model only scale each normalised validation vector: same ranking
    assert rows["rose beta=1"]["spearman_vs_rose"] > 0.9999
    assert rows["less"]["spearman_vs_rose"] < 0.999 and rows["rose sketch"]["spearman_vs_rose"] < 0.999
    geo = res["_info"]["pair_geometry"]["unit_conversion"]
    assert -1 <= geo["cos_chosen_rejected_min"] <= geo["cos_chosen_rejected_mean"] <= geo["cos_chosen_rejected_max"] <= 1
    assert "separation" in summary({"synthetic": res})
