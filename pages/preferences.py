"""Preferences: the few-shot pairs that describe the target task; import, author, read, edit."""

import pandas as pd
import streamlit as st

from curation.data import catalog
from curation.data.imports import import_prefs
from curation.data.io import PREF_FORMATS
from curation.data.pairs import PairDraft, check_pair, errors, warnings
from curation.errors import CurationError
from curation.methods.heldout import label_contrast, readiness
from curation.review.mdsafe import formatted
from curation.runs import rescore
from pages._shared import actor, import_source, md_text, remembered_choice, show_import, show_rescored, store, user_errors

st.title("Preferences")
st.caption("Each pair says which of two responses to a prompt is better for your task. "
           "Group pairs into subtasks: a pool example scores by its best-matching subtask.")


def changed(name: str, message: str, where: str = "top") -> None:
    """After pairs changed: re-score the set's newest gradient run on its stored features (seconds),
    keep the messages for the next run of the page, and rerun so every count is current."""
    base, res, failed = rescore.latest_rescorable(store(), name), None, None
    if base is not None:
        with st.spinner(f"Re-scoring run #{base} with the stored features…"):
            try:
                res = rescore.rescore(store(), base, actor=actor())
            except CurationError as e:
                failed = f"Re-scoring run #{base} failed: {e}"
    st.session_state["prefs_flash"] = (where, message, res, failed)
    st.rerun()


def show_flash(where: str) -> None:
    """What the last save did, where it was done (kept across the rerun that refreshed the page)."""
    if (flash := st.session_state.get("prefs_flash")) and flash[0] == where:
        _, message, res, failed = st.session_state.pop("prefs_flash")
        st.success(md_text(message))
        if failed:
            st.warning(md_text(failed))
        if res is not None:
            show_rescored(res)
            st.page_link("pages/explore.py", label="See it in Explore", icon=":material/insights:")


def pairs_table(name: str, pairs: list[dict]) -> None:
    """Every pair in an editable table; a save refuses any incomplete row, naming it."""
    st.caption("Edit cells in place, add rows at the bottom, delete with the row checkbox; then save. "
               "Tab and arrow keys move between cells, Enter edits. New rows get their number when saved.")
    df = pd.DataFrame(pairs, columns=["id", "subtask", "prompt", "chosen", "rejected", "author"])
    gen = st.session_state.get("pairs_gen", 0)  # a new editor after each save: its edits are stored now
    edited = st.data_editor(
        df, key=f"pairs_{name}_{gen}", num_rows="dynamic", hide_index=True, placeholder="",
        column_config={
            "id": st.column_config.NumberColumn("id", disabled=True, format="%d"),
            "author": st.column_config.TextColumn("author", disabled=True),
            "prompt": st.column_config.TextColumn("prompt", width="large"),
            "chosen": st.column_config.TextColumn("chosen", width="medium"),
            "rejected": st.column_config.TextColumn("rejected", width="medium"),
            "subtask": st.column_config.TextColumn("subtask"),
        },
    )
    if st.button("Save changes", type="primary"):
        with user_errors():
            counts = catalog.save_pairs(store(), name, edited.to_dict("records"), actor=actor())
            st.session_state["pairs_gen"] = gen + 1
            changed(name, f"Saved: {counts['added']} added, {counts['updated']} updated, {counts['deleted']} deleted.")


def show_problems(problems) -> None:
    for p in errors(problems):
        st.error(md_text(f"{p.field.capitalize()} {p.message}"))
    for p in warnings(problems):
        st.warning(md_text(f"{p.field.capitalize()} {p.message}"))


