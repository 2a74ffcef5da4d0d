"""`python -m curation ...`: thin commands over the same library calls the app makes.

User mistakes exit non-zero with one line on stderr and no traceback; progress bars go to
stderr so stdout stays parseable (e.g. `score` prints the run id as its last line).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from tqdm import tqdm

from curation.errors import CurationError

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn
    return register


def _store():
    from curation.store import Store
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
        print(f"  ... {res.n_bad - 20} more (full list in import report #{res.report_id})", file=sys.stderr)
    return 1 if res.status == "rejected" else 0


@command("import-pool")
def cmd_import_pool(a: argparse.Namespace) -> int:
    from curation.imports import import_pool
    bar = Bar("import")
    try:
        res = import_pool(_store(), a.path, name=a.name, fmt=a.format, strict=a.strict, progress=bar)
    finally:
        bar.close()
    return _report(res)


@command("import-prefs")
def cmd_import_prefs(a: argparse.Namespace) -> int:
    from curation.imports import import_prefs
    res = import_prefs(_store(), a.path, name=a.name, fmt=a.format, subtask_field=a.subtask_field,
                       subtasks=a.subtasks, strict=a.strict)
    return _report(res)


@command("list")
def cmd_list(a: argparse.Namespace) -> int:
    from curation import catalog
    store = _store()
    print("pools:")
    for p in catalog.list_pools(store):
        print(f"  {p['name']:<24} {p['examples']:>9} examples  {p['sources']:>4} sources")
    print("preference sets:")
    for p in catalog.list_prefsets(store):
        print(f"  {p['name']:<24} {p['pairs']:>9} pairs     {p['subtasks']:>4} subtasks")
    print("runs:")
    for r in catalog.list_runs(store):
        print(f"  #{r['id']:<5} {r['method']:<6} pool={r['pool']} prefs={r['prefs']} {r['status']}"
              f" ({r['stage'] or '-'}, {100 * r['progress']:.0f}%) selected={r['selected']}")
    return 0


@command("demo")
def cmd_demo(a: argparse.Namespace) -> int:
    from curation.demo import ensure_demo
    results = ensure_demo(_store())
    for res in results:
        print(res.summary())
    if not results:
        print("demo pool and preference set already present")
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m curation", description="ROSE Curator: select instruction data.")
    sub = p.add_subparsers(dest="command", required=True)
    ip = sub.add_parser("import-pool", help="import an instruction pool (jsonl, json, parquet, csv)")
    ip.add_argument("path")
    ip.add_argument("--name")
    ip.add_argument("--format", help="alpaca|messages|sharegpt|tulu|prompt_completion|prompt_response (default: auto)")
    ip.add_argument("--strict", action="store_true", help="import nothing if any line is bad")
    pp = sub.add_parser("import-prefs", help="import a preference set (trl, hh, rose)")
    pp.add_argument("path")
    pp.add_argument("--name")
    pp.add_argument("--format", help="trl|hh|rose (default: auto)")
    g = pp.add_mutually_exclusive_group()
    g.add_argument("--subtask-field", help="record field holding the subtask")
    g.add_argument("--subtasks", type=int, help="split the pairs into N contiguous equal subtasks")
    pp.add_argument("--strict", action="store_true")
    sub.add_parser("list", help="pools, preference sets and runs, with counts")
    sub.add_parser("demo", help="create the demo pool and preference set (idempotent)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CurationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
