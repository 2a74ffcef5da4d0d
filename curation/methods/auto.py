"""Auto: let the held-out check choose the method (issue 21).

1. Split the run's pairs as `check` does (`heldout.split_pairs`, 40% of each subtask's prompts
   held out). Too few pairs for a verdict (`heldout.readiness`): auto says so and scores with
   the fallback, BM25 (the best precision at 5% of the single methods on every suite measured
   with the tiny model, README "quality", and it needs no model).
2. Score the candidates with the scoring part only, in ``workdir/auto/``: one contrast run (the
   one feature extraction: warmup and train features from the workspace feature store, both
   answers' validation gradients) gives ROSE (alpha 1), and ``contrast.score_alpha`` LESS
   (alpha 0) and alpha 0.25 / 0.5 / 0.75 from its stored sides in seconds; then BM25, repsim,
   and the reciprocal-rank fusion of the best gradient candidate with BM25.
3. Judge each candidate's top budget as `check` does: a short LoRA fine-tune per seed, the
   held-out pairs' per-token margins, against random selections of the same size (shared by
   all candidates). The winner has the highest mean per-token margin, ties broken by accuracy.
4. Score the winner with all pairs into the run's own folder (its features, its explanations)
   and record every candidate's figures and why the winner won (``meta.auto``).

Held-out pairs reach nothing but the fine-tuned models' measurement (tested).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from curation.engine.select import budget_from, select_top
from curation.methods.base import Messages, Method, ScoreInputs, ScoreLabels, ScoreOutput, ValPair, register
from curation.methods.heldout import TuneConfig, Tuner, compare_with_random, readiness, split_pairs

ALPHAS = {"rose": 1.0, "less": 0.0, "contrast 0.25": 0.25, "contrast 0.5": 0.5, "contrast 0.75": 0.75}
FALLBACK = "bm25"
AUTO_FILE = "auto.json"  # in the run's folder: the winner (method, options, inputs of a fusion)
DISPLAY = {"rose": "ROSE", "less": "LESS"}  # how people write a gradient winner ("Contrast 0.5" otherwise)


def _pair_dict(p: ValPair) -> dict:
    return {"prompt": p.prompt, "prompt_messages": p.prompt_messages, "chosen": p.chosen,
            "rejected": p.rejected, "subtask": p.subtask}


def _sub(inputs: ScoreInputs, method: str, options: dict, pairs: Sequence[ValPair], workdir: Path) -> ScoreInputs:
    """``inputs`` for another method, options, pairs and folder (the same pool, model and budget)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(inputs.config, method=method, options=dict(options))
    return dataclasses.replace(inputs, config=cfg, pairs=list(pairs), workdir=workdir)


def _rrf(ids: np.ndarray, *scores: np.ndarray) -> np.ndarray:
    from curation.methods.fusion import ranks_of, rrf
    return rrf(np.stack([ranks_of(s, ids) for s in scores], axis=1), [1.0] * len(scores)).astype(np.float32)


def candidate_scores(inputs: ScoreInputs, pairs: Sequence[ValPair], root: Path) -> dict[str, np.ndarray]:
    """Every candidate's scores with ``pairs`` only (the fusion comes later: it needs a judged
    best gradient candidate). One contrast run extracts the features; the other alphas re-score."""
    from curation.methods.base import get_method
    from curation.methods.contrast import score_alpha
    from curation.methods.gradient import checkpoint_weighting

    out: dict[str, np.ndarray] = {}
    grad = _sub(inputs, "contrast", {"alpha": 1.0}, pairs, root / "gradient")
    rose = get_method("contrast").score(grad)
    lrs = rose.meta["checkpoint_lrs"]
    for name, alpha in ALPHAS.items():
        out[name] = rose.scores if alpha == 1.0 else score_alpha(grad.workdir, alpha, checkpoint_weighting("lr", lrs)).scores
    for name in ("bm25", "repsim"):
        out[name] = get_method(name).score(_sub(inputs, name, {}, pairs, root / name)).scores
    return out


