"""Shared pieces of the synthetic families: the problem types, the response format, answer checks.

Every family generator returns a `Problem` carrying both a correct and a plausible wrong worked
answer, built by the same code path, so planted noise looks exactly like clean data.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

ANSWER_MARK = "the answer is"
MODES = ("ints", "text")  # how a family's answers are compared: integer sequence, or exact text


@dataclass(frozen=True)
class Attempt:
    """One worked response and the final answer it commits to."""

    answer: str
    response: str


@dataclass(frozen=True)
class Problem:
    """A prompt with its correct attempt and a plausible wrong one in the same style."""

    prompt: str
    right: Attempt
    wrong: Attempt
    key: str = ""  # what splits and dedupes on, when not the whole prompt (e.g. without a preamble)

    @property
    def split_key(self) -> str:
        return self.key or self.prompt


Generator = Callable[[random.Random], Problem]


@dataclass(frozen=True)
class Family:
    """A task family: named subtask generators, an answer-comparison mode and a pool weight."""

    name: str
    mode: str
    subtasks: tuple[tuple[str, Generator], ...]
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"family {self.name}: mode must be one of {MODES}, not {self.mode!r}")

    @property
    def subtask_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.subtasks)

    def generator(self, subtask: str) -> Generator:
        return dict(self.subtasks)[subtask]


def solved(working: str, answer: object) -> Attempt:
    """The pool's one response shape, brief working then the answer, so a tiny LM learns it fast."""
    return Attempt(str(answer), f"{working}, so {ANSWER_MARK} {answer}.")


def fill(rng: random.Random, templates: Sequence[str], **slots: object) -> str:
    """A random template with its slots filled; templates may ignore slots they do not use."""
    return rng.choice(templates).format(**slots)


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 day', '3 days': word agreement in the working text."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def extract_answer(response: str) -> str:
    """The final answer of a response: the text after the first 'the answer is', up to the end of
    that sentence, or the whole first line when there is no such marker (free-text families).

    The first marker, not the last, because a small model that fails to stop tends to ramble on
    into a second, unrelated answer.
    """
    found = re.search(re.escape(ANSWER_MARK), response, flags=re.IGNORECASE)
    if found is None:
        lines = response.strip().splitlines()
        return _strip(lines[0]) if lines else ""
    tail = response[found.end():].strip()
    tail = tail.splitlines()[0] if tail else ""
    return _strip(re.split(r"[.!?](?:\s|$)", tail, maxsplit=1)[0])


def answers_match(mode: str, answer: str, gold: str) -> bool:
    """Exact match on what matters for the mode: the integers in order, or the trimmed text."""
    if mode == "ints":
        want = _ints(gold)
        return bool(want) and _ints(answer) == want
    return _strip(answer) == _strip(gold)


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", text)]


def _strip(text: str) -> str:
    return text.strip().strip("\"'").strip().rstrip(".!").strip()
