"""The shared gradient pipeline of LESS, ROSE and NICE (METHODS.md §0).

warmup (LoRA, per-epoch checkpoints) -> train features (per-example SFT gradients, Adam
direction, projection, L2 norm) -> validation features (the method's objective, plain
gradient, same projection) -> learning-rate-weighted cosines, mean per subtask, max over
subtasks. A method only says which validation items and objective it uses.
"""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from typing import Sequence

import numpy as np
import torch

from curation.distributed import file_lock
from curation.features import FeatureManifest, FeatureStore
from curation.grads import iter_features
from curation.influence import ScoringInputs, score
from curation.methods.base import Method, ScoreInputs, ScoreOutput, ValPair
from curation.model import encode, length_buckets, load_model, pad_token_id, tokenizer_hash
from curation.objectives import Batch, Objective, SFTObjective, collate, sft_item
from curation.projection import DenseRademacherProjector, Projector, SparseJLProjector
from curation.warmup import Checkpoint, load_checkpoint, run_warmup, sample_warmup_ids

WARMUP_SUBDIR = "warmups"


def make_projector(cfg) -> Projector:
    """The run's projector from its FeatureConfig; its spec goes into every manifest."""
    kind = SparseJLProjector if cfg.projector == "sparse_jl" else DenseRademacherProjector
    return kind(cfg.k, cfg.seed)


def tensors(enc: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(enc["input_ids"]), torch.tensor(enc["labels"])


def ordered_features(model, items: Sequence[Batch], objective: Objective, projector: Projector,
                     moments, batch_size: int, pad_id: int) -> np.ndarray:
    """Features of `items` in their given order, computed in length-bucketed batches."""
    lengths = [int(b.input_ids.shape[1]) for b in items]
    buckets = length_buckets(lengths, batch_size)
    out = np.zeros((len(items), projector.k), dtype=np.float32)
    batches = (collate([items[i] for i in bucket], pad_id) for bucket in buckets)
    for bucket, feats in zip(buckets, iter_features(model, batches, objective, projector, moments)):
        out[bucket] = feats
    return out


class GradientMethod(Method):
    """A method of the LESS family: only the validation side differs between them."""

    shards_features = True

    @abstractmethod
    def val_objective(self, inputs: ScoreInputs) -> Objective:
        """The loss whose gradient describes the target task."""

    @abstractmethod
    def val_items(self, pairs: Sequence[ValPair], tokenizer, max_length: int) -> list[Batch]:
        """One item per validation pair, formatted exactly like the train side."""

    def checkpoint_val_items(self, model, tokenizer, ckpt: Checkpoint, inputs: ScoreInputs) -> list[Batch]:
        """The items at one checkpoint; NICE overrides it to sample from that checkpoint's model (§3)."""
        return self.val_items(inputs.pairs, tokenizer, inputs.config.model.max_length)

    def score(self, inputs: ScoreInputs) -> ScoreOutput | None:
        """Scores, or None on a sharded rank (it only writes its train-feature shards)."""
        cfg, rep = inputs.config, inputs.reporter
        rep.stage("load model")
        model, tok = load_model(cfg.model, inputs.workspace.home, progress=lambda s, d, t: rep.update(d, t))
        ckpts = self._warmup(model, tok, inputs)
        projector = make_projector(cfg.features)
        fstore = FeatureStore(inputs.workdir / "features")
        sharded = inputs.rank != (0, 1)
        for i, ckpt in enumerate(ckpts):
            peft_model, moments = load_checkpoint(model, ckpt)
            self._train_features(peft_model, tok, moments, projector, fstore, i, ckpt, inputs)
            if not sharded:
                self._val_features(peft_model, tok, projector, fstore, i, ckpt, inputs)
            model = peft_model.unload()  # back to the bare base model for the next adapter
        if sharded:  # this rank's shards are done; an unsharded pass merges and scores
            return None
        rep.stage("score", len(inputs.example_ids))
        result = score(ScoringInputs(
            train=[fstore.reader("train", i) for i in range(len(ckpts))],
            val=[fstore.reader("val", i) for i in range(len(ckpts))],
            weights=[c.lr for c in ckpts], val_subtasks=[p.subtask for p in inputs.pairs]))
        result.save(inputs.workdir)
        rep.update(len(inputs.example_ids))
        return ScoreOutput(scores=result.scores, subtasks=result.subtasks, subtask_means=result.subtask_means,
                           per_checkpoint=result.per_checkpoint, driver=result.driver,
                           meta={"projector": projector.spec(), "checkpoint_lrs": [c.lr for c in ckpts],
                                 "tokenizer_hash": tokenizer_hash(tok)})

    def _warmup(self, model, tok, inputs: ScoreInputs) -> list[Checkpoint]:
        """LoRA warmup on a seeded share of the pool, cached by its inputs so runs share it."""
        cfg, rep = inputs.config, inputs.reporter
        ids = sample_warmup_ids([str(i) for i in inputs.example_ids], cfg.warmup.percent, cfg.warmup.seed)
        messages = inputs.fetch([int(i) for i in ids])
        key = hashlib.sha256(json.dumps([cfg.model.to_dict(), cfg.warmup.to_dict(), messages],
                                        sort_keys=True).encode()).hexdigest()[:16]
        rep.stage("warmup")
        out = inputs.workspace.home / WARMUP_SUBDIR / key
        with file_lock(out.parent / f"{key}.lock"):  # ranks started together train it once
            return run_warmup(model, tok, messages, cfg.warmup, out, progress=lambda s, d, t: rep.update(d, t))

    def _manifest(self, tok, ckpt: Checkpoint, projector: Projector, ids: list[int], inputs) -> FeatureManifest:
        f = inputs.config.features
        return FeatureManifest(model=inputs.config.model.name_or_path, tokenizer_hash=tokenizer_hash(tok),
                               checkpoint=ckpt.path.name, projector=projector.spec(), k=projector.k,
                               dtype=f.dtype, example_ids=ids, shard_size=f.shard_size)

    def _train_features(self, model, tok, moments, projector, fstore, i, ckpt, inputs: ScoreInputs) -> None:
        cfg, rep, ids = inputs.config, inputs.reporter, inputs.example_ids
        writer = fstore.writer("train", i, self._manifest(tok, ckpt, projector, ids, inputs), rank=inputs.rank)
        pending = writer.pending_shards()
        rep.stage(f"train features {ckpt.path.name}", sum(end - start for _, start, end in pending))
        pad, done = pad_token_id(tok), 0
        for index, start, end in pending:
            items = [sft_item(*tensors(encode(tok, m, cfg.model.max_length)))
                     for m in inputs.fetch(ids[start:end])]
            feats = ordered_features(model, items, SFTObjective(), projector, moments, cfg.features.batch_size, pad)
            writer.write_shard(index, feats)
            done += end - start
            rep.update(done)

    def _val_features(self, model, tok, projector, fstore, i, ckpt, inputs: ScoreInputs) -> None:
        cfg = inputs.config
        ids = list(range(len(inputs.pairs)))
        writer = fstore.writer("val", i, self._manifest(tok, ckpt, projector, ids, inputs))
        pending = writer.pending_shards()
        if not pending:
            return
        inputs.reporter.stage(f"validation features {ckpt.path.name}", len(ids))
        items = self.checkpoint_val_items(model, tok, ckpt, inputs)
        feats = ordered_features(model, items, self.val_objective(inputs), projector, None,
                                 cfg.features.batch_size, pad_token_id(tok))
        for index, start, end in pending:
            writer.write_shard(index, feats[start:end])
