"""Episodes of the RAISE selector: roll out a fine-tune, then one PPO update; saved per episode.

A rollout walks the T steps of one fine-tune in decisions of M steps: build the 39-number
state of every candidate, score it with the actor, pick M·b per cluster (a Plackett-Luce
sample, or greedy), train on them b per cluster and step, then measure the validation loss;
the decision's reward is its drop in percent of the initial loss. The memory an episode keeps
is the pick counts before every decision (``[D, candidates]`` int16) and the picks.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from curation.engine.features import atomic_write
from curation.methods.ppo.config import Plan, RaiseConfig
from curation.methods.ppo.env import Examples, FineTuneEnv
from curation.methods.ppo.policy import (
    Actor,
    Critic,
    cluster_members,
    gae,
    normalise_advantages,
    ppo_clip_loss,
    step_log_probs,
    top_b,
)
from curation.methods.ppo.state import STATE_DIM, stage_of, state_matrix

SELECTOR_FILE = "selector.pt"


@dataclass
class Episode:
    """One rollout; ``picks[d][c]`` are candidate positions (into ``rows``) in pick order."""

    rows: Tensor  # [n_c] pool rows of the candidates
    stages: list[tuple[float, float]] = field(default_factory=list)
    picks: list[list[Tensor]] = field(default_factory=list)
    before: list[Tensor] = field(default_factory=list)  # [n_c] int16 pick counts before each decision
    logp: list[Tensor] = field(default_factory=list)  # [C] per decision
    values: list[float] = field(default_factory=list)
    summaries: list[Tensor] = field(default_factory=list)  # critic inputs per decision
    rewards: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # before the first decision and after each
    steps: list[Tensor] = field(default_factory=list)  # pool rows trained on at every step
    step_clusters: list[Tensor] = field(default_factory=list)
    snapshots: dict[int, Tensor] = field(default_factory=dict)  # step -> actor scores of the candidates


def episode_seed(seed: int, episode: int) -> int:
    """A seed per (run seed, episode): any episode replays alone, so resume needs no RNG stream."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def rollout(env: FineTuneEnv, actor: Actor, critic: Critic, static: Tensor, clusters: Tensor, rows: Tensor,
            plan: Plan, examples: Examples, ids: np.ndarray, scale: float, generator: torch.Generator | None,
            snapshot_at: Sequence[int] = (), tick: Callable[[], None] | None = None) -> Episode:
    """One fine-tune of ``plan.steps`` steps on the candidates ``rows`` (see module doc)."""
    env.reset()
    ep, b = Episode(rows=rows), plan.per_cluster
    members = cluster_members(clusters[rows])
    feats, picks_so_far = static[rows], torch.zeros(len(rows), dtype=torch.int16)
    ep.losses.append(env.initial_loss)
    for d in range(plan.decisions):
        start, end = plan.span(d)
        stage = stage_of(start, end, plan.steps)
        with torch.no_grad():
            scores = actor(state_matrix(feats, stage, picks_so_far))
            picks = top_b(scores, members, (end - start) * b, generator)
            summary = critic_summary(stage, ep.losses[-1] / env.initial_loss, picks_so_far)
            ep.logp.append(step_log_probs(scores, members, picks))
            ep.values.append(float(critic(summary)))
        if start in snapshot_at:
            ep.snapshots[start] = scores.clone()
        ep.stages.append(stage)
        ep.picks.append(picks)
        ep.before.append(picks_so_far.clone())
        ep.summaries.append(summary)
        for j in range(end - start):
            local = torch.cat([p[j * b:(j + 1) * b] for p in picks])
            if len(local):
                env.train_step(examples.get(ids[rows[local].numpy()].tolist()))
                picks_so_far[local] += 1
            ep.steps.append(rows[local])
            ep.step_clusters.append(clusters[rows[local]])
        ep.losses.append(env.val_loss())
        ep.rewards.append((ep.losses[-2] - ep.losses[-1]) / env.initial_loss * scale)
        if tick:
            tick()
    return ep


