"""Random selection (METHODS.md §5): the floor every other method has to beat.

Also home of the small helpers the other baselines (bm25, repsim, dsir) share: reading
`ScoreConfig.options` strictly, turning per-subtask means into a `ScoreOutput`, and sitting
out sharded passes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curation.config import ScoreConfig
from curation.errors import CurationError
from curation.methods.base import Method, ScoreInputs, ScoreOutput, register


def method_options(method: str, config: ScoreConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    """`defaults` overridden by `config.options`; an unknown key is refused, not ignored
    (a typo such as ``k_1`` must not silently run with the default)."""
    unknown = sorted(set(config.options) - set(defaults))
    if unknown:
        raise CurationError(f"method {method!r}: unknown option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(defaults)) or 'none'}")
    return {**defaults, **config.options}


def output_from_means(means: np.ndarray, subtasks: list[str], meta: dict[str, Any]) -> ScoreOutput:
    """Max over subtasks of ``means [n, n_subtasks]`` (the ROSE aggregation, METHODS.md §0
    stage 4), keeping the means and the driving subtask for the inspector."""
    means = np.asarray(means, np.float32)
    driver = means.argmax(axis=1)
    return ScoreOutput(scores=means[np.arange(len(means)), driver], subtasks=subtasks,
                       subtask_means=means, driver=driver, meta=meta)


def shard_pass_output(inputs: ScoreInputs) -> ScoreOutput | None:
    """A no-op result for a sharded pass (`score --shard i/N`, torchrun ranks), else None.

    Shards split the train features of the gradient methods; these baselines have nothing to
    split, and ranks writing the same run files at once would clobber each other, so they do
    all their work in the unsharded pass that follows (whose output is the one stored).
    """
    if inputs.rank[1] <= 1:
        return None
    return ScoreOutput(scores=np.full(len(inputs.example_ids), np.nan, np.float32))


@register
class RandomMethod(Method):
    """Uniform scores from a seeded generator: same seed, same pool -> same selection."""

    name = "random"
    needs_pairs = False
    description = "seeded uniform scores (option seed, default: the warmup seed)"

    def score(self, inputs: ScoreInputs) -> ScoreOutput:
        opts = method_options(self.name, inputs.config, {"seed": inputs.config.warmup.seed})
        n = len(inputs.example_ids)
        inputs.reporter.stage("random scores", n)
        # Rows are in example-id order (runs._inputs), so a seed fixes the score of each example.
        scores = np.random.default_rng(int(opts["seed"])).random(n).astype(np.float32)
        inputs.reporter.update(n)
        return ScoreOutput(scores=scores, meta={"seed": int(opts["seed"])})
