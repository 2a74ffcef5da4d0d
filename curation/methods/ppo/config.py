"""RAISE's options (``ScoreConfig.options`` of a ``raise`` run) and the sizes they imply.

Published (arXiv 2504.07282): K = 20 episodes; the best cluster count C is 1-2 at a 1% budget
and 4 at 5%; each episode is a short fine-tune from the initial model on a 5% subset; select
every M steps for large pools. Not published, chosen here (README, "RAISE"): the networks
(actor and critic: 2 tanh layers of 64), PPO's settings (the common defaults of Schulman et
al. 2017 / CleanRL: clip 0.2, γ 0.99, λ 0.95, 4 epochs per update, gradient norm 0.5; Adam
at 1e-3 rather than 3e-4 because 20 updates are few), B = 8 (the warmup's batch), a schedule
of two passes over the budget, episodes on at least 512 candidates, and a sampled final
schedule (the behaviour PPO optimised) rather than a greedy one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from curation.engine.model import config_from_dict
from curation.engine.select import budget_from
from curation.errors import CurationError


@dataclass
class RaiseConfig:
    episodes: int = 20  # K: PPO updates, one per short fine-tune (published)
    clusters: int | None = None  # C; None: 2 for budgets up to 1% of the pool, else 4 (published best)
    batch_size: int = 8  # B = C·b examples per step; b = max(1, B // C) per cluster
    steps: int | None = None  # T steps per fine-tune; None: ceil(passes · budget / B)
    passes: float = 2.0  # schedule length in passes over the budget (when steps is None)
    select_every: int = 1  # M: one decision (M·b per cluster) every M steps; bounds memory for big pools
    episode_percent: float = 5.0  # candidates of a training episode: a seeded share of the pool (published 5%)
    episode_min: int = 512  # ... but at least this many (small pools: a 5% subset is too few to choose from)
    reward: str = "dpo"  # validation loss: dpo (preference pairs) | sft (chosen responses)
    lr: float | None = None  # fine-tune lr; None: the run's warmup lr (the model's size-based default)
    hidden: int = 64  # width of actor and critic
    layers: int = 2  # hidden layers of actor and critic
    ppo_lr: float = 1e-3
    ppo_epochs: int = 4
    clip: float = 0.2
    gamma: float = 0.99
    gae_lambda: float = 0.95
    max_grad_norm: float = 0.5
    reward_scale: float = 100.0  # reward = drop of the validation loss in percent of the initial loss
    final: str = "sample"  # the schedule: sample (seeded Plackett-Luce draw) | greedy (top-b)
    feature_batch_size: int = 16  # batch of the state-feature pass
    seed: int | None = None  # None: the run's warmup seed

    def __post_init__(self) -> None:
        checks = {"episodes": self.episodes >= 0, "clusters": self.clusters is None or self.clusters >= 1,
                  "batch_size": self.batch_size >= 1, "steps": self.steps is None or self.steps >= 1,
                  "passes": self.passes > 0, "select_every": self.select_every >= 1,
                  "episode_percent": 0 < self.episode_percent <= 100, "episode_min": self.episode_min >= 1,
                  "reward": self.reward in ("dpo", "sft"), "lr": self.lr is None or self.lr > 0,
                  "hidden": self.hidden >= 1, "layers": self.layers >= 1, "ppo_lr": self.ppo_lr > 0,
                  "ppo_epochs": self.ppo_epochs >= 1, "clip": 0 < self.clip < 1, "gamma": 0 <= self.gamma <= 1,
                  "gae_lambda": 0 <= self.gae_lambda <= 1, "max_grad_norm": self.max_grad_norm > 0,
                  "reward_scale": self.reward_scale > 0, "final": self.final in ("sample", "greedy"),
                  "feature_batch_size": self.feature_batch_size >= 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise CurationError(f"RaiseConfig: invalid {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RaiseConfig:
        return config_from_dict(cls, data)


@dataclass(frozen=True)
class Plan:
    """The sizes of one run, derived from the config and the pool."""

    n: int  # pool size
    budget: int  # examples of the static selection
    clusters: int  # C
    per_cluster: int  # b
    steps: int  # T
    every: int  # M
    episode_n: int  # candidates per training episode

    @property
    def batch(self) -> int:
        return self.clusters * self.per_cluster

    @property
    def decisions(self) -> int:
        return math.ceil(self.steps / self.every)

    def span(self, decision: int) -> tuple[int, int]:
        """Steps ``start..end-1`` of a decision."""
        return decision * self.every, min((decision + 1) * self.every, self.steps)


def make_plan(cfg: RaiseConfig, n: int, percent: float | None, n_select: int | None) -> Plan:
    """C, b, T, M and the episode size for a pool of ``n`` and the run's budget."""
    if n < 1:
        raise CurationError("RAISE needs a pool with at least one example")
    budget = budget_from(percent, n_select, n)
    clusters = min(cfg.clusters or (2 if 100 * budget / n <= 1 else 4), n)
    per_cluster = max(1, cfg.batch_size // clusters)
    steps = cfg.steps or max(1, math.ceil(cfg.passes * budget / (clusters * per_cluster)))
    episode_n = min(n, max(math.ceil(cfg.episode_percent * n / 100), cfg.episode_min))
    return Plan(n, budget, clusters, per_cluster, steps, cfg.select_every, episode_n)
