"""Authoring pairs (issue 14, item 3) and keeping a used preference set (item 7): the checks on
one pair, saving a table, adding one pair, safe Markdown, archive instead of delete, the migration."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt
from sqlalchemy import inspect, text

from curation.data import catalog, pairs
from curation.data.pairs import LengthLimits, PairDraft, check_pair
from curation.data.store import PreferenceSet, Run, Store
from curation.data.store.db import make_engine, migrate
from curation.errors import CurationError
from curation.review.mdsafe import escape, formatted

EXISTING = [dict(id=7, prompt="What is 2+2?", chosen="It is four.", rejected="It is five, I think."),
            dict(id=9, prompt="Name a colour.", chosen="Blue.", rejected="A car.")]


def codes(problems) -> list[tuple[str, str, str]]:
    return [(p.field, p.level, p.code) for p in problems]


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    catalog.create_prefset(store, "s")
    return store


# --- the checks on one pair ------------------------------------------------------------------

def test_a_good_pair_has_no_problems():
    assert check_pair(PairDraft("math", "What is 3+5?", "3 + 5 = 8.", "Eight is a nice number."), EXISTING) == []


def test_every_empty_field_is_an_error_naming_it():
    problems = check_pair(PairDraft(" ", "", "some answer", "\n"))
    assert codes(problems) == [("subtask", "error", "required"), ("prompt", "error", "required"),
                               ("rejected", "error", "required")]
    assert str(problems[0]) == "subtask is empty (every pair needs it)"


def test_chosen_equal_to_rejected_is_refused():
    assert codes(check_pair(PairDraft("t", "Hi?", "  Hello.  ", "Hello."))) == [("rejected", "error", "identical")]


def test_an_exact_copy_of_a_stored_pair_is_refused_naming_it():
    (p,) = check_pair(PairDraft("other", " what is 2+2? ", "It is four.", "It is five, I think."), EXISTING)
    assert (p.field, p.level, p.code) == ("prompt", "error", "duplicate") and "#7" in p.message


def test_the_same_prompt_with_other_answers_is_a_warning():
    (p,) = check_pair(PairDraft("t", "What is 2+2?", "Four.", "Twenty-two, you put the digits together."),
                      EXISTING)
    assert (p.field, p.level, p.code) == ("prompt", "warning", "same_prompt") and "#7" in p.message


def test_near_identical_responses_warn():
    problems = check_pair(PairDraft("t", "19 - 9?", "19 - 9 = 10, so the answer is 10.",
                                    "19 - 9 = 11, so the answer is 11."))
    assert codes(problems) == [("rejected", "warning", "near_identical")]
    assert pairs.similarity("abc", "xyz") == 0.0


def test_long_responses_are_compared_by_their_words():
    a = " ".join(f"w{i}" for i in range(1000))
    assert len(a) * 2 > pairs.SEQUENCE_MATCH_MAX
    assert pairs.similarity(a, a + " extra") == pytest.approx(1000 / 1001)
    assert pairs.similarity(a, " ".join(f"v{i}" for i in range(1000))) == 0.0


def test_length_warnings_against_the_max_tokens():
    limits = LengthLimits(max_tokens=10)  # 40 characters
    long_answer = check_pair(PairDraft("t", "Explain.", "x" * 40, "A short, different reply."), limits=limits)
    assert codes(long_answer) == [("chosen", "warning", "long")]
    assert "10 by default" in long_answer[0].message
    long_prompt = check_pair(PairDraft("t", "p" * 41, "yes, it is", "no, never"), limits=limits)
    assert codes(long_prompt) == [("prompt", "warning", "long")]  # the responses' own warnings would repeat it
    assert codes(check_pair(PairDraft("t", "Is it?", "Y", "No, and here is why."))) == [("chosen", "warning", "short")]


def test_errors_come_before_warnings():
    problems = check_pair(PairDraft("", "What is 2+2?", "Four.", "Five."), EXISTING)
    assert [p.level for p in problems] == ["error", "warning"]


def test_the_page_warning_and_the_form_agree_also_on_long_pairs():
    """One similarity (length-guarded) for the Preferences warning and the form's check: long
    near-identical answers are flagged by both, without difflib's quadratic cost."""
    from curation.engine.model import ModelConfig
    from curation.methods.heldout import label_contrast
    body = " ".join(f"step {i} adds {i} apples" for i in range(400))  # > 4,000 characters
    pair = {"prompt": "Count.", "chosen": body + " so 42.", "rejected": body + " so 41."}
    assert label_contrast([pair])["near_identical"] == 1
    assert "near_identical" in [p.code for p in check_pair(PairDraft("s", "Count.", pair["chosen"], pair["rejected"]), [])]
    assert LengthLimits().max_tokens == ModelConfig().max_length


# --- saving a table, adding one pair ---------------------------------------------------------

