"""`bench diagnose`: why ROSE trails LESS, one hypothesis per variant, on the quality suites.

One exact-feature ROSE run per suite target, then every variant re-scores the same stored
train features (seconds each) except the sketch, which needs its own features:

* ``rose``            the default (METHODS.md §2, exact features on small models)
* ``rose beta=1``     β and the reference model: with L2-normalised validation features the
                      DPO coefficient ``-β σ(β(h_l - h_w))`` is a positive scalar per pair and
                      cancels, so ROSE's direction is ``∇log π(y_w) - ∇log π(y_l)`` whatever β
                      or π_ref; this variant must rank identically (Spearman 1)
* ``rose mean-logp``  per-token (length-normalised) instead of summed log-probs
* ``rose last-ckpt`` / ``rose uniform``  checkpoint weighting
* ``rose off-task``   the DPO gradient on label-vs-label pairs: the same chosen responses, but
                      each rejected is another family's response (it differs in task, not label)
* ``rose sketch``     projection noise: sparse JL at the bench's k (8192) instead of exact features
* ``less`` / ``less sketch``  the reference point

Metrics: precision (share of the target family/dataset) and, on synthetic, the planted-noise
rate at 1/5/10%; Spearman of each variant's scores against the default ROSE run; separation
= (mean score of target examples - mean of the rest) / std of all scores; and per target the
pair geometry (`pair_geometry`: cosine of each pair's chosen and rejected gradients).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from curation.bench.quality import (
    QualityConfig,
    SuiteRun,
    bench_dir,
    build_suite,
    pct_key,
    resolve_model,
    selection_metrics,
)

VARIANTS = {  # name -> (method, config overrides), all re-scored from the default run's features
    "rose beta=1": ("rose", {"beta": 1.0}),
    "rose mean-logp": ("rose", {"options": {"logp": "mean"}}),
    "rose last-ckpt": ("rose", {"options": {"checkpoint_weights": "last"}}),
    "rose uniform": ("rose", {"options": {"checkpoint_weights": "uniform"}}),
    "less": ("less", {}),
}


def offtask_pairs(prefs: list[dict], pool: list[dict], target: str, seed: int = 0) -> list[dict]:
    """The same pairs with each rejected replaced by a response of another family's example."""
    rng = random.Random(seed)
    others = [r for r in pool if r["dataset"] != target]
    out = []
    for p in prefs:
        other = rng.choice(others)
        out.append({**p, "rejected": other["messages"][-1]["content"]})
    return out


class Diagnosis:
    """One suite's variants in a throwaway workspace (built on `SuiteRun`'s import)."""

    def __init__(self, run: SuiteRun):
        self.run, self.rows, self.scores, self.geometry = run, {}, {}, {}

    def _record(self, name: str, run_id: int, target: str, t: float) -> None:
        from curation.engine.select import select_top
        from curation.runs.execute import load_scores
        r = self.run
        ids, scores = load_scores(r.store, run_id)
        self.scores.setdefault(target, {})[name] = scores
        row = {pct_key(p): selection_metrics([r.uid[i] for i in select_top(scores, ids, percent=p).selected_ids],
                                             r.labels, target, r.suite.has_noise) for p in r.cfg.percents}
        base = self.scores[target].get("rose")
        row["spearman_vs_rose"] = float(stats.spearmanr(base, scores).statistic) if base is not None else 1.0
        on = np.array([r.labels[r.uid[int(i)]]["dataset"] == target for i in ids])
        row["separation"] = float((scores[on].mean() - scores[~on].mean()) / (scores.std() or 1.0))
        row["wall_s"] = round(time.perf_counter() - t, 1)
        self.rows.setdefault(target, {})[name] = row
        r.log(f"{r.suite.name}/{target}: {name}: precision@5% {row['5']['precision']:.2f}, "
              f"spearman vs rose {row['spearman_vs_rose']:.3f}")

    def target(self, tg) -> None:
        from curation.data.imports import import_prefs
        from curation.runs.execute import create_run, execute_run
        from curation.runs.rescore import rescore
        from curation.synthetic import to_jsonl

        r, prefs = self.run, f"prefs-{tg.name}"
        t = time.perf_counter()
        base = create_run(r.store, "pool", prefs, r.cfg.score_config("rose", r.model_path, tg.nice_reward,
                                                                      r.suite.max_length), ws=r.ws)
        execute_run(r.store, base, ws=r.ws)
        self._record("rose", base, tg.name, t)
        for name, (method, overrides) in VARIANTS.items():
            t = time.perf_counter()
            self._record(name, rescore(r.store, base, method=method, ws=r.ws, overrides=overrides).run_id, tg.name, t)
        t = time.perf_counter()
        path = r.ws.uploads / f"offtask-{tg.name}.jsonl"
        path.write_text(to_jsonl(offtask_pairs(tg.prefs, r.suite.pool, tg.name)), encoding="utf-8")
        import_prefs(r.store, path, name=f"offtask-{tg.name}", subtask_field="subtask")
        self._record("rose off-task", rescore(r.store, base, prefs=f"offtask-{tg.name}", ws=r.ws).run_id, tg.name, t)
        t = time.perf_counter()
        cfg = r.cfg.score_config("rose", r.model_path, tg.nice_reward, r.suite.max_length)
        cfg.features.projector, cfg.features.k = "sparse_jl", r.cfg.k  # 8192 (256 with --quick)
        sketch = create_run(r.store, "pool", prefs, cfg, ws=r.ws)
        execute_run(r.store, sketch, ws=r.ws)
        self._record("rose sketch", sketch, tg.name, t)
        t = time.perf_counter()
        self._record("less sketch", rescore(r.store, sketch, method="less", ws=r.ws).run_id, tg.name, t)
        self.geometry[tg.name] = pair_geometry(r.store, r.ws, base, prefs)
        r.log(f"{r.suite.name}/{tg.name}: pair geometry {self.geometry[tg.name]}")


