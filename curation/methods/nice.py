"""NICE: validation objective = policy gradient of a non-differentiable reward (METHODS.md §3).

Per validation prompt x and checkpoint: sample y_1..y_M from π_θ (the warmup checkpoint,
adapter on, eval mode), reward them, r_j = R(x, y_j), and take

    v(x) = Σ_j r_j · ∇[−log π_θ(y_j | x)]          (variant "sum": no baseline, no averaging)

or the reference code's "rejection" / "topk" variants (`PolicyGradientObjective`). Everything
else (train features, projection, checkpoint weights, subtask aggregation) is LESS's.

Engineering: samples are cached per (checkpoint, prompt, settings) under the workspace, so a
re-score on the same warmup generates nothing; each checkpoint's samples and rewards are also
saved in the run folder, which is what the inspector shows. A prompt whose rewards leave no
sample weight (e.g. all zero) yields a zero vector: cosine 0 with everything, never NaN; the
run's metadata warns about it because it dilutes its subtask's mean.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from curation.engine.features import atomic_write
from curation.engine.generation import GenerationCache, SamplingConfig, cached_samples
from curation.engine.influence import InfluenceResult
from curation.engine.model import config_from_dict, encode_pair
from curation.engine.objectives import Batch, Objective, PolicyGradientObjective, sampled_item
from curation.engine.warmup import Checkpoint
from curation.errors import CurationError
from curation.methods.base import Messages, ScoreInputs, ScoreOutput, ValPair, register
from curation.methods.gradient import GradientMethod, gradient_labels, tensors
from curation.methods.rewards import Reward, make_reward

RECORD_DIR = "nice"  # run folder: one JSON of samples and rewards per checkpoint
CACHE_DIR = "generations"  # workspace folder: sample cache, one subfolder per warmup checkpoint
EXPLAIN_PAIRS = 3  # validation prompts shown per example in the inspector


@dataclass
class NiceConfig:
    """NICE's options (``ScoreConfig.options``). Sampling defaults are the published ones (§3)."""

    samples: int = 20  # M responses per prompt
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.95
    max_new_tokens: int = 64  # not published; the demo's answers take ~20 tokens
    variant: str = "sum"  # sum (the paper's formula) | rejection (r > 0) | topk
    top_k_rewards: int = 10  # samples kept by the topk variant (reference code: 10)
    reward: str = "number"  # a `curation.methods.rewards` spec; "number" checks the demo's final answers
    label_free: bool = False  # use only prompts: the pair's chosen is ignored, label rewards refused
    seed: int = 0  # sampling seed (per prompt and checkpoint, see `curation.engine.generation`)
    checkpoint_weights: str = "lr"  # stage-4 weighting, as for every gradient method (lr | uniform | last)

    def __post_init__(self) -> None:
        checks = {"samples": self.samples >= 1, "temperature": self.temperature > 0,
                  "top_k": self.top_k >= 0, "top_p": 0 < self.top_p <= 1,
                  "max_new_tokens": self.max_new_tokens >= 1, "top_k_rewards": self.top_k_rewards >= 1,
                  "variant": self.variant in PolicyGradientObjective.variants, "reward": bool(self.reward)}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise CurationError(f"NiceConfig: invalid {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NiceConfig:
        return config_from_dict(cls, data)

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(n=self.samples, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              max_new_tokens=self.max_new_tokens, seed=self.seed)


def build_reward(cfg: NiceConfig, allow_download: bool = False) -> Reward:
    """The configured reward; label-free mode refuses one that reads the label."""
    reward = make_reward(cfg.reward, allow_download)
    if cfg.label_free and reward.needs_label:
        raise CurationError(f"label_free: reward {reward.spec!r} needs a label; use a label-free reward "
                            "(regex:..., reward_model:..., or a plugin marked needs_label = False)")
    return reward


def nice_item(tokenizer, prompt_messages: Messages, responses: Sequence[str], rewards: Sequence[float],
              max_length: int) -> Batch:
    """One NICE item: every (prompt, y_j) encoded exactly like a pool example, weighted by r_j."""
    return sampled_item([tensors(encode_pair(tokenizer, prompt_messages, y, max_length)) for y in responses],
                        rewards)


def reward_responses(reward: Reward, pair: ValPair, responses: Sequence[str], label_free: bool) -> list[float]:
    """r_j for every sample; the label is the pair's chosen response unless label-free."""
    label = None if label_free else pair.chosen
    rewards = [reward(pair.prompt, y, label) for y in responses]
    if not all(math.isfinite(r) for r in rewards):  # one NaN would poison every cosine
        raise CurationError(f"reward {reward.spec!r} gave a non-finite value for {pair.prompt[:60]!r}: {rewards}")
    return rewards


def checkpoint_id(ckpt: Checkpoint) -> str:
    """Warmup key / epoch: the warmup key fingerprints model, warmup config and data."""
    return f"{ckpt.path.parent.name}/{ckpt.path.name}"


@register
class Nice(GradientMethod):
    """A pool example scores high when an Adam step on it raises the reward of sampled answers."""

    name = "nice"
    labels = gradient_labels("NICE", "the reward's policy gradient on answers sampled for "
                                     "the pairs' prompts")
    option_spec = NiceConfig
    needs_pairs = True  # the prompts come from the validation pairs (label_free ignores their chosen)
    description = "policy gradient of a reward on sampled responses (NICE)"
    _reward: Reward | None = None
    _reward_key: tuple | None = None  # what `_reward` was built from (it may hold a loaded model)

    def score(self, inputs: ScoreInputs) -> ScoreOutput | None:
        self._setup(inputs)  # bad options or reward fail here, before any model is loaded
        out = super().score(inputs)
        if out is not None:
            out.meta["nice"], warnings = summarise(inputs.workdir, NiceConfig.from_dict(inputs.config.options))
            if warnings:
                out.meta.setdefault("warnings", []).extend(warnings)
        return out

    def _weights_rule(self, inputs: ScoreInputs) -> str:
        return NiceConfig.from_dict(inputs.config.options).checkpoint_weights

    def _setup(self, inputs: ScoreInputs) -> tuple[NiceConfig, Reward]:
        cfg = NiceConfig.from_dict(inputs.config.options)
        key = (cfg.reward, cfg.label_free, inputs.config.model.allow_download)
        if key != self._reward_key:
            self._reward, self._reward_key = build_reward(cfg, inputs.config.model.allow_download), key
        return cfg, self._reward

    def val_objective(self, inputs: ScoreInputs) -> Objective:
        cfg = NiceConfig.from_dict(inputs.config.options)
        return PolicyGradientObjective(cfg.variant, cfg.top_k_rewards)

    def val_items(self, pairs: Sequence[ValPair], tokenizer, max_length: int) -> list[Batch]:
        raise CurationError("NICE's items depend on the checkpoint: they come from checkpoint_val_items")

    def checkpoint_val_items(self, model, tokenizer, ckpt: Checkpoint, inputs: ScoreInputs) -> list[Batch]:
        """Sample (cached), reward and encode every validation prompt at this checkpoint."""
        cfg, reward = self._setup(inputs)
        cache = GenerationCache(inputs.workspace.home / CACHE_DIR / ckpt.path.parent.name / ckpt.path.name)
        objective, items, rows = self.val_objective(inputs), [], []
        for i, pair in enumerate(inputs.pairs):
            responses = cached_samples(model, tokenizer, pair.prompt_messages, cfg.sampling(), checkpoint_id(ckpt),
                                       cache)
            rewards = reward_responses(reward, pair, responses, cfg.label_free)
            items.append(nice_item(tokenizer, pair.prompt_messages, responses, rewards, inputs.config.model.max_length))
            zero = bool((objective.row_weights(items[-1]) == 0).all())
            rows.append({"pair": i, "subtask": pair.subtask, "prompt": pair.prompt, "responses": responses,
                         "rewards": rewards, "zero_vector": zero})
            inputs.reporter.update(i + 1)
        save_record(inputs.workdir, ckpt, {"checkpoint": checkpoint_id(ckpt), "reward": reward.spec,
                                           "reward_doc": _first_line(type(reward).__doc__),
                                           "config": cfg.to_dict(), "pairs": rows})
        return items

    def explain(self, workdir: Path, example_id: int, messages: Messages, pairs: Sequence[ValPair]) -> dict[str, Any]:
        """The last checkpoint's samples and rewards for the prompts of the example's driving subtask."""
        records = load_records(workdir)
        if not records:
            return {}
        last = records[-1]
        subtask = _driver_subtask(workdir, example_id)
        shown = [p for p in last["pairs"] if subtask in (None, p["subtask"])][:EXPLAIN_PAIRS]
        if not shown:  # scores from another set of pairs: show the first prompts instead
            subtask, shown = None, last["pairs"][:EXPLAIN_PAIRS]
        rows = [{"pair": p["pair"], "subtask": p["subtask"], "response": y, "reward": round(float(r), 4)}
                for p in shown for y, r in zip(p["responses"], p["rewards"])]
        cfg = last["config"]
        text = (f"Reward `{last['reward']}`: {last['reward_doc']} Variant {cfg['variant']}, "
                f"M={cfg['samples']} samples per prompt (temperature {cfg['temperature']}, top-k {cfg['top_k']}, "
                f"top-p {cfg['top_p']}){', label-free' if cfg['label_free'] else ''}; "
                f"prompts of subtask {subtask or 'any'}, checkpoint {last['checkpoint']}.")
        return {"Sampled responses (last checkpoint)": rows, "Reward": text}


def save_record(workdir: Path, ckpt: Checkpoint, record: dict[str, Any]) -> Path:
    """Write one checkpoint's samples and rewards to ``workdir/nice/<epoch>.json`` atomically."""
    path = Path(workdir) / RECORD_DIR / f"{ckpt.path.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8")
    atomic_write(path, lambda f: f.write(data))
    return path


