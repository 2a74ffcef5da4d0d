"""Contrast: one family from the task to the contrast (issue 21).

ROSE's validation direction is ``∇log p(chosen) − ∇log p(rejected)`` (times a positive DPO
scalar, which a normalised direction does not see, METHODS.md §2); LESS's is ``∇log p(chosen)``
(§1). Every ROSE, LESS and contrast run keeps both sides of every pair (`gradient.SIDES`:
projected, unnormalised, float32) and scores with

    g(a) = ∇log p(chosen) − a · ∇log p(rejected),   a = option ``alpha`` in [0, 1]

normalised like any validation feature: ROSE is a = 1, LESS a = 0, one computation for all
three, so contrast at 1 or 0 ranks exactly as they do. Any other ``alpha`` re-scores from a
run's stored sides and train features without a model (`score_alpha`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from curation.engine.features import FeatureStore
from curation.engine.influence import InfluenceResult, ScoringInputs, normalise_rows, score
from curation.engine.objectives import Batch, LogProbObjective, Objective
from curation.errors import CurationError
from curation.methods.base import Messages, ScoreInputs, ValPair, register
from curation.methods.gradient import SIDES, SIDES_FILE, GradientMethod, gradient_labels, mix_sides, side_items


def check_alpha(value) -> float:
    """``alpha`` as a float in [0, 1], or a clear error."""
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise CurationError(f"contrast: option alpha must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise CurationError(f"contrast: option alpha must be in [0, 1], got {alpha:g}")
    return alpha


def _saved(workdir: Path) -> dict:
    """What a run with sides wrote beside its features: its alpha and every pair's subtask."""
    if not (workdir / SIDES_FILE).is_file():
        raise CurationError(f"{workdir}: no chosen/rejected validation features (a ROSE, LESS or contrast "
                            "run scored before they were kept?)")
    return json.loads((workdir / SIDES_FILE).read_text())


def _sides(workdir: Path, n_ckpt: int) -> list[tuple[np.ndarray, np.ndarray]]:
    fstore = FeatureStore(Path(workdir) / "features")
    return [tuple(fstore.reader(s, i).load_all() for s in SIDES) for i in range(n_ckpt)]


def score_alpha(workdir: Path, alpha: float, weights: Sequence[float]) -> InfluenceResult:
    """The scores of another ``alpha`` from a ROSE, LESS or contrast run's stored sides and train
    features (seconds: no model, no gradient). ``weights``: the checkpoint weights (unnormalised)."""
    alpha, workdir = check_alpha(alpha), Path(workdir)
    subtasks, fstore = _saved(workdir)["pair_subtasks"], FeatureStore(workdir / "features")
    train = [fstore.reader("train", i) for i in range(len(weights))]
    val = [mix_sides(c, r, alpha, t.manifest.dtype) for (c, r), t in zip(_sides(workdir, len(weights)), train)]
    return score(ScoringInputs(train=train, val=val, weights=weights, val_subtasks=list(subtasks)))


@register
class Contrast(GradientMethod):
    """ROSE at alpha 1, LESS at alpha 0, and the steps between: how much of the preference
    contrast (the rejected answer) the task direction keeps."""

    name = "contrast"
    labels = gradient_labels("Contrast", "g(a) = ∇log p(chosen) − a·∇log p(rejected) of the pairs "
                                         "(a = 1: ROSE's direction, a = 0: LESS's)")
    description = "from LESS (alpha 0) to ROSE (alpha 1): chosen minus alpha times rejected gradients"
    option_defaults = {"alpha": 1.0, "checkpoint_weights": "lr", "length_strata": 0}

    def side_alpha(self, inputs: ScoreInputs) -> float:
        return check_alpha(self.options(inputs)["alpha"])

    def score(self, inputs: ScoreInputs):
        alpha = self.side_alpha(inputs)  # a bad alpha fails before any model is loaded
        out = super().score(inputs)
        if out is not None:
            out.meta["alpha"] = alpha
        return out

    def val_objective(self, inputs: ScoreInputs) -> Objective:
        return LogProbObjective()

    def val_items(self, pairs: Sequence[ValPair], tokenizer, max_length: int) -> list[Batch]:
        return side_items(pairs, tokenizer, max_length)

    def explain(self, workdir: Path, example_id: int, messages: Messages, pairs: Sequence[ValPair]) -> dict:
        parts = contrast_parts(workdir, example_id)
        return {} if parts is None else {"Task and contrast parts": parts.sentence()}

    def reason(self, workdir: Path, example_id: int) -> str | None:
        parts = contrast_parts(workdir, example_id)
        return None if parts is None else parts.sentence()


class ContrastParts:
    """An example's score split into the task part (chosen) and the contrast part (−a·rejected)."""

    def __init__(self, alpha: float, task: float, contrast: float, subtask: str):
        self.alpha, self.task, self.contrast, self.subtask = alpha, task, contrast, subtask

    def sentence(self) -> str:
        total = self.task + self.contrast
        return (f"Of its score {total:+.4f} (subtask '{self.subtask}'), the task part (the chosen answers' "
                f"gradient) gives {self.task:+.4f} and the contrast part (−{self.alpha:g} × the rejected "
                f"answers' gradient) gives {self.contrast:+.4f}.")


def contrast_parts(workdir: Path, example_id: int) -> ContrastParts | None:
    """``cos(t, g) = t̂·c/|g| − a·t̂·r/|g|`` per checkpoint and pair, weighted and averaged over the
    driving subtask's pairs like the score; None when the run kept no sides."""
    workdir = Path(workdir)
    if not (workdir / SIDES_FILE).is_file():
        return None
    saved = _saved(workdir)
    alpha, res = check_alpha(saved["alpha"]), InfluenceResult.load(workdir)
    rows = np.flatnonzero(res.example_ids == int(example_id))
    if not len(rows):
        return None
    row, fstore = int(rows[0]), FeatureStore(workdir / "features")
    driver = res.subtasks[int(res.driver[row])]
    index = [j for j, s in enumerate(saved["pair_subtasks"]) if s == driver]
    task = contrast = 0.0
    for i, ((c, r), w) in enumerate(zip(_sides(workdir, len(res.weights)), res.weights)):
        t = normalise_rows(fstore.reader("train", i).rows(row, row + 1))[0]
        g = np.linalg.norm(c - np.float32(alpha) * r, axis=1)
        g[g == 0] = 1.0
        task += float(w) * float(np.mean((c[index] @ t) / g[index]))
        contrast += float(w) * float(np.mean(-alpha * (r[index] @ t) / g[index]))
    return ContrastParts(alpha, task, contrast, driver)
