"""The RAISE selector's maths: actor F_θ, critic, cluster-constrained top-b, Plackett-Luce, GAE, PPO.

Action at a step: in each k-means cluster c, an *ordered* pick of b members. Its probability
under the actor's scores s (Plackett-Luce, sampling without replacement proportional to e^s):

    P_c = Π_{j=1..b} exp(s_{i_j}) / Σ_{k ∈ c \\ {i_1..i_{j-1}}} exp(s_k)

Sampling that distribution is Gumbel-top-b: sort s + Gumbel noise, keep the first b. The
per-cluster probability is PPO's importance ratio, r_c = P_c(θ) / P_c(θ_old), so a step with
C clusters gives C clipped terms that share the step's advantage (GAE):

    δ_t = r_t + γ V(s_{t+1}) - V(s_t)   (V = 0 after the last step)
    A_t = δ_t + γ λ A_{t+1}
    L   = -mean_{t,c} min(r_{t,c} A_t, clip(r_{t,c}, 1-ε, 1+ε) A_t)

The critic regresses the returns A_t + V(s_t) (mean squared error).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

CRITIC_INPUTS = ("stage_start", "stage_end", "relative_val_loss", "mean_times_selected", "share_selected")


def mlp(inputs: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` tanh hidden layers of width ``hidden`` and a scalar output."""
    mods: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.Tanh()]
        width = hidden
    mods.append(nn.Linear(width, 1))
    return nn.Sequential(*mods)


class Actor(nn.Module):
    """F_θ: one score per candidate from its state row."""

    def __init__(self, inputs: int, hidden: int, layers: int):
        super().__init__()
        self.net = mlp(inputs, hidden, layers)

    def forward(self, states: Tensor) -> Tensor:
        return self.net(states).squeeze(-1)


class Critic(nn.Module):
    """V(s): the value of the training run's state (`CRITIC_INPUTS`)."""

    def __init__(self, hidden: int, layers: int):
        super().__init__()
        self.net = mlp(len(CRITIC_INPUTS), hidden, layers)

    def forward(self, summary: Tensor) -> Tensor:
        return self.net(summary).squeeze(-1)


def cluster_members(clusters: Tensor) -> list[Tensor]:
    """Row indices of each non-empty cluster, ascending, clusters in id order."""
    return [(clusters == c).nonzero().squeeze(1) for c in torch.unique(clusters).tolist()]


def top_b(scores: Tensor, members: Sequence[Tensor], b: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """Ordered picks (row indices) of ``min(b, |c|)`` members per cluster.

    With a ``generator``: a Plackett-Luce sample (Gumbel-top-b); without: the b best scores
    (greedy), ties to the lower row index.
    """
    picks = []
    for rows in members:
        s = scores[rows].detach().double()
        if generator is not None:
            u = torch.rand(s.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
            s = s - torch.log(-torch.log(u))
        order = torch.sort(s, descending=True, stable=True).indices[: min(b, len(rows))]
        picks.append(rows[order])
    return picks


def pl_log_prob(scores: Tensor, rows: Tensor, picks: Tensor) -> Tensor:
    """log P_c of the ordered ``picks`` among cluster ``rows`` under ``scores`` (Plackett-Luce)."""
    s = scores[rows]
    pos = torch.searchsorted(rows, picks)  # rows are ascending (cluster_members)
    b = len(picks)
    removed = torch.zeros((b, len(rows)), dtype=torch.bool, device=s.device)
    for j in range(1, b):  # row j: the members already taken before the j-th pick
        removed[j] = removed[j - 1]
        removed[j, pos[j - 1]] = True
    denom = torch.logsumexp(s.expand(b, -1).masked_fill(removed, float("-inf")), dim=1)
    return (s[pos] - denom).sum()


def step_log_probs(scores: Tensor, members: Sequence[Tensor], picks: Sequence[Tensor]) -> Tensor:
    """``[C]``: log P_c of one step's picks, cluster by cluster."""
    return torch.stack([pl_log_prob(scores, rows, p) for rows, p in zip(members, picks)])


def gae(rewards: Tensor, values: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """(advantages, returns) of one finished episode; ``values[t] = V(s_t)``, V = 0 after it."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros((), dtype=rewards.dtype)
    for t in range(len(rewards) - 1, -1, -1):
        nxt = values[t + 1] if t + 1 < len(values) else torch.zeros((), dtype=values.dtype)
        delta = rewards[t] + gamma * nxt - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, adv + values


def ppo_clip_loss(logp_new: Tensor, logp_old: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """PPO-clip over ``[T, C]`` per-cluster log-probs; ``advantages`` ``[T]`` are shared per step."""
    ratio = torch.exp(logp_new - logp_old)
    adv = advantages[:, None].expand_as(ratio)
    return -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()


def normalise_advantages(adv: Tensor) -> Tensor:
    """Zero mean, unit std over the episode (left as is when it has one step or no spread)."""
    if len(adv) < 2 or float(adv.std()) == 0.0:
        return adv - adv.mean() if len(adv) >= 2 else adv
    return (adv - adv.mean()) / (adv.std() + 1e-8)
