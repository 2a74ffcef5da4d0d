"""Write a curated selection as training data, with a manifest that says how it was chosen.

Each export is one folder, ``<exports>/<name>/``, holding the data, its manifest, its dataset card
and what its trainer reads. The folder is written hidden, fsynced and renamed into place, so a
crash midway never leaves a half-written export, a manifest that disagrees with its data, or a
damaged previous export of the same name (which is replaced only when asked). Files are
group-readable (0644 under the usual umask, at least 0640), as a shared training box needs. Formats
for trainers (TRL, LLaMA-Factory, axolotl) get what the trainer reads beside them (`trainers`). Rows
stream from the database in id batches: a 100k-example export never sits in memory at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import select

import curation
from curation.data.catalog import pairs_version
from curation.data.names import check_name
from curation.data.store import Example, Export, PreferenceSet, Run, Store
from curation.data.store.models import utcnow
from curation.data.users import Actor, author_of
from curation.errors import CurationError, writing
from curation.review.curate import CuratedSelection, curated_selection_in, override_details, override_details_in
from curation.review.mdsafe import escape
from curation.review.trainers import FORMAT_LABELS, FORMATS, side_files, trainer_info  # noqa: F401  (FORMAT_LABELS: re-export)
from curation.workspace import Workspace

BATCH = 1000  # examples fetched per query while writing


@dataclass
class ExportResult:
    """Where an export went and the sha256 of its data file (also in its manifest)."""

    path: Path
    manifest_path: Path
    n: int
    sha256: str
    schedule_path: Path | None = None  # a dynamic method's (RAISE's) training schedule, in step order
    side_paths: list[Path] = field(default_factory=list)  # what the format's trainer reads beside the file
    card_path: Path | None = None  # the dataset card (`dataset_card`), Markdown for people


# --- record formats --------------------------------------------------------------------------

def _original(e: Example) -> dict:
    return e.original


def _messages(e: Example) -> dict:
    """TRL SFT conversational format."""
    return {"messages": e.messages}


def _turns(messages: list[dict]) -> tuple[str, list[list[str]]]:
    """(system, [[user, assistant], ...]); consecutive turns of one role are joined by a blank line."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    pairs: list[list[str]] = []
    for m in (m for m in messages if m["role"] != "system"):
        slot = 0 if m["role"] == "user" else 1
        if not pairs or (slot == 0 and pairs[-1][1]):
            pairs.append(["", ""])
        pairs[-1][slot] = f"{pairs[-1][slot]}\n\n{m['content']}" if pairs[-1][slot] else m["content"]
    return system, pairs


def _alpaca(e: Example) -> dict:
    """LLaMA-Factory alpaca: the last exchange is instruction/output, earlier ones go to `history`.

    An example imported from alpaca keeps its own instruction/input split.
    """
    system, pairs = _turns(e.messages)
    (user, output), history = pairs[-1], pairs[:-1]
    row = {"instruction": user, "input": "", "output": output}
    o = e.original
    if e.fmt == "alpaca" and isinstance(o.get("instruction"), str) and isinstance(o.get("input"), str):
        instruction, extra = o["instruction"].strip(), o["input"].strip()
        if extra and user == f"{instruction}\n\n{extra}":
            row.update(instruction=instruction, input=extra)
    if system:
        row["system"] = system
    if history:
        row["history"] = history
    return row


def _prompt_completion(e: Example) -> dict:
    """TRL conversational prompt-completion: the trailing assistant turn(s) are the completion
    (the only tokens TRL trains on by default), everything before is the prompt."""
    cut = len(e.messages)
    while cut > 1 and e.messages[cut - 1]["role"] == "assistant":
        cut -= 1
    return {"prompt": e.messages[:cut], "completion": e.messages[cut:]}


def _sharegpt(e: Example) -> dict:
    """LLaMA-Factory sharegpt: strictly alternating human/gpt turns, the system prompt in its own
    column (always present, "" when none, so every row has the same columns)."""
    system, pairs = _turns(e.messages)
    turns = [{"from": tag, "value": text} for user, answer in pairs
             for tag, text in (("human", user), ("gpt", answer))]
    return {"conversations": turns, "system": system}


