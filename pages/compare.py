"""Compare: do two selection methods pick the same examples, and order the pool alike?"""

import html

import plotly.graph_objects as go
import streamlit as st

from curation.data import catalog
from curation.review.compare import compare_runs, disagreement_frame, score_scatter_frame
from pages._shared import store, user_errors

COLOURS = {"both": "#2ca02c", "A only": "#1f77b4", "B only": "#ff7f0e", "neither": "#c7c7c7"}

st.title("Compare runs")
done = [r for r in catalog.list_runs(store()) if r["status"] == "done"]
pools = sorted({r["pool"] for r in done if sum(x["pool"] == r["pool"] for x in done) >= 2})
if not pools:
    st.info("Comparing needs at least two finished runs on the same pool (launch them on the Scoring page).")
    st.stop()

c1, c2 = st.columns([1, 3])
pool = c1.selectbox("Pool", pools)
runs = {f"#{r['id']} {r['label']}" + (f" / {r['prefs']}" if r["prefs"] else ""): r["id"]
        for r in done if r["pool"] == pool}
labels = c2.multiselect("Runs", list(runs), default=list(runs)[:2])
if len(labels) < 2:
    st.info("Choose at least two runs.")
    st.stop()

with user_errors():
    top = st.number_input("Disagreements to list", 1, 200, 20)
    cmp = compare_runs(store(), [runs[label] for label in labels], top=int(top))
    st.subheader("Pairwise agreement")
    st.caption("overlap = examples both selected; Jaccard = overlap / union; Spearman, Kendall = rank "
               "correlation of the scores over the whole pool")
    st.dataframe(cmp.table(), hide_index=True)

    c1, c2 = st.columns(2)
    a = c1.selectbox("Run A", labels, index=0)
    b = c2.selectbox("Run B", [label for label in labels if label != a])
    frame = score_scatter_frame(cmp, runs[a], runs[b])
    fig = go.Figure([go.Scattergl(x=g["score_a"], y=g["score_b"], mode="markers", name=name,
                                  marker=dict(color=COLOURS[name], size=4), customdata=g["example_id"],
                                  hovertemplate="example %{customdata}<br>A %{x:.4f}<br>B %{y:.4f}")
                     for name, g in frame.groupby("group", observed=True)])
    fig.update_layout(xaxis_title=html.escape(f"score of {a}"), yaxis_title=html.escape(f"score of {b}"),
                      legend_title="selected in", height=520)
    st.plotly_chart(fig, key="scatter")
    if len(frame) < len(cmp.example_ids):
        st.caption(f"{len(frame):,} of {len(cmp.example_ids):,} examples drawn (every selected one first).")

    st.subheader("Largest rank differences")
    st.dataframe(disagreement_frame(cmp.pair(runs[a], runs[b])), hide_index=True)
