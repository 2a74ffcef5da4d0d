"""Preference readers: trl/hh/rose formats, subtask rules, bad pairs, ROSE's real files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from curation.data.io import PREF_FORMATS, detect_pref_format, read_pref_file, read_prefs
from curation.data.io.prefs import ROSE_SUBTASKS, parse_transcript
from curation.errors import CurationError, InputError

FIXTURES = Path(__file__).parent / "fixtures" / "io"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def rose_entry(chosen: str, rejected: str, **extra) -> dict:
    return {"responses": [f" {chosen}", f" {rejected}"], "pairs": [[0, 1]],
            "sft_target": f" {chosen}", "rejected_target": f" {rejected}", **extra}


def write_rose(path: Path, n: int) -> Path:
    path.write_text(json.dumps({f"\n\nHuman: question {i}?\n\nAssistant:": rose_entry(f"good {i}", f"bad {i}")
                                for i in range(n)}))
    return path


def triples(records) -> list[tuple[str, str, str]]:
    return [(r.prompt, r.chosen, r.rejected) for r in records]


# --- formats ---------------------------------------------------------------------------------

def test_trl_strings_messages_and_implicit_prompt():
    records, problems = read_pref_file(FIXTURES / "prefs_trl.jsonl")
    assert problems == []
    assert triples(records) == [
        ("What colour is the sky on a clear day?", "Blue.", "Green."),
        ("System: Answer briefly.\n\nUser: Is water wet?", "Yes, in everyday usage.", "No."),
        ("Say hi", "Hi!", "No."),
    ]
    assert records[1].prompt_messages == [{"role": "system", "content": "Answer briefly."},
                                          {"role": "user", "content": "Is water wet?"}]
    assert [r.subtask for r in records] == ["weather", "physics", "chat"]  # the "subtask" field
    assert [r.line for r in records] == [1, 2, 3]
    assert records[0].original["chosen"] == "Blue."


def test_trl_string_prompt_in_hh_form_is_parsed(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Joke?\n\nAssistant:",
                                               "chosen": " Knock knock.", "rejected": " No."}])
    (rec,), _ = read_pref_file(path)
    assert [m["role"] for m in rec.prompt_messages] == ["user", "assistant", "user"]
    assert rec.prompt == "User: Hi\n\nAssistant: Hey\n\nUser: Joke?"
    assert rec.chosen == "Knock knock."


def test_hh_splits_at_last_shared_assistant_marker():
    records, problems = read_pref_file(FIXTURES / "prefs_hh.jsonl")
    assert problems == []
    assert triples(records)[0] == ("How do I boil an egg?", "Put it in boiling water for nine minutes.", "Eggs are laid by hens.")
    multi = records[1]
    assert multi.prompt_messages == [{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello, how can I help?"},
                                     {"role": "user", "content": "Recommend a book."}]
    assert (multi.chosen, multi.rejected) == ("Try 'The Hobbit'.", "No.")
    assert {r.subtask for r in records} == {"prefs_hh"}  # no subtask field: the file stem


def test_hh_responses_sharing_a_prefix(tmp_path):
    """The shared prefix runs into the responses; the prompt still ends at the marker."""
    path = write_jsonl(tmp_path / "h.jsonl", [{"chosen": "\n\nHuman: Q\n\nAssistant: Yes, sure.",
                                               "rejected": "\n\nHuman: Q\n\nAssistant: Yes, no."}])
    (rec,), _ = read_pref_file(path)
    assert (rec.prompt, rec.chosen, rec.rejected) == ("Q", "Yes, sure.", "Yes, no.")


def test_rose_object_uses_targets_and_parses_prompts():
    records, problems = read_pref_file(FIXTURES / "prefs_rose.json")
    assert problems == []
    assert triples(records)[0] == ("How should I water a cactus?", "Rarely, and only when the soil is dry.", "Every day.")
    second = records[1]
    assert [m["role"] for m in second.prompt_messages] == ["user", "assistant", "user"]
    assert second.prompt_messages[-1]["content"] == "A pun about cheese."
    assert second.prompt == "User: Hello\n\nAssistant: Hi, what do you need?\n\nUser: A pun about cheese."
    assert [r.line for r in records] == [1, 2]
    key = "\n\nHuman: How should I water a cactus?\n\nAssistant:"
    assert list(records[0].original) == [key] and records[0].original[key]["pairs"][0] == [0, 1]
    assert {r.subtask for r in records} == {"prefs_rose"}  # unknown prefix: the stem


def test_rose_without_targets_uses_first_pair(tmp_path):
    path = tmp_path / "dpo.json"
    path.write_text(json.dumps({"\n\nHuman: Q\n\nAssistant:": {"responses": [" worse", " better"], "pairs": [[1, 0]]}}))
    (rec,), _ = read_pref_file(path)
    assert (rec.chosen, rec.rejected) == ("better", "worse")


def test_parse_transcript():
    assert parse_transcript("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": ""}]
    assert parse_transcript("Human: hi") == [{"role": "user", "content": "hi"}]
    assert parse_transcript("plain question") == [{"role": "user", "content": "plain question"}]


@pytest.mark.parametrize("path, record, fmt", [
    ("p.jsonl", {"prompt": "p", "chosen": "c", "rejected": "r"}, "trl"),
    ("p.jsonl", {"chosen": [{"role": "user", "content": "q"}], "rejected": []}, "trl"),
    ("p.jsonl", {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "hh"),
    ("p.jsonl", {"chosen": "just text", "rejected": "other"}, None),
    ("p.json", rose_entry("a", "b"), "rose"),
    ("p.json", {"\n\nHuman: q\n\nAssistant:": rose_entry("a", "b")}, "rose"),  # the whole ROSE object
    ("p.jsonl", rose_entry("a", "b"), None),                   # a ROSE entry needs its prompt key
    ("p.jsonl", rose_entry("a", "b", prompt="q"), "rose"),
    ("p.jsonl", {"text": "x"}, None),
    ("p.jsonl", [1, 2], None),
    ("p.json", {"instruction": "q", "input": "", "chosen": "a", "rejected": "b"}, "alpaca"),
    ("p.json", {"conversations": [], "chosen": {"from": "gpt", "value": "a"}, "rejected": {}}, "sharegpt"),
    ("p.json", {"messages": [], "chosen": {"role": "assistant", "content": "a"}, "rejected": {}}, "sharegpt"),
    ("p.jsonl", {"chosen_messages": [], "rejected_messages": []}, "chosen_messages"),
    ("p.json", {"instruction": "q", "output_1": "a", "output_2": "b", "preference": 2}, "pairwise"),
    # UltraFeedback-style: messages beside conversational chosen/rejected is trl, not sharegpt
    ("p.jsonl", {"prompt": "q", "messages": [], "chosen": [], "rejected": []}, "trl"),
    ("p.jsonl", {"prompt": "q", "instruction": "q", "chosen": "a", "rejected": "b"}, None),  # two fit
])
def test_detect_pref_format(path, record, fmt):
    assert detect_pref_format(path, record) == fmt


def test_fmt_override_and_unknown_fmt(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}])
    records, problems = read_pref_file(path, "trl")  # as trl the transcripts lack a prompt
    assert records == [] and [(p.field, p.reason) for p in problems] == [("prompt", "missing")]
    with pytest.raises(CurationError) as err:
        read_pref_file(path, "dpo")
    assert all(name in str(err.value) for name in PREF_FORMATS)


def test_undetectable_format_raises(tmp_path):
    with pytest.raises(InputError, match="cannot detect the preference format"):
        read_pref_file(write_jsonl(tmp_path / "p.jsonl", [{"question": "q", "answer": "a"}]))


# --- LLaMA-Factory, chosen_messages and pairwise judgements (detected, no format given) -------

def test_llamafactory_alpaca_with_system_history_and_input():
    read = read_prefs(FIXTURES / "prefs_lf_alpaca.json")
    assert read.problems == [] and read.ties == 0
    assert triples(read.records)[0] == ("Name the largest planet.", "Jupiter.", "Mars.")
    second = read.records[1]
    assert second.prompt_messages == [
        {"role": "system", "content": "You are a translator."},
        {"role": "user", "content": "Translate to French: thank you"}, {"role": "assistant", "content": "merci"},
        {"role": "user", "content": "Translate to French:\ngood morning"}]  # instruction\ninput, as LLaMA-Factory
    assert (second.chosen, second.rejected) == ("bonjour", "bonsoir")


def test_llamafactory_sharegpt_and_openai_tags():
    records, problems = read_pref_file(FIXTURES / "prefs_lf_sharegpt.json")
    assert problems == []
    first, tool, openai = records
    assert first.prompt_messages[0] == {"role": "system", "content": "Be concise."}  # the system column
    assert first.prompt_messages[-1] == {"role": "user", "content": "Give me a fruit that is yellow."}
    assert (first.chosen, first.rejected) == ("A banana.", "A cucumber.")
    # function_call is the assistant's turn, observation the user side, so the prompt ends on it
    assert [m["role"] for m in tool.prompt_messages] == ["user", "assistant", "user"]
    assert tool.chosen == "It is -3 degrees C in Oslo."
    assert openai.prompt == "System: Answer with a number.\n\nUser: How many legs does a spider have?"
    assert (openai.chosen, openai.rejected) == ("8", "6")


def test_chosen_messages_shared_prefix_is_the_prompt():
    records, problems = read_pref_file(FIXTURES / "prefs_chosen_messages.jsonl")
    assert problems == []
    assert triples(records)[0] == ("Spell 'cat' backwards.", "tac", "act")  # v1 content parts joined
    assert [m["role"] for m in records[1].prompt_messages] == ["system", "user", "assistant", "user"]
    assert (records[1].chosen, records[1].rejected) == ("Yes, 7 is prime.", "No.")


def test_pairwise_judgements_pick_the_preferred_output_and_count_ties():
    read = read_prefs(FIXTURES / "prefs_pairwise.json")
    assert read.problems == [] and read.ties == 3  # 1.5, null and 0
    assert triples(read.records) == [
        ("Add 2 and 3.", "5", "6"),
        ("Summarise in one word:\n\nThe cat sat on the mat all afternoon.", "Cat.", "Dog."),  # with input
        ("Capital of Italy?", "Rome.", "Milan."),  # a weighted annotator's 1.93: output_2
    ]
    assert [r.line for r in read.records] == [1, 2, 6]


@pytest.mark.parametrize("preference, reason", [
    (3, "expected 1 or 2 (1.5, 0 or null for a tie), got 3"),
    (True, "expected 1 or 2"),
    ("first", "expected 1 or 2"),
])
def test_bad_pairwise_preference(tmp_path, preference, reason):
    rows = [{"instruction": "q", "output_1": "a", "output_2": "b", "preference": p} for p in (1, preference)]
    read = read_prefs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert len(read.records) == 1 and read.ties == 0
    (problem,) = read.problems
    assert (problem.line, problem.field) == (2, "preference") and problem.reason.startswith(reason)


def test_import_counts_ties_in_the_report(ws):
    from curation.data import catalog
    from curation.data.imports import import_prefs
    from curation.data.store import Store
    store = Store.open(ws)
    res = import_prefs(store, FIXTURES / "prefs_pairwise.json", name="judged")
    assert (res.n_ok, res.n_bad, res.n_tie, res.level()) == (3, 0, 3, "success")
    assert "3 ties skipped" in res.summary()
    (report,) = catalog.import_reports(store)
    assert (report["ok"], report["bad"], report["ties"]) == (3, 0, 3)


def test_cli_import_prefs_reads_the_new_formats(ws, capsys):
    from curation.cli import main
    for name in ("prefs_lf_alpaca.json", "prefs_lf_sharegpt.json", "prefs_chosen_messages.jsonl"):
        assert main(["import-prefs", str(FIXTURES / name)]) == 0
    assert "'prefs_lf_sharegpt': imported; 3 ok, 0 bad" in capsys.readouterr().out


# --- detection errors: the hint to pass the format only when some format reads the file --------

def test_no_format_reads_the_file_names_the_record_and_each_near_miss(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "q", "output_1": "a", "output_2": "b"}])
    with pytest.raises(InputError) as err:
        read_pref_file(path)
    text = str(err.value)
    assert text.startswith(f"{path}:1: cannot detect the preference format")
    assert "fields ['instruction', 'output_1', 'output_2']" in text
    assert "pairwise expects instruction, output_1, output_2, preference (1 or 2) (here: field 'preference' missing)" in text
    assert "alpaca expects instruction, chosen, rejected" in text
    assert "hh expects" not in text  # shares no field with the record
    assert "pass the format" not in text


def test_ambiguous_fields_ask_for_the_format_only_when_several_read(tmp_path):
    both = write_jsonl(tmp_path / "both.jsonl", [{"prompt": "q", "instruction": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(InputError, match="fit alpaca and trl, and each of them reads the record; pass the format explicitly"):
        read_pref_file(both)
    assert triples(read_pref_file(both, "alpaca")[0]) == [("q", "a", "b")]
    # both formats fit the fields, but only alpaca reads it (trl's prompt is no string): no question asked
    one = write_jsonl(tmp_path / "one.jsonl", [{"prompt": 5, "instruction": "q", "chosen": "a", "rejected": "b"}])
    assert triples(read_pref_file(one)[0]) == [("q", "a", "b")]


# --- duplicate keys and record wording ---------------------------------------------------------

def test_duplicate_keys_are_rejected_where_they_are(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n'
                     '{"prompt": "q", "chosen": "a", "chosen": "z", "rejected": "b"}\n')
    records, (problem,) = read_pref_file(jsonl)
    assert len(records) == 1
    assert str(problem) == f"{jsonl}:2: field 'chosen': duplicate key 'chosen' (JSON would keep only its last value)"
    array = tmp_path / "p.json"
    array.write_text('[{"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},'
                     ' "rejected": {"from": "gpt", "value": "b"}},'
                     ' {"conversations": [{"from": "human", "from": "gpt", "value": "q"}],'
                     ' "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}]')
    records, (problem,) = read_pref_file(array)
    assert len(records) == 1
    assert (problem.line, problem.unit, problem.field) == (2, "record", "conversations[0].from")


def test_duplicate_prompt_keys_in_a_rose_object(tmp_path):
    path = tmp_path / "r.json"
    entry = json.dumps(rose_entry("a", "b"))
    path.write_text(f'{{"\\n\\nHuman: q\\n\\nAssistant:": {entry}, "\\n\\nHuman: p\\n\\nAssistant:": {entry}, '
                    f'"\\n\\nHuman: q\\n\\nAssistant:": {entry}}}')
    records, (problem,) = read_pref_file(path)
    assert [r.prompt for r in records] == ["p"]
    assert problem.line == 1 and problem.reason.startswith("duplicate key")


def test_json_array_problems_say_record_not_line(tmp_path):
    array = tmp_path / "p.json"
    array.write_text(json.dumps([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}]))
    _, (problem,) = read_pref_file(array)
    assert str(problem) == f"{array}: record 2: field 'rejected': missing"
    assert str(problem.to_error()).startswith(f"{array}: record 2:")
    jsonl = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}])
    _, (problem,) = read_pref_file(jsonl)
    assert str(problem) == f"{jsonl}:2: field 'rejected': missing"
    with pytest.raises(InputError, match=r"p\.json: record 1: cannot detect"):
        array.write_text(json.dumps([{"question": "q"}]))
        read_pref_file(array)


# --- subtasks --------------------------------------------------------------------------------

def test_subtask_field_and_missing_value(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b", "site": s} for i, s in enumerate(["x", "y", None])]
    records, problems = read_pref_file(write_jsonl(tmp_path / "p.jsonl", rows), subtask_field="site")
    assert [r.subtask for r in records] == ["x", "y"]
    assert [(p.line, p.field, p.reason) for p in problems] == [(3, "site", "missing subtask")]


def test_subtasks_n_contiguous_groups_named_by_stem(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b", "subtask": "ignored"} for i in range(6)]
    records, _ = read_pref_file(write_jsonl(tmp_path / "mine.jsonl", rows), subtasks=3)
    assert [r.subtask for r in records] == ["mine_01", "mine_01", "mine_02", "mine_02", "mine_03", "mine_03"]


def test_subtasks_not_dividing_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(5)])
    with pytest.raises(CurationError, match="5 records cannot be split into 2"):
        read_pref_file(path, subtasks=2)
    with pytest.raises(CurationError, match="positive integer"):
        read_pref_file(path, subtasks=0)
    with pytest.raises(CurationError, match="not both"):
        read_pref_file(path, subtask_field="site", subtasks=5)


def test_bad_pairs_keep_the_others_in_their_group(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(4)]
    rows[1]["rejected"] = "a"
    records, problems = read_pref_file(write_jsonl(tmp_path / "g.jsonl", rows), subtasks=2)
    assert [(r.line, r.subtask) for r in records] == [(1, "g_01"), (3, "g_02"), (4, "g_02")]
    assert [(p.line, p.field) for p in problems] == [(2, "rejected")]


@pytest.mark.parametrize("prefix, n", [("se", 10), ("shp", 18), ("hh", 2)])
def test_rose_subtasks_inferred_from_file_prefix(tmp_path, prefix, n):
    records, problems = read_pref_file(write_rose(tmp_path / f"{prefix}_2_shot_preference.json", 2 * n))
    assert problems == []
    assert [r.subtask for r in records] == [name for name in ROSE_SUBTASKS[prefix] for _ in range(2)]


def test_rose_prefix_with_other_group_count_uses_numbered_names(tmp_path):
    records, _ = read_pref_file(write_rose(tmp_path / "se_custom.json", 4), subtasks=2)
    assert [r.subtask for r in records] == ["se_01", "se_01", "se_02", "se_02"]
    with pytest.raises(CurationError, match="7 records cannot be split into 10"):
        read_pref_file(write_rose(tmp_path / "se_odd.json", 7))


def test_site_names_match_rose_test_files():
    folder = SHARED / "rose_preferences" / "test"
    if not folder.exists():
        pytest.skip(f"real data not available: {folder}")
    for prefix, names in ROSE_SUBTASKS.items():
        assert names == tuple(sorted(p.stem for p in (folder / prefix).glob("*.json")))


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("record, field, reason", [
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "prompt", "empty prompt"),
    ({"prompt": "q", "chosen": " ", "rejected": "b"}, "chosen", "empty response"),
    ({"prompt": "q", "chosen": "a", "rejected": ""}, "rejected", "empty response"),
    ({"prompt": "q", "chosen": " same ", "rejected": "same"}, "rejected", "identical to the chosen response"),
    ({"prompt": "q", "rejected": "b"}, "chosen", "missing"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prompt", "expected a string or an array of messages, got number"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a", "rejected": "b"},
     "prompt", "does not end with a user turn"),
    ({"prompt": "q", "chosen": [{"role": "robot", "content": "a"}], "rejected": "b"}, "chosen[0].role", "unknown role 'robot'"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "chosen", "empty response"),
])
def test_bad_trl_pairs(tmp_path, record, field, reason):
    good = {"prompt": "ok", "chosen": "yes", "rejected": "no"}
    records, (problem,) = read_pref_file(write_jsonl(tmp_path / "p.jsonl", [good, record]))
    assert len(records) == 1
    assert (problem.line, problem.field) == (2, field) and problem.reason.startswith(reason)


def test_bad_lines_in_a_pref_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{oops\n\n"text"\n{"prompt": "\xff", "chosen": "a"}\n')
    records, problems = read_pref_file(path)
    assert len(records) == 1
    assert [(p.line, p.reason.split(":")[0]) for p in problems] == [
        (2, "invalid JSON"), (4, "record is not a JSON object (got string)"), (5, "invalid UTF-8 at byte 13")]


def test_bad_hh_pair_without_shared_prompt(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}])
    _, (problem,) = read_pref_file(path, "hh")
    assert problem.field == "chosen" and "share no prompt" in problem.reason


@pytest.mark.parametrize("entry, field, reason", [
    ({"responses": [" a", " b"], "pairs": [[0, 2]]}, "pairs[0]", "index 2 out of range for 2 responses"),
    ({"responses": [" a", " b"], "pairs": [[0, 1], [-1, 0]]}, "pairs[1]", "index -1 out of range"),
    ({"responses": [" a", " b"], "pairs": [[0]]}, "pairs[0]", "expected [chosen index, rejected index]"),
    ({"responses": [" a", 5], "pairs": [[0, 1]]}, "responses[1]", "expected a string, got number"),
    ({"responses": " a", "pairs": [[0, 1]]}, "responses", "expected an array, got string"),
    ({"responses": [" a", " b"]}, "pairs", "missing"),
    ({"responses": [" a", " b"], "pairs": []}, "pairs", "no preference pair"),
    ({"responses": [" a", " a "], "pairs": [[0, 1]]}, "responses[1]", "identical to the chosen response"),
    (rose_entry("a", "b", sft_target="   "), "sft_target", "empty response"),
    (rose_entry("same", "same"), "rejected_target", "identical to the chosen response"),
])
def test_bad_rose_entries(tmp_path, entry, field, reason):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"\n\nHuman: good\n\nAssistant:": rose_entry("a", "b"), "\n\nHuman: bad\n\nAssistant:": entry}))
    records, (problem,) = read_pref_file(path)
    assert len(records) == 1
    assert (problem.line, problem.field) == (2, field) and problem.reason.startswith(reason)


def test_rose_empty_prompt_key(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"\n\nHuman: \n\nAssistant:": rose_entry("a", "b")}))
    _, (problem,) = read_pref_file(path)
    assert (problem.line, problem.field, problem.reason) == (1, "prompt", "empty prompt")


def test_empty_file_gives_nothing(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    assert read_pref_file(tmp_path / "e.jsonl") == ([], [])


# --- ROSE's real validation files (skipped when ../shared/data is absent) --------------------

def rose_file(task: str, shots: int) -> Path:
    path = SHARED / "rose_preferences" / "validation" / task / f"{task}_{shots}_shot" / f"{task}_{shots}_shot_preference.json"
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def test_real_se_10_shot():
    records, problems = read_pref_file(rose_file("se", 10))
    assert len(records) + len(problems) == 100
    # three prompts have tied answers, so ROSE's sft_target equals its rejected_target
    assert [(p.line, p.field, p.reason) for p in problems] == [
        (n, "rejected_target", "identical to the chosen response") for n in (18, 36, 47)]
    counts = Counter(r.subtask for r in records)
    assert list(counts) == list(ROSE_SUBTASKS["se"]) and sum(counts.values()) == 97
    first = records[0]
    assert first.subtask == "se_academia" and "mentor PhD students" in first.prompt
    assert first.prompt_messages == [{"role": "user", "content": first.prompt}]
    assert not first.prompt.startswith("Human:") and not first.prompt.endswith("Assistant:")


def test_real_shp_5_shot():
    records, problems = read_pref_file(rose_file("shp", 5))
    assert problems == [] and len(records) == 90
    assert Counter(r.subtask for r in records) == {name: 5 for name in ROSE_SUBTASKS["shp"]}


def test_real_hh_1_shot_and_10_shot():
    records, problems = read_pref_file(rose_file("hh", 1))
    assert problems == [] and [r.subtask for r in records] == ["hh_harmless-base", "hh_red-team-attempts"]
    assert all(r.prompt_messages[-1]["role"] == "user" for r in records)
    records, problems = read_pref_file(rose_file("hh", 10))
    assert len(records) == 19 and [(p.line, p.field) for p in problems] == [(17, "rejected_target")]
    assert Counter(r.subtask for r in records) == {"hh_harmless-base": 10, "hh_red-team-attempts": 9}


def test_real_chosen_matches_the_published_sft_file():
    """ROSE's *_sft.json holds the chosen side, prompt for prompt in the same order."""
    from curation.data.io import PoolRecord, iter_pool_file
    path = rose_file("shp", 2)
    records, _ = read_pref_file(path)
    sft = [r for r in iter_pool_file(str(path).replace("_preference.json", "_sft.json")) if isinstance(r, PoolRecord)]
    assert [r.chosen for r in records] == [s.messages[-1]["content"] for s in sft]
