"""User-facing errors: the CLI prints them as one line, the UI as a message, never a traceback."""

from __future__ import annotations


class CurationError(Exception):
    """A mistake the user can fix (bad input, unknown name, wrong option)."""


class InputError(CurationError):
    """Malformed input, located by file, line and field."""

    def __init__(self, path: str, line: int | None, field: str | None, reason: str):
        self.path, self.line, self.field, self.reason = path, line, field, reason
        where = path if line is None else f"{path}:{line}"
        what = f" field '{field}'" if field else ""
        super().__init__(f"{where}:{what} {reason}".replace(": :", ":"))