def critic_summary(stage: tuple[float, float], relative_loss: float, picks: Tensor) -> Tensor:
    """The critic's view of the run (`policy.CRITIC_INPUTS`)."""
    p = picks.float()
    return torch.tensor([stage[0], stage[1], relative_loss, float(p.mean()), float((p > 0).float().mean())])


class Selector:
    """Actor, critic, their optimizers and the bookkeeping that a resume needs."""

    def __init__(self, cfg: RaiseConfig, seed: int, n: int):
        torch.manual_seed(seed)
        self.actor = Actor(STATE_DIM, cfg.hidden, cfg.layers)
        self.critic = Critic(cfg.hidden, cfg.layers)
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=cfg.ppo_lr)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=cfg.ppo_lr)
        self.episode = 0  # finished episodes
        self.train_picks = np.zeros(n, np.int32)  # picks of every pool row over all training episodes
        self.history: list[dict] = []  # one summary per finished episode

    def state(self, fingerprint: dict) -> dict:
        return {"fingerprint": fingerprint, "episode": self.episode, "actor": self.actor.state_dict(),
                "critic": self.critic.state_dict(), "opt_actor": self.opt_actor.state_dict(),
                "opt_critic": self.opt_critic.state_dict(), "train_picks": torch.from_numpy(self.train_picks),
                "history": self.history}

    def save(self, folder: Path, fingerprint: dict) -> None:
        """Atomically: a kill leaves the previous episode's state or this one's."""
        buf = io.BytesIO()
        torch.save(self.state(fingerprint), buf)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / SELECTOR_FILE, lambda f: f.write(buf.getvalue()))

    def load(self, folder: Path, fingerprint: dict) -> bool:
        """Restore a saved state made with the same settings; False when there is none."""
        path = Path(folder) / SELECTOR_FILE
        if not path.is_file():
            return False
        state = torch.load(path, weights_only=True)
        if state["fingerprint"] != fingerprint:
            os.replace(path, path.with_suffix(".stale"))  # kept for inspection, never resumed from
            return False
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.opt_actor.load_state_dict(state["opt_actor"])
        self.opt_critic.load_state_dict(state["opt_critic"])
        self.episode, self.history = int(state["episode"]), list(state["history"])
        self.train_picks = state["train_picks"].numpy().copy()
        return True


def ppo_update(sel: Selector, static: Tensor, clusters: Tensor, ep: Episode, cfg: RaiseConfig) -> dict:
    """``cfg.ppo_epochs`` full-batch epochs of PPO-clip (actor) and value regression (critic)."""
    members = cluster_members(clusters[ep.rows])
    feats = static[ep.rows]
    rewards = torch.tensor(ep.rewards, dtype=torch.float32)
    values = torch.tensor(ep.values, dtype=torch.float32)
    adv, returns = gae(rewards, values, cfg.gamma, cfg.gae_lambda)
    adv = normalise_advantages(adv)
    logp_old = torch.stack(ep.logp)
    summaries = torch.stack(ep.summaries)
    for _ in range(cfg.ppo_epochs):
        logp_new = torch.stack([step_log_probs(sel.actor(state_matrix(feats, stage, before)), members, picks)
                                for stage, before, picks in zip(ep.stages, ep.before, ep.picks)])
        actor_loss = ppo_clip_loss(logp_new, logp_old, adv, cfg.clip)
        sel.opt_actor.zero_grad()
        actor_loss.backward()
        torch.nn.utils.clip_grad_norm_(sel.actor.parameters(), cfg.max_grad_norm)
        sel.opt_actor.step()
        value_loss = F.mse_loss(sel.critic(summaries), returns)
        sel.opt_critic.zero_grad()
        value_loss.backward()
        torch.nn.utils.clip_grad_norm_(sel.critic.parameters(), cfg.max_grad_norm)
        sel.opt_critic.step()
    return {"actor_loss": float(actor_loss.detach()), "value_loss": float(value_loss.detach())}
