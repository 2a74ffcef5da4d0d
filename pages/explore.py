"""Explore: score distributions, the UMAP map of gradient features, why an example was chosen."""

import streamlit as st

from pages._shared import coming_soon

st.title("Explore")
coming_soon("score distributions with the selection cutoff, per-subtask views, a UMAP map of gradient "
            "features and an inspector that says why each example was selected")
