"""Scoring: launch and watch background runs."""

import streamlit as st

from pages._shared import coming_soon

st.title("Scoring")
coming_soon("configure a ROSE or LESS run (model, percent, warmup, k), launch it in a background process "
            "and follow its stages with progress and ETA. Until then: `python -m curation score --pool demo --prefs demo`")
