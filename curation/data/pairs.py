"""Checks on one preference pair before it is stored: errors refuse it, warnings ask for a look.

A pair that cannot be scored (a field missing, chosen equal to rejected, an exact copy of a
stored pair) is an error. A pair that can be scored but may say little is a warning: the
same prompt as a stored pair, a rejected answer that is nearly the chosen one (ROSE then
scores examples by that detail, see `heldout.label_contrast`), text so long that the model's
max length cuts it, or a response too short to carry a preference. Each problem names its
field, so a form can show it next to the input and a test can check it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

from rapidfuzz.fuzz import ratio as indel_ratio

FIELDS = ("subtask", "prompt", "chosen", "rejected")
SUBTASK_MAX = 200  # PreferencePair.subtask is a String(200)
NEAR_IDENTICAL = 0.8  # similarity above which chosen and rejected differ only in a detail (also `heldout`)
SEQUENCE_MATCH_MAX = 4_000  # characters; longer pairs are compared by word sets


@dataclass(frozen=True)
class PairDraft:
    """The four fields a curator types for one pair."""

    subtask: str
    prompt: str
    chosen: str
    rejected: str

    def cleaned(self) -> "PairDraft":
        """Surrounding whitespace removed, as stored."""
        return PairDraft(*(str(getattr(self, f) or "").strip() for f in FIELDS))


@dataclass(frozen=True)
class LengthLimits:
    """What counts as too long or too short. ``max_tokens`` is a run's default max length
    (`ModelConfig.max_length`); characters per token is the usual English rate."""

    max_tokens: int = 512
    chars_per_token: float = 4.0
    min_chars: int = 2

    @property
    def max_chars(self) -> int:
        return int(self.max_tokens * self.chars_per_token)


@dataclass(frozen=True)
class Problem:
    """One finding about a pair: ``level`` is "error" (not stored) or "warning" (stored on confirm)."""

    field: str  # one of FIELDS
    level: str
    code: str  # required | too_long_subtask | identical | duplicate | same_prompt | near_identical | long | short
    message: str  # reads after the field name: "rejected is identical to chosen: ..."

    def __str__(self) -> str:
        return f"{self.field} {self.message}"


def errors(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.level == "error"]


def warnings(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.level == "warning"]


def required(draft: PairDraft) -> list[Problem]:
    """Errors for what makes a pair unusable on its own: an empty field, an over-long subtask
    name, chosen equal to rejected."""
    d = draft.cleaned()
    out = [Problem(f, "error", "required", "is empty (every pair needs it)") for f in FIELDS if not getattr(d, f)]
    if len(d.subtask) > SUBTASK_MAX:
        out.append(Problem("subtask", "error", "too_long_subtask",
                           f"is {len(d.subtask):,} characters long: a subtask name has at most {SUBTASK_MAX}"))
    if d.chosen and d.chosen == d.rejected:
        out.append(Problem("rejected", "error", "identical",
                           "is identical to chosen: a pair must prefer one response over another"))
    return out


def check_pair(draft: PairDraft, existing: Sequence[dict] = (), limits: LengthLimits = LengthLimits()) -> list[Problem]:
    """Every problem of `draft` against the set's `existing` pairs (dicts with id, prompt,
    chosen, rejected): errors first, then warnings."""
    d = draft.cleaned()
    out = required(d)
    out += _duplicates(d, existing)
    if d.chosen and d.rejected and d.chosen != d.rejected:
        out += _near_identical(d)
    out += _lengths(d, limits)
    return errors(out) + warnings(out)


def _norm(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def _ids(pairs: Iterable[dict]) -> str:
    return ", ".join(f"#{p['id']}" for p in pairs)


def _duplicates(d: PairDraft, existing: Sequence[dict]) -> list[Problem]:
    if not d.prompt:
        return []
    same = [p for p in existing if _norm(p["prompt"]) == _norm(d.prompt)]
    copies = [p for p in same if str(p["chosen"]).strip() == d.chosen and str(p["rejected"]).strip() == d.rejected]
    if copies:
        return [Problem("prompt", "error", "duplicate",
                        f"is already in the set with the same chosen and rejected (pair {_ids(copies)})")]
    if same:
        return [Problem("prompt", "warning", "same_prompt",
                        f"is also the prompt of pair {_ids(same)}: fine for another contrast, "
                        "but check it is not the same pair written twice")]
    return []


@lru_cache(maxsize=1 << 16)
def similarity(a: str, b: str) -> float:
    """How alike two responses are, 0..1: the normalised Indel similarity 2·LCS/(|a|+|b|)
    (rapidfuzz, bit-parallel C++; difflib's ratio is the same formula over its greedy matching
    blocks, so never higher), or the Jaccard index of their word sets for very long pairs.
    Memoised, and fast: difflib took 8.7 s on the first look at a 2,308-pair set (the Preferences
    page checks every pair), 130-260 s with long repetitive answers."""
    if len(a) + len(b) > SEQUENCE_MATCH_MAX:
        wa, wb = set(re.findall(r"\w+", a.casefold())), set(re.findall(r"\w+", b.casefold()))
        return len(wa & wb) / len(wa | wb) if wa | wb else 1.0
    return indel_ratio(a, b) / 100.0


def _near_identical(d: PairDraft) -> list[Problem]:
    ratio = similarity(d.chosen, d.rejected)
    if ratio < NEAR_IDENTICAL:
        return []
    return [Problem("rejected", "warning", "near_identical",
                    f"is {ratio:.0%} alike to chosen: the pair contrasts a detail (a number, a word), and ROSE "
                    "then looks for that detail rather than the task; a rejected answer that is worse in "
                    "the way the task cares about carries more signal")]


def _lengths(d: PairDraft, limits: LengthLimits) -> list[Problem]:
    out, cap = [], limits.max_chars
    if len(d.prompt) > cap:
        out.append(Problem("prompt", "warning", "long",
                           f"is {len(d.prompt):,} characters, about {_tokens(d.prompt, limits):,} tokens: over the "
                           f"{limits.max_tokens:,} tokens a run reads by default, so most of the responses are cut"))
    for f in ("chosen", "rejected"):
        text = getattr(d, f)
        if text and len(d.prompt) + len(text) > cap >= len(d.prompt):
            out.append(Problem(f, "warning", "long",
                               f"and the prompt together are about {_tokens(d.prompt + text, limits):,} tokens; a "
                               f"run reads {limits.max_tokens:,} by default and cuts the end of the response "
                               "(a difference there carries no signal)"))
        if text and len(text) < limits.min_chars:
            out.append(Problem(f, "warning", "short",
                               f"is only {len(text)} character(s) long: a very short response says little about the task"))
    return out


def _tokens(text: str, limits: LengthLimits) -> int:
    return round(len(text) / limits.chars_per_token)
