"""Who may do what: users, roles, sign-in checks and `require`.

Sign-in is off by default (one person on loopback): every call acts as `LOCAL`, an admin. With
``CURATION_AUTH=local`` the team's users live in ``<workspace>/users.json`` (0600), each with a
role and an Argon2id password hash (argon2-cffi: salted, memory-hard, the OWASP default), and
every state-changing library call needs a named actor: the app passes the signed-in user, the
CLI the user named by ``--as``. Roles are checked here, in the library, so a page that forgot
to hide a button still cannot act (`require`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from curation.data.names import check_name
from curation.data.store.models import utcnow
from curation.errors import CurationError
from curation.workspace import Workspace

ROLES = ("viewer", "curator", "admin")  # each may do everything the ones before it may
PERMISSIONS = {  # action -> the least role allowed
    "read": "viewer", "compare": "viewer",
    "import": "curator", "author": "curator", "score": "curator", "check": "curator",
    "decide": "curator", "select": "curator", "export": "curator",
    "delete": "admin", "archive": "admin", "features_rm": "admin", "users": "admin",
}
SESSION_IDLE_S = 12 * 3600  # a signed-in session ends after this long without a page load
MAX_FAILURES, FAILURE_WINDOW_S = 5, 60.0  # failed sign-ins per user name and minute
log = logging.getLogger("curation.auth")


@dataclass(frozen=True)
class Actor:
    """Who makes a call. `local`: the single user when sign-in is off (no named account)."""

    name: str
    role: str
    local: bool = False


LOCAL = Actor("curator", "admin", local=True)
INTERNAL = Actor("check", "curator")  # a held-out check's own sub-runs (the check itself was authorised)


def auth_mode() -> str:
    """'off' (default) or 'local' (`CURATION_AUTH`): whether the app asks who you are."""
    mode = (os.environ.get("CURATION_AUTH") or "off").strip().lower()
    if mode not in ("off", "local"):
        raise CurationError(f"CURATION_AUTH={mode!r}: expected 'off' or 'local'")
    return mode


def resolve(actor: Actor | None) -> Actor:
    """The actor a call acts as: `LOCAL` when sign-in is off and none is given."""
    if actor is not None:
        return actor
    if auth_mode() != "off":
        raise CurationError("sign-in is on (CURATION_AUTH=local): act as a named user "
                            "(the CLI's --as NAME; `python -m curation users list`)")
    return LOCAL


def require(actor: Actor | None, action: str) -> Actor:
    """The resolved actor, if its role may do `action`; else a CurationError saying who may."""
    actor = resolve(actor)
    need = PERMISSIONS[action]
    if ROLES.index(actor.role) < ROLES.index(need):
        raise CurationError(f"user '{actor.name}' is a {actor.role}: {action.replace('_', ' ')} needs "
                            f"the {need} role or above (ask an admin: python -m curation users add)")
    return actor


def author_of(actor: Actor | None, author: str | None, action: str) -> str:
    """The name a change is recorded under: a named actor's own name (never what the caller
    claims); for the local user the given `author` (default `LOCAL.name`)."""
    actor = require(actor, action)
    return (author or actor.name) if actor.local else actor.name


# --- the users file --------------------------------------------------------------------------

def users_path(ws: Workspace) -> Path:
    return ws.home / "users.json"


def _hasher():
    from argon2 import PasswordHasher  # lazily: only sign-in needs it
    return PasswordHasher()


@contextmanager
def _locked(ws: Workspace) -> Iterator[dict]:
    """The users file's content, rewritten atomically (temp file, rename) on exit, under a lock."""
    ws.ensure()
    lock = os.open(ws.home, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        users = _read(ws)
        yield users
        fd, tmp = tempfile.mkstemp(dir=ws.home, prefix=".users.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(users, f, indent=1)
        os.replace(tmp, users_path(ws))
    finally:
        os.close(lock)


def _read(ws: Workspace) -> dict:
    path = users_path(ws)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise CurationError(f"{path}: cannot read the users file ({e})") from None


def add_user(ws: Workspace, name: str, role: str, password: str, actor: Actor | None = None) -> None:
    """Create or replace a user (an admin's act; the very first user may be added by anyone who
    can write the workspace, so a team can start)."""
    name = check_name("user", name)
    if role not in ROLES:
        raise CurationError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise CurationError("password: at least 8 characters")
    if _read(ws):
        require(actor, "users")
    with _locked(ws) as users:
        users[name] = {"role": role, "hash": _hasher().hash(password), "created": utcnow().isoformat()}


def remove_user(ws: Workspace, name: str, actor: Actor | None = None) -> None:
    require(actor, "users")
    with _locked(ws) as users:
        if users.pop(name, None) is None:
            raise CurationError(f"no user named '{name}'")


def list_users(ws: Workspace) -> list[dict]:
    return [{"name": n, "role": u["role"], "created": u.get("created")} for n, u in sorted(_read(ws).items())]


def get_user(ws: Workspace, name: str) -> Actor:
    """The named user as an actor (the CLI's ``--as``); a clear error when there is none."""
    user = _read(ws).get(name)
    if user is None:
        raise CurationError(f"no user named '{name}' in {users_path(ws)} (python -m curation users add {name} --role ROLE)")
    return Actor(name, user["role"])


class SignIn:
    """Password checks with a per-name limit on failures (`MAX_FAILURES` a `FAILURE_WINDOW_S`),
    each failure logged. One per server process: the app shares it between sessions."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._failures: dict[str, deque] = defaultdict(deque)
        _log_to(ws.ensure().home / "logs" / "auth.log")

    def verify(self, name: str, password: str, now: float | None = None) -> Actor:
        """The user, if the password is theirs; a CurationError (the same for an unknown name
        and a wrong password) otherwise, or while the name is locked out."""
        now = time.monotonic() if now is None else now
        recent = self._failures[name]
        while recent and now - recent[0] > FAILURE_WINDOW_S:
            recent.popleft()
        if len(recent) >= MAX_FAILURES:
            log.warning("sign-in refused for %r: %d failures in the last minute", name, len(recent))
            raise CurationError("too many failed sign-ins for this name: wait a minute")
        user = _read(self.ws).get(name)
        if not _matches(user["hash"] if user else _dummy_hash(), password) or user is None:  # same work either way
            recent.append(now)
            log.warning("failed sign-in for %r (%d in the last minute)", name, len(recent))
            raise CurationError("wrong user name or password")
        recent.clear()
        log.info("signed in: %r (%s)", name, user["role"])
        return Actor(name, user["role"])


def _log_to(path: Path) -> None:
    """Sign-ins and failures also go to ``<workspace>/logs/auth.log`` (once per file)."""
    if not any(getattr(h, "baseFilename", None) == str(path) for h in log.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """Checked for an unknown name, so it takes as long as a wrong password (no name probing)."""
    return _hasher().hash(os.urandom(16).hex())


def _matches(hashed: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError
    try:
        return _hasher().verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False
