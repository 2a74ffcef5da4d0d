"""Families about strings and the calendar: word edits, counting, day and date arithmetic.

Working spells things out (letters, weeks and days) because that is how a small model gets these
right; wrong attempts keep the working and slip on the result, the way careless answers do.
"""

from __future__ import annotations

import random

from curation.synthetic.base import Family, Generator, Problem, fill, plural, solved
from curation.synthetic.lexicon import MONTHS, OBJECTS, SUBJECTS, TAILS, VERBS, WEEKDAYS, WORDS

REVERSE = ("Reverse the word '{w}'.", "Write the word {w} backwards.", "Spell '{w}' in reverse order.",
           "What is '{w}' spelled backwards?", "Reverse the letters of {w}.")
UPPER = ("Convert '{w}' to uppercase.", "Write the word {w} in capital letters.",
         "Rewrite '{w}' using only uppercase letters.", "What is {w} in all caps?")


def _swap_adjacent(rng: random.Random, text: str) -> str:
    """The text with two neighbouring, different letters swapped: a typical copying slip."""
    spots = [i for i in range(len(text) - 1) if text[i] != text[i + 1]]
    i = rng.choice(spots)
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def _word_edit(upper: bool) -> Generator:
    """Reverse a word, or write it in capitals."""
    def generate(rng: random.Random) -> Problem:
        word = rng.choice(WORDS)
        prompt = fill(rng, UPPER if upper else REVERSE, w=word)
        target = word.upper() if upper else word[::-1]
        working = (f"In capital letters, {word} becomes {{}}" if upper
                   else f"Spelled backwards, {'-'.join(word)} becomes {{}}")
        slip = _swap_adjacent(rng, target)
        return Problem(prompt, solved(working.format(target), target), solved(working.format(slip), slip))
    return generate


LETTER = ("How many times does the letter '{l}' appear in '{w}'?", "Count the letter {l} in the word {w}.",
          "In the word '{w}', how many times does {l} occur?")
LENGTH = ("How many letters are in the word '{w}'?", "Count the letters in {w}.",
          "What is the length of the word '{w}' in letters?")
SENTENCE = ("How many words are in this sentence: \"{s}\"", "Count the words in the sentence \"{s}\"",
            "\"{s}\" How many words does that sentence have?")


def _count_letters(rng: random.Random) -> Problem:
    word = rng.choice(WORDS)
    spelled = "-".join(word)
    letter = rng.choice(word) if rng.random() < 0.6 else None  # None: count all letters

    def say(n: int) -> str:
        if letter:
            return f"Spelled out, {word} is {spelled}, and {letter} appears {plural(n, 'time')}"
        return f"Spelled out, {word} is {spelled}, which is {plural(n, 'letter')}"

    k = word.count(letter) if letter else len(word)
    prompt = fill(rng, LETTER, l=letter, w=word) if letter else fill(rng, LENGTH, w=word)
    wrong = k + rng.choice((-1, 1)) if k > 1 else 2
    return Problem(prompt, solved(say(k), k), solved(say(wrong), wrong))


def _count_words(rng: random.Random) -> Problem:
    parts = (rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(TAILS))
    words = " ".join(p for p in parts if p).split()
    prompt = fill(rng, SENTENCE, s=" ".join(words) + ".")
    listed = ", ".join(words)
    say = f"The words are {listed}, which makes {{}}"
    wrong = len(words) + rng.choice((-1, 1))
    return Problem(prompt, solved(say.format(len(words)), len(words)), solved(say.format(wrong), wrong))


WEEKDAY = {"after": ("If today is {d}, what day of the week will it be in {n} days?",
                     "What day of the week is {n} days after {d}?",
                     "It is {d} today. Which day will it be {n} days from now?"),
           "before": ("If today is {d}, what day of the week was it {n} days ago?",
                      "What day of the week is {n} days before {d}?",
                      "It is {d} today. Which day was it {n} days ago?")}
CALENDAR = ("What is the date {n} days after {m} {d}?", "If today is {m} {d}, what is the date {n} days from now?",
            "Count forward {n} days from {m} {d}. What date do you reach?")


def _weekday(rng: random.Random) -> Problem:
    way = rng.choice(("after", "before"))
    start, n = rng.randrange(7), rng.randint(2, 30)
    day = WEEKDAYS[start]
    prompt = fill(rng, WEEKDAY[way], d=day, n=n)
    weeks, rest = divmod(n, 7)
    step = 1 if way == "after" else -1
    say = (f"{n} days is {plural(weeks, 'week')} and {plural(rest, 'day')}, and "
           f"{plural(rest, 'day')} {way} {day} is {{}}")
    right = WEEKDAYS[(start + step * rest) % 7]
    wrong = WEEKDAYS[(start + step * rest + rng.choice((-1, 1))) % 7]
    return Problem(prompt, solved(say.format(right), right), solved(say.format(wrong), wrong))


def _date_after(month: int, day: int, n: int) -> str:
    """'April 4': the date n days after a day of a (non-leap) year."""
    day += n
    while day > MONTHS[month][1]:
        day -= MONTHS[month][1]
        month = (month + 1) % 12
    return f"{MONTHS[month][0]} {day}"


def _calendar(rng: random.Random) -> Problem:
    month = rng.choice([i for i, (name, _) in enumerate(MONTHS) if name != "February"])
    name, length = MONTHS[month]
    day, n = rng.randint(1, length), rng.randint(3, 25)
    prompt = fill(rng, CALENDAR, m=name, d=day, n=n)
    say = f"{name} has {length} days, and {n} days after {name} {day} is {{}}"
    right, wrong = _date_after(month, day, n), _date_after(month, day, n + rng.choice((-1, 1)))
    return Problem(prompt, solved(say.format(right), right), solved(say.format(wrong), wrong))


FAMILIES = (
    Family("word_edit", "text", (("reverse", _word_edit(False)), ("uppercase", _word_edit(True)))),
    Family("counting", "ints", (("letters", _count_letters), ("words", _count_words))),
    Family("dates", "text", (("weekday", _weekday), ("calendar", _calendar))),
)
