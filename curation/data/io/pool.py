"""Pool readers: user files of training examples -> normalised conversations.

Every supported record shape (Alpaca, OpenAI/TRL messages, Tulu/LESS, ShareGPT, T0-style
prompt/completion, prompt/response) becomes the same `messages` list, so the rest of the
product (store, scoring, export) never looks at formats again. Bad records come back as
`Problem`s in the stream, never as exceptions, so a 1M-line import reports every bad line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from curation.data.io._read import BadField, Problem, RawRecord, check_format, count_records, iter_raw, json_type

__all__ = ["POOL_FORMATS", "PoolRecord", "count_records", "detect_pool_format", "iter_pool_file",
           "normalise_turns", "text_field"]

POOL_FORMATS = ("alpaca", "messages", "sharegpt", "tulu", "prompt_completion", "prompt_response")
ROLES = {"system": "system", "user": "user", "human": "user",
         "assistant": "assistant", "gpt": "assistant", "bot": "assistant"}
EOS = "<|endoftext|>"  # GPT-3 fine-tuning stop token that ends T0 completions
_FIELDS_HINT = ("alpaca (instruction, input, output), messages ([{role, content}]), "
                "tulu (dataset, id, messages), sharegpt (conversations: [{from, value}]), "
                "prompt_completion (prompt, completion), prompt_response (prompt, response)")


@dataclass
class PoolRecord:
    """One training example, normalised; `original` is kept for export in the user's format."""

    line: int                       # 1-based line (jsonl; csv counting the header) or record index (json, parquet)
    messages: list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": str}], ends with assistant
    source: str                     # the record's dataset/source/task field, else the file stem
    original: dict                  # the record exactly as read
    orig_id: str | None             # the record's "id" (or its key in a JSON object of records)
    fmt: str                        # the format it was read as


def detect_pool_format(record: dict) -> str | None:
    """The format of one record, keyed on its distinctive field, or None when unrecognised.

    Detection looks only for the field that names the format (not for every required one), so
    a first record with a missing field is still reported as a Problem of the right format.
    """
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "tulu" if "dataset" in record and "id" in record else "messages"
    for field, fmt in (("conversations", "sharegpt"), ("instruction", "alpaca"),
                       ("completion", "prompt_completion"), ("response", "prompt_response")):
        if field in record:
            return fmt
    return None


def iter_pool_file(path: str | Path, fmt: str | None = None) -> Iterator[PoolRecord | Problem]:
    """Stream the records of a pool file as `PoolRecord`s, bad ones as `Problem`s.

    The format is detected from the first record whose fields name one, unless `fmt` is
    given; records before it that name none are `Problem`s (one unclear record never fails a
    file). Raises `CurationError` at once for an unknown `fmt`, a missing file or an
    unsupported extension.
    """
    check_format(fmt, POOL_FORMATS, "pool")
    raws = iter_raw(path)
    return _iter_pool(Path(path), raws, fmt)


def _iter_pool(path: Path, raws: Iterator[RawRecord | Problem], fmt: str | None) -> Iterator[PoolRecord | Problem]:
    for raw in raws:
        if isinstance(raw, Problem):
            yield raw
            continue
        if fmt is None:
            fmt = detect_pool_format(raw.data)
            if fmt is None:
                yield raw.problem(path, None,
                                  f"cannot detect the pool format from fields {sorted(map(str, raw.data))[:20]}; "
                                  f"expected one of: {_FIELDS_HINT}")
                continue
        yield _parse(path, raw, fmt)


def _parse(path: Path, raw: RawRecord, fmt: str) -> PoolRecord | Problem:
    try:
        messages = _PARSERS[fmt](raw.data)
    except BadField as e:
        return raw.problem(path, e.field, e.reason)
    return PoolRecord(raw.line, messages, _source(raw.data, path.stem), raw.as_read, _orig_id(raw), fmt)


def _source(record: dict[str, Any], default: str) -> str:
    for key in ("dataset", "source", "task"):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return default


def _orig_id(raw: RawRecord) -> str | None:
    value = raw.data.get("id")
    return str(value) if value is not None else raw.key


