"""Pool readers: every format and container, detection, bad-input reports, streaming."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.data.io import POOL_FORMATS, PoolRecord, Problem, count_records, detect_pool_format, iter_pool_file
from curation.errors import CurationError, InputError

FIXTURES = Path(__file__).parent / "fixtures" / "io"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def read(path, fmt=None) -> tuple[list[PoolRecord], list[Problem]]:
    items = list(iter_pool_file(path, fmt))
    return [i for i in items if isinstance(i, PoolRecord)], [i for i in items if isinstance(i, Problem)]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def convo(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


# --- formats ---------------------------------------------------------------------------------

def test_alpaca_joins_input_and_keeps_system_source_id_original():
    records, problems = read(FIXTURES / "alpaca.jsonl")
    assert problems == []
    assert [r.line for r in records] == [1, 2, 4]  # the blank line 3 is skipped, numbering kept
    assert records[0].messages == convo(("user", "Name the capital of France."), ("assistant", "Paris."))
    assert records[1].messages == convo(("system", "You are a translator."),
                                        ("user", "Translate to German.\n\nGood morning"), ("assistant", "Guten Morgen."))
    assert records[2].messages == convo(("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5"))
    assert [r.source for r in records] == ["alpaca", "alpaca", "arith"]
    assert [r.orig_id for r in records] == [None, "7", None]
    assert records[2].original["output"] == " 5 "  # as read, not normalised
    assert {r.fmt for r in records} == {"alpaca"}


def test_messages_and_tulu(tmp_path):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": msgs}, {"messages": msgs[1:], "source": "web"}])
    records, _ = read(path)
    assert [r.fmt for r in records] == ["messages", "messages"]
    assert records[0].messages == msgs and records[1].messages == msgs[1:]
    assert [r.source for r in records] == ["chat", "web"]

    tulu = write_jsonl(tmp_path / "less.jsonl", [{"dataset": "flan_v2", "id": "flan_v2_0", "messages": msgs[1:]}])
    (rec,), _ = read(tulu)
    assert (rec.fmt, rec.source, rec.orig_id) == ("tulu", "flan_v2", "flan_v2_0")


def test_sharegpt_json_array_maps_roles_and_indexes_records():
    records, problems = read(FIXTURES / "sharegpt.json")
    assert problems == []
    assert [r.line for r in records] == [1, 2]  # record index in the array
    assert records[0].messages == convo(("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "4"))
    assert [m["role"] for m in records[1].messages] == ["user", "assistant", "user", "assistant"]
    assert [(r.orig_id, r.source, r.fmt) for r in records] == [("c1", "sharegpt", "sharegpt"), ("c2", "chat", "sharegpt")]


def test_sharegpt_top_level_system(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"system": "Sys", "conversations": [
        {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}])
    (rec,), _ = read(path)
    assert rec.messages[0] == {"role": "system", "content": "Sys"}


def test_prompt_completion_strips_endoftext_and_whitespace(tmp_path):
    path = write_jsonl(tmp_path / "t0.jsonl", [
        {"prompt": "Classify: great movie!\n", "completion": "positive<|endoftext|>"},
        {"prompt": "Q?", "completion": " answer <|endoftext|>\n"},
    ])
    records, _ = read(path)
    assert records[0].messages == convo(("user", "Classify: great movie!"), ("assistant", "positive"))
    assert records[1].messages[-1]["content"] == "answer"
    assert records[0].fmt == "prompt_completion" and records[0].source == "t0"


def test_prompt_response(tmp_path):
    (rec,), _ = read(write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "Hi", "response": "Hello"}]))
    assert (rec.fmt, rec.messages) == ("prompt_response", convo(("user", "Hi"), ("assistant", "Hello")))


def test_json_object_of_records_uses_keys_as_ids(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"a": {"prompt": "P1", "response": "R1"}, "b": {"prompt": "P2", "response": "R2"}}))
    records, _ = read(path)
    assert [(r.line, r.orig_id) for r in records] == [(1, "a"), (2, "b")]


def test_parquet_is_read_in_batches_with_nested_messages(tmp_path, monkeypatch):
    import curation.data.io._read as low
    monkeypatch.setattr(low, "PARQUET_BATCH_ROWS", 2)
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
            for i in range(5)]
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
    records, problems = read(path)
    assert problems == []
    assert [r.line for r in records] == [1, 2, 3, 4, 5]
    assert records[4].messages == convo(("user", "Q4"), ("assistant", "A4"))
    assert records[4].orig_id == "r4"
    assert count_records(path) == 5


def test_parquet_alpaca_with_null_input(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "I", "input": None, "output": "O"}]), path)
    (rec,), _ = read(path)
    assert rec.messages == convo(("user", "I"), ("assistant", "O"))


def test_parquet_unreadable_is_a_located_problem(tmp_path):
    """Random bytes named .parquet once crashed the import (count_records raised ArrowInvalid)."""
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    assert count_records(path) is None
    (problem,) = list(iter_pool_file(path))
    assert isinstance(problem, Problem) and problem.line == 1 and "not a readable parquet file" in problem.reason


def test_csv_lines_count_header_and_multiline_cells(tmp_path):
    path = tmp_path / "pool.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "input", "output"])
        w.writerow(["Write a haiku", "", "line one\nline two\nline three"])  # lines 2-4
        w.writerow(["Say yes", "", "yes"])                                   # line 5
        w.writerow(["Say no", "", ""])                                       # line 6: empty response
    records, problems = read(path)
    assert [r.line for r in records] == [2, 5]
    assert records[0].messages[-1]["content"] == "line one\nline two\nline three"
    assert [(p.line, p.field, p.reason) for p in problems] == [(6, "output", "empty response")]
    assert records[1].original == {"instruction": "Say yes", "input": "", "output": "yes"}


def test_csv_messages_column_is_json_and_original_kept(tmp_path):
    msgs = convo(("user", "Q"), ("assistant", "A"))
    path = tmp_path / "chat.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["id", "messages"], ["x1", json.dumps(msgs)], ["x2", "not json"]])
    records, problems = read(path)
    assert records[0].messages == msgs and records[0].original["messages"] == json.dumps(msgs)
    assert [(p.line, p.field) for p in problems] == [(3, "messages")]
    assert "expected an array" in problems[0].reason


def test_csv_bad_utf8_and_wrong_column_count(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"prompt,response\nok,fine\ncaf\xe9,x\na,b,c\nlast,one\n")
    records, problems = read(path)
    assert [r.line for r in records] == [2, 5]
    assert [(p.line, p.reason) for p in problems] == [(3, "invalid UTF-8 at byte 4"), (4, "expected 2 columns, got 3")]


# --- detection and overrides -----------------------------------------------------------------

@pytest.mark.parametrize("record, fmt", [
    ({"instruction": "i", "output": "o"}, "alpaca"),
    ({"messages": []}, "messages"),
    ({"dataset": "d", "id": "1", "messages": []}, "tulu"),
    ({"conversations": []}, "sharegpt"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"prompt": "p", "response": "r"}, "prompt_response"),
    ({"instruction": "only a broken alpaca record"}, "alpaca"),
    ({"text": "plain"}, None),
    (["not", "a", "record"], None),
])
def test_detect_pool_format(record, fmt):
    assert detect_pool_format(record) == fmt


def test_detection_uses_first_well_formed_record(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('not json\n[1]\n{"prompt": "P", "completion": "C"}\n')
    records, problems = read(path)
    assert [p.line for p in problems] == [1, 2] and records[0].fmt == "prompt_completion"


def test_fmt_override(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"dataset": "d", "id": "1", "messages": convo(("user", "Q"), ("assistant", "A"))}])
    assert read(path)[0][0].fmt == "tulu"
    assert read(path, "messages")[0][0].fmt == "messages"
    records, problems = read(path, "alpaca")
    assert records == [] and [(p.field, p.reason) for p in problems] == [("instruction", "missing")]


def test_unknown_fmt_lists_valid_formats_before_reading():
    with pytest.raises(CurationError) as err:
        iter_pool_file(FIXTURES / "alpaca.jsonl", "csv")  # raised at the call, not on first next()
    assert all(name in str(err.value) for name in POOL_FORMATS)


def test_undetectable_format_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "hello"}])
    (problem,) = list(iter_pool_file(path))
    assert problem.line == 1 and "'text'" in str(problem) and "instruction" in str(problem)


def test_an_unclear_first_record_does_not_fail_the_file(tmp_path):
    """Lenient reading: the first record names no format; the next ones do and are read."""
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "hello"}, {"prompt": "P", "completion": "C"},
                                              {"prompt": "Q", "completion": "D"}])
    records, problems = read(path)
    assert [p.line for p in problems] == [1] and [r.line for r in records] == [2, 3]
    assert {r.fmt for r in records} == {"prompt_completion"}


def test_missing_file_and_unsupported_extension_raise_at_call(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        iter_pool_file(tmp_path / "nope.jsonl")
    (tmp_path / "pool.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported file type"):
        iter_pool_file(tmp_path / "pool.txt")


# --- bad input -------------------------------------------------------------------------------

def test_bad_records_are_reported_with_line_and_field():
    records, problems = read(FIXTURES / "bad_alpaca.jsonl")
    assert [r.line for r in records] == [1, 11]
    got = [(p.line, p.field, p.reason) for p in problems]
    assert got == [
        (2, None, "invalid JSON: Expecting value at column 37"),
        (3, None, "invalid UTF-8 at byte 21"),
        (4, None, "record is not a JSON object (got array)"),
        (5, "output", "missing"),
        (6, "instruction", "expected a string, got number"),
        (7, "instruction", "empty prompt"),
        (8, "output", "empty response"),
        (9, "input", "expected a string, got array"),
    ]
    assert all(p.path == str(FIXTURES / "bad_alpaca.jsonl") for p in problems)


@pytest.mark.parametrize("messages, field, reason", [
    ("hello", "messages", "expected an array of messages, got string"),
    (None, "messages", "missing"),
    ([], "messages", "no user turn"),
    (["hi"], "messages[0]", "expected a message object, got string"),
    ([{"role": "user", "content": 5}], "messages[0].content", "expected a string, got number"),
    ([{"role": "user"}], "messages[0].content", "missing"),
    ([{"content": "x"}], "messages[0].role", "missing"),
    ([{"role": "tool", "content": "x"}], "messages[0].role", "unknown role 'tool'"),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "}], "messages[1].content", "empty assistant turn"),
    ([{"role": "user", "content": ""}, {"role": "assistant", "content": "A"}], "messages[0].content", "empty user turn"),
    ([{"role": "assistant", "content": "A"}], "messages", "no user turn"),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "Q2"}],
     "messages", "does not end with an assistant turn (last turn: user)"),
])
def test_bad_conversations(tmp_path, messages, field, reason):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": convo(("user", "ok"), ("assistant", "ok"))}, {"messages": messages}])
    records, (problem,) = read(path)
    assert len(records) == 1
    assert (problem.line, problem.field) == (2, field) and problem.reason.startswith(reason)


def test_empty_system_turn_is_dropped(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "system", "content": ""}, *convo(("user", "Q"), ("assistant", "A"))]}])
    assert read(path)[0][0].messages == convo(("user", "Q"), ("assistant", "A"))


def test_sharegpt_problem_names_sharegpt_keys(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": ""}]}])
    (problem,) = read(path)[1]
    assert problem.field == "conversations[1].value"


def test_prompt_completion_that_is_only_endoftext_is_empty(tmp_path):
    (problem,) = read(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Q", "completion": "<|endoftext|>"}]))[1]
    assert (problem.field, problem.reason) == ("completion", "empty response")


def test_json_file_errors_are_one_problem_at_the_right_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "a", "response": "b"},\n  {"prompt": oops}\n]\n')
    (problem,) = list(iter_pool_file(path))
    assert problem.line == 3 and problem.reason.startswith("invalid JSON")
    path.write_bytes(b'[\n{"prompt": "a", "response": "b"},\n{"prompt": "\xff", "response": "b"}\n]')
    (problem,) = list(iter_pool_file(path))
    assert (problem.line, problem.reason) == (3, "invalid UTF-8 at byte 13")


def test_problem_str_and_error():
    assert str(Problem("p.jsonl", 3, "messages[2].content", "empty user turn")) == \
        "p.jsonl:3: field 'messages[2].content': empty user turn"
    assert str(Problem("p.jsonl", 4, None, "invalid JSON")) == "p.jsonl:4: invalid JSON"
    err = Problem("p.jsonl", 4, "output", "missing").to_error()
    assert isinstance(err, InputError) and (err.line, err.field) == (4, "output")


# --- size and streaming ----------------------------------------------------------------------

def test_count_records(tmp_path):
    assert count_records(FIXTURES / "alpaca.jsonl") == 4  # lines, blank included: an estimate
    no_newline = tmp_path / "n.jsonl"
    no_newline.write_text('{"a": 1}\n{"a": 2}')
    assert count_records(no_newline) == 2
    (tmp_path / "c.csv").write_text("a,b\n1,2\n3,4\n")
    assert count_records(tmp_path / "c.csv") == 2
    assert count_records(FIXTURES / "sharegpt.json") is None


def test_streaming_keeps_memory_bounded(tmp_path):
    path = tmp_path / "big.jsonl"
    line = json.dumps({"instruction": "Summarise the following paragraph. " * 3, "input": "", "output": "A summary. " * 5})
    with path.open("w") as f:
        for _ in range(200_000):
            f.write(line + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        n = sum(1 for item in iter_pool_file(path) if isinstance(item, PoolRecord))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 200_000
    assert peak < size / 50, f"peak {peak} bytes for a {size}-byte file"


# --- real data (skipped when ../shared/data is absent) --------------------------------------

def real(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def test_real_t0_template_file():
    path = real("t0_pool/data_per_template/ag_news_classify.jsonl")
    records, problems = read(path)
    assert len(records) == 200 and problems == [] and count_records(path) == 200
    assert {r.fmt for r in records} == {"prompt_completion"}
    assert {r.source for r in records} == {"ag_news_classify"}
    assert not any("<|endoftext|>" in r.messages[-1]["content"] for r in records)
    assert all(r.original["completion"].endswith("<|endoftext|>") for r in records)


def test_real_t0_trec_completions_are_empty():
    """The published trec templates have completions that are only the stop token."""
    records, problems = read(real("t0_pool/data_per_template/trec_trec1.jsonl"))
    assert records == [] and len(problems) == 200
    assert {(p.field, p.reason) for p in problems} == {("completion", "empty response")}


def test_real_rose_sft_file_is_tulu():
    records, problems = read(real("rose_preferences/validation/se/se_10_shot/se_10_shot_sft.json"))
    assert len(records) == 100 and problems == []
    assert {r.fmt for r in records} == {"tulu"} and {r.source for r in records} == {"se"}
    assert all(r.orig_id.startswith("se_") for r in records)
