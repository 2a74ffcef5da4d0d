"""Numeric families: arithmetic word problems (the demo's target), unit conversion, sorting.

Wrong attempts are the mistakes people make (a slip of one, the wrong operation, swapped
operands, the wrong conversion factor), with working that is consistent with the wrong answer.
"""

from __future__ import annotations

import random
from typing import Callable

from curation.synthetic.base import Attempt, Family, Generator, Problem, fill, solved
from curation.synthetic.lexicon import ITEMS, NAMES

OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x // y}
WRONG_OP = {"+": "-", "-": "+", "*": "+", "/": "-"}

# op -> (operand sampler, templates). Templates read {a} op {b} in that order.
STORIES: dict[str, tuple[Callable[[random.Random], tuple[int, int]], tuple[str, ...]]] = {
    "+": (lambda r: (r.randint(12, 89), r.randint(5, 89)), (
        "{name} has {a} {items} and buys {b} more. How many {items} does {name} have now?",
        "A shop sold {a} {items} in the morning and {b} in the afternoon. How many {items} did it sell in total?",
        "There are {a} {items} in one box and {b} {items} in another box. How many {items} are there altogether?",
        "{name} read {a} pages on Monday and {b} pages on Tuesday. How many pages did {name} read in total?",
        "A school has {a} girls and {b} boys in the choir. How many children are in the choir?",
        "{name} walked {a} minutes before lunch and {b} minutes after lunch. How many minutes did {name} walk?",
    )),
    "-": (lambda r: (lambda a: (a, r.randint(3, a - 2)))(r.randint(15, 99)), (
        "{name} had {a} {items} and gave {b} to a friend. How many {items} are left?",
        "A bus has {a} passengers. At the next stop, {b} passengers get off. How many passengers are still on the bus?",
        "{name} wants to collect {a} {items} and already has {b}. How many more {items} does {name} need?",
        "A tank holds {a} liters of water and {b} liters are used. How many liters remain?",
        "There were {a} {items} on the table. {name} took {b} of them. How many {items} are on the table now?",
        "A book has {a} pages. {name} has read {b} pages. How many pages are left to read?",
    )),
    "*": (lambda r: (r.randint(2, 12), r.randint(2, 12)), (
        "{name} buys {a} packs of {items} with {b} {items} in each pack. How many {items} does {name} buy?",
        "A classroom has {a} rows of desks with {b} desks in each row. How many desks are there?",
        "Each ticket costs {b} dollars. How much do {a} tickets cost in dollars?",
        "A baker makes {a} trays of cookies with {b} cookies on each tray. How many cookies is that?",
        "{name} saves {b} dollars every week for {a} weeks. How many dollars does {name} save?",
        "A garden has {a} rows with {b} plants in each row. How many plants are in the garden?",
    )),
    "/": (lambda r: (lambda b, q: (b * q, b))(r.randint(2, 12), r.randint(2, 12)), (
        "{name} shares {a} {items} equally among {b} friends. How many {items} does each friend get?",
        "{a} students are split into teams of {b}. How many teams are there?",
        "A ribbon {a} meters long is cut into {b} equal pieces. How many meters long is each piece?",
        "{name} pays {a} dollars for {b} books that cost the same. How many dollars does one book cost?",
        "{a} {items} are packed into bags of {b}. How many bags are filled?",
        "A trip of {a} kilometers is driven in {b} equal parts. How many kilometers is each part?",
    )),
}
ARITHMETIC_PREFIXES = ("", "", "", "Solve this word problem. ", "Answer the question. ", "Math problem: ")


def _worked(a: int, op: str, b: int, slip: int = 0) -> Attempt:
    value = OPS[op](a, b) + slip
    return solved(f"{a} {op} {b} = {value}", value)


def _arithmetic(ops: tuple[str, ...]) -> Generator:
    """A word-problem generator over the given operations."""
    def generate(rng: random.Random) -> Problem:
        op = rng.choice(ops)
        sample, templates = STORIES[op]
        a, b = sample(rng)
        story = fill(rng, templates, a=a, b=b, name=rng.choice(NAMES), items=rng.choice(ITEMS))
        wrongs = [_worked(a, op, b, -1), _worked(a, op, b, 1), _worked(a, WRONG_OP[op], b)]
        if op == "-":
            wrongs.append(_worked(b, op, a))  # swapped operands
        return Problem(rng.choice(ARITHMETIC_PREFIXES) + story, _worked(a, op, b), rng.choice(wrongs), key=story)
    return generate


# (unit, units, smaller unit plural, factor, the factor people wrongly use)
UNITS = (("meter", "meters", "centimeters", 100, 10), ("kilometer", "kilometers", "meters", 1000, 100),
         ("kilogram", "kilograms", "grams", 1000, 100), ("hour", "hours", "minutes", 60, 100),
         ("minute", "minutes", "seconds", 60, 100), ("day", "days", "hours", 24, 12),
         ("week", "weeks", "days", 7, 5), ("liter", "liters", "milliliters", 1000, 100),
         ("dollar", "dollars", "cents", 100, 10), ("foot", "feet", "inches", 12, 10),
         ("year", "years", "months", 12, 10))
