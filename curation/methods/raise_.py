"""RAISE (METHODS.md §4): a selector trained with PPO picks every step's batch during fine-tuning.

Stages of a run, each resumable:

1. ``state features``: the static state of every pool example with the base model (the
   helper): lengths, log P(y|x), log P(y), a 32-d embedding, and k-means clusters
   (`curation.methods.ppo.state`); stored once in ``workdir/raise/static.npz``.
2. ``selector episodes``: K episodes, each a short LoRA fine-tune from the initial model on a
   seeded candidate subset, then one PPO update (`curation.methods.ppo.train`); the selector, its
   optimizers and bookkeeping are saved atomically after every episode, so a killed run
   resumes at its last finished episode and ends as an uninterrupted one would (every episode's
   randomness is seeded by (seed, episode)).
3. ``schedule``: one rollout of the trained selector over the whole pool: the batch of every
   step (`curation.methods.ppo.schedule`), exported in training order beside the selection.
4. Static scores from the schedule (how often, then how early an example is picked), so the
   selection, Explore, Curate, compare and export work as for any method.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from curation.engine.model import pad_token_id
from curation.engine.models import load_model
from curation.methods.base import Messages, Method, ScoreInputs, ScoreLabels, ScoreOutput, ValPair, register
from curation.methods.ppo.config import Plan, RaiseConfig, make_plan
from curation.methods.ppo.env import Examples, FineTuneEnv
from curation.methods.ppo.schedule import Schedule
from curation.methods.ppo.state import DIFFICULTY, StaticFeatures, compute_static
from curation.methods.ppo.train import Selector, episode_seed, ppo_update, rollout

RAISE_DIR = "raise"


def raise_config(inputs: ScoreInputs) -> tuple[RaiseConfig, int]:
    """The run's options and its seed (the warmup seed unless ``seed`` is set)."""
    cfg = RaiseConfig.from_dict(inputs.config.options)
    return cfg, inputs.config.warmup.seed if cfg.seed is None else cfg.seed


