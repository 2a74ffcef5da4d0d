"""Cheaper gradient features (issue 20): fewer checkpoints, top-L LoRA layers, a pool-chosen
max length, and the presets that combine them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from curation.config import PRESETS, FeatureConfig, ScoreConfig
from curation.engine.grads import PerSampleGradients, featurize, layer_index, top_layers
from curation.engine.objectives import SFTObjective, collate
from curation.engine.projection import IdentityProjector
from curation.errors import CurationError
from curation.methods.gradient import choose_max_length, top_layout, used_checkpoints

LAYERS, TOP = 4, 2


def _layout(model) -> list[tuple[str, int]]:
    return [(n, p.numel()) for n, p in model.named_parameters() if "lora_" in n]


def _moments(model, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.01,
                torch.rand(p.shape, generator=gen, dtype=p.dtype) * 1e-3)
            for n, p in model.named_parameters() if "lora_" in n}


def test_top_layer_features_equal_the_full_features_restricted_to_those_layers(make_model, items):
    model = make_model(torch.float64, layers=LAYERS)
    batch = collate(items.sft(6), 0)
    with PerSampleGradients(model) as psg:
        full = psg.compute(SFTObjective(), batch)
    with top_layers(model, TOP), PerSampleGradients(model) as psg:
        top = psg.compute(SFTObjective(), batch)
    assert set(top) == {n for n in full if layer_index(n) >= LAYERS - TOP} and len(top) == 4 * 2 * TOP
    for name, g in top.items():
        assert torch.allclose(g, full[name], rtol=0, atol=1e-10), name

    # Through the whole train-side path: Adam direction, then the exact (identity) projection.
    layout, moments = _layout(model), _moments(model)
    restricted = top_layout(layout, model, TOP)
    feats_full = featurize(model, [batch], SFTObjective(), IdentityProjector(sum(d for _, d in layout), 0, layout),
                           moments, normalize=False)
    with top_layers(model, TOP):
        proj = IdentityProjector(sum(d for _, d in restricted), 0, restricted)
        feats_top = featurize(model, [batch], SFTObjective(), proj, moments, normalize=False)
    cols = np.concatenate([np.arange(sl.start, sl.stop) for name, sl in
                           IdentityProjector(sum(d for _, d in layout), 0, layout).slices()
                           if name in dict(restricted)])
    np.testing.assert_allclose(feats_top, feats_full[:, cols], rtol=0, atol=1e-10)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # restored on exit


def test_no_autograd_node_below_the_lowest_lora_layer(make_model, items):
    model = make_model(torch.float64, layers=LAYERS)
    stack = model.base_model.model.model.layers
    seen: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out[0] if isinstance(out, tuple)
                                                                                 else out))
             for i, layer in enumerate(stack)]
    embeds = model.base_model.model.model.embed_tokens.register_forward_hook(
        lambda m, a, out: seen.__setitem__(-1, out))
    try:
        with top_layers(model, TOP):
            loss = SFTObjective().loss(model, collate(items.sft(3), 0)).sum()
            reached = _graph_leaves(loss.grad_fn)
    finally:
        for h in [*hooks, embeds]:
            h.remove()
    lowest = LAYERS - TOP
    for i in range(-1, lowest):  # the embedding and every layer below: no graph at all
        assert not seen[i].requires_grad and seen[i].grad_fn is None, i
    assert seen[lowest].requires_grad
    names = {id(p): n for n, p in model.named_parameters()}
    leaves = {names[id(v)] for v in reached}
    assert leaves and all(layer_index(n) >= lowest and "lora_" in n for n in leaves), sorted(leaves)


def _graph_leaves(fn) -> list[torch.Tensor]:
    """Every leaf tensor (AccumulateGrad) the backward from ``fn`` would reach."""
    out, stack, done = [], [fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in done:
            continue
        done.add(node)
        if hasattr(node, "variable"):
            out.append(node.variable)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return out


def test_top_layers_zero_or_the_whole_stack_changes_nothing(make_model, items):
    model = make_model(torch.float64, layers=LAYERS)
    for top in (0, LAYERS, LAYERS + 3):
        with top_layers(model, top), PerSampleGradients(model) as psg:
            assert len(psg.params) == 4 * 2 * LAYERS


def test_fewer_checkpoints_keep_the_last_and_renormalise_their_lr_weights():
    from curation.engine.influence import checkpoint_weights
    from curation.engine.warmup import Checkpoint

    ckpts = [Checkpoint(e, None, lr) for e, lr in zip(range(1, 5), (4e-4, 3e-4, 2e-4, 1e-4))]
    assert [c.epoch for c in used_checkpoints(ckpts, 2)] == [3, 4]
    assert used_checkpoints(ckpts, 0) == ckpts
    np.testing.assert_allclose(checkpoint_weights([c.lr for c in used_checkpoints(ckpts, 2)]), [2 / 3, 1 / 3])


def test_max_length_is_the_quantile_rounded_up_to_32_and_capped():
    lengths = list(range(1, 101))  # 95th percentile 95.05
    assert choose_max_length(lengths, 0.95, 512) == 96
    assert choose_max_length(lengths, 0.95, 64) == 64
    assert choose_max_length([3, 4], 0.5, 512) == 32


def test_presets_change_the_feature_set_key_and_are_recorded():
    from curation.engine.featuresets import FeatureSetKey

    base = dict(model="m", model_fingerprint="f", tokenizer_hash="t", warmup="w", checkpoints=("epoch_4",),
                max_length=128, projector={"type": "sparse_jl", "k": 8, "seed": 0}, k=8, dtype="float16")
    keys = {}
    for name in PRESETS:
        cfg = ScoreConfig().apply_preset(name)
        keys[name] = FeatureSetKey(**base, cheap=cfg.features.cheap_options() or None)
        assert ScoreConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).preset == name
    assert len({k.id for k in keys.values()}) == len(PRESETS)
    assert "cheap" not in keys["default"].to_dict()  # full features keep the ids they had
    assert FeatureSetKey.from_dict(keys["fast"].to_dict()) == keys["fast"]
    with pytest.raises(CurationError, match="unknown preset 'quick'.*default, fast"):
        ScoreConfig().apply_preset("quick")
    back = ScoreConfig().apply_preset("fast").apply_preset("default")
    assert back.features == FeatureConfig() and back.preset == "default"


def test_a_preset_run_records_its_options_and_uses_its_own_features(ws, tmp_path, micro_model):
    """A real run on the micro model: a run with cheap options gets another feature set than
    the full one, scores from the one checkpoint it used and says how many examples it cut."""
    from curation.config import SelectConfig
    from curation.data.imports import import_pool, import_prefs
    from curation.data.store import Run, Store
    from curation.engine.model import ModelConfig
    from curation.engine.warmup import WarmupConfig
    from curation.runs.execute import create_run, execute_run

    rows = [{"messages": [{"role": "user", "content": f"Add {i} and {i + 1}."},
                          {"role": "assistant", "content": f"{i} plus {i + 1} is {2 * i + 1}." * (1 + i % 5)}]}
            for i in range(40)]
    (tmp_path / "pool.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prefs = [{"prompt": "Add 2 and 3.", "chosen": "2 plus 3 is 5.", "rejected": "It is windy."}] * 2
    (tmp_path / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in prefs) + "\n")
    store = Store.open(ws)
    import_pool(store, tmp_path / "pool.jsonl", name="p")
    import_prefs(store, tmp_path / "prefs.jsonl", name="q")
    metas = {}
    for name in ("default", "cheap"):
        cfg = ScoreConfig(model=ModelConfig(name_or_path=str(micro_model), max_length=128),
                          warmup=WarmupConfig(lr=1e-3, max_length=128, epochs=2), select=SelectConfig(percent=25))
        if name == "cheap":
            cfg.features.checkpoints, cfg.features.lora_layers, cfg.features.length_quantile = 1, 1, 0.5
            cfg.preset = "fast"  # what apply_preset records (the options are the micro model's own)
        run_id = create_run(store, "p", "q", cfg, ws=ws)
        execute_run(store, run_id, ws=ws)
        with store.session() as s:
            run = s.get(Run, run_id)
            assert run.status == "done", run.error
            metas[name] = (run.meta, run.config)
    full, cheap = metas["default"][0], metas["cheap"][0]
    assert cheap["features"]["id"] != full["features"]["id"] and not cheap["features"]["reused"]
    assert len(full["checkpoint_lrs"]) == 2 and cheap["checkpoint_lrs"] == full["checkpoint_lrs"][-1:]
    assert metas["cheap"][1]["preset"] == "fast" and cheap["preset"] == "fast"
    length = cheap["cheap_features"]["length"]
    assert length["max_length"] == 64 and 0 < length["cut"] < 40 and length["of"] == 40
    assert cheap["warmup"]["key"] == full["warmup"]["key"]  # the warmup is shared, not redone


def test_score_preset_option_sets_the_features_over_the_model_defaults(tmp_path, monkeypatch):
    from curation.cli import _score_config, make_parser
    monkeypatch.setenv("CURATION_HOME", str(tmp_path))
    args = make_parser().parse_args(["score", "--pool", "p", "--model", "smollm2", "--preset", "fast"])
    cfg = _score_config(args)
    assert cfg.preset == "fast" and cfg.features.cheap_options() == PRESETS["fast"].options
    assert cfg.model.max_length == 256  # the cap stays the model's default
    with pytest.raises(CurationError, match="unknown preset"):
        _score_config(make_parser().parse_args(["score", "--pool", "p", "--preset", "nope"]))