def test_a_partial_row_is_refused_naming_row_and_field_and_nothing_is_stored(store):
    catalog.save_pairs(store, "s", [dict(prompt="Q1", chosen="A", rejected="B", subtask="t")])
    (stored,) = catalog.get_pairs(store, "s")
    rows = [dict(stored, chosen="changed"),
            {"id": None, "prompt": "Q2", "chosen": float("nan"), "rejected": None, "subtask": "t"}]
    with pytest.raises(CurationError) as err:
        catalog.save_pairs(store, "s", rows)
    assert str(err.value) == "row 2: pair fields 'chosen' and 'rejected' are empty (a new row). Nothing was saved"
    assert catalog.get_pairs(store, "s") == [stored]  # the edit of row 1 was not applied either
    with pytest.raises(CurationError, match=r"^row 2: pair fields 'subtask', 'chosen' and 'rejected' are empty \(a "):
        catalog.save_pairs(store, "s", [stored, {"id": "", "prompt": "Q2"}])
    with pytest.raises(CurationError, match=r"^row 2: every field is empty \(a new row\): fill it in or delete"):
        catalog.save_pairs(store, "s", [stored, {"id": None, "subtask": float("nan")}])


def test_a_table_row_marked_new_or_with_a_float_id(store):
    catalog.save_pairs(store, "s", [dict(id="new", prompt="Q1", chosen="A", rejected="B", subtask="t")])
    (stored,) = catalog.get_pairs(store, "s")
    counts = catalog.save_pairs(store, "s", [dict(stored, id=float(stored["id"]), chosen="AA")])
    assert counts == {"added": 0, "updated": 1, "deleted": 0}
    with pytest.raises(CurationError, match=rf"^row 1: pair field 'prompt' is empty \(pair #{stored['id']}\)\."):
        catalog.save_pairs(store, "s", [dict(stored, prompt="  ")])


def test_add_pair_appends_after_the_checks(store):
    first = catalog.add_pair(store, "s", PairDraft(" math ", "What is 3+5?", "8.", "Eight hundred."))
    (p,) = catalog.get_pairs(store, "s")
    assert (p["id"], p["subtask"], p["prompt"], p["author"]) == (first, "math", "What is 3+5?", "curator")
    with pytest.raises(CurationError, match="refused: prompt is already in the set"):
        catalog.add_pair(store, "s", PairDraft("math", "What is 3+5?", "8.", "Eight hundred."), accept_warnings=True)
    warned = PairDraft("math", "What is 3+5?", "It is 8.", "It is 9.")  # same prompt, near-identical answers
    with pytest.raises(CurationError, match="has warnings .*prompt is also the prompt of pair"):
        catalog.add_pair(store, "s", warned)
    assert len(catalog.get_pairs(store, "s")) == 1
    second = catalog.add_pair(store, "s", warned, accept_warnings=True)
    assert [p["id"] for p in catalog.get_pairs(store, "s")] == [first, second]  # in the order added


# --- safe Markdown ---------------------------------------------------------------------------

def _html(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(markdown)


@pytest.mark.parametrize("payload", ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
                                     "![x](http://127.0.0.1:9/leak.png)", "[click](javascript:alert(1))",
                                     "&lt;b&gt;", ":red[red] $x^2$"])
def test_formatted_text_never_acts(payload):
    html = _html(formatted(payload))
    assert "<script" not in html and "<img" not in html and "<a " not in html
    assert "\\<script\\>" in formatted("<script>") and "\\&lt;" in formatted("&lt;")
    assert _html(formatted(payload)).startswith("<p>") and "\\" not in html.replace("\\\\", "")


def test_formatted_text_keeps_formatting_line_breaks_and_code():
    html = _html(formatted("**Step 1**: add\nthen `<b>` stays code\n\n- item"))
    assert "<strong>Step 1</strong>" in html and "<br />" in html and "<li>item</li>" in html
    assert "<code>&lt;b&gt;</code>" in html  # shown verbatim inside code, not rendered
    assert _html(formatted("one\r\ntwo")) == "<p>one<br />\ntwo</p>\n"  # Windows line ends too


def test_escape_makes_everything_literal():
    assert _html(escape("**a** | <b>")) == "<p>**a** | &lt;b&gt;</p>\n"


# --- archive instead of delete ---------------------------------------------------------------

def _run_with(store: Store, prefs: str, method: str = "rose", internal: bool = False) -> int:
    from curation.data.store import Pool
    with store.session() as s:
        pool = s.query(Pool).filter_by(name="p").one_or_none() or Pool(name="p", n_examples=0)
        s.add(pool)
        s.flush()
        run = Run(pool_id=pool.id, prefs_id=catalog.get_prefset(s, prefs).id, method=method, config={},
                  status="done", stage_times={}, meta={"internal": True} if internal else {})
        s.add(run)
        s.flush()
        return run.id


