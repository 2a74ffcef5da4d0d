"""User-facing errors: the CLI prints them as one line, the UI as a message, never a traceback."""

from __future__ import annotations


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