def winner(workdir: Path | str | None) -> dict | None:
    """An auto run's record of what it scored with (`AUTO_FILE`: name, parts, alpha); None
    without one (no folder, or the run has not finished)."""
    from curation.errors import CurationError
    path = Path(workdir) / AUTO_FILE if workdir else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CurationError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def winner_labels(record: dict) -> ScoreLabels:
    """The labels of what auto chose: BM25's or RepSim's own, a gradient winner's as the contrast
    run it is (named after it), a fusion's with its gradient part (map, neighbours, pairs)."""
    from curation.methods.base import get_method
    from curation.methods.fusion import K
    name, alpha = record["name"], record.get("alpha")
    if name in ("bm25", "repsim"):
        return get_method(name).labels
    contrast = get_method("contrast").labels
    if name in ALPHAS:
        return dataclasses.replace(contrast, name=DISPLAY.get(name, name.capitalize()),
                                   score=f"{contrast.score} (a = {alpha:g}, chosen by auto)")
    return ScoreLabels("Fusion", f"reciprocal-rank fusion, chosen by auto, of contrast at a = {alpha:g} and BM25: "
                                 f"the sum over the two of 1 / ({K} + the example's rank)",
                       per_pair=contrast.per_pair, gradient=True)


def rescore_as(workdir: Path | str | None) -> tuple[str, dict, str]:
    """(method, options, note) that re-score an auto run's choice with other pairs from its stored
    features: a gradient winner is re-scored as the contrast run it is. The choice is not
    re-judged (that needs fine-tunes: a new auto run); any other winner is refused, saying why."""
    from curation.errors import CurationError
    record = winner(workdir)
    if record is None:
        raise CurationError("this auto run recorded no winner (auto.json in its folder): launch a new auto run")
    name = record["name"]
    if name not in ALPHAS:
        kind = "a fusion with BM25" if name.startswith("fusion") else "not a gradient method"
        raise CurationError(f"auto chose {name} ({kind}): only a gradient winner is re-scored from stored "
                            "features; launch a new auto run, which re-judges the candidates with the current pairs")
    note = (f"auto's choice, {name}, re-scored with the current pairs as a contrast run (alpha "
            f"{record['alpha']:g}); the choice itself is not re-judged: a new auto run does that")
    return "contrast", {"alpha": record["alpha"]}, note


@dataclasses.dataclass
class Candidate:
    name: str
    figures: dict  # `compare_with_random` of its top budget

    def row(self) -> dict:
        f = self.figures
        return {"name": self.name, "accuracy": f["accuracy"], "margin": f["margin"], "ci95": f["margin_ci95"],
                "accuracy_ci95": f["ci95"], "gain_vs_random": f["gain_vs_random"], "margin_gain": f["margin_gain"]}


def best(cands: Sequence[Candidate]) -> Candidate:
    """Highest mean per-token held-out margin, ties by accuracy, then by name (deterministic).

    The margin first: it is what `check`'s verdict interval is about, and accuracy over a few
    held-out pairs moves in steps of 1/(pairs·seeds) (on the demo, 4 pairs x 2 seeds, the most
    accurate candidate had the lowest margin)."""
    return sorted(cands, key=lambda c: (-c.figures["margin"], -c.figures["accuracy"], c.name))[0]


def why(winner: Candidate, cands: Sequence[Candidate]) -> str:
    rest = [c for c in cands if c is not winner]
    runner = best(rest) if rest else None
    f = winner.figures
    text = (f"{winner.name} has the highest mean per-token margin on the held-out pairs ({f['margin']:+.4g}, "
            f"preference accuracy {f['accuracy']:.0%})")
    if runner is not None:
        g = runner.figures
        tie = " at equal margin, by accuracy" if g["margin"] == f["margin"] else ""
        text += f", ahead of {runner.name} ({g['margin']:+.4g}, {g['accuracy']:.0%}){tie}"
    lo, hi = f["margin_ci95"]
    text += (f"; against {f['random_draws']} random selections its margin gain is {f['margin_gain']:+.3g} "
             f"(95% interval {lo:+.3g} to {hi:+.3g}).")
    if not any(c.figures["margin_ci95"][0] > 0 for c in cands):
        text += (" No candidate stands out from the random selections (every interval reaches 0 or below): "
                 "the choice is weak; more pairs make it firmer.")
    return text


