"""Curate & Export: pin or exclude examples with a reason, set the budget, export with a manifest."""

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from curation.data import catalog
from curation.errors import CurationError
from curation.review import curate
from curation.review.export import FORMAT_LABELS, FORMATS, existing_export, export_selection
from pages._shared import actor, can, check_panel, md_text, selection_editor, store, user_errors, workspace


def act(describe, fn) -> None:
    """Callback body: run a library action, keep its outcome for the next run to show."""
    try:
        st.session_state.curate_msg = ("success", describe(fn()))
    except CurationError as e:
        st.session_state.curate_msg = ("error", str(e))


def reason() -> str:
    """Read in callbacks, so a reason typed just before a click is the one recorded."""
    return st.session_state.get("curate_reason", "")


def on_edit(key: str, pool: str, rows: list[dict]) -> None:
    edits = st.session_state[key]["edited_rows"]
    act(lambda b: "Saved." if b else "Nothing changed.",
        lambda: curate.apply_table_edits(store(), pool, rows, edits, reason(), actor=actor()))
    st.session_state.editor_gen = st.session_state.get("editor_gen", 0) + 1  # a fresh editor shows the stored state


st.title("Curate & Export")
runs = [r for r in catalog.list_runs(store()) if r["status"] == "done"]
if not runs:
    st.info("No finished scoring run yet: score a pool on the Scoring page, then curate its selection here.")
    st.page_link("pages/scoring.py", label="Go to Scoring")
    st.stop()
labels = {r["id"]: f"#{r['id']} {r['label']} · pool {r['pool']} · preferences {r['prefs']}" for r in runs}
last = st.session_state.get("explore_run")  # the run last explored, else the newest
run_id = st.selectbox("Run", list(labels), index=list(labels).index(last) if last in labels else 0,
                      format_func=labels.get)
pool = next(r["pool"] for r in runs if r["id"] == run_id)
check = check_panel(run_id, "curate")

sel = None
with user_errors():
    sel = curate.curated_selection(store(), run_id)  # the run's saved selection (shared with Explore)
if sel is None:  # the error is shown above
    st.stop()
selection_editor(run_id, len(sel.ids), "curate")

if msg := st.session_state.pop("curate_msg", None):
    getattr(st, msg[0])(md_text(msg[1]) if msg[0] == "error" else msg[1])  # errors quote user data
m = st.columns(4)
m[0].metric("Selected", f"{sel.n_selected:,}", help=f"budget {sel.budget:,}, {sel.n_auto:,} chosen by score")
m[1].metric("Pinned", f"{len(sel.pinned):,}")
m[2].metric("Excluded", f"{len(sel.excluded):,}")
m[3].metric("vs automatic", f"+{len(sel.added):,} / −{len(sel.removed):,}")
with st.expander(f"Changes vs the automatic selection (+{len(sel.added):,} / −{len(sel.removed):,})"):
    st.dataframe(pd.DataFrame(curate.diff_rows(store(), sel)), hide_index=True)

c1, c2, c3 = st.columns([3, 2, 2])
search = c1.text_input("Search", placeholder="words in prompt or response")
sources = c2.multiselect("Sources", [s for s, _ in catalog.pool_sources(store(), pool)])
scope = c3.radio("Show", ["selection", "pool"], horizontal=True,
                 format_func={"selection": "curated selection", "pool": "whole pool"}.get)
flt = catalog.ExampleFilter(search=search, sources=tuple(sources))
filtering = bool(search.strip() or sources)
matching = catalog.matching_ids(store(), pool, flt) if filtering else None
ids = curate.shown_ids(sel, scope, matching)
st.text_input("Reason (required to pin or exclude)", key="curate_reason")

c1, c2, c3 = st.columns(3)
if can("decide"):  # a viewer reads; the library refuses their decisions anyway
    c1.button("Undo last action", on_click=act, args=(lambda u: f"Undid batch {u.undone[:8]} ({u.n_examples} examples)."
                                                       if u else "Nothing to undo.", lambda: curate.undo(store(), pool, actor=actor())))
