"""Explore: score distributions, the selection cutoff, the UMAP map of gradient features and an
inspector that says why an example was (not) chosen."""

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from curation import catalog, explore, maps, rescore
from pages._shared import (check_panel, md_text, render_messages, selection_editor, show_rescored, store,
                           user_errors)

MAX_DRAWN = 200_000  # above this the map draws a seeded sample; selections still cover all points
MAX_TABLE = 10_000
COLOURS = {"score": "score", "selection": "state", "source": "source", "driving subtask": "subtask"}

st.title("Explore")
runs = [r for r in catalog.list_runs(store()) if r["status"] == "done"]
if not runs:
    st.info("No finished scoring run yet: start one on the Scoring page.")
    st.page_link("pages/scoring.py", label="Go to Scoring", icon=":material/speed:")
    st.stop()
run_ids = [r["id"] for r in runs]
wanted = st.session_state.get("explore_run")
run_id = st.selectbox("Run", run_ids, index=run_ids.index(wanted) if wanted in run_ids else 0,
                      format_func=lambda i: next(f"#{r['id']} {r['method']} on {r['pool']} ({r['selected']:,} selected)"
                                                 + (" · scored with an earlier version of the pairs"
                                                    if r["pairs_version"] == "earlier" else "")
                                                 for r in runs if r["id"] == i))
st.session_state["explore_run"] = run_id  # Curate opens on the run last explored
info = explore.run_info(store(), run_id)
if msg := st.session_state.pop("rescored_msg", None):
    st.success(md_text(msg))
if next(r["pairs_version"] for r in runs if r["id"] == run_id) == "earlier":
    c1, c2 = st.columns([4, 1])
    c1.warning("This run was scored with an earlier version of its preference set: its scores and "
               "explanations describe the pairs it was scored with (the run keeps them).")
    if c2.button("Re-score with the current pairs", disabled=info.method not in ("rose", "less", "nice")):
        with user_errors(), st.spinner("Re-scoring with the stored features…"):
            show_rescored(rescore.rescore(store(), run_id))
            st.rerun()

check_panel(run_id, "explore")


@st.cache_data(max_entries=4, show_spinner="Loading scores…")
def scores_frame(db_url: str, run_id: int, version: tuple) -> pd.DataFrame:
    """The run's frame, read again only when a decision (pin/exclude) changed it."""
    return explore.run_scores_frame(store(), run_id)


@st.cache_data(max_entries=32, show_spinner="Explaining…")
def explanation(db_url: str, run_id: int, example_id: int, version: tuple) -> explore.Explanation:
    """Cached: the neighbour search streams every train feature of the run."""
    return explore.explain(store(), run_id, example_id)


version = explore.frame_version(store(), run_id)
df = scores_frame(store().url, run_id, version)
if df.empty:
    st.info("This run stored no scores.")
    st.stop()

st.subheader("Scores and the cutoff")
saved = selection_editor(run_id, len(df), "explore", slider=True)
cut = explore.cutoff_for(df, *saved.budget())
c1, c2, c3 = st.columns(3)
c1.metric("Kept", f"{cut.n_kept:,} of {len(df):,}")
c2.metric("Cutoff score", f"{cut.score:.4f}" if np.isfinite(cut.score) else "–")
c3.metric("Pinned / excluded", f"{cut.n_pinned:,} / {cut.n_excluded:,}")
by_source = st.toggle("Colour by source")
fig = px.histogram(df, x="score", color="source" if by_source else None, nbins=80, barmode="overlay")
if np.isfinite(cut.score):
    fig.add_vline(x=cut.score, line_dash="dash", annotation_text=saved.label())
st.plotly_chart(fig, key="hist")

c1, c2 = st.columns(2)
subtasks = explore.summary_by(df, "subtask", cut.kept)
c1.plotly_chart(px.bar(subtasks, x="subtask", y="kept", title="Kept examples each subtask drives"), key="sub")
ckpts = explore.checkpoint_breakdown(store(), run_id)
if len(ckpts):
    c2.plotly_chart(px.bar(ckpts, x="checkpoint", y="mean_contribution", hover_data=["lr", "weight", "share"],
                           title="Mean contribution per checkpoint (auto-selected)"), key="ckpt")
st.dataframe(explore.summary_by(df, "source", cut.kept), hide_index=True)

kept = df[cut.kept].head(MAX_TABLE)
st.caption(f"The kept examples by rank{f' (first {MAX_TABLE:,})' if cut.n_kept > MAX_TABLE else ''}; "
           "select a row to inspect it.")
table = st.dataframe(kept, hide_index=True, on_select="rerun", selection_mode="single-row", key="kept_table")


