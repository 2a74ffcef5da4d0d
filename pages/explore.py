"""Explore: score distributions, the selection cutoff, the UMAP map of gradient features and an
inspector that says why an example was (not) chosen."""

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from curation.data import catalog
from curation.review import explore, maps
from curation.runs import rescore
from pages._shared import (actor, can, check_panel, md_text, render_messages, selection_editor, show_rescored, store,
                            user_errors)

MAX_TABLE = 10_000
KEPT_COLUMNS = ["rank", "score", "prompt", "state", "source", "subtask", "uid", "chars", "selected", "example_id"]
COLOURS = {"score": "score", "selection": "state", "source": "source", "driving subtask": "subtask"}

st.title("Explore")
runs = [r for r in catalog.list_runs(store()) if r["status"] == "done"]
if not runs:
    st.info("No finished scoring run yet: start one on the Scoring page.")
    st.page_link("pages/scoring.py", label="Go to Scoring", icon=":material/speed:")
    st.stop()
run_ids = [r["id"] for r in runs]
# "explore_run" is the run to show: set by this picker (on_change) and by other pages (Scoring's
# "Open in Explore", a re-score), read by Curate. The picker is keyed, never re-indexed: a
# changing `index` would make a new widget and drop the user's next pick.
wanted = st.session_state.get("explore_run")
if wanted in run_ids and st.session_state.get("explore_run_pick") != wanted:
    st.session_state["explore_run_pick"] = wanted


def picked() -> None:
    st.session_state["explore_run"] = st.session_state["explore_run_pick"]


run_id = st.selectbox("Run", run_ids, key="explore_run_pick", on_change=picked,
                      format_func=lambda i: next(f"#{r['id']} {r['label']} on {r['pool']} ({r['selected']:,} selected)"
                                                 + (" · scored with an earlier version of the pairs"
                                                    if r["pairs_version"] == "earlier" else "")
                                                 for r in runs if r["id"] == i))
st.session_state["explore_run"] = run_id  # Curate opens on the run last explored
info = explore.run_info(store(), run_id)
labels = explore.effective_labels(store(), run_id)  # what its numbers are (an auto run's: its winner's)
if msg := st.session_state.pop("rescored_msg", None):
    st.success(md_text(msg))
if next(r["pairs_version"] for r in runs if r["id"] == run_id) == "earlier":
    c1, c2 = st.columns([4, 1])
    c1.warning("This run was scored with an earlier version of its preference set: its scores and "
               "explanations describe the pairs it was scored with (the run keeps them).")
    refused = rescore.refusal(store(), run_id)  # an auto run re-scores its gradient winner, not re-judged
    if c2.button("Re-score with the current pairs", disabled=refused is not None, help=refused):
        with user_errors(), st.spinner("Re-scoring with the stored features…"):
            show_rescored(rescore.rescore(store(), run_id, actor=actor()))
            st.rerun()

if info.model_warning:
    st.warning(md_text(info.model_warning))
check_panel(run_id, "explore")
if (auto := explore.auto_table(store(), run_id)) is not None:
    st.caption(md_text(auto[0]))
    if len(auto[1]):
        st.dataframe(auto[1], hide_index=True)


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
df = explore.with_states(df, cut.kept)  # table, map and inspector show the saved selection
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

@st.cache_data(max_entries=4, show_spinner=False)
def prompts(db_url: str, example_ids: tuple[int, ...]) -> list[str]:
    """Cached: the kept table's prompt column reads up to `MAX_TABLE` examples."""
    return explore.prompt_excerpts(store(), example_ids, 100)


kept = df[cut.kept].head(MAX_TABLE)
kept = kept.assign(prompt=prompts(store().url, tuple(kept["example_id"].tolist())))
st.caption(f"The kept examples by rank{f' (first {MAX_TABLE:,})' if cut.n_kept > MAX_TABLE else ''}; "
           "select a row to inspect it.")
table = st.dataframe(kept, hide_index=True, on_select="rerun", selection_mode="single-row", key="kept_table",
                     column_order=KEPT_COLUMNS)  # no "override": "state" says pinned/excluded in words


def clicked_rank(event, frame: pd.DataFrame, key: str) -> int | None:
    """The rank of a row the user has just selected in a table (None when the selection is
    unchanged, so a later prev/next or search is not undone by a selection still standing)."""
    rows = [r for r in ((event or {}).get("selection") or {}).get("rows", []) if r < len(frame)]
    seen = st.session_state.get(f"seen_{key}")
    st.session_state[f"seen_{key}"] = rows
    return int(frame["rank"].iloc[rows[0]]) if rows and rows != seen else None