if filtering and can("decide"):
    for col, action in ((c2, "pin"), (c3, "exclude")):
        col.button(f"{action.capitalize()} all {len(matching):,} matching", key=f"all_{action}", on_click=act,
                   args=(lambda r, a=action: f"{a}: {r[1]:,} examples.",
                         lambda a=action: curate.apply_to_filter(store(), pool, flt, a, reason(), actor=actor())))

size = 50
pages = max(1, -(-len(ids) // size))
page = st.number_input(f"Page (of {pages}, {len(ids):,} examples)", 1, pages, 1) - 1
rows = curate.table_page(store(), sel, ids, page, size)
if rows:
    key = f"curate_editor_{st.session_state.get('editor_gen', 0)}"
    df = pd.DataFrame(rows)
    st.data_editor(df, key=key, hide_index=True,
                   disabled=[c for c in df.columns if c not in ("pin", "exclude") or not can("decide")],
                   column_config={"id": None, "pin": st.column_config.CheckboxColumn("pin"),
                                  "exclude": st.column_config.CheckboxColumn("exclude")},
                   on_change=on_edit, args=(key, pool, rows))
else:
    st.caption("Nothing to show: widen the filter or show the whole pool.")

with st.expander("Audit trail"):
    st.dataframe(pd.DataFrame(curate.audit(store(), pool)), hide_index=True)

st.subheader("Export")
# Widgets and the last result are keyed by run: after switching run the panel shows this run's
# export (or none) and an empty name, never the previous run's file, card or name.
c1, c2, c3 = st.columns([1, 2, 2])
fmt = c1.selectbox("Format", FORMATS, format_func=FORMAT_LABELS.get, key=f"export_fmt_{run_id}")
name = c2.text_input("Name (default: run, format and time)", key=f"export_name_{run_id}").strip()
exact = c3.checkbox("Export exactly what the current filter shows", help="all pages of the table, not the selection",
                    key=f"export_exact_{run_id}")
anyway, overwrite, existing = True, False, None
if name:
    with user_errors():
        existing = existing_export(workspace(), name)
if existing:
    overwrite = st.checkbox(md_text(f"Overwrite the existing export {name}"), key=f"export_overwrite_{run_id}_{name}",
                            help=md_text(f"{existing} already exists; ticking replaces it as a whole"))
if check.warns_export:
    anyway = st.checkbox("Export anyway: this run's held-out check did not find it better than random",
                         key=f"export_anyway_{run_id}")
if can("export") and st.button("Export", type="primary", disabled=not anyway or (existing is not None and not overwrite)):
    with user_errors(), st.spinner("Exporting…"):
        res = export_selection(store(), run_id, fmt, workspace(), example_ids=ids if exact else None,
                               name=name or None, overwrite=overwrite, actor=actor())
        st.session_state.setdefault("curate_exports", {})[run_id] = (str(res.path), str(res.manifest_path))
last = st.session_state.get("curate_exports", {}).get(run_id)
manifest = json.loads(Path(last[1]).read_text()) if last and Path(last[1]).exists() else None
if manifest and manifest["run"]["id"] == run_id:  # not when another run's export has replaced it since
    path = Path(last[0])
    st.success(md_text(f"Exported {manifest['counts']['exported']:,} examples to {path}"))
    st.download_button("Download the file", path.read_bytes(), file_name=path.name, mime="application/jsonl")
    if trainer := manifest.get("trainer"):
        sides = [f for f in (trainer.get("dataset_info_file"), trainer.get("config_file")) if f]
        st.caption(md_text(f"For {trainer['trainer']}: " + (", ".join(str(path.parent / f) for f in sides)
                                                           or trainer.get("load", ""))))
    from curation.review.export import dataset_card
    with st.container(border=True):
        st.markdown(dataset_card(manifest))
    if card := manifest.get("card"):
        st.caption(md_text(f"This dataset card is also beside the export: {path.parent / card}"))
    with st.expander("Manifest (JSON; first 100 examples shown, the file beside the export has them all)"):
        st.json({**manifest, "examples": manifest["examples"][:100]}, expanded=False)