def run_diagnose(cfg: QualityConfig, log=print) -> dict:
    """Every suite of ``cfg``: {suite: {target: {variant: metrics}}} (skipped suites say why)."""
    out = {}
    for name in cfg.suites:
        suite = build_suite(name, cfg)
        if isinstance(suite, str):
            out[name] = {"_info": {"skipped": suite}}
            continue
        with bench_dir(f"diagnose-{name}-") as tmp:
            run = SuiteRun(suite, cfg, resolve_model(cfg.model, log), tmp, log)
            run.import_data()
            diag = Diagnosis(run)
            for tg in suite.targets:
                diag.target(tg)
            out[name] = {**diag.rows, "_info": {"sizes": suite.sizes, "model": cfg.model, "pair_geometry": diag.geometry}}
    return out


def summary(res: dict) -> str:
    lines = []
    for suite, by_target in res.items():
        if "skipped" in by_target.get("_info", {}):
            lines.append(f"{suite}: skipped ({by_target['_info']['skipped']})")
            continue
        for target, rows in by_target.items():
            if target == "_info":
                continue
            lines += [f"{suite} / target {target}",
                      f"{'variant':<16}{'prec 1%':>8}{'5%':>6}{'10%':>6}{'noise 5%':>10}{'spearman':>10}{'separation':>11}{'s':>7}"]
            for name, row in rows.items():
                noise = row["5"].get("noise_rate")
                lines.append(f"{name:<16}{row['1']['precision']:>8.2f}{row['5']['precision']:>6.2f}"
                             f"{row['10']['precision']:>6.2f}{'' if noise is None else f'{noise:.2f}':>10}"
                             f"{row['spearman_vs_rose']:>10.3f}{row.get('separation', float('nan')):>11.2f}{row['wall_s']:>7.0f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import torch

    from curation.bench.quality import config_from_args
    cfg = config_from_args(args)
    cfg = dataclasses.replace(cfg, suites=cfg.suites if getattr(args, "suite", None) else ("synthetic", "t0"))
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench diagnose {time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    res = run_diagnose(cfg, log)
    print(json.dumps(res) if args.json else summary(res))
    return 0


def pair_geometry(store, ws, base_run: int, prefs: str) -> dict:
    """How much of a pair's chosen gradient survives in ROSE's chosen-minus-rejected direction.

    Two LESS re-scores of the base run give the exact (or sketched) gradient direction of each
    pair's chosen and of its rejected response (the SFT gradient is ``-∇log π(y)/|y|``: a
    scale, so cosines are those of ``∇log π``). With ``c = cos(g_w, g_l)`` and equal norms,
    ``|g_w - g_l| = |g_w| sqrt(2(1-c))``: at c near 1 the shared (task) part cancels and what is
    left is the few tokens where the answers differ.
    """
    from curation.data.imports import import_prefs
    from curation.data.store import Run
    from curation.engine.features import FeatureStore
    from curation.runs.execute import show_run
    from curation.runs.rescore import rescore
    from curation.synthetic import to_jsonl

    pairs = show_run(store, base_run, top=0)["meta"]["pairs"]
    swapped = [{"prompt": p["prompt"], "chosen": p["rejected"], "rejected": p["chosen"], "subtask": p["subtask"]}
               for p in pairs]
    path = ws.uploads / f"swapped-{prefs}.jsonl"
    path.write_text(to_jsonl(swapped), encoding="utf-8")
    name = f"swapped-{prefs}"
    import_prefs(store, path, name=name, subtask_field="subtask")
    runs = [rescore(store, base_run, method="less", ws=ws).run_id,
            rescore(store, base_run, prefs=name, method="less", ws=ws).run_id]
    with store.session() as s:
        dirs = [FeatureStore(Path(s.get(Run, r).workdir) / "features") for r in runs]
    n_ckpt = len(show_run(store, base_run, top=0)["meta"]["checkpoint_lrs"])
    cos = []
    for i in range(n_ckpt):
        w, lose = (d.reader("val", i).load_all() for d in dirs)
        w, lose = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (w, lose))
        cos.append((w * lose).sum(1))
    c = np.array(cos)  # [ckpt, pairs]
    return {"cos_chosen_rejected_mean": float(c.mean()), "cos_chosen_rejected_min": float(c.min()),
            "cos_chosen_rejected_max": float(c.max()),
            "difference_norm_share": float(np.sqrt(2 * (1 - c)).mean())}