TO_SMALL = ("How many {small} are in {n} {bigs}?", "Convert {n} {bigs} to {small}.",
            "{n} {bigs} is how many {small}?", "Express {n} {bigs} in {small}.",
            "What is {n} {bigs} in {small}?")
TO_BIG = ("How many {bigs} are in {m} {small}?", "Convert {m} {small} to {bigs}.",
          "{m} {small} is how many {bigs}?", "Express {m} {small} in {bigs}.",
          "What is {m} {small} in {bigs}?")


def _conversion(to_small: bool) -> Generator:
    """Unit conversion, either to the smaller unit (multiply) or to the larger one (divide)."""
    def generate(rng: random.Random) -> Problem:
        big, bigs, small, factor, bad_factor = rng.choice(UNITS)
        n = rng.randint(2, 15)
        m = n * factor
        prompt = fill(rng, TO_SMALL if to_small else TO_BIG, n=n, m=m, bigs=bigs, small=small)
        fact = f"1 {big} is {factor} {small}"
        if to_small:
            right = solved(f"{fact}, and {n} * {factor} = {m}", m)
            wrongs = [solved(f"1 {big} is {bad_factor} {small}, and {n} * {bad_factor} = {n * bad_factor}",
                             n * bad_factor), solved(f"{fact}, and {n} * {factor} = {m + factor}", m + factor)]
        else:
            right = solved(f"{fact}, and {m} / {factor} = {n}", n)
            wrongs = [solved(f"{fact}, and {m} / {factor} = {n + 1}", n + 1),
                      solved(f"{fact}, and {m} / {factor} = {n - 1}", n - 1)]
        return Problem(prompt, right, rng.choice(wrongs))
    return generate


SORT_ASC = ("Sort these numbers from smallest to largest: {nums}.",
            "Put the following numbers in ascending order: {nums}",
            "Arrange {nums} in increasing order.", "Order from least to greatest: {nums}")
SORT_DESC = ("Sort these numbers from largest to smallest: {nums}.",
             "Put the following numbers in descending order: {nums}",
             "Arrange {nums} in decreasing order.", "Order from greatest to least: {nums}")


def _sort(rng: random.Random) -> Problem:
    nums = rng.sample(range(1, 100), rng.randint(4, 6))
    desc = rng.random() < 0.5
    order = sorted(nums, reverse=desc)
    prompt = fill(rng, SORT_DESC if desc else SORT_ASC, nums=", ".join(map(str, nums)))
    ends = (f"The largest number is {order[0]} and the smallest is {order[-1]}" if desc
            else f"The smallest number is {order[0]} and the largest is {order[-1]}")
    i = rng.randrange(1, len(order) - 2)  # an interior slip, so the stated ends still hold
    slipped = order[:i] + [order[i + 1], order[i]] + order[i + 2:]
    return Problem(prompt, solved(ends, ", ".join(map(str, order))), solved(ends, ", ".join(map(str, slipped))))


PAIR = {"larger": ("Which number is larger, {a} or {b}?", "Which is bigger: {a} or {b}?",
                   "Of {a} and {b}, which is greater?"),
        "smaller": ("Which number is smaller, {a} or {b}?", "Which is less: {a} or {b}?",
                    "Of {a} and {b}, which is smaller?")}
LIST = {"larger": ("What is the largest number in this list: {nums}?", "Find the biggest number among {nums}."),
        "smaller": ("What is the smallest number in this list: {nums}?", "Find the smallest number among {nums}.")}


def _rival(rng: random.Random, a: int) -> int:
    """A second number for a pair; often a's digits swapped, the classic trap (47 vs 74)."""
    swapped = int(str(a)[::-1])
    if swapped != a and a % 10 and rng.random() < 0.5:
        return swapped
    return rng.choice([x for x in range(10, 100) if x != a])


def _compare(rng: random.Random) -> Problem:
    which = rng.choice(("larger", "smaller"))
    if rng.random() < 0.6:
        a = rng.randint(12, 98)
        b = _rival(rng, a)
        prompt = fill(rng, PAIR[which], a=a, b=b)
        pick, other = (max(a, b), min(a, b)) if which == "larger" else (min(a, b), max(a, b))
        verb = "greater" if which == "larger" else "less"
        return Problem(prompt, solved(f"{pick} is {verb} than {other}", pick),
                       solved(f"{other} is {verb} than {pick}", other))
    nums = rng.sample(range(1, 100), rng.randint(4, 6))
    order = sorted(nums, reverse=which == "larger")
    word = "largest" if which == "larger" else "smallest"
    prompt = fill(rng, LIST[which], nums=", ".join(map(str, nums)))
    return Problem(prompt, solved(f"Comparing all {len(nums)} numbers, {order[0]} is the {word}", order[0]),
                   solved(f"Comparing all {len(nums)} numbers, {order[1]} is the {word}", order[1]))


FAMILIES = (
    Family("arithmetic", "ints", (("addition_subtraction", _arithmetic(("+", "-"))),
                                  ("multiplication_division", _arithmetic(("*", "/"))))),
    Family("unit_conversion", "ints", (("to_smaller_unit", _conversion(True)),
                                       ("to_larger_unit", _conversion(False)))),
    Family("sorting", "ints", (("sort", _sort), ("compare", _compare))),
)
