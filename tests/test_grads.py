"""Per-example gradients: batched == batch-size-1 reference; Adam direction; projected features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curation.engine.grads import (
    PerSampleGradients,
    adam_direction,
    featurize,
    is_lora_param,
    iter_features,
    loop_gradients,
    per_item_weight_grad,
    selected_params,
)
from curation.engine.objectives import DPOObjective, PolicyGradientObjective, SFTObjective, collate
from curation.engine.projection import DenseRademacherProjector, IdentityProjector, SparseJLProjector

CASES = {  # objective, how to make its items
    "sft": (SFTObjective(), lambda items: items.sft(6)),
    "dpo": (DPOObjective(beta=0.3), lambda items: items.pairs(5)),
    "policy_gradient": (PolicyGradientObjective("topk", top_k=3), lambda items: items.sampled(3, m=4)),
}


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(grads.values()), dim=1)


def batched_gradients(model, objective, batch) -> dict[str, torch.Tensor]:
    with PerSampleGradients(model) as psg:
        return psg.compute(objective, batch)


def random_adam_state(model, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Moments of the size a warmup leaves: m ~ gradients, v ~ their squares."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in selected_params(model).items():
        m = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 1e-3
        state[name] = (m, m.square() * torch.rand(p.shape, generator=gen, dtype=p.dtype) * 3 + 1e-8)
    return state


def cosines(x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float64), dim=1)
    sims = (x @ x.T).numpy()
    return sims[np.triu_indices(len(sims), 1)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_equals_loop_fp32(case, tiny_model, items):
    """One batched backward gives the reference's per-item vectors (rel. error < 1e-5 in fp32)."""
    objective, make = CASES[case]
    item_list = make(items)
    batch = collate(item_list)
    assert not batch.attention_mask.all(), "the test needs padding"
    got, want = batched_gradients(tiny_model, objective, batch), loop_gradients(tiny_model, item_list, objective)
    assert list(got) == list(want) == list(selected_params(tiny_model))
    error = (flat(got) - flat(want)).norm(dim=1) / flat(want).norm(dim=1)
    assert error.max() < 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_equals_loop_fp64_every_layer(case, tiny_model64, items):
    objective, make = CASES[case]
    item_list = make(items)
    got = batched_gradients(tiny_model64, objective, collate(item_list))
    want = loop_gradients(tiny_model64, item_list, objective)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-9, atol=1e-13), name


def test_layers_reach_the_callback_once_each_and_grads_stay_untouched(tiny_model, items):
    batch, seen = collate(items.pairs(3)), {}
    with PerSampleGradients(tiny_model) as psg:
        assert psg.compute(DPOObjective(), batch, on_grad=seen.__setitem__) is None
    params = selected_params(tiny_model)
    assert sorted(seen) == sorted(params)
    assert all(seen[n].shape == (3, p.numel()) for n, p in params.items())
    assert all(p.grad is None for p in tiny_model.parameters())


def test_refuses_train_mode(tiny_model):
    tiny_model.train()
    with pytest.raises(ValueError, match="eval"):
        with PerSampleGradients(tiny_model):
            pass


def test_adam_direction_is_the_less_formula():
    """m' = 0.9·1 + 0.1·2 = 1.1; v' = 0.999·4 + 0.001·4 = 4; Γ = 1.1/sqrt(4 + 1e-8), no bias correction."""
    g, m, v = (torch.tensor([x], dtype=torch.float64) for x in (2.0, 1.0, 4.0))
    assert torch.allclose(adam_direction(g, m, v), torch.tensor([1.1 / (4 + 1e-8) ** 0.5], dtype=torch.float64))
    many = torch.randn(3, 4, dtype=torch.float64)  # a leading item dimension broadcasts over the moments
    m, v = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    assert torch.equal(adam_direction(many, m, v)[1], adam_direction(many[1], m, v))