RENDER: dict[str, Callable[[Example], dict]] = {
    "original": _original, "messages": _messages, "prompt_completion": _prompt_completion, "alpaca": _alpaca,
    "sharegpt": _sharegpt, "axolotl": _messages}  # axolotl's chat_template reads the messages list as is


# --- one export, published as one unit ------------------------------------------------------

TMP, OLD = ".tmp", ".old"  # suffixes of a hidden export being written, and of the one it replaces


def _umask() -> int:
    """The process umask, read without `os.umask` (setting it to read it races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def file_mode() -> int:
    """Mode of exported files: what the umask allows of 0644, and never less than 0640 (`mkstemp`
    alone gives 0600, which a training job run by a colleague cannot read)."""
    return (0o644 & ~_umask()) | 0o640


def dir_mode() -> int:
    """Mode of an export's folder: `file_mode` plus search wherever it grants read."""
    mode = file_mode()
    return mode | ((mode & 0o444) >> 2)


@contextmanager
def _new_file(path: Path) -> Iterator[IO[bytes]]:
    """A new group-readable file in the (hidden) folder being written, fsynced when complete."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode())
    os.fchmod(fd, file_mode())  # the umask may have narrowed the mode `open` set
    with os.fdopen(fd, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def _write_file(path: Path, data: bytes) -> Path:
    with _new_file(path) as f:
        f.write(data)
    return path


def _fsync_dir(folder: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _swap_in(tmp: Path, final: Path) -> None:
    """Publish the complete folder `tmp` as `final` by renames: readers see the whole previous
    export or the whole new one, never a mix. A previous export is first moved aside (and moved
    back if the second rename fails); a kill between the two renames leaves it aside, and the
    next export's `drop_stale_exports` moves it back."""
    _fsync_dir(tmp)
    old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}{OLD}") if final.exists() else None
    if old:
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old:
            os.rename(old, final)
        raise
    _fsync_dir(final.parent)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def drop_stale_exports(folder: Path, published: list[Path] | None = None) -> list[str]:
    """Clean up after exports that were killed (call under `_folder_lock`): a half-written hidden
    folder (or a temp file of an older version) is removed; a previous export left aside by a kill
    mid-swap is moved back, or removed when the new one made it into place (that export's folder
    is appended to `published`: its process died before recording it). Returns what it did."""
    done = []
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith("."):
            continue
        if entry.name.endswith(TMP):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            done.append(f"removed {entry.name}")
        elif entry.name.endswith(OLD) and entry.is_dir():
            final = folder / entry.name[1:-len(OLD)].rsplit(".", 1)[0]
            if final.exists():
                shutil.rmtree(entry)
                done.append(f"removed {entry.name}")
                if published is not None:
                    published.append(final)
            else:
                os.rename(entry, final)
                done.append(f"restored {final.name}")
    return done


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Serialise exports into one folder: the existence check, the clean-up of killed exports
    (which must not take a running export's hidden folder for a stale one) and the swap."""
    fd = os.open(folder, os.O_RDONLY)  # a lock on the folder itself: no lock file left beside the exports
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_rows(store: Store, ids: Sequence[int], render: Callable[[Example], dict],
                out: IO[bytes], keys: set[str] | None = None) -> tuple[str, list[str]]:
    """Stream `ids` in order as JSON lines; returns (sha256 of the bytes, uids in order).

    ``keys`` collects every top-level key written (a trainer's column list names only those)."""
    digest, uids = hashlib.sha256(), []
    for i in range(0, len(ids), BATCH):
        chunk = ids[i:i + BATCH]
        with store.session() as s:
            found = {e.id: e for e in s.scalars(select(Example).where(Example.id.in_(chunk)))}
        for eid in chunk:
            row = render(found[eid])
            if keys is not None:
                keys.update(row)
            line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
            out.write(line)
            digest.update(line)
            uids.append(found[eid].uid)
    return digest.hexdigest(), uids


# --- the export ------------------------------------------------------------------------------

def export_selection(store: Store, run_id: int, fmt: str, ws: Workspace, percent: float | None = None,
                     n: int | None = None, example_ids: Iterable[int] | None = None,
                     name: str | None = None, overwrite: bool = False, actor: Actor | None = None) -> ExportResult:
    """Write the curated selection of a finished run (or exactly `example_ids`) in rank order.

    Writes the folder ``<exports>/<name>/``: ``<name>.jsonl``, ``<name>.manifest.json``,
    ``<name>.card.md`` and what the format's trainer reads (`trainers.side_files`), and records
    an `Export` row. The folder is written hidden and renamed into place (`_swap_in`), so its
    files always agree. An existing export of that name is replaced only with ``overwrite``.
    Needs a curator; the manifest and card name who exported (``exported_by``).
    """
    by = author_of(actor, None, "export")
    if fmt not in FORMATS:
        raise CurationError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    name = export_name(name) if name is not None else f"run{run_id:05d}_{fmt}_{utcnow():%Y%m%d-%H%M%S-%f}"
    with store.session(snapshot=True) as s:  # the file and its manifest's overrides: one state
        sel = curated_selection_in(s, run_id, percent=percent, n=n)
        overrides = override_details_in(s, sel.pool)
    ids = sel.selected_ids if example_ids is None else _given(sel, example_ids)
    if not ids:
        raise CurationError("nothing to export: the selection is empty")
    folder = ws.ensure().exports
    final = folder / name
    with _folder_lock(folder):
        published: list[Path] = []
        drop_stale_exports(folder, published)
        for done in published:
            record_published(store, done)
        if existing_export(ws, name) and not overwrite:
            raise CurationError(f"an export named '{name}' already exists ({final}); choose another name, or "
                                "overwrite it (--overwrite; on the Curate page, tick 'Overwrite')")
        with writing(final, what=f"writing the export of {len(ids):,} examples"):
            res, body = _publish(store, sel, fmt, ids, overrides, example_ids is not None, final, by)
    with writing(store.where, what="recording the export"), store.session() as s:
        s.add(Export(run_id=run_id, path=str(res.path), fmt=fmt, n_examples=len(ids), file_sha256=res.sha256,
                     manifest_sha256=hashlib.sha256(body).hexdigest()))
    return res


def _publish(store: Store, sel: CuratedSelection, fmt: str, ids: Sequence[int], overrides: list[dict],
             by_filter: bool, final: Path, by: str) -> tuple[ExportResult, bytes]:
    """`_write_export` into a hidden folder, then `_swap_in`; the hidden folder never outlives it."""
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=TMP))
    try:
        os.chmod(tmp, dir_mode())
        res, body = _write_export(store, sel, fmt, ids, overrides, by_filter, tmp, final, by)
        _swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the swap succeeded
    return res, body


