"""Curate & Export: pin, exclude, budget and export the curated subset."""

import streamlit as st

from pages._shared import coming_soon

st.title("Curate & Export")
coming_soon("pin or exclude examples with a reason (with undo and an audit trail), set the budget, "
            "and export JSONL with a manifest")