@register
class Raise(Method):
    """Examples score high when the trained selector trains on them often and early."""

    name = "raise"
    option_spec = RaiseConfig
    uses_lora = True  # every episode fine-tunes a LoRA adapter
    labels = ScoreLabels("RAISE", "how often and how early the PPO-trained selector picks the example in its "
                                  "training schedule (never picked: the selector's own score, below 1)")
    description = "PPO-trained dynamic selector; a training schedule plus a static selection (RAISE)"

    def score(self, inputs: ScoreInputs) -> ScoreOutput:
        cfg, seed = raise_config(inputs)  # bad options fail here, before any model is loaded
        sel_cfg, rep = inputs.config.select, inputs.reporter
        plan = make_plan(cfg, len(inputs.example_ids), sel_cfg.percent, sel_cfg.n)
        folder = Path(inputs.workdir) / RAISE_DIR
        rep.stage("load model")
        model, tok = load_model(inputs.config.model, inputs.workspace.home, progress=lambda s, d, t: rep.update(d, t))
        static = self._static(model, tok, inputs, cfg, plan, seed, folder)
        ids = np.asarray(inputs.example_ids, np.int64)
        feats, clusters = torch.from_numpy(static.normalised()), torch.from_numpy(static.clusters.astype(np.int64))
        lora = inputs.config.warmup
        env = FineTuneEnv(model, tok, inputs.pairs, lora, cfg.lr or lora.lr, cfg.reward, inputs.config.beta,
                          inputs.config.model.max_length)
        try:
            examples = Examples(inputs.fetch, tok, inputs.config.model.max_length)
            sel = self._train(env, examples, feats, clusters, ids, cfg, plan, seed, folder, rep)
            schedule = Schedule.load(folder) or self._schedule(env, sel, examples, feats, clusters, ids, cfg, plan,
                                                               seed, folder, rep)
        finally:
            env.close()
        return ScoreOutput(scores=schedule.scores().astype(np.float32),
                           meta={"raise": self._meta(cfg, plan, seed, sel, schedule, env.initial_loss)})

    @staticmethod
    def _static(model, tok, inputs: ScoreInputs, cfg: RaiseConfig, plan: Plan, seed: int,
                folder: Path) -> StaticFeatures:
        settings = {"model": inputs.config.model.to_dict(), "clusters": plan.clusters, "seed": seed,
                    "n": plan.n, "first": int(inputs.example_ids[0]), "last": int(inputs.example_ids[-1])}
        found = StaticFeatures.load(folder, settings)
        if found is not None and np.array_equal(found.example_ids, inputs.example_ids):
            return found
        inputs.reporter.stage("state features", plan.n)
        static = compute_static(model, tok, inputs.example_ids, inputs.fetch, inputs.config.model.max_length,
                                pad_token_id(tok), cfg.feature_batch_size, plan.clusters, seed,
                                progress=inputs.reporter.update)
        static.save(folder, settings)
        return static

    @staticmethod
    def _fingerprint(cfg: RaiseConfig, plan: Plan, seed: int) -> dict:
        return {"config": cfg.to_dict(), "plan": vars(plan), "seed": seed}

    def _train(self, env, examples, feats, clusters, ids, cfg: RaiseConfig, plan: Plan, seed: int, folder: Path,
               rep) -> Selector:
        """K episodes (resumed after the last saved one), one PPO update each."""
        fp = self._fingerprint(cfg, plan, seed)
        sel = Selector(cfg, seed, plan.n)
        sel.load(folder, fp)
        rep.stage("selector episodes", cfg.episodes)
        rep.update(sel.episode)
        while sel.episode < cfg.episodes:
            k = sel.episode + 1
            s = episode_seed(seed, k)
            torch.manual_seed(s)  # LoRA dropout of this episode's fine-tune
            rng = np.random.default_rng(s)
            rows = torch.from_numpy(np.sort(rng.choice(plan.n, plan.episode_n, replace=False)))
            gen = torch.Generator().manual_seed(s)
            ep = rollout(env, sel.actor, sel.critic, feats, clusters, rows, plan, examples, ids, cfg.reward_scale,
                         gen, tick=_every(5.0, lambda: rep.update(sel.episode)))
            losses = ppo_update(sel, feats, clusters, ep, cfg)
            for step_rows in ep.steps:
                np.add.at(sel.train_picks, step_rows.numpy(), 1)
            sel.episode = k
            sel.history.append({"episode": k, "return": round(float(sum(ep.rewards)), 6),
                                "val_loss_start": ep.losses[0], "val_loss_end": ep.losses[-1], **losses})
            sel.save(folder, fp)
            rep.update(k)
        return sel

    @staticmethod
    def _schedule(env, sel: Selector, examples, feats, clusters, ids, cfg: RaiseConfig, plan: Plan, seed: int,
                  folder: Path, rep) -> Schedule:
        """The trained selector's rollout over the whole pool, stored as the run's schedule."""
        rep.stage("schedule", plan.decisions)
        done = [0]

        def count() -> None:
            done[0] += 1
        tick = _every(5.0, lambda: rep.update(done[0]), count)
        s = episode_seed(seed, cfg.episodes + 1)
        torch.manual_seed(s)
        gen = torch.Generator().manual_seed(s) if cfg.final == "sample" else None
        snap = sorted({plan.span(d)[0] for d in (0, plan.decisions // 2, plan.decisions - 1)})
        ep = rollout(env, sel.actor, sel.critic, feats, clusters, torch.arange(plan.n), plan, examples, ids,
                     cfg.reward_scale, gen, snapshot_at=snap, tick=tick)
        rep.update(plan.decisions)
        width = max((len(r) for r in ep.steps), default=0)
        steps = np.full((plan.steps, width), -1, np.int64)
        slot_clusters = np.full((plan.steps, width), -1, np.int32)
        for t, (r, c) in enumerate(zip(ep.steps, ep.step_clusters)):
            steps[t, :len(r)], slot_clusters[t, :len(r)] = ids[r.numpy()], c.numpy()
        schedule = Schedule(ids, steps, slot_clusters, np.asarray(ep.losses, np.float64),
                            np.asarray([plan.span(d)[0] for d in range(plan.decisions)], np.int64),
                            np.asarray(snap, np.int64), torch.stack([ep.snapshots[t] for t in snap]).numpy())
        schedule.save(folder)
        return schedule

    @staticmethod
    def _meta(cfg: RaiseConfig, plan: Plan, seed: int, sel: Selector, schedule: Schedule, initial: float) -> dict:
        count, _ = schedule.counts_and_first()
        return {"config": cfg.to_dict(), "seed": seed, "clusters": plan.clusters, "per_cluster": plan.per_cluster,
                "batch": plan.batch, "steps": plan.steps, "select_every": plan.every,
                "episode_candidates": plan.episode_n, "episodes": sel.history,
                "schedule": {"steps": int(len(schedule.steps)), "picks": int((schedule.steps >= 0).sum()),
                             "distinct": int((count > 0).sum()), "val_loss_start": float(schedule.val_losses[0]),
                             "val_loss_end": float(schedule.val_losses[-1])},
                "initial_val_loss": initial}

    def schedule(self, workdir: Path) -> np.ndarray | None:
        """``[T, B]`` example ids of every training step (-1: empty slot)."""
        found = Schedule.load(Path(workdir) / RAISE_DIR)
        return None if found is None else found.steps

    def explain(self, workdir: Path, example_id: int, messages: Messages, pairs: Sequence[ValPair]) -> dict[str, Any]:
        """The example's state features and its selection history (schedule and training episodes)."""
        folder = Path(workdir) / RAISE_DIR
        static, schedule = StaticFeatures.load(folder), Schedule.load(folder)
        if static is None or schedule is None:
            return {}
        rows = np.flatnonzero(static.example_ids == example_id)
        if not len(rows):
            return {"note": f"example {example_id} was not scored by this run"}
        i = int(rows[0])
        norm = static.normalised()[i]
        state = [{"feature": name, "value": round(float(static.difficulty[i, j]), 4),
                  "standardised": round(float(norm[j]), 3), "pool mean": round(float(static.difficulty[:, j].mean()), 4)}
                 for j, name in enumerate(DIFFICULTY)]
        state.append({"feature": "cluster", "value": float(static.clusters[i]), "standardised": None,
                      "pool mean": None})
        count, first = schedule.counts_and_first()
        snaps = ", ".join(f"step {int(t) + 1}: {_percentile(schedule.snapshot_scores[k], i):.0f}th"
                          for k, t in enumerate(schedule.snapshot_steps))
        text = (f"Picked {int(count[i])} times in the {len(schedule.steps)}-step schedule"
                + (f", first at step {int(first[i]) + 1}" if first[i] >= 0 else "")
                + f" (cluster {int(static.clusters[i])}). Actor-score percentile in the pool: {snaps}."
                + f" Embedding (32-d PCA, first 4): {[round(float(v), 3) for v in static.embedding[i, :4]]}."
                + _train_note(folder, i))
        return {"State features": state, "Selection history": text,
                "Steps that train on it": schedule.history(example_id) or "never picked by the schedule"}


def _every(seconds: float, report, always=None):
    """A per-decision callback that reports (heartbeat, cancel check) at most every ``seconds``."""
    last = [time.monotonic()]

    def tick() -> None:
        if always:
            always()
        if time.monotonic() - last[0] >= seconds:
            last[0] = time.monotonic()
            report()
    return tick


def _percentile(scores: np.ndarray, i: int) -> float:
    return 100.0 * float((scores < scores[i]).mean())


def _train_note(folder: Path, i: int) -> str:
    from curation.methods.ppo.train import SELECTOR_FILE

    path = folder / SELECTOR_FILE
    if not path.is_file():
        return ""
    state = torch.load(path, weights_only=True)
    return f" Picked {int(state['train_picks'][i])} times over the {int(state['episode'])} training episodes."