def record_published(store: Store, final: Path) -> bool:
    """Record the export in `final` from its own manifest unless the database's newest row for
    its file already says so (an exporter killed after its swap never wrote its row: the
    database then described the replaced file). Returns whether a row was added."""
    try:
        body = next(final.glob("*.manifest.json")).read_bytes()
        manifest = json.loads(body)
        path, sha = final / manifest["file"], manifest["file_sha256"]
    except (StopIteration, OSError, ValueError, KeyError):
        return False
    with store.session() as s:
        newest = s.scalar(select(Export.file_sha256).where(Export.path == str(path)).order_by(Export.id.desc()).limit(1))
        if newest == sha:
            return False
        run_id = manifest.get("run", {}).get("id")
        s.add(Export(run_id=run_id if run_id is not None and s.get(Run, run_id) else None, path=str(path),
                     fmt=manifest.get("format", "?"), n_examples=manifest.get("counts", {}).get("exported", 0),
                     file_sha256=sha, manifest_sha256=hashlib.sha256(body).hexdigest()))
    return True


def existing_export(ws: Workspace, name: str) -> Path | None:
    """The folder of the export called `name` if there is one (what an export of that name would
    replace, given ``overwrite``); a CurationError if `name` is no valid export name."""
    final = ws.exports / export_name(name)
    return final if final.exists() or final.is_symlink() else None