def test_adam_direction_uses_the_moments_adamw_keeps():
    """One AdamW step from a known state updates the moments to exactly our m', v'; the
    parameter update differs only by AdamW's bias correction and eps outside the sqrt."""
    gen = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5, 3, generator=gen, dtype=torch.float64))
    lr, (beta1, beta2), eps = 0.01, (0.9, 0.999), 1e-8
    opt = torch.optim.AdamW([param], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=0.0)
    param.grad = torch.zeros_like(param)
    opt.step()  # creates the state; a zero gradient from zero moments leaves the parameter as is
    m0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    v0 = torch.rand(5, 3, generator=gen, dtype=torch.float64)
    state = opt.state[param]
    state["exp_avg"].copy_(m0)
    state["exp_avg_sq"].copy_(v0)
    state["step"].fill_(7)
    before, g = param.detach().clone(), torch.randn(5, 3, generator=gen, dtype=torch.float64)
    param.grad = g
    opt.step()
    m1, v1 = state["exp_avg"], state["exp_avg_sq"]
    assert torch.allclose(m1, beta1 * m0 + (1 - beta1) * g, rtol=1e-14)
    assert torch.allclose(v1, beta2 * v0 + (1 - beta2) * g * g, rtol=1e-14)
    assert torch.allclose(adam_direction(g, m0, v0, beta1, beta2, eps), m1 / torch.sqrt(v1 + eps), rtol=1e-14)
    bias1, bias2 = 1 - beta1**8, 1 - beta2**8
    assert torch.allclose(param.detach(), before - lr * (m1 / bias1) / ((v1 / bias2).sqrt() + eps), rtol=1e-12)


def test_features_are_independent_of_batching(tiny_model64, items):
    """Batch composition, batch size and the reference loop give the same features."""
    item_list, projector = items.sft(5), SparseJLProjector(512, seed=1)
    state = random_adam_state(tiny_model64)
    objective = SFTObjective()
    one_batch = featurize(tiny_model64, [collate(item_list)], objective, projector, state)
    chunks = featurize(tiny_model64, [collate(item_list[:2]), collate(item_list[2:])], objective, projector, state)
    loop = featurize(tiny_model64, [collate(item_list)], objective, projector, state, loop=True)
    assert one_batch.dtype == np.float32 and one_batch.shape == (5, 512)
    assert np.allclose(np.linalg.norm(one_batch, axis=1), 1, atol=1e-6)
    assert np.allclose(one_batch, chunks, atol=1e-6) and np.allclose(one_batch, loop, atol=1e-6)


def test_iter_features_yields_per_batch(tiny_model, items):
    batches = [collate(items.sft(2)), collate(items.sft(3))]
    parts = list(iter_features(tiny_model, batches, SFTObjective(), SparseJLProjector(64, 0)))
    assert [p.shape for p in parts] == [(2, 64), (3, 64)]


def test_missing_moments_are_reported_by_name(tiny_model, items):
    state = random_adam_state(tiny_model)
    missing = sorted(state)[0]
    del state[missing]
    with pytest.raises(KeyError, match="lora"):
        featurize(tiny_model, [collate(items.sft(1))], SFTObjective(), SparseJLProjector(8, 0), state)


@pytest.mark.parametrize("train_side", [True, False])
def test_projected_cosines_track_exact_cosines(train_side, make_model, items):
    """featurize() at k=4096 against exact cosines of the flattened full (Adam) gradients."""
    model = make_model(hidden=64)
    objective, item_list = (SFTObjective(), items.sft(20)) if train_side else (DPOObjective(), items.pairs(20))
    state = random_adam_state(model) if train_side else None
    exact = loop_gradients(model, item_list, objective)
    if state is not None:
        exact = {name: adam_direction(g, *(t.reshape(-1) for t in state[name])) for name, g in exact.items()}
    features = featurize(model, [collate(item_list[:8]), collate(item_list[8:])], objective,
                         SparseJLProjector(4096, seed=0), state)
    exact_cos, projected_cos = cosines(flat(exact)), cosines(features)
    assert np.corrcoef(exact_cos, projected_cos)[0, 1] > 0.95
    assert np.abs(exact_cos - projected_cos).max() < 0.1


def test_dense_reference_projector_gives_the_same_geometry(tiny_model, items):
    """The LESS-style dense projector and sparse JL agree on cosines (both are JL maps)."""
    batch = collate(items.sft(8))
    sparse = featurize(tiny_model, [batch], SFTObjective(), SparseJLProjector(2048, 0))
    dense = featurize(tiny_model, [batch], SFTObjective(), DenseRademacherProjector(2048, 0, block_size=1024))
    assert np.abs(cosines(sparse) - cosines(dense)).max() < 0.1


