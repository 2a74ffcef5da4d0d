"""Preference-set readers: few-shot (prompt, chosen, rejected) pairs for a target task.

Three formats: `trl` (prompt/chosen/rejected as strings or message lists, or chosen/rejected
conversations with an implicit shared prompt), `hh` (Anthropic HH-RLHF full transcripts) and
`rose` (ROSE's validation files: one JSON object mapping prompt -> responses/pairs/targets).

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

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from curation.data.io._read import BadField, Problem, RawRecord, check_format, iter_raw, json_type
from curation.data.io.pool import normalise_turns, text_field
from curation.errors import CurationError, InputError

__all__ = ["PREF_FORMATS", "PrefRecord", "ROSE_SUBTASKS", "detect_pref_format", "parse_transcript",
           "read_pref_file"]

PREF_FORMATS = ("trl", "hh", "rose")
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


Pair = tuple[list[dict[str, str]], str, str]  # prompt messages, chosen, rejected


def detect_pref_format(path: str | Path, first_record: Any) -> str | None:
    """`trl`, `hh` or `rose` from the first record (or a whole ROSE object), else None.

    A rose entry read from a JSON object has its prompt as the key, so without a "prompt"
    field it is only recognised in a `.json` file.
    """
    if not isinstance(first_record, dict):
        return None
    values = list(first_record.values())
    if values and _is_rose_entry(values[0]) and not _is_rose_entry(first_record):
        first_record = values[0]  # the whole ROSE object was passed
    if _is_rose_entry(first_record):
        return "rose" if "prompt" in first_record or Path(path).suffix.lower() == ".json" else None
    if "chosen" not in first_record or "rejected" not in first_record:
        return None
    chosen = first_record["chosen"]
    if "prompt" in first_record or isinstance(chosen, list):
        return "trl"
    return "hh" if isinstance(chosen, str) and ASSISTANT_MARK in chosen else None


def _is_rose_entry(value: Any) -> bool:
    return isinstance(value, dict) and "responses" in value and "pairs" in value


def read_pref_file(path: str | Path, fmt: str | None = None, subtask_field: str | None = None,
                   subtasks: int | None = None) -> tuple[list[PrefRecord], list[Problem]]:
    """All pairs of a preference file with their subtasks, and the problems of the bad ones.

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
        return [], [r for r in raws if isinstance(r, Problem)]
    if fmt is None:  # the first record that names a format; unclear ones before it are problems
        first = next((r for r in raws if isinstance(r, RawRecord) and detect_pref_format(path, r.data)), first)
        fmt = _detect(path, first)
        raws = [_unclear(path, r) if isinstance(r, RawRecord) and r.line < first.line else r for r in raws]
    subtask_of = _subtask_rule(path, fmt, raws, first, subtask_field, subtasks)
    records: list[PrefRecord] = []
    problems: list[Problem] = []
    for position, raw in enumerate(raws):
        if isinstance(raw, Problem):
            problems.append(raw)
            continue
        try:
            records.append(_record(raw, _PARSERS[fmt](raw), subtask_of(position, raw.data)))
        except BadField as e:
            problems.append(Problem(str(path), raw.line, e.field, e.reason))
    return records, problems


def _unclear(path: Path, raw: RawRecord) -> Problem:
    return Problem(str(path), raw.line, None,
                   f"cannot detect the preference format from fields {sorted(map(str, raw.data))[:20]}")


def _detect(path: Path, first: RawRecord) -> str:
    fmt = detect_pref_format(path, first.data)
    if fmt is None:
        raise InputError(str(path), first.line, None,
                         f"cannot detect the preference format from fields {sorted(first.data)}; expected "
                         "trl (prompt, chosen, rejected), hh (chosen, rejected transcripts) or rose "
                         "(prompt -> responses, pairs); pass the format explicitly")
    return fmt


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
    """Conversational pair without a prompt: the shared turns up to the last shared user turn."""
    chosen, rejected = normalise_turns(r["chosen"], "chosen"), normalise_turns(r["rejected"], "rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    users = [i for i in range(shared) if chosen[i]["role"] == "user"]
    if not users:
        raise BadField("chosen", "no prompt: chosen and rejected share no user turn")
    cut = users[-1] + 1
    return _distinct(_prompt(chosen[:cut], "chosen"), _response(chosen[cut:], "chosen"),
                     _response(rejected[cut:], "rejected"), "rejected")


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


_PARSERS: dict[str, Callable[[RawRecord], Pair]] = {"trl": _trl, "hh": _hh, "rose": _rose}
