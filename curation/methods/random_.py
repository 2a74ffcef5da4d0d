"""Random selection (METHODS.md §5): the floor every other method has to beat."""

from __future__ import annotations

import numpy as np

from curation.methods.base import Method, ScoreInputs, ScoreLabels, ScoreOutput, method_options, register


@register
class RandomMethod(Method):
    """Uniform scores from a seeded generator: same seed, same pool -> same selection."""

    name = "random"
    uses_model = False  # text statistics only
    labels = ScoreLabels("Random", "a seeded uniform random number (the random baseline), so it says nothing "
                                   "about the example")
    needs_pairs = False
    option_spec = {"seed": 0}  # default: the run's warmup seed
    description = "seeded uniform scores (option seed, default: the warmup seed)"

    def score(self, inputs: ScoreInputs) -> ScoreOutput:
        opts = method_options(self.name, inputs.config, {"seed": inputs.config.warmup.seed})
        n = len(inputs.example_ids)
        inputs.reporter.stage("random scores", n)
        # Rows are in example-id order (runs._inputs), so a seed fixes the score of each example.
        scores = np.random.default_rng(int(opts["seed"])).random(n).astype(np.float32)
        inputs.reporter.update(n)
        return ScoreOutput(scores=scores, meta={"seed": int(opts["seed"])})
