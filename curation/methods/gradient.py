"""The shared gradient pipeline of LESS, ROSE and NICE (METHODS.md §0).

warmup (LoRA, per-epoch checkpoints) -> train features (per-example SFT gradients, Adam
direction, projection, L2 norm) -> validation features (the method's objective, plain
gradient, same projection) -> learning-rate-weighted cosines, mean per subtask, max over
subtasks. A method only says which validation items and objective it uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import random
from abc import abstractmethod
from typing import Callable, Sequence

import numpy as np
import torch

from curation.engine.distributed import file_lock
from curation.engine.features import FeatureManifest, FeatureStore, FeatureWriter
from curation.engine.featuresets import (
    FeatureSet,
    FeatureSetKey,
    content_keys,
    existing_shard_size,
    find_set,
    locked,
    write_view,
)
from curation.engine.grads import decoder_layers, iter_features, top_layer_names, top_layers
from curation.engine.influence import ScoringInputs, normalise_rows, score
from curation.engine.model import encode, encode_pair, fixed_length_buckets, length_buckets, pad_token_id, tokenizer_hash
from curation.engine.models import load_model
from curation.engine.objectives import Batch, LogProbObjective, Objective, SFTObjective, collate, sft_item
from curation.engine.projection import DenseRademacherProjector, IdentityProjector, Projector, SparseJLProjector
from curation.engine.valcache import ValCache, item_key
from curation.engine.warmup import (
    Checkpoint,
    complete_warmup,
    list_checkpoints,
    load_checkpoint,
    load_moments,
    record_warmup_origin,
    reusable_warmup,
    run_warmup,
    sample_warmup_ids,
)
from curation.errors import CurationError
from curation.methods.base import Method, ScoreInputs, ScoreLabels, ScoreOutput, ValPair, method_options

WARMUP_SUBDIR = "warmups"
SIDES = ("val_chosen", "val_rejected")  # every pair's ∇(−log p) of each answer (float32, unnormalised)
SIDES_FILE = "sides.json"  # beside a run's features: the alpha it mixed the sides with, pair subtasks


def side_items(pairs: Sequence[ValPair], tokenizer, max_length: int) -> list[Batch]:
    """Every pair's chosen answer, then every pair's rejected answer: ``2 n`` one-answer items."""
    sides = [(p, p.chosen) for p in pairs] + [(p, p.rejected) for p in pairs]
    return [sft_item(*tensors(encode_pair(tokenizer, p.prompt_messages, answer, max_length))) for p, answer in sides]


def mix_sides(chosen: np.ndarray, rejected: np.ndarray, alpha: float, dtype: str) -> np.ndarray:
    """``normalise(c − a·r)``, rounded through the stored feature dtype like every validation
    feature. With ``c = ∇(−log p(chosen))``: a = 1 is ROSE's direction (the DPO gradient is a
    positive multiple of it, METHODS.md §2) and a = 0 LESS's (the mean CE's gradient, §1)."""
    g = normalise_rows(np.asarray(chosen, np.float32) - np.float32(alpha) * np.asarray(rejected, np.float32))
    return g.astype(dtype).astype(np.float32)


def gradient_labels(name: str, objective: str) -> ScoreLabels:
    """The labels the LESS family shares; ``objective`` says what the validation gradient is."""
    return ScoreLabels(name, f"learning-rate-weighted cosine between the example's Adam step and {objective}, "
                             "averaged per subtask; the best subtask is the score",
                       per_subtask="mean gradient cosine", per_pair="gradient cosine", gradient=True)


def lora_layout(ckpt: Checkpoint) -> list[tuple[str, int]]:
    """(LoRA parameter name, numel) of a checkpoint, in a fixed (sorted) order: an exact row's layout."""
    return [(name, int(m.numel())) for name, (m, _) in sorted(load_moments(ckpt.path).items())]


