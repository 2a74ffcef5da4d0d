"""Low-level reading shared by the pool and preference readers.

Turns a `.jsonl`, `.json`, `.csv` or `.parquet` file into a stream of raw JSON-object records,
each tagged with where it came from, and reports every unreadable record as a `Problem` instead
of raising, so one bad line never hides the rest of a file. Files that cannot be opened at all
raise `InputError`.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from curation.errors import CurationError, InputError, location

EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
PARQUET_BATCH_ROWS = 1024
_CSV_JSON_COLUMNS = frozenset({"messages", "conversations"})  # list-valued fields stored as JSON text in CSV
SURROGATE = "a lone UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode text"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # a \uD800-\uDFFF escape in JSON text


@dataclass(frozen=True)
class Problem:
    """One bad record, located by file, line (or record index) and field; reported, never raised."""

    path: str
    line: int
    field: str | None
    reason: str
    unit: str = "line"  # "line" of the file, or "record" index (JSON array/object, parquet row)

    def __str__(self) -> str:
        what = f" field '{self.field}':" if self.field else ""
        return f"{location(self.path, self.line, self.unit)}:{what} {self.reason}"

    def to_error(self) -> InputError:
        """The same problem as an exception, for callers that want to stop at the first one."""
        return InputError(self.path, self.line, self.field, self.reason, self.unit)


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
    unit: str = "line"        # what `line` counts: "line" of the file or "record" index

    @property
    def as_read(self) -> dict[str, Any]:
        return self.data if self.original is None else self.original

    def problem(self, path: str | Path, field: str | None, reason: str) -> Problem:
        """A problem with this record, located the way the record was."""
        return Problem(str(path), self.line, field, reason, self.unit)


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
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001  (unreadable: the reader reports it, located)
            return None
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


def _as_record(path: Path, line: int, value: Any, key: str | None = None, unit: str = "line") -> RawRecord | Problem:
    if isinstance(value, dict):
        return RawRecord(line, value, key, unit=unit)
    return Problem(str(path), line, None, f"record is not a JSON object (got {json_type(value)})", unit)


class _Repeated(dict):
    """A JSON object in which `key` appeared more than once (plain `json` keeps the last, silently)."""

    key: str = ""


class _Objects:
    """`object_pairs_hook` that builds dicts, marking those with a repeated key, and remembers
    whether it met any (so that clean documents, nearly all of them, are never walked again)."""

    def __init__(self) -> None:
        self.repeated = False

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        self.repeated = True
        out = _Repeated(obj)
        seen: set[str] = set()
        out.key = next(k for k, _ in pairs if k in seen or seen.add(k))
        return out


def repeated_key(value: Any, where: str = "") -> tuple[str, str] | None:
    """(field path, key) of the first object holding a repeated key, else None."""
    stack = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, _Repeated):
            return (f"{at}.{v.key}" if at else v.key), v.key
        if isinstance(v, dict):
            stack.extend((x, f"{at}.{k}" if at else str(k)) for k, x in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in reversed(list(enumerate(v))))
    return None


def _repeated_problem(path: Path, line: int, value: Any, unit: str = "line", where: str = "") -> Problem | None:
    found = repeated_key(value, where)
    if found is None:
        return None
    return Problem(str(path), line, found[0], f"duplicate key '{found[1]}' (JSON would keep only its last value)", unit)


def parse_json(text: str, objects: _Objects | None = None) -> tuple[Any, int | None, str | None]:
    """(value, None, None), or (None, line, reason) for text that is no usable JSON.

    With `objects` (an `_Objects` hook) every object with a repeated key is marked, for the
    caller to report where it wants (per record of a document).

    Beyond syntax errors this catches what `json.loads` raises on hostile input (a number of
    more than 4300 digits, nesting deeper than the recursion limit), and a lone UTF-16
    surrogate escape (valid JSON, but no Unicode text: it could not be hashed, stored or
    exported), which is located by field.
    """
    try:
        value = json.loads(text, object_pairs_hook=objects)
    except json.JSONDecodeError as e:
        return None, e.lineno, f"invalid JSON: {e.msg.removesuffix(' at')} at column {e.colno}"
    except RecursionError:
        return None, None, "invalid JSON: nested too deeply"
    except ValueError as e:  # int conversion limit (sys.get_int_max_str_digits)
        why = "a number too long to read" if "digits" in str(e) else str(e)[:200]
        return None, None, f"invalid JSON: {why}"
    return value, None, None


def lone_surrogate(value: Any, where: str = "") -> str | None:
    """The field path of the first string (or key) holding a lone surrogate, else None."""
    stack = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return at or "(record)"
        elif isinstance(v, dict):
            for k, x in v.items():
                key = str(k)
                if lone_surrogate(key) is not None:
                    return f"{at}.{key!r}" if at else repr(key)
                stack.append((x, f"{at}.{key}" if at else key))
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))
    return None


def _surrogate_problem(path: Path, line: int, text: str, value: Any) -> Problem | None:
    if not _SURROGATE_ESCAPE.search(text):
        return None
    field = lone_surrogate(value)
    return None if field is None else Problem(str(path), line, field, SURROGATE)


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
            objects = _Objects()
            value, _, reason = parse_json(text, objects)
            if reason:
                yield Problem(str(path), line, None, reason)
            elif objects.repeated:
                yield _repeated_problem(path, line, value)
            else:
                yield _surrogate_problem(path, line, text, value) or _as_record(path, line, value)


def _iter_json(path: Path) -> Iterator[RawRecord | Problem]:
    """A JSON array of records, an object of records (its first value is an object) or one record.

    The whole document is parsed at once (JSON has no record boundaries to stream on); an
    unparsable document is one `Problem` at the line where parsing failed. Records are located
    by their 1-based index ("record N"), not by a line of the file.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        yield Problem(str(path), data.count(b"\n", 0, e.start) + 1, None,
                      f"invalid UTF-8 at byte {e.start - line_start + 1}")
        return
    del data
    objects = _Objects()
    value, line, reason = parse_json(text, objects)
    if reason:
        yield Problem(str(path), line or 1, None, reason)
        return
    check = bool(_SURROGATE_ESCAPE.search(text))
    del text
    if isinstance(value, list):
        items = ((i, v, None) for i, v in enumerate(value, start=1))
    elif isinstance(value, dict) and value and isinstance(next(iter(value.values())), dict):
        items = ((i, v, k) for i, (k, v) in enumerate(value.items(), start=1))
    else:
        items = iter([(1, value, None)])
    for i, v, k in items:
        yield _json_item(path, i, v, k, check, value if objects.repeated else None)


