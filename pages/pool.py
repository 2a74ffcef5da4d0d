"""Pool: import, browse page by page, search, filter and read examples."""

import pandas as pd
import streamlit as st

from curation.data import catalog
from curation.data.demo import ensure_demo
from curation.data.imports import import_pool
from curation.engine import featuresets
from pages._shared import (
    actor,
    feature_line,
    import_source,
    md_text,
    remembered_choice,
    render_messages,
    show_import,
    store,
    user_errors,
    workspace,
)


@st.cache_data(ttl=15, show_spinner=False)
def feature_status(db_url: str, pool: str) -> list[dict]:
    """Cached: it reads every content hash of the pool and walks the feature store, and the
    page reruns on every keystroke in the search box."""
    return featuresets.pool_feature_status(store(), pool, workspace().home)


POOL_FORMATS = ["auto", "alpaca", "messages", "sharegpt", "tulu", "prompt_completion", "prompt_response"]

st.title("Pool")
pools = catalog.list_pools(store())

with st.expander("Import a pool", expanded=not pools):
    with st.form("import_pool"):
        source = import_source("pool.jsonl (in the data folder)", ["jsonl", "json", "parquet", "csv"])
        c1, c2, c3 = st.columns(3)
        name = c1.text_input("Name (default: file name)")
        fmt = c2.selectbox("Format", POOL_FORMATS)
        strict = c3.checkbox("Strict: import nothing if any line is bad")
        append = c3.checkbox("Append to the pool of that name (new content only)")
        if st.form_submit_button("Import", type="primary"):
            with user_errors():
                src = source()
                bar = st.progress(0.0, text="Importing…")
                res = import_pool(store(), src, name=name or None, fmt=None if fmt == "auto" else fmt, strict=strict,
                                  append=append, actor=actor(), progress=lambda done, total: bar.progress(
                                      min(done / total, 1.0) if total else 0.0, text=f"Importing… {done:,} records"
                                      + (f" of {total:,}" if total else "")))
                bar.empty()
                show_import(res)
    if st.button("Load the demo pool and preference set"):
        with user_errors(), st.spinner("Importing the demo…"):
            for res in ensure_demo(store()):
                st.success(md_text(res.summary()))
            st.rerun()

if not pools:
    st.info("No pool yet: import one above, or load the demo.")
    st.stop()

names = [p["name"] for p in pools]
pool = remembered_choice("Pool", names, "pool_page_pool", fallback="demo")  # an import keeps the user on it
sources = catalog.pool_sources(store(), pool)
st.caption(md_text(feature_line(feature_status(store().url, pool), next(p["examples"] for p in pools if p["name"] == pool))))

c1, c2, c3, c4 = st.columns([3, 3, 1, 1])
search = c1.text_input("Search", placeholder="words in prompt or response")
picked = c2.multiselect("Sources", [s for s, _ in sources], format_func=lambda s: f"{s} ({dict(sources)[s]})")
min_chars = c3.number_input("Min chars", min_value=0, value=0, step=50)
max_chars = c4.number_input("Max chars (0 = any)", min_value=0, value=0, step=50)
flt = catalog.ExampleFilter(search=search, sources=tuple(picked), min_chars=min_chars or None, max_chars=max_chars or None)

total = catalog.count_examples(store(), pool, flt)
size = 50
pages = max(1, -(-total // size))
c1, c2 = st.columns([1, 4])
page = c1.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1) - 1
c2.metric("Matching examples", f"{total:,}")

rows = catalog.page_examples(store(), pool, page, size, flt)
table = st.dataframe(pd.DataFrame(rows), hide_index=True,
                     on_select="rerun", selection_mode="single-row", key="pool_table",
                     column_config={"id": None})
chosen = table.selection.rows if table and table.selection else []
if chosen:
    ex = catalog.get_example(store(), rows[chosen[0]]["id"])
    st.subheader(md_text(f"Example {ex['uid']}"))
    st.caption(md_text(f"source {ex['source']} · format {ex['fmt']} · line {ex['line']} · {ex['chars']} chars · "
                       f"hash {ex['content_hash'][:12]}"))
    render_messages(ex["messages"])
    with st.expander("Original record"):
        st.json(ex["original"])
else:
    st.caption("Select a row to read the whole example.")

with st.expander("Import reports"):
    for rep in catalog.import_reports(store()):
        st.text(f"#{rep['id']} {rep['kind']} '{rep['target']}' from {rep['path']}: {rep['status']}, "
                f"{rep['ok']} ok, {rep['bad']} bad, {rep['duplicates']} duplicates"
                + (f" ({rep['bad'] - len(rep['problems']):,} not listed)" if rep["bad"] > len(rep["problems"]) else ""))
        if rep["problems"]:
            st.dataframe(pd.DataFrame(rep["problems"]), hide_index=True)
