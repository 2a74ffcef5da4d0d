"""`check`: is a run's selection any good? A held-out test the curator can run on any run.

0. Refuse at once when the pairs are too few for a verdict (`heldout.readiness`: the minimum
   per subtask and overall, from the split's rules), not after the fine-tunes.
1. Split the run's preference pairs per subtask (`heldout.split_pairs`): a scoring part and a
   held-out part that scoring never sees.
2. Re-score the pool with the scoring part only (a sub-run of the same method and settings:
   gradient methods reuse the stored train features, so this costs seconds) and take the
   run's budget from the top.
3. Fine-tune a fresh LoRA on that selection for several seeds and on K (5) random selections
   of the same size (same steps), and measure the held-out pairs' per-token DPO implicit-reward
   margins against the base model (`heldout`: per token, so answer length does not decide).
4. Report accuracy and margin vs random with an interval over the spread between the random
   draws (`heldout.compare_with_random`), agreement with BM25 and LESS
   scored on the same scoring part, the selection's make-up by source next to the pool's,
   examples whose verifiable answer looks wrong, and a verdict in plain words.

The report is written to ``<run dir>/check.json`` (atomically) and its summary to the run's
metadata (``meta.check``), which Explore, Curate and export read. `launch_check` runs it in a
detached process, like scoring; its progress is ``<run dir>/check_status.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats
from sqlalchemy import func, select

from curation.data.store import Example, Pool, PreferenceSet, Run, Score, Store
from curation.data.users import INTERNAL, Actor, require
from curation.engine.features import atomic_write
from curation.errors import CurationError
from curation.methods.heldout import (TuneConfig, Tuner, compare_with_random, finetune_epochs, label_contrast,
                                      readiness, split_pairs, verdict)
from curation.workspace import Workspace

Progress = Callable[[str, int, int], None]
LABEL_FIELDS = ("answer", "label", "gold", "target")  # record fields that can verify a response
STATUS_FILE, RESULT_FILE = "check_status.json", "check.json"


@dataclass
class CheckConfig(TuneConfig):
    """Settings of one check: the split and fine-tune (`heldout.TuneConfig`), the budget and the
    methods it reports agreement with."""

    percent: float | None = None  # budget; default: the run's own
    baselines: tuple[str, ...] = ("bm25", "less")

    def __post_init__(self) -> None:
        self.seeds, self.baselines = tuple(self.seeds), tuple(self.baselines)
        if not self.seeds or not 0 < self.heldout_share < 1 or self.epochs < 1 or self.random_draws < 2:
            raise CurationError("CheckConfig: needs seeds, 0 < heldout_share < 1, epochs >= 1 and random_draws >= 2")
        if self.percent is not None and not 0 < self.percent <= 100:
            raise CurationError(f"CheckConfig: percent must be in (0, 100], got {self.percent}")


def result_path(ws: Workspace, run_id: int) -> Path:
    return ws.run_dir(run_id) / RESULT_FILE


def load_check(ws: Workspace, run_id: int) -> dict | None:
    """The last finished check of a run, or None."""
    path = result_path(ws, run_id)
    return json.loads(path.read_text()) if path.exists() else None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, default=str).encode()))


# ------------------------------------------------------------------ the steps


def _base_run(store: Store, run_id: int) -> tuple[Run, str, str | None]:
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        if run.status != "done":
            raise CurationError(f"run {run_id} is {run.status}: check a finished run")
        if not (run.meta or {}).get("pairs"):
            raise CurationError(f"run {run_id} ({run.method}) has no preference pairs to hold out")
        pool = s.get(Pool, run.pool_id).name
        ps = s.get(PreferenceSet, run.prefs_id) if run.prefs_id else None
        prefs = ps.name if ps else None
        s.expunge(run)
    return run, pool, prefs


def _sub_run(store: Store, ws: Workspace, run: Run, pool: str, prefs: str | None, method: str,
             pairs: list[dict], base_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``method`` with ``pairs`` (the run's settings otherwise), as (ids, scores)."""
    from curation.config import ScoreConfig
    from curation.runs.execute import create_run, execute_run, load_scores

    if method == "fusion":  # each input re-scored with ``pairs`` only, then fused the same way
        return _fused_sub_run(store, ws, run, pool, pairs, base_id)
    cfg = ScoreConfig.from_dict(run.config).for_method(method)
    meta = {"check_of": base_id, "internal": True}
    if fid := ((run.meta or {}).get("features") or {}).get("id"):  # the run's stored features: no model load
        meta["feature_hint"] = {"set": fid, "warmup": (run.meta or {}).get("warmup")}
    sub = create_run(store, pool, prefs, cfg, ws=ws, pairs=pairs, meta=meta, actor=INTERNAL)
    execute_run(store, sub, ws=ws)
    return load_scores(store, sub)


