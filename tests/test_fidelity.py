"""`bench fidelity` and `curation.engine.fidelity`: sketches measured against exact scores."""

from __future__ import annotations

import numpy as np
import pytest

from curation.engine.fidelity import Setting, agreement, influence_scores, measure, top_overlap
from curation.engine.influence import aggregate


def test_influence_scores_follow_stage_4_by_hand():
    rng = np.random.default_rng(0)
    T = [rng.standard_normal((6, 5)) for _ in range(2)]
    V = [rng.standard_normal((3, 5)) for _ in range(2)]
    subs = ["a", "b", "a"]
    got = influence_scores(T, V, [1.0, 3.0], subs)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    S = 0.25 * (unit(T[0]) @ unit(V[0]).T) + 0.75 * (unit(T[1]) @ unit(V[1]).T)
    want = np.maximum(S[:, [0, 2]].mean(1), S[:, 1])
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(aggregate(S, np.array([0, 1, 0])).max(1), want)


def test_agreement_and_overlap():
    a = np.arange(100, dtype=float)
    assert abs(agreement(a, a)["spearman"] - 1.0) < 1e-12 and top_overlap(a, a) == 1.0
    assert top_overlap(a, -a) == 0.0


def test_measure_skips_sketches_as_wide_as_the_gradient_and_noise_grows_as_k_shrinks():
    rng = np.random.default_rng(1)
    d, slices = 64, [("l0", slice(0, 32)), ("l1", slice(32, 64))]
    T, V = [rng.standard_normal((300, d))], [rng.standard_normal((4, d))]
    res = measure(T, V, [1.0], ["s"] * 4, slices, (Setting(k=4), Setting(k=32), Setting(k=64)), seeds=(0, 1))
    assert set(res) == {"exact", "sparse_jl k=4", "sparse_jl k=32"} and res["exact"]["spearman"] == 1.0
    assert res["sparse_jl k=4"]["spearman"] < res["sparse_jl k=32"]["spearman"] < 1.0


def test_bench_fidelity_on_a_micro_model(micro_model, monkeypatch, tmp_path):
    from curation.bench.fidelity import run_fidelity, summary
    monkeypatch.setenv("CURATION_HOME", str(tmp_path / "home"))
    res = run_fidelity(str(micro_model), sample=150, seeds=(0,), settings=(Setting(k=64),), quick=True, log=lambda m: None)
    assert res["default"] == "exact" and res["sample"] == 150 and res["d"] > 64
    for method in ("rose", "less"):
        r = res["methods"][method]
        assert r["exact"]["spearman"] == 1.0 and -1 <= r["sparse_jl k=64"]["spearman"] < 1
    assert res["spearman"] == {k: v["spearman"] for k, v in res["methods"]["rose"].items()}
    assert "sparse_jl k=64" in summary(res)


def test_presets_fidelity_compares_every_preset_with_the_default_by_real_runs(micro_model, ws, monkeypatch):
    """Without the shared data both samples are skipped (said so) and a demo sample is used; the
    default agrees with itself exactly and a cheaper preset gets its own numbers."""
    import curation.bench.quality_suites as suites
    from curation.bench.fidelity import presets_summary, run_preset_fidelity
    from curation.config import Preset

    monkeypatch.setattr(suites, "T0_ROOT", ws.home / "absent-t0")
    monkeypatch.setattr(suites, "ROSE_ROOT", ws.home / "absent-rose")
    presets = {"default": Preset("default", {}, ""),
               "cheap": Preset("cheap", {"checkpoints": 1, "lora_layers": 1, "length_quantile": 0.9}, "")}
    res = run_preset_fidelity(str(micro_model), n=40, presets=presets, log=lambda m: None)
    assert list(res["samples"]) == ["demo"] and any("t0 sample skipped" in n for n in res["notes"])
    for m in ("rose", "less"):
        assert res["presets"]["default"][m]["spearman"] == pytest.approx(1.0)
        assert res["presets"]["default"][m]["top5_overlap"] == 1.0
        assert -1 <= res["presets"]["cheap"][m]["spearman"] < 1 and 0 <= res["presets"]["cheap"][m]["top5_overlap"] <= 1
    assert res["samples"]["demo"]["cheap"]["train_features_s"] > 0
    assert "cheap" in presets_summary(res)


def test_presets_fidelity_can_take_one_sample_only(monkeypatch, tmp_path):
    """`bench fidelity --presets --suite prefs` builds the prefs sample only (the t0 one is not even
    looked for); an unknown sample is refused."""
    import curation.bench.quality_suites as suites
    from curation.bench.fidelity import preset_samples
    from curation.errors import CurationError

    monkeypatch.setattr(suites, "T0_ROOT", tmp_path / "absent-t0")
    monkeypatch.setattr(suites, "ROSE_ROOT", tmp_path / "absent-rose")
    _, both = preset_samples(8, lambda m: None)
    assert any("t0 sample skipped" in n for n in both) and any("prefs sample skipped" in n for n in both)
    _, prefs_only = preset_samples(8, lambda m: None, only="prefs")
    assert not any("t0" in n.split()[0] for n in prefs_only) and any("prefs sample skipped" in n for n in prefs_only)
    with pytest.raises(CurationError, match="t0 or prefs"):
        preset_samples(8, lambda m: None, only="synthetic")
