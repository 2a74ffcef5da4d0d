"""Objectives against independent hand computations (METHODS.md §0-§3)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from curation.engine.objectives import (
    Batch,
    DPOObjective,
    Objective,
    PolicyGradientObjective,
    SFTObjective,
    collate,
    sampled_item,
    token_logprobs,
)


def manual_logprob(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed response log-prob of one unpadded sequence, written out the plain way."""
    logits = model(input_ids=ids[None]).logits[0].double()
    logp = logits[:-1].log_softmax(-1)
    targets = labels[1:]
    keep = targets != -100
    return logp[keep].gather(1, targets[keep][:, None]).sum()


def rows_of(item: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The unpadded (input_ids, labels) rows of a single-item batch."""
    out = []
    for ids, mask, labels in zip(item.input_ids, item.attention_mask, item.labels):
        n = int(mask.sum())
        out.append((ids[:n], labels[:n]))
    return out


def lora_grad(model, scalar: torch.Tensor) -> torch.Tensor:
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, params)])


def without_adapter(model):
    """An independent reference model: a deep copy whose LoRA B factors are zero."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if "lora_B" in name:
                param.zero_()
    return ref


def test_token_logprobs_padded_equals_unpadded(tiny_model64, items):
    batch_items = items.sft(5)
    batch = collate(batch_items)
    sum_logp, n_tokens = token_logprobs(tiny_model64, batch.input_ids, batch.attention_mask, batch.labels)
    for i, item in enumerate(batch_items):
        (ids, labels), = rows_of(item)
        assert torch.allclose(sum_logp[i], manual_logprob(tiny_model64, ids, labels), rtol=1e-10)
        assert n_tokens[i] == (labels[1:] != -100).sum()


def test_sft_loss_is_mean_response_cross_entropy(tiny_model64, items):
    batch_items = items.sft(4)
    losses = SFTObjective().loss(tiny_model64, collate(batch_items))
    for loss, item in zip(losses, batch_items):
        (ids, labels), = rows_of(item)
        logits = tiny_model64(input_ids=ids[None]).logits[0]
        expected = F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100)  # HF's per-example loss
        assert torch.allclose(loss, expected, rtol=1e-10)


def test_dpo_loss_matches_hand_computation(tiny_model64, items):
    """L = -log σ(β (h_w - h_l)); π_ref computed on an independent adapter-free copy."""
    pairs, beta = items.pairs(3), 0.1
    losses = DPOObjective(beta).loss(tiny_model64, collate(pairs))
    ref = without_adapter(tiny_model64)
    for loss, pair in zip(losses, pairs):
        (yw, lw), (yl, ll) = rows_of(pair)
        h_w = manual_logprob(tiny_model64, yw, lw) - manual_logprob(ref, yw, lw)
        h_l = manual_logprob(tiny_model64, yl, ll) - manual_logprob(ref, yl, ll)
        expected = -torch.log(torch.sigmoid(beta * (h_w - h_l)))
        assert torch.allclose(loss, expected, rtol=1e-10)


def test_dpo_gradient_matches_analytic_formula(tiny_model64, items):
    """∇L = -β σ(β (h_l - h_w)) (∇log πθ(y_w|x) - ∇log πθ(y_l|x)), the ∇log π by autograd."""
    objective = DPOObjective(beta=0.5)  # a larger β makes the coefficient far from β/2
    for pair in items.pairs(2):
        margin = objective.margin(tiny_model64, pair)
        grad_loss = lora_grad(tiny_model64, objective.loss(tiny_model64, pair).sum())
        (yw, lw), (yl, ll) = rows_of(pair)
        grad_w = lora_grad(tiny_model64, manual_logprob(tiny_model64, yw, lw))
        grad_l = lora_grad(tiny_model64, manual_logprob(tiny_model64, yl, ll))
        coefficient = -objective.beta * torch.sigmoid(-objective.beta * margin.detach())
        assert torch.allclose(objective.grad_coefficient(margin.detach()), coefficient)
        assert torch.allclose(grad_loss, coefficient * (grad_w - grad_l), rtol=1e-8, atol=1e-12)


def test_dpo_reference_ignores_the_adapter(tiny_model64, items):
    """Perturbing LoRA B changes log πθ but leaves log πref unchanged."""
    pair = items.pairs(1)[0]
    objective = DPOObjective()
    args = (pair.input_ids, pair.attention_mask, pair.labels)

    def logps():
        with torch.no_grad():
            policy, _ = token_logprobs(tiny_model64, *args)
            with tiny_model64.disable_adapter():
                ref, _ = token_logprobs(tiny_model64, *args)
            return policy, ref, objective.implicit_rewards(tiny_model64, pair)

    policy0, ref0, h0 = logps()
    with torch.no_grad():
        for name, param in tiny_model64.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param))
    policy1, ref1, h1 = logps()
    assert torch.equal(ref0, ref1)
    assert not torch.allclose(policy0, policy1)
    assert torch.allclose(h1, policy1 - ref1)


