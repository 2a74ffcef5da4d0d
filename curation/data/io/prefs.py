"""Preference-set readers: few-shot (prompt, chosen, rejected) pairs for a target task.

Formats: `trl` (prompt/chosen/rejected as strings or message lists, or chosen/rejected
conversations with an implicit shared prompt), `hh` (Anthropic HH-RLHF full transcripts),
`rose` (ROSE's validation files: one JSON object mapping prompt -> responses/pairs/targets),
LLaMA-Factory's preference datasets as its data/README.md defines them (`alpaca`: instruction,
input, chosen, rejected, optional system and history; `sharegpt`: a `conversations` list of
{from, value}, or OpenAI-style `messages` of {role, content}, with `chosen` and `rejected` one
message each), `chosen_messages` (LLaMA-Factory v1: two full conversations, the shared turns
are the prompt) and `pairwise` judgements (AlpacaEval: instruction, output_1, output_2,
preference 1 or 2; ties are skipped and counted, not errors).

ROSE file facts this module relies on, checked on all 12 files in ROSE's `data/validation`:

* ROSE's gradient step (`rose/dpo_gradient.py`) uses one pair per prompt, `sft_target` vs
  `rejected_target`, and `influence_estimation.py` reshapes the scores into `n_task`
  contiguous groups (hh 2, shp 18, se 10). So a `rose` prompt gives one `PrefRecord` and
  subtasks are contiguous equal groups of prompts in file order.
* Each `pairs` entry is [chosen index, rejected index]: `rejected_target` is never the first
  element of any pair; `responses[pairs[0][0]] == sft_target` on every hh and shp 1/2/5-shot
  prompt, while se pairs follow answer scores, so pairs[0] need not hold `sft_target`
  (20 of 100 se_10_shot prompts). Without both targets (the DPO-repo format), pairs[0] is used.
* The groups are the sites in alphabetical order of the test file names (`test/{task}/*.json`):
  a TF-IDF classifier trained on the test prompts puts 85/100 se_10_shot prompts in the
  alphabetical site group (chance 10/100) and the majority of every se group; for shp_10_shot
  it gets the majority of 13 of 18 groups, and reading the other 5 confirms them (group 3 is
  about cars = askcarguys, group 14 about pets = askvet, ...); hh: 18/20 hh_10_shot prompts
  match (harmless-base first, then red-team-attempts).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from curation.data.io._read import BadField, Problem, RawRecord, check_format, iter_raw, json_type
from curation.data.io.pool import ROLES, normalise_turns, text_field
from curation.errors import CurationError, InputError

__all__ = ["PREF_FORMATS", "PrefRead", "PrefRecord", "ROSE_SUBTASKS", "detect_pref_format", "parse_transcript",
           "read_pref_file", "read_prefs"]

PREF_FORMATS = ("trl", "hh", "rose", "alpaca", "sharegpt", "chosen_messages", "pairwise")
# What each format needs, for the error on a file no format reads (fields, then in words).
_FIELDS: dict[str, frozenset[str]] = {
    "trl": frozenset({"prompt", "chosen", "rejected"}),
    "hh": frozenset({"chosen", "rejected"}),
    "rose": frozenset({"prompt", "responses", "pairs"}),
    "alpaca": frozenset({"instruction", "input", "chosen", "rejected"}),
    "sharegpt": frozenset({"conversations", "messages", "chosen", "rejected"}),
    "chosen_messages": frozenset({"chosen_messages", "rejected_messages"}),
    "pairwise": frozenset({"instruction", "output_1", "output_2", "preference"}),
}
_EXPECTS = {
    "trl": "prompt, chosen, rejected (or chosen and rejected conversations sharing their first turns)",
    "hh": "chosen and rejected transcripts with '\\n\\nHuman:'/'\\n\\nAssistant:' turns",
    "rose": "prompt -> responses, pairs",
    "alpaca": "instruction, chosen, rejected (input, system, history optional)",
    "sharegpt": "conversations [{from, value}] or messages [{role, content}], chosen and rejected one message each",
    "chosen_messages": "chosen_messages and rejected_messages, two conversations",
    "pairwise": "instruction, output_1, output_2, preference (1 or 2)",
}
# LLaMA-Factory's role tags; tool results count as the user side, tool calls as the assistant's.
_LF_ROLES = {**ROLES, "observation": "user", "tool": "user", "function_call": "assistant", "function": "assistant"}
ASSISTANT_MARK = "\n\nAssistant:"
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
_SE_SITES = ("academia", "apple", "askubuntu", "english", "gaming", "physics", "security", "sharepoint",
             "softwareengineering", "workplace")
_SHP_SUBREDDITS = ("askacademia", "askanthropology", "askbaking", "askcarguys", "askculinary", "askdocs",
                   "askengineers", "askhistorians", "askhr", "askphilosophy", "askphysics", "askscience",
                   "asksciencefiction", "asksocialscience", "askvet", "changemyview", "explainlikeimfive",
                   "legaladvice")
# Subtask names of ROSE's files, in file order (verified, see the module docstring).
ROSE_SUBTASKS: dict[str, tuple[str, ...]] = {
    "se": tuple(f"se_{s}" for s in _SE_SITES),
    "shp": tuple(f"shp_{s}" for s in _SHP_SUBREDDITS),
    "hh": ("hh_harmless-base", "hh_red-team-attempts"),
}


@dataclass
class PrefRecord:
    """One preference pair; `prompt_messages` ends with the user turn being answered."""

    line: int                              # 1-based line (jsonl) or record index (json; rose: prompt index)
    prompt: str                            # plain text for display and BM25
    prompt_messages: list[dict[str, str]]
    chosen: str
    rejected: str
    subtask: str
    original: dict                         # the file's entry as read ({key: value} for a JSON object entry)


@dataclass
class PrefRead:
    """A preference file as read: its pairs, its bad records, and how many ties were skipped."""

    records: list[PrefRecord]
    problems: list[Problem]
    ties: int = 0


class _Tie(Exception):
    """Raised by a parser for a judgement that prefers neither response: skipped, not an error."""


Pair = tuple[list[dict[str, str]], str, str]  # prompt messages, chosen, rejected


def detect_pref_format(path: str | Path, first_record: Any) -> str | None:
    """The one format whose distinctive fields the record (or a whole ROSE object) has, else None
    (none, or several: `read_prefs` then asks which of them can read it).

    A rose entry read from a JSON object has its prompt as the key, so without a "prompt"
    field it is only recognised in a `.json` file.
    """
    found = _candidates(path, first_record)
    return found[0] if len(found) == 1 else None


def _candidates(path: str | Path, r: Any) -> list[str]:
    """Every format whose distinctive fields the record has."""
    if not isinstance(r, dict):
        return []
    values = list(r.values())
    if values and _is_rose_entry(values[0]) and not _is_rose_entry(r):
        r = values[0]  # the whole ROSE object was passed
    if _is_rose_entry(r):
        return ["rose"] if "prompt" in r or Path(path).suffix.lower() == ".json" else []
    found = [f for f, fits in _SIGNS.items() if fits(r)]
    return found


def _has_pair(r: dict[str, Any]) -> bool:
    return "chosen" in r and "rejected" in r


_SIGNS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "chosen_messages": lambda r: "chosen_messages" in r and "rejected_messages" in r,
    "pairwise": lambda r: {"output_1", "output_2", "preference"} <= r.keys(),
    "sharegpt": lambda r: _has_pair(r) and ("conversations" in r or "messages" in r) and isinstance(r["chosen"], dict),
    "alpaca": lambda r: _has_pair(r) and "instruction" in r,
    "trl": lambda r: _has_pair(r) and ("prompt" in r or isinstance(r["chosen"], list)),
    "hh": lambda r: (_has_pair(r) and "prompt" not in r and isinstance(r["chosen"], str)
                     and ASSISTANT_MARK in r["chosen"]),
}


def _is_rose_entry(value: Any) -> bool:
    return isinstance(value, dict) and "responses" in value and "pairs" in value


def read_pref_file(path: str | Path, fmt: str | None = None, subtask_field: str | None = None,
                   subtasks: int | None = None) -> tuple[list[PrefRecord], list[Problem]]:
    """All pairs of a preference file with their subtasks, and the problems of the bad ones
    (`read_prefs` also counts the skipped ties)."""
    read = read_prefs(path, fmt, subtask_field, subtasks)
    return read.records, read.problems


def read_prefs(path: str | Path, fmt: str | None = None, subtask_field: str | None = None,
               subtasks: int | None = None) -> PrefRead:
    """All pairs of a preference file with their subtasks, the problems of the bad ones and
    the number of ties skipped.

    The format is that of the first record whose fields name one; when they fit several, the
    one that reads it. A file no format reads is an `InputError` saying what each near miss
    expected; only when some format does read it does the error ask to pass the format.

    Subtasks: `subtask_field` -> that field of each record; `subtasks=N` -> N contiguous equal
    groups in file order; a ROSE file named se_*/shp_*/hh_* -> its 10/18/2 sites; else a
    "subtask" field when the first record has one; else the file stem. Groups are counted over
    every entry of the file, bad ones included, so a bad pair never shifts the others' group.
    """
    check_format(fmt, PREF_FORMATS, "preference")
    if subtask_field and subtasks is not None:
        raise CurationError("give either a subtask field or a number of subtasks, not both")
    path = Path(path)
    raws = list(iter_raw(path))
    first = next((r for r in raws if isinstance(r, RawRecord)), None)
    if first is None:
        return PrefRead([], [r for r in raws if isinstance(r, Problem)])
    if fmt is None:  # the first record that names a format; unclear ones before it are problems
        fmt, first = _detect(path, raws, first)
        raws = [_unclear(path, r) if isinstance(r, RawRecord) and r.line < first.line else r for r in raws]
    subtask_of = _subtask_rule(path, fmt, raws, first, subtask_field, subtasks)
    read = PrefRead([], [])
    for position, raw in enumerate(raws):
        if isinstance(raw, Problem):
            read.problems.append(raw)
            continue
        try:
            read.records.append(_record(raw, _PARSERS[fmt](raw), subtask_of(position, raw.data)))
        except _Tie:
            read.ties += 1
        except BadField as e:
            read.problems.append(raw.problem(path, e.field, e.reason))
    return read


def _unclear(path: Path, raw: RawRecord) -> Problem:
    return raw.problem(path, None, f"cannot detect the preference format from fields {sorted(map(str, raw.data))[:20]}")


def _detect(path: Path, raws: list, first: RawRecord) -> tuple[str, RawRecord]:
    """The format and the record that names it; raises when no record names one."""
    for raw in raws:
        if isinstance(raw, RawRecord) and (found := _candidates(path, raw.data)):
            return _resolve(path, raw, found), raw
    readers = _readers(first, PREF_FORMATS)
    if readers:
        raise _error(path, first, f"cannot detect the preference format from fields {_fields(first)}, but "
                                  f"{' and '.join(readers)} can read it; pass the format explicitly")
    raise _near_miss(path, first, PREF_FORMATS)


def _resolve(path: Path, raw: RawRecord, found: list[str]) -> str:
    """One fitting format, or the only one of several that reads the record."""
    if len(found) == 1:
        return found[0]
    readers = _readers(raw, found)
    if len(readers) == 1:
        return readers[0]
    if readers:
        raise _error(path, raw, f"the preference format is ambiguous: fields {_fields(raw)} fit "
                                f"{' and '.join(readers)}, and each of them reads the record; pass the format explicitly")
    raise _near_miss(path, raw, found)


def _readers(raw: RawRecord, formats: tuple[str, ...] | list[str]) -> list[str]:
    """The formats whose parser reads the record (a tie counts: it was understood)."""
    out = []
    for fmt in formats:
        try:
            _PARSERS[fmt](raw)
        except _Tie:
            pass
        except BadField:
            continue
        out.append(fmt)
    return out


def _near_miss(path: Path, raw: RawRecord, formats: tuple[str, ...] | list[str]) -> InputError:
    """No format reads the record: what each format sharing a field with it expected, and why
    it failed on this record."""
    keys = set(map(str, raw.data))
    near = [f for f in formats if _FIELDS[f] & keys] or list(formats)
    parts = []
    for fmt in near:
        try:
            _PARSERS[fmt](raw)
            why = ""
        except BadField as e:
            why = f" (here: {f'field {e.field!r} ' if e.field else ''}{e.reason})"
        except _Tie:
            why = ""
        parts.append(f"{fmt} expects {_EXPECTS[fmt]}{why}")
    return _error(path, raw, f"cannot detect the preference format: no format reads the first record "
                             f"(fields {_fields(raw)}); " + "; ".join(parts))


def _fields(raw: RawRecord) -> list[str]:
    return sorted(map(str, raw.data))[:20]


def _error(path: Path, raw: RawRecord, reason: str) -> InputError:
    return InputError(str(path), raw.line, None, reason, raw.unit)


def _record(raw: RawRecord, pair: Pair, subtask: str) -> PrefRecord:
    messages, chosen, rejected = pair
    original = raw.as_read if raw.key is None else {raw.key: raw.as_read}
    return PrefRecord(raw.line, conversation_text(messages), messages, chosen, rejected, subtask, original)


def conversation_text(messages: list[dict[str, str]]) -> str:
    """Readable plain text: the question alone for one turn, a labelled transcript otherwise."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{_LABELS[m['role']]}: {m['content']}" for m in messages)


