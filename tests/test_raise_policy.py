"""RAISE's selector maths against hand-worked numbers: Plackett-Luce, cluster top-b, GAE, PPO-clip,
the static score of a schedule, and the plan/config rules."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from curation.errors import CurationError
from curation.methods.ppo.config import RaiseConfig, make_plan
from curation.methods.ppo.policy import (
    cluster_members,
    gae,
    normalise_advantages,
    pl_log_prob,
    ppo_clip_loss,
    step_log_probs,
    top_b,
)
from curation.methods.ppo.schedule import Schedule


def test_plackett_luce_of_an_ordered_pick_by_hand():
    # weights e^s = 1, 2, 3: P(2 then 1) = 3/6 * 2/(6-3) = 1/3
    scores = torch.log(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    got = pl_log_prob(scores, torch.tensor([0, 1, 2]), torch.tensor([2, 1]))
    assert float(got) == pytest.approx(math.log(1 / 3), abs=1e-12)
    # a cluster that is a subset of the rows: only its members compete (weights 1 and 3)
    assert float(pl_log_prob(scores, torch.tensor([0, 2]), torch.tensor([0]))) == pytest.approx(math.log(1 / 4))


def test_plackett_luce_sums_to_one_over_all_ordered_picks():
    scores = torch.tensor([0.3, -1.2, 2.0, 0.0, 0.7], dtype=torch.float64)
    rows = torch.tensor([0, 2, 3, 4])
    total = sum(math.exp(float(pl_log_prob(scores, rows, torch.tensor(p))))
                for p in itertools.permutations(rows.tolist(), 2))
    assert total == pytest.approx(1.0, abs=1e-12)


def test_gumbel_top_b_samples_the_plackett_luce_distribution():
    scores = torch.log(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    members = [torch.tensor([0, 1, 2])]
    gen = torch.Generator().manual_seed(0)
    n = 6000
    counts: dict[tuple, int] = {}
    for _ in range(n):
        pick = tuple(top_b(scores, members, 2, gen)[0].tolist())
        counts[pick] = counts.get(pick, 0) + 1
    for pick, c in counts.items():
        p = math.exp(float(pl_log_prob(scores, members[0], torch.tensor(pick))))
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n), (pick, c / n, p)
    assert len(counts) == 6


def test_greedy_top_b_stays_inside_each_cluster():
    clusters = torch.tensor([0, 1, 0, 1, 0, 2, 0])
    scores = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.5, -3.0, 0.7])
    members = cluster_members(clusters)
    assert [m.tolist() for m in members] == [[0, 2, 4, 6], [1, 3], [5]]
    picks = top_b(scores, members, 2)
    # cluster 0: 0.7 (row 6), then the tie 0.5 goes to the lower row (2); a cluster smaller than b gives all it has
    assert [p.tolist() for p in picks] == [[6, 2], [1, 3], [5]]
    lp = step_log_probs(scores, members, picks)
    assert lp.shape == (3,) and float(lp[2]) == pytest.approx(0.0)  # a lone member is picked surely


def test_gae_by_hand():
    rewards = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    values = torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64)
    adv, ret = gae(rewards, values, gamma=0.9, lam=0.8)
    # δ2 = 2 - 0.1 = 1.9; δ1 = 0 + 0.9*0.1 - 0.2 = -0.11; δ0 = 1 + 0.9*0.2 - 0.5 = 0.68
    # A2 = 1.9; A1 = -0.11 + 0.72*1.9 = 1.258; A0 = 0.68 + 0.72*1.258 = 1.58576
    np.testing.assert_allclose(adv.numpy(), [1.58576, 1.258, 1.9], atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), [2.08576, 1.458, 2.0], atol=1e-12)


def test_ppo_clip_loss_by_hand():
    ratios = torch.tensor([[1.5, 0.9], [0.5, 1.1]], dtype=torch.float64)
    old = torch.zeros(2, 2, dtype=torch.float64)
    new = torch.log(ratios).requires_grad_(True)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss = ppo_clip_loss(new, old, adv, clip=0.2)
    # step 0 (A=1): min(1.5, 1.2) = 1.2, min(0.9, 0.9) = 0.9; step 1 (A=-2): min(-1, -1.6) = -1.6, -2.2
    assert float(loss.detach()) == pytest.approx(-(1.2 + 0.9 - 1.6 - 2.2) / 4, abs=1e-12)
    loss.backward()
    # clipped terms carry no gradient; an unclipped one: d(-r A / 4)/d log r = -r A / 4
    np.testing.assert_allclose(new.grad.numpy(), [[0.0, -0.9 / 4], [0.0, 2.2 / 4]], atol=1e-12)


def test_advantage_normalisation():
    adv = normalise_advantages(torch.tensor([1.0, 2.0, 3.0]))
    assert float(adv.mean()) == pytest.approx(0.0, abs=1e-7) and float(adv.std()) == pytest.approx(1.0, abs=1e-6)
    assert normalise_advantages(torch.tensor([0.5])).tolist() == [0.5]


def test_schedule_scores_rank_by_count_then_earliness():
    ids = np.array([10, 11, 12, 13, 14])
    steps = np.array([[11, 12], [12, -1], [13, 11], [12, 13]])  # 12: 3x from step 0; 11: 2x from 0; 13: 2x from 2
    sched = Schedule(ids, steps, np.zeros_like(steps, dtype=np.int32), np.zeros(5), np.arange(4), np.array([0]),
                     np.array([[0.0, 0.0, 0.0, 0.0, 5.0]], np.float32))
    count, first = sched.counts_and_first()
    assert count.tolist() == [0, 2, 3, 2, 0] and first.tolist() == [-1, 0, 0, 2, -1]
    s = sched.scores()
    assert s[2] == pytest.approx(3 + 1 - 1 / 5) and s[1] == pytest.approx(2 + 1 - 1 / 5)
    assert s[3] == pytest.approx(2 + 1 - 3 / 5)
    assert list(np.argsort(-s)) == [2, 1, 3, 4, 0]  # unpicked: by the actor's score (14 above 10), below 1
    assert 0 <= s[0] < s[4] < 1
    assert sched.history(13) == [{"step": 3, "slot": 1, "cluster": 0}, {"step": 4, "slot": 2, "cluster": 0}]


def test_plan_follows_the_budget():
    cfg = RaiseConfig()
    at5, at1 = make_plan(cfg, 3000, 5.0, None), make_plan(cfg, 3000, 1.0, None)
    assert (at5.clusters, at5.per_cluster, at5.batch, at5.budget, at5.steps) == (4, 2, 8, 150, 38)
    assert (at1.clusters, at1.per_cluster, at1.steps) == (2, 4, 8)
    assert at5.episode_n == 512 and make_plan(cfg, 100_000, 5.0, None).episode_n == 5000
    every = make_plan(RaiseConfig(select_every=4), 3000, 5.0, None)
    assert every.decisions == 10 and every.span(9) == (36, 38)


def test_config_round_trip_and_refusals():
    cfg = RaiseConfig(episodes=3, clusters=2, reward="sft")
    assert RaiseConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(CurationError, match="unknown option"):
        RaiseConfig.from_dict({"episode": 3})
    with pytest.raises(CurationError, match="reward"):
        RaiseConfig(reward="bleu")


class FakeEnv:
    """A fine-tune stand-in: each step lowers the 'validation loss' by the share of good rows."""

    def __init__(self, good: np.ndarray):
        self.good, self.initial_loss, self.loss = good, 1.0, 1.0

    def reset(self) -> None:
        self.loss = 1.0

    def train_step(self, encoded) -> float:
        self.loss -= 0.01 * float(np.mean([self.good[e["row"]] for e in encoded]))
        return 0.0

    def val_loss(self) -> float:
        return self.loss


class RowExamples:
    def get(self, ids):
        return [{"row": int(i)} for i in ids]


def selector_setup(n: int = 60, seed: int = 0):
    from curation.methods.ppo.state import STATIC_DIM
    rng = np.random.default_rng(seed)
    static = torch.from_numpy(rng.standard_normal((n, STATIC_DIM)).astype(np.float32))
    good = (static[:, 0] > 0).numpy().astype(float)  # the 'prompt_tokens' column tells good rows
    clusters = torch.from_numpy(np.arange(n) % 3)
    return static, good, clusters


def test_rollout_batches_are_b_per_cluster_and_decisions_span_m_steps():
    from curation.methods.ppo.config import Plan
    from curation.methods.ppo.train import Selector, rollout
    static, good, clusters = selector_setup()
    clusters[:3] = torch.tensor([0, 1, 2])
    clusters[3:] = torch.where(clusters[3:] == 2, torch.tensor(0), clusters[3:])  # cluster 2: one row only
    plan = Plan(n=60, budget=6, clusters=3, per_cluster=2, steps=5, every=2, episode_n=60)
    sel = Selector(RaiseConfig(), seed=0, n=60)
    ep = rollout(FakeEnv(good), sel.actor, sel.critic, static, clusters, torch.arange(60), plan, RowExamples(),
                 np.arange(60), 100.0, torch.Generator().manual_seed(0))
    assert len(ep.picks) == plan.decisions == 3 and len(ep.steps) == 5 and len(ep.rewards) == 3
    assert [len(p) for p in ep.picks[0]] == [4, 4, 1]  # M·b per cluster, all a small cluster has
    per_step = [sorted(Counter(c.tolist()).items()) for c in ep.step_clusters]
    assert per_step[0] == [(0, 2), (1, 2), (2, 1)] and per_step[1] == [(0, 2), (1, 2)]  # cluster 2 used up
    assert ep.stages == [(0.0, 0.4), (0.4, 0.8), (0.8, 1.0)]
    assert ep.before[1].sum() == 9  # 4 + 4 + 1 picks in the first decision
    assert all(int((ep.before[d + 1] - ep.before[d]).max()) == 1 for d in range(2))  # no repeat within one


def test_ppo_learns_to_pick_the_rewarded_rows():
    from curation.methods.ppo.config import Plan
    from curation.methods.ppo.train import Selector, ppo_update, rollout
    static, good, clusters = selector_setup()
    plan = Plan(n=60, budget=6, clusters=3, per_cluster=2, steps=4, every=1, episode_n=60)
    cfg = RaiseConfig(ppo_lr=1e-2, ppo_epochs=4)
    sel = Selector(cfg, seed=0, n=60)

    def good_share(gen_seed: int) -> float:
        ep = rollout(FakeEnv(good), sel.actor, sel.critic, static, clusters, torch.arange(60), plan, RowExamples(),
                     np.arange(60), 100.0, torch.Generator().manual_seed(gen_seed))
        return float(np.mean([good[r] for s in ep.steps for r in s.tolist()]))
    before = np.mean([good_share(1000 + i) for i in range(5)])
    for k in range(25):
        ep = rollout(FakeEnv(good), sel.actor, sel.critic, static, clusters, torch.arange(60), plan, RowExamples(),
                     np.arange(60), 100.0, torch.Generator().manual_seed(k))
        ppo_update(sel, static, clusters, ep, cfg)
    after = np.mean([good_share(1000 + i) for i in range(5)])
    assert after > before + 0.25, (before, after)