def test_a_set_that_runs_use_is_archived_not_deleted(store):
    catalog.add_pair(store, "s", PairDraft("t", "Q?", "Yes, because of this.", "No."))
    r1, r2 = _run_with(store, "s"), _run_with(store, "s", "bm25", internal=True)
    with pytest.raises(CurationError) as err:
        catalog.delete_prefset(store, "s")
    assert f"used by 2 run(s): #{r1} rose, #{r2} bm25 (check sub-run). Archive it instead" in str(err.value)
    assert [p["name"] for p in catalog.list_prefsets(store)] == ["s"]
    catalog.archive_prefset(store, "s")
    assert catalog.list_prefsets(store) == []  # hidden from Scoring's choices and the default listing
    assert [(p["name"], p["archived"]) for p in catalog.list_prefsets(store, archived=True)] == [("s", True)]
    assert {r["id"]: r["prefs"] for r in catalog.list_runs(store, internal=True)} == {r1: "s", r2: "s"}
    assert len(catalog.get_pairs(store, "s")) == 1  # kept for its runs
    catalog.unarchive_prefset(store, "s")
    assert [p["archived"] for p in catalog.list_prefsets(store)] == [False]


def test_a_set_without_runs_is_deleted(store):
    catalog.create_prefset(store, "other")
    _run_with(store, "other")
    catalog.add_pair(store, "s", PairDraft("t", "Q?", "Yes, because of this.", "No."))
    catalog.delete_prefset(store, "s")
    assert [p["name"] for p in catalog.list_prefsets(store, archived=True)] == ["other"]
    with pytest.raises(CurationError, match="no preference set named 's'"):
        catalog.archive_prefset(store, "s")


def test_migration_adds_archived_to_an_existing_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    migrate(engine, "0002")  # a workspace made before the column existed
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO preference_set (name, created_at) VALUES ('old', '2026-01-01 00:00:00')"))
    assert "archived" not in {c["name"] for c in inspect(engine).get_columns("preference_set")}
    store = Store(url)  # opening it upgrades in place
    assert [(p["name"], p["archived"]) for p in catalog.list_prefsets(store)] == [("old", False)]
    catalog.archive_prefset(store, "old")
    with store.session() as s:
        assert s.query(PreferenceSet).one().archived is True


def test_cli_prefs_archive_unarchive_delete(ws, capsys):
    from curation.cli import main
    store = Store.open(ws)
    catalog.create_prefset(store, "used")
    catalog.create_prefset(store, "spare")
    run = _run_with(store, "used")
    assert main(["prefs", "delete", "used"]) == 2
    assert f"used by 1 run(s): #{run} rose" in capsys.readouterr().err
    assert main(["prefs", "archive", "used"]) == 0 and "archived preference set 'used'" in capsys.readouterr().out
    assert main(["prefs", "list"]) == 0 and "used" not in capsys.readouterr().out
    assert main(["list"]) == 0 and "(1 archived: `python -m curation prefs list --all`)" in capsys.readouterr().out
    assert main(["prefs", "list", "--all"]) == 0
    assert f"archived  runs: #{run} rose" in capsys.readouterr().out
    with pytest.raises(CurationError, match="already exists \\(archived: unarchive it"):
        catalog.create_prefset(store, "used")
    assert main(["prefs", "unarchive", "used"]) == 0 and main(["prefs", "delete", "spare"]) == 0
    assert [p["name"] for p in catalog.list_prefsets(store)] == ["used"]


def test_similarity_is_computed_once_per_pair_of_texts(monkeypatch):
    """Issue 22: the Preferences page re-ran difflib on every pair of its set on each rerun
    (a 2,308-pair set: 8-16 s per click); now only a pair's first check pays."""
    from curation.data import pairs as pairs_mod
    from curation.methods.heldout import label_contrast
    calls = []
    real = pairs_mod.indel_ratio

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(pairs_mod, "indel_ratio", counting)
    pairs = [{"chosen": f"The answer is {i} apples, counted twice.", "rejected": f"The answer is {i + 1} apples."}
             for i in range(50)]
    first = label_contrast(pairs)
    assert len(calls) == 50
    assert label_contrast([dict(p) for p in pairs]) == first and len(calls) == 50


def test_similarity_is_the_indel_ratio_never_below_difflibs():
    """The near-identical check's measure, against an independent computation: 2·LCS/(|a|+|b|)
    by dynamic programming, and never below difflib's ratio (greedy matching blocks)."""
    import random
    from difflib import SequenceMatcher

    from curation.data.pairs import similarity

    def lcs(a: str, b: str) -> int:
        row = [0] * (len(b) + 1)
        for ca in a:
            prev = 0
            for j, cb in enumerate(b, 1):
                prev, row[j] = row[j], prev + 1 if ca == cb else max(row[j], row[j - 1])
        return row[-1]

    rng = random.Random(0)
    for _ in range(60):
        a = "".join(rng.choice("abc de") for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice("abc de") for _ in range(rng.randint(1, 40)))
        assert similarity.__wrapped__(a, b) == pytest.approx(2 * lcs(a, b) / (len(a) + len(b)))
        assert similarity.__wrapped__(a, b) >= SequenceMatcher(None, a, b, autojunk=False).ratio() - 1e-12
