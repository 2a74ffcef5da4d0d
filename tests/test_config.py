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