def pair_form(name: str, pairs: list[dict]) -> None:
    """One pair, checked before it is saved: errors refuse it, warnings need a tick to save anyway."""
    gen = st.session_state.get("pair_form_gen", 0)  # a fresh, empty form after each saved pair
    subtasks = sorted({p["subtask"] for p in pairs})
    with st.form(f"add_pair_{gen}"):
        c1, c2 = st.columns(2)
        picked = c1.selectbox("Subtask", subtasks, index=0 if subtasks else None,
                              placeholder="no subtask yet: name one", help="an existing subtask of this set")
        new = c2.text_input("…or a new subtask name", help="used instead of the subtask on the left when filled")
        prompt = st.text_area("Prompt")
        c1, c2 = st.columns(2)
        chosen = c1.text_area("Chosen (the better response)")
        rejected = c2.text_area("Rejected (the worse response)")
        report = st.container()
        confirm = st.checkbox("Save despite the warnings")
        c1, c2, _ = st.columns([1, 1, 4])
        check = c1.form_submit_button("Check")
        save = c2.form_submit_button("Save pair", type="primary")
    if not (check or save):
        return
    draft = PairDraft(new.strip() or picked or "", prompt, chosen, rejected)
    problems = check_pair(draft, pairs)
    with report:
        show_problems(problems)
        if check and not problems:
            st.success("No problems found: ready to save.")
        if save and not errors(problems) and warnings(problems) and not confirm:
            st.info("Not saved yet: tick 'Save despite the warnings' and press 'Save pair' again, or change the pair.")
    if save and not errors(problems) and (confirm or not warnings(problems)):
        with user_errors():
            pid = catalog.add_pair(store(), name, draft, accept_warnings=confirm, actor=actor())
            st.session_state["pair_form_gen"] = gen + 1
            st.session_state[f"reader_{name}"] = pid
            changed(name, f"Added pair #{pid} to subtask '{draft.cleaned().subtask}'.", where="form")


def step(key: str, ids: list[int], by: int) -> None:
    """Previous/next pair from the one shown (or from where a typed number falls between pairs)."""
    now = st.session_state.get(key, ids[0])
    if by < 0:
        st.session_state[key] = max((i for i in ids if i < now), default=ids[0])
    else:
        st.session_state[key] = min((i for i in ids if i > now), default=ids[-1])


def show_text(text: str, plain: bool) -> None:
    """A pair's text: Markdown that may format but never runs HTML, fetches images or follows
    directives (`mdsafe.formatted`), or the characters exactly as stored."""
    with st.container(border=True):
        if plain:
            st.code(text, language=None, wrap_lines=True)
        else:
            st.markdown(formatted(text))


def pair_reader(name: str, pairs: list[dict]) -> None:
    """One pair at a time: the prompt on top, chosen and rejected side by side."""
    ids = [p["id"] for p in pairs]
    key = f"reader_{name}"
    if not min(ids) <= st.session_state.get(key, -1) <= max(ids):
        st.session_state[key] = ids[0]
    c1, c2, c3, c4 = st.columns([1, 1, 2, 3], vertical_alignment="bottom")
    c1.button("Previous pair", on_click=step, args=(key, ids, -1), disabled=st.session_state[key] <= ids[0])
    c2.button("Next pair", on_click=step, args=(key, ids, 1), disabled=st.session_state[key] >= ids[-1])
    c3.number_input("Pair number", min_value=min(ids), max_value=max(ids), step=1, key=key,
                    help="the id column of the table")
    plain = c4.toggle("Show the text exactly as stored (no formatting)", key="reader_plain")
    by_id = {p["id"]: p for p in pairs}
    if (pair := by_id.get(st.session_state[key])) is None:
        st.error(md_text(f"There is no pair #{st.session_state[key]} in this set (it may have been deleted); "
                         "use Previous/Next to go to the nearest one."))
        return
    st.caption(md_text(f"Pair #{pair['id']} ({ids.index(pair['id']) + 1} of {len(ids)}) · subtask "
                       f"{pair['subtask']} · by {pair['author']}"))
    st.markdown("**Prompt**")
    show_text(pair["prompt"], plain)
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Chosen**")
        show_text(pair["chosen"], plain)
    with c2:
        st.markdown("**Rejected**")
        show_text(pair["rejected"], plain)


