"""The data of `bench quality`: a pool with known task labels, preference pairs and held-out
prompts per target (see `curation.bench.quality` for the metrics).

* ``synthetic`` (offline, deterministic): `curation.synthetic` families; one target family whose
  pool examples carry planted wrong answers at a known rate (``"noisy": true``), few-shot pairs
  for it (chosen = the correct worked answer, rejected = a plausible wrong one) and held-out
  prompts with answers. Pool, pairs and held-out prompts never share a prompt (split by CRC32).
* ``t0`` (when the shared T0/P3 pool is on disk): target datasets with label-like answers; per
  target a few pairs from held-in records (chosen = the gold completion, rejected = another
  label of the same template, or another record's completion when the template has no small
  label set) and held-out records; the pool is a seeded sample of every other record.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from curation.errors import CurationError
from curation.methods.rewards import normalise_text
from curation.synthetic import check_answer, make_heldout, make_pool, make_prefs

REPO = Path(__file__).resolve().parents[2]
# The shared data lies next to the checkout (../shared/data); CURATION_T0_POOL overrides it.
T0_ROOT = Path(os.environ.get("CURATION_T0_POOL") or REPO.parent / "shared" / "data" / "t0_pool")
EOT = "<|endoftext|>"


@dataclass
class Target:
    """One selection problem: pool examples with ``dataset == name`` are the target's."""

    name: str
    prefs: list[dict]  # trl records with a "subtask" field
    heldout: list[dict]  # {"prompt", "answer"}: downstream exact match
    check: Callable[[dict, str], bool]  # (held-out record, response) -> correct?
    nice_reward: str  # the NICE reward spec that fits the target's answers


@dataclass
class Suite:
    """A pool (tulu records with "id", "dataset", "messages", optional "noisy") and its targets."""

    name: str
    pool: list[dict]
    targets: list[Target]
    has_noise: bool  # whether "noisy" labels exist (the noise-rate metric)
    max_length: int | None = None  # scoring tokens per example, when the suite needs its own
    sizes: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- synthetic


@dataclass
class SyntheticSpec:
    """Sizes of the synthetic suite.

    The target is ``unit_conversion``, not the demo's ``arithmetic``: the tiny model cannot learn
    two-digit arithmetic (measured: 60 held-out prompts, base 6.7% exact match, 0.0% after LoRA on
    150 clean arithmetic examples), so downstream accuracy would be at the floor for every
    selection. On unit conversion the same fine-tune moves it from 1.7% (base) to 25% (clean
    examples) and 10% (all wrong), so both target precision and planted noise show downstream.
    The choice was made on that measurement, before any selection method was run.
    """

    pool_size: int = 3000
    target: str = "unit_conversion"  # ~10.6% of the pool (9 families of weight 1, one of 0.4)
    noise: float = 0.35  # share of the target's pool examples answered wrongly
    shots: int = 5  # pairs per subtask (2 subtasks -> 10 pairs)
    heldout: int = 100
    seed: int = 11  # pool seed (the demo pool, which the tiny model was pretrained on, is seed 0)


def build_synthetic(spec: SyntheticSpec) -> Suite:
    """The synthetic suite: every record keeps its family in "dataset" and its "noisy" flag."""
    pool = make_pool(spec.pool_size, spec.seed, noise={spec.target: spec.noise})
    prefs = make_prefs(spec.target, spec.shots, spec.seed + 1)
    heldout = make_heldout(spec.target, spec.heldout, spec.seed + 2)
    target = Target(spec.target, prefs, heldout, partial(check_answer, spec.target), nice_reward="number")
    n_target = sum(r["dataset"] == spec.target for r in pool)
    n_noisy = sum(r["noisy"] for r in pool)
    sizes = {"pool": len(pool), "target": spec.target, "target_examples": n_target,
             "target_noisy": n_noisy, "prefs": len(prefs), "heldout": len(heldout)}
    return Suite("synthetic", pool, [target], has_noise=True, sizes=sizes)


# ---------------------------------------------------------------- t0


@dataclass
class T0Spec:
    """Sizes of the t0 suite; ``root`` defaults to `T0_ROOT` (read when the suite is built)."""

    # label-like answers (2-5 labels per template) so exact match is meaningful; rotten_tomatoes and
    # imdb are not: the shared files hold one class only (their first 200 records)
    targets: tuple[str, ...] = ("ag_news", "paws_labeled_final", "yelp_review_full")
    pool_size: int = 2000
    shots: int = 5  # pairs per target (one subtask per target)
    heldout: int = 50  # held-out records per target (only used when t0 downstream is on)
    max_labels: int = 10  # a template is label-like when it has at most this many distinct answers
    seed: int = 0
    # T0 prompts are long for the tiny model's tokenizer (median 192 tokens, 28% over 512): 256
    # keeps the question and the end of the passage (`model.encode` truncation) at half the cost
    max_length: int = 256
    root: str | None = None


