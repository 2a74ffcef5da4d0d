"""One rule for the names curators give things (pools, preference sets, exports).

A name is shown in tables, written into manifests and, for an export, used as a folder and file
name: a newline or control character breaks a table or a log line, a bidi control or zero-width
character makes two different names look the same (or reverses how a name reads), a path
separator or ``..`` escapes the exports folder, and a 10,000-character name fails with
ENAMETOOLONG only after the work is done. `check_name` refuses all of these up front, saying which
rule failed and for which kind of name.
"""

from __future__ import annotations

import unicodedata

from curation.errors import CurationError

MAX_BYTES = 100  # UTF-8 bytes; with an export's suffixes and temp prefixes still far below NAME_MAX (255)
BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)}
ZERO_WIDTH = {"\u200b", "\u200c", "\u200d", "\ufeff"}


def check_name(kind: str, name: str) -> str:
    """`name` trimmed of surrounding whitespace, or a CurationError naming `kind` and the rule broken."""
    if not isinstance(name, str):
        raise CurationError(f"{kind} name: expected text, got {type(name).__name__}")
    name = name.strip()
    shown = ascii(name[:60]) + ("…" if len(name) > 60 else "")
    if problem := _problem(name):
        raise CurationError(f"{kind} name {shown}: {problem}")
    return name


def _problem(name: str) -> str | None:
    """Which rule `name` (already trimmed) breaks, or None."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return "may not be '.' or '..'"
    if "/" in name or "\\" in name:
        return "may not contain '/' or '\\' (no folders)"
    if bad := next((c for c in name if c in BIDI), None):
        return f"may not contain the bidirectional-text control U+{ord(bad):04X} (it changes how the name reads)"
    if bad := next((c for c in name if c in ZERO_WIDTH), None):
        return f"may not contain the zero-width character U+{ord(bad):04X} (it hides a difference between names)"
    if bad := next((c for c in name if not c.isprintable() and c != " "), None):
        what = "a newline" if bad in "\r\n" else f"the unprintable character U+{ord(bad):04X} ({_category(bad)})"
        return f"may not contain {what}"
    if (size := len(name.encode("utf-8"))) > MAX_BYTES:
        return f"is {size:,} bytes in UTF-8; at most {MAX_BYTES} are allowed"
    return None


def _category(c: str) -> str:
    return {"Cc": "control", "Cf": "format", "Zl": "line separator", "Zp": "paragraph separator",
            "Zs": "space", "Co": "private use", "Cn": "unassigned", "Cs": "surrogate"}.get(
        unicodedata.category(c), unicodedata.category(c))