def bulk_actions(ids: np.ndarray) -> None:
    """Preview every example inside the lasso/box (drawn or not), then pin or exclude them all
    (curate.decide). A click on a preview row inspects that example."""
    preview = explore.selection_preview(store(), df, ids, cut.kept)
    st.markdown("**Map selection: preview**")
    st.info(preview.summary)
    event = st.dataframe(preview.table, hide_index=True, key="map_preview", on_select="rerun",
                         selection_mode="single-row")
    if (at_rank := clicked_rank(event, preview.table, "map_preview")) is not None:
        st.session_state["inspect_rank"] = at_rank
    reason = st.text_input("Reason (kept in the audit trail)", key="bulk_reason")
    c1, c2 = st.columns(2)
    for col, action, label in ((c1, "pin", "Pin"), (c2, "exclude", "Exclude")):
        if can("decide") and col.button(f"{label} all {len(ids):,} in the selection", key=f"bulk_{action}"):
            from curation.review import curate  # lazily: only the bulk actions need it
            with user_errors():
                curate.decide(store(), info.pool, ids.tolist(), action, reason, actor=actor())
                st.rerun()


@st.fragment(run_every=2)
def map_progress(workdir) -> None:
    status = maps.map_status(workdir)
    st.info(f"Computing the map ({status['state']})…")
    if status["state"] not in ("queued", "running"):
        st.rerun(scope="app")


@st.cache_data(max_entries=4, show_spinner="Preparing the map…")
def map_layer(db_url: str, run_id: int, version: tuple, meta: dict, _data: maps.MapData,
              _df: pd.DataFrame) -> tuple[np.ndarray, list]:
    """Rows to draw (all selected/pinned/excluded, a stratified sample of the rest) and their
    hover; the frame is keyed by (run, version), the map by its meta."""
    keep = explore.map_keep(_df, _data.example_ids)
    rows = maps.drawn_rows(_data.xy, maps.DRAW_CAP, keep, meta.get("seed", 0))
    return rows, explore.map_hover(store(), _df, _data.example_ids[rows])


st.subheader("Map of gradient features")
status = maps.map_status(info.workdir) if info.workdir else {"state": "missing"}
data = maps.load_map(info.workdir) if status["state"] == "done" else None
if not labels.gradient and data is None:
    st.info(md_text(f"{labels.name} scores are not built from gradient features, so this run has no map."))
elif status["state"] in ("queued", "running"):
    map_progress(info.workdir)
elif data is None:
    if status["state"] == "failed":
        st.error(md_text(f"The last map failed: {status.get('error')}"))
    if st.button("Compute the map (in the background)"):
        with user_errors():
            maps.launch_map(store(), run_id)
            st.rerun()
else:
    colour = st.selectbox("Colour by", list(COLOURS), index=list(COLOURS).index("selection"))
    drawn, hover = map_layer(store().url, run_id, version, data.meta, data, df)
    pair_labels, pair_hover = explore.pair_markers(store(), run_id)
    fig = maps.map_figure(data, explore.map_values(df, data.example_ids, COLOURS[colour]), pair_labels,
                          rows=drawn, hover=hover, val_hover=pair_hover)
    event = st.plotly_chart(fig, key="map", on_select="rerun", selection_mode=("points", "box", "lasso"))
    sampled = (f" Drawn: {len(drawn):,} (every selected, pinned and excluded one, a stratified sample of the rest) "
               "over the density of all; a box or lasso covers every point." if len(drawn) < len(data.xy) else "")
    st.caption(md_text(f"{data.meta['method']}, seed {data.meta['seed']}, {data.meta['n']:,} examples "
                       f"({data.meta['n_fit']:,} fitted); stars are the validation pairs, labelled by subtask."
                       + sampled))
    selection = (event or {}).get("selection")  # the event reads as a dict (attribute access too)
    picked = maps.ids_in_selection(data, selection) if selection else []
    one = picked.tolist() if len(picked) == 1 else None  # a clicked point: inspect it
    if one and one != st.session_state.get("seen_map_point") and (at_rank := explore.rank_of(df, one[0])):
        st.session_state["inspect_rank"] = at_rank
    st.session_state["seen_map_point"] = one
    if len(picked):
        bulk_actions(picked)

st.subheader("Inspector")
if (at_rank := clicked_rank(table, kept, "kept_table")) is not None:  # a table click moves the inspector there
    st.session_state["inspect_rank"] = at_rank
st.session_state["inspect_rank"] = explore.step_rank(st.session_state.get("inspect_rank", 1), 0, len(df))


def step(delta: int, n_total: int) -> None:
    st.session_state["inspect_rank"] = explore.step_rank(st.session_state["inspect_rank"], delta, n_total)


def search(run_id: int, frame: pd.DataFrame) -> None:
    """Find what the search box names; the inspector jumps to the best-ranked match."""
    with user_errors():
        res = explore.find_examples(store(), run_id, frame, st.session_state.get("inspect_search", ""))
        st.session_state["search_result"] = (run_id, res)
        if res.n_matches:
            st.session_state["inspect_rank"] = res.ranks[0]