def t0_root(spec: T0Spec) -> Path:
    return Path(spec.root) if spec.root else T0_ROOT


def t0_available(spec: T0Spec) -> bool:
    root = t0_root(spec)
    return (root / "index.tsv").is_file() and (root / "data_per_template").is_dir()


def read_t0(root: Path) -> dict[str, list[dict]]:
    """template -> records (``id``, ``dataset``, ``template``, ``prompt``, ``completion``)."""
    with open(root / "index.tsv", encoding="utf-8") as fh:
        index = [(row["task_template"], row["dataset_derived"]) for row in csv.DictReader(fh, delimiter="\t")]
    by_template = {}
    for template, dataset in index:
        records = []
        with open(root / "data_per_template" / f"{template}.jsonl", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                raw = json.loads(line)
                prompt = raw["prompt"].strip()
                completion = raw["completion"].removesuffix(EOT).strip()
                if prompt and completion:
                    records.append({"id": f"{template}/{i}", "dataset": dataset, "template": template,
                                    "prompt": prompt, "completion": completion})
        by_template[template] = records
    return by_template


def _pool_record(r: dict) -> dict:
    return {"id": r["id"], "dataset": r["dataset"], "template": r["template"],
            "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}


def _rejected(r: dict, own: dict[str, list[dict]], labels: dict[str, list[str]], rng: random.Random) -> str:
    """Another label of the record's template; else another completion of its dataset (a template
    can hold one label only: the shared files keep the first 200 records, often one class)."""
    others = [v for v in labels[r["template"]] if v != r["completion"]]
    if not others:
        others = sorted({o["completion"] for recs in own.values() for o in recs} - {r["completion"]})
    if not others:
        raise CurationError(f"t0: dataset {r['dataset']!r} has a single answer; no rejected response to pair")
    return rng.choice(others)


def _t0_target(name: str, templates: dict[str, list[dict]], spec: T0Spec,
               rng: random.Random) -> tuple[Target, set[str]]:
    """Pairs and held-out records of one target dataset, and the ids they hold back from the pool."""
    own = {t: recs for t, recs in templates.items() if recs and recs[0]["dataset"] == name}
    if not own:
        raise CurationError(f"t0: no dataset named {name!r} in {t0_root(spec)}")
    labels = {t: sorted({r["completion"] for r in recs}) for t, recs in own.items()}
    label_like = sorted(t for t, values in labels.items() if 2 <= len(values) <= spec.max_labels)
    source = label_like or sorted(own)  # exact match needs label-like answers; else any template
    candidates = [r for t in source for r in own[t]]
    rng.shuffle(candidates)
    picked, held = candidates[: spec.shots], candidates[spec.shots: spec.shots + spec.heldout]
    prefs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": _rejected(r, own, labels, rng),
              "subtask": name, "answer": r["completion"]} for r in picked]
    heldout = [{"prompt": r["prompt"], "answer": r["completion"], "dataset": name} for r in held]
    check = lambda record, response: normalise_text(response) == normalise_text(record["answer"])  # noqa: E731
    ids = {r["id"] for r in picked + held}
    return Target(name, prefs, heldout, check, nice_reward="exact_match"), ids


def build_t0(spec: T0Spec) -> Suite:
    """The t0 suite; raises `CurationError` when the data is absent (callers check `t0_available`)."""
    if not t0_available(spec):
        raise CurationError(f"t0 pool not found at {t0_root(spec)}")
    templates = read_t0(t0_root(spec))
    rng = random.Random(f"t0/{spec.seed}")
    targets, held_back = [], set()
    for name in spec.targets:
        target, ids = _t0_target(name, templates, spec, rng)
        targets.append(target)
        held_back |= ids
    rest = [r for t in sorted(templates) for r in templates[t] if r["id"] not in held_back]
    if len(rest) < spec.pool_size:
        raise CurationError(f"t0: only {len(rest)} records left for a pool of {spec.pool_size}")
    pool = [_pool_record(r) for r in rng.sample(rest, spec.pool_size)]
    counts = defaultdict(int)
    for r in pool:
        counts[r["dataset"]] += 1
    sizes = {"pool": len(pool), "datasets": len(counts), "records_available": len(rest) + len(held_back),
             "target_examples": {t.name: counts[t.name] for t in targets},
             "prefs_per_target": spec.shots, "heldout_per_target": spec.heldout}
    notes = ["t0 templates of one dataset share source passages, so a pair's passage can recur in the pool "
             "under another template; precision counts any template of the target dataset as on-target"]
    return Suite("t0", pool, targets, has_noise=False, max_length=spec.max_length, sizes=sizes, notes=notes)


