"""ROSE Curator: choose instruction-tuning data for a target task.

The library behind the Streamlit app and the ``python -m curation`` CLI. No Streamlit imports
live here: every UI action is a library call that the CLI and the tests can make too.
"""

__version__ = "0.1.0"
