"""Assemble families into a pool, a preference set and a held-out set, deterministically.

Disjointness does not depend on seeds: every prompt belongs to exactly one split, decided by a
CRC32 of its text (stable across runs and machines, unlike `hash()`), and each builder only
keeps prompts of its own split. So no seed choice can leak a held-out prompt into the pool.
"""

from __future__ import annotations

import json
import random
import zlib
from typing import Mapping, Sequence

from curation.errors import CurationError
from curation.synthetic import knowledge, numeric, textual
from curation.synthetic.base import Family, Problem, answers_match, extract_answer

_ALL: tuple[Family, ...] = numeric.FAMILIES + textual.FAMILIES + knowledge.FAMILIES
_BY_NAME = {f.name: f for f in _ALL}
FAMILIES: tuple[str, ...] = tuple(f.name for f in _ALL)
TARGET_FAMILY = "arithmetic"

SYSTEM_PROMPTS = ("You are a helpful assistant.",
                  "You are a concise assistant. Show brief working, then the answer.",
                  "You are a friendly tutor who explains answers step by step.",
                  "Answer accurately and keep your reply short.",
                  "You are a careful assistant that double checks its work.")
SYSTEM_SHARE = 0.2  # share of pool examples that carry a system prompt, as in mixed real data

_BUCKETS = 20
_SPLIT_BUCKETS = {"heldout": range(0, 2), "prefs": range(2, 3), "pool": range(3, _BUCKETS)}
_MAX_TRIES = 20_000


def get_family(name: str) -> Family:
    """The family of that name, or a `CurationError` that lists the known ones."""
    if name not in _BY_NAME:
        raise CurationError(f"unknown task family '{name}'; known: {', '.join(FAMILIES)}")
    return _BY_NAME[name]


def subtasks(name: str) -> tuple[str, ...]:
    """The subtask names of a family, in the order prefs and held-out sets cycle through them."""
    return get_family(name).subtask_names


def split_of(prompt: str) -> str:
    """Which split ('pool', 'prefs' or 'heldout') a prompt text belongs to."""
    bucket = zlib.crc32(prompt.encode("utf-8")) % _BUCKETS
    return next(split for split, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def _draw(fam: Family, choices: Sequence[str], rng: random.Random, split: str,
          seen: set[str]) -> tuple[str, Problem]:
    """A fresh problem of the split from one of the subtasks, unseen, whose wrong answer is wrong."""
    for _ in range(_MAX_TRIES):
        sub = rng.choice(choices)
        problem = fam.generator(sub)(rng)
        key = problem.split_key
        if (key not in seen and split_of(key) == split
                and not answers_match(fam.mode, problem.wrong.answer, problem.right.answer)):
            seen.add(key)
            return sub, problem
    raise CurationError(f"family '{fam.name}' ran out of distinct {split} prompts for {list(choices)}; "
                        "ask for fewer examples")


def _counts(n: int, weights: Sequence[float]) -> list[int]:
    """n split by weight, largest remainder first (ties to the earlier family), summing to n."""
    raw = [n * w / sum(weights) for w in weights]
    counts = [int(x) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in by_remainder[:n - sum(counts)]:
        counts[i] += 1
    return counts


def _resolve(families: Sequence[str] | None, noise: Mapping[str, float]) -> list[Family]:
    fams = [get_family(name) for name in (FAMILIES if families is None else families)]
    names = [f.name for f in fams]
    for name, share in noise.items():
        if name not in names:
            raise CurationError(f"noise given for '{name}', which is not among the pool families {names}")
        if not 0.0 <= share <= 1.0:
            raise CurationError(f"noise for '{name}' must be a share between 0 and 1, not {share}")
    return fams


def _pool_records(fam: Family, count: int, seed: int, share: float) -> list[dict]:
    """count examples of one family; a `share` of them, chosen at random, answered wrongly."""
    rng = random.Random(f"{seed}/pool/{fam.name}")  # str seeds hash with SHA-512: run-independent
    noisy = set(rng.sample(range(count), round(share * count)))
    seen: set[str] = set()
    records = []
    for i in range(count):
        _, problem = _draw(fam, fam.subtask_names, rng, "pool", seen)
        attempt = problem.wrong if i in noisy else problem.right
        system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < SYSTEM_SHARE else []
        messages = system + [{"role": "user", "content": problem.prompt},
                             {"role": "assistant", "content": attempt.response}]
        records.append({"dataset": fam.name, "id": f"{fam.name}_{i}", "messages": messages,
                        "answer": problem.right.answer, "noisy": i in noisy})
    return records


def make_pool(n: int, seed: int, families: Sequence[str] | None = None,
              noise: Mapping[str, float] | None = None) -> list[dict]:
    """A shuffled pool of n tulu-style examples over the families (all by default), split by family
    weight. noise[family] is the share of that family answered wrongly, marked `"noisy": true`;
    every record keeps the correct `"answer"` so quality benchmarks can score selections."""
    noise = dict(noise or {})
    fams = _resolve(families, noise)
    records = []
    for fam, count in zip(fams, _counts(n, [f.weight for f in fams])):
        records += _pool_records(fam, count, seed, noise.get(fam.name, 0.0))
    random.Random(f"{seed}/order").shuffle(records)
    return records


def make_prefs(family: str, shots: int, seed: int) -> list[dict]:
    """`shots` preference pairs per subtask of a family, TRL style: the correct worked answer is
    chosen, a plausible wrong one in the same style is rejected. Prompts never occur in any pool."""
    fam = get_family(family)
    rng = random.Random(f"{seed}/prefs/{fam.name}")
    seen: set[str] = set()
    records = []
    for sub in fam.subtask_names:
        for _ in range(shots):
            _, p = _draw(fam, (sub,), rng, "prefs", seen)
            records.append({"prompt": p.prompt, "chosen": p.right.response, "rejected": p.wrong.response,
                            "subtask": sub, "answer": p.right.answer})
    return records


def make_heldout(family: str, n: int, seed: int) -> list[dict]:
    """n held-out prompts with answers, cycling through the subtasks, for exact-match benchmarks.
    Prompts never occur in any pool or preference set."""
    fam = get_family(family)
    rng = random.Random(f"{seed}/heldout/{fam.name}")
    seen: set[str] = set()
    records = []
    for i in range(n):
        _, p = _draw(fam, (fam.subtask_names[i % len(fam.subtasks)],), rng, "heldout", seen)
        records.append({"prompt": p.prompt, "answer": p.right.answer, "dataset": fam.name})
    return records


def check_answer(family: str, prompt_record: Mapping, response: str) -> bool:
    """Whether a response's final answer exactly matches the record's gold `answer` (a pool,
    prefs or held-out record), compared as integers or as text depending on the family."""
    if "answer" not in prompt_record:
        raise CurationError("record has no 'answer' field to check against")
    return answers_match(get_family(family).mode, extract_answer(response), str(prompt_record["answer"]))


def to_jsonl(records: Sequence[Mapping]) -> str:
    """Records as JSON Lines text, keys in insertion order, so equal records give equal bytes."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