def load_records(workdir: Path) -> list[dict[str, Any]]:
    """Every checkpoint's record, in epoch order."""
    paths = sorted((Path(workdir) / RECORD_DIR).glob("epoch_*.json"), key=lambda p: int(p.stem.split("_")[-1]))
    return [json.loads(p.read_text()) for p in paths]


def summarise(workdir: Path, cfg: NiceConfig) -> tuple[dict[str, Any], list[str]]:
    """Run metadata (mean reward, zero-vector prompts per checkpoint) and warnings."""
    per_ckpt, warnings = {}, []
    for rec in load_records(workdir):
        rewards = [r for p in rec["pairs"] for r in p["rewards"]]
        zero = [p["pair"] for p in rec["pairs"] if p["zero_vector"]]
        per_ckpt[rec["checkpoint"]] = {"mean_reward": sum(rewards) / max(len(rewards), 1), "zero_vector_pairs": zero}
        if zero:
            warnings.append(f"NICE {rec['checkpoint']}: {len(zero)} of {len(rec['pairs'])} validation prompts got "
                            f"no usable reward (variant {cfg.variant}); their vectors are zero and count as "
                            "cosine 0 in their subtask's mean")
    return {"config": cfg.to_dict(), "checkpoints": per_ckpt}, warnings


def _driver_subtask(workdir: Path, example_id: int) -> str | None:
    """The subtask whose mean gave the example its score, when the run's scores are on disk."""
    try:
        result = InfluenceResult.load(workdir)
    except CurationError:
        return None
    rows = (result.example_ids == example_id).nonzero()[0]
    return result.subtasks[int(result.driver[rows[0]])] if len(rows) else None


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""
