"""Inputs that once crashed the importer (issue 13), for `bench reliability` and its test.

Each file holds good records around one hostile one at a known line, or is unreadable as a
whole; the importer must answer each with a located report, never a traceback.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from curation.data.store import Store


def _conv(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                         {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]}


GOOD = json.dumps(_conv(1))
GOOD2 = json.dumps(_conv(2))


def bad_input_files(folder: Path) -> list[tuple[Path, int | None]]:
    """(file, the line its bad record is on; None when the whole file is unreadable)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[tuple[Path, int | None]] = []

    def add(name: str, body: bytes | str, line: int | None) -> None:
        path = folder / name
        path.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
        files.append((path, line))

    surrogate = '{"messages": [{"role": "user", "content": "hi \\ud800"}, {"role": "assistant", "content": "x"}]}'
    add("surrogate.jsonl", f"{GOOD}\n{surrogate}\n{GOOD2}\n", 2)
    add("bignum.jsonl", f'{GOOD}\n{{"id": {"9" * 5000}, "messages": []}}\n{GOOD2}\n', 2)
    add("nested.jsonl", f"{GOOD}\n{'[' * 200_000}\n{GOOD2}\n", 2)
    add("nested.json", "[" * 200_000, None)
    add("bignum.json", f'[{GOOD}, {{"x": {"1" * 5000}}}]', None)
    header = "instruction,input,output\n"
    add("bare_cr.csv", header + "add 1,,2\nadd\r2,,3\n\"add 3\",\"\",\"4\"\n", 3)
    add("bad_cells.csv", "messages\n\"" + "[" * 100_000 + "\"\n", None)
    add("random.parquet", bytes(random.Random(0).randrange(256) for _ in range(4096)), None)
    add("truncated.parquet", b"PAR1" + b"\x00" * 64 + b"PAR1", None)
    add("control.jsonl", f'{GOOD}\n{{"messages": "a\x01b"}}\n{GOOD2}\n', 2)
    add("unclear_first.jsonl", f'{{"text": "what format?"}}\n{GOOD}\n{GOOD2}\n', 1)
    add("bad_utf8.jsonl", GOOD.encode() + b"\n\xff\xfe{}\n" + GOOD2.encode() + b"\n", 2)
    add("surrogate_cell.csv", 'messages\n"[{""role"": ""user"", ""content"": ""\\ud800""}]"\n', None)
    return files


def bad_inputs(folder: Path, url: str | None = None) -> dict:
    """Every bad input ends in a report naming its file and line, or a one-line user error
    (database `url`, default an SQLite file in `folder`)."""
    from curation.data.imports import import_pool
    from curation.errors import CurationError
    store = Store(url or f"sqlite:///{folder / 'bad.db'}")
    tried = reported = 0
    failures = []
    for i, (path, line) in enumerate(bad_input_files(folder / "bad")):
        tried += 1
        try:
            res = import_pool(store, path, name=f"bad{i}")
            ok = res.n_bad >= 1 and (line is None or (res.n_ok >= 1 and any(
                p.line == line and p.path == str(path) for p in res.problems)))
        except CurationError as e:  # a file with nothing readable: one line naming it
            ok = line is None and str(path) in str(e)
        except Exception as e:  # noqa: BLE001  (a crash: what this scenario looks for)
            ok = False
            failures.append(f"{path.name}: crashed with {type(e).__name__}: {str(e)[:100]}")
        else:
            if not ok:
                failures.append(f"{path.name}: no located report")
        reported += ok
    return dict(bad_inputs=tried, reported=reported, failures=failures)