def _json_item(path: Path, i: int, v: Any, k: str | None, check: bool, repeated: Any) -> RawRecord | Problem:
    """Record `i` of a JSON document; `repeated` is the document when it had a repeated key."""
    if isinstance(repeated, _Repeated) and k == repeated.key:  # two records under one key
        return Problem(str(path), i, None, f"duplicate key {k[:80]!r} (JSON would keep only its last record)", "record")
    if repeated is not None and (problem := _repeated_problem(path, i, v, "record")):
        return problem
    field = lone_surrogate(v) if check else None
    if field is not None:
        return Problem(str(path), i, field, SURROGATE, "record")
    return _as_record(path, i, v, k, "record")


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
    try:
        header = next(reader, None)
    except csv.Error as e:
        yield Problem(str(path), reader.line_num, None, f"unreadable CSV header: {e}")
        return
    if header is None:
        return
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # e.g. a bare CR in an unquoted field; the reader goes on after it
            line, start = start, reader.line_num + 1
            yield Problem(str(path), line, None, f"unreadable CSV row: {_csv_reason(e)}")
            continue
        line, start = start, reader.line_num + 1
        if row:
            yield _csv_record(path, line, range(line, start), header, row, bad_lines)


def _csv_reason(e: csv.Error) -> str:
    text = str(e)
    return ("a bare carriage return (CR) in an unquoted field; quote the field or use LF/CRLF line ends"
            if "new-line character" in text else text)


def _csv_record(path: Path, line: int, span: range, header: list[str], row: list[str],
                bad_lines: dict[int, str]) -> RawRecord | Problem:
    errors = [bad_lines[n] for n in span if n in bad_lines]
    if errors:
        return Problem(str(path), line, None, errors[0])
    if len(row) != len(header):
        return Problem(str(path), line, None, f"expected {len(header)} columns, got {len(row)}")
    original = dict(zip(header, row))
    data, repeated = _decode_csv_cells(original)
    for name in _CSV_JSON_COLUMNS & data.keys():
        if name in repeated:
            return _repeated_problem(path, line, data[name], where=name)
        if data[name] is not original[name] and (field := lone_surrogate(data[name], name)):
            return Problem(str(path), line, field, SURROGATE)
    return RawRecord(line, data, original=original)


def _decode_csv_cells(record: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """A copy of a CSV row with JSON-text list columns decoded (left as text when not JSON), and
    the names of the decoded cells that hold a repeated key."""
    out, repeated = dict(record), set()
    for name in _CSV_JSON_COLUMNS & out.keys():
        if isinstance(out[name], str):
            objects = _Objects()
            value, _, reason = parse_json(out[name], objects)
            if reason is None:
                out[name] = value
                if objects.repeated:
                    repeated.add(name)
    return out, repeated


def _iter_parquet(path: Path) -> Iterator[RawRecord | Problem]:
    """Rows read one batch at a time so memory stays bounded whatever the file size.

    A file pyarrow cannot read (corrupt, or not parquet at all) is one `Problem` at the record
    where reading stopped; values JSON has no type for (bytes, dates) become their text.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS)
        for batch in batches:
            for row in batch.to_pylist():
                index += 1
                yield _parquet_record(path, index, row)
    except (OSError, ValueError, TypeError, MemoryError, pa.ArrowException) as e:  # a corrupt or non-parquet file
        yield Problem(str(path), index + 1, None, f"not a readable parquet file ({str(e)[:300]})", "record")


def _parquet_record(path: Path, index: int, row: dict[str, Any]) -> RawRecord | Problem:
    try:
        text = json.dumps(row, ensure_ascii=False, default=str)
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Problem(str(path), index, lone_surrogate(row), SURROGATE, "record")
    except (TypeError, ValueError, RecursionError) as e:
        return Problem(str(path), index, None, f"value not representable as JSON ({str(e)[:200]})", "record")
    return RawRecord(index, json.loads(text), unit="record")
