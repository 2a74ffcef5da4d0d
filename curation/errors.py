"""User-facing errors: the CLI prints them as one line, the UI as a message, never a traceback."""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class CurationError(Exception):
    """A mistake the user can fix (bad input, unknown name, wrong option)."""


class InputError(CurationError):
    """Malformed input, located by file, line and field."""

    def __init__(self, path: str, line: int | None, field: str | None, reason: str, unit: str = "line"):
        self.path, self.line, self.field, self.reason, self.unit = path, line, field, reason, unit
        where = location(path, line, unit)
        what = f" field '{field}'" if field else ""
        super().__init__(f"{where}:{what} {reason}".replace(": :", ":"))


def location(path: str, line: int | None, unit: str = "line") -> str:
    """`path:N` for a line of the file, `path: record N` for the Nth record of a JSON array or
    object (or parquet row), whose index is no line of the file."""
    if line is None:
        return path
    return f"{path}:{line}" if unit == "line" else f"{path}: {unit} {line}"


class DiskFullError(CurationError):
    """A write failed for lack of space (ENOSPC) or quota (EDQUOT): one line naming the path
    being written and, where known, the bytes it needed against what is free there."""

    def __init__(self, path: str | Path, needed: int | None = None, what: str | None = None):
        self.path, self.needed, self.free = str(path), needed, free_bytes(path)
        space = [f"{size(needed)} needed"] if needed is not None else []
        space += [f"{size(self.free)} free"] if self.free is not None else []
        doing = f" ({what})" if what else ""
        super().__init__(f"no space left on the disk (or quota) for {self.path}{doing}: {', '.join(space) or 'full'}; "
                         "free some space there (or move CURATION_HOME to a larger disk) and try again")


def size(n: int) -> str:
    """Bytes for people: 512 B, 3.2 kB, 41.0 MB, 1.5 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system of `path` (or of its nearest existing folder)."""
    p = Path(path)
    for folder in (p, *p.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in `e`'s chain, or SQLite's "database or disk is full"."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in DISK_FULL_ERRNOS:
            return True
        if type(x).__module__.split(".")[0] in ("sqlite3", "sqlalchemy") and "database or disk is full" in str(x).lower():
            return True
        stack += [x.__cause__, x.__context__, getattr(x, "orig", None)]
    return False


def disk_full_path(e: BaseException) -> str | None:
    """The file an OSError in `e`'s chain names, if any (a failed `write` names none)."""
    while e is not None:
        if isinstance(e, OSError) and e.filename:
            return str(e.filename)
        e = e.__cause__ or e.__context__
    return None


@contextmanager
def writing(path: str | Path, needed: int | None = None, what: str | None = None) -> Iterator[None]:
    """Turn running out of space while writing `path` into a `DiskFullError` naming it."""
    try:
        yield
    except CurationError:  # a DiskFullError already, or the user's own mistake
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError(path, needed, what) from e