# ---------------------------------------------------------------- prefs (ROSE's own sets)

ROSE_ROOT = Path(os.environ.get("CURATION_ROSE_PREFS") or REPO.parent / "shared" / "data" / "rose_preferences")
SE_SITES = ("academia", "apple", "askubuntu", "english", "gaming", "physics", "security", "sharepoint",
            "softwareengineering", "workplace")  # the order of the sites' groups in ROSE's SE files


@dataclass
class PrefsSpec:
    """The prefs suite: ROSE's StackExchange few-shot sets, where chosen and rejected answers of
    one question differ in quality (votes), not in label.

    Target: one site. Pairs: its ``shots``-shot pairs (chosen = ``sft_target``, rejected =
    ``rejected_target``). Held-out pairs: the site's 10-shot prompts that are not among those.
    Pool: ``t0_size`` T0 records plus ``per_site`` test questions with their golden answer from
    every site (the target's among them), so precision measures finding the target site.
    """

    target: str = "academia"
    shots: int = 5
    per_site: int = 40
    t0_size: int = 1600
    max_length: int = 256
    seed: int = 0
    root: str | None = None


def prefs_root(spec: PrefsSpec) -> Path:
    return Path(spec.root) if spec.root else ROSE_ROOT


def prefs_available(spec: PrefsSpec, t0: "T0Spec") -> bool:
    return (prefs_root(spec) / "validation" / "se").is_dir() and t0_available(t0)


def _human_prompt(text: str) -> str:
    """ROSE's ``\\n\\nHuman: ...\\n\\nAssistant:`` prompt as the user's turn."""
    return text.strip().removeprefix("Human:").removesuffix("Assistant:").strip()


def _site_pairs(root: Path, shots: int, site: str) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) of one site's group in the ``shots``-shot SE file."""
    data = json.loads((root / "validation" / "se" / f"se_{shots}_shot" / f"se_{shots}_shot_preference.json")
                      .read_text(encoding="utf-8"))
    items = list(data.items())
    if len(items) != shots * len(SE_SITES):
        raise CurationError(f"prefs: {len(items)} prompts in the {shots}-shot SE file, expected {shots} x 10 sites")
    lo = SE_SITES.index(site) * shots
    return [(_human_prompt(p), v["sft_target"].strip(), v["rejected_target"].strip()) for p, v in items[lo:lo + shots]]


def build_prefs(spec: PrefsSpec, t0: "T0Spec") -> Suite:
    """The prefs suite (see `PrefsSpec`); raises `CurationError` when the shared data is absent."""
    if spec.target not in SE_SITES:
        raise CurationError(f"prefs: unknown site {spec.target!r}; known: {', '.join(SE_SITES)}")
    root, rng = prefs_root(spec), random.Random(f"prefs/{spec.seed}")
    pairs = _site_pairs(root, spec.shots, spec.target)
    seen = {p for p, _, _ in pairs}
    held = [x for x in _site_pairs(root, 10, spec.target) if x[0] not in seen]
    seen |= {p for p, _, _ in held}  # neither scoring nor held-out prompts may enter the pool
    prefs = [{"prompt": p, "chosen": c, "rejected": r, "subtask": spec.target} for p, c, r in pairs]
    heldout = [{"prompt": p, "chosen": c, "rejected": r, "subtask": spec.target} for p, c, r in held]
    pool = []
    for site in SE_SITES:
        records = json.loads((root / "test" / "se" / f"se_{site}.json").read_text(encoding="utf-8"))
        for i in rng.sample(range(len(records)), min(spec.per_site, len(records))):
            prompt = _human_prompt(records[i]["prompt"])
            if prompt not in seen:
                pool.append({"id": f"se_{site}/{i}", "dataset": site, "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": records[i]["golden_answer"].strip()}]})
    templates = read_t0(t0_root(t0))
    rest = [r for t in sorted(templates) for r in templates[t]]
    pool += [_pool_record(r) for r in rng.sample(rest, spec.t0_size)]
    rng.shuffle(pool)
    sizes = {"pool": len(pool), "target_examples": sum(r["dataset"] == spec.target for r in pool),
             "prefs": len(prefs), "heldout_pairs": len(heldout), "sites": len(SE_SITES)}
    notes = ["prefs: held-out metric = preference accuracy of the site's unseen 10-shot pairs after a LoRA "
             "fine-tune on the selection (DPO implicit reward vs the base model, `curation.methods.heldout`)"]
    target = Target(spec.target, prefs, heldout, check=None, nice_reward="exact_match")  # type: ignore[arg-type]
    return Suite("prefs", pool, [target], has_noise=False, max_length=spec.max_length, sizes=sizes, notes=notes)
