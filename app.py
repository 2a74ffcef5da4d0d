"""ROSE Curator: the Streamlit app. It only routes; pages call the `curation` library and draw."""

import streamlit as st

from pages._shared import signed_in

st.set_page_config(page_title="ROSE Curator", page_icon=":rose:", layout="wide")
if not signed_in():  # CURATION_AUTH=local: the sign-in form before any page
    st.stop()

pages = [
    st.Page("pages/pool.py", title="Pool", icon=":material/dataset:", default=True),
    st.Page("pages/preferences.py", title="Preferences", icon=":material/thumbs_up_down:"),
    st.Page("pages/scoring.py", title="Scoring", icon=":material/speed:"),
    st.Page("pages/explore.py", title="Explore", icon=":material/scatter_plot:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/curate.py", title="Curate & Export", icon=":material/fact_check:"),
]
st.navigation(pages).run()
