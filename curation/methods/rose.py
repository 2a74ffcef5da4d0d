"""ROSE: validation objective = the pairwise preference (DPO) loss of each few-shot pair (METHODS.md §2)."""

from __future__ import annotations

from typing import Sequence

from curation.engine.model import encode_pair
from curation.engine.objectives import Batch, DPOObjective, Objective, pair_item
from curation.errors import CurationError
from curation.methods.base import ScoreInputs, ValPair, register
from curation.methods.gradient import GradientMethod, gradient_labels, tensors


@register
class Rose(GradientMethod):
    """A pool example scores high when an Adam step on it raises chosen over rejected."""

    name = "rose"
    labels = gradient_labels("ROSE", "the gradient of the pairs' preference (DPO) loss")

    option_defaults = {"logp": "sum", "checkpoint_weights": "lr", "length_strata": 0}

    def side_alpha(self, inputs: ScoreInputs) -> float | None:
        """1: ∇log p(chosen) − ∇log p(rejected), the DPO gradient's direction (summed log-probs);
        the per-token variant keeps the DPO objective (its sides are weighted by their lengths)."""
        return 1.0 if self.options(inputs)["logp"] == "sum" else None

    def val_objective(self, inputs: ScoreInputs) -> Objective:
        logp = self.options(inputs)["logp"]
        if logp not in ("sum", "mean"):
            raise CurationError(f"rose: option logp must be sum or mean, got {logp!r}")
        return DPOObjective(beta=inputs.config.beta, per_token=logp == "mean")

    def val_items(self, pairs: Sequence[ValPair], tokenizer, max_length: int) -> list[Batch]:
        return [pair_item(tensors(encode_pair(tokenizer, p.prompt_messages, p.chosen, max_length)),
                          tensors(encode_pair(tokenizer, p.prompt_messages, p.rejected, max_length)))
                for p in pairs]