def export_name(name: str) -> str:
    """`names.check_name`, and no leading '.': hidden folders are exports being written (or moved
    aside), which `drop_stale_exports` removes."""
    name = check_name("export", name)
    if name.startswith("."):
        raise CurationError(f"export name {name!r}: may not start with '.' (reserved for exports being written)")
    return name


def _write_export(store: Store, sel: CuratedSelection, fmt: str, ids: Sequence[int], overrides: list[dict],
                  by_filter: bool, tmp: Path, final: Path, by: str = "curator") -> tuple[ExportResult, bytes]:
    """Every file of the export into the hidden folder `tmp`; paths in the result and the
    manifest name `final`, where `_swap_in` puts them. Returns it and the manifest's bytes."""
    name = final.name
    path, manifest_path, card_path = final / f"{name}.jsonl", final / f"{name}.manifest.json", final / f"{name}.card.md"
    keys: set[str] = set()
    with _new_file(tmp / path.name) as f:
        sha, uids = _write_rows(store, ids, RENDER[fmt], f, keys)
    manifest = build_manifest(store, sel, fmt, ids, uids, sha, by_filter=by_filter, overrides=overrides)
    manifest.update(file=path.name, card=card_path.name, exported_by=by)
    if schedule := _write_schedule(store, sel, fmt, tmp, f"{name}.schedule.jsonl"):
        manifest["schedule"] = schedule
    if trainer := trainer_info(fmt, path, keys):
        manifest["trainer"] = trainer
    sides = [final / _write_file(tmp / fname, data).name for fname, data in side_files(trainer).items()]
    _write_file(tmp / card_path.name, dataset_card(manifest).encode())
    body = json.dumps(manifest, indent=2, ensure_ascii=False).encode()
    _write_file(tmp / manifest_path.name, body)
    res = ExportResult(path=path, manifest_path=manifest_path, n=len(ids), sha256=sha, side_paths=sides,
                       schedule_path=final / schedule["file"] if schedule else None, card_path=card_path)
    return res, body


def uses_model(method: str) -> bool:
    """Whether runs of `method` use a language model (BM25, DSIR, random and fusion do not: their
    config still names the form's default model, which the card must not claim was used)."""
    from curation.methods import method_class  # loads this method's module only (BM25's: no torch)
    try:
        return method_class(method).uses_model
    except CurationError:  # a method this version does not know: claim nothing less than a model
        return True


def _given(sel: CuratedSelection, example_ids: Iterable[int]) -> list[int]:
    """Exactly the given examples, in rank order; each must be scored by the run."""
    ids = sel.in_rank_order(example_ids)
    if bad := [e for e, p in zip(ids, sel.positions(ids).tolist()) if p < 0]:
        raise CurationError(f"example ids not scored by run {sel.run_id} (not in pool '{sel.pool}'?): {bad[:10]}")
    return ids


def build_manifest(store: Store, sel: CuratedSelection, fmt: str, ids: Sequence[int], uids: Sequence[str],
                   sha: str, by_filter: bool, overrides: list[dict] | None = None) -> dict:
    """How the exported file came to be: run, inputs, budget, overrides and every example's reason.

    ``overrides`` should be read in the same snapshot as ``sel`` (`export_selection` does);
    without it they are read now, and a decision made since ``sel`` would disagree with it.
    """
    with store.session() as s:
        run = s.get(Run, sel.run_id)
        prefs = s.get(PreferenceSet, run.prefs_id).name if run.prefs_id else None
        cfg, meta, method = run.config or {}, run.meta or {}, run.method
        pairs_state = pairs_version(s, run)
    pool_size = len(sel.ids)  # what the run scored: an append to the pool since must not change it
    return {
        "tool_version": curation.__version__,
        "created": utcnow().isoformat(),
        "format": fmt,
        "file_sha256": sha,
        "scope": "filter" if by_filter else "curated selection",
        "run": {"id": sel.run_id, "method": method, "model": cfg.get("model") if uses_model(method) else None,
                "uses_model": uses_model(method),
                "seeds": {"warmup": (cfg.get("warmup") or {}).get("seed"),
                          "projection": (cfg.get("features") or {}).get("seed")},
                "warmup": cfg.get("warmup"), "projector": meta.get("projector"), "config": cfg, "meta": meta},
        "pool": sel.pool, "preference_set": prefs,
        "preference_pairs": {"sha256": meta.get("pairs_sha256"), "n": len(meta.get("pairs") or []),
                             "version": pairs_state,
                             "subtasks": dict(Counter(p.get("subtask") for p in meta.get("pairs") or []))},
        "budget": {"percent": sel.percent, "n": sel.n, "selection": sel.name},
        "counts": {"pool": pool_size, "budget": sel.budget, "auto": sel.n_auto, "pinned": len(sel.pinned),
                   "excluded": len(sel.excluded), "automatic_selection": int(sel.auto.sum()),
                   "added": len(sel.added), "removed": len(sel.removed), "exported": len(ids)},
        "overrides": override_details(store, sel.pool) if overrides is None else overrides,
        "examples": _example_rows(sel, ids, uids),
    }


