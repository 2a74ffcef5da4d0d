"""Low-level reading shared by the pool and preference readers.

Turns a `.jsonl`, `.json`, `.csv` or `.parquet` file into a stream of raw JSON-object records,
each tagged with where it came from, and reports every unreadable record as a `Problem` instead
of raising, so one bad line never hides the rest of a file. Files that cannot be opened at all
raise `InputError`.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from curation.errors import CurationError, InputError

EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
PARQUET_BATCH_ROWS = 1024
_CSV_JSON_COLUMNS = frozenset({"messages", "conversations"})  # list-valued fields stored as JSON text in CSV


@dataclass(frozen=True)
class Problem:
    """One bad record, located by file, line (or record index) and field; reported, never raised."""

    path: str
    line: int
    field: str | None
    reason: str

    def __str__(self) -> str:
        what = f" field '{self.field}':" if self.field else ""
        return f"{self.path}:{self.line}:{what} {self.reason}"

    def to_error(self) -> InputError:
        """The same problem as an exception, for callers that want to stop at the first one."""
        return InputError(self.path, self.line, self.field, self.reason)


class BadField(Exception):
    """Raised by record parsers for one bad field; the readers turn it into a `Problem`."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


@dataclass
class RawRecord:
    """A JSON object read from a file, before any format-specific parsing."""

    line: int                 # 1-based line (jsonl, csv incl. header) or 1-based record index (json, parquet)
    data: dict[str, Any]      # the record to parse (CSV: JSON-text list cells decoded)
    key: str | None = None    # its key when the file is one JSON object of records
    original: dict[str, Any] | None = None  # the record exactly as read, when it differs from `data`

    @property
    def as_read(self) -> dict[str, Any]:
        return self.data if self.original is None else self.original


def check_format(fmt: str | None, valid: tuple[str, ...], kind: str) -> None:
    """Reject an unknown format name up front, naming the valid ones."""
    if fmt is not None and fmt not in valid:
        raise CurationError(f"unknown {kind} format '{fmt}'; valid formats: {', '.join(valid)}")


def check_file(path: str | Path) -> Path:
    """Fail early, before any streaming starts, on a missing file or an unsupported extension."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), None, None, "no such file")
    if path.suffix.lower() not in EXTENSIONS:
        raise InputError(str(path), None, None,
                         f"unsupported file type '{path.suffix}'; expected one of {', '.join(EXTENSIONS)}")
    return path


def iter_raw(path: str | Path) -> Iterator[RawRecord | Problem]:
    """Every record of the file in order, as `RawRecord`, or `Problem` for an unreadable one."""
    path = check_file(path)
    readers = {".jsonl": _iter_jsonl, ".ndjson": _iter_jsonl, ".json": _iter_json,
               ".csv": _iter_csv, ".parquet": _iter_parquet}
    return readers[path.suffix.lower()](path)


def count_records(path: str | Path) -> int | None:
    """Cheap size estimate for a progress bar: lines (jsonl, csv), rows (parquet), None (json)."""
    path = check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        return pq.ParquetFile(path).metadata.num_rows
    if suffix == ".json":
        return None
    lines = _count_lines(path)
    return max(lines - 1, 0) if suffix == ".csv" else lines


def _count_lines(path: Path) -> int:
    """Lines in a file, counting a last line without a newline, reading 1 MiB at a time."""
    n, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def _decoded_lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, error) per physical line: each line is decoded on its own so that
    invalid UTF-8 is reported on its line (the text then holds replacement characters)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8"), None
            except UnicodeDecodeError as e:
                yield number, raw.decode("utf-8", errors="replace"), f"invalid UTF-8 at byte {e.start + 1}"


def _as_record(path: Path, line: int, value: Any, key: str | None = None) -> RawRecord | Problem:
    if isinstance(value, dict):
        return RawRecord(line, value, key)
    return Problem(str(path), line, None, f"record is not a JSON object (got {json_type(value)})")


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for messages about mistyped fields."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _iter_jsonl(path: Path) -> Iterator[RawRecord | Problem]:
    """One record per line, streamed; blank lines are skipped silently."""
    for line, text, error in _decoded_lines(path):
        if error:
            yield Problem(str(path), line, None, error)
        elif text.strip():
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                yield Problem(str(path), line, None, f"invalid JSON: {e.msg} at column {e.colno}")
                continue
            yield _as_record(path, line, value)


def _iter_json(path: Path) -> Iterator[RawRecord | Problem]:
    """A JSON array of records, an object of records (its first value is an object) or one record.

    The whole document is parsed at once (JSON has no record boundaries to stream on); an
    unparsable document is one `Problem` at the line where parsing failed.
    """
    data = path.read_bytes()
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        yield Problem(str(path), data.count(b"\n", 0, e.start) + 1, None,
                      f"invalid UTF-8 at byte {e.start - line_start + 1}")
        return
    except json.JSONDecodeError as e:
        yield Problem(str(path), e.lineno, None, f"invalid JSON: {e.msg} at column {e.colno}")
        return
    del data
    if isinstance(value, list):
        yield from (_as_record(path, i, v) for i, v in enumerate(value, start=1))
    elif isinstance(value, dict) and value and isinstance(next(iter(value.values())), dict):
        yield from (_as_record(path, i, v, k) for i, (k, v) in enumerate(value.items(), start=1))
    else:
        yield _as_record(path, 1, value)


def _iter_csv(path: Path) -> Iterator[RawRecord | Problem]:
    """Rows as records keyed by the header; line numbers count the header as line 1.

    `messages`/`conversations` cells hold JSON text and are decoded for parsing, while
    `RawRecord.original` keeps the row as read.
    """
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    bad_lines: dict[int, str] = {}
    numbered = _decoded_lines(path)

    def texts() -> Iterator[str]:
        for number, text, error in numbered:
            if error:
                bad_lines[number] = error
            yield text

    reader = csv.reader(texts())
    header = next(reader, None)
    if header is None:
        return
    start = reader.line_num + 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if row:
            yield _csv_record(path, line, range(line, start), header, row, bad_lines)


def _csv_record(path: Path, line: int, span: range, header: list[str], row: list[str],
                bad_lines: dict[int, str]) -> RawRecord | Problem:
    errors = [bad_lines[n] for n in span if n in bad_lines]
    if errors:
        return Problem(str(path), line, None, errors[0])
    if len(row) != len(header):
        return Problem(str(path), line, None, f"expected {len(header)} columns, got {len(row)}")
    original = dict(zip(header, row))
    return RawRecord(line, _decode_csv_cells(original), original=original)


def _decode_csv_cells(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of a CSV row with JSON-text list columns decoded (left as text when not JSON)."""
    out = dict(record)
    for name in _CSV_JSON_COLUMNS & out.keys():
        if isinstance(out[name], str):
            try:
                out[name] = json.loads(out[name])
            except json.JSONDecodeError:
                pass
    return out


def _iter_parquet(path: Path) -> Iterator[RawRecord | Problem]:
    """Rows read one batch at a time so memory stays bounded whatever the file size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                index += 1
                yield RawRecord(index, row)
    except (OSError, ValueError, pa.ArrowException) as e:  # a corrupt or non-parquet file
        raise InputError(str(path), None, None, f"not a readable parquet file ({e})") from e