def _fused_sub_run(store: Store, ws: Workspace, run: Run, pool: str, pairs: list[dict],
                   base_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A fusion run's scores with ``pairs``: its inputs' sub-runs, fused with its weights."""
    from curation.methods.fusion import ranks_of, rrf

    options = run.config.get("options") or {}
    parts = []
    for input_id in options.get("runs") or []:
        inner, _, inner_prefs = _base_run(store, input_id)
        parts.append(_sub_run(store, ws, inner, pool, inner_prefs, inner.method, pairs, base_id))
    ids = parts[0][0]
    ranks = np.stack([ranks_of(scores, ids) for _, scores in parts], axis=1)
    return ids, rrf(ranks, options["weights"]).astype(np.float32)


def _budget(store: Store, n_pool: int, run_id: int, cfg: CheckConfig) -> int:
    """The check's budget, else the run's own (`curate.run_budget`, what Curate and export use)."""
    from curation.engine.select import budget_from
    from curation.review.curate import run_budget
    percent, n = (cfg.percent, None) if cfg.percent is not None else run_budget(store, run_id)
    return budget_from(percent, n, n_pool)


def check_seconds(cfg: CheckConfig, budget: int, example_epoch_s: float, scoring_s: float,
                  bm25_s: float, factor: float = 1.0) -> float:
    """A check's modelled wall time: the re-scoring sub-runs (the run's own method and the
    gradient baselines cost what its scoring part cost; BM25 its own), then one fine-tune per seed
    and one per random draw, each of ``finetune_epochs`` epochs over the budget, at the run's
    measured warmup seconds per example and epoch (x2: r 16 on every linear layer against the warmup's r 8 on attention),
    times ``factor`` (measured / estimated over earlier checks on this machine)."""
    subs = scoring_s * (1 + sum(b != "bm25" for b in cfg.baselines)) + bm25_s * ("bm25" in cfg.baselines)
    tune = (len(cfg.seeds) + cfg.random_draws) * finetune_epochs(cfg, budget) * budget * example_epoch_s * 2.0
    return factor * (subs + tune)


def estimate_check(store: Store, run_id: int, cfg: CheckConfig | None = None) -> dict[str, Any]:
    """Seconds a check of ``run_id`` should take, before launch (`check_seconds` on the run's own
    stage times), calibrated on earlier checks of this workspace; ``{"seconds", "budget", "calibrated_on"}``."""
    from curation.runs.progress import DEMO_TOKENS, TINY_PARAMS, Facts, row_seconds

    cfg = cfg or CheckConfig()
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise CurationError(f"no run with id {run_id}")
        n_pool = int(s.scalar(select(func.count()).select_from(Score).where(Score.run_id == run_id)) or 0)
        times, config = dict(run.stage_times or {}), run.config or {}
        earlier = [(r.meta or {}).get("check") or {} for r in s.scalars(
            select(Run).where(Run.id != run_id).order_by(Run.id.desc()).limit(50))]
    budget = _budget(store, n_pool, run_id, cfg)
    warm = config.get("warmup") or {}
    warm_n = max(1, round(n_pool * float(warm.get("percent", 5.0)) / 100))
    warm_s = times.get("warmup", 0.0)
    per_example = (warm_s / (warm_n * int(warm.get("epochs", 4))) if warm_s > 1.0 else
                   row_seconds(Facts(n=n_pool, n_pairs=0, tokens=DEMO_TOKENS, params=TINY_PARAMS, lora_dim=None)))
    scoring = sum(v for k, v in times.items() if k.startswith(("validation features", "score", "select", "load model")))
    pairs = [c for c in earlier if c.get("wall_s") and c.get("estimate_s")]
    factor = (sum(c["wall_s"] for c in pairs[:5]) / sum(c["estimate_s"] for c in pairs[:5])) if pairs else 1.0
    seconds = check_seconds(cfg, budget, per_example, scoring, 1e-4 * n_pool + 2.0, min(20.0, max(0.05, factor)))
    return {"seconds": round(seconds, 1), "budget": budget, "calibrated_on": min(len(pairs), 5)}


def _top(ids: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """The top ``n`` ids the way every selection is made (`select.select_top`: ties by id)."""
    from curation.engine.select import select_top
    return np.asarray(select_top(scores, ids, n=n).selected_ids, np.int64)


def agreement(ids: np.ndarray, scores: np.ndarray, other: np.ndarray, n: int) -> dict[str, float]:
    """Spearman and top-n overlap of two score vectors over the same (id-ordered) pool."""
    rho = stats.spearmanr(scores, other).statistic
    overlap = len(set(_top(ids, scores, n).tolist()) & set(_top(ids, other, n).tolist())) / n
    return {"spearman": None if np.isnan(rho) else float(rho), "overlap": float(overlap)}


def composition(store: Store, pool_id: int, selected: list[int]) -> list[dict[str, Any]]:
    """Share of each source in the selection next to its share of the pool, biggest first."""
    with store.session() as s:
        pool = dict(s.execute(select(Example.source, func.count()).where(Example.pool_id == pool_id)
                              .group_by(Example.source)).all())
        chosen = dict(s.execute(select(Example.source, func.count()).where(Example.id.in_(selected))
                                .group_by(Example.source)).all())
    total, n = sum(pool.values()), max(1, len(selected))
    rows = [{"source": src, "selected": chosen.get(src, 0), "selected_share": chosen.get(src, 0) / n,
             "pool_share": cnt / total} for src, cnt in pool.items()]
    return sorted(rows, key=lambda r: (-r["selected"], -r["pool_share"], r["source"]))


def answer_flags(store: Store, selected: list[int], reward_spec: str | None = None) -> list[dict[str, Any]]:
    """Selected examples whose record carries a verifiable answer that the response contradicts.

    The check is the run's NICE reward when it is ``number`` or ``exact_match`` (label-free
    rewards say nothing about a label), else ``number`` for numeric labels
    (last number of the response) and, for text labels, whether the response contains the
    label as whole words (a short label such as "positive" inside a full sentence).
    """
    from curation.methods.rewards import last_number, make_reward
    flags = []
    with store.session() as s:
        rows = s.execute(select(Example.id, Example.uid, Example.messages, Example.original)
                         .where(Example.id.in_(selected))).all()
    for ex_id, uid, messages, original in rows:
        label = next((original.get(f) for f in LABEL_FIELDS if isinstance(original, dict)
                      and isinstance(original.get(f), (str, int, float))), None)
        replies = [m.get("content", "") for m in messages if m.get("role") == "assistant"]
        if label is None or not replies:
            continue
        spec = reward_spec if reward_spec in ("number", "exact_match") else None
        spec = spec or ("number" if last_number(str(label)) is not None else "contains")
        if spec == "contains":
            ok = _contains_words(replies[-1], str(label))
        else:
            ok = make_reward(spec)("", replies[-1], str(label)) > 0
        if not ok:
            flags.append({"example_id": int(ex_id), "uid": uid, "label": str(label), "reward": spec,
                          "reason": f"the response's answer disagrees with its record's label {label!r} ({spec})"})
    return sorted(flags, key=lambda f: f["example_id"])


def _contains_words(text: str, label: str) -> bool:
    """Whether the label's words occur in order, as whole words ("positive" in "is positive, overall")."""
    words, want = re.findall(r"\w+", text.casefold()), re.findall(r"\w+", label.casefold())
    return bool(want) and any(words[i:i + len(want)] == want for i in range(len(words) - len(want) + 1))