def pick_match(key: str) -> None:
    st.session_state["inspect_rank"] = int(st.session_state[key])


c1, c2, c3, c4 = st.columns([1.4, 2, 1, 4], vertical_alignment="bottom")
c1.button("◀ Previous", key="inspect_prev", on_click=step, args=(-1, len(df)), help="the example one rank better")
rank = int(c2.number_input("Inspect the example at rank", min_value=1, max_value=len(df), step=1, key="inspect_rank"))
c3.button("Next ▶", key="inspect_next", on_click=step, args=(1, len(df)), help="the example one rank worse")
query = c4.text_input("Find an example (id, uid or words of its text)", key="inspect_search",
                      on_change=search, args=(run_id, df), placeholder="e.g. 1234, flan-17 or 'capital of'")
found = st.session_state.get("search_result")
if query.strip() and found and found[0] == run_id and found[1].query == query.strip():
    res = found[1]
    if not res.n_matches:
        st.warning(md_text(f"No example of this run matches '{res.query}'."))
    else:
        options = dict(zip(res.ranks, res.table.itertuples()))
        pick = f"search_pick_{run_id}_{res.query}"  # one widget per search: its options are that search's
        st.selectbox(f"{res.n_matches:,} matches, best-ranked first (showing {len(options):,}): go to",
                     list(options), key=pick, on_change=pick_match, args=(pick,),
                     format_func=lambda r: f"rank {r:,} · {options[r].uid} · {options[r].prompt[:60]}")


def example_at(rank: int) -> int:
    return int(df["example_id"].iloc[int(np.searchsorted(df["rank"].to_numpy(), rank))])


def decide_one(action: str) -> None:
    """Pin or exclude the inspected example. A callback reads the widgets' state, so a click that
    interrupts a rerun still acts on the rank and reason on screen."""
    from curation.review import curate
    at_rank = int(st.session_state["inspect_rank"])
    with user_errors():
        curate.decide(store(), info.pool, [example_at(at_rank)], action, st.session_state.get("one_reason", ""),
                      actor=actor())
        st.session_state["decided"] = f"{'Pinned' if action == 'pin' else 'Excluded'} example at rank {at_rank}."


example_id = example_at(rank)


def pair_card(pair: explore.AlignedPair, labels) -> None:
    """A validation pair in full, as text: prompt, chosen, rejected."""
    with st.container(border=True):
        st.caption(md_text(explore.pair_heading(pair, labels)))
        for part in ("prompt", "chosen", "rejected"):
            st.caption(part)
            st.text(getattr(pair, part))


if can("decide"):  # a viewer reads; the library refuses their decisions anyway
    c1, c2, c3 = st.columns([3, 1, 1])
    c1.text_input("Reason for this example", key="one_reason", placeholder="why (kept in the audit trail)")
    c2.button("Pin this example", on_click=decide_one, args=("pin",))
    c3.button("Exclude this example", on_click=decide_one, args=("exclude",))
if msg := st.session_state.pop("decided", None):
    st.success(msg)
with user_errors():
    exp = explanation(store().url, run_id, example_id, (*version, *saved.budget()))
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(f"{exp.labels.name} score", explore.people(exp.score))
    c2.metric("Rank", f"{exp.rank:,} of {exp.n_total:,}")
    c3.metric("Percentile", f"{exp.percentile:.1f}")
    c4.metric("Status", exp.status)
    st.text(f"{exp.uid} · {exp.source} · {exp.why}")  # data and reasons as text, never markdown
    for line in exp.reasons + exp.notes:
        st.text(line)
    left, right = st.columns(2)
    with left:
        st.markdown("**The example**")
        render_messages(exp.messages)
    with right:
        if exp.labels.pairs_title:
            st.markdown(f"**{md_text(exp.labels.pairs_title)}**")
        for pair in exp.val_pairs:
            pair_card(pair, exp.labels)
    if exp.labels.subtask_title and exp.subtask_means:
        means = explore.subtask_frame(exp)
        st.plotly_chart(px.bar(means, x="subtask", y=exp.labels.per_subtask, color="driver",
                               title=exp.labels.subtask_title), key="means")
    if exp.checkpoints:
        st.markdown("**What each warmup checkpoint gives the score**")
        st.dataframe(explore.checkpoint_frame(exp), hide_index=True)
    if exp.neighbours:
        st.markdown(f"**{explore.NEIGHBOURS_TITLE}**")
        st.dataframe(explore.neighbour_frame(exp), hide_index=True)
    for title, text, frame in explore.evidence_items(exp):  # the method's own evidence (BM25 terms, ...)
        st.markdown(f"**{md_text(title)}**")
        if frame is not None:
            st.dataframe(frame, hide_index=True)
        else:
            st.text(text)