# --- subtasks ---------------------------------------------------------------------------------

SubtaskRule = Callable[[int, dict[str, Any]], str]


def _subtask_rule(path: Path, fmt: str, raws: list, first: RawRecord, field: str | None,
                  groups: int | None) -> SubtaskRule:
    prefix = path.stem.split("_")[0]
    known = fmt == "rose" and prefix in ROSE_SUBTASKS
    if field:
        return lambda _, data: _field_subtask(data, field)
    if groups is None and known:
        groups = len(ROSE_SUBTASKS[prefix])
    if groups is not None:
        names = ROSE_SUBTASKS.get(prefix, ()) if known else ()
        return _order_groups(path, len(raws), groups, prefix if known else path.stem, names)
    if "subtask" in first.data:
        return lambda _, data: _field_subtask(data, "subtask")
    return lambda *_: path.stem


def _order_groups(path: Path, n: int, groups: int, prefix: str, names: tuple[str, ...]) -> SubtaskRule:
    """Contiguous equal groups in file order, named `names` when they fit, else prefix_01..."""
    if not isinstance(groups, int) or groups < 1:
        raise CurationError(f"subtasks must be a positive integer, got {groups!r}")
    if n % groups:
        raise CurationError(f"{path}: {n} records cannot be split into {groups} equal subtasks; "
                            "pass another subtasks=N or a subtask field")
    if len(names) != groups:
        names = tuple(f"{prefix}_{i:02d}" for i in range(1, groups + 1))
    size = n // groups
    return lambda position, _: names[position // size]


def _field_subtask(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadField(field, "missing subtask" if value is None else f"expected a string, got {json_type(value)}")
    if not str(value).strip():
        raise BadField(field, "empty subtask")
    return str(value).strip()


# --- prompts and responses -----------------------------------------------------------------------

def parse_transcript(text: str) -> list[dict[str, str]]:
    """HH-style "\\n\\nHuman: ...\\n\\nAssistant: ..." text -> messages (text without markers -> one
    user turn). Turn contents are stripped; empty turns are kept so turns still alternate."""
    parts = _TURN.split(text)
    head = parts[0].strip()
    messages = [{"role": "user", "content": head}] if head else []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def _prompt(messages: list[dict[str, str]], field: str) -> list[dict[str, str]]:
    """A prompt conversation without its trailing empty assistant marker; must end with a user turn."""
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages = messages[:-1]
    if not messages or not messages[-1]["content"]:
        raise BadField(field, "empty prompt")
    if messages[-1]["role"] != "user":
        raise BadField(field, f"does not end with a user turn (last turn: {messages[-1]['role']})")
    return messages


def _prompt_value(value: Any, field: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return _prompt(parse_transcript(value), field)
    if isinstance(value, list):
        return _prompt(normalise_turns(value, field), field)
    raise _mistyped(field, value)


def _mistyped(field: str, value: Any) -> BadField:
    if value is None:
        return BadField(field, "missing")
    return BadField(field, f"expected a string or an array of messages, got {json_type(value)}")


def _response(value: Any, field: str) -> str:
    """A response given as a string, one message, or messages (their assistant contents)."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        value = "\n\n".join(m["content"] for m in normalise_turns(value, field) if m["role"] == "assistant")
    elif not isinstance(value, str):
        raise _mistyped(field, value)
    if not value.strip():
        raise BadField(field, "empty response")
    return value.strip()


def _distinct(messages: list[dict[str, str]], chosen: str, rejected: str, rejected_field: str) -> Pair:
    if chosen == rejected:
        raise BadField(rejected_field, "identical to the chosen response")
    return messages, chosen, rejected


# --- formats ---------------------------------------------------------------------------------

def _trl(raw: RawRecord) -> Pair:
    r = raw.data
    if "prompt" not in r and isinstance(r.get("chosen"), list) and isinstance(r.get("rejected"), list):
        return _trl_implicit(r)
    messages = _prompt_value(r.get("prompt"), "prompt")
    chosen, rejected = _response(r.get("chosen"), "chosen"), _response(r.get("rejected"), "rejected")
    return _distinct(messages, chosen, rejected, "rejected")


def _trl_implicit(r: dict[str, Any]) -> Pair:
    return _implicit(normalise_turns(r["chosen"], "chosen"), normalise_turns(r["rejected"], "rejected"),
                     "chosen", "rejected")


def _implicit(chosen: list[dict[str, str]], rejected: list[dict[str, str]], cf: str, rf: str) -> Pair:
    """Conversational pair without a prompt: the shared turns up to the last shared user turn."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    users = [i for i in range(shared) if chosen[i]["role"] == "user"]
    if not users:
        raise BadField(cf, f"no prompt: {cf} and {rf} share no user turn")
    cut = users[-1] + 1
    return _distinct(_prompt(chosen[:cut], cf), _response(chosen[cut:], cf), _response(rejected[cut:], rf), rf)


def _hh(raw: RawRecord) -> Pair:
    """The prompt is the longest shared prefix that ends with an "\\n\\nAssistant:" marker."""
    chosen, rejected = (text_field(raw.data, k, empty="empty transcript") for k in ("chosen", "rejected"))
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    marker = chosen.rfind(ASSISTANT_MARK, 0, shared)  # the whole marker lies in the shared part
    if marker < 0:
        raise BadField("chosen", f"chosen and rejected share no prompt ending in {ASSISTANT_MARK.strip()!r}")
    cut = marker + len(ASSISTANT_MARK)
    messages = _prompt(parse_transcript(chosen[:cut]), "chosen")
    return _distinct(messages, _response(chosen[cut:], "chosen"), _response(rejected[cut:], "rejected"), "rejected")


def _rose(raw: RawRecord) -> Pair:
    """One pair per prompt: sft_target vs rejected_target as ROSE uses them, else pairs[0]."""
    r = raw.data
    messages = _prompt_value(raw.key if raw.key is not None else r.get("prompt"), "prompt")
    responses = _responses(r.get("responses"))
    pairs = _pairs(r.get("pairs"), len(responses))
    if "sft_target" in r and "rejected_target" in r:
        chosen, rejected = _response(r["sft_target"], "sft_target"), _response(r["rejected_target"], "rejected_target")
        return _distinct(messages, chosen, rejected, "rejected_target")
    if not pairs:
        raise BadField("pairs", "no preference pair")
    i, j = pairs[0]
    return _distinct(messages, _response(responses[i], f"responses[{i}]"),
                     _response(responses[j], f"responses[{j}]"), f"responses[{j}]")


def _responses(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise BadField("responses", "missing" if value is None else f"expected an array, got {json_type(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadField(f"responses[{i}]", f"expected a string, got {json_type(item)}")
    return value


def _pairs(value: Any, n: int) -> list[tuple[int, int]]:
    """[[chosen index, rejected index], ...], every index checked against the responses."""
    if not isinstance(value, list):
        raise BadField("pairs", "missing" if value is None else f"expected an array, got {json_type(value)}")
    out = []
    for k, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(type(x) is int for x in pair)):
            raise BadField(f"pairs[{k}]", "expected [chosen index, rejected index]")
        bad = [x for x in pair if not 0 <= x < n]
        if bad:
            raise BadField(f"pairs[{k}]", f"index {bad[0]} out of range for {n} responses")
        out.append((pair[0], pair[1]))
    return out


# --- LLaMA-Factory and pairwise judgements --------------------------------------------------------

def _user_turn(r: dict[str, Any], joiner: str) -> dict[str, str]:
    """instruction, then the optional input after `joiner`, as one user turn."""
    instruction = text_field(r, "instruction", empty="empty prompt")
    extra = text_field(r, "input", optional=True)
    return {"role": "user", "content": f"{instruction}{joiner}{extra}" if extra else instruction}


def _lf_alpaca(raw: RawRecord) -> Pair:
    """LLaMA-Factory's alpaca preference record; its prompt is `instruction\\ninput` as there."""
    r = raw.data
    system = text_field(r, "system", optional=True)
    messages = [{"role": "system", "content": system}] if system else []
    messages += _history(r.get("history")) + [_user_turn(r, "\n")]
    chosen, rejected = _response(r.get("chosen"), "chosen"), _response(r.get("rejected"), "rejected")
    return _distinct(messages, chosen, rejected, "rejected")


def _history(value: Any) -> list[dict[str, str]]:
    """[[user, assistant], ...] earlier rounds -> turns."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadField("history", f"expected an array of [instruction, response] pairs, got {json_type(value)}")
    turns = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)):
            raise BadField(f"history[{i}]", "expected [instruction, response], two non-empty strings")
        turns += [{"role": "user", "content": pair[0].strip()}, {"role": "assistant", "content": pair[1].strip()}]
    return turns


def _lf_sharegpt(raw: RawRecord) -> Pair:
    """LLaMA-Factory's sharegpt preference record: the conversation is the prompt, `chosen`
    and `rejected` one message each; {from, value} or OpenAI-style {role, content} tags."""
    r = raw.data
    field = "conversations" if "conversations" in r else "messages"
    turns = r.get(field)
    keys = ("from", "value") if isinstance(turns, list) and turns and isinstance(turns[0], dict) \
        and "from" in turns[0] else ("role", "content")
    messages = normalise_turns(turns, field, *keys, roles=_LF_ROLES)
    system = text_field(r, "system", optional=True)
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    chosen, rejected = (_lf_message(r.get(k), k) for k in ("chosen", "rejected"))
    return _distinct(_prompt(messages, field), chosen, rejected, "rejected")


def _lf_message(value: Any, field: str) -> str:
    """One assistant message, {from, value} or {role, content} -> its text."""
    if not isinstance(value, dict):
        raise BadField(field, "missing" if value is None else f"expected one message object, got {json_type(value)}")
    role_key, content_key = ("from", "value") if "from" in value else ("role", "content")
    role = value.get(role_key)
    if not isinstance(role, str) or _LF_ROLES.get(role.strip().lower()) != "assistant":
        raise BadField(f"{field}.{role_key}", f"expected an assistant message, got role {role!r}")
    return text_field(value, content_key, field, empty="empty response")


def _chosen_messages(raw: RawRecord) -> Pair:
    """Two full conversations (LLaMA-Factory v1); the turns they share are the prompt."""
    chosen, rejected = (normalise_turns(_flat(raw.data.get(k), k), k, roles=_LF_ROLES)
                        for k in ("chosen_messages", "rejected_messages"))
    return _implicit(chosen, rejected, "chosen_messages", "rejected_messages")


def _flat(turns: Any, field: str) -> Any:
    """Messages whose content is a list of parts ({type, value} as LLaMA-Factory v1 writes them,
    or OpenAI's {type, text}) with that content joined into text; other values as they are."""
    if not isinstance(turns, list):
        return turns
    out = []
    for i, turn in enumerate(turns):
        if isinstance(turn, dict) and isinstance(turn.get("content"), list):
            turn = {**turn, "content": "\n".join(_part(p, f"{field}[{i}].content[{j}]")
                                                  for j, p in enumerate(turn["content"]))}
        out.append(turn)
    return out


def _part(part: Any, where: str) -> str:
    text = part.get("value", part.get("text")) if isinstance(part, dict) else None
    if not isinstance(text, str) or part.get("type", "text") not in ("text", "tool_call"):
        raise BadField(where, "expected a text part {type: text, value}")
    return text


def _pairwise(raw: RawRecord) -> Pair:
    """A judgement between output_1 and output_2 (AlpacaEval); a tie raises `_Tie`."""
    r = raw.data
    winner = _winner(r.get("preference", _MISSING))
    messages = [_user_turn(r, "\n\n")]
    outputs = [text_field(r, k, empty="empty response") for k in ("output_1", "output_2")]
    loser = 2 if winner == 1 else 1
    return _distinct(messages, outputs[winner - 1], outputs[loser - 1], f"output_{loser}")


_MISSING = object()


def _winner(value: Any) -> int:
    """1 or 2 from AlpacaEval's preference: 1 or 2, or a weighted annotator's value between them
    (the nearer wins); 1.5, 0 and null (NaN or an empty CSV cell too) are ties."""
    if value is _MISSING:
        raise BadField("preference", "missing")
    if isinstance(value, str) and value.strip():
        try:
            value = float(value)
        except ValueError:
            pass
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        raise _Tie()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value == 0 or 1 <= value <= 2):
        raise BadField("preference", f"expected 1 or 2 (1.5, 0 or null for a tie), got {value!r}")
    if value == 0 or value == 1.5:
        raise _Tie()
    return 1 if value < 1.5 else 2


_PARSERS: dict[str, Callable[[RawRecord], Pair]] = {
    "trl": _trl, "hh": _hh, "rose": _rose, "alpaca": _lf_alpaca, "sharegpt": _lf_sharegpt,
    "chosen_messages": _chosen_messages, "pairwise": _pairwise,
}