def test_dpo_refuses_bad_layout(tiny_model64, items):
    batch = collate(items.sft(2))
    with pytest.raises(ValueError, match="row_weight"):
        DPOObjective().loss(tiny_model64, batch)
    batch.row_weight = torch.tensor([1.0, 1.0])
    with pytest.raises(ValueError, match="exactly one"):
        DPOObjective().loss(tiny_model64, batch)


def test_policy_gradient_is_reward_weighted_nll_gradient(tiny_model64, items):
    """v(x) = Σ_j r_j ∇[-log πθ(y_j|x)], each term computed directly."""
    item = items.sampled(1, m=5)[0]
    got = lora_grad(tiny_model64, PolicyGradientObjective().loss(tiny_model64, item).sum())
    expected = sum(r * lora_grad(tiny_model64, -manual_logprob(tiny_model64, ids, labels))
                   for r, (ids, labels) in zip(item.row_weight.tolist(), rows_of(item)))
    assert torch.allclose(got, expected, rtol=1e-8, atol=1e-12)


def test_policy_gradient_variants_keep_and_average(items):
    seqs = [items.sequence() for _ in range(4)]
    batch = collate([sampled_item(seqs, [0.5, -1.0, 2.0, 0.0]), sampled_item(seqs[:2], [-1.0, -2.0])])
    weights = lambda variant, k=10: PolicyGradientObjective(variant, k).row_weights(batch).tolist()  # noqa: E731
    assert weights("sum") == [0.5, -1.0, 2.0, 0.0, -1.0, -2.0]
    assert weights("rejection") == [0.25, 0.0, 1.0, 0.0, 0.0, 0.0]  # kept r > 0, averaged per item
    assert weights("topk", 2) == [0.25, 0.0, 1.0, 0.0, -0.5, -1.0]  # two best per item, averaged


@pytest.mark.parametrize("objective", [SFTObjective(), DPOObjective(0.2), PolicyGradientObjective("topk", 3)])
def test_objectives_honour_the_interface(objective, tiny_model, items):
    """Every objective: spec round trip, and one loss per item from loss(model, batch)."""
    assert Objective.from_spec(objective.spec()).spec() == objective.spec()
    make = {"sft": items.sft, "dpo": items.pairs, "policy_gradient": items.sampled}[objective.name]
    batch = collate(make(3))
    assert objective.loss(tiny_model, batch).shape == (3,)


def test_collate_and_split_round_trip(items):
    originals = items.pairs(2) + items.pairs(1)
    batch = collate(originals)
    assert batch.n_items == 3 and batch.item_index.tolist() == [0, 0, 1, 1, 2, 2]
    for original, back in zip(originals, batch.split()):
        assert torch.equal(original.input_ids, back.input_ids)
        assert torch.equal(original.labels, back.labels)
        assert torch.equal(original.row_weight, back.row_weight)


def test_per_token_dpo_is_the_length_normalised_implicit_reward(tiny_model, items):
    """per_token=True divides each side's h(y) by its response tokens (a documented variant)."""
    from curation.engine.objectives import token_logprobs
    batch = collate(items.pairs(3))
    summed = DPOObjective().implicit_rewards(tiny_model, batch)
    per_token = DPOObjective(per_token=True).implicit_rewards(tiny_model, batch)
    _, count = token_logprobs(tiny_model, batch.input_ids, batch.attention_mask, batch.labels)
    assert torch.allclose(per_token, summed / count, atol=1e-6)
    assert DPOObjective(per_token=True).spec()["per_token"] and "per_token" not in DPOObjective().spec()


def test_checkpoint_weighting_rules():
    from curation.errors import CurationError
    from curation.methods.gradient import checkpoint_weighting
    assert checkpoint_weighting("lr", [3.0, 1.0]) == [3.0, 1.0]
    assert checkpoint_weighting("uniform", [3.0, 1.0]) == [1.0, 1.0]
    assert checkpoint_weighting("last", [3.0, 1.0, 2.0]) == [0.0, 0.0, 1.0]
    with pytest.raises(CurationError, match="checkpoint_weights"):
        checkpoint_weighting("first", [1.0])