def _tuner(run: Run, ws: Workspace, heldout: list[dict], cfg: CheckConfig, fetch) -> Tuner:
    """A `heldout.Tuner` working in this process's folder of the run (older ones, left by a killed
    check, are removed)."""
    from curation.config import ScoreConfig
    from curation.runs.jobs import process_alive
    work = ws.run_dir(run.id) / "check_tmp" / str(os.getpid())
    for old in (work.parent.iterdir() if work.parent.exists() else ()):
        if not (old.name.isdigit() and process_alive(int(old.name))):
            shutil.rmtree(old, ignore_errors=True)
    return Tuner(ScoreConfig.from_dict(run.config), ws.home, heldout, cfg, fetch, work)


def require_ready(run: Run, cfg: CheckConfig) -> dict:
    """`heldout.readiness` of a run's pairs; a CurationError saying what to add when too few."""
    pairs = run.meta["pairs"]
    ready = readiness([p["subtask"] for p in pairs], cfg.heldout_share, [p["prompt"] for p in pairs])
    if not ready["ready"]:
        raise CurationError(f"run {run.id}: {ready['message']}")
    return ready


def run_check(store: Store, run_id: int, cfg: CheckConfig | None = None, ws: Workspace | None = None,
              progress: Progress | None = None, actor: Actor | None = None) -> dict[str, Any]:
    """The whole check of a finished run (see the module docstring); returns and stores the report."""
    require(actor, "check")
    from curation.methods import get_method
    from curation.methods.gradient import GradientMethod
    from curation.runs.execute import _fetcher

    cfg, ws = cfg or CheckConfig(), (ws or Workspace.from_env()).ensure()
    note = progress or (lambda stage, done, total: None)
    started = time.time()
    run, pool, prefs = _base_run(store, run_id)
    require_ready(run, cfg)
    estimate = estimate_check(store, run_id, cfg)["seconds"]  # kept beside the wall time: later estimates calibrate on it
    agree, notes = {}, []
    pairs = run.meta["pairs"]
    scoring, held = split_pairs([p["subtask"] for p in pairs], cfg.heldout_share, cfg.split_seed,
                                prompts=[p["prompt"] for p in pairs])
    score_pairs = [pairs[i] for i in scoring]
    steps = 2 + len(cfg.baselines) + len(cfg.seeds) + cfg.random_draws
    note(f"score {run.method} with {len(scoring)} of {len(pairs)} pairs", 0, steps)
    ids, scores = _sub_run(store, ws, run, pool, prefs, run.method, score_pairs, run_id)
    n = _budget(store, len(ids), run_id, cfg)
    with store.session() as s:
        n_scored = s.scalar(select(func.count()).select_from(Score).where(Score.run_id == run_id))
    if len(ids) != n_scored:
        notes.append(f"the pool has {len(ids):,} examples now and had {n_scored:,} when run {run_id} "
                     "was scored: this checks a selection from the pool as it is now")
    chosen = _top(ids, scores, n)
    if model_warning := (run.meta or {}).get("model_warning"):
        notes.append(model_warning)
    if run.method == "rose" and (warning := label_contrast(pairs).get("warning")):
        notes.append(warning)
    for i, method in enumerate(cfg.baselines):
        note(f"agreement with {method}", 1 + i, steps)
        if method == run.method:
            continue
        if isinstance(get_method(method), GradientMethod) and not isinstance(get_method(run.method), GradientMethod):
            notes.append(f"no agreement with {method}: it needs train features, which a {run.method} run does not store")
            continue
        b_ids, b_scores = _sub_run(store, ws, run, pool, prefs, method, score_pairs, run_id)
        agree[method] = agreement(ids, scores, b_scores, n) if np.array_equal(b_ids, ids) else None
    tuner = _tuner(run, ws, [pairs[i] for i in held], cfg, _fetcher(store))
    try:
        step = 1 + len(cfg.baselines)
        sel_m = []
        for seed in cfg.seeds:
            note(f"fine-tune on the selection (seed {seed})", step, steps)
            sel_m.append(tuner.margins(chosen.tolist(), seed))
            step += 1
        rand_m = tuner.random_margins(ids, n, run_id, lambda k: note(
            f"fine-tune on random selection {k + 1} of {cfg.random_draws}", step + k, steps))
    finally:
        tuner.close()
    held_stats = compare_with_random(np.array(sel_m), rand_m)
    label, sentence = verdict(held_stats)
    report = {"run_id": run_id, "method": run.method, "heldout": held_stats, "agreement": agree,
              "composition": composition(store, run.pool_id, chosen.tolist()),
              "flags": answer_flags(store, chosen.tolist(), run.config.get("options", {}).get("reward")),
              "verdict": sentence, "label": label, "model_warning": model_warning,
              "budget": n, "pool_size": int(len(ids)),
              "split": {"scoring": [pairs[i]["id"] for i in scoring], "heldout": [pairs[i]["id"] for i in held]},
              "notes": notes, "config": dataclasses.asdict(cfg), "wall_s": round(time.time() - started, 1),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_json(result_path(ws, run_id), report)
    from curation.runs.jobs import merge_run_meta
    merge_run_meta(store, run_id, check={"label": label, "verdict": sentence, "finished": report["finished"],
                                         "accuracy": held_stats["accuracy"], "ci95": held_stats["ci95"],
                                         "random_accuracy": held_stats["random_accuracy"], "flags": len(report["flags"]),
                                         "budget": n, "pool_size": int(len(ids)), "wall_s": report["wall_s"],
                                         **({"estimate_s": estimate} if estimate else {}),
                                         **({"model_warning": model_warning} if model_warning else {})})
    note("done", steps, steps)
    return report


# ------------------------------------------------------------------ in the background


def status_path(ws: Workspace, run_id: int) -> Path:
    return ws.run_dir(run_id) / STATUS_FILE


def launch_check(store: Store, run_id: int, ws: Workspace | None = None, actor: Actor | None = None,
                 args: Sequence[str] = ()) -> int:
    """Start ``python -m curation check RUN_ID --record [ARGS]`` detached (it survives the browser),
    as the same user (``--as``); refused while another check of the run is alive. `args` are the
    CLI's own options (``--seeds``, ``--percent``), passed on as given."""
    actor = require(actor, "check")
    ws = (ws or Workspace.from_env()).ensure()
    require_ready(_base_run(store, run_id)[0], CheckConfig())  # refuse now (unfinished, too few pairs), not in the log
    live = check_status(ws, run_id)
    if live and live["status"] in ("queued", "running"):
        raise CurationError(f"a check of run {run_id} is already running (pid {live.get('pid')})")
    log = ws.run_dir(run_id) / "check.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CURATION_HOME": str(ws.home), "CURATION_DB_URL": ws.db_url, "PYTHONUNBUFFERED": "1"}
    started = time.time()
    with open(log, "ab") as out:
        who = [] if actor.local else ["--as", actor.name]
        proc = subprocess.Popen([sys.executable, "-m", "curation", *who, "check", str(run_id), "--record", *args],
                                cwd=Path(__file__).resolve().parents[2], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    st = check_status(ws, run_id)
    if st is None or st.get("pid") != proc.pid:  # the child has not written its own status yet
        _write_json(status_path(ws, run_id), {"status": "queued", "pid": proc.pid, "stage": "starting",
                                               "done": 0, "total": 0, "started": started, "updated": started})
    return proc.pid


def recording_progress(ws: Workspace, run_id: int) -> Progress:
    """A progress callback that keeps ``check_status.json`` current (stage k of N, ETA)."""
    started = time.time()

    def write(stage: str, done: int, total: int) -> None:
        now = time.time()
        eta = (now - started) / done * (total - done) if done else None
        _write_json(status_path(ws, run_id), {"status": "done" if stage == "done" else "running", "pid": os.getpid(),
                                               "stage": stage, "done": done, "total": total, "started": started,
                                               "updated": now, "eta_s": eta})
    return write


def check_status(ws: Workspace, run_id: int) -> dict | None:
    """The background check's state; ``dead`` when its process is gone (a fine-tune on a real
    model can take long between two status writes, so silence alone is not death)."""
    path = status_path(ws, run_id)
    if not path.exists():
        return None
    st = json.loads(path.read_text())
    if st["status"] in ("queued", "running"):
        from curation.runs.jobs import process_alive
        alive = process_alive(st.get("pid"))
        if not alive:
            st["status"] = "dead"
    return st


def record_failure(ws: Workspace, run_id: int, error: str) -> None:
    st = {"status": "failed", "error": error, "updated": time.time(), "pid": os.getpid()}
    _write_json(status_path(ws, run_id), st)


@dataclass
class CheckState:
    """What a page shows about a run's check: the last verdict and a background job, if any."""

    summary: dict | None  # meta.check of the last finished check
    job: dict | None  # check_status(): queued / running (stage k of N, ETA) / done / failed / dead

    @property
    def running(self) -> bool:
        return bool(self.job and self.job["status"] in ("queued", "running"))

    @property
    def warns_export(self) -> bool:
        """An export of this run should ask first: its check found it no better than random."""
        return bool(self.summary and self.summary["label"] != "better than random")

    def stale_budget(self, store: Store, run_id: int) -> str | None:
        """Say so when the check tested another budget than the run's saved selection keeps now."""
        from curation.engine.select import budget_from
        from curation.review.curate import run_budget
        s = self.summary or {}
        if not s.get("budget") or not s.get("pool_size"):
            return None
        now = budget_from(*run_budget(store, run_id), s["pool_size"])
        if now == s["budget"]:
            return None
        return (f"This check tested the top {s['budget']:,}; the saved selection now keeps {now:,}: "
                "run the check again to test it.")

    def progress_line(self) -> str | None:
        if not self.job:
            return None
        j = self.job
        if j["status"] in ("queued", "running"):
            eta = f", about {j['eta_s'] / 60:.0f} min left" if j.get("eta_s") else ""
            return f"Check running: step {j['done'] + 1} of {j['total'] or '?'} ({j['stage']}){eta}"
        if j["status"] in ("failed", "dead"):
            return f"The last check {j['status']}: {j.get('error') or 'its process stopped without a result'}"
        return None


def check_state(store: Store, run_id: int, ws: Workspace | None = None) -> CheckState:
    ws = ws or Workspace.from_env()
    with store.session() as s:
        run = s.get(Run, run_id)
        summary = (run.meta or {}).get("check") if run else None
    return CheckState(summary, check_status(ws, run_id))