def text_field(record: dict[str, Any], key: str, where: str = "", *, optional: bool = False,
               empty: str | None = None) -> str:
    """A stripped string field; `BadField` when missing (unless optional), mistyped, or empty
    when `empty` (the reason to give) is set."""
    name = f"{where}.{key}" if where else key
    value = record.get(key)
    if value is None:
        if optional:
            return ""
        raise BadField(name, "missing")
    if not isinstance(value, str):
        raise BadField(name, f"expected a string, got {json_type(value)}")
    value = value.strip()
    if empty and not value:
        raise BadField(name, empty)
    return value


def normalise_turns(turns: Any, field: str, role_key: str = "role", content_key: str = "content",
                    roles: dict[str, str] = ROLES) -> list[dict[str, str]]:
    """A list of chat turns -> [{"role", "content"}] with canonical roles (`roles` maps the
    file's role names to them) and stripped content.

    Empty system turns are dropped (they carry nothing); empty user/assistant turns are errors.
    """
    if turns is None:
        raise BadField(field, "missing")
    if not isinstance(turns, list):
        raise BadField(field, f"expected an array of messages, got {json_type(turns)}")
    out = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise BadField(where, f"expected a message object, got {json_type(turn)}")
        role = _role(turn, where, role_key, roles)
        content = text_field(turn, content_key, where)
        if content:
            out.append({"role": role, "content": content})
        elif role != "system":
            raise BadField(f"{where}.{content_key}", f"empty {role} turn")
    return out


def _role(turn: dict[str, Any], where: str, role_key: str, roles: dict[str, str]) -> str:
    role = turn.get(role_key)
    if role is None:
        raise BadField(f"{where}.{role_key}", "missing")
    if not isinstance(role, str) or role.strip().lower() not in roles:
        raise BadField(f"{where}.{role_key}", f"unknown role {role!r}; expected one of {', '.join(roles)}")
    return roles[role.strip().lower()]


def _conversation(turns: Any, field: str, role_key: str = "role", content_key: str = "content",
                  system: str = "") -> list[dict[str, str]]:
    """Normalised turns that form a training example: a user turn, and an assistant turn last."""
    messages = normalise_turns(turns, field, role_key, content_key)
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    if not any(m["role"] == "user" for m in messages):
        raise BadField(field, "no user turn")
    if messages[-1]["role"] != "assistant":
        raise BadField(field, f"does not end with an assistant turn (last turn: {messages[-1]['role']})")
    return messages


def _exchange(system: str, user: str, assistant: str) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _alpaca(r: dict[str, Any]) -> list[dict[str, str]]:
    instruction = text_field(r, "instruction", empty="empty prompt")
    extra = text_field(r, "input", optional=True)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    output = text_field(r, "output", empty="empty response")
    return _exchange(text_field(r, "system", optional=True), user, output)


def _messages(r: dict[str, Any]) -> list[dict[str, str]]:
    return _conversation(r.get("messages"), "messages")


def _sharegpt(r: dict[str, Any]) -> list[dict[str, str]]:
    return _conversation(r.get("conversations"), "conversations", "from", "value",
                         system=text_field(r, "system", optional=True))


def _prompt_pair(response_key: str) -> Callable[[dict[str, Any]], list[dict[str, str]]]:
    """Parser for {prompt, <response_key>}; a trailing EOS token is not part of the answer."""
    def parse(r: dict[str, Any]) -> list[dict[str, str]]:
        prompt = text_field(r, "prompt", empty="empty prompt")
        response = text_field(r, response_key).removesuffix(EOS).strip()
        if not response:
            raise BadField(response_key, "empty response")
        return _exchange("", prompt, response)
    return parse


_PARSERS: dict[str, Callable[[dict[str, Any]], list[dict[str, str]]]] = {
    "alpaca": _alpaca, "messages": _messages, "tulu": _messages, "sharegpt": _sharegpt,
    "prompt_completion": _prompt_pair("completion"), "prompt_response": _prompt_pair("response"),
}