@register
class Auto(Method):
    """Scores the candidates on part of the pairs, judges them on the rest, keeps the winner."""

    name = "auto"
    labels = ScoreLabels("Auto", "the score of the method auto chose on held-out pairs (see the run's auto table)",
                         per_subtask="mean score")
    description = "tries ROSE, LESS, contrast 0.25/0.5/0.75, BM25, repsim and a fusion; keeps the held-out winner"
    tune = TuneConfig(seeds=(0, 1))
    # how many fine-tunes judge the candidates and how long each is: seeds per candidate, random
    # draws behind the interval, epochs (and a floor of optimizer steps) of each fine-tune; fewer
    # make auto affordable on a large model on a CPU, at the price of a noisier verdict
    option_spec = {"seeds": len(tune.seeds), "random_draws": tune.random_draws, "epochs": tune.epochs,
                   "min_steps": tune.min_steps}
    uses_lora = True  # its gradient candidates share one warmup: the form's LoRA settings apply

    @classmethod
    def tune_config(cls, options: dict) -> TuneConfig:
        """`tune` with the run's options (integers, at least 1; random draws at least 2)."""
        from curation.errors import CurationError
        t = cls.tune
        values = {"seeds": len(t.seeds), "random_draws": t.random_draws, "epochs": t.epochs,
                  "min_steps": t.min_steps, **options}
        for key, low in (("seeds", 1), ("random_draws", 2), ("epochs", 1), ("min_steps", 1)):
            v = values[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise CurationError(f"auto: option {key} must be an integer >= {low}, got {v!r}")
        return dataclasses.replace(t, seeds=tuple(range(values["seeds"])), random_draws=values["random_draws"],
                                   epochs=values["epochs"], min_steps=values["min_steps"])

    def score(self, inputs: ScoreInputs) -> ScoreOutput:
        from curation.methods.base import method_options
        pairs = inputs.pairs
        method_options(self.name, inputs.config, dict(self.option_spec))  # refuses an unknown key
        cfg = self.tune_config(dict(inputs.config.options))
        ready = readiness([p.subtask for p in pairs], cfg.heldout_share, [p.prompt for p in pairs])
        if not ready["ready"]:
            auto = {"judged": False, "chosen": FALLBACK, "candidates": [],
                    "why": f"cannot judge: {ready['message']} Scored with the fallback, {FALLBACK}."}
            return self._final(inputs, {"name": FALLBACK}, auto)
        scoring, held = split_pairs([p.subtask for p in pairs], cfg.heldout_share, cfg.split_seed,
                                    prompts=[p.prompt for p in pairs])
        root = inputs.workdir / "auto"
        scores = candidate_scores(inputs, [pairs[i] for i in scoring], root)
        ids = np.asarray(inputs.example_ids, np.int64)
        n = budget_from(inputs.config.select.percent, inputs.config.select.n, len(ids))
        rep = inputs.reporter
        tuner = Tuner(inputs.config, inputs.workspace.home, [_pair_dict(pairs[i]) for i in held], cfg,
                      inputs.fetch, root / "tune")
        try:
            rep.stage("auto: fine-tune on random selections", cfg.random_draws)
            random = tuner.random_margins(ids, n, inputs.pool, rep.update)
            rep.update(cfg.random_draws)
            rep.stage("auto: judge candidates", (len(scores) + 1) * len(cfg.seeds))
            judge = lambda name, s: self._judge(tuner, ids, s, n, random, name, rep)  # noqa: E731
            cands = [judge(name, s) for name, s in scores.items()]
            grad = best([c for c in cands if c.name in ALPHAS])
            scores[f"fusion {grad.name} + bm25"] = _rrf(ids, scores[grad.name], scores["bm25"])
            cands.append(judge(f"fusion {grad.name} + bm25", scores[f"fusion {grad.name} + bm25"]))
        finally:
            tuner.close()
        winner = best(cands)
        auto = {"judged": True, "chosen": winner.name, "candidates": [c.row() for c in cands],
                "why": why(winner, cands), "heldout_pairs": len(held), "scoring_pairs": len(scoring),
                "heldout_prompts": sorted({pairs[i].prompt for i in held}), "budget": n,
                "seeds": list(cfg.seeds), "random_draws": cfg.random_draws,
                "random": {"accuracy": float((random > 0).mean()), "margin": float(random.mean())}}
        spec = {"name": winner.name, "gradient": grad.name} if winner.name.startswith("fusion") else {"name": winner.name}
        return self._final(inputs, spec, auto)

    def _judge(self, tuner: Tuner, ids, scores, n: int, random, name: str, rep) -> Candidate:
        chosen = select_top(scores, ids, n=n).selected_ids
        margins = []
        for seed in tuner.cfg.seeds:
            margins.append(tuner.margins(chosen, seed))
            rep.update(tuner.tuned - tuner.cfg.random_draws)
        return Candidate(name, compare_with_random(np.array(margins), random))

    def _final(self, inputs: ScoreInputs, spec: dict, auto: dict) -> ScoreOutput:
        """The winner scored with all pairs into the run's own folder."""
        from curation.methods.base import get_method
        name = spec["name"]
        grad_name = spec.get("gradient", name if name in ALPHAS else None)
        outs = {}
        if grad_name is not None:
            outs["gradient"] = get_method("contrast").score(
                _sub(inputs, "contrast", {"alpha": ALPHAS[grad_name]}, inputs.pairs, inputs.workdir))
        if name in ("bm25", "repsim") or name.startswith("fusion"):
            method = "bm25" if name.startswith("fusion") else name
            outs[method] = get_method(method).score(_sub(inputs, method, {}, inputs.pairs, inputs.workdir))
        if name.startswith("fusion"):
            ids = np.asarray(inputs.example_ids, np.int64)
            out = ScoreOutput(scores=_rrf(ids, outs["gradient"].scores, outs["bm25"].scores),
                              meta=dict(outs["gradient"].meta))
        else:
            out = next(iter(outs.values()))
        record = {"name": name, "parts": {k: ("contrast" if k == "gradient" else k) for k in outs},
                  "alpha": ALPHAS.get(grad_name) if grad_name else None}
        (inputs.workdir / AUTO_FILE).write_text(json.dumps(record))
        out.meta["auto"] = auto
        return out

    def _parts(self, workdir: Path) -> list[Method]:
        from curation.methods.base import get_method
        record = winner(workdir)
        return [] if record is None else [get_method(m) for m in record["parts"].values()]

    def run_labels(self, workdir: Path | None) -> ScoreLabels:
        record = winner(workdir)
        return self.labels if record is None else winner_labels(record)

    def pair_scores(self, workdir: Path, example_id: int, messages: Messages,
                    pairs: Sequence[ValPair]) -> np.ndarray | None:
        """The winner's (BM25's, RepSim's); a gradient winner's come from its stored features."""
        for method in self._parts(workdir):
            if (values := method.pair_scores(workdir, example_id, messages, pairs)) is not None:
                return values
        return None

    def explain(self, workdir: Path, example_id: int, messages: Messages, pairs: Sequence[ValPair]) -> dict:
        out: dict = {}
        for method in self._parts(workdir):
            out.update(method.explain(workdir, example_id, messages, pairs))
        return out

    def reason(self, workdir: Path, example_id: int) -> str | None:
        if (record := winner(workdir)) is None:
            return None
        extra = [r for m in self._parts(workdir) if (r := m.reason(workdir, example_id))]
        return " ".join([f"Auto chose {record['name']} on the held-out pairs."] + extra)
