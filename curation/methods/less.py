"""LESS: validation objective = the SFT loss of (prompt, chosen) (METHODS.md §1)."""

from __future__ import annotations

from typing import Sequence

from curation.engine.model import encode_pair
from curation.engine.objectives import Batch, Objective, SFTObjective, sft_item
from curation.methods.base import ScoreInputs, ValPair, register
from curation.methods.gradient import GradientMethod, gradient_labels, tensors


@register
class Less(GradientMethod):
    """Loss-based influence: the baseline ROSE is measured against."""

    name = "less"
    labels = gradient_labels("LESS", "the gradient of the SFT loss of the pairs' chosen answers")

    def side_alpha(self, inputs: ScoreInputs) -> float | None:
        """0: ∇log p(chosen), the direction of the chosen answer's mean token cross-entropy."""
        return 0.0

    def val_objective(self, inputs: ScoreInputs) -> Objective:
        return SFTObjective()

    def val_items(self, pairs: Sequence[ValPair], tokenizer, max_length: int) -> list[Batch]:
        return [sft_item(*tensors(encode_pair(tokenizer, p.prompt_messages, p.chosen, max_length))) for p in pairs]