def _example_rows(sel: CuratedSelection, ids: Sequence[int], uids: Sequence[str]) -> list[dict]:
    """{uid, score, rank, selected_by} per exported example; a NaN score is written as null."""
    pos = sel.positions(ids)
    return [{"uid": u, "score": None if np.isnan(sel.scores[p]) else float(sel.scores[p]),
             "rank": int(sel.ranks[p]), "selected_by": sel.selected_by(e)}
            for e, u, p in zip(ids, uids, pos.tolist())]


# --- the dataset card ------------------------------------------------------------------------

CARD_OVERRIDES = 20  # overrides listed by name on the card (the manifest has them all)


def dataset_card(manifest: dict) -> str:
    """The manifest as a reader's summary in Markdown (written beside the export as
    ``NAME.card.md``, shown by the Curate page): method, model, pairs, budget, overrides,
    counts, the held-out verdict, the file. Every user value (names, subtasks, reasons, paths)
    is escaped; the card's own words are left readable as plain text."""
    run, counts = manifest["run"], manifest["counts"]
    model = _model_name(run.get("model")) if run.get("uses_model", True) else "none (this method uses no model)"
    rows = [("Method", f"{_u(run['method'])} (run #{run['id']})"), ("Model", model),
            ("Pool", f"{_u(manifest['pool'])} ({counts['pool']:,} examples)"),
            ("Preference pairs", _pairs_line(manifest)), ("Budget", _budget_line(manifest)),
            ("Overrides", _overrides_line(counts)), ("Exported", _exported_line(manifest)),
            ("Held-out check", _check_line(run.get("meta") or {})),
            ("Format", FORMAT_LABELS.get(manifest["format"]) or _u(manifest["format"])),
            ("Exported by", _u(manifest.get("exported_by", "not recorded"))),
            ("File", f"{_u(manifest.get('file', '(see the manifest)'))}, sha256 {manifest['file_sha256'][:16]}…")]
    if trainer := manifest.get("trainer"):
        rows.append(("Trainer", _trainer_line(trainer)))
    if warning := (run.get("meta") or {}).get("model_warning"):
        rows.insert(2, ("Model warning", _u(warning)))
    lines = [f"# Dataset card: {_u(manifest.get('file', 'export').removesuffix('.jsonl'))}", "",
             f"Chosen by ROSE Curator {manifest['tool_version']} on {manifest['created'][:19].replace('T', ' ')} UTC.", "",
             "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines + _override_table(manifest.get("overrides") or [])) + "\n"


def _u(value) -> str:
    """A user value on the card: escaped, on one line (it may sit in a table cell)."""
    return escape(" ".join(str(value).split()))


def _model_name(model) -> str:
    if isinstance(model, dict):
        return _u(model.get("name_or_path") or model.get("name") or "?")
    return _u(model) if model else "not recorded"


def _pairs_line(m: dict) -> str:
    pp, name = m.get("preference_pairs") or {}, m.get("preference_set")
    if not name and not pp.get("n"):
        return "none (this method does not use preference pairs)"
    line = f"set '{_u(name) if name else '(deleted)'}'"
    if not pp.get("n"):
        return line + " (the run did not record its pairs)"
    line += f": {pp['n']:,} pairs"
    if subtasks := pp.get("subtasks"):
        line += f" in {len(subtasks)} subtask(s) (" + ", ".join(f"{_u(k)}: {v}" for k, v in subtasks.items()) + ")"
    state = {"current": "scored with the set as it is now",
             "earlier": "the set was edited after scoring: the run used its earlier version"}.get(pp.get("version"))
    return line + (f"; {state}" if state else "")


def _budget_line(m: dict) -> str:
    b, n = m.get("budget") or {}, m["counts"]["budget"]
    named = f" (saved selection '{escape(b['selection'])}')" if b.get("selection") else ""
    if b.get("percent") is not None:
        return f"top {b['percent']:g}% of the pool = {n:,} examples{named}"
    return f"top {n:,} examples{named}"


def _overrides_line(c: dict) -> str:
    return (f"{c['pinned']:,} pinned, {c['excluded']:,} excluded; vs the automatic selection "
            f"+{c['added']:,} added, −{c['removed']:,} removed")


def _exported_line(m: dict) -> str:
    c = m["counts"]
    scope = ("exactly the examples a filter showed" if m.get("scope") == "filter"
             else f"{c['auto']:,} chosen automatically, {c['pinned']:,} pinned")
    return f"{c['exported']:,} examples: {scope}"


def _check_line(meta: dict) -> str:
    if not (check := meta.get("check")):
        return "not run (`python -m curation check RUN_ID` compares fine-tuning on it with random data)"
    return f"{_u(check.get('verdict') or check.get('label'))} ({_u(check.get('finished', '?'))})"


def _trainer_line(t: dict) -> str:
    read = t.get("dataset_info_file") or t.get("config_file") or t.get("load") or ""
    return f"{_u(t['trainer'])}: {_u(read)}"


def _override_table(overrides: list[dict]) -> list[str]:
    if not overrides:
        return []
    shown, more = overrides[:CARD_OVERRIDES], len(overrides) - CARD_OVERRIDES
    return ["", "## Overrides", "", "| action | example | reason | by |", "|---|---|---|---|",
            *(f"| {_u(o['action'])} | {_u(o['uid'])} | {_u(o['reason'])} | {_u(o['author'])} |" for o in shown),
            *(["", f"…and {more:,} more in the manifest."] if more > 0 else [])]


# --- a dynamic method's training schedule ----------------------------------------------------

def _write_schedule(store: Store, sel: CuratedSelection, fmt: str, folder: Path, file_name: str) -> dict | None:
    """Write the run's training schedule (RAISE) into `folder`: one line per (step, slot),
    ``{"step", "slot", "uid", "example"}`` in training order, excluded examples left out.

    Returns the manifest entry, or None for a static method (nothing written).
    """
    from curation.methods import get_method  # lazily: the method modules load on demand (a gradient one imports torch)

    with store.session() as s:
        run = s.get(Run, sel.run_id)
        method, workdir = run.method, run.workdir
    steps = get_method(method).schedule(Path(workdir)) if workdir else None
    if steps is None:
        return None
    excluded = set(sel.excluded)
    slots = [(t + 1, j + 1, int(e)) for t, row in enumerate(steps.tolist()) for j, e in enumerate(row)
             if e >= 0 and int(e) not in excluded]
    digest, render = hashlib.sha256(), RENDER[fmt]
    with _new_file(folder / file_name) as f:
        for lo in range(0, len(slots), BATCH):
            chunk = slots[lo: lo + BATCH]
            with store.session() as s:
                found = {e.id: e for e in s.scalars(select(Example).where(Example.id.in_({e for *_, e in chunk})))}
            for step, slot, eid in chunk:
                line = (json.dumps({"step": step, "slot": slot, "uid": found[eid].uid, "example": render(found[eid])},
                                   ensure_ascii=False) + "\n").encode()
                f.write(line)
                digest.update(line)
    entry = {"file": file_name, "file_sha256": digest.hexdigest(), "steps": int(len(steps)), "rows": len(slots),
             "excluded_dropped": int(sum(1 for row in steps.tolist() for e in row if e >= 0 and e in excluded)),
             "format": "one line per (step, slot) in training order: step and slot 1-based, example in "
                       f"the export format {fmt!r}; pins are not added (they have no step)"}
    return entry
