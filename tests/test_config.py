"""Run configuration: dict round trip, file loading, refusal of unknown or invalid settings."""

from __future__ import annotations

import json

import pytest

from curation.config import FeatureConfig, ScoreConfig, SelectConfig
from curation.errors import CurationError
from curation.methods import REGISTRY, Method


def test_round_trip_through_dict_and_files(tmp_path):
    cfg = ScoreConfig(method="less", beta=0.2, features=FeatureConfig(k=1024), select=SelectConfig(percent=None, n=7),
                      options={"samples": 4})
    assert ScoreConfig.from_dict(cfg.to_dict()) == cfg
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert ScoreConfig.from_file(tmp_path / "c.json") == cfg
    (tmp_path / "c.toml").write_text('method = "less"\n[features]\nk = 512\n[select]\npercent = 10\n')
    loaded = ScoreConfig.from_file(tmp_path / "c.toml")
    assert (loaded.method, loaded.features.k, loaded.select.percent) == ("less", 512, 10)


@pytest.mark.parametrize("bad", [{"methd": "rose"}, {"features": {"kk": 3}}, {"select": {"percent": 0}},
                                 {"select": {"percent": 5, "n": 3}}, {"features": {"projector": "magic"}}])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(CurationError):
        ScoreConfig.from_dict(bad)


def test_every_registered_method_honours_the_interface():
    import inspect
    base = {name: inspect.signature(getattr(Method, name)) for name in ("score", "explain")}
    assert {"rose", "less"} <= set(REGISTRY)
    for name, cls in REGISTRY.items():
        assert cls.name == name and issubclass(cls, Method)
        for meth, sig in base.items():
            assert list(inspect.signature(getattr(cls, meth)).parameters) == list(sig.parameters), (name, meth)


def test_for_method_drops_the_other_methods_options():
    from curation.config import ScoreConfig
    cfg = ScoreConfig(method="nice", options={"reward": "number"})
    assert cfg.for_method("nice") is cfg
    other = cfg.for_method("bm25")
    assert other.method == "bm25" and other.options == {} and cfg.options == {"reward": "number"}


def test_feature_autocast_is_bf16_on_cuda_only_by_default():
    from curation.config import FeatureConfig
    assert FeatureConfig().autocast_for("cuda") == "bfloat16" and FeatureConfig().autocast_for("cpu") is None
    assert FeatureConfig(autocast="off").autocast_for("cuda") is None
    assert FeatureConfig(autocast="bfloat16").autocast_for("cpu") == "bfloat16"
    with pytest.raises(CurationError, match="autocast"):
        FeatureConfig(autocast="fp8")


def test_threads_auto_takes_the_cores_the_load_leaves_free(monkeypatch):
    """Issue 20, item 5: an idle 2-core machine uses both cores, a loaded one keeps to one."""
    from curation import config as config_mod
    from curation.config import ScoreConfig, free_threads

    assert [free_threads(2, load) for load in (0.0, 0.3, 0.6, 1.4, 5.0)] == [2, 2, 1, 1, 1]
    assert free_threads(16, 3.2) == 13 and free_threads(1, 0.0) == 1
    cfg = ScoreConfig()
    assert cfg.threads == "auto" and ScoreConfig.from_dict(cfg.to_dict()).threads == "auto"
    monkeypatch.setenv("CURATION_THREADS", "3")
    assert cfg.thread_plan() == {"setting": "auto", "threads": 3, "from": "CURATION_THREADS"}
    monkeypatch.delenv("CURATION_THREADS")
    monkeypatch.setattr(config_mod, "machine_load", lambda: (2, 0.1))
    assert cfg.thread_plan() == {"setting": "auto", "threads": 2, "cores": 2, "load1": 0.1}
    monkeypatch.setattr(config_mod, "machine_load", lambda: (2, 1.7))
    assert cfg.thread_plan()["threads"] == 1
    assert ScoreConfig(threads=3).thread_plan() == {"setting": 3, "threads": 3}
    for bad in (0, "many", 1.5, True):
        with pytest.raises(CurationError, match="threads must be"):
            ScoreConfig(threads=bad)


def test_a_run_records_the_threads_it_used(ws):
    from curation.data.demo import ensure_demo
    from curation.data.store import Run, Store
    from curation.runs.execute import create_run, execute_run

    store = Store.open(ws)
    ensure_demo(store)
    run_id = create_run(store, "demo", "demo", ScoreConfig(method="bm25"), ws)
    execute_run(store, run_id, ws)
    with store.session() as s:
        used = s.get(Run, run_id).meta["threads"]
    assert used == {"setting": "auto", "threads": 1, "from": "CURATION_THREADS"}  # conftest pins it