def test_default_filter_selects_only_lora_factors(tiny_model):
    names = list(selected_params(tiny_model))
    assert len(names) == 2 * 4 * 2  # layers x (q, k, v, o) x (A, B)
    assert all(is_lora_param(n, p) for n, p in tiny_model.named_parameters() if n in names)
    assert all(".lora_A." in n or ".lora_B." in n for n in names)


@pytest.mark.parametrize("train_side", [True, False])
def test_exact_features_are_the_normalised_full_gradient(train_side, tiny_model64, items):
    """IdentityProjector rows = the loop's flattened (Adam) gradient, layer by layer, L2-normalised."""
    objective, item_list = (SFTObjective(), items.sft(6)) if train_side else (DPOObjective(), items.pairs(6))
    state = random_adam_state(tiny_model64) if train_side else None
    exact = loop_gradients(tiny_model64, item_list, objective)
    if state is not None:
        exact = {name: adam_direction(g, *(t.reshape(-1) for t in state[name])) for name, g in exact.items()}
    names = sorted(exact)
    projector = IdentityProjector(sum(exact[n].shape[1] for n in names), 0, [(n, exact[n].shape[1]) for n in names])
    got = featurize(tiny_model64, [collate(item_list[:4]), collate(item_list[4:])], objective, projector, state)
    want = torch.cat([exact[n] for n in names], dim=1).double()
    want = (want / want.norm(dim=1, keepdim=True)).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5


def test_projecting_a_stored_exact_row_equals_projecting_the_gradient(tiny_model64, items):
    """What `bench fidelity` relies on: a sketch of stored exact rows (per layer slice) = the sketch
    the pipeline computes from the gradient, up to the L2 normalisation."""
    item_list, state = items.sft(4), random_adam_state(tiny_model64)
    layout = [(n, p.numel()) for n, p in sorted(selected_params(tiny_model64).items())]
    exact = featurize(tiny_model64, [collate(item_list)], SFTObjective(),
                      IdentityProjector(sum(d for _, d in layout), 0, layout), state)
    sketch = SparseJLProjector(256, seed=3)
    direct = featurize(tiny_model64, [collate(item_list)], SFTObjective(), sketch, state)
    ident = IdentityProjector(exact.shape[1], 0, layout)
    from_rows = sum(sketch.project(n, torch.from_numpy(exact[:, sl])) for n, sl in ident.slices())
    from_rows = (from_rows / from_rows.norm(dim=1, keepdim=True)).numpy()
    assert np.abs(from_rows - direct).max() < 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_autocast_forward_keeps_the_features(case, tiny_model, items):
    """The GPU path's bf16 autocast (run here on CPU, which supports it): features stay within
    bf16 rounding of the fp32 ones (row cosine > 0.99), per-item products stay float32, and
    nothing outside the forward runs in bf16 (the loop reference under fp32 is unchanged)."""
    objective, make = CASES[case]
    batch = collate(make(items))
    state = random_adam_state(tiny_model) if case == "sft" else None
    projector = SparseJLProjector(512, seed=3)
    fp32 = featurize(tiny_model, [batch], objective, projector, state)
    bf16 = featurize(tiny_model, [batch], objective, projector, state, autocast=torch.bfloat16)
    row_cos = (fp32 * bf16).sum(1)  # both L2-normalised
    assert bf16.dtype == np.float32 and np.all(row_cos > 0.99), row_cos
    assert not np.allclose(fp32, bf16, atol=1e-7)  # the autocast did act on the forward
    again = featurize(tiny_model, [batch], objective, projector, state)
    assert np.array_equal(fp32, again)  # no autocast leaked past the call


def test_rows_are_items_is_known_on_the_host(items):
    """The per-layer hook gets the row/item layout from the batch (decided on the host), so it
    never asks the device; a batch whose rows are not its items still sums them."""
    sft = collate(items.sft(3))
    assert sft.rows_are_items is True and sft.to("cpu").rows_are_items is True
    pairs = collate(items.sampled(2, m=3))  # 3 rows per item
    assert pairs.rows_are_items is False
    g, x = torch.randn(6, 4, 3), torch.randn(6, 4, 2)
    summed = per_item_weight_grad(g, x, pairs.item_index, 2, pairs.rows_are_items)
    assert torch.allclose(summed, per_item_weight_grad(g, x, pairs.item_index, 2))
    assert torch.allclose(summed[0], torch.einsum("bto,bti->oi", g[:3], x[:3]).reshape(-1), atol=1e-5)