def archive_or_delete(name: str, archived: bool, n_pairs: int) -> None:
    """Deleting a set that runs used is refused (they would lose its name): archive it instead."""
    runs = catalog.prefset_runs(store(), name)
    if archived:
        st.info(md_text(f"'{name}' is archived: hidden from Scoring and from the default listing; "
                        f"its runs ({catalog.describe_runs(runs) or 'none'}) keep its name."))
        if st.button("Unarchive"):
            catalog.unarchive_prefset(store(), name, actor=actor())
            st.rerun()
    c1, c2 = st.columns([1, 5])
    if not archived and c1.button("Archive this set", help="hide it from Scoring; its runs keep its name"):
        catalog.archive_prefset(store(), name, actor=actor())
        st.session_state["prefs_flash"] = ("top", f"Archived '{name}'. Tick 'Show archived sets' to see it again.",
                                           None, None)
        st.rerun()
    if c2.button("Delete this set"):
        st.session_state["confirm_delete"] = name
    if st.session_state.get("confirm_delete") != name:
        return
    if runs:
        st.error(md_text(f"'{name}' cannot be deleted: {len(runs)} run(s) use it: {catalog.describe_runs(runs)}. "
                         "Archive it instead (it is then hidden from new runs, and its runs keep its name)."))
        return
    st.warning(md_text(f"Delete the preference set '{name}' and its {n_pairs} pairs? No run uses it."))
    if st.button("Yes, delete"):
        with user_errors():
            catalog.delete_prefset(store(), name, actor=actor())
            st.session_state.pop("confirm_delete")
            st.rerun()


with st.expander("Import or create a preference set", expanded=not catalog.list_prefsets(store())):
    with st.form("import_prefs"):
        source = import_source("prefs.jsonl or a ROSE *_preference.json (in the data folder)", ["jsonl", "json"])
        c1, c2, c3, c4 = st.columns(4)
        name = c1.text_input("Name (default: file name)")
        fmt = c2.selectbox("Format", ["auto", *PREF_FORMATS])
        field = c3.text_input("Subtask field (optional)")
        n_sub = c4.number_input("…or N contiguous subtasks (0 = infer)", min_value=0, value=0)
        if st.form_submit_button("Import", type="primary"):
            with user_errors():
                res = import_prefs(store(), source(), name=name or None, fmt=None if fmt == "auto" else fmt,
                                   subtask_field=field or None, subtasks=n_sub or None, actor=actor())
                show_import(res)
    with st.form("new_set"):
        new = st.text_input("New empty set")
        if st.form_submit_button("Create"):
            with user_errors():
                catalog.create_prefset(store(), new.strip(), actor=actor())
                st.rerun()

show_flash("top")
show_archived = st.checkbox("Show archived sets", help="sets kept only for the runs that used them")
sets = {s["name"]: s for s in catalog.list_prefsets(store(), archived=show_archived)}
if not sets:
    st.info("No preference set yet.")
    st.stop()

name = remembered_choice("Preference set", list(sets), key="prefs_set", fallback="demo",
                         format_func=lambda n: f"{n} (archived)" if sets[n]["archived"] else n)
pairs = catalog.get_pairs(store(), name)
counts = pd.Series([p["subtask"] for p in pairs], dtype=object).value_counts()
st.write(f"**{len(pairs)} pairs** in **{len(counts)} subtasks**: "
         + md_text(", ".join(f"{k} ({v})" for k, v in counts.items())))
if warning := label_contrast(pairs).get("warning"):
    st.warning(warning)
ready = readiness([p["subtask"] for p in pairs], prompts=[p["prompt"] for p in pairs])
st.caption(md_text(f"Check and auto (held-out verdict): {ready['message']}"))

pairs_table(name, pairs)
st.subheader("Add a pair")
show_flash("form")
pair_form(name, pairs)
st.subheader("Read a pair")
if pairs:
    pair_reader(name, pairs)
else:
    st.caption("No pairs yet: add one above.")
st.subheader("Archive or delete")
archive_or_delete(name, sets[name]["archived"], len(pairs))
