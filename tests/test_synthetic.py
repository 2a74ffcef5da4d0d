"""The synthetic demo data: deterministic, well formed, verifiable, with disjoint splits."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from curation.errors import CurationError
from curation.synthetic import (
    FAMILIES,
    TARGET_FAMILY,
    check_answer,
    extract_answer,
    make_heldout,
    make_pool,
    make_prefs,
    split_of,
    subtasks,
    to_jsonl,
)
from curation.synthetic.build import get_family

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
DEMO_FILES = ("demo_pool.jsonl", "demo_prefs.jsonl", "demo_heldout.jsonl")
ALL_NOISE = {name: 0.25 for name in FAMILIES}


def _load_make_demo():
    spec = importlib.util.spec_from_file_location("make_demo", DATA / "make_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _user(record: dict) -> str:
    return next(m["content"] for m in record["messages"] if m["role"] == "user")


def _reply(record: dict) -> str:
    return record["messages"][-1]["content"]


@pytest.fixture(scope="module")
def noisy_pool() -> list[dict]:
    return make_pool(2000, seed=7, noise=ALL_NOISE)


def test_same_arguments_give_same_records():
    noise = {"arithmetic": 0.2}
    assert to_jsonl(make_pool(300, 3, noise=noise)) == to_jsonl(make_pool(300, 3, noise=noise))
    assert make_prefs(TARGET_FAMILY, 3, 1) == make_prefs(TARGET_FAMILY, 3, 1)
    assert make_heldout("dates", 20, 2) == make_heldout("dates", 20, 2)
    assert make_pool(300, 3) != make_pool(300, 4)


def test_committed_demo_files_match_the_generator(tmp_path):
    _load_make_demo().write_demo(tmp_path)
    for name in DEMO_FILES:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"{name}: rerun data/make_demo.py"


def test_output_ignores_hash_randomisation(tmp_path):
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        subprocess.run([sys.executable, str(DATA / "make_demo.py"), "--out", str(out)], check=True,
                       env={"PYTHONHASHSEED": hash_seed, "PATH": ""}, capture_output=True)
    assert all((tmp_path / "1" / n).read_bytes() == (tmp_path / "2" / n).read_bytes() for n in DEMO_FILES)


def test_demo_pool_shape_and_size():
    pool = _read(DATA / "demo_pool.jsonl")
    assert len(pool) == 3000 and {r["dataset"] for r in pool} == set(FAMILIES)
    assert len({r["id"] for r in pool}) == len(pool)
    assert sum((DATA / n).stat().st_size for n in DEMO_FILES) < 2_000_000
    noisy = [r for r in pool if r["noisy"]]
    assert noisy and {r["dataset"] for r in noisy} == {TARGET_FAMILY}


def test_records_are_well_formed_and_short(noisy_pool):
    for r in noisy_pool:
        assert set(r) == {"dataset", "id", "messages", "answer", "noisy"}
        assert r["id"].startswith(r["dataset"] + "_")
        roles = [m["role"] for m in r["messages"]]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"])
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in r["messages"])
        assert len(_user(r).split()) < 60 and len(_reply(r).split()) < 40
    assert len({json.dumps(r["messages"]) for r in noisy_pool}) == len(noisy_pool)  # importers dedupe


def test_every_family_has_several_phrasings_and_some_system_prompts(noisy_pool):
    for name in FAMILIES:
        records = [r for r in noisy_pool if r["dataset"] == name]
        openings = {" ".join(_user(r).split()[:2]) for r in records}
        assert len(openings) >= 3, name
    assert 0.1 < sum(r["messages"][0]["role"] == "system" for r in noisy_pool) / len(noisy_pool) < 0.3


def test_check_answer_accepts_clean_and_rejects_noisy(noisy_pool):
    for name in FAMILIES:
        records = [r for r in noisy_pool if r["dataset"] == name]
        assert any(r["noisy"] for r in records) and not all(r["noisy"] for r in records)
        for r in records:
            assert check_answer(name, r, _reply(r)) is not r["noisy"], (name, r)


def test_noise_rate_matches_request(noisy_pool):
    for name in FAMILIES:
        records = [r for r in noisy_pool if r["dataset"] == name]
        assert abs(sum(r["noisy"] for r in records) / len(records) - ALL_NOISE[name]) < 0.01
    assert not any(r["noisy"] for r in make_pool(500, 1))


def test_noisy_examples_look_like_clean_ones(noisy_pool):
    for r in noisy_pool:
        if r["noisy"] and r["dataset"] != "explain":
            assert "so the answer is" in _reply(r) and extract_answer(_reply(r)) != r["answer"]


def test_prefs_chosen_right_rejected_wrong():
    prefs = make_prefs(TARGET_FAMILY, 5, 1)
    assert [p["subtask"] for p in prefs] == [s for s in subtasks(TARGET_FAMILY) for _ in range(5)]
    for p in prefs:
        assert p["chosen"] != p["rejected"]
        assert check_answer(TARGET_FAMILY, p, p["chosen"]) and not check_answer(TARGET_FAMILY, p, p["rejected"])


def test_demo_splits_are_disjoint():
    pool = {_user(r) for r in _read(DATA / "demo_pool.jsonl")}
    prefs = [p["prompt"] for p in _read(DATA / "demo_prefs.jsonl")]
    heldout = [h["prompt"] for h in _read(DATA / "demo_heldout.jsonl")]
    assert len(heldout) == 100 and len(set(heldout)) == 100 and len(set(prefs)) == len(prefs) == 10
    assert not pool & set(heldout) and not pool & set(prefs) and not set(prefs) & set(heldout)


@pytest.mark.parametrize("seed", [0, 5])
def test_splits_are_disjoint_for_any_seed(seed):
    pool = {_user(r) for r in make_pool(600, seed, families=[TARGET_FAMILY])}
    assert not pool & {h["prompt"] for h in make_heldout(TARGET_FAMILY, 50, seed)}
    assert not pool & {p["prompt"] for p in make_prefs(TARGET_FAMILY, 5, seed)}
    assert all(split_of(h["prompt"]) == "heldout" for h in make_heldout("capitals", 10, seed))


def test_heldout_answers_verify():
    for h in make_heldout(TARGET_FAMILY, 30, 2):
        assert set(h) == {"prompt", "answer", "dataset"} and h["dataset"] == TARGET_FAMILY
        assert check_answer(TARGET_FAMILY, h, f"Some working, so the answer is {h['answer']}.")
        assert not check_answer(TARGET_FAMILY, h, f"Some working, so the answer is {int(h['answer']) + 1}.")


@pytest.mark.parametrize("response, expected", [
    ("23 + 19 = 42, so the answer is 42.", "42"),
    ("so the answer is 5, 8, 12. The answer is 7.", "5, 8, 12"),
    ("The answer is April 4.\nMore text", "April 4"),
    ("So the answer is 'Paris'", "Paris"),
    ("A noun is a word.", "A noun is a word"),
    ("", ""),
])
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_check_answer_modes():
    assert check_answer("arithmetic", {"answer": "42"}, "so the answer is 42 apples.")
    assert not check_answer("arithmetic", {"answer": "42"}, "42, but the answer is 41.")
    assert not check_answer("arithmetic", {"answer": "42"}, "I do not know.")
    assert not check_answer("word_edit", {"answer": "GARDEN"}, "so the answer is garden.")


def test_errors_are_user_facing():
    with pytest.raises(CurationError, match="unknown task family"):
        make_pool(10, 0, families=["poetry"])
    with pytest.raises(CurationError, match="not among"):
        make_pool(10, 0, families=["sorting"], noise={"arithmetic": 0.1})
    with pytest.raises(CurationError, match="between 0 and 1"):
        make_pool(10, 0, noise={"arithmetic": 1.5})
    with pytest.raises(CurationError, match="no 'answer'"):
        check_answer("arithmetic", {"prompt": "x"}, "so the answer is 1.")
    with pytest.raises(CurationError, match="ran out"):
        make_heldout("explain", 500, 0)


def test_family_weights_shape_the_pool():
    counts = {name: 0 for name in FAMILIES}
    for r in make_pool(940, 0):
        counts[r["dataset"]] += 1
    assert sum(counts.values()) == 940 and counts["explain"] < counts["arithmetic"]
    assert all(get_family(n).weight > 0 for n in FAMILIES)
