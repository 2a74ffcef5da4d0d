"""Preferences: the few-shot pairs that describe the target task; import, author, edit."""

import pandas as pd
import streamlit as st

from curation import catalog, rescore
from curation.heldout import label_contrast
from curation.imports import import_prefs
from pages._shared import import_source, md_text, show_import, show_rescored, store, user_errors

st.title("Preferences")
st.caption("Each pair says which of two responses to a prompt is better for your task. "
           "Group pairs into subtasks: a pool example scores by its best-matching subtask.")

sets = catalog.list_prefsets(store())

with st.expander("Import or create a preference set", expanded=not sets):
    with st.form("import_prefs"):
        source = import_source("prefs.jsonl or a ROSE *_preference.json (in the data folder)", ["jsonl", "json"])
        c1, c2, c3, c4 = st.columns(4)
        name = c1.text_input("Name (default: file name)")
        fmt = c2.selectbox("Format", ["auto", "trl", "hh", "rose"])
        field = c3.text_input("Subtask field (optional)")
        n_sub = c4.number_input("…or N contiguous subtasks (0 = infer)", min_value=0, value=0)
        if st.form_submit_button("Import", type="primary"):
            with user_errors():
                res = import_prefs(store(), source(), name=name or None, fmt=None if fmt == "auto" else fmt,
                                   subtask_field=field or None, subtasks=n_sub or None)
                show_import(res)
    with st.form("new_set"):
        new = st.text_input("New empty set")
        if st.form_submit_button("Create"):
            with user_errors():
                catalog.create_prefset(store(), new.strip())
                st.rerun()

sets = catalog.list_prefsets(store())
if not sets:
    st.info("No preference set yet.")
    st.stop()

names = [s["name"] for s in sets]
name = st.selectbox("Preference set", names, index=names.index("demo") if "demo" in names else 0)
pairs = catalog.get_pairs(store(), name)
df = pd.DataFrame(pairs, columns=["id", "subtask", "prompt", "chosen", "rejected", "author"])
counts = df["subtask"].value_counts()
st.write(f"**{len(df)} pairs** in **{len(counts)} subtasks**: "
         + md_text(", ".join(f"{k} ({v})" for k, v in counts.items())))

if warning := label_contrast(pairs).get("warning"):
    st.warning(warning)
st.caption("Edit cells in place, add rows at the bottom, delete with the row checkbox; then save. "
           "Tab and arrow keys move between cells, Enter edits.")
edited = st.data_editor(
    df, key=f"pairs_{name}", num_rows="dynamic", hide_index=True,
    column_config={
        "id": st.column_config.NumberColumn("id", disabled=True),
        "author": st.column_config.TextColumn("author", disabled=True),
        "prompt": st.column_config.TextColumn("prompt", width="large", required=True),
        "chosen": st.column_config.TextColumn("chosen", width="medium", required=True),
        "rejected": st.column_config.TextColumn("rejected", width="medium", required=True),
        "subtask": st.column_config.TextColumn("subtask", required=True),
    },
)
c1, c2 = st.columns([1, 5])
if c1.button("Save changes", type="primary"):
    with user_errors():
        counts = catalog.save_pairs(store(), name, edited.to_dict("records"))
        st.success(f"Saved: {counts['added']} added, {counts['updated']} updated, {counts['deleted']} deleted.")
        base = rescore.latest_rescorable(store(), name) if any(counts.values()) else None
        if base is not None:
            with st.spinner(f"Re-scoring run #{base} with the stored features…"):
                show_rescored(rescore.rescore(store(), base))
            st.page_link("pages/explore.py", label="See it in Explore", icon=":material/insights:")
if c2.button("Delete this set"):
    st.session_state["confirm_delete"] = name
if st.session_state.get("confirm_delete") == name:
    st.warning(md_text(f"Delete the preference set '{name}' and its {len(df)} pairs?"))
    if st.button("Yes, delete"):
        catalog.delete_prefset(store(), name)
        st.session_state.pop("confirm_delete")
        st.rerun()