def bulk_actions(ids: np.ndarray) -> None:
    """Pin or exclude every example inside the lasso/box, drawn or not (curate.decide)."""
    st.write(f"**{len(ids):,} examples** in the selection.")
    reason = st.text_input("Reason (kept in the audit trail)", key="bulk_reason")
    c1, c2 = st.columns(2)
    for col, action, label in ((c1, "pin", "Pin"), (c2, "exclude", "Exclude")):
        if col.button(f"{label} {len(ids):,}", key=f"bulk_{action}"):
            from curation import curate  # lazily: only the bulk actions need it
            with user_errors():
                curate.decide(store(), info.pool, ids.tolist(), action, reason)
                st.rerun()


@st.fragment(run_every=2)
def map_progress(workdir) -> None:
    status = maps.map_status(workdir)
    st.info(f"Computing the map ({status['state']})…")
    if status["state"] not in ("queued", "running"):
        st.rerun(scope="app")


st.subheader("Map of gradient features")
status = maps.map_status(info.workdir) if info.workdir else {"state": "missing"}
data = maps.load_map(info.workdir) if status["state"] == "done" else None
if status["state"] in ("queued", "running"):
    map_progress(info.workdir)
elif data is None:
    if status["state"] == "failed":
        st.error(md_text(f"The last map failed: {status.get('error')}"))
    if st.button("Compute the map (in the background)"):
        with user_errors():
            maps.launch_map(store(), run_id)
            st.rerun()
else:
    colour = st.selectbox("Colour by", list(COLOURS))
    values = df.set_index("example_id")[COLOURS[colour]].reindex(data.example_ids).array
    fig = maps.map_figure(data, values, explore.val_subtasks(store(), run_id), MAX_DRAWN)
    event = st.plotly_chart(fig, key="map", on_select="rerun", selection_mode=("points", "box", "lasso"))
    st.caption(f"{data.meta['method']}, seed {data.meta['seed']}, {data.meta['n']:,} examples "
               f"({data.meta['n_fit']:,} fitted); stars are the validation pairs.")
    picked = maps.ids_in_selection(data, event.selection) if event and event.selection else []
    if len(picked):
        bulk_actions(picked)

st.subheader("Inspector")
rows = [r for r in (table.selection.rows if table and table.selection else []) if r < len(kept)]
if rows or "inspect_rank" not in st.session_state:  # a table click moves the inspector there
    st.session_state["inspect_rank"] = int(kept["rank"].iloc[rows[0]]) if rows else 1
rank = int(st.number_input("Inspect the example at rank", min_value=1, max_value=len(df), step=1, key="inspect_rank"))


def example_at(rank: int) -> int:
    return int(df["example_id"].iloc[int(np.searchsorted(df["rank"].to_numpy(), rank))])


def decide_one(action: str) -> None:
    """Pin or exclude the inspected example. A callback reads the widgets' state, so a click that
    interrupts a rerun still acts on the rank and reason on screen."""
    from curation import curate
    at_rank = int(st.session_state["inspect_rank"])
    with user_errors():
        curate.decide(store(), info.pool, [example_at(at_rank)], action, st.session_state.get("one_reason", ""))
        st.session_state["decided"] = f"{'Pinned' if action == 'pin' else 'Excluded'} example at rank {at_rank}."


example_id = example_at(rank)


c1, c2, c3 = st.columns([3, 1, 1])
c1.text_input("Reason for this example", key="one_reason", placeholder="why (kept in the audit trail)")
c2.button("Pin this example", on_click=decide_one, args=("pin",))
c3.button("Exclude this example", on_click=decide_one, args=("exclude",))
if msg := st.session_state.pop("decided", None):
    st.success(msg)
with user_errors():
    exp = explanation(store().url, run_id, example_id, version)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Score", f"{exp.score:.4f}")
    c2.metric("Rank", f"{exp.rank:,} of {exp.n_total:,}")
    c3.metric("Percentile", f"{exp.percentile:.1f}")
    c4.metric("Status", exp.status)
    st.text(f"{exp.uid} · {exp.source} · {exp.why}")  # data and reasons as text, never markdown
    for note in exp.notes:
        st.text(note)
    means = pd.DataFrame({"subtask": list(exp.subtask_means), "mean cosine": list(exp.subtask_means.values())})
    means["driver"] = np.where(means["subtask"] == exp.driver, "max (drives the score)", "other")
    c1, c2 = st.columns(2)
    c1.plotly_chart(px.bar(means, x="subtask", y="mean cosine", color="driver", title="Mean cosine per subtask"),
                    key="means")
    c2.dataframe(pd.DataFrame([vars(c) for c in exp.checkpoints]), hide_index=True)
    st.write("Most aligned validation pairs")
    st.dataframe(pd.DataFrame([vars(p) for p in exp.val_pairs]), hide_index=True)
    st.write("Nearest neighbours in gradient space (last checkpoint)")
    st.dataframe(pd.DataFrame([vars(n) for n in exp.neighbours]), hide_index=True)
    for title, value in exp.evidence.items():  # the method's own evidence (BM25 terms, NICE samples, ...)
        st.write(title)
        st.dataframe(pd.DataFrame(value), hide_index=True) if isinstance(value, list) else st.text(str(value))
    render_messages(exp.messages)