def make_projector(cfg, layout: Sequence[tuple[str, int]] = ()) -> Projector:
    """The run's projector from its FeatureConfig; its spec goes into every manifest.

    ``auto`` keeps the exact gradient when it is small (``exact_max_dim``): on the demo the
    k=8192 sketch alone moves the ROSE ranking to Spearman ~0.8 against exact scores.
    """
    d = sum(n for _, n in layout)
    kind = cfg.projector
    if kind == "auto":
        kind = "identity" if layout and d <= cfg.exact_max_dim else "sparse_jl"
    if kind == "identity":
        if not layout:
            raise ValueError("exact features need the LoRA layout (see lora_layout)")
        return IdentityProjector(d, cfg.seed, layout)
    return (SparseJLProjector if kind == "sparse_jl" else DenseRademacherProjector)(cfg.k, cfg.seed)


def tensors(enc: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(enc["input_ids"]), torch.tensor(enc["labels"])


def ordered_features(model, items: Sequence[Batch], objective: Objective, projector: Projector,
                     moments, batch_size: int, pad_id: int, max_length: int = 1 << 30,
                     fixed_length: bool = True, on_batch: Callable[[int], None] | None = None,
                     autocast: str | None = None, normalize: bool = True) -> np.ndarray:
    """Features of `items` in their given order, in batches of one padded length each.

    Every item is padded to `model.padded_length` of its own length, so its features do not
    depend on its batch companions (byte-identical on CPU; see `padded_length`): what stored,
    shared train features need. ``fixed_length=False`` batches by similar length instead
    (fewer batches; for validation items, which are computed per run and never shared).
    ``on_batch(items_done)`` after each batch: progress and heartbeat within a shard (a shard
    of a 135M model on CPU takes minutes, longer than a run may go without a heartbeat).
    ``autocast``: the forward's dtype name (`FeatureConfig.autocast_for`), None for full precision.
    """
    lengths = [int(b.input_ids.shape[1]) for b in items]
    if fixed_length:
        buckets = fixed_length_buckets(lengths, batch_size, max_length)
    else:
        buckets = [(None, b) for b in length_buckets(lengths, batch_size)]
    out = np.zeros((len(items), projector.k), dtype=np.float32)
    batches = (collate([items[i] for i in bucket], pad_id, length) for length, bucket in buckets)
    done = 0
    amp = getattr(torch, autocast) if autocast else None
    for (_, bucket), feats in zip(buckets, iter_features(model, batches, objective, projector, moments, autocast=amp,
                                                         normalize=normalize)):
        out[bucket] = feats
        done += len(bucket)
        if on_batch:
            on_batch(done)
    return out


def warmup_key(cfg, messages) -> str:
    """The warmup cache key: base model settings, warmup settings and its examples' text."""
    return hashlib.sha256(json.dumps([cfg.model.to_dict(), cfg.warmup.to_dict(), messages],
                                     sort_keys=True).encode()).hexdigest()[:16]


def model_fingerprint(model, dtype: str) -> str:
    """The base model's architecture and weight dtype (its identity beside name and tokenizer)."""
    return hashlib.sha256((model.config.to_json_string(use_diff=False) + dtype).encode()).hexdigest()[:16]


def extraction_precision(cfg, model) -> str | None:
    """The forward autocast dtype of this run's extraction on the model's device (or None)."""
    return cfg.features.autocast_for(next(model.parameters()).device.type)


def precision_tag(cfg, model) -> str:
    """Weight dtype, plus the autocast when one is used: features made under bf16 autocast are
    not the fp32 ones, so they get their own feature set (CPU keys are unchanged)."""
    amp = extraction_precision(cfg, model)
    return cfg.model.dtype + (f"+autocast-{amp}" if amp else "")


def feature_key(cfg, model, tok, warmup: str, ckpts: Sequence[Checkpoint], projector: Projector) -> FeatureSetKey:
    """What a run's train features depend on (and nothing else: not the method, not the pairs).
    A preset's cheaper-feature options are part of it, so presets never share features."""
    return FeatureSetKey(model=cfg.model.name_or_path, model_fingerprint=model_fingerprint(model, precision_tag(cfg, model)),
                         tokenizer_hash=tokenizer_hash(tok), warmup=warmup,
                         checkpoints=tuple(c.path.name for c in ckpts), max_length=cfg.model.max_length,
                         projector=projector.spec(), k=projector.k, dtype=cfg.features.dtype,
                         cheap=cfg.features.cheap_options() or None)


def used_checkpoints(ckpts: Sequence[Checkpoint], last: int) -> list[Checkpoint]:
    """The last ``last`` checkpoints (all when 0). Their lrs stay the weights: stage 4
    renormalises them to sum 1 over the checkpoints used."""
    return list(ckpts[-last:]) if last else list(ckpts)


def top_layout(layout: Sequence[tuple[str, int]], model, lora_layers: int) -> list[tuple[str, int]]:
    """The LoRA layout restricted to the top ``lora_layers`` decoder layers (all when 0)."""
    keep = set(top_layer_names([n for n, _ in layout], len(decoder_layers(model)), lora_layers))
    return [(n, d) for n, d in layout if n in keep]


LENGTH_SAMPLE = 4000  # examples whose token lengths pick the max length (seeded; all when fewer)
LENGTH_MULTIPLE = 32


def choose_max_length(lengths: Sequence[int], quantile: float, cap: int) -> int:
    """The ``quantile`` of the token lengths rounded up to a multiple of 32, at most ``cap``."""
    q = float(np.quantile(np.asarray(lengths, np.float64), quantile))
    return int(min(cap, max(LENGTH_MULTIPLE, math.ceil(q / LENGTH_MULTIPLE) * LENGTH_MULTIPLE)))


def pool_length(tok, inputs: ScoreInputs) -> tuple[int, dict]:
    """(max length, report) from the pool's token lengths (``features.length_quantile``).

    The report says how many examples the length cuts: exact when every example was measured,
    scaled from the seeded sample of `LENGTH_SAMPLE` otherwise.
    """
    cfg = inputs.config
    ids = list(inputs.example_ids)
    if len(ids) > LENGTH_SAMPLE:
        ids = sorted(random.Random(0).sample(ids, LENGTH_SAMPLE))
    lengths = [len(encode(tok, m, 1 << 30)["input_ids"]) for m in inputs.fetch([int(i) for i in ids])]
    chosen = choose_max_length(lengths, cfg.features.length_quantile, cfg.model.max_length)
    cut = sum(n > chosen for n in lengths)
    n_pool = len(inputs.example_ids)
    return chosen, {"max_length": chosen, "quantile": cfg.features.length_quantile, "cap": cfg.model.max_length,
                    "measured": len(lengths), "cut": round(cut * n_pool / len(lengths)), "of": n_pool,
                    "cut_is_estimate": len(lengths) < n_pool, "p50": int(np.median(lengths)),
                    "max_seen": max(lengths)}


WEIGHTS = ("lr", "uniform", "last")  # checkpoint weighting: METHODS.md stage 4 uses "lr"


def checkpoint_weighting(rule: str, lrs: Sequence[float]) -> list[float]:
    """Stage-4 weights: epoch-mean lr (published), equal, or the last checkpoint only."""
    if rule not in WEIGHTS:
        raise CurationError(f"checkpoint_weights must be one of {', '.join(WEIGHTS)}, got {rule!r}")
    if rule == "lr":
        return list(lrs)
    return [1.0] * len(lrs) if rule == "uniform" else [0.0] * (len(lrs) - 1) + [1.0]


class GradientMethod(Method):
    """A method of the LESS family: only the validation side differs between them."""

    shards_features = True
    uses_lora = True  # the warmup
    # length_strata k > 1: rank within k output-length bands and interleave (`select.length_stratified`)
    option_defaults: dict = {"checkpoint_weights": "lr", "length_strata": 0}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "option_spec" not in cls.__dict__:  # a subclass's defaults are its options
            cls.option_spec = cls.option_defaults

    def options(self, inputs: ScoreInputs) -> dict:
        """This method's options over its defaults; unknown keys are refused (`method_options`)."""
        return method_options(self.name, inputs.config, self.option_defaults)

    @abstractmethod
    def val_objective(self, inputs: ScoreInputs) -> Objective:
        """The loss whose gradient describes the target task."""

    @abstractmethod
    def val_items(self, pairs: Sequence[ValPair], tokenizer, max_length: int) -> list[Batch]:
        """One item per validation pair, formatted exactly like the train side."""

    def side_alpha(self, inputs: ScoreInputs) -> float | None:
        """When the validation direction is ``∇log p(chosen) − a·∇log p(rejected)``, its ``a``:
        the run then keeps both sides (`SIDES`), so another ``a`` re-scores from them
        (`contrast.score_alpha`), and ROSE (1), LESS (0) and contrast share one computation.
        None: the method's own objective (NICE's policy gradient, ROSE's per-token variant)."""
        return None

    def checkpoint_val_items(self, model, tokenizer, ckpt: Checkpoint, inputs: ScoreInputs) -> list[Batch]:
        """The items at one checkpoint; NICE overrides it to sample from that checkpoint's model (§3)."""
        return self.val_items(inputs.pairs, tokenizer, inputs.config.model.max_length)

    def score(self, inputs: ScoreInputs) -> ScoreOutput | None:
        """Scores, or None on a sharded rank (it only writes its train-feature shards).

        Train features come from the workspace feature store (`curation.engine.featuresets`): rows
        any earlier run computed for the same key are reused, only the rest are extracted.
        Validation features of ROSE, LESS and contrast come from the validation cache
        (`curation.engine.valcache`): only pairs no earlier run saw are computed. The model is
        loaded only when something needs it: a re-score whose features are all stored loads none.
        """
        cfg, rep = inputs.config, inputs.reporter
        rep.stage("load model")
        loader = _Loader(cfg, inputs.workspace.home, rep)
        keys = content_keys(inputs.content_hashes)
        known = self._known_features(inputs, keys)
        if known is None:
            model, tok = loader.get()
            ckpts, warmup = self._warmup(model, tok, inputs, keys)
            inputs, cheap = self._cheap_inputs(tok, inputs)
            cfg = inputs.config
            ckpts = used_checkpoints(ckpts, cfg.features.checkpoints)
            projector = make_projector(cfg.features, top_layout(lora_layout(ckpts[0]), model, cfg.features.lora_layers))
            fset = FeatureSet.open(inputs.workspace.home, feature_key(cfg, model, tok, warmup["key"], ckpts, projector),
                                   pool=inputs.pool)
        else:  # only full (default-preset) features are re-scored without the model
            fset, ckpts, warmup, projector = known
            cheap = {**cfg.features.cheap_options()}
        layers = cfg.features.lora_layers
        plan = fset.plan(keys, inputs.content_hashes)
        rep.note(features={"id": fset.id, "reused": None})  # in use from now on (`features rm` checks)
        fstore = FeatureStore(inputs.workdir / "features")
        sharded, extracted = inputs.rank != (0, 1), 0
        for i, ckpt in enumerate(ckpts):
            pending = plan.pending(i)
            if sharded and not pending:
                continue
            peft_model = moments = tok = None
            if pending or (not sharded and self._val_needs_model(inputs, fset, ckpt)):
                model, tok = loader.get()
                peft_model, moments = load_checkpoint(model, ckpt)
            # train and validation sides: the same layers
            with top_layers(peft_model, layers) if peft_model is not None else contextlib.nullcontext():
                for segment in pending:
                    extracted += self._segment_features(peft_model, tok, moments, projector, segment, i, ckpt, inputs)
                if not sharded:
                    write_view(fstore.path("train", i), fset, plan, i, inputs.example_ids)
                    self._val_features(peft_model, tok, projector, fstore, i, ckpt, inputs, fset)
            if peft_model is not None:
                loader.model = peft_model.unload()  # back to the bare base model for the next adapter
        if sharded:  # this rank's shards are done; an unsharded pass merges and scores
            return None
        rep.stage("score", len(inputs.example_ids))
        result = score(ScoringInputs(
            train=[fstore.reader("train", i) for i in range(len(ckpts))],
            val=[fstore.reader("val", i) for i in range(len(ckpts))],
            weights=checkpoint_weighting(self._weights_rule(inputs), [c.lr for c in ckpts]),
            val_subtasks=[p.subtask for p in inputs.pairs]))
        result.save(inputs.workdir)
        if (alpha := self.side_alpha(inputs)) is not None:
            (inputs.workdir / SIDES_FILE).write_text(json.dumps(
                {"alpha": alpha, "pair_subtasks": [p.subtask for p in inputs.pairs]}))
        rep.update(len(inputs.example_ids))
        features = {"id": fset.id, "reused": extracted == 0, "extracted": extracted,
                    "rows": len(inputs.example_ids), "new_rows": plan.new_rows}
        out = ScoreOutput(scores=result.scores, subtasks=result.subtasks, subtask_means=result.subtask_means,
                          per_checkpoint=result.per_checkpoint, driver=result.driver,
                          meta={"projector": projector.spec(), "checkpoint_lrs": [c.lr for c in ckpts],
                                "tokenizer_hash": fset.key.tokenizer_hash, "features": features,
                                "warmup": warmup, "model_loaded": loader.loaded, "preset": cfg.preset,
                                "cheap_features": cheap})
        return self.stratify(out, inputs)

    def stratify(self, out: ScoreOutput, inputs: ScoreInputs) -> ScoreOutput:
        """Option ``length_strata`` (k > 1): the scores as within-length-band percentiles
        (`select.length_stratified`), against the length bias of the gradient scores where it is
        an artefact (measured by ``length_spearman``). The per-checkpoint parts no longer sum to
        such a score, so they are dropped; the subtask means stay (the cosines it ranks by)."""
        if not isinstance(self.option_spec, dict) or "length_strata" not in self.option_spec:
            return out  # NICE: options of its own
        strata = int(self.options(inputs)["length_strata"] or 0)
        if strata <= 1:
            return out
        from curation.engine.select import length_stratified, response_length
        lengths = np.concatenate([[response_length(msgs) for msgs in inputs.fetch(inputs.example_ids[lo:lo + 5000])]
                                  for lo in range(0, len(inputs.example_ids), 5000)] or [[]])
        out.scores = length_stratified(out.scores, lengths, strata)
        out.per_checkpoint = None
        out.meta["length_strata"] = {"strata": strata, "scores": "percentile within the output-length band"}
        return out

    def _known_features(self, inputs: ScoreInputs, keys: np.ndarray):
        """(feature set, checkpoints, warmup, projector) without loading the model, when the run
        names the stored set it re-scores with (`ScoreInputs.feature_hint`), the set matches this
        run's settings and holds every row; else None (the model decides the key)."""
        hint, cfg = inputs.feature_hint or {}, inputs.config
        if not hint.get("set") or self.side_alpha(inputs) is None or cfg.features.cheap_options():
            return None  # a preset's layers, checkpoints or length are decided with the model
        try:
            fset = find_set(inputs.workspace.home, hint["set"])
        except CurationError:
            return None
        key, root = fset.key, inputs.workspace.home / WARMUP_SUBDIR / fset.key.warmup
        if (key.model, key.max_length, key.dtype) != (cfg.model.name_or_path, cfg.model.max_length, cfg.features.dtype):
            return None
        if not complete_warmup(root, cfg.warmup.epochs):
            return None
        ckpts = list_checkpoints(root)[: cfg.warmup.epochs]
        projector = make_projector(cfg.features, lora_layout(ckpts[0]))
        if tuple(c.path.name for c in ckpts) != key.checkpoints or projector.spec() != key.projector:
            return None
        if fset.coverage(keys) != len(keys):
            return None
        warmup = hint.get("warmup") or {"key": key.warmup, "reused_from_earlier_pool": False}
        return fset, ckpts, warmup, projector

    def _val_cache(self, inputs: ScoreInputs, fset: FeatureSet, ckpt: Checkpoint) -> ValCache:
        return ValCache(inputs.workspace.home, fset.id, ckpt.path.name, "logprob")

    def _val_needs_model(self, inputs: ScoreInputs, fset: FeatureSet, ckpt: Checkpoint) -> bool:
        """Whether this checkpoint's validation features need the model (a pair not cached yet,
        or a method whose validation side is not cached: NICE samples, ROSE per token)."""
        if self.side_alpha(inputs) is None:
            return True
        return bool(self._val_cache(inputs, fset, ckpt).missing(side_keys(inputs.pairs)))

    def _cheap_inputs(self, tok, inputs: ScoreInputs) -> tuple[ScoreInputs, dict]:
        """The inputs the feature stages use, and what the preset's options did (run meta).

        After the warmup: the warmup keeps the model's max length (it is shared with full
        runs); a pool-chosen length replaces ``model.max_length`` for every feature stage.
        """
        f = inputs.config.features
        report: dict = {**f.cheap_options()}
        if f.length_quantile:
            chosen, report["length"] = pool_length(tok, inputs)
            model = dataclasses.replace(inputs.config.model, max_length=chosen)
            inputs = dataclasses.replace(inputs, config=dataclasses.replace(inputs.config, model=model))
            cut = report["length"]
            inputs.reporter.note(length={k: cut[k] for k in ("max_length", "cut", "of")})
        return inputs, report

    def _weights_rule(self, inputs: ScoreInputs) -> str:
        return self.options(inputs)["checkpoint_weights"]

    def _warmup(self, model, tok, inputs: ScoreInputs, keys: np.ndarray) -> tuple[list[Checkpoint], dict]:
        """LoRA warmup on a seeded share of the pool, cached by its inputs so runs share it.

        A pool that grew keeps the warmup its features were made with (`reusable_warmup`), so
        only its new examples need features; ``features.reuse_warmup = false`` turns that off.
        """
        cfg, rep = inputs.config, inputs.reporter
        root = inputs.workspace.home / WARMUP_SUBDIR
        ids = sample_warmup_ids([str(i) for i in inputs.example_ids], cfg.warmup.percent, cfg.warmup.seed)
        messages = inputs.fetch([int(i) for i in ids])
        key = warmup_key(cfg, messages)
        rep.stage("warmup")
        reused = None
        if cfg.features.reuse_warmup and not complete_warmup(root / key, cfg.warmup.epochs):
            reused = reusable_warmup(root, cfg, keys, len(ids))
        if reused:
            ckpts = list_checkpoints(root / reused)[: cfg.warmup.epochs]
            rep.update(1, 1)
            return ckpts, {"key": reused, "reused_from_earlier_pool": True}
        out = root / key
        with file_lock(root / f"{key}.lock"):  # ranks started together train it once
            ckpts = run_warmup(model, tok, messages, cfg.warmup, out, progress=lambda s, d, t: rep.update(d, t))
            pos = {int(e): h for e, h in zip(inputs.example_ids, inputs.content_hashes)}
            record_warmup_origin(out, cfg, [pos[int(i)] for i in ids], inputs.pool)
        return ckpts, {"key": key, "reused_from_earlier_pool": False}

    def _segment_features(self, model, tok, moments, projector, segment, i, ckpt, inputs: ScoreInputs) -> int:
        """Write this rank's missing shards of one segment at checkpoint ``i``; rows written.

        Under the segment's lock: a second run needing the same rows waits (heartbeat kept),
        then finds them written.
        """
        cfg, rep = inputs.config, inputs.reporter
        directory = segment.ckpt_dir(i)
        rank_tag = "" if inputs.rank == (0, 1) else f".rank{inputs.rank[0]}of{inputs.rank[1]}"
        stage = f"train features {ckpt.path.name}"

        waiting_stage = f"{stage} (waiting: another run computes them)"

        def waiting() -> None:  # keeps the heartbeat fresh and honours cancel
            if rep.stage_name != waiting_stage:
                rep.stage(waiting_stage)
            else:
                rep.update(0)

        with locked(directory.parent / f".{directory.name}{rank_tag}.lock", wait=waiting):
            writer = FeatureWriter(directory, self._manifest(tokenizer_hash(tok), ckpt, projector, segment.keys.tolist(),
                                                             inputs, existing_shard_size(directory)), inputs.rank)
            pending = writer.pending_shards()
            if not pending:
                return 0
            rep.stage(stage, sum(end - start for _, start, end in pending))
            hashes, pad, done = segment.hashes(), pad_token_id(tok), 0
            for index, start, end in pending:
                items = [sft_item(*tensors(encode(tok, m, cfg.model.max_length)))
                         for m in inputs.fetch_hashes(hashes[start:end])]
                feats = ordered_features(model, items, SFTObjective(), projector, moments, cfg.features.batch_size,
                                         pad, cfg.model.max_length, on_batch=lambda d, base=done: rep.update(base + d),
                                         autocast=extraction_precision(cfg, model))
                writer.write_shard(index, feats)
                done += end - start
                rep.update(done)
            return done

    def _manifest(self, tok_hash: str, ckpt: Checkpoint, projector: Projector, ids: list[int], inputs,
                  shard_size: int | None = None) -> FeatureManifest:
        f = inputs.config.features
        return FeatureManifest(model=inputs.config.model.name_or_path, tokenizer_hash=tok_hash,
                               checkpoint=ckpt.path.name, projector=projector.spec(), k=projector.k,
                               dtype=f.dtype, example_ids=ids, shard_size=shard_size or f.shard_size)

    def _val_features(self, model, tok, projector, fstore, i, ckpt, inputs: ScoreInputs, fset: FeatureSet) -> None:
        cfg, tok_hash = inputs.config, fset.key.tokenizer_hash
        ids = list(range(len(inputs.pairs)))
        if (alpha := self.side_alpha(inputs)) is not None:
            self._side_features(model, tok, projector, fstore, i, ckpt, inputs, fset)
            val = fstore.writer("val", i, self._manifest(tok_hash, ckpt, projector, ids, inputs))
            if pending := val.pending_shards():
                mixed = mix_sides(*(fstore.reader(s, i).load_all() for s in SIDES), alpha, cfg.features.dtype)
                for index, start, end in pending:
                    val.write_shard(index, mixed[start:end])
            return
        writer = fstore.writer("val", i, self._manifest(tok_hash, ckpt, projector, ids, inputs))
        pending = writer.pending_shards()
        if not pending:
            return
        inputs.reporter.stage(f"validation features {ckpt.path.name}", len(ids))
        items = self.checkpoint_val_items(model, tok, ckpt, inputs)
        feats = ordered_features(model, items, self.val_objective(inputs), projector, None,
                                 cfg.features.batch_size, pad_token_id(tok), fixed_length=False,
                                 autocast=extraction_precision(cfg, model))
        for index, start, end in pending:
            writer.write_shard(index, feats[start:end])

    def _side_features(self, model, tok, projector, fstore, i, ckpt, inputs: ScoreInputs, fset: FeatureSet) -> None:
        """Both answers' gradients of every pair at checkpoint ``i``: projected, not normalised,
        float32 (their lengths decide the mix). Items the validation cache holds are read from
        it; only the others are computed (each padded by its own length: the same bits as in
        any batch), then cached."""
        cfg, n = inputs.config, len(inputs.pairs)
        manifest = dataclasses.replace(self._manifest(fset.key.tokenizer_hash, ckpt, projector, list(range(n)), inputs),
                                       dtype="float32")
        writers = [fstore.writer(s, i, manifest) for s in SIDES]
        if not any(w.pending_shards() for w in writers):
            return
        cache, keys = self._val_cache(inputs, fset, ckpt), side_keys(inputs.pairs)
        missing = cache.missing(keys)
        inputs.reporter.stage(f"validation features {ckpt.path.name}", len(missing))
        if missing:
            items = side_items(inputs.pairs, tok, cfg.model.max_length)
            feats = ordered_features(model, [items[j] for j in missing], LogProbObjective(), projector, None,
                                     cfg.features.batch_size, pad_token_id(tok), cfg.model.max_length,
                                     autocast=extraction_precision(cfg, model), normalize=False)
            cache.put([keys[j] for j in missing], feats)
            inputs.reporter.update(len(missing))
        rows = cache.load(keys)
        for writer, part in zip(writers, (rows[:n], rows[n:])):
            for index, start, end in writer.pending_shards():
                writer.write_shard(index, part[start:end])


def side_keys(pairs: Sequence[ValPair]) -> list[str]:
    """Validation-cache keys of `side_items`: every pair's chosen answer, then every rejected one."""
    return [item_key(p.prompt_messages, p.chosen) for p in pairs] + [item_key(p.prompt_messages, p.rejected)
                                                                      for p in pairs]


class _Loader:
    """The base model and tokenizer, loaded on first use (a re-score with every feature stored
    needs neither): ``loaded`` says whether it happened."""

    def __init__(self, cfg, home, rep):
        self.cfg, self.home, self.rep = cfg, home, rep
        self.model, self.tok, self.loaded = None, None, False

    def get(self):
        if not self.loaded:
            self.model, self.tok = load_model(self.cfg.model, self.home,
                                              progress=lambda s, d, t: self.rep.update(d, t))
            self.loaded = True
        return self.model, self.tok
